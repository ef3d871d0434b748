//! T17/T19 (secure by default): every authorization request a stranger starts is a stored
//! pending row; a source address may start `pending_per_source` of them per 10 minutes, then
//! gets 429 with Retry-After and stores nothing more. Other addresses are not affected.
#![allow(clippy::expect_used, reason = "tests")]
use gatehouse_core::{Issuer, PkceVerifier, Resource, ScopeSet, SystemClock};
use gatehouse_fetch::{FetchPolicy, Fetcher};
use gatehouse_server::{AuthServer, AuthServerConfig, ResourceEntry};
use gatehouse_store::Store;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

const LIMIT: i64 = 3;

async fn server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let dir = std::env::temp_dir().join(format!("gh-pending-{}", addr.port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::open(&format!("sqlite://{}/t.db", dir.display()))
        .await
        .expect("store");
    let mut cfg = AuthServerConfig::new(
        Issuer::parse(&base).expect("issuer"),
        vec![ResourceEntry {
            resource: Resource::parse(&format!("{base}/mcp")).expect("r"),
            scopes: ScopeSet::parse("mcp:basic").expect("s"),
        }],
    );
    cfg.login_throttle.pending_per_source = LIMIT;
    let fetcher = Fetcher::new(FetchPolicy::default()).expect("fetcher");
    let s = AuthServer::new(cfg, store, fetcher, Arc::new(SystemClock))
        .await
        .expect("server");
    // As `gatehouse serve` runs it: the peer address reaches the handlers.
    let app = s
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    base
}

/// A client connecting from `from` (any 127.0.0.0/8 address is this host).
fn http(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from(from))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_source_starts_a_bounded_number_of_sign_ins() {
    let base = server().await;
    let redirect = "http://127.0.0.1:4000/cb";
    let reg: Value = http([127, 0, 0, 1])
        .post(format!("{base}/register"))
        .json(&json!({"client_name": "Flood", "redirect_uris": [redirect],
            "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let client_id = reg["client_id"].as_str().expect("client_id");
    let authorize = |client: reqwest::Client| {
        let mut u = url::Url::parse(&format!("{base}/authorize")).expect("url");
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair(
                "code_challenge",
                PkceVerifier::generate().challenge().as_str(),
            )
            .append_pair("code_challenge_method", "S256")
            .append_pair("resource", &format!("{base}/mcp"))
            .append_pair("state", "s");
        async move { client.get(u).send().await.expect("get") }
    };
    for _ in 0..LIMIT {
        let r = authorize(http([127, 0, 0, 1])).await;
        assert_eq!(r.status(), 200, "a sign-in page");
        assert!(r.text().await.expect("body").contains("name=\"pending\""));
    }
    let r = authorize(http([127, 0, 0, 1])).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("60")
    );
    let body = r.text().await.expect("body");
    assert!(!body.contains("name=\"pending\""), "nothing was started");
    // Another address is not affected.
    let r = authorize(http([127, 0, 0, 2])).await;
    assert_eq!(r.status(), 200);
}
