//! The binary's other commands: `serve --config` with API keys and `${env:}` secrets,
//! `config check`, `apikey new`, and `dev`'s argument errors.
mod common;

use common::*;
use std::process::Command;

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_api_keys_from_the_environment() {
    let (code, key, err) = run(gatehouse().args([
        "apikey",
        "new",
        "--name",
        "ci",
        "--scopes",
        "mcp:basic",
        "--days",
        "7",
    ]));
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("ghk_"));
    let hash = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("hash: "))
        .expect("hash line")
        .trim_matches('"')
        .to_owned();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("gatehouse-serve-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\n  tool_scopes:\n    notes_add: [notes:write]\n  api_keys:\n    - name: ci\n      hash: ${{env:GH_TEST_KEY_HASH}}\n      scopes: [mcp:basic]\n      expires: \"2099-01-01T00:00:00Z\"\n"
        ),
    )
    .expect("write config");
    let (code, out, err) = run(gatehouse()
        .env("GH_TEST_KEY_HASH", &hash)
        .args(["config", "check"])
        .arg(&cfg));
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(gatehouse()
        .env_remove("GH_TEST_KEY_HASH")
        .args(["config", "check"])
        .arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("GH_TEST_KEY_HASH is not set") && err.contains("line 7"),
        "{err}"
    );

    let mut cmd = gatehouse();
    cmd.env("GH_TEST_KEY_HASH", &hash)
        .arg("serve")
        .arg("--config")
        .arg(&cfg);
    let mut p = Proc::start(cmd, "ready");
    let endpoint = format!("http://127.0.0.1:{port}/mcp");
    let http = reqwest::Client::new();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let r = http
        .post(&endpoint)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = http
        .post(&endpoint)
        .bearer_auth(format!("{key}x"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    // T5: a browser page on another origin is refused even with a valid key.
    let r = http
        .post(&endpoint)
        .bearer_auth(&key)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    assert!(p.terminate(10).expect("exits").success());
    let logs = p.all_output();
    assert!(logs.contains("key:ci"), "access log names the key");
    assert!(!logs.contains(&key), "the key never appears in logs");
}

#[test]
fn config_check_reports_unknown_keys_with_location() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cfg-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:1\nguard:\n  authorization_servers: [{issuer: https://a.example}]\n  scope_typo: [x]\n").expect("write");
    let (code, _, err) = run(gatehouse().args(["config", "check"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("scope_typo") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn dev_argument_errors_are_clear() {
    let (code, _, err) = run(gatehouse().args(["dev", "--listen", "127.0.0.1:0"]));
    assert_eq!(code, 2);
    assert!(err.contains("--listen needs a port"), "{err}");
    let (code, _, err) = run(gatehouse().args(["dev", "--listen", "0.0.0.0:8080"]));
    assert_eq!(code, 2);
    assert!(err.contains("loopback only"), "{err}");
    let (code, _, err) =
        run(gatehouse().args(["dev", "--listen", "127.0.0.1:0", "--issuer", "ftp://x"]));
    assert_eq!(code, 2);
    assert!(err.contains("--issuer"), "{err}");
}

#[test]
fn the_example_configs_are_valid() {
    for name in [
        "guard.yaml",
        "authorization-server.yaml",
        "gateway/gatehouse.yaml",
    ] {
        let example = repo_root().join("examples").join(name);
        let audit = std::env::temp_dir().join(".gatehouse/gateway/audit.jsonl");
        let _ = std::fs::remove_file(&audit);
        let (code, out, err) = run(gatehouse()
            .env(
                "GATEHOUSE_CI_KEY_HASH",
                format!("sha256:{}", "ab".repeat(32)),
            )
            .env(
                "GATEHOUSE_DATABASE",
                "sqlite:///tmp/gatehouse-example-check.db",
            )
            .env(
                "GATEHOUSE_KEY_ENCRYPTION_KEY",
                "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
            )
            // Relative paths in the examples (audit log, data) land outside the repository.
            .current_dir(std::env::temp_dir())
            .args(["config", "check"])
            .arg(&example));
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert!(!audit.exists(), "config check creates no file");
    }
}

/// `gatehouse audit verify FILE`: a log the gateway wrote holds; any edit, removal, insertion or
/// reordering is found at its 1-based line, with exit 1.
#[test]
fn t22_audit_verify_finds_the_first_broken_line() {
    let dir = std::env::temp_dir().join(format!("gatehouse-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&path);
    let log = gatehouse_gateway::Audit::open(path.to_str().expect("path")).expect("open");
    for i in 0..5 {
        log.record(&serde_json::json!({"n": i, "subject": "alice", "decision": "allow"}));
    }
    drop(log);
    let file = path.to_str().expect("path");
    let verify = |text: &str| {
        std::fs::write(&path, text).expect("write");
        run(gatehouse().args(["audit", "verify", file]))
    };
    let good = std::fs::read_to_string(&path).expect("read");
    let (code, out, err) = verify(&good);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 records"), "{out}");
    let lines: Vec<&str> = good.lines().collect();
    let join = |l: &[&str]| l.iter().map(|x| format!("{x}\n")).collect::<String>();
    let edited = good.replacen("\"n\":2", "\"n\":7", 1);
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    let mut inserted = lines.clone();
    inserted.insert(1, lines[0]);
    for (text, line) in [
        (edited, 3),
        (join(&lines[1..]), 1),
        (join(&swapped), 4),
        (join(&inserted), 2),
        (format!("{good}not json\n"), 6),
    ] {
        let (code, out, _) = verify(&text);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&format!("line {line}:")), "{out}");
    }
    let (code, _, err) = run(gatehouse().args(["audit", "verify", "/nonexistent/audit.jsonl"]));
    assert_eq!(code, 2, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
