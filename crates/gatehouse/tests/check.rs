//! Issue 19: `gatehouse check URL` against real Gatehouse deployments, which it must pass
//! without a false alarm: `gatehouse dev` (passive checks) and `gatehouse serve` with the
//! embedded authorization server and real tokens (token checks, AUDIENCE with a token for a
//! second resource). The broken servers, one per rule, are in `gatehouse-check/tests/broken.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod common;

use common::*;
use serde_json::Value;

fn run_check(args: &[&str]) -> (i32, String, String) {
    let out = gatehouse().arg("check").args(args).output().expect("check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The check `id` of a JSON report (`null` when missing).
fn check_of(report: &Value, id: &str) -> Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == id))
        .cloned()
        .unwrap_or_default()
}

/// Asserts every one of `ids` has `status` in the report.
fn assert_status(report: &Value, status: &str, ids: &[&str]) {
    for id in ids {
        let c = check_of(report, id);
        assert_eq!(c["status"], status, "{id}: {c}");
    }
}

/// `gatehouse check ARGS` with the scripted browser signing in as `user` (the tests of
/// `--login`); its standard output, once it succeeded.
async fn check_signed_in(
    args: &[&str],
    (user, password): (&str, &str),
    home: std::path::PathBuf,
) -> String {
    let mut c = gatehouse();
    c.arg("check")
        .args(args)
        .env("GATEHOUSE_HOME", home)
        .env(
            "GATEHOUSE_BROWSER",
            repo_root().join("interop/login-browser.mjs"),
        )
        .env("GH_USER", user)
        .env("GH_PASSWORD", password)
        .env_remove("GATEHOUSE_TOKEN_KEY");
    let out = tokio::task::spawn_blocking(move || c.output().expect("check"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| format!("{}: {}", c["id"], c["detail"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck1_gatehouse_dev_passes_the_passive_checks() {
    let (_dev, port, _data) = gatehouse_dev_embedded("check-user", "check-password-1");
    let url = format!("http://127.0.0.1:{port}/mcp");
    // Loopback needs --allow-private: a usage error (2) otherwise.
    let (code, _, err) = run_check(&[&url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow-private"), "{err}");
    let (code, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_check(&["--allow-private", "--format", "json", &url])
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["target"], url);
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    assert_eq!(report["grade"], "A");
    for c in report["checks"].as_array().expect("checks") {
        for k in ["id", "title", "severity", "status", "detail", "reference"] {
            assert!(c[k].is_string(), "{k} in {c}");
        }
    }
    assert_status(&report, "pass", &["PRM-RESOURCE", "CHALLENGE", "ALG-NONE"]);
    // Each needs a token.
    assert_status(
        &report,
        "skip",
        &["AUDIENCE", "EXPIRED", "QUERY-TOKEN", "SESSION-AUTH"],
    );
    // The active checks of the authorization server (a client is registered).
    let (code, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            run_check(&[
                "--allow-private",
                "--authorization-server",
                "--format",
                "json",
                &url,
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_status(
        &report,
        "pass",
        &[
            "AS-PKCE-REQUIRED",
            "AS-PKCE-PLAIN",
            "AS-REDIRECT-EXACT",
            "AS-ERROR-REDIRECT",
            "AS-DCR-MACHINE",
        ],
    );
    // Unreachable: a connection error is 2.
    let (code, _, _) = run_check(&[
        "--allow-private",
        &format!("http://127.0.0.1:{}/mcp", free_port()),
    ]);
    assert_eq!(code, 2);
    let (code, _, _) = run_check(&["--fail-on", "severe", &url]);
    assert_eq!(code, 2, "a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck2_gatehouse_serve_passes_the_token_checks_and_reports_sarif() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{base}/mcp");
    let other = format!("{base}/other/mcp");
    let dir = std::env::temp_dir().join(format!("gatehouse-check-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\n  resources:\n    - resource: {endpoint}\n      scopes: [mcp:basic]\n    - resource: {other}\n      scopes: [mcp:basic]\n"
        ),
    )
    .expect("config");
    let (id, secret) = add_machine_client(&db, "checker");
    let _server = serve(&cfg);
    let token = cc_token_for(&base, &id, &secret, &endpoint).await;
    let foreign = cc_token_for(&base, &id, &secret, &other).await;
    let (code, out, err) = tokio::task::spawn_blocking({
        let (endpoint, token, foreign) = (endpoint.clone(), token.clone(), foreign.clone());
        move || {
            run_check(&[
                "--allow-private",
                "--authorization-server",
                "--format",
                "json",
                "--token",
                &token,
                "--foreign-token",
                &foreign,
                &endpoint,
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "never print a token"
    );
    let report: Value = serde_json::from_str(&out).expect("JSON");
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    let skipped: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "skip")
        .filter_map(|c| c["id"].as_str())
        .collect();
    // Everything else ran (the sign-in checks need --login: ck5).
    assert_eq!(
        skipped,
        [
            "EXPIRED",
            "AS-TOKEN-AUDIENCE",
            "AS-REFRESH-ROTATION",
            "AS-REFRESH-REUSE",
            "AS-CODE-REUSE"
        ]
    );
    // The same through the environment, as SARIF.
    let out = gatehouse()
        .args(["check", "--allow-private", "--format", "sarif", &endpoint])
        .env("GATEHOUSE_CHECK_TOKEN", &token)
        .output()
        .expect("check");
    assert!(out.status.success());
    let sarif: Value = serde_json::from_slice(&out.stdout).expect("SARIF JSON");
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(
        sarif["runs"][0]["tool"]["driver"]["name"],
        "gatehouse-check"
    );
    assert_eq!(sarif["runs"][0]["results"], serde_json::json!([]));
    // The foreign token used as the token: refused, so the token checks are skipped and the
    // run reports TOKEN-VALID failing (info): exit 0 at the default level, 1 with --fail-on info.
    let (code, out, _) = tokio::task::spawn_blocking({
        let (endpoint, foreign) = (endpoint.clone(), foreign.clone());
        move || {
            run_check(&[
                "--allow-private",
                "--fail-on",
                "info",
                "--token",
                &foreign,
                &endpoint,
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  info     TOKEN-VALID"), "{out}");
}

/// The guard in front of a real external authorization server (oidc-provider): no false alarm
/// with a valid token and a token of the same AS for another resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck3_gatehouse_guarding_with_oidc_provider_passes() {
    let as_port = free_port();
    let _idp = oidc_provider(as_port);
    let issuer = format!("http://127.0.0.1:{as_port}");
    let (_dev, endpoint) = gatehouse_dev(&issuer);
    let token = cc_token(&issuer, &endpoint, "mcp:basic").await;
    let foreign = cc_token(&issuer, "http://127.0.0.1:1/other-mcp", "mcp:basic").await;
    let (code, out, err) = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || {
            run_check(&[
                "--allow-private",
                "--format",
                "json",
                "--token",
                &token,
                "--foreign-token",
                &foreign,
                &endpoint,
            ])
        }
    })
    .await
    .expect("join");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    assert_eq!(code, 0);
    assert_status(
        &report,
        "pass",
        &[
            "AS-METADATA",
            "AS-PKCE",
            "TOKEN-VALID",
            "AUDIENCE",
            "TAMPERED",
            "ALG-NONE",
        ],
    );
}

/// `--login`: the checker signs in as `gatehouse login` does (a scripted browser here) and runs
/// the token checks with what it got; the token is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck4_login_gets_the_token_itself() {
    let (_dev, port, data) = gatehouse_dev_embedded("check-login", "check-login-pass-1");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let stdout = check_signed_in(
        &["--allow-private", "--login", "--format", "json", &url],
        ("check-login", "check-login-pass-1"),
        data.join("client-home"),
    )
    .await;
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    assert_status(
        &report,
        "pass",
        &[
            "TOKEN-VALID",
            "TAMPERED",
            "QUERY-TOKEN",
            "SESSION-AUTH",
            "ORIGIN",
            "HOST",
        ],
    );
}

/// `--authorization-server --login`: the checker's own sign-in (a scripted browser through
/// Gatehouse's login and consent pages) checks the token's audience, refresh rotation and reuse
/// and code reuse, and its token serves the token checks: no false alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck5_the_checkers_own_sign_in_checks_codes_and_refresh_tokens() {
    let (_dev, port, data) = gatehouse_dev_embedded("check-as", "check-as-pass-1");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let stdout = check_signed_in(
        &[
            "--allow-private",
            "--authorization-server",
            "--login",
            "--format",
            "json",
            &url,
        ],
        ("check-as", "check-as-pass-1"),
        data.join("client-home"),
    )
    .await;
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    assert_status(
        &report,
        "pass",
        &[
            "AS-TOKEN-AUDIENCE",
            "AS-REFRESH-ROTATION",
            "AS-REFRESH-REUSE",
            "AS-CODE-REUSE",
            "TOKEN-VALID",
            "TAMPERED",
            "SESSION-AUTH",
        ],
    );
}
