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

/// `run_check` off the async runtime (the targets run on it).
async fn check_cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_check(&args)
    })
    .await
    .expect("join")
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

/// `gatehouse check ARGS --allow-private --format json` against a fresh `gatehouse dev`, with a
/// scripted browser (`interop/<browser>`) signing in as its user (the tests of `--login`): the
/// report, once the run succeeded with nothing failed.
async fn signed_in_report(args: &[&str], browser: &str) -> Value {
    let (user, password) = ("check-user", "check-user-pass-1");
    let (_dev, port, data) = gatehouse_dev_embedded(user, password);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut c = gatehouse();
    c.arg("check")
        .args(args)
        .args(["--allow-private", "--format", "json", &url])
        .env("GATEHOUSE_HOME", data.join("client-home"))
        .env(
            "GATEHOUSE_BROWSER",
            repo_root().join("interop").join(browser),
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
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    report
}

/// The ids of the checks that failed, sorted.
fn failed_ids(report: &Value) -> Vec<String> {
    let mut ids: Vec<String> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
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

/// Gatehouse's authorization server on `port` (`gatehouse serve`) for two resources, `endpoint`
/// and `other`, with `guard` as the guard's settings; tokens (client credentials) for
/// `endpoint`, for `other` (the same client), and for `endpoint` of a second client (another
/// user).
async fn authorization_server_with_two_users(
    port: u16,
    guard: &str,
    endpoint: &str,
    other: &str,
) -> (common::Proc, [String; 3]) {
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-check-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n{guard}authorization_server:\n  database: {db}\n  resources:\n    - resource: {endpoint}\n      scopes: [mcp:basic]\n    - resource: {other}\n      scopes: [mcp:basic]\n"
        ),
    )
    .expect("config");
    let (id, secret) = add_machine_client(&db, "alice-agent");
    let (id2, secret2) = add_machine_client(&db, "bob-agent");
    let server = serve(&cfg);
    let tokens = [
        cc_token_for(&base, &id, &secret, endpoint).await,
        cc_token_for(&base, &id, &secret, other).await,
        cc_token_for(&base, &id2, &secret2, endpoint).await,
    ];
    (server, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck1_gatehouse_dev_passes_the_passive_checks() {
    let (_dev, port, _data) = gatehouse_dev_embedded("check-user", "check-password-1");
    let url = format!("http://127.0.0.1:{port}/mcp");
    // Loopback needs --allow-private: a usage error (2) otherwise.
    let (code, _, err) = run_check(&[&url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow-private"), "{err}");
    let (code, out, err) = check_cli(&["--allow-private", "--format", "json", &url]).await;
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
    let (code, out, err) = check_cli(&[
        "--allow-private",
        "--authorization-server",
        "--format",
        "json",
        &url,
    ])
    .await;
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
    let guard = "  required_scopes: [mcp:basic]\n  tool_scopes:\n    notes_add: [notes:write]\n";
    let (_server, [token, foreign, other_user]) =
        authorization_server_with_two_users(port, guard, &endpoint, &other).await;
    let (code, out, err) = check_cli(&[
        "--allow-private",
        "--authorization-server",
        "--format",
        "json",
        "--token",
        &token,
        "--foreign-token",
        &foreign,
        "--other-user-token",
        &other_user,
        // The token holds mcp:basic; notes_add also needs notes:write.
        "--scope-tool",
        "notes_add",
        &endpoint,
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "never print a token"
    );
    let report: Value = serde_json::from_str(&out).expect("JSON");
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    assert_status(
        &report,
        "pass",
        &[
            "SIGNATURE",
            "EMBEDDED-KEY",
            "INVALID-TOKEN",
            "INSUFFICIENT-SCOPE",
            "SESSION-USER",
            "SESSION-ID",
        ],
    );
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
            "AS-TOKEN-NO-STORE",
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
    let (code, out, _) = check_cli(&[
        "--allow-private",
        "--fail-on",
        "info",
        "--token",
        &foreign,
        &endpoint,
    ])
    .await;
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
    let (code, out, err) = check_cli(&[
        "--allow-private",
        "--format",
        "json",
        "--token",
        &token,
        "--foreign-token",
        &foreign,
        &endpoint,
    ])
    .await;
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
    let report = signed_in_report(&["--login"], "login-browser.mjs").await;
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
    let report =
        signed_in_report(&["--authorization-server", "--login"], "login-browser.mjs").await;
    assert_status(
        &report,
        "pass",
        &[
            "AS-TOKEN-AUDIENCE",
            "AS-TOKEN-NO-STORE",
            "AS-FRAMING",
            "AS-AUTH-ALGS",
            "MCP-NAME",
            "AS-REFRESH-ROTATION",
            "AS-REFRESH-REUSE",
            "AS-CODE-REUSE",
            "TOKEN-VALID",
            "TAMPERED",
            "SESSION-AUTH",
        ],
    );
}

/// A server nobody here wrote: the official TypeScript SDK's example server with its demo
/// authorization server (`simpleStreamableHttp.js --oauth --oauth-strict`, SDK 1.32.2). The
/// checker signs in through its own code flow (the demo approves at once) and flags exactly the
/// example's real flaws: no Origin validation, 500 for a malformed token, `error` without a
/// token, no `scope` in the challenge, no RFC 9207 `iss`, errors redirected at once; everything
/// it does right passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck6_the_typescript_sdks_example_server_is_flagged_for_its_real_flaws_only() {
    let (mcp_port, as_port) = (free_port(), free_port());
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(repo_root().join("interop"))
        .env("MCP_PORT", mcp_port.to_string())
        .env("MCP_AUTH_PORT", as_port.to_string())
        .args([
            "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js",
            "--oauth",
            "--oauth-strict",
        ]);
    let _server = common::Proc::start(cmd, "MCP Streamable HTTP Server listening");
    let url = format!("http://localhost:{mcp_port}/mcp");
    let home = std::env::temp_dir().join(format!("gatehouse-check-sdk-{mcp_port}"));
    let mut c = gatehouse();
    c.args([
        "check",
        "--allow-private",
        "--authorization-server",
        "--login",
        "--format",
        "json",
        &url,
    ])
    .env("GATEHOUSE_HOME", &home)
    .env(
        "GATEHOUSE_BROWSER",
        repo_root().join("interop/follow-browser.mjs"),
    );
    let out = tokio::task::spawn_blocking(move || c.output().expect("check"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    let flagged = failed_ids(&report);
    assert_eq!(
        flagged,
        [
            "AS-ERROR-REDIRECT",
            "AS-ISS",
            "CHALLENGE-NO-ERROR",
            "CHALLENGE-SCOPE",
            "INVALID-TOKEN",
            "ORIGIN"
        ],
        "{stdout}"
    );
    // ORIGIN is high: exit 1 at the default level.
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(report["grade"], "D");
    assert_status(
        &report,
        "pass",
        &[
            "AUTH-REQUIRED",
            "CHALLENGE",
            "PRM-RESOURCE",
            "AS-METADATA",
            "AS-PKCE",
            "ALG-NONE",
            "SIGNATURE",
            "EMBEDDED-KEY",
            "TOKEN-VALID",
            "QUERY-TOKEN",
            "SESSION-AUTH",
            "SESSION-ID",
            "HOST",
            "MCP-METHOD",
            "AS-PKCE-REQUIRED",
            "AS-PKCE-PLAIN",
            "AS-REDIRECT-EXACT",
            "AS-DCR-MACHINE",
            "AS-CODE-REUSE",
        ],
    );
}

/// A resource server built with the official Python SDK (`interop/py-guarded-server.py`, `mcp`
/// 2.3.0) in front of Gatehouse's authorization server, with every token the checker takes: only
/// the SDK's two low findings (an `error` code and no `scope` in the challenge to a request
/// without a token); the same server with its audience check off is flagged for AUDIENCE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck7_a_python_sdk_server_passes_and_its_audience_flaw_is_flagged() {
    let (port, py_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{py_port}/mcp");
    let other = format!("http://127.0.0.1:{}/mcp", free_port());
    let (_as, [token, foreign, other_user]) = authorization_server_with_two_users(
        port,
        "  required_scopes: [mcp:basic]\n",
        &endpoint,
        &other,
    )
    .await;
    let python = |flaw: Option<&str>| {
        let mut cmd = std::process::Command::new(repo_root().join("interop/.venv/bin/python"));
        cmd.current_dir(repo_root().join("interop"))
            .arg("py-guarded-server.py")
            .args([base.as_str(), &py_port.to_string()])
            .args(flaw);
        common::Proc::start(cmd, "READY")
    };
    let check = || async {
        check_cli(&[
            "--allow-private",
            "--format",
            "json",
            "--token",
            &token,
            "--foreign-token",
            &foreign,
            "--other-user-token",
            &other_user,
            &endpoint,
        ])
        .await
    };

    let server = python(None);
    let (code, out, err) = check().await;
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(
        failed_ids(&report),
        ["CHALLENGE-NO-ERROR", "CHALLENGE-SCOPE"],
        "{out}"
    );
    assert_eq!(code, 0);
    assert_eq!(report["grade"], "B");
    assert_status(
        &report,
        "pass",
        &[
            "ORIGIN",
            "HOST",
            "PRM-RESOURCE",
            "ALG-NONE",
            "ALG-CONFUSION",
            "TOKEN-VALID",
            "TAMPERED",
            "SIGNATURE",
            "EMBEDDED-KEY",
            "AUDIENCE",
            "QUERY-TOKEN",
            "INVALID-TOKEN",
            "SESSION-AUTH",
            "SESSION-USER",
            "SESSION-ID",
        ],
    );
    drop(server);

    let _server = python(Some("--any-audience"));
    let (code, out, _) = check().await;
    let report: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        failed_ids(&report),
        ["AUDIENCE", "CHALLENGE-NO-ERROR", "CHALLENGE-SCOPE"],
        "{out}"
    );
    assert_eq!(code, 1);
    assert_eq!(report["grade"], "F");
}

/// `--authorization-server` against an authorization server nobody here wrote: oidc-provider with
/// its dynamic registration open (client_credentials enabled, as in `oidc-provider.mjs`) and its
/// development sign-in pages, the guard in front. Its refusals pass (no PKCE, `plain`, a redirect
/// URI one character off); the set-up's three real weaknesses are flagged: anyone can register a
/// machine client and get tokens for the endpoint (the wave-1 incident), errors are redirected to a
/// self-registered client before any sign-in (RFC 9700 §4.11.2), and the development sign-in page
/// can be framed (RFC 9700 §4.16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck8_oidc_provider_with_open_registration_through_the_active_checks() {
    let as_port = free_port();
    let _idp = oidc_provider_with(as_port, &[("OPEN_REGISTRATION", "1")]);
    let issuer = format!("http://127.0.0.1:{as_port}");
    let (_dev, endpoint) = gatehouse_dev(&issuer);
    let (code, out, err) = check_cli(&[
        "--allow-private",
        "--authorization-server",
        "--format",
        "json",
        &endpoint,
    ])
    .await;
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let flagged = failed_ids(&report);
    assert_eq!(
        flagged,
        ["AS-DCR-MACHINE", "AS-ERROR-REDIRECT", "AS-FRAMING"],
        "{out}"
    );
    // AS-DCR-MACHINE is high: exit 1 at the default level.
    assert_eq!(code, 1);
    assert_eq!(report["grade"], "D");
    assert_status(
        &report,
        "pass",
        &[
            "AS-METADATA",
            "AS-AUTH-ALGS",
            "AS-PKCE-REQUIRED",
            "AS-PKCE-PLAIN",
            "AS-REDIRECT-EXACT",
        ],
    );
}

/// `--authorization-server --login --device`: the checker's own sign-in by the device grant
/// (Gatehouse's device pages in headless Chromium): the token's audience, `no-store`, refresh
/// rotation and reuse are checked; code reuse is skipped (no code), nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ck9_the_checkers_own_sign_in_by_the_device_grant() {
    let report = signed_in_report(
        &["--authorization-server", "--login", "--device"],
        "device-chromium.mjs",
    )
    .await;
    assert_status(
        &report,
        "pass",
        &[
            "AS-TOKEN-AUDIENCE",
            "AS-TOKEN-NO-STORE",
            "AS-REFRESH-ROTATION",
            "AS-REFRESH-REUSE",
            "TOKEN-VALID",
            "SESSION-AUTH",
        ],
    );
    assert_status(&report, "skip", &["AS-CODE-REUSE"]);
}
