//! The proxy: one guarded route per upstream MCP server. It forwards Streamable HTTP
//! requests, streams answers back unbuffered, and never passes the caller's token on (T3).
//!
//! [`Proxy::forward`] runs these stages, in this order:
//! 1. **Who and what**: the [`Caller`] the guard validated, the body, and its parse.
//! 2. **Session** (local, before any network work): an unknown or someone else's session is 404
//!    (GW-07); the protocol version comes from the session when the header is missing, so a
//!    batch cannot pass in a session negotiated at a version without batches (T22).
//! 3. **Screening** of every message on its own ([`authorize::screen`]): size, known method,
//!    unique id, policies. Scopes alone standing in the way → one 403 challenge (RS-08).
//! 4. **Limits** per message still cleared, after authorization, so refused calls spend no
//!    budget; `initialize` and `notifications/initialized` are not charged.
//! 5. **Credentials** for the [`Permit`]: configured headers, an exchanged token, or the
//!    user's own grant (GW-09); a missing grant is a URL elicitation.
//! 6. **The upstream request**, built only from the permit ([`UpstreamRequest`]); one
//!    re-initialize when the upstream lost its session (GW-11).
//! 7. **The answer**: session ids mapped per hop, list answers filtered by request id, the
//!    refused messages' errors merged in.
//! 8. **Audit**: one hash-chained record per message, whatever became of it.
use crate::answer::{
    merge_refusals, negotiated_version, read_capped, refusals_only, requested_version,
};
use crate::audit::{Audit, Audited, CallRecord, ProxyMetrics, clip, now_rfc3339};
use crate::authorize::{self, Caller, Permit, Refusal};
use crate::connect::{Connect, NoToken, elicit_response};
use crate::error::{GatewayError, Outcome};
use crate::limits::RateLimits;
use crate::sessions::{Owner, SessionTable, TableLimits, WhenOwnerFull};
use crate::spec::{MessageLimits, Transport, UpstreamName, UpstreamSpec, UpstreamToken};
use crate::stdio::StdioUpstream;
use crate::upstream::{Credentials, Exchanger, RETURNED, UpstreamRequest, inbound_bearer, pick};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::jsonrpc::{MessageKind, PeekedMessage};
use gatehouse_core::{McpPeek, ProtocolVersion, ScopeSet};
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The largest request body forwarded (the guard has read it already for per-tool scopes).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

use crate::answer::MAX_READ;

/// Sessions per hop: many per user (agents open them freely; the oldest goes), bounded in all.
/// The upstream session map's bounds when the embedder sets none: the guard in front counts
/// and refuses first; this keeps the map bounded even behind another front.
pub const DEFAULT_SESSIONS: TableLimits = TableLimits {
    total: 10_000,
    per_owner: 64,
    idle: std::time::Duration::from_secs(30 * 60),
    when_owner_full: WhenOwnerFull::EvictOldest,
};

/// One upstream.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    name: UpstreamName,
    target: Target,
    http: reqwest::Client,
    audit: Option<Arc<Audit>>,
    metrics: ProxyMetrics,
    limits: Option<Arc<RateLimits>>,
    policy: Arc<gatehouse_policy::Engine>,
    /// GW-11: client-facing session ids ↔ the upstream's (HTTP upstreams).
    sessions: HttpSessions,
    /// For the 403 `insufficient_scope` challenge: this upstream's PRM and baseline scopes.
    prm_url: String,
    required: ScopeSet,
    messages: MessageLimits,
}

enum Target {
    Http {
        url: url::Url,
        headers: Vec<(HeaderName, HeaderValue)>,
        token: TokenSource,
        identity: Option<crate::spec::IdentitySpec>,
    },
    Stdio(StdioUpstream),
}

enum TokenSource {
    None,
    Exchange(Exchanger),
    User(Arc<Connect>),
}

/// What the proxies share, built by the binary.
#[derive(Clone)]
pub struct ProxyDeps {
    pub http: reqwest::Client,
    pub audit: Option<Arc<Audit>>,
    pub limits: Option<Arc<RateLimits>>,
    pub policy: Arc<gatehouse_policy::Engine>,
    /// GW-09: per-user grants, for upstreams with `user_oauth`.
    pub connect: Option<Arc<Connect>>,
    pub messages: MessageLimits,
    pub required: ScopeSet,
    /// Bounds of each upstream's session map (and the aggregate's): set them to the guard's.
    pub sessions: TableLimits,
    /// Redis shared by replicas: HTTP upstream sessions live there instead of in this process
    /// (issue 16), so any replica carries on any session.
    pub shared: Option<crate::shared::SharedState>,
}

/// Where an HTTP upstream's sessions live.
enum HttpSessions {
    Local(SessionTable<UpstreamSession>),
    Shared(crate::shared::SharedSessions),
}

impl HttpSessions {
    async fn get(
        &self,
        id: &str,
        owner: &Owner,
    ) -> Result<Option<Arc<UpstreamSession>>, GatewayError> {
        match self {
            Self::Local(t) => Ok(t.get(id, owner)),
            Self::Shared(s) => Ok(s.get(id, owner).await?.map(|r| {
                Arc::new(UpstreamSession {
                    upstream: Mutex::new(r.upstream),
                    init: r.init,
                    version: r.version.and_then(|v| HeaderValue::from_str(&v).ok()),
                })
            })),
        }
    }

    async fn open(&self, owner: &Owner, s: UpstreamSession) -> Result<String, GatewayError> {
        match self {
            Self::Local(t) => t
                .open(owner, s)
                .map(|(id, _)| id)
                .map_err(|_| GatewayError::TooManySessions),
            Self::Shared(m) => {
                let upstream = s.upstream();
                m.open(
                    owner,
                    &crate::shared::Record {
                        upstream,
                        init: s.init,
                        version: s
                            .version
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    },
                )
                .await
            }
        }
    }

    /// The upstream opened a new session for the caller's (the old one was lost).
    async fn replaced(&self, id: &str, s: &UpstreamSession, fresh: &str) {
        if let Ok(mut u) = s.upstream.lock() {
            fresh.clone_into(&mut u);
        }
        if let Self::Shared(m) = self
            && let Err(e) = m.set_upstream(id, fresh).await
        {
            // The next request re-initializes again: slower, nothing lost.
            tracing::warn!(error = %e, "could not record the new upstream session");
        }
    }

    async fn remove(&self, id: &str, owner: &Owner) {
        match self {
            Self::Local(t) => {
                t.remove(id, owner);
            }
            Self::Shared(m) => {
                // Left to expire when idle if Redis is away.
                let _ = m.remove(id, owner).await;
            }
        }
    }
}

/// One session with an HTTP upstream, as the caller sees it.
struct UpstreamSession {
    upstream: Mutex<String>,
    /// The caller's `initialize`, replayed to open a new upstream session.
    init: Bytes,
    /// The version negotiated in `initialize`.
    version: Option<HeaderValue>,
}

impl UpstreamSession {
    fn upstream(&self) -> String {
        self.upstream.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

/// Where stage 2 found the caller.
enum Session {
    None,
    Http(Arc<UpstreamSession>),
    Stdio,
}

impl Session {
    fn version(&self) -> Option<&HeaderValue> {
        match self {
            Self::Http(s) => s.version.as_ref(),
            _ => None,
        }
    }
}

impl Proxy {
    /// The proxy for one upstream. A user-OAuth upstream without `deps.connect` is refused by
    /// the plan before this is called; here it has no token and its calls fail upstream.
    pub fn new(spec: UpstreamSpec, deps: &ProxyDeps) -> Self {
        let target = match spec.transport {
            Transport::Stdio(s) => Target::Stdio(StdioUpstream::new(s)),
            Transport::Http { url, credentials } => Target::Http {
                url,
                headers: credentials.headers,
                identity: credentials.identity,
                token: match credentials.token {
                    UpstreamToken::None => TokenSource::None,
                    UpstreamToken::Exchange(x) => TokenSource::Exchange(Exchanger::new(x)),
                    UpstreamToken::UserOAuth(_) => deps
                        .connect
                        .clone()
                        .filter(|c| c.serves(spec.name.as_str()))
                        .map_or(TokenSource::None, TokenSource::User),
                },
            },
        };
        let shared_ns = spec.name.as_str().to_owned();
        Self {
            inner: Arc::new(ProxyInner {
                metrics: ProxyMetrics::new(spec.name.as_str()),
                name: spec.name,
                target,
                http: deps.http.clone(),
                audit: deps.audit.clone(),
                limits: deps.limits.clone(),
                policy: deps.policy.clone(),
                sessions: match &deps.shared {
                    Some(state) => HttpSessions::Shared(crate::shared::SharedSessions::new(
                        state,
                        &shared_ns,
                        deps.sessions.idle,
                    )),
                    None => HttpSessions::Local(SessionTable::new(deps.sessions)),
                },
                prm_url: spec.resource.prm_url(),
                required: deps.required.clone(),
                messages: deps.messages,
            }),
        }
    }

    pub fn name(&self) -> &UpstreamName {
        &self.inner.name
    }

    pub fn into_service(
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

    /// The stages of the module docs, one call each.
    pub async fn forward(&self, req: http::Request<Body>) -> Response {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        // 1. Who asks (taken, not cloned: nothing after the proxy reads it), and the body.
        let caller = Caller::take(&mut parts.extensions);
        let given_peek = parts.extensions.remove::<McpPeek>();
        let trace = crate::trace::Trace::from_headers(&parts.headers);
        trace.apply(&mut parts.headers);
        let log = Log {
            proxy: self,
            caller: &caller,
            http_method: parts.method.as_str(),
            started,
            trace_id: trace.trace_id(),
        };
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
            return GatewayError::TooLarge(MAX_BODY).into_response(&Value::Null);
        };
        // 2. The session: a local 404 before anything is decided, spent or fetched.
        let owner = caller.owner();
        let session = match self.session(&parts.headers, &owner).await {
            Ok(s) => s,
            Err(e) => {
                log.whole(&e, None);
                return e.into_response(&Value::Null);
            }
        };
        if parts.method != http::Method::POST {
            return self
                .send(&log, &Permit::stream(&caller), &parts, &session, None)
                .await;
        }
        let peek = match self.peek(&parts.headers, given_peek, &bytes, &session) {
            Ok(p) => p,
            Err(e) => {
                log.whole(&e, None);
                return e.into_response(&Value::Null);
            }
        };
        // 3. Every message screened on its own.
        let policies = self.inner.policy.current();
        let span = tracing::debug_span!(
            "policy.evaluate",
            otel.kind = "internal",
            messages = peek.messages.len(),
            cleared = tracing::field::Empty,
        );
        let mut screened = span.in_scope(|| {
            authorize::screen(
                &policies,
                &caller,
                self.inner.name.as_str(),
                &peek,
                &self.inner.messages,
            )
        });
        span.record("cleared", screened.cleared().len());
        drop(span);
        if let Some(needs) = screened.needs_scopes() {
            let extra = serde_json::json!({ "needs": needs });
            for m in &peek.messages {
                log.message(&peek, m, Outcome::InsufficientScope, None, &extra);
            }
            return authorize::scope_response(&self.inner.prm_url, &self.inner.required, needs);
        }
        // 4. Limits, per message cleared: refused calls never spent anything.
        if let Some(limits) = &self.inner.limits {
            for index in screened.cleared().to_vec() {
                let Some(m) = peek.messages.get(index).filter(|m| charged(m)) else {
                    continue;
                };
                if let Err((held, hit)) = limits
                    .check(
                        &owner,
                        caller.tenant(),
                        self.inner.name.as_str(),
                        m.tool_name(),
                    )
                    .await
                {
                    let id = (m.kind == MessageKind::Request)
                        .then(|| m.id.clone().unwrap_or(Value::Null));
                    let error = match held {
                        crate::limits::Held::For(retry_after) => GatewayError::RateLimited {
                            limit: hit.as_str(),
                            retry_after,
                        },
                        crate::limits::Held::StoreDown => GatewayError::Unavailable,
                    };
                    screened.refuse(index, id, error);
                }
            }
        }
        let (permit, refused) = screened.into_permit(&peek, &bytes);
        // The messages past the batch cap get their errors, but one audit record for all of
        // them: a 4 MiB body must not write thousands of records.
        let cap = self.inner.messages.max_batch;
        for r in refused.iter().filter(|r| r.index < cap) {
            if let Some(m) = peek.messages.get(r.index) {
                log.message(&peek, m, r.error.outcome(), None, &r.error.audit_extra());
            }
        }
        if let Some(over) = peek.messages.len().checked_sub(cap).filter(|n| *n > 0) {
            let e = GatewayError::Invalid(format!("{over} messages past the batch cap of {cap}"));
            log.whole(&e, None);
        }
        let Some(permit) = permit else {
            return refusals_only(&refused, peek.batch);
        };
        // 5–8.
        self.send(&log, &permit, &parts, &session, Some((peek, refused)))
            .await
    }

    /// Stage 2: the caller's session here, if it names one.
    async fn session(
        &self,
        headers: &http::HeaderMap,
        owner: &Owner,
    ) -> Result<Session, GatewayError> {
        let Some(sid) = headers.get("mcp-session-id") else {
            return Ok(Session::None);
        };
        let sid = sid.to_str().map_err(|_| GatewayError::SessionNotFound)?;
        match &self.inner.target {
            Target::Stdio(s) if s.knows(sid, owner) => Ok(Session::Stdio),
            Target::Http { .. } => self
                .inner
                .sessions
                .get(sid, owner)
                .await?
                .map(Session::Http)
                .ok_or(GatewayError::SessionNotFound),
            Target::Stdio(_) => Err(GatewayError::SessionNotFound),
        }
    }

    /// The guard's parse of the body (an anonymous route has no guard: parsed here), checked
    /// against the session's version: no batch where the session's version has none.
    fn peek(
        &self,
        headers: &http::HeaderMap,
        given: Option<McpPeek>,
        bytes: &Bytes,
        session: &Session,
    ) -> Result<McpPeek, GatewayError> {
        let header = headers
            .get("mcp-protocol-version")
            .map(|v| v.to_str().unwrap_or("invalid"));
        let header = ProtocolVersion::from_header(header)
            .map_err(|e| GatewayError::Invalid(e.to_string()))?;
        let negotiated = session
            .version()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ProtocolVersion::parse(v).ok());
        let peek = match given {
            Some(p) => p,
            None => {
                McpPeek::parse(bytes, header).map_err(|e| GatewayError::Invalid(e.to_string()))?
            }
        };
        if peek.batch && matches!(self.inner.target, Target::Stdio(_)) {
            // Refused before screening: no message of it may spend budget.
            return Err(GatewayError::Invalid(
                "batches are not supported for stdio upstreams".into(),
            ));
        }
        if peek.batch
            && let Some(v) = negotiated.filter(|v| !v.allows_batch())
        {
            return Err(GatewayError::Invalid(format!(
                "JSON-RPC batches are not allowed in MCP {} (this session's version)",
                v.as_str()
            )));
        }
        Ok(peek)
    }

    /// Stages 5–8 for a permit. `screened` holds the body's parse and its refused messages
    /// (empty for GET and DELETE).
    async fn send(
        &self,
        log: &Log<'_>,
        permit: &Permit,
        parts: &http::request::Parts,
        session: &Session,
        screened: Option<(McpPeek, Vec<Refusal>)>,
    ) -> Response {
        let (outcome, status, resp) = match &self.inner.target {
            Target::Stdio(stdio) => {
                let (resp, status) = stdio
                    .handle(&parts.method, &parts.headers, permit.owner(), permit.body())
                    .await;
                (Outcome::Allow, status, resp)
            }
            Target::Http {
                url,
                headers,
                token,
                identity,
            } => match self
                .http_call(
                    permit,
                    parts,
                    session,
                    url,
                    (headers, identity.as_ref(), log.caller),
                    token,
                )
                .await
            {
                Ok((resp, status)) => (Outcome::Allow, status, resp),
                Err(Stop::Error(e)) => {
                    let outcome = e.outcome();
                    (outcome, None, e.into_response(permit.first_id()))
                }
                Err(Stop::Connect(c, upstream_status)) => (
                    Outcome::ConnectRequired,
                    upstream_status,
                    elicit_response(
                        &c,
                        permit.owner(),
                        self.inner.name.as_str(),
                        permit.first_id().clone(),
                        speaks_2026(&parts.headers, session),
                    )
                    .await,
                ),
            },
        };
        let ok = resp.status().is_success() && outcome == Outcome::Allow;
        // 7. Lists cut down to what the caller may use (read whole: they are short and end).
        let resp = if ok && permit.filters_lists() {
            let (head, body) = resp.into_parts();
            let sse = crate::sse::is_event_stream(&head.headers);
            let body = axum::body::to_bytes(body, MAX_READ)
                .await
                .unwrap_or_default();
            let policies = self.inner.policy.current();
            let filtered =
                permit.filter_body(&policies, log.caller, self.inner.name.as_str(), sse, &body);
            let mut resp = Response::from_parts(head, Body::from(filtered));
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            resp
        } else {
            resp
        };
        // 8. One record per message forwarded.
        let mut resp = resp;
        match &screened {
            None => log.whole_outcome(outcome, status),
            Some((peek, refused)) => {
                for (i, m) in peek.messages.iter().enumerate() {
                    if !refused.iter().any(|r| r.index == i) {
                        log.message(peek, m, outcome, status, &Value::Null);
                    }
                }
                if !refused.is_empty() && ok {
                    resp = merge_refusals(resp, refused).await;
                }
            }
        }
        resp
    }

    /// Stages 5–7 with an HTTP upstream.
    #[allow(clippy::too_many_arguments)]
    async fn http_call(
        &self,
        permit: &Permit,
        parts: &http::request::Parts,
        session: &Session,
        url: &url::Url,
        (headers, identity, caller): (
            &[(HeaderName, HeaderValue)],
            Option<&crate::spec::IdentitySpec>,
            &Caller,
        ),
        token: &TokenSource,
    ) -> Result<(Response, Option<u16>), Stop> {
        // 5. T3: only the configured credentials, and a token obtained here, go upstream.
        let mut creds = Credentials::configured(permit, headers);
        if let (Some(spec), Some(p)) = (identity, caller.principal()) {
            creds = creds.with_identity(spec, p)?;
        }
        let creds = match token {
            TokenSource::None => creds,
            TokenSource::Exchange(x) => {
                let inbound = inbound_bearer(&parts.headers).unwrap_or_default();
                let t = x.token_for(&self.inner.http, inbound).await?;
                creds.with_bearer(&t)?
            }
            TokenSource::User(c) => {
                match c.token_for(permit.owner(), self.inner.name.as_str()).await {
                    Ok(t) => creds.with_bearer(&t)?,
                    Err(NoToken::Connect) => return Err(Stop::Connect(c.clone(), None)),
                    Err(NoToken::Failed(e)) => {
                        tracing::warn!(upstream = %self.inner.name, error = %e, "no upstream credential");
                        return Err(GatewayError::Upstream(
                            "no credential for this upstream".into(),
                        )
                        .into());
                    }
                }
            }
        };
        // 6. The request, from the permit alone.
        let http_session = match session {
            Session::Http(s) => Some(s),
            _ => None,
        };
        let span = tracing::debug_span!(
            "upstream.call",
            otel.kind = "client",
            upstream = self.inner.name.as_str(),
            server.address = url.host_str().unwrap_or_default(),
            http.request.method = parts.method.as_str(),
            http.response.status_code = tracing::field::Empty,
        );
        // With exported traces the upstream's parent is this span (GW-T1 otherwise).
        let traced = crate::trace::otel_traceparent(&span).map(|tp| {
            let mut h = parts.headers.clone();
            h.insert("traceparent", tp);
            h
        });
        let request = UpstreamRequest::new(
            permit,
            &parts.method,
            url,
            traced.as_ref().unwrap_or(&parts.headers),
            &creds,
            session.version(),
        );
        let mut result = tracing::Instrument::instrument(
            request.send(
                &self.inner.http,
                http_session.map(|s| s.upstream()).as_deref(),
            ),
            span.clone(),
        )
        .await;
        if let Ok(r) = &result {
            span.record("http.response.status_code", r.status().as_u16());
        }
        // The upstream forgot the session (restart, expiry): open a new one with the caller's
        // original initialize, then retry once. The caller keeps its session id.
        if let (Ok(r), Some(s)) = (&result, http_session)
            && r.status() == StatusCode::NOT_FOUND
            && parts.method != http::Method::DELETE
        {
            match request
                .reinitialize(&self.inner.http, &s.init, s.version.as_ref())
                .await
            {
                Ok(fresh) => {
                    tracing::info!(upstream = %self.inner.name, "upstream session lost; re-initialized");
                    if let Some(c) = parts
                        .headers
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                    {
                        self.inner.sessions.replaced(c, s, &fresh).await;
                    }
                    result = request.send(&self.inner.http, Some(&fresh)).await;
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.inner.name, error = %e, "upstream re-initialization failed");
                }
            }
        }
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(upstream = %self.inner.name, error = %e, "upstream unreachable");
                return Err(GatewayError::Upstream(format!(
                    "upstream {} unreachable",
                    self.inner.name
                ))
                .into());
            }
        };
        let client_sid = parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok());
        if let (Some(c), Some(_)) = (client_sid, http_session)
            && parts.method == http::Method::DELETE
            && (r.status().is_success() || r.status() == StatusCode::NOT_FOUND)
        {
            self.inner.sessions.remove(c, permit.owner()).await;
        }
        if let TokenSource::User(c) = token
            && r.status() == StatusCode::UNAUTHORIZED
        {
            // The upstream no longer takes the user's token (revoked, expired): connect again.
            c.forget(permit.owner(), self.inner.name.as_str()).await;
            return Err(Stop::Connect(c.clone(), Some(401)));
        }
        // 7. The answer, with our session id in place of the upstream's.
        let status = r.status();
        let mut out_headers = pick(r.headers(), &RETURNED);
        let upstream_sid = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let opens = permit.is_initialize() && http_session.is_none() && status.is_success();
        // A short JSON answer of known length (and an initialize answer, which is read for
        // the version it settles) is passed on whole; anything else (SSE above all) is
        // streamed as it arrives.
        let whole = opens
            || (r.content_length().is_some_and(|n| n <= 64 * 1024)
                && out_headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("application/json")));
        let sse = crate::sse::is_event_stream(&out_headers);
        let (body, read) = if whole {
            // An initialize answer's length may be unknown (SSE): read with a cap. The others
            // have a known, short length.
            let read = if opens {
                read_capped(r, MAX_READ).await
            } else {
                r.bytes().await.ok()
            };
            match read {
                Some(b) => (Body::from(b.clone()), Some(b)),
                None => {
                    tracing::warn!(upstream = %self.inner.name, "upstream answer cut off");
                    (Body::empty(), None)
                }
            }
        } else {
            (Body::from_stream(r.bytes_stream()), None)
        };
        let shown = match (client_sid, upstream_sid) {
            (Some(c), Some(_)) => Some(c.to_owned()),
            (None, Some(u)) if opens => {
                let version = read
                    .as_ref()
                    .and_then(|b| negotiated_version(b, sse))
                    .or_else(|| requested_version(permit.body()));
                let opened = self
                    .inner
                    .sessions
                    .open(
                        permit.owner(),
                        UpstreamSession {
                            upstream: Mutex::new(u),
                            // A copy of its own: the body is a slice of the connection's read
                            // buffer, which a clone would keep alive (8 KiB a session, issue 20).
                            init: Bytes::copy_from_slice(permit.body()),
                            version,
                        },
                    )
                    .await;
                Some(opened?)
            }
            _ => None,
        };
        if let Some(v) = shown.and_then(|c| HeaderValue::from_str(&c).ok()) {
            out_headers.insert("mcp-session-id", v);
        }
        if status.is_success() {
            out_headers.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = out_headers;
        Ok((resp, Some(status.as_u16())))
    }
}

/// Why stages 5–7 stopped short.
enum Stop {
    Error(GatewayError),
    /// The user must connect the upstream first (URL elicitation), after an upstream status.
    Connect(Arc<Connect>, Option<u16>),
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Self {
        Self::Error(e)
    }
}

/// Charged to the limits: every call but the handshake.
fn charged(m: &PeekedMessage) -> bool {
    !matches!(
        m.method.as_deref(),
        None | Some("initialize" | "notifications/initialized")
    )
}

/// Whether the caller speaks MCP 2026-07-28 or later (its header, else its session's
/// version): it gets multi round-trip answers rather than the older error forms.
fn speaks_2026(headers: &http::HeaderMap, session: &Session) -> bool {
    headers
        .get("mcp-protocol-version")
        .or(session.version())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ProtocolVersion::parse(v).ok())
        .is_some_and(|v| v >= ProtocolVersion::V2026_07_28)
}

/// Stage 8: audit and metrics for what became of each message.
struct Log<'a> {
    proxy: &'a Proxy,
    caller: &'a Caller,
    http_method: &'a str,
    started: Instant,
    trace_id: &'a str,
}

impl Log<'_> {
    fn write(
        &self,
        method: Option<String>,
        tool: Option<String>,
        batch_index: Option<usize>,
        outcome: Outcome,
        upstream_status: Option<u16>,
        extra: &Value,
    ) {
        let inner = &self.proxy.inner;
        inner.metrics.record(outcome, self.started.elapsed());
        let Some(a) = &inner.audit else {
            return;
        };
        let p = self.caller.principal();
        a.record(&CallRecord {
            time: now_rfc3339(),
            subject: p.map(|p| p.subject.as_str()),
            client: p.and_then(|p| p.client_id.as_deref()),
            tenant: p.and_then(|p| p.tenant.as_deref()),
            server: inner.name.as_str(),
            http_method: self.http_method,
            method,
            tool,
            batch_index,
            decision: outcome.as_str(),
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            upstream_status,
            trace_id: Some(self.trace_id),
            extra: extra.as_object(),
        });
    }

    /// One message of the body.
    fn message(
        &self,
        peek: &McpPeek,
        m: &PeekedMessage,
        outcome: Outcome,
        status: Option<u16>,
        extra: &Value,
    ) {
        let index = peek
            .batch
            .then(|| peek.messages.iter().position(|x| std::ptr::eq(x, m)))
            .flatten();
        self.write(
            m.method.as_deref().map(clip),
            m.tool_name().map(clip),
            index,
            outcome,
            status,
            extra,
        );
    }

    /// A request refused as a whole (no session, a body that does not parse).
    fn whole(&self, e: &GatewayError, status: Option<u16>) {
        self.write(None, None, None, e.outcome(), status, &e.audit_extra());
    }

    /// A request without messages (GET, DELETE).
    fn whole_outcome(&self, outcome: Outcome, status: Option<u16>) {
        self.write(None, None, None, outcome, status, &Value::Null);
    }
}
