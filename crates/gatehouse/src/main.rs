//! `gatehouse`: authorization for the Model Context Protocol.
#![forbid(unsafe_code)]

mod admin;
mod app;
mod audit_view;
mod check;
mod client;
mod config;
mod demo;
mod dev;
mod embedded;
mod health;
mod init;
mod listener;
mod plan;
mod telemetry;
mod tls;

use clap::{Parser, Subcommand};
use config::{Config, Dangerous, GuardSection, IssuerEntry, LogConfig, McpConfig};
use gatehouse_core::{Issuer, ScopeSet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;

// mimalloc instead of glibc's allocator: request paths free and reuse many short-lived buffers
// across threads, where glibc's consolidation and arena locks cost ~10% of the token endpoint.
// Built without transparent huge pages (`no_thp`): with them its arenas held 14 MiB of 2 MiB
// pages at idle for a few KiB in use (issue 20).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Authorization for the Model Context Protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run what a configuration file describes.
    Serve {
        #[arg(long)]
        config: String,
        /// Listen here instead of the file's `listen` (replicas of one file on one host).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Development: the guarded demo MCP server on loopback, with the embedded authorization
    /// server (or trusting an external issuer given by --issuer).
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// An external authorization server to trust instead of the embedded one (metadata and
        /// JWKS are discovered from it). A loopback http issuer is allowed in dev mode only.
        #[arg(long)]
        issuer: Option<String>,
        /// Where dev state is kept (a fresh SQLite file each start).
        #[arg(long, default_value = ".gatehouse/dev")]
        data_dir: String,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Write a production configuration to start from (https, PostgreSQL, a new key-encryption
    /// key in a separate 0600 environment file, a safe registration policy).
    Init(init::InitArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The gateway's audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Audit a deployed MCP server's authorization from outside and grade it.
    Check(check::CheckArgs),
    /// Static API keys.
    Apikey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Manage the embedded authorization server's users, clients, keys and grants.
    Admin(admin::AdminArgs),
    /// Log in to a protected MCP server (discovery, registration, browser login) and keep the tokens.
    Login(client::ClientArgs),
    /// Forget (and revoke) the tokens kept for an MCP server.
    Logout(client::ClientArgs),
    /// Print a current access token for an MCP server (refreshed if needed; never logs in).
    Token(client::ClientArgs),
    /// Bridge stdio to a remote MCP server, logging in as needed: for hosts that speak only stdio.
    Connect(client::ClientArgs),
    /// The client under test for the MCP conformance suite (see conformance/client).
    #[command(hide = true)]
    ConformanceClient { url: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate a configuration file without starting anything.
    Check { file: String },
    /// Print the JSON Schema (draft 2020-12) of the configuration file, generated from the
    /// types `serve` reads.
    Schema,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log: exit 0 with the record count when it holds, exit 1
    /// with the line number of the first record that breaks it.
    Verify { file: String },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Generate a key: prints the key once, and the hash entry for the config file.
    New {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "mcp:basic")]
        scopes: String,
        /// Days until the key expires.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

fn init_logging(json: bool) {
    if let Err(e) = telemetry::init(json, None) {
        eprintln!("warning: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(a) => match init::run(&a) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            let mut schema = schemars::schema_for!(Config);
            schema.insert(
                "title".into(),
                "Gatehouse configuration (gatehouse serve --config)".into(),
            );
            match serde_json::to_string_pretty(&schema) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file).and_then(|c| {
            app::check(&c).map_err(|message| config::ConfigError::Invalid {
                path: file.clone(),
                message,
            })
        }) {
            Ok(()) => {
                println!("{file}: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => match std::fs::read(&file) {
            Err(e) => {
                eprintln!("error: cannot read {file}: {e}");
                ExitCode::from(2)
            }
            // A line that is not UTF-8 is a broken record like any other (its number is told).
            Ok(bytes) => match gatehouse_gateway::verify_chain(&String::from_utf8_lossy(&bytes)) {
                Ok(n) => {
                    println!("{file}: {n} records, chain intact");
                    ExitCode::SUCCESS
                }
                Err(b) => {
                    println!("{file}: line {}: {}", b.line, b.why);
                    ExitCode::from(1)
                }
            },
        },
        Command::Apikey {
            command: ApiKeyCommand::New { name, scopes, days },
        } => {
            let scopes = match ScopeSet::parse(&scopes) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: --scopes: {e}");
                    return ExitCode::from(2);
                }
            };
            let (key, hash) = gatehouse_guard::generate_api_key();
            let expires = time::OffsetDateTime::now_utc() + time::Duration::days(days);
            let expires = expires
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            eprintln!("New API key (shown once; store it in a secret manager):");
            println!("{key}");
            eprintln!("\nAdd to guard.api_keys in the config file:");
            eprintln!(
                "  - name: {name}\n    hash: \"{hash}\"\n    scopes: [{}]\n    expires: \"{expires}\"",
                scopes.to_vec().join(", ")
            );
            ExitCode::SUCCESS
        }
        Command::Serve { config, listen } => {
            let cfg = match Config::load(&config) {
                Ok(mut c) => {
                    if let Some(l) = listen {
                        c.listen = l;
                    }
                    c
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let traces = match telemetry::init(cfg.log.is_json(), cfg.traces.as_ref()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let code = rt.block_on(async move {
                let revocations = std::sync::Arc::new(gatehouse_tokens::Revocations::new());
                let embedded = match embedded::build(&cfg, &revocations).await {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                serve_app(cfg, false, None, embedded).await
            });
            // Outside the runtime: the exporter's blocking client flushes what is buffered.
            drop(rt);
            if let Some(t) = traces {
                t.shutdown();
            }
            code
        }
        Command::Admin(args) => admin::run(args),
        Command::Check(args) => check::run(args),
        Command::Login(args) => client::login(&args),
        Command::Logout(args) => client::logout(&args),
        Command::Token(args) => client::token(&args),
        Command::Connect(args) => client::connect(&args),
        Command::ConformanceClient { url } => client::conformance(&url),
        Command::Dev {
            listen,
            issuer,
            data_dir,
            log_json,
        } => {
            init_logging(log_json);
            let Some(issuer) = issuer else {
                return dev::run_embedded(listen, &data_dir);
            };
            let issuer = match Issuer::parse(&issuer) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: --issuer: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = std::fs::create_dir_all(&data_dir) {
                eprintln!("error: --data-dir {data_dir}: {e}");
                return ExitCode::from(2);
            }
            match dev_config(listen, issuer) {
                Ok(cfg) => run(cfg, true, Some(&data_dir), None),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The configuration `gatehouse dev` runs with.
pub(crate) fn dev_config(listen: SocketAddr, issuer: Issuer) -> Result<Config, String> {
    let scope = |s: &str| ScopeSet::parse(s).map_err(|e| e.to_string());
    let mut allow = Vec::new();
    if issuer.is_loopback() {
        let u = issuer.url();
        let host = match u.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => return Err("issuer has no host".into()),
        };
        allow.push(format!(
            "{host}:{}",
            u.port_or_known_default().unwrap_or(80)
        ));
    }
    Ok(Config {
        listen,
        public_url: None,
        log: LogConfig::default(),
        traces: None,
        mcp: McpConfig::default(),
        guard: GuardSection {
            authorization_servers: vec![IssuerEntry {
                issuer,
                jwks_uri: None,
            }],
            audience_policy: Default::default(),
            strict_typ: false,
            scopes_supported: Some(scope("mcp:basic notes:write")?),
            required_scopes: scope(demo::BASE_SCOPE)?,
            tool_scopes: HashMap::from([("notes_add".to_owned(), scope(demo::WRITE_SCOPE)?)]),
            resource_name: Some("Gatehouse demo MCP server".into()),
            resource_documentation: None,
            introspection: None,
            api_keys: vec![],
            ip_allow: vec![],
            security_events: None,
            dpop_nonce: false,
            dpop_nonce_secret: None,
        },
        authorization_server: None,
        trusted_ca_file: None,
        gateway: None,
        metrics_listen: None,
        tls: None,
        listener: Default::default(),
        // The session caps' defaults (issue 20) hold in development too.
        limits: Default::default(),
        shared_state: None,
        dangerous: Dangerous {
            allow_loopback_fetch: allow,
            allow_loopback_client_fetch: Vec::new(),
        },
    })
}

pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Extra routes served on the same port (the embedded authorization server) and lines for the
/// dev banner.
pub(crate) struct Embedded {
    pub(crate) router: axum::Router,
    pub(crate) banner: Vec<String>,
    /// What per-user upstream grants (GW-09) borrow from the authorization server.
    pub(crate) connect: Option<gatehouse_gateway::Backend>,
    /// Grants the authorization server revoked: every guard and gateway here refuses their
    /// tokens at once (T23).
    pub(crate) revocations: std::sync::Arc<gatehouse_tokens::Revocations>,
    /// The authorization servers' databases, for readiness.
    pub(crate) stores: Vec<gatehouse_store::Store>,
    /// The authorization servers (their signing keys), for readiness.
    pub(crate) servers: Vec<gatehouse_server::AuthServer>,
}

fn run(cfg: Config, dev: bool, data_dir: Option<&str>, embedded: Option<Embedded>) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(serve_app(cfg, dev, data_dir, embedded))
}

pub(crate) async fn serve_app(
    cfg: Config,
    dev: bool,
    data_dir: Option<&str>,
    embedded: Option<Embedded>,
) -> ExitCode {
    {
        let connect = embedded.as_ref().and_then(|e| e.connect.clone());
        // Security events from external authorization servers need a list even without the
        // embedded one.
        let revocations = embedded
            .as_ref()
            .map(|e| e.revocations.clone())
            .or_else(|| {
                cfg.guard
                    .security_events
                    .is_some()
                    .then(|| std::sync::Arc::new(gatehouse_tokens::Revocations::new()))
            });
        let mut app = match app::build_with(&cfg, dev, connect, revocations) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let mut banner = Vec::new();
        let shared = match cfg
            .shared_state
            .as_ref()
            .map(|s| gatehouse_gateway::SharedState::open(&s.redis_url.0))
            .transpose()
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: shared_state.redis_url: {e}");
                return ExitCode::from(2);
            }
        };
        let mut readiness = health::Readiness {
            shared,
            jwt: app.jwt.clone(),
            ..Default::default()
        };
        if let Some(e) = embedded {
            app.router = app.router.merge(e.router);
            banner = e.banner;
            readiness.stores = e.stores;
            readiness.servers = e.servers;
            readiness.revocations = Some(e.revocations);
        }
        app.router = app.router.merge(health::router(readiness));
        if cfg.traces.is_some() {
            app.router = app
                .router
                .layer(axum::middleware::from_fn(telemetry::request_span));
        }
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", cfg.listen);
                return ExitCode::FAILURE;
            }
        };
        if let Some(addr) = cfg.metrics_listen {
            // Prometheus text on its own listener, so operators keep it off the public one.
            let handle =
                match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
                    Ok(h) => h,
                    Err(e) => {
                        eprintln!("error: metrics: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            let l = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {addr} (metrics_listen): {e}");
                    return ExitCode::FAILURE;
                }
            };
            let router = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let h = handle.clone();
                    async move { h.render() }
                }),
            );
            let (limits, stop) = (cfg.listener.limits(), app.cancel.clone());
            tokio::spawn(async move {
                if let Err(e) = listener::serve(l, router, limits, stop, None).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        if let Some((engine, every)) = &app.policy {
            // Policies reload without a restart; a change that does not validate is refused.
            let p = engine.current();
            tracing::info!(
                policies = p.len(),
                from = p.origin(),
                "gateway policies loaded"
            );
            let _ = engine.watch(*every);
        }
        if let Some(jwt) = app.jwt.clone() {
            // In the background, once we serve (the issuer may be this very process). Not fatal:
            // keys are fetched on first use as well.
            tokio::spawn(async move {
                if let Err(e) = jwt.prefetch().await {
                    tracing::warn!(error = %e, "could not fetch the issuer's keys yet");
                }
            });
        }
        let resource = app.resource.clone();
        let guard_cfg = app.guard.config().clone();
        if dev {
            println!("Gatehouse dev: guarded demo MCP server");
            println!("  MCP endpoint        {resource}");
            println!("  resource metadata   {}", resource.prm_url());
            for a in &guard_cfg.authorization_servers {
                println!("  trusted issuer      {a}");
            }
            println!("  scopes              {}", app::describe_scopes(&guard_cfg));
            if let Some(d) = data_dir {
                println!("  data dir            {d}");
            }
            if banner.is_empty() {
                println!(
                    "  get a token from the issuer with resource={resource} and scope \"{}\"",
                    guard_cfg.scopes_supported
                );
            }
            for line in &banner {
                println!("{line}");
            }
        }
        tracing::info!(url = %resource, "ready");
        println!("gatehouse ready: {resource}");
        match app::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
