//! Issue 3: the official MCP conformance suite's authorization-server mode
//! (`conformance authorization`, @modelcontextprotocol/conformance 0.2 alpha, on Node 22) against
//! `gatehouse dev`, with the browser step done through the real login and consent pages.
mod common;

use common::browser::Browser;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_suite_authorization_server_mode() {
    let bin_dir = repo_root().join("conformance/node_modules/.bin");
    assert!(
        bin_dir.join("conformance").exists() && bin_dir.join("node").exists(),
        "the conformance suite is not installed: run scripts/setup (the README's test command does)"
    );
    let port = free_port();
    let cb_port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let data = std::env::temp_dir().join(format!("gatehouse-conf-{port}"));
    let mut dev = gatehouse();
    dev.env("GATEHOUSE_DEV_USER", "conf")
        .env("GATEHOUSE_DEV_PASSWORD", "conformance-pass")
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data);
    let _dev = Proc::start(dev, "ready");
    let out = gatehouse()
        .arg("admin")
        .arg("--db")
        .arg(format!("sqlite://{}/gatehouse.db", data.display()))
        .args([
            "clients",
            "add",
            "--name",
            "MCP conformance suite",
            "--client-id",
            "conformance",
            "--redirect-uri",
            "http://127.0.0.1/callback",
        ])
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let results = data.join("conformance-results");
    let mut cmd = Command::new(bin_dir.join("conformance"));
    cmd.env("PATH", path)
        .args([
            "authorization",
            "--url",
            &issuer,
            "--client-id",
            "conformance",
            "-p",
            &cb_port.to_string(),
        ])
        .args(["--resource", &format!("{issuer}/mcp"), "-o"])
        .arg(&results);
    let mut suite = Proc::start(cmd, "/authorize?");
    let url = suite
        .stdout
        .lock()
        .expect("lock")
        .iter()
        .rev()
        .find(|l| l.starts_with(&format!("{issuer}/authorize?")))
        .cloned()
        .expect("authorization URL printed");

    // The browser step, through the real pages.
    let mut b = Browser::new();
    let login = b.get(&url).await;
    assert_eq!(login.status, 200, "{}", login.body);
    let (p, c) = (
        login.field("pending").expect("pending"),
        login.field("csrf").expect("csrf"),
    );
    let consent = b
        .post_form(
            &format!("{issuer}/login"),
            &[
                ("pending", &p),
                ("csrf", &c),
                ("username", "conf"),
                ("password", "conformance-pass"),
            ],
        )
        .await;
    assert_eq!(consent.status, 200);
    let done = b
        .post_form(
            &format!("{issuer}/consent"),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await;
    assert_eq!(done.status, 303);
    let callback = done.location().expect("redirect to the suite's callback");
    assert!(callback.starts_with(&format!("http://127.0.0.1:{cb_port}/callback?")));
    let r = b.get(&callback).await;
    assert_eq!(r.status, 200, "the suite accepted the callback");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(st)) = suite.child.try_wait() {
            break st;
        }
        assert!(Instant::now() < deadline, "the suite did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = suite.all_output();
    println!("{output}");
    assert!(
        status.success(),
        "conformance authorization failed:\n{output}"
    );
    assert!(output.contains("Total: 3 passed, 0 failed"), "{output}");
}
