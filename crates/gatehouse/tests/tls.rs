//! Issue 18, part 1 (TL-1): `tls: {cert_file, key_file}` serves https on the listener. A CA
//! and certificates made here with the openssl CLI; real clients (reqwest with that CA, curl for
//! HTTP/2, `openssl s_client` for protocol versions and the certificate served).
mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

/// The serial of the certificate the server presents to a new connection, and whether a
/// handshake with these `openssl s_client` options succeeds.
fn served(port: u16, extra: &[&str]) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            extra.join(" ")
        ))
        .output()
        .expect("s_client");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && text.starts_with("serial="), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tl1_https_on_the_listener_with_reload_and_modern_protocols_only() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("gatehouse-tls-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    make_certs(&dir, "0x1001");
    let base = format!("https://localhost:{port}");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\npublic_url: {base}\ntls:\n  cert_file: {}\n  key_file: {}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: sqlite://{}/as.db\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
            dir.display()
        ),
    )
    .expect("config");
    let check = gatehouse()
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let proc = Proc::start(cmd, "ready");

    // A real client trusting the CA: the discovery document and health over https.
    let http = https_client(&dir.join("ca.pem"));
    let meta: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .expect("https")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["issuer"], Value::String(base.clone()));
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    // A client that does not trust the CA fails; plain http on the TLS port gets nothing.
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err()
    );
    // ALPN: curl negotiates HTTP/2.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"))
        .arg(format!("{base}/healthz"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    // TLS 1.2 and 1.3 only.
    assert!(served(port, &["-tls1_3"]).0);
    assert!(served(port, &["-tls1_2"]).0);
    assert!(
        !served(port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).0,
        "TLS 1.1 refused"
    );

    // Reload: a new certificate moved into place is served to new connections within a few
    // seconds, while a connection opened before keeps working.
    let (_, before) = served(port, &[]);
    assert_eq!(before, "serial=1001");
    let kept = https_client(&dir.join("ca.pem"));
    assert_eq!(
        kept.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("first")
            .status(),
        200
    );
    make_certs(&dir, "0x2002");
    let mut now = String::new();
    for _ in 0..50 {
        now = served(port, &[]).1;
        if now == "serial=2002" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(now, "serial=2002", "the new certificate is served");
    assert_eq!(
        kept.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("kept")
            .status(),
        200
    );
    // A broken pair (a key that does not belong) is refused; the good one stays.
    openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "other.key",
        ],
    );
    std::fs::copy(dir.join("other.key"), dir.join("server.key")).expect("copy");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(served(port, &[]).1, "serial=2002");
    assert!(
        proc.all_output().contains("TLS certificate not reloaded"),
        "{}",
        proc.all_output()
    );
    // `config check` names the problem.
    let check = gatehouse()
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("does not belong to the certificate"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
