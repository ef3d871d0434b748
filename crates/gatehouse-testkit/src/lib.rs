//! Fixtures for tests only; never a dependency of production code.
//!
//! [`TestIssuer`] is a minimal authorization server on 127.0.0.1 that serves RFC 8414 metadata and
//! a JWKS of real ES256 keys, can rotate them, and mints tokens. It exists so that unit and guard
//! tests run with real signatures over real sockets; interoperability with a real authorization
//! server is tested separately against `oidc-provider`.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures fail loudly"
)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// An ES256 signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Jwk,
}

impl TestKey {
    pub fn es256(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("generate P-256 key");
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).expect("public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            encoding,
            jwk,
        }
    }

    /// Signs `claims` with this key (`typ: at+jwt`, `kid` set).
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("sign")
    }

    /// Signs with a custom header (for `typ` and `kid` variations).
    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `alg: none` forgery: header and claims, empty signature.
pub fn forge_alg_none(claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{h}.{c}.")
}

/// HMAC-with-the-public-key forgery: HS256 keyed with the issuer's public JWK's `x` coordinate
/// and with the serialised JWK, the classic algorithm-confusion attack.
pub fn forge_hs256_with_public_key(key: &TestKey, claims: &Value) -> Vec<String> {
    let jwk_json = serde_json::to_vec(&key.jwk).unwrap();
    let x = serde_json::to_value(&key.jwk).unwrap()["x"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    [jwk_json, x.into_bytes()]
        .into_iter()
        .map(|secret| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(key.kid.clone());
            jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(&secret)).unwrap()
        })
        .collect()
}

/// A loopback authorization server that serves metadata and a JWKS.
pub struct TestIssuer {
    pub issuer: String,
    pub port: u16,
    keys: Arc<RwLock<Vec<TestKey>>>,
    jwks_hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = format!("http://127.0.0.1:{port}");
        let keys = Arc::new(RwLock::new(vec![TestKey::es256("k1")]));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let meta = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        });
        let (k, hits) = (keys.clone(), jwks_hits.clone());
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                axum::routing::get(move || {
                    let m = meta.clone();
                    async move { axum::Json(m) }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let set: Vec<Value> = k
                        .read()
                        .unwrap()
                        .iter()
                        .map(|t| serde_json::to_value(&t.jwk).unwrap())
                        .collect();
                    async move { axum::Json(json!({ "keys": set })) }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            port,
            keys,
            jwks_hits,
            _task: task,
        }
    }

    /// The `host:port` to list in the fetch policy's loopback exceptions.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn current_key(&self) -> TestKey {
        self.keys.read().unwrap().last().cloned().unwrap()
    }

    /// Replaces the published keys with one new key (the old one disappears from the JWKS).
    pub fn rotate(&self, kid: &str) -> TestKey {
        let k = TestKey::es256(kid);
        *self.keys.write().unwrap() = vec![k.clone()];
        k
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    /// Standard access-token claims for `aud`, valid for 5 minutes.
    pub fn claims(&self, aud: &str, scope: &str, sub: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "sub": sub, "aud": aud, "scope": scope,
            "client_id": "test-client", "iat": now, "exp": now + 300, "jti": format!("j{now}{sub}"),
        })
    }

    /// A valid token for `aud` with `scope`, signed with the current key.
    pub fn mint(&self, aud: &str, scope: &str) -> String {
        self.current_key().sign(&self.claims(aud, scope, "alice"))
    }
}
