//! Issue 18, part 6 (IN-1, PK-1): `gatehouse init` writes a production configuration that
//! runs as written — https on its own listener, the real PostgreSQL and Redis at 127.0.0.1 —
//! with every secret in a separate 0600 environment file; and the systemd unit passes
//! `systemd-analyze verify`.
mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in1_init_writes_a_config_that_serves_https_on_postgres_and_redis() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("gatehouse-init-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    make_certs(&dir, "0x3003");
    let db = format!("gh_init_{port}");
    let out = psql(&format!("CREATE DATABASE {db}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let database = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let (cfg, env) = (dir.join("gatehouse.yaml"), dir.join("gatehouse.env"));
    let init = |public: &str| {
        gatehouse()
            .args(["init", "--public-url", public, "--database", &database])
            .args(["--redis", "redis://127.0.0.1:6379"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(dir.join("server.pem"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .arg("--config")
            .arg(&cfg)
            .arg("--env-file")
            .arg(&env)
            .output()
            .expect("init")
    };
    // Only an https origin and PostgreSQL are accepted.
    let bad = init(&format!("http://localhost:{port}"));
    assert!(!bad.status.success() && !cfg.exists() && !env.exists());
    let out = init(&format!("https://localhost:{port}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Secrets only in the environment file, readable by its owner alone.
    let env_text = std::fs::read_to_string(&env).expect("env");
    let cfg_text = std::fs::read_to_string(&cfg).expect("cfg");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&env).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    let vars: Vec<(String, String)> = env_text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect();
    let kek = &vars
        .iter()
        .find(|(k, _)| k == "GATEHOUSE_KEY_ENCRYPTION_KEY")
        .expect("a key-encryption key")
        .1;
    assert_eq!(kek.len(), 44, "base64 of 32 bytes");
    assert!(!cfg_text.contains(kek.as_str()) && !cfg_text.contains("postgres://"));

    // `config check` accepts it; `serve` runs it as written (plus this test's private CA, which
    // the guard needs to fetch the embedded issuer's keys over https, as an operator with a
    // private PKI adds it).
    std::fs::write(
        &cfg,
        format!(
            "{cfg_text}trusted_ca_file: {}\n",
            dir.join("ca.pem").display()
        ),
    )
    .expect("ca");
    let check = gatehouse()
        .envs(vars.clone())
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
    cmd.envs(vars.clone()).args(["serve", "--config"]).arg(&cfg);
    let _p = Proc::start(cmd, "ready");
    let http = https_client(&dir.join("ca.pem"));
    let base = format!("https://localhost:{port}");
    let r = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["checks"]["database"], "ok");
    assert_eq!(v["checks"]["redis"], "ok");
    let meta: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["issuer"], Value::String(base.clone()));

    // A second init changes nothing.
    let again = init(&format!("https://localhost:{port}"));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing was overwritten"));
    assert_eq!(std::fs::read_to_string(&env).expect("env"), env_text);
}

/// PK-1: the systemd unit is valid as systemd reads it (with the binary built here in
/// `ExecStart`), and the check would see a broken one.
#[test]
fn pk1_the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is missing (Debian's systemd package)");
    }
    let unit =
        std::fs::read_to_string(repo_root().join("packaging/gatehouse.service")).expect("unit");
    let dir = std::env::temp_dir().join(format!("gatehouse-unit-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let verify = |text: &str, name: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&p)
            .output()
            .expect("verify");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let here = unit
        .replace("/usr/local/bin/gatehouse", env!("CARGO_BIN_EXE_gatehouse"))
        .replace("User=gatehouse", "User=root")
        .replace("Group=gatehouse", "Group=root");
    let said = verify(&here, "gatehouse.service");
    assert!(said.trim().is_empty(), "{said}");
    let broken = here.replace("Restart=on-failure", "Restart=sometimes");
    assert!(!verify(&broken, "broken.service").trim().is_empty());
}
