//! Issue 3, "Done when": a real, unmodified MCP client — the official TypeScript SDK
//! (`@modelcontextprotocol/sdk`) — completes the whole flow against `gatehouse dev`: discovery from
//! the 401, dynamic registration, PKCE, login and consent through the real pages (scripted, and in
//! headless Chromium), token, tool calls, refresh, step-up. Driver: `interop/sdk-client.mjs`.
mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

fn run_client(browser: &str) -> Vec<Value> {
    let port = free_port();
    let data = std::env::temp_dir().join(format!("gatehouse-sdk-{port}"));
    let mut dev = gatehouse();
    dev.env("GATEHOUSE_DEV_USER", "sdk-user")
        .env("GATEHOUSE_DEV_PASSWORD", "sdk-password-1")
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data);
    let mut dev = Proc::start(dev, "ready");
    let dir = repo_root().join("interop");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").exists(),
        "the TypeScript SDK is not installed: run scripts/setup (the README's test command does)"
    );
    let out = Command::new("node")
        .current_dir(&dir)
        .env("GH_USER", "sdk-user")
        .env("GH_PASSWORD", "sdk-password-1")
        .env("GH_BROWSER", browser)
        .arg("sdk-client.mjs")
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        out.status.success(),
        "SDK client failed ({browser}):\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.all_output()
    );
    assert!(dev.terminate(10).expect("exits").success());
    let logs = dev.all_output();
    assert!(
        !logs.contains("sdk-password-1"),
        "T13: the password never reaches the logs"
    );
    steps
}

fn step<'a>(steps: &'a [Value], name: &str) -> Vec<&'a Value> {
    steps.iter().filter(|s| s["step"] == name).collect()
}

fn check(steps: &[Value]) {
    assert!(step(steps, "registered").len() == 1, "DCR once: {steps:?}");
    let auth = step(steps, "authorize");
    assert_eq!(auth.len(), 2, "initial authorization + step-up: {steps:?}");
    assert_eq!(
        auth[0]["scope"], "mcp:basic",
        "CL-10: the challenge's scope"
    );
    assert_eq!(auth[0]["pkce"], "S256");
    assert!(
        auth[0]["resource"]
            .as_str()
            .is_some_and(|r| r.ends_with("/mcp")),
        "RFC 8707 resource sent"
    );
    assert_eq!(
        auth[1]["scope"], "mcp:basic notes:write",
        "step-up asks for the union"
    );
    let cb = step(steps, "callback");
    assert!(
        cb[0]["iss"]
            .as_str()
            .is_some_and(|i| i.starts_with("http://127.0.0.1:")),
        "RFC 9207 iss"
    );
    let tools = &step(steps, "tools")[0]["tools"];
    assert_eq!(
        tools,
        &serde_json::json!(["add", "echo", "notes_add", "notes_list", "whoami"])
    );
    let who = &step(steps, "whoami")[0]["result"];
    assert_eq!(who["subject"], "sdk-user");
    assert_eq!(who["authenticated_by"], "jwt");
    let refreshed = step(steps, "refreshed")[0];
    assert_eq!(
        refreshed["refreshes"], 1,
        "the bad access token was replaced by a refresh"
    );
    assert_eq!(refreshed["subject"], "sdk-user");
    let up = step(steps, "stepped_up")[0];
    assert_eq!(up["isError"], false);
    assert_eq!(up["scope"], "mcp:basic notes:write");
    assert!(
        up["notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "hello from the SDK"))
    );
    assert_eq!(step(steps, "done")[0]["ok"], true);
}

#[test]
fn typescript_sdk_full_flow_scripted_browser() {
    check(&run_client("fetch"));
}

#[test]
fn typescript_sdk_full_flow_headless_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run scripts/setup (the README's test command does)"
    );
    check(&run_client("chromium"));
}
