//! `gatehouse serve --config` with an `authorization_server:` section: the embedded authorization
//! server for operators, on SQLite and on PostgreSQL, through the whole flow.
mod common;

use common::browser::Browser;
use common::*;
use gatehouse_core::PkceVerifier;
use serde_json::{Value, json};
use std::process::Command;

async fn flow(database: &str) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-serve-as-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\n  tool_scopes: {{notes_add: [notes:write]}}\nauthorization_server:\n  database: ${{env:GH_TEST_DB}}\n  registrations_per_minute: 5\n  scope_descriptions: {{mcp:basic: Use the demo tools}}\n"
        ),
    )
    .expect("config");
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", "operator-pass-1")
        .args(["admin", "--db", database, "users", "add", "alice"])
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = gatehouse();
    cmd.env("GH_TEST_DB", database)
        .args(["serve", "--config"])
        .arg(&cfg);
    let mut p = Proc::start(cmd, "ready");

    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["issuer"], json!(base), "issuer defaults to public_url");
    let prm: Value = http
        .get(format!("{base}/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .expect("prm")
        .json()
        .await
        .expect("json");
    assert_eq!(
        prm["authorization_servers"],
        json!([base]),
        "the guard trusts the embedded issuer"
    );
    let client_id = &register_native_client(&base, "Op App", "http://127.0.0.1/cb").await;
    let v = PkceVerifier::generate();
    let mut u = url::Url::parse(&format!("{base}/authorize")).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:5000/cb")
        .append_pair("code_challenge", v.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", "mcp:basic");
    let mut b = Browser::new();
    let first = b.get(u.as_str()).await;
    assert!(first.body.contains("Sign in"));
    let done = b
        .sign_in_and_approve(u.as_str(), &base, "alice", "operator-pass-1")
        .await;
    let code = done.redirect_params()["code"].clone();
    let tok = redeem_code(&format!("{base}/token"), &code, v.secret(), client_id).await;
    let at = tok["access_token"].as_str().expect("access token");
    assert_eq!(mcp_initialize_status(&format!("{base}/mcp"), at).await, 200);
    assert!(p.terminate(10).expect("exits").success());
    assert!(!p.all_output().contains("operator-pass-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_embedded_authorization_server_sqlite() {
    let path = std::env::temp_dir().join(format!("gatehouse-serve-{}.db", free_port()));
    flow(&format!("sqlite://{}", path.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_embedded_authorization_server_postgres() {
    let db = format!("gatehouse_serve_{}", free_port());
    let out = psql(&format!("CREATE DATABASE {db}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    flow(&format!("postgres://postgres@127.0.0.1:5432/{db}")).await;
    let _ = psql(&format!("DROP DATABASE IF EXISTS {db}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as26_dynamic_registration_can_be_turned_off() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-nodcr-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: sqlite://{}/as.db\n  dynamic_registration: false\n", dir.display()),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let _p = Proc::start(cmd, "ready");
    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(
        meta.get("registration_endpoint").is_none(),
        "not advertised"
    );
    let r = http
        .post(format!("{base}/register"))
        .json(&json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "access_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as01_as02_tenants_have_path_aware_issuers_and_separate_databases() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-tenants-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    let d = dir.display();
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: sqlite://{d}/main.db\n  tenants:\n    - {{name: acme, database: 'sqlite://{d}/acme.db'}}\n    - {{name: globex, database: 'sqlite://{d}/globex.db'}}\n"),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let _p = Proc::start(cmd, "ready");
    let http = reqwest::Client::new();
    for t in ["acme", "globex"] {
        let issuer = format!("{base}/tenants/{t}");
        for path in [
            format!("/.well-known/oauth-authorization-server/tenants/{t}"),
            format!("/.well-known/openid-configuration/tenants/{t}"),
            format!("/tenants/{t}/.well-known/openid-configuration"),
        ] {
            let m: Value = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("meta")
                .json()
                .await
                .expect("json");
            assert_eq!(m["issuer"], json!(issuer), "{path}");
            assert_eq!(
                m["authorization_endpoint"],
                json!(format!("{issuer}/authorize"))
            );
        }
    }
    let prm: Value = http
        .get(format!("{base}/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .expect("prm")
        .json()
        .await
        .expect("json");
    assert_eq!(
        prm["authorization_servers"],
        json!([
            base,
            format!("{base}/tenants/acme"),
            format!("{base}/tenants/globex")
        ])
    );

    let acme = format!("{base}/tenants/acme");
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", "acme-password-1")
        .args([
            "admin",
            "--db",
            &format!("sqlite://{d}/acme.db"),
            "users",
            "add",
            "wile",
        ])
        .output()
        .expect("admin");
    assert!(out.status.success());
    let reg: Value = http
        .post(format!("{acme}/register"))
        .json(&json!({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["authorization_code"], "token_endpoint_auth_method": "none", "application_type": "native"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let client_id = reg["client_id"].as_str().expect("id");
    let v = PkceVerifier::generate();
    let url_at = |issuer: &str| {
        let mut u = url::Url::parse(&format!("{issuer}/authorize")).expect("url");
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", "http://127.0.0.1:7000/cb")
            .append_pair("code_challenge", v.challenge().as_str())
            .append_pair("code_challenge_method", "S256")
            .append_pair("scope", "mcp:basic");
        u.to_string()
    };
    let mut b = Browser::new();
    let elsewhere = b.get(&url_at(&format!("{base}/tenants/globex"))).await;
    assert_eq!(
        elsewhere.status, 400,
        "a client of one tenant is unknown to another"
    );
    let done = b
        .sign_in_and_approve(&url_at(&acme), &acme, "wile", "acme-password-1")
        .await;
    assert!(
        b.cookies.contains_key("gh_session_tenants-acme"),
        "per-tenant cookie: {:?}",
        b.cookies.keys()
    );
    let code = done.redirect_params()["code"].clone();
    let tok = redeem_code(&format!("{acme}/token"), &code, v.secret(), client_id).await;
    let at = tok["access_token"].as_str().expect("at");
    assert_eq!(jwt_claims(at)["iss"], json!(acme));
    assert_eq!(
        jwt_claims(at)["tenant"],
        "acme",
        "issue 14, row 10: per-tenant limits and policies see the tenant"
    );
    assert_eq!(
        mcp_initialize_status(&format!("{base}/mcp"), at).await,
        200,
        "the guard trusts every tenant's issuer"
    );
}

/// Issue 3 §7 (AS-29, T9): nothing is lost when the process is killed mid-request. Hundreds of
/// refresh rotations are in flight when the server gets SIGKILL; after a restart on the same
/// SQLite file, every refresh token a client actually received works: a token was either issued
/// and stored, or not issued. (Group commit releases answers only after their commit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as29_killed_mid_request_loses_no_issued_token() {
    const N: usize = 300;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-kill-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\n"),
    )
    .expect("config");
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", "operator-pass-1")
        .args(["admin", "--db", &db, "users", "add", "alice"])
        .output()
        .expect("admin");
    assert!(out.status.success());
    let serve = || {
        let mut cmd = gatehouse();
        cmd.args(["serve", "--config"]).arg(&cfg);
        Proc::start(cmd, "ready")
    };
    let mut p = serve();
    let http = reqwest::Client::new();
    let reg: Value = http
        .post(format!("{base}/register"))
        .json(&json!({"client_name": "Kill", "redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none", "application_type": "native"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let client_id = reg["client_id"].as_str().expect("client_id").to_owned();
    let v = PkceVerifier::generate();
    let mut u = url::Url::parse(&format!("{base}/authorize")).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:5000/cb")
        .append_pair("code_challenge", v.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", "mcp:basic");
    let mut b = Browser::new();
    let mut refresh_tokens = Vec::with_capacity(N);
    for _ in 0..N {
        // The first round signs in and consents; later ones come straight back with a code.
        let done = b
            .sign_in_and_approve(u.as_str(), &base, "alice", "operator-pass-1")
            .await;
        let code = done.redirect_params()["code"].clone();
        let tok = redeem_code(&format!("{base}/token"), &code, v.secret(), &client_id).await;
        refresh_tokens.push(tok["refresh_token"].as_str().expect("rt").to_owned());
    }

    let refresh = |rt: String| {
        let (http, base, client_id) = (http.clone(), base.clone(), client_id.clone());
        async move {
            let r = http
                .post(format!("{base}/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", client_id.as_str()),
                ])
                .send()
                .await
                .ok()?;
            let status = r.status().as_u16();
            let v: Value = r.json().await.ok()?;
            Some((status, v))
        }
    };
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = refresh_tokens
        .iter()
        .map(|rt| {
            let (f, answered) = (refresh(rt.clone()), answered.clone());
            tokio::spawn(async move {
                let r = f.await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r
            })
        })
        .collect();
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    p.child.kill().expect("SIGKILL");
    let _ = p.child.wait();
    let mut issued = Vec::new();
    let mut lost = 0;
    for t in tasks {
        match t.await.expect("task") {
            Some((200, v)) => issued.push(v["refresh_token"].as_str().expect("rt").to_owned()),
            Some((status, v)) => panic!("refresh refused before the kill: {status} {v}"),
            None => lost += 1,
        }
    }
    assert!(
        lost > 0 && !issued.is_empty(),
        "the kill must land mid-stream: {} answered, {lost} cut off",
        issued.len()
    );

    let _p = serve();
    for rt in &issued {
        let r = refresh(rt.clone()).await.expect("answer after restart");
        assert_eq!(r.0, 200, "an issued refresh token was lost: {}", r.1);
    }
}

/// Issue 3, "Done when" (CIMD with a real client): the unmodified TypeScript SDK registers by
/// Client ID Metadata Document. The document is served over https by a separate loopback server
/// whose certificate comes from a private CA the operator trusts (`trusted_ca_file`); the
/// authorization server fetches it through the SSRF-safe fetcher (that one loopback authority
/// excepted as `dangerous`), and the SDK logs in, calls tools, refreshes and steps up with the
/// document URL as its client_id (AS-16 … AS-22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as16_cimd_registration_with_the_typescript_sdk_over_https() {
    let port = free_port();
    let doc_port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-cimd-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    // A private CA and a leaf certificate for 127.0.0.1 signed by it.
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr, ext) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("leaf.csr"),
        dir.join("leaf.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let p = |s: &std::path::Path| s.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-days",
                "1",
                "-subj",
                "/CN=Gatehouse test CA",
                "-keyout",
                &p(&ca_key),
                "-out",
                &p(&ca),
            ][..],
        ]
        .concat(),
        [
            &["req"][..],
            &ec[..],
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &p(&key),
                "-out",
                &p(&csr),
            ][..],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doc_url = format!("https://127.0.0.1:{doc_port}/client.json");
    let doc = json!({
        "client_id": doc_url,
        "client_name": "SDK via metadata document",
        "redirect_uris": ["http://127.0.0.1/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    let mut host = Command::new("node");
    host.current_dir(repo_root().join("interop"))
        .env("DOC", doc.to_string())
        .arg("https-doc.mjs")
        .arg(doc_port.to_string())
        .arg(&cert)
        .arg(&key);
    let docs = Proc::start(host, "READY");

    let db = format!("sqlite://{}/as.db", dir.display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\n  scopes_supported: [mcp:basic, notes:write]\n  tool_scopes: {{notes_add: [notes:write]}}\nauthorization_server:\n  database: {db}\ntrusted_ca_file: {}\ndangerous:\n  allow_loopback_client_fetch: ['127.0.0.1:{doc_port}']\n",
            ca.display()
        ),
    )
    .expect("config");
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", "cimd-pass-1")
        .args(["admin", "--db", &db, "users", "add", "carol"])
        .output()
        .expect("admin");
    assert!(out.status.success());
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let server = Proc::start(cmd, "ready");
    let meta: Value = reqwest::get(format!("{base}/.well-known/oauth-authorization-server"))
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["client_id_metadata_document_supported"], true);

    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        let doc_url = doc_url.clone();
        move || {
            Command::new("node")
                .current_dir(repo_root().join("interop"))
                .env("GH_USER", "carol")
                .env("GH_PASSWORD", "cimd-pass-1")
                .env("GH_CIMD_URL", &doc_url)
                .arg("sdk-client.mjs")
                .arg(format!("{base}/mcp"))
                .output()
                .expect("node")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "SDK client failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.all_output()
    );
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let authorizations: Vec<&Value> = steps.iter().filter(|s| s["step"] == "authorize").collect();
    assert!(!authorizations.is_empty(), "{stdout}");
    for a in &authorizations {
        assert_eq!(
            a["client_id"],
            json!(doc_url),
            "the document URL is the client_id"
        );
    }
    assert!(steps.iter().any(|s| s["step"] == "refreshed"), "{stdout}");
    assert!(
        docs.stdout
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("served /client.json")),
        "the authorization server fetched the document"
    );
    // No dynamic registration happened: the only client is the document.
    let out = gatehouse()
        .args(["admin", "--db", &db, "clients", "list"])
        .output()
        .expect("admin");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines().all(|l| !l.contains("\tdcr\t")),
        "no dynamic registration: {list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{doc_url}\tcimd"))),
        "the document's client is known as such: {list}"
    );
}

/// T21 (issue 14, row 7): half-sent requests neither pile up nor lock out clients. At the
/// per-source cap the oldest idle connection makes room for a new one, so a whole request gets
/// through while hundreds of half-sent ones are open; those are closed after the header
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_half_sent_requests_are_bounded_and_lock_out_nobody() {
    use std::io::{Read, Write};
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-slow-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: sqlite://{}/as.db\nlistener:\n  max_connections: 200\n  per_source_connections: 100\n  header_timeout_seconds: 2\n", dir.display()),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let _p = Proc::start(cmd, "ready");
    let slow = tokio::task::spawn_blocking(move || {
        (0..300)
            .filter_map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.write_all(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")
                    .ok()?;
                Some(s)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    assert!(
        slow.len() >= 250,
        "the half-sent requests were accepted: {}",
        slow.len()
    );
    // And connections that send nothing at all.
    let silent: Vec<_> = (0..20)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let r = reqwest::Client::new()
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .expect("a whole request gets through");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let still_open = tokio::task::spawn_blocking(move || {
        slow.into_iter()
            .chain(silent)
            .filter(|mut s| {
                s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                    .expect("timeout");
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(e) => {
                            return matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            );
                        }
                    }
                }
            })
            .count()
    })
    .await
    .expect("join");
    assert_eq!(
        still_open, 0,
        "every half-sent request was closed by the server"
    );
}
