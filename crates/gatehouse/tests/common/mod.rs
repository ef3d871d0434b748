//! Process fixtures for end-to-end tests: the real `gatehouse` binary and real peers from npm.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures fail loudly"
)]

pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const CLIENT_ID: &str = "gatehouse-interop";
pub const CLIENT_SECRET: &str = "interop-secret-not-for-production";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A child process killed on drop, with its output captured.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn pump(
    r: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            // Stored before it is signalled, so a waiter finds it in the sink.
            sink.lock().unwrap().push(line.clone());
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}

impl Proc {
    /// Starts `cmd` and waits until a stdout line contains `ready`.
    pub fn start(mut cmd: Command, ready: &str) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().unwrap(), stdout.clone(), Some(tx));
        pump(child.stderr.take().unwrap(), stderr.clone(), None);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(ready) => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "{cmd:?} did not print {ready:?}\nstdout: {:?}\nstderr: {:?}",
                        stdout.lock().unwrap(),
                        stderr.lock().unwrap()
                    );
                }
            }
        }
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    pub fn all_output(&self) -> String {
        let mut s = self.stdout.lock().unwrap().join("\n");
        s.push('\n');
        s.push_str(&self.stderr.lock().unwrap().join("\n"));
        s
    }

    /// SIGKILL: no chance to clean up, as when a machine dies.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (waiting at most `secs`).
    pub fn terminate(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `oidc-provider` from npm (installed by `scripts/setup`), on `port`.
pub fn oidc_provider(port: u16) -> Proc {
    oidc_provider_with(port, &[])
}

/// `oidc_provider` with extra environment (e.g. `UPSTREAM_REDIRECT` for its upstream-IdP mode).
pub fn oidc_provider_with(port: u16, env: &[(&str, &str)]) -> Proc {
    let dir = repo_root().join("interop");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "oidc-provider is not installed: run scripts/setup (the README's test command does)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("oidc-provider.mjs")
        .arg(port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::start(cmd, "READY")
}

pub fn gatehouse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

/// `gatehouse serve --config CFG`, once it is ready.
pub fn serve(cfg: &std::path::Path) -> Proc {
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(cfg);
    Proc::start(cmd, "ready")
}

/// `gatehouse dev` on a free port trusting `issuer`; returns the process and the endpoint URL.
pub fn gatehouse_dev(issuer: &str) -> (Proc, String) {
    let port = free_port();
    let mut cmd = gatehouse();
    let data = std::env::temp_dir().join(format!("gatehouse-dev-{port}"));
    cmd.args([
        "dev",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--issuer",
        issuer,
    ])
    .arg("--data-dir")
    .arg(&data);
    (
        Proc::start(cmd, "ready"),
        format!("http://127.0.0.1:{port}/mcp"),
    )
}

/// `gatehouse dev` with the embedded authorization server and a dev user; returns the process, the
/// port and the data folder (whose `gatehouse.db` the admin CLI can open).
pub fn gatehouse_dev_embedded(user: &str, password: &str) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let data = std::env::temp_dir().join(format!("gatehouse-dev-{port}"));
    let mut cmd = gatehouse();
    cmd.env("GATEHOUSE_DEV_USER", user)
        .env("GATEHOUSE_DEV_PASSWORD", password)
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data);
    (Proc::start(cmd, "ready"), port, data)
}

/// A client_credentials token from oidc-provider for `resource` with `scope`.
pub async fn cc_token(issuer: &str, resource: &str, scope: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("resource", resource),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200, "token endpoint refused");
    let v: serde_json::Value = resp.json().await.expect("token json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

/// The payload of a JWT, undecoded by any validator (tests inspect what was issued).
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let p = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .expect("b64"),
    )
    .expect("json")
}

/// Status of an MCP `initialize` POST to `endpoint` with `token` (200 when the guard lets it in).
pub async fn mcp_initialize_status(endpoint: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(endpoint)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await
        .expect("mcp initialize")
        .status()
        .as_u16()
}

/// A confidential machine client (client_credentials, scope mcp:basic) in the AS database.
pub fn add_machine_client(db: &str, name: &str) -> (String, String) {
    added_client(
        &gatehouse()
            .args([
                "admin",
                "--db",
                db,
                "clients",
                "add",
                "--name",
                name,
                "--confidential",
                "--grant",
                "client_credentials",
                "--scope",
                "mcp:basic",
            ])
            .output()
            .expect("admin"),
    )
}

/// The `client_id` and `client_secret` that `gatehouse admin … clients add` printed.
pub fn added_client(out: &std::process::Output) -> (String, String) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .expect("line")
            .trim()
            .to_owned()
    };
    (get("client_id:"), get("client_secret:"))
}

/// Redeems an authorization code for a public client (PKCE); the token response.
pub async fn redeem_code(
    token_url: &str,
    code: &str,
    verifier: &str,
    client_id: &str,
) -> serde_json::Value {
    reqwest::Client::new()
        .post(token_url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json")
}

/// rmcp's real MCP client, initialized against `endpoint` with `token` as its bearer.
pub async fn mcp_client(
    endpoint: &str,
    token: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt as _;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(endpoint.to_owned());
    cfg.auth_header = Some(token.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .expect("MCP initialize through the guard")
}

/// `@modelcontextprotocol/server-everything` (Streamable HTTP) on `port`, started by node.
pub fn server_everything(port: u16) -> Proc {
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(repo_root().join("interop"))
        .env("PORT", port.to_string())
        .args([
            "node_modules/@modelcontextprotocol/server-everything/dist/index.js",
            "streamableHttp",
        ]);
    // It reports readiness on stderr only; wait for the port instead.
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .expect("node (scripts/setup installs server-everything)");
    let p = Proc {
        child,
        stdout: std::sync::Arc::default(),
        stderr: std::sync::Arc::default(),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("server-everything did not start");
}

/// A `client_credentials` token (scope `mcp:basic`) for `resource` from the issuer at `base`.
pub async fn cc_token_for(base: &str, id: &str, secret: &str, resource: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "mcp:basic"),
            ("resource", resource),
        ])
        .send()
        .await
        .expect("token");
    let v: serde_json::Value = r.json().await.expect("json");
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned()
}

/// A real MCP host (the TypeScript SDK's stdio client, `interop/sdk-stdio-host.mjs`) that starts
/// `gatehouse connect URL` and calls `add` and `whoami` through it, with the environment `env`
/// sets up (GATEHOUSE_HOME and the like). Its JSON line: `{tools, sum, whoami}`.
pub async fn stdio_host(url: &str, env: impl FnOnce(&mut Command)) -> serde_json::Value {
    let mut host = Command::new("node");
    env(&mut host);
    host.current_dir(repo_root().join("interop"))
        .arg("sdk-stdio-host.mjs")
        .arg(env!("CARGO_BIN_EXE_gatehouse"))
        .arg(url);
    let out = tokio::task::spawn_blocking(move || host.output().expect("node"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .expect("json line")
}

/// Runs the openssl CLI in `dir`; it must succeed.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (made once per `dir`), and a server certificate for 127.0.0.1 and localhost signed by it with `serial`.
pub fn make_certs(dir: &std::path::Path, serial: &str) {
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Gatehouse test CA",
            ],
        );
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "new.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "new.pem",
        ],
    );
    // Moved into place whole, as a certificate manager would.
    std::fs::rename(dir.join("new.key"), dir.join("server.key")).expect("key");
    std::fs::rename(dir.join("new.pem"), dir.join("server.pem")).expect("cert");
}

/// One SQL statement as `postgres` on the local PostgreSQL (`scripts/setup` starts it).
pub fn psql(sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .output()
        .expect("psql (scripts/setup installs PostgreSQL)")
}

/// A client that trusts the CA in `ca_pem` (a test CA from [`make_certs`]).
pub fn https_client(ca_pem: &std::path::Path) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(ca_pem).expect("ca")).expect("pem"),
        )
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Registers a public native client (code + refresh grants) at `base/register`; its client_id.
pub async fn register_native_client(base: &str, name: &str, redirect_uri: &str) -> String {
    let reg: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/register"))
        .json(
            &serde_json::json!({"client_name": name, "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none", "application_type": "native"}),
        )
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    reg["client_id"].as_str().expect("client_id").to_owned()
}

/// An authorization request (code, PKCE S256) at `base/authorize`.
pub fn authorize_url(
    base: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &gatehouse_core::PkceVerifier,
    scope: &str,
    resource: &str,
) -> String {
    let mut u = url::Url::parse(&format!("{base}/authorize")).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("code_challenge", verifier.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", scope)
        .append_pair("resource", resource);
    u.to_string()
}
