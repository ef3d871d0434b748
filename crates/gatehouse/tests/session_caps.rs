//! Issue 20: MCP sessions are capped per caller (`limits.sessions_per_subject`) and in all, a
//! caller past its cap is refused cleanly (429, `Retry-After`, a JSON-RPC error) while others are
//! not touched, its own idle sessions go first, and with `shared_state` the cap holds across
//! replicas. Everything through real processes on loopback.
mod common;
use common::*;
use serde_json::{Value, json};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"caps","version":"1"}}}"#;

/// The answer to an `initialize`: status, the session id issued, `Retry-After`, the body.
struct Opened {
    status: u16,
    session: Option<String>,
    retry_after: Option<u64>,
    body: String,
}

async fn initialize(endpoint: &str, token: &str) -> Opened {
    let r = reqwest::Client::new()
        .post(endpoint)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INIT)
        .send()
        .await
        .expect("initialize");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (session, retry_after) = (h("mcp-session-id"), h("retry-after"));
    Opened {
        status: r.status().as_u16(),
        session,
        retry_after: retry_after.and_then(|v| v.parse().ok()),
        body: r.text().await.unwrap_or_default(),
    }
}

/// Status of `tools/list` in `session` (after the `initialized` notification).
async fn use_session(endpoint: &str, token: &str, session: &str) -> u16 {
    let c = reqwest::Client::new();
    let post = |body: Value| {
        c.post(endpoint)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body)
            .send()
    };
    let n = post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await
        .expect("initialized");
    if !n.status().is_success() {
        return n.status().as_u16();
    }
    post(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await
        .expect("tools/list")
        .status()
        .as_u16()
}

async fn delete(endpoint: &str, token: &str, session: &str) -> u16 {
    reqwest::Client::new()
        .delete(endpoint)
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("delete")
        .status()
        .as_u16()
}

fn assert_refused(o: &Opened, status: u16) {
    assert_eq!(o.status, status, "{}", o.body);
    assert!(o.session.is_none(), "no session issued");
    let wait = o.retry_after.expect("Retry-After");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let v: Value = serde_json::from_str(&o.body).expect("a JSON-RPC error");
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sessions")),
        "{v}"
    );
}

/// `gatehouse dev` with its defaults: 64 sessions per subject; the 65th is refused, another
/// subject still opens one, and ending one (DELETE) gives the place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs_h1_sessions_per_subject_default_holds_in_dev() {
    let (_dev, port, data) = gatehouse_dev_embedded("caps-user", "caps-password-1");
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{base}/mcp");
    let db = format!("sqlite://{}", data.join("gatehouse.db").display());
    let (alice, alice_secret) = add_machine_client(&db, "caps-alice");
    let (bob, bob_secret) = add_machine_client(&db, "caps-bob");
    let token = cc_token_for(&base, &alice, &alice_secret, &endpoint).await;
    let mut sessions = Vec::new();
    for _ in 0..64 {
        let o = initialize(&endpoint, &token).await;
        assert_eq!(o.status, 200, "{}", o.body);
        sessions.push(o.session.expect("session id"));
    }
    let refused = initialize(&endpoint, &token).await;
    assert_refused(&refused, 429);
    assert_eq!(
        use_session(&endpoint, &token, &sessions[0]).await,
        200,
        "the caller's sessions still work"
    );
    let bob_token = cc_token_for(&base, &bob, &bob_secret, &endpoint).await;
    let b = initialize(&endpoint, &bob_token).await;
    assert_eq!(b.status, 200, "another caller is unaffected: {}", b.body);
    let ended = delete(&endpoint, &token, &sessions[1]).await;
    assert!((200..300).contains(&ended), "DELETE {ended}");
    let again = initialize(&endpoint, &token).await;
    assert_eq!(
        again.status, 200,
        "a DELETE gives the place back: {}",
        again.body
    );
    assert_refused(&initialize(&endpoint, &token).await, 429);
}

/// Two replicas of `serve` sharing Redis (`shared_state`): the cap counts sessions opened on
/// either; a caller's least recently used idle session is evicted once idle long enough, and is
/// then unknown on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs_h1_rs_h3_sessions_per_subject_holds_across_replicas_and_evicts_the_callers_idle_ones() {
    let (pa, pb) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{pa}");
    let dir = std::env::temp_dir().join(format!("gatehouse-caps-{pa}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let config = |port: u16, name: &str| {
        let cfg = dir.join(name);
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:{port}\npublic_url: {public}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\nlimits:\n  sessions_per_subject: 3\n  sessions_total: 100\n  session_reclaim_seconds: 2\nshared_state:\n  redis_url: redis://127.0.0.1:6379\n"
            ),
        )
        .expect("config");
        cfg
    };
    let (alice, alice_secret) = add_machine_client(&db, "replica-caps-alice");
    let (bob, bob_secret) = add_machine_client(&db, "replica-caps-bob");
    // The first replica creates the signing key; the second loads it.
    let _a = serve(&config(pa, "a.yaml"));
    let _b = serve(&config(pb, "b.yaml"));
    let resource = format!("{public}/mcp");
    let urls = [resource.clone(), format!("http://127.0.0.1:{pb}/mcp")];
    let token = cc_token_for(&public, &alice, &alice_secret, &resource).await;
    let mut opened = Vec::new();
    for i in 0..3 {
        let o = initialize(&urls[i % 2], &token).await;
        assert_eq!(o.status, 200, "{}", o.body);
        opened.push((i % 2, o.session.expect("session id")));
    }
    // Three in all across the two replicas: the fourth is refused on either.
    for url in &urls {
        assert_refused(&initialize(url, &token).await, 429);
    }
    let bob_token = cc_token_for(&public, &bob, &bob_secret, &resource).await;
    assert_eq!(initialize(&urls[1], &bob_token).await.status, 200, "bob");
    // Keep the first session in use, let the others idle past the reclaim time: the next
    // initialize evicts the least recently used idle one (the second), not the one in use.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (r0, s0) = &opened[0];
    assert_eq!(use_session(&urls[*r0], &token, s0).await, 200);
    let o = initialize(&urls[1], &token).await;
    assert_eq!(
        o.status, 200,
        "the caller's idle session made room: {}",
        o.body
    );
    let (r1, s1) = &opened[1];
    assert_eq!(
        use_session(&urls[*r1], &token, s1).await,
        404,
        "the evicted session is gone"
    );
    assert_eq!(use_session(&urls[*r0], &token, s0).await, 200, "kept");
    // A session id is its owner's only, on every replica (RS-16).
    assert_eq!(use_session(&urls[1 - *r0], &bob_token, s0).await, 404);
}

/// An upstream that issues `up-<n>` session ids and records the ids it is asked to end.
async fn session_upstream(ended: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> u16 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |body: axum::Json<Value>| {
            let next = next.clone();
            async move {
                let n = next.fetch_add(1, Ordering::SeqCst);
                (
                    [("mcp-session-id", format!("up-{n}"))],
                    axum::Json(json!({"jsonrpc": "2.0", "id": body["id"], "result": {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "up", "version": "1"}}})),
                )
            }
        })
        .delete(move |headers: axum::http::HeaderMap| {
            let ended = ended.clone();
            async move {
                if let Some(s) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
                    ended.lock().expect("lock").push(s.to_owned());
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// Through a gateway route: the cap is the guard's, and a session evicted to make room is ended
/// upstream too (its memory there goes with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs_h1_an_evicted_gateway_session_is_ended_upstream() {
    let ended = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = session_upstream(ended.clone()).await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-caps-gw-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let cfg = dir.join("g.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\nlimits:\n  sessions_per_subject: 2\n  session_reclaim_seconds: 1\ngateway:\n  upstreams:\n    - name: up\n      url: http://127.0.0.1:{up}/mcp\n"
        ),
    )
    .expect("config");
    let (alice, secret) = add_machine_client(&db, "gw-caps-alice");
    let gw = serve(&cfg);
    let endpoint = format!("{public}/servers/up/mcp");
    let token = cc_token_for(&public, &alice, &secret, &endpoint).await;
    let first = initialize(&endpoint, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(initialize(&endpoint, &token).await.status, 200);
    assert_refused(&initialize(&endpoint, &token).await, 429);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let third = initialize(&endpoint, &token).await;
    assert_eq!(third.status, 200, "{}", third.body);
    let first_id = first.session.expect("gateway session id");
    assert_eq!(
        use_session(&endpoint, &token, &first_id).await,
        404,
        "evicted"
    );
    for _ in 0..50 {
        if !ended.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        *ended.lock().expect("lock"),
        vec!["up-0".to_owned()],
        "{}",
        gw.all_output()
    );
}
