//! Issue 16, point 3: a guard in front of an external authorization server (the real
//! oidc-provider) receives revocations as pushed Security Event Tokens (RFC 8935, CAEP
//! `session-revoked`), verified against the transmitter's JWKS, and applies them in every
//! replica (two `serve` processes sharing Redis) within a second. Bad SETs change nothing.
mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A P-256 key for this test only, and its public half as a JWK.
const SET_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggc50Ala2GbexSUkM
5yWnGURJysKpP1gXbovu5RclY+yhRANCAASTMN5KhuJlydXYmcAwe7fvzRbf30aM
nxNd3hY72Vao04AXp+s2T6N3ibl6Sibm7HTtRxdO8R5qJapT5anMfyiZ
-----END PRIVATE KEY-----
";
const SET_KEY_X: &str = "kzDeSobiZcnV2JnAMHu3780W399GjJ8TXd4WO9lWqNM";
const SET_KEY_Y: &str = "gBen6zZPo3eJuXpKJubsdO1HF07xHmolqlPlqcx_KJk";
const TRANSMITTER: &str = "https://ssf.transmitter.example";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn sign(typ: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some(typ.to_owned());
    h.kid = Some("set-1".to_owned());
    let key = EncodingKey::from_ec_pem(SET_KEY_PEM.as_bytes()).expect("key");
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

fn session_revoked(iss: &str, aud: &str, as_issuer: &str, sub: &str) -> Value {
    json!({
        "iss": iss, "aud": aud, "iat": now(), "jti": format!("set-{}", free_port()),
        "sub_id": {"format": "iss_sub", "iss": as_issuer, "sub": sub},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
            "event_timestamp": now()}}
    })
}

async fn push(url: &str, content_type: &str, set: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(set.to_owned())
        .send()
        .await
        .expect("push");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp5_pushed_security_events_revoke_an_external_subject_on_every_replica() {
    let as_port = free_port();
    let as_issuer = format!("http://127.0.0.1:{as_port}");
    let _idp = oidc_provider(as_port);

    // The transmitter's JWKS, served on loopback.
    let jwks_port = free_port();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": SET_KEY_X, "y": SET_KEY_Y,
                                "kid": "set-1", "alg": "ES256", "use": "sig"}]});
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", jwks_port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let j = jwks.clone();
                async move { axum::Json(j) }
            }),
        );
        let _ = axum::serve(listener, app).await;
    });

    let (p1, p2) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{p1}");
    let dir = std::env::temp_dir().join(format!("gatehouse-set-{p1}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{p1}\npublic_url: {public}\nguard:\n  required_scopes: [mcp:basic]\n  authorization_servers:\n    - issuer: {as_issuer}\n  security_events:\n    transmitters:\n      - issuer: {TRANSMITTER}\n        jwks_uri: http://127.0.0.1:{jwks_port}/jwks\n        authorization_server: {as_issuer}\nshared_state:\n  redis_url: redis://127.0.0.1:6379\ndangerous:\n  allow_loopback_fetch: ['127.0.0.1:{as_port}', '127.0.0.1:{jwks_port}']\n"
        ),
    )
    .expect("config");
    let _r1 = serve(&cfg);
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{p2}")]);
    let _r2 = Proc::start(cmd, "ready");
    let endpoints = [
        format!("{public}/mcp"),
        format!("http://127.0.0.1:{p2}/mcp"),
    ];
    let receiver = format!("{public}/security-events");
    let aud = receiver.clone();

    let token = cc_token(&as_issuer, &endpoints[0], "mcp:basic").await;
    for e in &endpoints {
        assert_eq!(mcp_initialize_status(e, &token).await, 200, "{e} before");
    }

    // Bad SETs: refused with RFC 8935 error codes, and nothing changes.
    let good = sign(
        "secevent+jwt",
        &session_revoked(TRANSMITTER, &aud, &as_issuer, CLIENT_ID),
    );
    let (st, body) = push(&receiver, "application/json", &good).await;
    assert_eq!(
        (st, body["err"].as_str()),
        (400, Some("invalid_request")),
        "content type"
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let forged = session_revoked(TRANSMITTER, &aud, &as_issuer, "someone-else");
    use base64::Engine as _;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged).expect("json"));
    let (st, body) = push(&receiver, "application/secevent+jwt", &parts.join(".")).await;
    assert_eq!(
        (st, body["err"].as_str()),
        (400, Some("invalid_key")),
        "altered payload"
    );
    let cases = [
        (
            sign(
                "secevent+jwt",
                &session_revoked("https://stranger.example", &aud, &as_issuer, CLIENT_ID),
            ),
            "invalid_issuer",
        ),
        (
            sign(
                "secevent+jwt",
                &session_revoked(
                    TRANSMITTER,
                    "https://another.example/events",
                    &as_issuer,
                    CLIENT_ID,
                ),
            ),
            "invalid_audience",
        ),
        (
            sign(
                "at+jwt",
                &session_revoked(TRANSMITTER, &aud, &as_issuer, CLIENT_ID),
            ),
            "invalid_request",
        ),
        (
            sign(
                "secevent+jwt",
                &session_revoked(TRANSMITTER, &aud, "https://other-as.example", CLIENT_ID),
            ),
            "invalid_request",
        ),
    ];
    for (set, code) in &cases {
        let (st, body) = push(&receiver, "application/secevent+jwt", set).await;
        assert_eq!((st, body["err"].as_str()), (400, Some(*code)), "{body}");
    }
    for e in &endpoints {
        assert_eq!(
            mcp_initialize_status(e, &token).await,
            200,
            "{e} after bad SETs"
        );
    }

    // The real thing, pushed to one replica: both refuse the subject's token within 1 s.
    let (st, body) = push(&receiver, "application/secevent+jwt", &good).await;
    assert_eq!(st, 202, "{body}");
    let pushed = Instant::now();
    for e in &endpoints {
        loop {
            if mcp_initialize_status(e, &token).await == 401 {
                break;
            }
            assert!(
                pushed.elapsed() < Duration::from_secs(1),
                "{e} still takes the revoked subject's token"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "security event applied on both replicas after {:?}",
        pushed.elapsed()
    );
    // Replaying it changes nothing new; a token issued after the event is good.
    let (st, _) = push(&receiver, "application/secevent+jwt", &good).await;
    assert_eq!(st, 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = cc_token(&as_issuer, &endpoints[0], "mcp:basic").await;
    for e in &endpoints {
        assert_eq!(
            mcp_initialize_status(e, &fresh).await,
            200,
            "{e} with a token from after the event"
        );
        assert_eq!(mcp_initialize_status(e, &token).await, 401, "{e} old token");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
