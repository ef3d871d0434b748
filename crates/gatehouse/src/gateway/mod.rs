//! The gateway's proxy: a guarded path per upstream MCP server that
//! forwards Streamable HTTP requests, streams answers back unbuffered, and never passes the
//! caller's token on — the upstream sees only the headers configured for it (T3). Every request
//! leaves a hash-chained audit record.
use crate::config::UpstreamEntry;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use gatehouse_core::McpPeek;
use gatehouse_server::sha256_hex;
use gatehouse_tokens::Principal;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod audit;
mod limits;
mod stdio;

use audit::Audited;
#[cfg(test)]
pub(crate) use audit::verify_chain;
pub(crate) use audit::{Audit, RefusalAudit, audit_refusals};
pub(crate) use limits::RateLimits;
pub(crate) use stdio::StdioUpstream;

/// Whose a session, a grant or a budget is: the issuer and subject of the validated token
/// (never anything the client says), or `anonymous` on an anonymous route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) issuer: String,
    pub(crate) subject: String,
}

impl Owner {
    pub(crate) fn of(p: Option<&Principal>) -> Self {
        match p {
            Some(p) => Self {
                issuer: p.issuer.clone(),
                subject: p.subject.clone(),
            },
            None => Self {
                issuer: String::new(),
                subject: "anonymous".into(),
            },
        }
    }

    /// Issuer and subject in one string (rate-limit keys).
    pub(crate) fn id(&self) -> String {
        format!("{}\n{}", self.issuer, self.subject)
    }

    /// SHA-256 of [`Self::id`]: how the store keys a user.
    pub(crate) fn key(&self) -> String {
        sha256_hex(&self.id())
    }
}

/// The largest request body forwarded (the guard has read it already for per-tool scopes).
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;

/// Request headers that travel upstream (the session id is mapped per hop, GW-11).
/// Everything else stays here: `Authorization` and cookies above all, and hop-by-hop headers.
const FORWARDED: [&str; 6] = [
    "content-type",
    "accept",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
];

/// Response headers that travel back (the session id is mapped per hop).
const RETURNED: [&str; 3] = ["content-type", "cache-control", "mcp-protocol-version"];

/// The client for upstreams: no redirects (a redirect could carry the upstream credential
/// elsewhere), no connection-level timeout on bodies (SSE streams last).
pub(crate) fn upstream_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(UpstreamResolver))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .user_agent(concat!("gatehouse-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// GW-10: upstream host names may point at internal addresses (that is what upstreams are), but
/// never at link-local / cloud metadata, multicast or other odd ranges — checked on every
/// resolution, so a name that later re-points there (DNS rebinding) is refused too.
struct UpstreamResolver;

impl reqwest::dns::Resolve for UpstreamResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((a, why)) = addrs
                .iter()
                .find_map(|a| crate::config::upstream_ip_refused(a.ip()).map(|w| (a, w)))
            {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to {} ({why})", a.ip()).into();
                return Err(e);
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// One upstream.
#[derive(Clone)]
pub(crate) struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    name: String,
    /// The upstream's endpoint, parsed once (`None` for a stdio upstream).
    url: Option<reqwest::Url>,
    headers: Vec<(HeaderName, HeaderValue)>,
    http: reqwest::Client,
    audit: Option<Arc<Audit>>,
    metrics: ProxyMetrics,
    limits: Option<Arc<RateLimits>>,
    exchange: Option<Exchanger>,
    policy: Arc<gatehouse_policy::Engine>,
    /// GW-11: client-facing session ids ↔ the upstream's (HTTP upstreams).
    sessions: Sessions,
    /// For the 403 `insufficient_scope` challenge: this upstream's PRM and baseline scopes.
    prm_url: String,
    required: gatehouse_core::ScopeSet,
    connect: Option<Arc<crate::connect::Connect>>,
    stdio: Option<StdioUpstream>,
}

/// What [`Proxy::new`] shares across upstreams, and this upstream's own parts.
pub(crate) struct ProxyParts {
    pub(crate) http: reqwest::Client,
    pub(crate) audit: Option<Arc<Audit>>,
    pub(crate) limits: Option<Arc<RateLimits>>,
    pub(crate) default_token_endpoint: Option<String>,
    pub(crate) policy: Arc<gatehouse_policy::Engine>,
    pub(crate) prm_url: String,
    pub(crate) required: gatehouse_core::ScopeSet,
    /// GW-09: this upstream is called with each user's own token.
    pub(crate) connect: Option<Arc<crate::connect::Connect>>,
}

/// RFC 8693 token exchange for one upstream: the caller's token becomes one whose audience is
/// the upstream (with `act` naming the gateway), cached by the caller token's hash until shortly
/// before it expires.
struct Exchanger {
    endpoint: String,
    client_id: String,
    client_secret: String,
    resource: String,
    cache: Mutex<std::collections::HashMap<String, (String, Instant)>>,
}

/// Entries kept at most; expired ones are dropped first.
const EXCHANGE_CACHE_MAX: usize = 10_000;

impl Exchanger {
    async fn token_for(
        &self,
        http: &reqwest::Client,
        inbound: &str,
    ) -> Result<String, (StatusCode, String)> {
        let key = sha256_hex(inbound);
        let now = Instant::now();
        if let Ok(c) = self.cache.lock()
            && let Some((t, until)) = c.get(&key)
            && *until > now
        {
            return Ok(t.clone());
        }
        let resp = http
            .post(&self.endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
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
                ("resource", self.resource.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("token exchange failed: {e}"),
                )
            })?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        let Some(token) = v["access_token"].as_str().filter(|_| status.is_success()) else {
            let code = if status.is_client_error() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_GATEWAY
            };
            return Err((
                code,
                format!(
                    "no credential for this upstream: the authorization server answered {}",
                    v["error"].as_str().unwrap_or("an error")
                ),
            ));
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
            c.insert(
                key,
                (token.to_owned(), now + std::time::Duration::from_secs(ttl)),
            );
        }
        Ok(token.to_owned())
    }
}

impl Proxy {
    pub(crate) fn new(u: &UpstreamEntry, parts: ProxyParts) -> Result<Self, String> {
        let ProxyParts {
            http,
            audit,
            limits,
            default_token_endpoint,
            policy,
            prm_url,
            required,
            connect,
        } = parts;
        let exchange = u
            .token_exchange
            .as_ref()
            .map(|x| {
                Ok::<_, String>(Exchanger {
                    endpoint: x
                        .token_endpoint
                        .clone()
                        .or_else(|| default_token_endpoint.clone())
                        .ok_or_else(|| {
                            format!(
                                "gateway.upstreams.{}.token_exchange.token_endpoint is needed without the embedded authorization server",
                                u.name
                            )
                        })?,
                    client_id: x.client_id.0.clone(),
                    client_secret: x.client_secret.0.clone(),
                    resource: x.resource.clone().unwrap_or_else(|| u.url.clone()),
                    cache: Mutex::default(),
                })
            })
            .transpose()?;
        let headers = u
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("gateway.upstreams.{}: header {k:?}", u.name))?;
                let mut value = HeaderValue::from_str(&v.0)
                    .map_err(|_| format!("gateway.upstreams.{}: header {k:?} value", u.name))?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            inner: Arc::new(ProxyInner {
                name: u.name.clone(),
                url: match u.command {
                    Some(_) => None,
                    None => Some(reqwest::Url::parse(&u.url).map_err(|e| {
                        format!("gateway.upstreams.{}.url {:?}: {e}", u.name, u.url)
                    })?),
                },
                metrics: ProxyMetrics::new(&u.name),
                headers,
                http,
                audit,
                limits,
                exchange,
                policy,
                sessions: Sessions::default(),
                prm_url,
                required,
                connect,
                stdio: StdioUpstream::new(u),
            }),
        })
    }

    pub(crate) fn into_service(
        self,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |req: http::Request<Body>| {
            let p = self.clone();
            async move {
                let mut resp = p.forward(req).await;
                resp.extensions_mut().insert(Audited);
                Ok(resp)
            }
        })
    }

    pub(crate) async fn forward(&self, req: http::Request<Body>) -> Response {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        // Taken, not cloned: nothing after the proxy reads them.
        let principal = parts.extensions.remove::<Principal>();
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
            }
        };
        // The guard parsed the body already and left what it found; an anonymous upstream has
        // no guard, so it is parsed here (policies need it either way).
        let peek = match parts.extensions.remove::<McpPeek>() {
            Some(p) => Some(p),
            None if parts.method == http::Method::POST => {
                let version = parts
                    .headers
                    .get("mcp-protocol-version")
                    .and_then(|v| v.to_str().ok());
                let parsed = gatehouse_core::ProtocolVersion::from_header(version)
                    .and_then(|v| McpPeek::parse(&bytes, v));
                match parsed {
                    Ok(p) => Some(p),
                    Err(e) => {
                        return jsonrpc_error(
                            StatusCode::BAD_REQUEST,
                            &serde_json::Value::Null,
                            -32600,
                            &e.to_string(),
                        );
                    }
                }
            }
            None => None,
        };
        let (method, tool) = peek
            .as_ref()
            .and_then(|p| p.messages.first())
            .map(|m| (m.method.clone(), m.tool_name().map(str::to_owned)))
            .unwrap_or_default();
        let who = crate::authz::Who::of(principal.as_ref());

        let audit = |decision: Outcome, upstream_status: Option<u16>, extra: serde_json::Value| {
            self.inner.metrics.record(decision, started.elapsed());
            if let Some(a) = &self.inner.audit {
                a.record(&CallRecord {
                    time: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    subject: principal.as_ref().map(|p| p.subject.as_str()),
                    client: principal.as_ref().and_then(|p| p.client_id.as_deref()),
                    tenant: principal.as_ref().and_then(|p| p.tenant.as_deref()),
                    server: &self.inner.name,
                    http_method: parts.method.as_str(),
                    method: method.as_deref(),
                    tool: tool.as_deref(),
                    decision: decision.as_str(),
                    latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    upstream_status,
                    extra: extra.as_object(),
                });
            }
        };
        if let Some(limits) = &self.inner.limits {
            let key = who.owner.id();
            let tenant = principal.as_ref().and_then(|p| p.tenant.as_deref());
            if let Err((wait, hit)) = limits
                .check(&key, tenant, &self.inner.name, tool.as_deref())
                .await
            {
                audit(
                    Outcome::RateLimited,
                    None,
                    serde_json::json!({"limit": hit.as_str()}),
                );
                let id = peek
                    .as_ref()
                    .and_then(|p| p.messages.first())
                    .and_then(|m| m.id.clone())
                    .unwrap_or(serde_json::Value::Null);
                let body = jsonrpc_error_body(
                    &id,
                    SERVER_ERROR,
                    &format!("rate limit ({}) exceeded; retry in {wait} s", hit.as_str()),
                );
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(http::header::RETRY_AFTER, wait.to_string())],
                    axum::Json(body),
                )
                    .into_response();
            }
        }
        let policies = self.inner.policy.current();
        if let Some(peek) = &peek {
            match crate::authz::decide(&policies, &who, &self.inner.name, peek) {
                crate::authz::Verdict::Allow => {}
                crate::authz::Verdict::NeedScopes(needed) => {
                    audit(
                        Outcome::InsufficientScope,
                        None,
                        serde_json::json!({"needs": needed}),
                    );
                    return crate::authz::scope_response(
                        &self.inner.prm_url,
                        &self.inner.required,
                        &needed,
                    );
                }
                crate::authz::Verdict::Deny { policies, ids } => {
                    audit(
                        Outcome::Deny,
                        None,
                        serde_json::json!({"policies": policies}),
                    );
                    return crate::authz::denied_response(&policies, &ids, peek.batch);
                }
            }
        }
        // List answers are read whole and cut down to what the caller may use.
        let list = method
            .as_deref()
            .filter(|m| crate::authz::is_filtered_list(Some(m)));
        if let Some(stdio) = &self.inner.stdio {
            let (resp, status) = stdio
                .handle(&parts.method, &parts.headers, principal.as_ref(), &bytes)
                .await;
            audit(Outcome::Allow, status, serde_json::Value::Null);
            return match (list, status) {
                (Some(m), Some(200)) => {
                    crate::authz::filter_response(&policies, &who, &self.inner.name, m, resp).await
                }
                _ => resp,
            };
        }
        // T3: only the configured credentials go upstream; the caller's never do.
        let mut creds: Vec<(HeaderName, HeaderValue)> = self.inner.headers.clone();
        if let Some(x) = &self.inner.exchange {
            let inbound = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_owned())
                .unwrap_or_default();
            match x.token_for(&self.inner.http, &inbound).await {
                Ok(t) => {
                    if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                        v.set_sensitive(true);
                        creds.push((http::header::AUTHORIZATION, v));
                    }
                }
                Err((status, msg)) => {
                    audit(Outcome::CredentialRefused, None, serde_json::Value::Null);
                    return jsonrpc_error(status, &serde_json::Value::Null, SERVER_ERROR, &msg);
                }
            }
        }
        if let Some(c) = &self.inner.connect {
            let id = peek
                .as_ref()
                .and_then(|p| p.messages.first())
                .and_then(|m| m.id.clone())
                .unwrap_or(serde_json::Value::Null);
            match c.token_for(&who.owner, &self.inner.name).await {
                Ok(t) => {
                    if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                        v.set_sensitive(true);
                        creds.push((http::header::AUTHORIZATION, v));
                    }
                }
                Err(crate::connect::NoToken::Connect) => {
                    audit(Outcome::ConnectRequired, None, serde_json::Value::Null);
                    return crate::connect::elicit_response(c, &who.owner, &self.inner.name, id);
                }
                Err(crate::connect::NoToken::Failed(e)) => {
                    tracing::warn!(upstream = %self.inner.name, error = %e, "no upstream credential");
                    audit(Outcome::CredentialRefused, None, serde_json::Value::Null);
                    return jsonrpc_error(
                        StatusCode::BAD_GATEWAY,
                        &id,
                        SERVER_ERROR,
                        "no credential for this upstream",
                    );
                }
            }
        }
        // GW-11: the caller's session id is ours; the upstream's stays here.
        let client_sid = parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let session = match &client_sid {
            None => None,
            Some(c) => match self.inner.sessions.get(c, &who.owner) {
                Some(s) => Some(s),
                None => {
                    audit(Outcome::UnknownSession, Some(404), serde_json::Value::Null);
                    return jsonrpc_error(
                        StatusCode::NOT_FOUND,
                        &serde_json::Value::Null,
                        SERVER_ERROR,
                        "session not found",
                    );
                }
            },
        };
        let initialize = method.as_deref() == Some("initialize") && session.is_none();
        let Some(url) = &self.inner.url else {
            audit(Outcome::Misconfigured, None, serde_json::Value::Null);
            return jsonrpc_error(
                StatusCode::BAD_GATEWAY,
                &serde_json::Value::Null,
                -32603,
                "upstream has no URL",
            );
        };
        let forwarded = pick(&parts.headers, &FORWARDED);
        let send = |upstream_sid: Option<String>| {
            let mut out = self
                .inner
                .http
                .request(parts.method.clone(), url.clone())
                .headers(forwarded.clone());
            for (k, v) in &creds {
                out = out.header(k.clone(), v.clone());
            }
            if let Some(u) = upstream_sid {
                out = out.header("mcp-session-id", u);
            }
            out.body(bytes.clone()).send()
        };
        let mut result = send(session.as_ref().map(|s| s.upstream())).await;
        // The upstream forgot the session (restart, expiry): open a new one with the caller's
        // original initialize, then retry once. The caller keeps its session id.
        if let (Ok(r), Some(s)) = (&result, &session)
            && r.status() == StatusCode::NOT_FOUND
            && parts.method != http::Method::DELETE
        {
            match self.reinitialize(s, &creds).await {
                Ok(fresh) => {
                    tracing::info!(upstream = %self.inner.name, "upstream session lost; re-initialized");
                    result = send(Some(fresh)).await;
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.inner.name, error = %e, "upstream re-initialization failed");
                }
            }
        }
        if let (Some(c), Some(_), Ok(r)) = (&client_sid, &session, &result)
            && parts.method == http::Method::DELETE
            && (r.status().is_success() || r.status() == StatusCode::NOT_FOUND)
        {
            self.inner.sessions.remove(c);
        }
        if let (Some(c), Ok(r)) = (&self.inner.connect, &result)
            && r.status() == StatusCode::UNAUTHORIZED
        {
            // The upstream no longer takes the user's token (revoked, expired): connect again.
            c.forget(&who.owner, &self.inner.name).await;
            audit(Outcome::ConnectRequired, Some(401), serde_json::Value::Null);
            let id = peek
                .as_ref()
                .and_then(|p| p.messages.first())
                .and_then(|m| m.id.clone())
                .unwrap_or(serde_json::Value::Null);
            return crate::connect::elicit_response(c, &who.owner, &self.inner.name, id);
        }
        let (response, upstream_status) = match result {
            Ok(r) => {
                let status = r.status();
                let mut headers = pick(r.headers(), &RETURNED);
                let upstream_sid = r
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok());
                let shown = match (&client_sid, upstream_sid) {
                    (Some(c), _) => Some(c.clone()),
                    (None, Some(u)) if initialize => Some(self.inner.sessions.open(
                        u,
                        who.owner.clone(),
                        bytes.clone(),
                        parts.headers.get("mcp-protocol-version").cloned(),
                    )),
                    _ => None,
                };
                if let Some(v) = shown
                    .filter(|_| upstream_sid.is_some())
                    .and_then(|c| HeaderValue::from_str(&c).ok())
                {
                    headers.insert("mcp-session-id", v);
                }
                // A short JSON answer of known length is passed on whole (one write, with its
                // length); anything else — SSE above all — is streamed as it arrives.
                let whole = r.content_length().is_some_and(|n| n <= 64 * 1024)
                    && headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|c| c.starts_with("application/json"));
                let body = if whole {
                    match r.bytes().await {
                        Ok(b) => Body::from(b),
                        Err(e) => {
                            tracing::warn!(upstream = %self.inner.name, error = %e, "upstream answer cut off");
                            Body::empty()
                        }
                    }
                } else {
                    Body::from_stream(r.bytes_stream())
                };
                let mut resp = Response::new(body);
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                // List answers are cut down to what the caller may use (read whole: they are
                // short and end).
                if status.is_success() {
                    resp.headers_mut().insert(
                        HeaderName::from_static("x-accel-buffering"),
                        HeaderValue::from_static("no"),
                    );
                }
                let resp = match list.filter(|_| status.is_success()) {
                    Some(m) => {
                        crate::authz::filter_response(&policies, &who, &self.inner.name, m, resp)
                            .await
                    }
                    None => resp,
                };
                (resp, Some(status.as_u16()))
            }
            Err(e) => {
                tracing::warn!(upstream = %self.inner.name, error = %e, "upstream unreachable");
                (
                    jsonrpc_error(
                        StatusCode::BAD_GATEWAY,
                        &serde_json::Value::Null,
                        -32603,
                        &format!("upstream {} unreachable", self.inner.name),
                    ),
                    None,
                )
            }
        };
        audit(Outcome::Allow, upstream_status, serde_json::Value::Null);
        response
    }
}

/// One audit line for a request the proxy handled (never a token or a tool argument).
#[derive(serde::Serialize)]
struct CallRecord<'a> {
    time: String,
    subject: Option<&'a str>,
    client: Option<&'a str>,
    tenant: Option<&'a str>,
    server: &'a str,
    http_method: &'a str,
    method: Option<&'a str>,
    tool: Option<&'a str>,
    decision: &'static str,
    // Integers only: the chain is checked by re-serialising records, and floats do not
    // round-trip byte for byte.
    latency_us: u64,
    upstream_status: Option<u16>,
    /// What the decision adds (the refusing policies, the scopes needed, the limit hit).
    #[serde(flatten)]
    extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// What became of a call: the audit record's `decision` and the metrics' `decision` label.
#[derive(Clone, Copy)]
enum Outcome {
    Allow,
    Deny,
    InsufficientScope,
    RateLimited,
    CredentialRefused,
    ConnectRequired,
    UnknownSession,
    /// An HTTP upstream without a URL (the configuration check refuses these).
    Misconfigured,
}

impl Outcome {
    const ALL: [Self; 8] = [
        Self::Allow,
        Self::Deny,
        Self::InsufficientScope,
        Self::RateLimited,
        Self::CredentialRefused,
        Self::ConnectRequired,
        Self::UnknownSession,
        Self::Misconfigured,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::InsufficientScope => "insufficient_scope",
            Self::RateLimited => "rate_limited",
            Self::CredentialRefused => "credential_refused",
            Self::ConnectRequired => "connect_required",
            Self::UnknownSession => "unknown_session",
            Self::Misconfigured => "misconfigured",
        }
    }
}

/// The proxy's metrics handles, one per outcome, registered on first use (after the recorder
/// is installed): building labelled names and finding them in the registry cost more than the
/// increments.
struct ProxyMetrics {
    server: String,
    /// Indexed by `Outcome as usize`.
    outcomes: [std::sync::OnceLock<metrics::Counter>; Outcome::ALL.len()],
    latency: std::sync::OnceLock<metrics::Histogram>,
}

impl ProxyMetrics {
    fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            outcomes: Default::default(),
            latency: std::sync::OnceLock::new(),
        }
    }

    fn record(&self, outcome: Outcome, took: std::time::Duration) {
        if let Some(counter) = self.outcomes.get(outcome as usize) {
            counter
                .get_or_init(|| {
                    metrics::counter!("gatehouse_gateway_requests_total", "server" => self.server.clone(), "decision" => outcome.as_str())
                })
                .increment(1);
        }
        self.latency
            .get_or_init(|| {
                metrics::histogram!("gatehouse_gateway_request_seconds", "server" => self.server.clone())
            })
            .record(took.as_secs_f64());
    }
}

/// Generic server error (JSON-RPC implementation-defined range).
pub(crate) const SERVER_ERROR: i64 = -32000;

/// A JSON-RPC error object for `id`.
pub(crate) fn jsonrpc_error_body(
    id: &serde_json::Value,
    code: i64,
    message: &str,
) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The one way the gateway answers with a JSON-RPC error.
pub(crate) fn jsonrpc_error(
    status: StatusCode,
    id: &serde_json::Value,
    code: i64,
    message: &str,
) -> Response {
    (status, axum::Json(jsonrpc_error_body(id, code, message))).into_response()
}

fn pick(from: &HeaderMap, names: &[&str]) -> HeaderMap {
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

/// An SSE answer with `body` as its stream, marked for no buffering on the way.
pub(crate) fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

/// GW-11: sessions per hop. The caller sees an id of ours (128 random bits); the upstream's id
/// never leaves the gateway, so an upstream that loses its session can be re-initialized
/// without the caller noticing. Each session belongs to the user who opened it.
#[derive(Default)]
struct Sessions {
    map: Mutex<std::collections::HashMap<String, Arc<UpstreamSession>>>,
}

struct UpstreamSession {
    upstream: Mutex<String>,
    owner: Owner,
    /// The caller's `initialize`, replayed to open a new upstream session.
    init: bytes::Bytes,
    version: Option<HeaderValue>,
    last_used: Mutex<Instant>,
}

impl UpstreamSession {
    fn upstream(&self) -> String {
        self.upstream.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

/// Sessions idle this long are forgotten (the upstream has long dropped them too).
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Sessions {
    fn open(
        &self,
        upstream: &str,
        owner: Owner,
        init: bytes::Bytes,
        version: Option<HeaderValue>,
    ) -> String {
        let id = gatehouse_server::random_id();
        if let Ok(mut m) = self.map.lock() {
            if m.len() % 1024 == 1023 {
                m.retain(|_, s| s.last_used.lock().is_ok_and(|t| t.elapsed() < SESSION_IDLE));
            }
            m.insert(
                id.clone(),
                Arc::new(UpstreamSession {
                    upstream: Mutex::new(upstream.to_owned()),
                    owner,
                    init,
                    version,
                    last_used: Mutex::new(Instant::now()),
                }),
            );
        }
        id
    }

    /// The session, if it exists and belongs to `owner`.
    fn get(&self, id: &str, owner: &Owner) -> Option<Arc<UpstreamSession>> {
        let s = self.map.lock().ok()?.get(id).cloned()?;
        if s.owner != *owner {
            return None;
        }
        if let Ok(mut t) = s.last_used.lock() {
            *t = Instant::now();
        }
        Some(s)
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }
}

impl Proxy {
    /// Opens a new upstream session for `s` with the caller's original `initialize` (and the
    /// `initialized` notification); the new upstream id replaces the old one.
    async fn reinitialize(
        &self,
        s: &UpstreamSession,
        creds: &[(HeaderName, HeaderValue)],
    ) -> Result<String, String> {
        let url = self.inner.url.clone().ok_or("upstream has no URL")?;
        let request = |body: bytes::Bytes, sid: Option<&str>| {
            let mut out = self
                .inner
                .http
                .post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json, text/event-stream");
            if let Some(v) = &s.version {
                out = out.header("mcp-protocol-version", v.clone());
            }
            for (k, v) in creds {
                out = out.header(k.clone(), v.clone());
            }
            if let Some(sid) = sid {
                out = out.header("mcp-session-id", sid);
            }
            out.body(body).send()
        };
        let r = request(s.init.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("initialize answered {}", r.status()));
        }
        let fresh = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or("no session id in the initialize answer")?;
        // Read the answer to its end (an SSE answer closes after the result).
        let _ = r.bytes().await;
        let done =
            bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        request(done, Some(&fresh))
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(mut u) = s.upstream.lock() {
            *u = fresh.clone();
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::limits::LimitHit;
    use super::*;

    #[tokio::test]
    async fn gw10_upstream_names_never_resolve_to_metadata_addresses() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = |n: &str| reqwest::dns::Name::from_str(n).expect("name");
        let ok = UpstreamResolver
            .resolve(name("localhost"))
            .await
            .expect("loopback is a normal upstream");
        assert!(ok.into_iter().count() > 0);
        for bad in ["169.254.169.254", "224.0.0.1"] {
            let e = UpstreamResolver
                .resolve(name(bad))
                .await
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains("resolves to"), "{e}");
        }
    }

    #[tokio::test]
    async fn limits_per_tenant_and_per_tool_are_separate_budgets() {
        let c: crate::config::RateLimitConfig = yaml_serde::from_str(
            "{per_minute: 600, burst: 100, per_tenant: {per_minute: 60, burst: 3}, per_tool: {srv/slow: {per_minute: 60, burst: 2}, fast: {per_minute: 60, burst: 5}}}",
        )
        .expect("config");
        let l = RateLimits::new(&c).expect("limits");
        // A tenant's subjects share its budget of 3; another tenant and tenant-less callers don't.
        for who in ["a", "b", "c"] {
            assert!(l.check(who, Some("acme"), "srv", None).await.is_ok());
        }
        let (wait, hit) = l
            .check("d", Some("acme"), "srv", None)
            .await
            .expect_err("tenant");
        assert!(matches!(hit, LimitHit::Tenant) && wait >= 1);
        assert!(l.check("e", Some("globex"), "srv", None).await.is_ok());
        assert!(l.check("f", None, "srv", None).await.is_ok());
        // Per tool, per subject: `srv/slow` allows 2, the bare `fast` applies on every server.
        for _ in 0..2 {
            assert!(l.check("g", None, "srv", Some("slow")).await.is_ok());
        }
        let (_, hit) = l
            .check("g", None, "srv", Some("slow"))
            .await
            .expect_err("tool");
        assert!(matches!(hit, LimitHit::Tool));
        assert!(
            l.check("h", None, "srv", Some("slow")).await.is_ok(),
            "another subject"
        );
        assert!(
            l.check("g", None, "other", Some("slow")).await.is_ok(),
            "another server"
        );
        assert!(
            l.check("g", None, "srv", Some("quick")).await.is_ok(),
            "another tool"
        );
        for _ in 0..5 {
            assert!(l.check("i", None, "x", Some("fast")).await.is_ok());
        }
        assert!(
            l.check("i", None, "y", Some("fast")).await.is_err(),
            "bare name: all servers"
        );
    }

    #[test]
    fn gw07_session_ids_are_random_and_bound_to_their_owner() {
        let s = Sessions::default();
        let owner = |iss: &str, sub: &str| Owner {
            issuer: iss.into(),
            subject: sub.into(),
        };
        let alice = owner("iss", "alice");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = s.open("up", alice.clone(), bytes::Bytes::new(), None);
            // 128 random bits, base64url: visible ASCII only (MCP session id rule).
            assert_eq!(id.len(), 22);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert!(seen.insert(id), "collision");
        }
        let id = s.open("up", alice.clone(), bytes::Bytes::new(), None);
        assert!(s.get(&id, &alice).is_some());
        assert!(s.get(&id, &owner("iss", "bob")).is_none());
        assert!(s.get(&id, &owner("other-iss", "alice")).is_none());
        assert!(s.get(&id, &Owner::of(None)).is_none());
    }

    #[test]
    fn audit_chain_shows_tampering() {
        let path = std::env::temp_dir().join(format!("gh-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let p = path.display().to_string();
        let a = Audit::open(&p).expect("open");
        for i in 0..3 {
            a.record(&serde_json::json!({"n": i, "subject": "alice"}));
        }
        // The proxy's own record, with text to escape and the decision's extra fields flattened.
        let extra = serde_json::json!({"policies": ["no \"secrets\"\n"]});
        a.record(&CallRecord {
            time: "2026-11-27T00:00:00Z".into(),
            subject: Some("alice \u{1F600} \\ \""),
            client: None,
            tenant: Some("acme"),
            server: "everything",
            http_method: "POST",
            method: Some("tools/call"),
            tool: Some("echo"),
            decision: "deny",
            latency_us: 17,
            upstream_status: None,
            extra: extra.as_object(),
        });
        drop(a);
        // Reopening continues the chain.
        Audit::open(&p)
            .expect("reopen")
            .record(&serde_json::json!({"n": 3}));
        let log = std::fs::read_to_string(&path).expect("read");
        assert_eq!(log.lines().count(), 5);
        let deny: serde_json::Value =
            serde_json::from_str(log.lines().nth(3).expect("line")).expect("json");
        assert_eq!(deny["policies"][0], "no \"secrets\"\n");
        assert_eq!(deny["upstream_status"], serde_json::Value::Null);
        let keys: Vec<&str> = deny
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.last(), Some(&"hash"), "hash last, after prev");
        assert_eq!(verify_chain(&log), None);
        let tampered = log.replacen("alice", "mallory", 1);
        assert_eq!(verify_chain(&tampered), Some(0));
        let dropped: String = log.lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert_eq!(verify_chain(&dropped), Some(0));
        let _ = std::fs::remove_file(&path);
    }
}
