//! Issue 18 part 4: the admin console (`/admin`) and the account page (`/account`), driven in
//! Debian's headless Chromium by `interop/console-chromium.mjs` (keyboard-only sign-in and
//! navigation, axe-core accessibility checks, screenshots kept under
//! `<target>/artefacts/console/`), plus what an attacker would try without a browser: no
//! session, a user who is not an administrator, a post without the page's CSRF token or from
//! another origin, a sign-in form without its cookie. Requirement ids CO-1 … CO-3.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod common;

use common::browser::Browser;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const ALICE_PW: &str = "alice-admin-pass-1";
const BOB_PW: &str = "bob-user-pass-1";

fn add_user(db: &str, name: &str, password: &str) {
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", password)
        .args(["admin", "--db", db, "users", "add", name])
        .output()
        .expect("admin");
    assert!(out.status.success(), "{out:?}");
}

/// A self-registered public client approved by bob for `resource`: (client_id, token response).
async fn approve(base: &str, resource: &str, name: &str) -> (String, Value) {
    let http = reqwest::Client::new();
    let redirect = "http://127.0.0.1:5112/cb";
    let client_id = register_native_client(base, name, redirect).await;
    let v = gatehouse_core::PkceVerifier::generate();
    let u = authorize_url(
        base,
        &client_id,
        redirect,
        &v,
        "mcp:basic offline_access",
        resource,
    );
    let done = Browser::new()
        .sign_in_and_approve(&u, base, "bob", BOB_PW)
        .await;
    let code = done.redirect_params()["code"].clone();
    let tok: Value = http
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", v.secret()),
            ("client_id", &client_id),
            ("redirect_uri", redirect),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert!(tok["refresh_token"].is_string(), "{tok}");
    (client_id, tok)
}

async fn refresh_status(base: &str, client_id: &str, tok: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tok["refresh_token"].as_str().expect("rt")),
            ("client_id", client_id),
        ])
        .send()
        .await
        .expect("refresh");
    (r.status().as_u16(), r.json().await.expect("json"))
}

/// Polls until the guard refuses `token` (revocation reaches it within a second or two).
async fn refused_within(endpoint: &str, token: &str, secs: u64) -> bool {
    for _ in 0..secs * 10 {
        if mcp_initialize_status(endpoint, token).await == 401 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Signs in through the console's own form (no browser): the session cookie is in `b`.
async fn console_sign_in(b: &mut Browser, base: &str, user: &str, password: &str) -> Page {
    let form = b.get(&format!("{base}/account/signin?next=admin")).await;
    assert_eq!(form.status, 200);
    let csrf = form.field("csrf").expect("csrf");
    b.post_form(
        &format!("{base}/account/signin"),
        &[
            ("csrf", &csrf),
            ("next", "admin"),
            ("username", user),
            ("password", password),
        ],
    )
    .await
}

use common::browser::Page;

/// CO-1, CO-2, CO-3: the console and the account page in a real browser, and the changes they
/// make taking effect at the token endpoint and the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co1_console_and_account_page_in_headless_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run scripts/setup (the README's test command does)"
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-console-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    add_user(&db, "alice", ALICE_PW);
    add_user(&db, "bob", BOB_PW);
    let everything_port = free_port();
    let _everything = server_everything(everything_port);
    let audit = dir.join("audit.jsonl");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\n  admin:\n    users: [alice]\ngateway:\n  audit_log: {}\n  upstreams:\n    - name: everything\n      url: http://127.0.0.1:{everything_port}/mcp\n",
            audit.display()
        ),
    )
    .expect("config");
    let _server = serve(&cfg);
    let endpoint = format!("{base}/servers/everything/mcp");

    // Bob approves two apps; both work at the gateway.
    let (app_a, tok_a) = approve(&base, &endpoint, "Revoked By Admin").await;
    let (app_b, tok_b) = approve(&base, &endpoint, "Revoked By Bob").await;
    for t in [&tok_a, &tok_b] {
        let at = t["access_token"].as_str().expect("at");
        assert_eq!(mcp_initialize_status(&endpoint, at).await, 200);
    }
    // A refusal for the gateway's audit log.
    assert_eq!(mcp_initialize_status(&endpoint, "not-a-token").await, 401);

    // ---- without a browser: what a stranger or a plain user can do (CO-1) ----
    let mut anon = Browser::new();
    let r = anon.get(&format!("{base}/admin")).await;
    assert_eq!(r.status, 303, "no session: sent to sign in");
    assert_eq!(
        r.location().as_deref(),
        Some(format!("{base}/account/signin?next=admin").as_str())
    );
    let r = anon
        .post_form(
            &format!("{base}/admin/users"),
            &[
                ("csrf", "x"),
                ("op", "add"),
                ("username", "mallory"),
                ("password", "mallory-pass-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "no session: a post does nothing");
    // Login CSRF: a sign-in post without the form's cookie starts no session.
    let r = Browser::new()
        .post_form(
            &format!("{base}/account/signin"),
            &[
                ("csrf", "forged"),
                ("next", "admin"),
                ("username", "alice"),
                ("password", ALICE_PW),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("gh_session="))
    );
    // Wrong password: 401 and the form again.
    let mut b = Browser::new();
    let r = console_sign_in(&mut b, &base, "alice", "wrong-password").await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong user name or password."));
    // T19: the console's sign-in is throttled like the login page (one mechanism): guesses at a
    // name that is no account soon wait, told so with Retry-After.
    let mut throttled = None;
    for _ in 0..10 {
        let r = console_sign_in(&mut Browser::new(), &base, "no-such-admin", "guess").await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
    }
    let r = throttled.expect("throttled within 10 guesses");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(r.body.contains("Too many failed sign-ins"), "{}", r.body);

    // Bob is signed in but not an administrator: 403 on every console page and action.
    let mut bob = Browser::new();
    let r = console_sign_in(&mut bob, &base, "bob", BOB_PW).await;
    assert_eq!(r.status, 303);
    for p in ["/admin", "/admin/users", "/admin/audit"] {
        assert_eq!(bob.get(&format!("{base}{p}")).await.status, 403, "{p}");
    }
    let account = bob.get(&format!("{base}/account")).await;
    assert_eq!(account.status, 200);
    let bob_csrf = account.field("csrf").expect("csrf");
    let r = bob
        .post_form(
            &format!("{base}/admin/users"),
            &[
                ("csrf", &bob_csrf),
                ("op", "add"),
                ("username", "mallory"),
                ("password", "mallory-pass-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    // His own page refuses a post without its token.
    let r = bob
        .post_form(
            &format!("{base}/account"),
            &[
                ("csrf", "forged"),
                ("client_id", &app_a),
                ("resource", &endpoint),
            ],
        )
        .await;
    assert_eq!(r.status, 403);

    // Alice: the CSRF token and the origin are checked before any action.
    let mut alice = Browser::new();
    assert_eq!(
        console_sign_in(&mut alice, &base, "alice", ALICE_PW)
            .await
            .status,
        303
    );
    let page = alice.get(&format!("{base}/admin/users")).await;
    assert_eq!(page.status, 200);
    let csrf = page.field("csrf").expect("csrf");
    assert_ne!(csrf, bob_csrf, "per-session tokens");
    let r = alice
        .post_form(
            &format!("{base}/admin/users"),
            &[
                ("csrf", &bob_csrf),
                ("op", "add"),
                ("username", "mallory"),
                ("password", "mallory-pass-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "another session's token");
    let r = alice
        .http
        .post(format!("{base}/admin/users"))
        .header(
            "cookie",
            alice
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
        .header("origin", "https://evil.example")
        .form(&[
            ("csrf", csrf.as_str()),
            ("op", "add"),
            ("username", "mallory"),
            ("password", "mallory-pass-1"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403, "a post from another origin");
    let users = gatehouse()
        .args(["admin", "--db", &db, "users", "list"])
        .output()
        .expect("list");
    assert!(
        !String::from_utf8_lossy(&users.stdout).contains("mallory"),
        "no refused post changed anything"
    );
    // A local name that could be another identity's subject (`sso:…`) is refused.
    let r = alice
        .post_form(
            &format!("{base}/admin/users"),
            &[
                ("csrf", &csrf),
                ("op", "add"),
                ("username", "sso:bob"),
                ("password", "mallory-pass-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("cannot contain"), "{}", r.body);
    // The pages carry the login pages' headers.
    let r = alice.get(&format!("{base}/admin/clients")).await;
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert!(
        r.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(!r.body.contains("<script"), "no JavaScript");

    // ---- in Chromium (CO-2) ----
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("artefacts/console");
    let result_file = dir.join("console-result.json");
    let mut node = std::process::Command::new("node");
    node.current_dir(repo_root().join("interop"))
        .arg("console-chromium.mjs")
        .env("GH_BASE", &base)
        .env("GH_ADMIN", "alice")
        .env("GH_ADMIN_PASSWORD", ALICE_PW)
        .env("GH_USER", "bob")
        .env("GH_USER_PASSWORD", BOB_PW)
        .env("GH_REVOKE_CLIENT", &app_a)
        .env("GH_SELF_REVOKE_NAME", "Revoked By Bob")
        .env("SHOTS", &shots)
        .env("RESULT", &result_file);
    let out = tokio::task::spawn_blocking(move || node.output().expect("node"))
        .await
        .expect("join");
    let result: Value = std::fs::read_to_string(&result_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{}\n{result:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result["user_admin_status"], 403, "{result:#}");
    assert_eq!(result["user_apps_before"], 2, "{result:#}");
    assert_eq!(result["user_apps_after"], 1, "{result:#}");
    // The console's new secret works at once, the old one no longer; a disabled client's
    // secret gets nothing, enabled again it works.
    assert_eq!(result["introspect_secret1"], 200, "{result:#}");
    assert_eq!(result["introspect_secret1_after_rotate"], 401, "{result:#}");
    assert_eq!(result["introspect_secret2"], 200, "{result:#}");
    assert_eq!(result["introspect_secret2_disabled"], 401, "{result:#}");
    assert_eq!(result["introspect_secret2_enabled"], 200, "{result:#}");
    assert_eq!(result["client_row_disabled"], true);
    assert!(
        result["carol_row"]
            .as_str()
            .unwrap_or("")
            .contains("disabled"),
        "{result:#}"
    );
    assert_eq!(result["consent_rows_left"], 0, "{result:#}");
    assert_eq!(
        result["user_after_session_end"], "asked to sign in",
        "{result:#}"
    );
    for page in [
        "signin",
        "account",
        "admin-overview",
        "admin-clients",
        "admin-users",
        "admin-consents",
        "admin-sessions",
        "admin-keys",
        "admin-audit",
    ] {
        assert_eq!(result["a11y"][page]["violations"], json!([]), "{page}");
    }
    for shot in [
        "signin",
        "admin-forbidden",
        "account",
        "account-revoked",
        "admin-overview",
        "admin-client-added",
        "admin-client-disabled",
        "admin-users",
        "admin-consents",
        "admin-sessions",
        "admin-keys",
        "admin-audit",
    ] {
        let p = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 5_000, "screenshot {} ({len} bytes)", p.display());
    }
    let audit_text = result["audit_text"].as_str().unwrap_or("");
    for action in [
        "client.add",
        "client.rotate_secret",
        "client.disable",
        "client.enable",
        "user.add",
        "user.reset_password",
        "user.disable",
        "consent.revoke",
        "session.revoke",
        "key.rotate",
    ] {
        assert!(
            audit_text.contains(action),
            "{action} not in the audit page:\n{audit_text}"
        );
    }
    assert!(audit_text.contains("intact:"), "{audit_text}");
    assert!(
        !audit_text.contains("carol-password"),
        "no secret in the audit"
    );

    // ---- the changes take effect (CO-3) ----
    // App A (consent revoked by the administrator) and app B (revoked by bob himself): their
    // refresh tokens are refused and their access tokens stop working at the guard.
    for (id, tok) in [(&app_a, &tok_a), (&app_b, &tok_b)] {
        let (st, v) = refresh_status(&base, id, tok).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{v}"
        );
        assert!(
            refused_within(&endpoint, tok["access_token"].as_str().expect("at"), 5).await,
            "the access token of {id} still works"
        );
    }
    // A second signing key is published after the rotation.
    let jwks: Value = reqwest::get(format!("{base}/jwks"))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2), "{jwks}");
    // Carol: added, password reset, disabled: she cannot sign in.
    let r = console_sign_in(&mut Browser::new(), &base, "carol", "carol-password-2").await;
    assert_eq!(r.status, 401, "a disabled user");

    // A tampered gateway log shows as broken on the audit page.
    let log = std::fs::read_to_string(&audit).expect("audit log");
    assert!(!log.is_empty());
    std::fs::write(
        &audit,
        log.replacen("\"decision\":\"", "\"decision\":\"x", 1),
    )
    .expect("tamper");
    let page = alice.get(&format!("{base}/admin/audit")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("BROKEN: line 1"), "{}", page.body);
}
