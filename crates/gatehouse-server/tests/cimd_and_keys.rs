//! AS-16 … AS-22 (Client ID Metadata Documents) and key rotation, on the server's own router.
use gatehouse_core::{Issuer, PkceVerifier, Resource, ScopeSet, SystemClock};
use gatehouse_fetch::{FetchPolicy, Fetcher};
use gatehouse_server::{AuthServer, AuthServerConfig, ResourceEntry};
use gatehouse_store::Store;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A loopback "client website" serving metadata documents and counting fetches.
struct DocServer {
    base: String,
    authority: String,
    hits: Arc<AtomicUsize>,
    doc: Arc<std::sync::Mutex<(u16, String, &'static str)>>,
}

async fn doc_server() -> DocServer {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let doc = Arc::new(std::sync::Mutex::new((404u16, String::new(), "no-store")));
    let (h, d) = (hits.clone(), doc.clone());
    let app = axum::Router::new().route(
        "/oauth/client.json",
        axum::routing::get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            let (status, body, cc) = d.lock().expect("lock").clone();
            async move {
                (
                    http::StatusCode::from_u16(status).expect("status"),
                    [
                        (http::header::CONTENT_TYPE, "application/json"),
                        (http::header::CACHE_CONTROL, cc),
                    ],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    DocServer {
        base: format!("http://127.0.0.1:{port}"),
        authority: format!("127.0.0.1:{port}"),
        hits,
        doc,
    }
}

async fn server(allow: Vec<String>) -> (AuthServer, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let dir =
        std::env::temp_dir().join(format!("gh-cimd-{}", l.local_addr().expect("addr").port()));
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
    // Client documents are fetched under their own loopback exceptions, not the fetcher's.
    cfg.dangerous_client_fetch_loopback = allow;
    let fetcher = Fetcher::new(FetchPolicy::default()).expect("fetcher");
    let s = AuthServer::new(cfg, store, fetcher, Arc::new(SystemClock))
        .await
        .expect("server");
    let router = s.router();
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    (s, base)
}

fn authorize_url(base: &str, client_id: &str, redirect: &str) -> String {
    let v = PkceVerifier::generate();
    let mut u = url::Url::parse(&format!("{base}/authorize")).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("code_challenge", v.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "s");
    u.to_string()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test]
async fn as16_as19_as22_metadata_document_clients() {
    let docs = doc_server().await;
    let (_s, base) = server(vec![docs.authority.clone()]).await;
    let client_id = format!("{}/oauth/client.json", docs.base);
    let good = json!({"client_id": client_id, "client_name": "Doc App", "redirect_uris": ["http://127.0.0.1/cb"]}).to_string();

    // AS-22: an error is never cached: after the 404, the fixed document is fetched again.
    let r = http()
        .get(authorize_url(&base, &client_id, "http://127.0.0.1:4000/cb"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    *docs.doc.lock().expect("lock") = (200, good.clone(), "max-age=600");
    let r = http()
        .get(authorize_url(&base, &client_id, "http://127.0.0.1:4000/cb"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    assert!(body.contains("Doc App"), "the document's name is shown");
    assert_eq!(docs.hits.load(Ordering::SeqCst), 2);
    // Cached per Cache-Control: no new fetch.
    let r = http()
        .get(authorize_url(&base, &client_id, "http://127.0.0.1:4001/cb"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(docs.hits.load(Ordering::SeqCst), 2);
    // AS-19: redirect URIs come from the document only.
    let r = http()
        .get(authorize_url(
            &base,
            &client_id,
            "http://127.0.0.1:4000/other",
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
}

/// Issue 14, row 16: naming a document URL leaves no row in the store (only a grant does), and a
/// `no-store` document is not fetched again for every request that names it.
#[tokio::test]
async fn cimd_documents_leave_nothing_permanent_and_are_not_refetched_per_request() {
    let docs = doc_server().await;
    let (s, base) = server(vec![docs.authority.clone()]).await;
    let client_id = format!("{}/oauth/client.json", docs.base);
    let good = json!({"client_id": client_id, "client_name": "Doc App", "redirect_uris": ["http://127.0.0.1/cb"]}).to_string();
    *docs.doc.lock().expect("lock") = (200, good, "no-store");
    for _ in 0..3 {
        let r = http()
            .get(authorize_url(&base, &client_id, "http://127.0.0.1:4000/cb"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        docs.hits.load(Ordering::SeqCst),
        1,
        "kept at least a minute"
    );
    assert!(
        s.store()
            .get_client(&client_id)
            .await
            .expect("get")
            .is_none(),
        "no row until a grant is made"
    );
}

#[tokio::test]
async fn as18_as20_bad_documents_are_refused() {
    let docs = doc_server().await;
    let (_s, base) = server(vec![docs.authority.clone()]).await;
    let client_id = format!("{}/oauth/client.json", docs.base);
    for (what, body) in [
        ("client_id mismatch", json!({"client_id": "https://evil.example/c.json", "redirect_uris": ["http://127.0.0.1/cb"]}).to_string()),
        ("with a secret", json!({"client_id": client_id, "client_secret": "x", "redirect_uris": ["http://127.0.0.1/cb"]}).to_string()),
        ("no redirect_uris", json!({"client_id": client_id}).to_string()),
        ("not JSON", "<html>".to_owned()),
        ("too large", json!({"client_id": client_id, "redirect_uris": ["http://127.0.0.1/cb"], "pad": "x".repeat(6 * 1024)}).to_string()),
    ] {
        *docs.doc.lock().expect("lock") = (200, body, "no-store");
        let r = http().get(authorize_url(&base, &client_id, "http://127.0.0.1/cb")).send().await.expect("get");
        assert_eq!(r.status(), 400, "{what}");
        assert!(r.headers().get("location").is_none(), "{what}");
    }
}

#[tokio::test]
async fn as17_as21_t6_client_id_urls_are_checked_and_private_addresses_never_fetched() {
    let docs = doc_server().await;
    // No loopback exception: the document server is a private address like any other.
    let (_s, base) = server(vec![]).await;
    for client_id in [
        format!("{}/oauth/client.json", docs.base),
        "https://127.0.0.1/oauth/client.json".to_owned(),
        "https://169.254.169.254/latest/client.json".to_owned(),
        "https://[::ffff:10.0.0.1]/client.json".to_owned(),
        "https://localhost/client.json".to_owned(),
        "https://app.example.com/".to_owned(),
        "https://app.example.com/a/../client.json".to_owned(),
    ] {
        let r = http()
            .get(authorize_url(&base, &client_id, "http://127.0.0.1/cb"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{client_id}");
        assert!(r.headers().get("location").is_none());
    }
    assert_eq!(
        docs.hits.load(Ordering::SeqCst),
        0,
        "T6: nothing was fetched from a private address"
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_keys_published() {
    let (s, base) = server(vec![]).await;
    let jwks = |b: String| async move {
        http()
            .get(format!("{b}/jwks"))
            .send()
            .await
            .expect("jwks")
            .json::<Value>()
            .await
            .expect("json")
    };
    let before = jwks(base.clone()).await["keys"]
        .as_array()
        .expect("keys")
        .len();
    assert_eq!(before, 1);
    let old_kid = s.keys().list()[0].0.clone();
    let new_kid = s.keys().rotate().await.expect("rotate");
    assert_ne!(old_kid, new_kid);
    let after = jwks(base.clone()).await;
    let kids: Vec<&str> = after["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    assert_eq!(s.keys().list()[0], (new_kid, false));
}

#[tokio::test]
async fn maintenance_picks_up_keys_rotated_elsewhere() {
    // Two servers on one store, like two replicas: a rotation by one reaches the other's JWKS
    // after a maintenance round.
    let (a, base_a) = server(vec![]).await;
    let b = AuthServer::new(
        a.config().clone(),
        a.store().clone(),
        Fetcher::new(FetchPolicy::default()).expect("fetcher"),
        Arc::new(SystemClock),
    )
    .await
    .expect("second server");
    let new_kid = b.keys().rotate().await.expect("rotate on b");
    let kids = |s: &AuthServer| {
        s.keys()
            .list()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert!(!kids(&a).contains(&new_kid), "a has not seen it yet");
    a.maintain().await.expect("maintain");
    assert_eq!(kids(&a)[0], new_kid, "a signs with the new key now");
    let jwks: Value = http()
        .get(format!("{base_a}/jwks"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert!(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["kid"] == json!(new_kid))
    );
}

#[tokio::test]
async fn signing_keys_are_encrypted_at_rest_under_a_key_encryption_key() {
    use gatehouse_server::{KeyEncryptionKey, KeyManager};
    let kek =
        KeyEncryptionKey::from_base64("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=").expect("kek");
    let wrong =
        KeyEncryptionKey::from_base64("CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=").expect("kek");
    assert!(
        KeyEncryptionKey::from_base64("c2hvcnQ=").is_err(),
        "32 bytes required"
    );
    let dir = std::env::temp_dir().join(format!("gh-kek-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let _ = std::fs::remove_file(dir.join("k.db"));
    let store = Store::open(&format!("sqlite://{}/k.db", dir.display()))
        .await
        .expect("store");
    let clock: Arc<dyn gatehouse_core::Clock> = Arc::new(SystemClock);
    let km = KeyManager::load(store.clone(), clock.clone(), 300, Some(kek.clone()))
        .await
        .expect("load");
    km.rotate().await.expect("rotate");
    let rows = store.list_keys().await.expect("rows");
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(r.private_der.starts_with("aes256gcm:"), "sealed at rest");
    }
    let err = KeyManager::load(store.clone(), clock.clone(), 300, None)
        .await
        .err()
        .expect("refused without the KEK");
    assert_eq!(err.code, gatehouse_core::OAuthErrorCode::ServerError);
    assert!(
        KeyManager::load(store.clone(), clock.clone(), 300, Some(wrong))
            .await
            .is_err(),
        "wrong KEK refused"
    );
    let again = KeyManager::load(store.clone(), clock, 300, Some(kek))
        .await
        .expect("right KEK");
    assert_eq!(again.jwks()["keys"].as_array().expect("keys").len(), 2);
    assert!(
        !format!(
            "{:?}",
            KeyEncryptionKey::from_base64("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
                .expect("kek")
        )
        .contains("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
    );
}
