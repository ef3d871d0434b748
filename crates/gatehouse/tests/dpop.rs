//! Issue 17, part 1 (RFC 9449): against `gatehouse dev`, a token request with a DPoP proof gets
//! a DPoP-bound token; the guard takes it with a fresh proof by the same key and refuses it as
//! Bearer, with a replayed proof, with a proof for another URL or method, or for another token.
mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// A P-256 key for this test only.
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggc50Ala2GbexSUkM
5yWnGURJysKpP1gXbovu5RclY+yhRANCAASTMN5KhuJlydXYmcAwe7fvzRbf30aM
nxNd3hY72Vao04AXp+s2T6N3ibl6Sibm7HTtRxdO8R5qJapT5anMfyiZ
-----END PRIVATE KEY-----
";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Another P-256 key: a thief's.
const OTHER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNtiB/ZrTR1Nhu8qg
ihlm0GjzDAj60T6Y64c4ihTZpqmhRANCAARD0pEEH60BbywQnUllt+aQHuVrCScK
XzYvZADIbHETqoOi1FgGG7OVEWagW7UKDYQtgL9n8/u2j8i1P3BUowPk
-----END PRIVATE KEY-----
";

fn proof(method: &str, url: &str, token: Option<&str>) -> String {
    proof_with(method, url, token, None)
}

fn proof_with(method: &str, url: &str, token: Option<&str>, nonce: Option<&str>) -> String {
    proof_by(KEY_PEM, method, url, token, nonce)
}

fn proof_by(
    pem: &str,
    method: &str,
    url: &str,
    token: Option<&str>,
    nonce: Option<&str>,
) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("key");
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some("dpop+jwt".into());
    h.jwk = Some(Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk"));
    let mut claims =
        json!({"jti": gatehouse_core::random_token(), "htm": method, "htu": url, "iat": now()});
    if let Some(t) = token {
        claims["ath"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(t.as_bytes()))
            .into();
    }
    if let Some(n) = nonce {
        claims["nonce"] = n.into();
    }
    jsonwebtoken::encode(&h, &claims, &key).expect("sign")
}

async fn initialize(
    endpoint: &str,
    scheme: &str,
    token: &str,
    proof: Option<&str>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(endpoint)
        .header("authorization", format!("{scheme} {token}"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "dpop-test", "version": "1"}}}),
        );
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let www: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    (status, www.join(" | "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp1_dpop_bound_tokens_from_dev_and_their_proofs_at_the_guard() {
    let (_dev, port, data) = gatehouse_dev_embedded("dpop-user", "dpop-password-1");
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{base}/mcp");
    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(
        meta["dpop_signing_alg_values_supported"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("ES256"))),
        "{meta}"
    );
    let db = format!("sqlite://{}", data.join("gatehouse.db").display());
    let (id, secret) = add_machine_client(&db, "dpop");
    let token_url = format!("{base}/token");
    let request = |p: Option<String>| {
        let (http, token_url, id, secret, endpoint) = (
            http.clone(),
            token_url.clone(),
            id.clone(),
            secret.clone(),
            endpoint.clone(),
        );
        async move {
            let mut r = http.post(&token_url).basic_auth(&id, Some(&secret)).form(&[
                ("grant_type", "client_credentials"),
                ("scope", "mcp:basic"),
                ("resource", endpoint.as_str()),
            ]);
            if let Some(p) = p {
                r = r.header("dpop", p);
            }
            let r = r.send().await.expect("token");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    // A bad proof at /token: invalid_dpop_proof, no token.
    let (st, v) = request(Some(proof("GET", &token_url, None))).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{v}"
    );
    // A good one: a DPoP token bound to the key.
    let p = proof("POST", &token_url, None);
    let (st, v) = request(Some(p.clone())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    let token = v["access_token"].as_str().expect("token").to_owned();
    assert!(
        jwt_claims(&token)["cnf"]["jkt"].is_string(),
        "bound: cnf.jkt"
    );
    // The same proof again at /token: replay.
    let (st, v) = request(Some(p)).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{v}"
    );

    // At the guard: a fresh proof for this URL, method and token works.
    let good = proof("POST", &endpoint, Some(&token));
    assert_eq!(
        initialize(&endpoint, "DPoP", &token, Some(&good)).await.0,
        200
    );
    // The same proof again: replay.
    let (st, www) = initialize(&endpoint, "DPoP", &token, Some(&good)).await;
    assert_eq!(st, 401);
    assert!(www.contains("invalid_dpop_proof"), "{www}");
    // As Bearer: refused (the binding would be void).
    let (st, www) = initialize(&endpoint, "Bearer", &token, None).await;
    assert_eq!(st, 401);
    assert!(
        www.contains("invalid_token") && www.contains("DPoP algs="),
        "{www}"
    );
    // Another URL, another method, another token, no proof.
    for (p, why) in [
        (
            proof("POST", &format!("{base}/other"), Some(&token)),
            "another URL",
        ),
        (proof("GET", &endpoint, Some(&token)), "another method"),
        (
            proof("POST", &endpoint, Some("another-token")),
            "another token",
        ),
    ] {
        let (st, www) = initialize(&endpoint, "DPoP", &token, Some(&p)).await;
        assert_eq!(st, 401, "{why}");
        assert!(www.contains("invalid_dpop_proof"), "{why}: {www}");
    }
    assert_eq!(
        initialize(&endpoint, "DPoP", &token, None).await.0,
        401,
        "no proof"
    );
    // A Bearer token presented with the DPoP scheme is refused too.
    let (_, v) = request(None).await;
    assert_eq!(v["token_type"], "Bearer");
    let bearer = v["access_token"].as_str().expect("token").to_owned();
    let p = proof("POST", &endpoint, Some(&bearer));
    let (st, www) = initialize(&endpoint, "DPoP", &bearer, Some(&p)).await;
    assert_eq!(st, 401);
    assert!(www.contains("invalid_token"), "{www}");
    assert_eq!(initialize(&endpoint, "Bearer", &bearer, None).await.0, 200);
}

/// DP-3 (RFC 9449 §8, §9): with `dpop_nonce` on at the authorization server and the guard, a
/// proof without a current server nonce is refused with `use_dpop_nonce` and a `DPoP-Nonce`
/// to use; a made-up nonce is refused; with the nonce it works. Our client, through a real MCP
/// host, handles both retries by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp3_server_nonces_at_the_token_endpoint_and_the_guard() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{base}/mcp");
    let dir = std::env::temp_dir().join(format!("gatehouse-dpop-nonce-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}", dir.join("as.db").display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\n  dpop_nonce: true\n  dpop_nonce_secret: ${{env:GH_NONCE_SECRET}}\nauthorization_server:\n  database: {db}\n  dpop_nonce: true\n"
        ),
    )
    .expect("config");
    let out = gatehouse()
        .env("GATEHOUSE_PASSWORD", "nonce-password-1")
        .args(["admin", "--db", &db, "users", "add", "nonce-user"])
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, secret) = add_machine_client(&db, "nonce");
    let mut cmd = gatehouse();
    cmd.env("GH_NONCE_SECRET", "a shared nonce secret for replicas")
        .args(["serve", "--config"])
        .arg(&cfg);
    let _p = Proc::start(cmd, "ready");
    let http = reqwest::Client::new();
    let token_url = format!("{base}/token");
    let request = |p: String| {
        let (http, token_url, id, secret, endpoint) = (
            http.clone(),
            token_url.clone(),
            id.clone(),
            secret.clone(),
            endpoint.clone(),
        );
        async move {
            let r = http
                .post(&token_url)
                .basic_auth(&id, Some(&secret))
                .header("dpop", p)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "mcp:basic"),
                    ("resource", endpoint.as_str()),
                ])
                .send()
                .await
                .expect("token");
            let nonce = r
                .headers()
                .get("dpop-nonce")
                .map(|v| v.to_str().expect("ascii").to_owned());
            (
                r.status().as_u16(),
                nonce,
                r.json::<Value>().await.expect("json"),
            )
        }
    };
    let (st, nonce, v) = request(proof("POST", &token_url, None)).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("use_dpop_nonce")),
        "{v}"
    );
    let nonce = nonce.expect("a DPoP-Nonce to use");
    let (st, _, v) = request(proof_with("POST", &token_url, None, Some("made-up"))).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("use_dpop_nonce")),
        "{v}"
    );
    let (st, next, v) = request(proof_with("POST", &token_url, None, Some(&nonce))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    assert!(next.is_some(), "the next nonce comes with every answer");
    let token = v["access_token"].as_str().expect("token").to_owned();

    // The guard: its own nonces (another secret than the AS's).
    let p = proof("POST", &endpoint, Some(&token));
    let r = http
        .post(&endpoint)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", p)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let www: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        www.iter()
            .any(|w| w.starts_with("DPoP") && w.contains("error=\"use_dpop_nonce\"")),
        "{www:?}"
    );
    let rs_nonce = r.headers()["dpop-nonce"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(rs_nonce, nonce, "the guard's nonces are its own");
    for (n, want) in [
        (nonce.as_str(), 401),
        ("made-up", 401),
        (rs_nonce.as_str(), 200),
    ] {
        let p = proof_with("POST", &endpoint, Some(&token), Some(n));
        let (st, www) = initialize(&endpoint, "DPoP", &token, Some(&p)).await;
        assert_eq!(st, want, "nonce {n}: {www}");
    }

    // Our client: the code flow with a browser, then a real MCP host through `gatehouse
    // connect`; each side asks for a nonce once and the client retries by itself.
    let home = dir.join("home");
    let env = |c: &mut std::process::Command| {
        c.env("GATEHOUSE_HOME", &home)
            .env(
                "GATEHOUSE_BROWSER",
                repo_root().join("interop/login-browser.mjs"),
            )
            .env("GH_USER", "nonce-user")
            .env("GH_PASSWORD", "nonce-password-1")
            .env_remove("GATEHOUSE_TOKEN_KEY");
    };
    let line = stdio_host(&endpoint, env).await;
    assert_eq!(line["sum"], json!(r#"{"sum":42}"#), "{line}");
}

/// DP-1 for a public client (RFC 9449 §5, the issue's outside check): the code flow against
/// `gatehouse dev` with a proof at `/token` gives a DPoP-bound access token and a refresh token
/// bound to the same key; the refresh token is refused without a proof and with another key's,
/// and refreshes with a proof by its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp1_a_public_clients_tokens_and_refresh_token_are_bound_to_its_key() {
    use common::browser::Browser;
    let (_dev, port, _data) = gatehouse_dev_embedded("dpop-public", "dpop-public-pass-1");
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{base}/mcp");
    let token_url = format!("{base}/token");
    let http = reqwest::Client::new();
    let client_id = register_native_client(&base, "DPoP app", "http://127.0.0.1:5111/cb").await;
    let v = gatehouse_core::PkceVerifier::generate();
    let u = authorize_url(
        &base,
        &client_id,
        "http://127.0.0.1:5111/cb",
        &v,
        "mcp:basic offline_access",
        &endpoint,
    );
    let mut b = Browser::new();
    let done = b
        .sign_in_and_approve(&u, &base, "dpop-public", "dpop-public-pass-1")
        .await;
    let code = done.redirect_params()["code"].clone();
    let post = |form: Vec<(&'static str, String)>, p: Option<String>| {
        let (http, token_url) = (http.clone(), token_url.clone());
        async move {
            let mut r = http.post(&token_url).form(&form);
            if let Some(p) = p {
                r = r.header("dpop", p);
            }
            let r = r.send().await.expect("token");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let (st, tok) = post(
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", code),
            ("code_verifier", v.secret().to_owned()),
            ("client_id", client_id.clone()),
            ("redirect_uri", "http://127.0.0.1:5111/cb".into()),
        ],
        Some(proof("POST", &token_url, None)),
    )
    .await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["token_type"], "DPoP");
    let at = tok["access_token"].as_str().expect("at").to_owned();
    assert!(jwt_claims(&at)["cnf"]["jkt"].is_string());
    let rt = tok["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let refresh = |p: Option<String>| {
        post(
            vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", rt.clone()),
                ("client_id", client_id.clone()),
            ],
            p,
        )
    };
    let (st, v) = refresh(None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "no proof: {v}"
    );
    let (st, v) = refresh(Some(proof_by(
        OTHER_KEY_PEM,
        "POST",
        &token_url,
        None,
        None,
    )))
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "a thief's key: {v}"
    );
    let (st, v) = refresh(Some(proof("POST", &token_url, None))).await;
    assert_eq!(st, 200, "its own key: {v}");
    assert_eq!(v["token_type"], "DPoP");
    let fresh = v["access_token"].as_str().expect("at").to_owned();
    let p = proof("POST", &endpoint, Some(&fresh));
    assert_eq!(initialize(&endpoint, "DPoP", &fresh, Some(&p)).await.0, 200);
}
