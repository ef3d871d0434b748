//! Issue 5: the gateway is transparent to MCP. The official conformance suite's server
//! scenarios (those MCP 2025-11-25 requires, plus the pending/later ones the suite runs with
//! them) run against a fixture server built on the TypeScript SDK (`interop/conformance-server.mjs`)
//! directly, then through `gatehouse serve` (an `anonymous` gateway route: the suite sends no
//! credentials); every scenario must end the same way both times, and the fixture must pass
//! them all directly (so "the same" is not "the same failures"). Covers GW-11 (status codes,
//! sessions, DELETE, SSE with server-to-client requests, progress and logging notifications)
//! and GW-08 (the DNS-rebinding scenario, through the gateway's own Host/Origin gate). The same
//! fixture also runs as a stdio server behind the gateway, with the same results.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;

/// Scenario → (passed, failed) from the suite's summary lines.
fn run_suite(url: &str) -> (BTreeMap<String, (u32, u32)>, String) {
    let out = Command::new(repo_root().join("conformance/run-server.sh"))
        .arg(url)
        .current_dir(repo_root())
        .output()
        .expect("run-server.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut results = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("✓ ").or_else(|| line.strip_prefix("✗ ")) else {
            continue;
        };
        let Some((name, counts)) = rest.split_once(": ") else {
            continue;
        };
        let n = |word: &str| {
            counts
                .split(", ")
                .find_map(|c| c.strip_suffix(word))
                .and_then(|c| c.trim().parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        };
        results.insert(name.to_owned(), (n(" passed"), n(" failed")));
    }
    (results, stdout)
}

#[test]
fn gw08_gw11_official_server_scenarios_pass_through_the_gateway_as_they_do_directly() {
    let root = repo_root();
    assert!(
        root.join("conformance/node_modules/.bin/conformance")
            .exists(),
        "run scripts/setup (the README's test command does)"
    );
    let upstream_port = free_port();
    let mut fixture = Command::new("node");
    fixture
        .current_dir(&root)
        .env("PORT", upstream_port.to_string())
        .arg("interop/conformance-server.mjs");
    let _fixture = Proc::start(fixture, "listening");

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("gatehouse-conf-server-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    // The guard needs some way to authenticate for the other routes; the conformance route is
    // anonymous (policies and limits still apply to it).
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  api_keys: [{{name: unused, hash: 'sha256:{}', expires: '2099-01-01T00:00:00Z'}}]\ngateway:\n  audit_log: {}\n  upstreams:\n    - name: conformance\n      url: http://127.0.0.1:{upstream_port}/mcp\n      anonymous: true\n    - name: conformance-stdio\n      command: node\n      args: ['{}', '--stdio']\n      anonymous: true\n",
            "ab".repeat(32),
            dir.join("audit.jsonl").display(),
            root.join("interop/conformance-server.mjs").display()
        ),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let _gateway = Proc::start(cmd, "ready");

    // The suite needs a localhost URL for the DNS-rebinding scenario.
    let (direct, direct_log) = run_suite(&format!("http://localhost:{upstream_port}/mcp"));
    let (through, through_log) =
        run_suite(&format!("http://localhost:{port}/servers/conformance/mcp"));
    println!("{through_log}");
    assert!(direct.len() >= 30, "too few scenarios ran:\n{direct_log}");
    for (name, (passed, failed)) in &direct {
        assert_eq!(
            *failed, 0,
            "the fixture fails {name} directly:\n{direct_log}"
        );
        assert!(*passed < u32::MAX, "{name}");
    }
    assert_eq!(
        direct, through,
        "scenarios differ through the gateway:\n{through_log}"
    );
    // The same fixture as a stdio server behind the gateway: one process per session, and
    // what the server sends on its own (progress, logging, sampling and elicitation requests)
    // relayed on the request's SSE stream.
    let (stdio, stdio_log) = run_suite(&format!(
        "http://localhost:{port}/servers/conformance-stdio/mcp"
    ));
    assert_eq!(
        direct, stdio,
        "scenarios differ through the gateway's stdio upstream:\n{stdio_log}"
    );
    // GW-11: SSE is relayed as it comes, event by event: the fixture's progress tool sends
    // three notifications 50 ms apart, then its result; they must not arrive in one batch.
    sse_arrives_incrementally(&format!("http://127.0.0.1:{port}/servers/conformance/mcp"));

    // Everything went through the proxy (and was audited).
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).expect("audit");
    assert!(audit.lines().count() > 100, "{}", audit.lines().count());
    assert!(audit.contains("\"tool\":\"test_sampling\""));
}

fn sse_arrives_incrementally(url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let post = |body: serde_json::Value, session: Option<&str>| {
            let mut r = http
                .post(url)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .json(&body);
            if let Some(s) = session {
                r = r.header("mcp-session-id", s);
            }
            r.send()
        };
        let r = post(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}), None)
            .await
            .expect("initialize");
        let session = r.headers()["mcp-session-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        drop(r.bytes().await);
        post(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), Some(&session))
            .await
            .expect("initialized");
        let started = std::time::Instant::now();
        let mut r = post(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p1"}}}), Some(&session))
            .await
            .expect("call");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert_eq!(r.headers()["x-accel-buffering"], "no");
        let mut arrivals = Vec::new();
        let mut text = String::new();
        while let Some(chunk) = r.chunk().await.expect("chunk") {
            let piece = String::from_utf8_lossy(&chunk).into_owned();
            for _ in piece.matches("data:") {
                arrivals.push(started.elapsed());
            }
            text.push_str(&piece);
        }
        assert_eq!(arrivals.len(), 4, "3 progress events and the result: {text}");
        assert!(text.contains("notifications/progress") && text.contains("Progress tool completed"));
        let spread = arrivals[3] - arrivals[0];
        assert!(
            spread >= std::time::Duration::from_millis(80),
            "events arrived together ({arrivals:?}): buffered"
        );
    });
}
