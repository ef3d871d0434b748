//! Issue 15 (T22): batch smuggling through `gatehouse serve`, as an attacker tries it, against
//! the real `@modelcontextprotocol/server-everything`. Every message of a batch is authorized,
//! rate-limited, audited and list-filtered as its own call; a batch is capped; the session's
//! version decides whether batches exist; method names are bounded and unknown ones refused;
//! `gatehouse audit verify` checks what the gateway wrote (GW-H1…GW-H5).
mod common;

use common::*;
use serde_json::{Value, json};

struct Client {
    url: String,
    token: String,
    session: Option<String>,
    version: Option<&'static str>,
}

impl Client {
    async fn send(&self, body: String) -> (u16, Vec<Value>, reqwest::header::HeaderMap) {
        let mut r = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(&self.token)
            .body(body);
        if let Some(s) = &self.session {
            r = r.header("mcp-session-id", s);
        }
        if let Some(v) = self.version {
            r = r.header("mcp-protocol-version", v);
        }
        let resp = r.send().await.expect("post");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let sse = headers
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
        let text = resp.text().await.expect("body");
        let answers = if sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .collect()
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(a)) => a,
                Ok(v) => vec![v],
                Err(_) => vec![],
            }
        };
        (status, answers, headers)
    }

    /// Opens a session at `version` (no version header on later requests, as a 2025-03-26
    /// client sends none).
    async fn open(url: &str, token: &str, version: &'static str) -> Self {
        let mut c = Self {
            url: url.to_owned(),
            token: token.to_owned(),
            session: None,
            version: None,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "attacker", "version": "1"}}});
        let (status, answers, headers) = c.send(init.to_string()).await;
        assert_eq!(status, 200, "{answers:?}");
        assert_eq!(answers[0]["result"]["protocolVersion"], version);
        c.session = Some(
            headers["mcp-session-id"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
        let (status, _, _) = c
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
        assert_eq!(status, 202);
        c
    }
}

fn batch(items: impl IntoIterator<Item = Value>) -> String {
    Value::Array(items.into_iter().collect()).to_string()
}

fn echo(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_batches_are_handled_message_by_message() {
    let everything_port = free_port();
    let _everything = server_everything(everything_port);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw-batches-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let (alice, alice_secret) = add_machine_client(&db, "batch-alice");
    let (bob, bob_secret) = add_machine_client(&db, "batch-bob");
    let policy = dir.join("policy.cedar");
    std::fs::write(
        &policy,
        "@id(\"callers\") permit(principal, action, resource);\n@id(\"no env\") forbid(principal, action == Action::\"tools/call\", resource == Tool::\"everything/get-env\");\n",
    )
    .expect("policy");
    let audit = dir.join("audit.jsonl");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\ngateway:\n  audit_log: {audit}\n  policy: {{file: {policy}}}\n  rate_limit: {{per_minute: 60, burst: 3}}\n  upstreams:\n    - name: everything\n      url: http://127.0.0.1:{everything_port}/mcp\n",
            audit = audit.display(),
            policy = policy.display(),
        ),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let _server = Proc::start(cmd, "ready");
    let url = format!("{base}/servers/everything/mcp");
    let alice_t = cc_token_for(&base, &alice, &alice_secret, &url).await;
    let bob_t = cc_token_for(&base, &bob, &bob_secret, &url).await;

    // A 2025-03-26 session: a plain tools/list hides get-env, and so does each list of a batch.
    let a = Client::open(&url, &alice_t, "2025-03-26").await;
    let list = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    let (status, answers, _) = a.send(batch([list(1), list(2)])).await;
    assert_eq!(status, 200, "{answers:?}");
    let lists: Vec<&Value> = answers
        .iter()
        .filter(|m| m.get("result").is_some())
        .collect();
    assert_eq!(lists.len(), 2, "{answers:?}");
    for l in lists {
        let names: Vec<&str> = l["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"echo"), "{names:?}");
        assert!(
            !names.contains(&"get-env"),
            "T22: hidden in a batch too: {names:?}"
        );
    }

    // A fresh subject with burst 3: a batch of 6 calls sends 3 upstream, refuses 3, each answered.
    let b = Client::open(&url, &bob_t, "2025-03-26").await;
    let (status, answers, headers) = b.send(batch((1..=6).map(echo))).await;
    assert_eq!(status, 200);
    let ok = answers.iter().filter(|m| m.get("result").is_some()).count();
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|m| {
            m["error"]["message"]
                .as_str()
                .is_some_and(|s| s.contains("rate limit"))
        })
        .collect();
    assert_eq!((ok, limited.len()), (3, 3), "{answers:?}");
    assert!(headers.contains_key("retry-after"));
    let mut ids: Vec<i64> = answers.iter().filter_map(|m| m["id"].as_i64()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "one answer per call");

    // 10,000 calls: 32 are taken, the rest are refused one by one and never forwarded.
    let (status, answers, _) = a
        .send(batch((0..10_000).map(
            |i| json!({"jsonrpc": "2.0", "id": i, "method": "ping"}),
        )))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answers.len(), 10_000);
    assert_eq!(
        answers
            .iter()
            .filter(|m| m["error"]["code"] == -32600)
            .count(),
        10_000 - 32
    );

    // A session negotiated at 2025-11-25: a batch without the header is refused, not taken as
    // 2025-03-26, and claiming 2025-03-26 in the header does not help either.
    let mut c = Client::open(&url, &alice_t, "2025-11-25").await;
    let (status, answers, _) = c.send(batch([list(1), list(2)])).await;
    assert_eq!(status, 400, "{answers:?}");
    c.version = Some("2025-03-26");
    let (status, _, _) = c.send(batch([list(1)])).await;
    assert_eq!(status, 400);
    c.version = Some("2025-11-25");

    // A 100 KB method name and a method MCP does not have are refused; neither is forwarded.
    let long = "m".repeat(100_000);
    let (status, answers, _) = c
        .send(json!({"jsonrpc": "2.0", "id": 7, "method": long}).to_string())
        .await;
    assert_eq!(status, 400, "{answers:?}");
    assert_eq!(answers[0]["error"]["code"], -32600);
    let (_, answers, _) = c
        .send(json!({"jsonrpc": "2.0", "id": 8, "method": "debug/dump"}).to_string())
        .await;
    assert_eq!(answers[0]["error"]["code"], -32601, "{answers:?}");

    // The audit log: a record per call, none holding the long name, a chain that verifies; an
    // edit is found at its line.
    let log = std::fs::read_to_string(&audit).expect("audit");
    assert!(
        log.lines().all(|l| l.len() < 4_000),
        "no record holds the long name"
    );
    assert!(
        log.lines().count() < 200,
        "the 9,968 messages past the cap share one record"
    );
    let bob_calls = log
        .lines()
        .filter(|l| l.contains("\"tools/call\"") && l.contains(&format!("\"client\":\"{bob}\"")))
        .count();
    assert_eq!(bob_calls, 6, "one record per call of the batch");
    let out = gatehouse()
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .expect("verify");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tampered = dir.join("tampered.jsonl");
    let third = log.lines().nth(2).expect("line 3");
    std::fs::write(
        &tampered,
        log.replacen(third, &third.replace("allow", "deny"), 1),
    )
    .expect("write");
    let out = gatehouse()
        .args(["audit", "verify"])
        .arg(&tampered)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 3:"));
    let _ = std::fs::remove_dir_all(&dir);
}
