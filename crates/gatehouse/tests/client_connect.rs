//! Issue 4: Gatehouse's client end to end. A real MCP host (the TypeScript SDK's stdio client)
//! talks stdio to `gatehouse connect`, which logs in to `gatehouse dev` through the real login
//! and consent pages (a scripted browser started without a shell) and calls tools; a second run
//! reuses the cached token with no login; when the token has expired, two bridges started together
//! refresh it once. Plus `gatehouse token`/`logout`, and CVE-2025-6514: malicious authorization
//! endpoints are refused and nothing is launched.
mod common;

use axum::routing::get;
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const USER: &str = "bridge-user";
const PASSWORD: &str = "bridge-password-1";

fn interop() -> PathBuf {
    repo_root().join("interop")
}

struct Env {
    home: PathBuf,
    launches: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Self {
        let base = std::env::temp_dir().join(format!("gatehouse-client-{tag}-{}", free_port()));
        std::fs::create_dir_all(&base).expect("dir");
        Self {
            home: base.join("home"),
            launches: base.join("launches.log"),
        }
    }

    fn apply<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("GATEHOUSE_HOME", &self.home)
            .env("GATEHOUSE_BROWSER", interop().join("login-browser.mjs"))
            .env("LAUNCH_LOG", &self.launches)
            .env("GH_USER", USER)
            .env("GH_PASSWORD", PASSWORD)
            .env_remove("GATEHOUSE_TOKEN_KEY")
    }

    fn launches(&self) -> usize {
        std::fs::read_to_string(&self.launches)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn host(&self, url: &str) -> std::process::Child {
        let mut c = Command::new("node");
        self.apply(&mut c)
            .current_dir(interop())
            .arg("sdk-stdio-host.mjs")
            .arg(env!("CARGO_BIN_EXE_gatehouse"))
            .arg(url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().expect("node")
    }

    fn token_file(&self) -> PathBuf {
        let dir = self.home.join("tokens");
        std::fs::read_dir(&dir)
            .expect("tokens dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .expect("a token file")
    }
}

fn finish(child: std::process::Child) -> (Value, String) {
    let out: Output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "host failed: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    (serde_json::from_str(&line).expect("json line"), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_stdio_host_through_connect_login_cache_and_single_flight_refresh() {
    assert!(
        interop()
            .join("node_modules/@modelcontextprotocol/sdk")
            .exists(),
        "run scripts/setup"
    );
    let (_dev, port, _data) = gatehouse_dev_embedded(USER, PASSWORD);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let env = Env::new("e2e");

    // 1. First run: discovery, DCR, the browser login, token, tools.
    let (v, stderr) = finish(env.host(&url));
    assert_eq!(env.launches(), 1, "one login: {stderr}");
    assert!(
        v["tools"]
            .as_array()
            .expect("tools")
            .contains(&json!("add"))
    );
    assert!(v["sum"].as_str().expect("sum").contains("42"), "{v}");
    assert!(v["whoami"].as_str().expect("whoami").contains(USER), "{v}");
    assert!(stderr.contains("logged in to"), "{stderr}");

    // The cache is a private file holding no password; the bridge printed no token.
    let file = env.token_file();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
    let cached: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let at = cached["tokens"]["access_token"]
        .as_str()
        .expect("at")
        .to_owned();
    let rt = cached["tokens"]["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    assert!(!stderr.contains(&at) && !stderr.contains(&rt) && !stderr.contains(PASSWORD));

    // 2026-07-28 refresh-token rules (CL-22, AS-31, RS-20): the authorization server lists
    // `offline_access`, the protected resource does not; the client asked for it, got a refresh
    // token, and the access token does not carry it as a permission.
    let http = reqwest::Client::new();
    let get = |u: String| {
        let http = http.clone();
        async move {
            http.get(u)
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let as_meta = get(format!(
        "http://127.0.0.1:{port}/.well-known/oauth-authorization-server"
    ))
    .await;
    let prm = get(format!(
        "http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
    ))
    .await;
    assert!(
        as_meta["scopes_supported"]
            .as_array()
            .expect("as scopes")
            .contains(&json!("offline_access"))
    );
    assert!(
        !prm["scopes_supported"]
            .as_array()
            .expect("prm scopes")
            .contains(&json!("offline_access"))
    );
    let launched = std::fs::read_to_string(&env.launches).expect("launch log");
    let auth_url = url::Url::parse(launched.lines().next().expect("a launch")).expect("url");
    let asked = auth_url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .expect("scope");
    assert!(asked.split(' ').any(|s| s == "offline_access"), "{asked}");
    assert!(asked.split(' ').any(|s| s == "mcp:basic"), "{asked}");
    let at_scope = jwt_claims(&at)["scope"].as_str().expect("scope").to_owned();
    assert!(
        !at_scope.split(' ').any(|s| s == "offline_access"),
        "{at_scope}"
    );

    // 2. Second run: the cached token, no login.
    let (v, stderr) = finish(env.host(&url));
    assert_eq!(env.launches(), 1, "no second login: {stderr}");
    assert!(v["sum"].as_str().expect("sum").contains("42"));
    assert!(
        !stderr.contains("logged in") && !stderr.contains("refreshed"),
        "{stderr}"
    );

    // `gatehouse token` prints the cached token for scripts.
    let mut c = gatehouse();
    let out = env
        .apply(&mut c)
        .args(["token", &url])
        .output()
        .expect("token");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), at);

    // 3. The access token has expired: two bridges started together refresh it once (the
    //    cross-process lock), and neither logs in again.
    let mut expired = cached.clone();
    expired["tokens"]["expires_at"] = json!(1);
    std::fs::write(&file, serde_json::to_vec(&expired).expect("json")).expect("write");
    let (a, b) = (env.host(&url), env.host(&url));
    let ((va, ea), (vb, eb)) = (finish(a), finish(b));
    assert!(va["sum"].as_str().expect("sum").contains("42"));
    assert!(vb["sum"].as_str().expect("sum").contains("42"));
    let refreshes = format!("{ea}{eb}")
        .matches("access token refreshed")
        .count();
    assert_eq!(refreshes, 1, "single-flight refresh:\n{ea}\n---\n{eb}");
    assert_eq!(env.launches(), 1, "no login after an expiry");
    let now: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let rt2 = now["tokens"]["refresh_token"].as_str().expect("rt");
    assert_ne!(
        rt2, rt,
        "the rotated refresh token replaced the old one (CL-21)"
    );

    // 4. logout revokes the refresh token and forgets the tokens.
    let reg_file = std::fs::read_dir(env.home.join("clients"))
        .expect("clients dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("the dynamic registration is kept per issuer");
    let reg: Value = serde_json::from_slice(&std::fs::read(reg_file).expect("read")).expect("json");
    let client_id = reg["client_id"].as_str().expect("client_id").to_owned();
    let mut c = gatehouse();
    let out = env
        .apply(&mut c)
        .args(["logout", &url])
        .output()
        .expect("logout");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!file.exists());
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt2),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 400, "the refresh token no longer works");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "invalid_grant");
    let mut c = gatehouse();
    let out = env
        .apply(&mut c)
        .args(["token", &url])
        .output()
        .expect("token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gatehouse login"));
}

/// A protected-resource and authorization-server pair on loopback whose metadata carries
/// `authorization_endpoint`.
async fn hostile_server(authorization_endpoint: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let b = base.clone();
    let b2 = base.clone();
    let app = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::post(move || {
                let b = b.clone();
                async move {
                    (
                        axum::http::StatusCode::UNAUTHORIZED,
                        [(
                            "www-authenticate",
                            format!(
                                "Bearer resource_metadata=\"{b}/.well-known/oauth-protected-resource/mcp\""
                            ),
                        )],
                    )
                }
            }),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(move || {
                let b = b2.clone();
                async move { axum::Json(json!({"resource": format!("{b}/mcp"), "authorization_servers": [b]})) }
            }),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get({
                let b = base.clone();
                move || {
                    let b = b.clone();
                    async move {
                        axum::Json(json!({
                            "issuer": b,
                            "authorization_endpoint": authorization_endpoint,
                            "token_endpoint": format!("{b}/token"),
                            "registration_endpoint": format!("{b}/register"),
                            "code_challenge_methods_supported": ["S256"],
                        }))
                    }
                }
            }),
        )
        .route(
            "/register",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({"client_id": "c1", "token_endpoint_auth_method": "none"})),
                )
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("{base}/mcp")
}

/// `gatehouse login` with a "browser" that only creates `marker`. A login that was not refused
/// waits for a redirect: it is stopped after a while (or, with `stop_once_launched`, as soon as
/// the browser ran), so a regression fails fast instead of hanging.
fn login_with_marker(url: &str, marker: &Path, home: &Path, stop_once_launched: bool) -> Output {
    // The "browser" would create the marker if it were ever started.
    let browser = marker.with_extension("sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut child = gatehouse()
        .env("GATEHOUSE_HOME", home)
        .env("GATEHOUSE_BROWSER", &browser)
        .args(["login", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("login");
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if stop_once_launched && marker.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("login output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl25_cve_2025_6514_malicious_authorization_endpoints_are_refused_and_nothing_launches() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cve-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pwned = dir.join("pwned");
    for (i, endpoint) in [
        "javascript:alert(document.cookie)",
        "file:///etc/passwd",
        "$(touch /tmp/gatehouse-pwned)",
        "https://evil.example/authorize?x=`touch${IFS}/tmp/gatehouse-pwned`",
        "https://evil.example/a\"&calc.exe&\"",
        "https://evil.example/authorize;calc.exe",
        "https://evil.example/$(id)",
        "http://auth.example.com/authorize",
    ]
    .into_iter()
    .enumerate()
    {
        let url = hostile_server(endpoint).await;
        let marker = dir.join(format!("launched-{i}"));
        let out = tokio::task::spawn_blocking({
            let (url, marker, home) = (url.clone(), marker.clone(), dir.join(format!("home-{i}")));
            move || login_with_marker(&url, &marker, &home, false)
        })
        .await
        .expect("join");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{endpoint:?} must be refused");
        assert!(
            stderr.contains("refusing authorization_endpoint"),
            "{endpoint:?}: {stderr}"
        );
        assert!(!marker.exists(), "{endpoint:?}: a browser was launched");
    }
    assert!(!pwned.exists() && !Path::new("/tmp/gatehouse-pwned").exists());

    // Control: the same server with an honest https endpoint does launch the browser program,
    // so the assertions above are not vacuous.
    let url = hostile_server("https://auth.example.com/authorize").await;
    let marker = dir.join("launched-control");
    let out = tokio::task::spawn_blocking({
        let (url, marker, home) = (url, marker.clone(), dir.join("home-control"));
        move || login_with_marker(&url, &marker, &home, true)
    })
    .await;
    assert!(out.is_ok());
    assert!(
        marker.exists(),
        "the control login started the browser program"
    );
}

/// RFC 8628 device authorization grant, for hosts with no browser, against the real
/// oidc-provider: the client prints the code, hands the verification URL to the "browser" (here
/// a script that confirms the code and signs in through oidc-provider's pages), polls, and the
/// token it keeps is accepted by the guarded server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_authorization_grant_with_oidc_provider() {
    let op_port = free_port();
    let _op = oidc_provider_with(op_port, &[("DEVICE_FLOW", "1")]);
    let issuer = format!("http://127.0.0.1:{op_port}");
    let (_dev, url) = gatehouse_dev(&issuer);
    let env = Env::new("device");
    let mut c = gatehouse();
    env.apply(&mut c)
        .env("GATEHOUSE_BROWSER", interop().join("device-approve.mjs"))
        .args(["login", &url, "--client-id", "gatehouse-device", "--device"]);
    let out = tokio::task::spawn_blocking(move || c.output().expect("login"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("enter the code"), "{stderr}");
    assert_eq!(env.launches(), 1);
    let mut c = gatehouse();
    let out = env
        .apply(&mut c)
        .args(["token", &url])
        .output()
        .expect("token");
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let claims = jwt_claims(&token);
    assert_eq!(
        claims["aud"],
        json!(url),
        "audience-bound to the server (CL-09)"
    );
    // oidc-provider offers DPoP (ES256), so the client bound the token to its key (RFC 9449).
    // Sent as a plain bearer token it is refused: a bound token is no bearer token (RS-H1,
    // issue 14, row 13); with the client's proofs our guard takes it (DP-2, issue 17 part 5).
    assert!(
        claims["cnf"]["jkt"].as_str().is_some(),
        "DPoP-bound: {claims}"
    );
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await
        .expect("initialize");
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.contains("invalid_token") && challenge.contains("bound to a key"),
        "{challenge}"
    );
    assert!(!stderr.contains(&token));
    let (v, _) = finish(env.host(&url));
    assert_eq!(v["sum"], json!(r#"{"sum":42}"#), "{v}");
    assert!(
        v["whoami"]
            .as_str()
            .is_some_and(|w| w.contains(&format!("\"issuer\":\"{issuer}\""))),
        "{v}"
    );
    assert_eq!(
        env.launches(),
        1,
        "the cached DPoP-bound token served the host"
    );
}

/// Tokens sealed with a key kept in the OS keyring: a real Secret Service (gnome-keyring on a
/// private D-Bus session, installed by scripts/setup). The token file holds no token in the
/// clear, and without the keyring it cannot be opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl21_tokens_sealed_with_a_key_from_the_os_keyring() {
    let (_dev, port, _data) = gatehouse_dev_embedded(USER, PASSWORD);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let env = Env::new("keyring");
    let home = env.home.parent().expect("base").join("user-home");
    std::fs::create_dir_all(&home).expect("home");
    // One D-Bus session: unlock a fresh keyring, log in, read the token back twice (with the
    // keyring, and with it turned off).
    let script = r#"set -e
echo -n keyring-test-pass | gnome-keyring-daemon --unlock --components=secrets >/dev/null
# The daemon takes its bus name after it answers; wait for it (at most 10 s) so the client does
# not start a second, locked one through D-Bus activation.
i=0
until dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets | grep -q 'boolean true'; do
  i=$((i+1)); [ $i -lt 100 ] || { echo "no secret service on the bus" >&2; exit 1; }
  sleep 0.1
done
"$GH" login "$URL" 2>"$OUT/login.err"
"$GH" token "$URL" >"$OUT/token.txt"
GATEHOUSE_KEYRING=off "$GH" token "$URL" >/dev/null 2>"$OUT/nokeyring.err" && echo opened-without-keyring >"$OUT/nokeyring.err" || true
"#;
    let out_dir = env.home.parent().expect("base").to_path_buf();
    // A private runtime folder: gnome-keyring finds a running daemon through
    // $XDG_RUNTIME_DIR/keyring, and one left by another session would answer on another bus.
    let runtime = home.join("run");
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("0700");
    let mut c = Command::new("dbus-run-session");
    env.apply(&mut c)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env("GH", env!("CARGO_BIN_EXE_gatehouse"))
        .env("URL", &url)
        .env("OUT", &out_dir)
        .args(["--", "sh", "-c", script]);
    let out = tokio::task::spawn_blocking(move || {
        c.output()
            .expect("dbus-run-session (scripts/setup installs it)")
    })
    .await
    .expect("join");
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        read("login.err")
    );
    assert!(
        !read("login.err").contains("no OS keyring"),
        "{}",
        read("login.err")
    );
    let token = read("token.txt").trim().to_owned();
    assert_eq!(jwt_claims(&token)["aud"], json!(url));
    let raw = std::fs::read_to_string(env.token_file()).expect("token file");
    assert!(
        raw.starts_with("gatehouse-sealed-v1:"),
        "sealed: {}",
        read("login.err")
    );
    assert!(!raw.contains(&token), "no token in the clear");
    assert!(
        read("nokeyring.err").contains("sealed"),
        "without the keyring the file cannot be opened: {}",
        read("nokeyring.err")
    );
}
