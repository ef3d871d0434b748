//! Issue 4: the official MCP conformance suite's client auth scenarios, with Gatehouse's client
//! (`conformance/client` → `gatehouse conformance-client`, the library `gatehouse connect` uses)
//! as the client under test: every `auth/*` scenario of the newest release (0.1.16) and of the
//! newest 0.2 alpha (extensions included: client credentials, enterprise-managed authorization,
//! workload identity, DPoP), one at a time, with no expected-failures list and nothing skipped.
mod common;

use common::*;
use std::process::Command;

fn run_suite(dir: &str) {
    let root = repo_root();
    assert!(
        root.join(dir)
            .join("node_modules/.bin/conformance")
            .exists(),
        "{dir} is not installed: run scripts/setup (the README's test command does)"
    );
    let out = Command::new(root.join("conformance/run-client-auth.sh"))
        .arg(dir)
        .env("GATEHOUSE_BIN", env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(&root)
        .output()
        .expect("run-client-auth.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "conformance client scenarios failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout.lines().filter(|l| l.starts_with("pass ")).count();
    assert!(passed >= 22, "too few scenarios ran: {passed}\n{stdout}");
    assert!(!stdout.contains("skip "), "{stdout}");
}

#[test]
fn official_suite_client_auth_scenarios_release_0_1() {
    run_suite("conformance/v0.1");
}

#[test]
fn official_suite_client_auth_scenarios_0_2_alpha() {
    run_suite("conformance");
}
