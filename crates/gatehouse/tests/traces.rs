//! Issue 18 part 3: OpenTelemetry traces over OTLP/HTTP, received by a real OTLP receiver that
//! decodes the protobuf wire format with the official OpenTelemetry classes
//! (`interop/otlp-receiver.py`, `opentelemetry-proto` from PyPI), and JSON logs that never hold a
//! secret. Requirement ids OT-1, OT-2, LG-1.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod common;

use common::browser::Browser;
use common::*;
use serde_json::{Value, json};
use std::io::BufRead;
use std::time::Duration;

/// An upstream that answers every JSON-RPC request with the `traceparent` it received.
async fn recording_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(
            |headers: axum::http::HeaderMap, body: axum::Json<Value>| async move {
                let tp = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                axum::Json(
                    json!({"jsonrpc": "2.0", "id": body["id"], "result": {"traceparent": tp}}),
                )
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// The receiver process, killed when the test ends (pass or fail).
struct Receiver(std::process::Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An attribute as text: the exporter may send numbers as strings.
fn attr(span: &Value, key: &str) -> String {
    match &span["attributes"][key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn receiver(port: u16, out: &std::path::Path) -> Receiver {
    let root = repo_root();
    let mut child = std::process::Command::new(root.join("interop/.venv/bin/python"))
        .arg(root.join("interop/otlp-receiver.py"))
        .arg(port.to_string())
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("interop/.venv (scripts/setup installs it)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.contains("ready"), "{line}");
    Receiver(child)
}

fn spans(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn call(endpoint: &str, token: &str, traceparent: Option<&str>) -> Value {
    let mut r = reqwest::Client::new()
        .post(endpoint)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let resp = r
        .body(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

/// OT-1, OT-2, LG-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ot1_spans_reach_a_real_otlp_receiver_and_join_the_callers_and_the_upstreams_trace() {
    let (port, otlp_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-traces-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("spans.jsonl");
    let _rx = receiver(otlp_port, &out);
    let up = recording_upstream().await;
    let db = format!("sqlite://{}/as.db", dir.display());
    let audit = dir.join("audit.jsonl");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nlog:\n  format: json\ntraces:\n  otlp_endpoint: http://127.0.0.1:{otlp_port}\n  service_name: gatehouse-test\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\ngateway:\n  audit_log: {}\n  upstreams:\n    - name: echo\n      url: http://127.0.0.1:{up}/mcp\n",
            audit.display()
        ),
    )
    .expect("config");
    let (client_id, secret) = add_machine_client(&db, "traced-agent");
    let password = "tracer-password-9c1e";
    let out_user = gatehouse()
        .env("GATEHOUSE_PASSWORD", password)
        .args(["admin", "--db", &db, "users", "add", "tracer"])
        .output()
        .expect("admin");
    assert!(out_user.status.success());
    let mut cmd = gatehouse();
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .args(["serve", "--config"])
        .arg(&cfg);
    let mut server = Proc::start(cmd, "ready");
    let endpoint = format!("{base}/servers/echo/mcp");
    let token = cc_token_for(&base, &client_id, &secret, &endpoint).await;

    // A call continuing the caller's trace, and one starting a new trace.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let inbound = format!("00-{trace}-{parent}-01");
    let answer = call(&endpoint, &token, Some(&inbound)).await;
    let seen = answer["result"]["traceparent"]
        .as_str()
        .expect("a traceparent upstream")
        .to_owned();
    let fresh = call(&endpoint, &token, None).await;
    let fresh_seen = fresh["result"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    // A sign-in with a password, for the log check.
    let mut b = Browser::new();
    let form = b.get(&format!("{base}/account/signin")).await;
    let r = b
        .post_form(
            &format!("{base}/account/signin"),
            &[
                ("csrf", &form.field("csrf").expect("csrf")),
                ("next", "account"),
                ("username", "tracer"),
                ("password", password),
            ],
        )
        .await;
    assert_eq!(r.status, 303);

    // The spans arrive, decoded from protobuf by the receiver.
    let mut got = Vec::new();
    for _ in 0..100 {
        got = spans(&out);
        let names: Vec<&str> = got
            .iter()
            .filter(|s| s["trace_id"] == trace)
            .filter_map(|s| s["name"].as_str())
            .collect();
        if ["token.validate", "policy.evaluate", "upstream.call"]
            .iter()
            .all(|n| names.contains(n))
            && names.iter().any(|n| n.starts_with("POST "))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        got.iter().all(|s| s.get("decode_error").is_none()),
        "{got:#?}"
    );
    let of = |name: &str| -> Value {
        got.iter()
            .find(|s| {
                s["trace_id"] == trace
                    && s["name"]
                        .as_str()
                        .is_some_and(|n| n == name || (name == "request" && n.starts_with("POST ")))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {name} span in the caller's trace: {got:#?}"))
    };
    let request = of("request");
    assert_eq!(request["name"], "POST /servers/echo/mcp");
    assert_eq!(request["kind"], "server");
    assert_eq!(
        request["parent_span_id"], parent,
        "the caller's span is the parent"
    );
    assert_eq!(request["resource"]["service.name"], "gatehouse-test");
    assert_eq!(attr(&request, "http.response.status_code"), "200");
    assert_eq!(attr(&request, "url.path"), "/servers/echo/mcp");
    let validate = of("token.validate");
    assert_eq!(validate["parent_span_id"], request["span_id"]);
    assert_eq!(attr(&validate, "outcome"), "valid");
    assert_eq!(of("policy.evaluate")["parent_span_id"], request["span_id"]);
    let upstream = of("upstream.call");
    assert_eq!(upstream["kind"], "client");
    assert_eq!(upstream["parent_span_id"], request["span_id"]);
    assert_eq!(attr(&upstream, "upstream"), "echo");
    assert_eq!(attr(&upstream, "http.response.status_code"), "200");
    // OT-2: the upstream's parent is the gateway's upstream-call span, in the same trace.
    assert_eq!(
        seen,
        format!(
            "00-{trace}-{}-01",
            upstream["span_id"].as_str().expect("id")
        )
    );
    // A call without a traceparent starts a trace of its own, passed upstream the same way.
    let parts: Vec<&str> = fresh_seen.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_ne!(parts[1], trace);
    // Both spans of that call: the upstream call, and the request span (which ends after it,
    // so it may come in a later export).
    for _ in 0..100 {
        let all = spans(&out);
        let upstream_seen = all.iter().any(|s| {
            s["trace_id"] == parts[1] && s["name"] == "upstream.call" && s["span_id"] == parts[2]
        });
        let request_seen = all
            .iter()
            .any(|s| s["trace_id"] == parts[1] && s["kind"] == "server");
        if upstream_seen && request_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = spans(&out);
    let root = all
        .iter()
        .find(|s| s["trace_id"] == parts[1] && s["kind"] == "server")
        .unwrap_or_else(|| panic!("no request span for {fresh_seen}: {all:#?}"));
    assert_eq!(root["parent_span_id"], "", "a new trace has a root span");
    // The audit log names the same trace ids.
    let log = std::fs::read_to_string(&audit).expect("audit");
    assert!(log.contains(&format!("\"trace_id\":\"{trace}\"")), "{log}");
    assert!(
        log.contains(&format!("\"trace_id\":\"{}\"", parts[1])),
        "{log}"
    );
    // The sign-in's request span carries no form field, and no span holds a secret.
    for _ in 0..100 {
        if std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("POST /account/signin")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&out).expect("spans");
    for secret_text in [token.as_str(), secret.as_str(), password] {
        assert!(
            !text.contains(secret_text),
            "a secret in the exported spans"
        );
    }
    assert!(text.contains("POST /account/signin"));

    // LG-1: JSON logs, one object per line, never a secret.
    let _ = server.terminate(10);
    let logs = server.all_output();
    let mut objects = 0;
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object: {line}: {e}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        objects += 1;
    }
    assert!(objects > 5, "{logs}");
    for secret_text in [token.as_str(), secret.as_str(), password] {
        assert!(!logs.contains(secret_text), "a secret in the logs");
    }
}
