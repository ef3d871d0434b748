//! Issue 18, part 2 (HL-1): `/healthz` and `/readyz` as a load balancer and an operator see
//! them: ready with every check named; not ready, naming why, when a trusted issuer's keys
//! cannot be had.
mod common;

use common::*;
use serde_json::{Value, json};

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("get");
    (r.status().as_u16(), r.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl1_ready_names_every_check_and_what_is_missing() {
    let (_dev, port, _data) = gatehouse_dev_embedded("health-user", "health-pass-1");
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (200, json!({"status": "ok"}))
    );
    let (st, v) = get(&format!("{base}/readyz")).await;
    assert_eq!(st, 200, "{v}");
    for check in ["database", "signing_keys", "issuer_keys", "revocations"] {
        assert_eq!(v["checks"][check], json!("ok"), "{check}: {v}");
    }

    // A guard trusting an issuer nobody answers for: alive, but not ready, and it says why.
    let port = free_port();
    let dead = free_port();
    let dir = std::env::temp_dir().join(format!("gatehouse-health-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  authorization_servers:\n    - issuer: http://127.0.0.1:{dead}\n  required_scopes: [mcp:basic]\ndangerous:\n  allow_loopback_fetch: ['127.0.0.1:{dead}']\n"
        ),
    )
    .expect("config");
    let _p = serve(&cfg);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let r = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], json!("not ready"));
    let why = v["checks"]["issuer_keys"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("127.0.0.1:{dead}")), "{v}");
}
