//! `gatehouse dev` with the embedded authorization server: everything on one loopback port, a
//! fresh SQLite file, a dev user, dynamic registration on.
use crate::{Embedded, dev_config, runtime, serve_app};
use base64::Engine as _;
use gatehouse_core::{Issuer, Resource, ScopeSet, SystemClock};
use gatehouse_fetch::{FetchPolicy, Fetcher};
use gatehouse_server::{AuthServer, AuthServerConfig, ResourceEntry, hash_password};
use gatehouse_store::{Store, UserRecord};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

pub(crate) fn run_embedded(listen: SocketAddr, data_dir: &str) -> ExitCode {
    if !listen.ip().is_loopback() {
        return fail("gatehouse dev listens on loopback only (use `serve` for anything else)");
    }
    if listen.port() == 0 {
        return fail("--listen needs a port: the issuer URL contains it");
    }
    if let Err(e) = std::fs::create_dir_all(data_dir) {
        return fail(format!("--data-dir {data_dir}: {e}"));
    }
    let db = std::path::Path::new(data_dir).join("gatehouse.db");
    // A fresh database every start: dev state never leaks between runs.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let issuer_s = format!("http://{listen}");
        let (issuer, resource) = match (Issuer::parse(&issuer_s), Resource::parse(&format!("{issuer_s}/mcp"))) {
            (Ok(i), Ok(r)) => (i, r),
            _ => return fail("cannot form the issuer URL"),
        };
        let store = match Store::open(&format!("sqlite://{}", db.display())).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let scopes = match ScopeSet::parse("mcp:basic notes:write") {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let username = std::env::var("GATEHOUSE_DEV_USER").unwrap_or_else(|_| "dev".into());
        let mut cfg = AuthServerConfig::new(
            issuer.clone(),
            vec![ResourceEntry {
                resource: resource.clone(),
                scopes,
            }],
        );
        // The dev user may try the admin console.
        cfg.console.admin_users = vec![username.clone()];
        let fetcher = match Fetcher::new(FetchPolicy::default()) {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
        let revocations = Arc::new(gatehouse_tokens::Revocations::new());
        let server = match AuthServer::with_revocations(cfg, store.clone(), fetcher, Arc::new(SystemClock), Some(revocations.clone())).await {
            Ok(s) => s,
            Err(e) => return fail(e.description),
        };
        server.spawn_maintenance(std::time::Duration::from_secs(60));
        server.spawn_revocation_feed(std::time::Duration::from_secs(1));
        let (password, shown) = match std::env::var("GATEHOUSE_DEV_PASSWORD") {
            Ok(p) if !p.is_empty() => (p, "(from GATEHOUSE_DEV_PASSWORD)".to_owned()),
            _ => {
                let b: [u8; 12] = rand::random();
                let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
                (p.clone(), p)
            }
        };
        let hash = match hash_password(&password) {
            Ok(h) => h,
            Err(e) => return fail(e),
        };
        let user = UserRecord {
            username: username.clone(),
            subject: username.clone(),
            password_hash: hash,
            disabled: false,
            created_at: 0,
        };
        if let Err(e) = store.insert_user(&user).await {
            return fail(e);
        }
        let banner = vec![
            format!("  authorization server {issuer} (embedded; SQLite {})", db.display()),
            format!("  sign in as          {username} / {shown}"),
            format!("  admin console       {issuer_s}/admin   (your apps: {issuer_s}/account)"),
            "  registration        dynamic registration on; client ID metadata documents on; loopback redirects allowed".into(),
            String::new(),
            format!("  MCP Inspector:  npx @modelcontextprotocol/inspector   (Streamable HTTP, URL {resource})"),
            "  Desktop hosts (mcpServers):".into(),
            format!("    {{\"mcpServers\": {{\"gatehouse-demo\": {{\"command\": \"npx\", \"args\": [\"mcp-remote\", \"{resource}\"]}}}}}}"),
        ];
        let cfg = match dev_config(listen, issuer) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        serve_app(
            cfg,
            true,
            Some(data_dir),
            Some(Embedded {
                router: server.router(),
                banner,
                connect: None,
                revocations,
                stores: vec![store.clone()],
                servers: vec![server.clone()],
            }),
        )
        .await
    })
}
