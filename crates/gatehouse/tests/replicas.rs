//! Issue 16: three replicas of `gatehouse serve` running `examples/replicas/gatehouse.yaml`
//! unchanged, behind a real nginx (round-robin, no affinity), on a fresh PostgreSQL database
//! and Redis, in front of the real server-everything. One MCP session spread over every
//! replica; a replica killed with SIGKILL mid-session; one rate limit across replicas; a client
//! revoked with `gatehouse admin` refused by every replica within a second.
mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Nginx {
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(port: u16, backends: &[u16]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("gatehouse-lb-{port}"));
        std::fs::create_dir_all(dir.join("logs")).expect("dir");
        let servers: String = backends
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        let conf = format!(
            "worker_processes 1;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  log_format up '$upstream_addr $status';\n  access_log {d}/logs/access.log up;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             upstream replicas {{\n{servers}  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
             proxy_pass http://replicas;\n      proxy_http_version 1.1;\n\
             proxy_set_header Host $http_host;\n      proxy_set_header Connection \"\";\n\
             proxy_buffering off;\n      proxy_next_upstream error timeout;\n    }}\n  }}\n}}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("conf");
        let out = Command::new(nginx_bin())
            .args(["-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-p"])
            .arg(&dir)
            .output()
            .expect("nginx (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_port(port);
        Nginx { dir }
    }

    /// The replica (`127.0.0.1:port`) that served each request so far.
    fn served_by(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(nginx_bin())
            .args(["-c"])
            .arg(self.dir.join("nginx.conf"))
            .args(["-p"])
            .arg(&self.dir)
            .args(["-s", "stop"])
            .output();
    }
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn wait_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("port {port} did not open");
}

fn replica(env: &[(&str, String)], port: u16) -> Proc {
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"])
        .arg(repo_root().join("examples/replicas/gatehouse.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("GATEHOUSE_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::start(cmd, "ready")
}

/// One JSON-RPC message to `url`: the HTTP status, the session id it returned, and the
/// JSON-RPC answer (from JSON or the first SSE `data:` event).
async fn rpc(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Option<Value>) {
    let mut req = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let sid = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.text().await.unwrap_or_default();
    let answer = serde_json::from_str(&text).ok().or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find_map(|d| serde_json::from_str(d.trim()).ok())
    });
    (status, sid, answer)
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "replicas-test", "version": "1"}}})
}

fn echo(id: u64, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"message": text}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp1_rp2_rp3_three_replicas_share_sessions_limits_and_revocations() {
    let db = format!("gatehouse_replicas_{}", free_port());
    let out = psql(&format!("CREATE DATABASE {db}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let up_port = free_port();
    let _upstream = server_everything(up_port);
    let lb_port = free_port();
    let public = format!("http://127.0.0.1:{lb_port}");
    let env = vec![
        ("GATEHOUSE_DATABASE", db_url.clone()),
        ("GATEHOUSE_REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
        ("GATEHOUSE_PUBLIC_URL", public.clone()),
        (
            "GATEHOUSE_UPSTREAM_URL",
            format!("http://127.0.0.1:{up_port}/mcp"),
        ),
    ];
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Started together, on a database none of them has seen: they race to migrate it and to
    // create the first signing key.
    let mut replicas: Vec<Option<Proc>> = std::thread::scope(|s| {
        let handles: Vec<_> = ports
            .iter()
            .map(|p| s.spawn(|| replica(&env, *p)))
            .collect();
        handles
            .into_iter()
            .map(|h| Some(h.join().expect("replica")))
            .collect()
    });
    let lb = Nginx::start(lb_port, &ports);
    let endpoint = format!("{public}/servers/echo/mcp");
    let http = reqwest::Client::new();

    let (id, secret) = add_machine_client(&db_url, "replicas");
    let token = cc_token_for(&public, &id, &secret, &endpoint).await;

    // One session, every message through the load balancer.
    let (st, sid, answer) = rpc(&http, &endpoint, &token, None, initialize()).await;
    assert_eq!(st, 200, "{answer:?}");
    let sid = sid.expect("a session id");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (st, _, _) = rpc(&http, &endpoint, &token, Some(&sid), note).await;
    assert!(st == 202 || st == 200, "initialized: {st}");
    // Paced under the subject's rate (600/min, burst 5).
    let pace = || tokio::time::sleep(Duration::from_millis(150));
    for i in 0..6 {
        pace().await;
        let (st, _, answer) = rpc(
            &http,
            &endpoint,
            &token,
            Some(&sid),
            echo(10 + i, &format!("m{i}")),
        )
        .await;
        assert_eq!(st, 200, "call {i}: {answer:?}");
        let text = answer
            .as_ref()
            .map(|a| a["result"]["content"][0]["text"].to_string());
        assert!(
            text.as_deref()
                .is_some_and(|t| t.contains(&format!("m{i}"))),
            "call {i}: {answer:?}"
        );
    }
    let mcp_served: std::collections::HashSet<String> =
        lb.served_by().into_iter().skip(2).collect();
    assert_eq!(
        mcp_served.len(),
        3,
        "the session's messages went to every replica: {mcp_served:?}"
    );

    // SIGKILL one replica mid-session: the session carries on through the others.
    if let Some(mut dead) = replicas[0].take() {
        dead.kill9();
    }
    for i in 0..6 {
        pace().await;
        let (st, _, answer) = rpc(
            &http,
            &endpoint,
            &token,
            Some(&sid),
            echo(30 + i, &format!("after{i}")),
        )
        .await;
        assert_eq!(st, 200, "after the kill, call {i}: {answer:?}");
        assert!(
            answer
                .map(|a| a["result"]["content"][0]["text"].to_string())
                .is_some_and(|t| t.contains(&format!("after{i}"))),
            "after the kill, call {i}"
        );
    }

    // One rate limit for the subject across replicas (burst 5, 600/min): 20 calls at once let
    // through the burst and what refills meanwhile, not three replicas' worth.
    let (id2, secret2) = add_machine_client(&db_url, "limited");
    let token2 = cc_token_for(&public, &id2, &secret2, &endpoint).await;
    let (_, sid2, _) = rpc(&http, &endpoint, &token2, None, initialize()).await;
    let sid2 = sid2.expect("session");
    let calls = (0..20).map(|i| {
        let (http, endpoint, token2, sid2) = (&http, &endpoint, &token2, &sid2);
        async move {
            rpc(http, endpoint, token2, Some(sid2), echo(100 + i, "x"))
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 8 && passed <= 12,
        "one budget across replicas: {passed} passed, {limited} limited ({statuses:?})"
    );

    // Revoke the first client (the admin CLI on the database): every live replica refuses
    // its token within a second.
    let live: Vec<u16> = ports[1..].to_vec();
    for p in &live {
        pace().await;
        let url = format!("http://127.0.0.1:{p}/servers/echo/mcp");
        let (st, _, _) = rpc(&http, &url, &token, Some(&sid), echo(50, "before")).await;
        assert_eq!(
            st, 200,
            "replica {p} serves the token before the revocation"
        );
    }
    let out = gatehouse()
        .args(["admin", "--db", &db_url, "revoke", "--client", &id])
        .output()
        .expect("admin revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();
    let mut refused_after = Vec::new();
    for p in &live {
        let url = format!("http://127.0.0.1:{p}/servers/echo/mcp");
        loop {
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", &sid)
                .json(&echo(60, "after"))
                .send()
                .await
                .expect("send");
            if r.status() == 401 {
                let www = r
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                assert!(www.contains("invalid_token"), "{www}");
                refused_after.push(revoked.elapsed());
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(5),
                "replica {p} still serves a revoked client's token"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("revocation reached the replicas after {refused_after:?}");
    assert!(
        refused_after.iter().all(|d| *d <= Duration::from_secs(1)),
        "every replica refused within 1 s: {refused_after:?}"
    );
    // The other client is untouched.
    let (st, _, _) = rpc(&http, &endpoint, &token2, Some(&sid2), echo(70, "still")).await;
    assert!(st == 200 || st == 429, "another client keeps working: {st}");

    // RP-2: a signing-key rotation (the admin CLI on the database) reaches every replica: within
    // a second each live replica signs with the new key, and each accepts the others' tokens.
    let kid = |t: &str| {
        use base64::Engine as _;
        let h = t.split('.').next().expect("header");
        let v: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .expect("b64"),
        )
        .expect("json");
        v["kid"].as_str().expect("kid").to_owned()
    };
    let (id3, secret3) = add_machine_client(&db_url, "rotation");
    let old_kid = kid(&cc_token_for(&public, &id3, &secret3, &endpoint).await);
    let out = gatehouse()
        .args(["admin", "--db", &db_url, "keys", "rotate"])
        .output()
        .expect("admin keys rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = Instant::now();
    let mut fresh = Vec::new();
    for p in &live {
        loop {
            let t = cc_token_for(&format!("http://127.0.0.1:{p}"), &id3, &secret3, &endpoint).await;
            if kid(&t) != old_kid {
                fresh.push(t);
                break;
            }
            assert!(
                rotated.elapsed() < Duration::from_secs(1),
                "replica {p} still signs with the old key"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for t in &fresh {
        for p in &live {
            let url = format!("http://127.0.0.1:{p}/servers/echo/mcp");
            let (st, _, answer) = rpc(&http, &url, t, None, initialize()).await;
            assert_eq!(
                st, 200,
                "replica {p} takes a token signed with the new key: {answer:?}"
            );
        }
    }

    // RP-6: 100 concurrent refreshes of one refresh token, spread over the live replicas,
    // leave exactly one chain: at most the winner and its one grace twin get tokens, the rest
    // `invalid_grant` without revoking anything, and the winner's chain goes on.
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", "replica-pass-1")
        .args(["admin", "--db", &db_url, "users", "add", "alice"])
        .output()
        .expect("admin users add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = register_native_client(&public, "Race App", "http://127.0.0.1/cb").await;
    let v = gatehouse_core::PkceVerifier::generate();
    let mut u = url::Url::parse(&format!("{public}/authorize")).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &app)
        .append_pair("redirect_uri", "http://127.0.0.1:5000/cb")
        .append_pair("code_challenge", v.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", "mcp:basic")
        .append_pair("resource", &endpoint);
    let done = common::browser::Browser::new()
        .sign_in_and_approve(u.as_str(), &public, "alice", "replica-pass-1")
        .await;
    let code = done.redirect_params()["code"].clone();
    let tok = redeem_code(&format!("{public}/token"), &code, v.secret(), &app).await;
    let rt = tok["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let refresh = |rt: String| {
        let (http, public, app) = (http.clone(), public.clone(), app.clone());
        async move {
            let r = http
                .post(format!("{public}/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", &app),
                ])
                .send()
                .await
                .expect("refresh");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let before = lb.served_by().len();
    let results = futures::future::join_all((0..100).map(|_| refresh(rt.clone()))).await;
    let winners: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| v)
        .collect();
    assert!(
        (1..=2).contains(&winners.len()),
        "one winner (and at most its grace twin): {}",
        winners.len()
    );
    for (st, v) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(
            (*st, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{v}"
        );
    }
    let spread: std::collections::HashSet<String> =
        lb.served_by().into_iter().skip(before).collect();
    assert!(
        spread.len() >= 2,
        "the refreshes reached several replicas: {spread:?}"
    );
    // The winner's chain goes on, twice over.
    let first = winners[0]["refresh_token"].as_str().expect("rt").to_owned();
    let (st, next) = refresh(first).await;
    assert_eq!(st, 200, "{next}");
    let (st, last) = refresh(next["refresh_token"].as_str().expect("rt").to_owned()).await;
    assert_eq!(st, 200, "{last}");
    let at = last["access_token"].as_str().expect("access token");
    let (st, _, _) = rpc(&http, &endpoint, at, None, initialize()).await;
    assert_eq!(st, 200, "the chain's access token works");

    // Readiness: every live replica is ready.
    for p in &live {
        let r = http
            .get(format!("http://127.0.0.1:{p}/readyz"))
            .send()
            .await
            .expect("readyz");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["status"], "ready", "{v}");
    }
    drop(replicas);
    drop(lb);
    let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

/// RP-4: Redis away → the requests that need it get 503 with Retry-After (never a pass),
/// `/readyz` says not ready; Redis back → both recover by themselves, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp4_redis_down_is_503_and_not_ready_then_recovers_by_itself() {
    let db = format!("gatehouse_replicas_down_{}", free_port());
    let out = psql(&format!("CREATE DATABASE {db}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let (port, redis_port) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{port}");
    let env = vec![
        ("GATEHOUSE_DATABASE", db_url.clone()),
        (
            "GATEHOUSE_REDIS_URL",
            format!("redis://127.0.0.1:{redis_port}"),
        ),
        ("GATEHOUSE_PUBLIC_URL", public.clone()),
        (
            "GATEHOUSE_UPSTREAM_URL",
            "http://127.0.0.1:9/mcp".to_owned(),
        ),
    ];
    let _replica = replica(&env, port);
    let endpoint = format!("{public}/servers/echo/mcp");
    let http = reqwest::Client::new();
    let (id, secret) = add_machine_client(&db_url, "down");
    let token = cc_token_for(&public, &id, &secret, &endpoint).await;

    let r = http
        .post(&endpoint)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503, "no session without Redis");
    assert!(r.headers().contains_key("retry-after"));
    let r = http
        .get(format!("{public}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "not ready", "{v}");
    assert_ne!(v["checks"]["redis"], "ok", "{v}");
    assert_eq!(v["checks"]["database"], "ok", "{v}");

    // Redis comes up on that address: service resumes without a restart.
    let redis_dir = std::env::temp_dir().join(format!("gatehouse-redis-{redis_port}"));
    std::fs::create_dir_all(&redis_dir).expect("dir");
    let mut redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &redis_port.to_string(),
            "--save",
            "",
        ])
        .current_dir(&redis_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup installs it)");
    wait_port(redis_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(format!("{public}/readyz"))
            .send()
            .await
            .expect("readyz");
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again within 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, sid, answer) = rpc(&http, &endpoint, &token, None, initialize()).await;
    // The upstream is down (port 9): the session is admitted by the guard and the gateway
    // answers for the upstream, not 503 for Redis.
    assert_ne!(st, 503, "{answer:?}");
    assert!(st == 502 || sid.is_some(), "{st} {answer:?}");
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&redis_dir);
    let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

/// A private PostgreSQL server (initdb as the `postgres` user) on `port`, to stop and start.
struct PrivatePg {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    fn new(port: u16) -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL (scripts/setup installs it)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = std::env::temp_dir().join(format!("gatehouse-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let _ = Command::new("chown").arg("postgres").arg(&dir).status();
        let pg = PrivatePg { dir, bin, port };
        pg.as_postgres(&format!(
            "{} -D {}/data -U postgres --auth=trust -E UTF8 >/dev/null",
            pg.bin.join("initdb").display(),
            pg.dir.display()
        ));
        pg.start();
        pg
    }

    fn as_postgres(&self, cmd: &str) {
        let out = Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", cmd])
            .output()
            .expect("su postgres");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        self.as_postgres(&format!(
            "{} -D {d}/data -l {d}/log -w -o '-p {} -k {d} -c listen_addresses=127.0.0.1' start >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.port,
            d = self.dir.display()
        ));
    }

    fn stop(&self) {
        self.as_postgres(&format!(
            "{} -D {}/data -m immediate -w stop >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.dir.display()
        ));
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(format!(
                "{} -D {}/data -m immediate stop",
                self.bin.join("pg_ctl").display(),
                self.dir.display()
            ))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// RP-4: PostgreSQL away → the token endpoint answers 503 with Retry-After, `/readyz` says not
/// ready, and once the revocation list is 15 s old the guard refuses the issuer's tokens with
/// 503 rather than serve what may have been revoked; PostgreSQL back → all of it recovers
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp4_postgres_down_is_503_and_fails_closed_then_recovers_by_itself() {
    let pg = PrivatePg::new(free_port());
    let db_url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let env = vec![
        ("GATEHOUSE_DATABASE", db_url.clone()),
        ("GATEHOUSE_REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
        ("GATEHOUSE_PUBLIC_URL", public.clone()),
        (
            "GATEHOUSE_UPSTREAM_URL",
            "http://127.0.0.1:9/mcp".to_owned(),
        ),
    ];
    let _replica = replica(&env, port);
    let endpoint = format!("{public}/servers/echo/mcp");
    let http = reqwest::Client::new();
    let (id, secret) = add_machine_client(&db_url, "pg-down");
    let token = cc_token_for(&public, &id, &secret, &endpoint).await;
    // A bogus session id: 404 means the token passed the guard, 401/503 that it did not.
    let guard_status = |t: String| {
        let (http, endpoint) = (http.clone(), endpoint.clone());
        async move {
            http.post(&endpoint)
                .bearer_auth(&t)
                .header("mcp-session-id", "no-such-session")
                .json(&echo(1, "x"))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    assert_eq!(guard_status(token.clone()).await, 404);

    pg.stop();
    let r = http
        .post(format!("{public}/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "mcp:basic"),
            ("resource", endpoint.as_str()),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 503, "no token without the database");
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "temporarily_unavailable");
    let r = http
        .get(format!("{public}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.expect("json");
    assert_ne!(v["checks"]["database"], "ok", "{v}");
    // Fail closed once the revocation list cannot be confirmed for 15 s.
    let down = Instant::now();
    loop {
        let st = guard_status(token.clone()).await;
        if st == 503 {
            break;
        }
        assert_eq!(st, 404, "the token still passes while the list is fresh");
        assert!(
            down.elapsed() < Duration::from_secs(25),
            "never failed closed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    pg.start();
    let back = Instant::now();
    loop {
        let r = http
            .get(format!("{public}/readyz"))
            .send()
            .await
            .expect("readyz");
        if r.status() == 200 && guard_status(token.clone()).await == 404 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let fresh = cc_token_for(&public, &id, &secret, &endpoint).await;
    assert_eq!(
        guard_status(fresh).await,
        404,
        "tokens again after the database returned"
    );
}
