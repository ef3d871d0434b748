//! The guard in front of a spy handler on a real loopback socket, tokens from a real loopback
//! issuer. Each test names the requirement it proves.
use axum::extract::State;
use axum::routing::any;
use gatehouse_core::{
    BearerChallenge, BearerError, Challenge, Issuer, Resource, ScopeSet, SystemClock,
};
use gatehouse_fetch::{FetchPolicy, Fetcher};
use gatehouse_guard::{ApiKey, Guard, GuardConfig, Principal, PrincipalSource, generate_api_key};
use gatehouse_testkit::{TestIssuer, TestKey, now};
use gatehouse_tokens::{AccessTokenValidator, JwtValidator, JwtValidatorConfig, TrustedIssuer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Harness {
    issuer: TestIssuer,
    base: String,
    endpoint: String,
    hits: Arc<AtomicUsize>,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Spy {
    hits: Arc<AtomicUsize>,
}

/// Counts calls, echoes the principal, and opens a "session" on `initialize` like an MCP server.
async fn spy(State(s): State<Spy>, req: axum::extract::Request) -> axum::response::Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let p = req.extensions().get::<Principal>().cloned();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let method = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_owned));
    let out = json!({
        "subject": p.as_ref().map(|p| p.subject.clone()),
        "source": p.as_ref().map(|p| format!("{:?}", p.source)),
    });
    let mut resp = axum::Json(out).into_response();
    if method.as_deref() == Some("initialize") {
        let sid = format!("s-{}", s.hits.load(Ordering::SeqCst));
        resp.headers_mut()
            .insert("mcp-session-id", sid.parse().expect("header"));
    }
    resp
}
use axum::response::IntoResponse as _;

async fn start(tweak: impl FnOnce(&mut GuardConfig)) -> Harness {
    let issuer = TestIssuer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{base}/mcp");
    let resource = Resource::parse(&endpoint).expect("resource");
    let iss = Issuer::parse(&issuer.issuer).expect("issuer");
    let fetcher = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![issuer.authority()],
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    let jwt = JwtValidator::new(
        JwtValidatorConfig::new(
            resource.clone(),
            vec![TrustedIssuer {
                issuer: iss.clone(),
                jwks_uri: None,
            }],
        ),
        fetcher,
        Arc::new(SystemClock),
    );
    let mut cfg = GuardConfig::new(resource, vec![iss]);
    cfg.required_scopes = ScopeSet::parse("mcp:basic").expect("scope");
    cfg.scopes_supported = ScopeSet::parse("mcp:basic notes:write").expect("scope");
    cfg.tool_scopes.insert(
        "notes_add".into(),
        ScopeSet::parse("notes:write").expect("scope"),
    );
    cfg.max_body_bytes = 64 * 1024;
    tweak(&mut cfg);
    let guard = Guard::new(
        cfg,
        Arc::new(AccessTokenValidator {
            jwt: Some(Arc::new(jwt)),
            introspection: None,
        }),
        Arc::new(SystemClock),
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/mcp", any(spy))
        .route_layer(guard.layer())
        .with_state(Spy { hits: hits.clone() })
        .merge(guard.metadata_router());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Harness {
        issuer,
        base,
        endpoint,
        hits,
        http: reqwest::Client::new(),
    }
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
const NOTES_ADD: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notes_add","arguments":{"text":"x"}}}"#;

impl Harness {
    fn post(&self, body: &str) -> reqwest::RequestBuilder {
        self.http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned())
    }

    fn prm_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.base)
    }

    fn bearer(resp: &reqwest::Response) -> BearerChallenge {
        let values: Vec<&str> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        let all = Challenge::parse_all(values.iter().copied()).expect("RS-23: strict parse");
        assert_eq!(all.iter().filter(|c| c.is_scheme("bearer")).count(), 1);
        BearerChallenge::from_challenges(&all)
            .expect("a Bearer challenge")
            .expect("valid")
    }
}

#[tokio::test]
async fn rs01_rs03_rs04_prm_path_inserted_root_and_byte_equal() {
    let h = start(|_| {}).await;
    for url in [
        h.prm_url(),
        format!("{}/.well-known/oauth-protected-resource", h.base),
    ] {
        let r = h.http.get(&url).send().await.expect("get");
        assert_eq!(r.status(), 200, "{url}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .expect("ct")
                .starts_with("application/json")
        );
        let doc: Value = r.json().await.expect("json");
        assert_eq!(
            doc["resource"].as_str(),
            Some(h.endpoint.as_str()),
            "RS-04 byte-equal"
        );
        assert_eq!(doc["authorization_servers"], json!([h.issuer.issuer]));
        assert_eq!(doc["scopes_supported"], json!(["mcp:basic", "notes:write"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    // RS-03: the appended form is not where it lives.
    let r = h
        .http
        .get(format!(
            "{}/mcp/.well-known/oauth-protected-resource",
            h.base
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    assert_eq!(h.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rs22_prm_is_cors_readable() {
    let h = start(|_| {}).await;
    let r = h
        .http
        .request(reqwest::Method::OPTIONS, h.prm_url())
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = h
        .http
        .get(h.prm_url())
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn rs05_rs06_rs11_no_token_gets_401_challenge_and_handler_never_runs() {
    let h = start(|_| {}).await;
    for req in [
        h.post(INIT),
        h.http
            .get(&h.endpoint)
            .header("accept", "text/event-stream"),
        h.http.delete(&h.endpoint).header("mcp-session-id", "s-1"),
    ] {
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), 401);
        let c = Harness::bearer(&r);
        assert_eq!(c.error, None, "RS-05: no error code without credentials");
        assert_eq!(c.resource_metadata.as_deref(), Some(h.prm_url().as_str()));
        assert_eq!(c.scope.expect("RS-06 scope").to_string(), "mcp:basic");
    }
    // The challenge's resource_metadata dereferences.
    assert_eq!(
        h.http.get(h.prm_url()).send().await.expect("get").status(),
        200
    );
    assert_eq!(h.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rs07_rs12_invalid_tokens_get_invalid_token() {
    let h = start(|_| {}).await;
    let key = h.issuer.current_key();
    let mut expired = h.issuer.claims(&h.endpoint, "mcp:basic", "alice");
    expired["exp"] = json!(now() - 3600);
    let mut other_aud = h.issuer.claims(&h.endpoint, "mcp:basic", "alice");
    other_aud["aud"] = json!("https://other.example.com/mcp");
    let rogue = TestKey::es256("k1");
    for (what, token) in [
        ("expired", key.sign(&expired)),
        ("wrong audience", key.sign(&other_aud)),
        (
            "bad signature",
            rogue.sign(&h.issuer.claims(&h.endpoint, "mcp:basic", "alice")),
        ),
        ("random string", "bm90LWEtdG9rZW4".to_owned()),
        (
            "opaque token with only JWT validation",
            "expired-or-revoked".to_owned(),
        ),
        (
            "unknown api key",
            "ghk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        ),
    ] {
        let r = h.post(LIST).bearer_auth(&token).send().await.expect("send");
        assert_eq!(r.status(), 401, "{what}");
        let c = Harness::bearer(&r);
        assert_eq!(c.error, Some(BearerError::InvalidToken), "{what}");
        assert_eq!(c.resource_metadata.as_deref(), Some(h.prm_url().as_str()));
        let body = r.text().await.expect("body");
        assert!(!body.contains(&token), "the token is never echoed");
    }
    assert_eq!(h.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rs08_rs09_insufficient_scope_then_step_up_succeeds() {
    let h = start(|_| {}).await;
    let basic = h.issuer.mint(&h.endpoint, "mcp:basic");
    let r = h
        .post(NOTES_ADD)
        .bearer_auth(&basic)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let c = Harness::bearer(&r);
    assert_eq!(c.error, Some(BearerError::InsufficientScope));
    let needed = c.scope.expect("scope");
    assert!(
        needed.is_superset(&ScopeSet::parse("mcp:basic notes:write").expect("s")),
        "RS-09 {needed}"
    );
    assert_eq!(h.hits.load(Ordering::SeqCst), 0);
    // A token with exactly the challenged scopes succeeds without a second challenge.
    let stepped = h.issuer.mint(&h.endpoint, &needed.to_string());
    let r = h
        .post(NOTES_ADD)
        .bearer_auth(&stepped)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // Other tools need only the base scope; no base scope at all is a 403 too.
    assert_eq!(
        h.post(LIST)
            .bearer_auth(&basic)
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let none = h.issuer.mint(&h.endpoint, "profile");
    let r = h.post(LIST).bearer_auth(&none).send().await.expect("send");
    assert_eq!(r.status(), 403);
    assert_eq!(
        Harness::bearer(&r).scope.expect("scope").to_string(),
        "mcp:basic"
    );
}

#[tokio::test]
async fn per_tool_scopes_apply_to_every_batch_element() {
    let h = start(|_| {}).await;
    let basic = h.issuer.mint(&h.endpoint, "mcp:basic");
    let batch = format!("[{LIST},{NOTES_ADD}]");
    let r = h
        .post(&batch)
        .header("mcp-protocol-version", "2025-03-26")
        .bearer_auth(&basic)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = h
        .post(&batch)
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(&basic)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "no batches after 2025-03-26");
    assert_eq!(h.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn gw15_mcp_headers_must_match_the_body() {
    let h = start(|_| {}).await;
    let basic = h.issuer.mint(&h.endpoint, "mcp:basic");
    // Claims to call a harmless tool while the body calls notes_add.
    let r = h
        .post(NOTES_ADD)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .bearer_auth(&basic)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32020);
    let full = h.issuer.mint(&h.endpoint, "mcp:basic notes:write");
    let r = h
        .post(NOTES_ADD)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "notes_add")
        .bearer_auth(&full)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = h
        .post(LIST)
        .header("mcp-protocol-version", "1999-01-01")
        .bearer_auth(&full)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "TR-10: unsupported version");
}

#[tokio::test]
async fn rs10_malformed_authorization_is_400() {
    let h = start(|_| {}).await;
    let t = h.issuer.mint(&h.endpoint, "mcp:basic");
    let two = h
        .post(LIST)
        .header("authorization", format!("Bearer {t}"))
        .header("authorization", format!("Bearer {t}"));
    let form = h
        .http
        .post(&h.endpoint)
        .bearer_auth(&t)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("access_token={t}"));
    for (what, req) in [
        ("two headers", two),
        ("header and body", form),
        ("no token", h.post(LIST).header("authorization", "Bearer")),
        (
            "two words",
            h.post(LIST).header("authorization", "Bearer abc def"),
        ),
        (
            "bad chars",
            h.post(LIST).header("authorization", "Bearer a\"b"),
        ),
    ] {
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(
            Harness::bearer(&r).error,
            Some(BearerError::InvalidRequest),
            "{what}"
        );
    }
    assert_eq!(h.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rs14_query_token_ignored_rs15_scheme_case_insensitive() {
    let h = start(|_| {}).await;
    let t = h.issuer.mint(&h.endpoint, "mcp:basic");
    let r = h
        .http
        .post(format!("{}?access_token={t}", h.endpoint))
        .header("content-type", "application/json")
        .body(LIST)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(Harness::bearer(&r).error, None);
    let r = h
        .post(LIST)
        .header("authorization", format!("bEaReR {t}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // Another scheme is no Bearer credential: plain challenge.
    let r = h
        .post(LIST)
        .header("authorization", "Basic dXNlcjpwdw==")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn rs16_rs21_sessions_bound_to_the_principal() {
    let h = start(|_| {}).await;
    let key = h.issuer.current_key();
    let alice = key.sign(&h.issuer.claims(&h.endpoint, "mcp:basic", "alice"));
    let bob = key.sign(&h.issuer.claims(&h.endpoint, "mcp:basic", "bob"));
    let r = h.post(INIT).bearer_auth(&alice).send().await.expect("init");
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"]
        .to_str()
        .expect("sid")
        .to_owned();
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["subject"], "alice",
        "RS-21: handler sees the validated subject"
    );
    let with_sid = |t: &str| h.post(LIST).header("mcp-session-id", &sid).bearer_auth(t);
    assert_eq!(with_sid(&alice).send().await.expect("a").status(), 200);
    assert_eq!(with_sid(&bob).send().await.expect("b").status(), 404, "T2");
    let r = h
        .post(LIST)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("none");
    assert_eq!(r.status(), 401, "a session is never authentication");
    let r = h
        .post(LIST)
        .header("mcp-session-id", "made-up")
        .bearer_auth(&alice)
        .send()
        .await
        .expect("x");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn api_keys_hashed_rotating_expiring() {
    let (k1, h1) = generate_api_key();
    let (k2, h2) = generate_api_key();
    let (k3, h3) = generate_api_key();
    let h = start(|c| {
        let basic = ScopeSet::parse("mcp:basic").expect("s");
        c.api_keys = vec![
            ApiKey {
                name: "ci-old".into(),
                hash: ApiKey::parse_hash(&h1).expect("h"),
                scopes: basic.clone(),
                expires_at: Some(now() + 3600),
                subject: None,
            },
            ApiKey {
                name: "ci-new".into(),
                hash: ApiKey::parse_hash(&h2).expect("h"),
                scopes: basic.clone(),
                expires_at: None,
                subject: Some("team-ci".into()),
            },
            ApiKey {
                name: "gone".into(),
                hash: ApiKey::parse_hash(&h3).expect("h"),
                scopes: basic,
                expires_at: Some(now() - 1),
                subject: None,
            },
        ];
    })
    .await;
    let r = h.post(LIST).bearer_auth(&k1).send().await.expect("k1");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["subject"], "apikey:ci-old");
    assert_eq!(
        v["source"],
        format!(
            "{:?}",
            PrincipalSource::ApiKey {
                name: "ci-old".into()
            }
        )
    );
    let v: Value = h
        .post(LIST)
        .bearer_auth(&k2)
        .send()
        .await
        .expect("k2")
        .json()
        .await
        .expect("json");
    assert_eq!(v["subject"], "team-ci");
    let r = h.post(LIST).bearer_auth(&k3).send().await.expect("k3");
    assert_eq!(r.status(), 401);
    assert!(
        Harness::bearer(&r)
            .error_description
            .expect("desc")
            .contains("expired")
    );
    // A key's scopes are enforced like a token's.
    let r = h
        .post(NOTES_ADD)
        .bearer_auth(&k1)
        .send()
        .await
        .expect("k1 write");
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn ip_allow_list() {
    let h = start(|c| c.ip_allow = vec!["10.0.0.0/8".parse().expect("net")]).await;
    let t = h.issuer.mint(&h.endpoint, "mcp:basic");
    let r = h.post(LIST).bearer_auth(&t).send().await.expect("send");
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "a token would not help"
    );
    let h = start(|c| c.ip_allow = vec!["127.0.0.0/8".parse().expect("net")]).await;
    let t = h.issuer.mint(&h.endpoint, "mcp:basic");
    assert_eq!(
        h.post(LIST)
            .bearer_auth(&t)
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
}

#[tokio::test]
async fn oversized_body_is_413() {
    let h = start(|_| {}).await;
    let t = h.issuer.mint(&h.endpoint, "mcp:basic");
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(70 * 1024)
    );
    let r = h.post(&big).bearer_auth(&t).send().await.expect("send");
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn unreachable_keys_are_503_not_401() {
    let h = start(|_| {}).await;
    // A token from a trusted issuer whose JWKS cannot be fetched: the guard's validator points at
    // this issuer, so rotate to a kid unknown and drop the issuer's server by minting for a
    // different port's issuer name is not possible; instead use an unlisted issuer → 401, and
    // check 503 through a guard whose issuer is unreachable.
    let t = h.issuer.mint(&h.endpoint, "mcp:basic");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let endpoint = h.endpoint.clone();
    let resource = Resource::parse(&endpoint).expect("r");
    let iss = Issuer::parse(&h.issuer.issuer).expect("i");
    let jwt = JwtValidator::new(
        JwtValidatorConfig::new(
            resource.clone(),
            vec![TrustedIssuer {
                issuer: iss.clone(),
                jwks_uri: Some(format!("http://127.0.0.1:{port}/jwks")),
            }],
        ),
        Fetcher::new(FetchPolicy {
            dangerous_allow_loopback: vec![format!("127.0.0.1:{port}")],
            ..FetchPolicy::default()
        })
        .expect("fetcher"),
        Arc::new(SystemClock),
    );
    let guard = Guard::new(
        GuardConfig::new(resource, vec![iss]),
        Arc::new(AccessTokenValidator {
            jwt: Some(Arc::new(jwt)),
            introspection: None,
        }),
        Arc::new(SystemClock),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/mcp", any(|| async { "reached" }))
        .route_layer(guard.layer());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(LIST)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
}
