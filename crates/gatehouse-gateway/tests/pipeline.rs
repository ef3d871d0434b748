//! The proxy's pipeline driven in this process (no gateway process is started) against a
//! recording upstream on a loopback socket: what reaches the upstream, what is refused, what is
//! charged and what is audited, message by message (T3, T22, GW-07).
#![allow(clippy::unwrap_used)]
use axum::body::Body;
use axum::extract::State;
use gatehouse_core::{Resource, ScopeSet};
use gatehouse_gateway::spec::*;
use gatehouse_gateway::{Audit, Proxy, ProxyDeps, RateLimits};
use gatehouse_tokens::{Principal, PrincipalSource};
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// What the upstream saw: each request's path, headers and body.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, HeaderMap, Value)>>>);

impl Recorder {
    fn seen(&self) -> Vec<(String, HeaderMap, Value)> {
        self.0.lock().unwrap().clone()
    }
    fn mcp(&self) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|(p, _, _)| p == "/mcp")
            .map(|(_, _, b)| b)
            .collect()
    }
}

fn answer_one(m: &Value) -> Option<Value> {
    let id = m.get("id")?.clone();
    let method = m.get("method")?.as_str()?;
    let result = match method {
        "initialize" => json!({
            "protocolVersion": m.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-11-25")),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "recorder", "version": "1"},
        }),
        "tools/list" => json!({"tools": [{"name": "echo"}, {"name": "get-env"}]}),
        _ => json!({"content": [{"type": "text", "text": "ok"}]}),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

async fn upstream(State(rec): State<Recorder>, req: Request<Body>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    rec.0.lock().unwrap().push((
        parts.uri.path().to_owned(),
        parts.headers.clone(),
        v.clone(),
    ));
    if parts.uri.path() == "/token" {
        return axum::Json(
            json!({"access_token": "exchanged", "token_type": "Bearer", "expires_in": 300}),
        )
        .into_response();
    }
    let answers: Vec<Value> = match &v {
        Value::Array(items) => items.iter().filter_map(answer_one).collect(),
        one => answer_one(one).into_iter().collect(),
    };
    if answers.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    let body = if v.is_array() {
        Value::Array(answers)
    } else {
        answers[0].clone()
    };
    ([("mcp-session-id", "upstream-session-1")], axum::Json(body)).into_response()
}

async fn start_upstream() -> (String, Recorder) {
    let rec = Recorder::default();
    let app = axum::Router::new()
        .fallback(upstream)
        .with_state(rec.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), rec)
}

struct Setup {
    proxy: Proxy,
    rec: Recorder,
    audit: std::path::PathBuf,
}

const POLICY: &str = r#"
@id("callers") permit(principal, action, resource);
@id("no env") forbid(principal, action == Action::"tools/call", resource == Tool::"up/get-env");
"#;

async fn setup(burst: Option<u32>, exchange: bool) -> Setup {
    let (base, rec) = start_upstream().await;
    let dir = std::env::temp_dir().join(format!(
        "gh-pipeline-{}-{}",
        std::process::id(),
        gatehouse_core::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.cedar");
    std::fs::write(&policy, POLICY).unwrap();
    let audit = dir.join("audit.jsonl");
    let engine = gatehouse_policy::Engine::load(Some(&policy), vec![]).unwrap();
    let limits = burst.map(|b| {
        let l = LimitSpec {
            per_minute: std::num::NonZeroU32::new(1).unwrap(),
            burst: std::num::NonZeroU32::new(b).unwrap(),
        };
        Arc::new(
            RateLimits::new(&RateLimitSpec {
                subject: l,
                per_tenant: None,
                per_tool: Default::default(),
                redis_url: None,
            })
            .unwrap(),
        )
    });
    let deps = ProxyDeps {
        http: gatehouse_fetch::upstream::upstream_client("test").unwrap(),
        audit: Some(Arc::new(Audit::open(audit.to_str().unwrap()).unwrap())),
        limits,
        policy: Arc::new(engine),
        connect: None,
        messages: MessageLimits::default(),
        required: ScopeSet::parse("mcp:basic").unwrap(),
        sessions: gatehouse_gateway::DEFAULT_SESSIONS,
        shared: None,
    };
    let headers = vec![(
        http::HeaderName::from_static("x-upstream-key"),
        http::HeaderValue::from_static("configured"),
    )];
    let token = if exchange {
        UpstreamToken::Exchange(ExchangeSpec {
            token_endpoint: format!("{base}/token"),
            client_id: "gw".into(),
            client_secret: gatehouse_core::SecretString::new("s"),
            resource: format!("{base}/mcp"),
        })
    } else {
        UpstreamToken::None
    };
    let spec = UpstreamSpec {
        name: UpstreamName::parse("up").unwrap(),
        transport: Transport::Http {
            url: url::Url::parse(&format!("{base}/mcp")).unwrap(),
            credentials: CredentialSpec {
                headers,
                token,
                identity: None,
            },
        },
        resource: Resource::parse("http://127.0.0.1:1/servers/up/mcp").unwrap(),
        anonymous: false,
    };
    Setup {
        proxy: Proxy::new(spec, &deps),
        rec,
        audit,
    }
}

fn alice() -> Principal {
    Principal {
        issuer: "https://as.example".into(),
        subject: "alice".into(),
        client_id: Some("c".into()),
        scopes: ScopeSet::parse("mcp:basic").unwrap(),
        tenant: None,
        expires_at: None,
        source: PrincipalSource::Jwt,
        claims: json!({"sub": "alice"}).as_object().cloned().unwrap(),
    }
}

impl Setup {
    /// A POST as the guard leaves it: the principal in the extensions, the caller's token and a
    /// cookie still in the headers.
    async fn post(
        &self,
        body: &str,
        sid: Option<&str>,
        version: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        self.post_as(alice(), body, sid, version).await
    }

    async fn post_as(
        &self,
        who: Principal,
        body: &str,
        sid: Option<&str>,
        version: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::post("/servers/up/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", "Bearer caller-token-must-not-travel")
            .header("cookie", "session=caller-cookie")
            .body(Body::from(body.to_owned()))
            .unwrap();
        if let Some(s) = sid {
            req.headers_mut()
                .insert("mcp-session-id", s.parse().unwrap());
        }
        if let Some(v) = version {
            req.headers_mut()
                .insert("mcp-protocol-version", v.parse().unwrap());
        }
        req.extensions_mut().insert(who);
        let resp = self
            .proxy
            .clone()
            .into_service()
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn session(&self, version: &str) -> String {
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
        );
        let (status, headers, _) = self.post(&init, None, None).await;
        assert_eq!(status, StatusCode::OK);
        let sid = headers["mcp-session-id"].to_str().unwrap().to_owned();
        assert_ne!(sid, "upstream-session-1", "GW-11: ids are mapped per hop");
        let (status, _, _) = self
            .post(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Some(&sid),
                Some(version),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        sid
    }

    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap();
        assert!(gatehouse_gateway::verify_chain(&text).is_ok());
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn batch(calls: impl IntoIterator<Item = Value>) -> String {
    Value::Array(calls.into_iter().collect()).to_string()
}

fn call(id: i64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
}

#[tokio::test]
async fn gw01_t3_the_upstream_never_sees_the_callers_token_or_cookie() {
    let s = setup(None, false).await;
    let sid = s.session("2025-11-25").await;
    let (status, _, v) = s
        .post(&call(1, "echo").to_string(), Some(&sid), Some("2025-11-25"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let seen = s.rec.seen();
    assert_eq!(seen.len(), 3);
    for (_, headers, _) in &seen {
        assert!(headers.get("authorization").is_none(), "T3");
        assert!(headers.get("cookie").is_none());
        assert_eq!(headers["x-upstream-key"], "configured");
        if let Some(sid_up) = headers.get("mcp-session-id") {
            assert_eq!(sid_up, "upstream-session-1");
        }
    }
}

#[tokio::test]
async fn a_denied_call_never_reaches_the_upstream() {
    let s = setup(None, false).await;
    let sid = s.session("2025-11-25").await;
    let before = s.rec.mcp().len();
    let (status, _, v) = s
        .post(
            &call(5, "get-env").to_string(),
            Some(&sid),
            Some("2025-11-25"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["error"]["code"], -32003, "{v}");
    assert_eq!(v["id"], 5);
    assert_eq!(s.rec.mcp().len(), before, "nothing went upstream");
}

#[tokio::test]
async fn gw07_an_unknown_or_foreign_session_is_404_before_any_exchange() {
    let s = setup(None, true).await;
    let sid = s.session("2025-11-25").await;
    let exchanges = |s: &Setup| {
        s.rec
            .seen()
            .iter()
            .filter(|(p, _, _)| p == "/token")
            .count()
    };
    let before = exchanges(&s);
    assert_eq!(before, 1, "one exchange, cached for the caller's token");
    let (status, _, v) = s
        .post(
            &call(1, "echo").to_string(),
            Some("no-such-session"),
            Some("2025-11-25"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], -32001);
    let mut bob = alice();
    bob.subject = "bob".into();
    let (status, _, _) = s
        .post_as(
            bob,
            &call(1, "echo").to_string(),
            Some(&sid),
            Some("2025-11-25"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another user's session");
    assert_eq!(
        exchanges(&s),
        before,
        "no exchange for a request that ends in 404"
    );
    // The exchanged token went upstream, the caller's never did.
    let mcp: Vec<_> = s
        .rec
        .seen()
        .into_iter()
        .filter(|(p, _, _)| p == "/mcp")
        .collect();
    assert!(
        mcp.iter()
            .all(|(_, h, _)| h["authorization"] == "Bearer exchanged")
    );
}

#[tokio::test]
async fn t22_lists_in_a_batch_are_filtered_each() {
    let s = setup(None, false).await;
    let sid = s.session("2025-03-26").await;
    let body = batch([
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    ]);
    let (status, _, v) = s.post(&body, Some(&sid), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let answers = v.as_array().unwrap();
    assert_eq!(answers.len(), 2);
    for a in answers {
        assert_eq!(a["result"]["tools"], json!([{"name": "echo"}]), "{a}");
    }
}

#[tokio::test]
async fn t22_a_batch_is_limited_and_audited_per_call_and_refusals_spend_nothing() {
    let s = setup(Some(3), false).await;
    // initialize and initialized are not charged.
    let sid = s.session("2025-03-26").await;
    // Denied calls spend no budget.
    for i in 0..5 {
        let (_, _, v) = s
            .post(&call(100 + i, "get-env").to_string(), Some(&sid), None)
            .await;
        assert_eq!(v["error"]["code"], -32003);
    }
    let before = s.rec.mcp().len();
    let (status, headers, v) = s
        .post(&batch((1..=6).map(|i| call(i, "echo"))), Some(&sid), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let answers = v.as_array().unwrap();
    assert_eq!(answers.len(), 6, "{v}");
    let ok = answers.iter().filter(|a| a.get("result").is_some()).count();
    let limited = answers
        .iter()
        .filter(|a| {
            a["error"]["code"] == -32000
                && a["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("rate limit")
        })
        .count();
    assert_eq!((ok, limited), (3, 3), "{v}");
    assert!(headers.contains_key("retry-after"));
    let sent = s.rec.mcp();
    assert_eq!(sent.len(), before + 1);
    assert_eq!(
        sent.last().unwrap().as_array().unwrap().len(),
        3,
        "only the 3 within budget went upstream"
    );
    // One record per message.
    let records = s.audit();
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 5 + 6);
    assert_eq!(calls.iter().filter(|r| r["decision"] == "allow").count(), 3);
    assert_eq!(
        calls
            .iter()
            .filter(|r| r["decision"] == "rate_limited")
            .count(),
        3
    );
    assert_eq!(calls.iter().filter(|r| r["decision"] == "deny").count(), 5);
}

#[tokio::test]
async fn t22_batch_cap_names_and_methods() {
    let s = setup(None, false).await;
    let sid = s.session("2025-03-26").await;
    let before = s.rec.mcp().len();
    let (status, _, v) = s
        .post(&batch((0..40).map(|i| call(i, "echo"))), Some(&sid), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let answers = v.as_array().unwrap();
    assert_eq!(answers.len(), 40);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a["error"]["code"] == -32600)
            .count(),
        8
    );
    assert_eq!(s.rec.mcp()[before].as_array().unwrap().len(), 32);
    // 32 records for the calls taken, one for the 8 past the cap.
    let records = s.audit();
    let calls = records
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .count();
    assert_eq!(calls, 32);
    assert!(records.iter().any(|r| {
        r["reason"]
            .as_str()
            .is_some_and(|w| w.contains("8 messages past the batch cap of 32"))
    }));
    // A 100 KB method name is refused, not forwarded, and not stored verbatim.
    let long = "x".repeat(100_000);
    let before = s.rec.mcp().len();
    let (status, _, v) = s
        .post(
            &json!({"jsonrpc": "2.0", "id": 7, "method": long}).to_string(),
            Some(&sid),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32600);
    let (_, _, v) = s
        .post(
            &json!({"jsonrpc": "2.0", "id": 8, "method": "admin/shutdown"}).to_string(),
            Some(&sid),
            None,
        )
        .await;
    assert_eq!(v["error"]["code"], -32601, "a method MCP does not have");
    assert_eq!(s.rec.mcp().len(), before);
    let log = std::fs::read_to_string(&s.audit).unwrap();
    assert!(
        log.lines().all(|l| l.len() < 2_000),
        "no record holds the long name"
    );
    // A body over the proxy's bound (an anonymous route has no guard to bound it first): 413.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"ping","pad":"{}"}}"#,
        "x".repeat(5 << 20)
    );
    let (status, _, v) = s.post(&big, Some(&sid), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(s.rec.mcp().len(), before, "nothing went upstream");
}

#[tokio::test]
async fn t22_the_sessions_version_decides_whether_batches_exist() {
    let s = setup(None, false).await;
    let sid = s.session("2025-11-25").await;
    let before = s.rec.mcp().len();
    // No MCP-Protocol-Version header: the session's version (2025-11-25) applies, not 2025-03-26.
    let (status, _, v) = s
        .post(&batch([call(1, "echo"), call(2, "echo")]), Some(&sid), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32600);
    // Nor does claiming the old version in the header help.
    let (status, _, _) = s
        .post(&batch([call(1, "echo")]), Some(&sid), Some("2025-03-26"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(s.rec.mcp().len(), before, "nothing went upstream");
    // A single call without the header goes, carrying the session's version upstream.
    let (status, _, _) = s.post(&call(3, "echo").to_string(), Some(&sid), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, h, _) = s.rec.seen().into_iter().last().unwrap();
    assert_eq!(h["mcp-protocol-version"], "2025-11-25");
}
