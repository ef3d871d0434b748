//! Stages 5 and 6: the credentials that go upstream, and the upstream request itself.
//!
//! T3 (no token passthrough) is a property of [`UpstreamRequest`]: its headers are the
//! [`FORWARDED`] allow-list of the caller's request plus [`Credentials`], and nothing else; its
//! body is the [`Permit`]'s, so only messages that passed screening can reach the upstream.
use crate::authorize::Permit;
use crate::error::GatewayError;
use crate::spec::ExchangeSpec;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Request headers that travel upstream (the session id is mapped per hop, GW-11).
/// Everything else stays here: `Authorization` and cookies above all, and hop-by-hop headers.
pub const FORWARDED: [&str; 8] = [
    "content-type",
    "accept",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    // Set by the proxy for this hop (`trace::Trace::apply`), never the caller's as sent.
    "traceparent",
    "tracestate",
];

/// Response headers that travel back (the session id is mapped per hop).
pub const RETURNED: [&str; 3] = ["content-type", "cache-control", "mcp-protocol-version"];

/// The headers of `from` named in `names`.
pub fn pick(from: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for n in names {
        for v in from.get_all(*n) {
            if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                out.append(name, v.clone());
            }
        }
    }
    out
}

/// What authenticates the gateway (or the user, GW-09) to one upstream for one call: the
/// configured headers and at most one bearer token the gateway obtained itself.
#[derive(Clone, Default)]
pub struct Credentials {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Credentials {
    /// The configured headers, for a call the permit allows.
    pub fn configured(_: &Permit, headers: &[(HeaderName, HeaderValue)]) -> Self {
        Self {
            headers: headers.to_vec(),
        }
    }

    /// Adds the signed `Gatehouse-Identity` header (GW-A2): who calls, and the verified chain
    /// of actors they call through, for an upstream that cannot exchange tokens.
    pub fn with_identity(
        mut self,
        spec: &crate::spec::IdentitySpec,
        p: &gatehouse_tokens::Principal,
    ) -> Result<Self, GatewayError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut claims = serde_json::json!({
            "iss": spec.issuer,
            "aud": spec.audience,
            "sub": p.subject,
            "user_iss": p.issuer,
            "client_id": p.client_id,
            "scope": p.scopes.to_string(),
            "iat": now,
            "exp": now + 60,
            "jti": gatehouse_core::random_id(),
        });
        if let Some(act) = p.claims.get("act") {
            claims["act"] = act.clone();
        }
        if let Some(t) = &p.tenant {
            claims["tenant"] = t.as_str().into();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some("gatehouse-identity+jwt".into());
        let jwt = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(spec.secret.expose().as_bytes()),
        )
        .map_err(|e| GatewayError::CredentialRefused(format!("identity header: {e}")))?;
        let mut v = HeaderValue::from_str(&jwt)
            .map_err(|_| GatewayError::CredentialRefused("identity header".into()))?;
        v.set_sensitive(true);
        self.headers
            .push((HeaderName::from_static("gatehouse-identity"), v));
        Ok(self)
    }

    /// Adds a bearer token obtained for this upstream (exchange or the user's grant).
    pub fn with_bearer(mut self, token: &str) -> Result<Self, GatewayError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| GatewayError::CredentialRefused("unusable upstream token".into()))?;
        v.set_sensitive(true);
        self.headers
            .retain(|(k, _)| k != http::header::AUTHORIZATION);
        self.headers.push((http::header::AUTHORIZATION, v));
        Ok(self)
    }
}

/// One request to an upstream, made only from a permit, the allow-listed headers and the
/// credentials.
pub struct UpstreamRequest {
    method: http::Method,
    url: url::Url,
    headers: HeaderMap,
    body: Bytes,
}

impl UpstreamRequest {
    /// `version` is the session's protocol version, sent when the caller left it out.
    pub fn new(
        permit: &Permit,
        method: &http::Method,
        url: &url::Url,
        inbound: &HeaderMap,
        credentials: &Credentials,
        version: Option<&HeaderValue>,
    ) -> Self {
        let mut headers = pick(inbound, &FORWARDED);
        if let Some(v) = version
            && !headers.contains_key("mcp-protocol-version")
        {
            headers.insert("mcp-protocol-version", v.clone());
        }
        for (k, v) in &credentials.headers {
            headers.insert(k.clone(), v.clone());
        }
        Self {
            method: method.clone(),
            url: url.clone(),
            headers,
            body: permit.body().clone(),
        }
    }

    /// Sends it, under the upstream's session id `sid` (ours never goes upstream).
    pub async fn send(
        &self,
        http: &reqwest::Client,
        sid: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut out = http
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(s) = sid {
            out = out.header("mcp-session-id", s);
        }
        out.body(self.body.clone()).send().await
    }

    /// Opens a new upstream session with the caller's original `initialize` (and the
    /// `initialized` notification), with this request's credentials; the new upstream id.
    pub async fn reinitialize(
        &self,
        http: &reqwest::Client,
        init: &Bytes,
        version: Option<&HeaderValue>,
    ) -> Result<String, GatewayError> {
        let request = |body: Bytes, sid: Option<&str>| {
            let mut out = http
                .post(self.url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json, text/event-stream");
            if let Some(v) = version {
                out = out.header("mcp-protocol-version", v.clone());
            }
            // The credentials: whatever is not from the caller's allow-list.
            for (k, v) in &self.headers {
                if !FORWARDED.contains(&k.as_str()) {
                    out = out.header(k.clone(), v.clone());
                }
            }
            if let Some(sid) = sid {
                out = out.header("mcp-session-id", sid);
            }
            out.body(body).send()
        };
        let upstream_err = |e: reqwest::Error| GatewayError::Upstream(e.to_string());
        let r = request(init.clone(), None).await.map_err(upstream_err)?;
        if !r.status().is_success() {
            return Err(GatewayError::Upstream(format!(
                "initialize answered {}",
                r.status()
            )));
        }
        let fresh = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                GatewayError::Upstream("no session id in the initialize answer".into())
            })?;
        // Read the answer to its end (an SSE answer closes after the result).
        let _ = r.bytes().await;
        let done = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        request(done, Some(&fresh)).await.map_err(upstream_err)?;
        Ok(fresh)
    }
}

/// RFC 8693 token exchange for one upstream: the caller's token becomes one whose audience is
/// the upstream (with `act` naming the gateway), cached by the caller token's hash until
/// shortly before it expires.
pub struct Exchanger {
    spec: ExchangeSpec,
    cache: Mutex<std::collections::HashMap<String, (String, Instant)>>,
}

/// Entries kept at most; expired ones are dropped first.
const EXCHANGE_CACHE_MAX: usize = 10_000;

impl Exchanger {
    pub fn new(spec: ExchangeSpec) -> Self {
        Self {
            spec,
            cache: Mutex::default(),
        }
    }

    /// The upstream token for the caller's `inbound` token.
    pub async fn token_for(
        &self,
        http: &reqwest::Client,
        inbound: &str,
    ) -> Result<String, GatewayError> {
        let key = gatehouse_core::sha256_hex(inbound);
        let now = Instant::now();
        if let Ok(c) = self.cache.lock()
            && let Some((t, until)) = c.get(&key)
            && *until > now
        {
            return Ok(t.clone());
        }
        let resp = http
            .post(&self.spec.token_endpoint)
            .basic_auth(&self.spec.client_id, Some(self.spec.client_secret.expose()))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", inbound),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("resource", self.spec.resource.as_str()),
            ])
            .send()
            .await
            .map_err(|e| GatewayError::Upstream(format!("token exchange failed: {e}")))?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        let Some(token) = v["access_token"].as_str().filter(|_| status.is_success()) else {
            let why = format!(
                "no credential for this upstream: the authorization server answered {}",
                v["error"]
                    .as_str()
                    .map_or("an error".to_owned(), crate::error::clip)
            );
            return Err(if status.is_client_error() {
                GatewayError::CredentialRefused(why)
            } else {
                GatewayError::Upstream(why)
            });
        };
        // Reused until 30 s before it expires (at least the next few seconds).
        let ttl = v["expires_in"]
            .as_u64()
            .unwrap_or(60)
            .saturating_sub(30)
            .max(5);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= EXCHANGE_CACHE_MAX {
                c.retain(|_, (_, until)| *until > now);
                if c.len() >= EXCHANGE_CACHE_MAX {
                    c.clear();
                }
            }
            c.insert(key, (token.to_owned(), now + Duration::from_secs(ttl)));
        }
        Ok(token.to_owned())
    }
}

/// The caller's bearer token (for an exchange; it never goes upstream itself).
pub fn inbound_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}
