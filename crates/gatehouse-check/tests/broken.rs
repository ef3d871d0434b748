//! Issue 19 (CK-1): every check against a correct MCP server (it passes) and against a server broken in
//! exactly one way (that check, and only what follows from it, fails). The servers are real
//! HTTP servers on loopback validating real ES256 tokens; each flaw is one switch.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_check::{Options, SecretString, Status};
use gatehouse_testkit::TestKey;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    NoAuth,
    AnyAudience,
    AlgNone,
    QueryToken,
    NoPrm,
    WrongResource,
    NoOriginCheck,
    SessionAlone,
    NoResourceMetadata,
    AcceptExpired,
    NoSignatureCheck,
    ReflectCors,
    ErrorWithoutToken,
    NoScopeInChallenge,
    IgnoreMcpMethod,
    AsNoPkce,
    AsWrongIssuer,
    AsNoIss,
    AsHttpEndpoint,
    AlgConfusion,
    NoHostCheck,
    AsNoPkceRequired,
    AsPlainAccepted,
    AsRedirectPrefix,
    AsErrorRedirect,
    AsDcrMachine,
    AsCodeReusable,
    AsRefreshNoRotation,
    AsRefreshReuseAccepted,
    AsTokenWrongAudience,
    BadTokenForbidden,
    TrustEmbeddedJwk,
    SequentialSessionIds,
    SessionAnyUser,
    ScopeNotChecked,
    ScopeUnauthorized,
    ScopeWithoutScopeParam,
    /// Opaque access tokens whose introspected `aud` is another resource.
    AsOpaqueWrongAudience,
    IgnoreMcpName,
    AsJwtAlgNone,
    AsFramable,
    AsTokenCacheable,
    UnguardedStream,
    SessionAloneStream,
    AdoptsClientSessionId,
    /// Not a flaw: an HTML page for browsers at the endpoint's URL (GET), no stream.
    LandingPageOnGet,
    /// Not a flaw: the metadata only at the challenge's URL (MCP 2025-11-25 allows it).
    PrmOnlyInChallenge,
}

/// A registered client: its redirect URIs, and the secret of a machine client.
type Client = (Vec<String>, Option<String>);

struct Srv {
    flaw: Flaw,
    origin: String,
    resource: String,
    issuer: String,
    key: DecodingKey,
    /// The public key as PEM (what a confused verifier uses as an HMAC secret).
    pem: String,
    sessions: Mutex<HashMap<String, String>>,
    /// Registered clients: id → (redirect URIs, secret for machine clients).
    clients: Mutex<HashMap<String, Client>>,
    signer: TestKey,
    /// Codes: code → (client, redirect, challenge, used).
    codes: Mutex<HashMap<String, (String, String, String, bool)>>,
    /// Refresh tokens: token → (used, its family revoked).
    refresh: Mutex<HashMap<String, bool>>,
    /// Opaque access tokens → their audience.
    opaque: Mutex<HashMap<String, String>>,
    /// Clients that saw the consent page once (later requests are approved at once).
    consented: Mutex<BTreeSet<String>>,
}

async fn introspect(
    State(s): State<Arc<Srv>>,
    axum::Form(f): axum::Form<HashMap<String, String>>,
) -> Response {
    let aud = f
        .get("token")
        .and_then(|t| s.opaque.lock().unwrap().get(t).cloned());
    axum::Json(match aud {
        Some(aud) => json!({"active": true, "aud": aud, "client_id": "c"}),
        None => json!({"active": false}),
    })
    .into_response()
}

async fn register(State(s): State<Arc<Srv>>, axum::Json(m): axum::Json<Value>) -> Response {
    let grants: Vec<&str> = m["grant_types"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let id = format!("c{}", rand_id());
    if grants.contains(&"client_credentials") {
        if s.flaw != Flaw::AsDcrMachine {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_client_metadata"})),
            )
                .into_response();
        }
        let secret = format!("secret{}", rand_id());
        s.clients
            .lock()
            .unwrap()
            .insert(id.clone(), (vec![], Some(secret.clone())));
        return (
            StatusCode::CREATED,
            axum::Json(json!({"client_id": id, "client_secret": secret, "grant_types": grants})),
        )
            .into_response();
    }
    let uris: Vec<String> = m["redirect_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    s.clients.lock().unwrap().insert(id.clone(), (uris, None));
    (
        StatusCode::CREATED,
        axum::Json(json!({"client_id": id, "token_endpoint_auth_method": "none"})),
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Srv>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page = |msg: &str| (StatusCode::BAD_REQUEST, msg.to_owned()).into_response();
    let Some((uris, _)) = q
        .get("client_id")
        .and_then(|c| s.clients.lock().unwrap().get(c).cloned())
    else {
        return page("unknown client");
    };
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let known = if s.flaw == Flaw::AsRedirectPrefix {
        uris.iter().any(|u| redirect.starts_with(u.as_str()))
    } else {
        uris.contains(&redirect)
    };
    if !known {
        return page("redirect_uri is not registered");
    }
    let error = |e: &str| {
        if s.flaw == Flaw::AsErrorRedirect {
            axum::response::Redirect::to(&format!("{redirect}?error={e}&state=x")).into_response()
        } else {
            page(e)
        }
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return error("unsupported_response_type");
    }
    match (
        q.get("code_challenge"),
        q.get("code_challenge_method").map(String::as_str),
    ) {
        (None, _) if s.flaw != Flaw::AsNoPkceRequired => return error("invalid_request"),
        (Some(_), Some("plain")) if s.flaw != Flaw::AsPlainAccepted => {
            return error("invalid_request");
        }
        _ => {}
    }
    // The first request of a client shows the consent page; later ones are approved at once
    // (as for a user who consented before).
    let client = q.get("client_id").cloned().unwrap_or_default();
    if s.consented.lock().unwrap().insert(client) {
        let page = axum::response::Html(
            "<!doctype html><title>Consent</title><form method=post><button>Allow</button></form>",
        );
        return if s.flaw == Flaw::AsFramable {
            page.into_response()
        } else {
            (
                [
                    (
                        "content-security-policy",
                        "default-src 'self'; frame-ancestors 'none'",
                    ),
                    ("x-frame-options", "DENY"),
                ],
                page,
            )
                .into_response()
        };
    }
    let code = format!("code{}", rand_id());
    s.codes.lock().unwrap().insert(
        code.clone(),
        (
            q.get("client_id").cloned().unwrap_or_default(),
            redirect.clone(),
            q.get("code_challenge").cloned().unwrap_or_default(),
            false,
        ),
    );
    axum::response::Redirect::to(&format!(
        "{redirect}?code={code}&state={}&iss={}",
        q.get("state").map(String::as_str).unwrap_or_default(),
        s.issuer
    ))
    .into_response()
}

fn issue(s: &Srv) -> Response {
    let aud = if matches!(
        s.flaw,
        Flaw::AsTokenWrongAudience | Flaw::AsOpaqueWrongAudience
    ) {
        "https://api.example.com/".to_owned()
    } else {
        s.resource.clone()
    };
    let now = gatehouse_testkit::now();
    let at = s.signer.sign(&json!({"iss": s.issuer, "sub": "alice", "aud": aud,
        "scope": "mcp:basic", "client_id": "c", "iat": now, "exp": now + 300, "jti": format!("j{}", rand_id())}));
    let at = if s.flaw == Flaw::AsOpaqueWrongAudience {
        let opaque = random_hex();
        s.opaque.lock().unwrap().insert(opaque.clone(), aud);
        opaque
    } else {
        at
    };
    let rt = format!("rt{}", rand_id());
    s.refresh.lock().unwrap().insert(rt.clone(), false);
    let body = axum::Json(
        json!({"access_token": at, "token_type": "Bearer", "expires_in": 300, "refresh_token": rt}),
    );
    if s.flaw == Flaw::AsTokenCacheable {
        ([("cache-control", "max-age=300")], body).into_response()
    } else {
        ([("cache-control", "no-store")], body).into_response()
    }
}

fn grant_error() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "invalid_grant"})),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Srv>>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<HashMap<String, String>>,
) -> Response {
    use base64::Engine;
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = f.get("code").cloned().unwrap_or_default();
            let mut codes = s.codes.lock().unwrap();
            let Some(entry) = codes.get_mut(&code) else {
                return grant_error();
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
            );
            if entry.3 && s.flaw != Flaw::AsCodeReusable
                || f.get("redirect_uri") != Some(&entry.1)
                || computed != entry.2
            {
                return grant_error();
            }
            entry.3 = true;
            drop(codes);
            return issue(&s);
        }
        Some("refresh_token") => {
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            {
                let mut map = s.refresh.lock().unwrap();
                match map.get(&rt).copied() {
                    None => return grant_error(),
                    Some(true) if s.flaw != Flaw::AsRefreshReuseAccepted => return grant_error(),
                    Some(_) => {}
                }
                if s.flaw == Flaw::AsRefreshNoRotation {
                    let now = gatehouse_testkit::now();
                    let at = s
                        .signer
                        .sign(&json!({"iss": s.issuer, "sub": "alice", "aud": s.resource,
                        "scope": "mcp:basic", "client_id": "c", "iat": now, "exp": now + 300}));
                    return axum::Json(
                        json!({"access_token": at, "token_type": "Bearer", "refresh_token": rt}),
                    )
                    .into_response();
                }
                map.insert(rt, true);
            }
            return issue(&s);
        }
        _ => {}
    }
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let ok = basic.and_then(|b| {
        let (id, secret) = b.split_once(':')?;
        let clients = s.clients.lock().unwrap();
        let (_, stored) = clients.get(id)?;
        (stored.as_deref() == Some(secret)).then_some(())
    });
    match ok {
        Some(()) => {
            axum::Json(json!({"access_token": "machine", "token_type": "Bearer"})).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response(),
    }
}

fn challenge(s: &Srv, error: Option<&str>) -> Response {
    let mut v = String::from("Bearer");
    let mut params = Vec::new();
    if let Some(e) = error {
        params.push(format!("error=\"{e}\""));
    } else if s.flaw == Flaw::ErrorWithoutToken {
        params.push("error=\"invalid_token\"".to_owned());
    }
    if s.flaw != Flaw::NoResourceMetadata {
        params.push(format!(
            "resource_metadata=\"{}{}\"",
            s.origin,
            if s.flaw == Flaw::PrmOnlyInChallenge {
                "/meta/prm"
            } else {
                "/.well-known/oauth-protected-resource/mcp"
            }
        ));
    }
    if s.flaw != Flaw::NoScopeInChallenge {
        params.push("scope=\"mcp:basic\"".to_owned());
    }
    if !params.is_empty() {
        v = format!("{v} {}", params.join(", "));
    }
    (StatusCode::UNAUTHORIZED, [("www-authenticate", v)]).into_response()
}

/// The subject of a token this server accepts (with its flaw), or why not.
fn validate(s: &Srv, token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let alg = base64_json(header).and_then(|h| h["alg"].as_str().map(str::to_owned));
    if alg.as_deref() == Some("HS256") {
        if s.flaw != Flaw::AlgConfusion {
            return None;
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[&s.issuer]);
        v.set_audience(&[&s.resource]);
        let key = DecodingKey::from_secret(s.pem.as_bytes());
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).ok()?;
        return data.claims["sub"].as_str().map(str::to_owned);
    }
    let alg_none = alg.as_deref() == Some("none");
    if alg_none {
        if s.flaw != Flaw::AlgNone {
            return None;
        }
        let claims = base64_json(token.split('.').nth(1)?)?;
        return claims["sub"].as_str().map(str::to_owned);
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[&s.issuer]);
    v.set_audience(&[&s.resource]);
    if s.flaw == Flaw::TrustEmbeddedJwk
        && let Some(jwk) = base64_json(header).and_then(|h| h.get("jwk").cloned())
    {
        // The key the token brings with it.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).ok()?;
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).ok()?;
        return data.claims["sub"].as_str().map(str::to_owned);
    }
    if s.flaw == Flaw::AnyAudience {
        v.validate_aud = false;
    } else {
        v.set_audience(&[&s.resource]);
    }
    if s.flaw == Flaw::AcceptExpired {
        v.validate_exp = false;
        v.required_spec_claims.remove("exp");
    }
    if s.flaw == Flaw::NoSignatureCheck {
        // Reads the claims and checks them, but never the signature.
        let c = base64_json(token.split('.').nth(1)?)?;
        let ok = c["iss"] == s.issuer.as_str()
            && c["aud"] == s.resource.as_str()
            && c["exp"].as_i64().is_some_and(|e| e > now());
        return ok.then(|| c["sub"].as_str().map(str::to_owned)).flatten();
    }
    let data = jsonwebtoken::decode::<Value>(token, &s.key, &v).ok()?;
    data.claims["sub"].as_str().map(str::to_owned)
}

fn base64_json(part: &str) -> Option<Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn mcp(
    State(s): State<Arc<Srv>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // DNS rebinding: only our own Host.
    if s.flaw != Flaw::NoHostCheck && h("host") != s.origin.strip_prefix("http://") {
        return (StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response();
    }
    if let Some(o) = h("origin")
        && o != s.origin
        && s.flaw != Flaw::NoOriginCheck
    {
        return StatusCode::FORBIDDEN.into_response();
    }
    let msg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let method = msg["method"].as_str().unwrap_or_default().to_owned();
    let mut token = h("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned);
    if s.flaw == Flaw::QueryToken && token.is_none() {
        token = q.get("access_token").cloned();
    }
    let sid = h("mcp-session-id").map(str::to_owned);
    let subject = match (&token, &sid) {
        (None, Some(id)) if s.flaw == Flaw::SessionAlone => {
            s.sessions.lock().unwrap().get(id).cloned()
        }
        (None, _) if s.flaw == Flaw::NoAuth => Some("anonymous".to_owned()),
        (None, _) => return challenge(&s, None),
        (Some(t), _) => match validate(&s, t) {
            Some(sub) => Some(sub),
            None if s.flaw == Flaw::BadTokenForbidden => {
                return (StatusCode::FORBIDDEN, "bad token").into_response();
            }
            None => return challenge(&s, Some("invalid_token")),
        },
    };
    let Some(subject) = subject else {
        return challenge(&s, None);
    };
    if let Some(m) = h("mcp-method")
        && m != method
        && s.flaw != Flaw::IgnoreMcpMethod
    {
        return (
            StatusCode::BAD_REQUEST,
            "Mcp-Method does not match the body",
        )
            .into_response();
    }
    if let Some(n) = h("mcp-name")
        && msg["params"]["name"].as_str() != Some(n)
        && s.flaw != Flaw::IgnoreMcpName
    {
        return (StatusCode::BAD_REQUEST, "Mcp-Name does not match the body").into_response();
    }
    if method == "initialize" {
        let chosen = h("mcp-session-id").filter(|_| s.flaw == Flaw::AdoptsClientSessionId);
        let id = if let Some(c) = chosen {
            c.to_owned()
        } else if s.flaw == Flaw::SequentialSessionIds {
            format!("session-{:010}", rand_id())
        } else {
            random_hex()
        };
        s.sessions.lock().unwrap().insert(id.clone(), subject);
        return (
            [("mcp-session-id", id)],
            axum::Json(json!({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "broken", "version": "1"}}})),
        )
            .into_response();
    }
    if let Some(id) = sid {
        let owner = s.sessions.lock().unwrap().get(&id).cloned();
        if owner.is_none()
            || owner.as_deref() != Some(subject.as_str()) && s.flaw != Flaw::SessionAnyUser
        {
            return StatusCode::NOT_FOUND.into_response();
        }
    }
    // One tool needs more than the baseline scope (every token here has `mcp:basic` only).
    if method == "tools/call" && msg["params"]["name"] == "admin_reset" {
        return match s.flaw {
            Flaw::ScopeNotChecked => axum::Json(json!({"jsonrpc": "2.0", "id": msg["id"],
                "result": {"content": [{"type": "text", "text": "reset"}]}}))
            .into_response(),
            Flaw::ScopeUnauthorized => challenge(&s, Some("invalid_token")),
            Flaw::ScopeWithoutScopeParam => (
                StatusCode::FORBIDDEN,
                [("www-authenticate", "Bearer error=\"insufficient_scope\"")],
            )
                .into_response(),
            _ => (
                StatusCode::FORBIDDEN,
                [(
                    "www-authenticate",
                    format!(
                        "Bearer error=\"insufficient_scope\", scope=\"mcp:basic mcp:admin\", resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                        s.origin
                    ),
                )],
            )
                .into_response(),
        };
    }
    axum::Json(json!({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": []}})).into_response()
}

/// GET opens the session's event stream (empty here: it ends at once).
async fn stream(State(s): State<Arc<Srv>>, headers: HeaderMap) -> Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let sse = || ([("content-type", "text/event-stream")], "").into_response();
    if s.flaw == Flaw::UnguardedStream {
        return sse();
    }
    if s.flaw == Flaw::LandingPageOnGet {
        return axum::response::Html("<!doctype html><title>MCP</title><p>An MCP endpoint.")
            .into_response();
    }
    let owner = h("mcp-session-id").and_then(|id| s.sessions.lock().unwrap().get(id).cloned());
    let subject = match h("authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        Some(t) => match validate(&s, t) {
            Some(sub) => sub,
            None => return challenge(&s, Some("invalid_token")),
        },
        None if s.flaw == Flaw::SessionAloneStream && owner.is_some() => return sse(),
        None => return challenge(&s, None),
    };
    match owner {
        Some(o) if o == subject => sse(),
        Some(_) => StatusCode::NOT_FOUND.into_response(),
        None => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// DELETE ends a session (its owner's token required).
async fn end_session(State(s): State<Arc<Srv>>, headers: HeaderMap) -> StatusCode {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let subject = h("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| validate(&s, t));
    let mut sessions = s.sessions.lock().unwrap();
    match h("mcp-session-id") {
        Some(id) if subject.is_some() && sessions.get(id) == subject.as_ref() => {
            sessions.remove(id);
            StatusCode::NO_CONTENT
        }
        _ => StatusCode::NOT_FOUND,
    }
}

/// 128 random bits as hex (a session id as it should be).
fn random_hex() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::SeqCst)
}

async fn preflight(State(s): State<Arc<Srv>>, headers: HeaderMap) -> Response {
    let origin = headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if s.flaw == Flaw::ReflectCors {
        return (
            StatusCode::NO_CONTENT,
            [
                ("access-control-allow-origin", origin),
                ("access-control-allow-methods", "POST".to_owned()),
            ],
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

struct Running {
    srv: Arc<Srv>,
    url: String,
    key: TestKey,
    issuer: String,
}

async fn start(flaw: Flaw) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let origin = format!("http://127.0.0.1:{port}");
    let resource = format!("{origin}/mcp");
    let issuer = format!("{origin}/as");
    let key = TestKey::es256("k1");
    let decoding = DecodingKey::from_jwk(&key.jwk).expect("jwk");
    let pem = {
        use base64::Engine;
        let j = serde_json::to_value(&key.jwk).expect("jwk json");
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // SubjectPublicKeyInfo of a P-256 key: the fixed prefix, then the point.
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        der.extend(b.decode(j["x"].as_str().expect("x")).expect("x"));
        der.extend(b.decode(j["y"].as_str().expect("y")).expect("y"));
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    };
    let jwks = json!({"keys": [serde_json::to_value(&key.jwk).expect("jwk")]});
    let srv = Arc::new(Srv {
        flaw,
        origin: origin.clone(),
        resource: resource.clone(),
        issuer: issuer.clone(),
        key: decoding,
        pem,
        sessions: Mutex::default(),
        clients: Mutex::default(),
        signer: key.clone(),
        codes: Mutex::default(),
        refresh: Mutex::default(),
        opaque: Mutex::default(),
        consented: Mutex::default(),
    });
    let prm = json!({
        "resource": if flaw == Flaw::WrongResource { format!("{resource}/") } else { resource.clone() },
        "authorization_servers": [issuer],
        "scopes_supported": ["mcp:basic"],
        "bearer_methods_supported": ["header"],
    });
    let mut meta = json!({
        "issuer": if flaw == Flaw::AsWrongIssuer { format!("{issuer}/") } else { issuer.clone() },
        "authorization_endpoint": if flaw == Flaw::AsHttpEndpoint { "http://auth.example.com/authorize".to_owned() } else { format!("{issuer}/authorize") },
        "token_endpoint": format!("{issuer}/token"),
        "registration_endpoint": format!("{issuer}/register"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported":
            if flaw == Flaw::AsJwtAlgNone { json!(["ES256", "none"]) } else { json!(["ES256"]) },
        "jwks_uri": format!("{origin}/as/jwks"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    });
    if flaw == Flaw::AsNoPkce {
        meta.as_object_mut()
            .expect("object")
            .remove("code_challenge_methods_supported");
    }
    if flaw == Flaw::AsNoIss {
        meta.as_object_mut()
            .expect("object")
            .remove("authorization_response_iss_parameter_supported");
    }
    let mut app = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::post(mcp)
                .get(stream)
                .options(preflight)
                .delete(end_session),
        )
        .route("/as/register", axum::routing::post(register))
        .route("/as/authorize", axum::routing::get(authorize))
        .route("/as/token", axum::routing::post(token))
        .route("/as/introspect", axum::routing::post(introspect))
        .route(
            "/as/jwks",
            axum::routing::get(move || {
                let k = jwks.clone();
                async move { axum::Json(k) }
            }),
        )
        .route(
            "/.well-known/oauth-authorization-server/as",
            axum::routing::get(move || {
                let m = meta.clone();
                async move { axum::Json(m) }
            }),
        );
    if flaw != Flaw::NoPrm {
        app = app.route(
            if flaw == Flaw::PrmOnlyInChallenge {
                "/meta/prm"
            } else {
                "/.well-known/oauth-protected-resource/mcp"
            },
            axum::routing::get(move || {
                let p = prm.clone();
                async move { axum::Json(p) }
            }),
        );
    }
    let app = app.with_state(srv.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Running {
        srv,
        url: resource,
        key,
        issuer,
    }
}

fn now() -> i64 {
    gatehouse_testkit::now()
}

fn claims(r: &Running, aud: &str, exp: i64) -> Value {
    claims_of(r, "alice", aud, exp)
}

fn claims_of(r: &Running, sub: &str, aud: &str, exp: i64) -> Value {
    json!({"iss": r.issuer, "sub": sub, "aud": aud, "scope": "mcp:basic",
        "client_id": "c", "iat": now() - 10, "exp": exp, "jti": format!("j{}", rand_id())})
}

/// A run against the correct server: how many MCP sessions it left open.
async fn check_sessions_left() -> (usize, gatehouse_check::Report) {
    let r = start(Flaw::None).await;
    let report = gatehouse_check::run(&options(&r)).await.expect("report");
    let left = r.srv.sessions.lock().unwrap().len();
    (left, report)
}

fn options(r: &Running) -> Options {
    Options {
        target: r.url.clone(),
        allow_private: true,
        token: Some(SecretString::new(r.key.sign(&claims(
            r,
            &r.url,
            now() + 300,
        )))),
        foreign_token: Some(SecretString::new(r.key.sign(&claims(
            r,
            "https://other.example.com/mcp",
            now() + 300,
        )))),
        expired_token: Some(SecretString::new(r.key.sign(&claims(
            r,
            &r.url,
            now() - 600,
        )))),
        other_user_token: Some(SecretString::new(r.key.sign(&claims_of(
            r,
            "bob",
            &r.url,
            now() + 300,
        )))),
        scope_tool: Some("admin_reset".into()),
        authorization_server: true,
        login: true,
        device: false,
        browser: Some(gatehouse_client::opener::Opener::Headless),
    }
}

async fn check(flaw: Flaw) -> (BTreeSet<&'static str>, gatehouse_check::Report) {
    let r = start(flaw).await;
    let opts = options(&r);
    let report = gatehouse_check::run(&opts).await.expect("report");
    let failed = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.id)
        .collect();
    (failed, report)
}

/// A correct server passes every check (nothing skipped: every token was given).
#[tokio::test]
async fn ck1_a_correct_server_passes_everything() {
    let (failed, report) = check(Flaw::None).await;
    assert!(
        failed.is_empty(),
        "{}",
        gatehouse_check::render_human(&report)
    );
    let skipped: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Skip)
        .map(|c| c.id)
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(report.grade, "A");
    // The sessions the checker opened, it ended (DELETE).
    let (sessions_left, _) = check_sessions_left().await;
    assert_eq!(sessions_left, 0, "sessions the checker left open");
    for id in [
        "PRM-RESOURCE",
        "CHALLENGE",
        "AUDIENCE",
        "ALG-NONE",
        "QUERY-TOKEN",
        "SESSION-AUTH",
        "ORIGIN",
        "EXPIRED",
    ] {
        assert!(report.checks.iter().any(|c| c.id == id), "{id} exists");
    }
    // No token ever appears in any output.
    let r = start(Flaw::None).await;
    let token = r.key.sign(&claims(&r, &r.url, now() + 300));
    let opts = Options {
        target: r.url.clone(),
        allow_private: true,
        token: Some(SecretString::new(token.clone())),
        ..Default::default()
    };
    let report = gatehouse_check::run(&opts).await.expect("report");
    for text in [
        format!("{opts:?}"),
        gatehouse_check::render_human(&report),
        gatehouse_check::render_json(&report),
        gatehouse_check::render_sarif(&report),
    ] {
        assert!(!text.contains(&token), "a token in the report");
        assert!(!text.contains(token.split('.').nth(2).expect("sig")));
    }
}

/// Each flaw is flagged by its check, and nothing else fails.
#[tokio::test]
async fn ck1_each_broken_server_is_flagged_for_its_flaw_and_nothing_else() {
    let cases: &[(Flaw, &[&str])] = &[
        (Flaw::NoAuth, &["AUTH-REQUIRED", "CHALLENGE"]),
        (Flaw::AnyAudience, &["AUDIENCE"]),
        (Flaw::AlgNone, &["ALG-NONE"]),
        (Flaw::QueryToken, &["QUERY-TOKEN"]),
        (Flaw::NoPrm, &["PRM-WELLKNOWN", "PRM-RESOURCE", "PRM-AS"]),
        (Flaw::WrongResource, &["PRM-RESOURCE"]),
        (Flaw::NoOriginCheck, &["ORIGIN"]),
        (Flaw::SessionAlone, &["SESSION-AUTH"]),
        (Flaw::NoResourceMetadata, &["CHALLENGE"]),
        (Flaw::AcceptExpired, &["EXPIRED"]),
        (
            Flaw::NoSignatureCheck,
            &["TAMPERED", "SIGNATURE", "EMBEDDED-KEY"],
        ),
        (Flaw::TrustEmbeddedJwk, &["EMBEDDED-KEY"]),
        (Flaw::BadTokenForbidden, &["INVALID-TOKEN"]),
        (Flaw::SequentialSessionIds, &["SESSION-ID"]),
        (Flaw::SessionAnyUser, &["SESSION-USER"]),
        (Flaw::ScopeNotChecked, &["INSUFFICIENT-SCOPE"]),
        (Flaw::ScopeUnauthorized, &["INSUFFICIENT-SCOPE"]),
        (Flaw::ScopeWithoutScopeParam, &["INSUFFICIENT-SCOPE"]),
        (Flaw::ReflectCors, &["CORS"]),
        (Flaw::ErrorWithoutToken, &["CHALLENGE-NO-ERROR"]),
        (Flaw::NoScopeInChallenge, &["CHALLENGE-SCOPE"]),
        (Flaw::IgnoreMcpMethod, &["MCP-METHOD"]),
        (Flaw::AsNoPkce, &["AS-PKCE"]),
        (Flaw::AsWrongIssuer, &["AS-METADATA"]),
        (Flaw::AsNoIss, &["AS-ISS"]),
        (Flaw::AsHttpEndpoint, &["AS-ENDPOINTS-HTTPS"]),
        (Flaw::AlgConfusion, &["ALG-CONFUSION"]),
        (Flaw::NoHostCheck, &["HOST"]),
        (Flaw::AsNoPkceRequired, &["AS-PKCE-REQUIRED"]),
        (Flaw::AsPlainAccepted, &["AS-PKCE-PLAIN"]),
        (Flaw::AsRedirectPrefix, &["AS-REDIRECT-EXACT"]),
        (Flaw::AsErrorRedirect, &["AS-ERROR-REDIRECT"]),
        (Flaw::AsDcrMachine, &["AS-DCR-MACHINE"]),
        (Flaw::PrmOnlyInChallenge, &[]),
        (Flaw::AsCodeReusable, &["AS-CODE-REUSE"]),
        (Flaw::AsRefreshNoRotation, &["AS-REFRESH-ROTATION"]),
        (Flaw::AsRefreshReuseAccepted, &["AS-REFRESH-REUSE"]),
        (Flaw::AsTokenWrongAudience, &["AS-TOKEN-AUDIENCE"]),
        (Flaw::AsOpaqueWrongAudience, &["AS-TOKEN-AUDIENCE"]),
        (Flaw::IgnoreMcpName, &["MCP-NAME"]),
        (Flaw::AsJwtAlgNone, &["AS-AUTH-ALGS"]),
        (Flaw::AsFramable, &["AS-FRAMING"]),
        (Flaw::AsTokenCacheable, &["AS-TOKEN-NO-STORE"]),
        (Flaw::UnguardedStream, &["AUTH-REQUIRED", "SESSION-AUTH"]),
        (Flaw::SessionAloneStream, &["SESSION-AUTH"]),
        (Flaw::AdoptsClientSessionId, &["SESSION-ID"]),
        (Flaw::LandingPageOnGet, &[]),
    ];
    let mut wrong = Vec::new();
    for (flaw, expected) in cases {
        let (failed, report) = check(*flaw).await;
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        if failed != expected {
            wrong.push(format!(
                "{flaw:?}: expected {expected:?}, failed {failed:?}\n{}",
                gatehouse_check::render_human(&report)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Grades and `--fail-on`: the worst failure decides.
#[tokio::test]
async fn ck1_grades_follow_the_worst_failure() {
    assert_eq!(check(Flaw::AlgNone).await.1.grade, "F");
    assert_eq!(check(Flaw::QueryToken).await.1.grade, "D");
    let (_, r) = check(Flaw::AsNoIss).await;
    assert_eq!(r.grade, "C");
    assert!(!r.fails_at(gatehouse_check::Severity::High));
    assert!(r.fails_at(gatehouse_check::Severity::Medium));
    assert_eq!(check(Flaw::NoScopeInChallenge).await.1.grade, "B");
}

/// Loopback targets need --allow-private.
#[tokio::test]
async fn ck1_private_targets_need_allow_private() {
    let r = start(Flaw::None).await;
    let e = gatehouse_check::run(&Options {
        target: r.url.clone(),
        ..Default::default()
    })
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("--allow-private"), "{e}");
}
