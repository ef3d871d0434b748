//! Issue 5 (first part): the gateway in front of real upstreams. `@modelcontextprotocol/
//! server-everything` (npm, Streamable HTTP) and a recording upstream sit behind
//! `gatehouse serve` with the embedded authorization server; rmcp's MCP client and raw requests
//! go through. Proves: per-upstream protected resources (own PRM, own audience), no token
//! passthrough (T3: the upstream sees only its configured credential), sessions bound to the
//! user across the proxy (T2), per-subject rate limits, a hash-chained audit log without tokens.
//! REQUIREMENTS ids: GW-01 (upstreams never see the inbound token; a token for another upstream
//! is 401), GW-07 (another user's session → 404), GW-12 (no token in the audit log or logs),
//! GW-13 (a privileged tool → 403 naming only what is needed), GW-14 (a stdio server is started
//! only for an authenticated caller, with a clean environment).
mod common;

use common::*;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

const UPSTREAM_SECRET: &str = "upstream-credential-7f3a";
/// Shared by the gateway and the `echo` upstream for the signed identity header (GW-A2).
const IDENTITY_SECRET: &str = "identity-secret-shared-with-echo-0123456789";

/// An upstream that answers every JSON-RPC request with the `Authorization` header it received.
async fn recording_upstream(seen: Arc<Mutex<Vec<Option<String>>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    seen.lock().expect("lock").push(auth.clone());
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    axum::Json(json!({"jsonrpc": "2.0", "id": body["id"], "result": {
                        "authorization": auth,
                        "traceparent": header("traceparent"),
                    "identity": header("gatehouse-identity"),
                        "tracestate": header("tracestate"),
                    }}))
                }
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// The stdio server the gateway tests start (npm `@modelcontextprotocol/server-memory`).
fn memory_js() -> String {
    repo_root()
        .join("interop/node_modules/@modelcontextprotocol/server-memory/dist/index.js")
        .display()
        .to_string()
}

/// An `initialize` request (2025-11-25) with these client capabilities.
fn initialize(capabilities: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}}})
}

/// The session id an answer carries.
fn session_of(r: &reqwest::Response) -> String {
    r.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Calls a tool with JSON arguments through rmcp's client.
async fn call_tool(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &str,
    args: Value,
) -> rmcp::model::CallToolResult {
    let mut p = CallToolRequestParams::new(name.to_owned());
    if let Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    client
        .call_tool(p)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

async fn post(
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    r.send().await.expect("post")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gw01_gw07_gw12_gw13_gw14_guards_each_upstream_never_passes_tokens_binds_sessions_and_audits()
 {
    assert!(
        repo_root()
            .join("interop/node_modules/@modelcontextprotocol/server-everything")
            .exists(),
        "run scripts/setup"
    );
    let everything_port = free_port();
    let _everything = server_everything(everything_port);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let echo_port = recording_upstream(seen.clone()).await;
    let exchanged_seen = Arc::new(Mutex::new(Vec::new()));
    let exchanged_port = recording_upstream(exchanged_seen.clone()).await;
    let exchanged_audience = format!("http://127.0.0.1:{exchanged_port}/mcp");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let metrics_port = free_port();
    let memory_js = memory_js();
    let memory_file = dir.join("memory.jsonl").display().to_string();
    let audit = dir.join("audit.jsonl");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\n  tool_scopes: {{get-env: [mcp:admin]}}\nauthorization_server:\n  database: {db}\nmetrics_listen: 127.0.0.1:{metrics_port}\ngateway:\n  audit_log: {}\n  rate_limit: {{per_minute: 60, burst: 20}}\n  upstreams:\n    - name: everything\n      url: http://127.0.0.1:{everything_port}/mcp\n    - name: echo\n      url: http://127.0.0.1:{echo_port}/mcp\n      headers:\n        Authorization: \"Bearer ${{env:ECHO_UPSTREAM_TOKEN}}\"\n      identity_header:\n        secret: ${{env:ECHO_IDENTITY_SECRET}}\n    - name: memory\n      command: node\n      args: ['{memory_js}']\n      env:\n        MEMORY_FILE_PATH: '{memory_file}'\n    - name: exchanged\n      url: {exchanged_audience}\n      token_exchange:\n        client_id: ${{env:GW_CLIENT_ID}}\n        client_secret: ${{env:GW_CLIENT_SECRET}}\n",
            audit.display()
        ),
    )
    .expect("config");
    let add = |name: &str, extra: &[&str]| {
        let out = gatehouse()
            .args([
                "admin",
                "--db",
                &db,
                "clients",
                "add",
                "--name",
                name,
                "--confidential",
                "--scope",
                "mcp:basic",
            ])
            .args(extra)
            .output()
            .expect("admin");
        added_client(&out)
    };
    let cc = ["--grant", "client_credentials"];
    let (alice, alice_secret) = add("agent-alice", &cc);
    let (bob, bob_secret) = add("agent-bob", &cc);
    // The gateway's own client, allowed to exchange tokens for the `exchanged` upstream only.
    let (gw, gw_secret) = add(
        "gateway",
        &[
            "--grant",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "--exchange-target",
            &exchanged_audience,
        ],
    );
    let mut cmd = gatehouse();
    cmd.env("ECHO_UPSTREAM_TOKEN", UPSTREAM_SECRET)
        .env("ECHO_IDENTITY_SECRET", IDENTITY_SECRET)
        .env("GW_CLIENT_ID", &gw)
        .env("GW_CLIENT_SECRET", &gw_secret)
        .args(["serve", "--config"])
        .arg(&cfg);
    let server = Proc::start(cmd, "ready");
    let everything = format!("{base}/servers/everything/mcp");
    let echo = format!("{base}/servers/echo/mcp");

    // Each upstream is its own protected resource, with its own metadata and audience.
    let r = post(
        &echo,
        None,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let prm_url = format!("{base}/.well-known/oauth-protected-resource/servers/echo/mcp");
    assert!(challenge.contains(&prm_url), "{challenge}");
    let prm: Value = reqwest::get(&prm_url)
        .await
        .expect("prm")
        .json()
        .await
        .expect("json");
    assert_eq!(prm["resource"], json!(echo));
    assert_eq!(prm["authorization_servers"], json!([base]));
    let echo_token = cc_token_for(&base, &alice, &alice_secret, &echo).await;
    let r = post(
        &everything,
        Some(&echo_token),
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(
        r.status(),
        401,
        "a token for one upstream is refused at another"
    );
    assert!(
        seen.lock().expect("lock").is_empty(),
        "nothing reached an upstream yet"
    );

    // T3: the upstream sees its configured credential, never the caller's token.
    let r = post(
        &echo,
        Some(&echo_token),
        None,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["result"]["authorization"],
        json!(format!("Bearer {UPSTREAM_SECRET}"))
    );
    let seen_all = seen.lock().expect("lock").clone();
    assert!(!seen_all.iter().flatten().any(|a| a.contains(&echo_token)));
    // GW-A2: the upstream that cannot exchange tokens learns who calls, and through whom, from
    // a signed header: here a planner agent acting for Alice through a token exchange.
    let (planner, planner_secret) = add(
        "planner",
        &[
            "--grant",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "--exchange-target",
            &echo,
        ],
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/token"))
        .basic_auth(&planner, Some(&planner_secret))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", echo_token.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("resource", echo.as_str()),
        ])
        .send()
        .await
        .expect("exchange");
    let ex: Value = r.json().await.expect("json");
    let delegated = ex["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{ex}"))
        .to_owned();
    let identity = |v: &Value| {
        let jwt = v["result"]["identity"].as_str().expect("identity header");
        let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        val.set_audience(&[format!("http://127.0.0.1:{echo_port}/mcp")]);
        val.set_issuer(&[base.as_str()]);
        jsonwebtoken::decode::<Value>(
            jwt,
            &jsonwebtoken::DecodingKey::from_secret(IDENTITY_SECRET.as_bytes()),
            &val,
        )
        .expect("signed by the shared secret, for this upstream, from this gateway")
        .claims
    };
    let v: Value = post(
        &echo,
        Some(&delegated),
        None,
        json!({"jsonrpc": "2.0", "id": 10, "method": "ping"}),
    )
    .await
    .json()
    .await
    .expect("json");
    let who = identity(&v);
    assert_eq!(who["sub"], json!(alice), "{who}");
    assert_eq!(who["client_id"], json!(alice), "{who}");
    assert_eq!(
        who["act"]["sub"],
        json!(planner),
        "the verified chain: {who}"
    );
    assert_eq!(
        who["exp"].as_i64().unwrap_or(0) - who["iat"].as_i64().unwrap_or(0),
        60
    );
    assert!(
        !v.to_string().contains(&delegated),
        "still no token passthrough"
    );
    let v: Value = post(
        &echo,
        Some(&echo_token),
        None,
        json!({"jsonrpc": "2.0", "id": 11, "method": "ping"}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert!(identity(&v).get("act").is_none(), "no delegation, no act");

    // GW-T1: the caller's trace continues upstream in a span of the gateway's own, with its
    // tracestate; a call without one starts a trace; both are named in the audit log.
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let traced = reqwest::Client::new()
        .post(&echo)
        .bearer_auth(&echo_token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("traceparent", format!("00-{TRACE}-b7ad6b7169203331-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .json(&json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}))
        .send()
        .await
        .expect("post");
    let v: Value = traced.json().await.expect("json");
    let tp = v["result"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "a span of the gateway's own: {tp}"
    );
    assert_eq!(v["result"]["tracestate"], json!("congo=t61rcWkgMzE"));
    let untraced = post(
        &echo,
        Some(&echo_token),
        None,
        json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
    )
    .await
    .json::<Value>()
    .await
    .expect("json");
    let started = untraced["result"]["traceparent"]
        .as_str()
        .expect("a new trace")
        .to_owned();
    assert!(
        started.starts_with("00-") && started.len() == 55,
        "{started}"
    );
    assert!(untraced["result"]["tracestate"].is_null());

    // A real MCP client through the gateway to server-everything.
    let alice_token = cc_token_for(&base, &alice, &alice_secret, &everything).await;
    let client = mcp_client(&everything, &alice_token).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(
        tools.iter().any(|t| t.name == "echo"),
        "{:?}",
        tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    );
    // Per-tool scopes: `get-env` needs mcp:admin, which this caller lacks: it is not listed,
    // and calling it is a 403 insufficient_scope naming every scope the call needs.
    assert!(!tools.iter().any(|t| t.name == "get-env"), "filtered out");
    let r = post(&everything, Some(&alice_token), None, json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "get-env", "arguments": {}}})).await;
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("mcp:admin"),
        "{challenge}"
    );
    let out = call_tool(&client, "echo", json!({"message": "through the gateway"})).await;
    assert!(
        format!("{:?}", out.content).contains("through the gateway"),
        "{out:?}"
    );

    // T2: a session opened by alice is not bob's to use, across the proxy.
    let r = post(&everything, Some(&alice_token), None, initialize(json!({}))).await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    drop(r);
    let bob_token = cc_token_for(&base, &bob, &bob_secret, &everything).await;
    let r = post(
        &everything,
        Some(&bob_token),
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 404, "another user's session id");
    client.cancel().await.expect("close");

    // A stdio upstream (the real server-memory), one process per session, started with its
    // configured environment.
    let memory = format!("{base}/servers/memory/mcp");
    let alice_m = cc_token_for(&base, &alice, &alice_secret, &memory).await;
    let mem = mcp_client(&memory, &alice_m).await;
    let tools = mem.list_all_tools().await.expect("tools/list");
    assert!(
        tools.iter().any(|t| t.name == "create_entities"),
        "{tools:?}"
    );
    call_tool(&mem, "create_entities", json!({"entities": [{"name": "gatehouse", "entityType": "project", "observations": ["behind the gateway"]}]})).await;
    let graph = mem
        .call_tool(CallToolRequestParams::new("read_graph".to_owned()))
        .await
        .expect("read_graph");
    assert!(format!("{:?}", graph.content).contains("behind the gateway"));
    assert!(
        std::path::Path::new(&memory_file).exists(),
        "MEMORY_FILE_PATH reached the process"
    );
    mem.cancel().await.expect("close");
    let r = post(&memory, Some(&alice_m), None, initialize(json!({}))).await;
    assert_eq!(r.status(), 200);
    let mem_session = session_of(&r);
    let bob_m = cc_token_for(&base, &bob, &bob_secret, &memory).await;
    let r = post(
        &memory,
        Some(&bob_m),
        Some(&mem_session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 404, "another user's stdio session");
    let r = post(
        &memory,
        Some(&alice_m),
        Some(&mem_session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 200, "the owner's session works");

    // RFC 8693 for the `exchanged` upstream: it gets a token for its own audience, for the same
    // subject, with `act` naming the gateway — reused from the cache on the next call.
    let exchanged = format!("{base}/servers/exchanged/mcp");
    let alice_x = cc_token_for(&base, &alice, &alice_secret, &exchanged).await;
    for id in [1, 2] {
        let r = post(
            &exchanged,
            Some(&alice_x),
            None,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    let got = exchanged_seen.lock().expect("lock").clone();
    assert_eq!(got.len(), 2);
    let upstream_token = got[0]
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("bearer")
        .to_owned();
    assert_eq!(got[1], got[0], "the exchanged token is cached");
    assert_ne!(upstream_token, alice_x, "never the caller's token");
    let claims = jwt_claims(&upstream_token);
    assert_eq!(claims["aud"], json!(exchanged_audience));
    assert_eq!(claims["sub"], jwt_claims(&alice_x)["sub"]);
    assert_eq!(claims["act"]["sub"], json!(gw));

    // A flood from one subject is limited (429 with Retry-After, a JSON-RPC error body) without
    // touching another subject.
    let mut limited = None;
    for i in 0..40 {
        let r = post(
            &echo,
            Some(&echo_token),
            None,
            json!({"jsonrpc": "2.0", "id": 100 + i, "method": "tools/list"}),
        )
        .await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("the flood was limited");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("rate limit"),
        "{v}"
    );
    let bob_echo = cc_token_for(&base, &bob, &bob_secret, &echo).await;
    let r = post(
        &echo,
        Some(&bob_echo),
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 200, "another subject is not affected");

    // Prometheus metrics on their own listener: requests by server and decision.
    let m = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("gatehouse_gateway_requests_total{server=\"echo\",decision=\"rate_limited\"}"),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_gateway_requests_total{server=\"everything\",decision=\"allow\"}"),
        "{m}"
    );
    assert!(m.contains("gatehouse_gateway_request_seconds"), "{m}");
    // The authorization server and the guard too (issue 18, MT-1).
    for series in [
        "gatehouse_as_tokens_total{grant_type=\"client_credentials\",outcome=\"issued\"}",
        "gatehouse_as_tokens_total{grant_type=\"token_exchange\",outcome=\"issued\"}",
        "gatehouse_guard_requests_total{outcome=\"allowed\"}",
        "gatehouse_guard_requests_total{outcome=\"no_credentials\"}",
        "gatehouse_guard_request_seconds",
    ] {
        assert!(m.contains(series), "{series}: {m}");
    }

    // The audit log: a record per request, chained, no token in it.
    let log = std::fs::read_to_string(&audit).expect("audit log");
    let mut prev = "0".repeat(64);
    let mut n = 0;
    for line in log.lines() {
        let mut v: Value = serde_json::from_str(line).expect("json line");
        assert_eq!(v["prev"], json!(prev), "chain");
        let hash = v["hash"].as_str().expect("hash").to_owned();
        v.as_object_mut().expect("object").remove("hash");
        let h: String = Sha256::digest(v.to_string().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(h, hash, "hash of line {n}");
        prev = hash;
        n += 1;
    }
    assert!(n >= 4, "{log}");
    assert!(
        log.contains(&format!("\"trace_id\":\"{TRACE}\"")),
        "the audit record names the caller's trace: {log}"
    );
    assert!(
        log.contains("\"tool\":\"echo\"") && log.contains("\"server\":\"everything\""),
        "{log}"
    );
    assert!(
        log.contains("\"decision\":\"rate_limited\""),
        "denials are audited too"
    );
    assert!(
        log.contains("\"decision\":\"refused\"") && log.contains("\"http_status\":401"),
        "refusals by the guard are audited too: {log}"
    );
    assert!(
        log.contains("\"decision\":\"insufficient_scope\"")
            && log.contains("\"needs\":[\"mcp:admin\"]"),
        "the scope refusal is audited with what it needs: {log}"
    );
    for secret in [
        &alice_token,
        &bob_token,
        &echo_token,
        &bob_echo,
        &alice_x,
        &alice_m,
        &bob_m,
        &upstream_token,
        &UPSTREAM_SECRET.to_owned(),
    ] {
        assert!(!log.contains(secret.as_str()), "no token in the audit log");
        assert!(
            !server.all_output().contains(secret.as_str()),
            "no token in the logs"
        );
    }
}

/// Rate limits shared across replicas through the real Redis at 127.0.0.1:6379: two gateway
/// processes (same database, same public URL) serve one subject in turn, and together they let
/// through one burst, not one each; another subject is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_across_replicas_through_redis() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let echo_port = recording_upstream(seen).await;
    let (pa, pb) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{pa}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw-redis-{pa}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let config = |port: u16, name: &str| {
        let cfg = dir.join(name);
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:{port}\npublic_url: {public}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\ngateway:\n  rate_limit: {{per_minute: 60, burst: 10, redis_url: 'redis://127.0.0.1:6379'}}\n  upstreams:\n    - name: echo\n      url: http://127.0.0.1:{echo_port}/mcp\n"
            ),
        )
        .expect("config");
        cfg
    };
    let add = |name: &str| add_machine_client(&db, name);
    let (alice, alice_secret) = add("replica-alice");
    let (bob, bob_secret) = add("replica-bob");
    // The first replica creates the signing key; the second loads it.
    let _a = serve(&config(pa, "a.yaml"));
    let _b = serve(&config(pb, "b.yaml"));
    let resource = format!("{public}/servers/echo/mcp");
    let token = cc_token_for(&public, &alice, &alice_secret, &resource).await;
    let urls = [
        resource.clone(),
        format!("http://127.0.0.1:{pb}/servers/echo/mcp"),
    ];
    let (mut allowed, mut limited) = ([0usize; 2], false);
    for i in 0..30 {
        let r = post(
            &urls[i % 2],
            Some(&token),
            None,
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/list"}),
        )
        .await;
        match r.status().as_u16() {
            200 => allowed[i % 2] += 1,
            429 => {
                limited = true;
                break;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(limited, "the flood was limited");
    assert!(
        allowed[0] > 0 && allowed[1] > 0,
        "both replicas served: {allowed:?}"
    );
    let total = allowed[0] + allowed[1];
    assert!(
        (10..=11).contains(&total),
        "one shared burst of 10, not one per replica: {allowed:?}"
    );
    let bob_token = cc_token_for(&public, &bob, &bob_secret, &resource).await;
    let r = post(
        &urls[1],
        Some(&bob_token),
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 200, "another subject is not affected");
}

/// The policy file of [`gateway_policies_cedar_hot_reload_per_tool_limits_and_origin`]:
/// `{alice}` is replaced by alice's client id.
const POLICY_V1: &str = r#"
@id("agents use everything")
permit(principal, action, resource in Server::"everything");

@id("memory for alice only")
permit(principal, action, resource in Server::"memory") when { principal.client == "{alice}" };

@id("no environment dumps")
forbid(principal, action == Action::"tools/call", resource == Tool::"everything/get-env");

@id("echo no secrets")
forbid(principal, action == Action::"tools/call", resource == Tool::"everything/echo")
when { resource.hasTag("message") && resource.getTag("message") like "*secret*" };

@id("no dynamic blobs")
forbid(principal, action == Action::"resources/read", resource in Server::"everything")
when { resource.uri like "demo://resource/dynamic/blob/*" };
"#;

/// Cedar policies through the gateway, against the real server-everything (HTTP) and
/// server-memory (stdio): per-server and per-tool rules over the caller's client, a rule over a
/// tool argument, filtered lists, a per-upstream scope rule compiled into the same set (403
/// `insufficient_scope`), the JSON-RPC error for a policy refusal, a policy change picked up
/// without a restart and a broken change refused; a per-tool rate limit that leaves the
/// subject's other calls alone; GW-08 Origin and Host checks on POST, GET and DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gw08_gw13_gw14_cedar_policies_hot_reload_per_tool_limits_stdio_cap_and_origin() {
    let everything_port = free_port();
    let _everything = server_everything(everything_port);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw-policy-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let add = |name: &str| add_machine_client(&db, name);
    let (alice, alice_secret) = add("policy-alice");
    let (bob, bob_secret) = add("policy-bob");
    let policy = dir.join("policy.cedar");
    std::fs::write(&policy, POLICY_V1.replace("{alice}", &alice)).expect("policy");
    let memory_js = memory_js();
    let audit = dir.join("audit.jsonl");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\ngateway:\n  audit_log: {audit}\n  policy: {{file: {policy}, reload_seconds: 1}}\n  rate_limit:\n    per_minute: 600\n    burst: 100\n    per_tool: {{everything/echo: {{per_minute: 60, burst: 3}}}}\n  upstreams:\n    - name: everything\n      url: http://127.0.0.1:{everything_port}/mcp\n    - name: memory\n      command: node\n      args: ['{memory_js}']\n      env: {{MEMORY_FILE_PATH: '{mem}'}}\n      tool_scopes: {{delete_entities: [memory:admin]}}\n",
            audit = audit.display(),
            policy = policy.display(),
            mem = dir.join("memory.jsonl").display(),
        ),
    )
    .expect("config");
    let server = serve(&cfg);
    let everything = format!("{base}/servers/everything/mcp");
    let memory = format!("{base}/servers/memory/mcp");
    let alice_e = cc_token_for(&base, &alice, &alice_secret, &everything).await;
    let alice_m = cc_token_for(&base, &alice, &alice_secret, &memory).await;
    let bob_m = cc_token_for(&base, &bob, &bob_secret, &memory).await;

    // Lists show what the policies allow; the forbidden tool is not offered.
    let client = mcp_client(&everything, &alice_e).await;
    let tools: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(tools.contains(&"echo".to_owned()), "{tools:?}");
    assert!(!tools.contains(&"get-env".to_owned()), "{tools:?}");
    // Resource templates too: the rule over blob URIs hides their template, and a read of a
    // blob is refused while a text resource of the other template reads.
    let templates: Vec<String> = client
        .list_all_resource_templates()
        .await
        .expect("resources/templates/list")
        .into_iter()
        .map(|t| t.uri_template.clone())
        .collect();
    assert!(
        templates.contains(&"demo://resource/dynamic/text/{resourceId}".to_owned()),
        "{templates:?}"
    );
    assert!(
        !templates.iter().any(|t| t.contains("/blob/")),
        "{templates:?}"
    );
    let read = |uri: &str| {
        client.read_resource(rmcp::model::ReadResourceRequestParams::new(uri.to_owned()))
    };
    assert!(
        !read("demo://resource/dynamic/text/1")
            .await
            .expect("text read")
            .contents
            .is_empty()
    );
    let err = read("demo://resource/dynamic/blob/1")
        .await
        .expect_err("blob read refused");
    assert!(format!("{err:?}").contains("no dynamic blobs"), "{err:?}");
    // A rule over an argument: the JSON-RPC error names the policy (no scope would help).
    let call = |id: u32, message: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": message}}});
    let r = post(
        &everything,
        Some(&alice_e),
        None,
        call(5, "the secret is 42"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["id"], json!(5));
    assert_eq!(v["error"]["code"], json!(-32003), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("echo no secrets"),
        "{v}"
    );
    let r = post(&everything, Some(&alice_e), None, json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "get-env", "arguments": {}}})).await;
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("no environment dumps"),
        "{v}"
    );

    // Per-tool limit: echo allows a burst of 3 per subject (the call refused above spent
    // nothing: limits run after authorization); the subject's other calls go on.
    let init = initialize(json!({}));
    let r = post(&everything, Some(&alice_e), None, init.clone()).await;
    let e_session = session_of(&r);
    drop(r);
    let mut limited = None;
    for i in 0..6 {
        let r = post(
            &everything,
            Some(&alice_e),
            Some(&e_session),
            call(10 + i, "hello"),
        )
        .await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("the per-tool limit");
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("rate limit (tool)"),
        "{v}"
    );
    let r = post(
        &everything,
        Some(&alice_e),
        Some(&e_session),
        json!({"jsonrpc": "2.0", "id": 30, "method": "tools/list"}),
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "other calls of the subject are not limited"
    );
    client.cancel().await.expect("close");

    // The stdio upstream: alice only; the per-upstream scope rule hides and refuses a tool.
    let r = post(&memory, Some(&bob_m), None, init.clone()).await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], json!(-32003), "bob has no permit: {v}");
    let mem = mcp_client(&memory, &alice_m).await;
    let tools: Vec<String> = mem
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(tools.contains(&"read_graph".to_owned()), "{tools:?}");
    assert!(!tools.contains(&"delete_entities".to_owned()), "{tools:?}");
    mem.cancel().await.expect("close");
    let r = post(&memory, Some(&alice_m), None, init.clone()).await;
    let session = session_of(&r);
    let r = post(&memory, Some(&alice_m), Some(&session), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_entities", "arguments": {"entityNames": ["x"]}}})).await;
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        challenge.contains("insufficient_scope")
            && challenge.contains("memory:admin")
            && challenge.contains("/.well-known/oauth-protected-resource/servers/memory/mcp"),
        "{challenge}"
    );

    // A policy change takes effect without a restart...
    let v2 = format!(
        "{}\n@id(\"memory for bob too\")\npermit(principal, action, resource in Server::\"memory\") when {{ principal.client == \"{bob}\" }};\n",
        POLICY_V1.replace("{alice}", &alice)
    );
    std::fs::write(&policy, &v2).expect("policy v2");
    let mut reloaded = false;
    for _ in 0..50 {
        let r = post(&memory, Some(&bob_m), None, init.clone()).await;
        if r.status() == 200 && r.headers().contains_key("mcp-session-id") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(reloaded, "the new policy was picked up");
    // ...and a change that does not validate is refused, the policies in force stay.
    std::fs::write(
        &policy,
        format!("{v2}\npermit(principal, action, resource) when {{ principal.grups == 1 }};\n"),
    )
    .expect("bad policy");
    let mut refused = false;
    for _ in 0..50 {
        if server.all_output().contains("policy change refused") {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(refused, "{}", server.all_output());
    assert!(server.all_output().contains("grups"), "the error says why");
    let r = post(&memory, Some(&bob_m), None, init.clone()).await;
    assert_eq!(r.status(), 200, "the previous policies still apply");
    assert!(r.headers().contains_key("mcp-session-id"));

    // GW-14: one user cannot start stdio processes without end (8 sessions each); closing one
    // makes room.
    let mut opened = Vec::new();
    let full = loop {
        let r = post(&memory, Some(&alice_m), None, init.clone()).await;
        if r.status() == 503 {
            break r;
        }
        assert_eq!(r.status(), 200);
        opened.push(session_of(&r));
        assert!(opened.len() <= 8, "no cap");
    };
    let v: Value = full.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("too many"),
        "{v}"
    );
    let r = reqwest::Client::new()
        .delete(&memory)
        .bearer_auth(&alice_m)
        .header("mcp-session-id", opened.last().expect("one"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    let r = post(&memory, Some(&alice_m), None, init.clone()).await;
    assert_eq!(r.status(), 200, "room again");
    let r = post(&memory, Some(&bob_m), None, init.clone()).await;
    assert_eq!(r.status(), 200, "another user is not held back");

    // GW-08: a foreign Origin is refused (POST, GET, DELETE) before authentication; so is a
    // foreign Host (DNS rebinding); no Origin is a normal (here: unauthenticated) request.
    let http = reqwest::Client::new();
    for method in [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(method.clone(), &everything)
            .header("origin", "https://evil.example")
            .bearer_auth(&alice_e)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 403, "{method}");
    }
    let r = http
        .post(&everything)
        .header("host", "evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403, "foreign Host");
    let r = post(
        &everything,
        None,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    )
    .await;
    assert_eq!(r.status(), 401, "no Origin: handled normally");

    // The audit log records policy refusals with the policy's name.
    let log = std::fs::read_to_string(&audit).expect("audit");
    assert!(
        log.contains("\"decision\":\"deny\"") && log.contains("\"policies\":[\"echo no secrets\"]"),
        "{log}"
    );
    assert!(log.contains("\"limit\":\"tool\""), "{log}");

    // `config check` validates the policies too.
    let out = gatehouse()
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .expect("config check");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("grups"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A session-aware upstream: `initialize` opens `up-<n>`, other requests need a live session
/// (404 otherwise) and answer with the session id they came with.
#[derive(Default)]
struct SessionUpstream {
    issued: Mutex<Vec<String>>,
    live: Mutex<std::collections::HashSet<String>>,
    initialized: Mutex<Vec<String>>,
}

async fn session_upstream(state: Arc<SessionUpstream>) -> u16 {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sid = |h: &HeaderMap| {
        h.get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let post_state = state.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let st = post_state.clone();
            async move {
                if body["method"] == "initialize" {
                    let mut issued = st.issued.lock().expect("lock");
                    let id = format!("up-{}", issued.len());
                    issued.push(id.clone());
                    st.live.lock().expect("lock").insert(id.clone());
                    return (
                        [("mcp-session-id", id)],
                        axum::Json(json!({"jsonrpc": "2.0", "id": body["id"], "result": {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}})),
                    )
                        .into_response();
                }
                let Some(s) = sid(&headers).filter(|s| st.live.lock().expect("lock").contains(s))
                else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                if body["method"] == "notifications/initialized" {
                    st.initialized.lock().expect("lock").push(s);
                    return StatusCode::ACCEPTED.into_response();
                }
                axum::Json(json!({"jsonrpc": "2.0", "id": body["id"], "result": {"session": s}}))
                    .into_response()
            }
        })
        .delete(move |headers: HeaderMap| {
            let st = state.clone();
            async move {
                match sid(&headers) {
                    Some(s) if st.live.lock().expect("lock").remove(&s) => StatusCode::OK,
                    _ => StatusCode::NOT_FOUND,
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// GW-11: the caller's session id is the gateway's own, the upstream's never leaves the gateway;
/// when the upstream forgets a session (restart, expiry) the gateway opens a new one with the
/// caller's original `initialize` and the caller carries on with the same id; DELETE ends both;
/// GW-07: another user presenting the id gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gw11_sessions_are_mapped_per_hop_and_reopened_when_the_upstream_forgets() {
    let up = Arc::new(SessionUpstream::default());
    let up_port = session_upstream(up.clone()).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw-sessions-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\ngateway:\n  upstreams:\n    - name: sess\n      url: http://127.0.0.1:{up_port}/mcp\n"
        ),
    )
    .expect("config");
    let add = |name: &str| add_machine_client(&db, name);
    let (alice, alice_secret) = add("sess-alice");
    let (bob, bob_secret) = add("sess-bob");
    let _server = serve(&cfg);
    let url = format!("{base}/servers/sess/mcp");
    let alice_t = cc_token_for(&base, &alice, &alice_secret, &url).await;
    let bob_t = cc_token_for(&base, &bob, &bob_secret, &url).await;

    let r = post(&url, Some(&alice_t), None, initialize(json!({}))).await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    let first = up.issued.lock().expect("lock")[0].clone();
    assert_ne!(session, first, "the upstream's id is not shown");
    assert_eq!(session.len(), 22, "128 random bits, base64url: {session}");
    let list = |id: u32| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    let r = post(&url, Some(&alice_t), Some(&session), list(2)).await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["result"]["session"],
        json!(first),
        "mapped to the upstream's id"
    );

    let r = post(&url, Some(&bob_t), Some(&session), list(3)).await;
    assert_eq!(r.status(), 404, "another user's session");
    let r = post(&url, Some(&alice_t), Some(&first), list(4)).await;
    assert_eq!(r.status(), 404, "the upstream's id means nothing here");

    // The upstream forgets every session: the caller does not notice.
    up.live.lock().expect("lock").clear();
    let r = post(&url, Some(&alice_t), Some(&session), list(5)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let second = up.issued.lock().expect("lock")[1].clone();
    assert_eq!(
        v["result"]["session"],
        json!(second),
        "re-initialized upstream"
    );
    assert_eq!(v["id"], json!(5));
    assert_eq!(
        up.initialized.lock().expect("lock").clone(),
        vec![second.clone()],
        "the new upstream session was completed with notifications/initialized"
    );

    // DELETE ends the caller's session and the upstream's.
    let r = reqwest::Client::new()
        .delete(&url)
        .bearer_auth(&alice_t)
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    assert!(!up.live.lock().expect("lock").contains(&second));
    let r = post(&url, Some(&alice_t), Some(&session), list(6)).await;
    assert_eq!(r.status(), 404, "ended");
}

/// The aggregate endpoint: one MCP server made of server-everything (HTTP) and server-memory
/// (stdio), driven by rmcp's client. Names are prefixed, calls reach the right upstream, and
/// each call still meets its upstream's policies (a forbidden tool is neither listed nor
/// callable, a scope rule answers 403); the aggregate is its own protected resource, and its
/// sessions belong to their user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gw01_gw07_aggregate_endpoint_merges_upstreams_under_their_policies() {
    let everything_port = free_port();
    let _everything = server_everything(everything_port);
    let conf_port = free_port();
    let mut fixture = std::process::Command::new("node");
    fixture
        .current_dir(repo_root())
        .env("PORT", conf_port.to_string())
        .arg("interop/conformance-server.mjs");
    let _fixture = Proc::start(fixture, "listening");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw-aggregate-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}/as.db", dir.display());
    let (alice, alice_secret) = add_machine_client(&db, "agg-alice");
    let (bob, bob_secret) = add_machine_client(&db, "agg-bob");
    std::fs::write(
        dir.join("policy.cedar"),
        "permit(principal, action, resource);\n@id(\"no environment dumps\")\nforbid(principal, action == Action::\"tools/call\", resource == Tool::\"everything/get-env\");\n",
    )
    .expect("policy");
    let memory_js = memory_js();
    let audit = dir.join("audit.jsonl");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {db}\ngateway:\n  audit_log: {audit}\n  policy: {{file: policy.cedar}}\n  aggregate: {{name: all}}\n  upstreams:\n    - name: everything\n      url: http://127.0.0.1:{everything_port}/mcp\n    - name: memory\n      command: node\n      args: ['{memory_js}']\n      env: {{MEMORY_FILE_PATH: '{mem}'}}\n      tool_scopes: {{delete_entities: [memory:admin]}}\n    - name: conf\n      url: http://127.0.0.1:{conf_port}/mcp\n",
            audit = audit.display(),
            mem = dir.join("memory.jsonl").display(),
        ),
    )
    .expect("config");
    let _server = serve(&cfg);
    let all = format!("{base}/servers/all/mcp");

    // Its own protected resource: its metadata, and a token for an upstream does not open it.
    let prm: Value = reqwest::get(format!(
        "{base}/.well-known/oauth-protected-resource/servers/all/mcp"
    ))
    .await
    .expect("prm")
    .json()
    .await
    .expect("json");
    assert_eq!(prm["resource"], json!(all));
    let for_everything = cc_token_for(
        &base,
        &alice,
        &alice_secret,
        &format!("{base}/servers/everything/mcp"),
    )
    .await;
    let r = post(
        &all,
        Some(&for_everything),
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    )
    .await;
    assert_eq!(r.status(), 401);

    let token = cc_token_for(&base, &alice, &alice_secret, &all).await;
    // GW-D1: `server/discover` is answered by the aggregate itself, without a session.
    let r = post(
        &all,
        Some(&token),
        None,
        json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["result"]["resultType"], json!("complete"), "{v}");
    let versions = v["result"]["supportedVersions"]
        .as_array()
        .expect("versions");
    assert!(versions.contains(&json!("2025-11-25")) && !versions.contains(&json!("2026-07-28")));
    assert!(v["result"]["capabilities"]["tools"].is_object(), "{v}");
    let client = mcp_client(&all, &token).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("gatehouse-aggregate")
    );
    let tools: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for present in [
        "everything__echo",
        "memory__read_graph",
        "memory__create_entities",
    ] {
        assert!(tools.contains(&present.to_owned()), "{present}: {tools:?}");
    }
    for absent in ["everything__get-env", "memory__delete_entities", "echo"] {
        assert!(!tools.contains(&absent.to_owned()), "{absent}: {tools:?}");
    }
    let out = call_tool(
        &client,
        "everything__echo",
        json!({"message": "via the aggregate"}),
    )
    .await;
    assert!(
        format!("{:?}", out.content).contains("via the aggregate"),
        "{out:?}"
    );
    call_tool(&client, "memory__create_entities", json!({"entities": [{"name": "aggregate", "entityType": "test", "observations": ["merged"]}]})).await;
    let graph = client
        .call_tool(CallToolRequestParams::new("memory__read_graph".to_owned()))
        .await
        .expect("memory__read_graph");
    assert!(
        format!("{:?}", graph.content).contains("merged"),
        "{graph:?}"
    );
    // GW-H6: malformed aggregate names are refused at the gateway, never sent on as `""` or
    // `echo__`.
    for bad in [
        "everything__",
        "everything__echo__",
        "__echo",
        "nosuch__echo",
    ] {
        let err = client
            .call_tool(CallToolRequestParams::new(bad.to_owned()))
            .await
            .expect_err(bad);
        assert!(format!("{err:?}").contains("-32602"), "{bad}: {err:?}");
    }
    // Refusals of the upstream's policies come through.
    let err = client
        .call_tool(CallToolRequestParams::new("everything__get-env".to_owned()))
        .await
        .expect_err("forbidden by policy");
    assert!(
        format!("{err:?}").contains("no environment dumps"),
        "{err:?}"
    );
    // Prompts and resources, prefixed; a listed resource is read from its upstream.
    let prompts = client.list_all_prompts().await.expect("prompts/list");
    assert!(
        prompts
            .iter()
            .any(|p| p.name == "everything__simple-prompt")
            && prompts.iter().any(|p| p.name == "conf__test_simple_prompt")
            && prompts
                .iter()
                .all(|p| p.name.starts_with("everything__") || p.name.starts_with("conf__")),
        "{prompts:?}"
    );
    let resources = client.list_all_resources().await.expect("resources/list");
    let first = resources
        .first()
        .expect("server-everything lists resources");
    assert!(first.name.contains("__"), "{first:?}");
    let read = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            first.uri.clone(),
        ))
        .await
        .expect("resources/read");
    assert!(!read.contents.is_empty());

    // A raw request for the scope rule's answer, and another user's use of the session.
    let r = post(&all, Some(&token), None, initialize(json!({}))).await;
    let session = session_of(&r);
    drop(r);
    let r = post(&all, Some(&token), Some(&session), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "memory__delete_entities", "arguments": {"entityNames": ["aggregate"]}}})).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("memory:admin")
    );
    let bob_token = cc_token_for(&base, &bob, &bob_secret, &all).await;
    let r = post(
        &all,
        Some(&bob_token),
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 404, "another user's aggregate session");
    client.cancel().await.expect("close");

    // An upstream's own request to the client (sampling) through the aggregate: it arrives on
    // the call's stream with an id that leads back, the reply reaches that upstream, and the
    // call completes with what the "model" said.
    let r = post(
        &all,
        Some(&token),
        None,
        initialize(json!({"sampling": {}})),
    )
    .await;
    let sampling_session = session_of(&r);
    drop(r);
    let mut call = post(&all, Some(&token), Some(&sampling_session), json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "conf__test_sampling", "arguments": {"prompt": "say hi"}}})).await;
    assert_eq!(call.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let request = loop {
        let chunk = call
            .chunk()
            .await
            .expect("chunk")
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(v) = seen
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v["method"] == "sampling/createMessage")
        {
            break v;
        }
    };
    let wrapped = request["id"].as_str().expect("string id").to_owned();
    assert!(wrapped.starts_with("gh:conf:"), "{wrapped}");
    let r = post(&all, Some(&token), Some(&sampling_session), json!({"jsonrpc": "2.0", "id": wrapped, "result": {"role": "assistant", "content": {"type": "text", "text": "hi from the model"}, "model": "test"}})).await;
    assert!(r.status().is_success(), "{}", r.status());
    while let Some(chunk) = call.chunk().await.expect("chunk") {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("LLM response: hi from the model"), "{seen}");

    // Each call is audited under its upstream.
    let log = std::fs::read_to_string(&audit).expect("audit");
    assert!(log.contains("\"tool\":\"echo\""), "{log}");
    assert!(log.contains("\"server\":\"memory\""), "{log}");
}
