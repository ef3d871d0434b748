//! Issue 17, part 2: the device authorization grant (RFC 8628) on Gatehouse's own authorization
//! server. `gatehouse login --device` against `gatehouse dev`, with the verification page driven
//! in headless Chromium (DG-1, DG-2); the rules over plain HTTP as a scripted browser and a
//! polling device would meet them (DG-2 … DG-4).
mod common;

use common::browser::Browser;
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

const USER: &str = "device-owner";
const PASSWORD: &str = "device-password-1";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn interop() -> PathBuf {
    repo_root().join("interop")
}

/// DG-1, DG-2, issue 17's outside check: the client prints the code, the user types it into the
/// verification page's one field in a real browser, signs in and approves; the client's polling
/// ends with a DPoP-bound, audience-bound token, which a real MCP host then uses through
/// `gatehouse connect` with fresh proofs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dg1_dg2_gatehouse_login_device_against_dev_in_headless_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run scripts/setup (the README's test command does)"
    );
    let (_dev, port, _data) = gatehouse_dev_embedded(USER, PASSWORD);
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/mcp");
    let meta: Value = reqwest::get(format!("{base}/.well-known/oauth-authorization-server"))
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(
        meta["device_authorization_endpoint"],
        json!(format!("{base}/device_authorization"))
    );
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(DEVICE_GRANT))),
        "{meta}"
    );
    let dir = std::env::temp_dir().join(format!("gatehouse-device-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (launches, result) = (dir.join("launches.log"), dir.join("result.txt"));
    let env = |c: &mut Command| {
        c.env("GATEHOUSE_HOME", dir.join("home"))
            .env("GATEHOUSE_BROWSER", interop().join("device-chromium.mjs"))
            .env("LAUNCH_LOG", &launches)
            .env("GH_DEVICE_RESULT", &result)
            .env("GH_USER", USER)
            .env("GH_PASSWORD", PASSWORD)
            .env_remove("GATEHOUSE_TOKEN_KEY");
    };
    let mut c = gatehouse();
    env(&mut c);
    c.args(["login", &url, "--device"]);
    let out = tokio::task::spawn_blocking(move || c.output().expect("login"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}\nbrowser: {:?}",
        std::fs::read_to_string(&result)
    );
    assert!(
        stderr.contains(&format!("visit {base}/device and enter the code")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&result).expect("the browser ran"),
        "Device connected\n"
    );
    let mut c = gatehouse();
    env(&mut c);
    let out = c.args(["token", &url]).output().expect("token");
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!stderr.contains(&token), "the token is never printed");
    let claims = jwt_claims(&token);
    assert_eq!(claims["aud"], json!(url), "audience-bound");
    assert_eq!(claims["sub"], json!(USER));
    assert!(claims["cnf"]["jkt"].is_string(), "DPoP-bound: {claims}");
    // As a bearer token it is refused; through the client (proofs per request) it works.
    assert_eq!(mcp_initialize_status(&url, &token).await, 401);
    let line = stdio_host(&url, env).await;
    assert_eq!(line["sum"], json!(r#"{"sum":42}"#), "{line}");
    assert!(
        line["whoami"]
            .as_str()
            .is_some_and(|w| w.contains(&format!("\"subject\":\"{USER}\""))),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(&launches)
            .expect("launch log")
            .lines()
            .count(),
        1,
        "the cached token served the host; no second login"
    );
}

struct Device {
    base: String,
    mcp: String,
    http: reqwest::Client,
}

impl Device {
    async fn register(&self, grants: &[&str]) -> String {
        let r = self
            .http
            .post(format!("{}/register", self.base))
            .json(&json!({
                "client_name": "Smart TV",
                "redirect_uris": ["http://127.0.0.1/callback"],
                "grant_types": grants,
                "token_endpoint_auth_method": "none",
                "application_type": "native",
            }))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.expect("json");
        v["client_id"].as_str().expect("client_id").to_owned()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    async fn start(&self, client_id: &str) -> (String, String) {
        let (st, v) = self
            .post(
                "/device_authorization",
                &[
                    ("client_id", client_id),
                    ("scope", "mcp:basic"),
                    ("resource", &self.mcp),
                ],
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["verification_uri"],
            json!(format!("{}/device", self.base))
        );
        assert_eq!(
            (v["expires_in"].as_i64(), v["interval"].as_i64()),
            (Some(600), Some(5))
        );
        let user_code = v["user_code"].as_str().expect("user_code").to_owned();
        assert_eq!(
            v["verification_uri_complete"],
            json!(format!("{}/device?user_code={user_code}", self.base))
        );
        (
            v["device_code"].as_str().expect("device_code").to_owned(),
            user_code,
        )
    }

    async fn poll(&self, client_id: &str, device_code: &str) -> (u16, Value) {
        self.post(
            "/token",
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", device_code),
                ("client_id", client_id),
            ],
        )
        .await
    }

    /// Opens the verification page and submits `typed`: the page that follows.
    async fn enter(&self, b: &mut Browser, typed: &str) -> common::browser::Page {
        let page = b.get(&format!("{}/device", self.base)).await;
        assert_eq!(page.status, 200);
        let csrf = page.field("csrf").expect("csrf");
        b.post_form(
            &format!("{}/device", self.base),
            &[("csrf", &csrf), ("user_code", typed)],
        )
        .await
    }
}

/// DG-2 … DG-4 over HTTP: registration for the grant, the device endpoint's checks, the page's
/// one field and CSRF token, login then consent (always shown, with the phishing warning),
/// answers recorded once, polling paced with slow_down, one token per device code and a second
/// use revoking it, denial, other clients' codes, and brute force on user codes locked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dg2_dg3_dg4_device_grant_rules() {
    let (_dev, port, _data) = gatehouse_dev_embedded(USER, PASSWORD);
    let base = format!("http://127.0.0.1:{port}");
    let d = Device {
        mcp: format!("{base}/mcp"),
        base,
        http: reqwest::Client::new(),
    };
    let tv = d.register(&[DEVICE_GRANT, "refresh_token"]).await;
    let other = d.register(&[DEVICE_GRANT]).await;
    let web = d.register(&["authorization_code"]).await;

    // The device endpoint checks what the authorization endpoint checks.
    let (st, v) = d
        .post("/device_authorization", &[("client_id", &web)])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{v}"
    );
    let (st, v) = d
        .post(
            "/device_authorization",
            &[
                ("client_id", &tv),
                ("resource", "https://elsewhere.example/mcp"),
            ],
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_target")),
        "{v}"
    );
    let (st, v) = d
        .post(
            "/device_authorization",
            &[("client_id", &tv), ("scope", "admin:all")],
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_scope")),
        "{v}"
    );
    let (st, v) = d
        .post("/device_authorization", &[("client_id", "no-such-client")])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );

    let (device_code, user_code) = d.start(&tv).await;
    // Polled before the user answered; then again at once: slow down.
    let (st, v) = d.poll(&tv, &device_code).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let (st, v) = d.poll(&tv, &device_code).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("slow_down")), "{v}");
    // Another client cannot use this device code.
    let (st, v) = d.poll(&other, &device_code).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );

    // The page: one text field, a CSRF token, not frameable.
    let mut b = Browser::new();
    let page = b
        .get(&format!("{}/device?user_code={user_code}", d.base))
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body.matches("type=\"text\"").count(),
        1,
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("value=\"{user_code}\"")),
        "prefilled"
    );
    assert!(
        page.body
            .contains("Never enter a code that someone sent you")
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    // Without the page's CSRF cookie (a cross-site post): refused, nothing found.
    let (st, _) = {
        let r = d
            .http
            .post(format!("{}/device", d.base))
            .form(&[("csrf", "forged"), ("user_code", user_code.as_str())])
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), ())
    };
    assert_eq!(st, 400);
    // A wrong code: told so, nothing else.
    let page = d.enter(&mut b, "BBBB-BBBB").await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("not valid or has expired"));
    // The right code, typed loosely: the login page, then consent with the warning.
    let typed = user_code.to_lowercase().replace('-', " ");
    let login = d.enter(&mut b, &typed).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("type=\"password\""));
    let (p, c) = (
        login.field("pending").expect("pending"),
        login.field("csrf").expect("csrf"),
    );
    let consent = b
        .post_form(
            &format!("{}/login", d.base),
            &[
                ("pending", &p),
                ("csrf", &c),
                ("username", USER),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Smart TV"));
    assert!(
        consent.body.contains("unverified"),
        "a self-registered client is marked"
    );
    assert!(
        consent
            .body
            .contains("If someone gave you the code, choose Deny")
    );
    assert!(
        !consent.body.contains("Sends you back to"),
        "no redirect for a device"
    );
    let done = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Device connected"), "{}", done.body);
    let again = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", &c), ("decision", "deny")],
        )
        .await;
    assert_eq!(again.status, 400, "answered once");
    // The code cannot be entered again once answered.
    let page = d.enter(&mut b, &user_code).await;
    assert_eq!(page.status, 400);

    // The interval is now 10 s; polling after it gets the tokens, once.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let (st, tok) = d.poll(&tv, &device_code).await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["token_type"], "Bearer");
    assert!(tok["refresh_token"].is_string());
    let at = tok["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let claims = jwt_claims(&at);
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str()),
        (Some(USER), Some(d.mcp.as_str()))
    );
    assert_eq!(mcp_initialize_status(&d.mcp, &at).await, 200);
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let (st, v) = d.poll(&tv, &device_code).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(
        mcp_initialize_status(&d.mcp, &at).await,
        401,
        "a second use revokes"
    );
    let (st, v) = d
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tok["refresh_token"].as_str().expect("rt")),
                ("client_id", &tv),
            ],
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );

    // Signed in already: consent is still asked (never remembered for a device); deny.
    let (device_code, user_code) = d.start(&tv).await;
    let consent = d.enter(&mut b, &user_code).await;
    assert_eq!(consent.status, 200);
    assert!(
        consent.body.contains("value=\"approve\""),
        "{}",
        consent.body
    );
    let (p, c) = (
        consent.field("pending").expect("pending"),
        consent.field("csrf").expect("csrf"),
    );
    let done = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", &c), ("decision", "deny")],
        )
        .await;
    assert!(done.body.contains("Access denied"));
    let (st, v) = d.poll(&tv, &device_code).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("access_denied")),
        "{v}"
    );

    // Brute force: ten wrong codes from one address (two above), then even a right one is
    // refused.
    let (_, user_code) = d.start(&tv).await;
    let mut b = Browser::new();
    for i in 0..8 {
        let page = d.enter(&mut b, "ZZZZ-ZZZZ").await;
        assert_eq!(page.status, 400, "wrong code {i}");
    }
    let page = d.enter(&mut b, &user_code).await;
    assert_eq!(page.status, 429, "locked out: {}", page.body);
    assert_eq!(page.headers["retry-after"], "900");
}
