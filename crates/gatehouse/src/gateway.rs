//! The gateway's proxy (issue 5, first part): a guarded path per upstream MCP server that
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
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    http: reqwest::Client,
    audit: Option<Arc<Audit>>,
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

/// Request limits (GCRA): per subject across every upstream, optionally per tenant (all its
/// subjects together) and per tool (per subject). One runaway agent is slowed down, the others
/// are not touched. Kept in this process, or in Redis so that replicas share them (the same
/// algorithm as one atomic script, on the Redis server's clock).
pub(crate) struct RateLimits {
    subject: Limiter,
    tenant: Option<Limiter>,
    /// By `<upstream>/<tool>` or a bare tool name (every upstream).
    tools: std::collections::HashMap<String, Limiter>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LimitHit {
    Subject,
    Tenant,
    Tool,
}

impl LimitHit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Tenant => "tenant",
            Self::Tool => "tool",
        }
    }
}

struct Limiter {
    backend: Backend,
    /// Keeps the limits' keys apart in Redis.
    namespace: String,
}

enum Backend {
    Local {
        limiter: governor::DefaultKeyedRateLimiter<String>,
        checks: std::sync::atomic::AtomicU64,
    },
    Redis {
        redis: Arc<RedisConn>,
        /// Emission interval and burst tolerance, in milliseconds.
        interval_ms: u64,
        tolerance_ms: u64,
    },
}

/// One multiplexed connection, shared by every limit.
struct RedisConn {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    script: redis::Script,
}

/// GCRA: allow when the theoretical arrival time is at most `tolerance` ahead of now; the
/// answer is 0 (allowed) or the milliseconds to wait.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now)
return 0
"#;

impl Limiter {
    fn new(
        what: &str,
        per_minute: u32,
        burst: Option<u32>,
        redis: Option<&Arc<RedisConn>>,
    ) -> Result<Self, String> {
        let per_minute = std::num::NonZeroU32::new(per_minute)
            .ok_or_else(|| format!("gateway.rate_limit{what}.per_minute must be above 0"))?;
        let burst = burst.unwrap_or((per_minute.get() / 10).max(1));
        let burst = std::num::NonZeroU32::new(burst)
            .ok_or_else(|| format!("gateway.rate_limit{what}.burst must be above 0"))?;
        let backend = match redis {
            None => Backend::Local {
                limiter: governor::RateLimiter::keyed(
                    governor::Quota::per_minute(per_minute).allow_burst(burst),
                ),
                checks: std::sync::atomic::AtomicU64::new(0),
            },
            Some(redis) => {
                let interval_ms = (60_000 / u64::from(per_minute.get())).max(1);
                Backend::Redis {
                    redis: redis.clone(),
                    interval_ms,
                    tolerance_ms: interval_ms * u64::from(burst.get() - 1),
                }
            }
        };
        Ok(Self {
            backend,
            namespace: match what.trim_start_matches('.') {
                "" => "subject".to_owned(),
                ns => ns.to_owned(),
            },
        })
    }

    /// `Err(seconds to wait)` when `key` is over its limit.
    async fn check(&self, key: &str) -> Result<(), u64> {
        match &self.backend {
            Backend::Local { limiter, checks } => {
                // Forget idle keys now and then, so memory follows the active ones.
                if checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
                    limiter.retain_recent();
                }
                limiter.check_key(&key.to_owned()).map_err(|not_until| {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ));
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
                })
            }
            Backend::Redis {
                redis,
                interval_ms,
                tolerance_ms,
            } => {
                let hashed = sha256_hex(key);
                let outcome = async {
                    let c = redis
                        .conn
                        .get_or_try_init(|| {
                            redis::aio::ConnectionManager::new(redis.client.clone())
                        })
                        .await?;
                    let mut c = c.clone();
                    redis
                        .script
                        .key(format!("gatehouse:rl:{}:{hashed}", self.namespace))
                        .arg(*interval_ms)
                        .arg(*tolerance_ms)
                        .invoke_async::<u64>(&mut c)
                        .await
                }
                .await;
                match outcome {
                    Ok(0) => Ok(()),
                    Ok(wait_ms) => Err(wait_ms.div_ceil(1000).max(1)),
                    Err(e) => {
                        // Fail open: an unreachable Redis must not take every upstream down.
                        tracing::error!(error = %e, "rate limit store unreachable; request allowed");
                        Ok(())
                    }
                }
            }
        }
    }
}

impl RateLimits {
    pub(crate) fn new(c: &crate::config::RateLimitConfig) -> Result<Self, String> {
        let redis = c
            .redis_url
            .as_ref()
            .map(|url| {
                Ok::<_, String>(Arc::new(RedisConn {
                    client: redis::Client::open(url.0.as_str())
                        .map_err(|e| format!("gateway.rate_limit.redis_url: {e}"))?,
                    conn: tokio::sync::OnceCell::new(),
                    script: redis::Script::new(GCRA_LUA),
                }))
            })
            .transpose()?;
        Ok(Self {
            subject: Limiter::new("", c.per_minute, c.burst, redis.as_ref())?,
            tenant: c
                .per_tenant
                .as_ref()
                .map(|l| Limiter::new(".per_tenant", l.per_minute, l.burst, redis.as_ref()))
                .transpose()?,
            tools: c
                .per_tool
                .iter()
                .map(|(k, l)| {
                    Ok((
                        k.clone(),
                        Limiter::new(
                            &format!(".per_tool.{k}"),
                            l.per_minute,
                            l.burst,
                            redis.as_ref(),
                        )?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    /// `Err((seconds to wait, which limit))` when a limit is reached. The most specific limit
    /// is taken first, so a subject held back on one tool keeps its budget for the others.
    pub(crate) async fn check(
        &self,
        subject: &str,
        tenant: Option<&str>,
        server: &str,
        tool: Option<&str>,
    ) -> Result<(), (u64, LimitHit)> {
        if let Some(tool) = tool {
            let qualified = format!("{server}/{tool}");
            // One budget per subject and configured entry: a bare tool name is shared by that
            // tool on every upstream.
            if let Some((entry, l)) = self
                .tools
                .get_key_value(&qualified)
                .or_else(|| self.tools.get_key_value(tool))
            {
                l.check(&format!("{subject}\n{entry}"))
                    .await
                    .map_err(|w| (w, LimitHit::Tool))?;
            }
        }
        self.subject
            .check(subject)
            .await
            .map_err(|w| (w, LimitHit::Subject))?;
        if let (Some(l), Some(t)) = (&self.tenant, tenant) {
            l.check(t).await.map_err(|w| (w, LimitHit::Tenant))?;
        }
        Ok(())
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
                url: u.url.clone(),
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
        let (parts, body) = req.into_parts();
        let principal = parts.extensions.get::<Principal>().cloned();
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
            }
        };
        // The guard parsed the body already and left what it found; an anonymous upstream has
        // no guard, so it is parsed here (policies need it either way).
        let peek = match parts.extensions.get::<McpPeek>() {
            Some(p) => Some(p.clone()),
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
                        let body = serde_json::json!({
                            "jsonrpc": "2.0",
                            "id": null,
                            "error": {"code": -32600, "message": e.to_string()},
                        });
                        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
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

        let audit = |decision: &str, upstream_status: Option<u16>, extra: serde_json::Value| {
            let server = self.inner.name.clone();
            metrics::counter!("gatehouse_gateway_requests_total", "server" => server.clone(), "decision" => decision.to_owned())
                .increment(1);
            metrics::histogram!("gatehouse_gateway_request_seconds", "server" => server)
                .record(started.elapsed().as_secs_f64());
            if let Some(a) = &self.inner.audit {
                let mut record = serde_json::json!({
                    "time": time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    "subject": principal.as_ref().map(|p| p.subject.clone()),
                    "client": principal.as_ref().and_then(|p| p.client_id.clone()),
                    "tenant": principal.as_ref().and_then(|p| p.tenant.clone()),
                    "server": self.inner.name,
                    "http_method": parts.method.as_str(),
                    "method": method,
                    "tool": tool,
                    "decision": decision,
                    // Integers only: the chain is checked by re-serialising records, and floats
                    // do not round-trip byte for byte.
                    "latency_us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "upstream_status": upstream_status,
                });
                if let (Some(r), serde_json::Value::Object(more)) = (record.as_object_mut(), extra)
                {
                    r.extend(more);
                }
                a.record(record);
            }
        };
        if let Some(limits) = &self.inner.limits {
            let key = match &principal {
                Some(p) => format!("{}\n{}", p.issuer, p.subject),
                None => "anonymous".to_owned(),
            };
            let tenant = principal.as_ref().and_then(|p| p.tenant.as_deref());
            if let Err((wait, hit)) = limits
                .check(&key, tenant, &self.inner.name, tool.as_deref())
                .await
            {
                audit(
                    "rate_limited",
                    None,
                    serde_json::json!({"limit": hit.as_str()}),
                );
                let id = peek
                    .as_ref()
                    .and_then(|p| p.messages.first())
                    .and_then(|m| m.id.clone())
                    .unwrap_or(serde_json::Value::Null);
                let body = serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "code": -32000,
                        "message": format!("rate limit ({}) exceeded; retry in {wait} s", hit.as_str()),
                    },
                });
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
                        "insufficient_scope",
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
                    audit("deny", None, serde_json::json!({"policies": policies}));
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
            audit("allow", status, serde_json::Value::Null);
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
                    audit("credential_refused", None, serde_json::Value::Null);
                    let body = serde_json::json!({
                        "jsonrpc": "2.0",
                        "id": null,
                        "error": {"code": -32000, "message": msg},
                    });
                    return (status, axum::Json(body)).into_response();
                }
            }
        }
        let user = crate::connect::Owner {
            issuer: who.caller().issuer.to_owned(),
            subject: who.caller().subject.to_owned(),
        };
        if let Some(c) = &self.inner.connect {
            let id = peek
                .as_ref()
                .and_then(|p| p.messages.first())
                .and_then(|m| m.id.clone())
                .unwrap_or(serde_json::Value::Null);
            match c.token_for(&user, &self.inner.name).await {
                Ok(t) => {
                    if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                        v.set_sensitive(true);
                        creds.push((http::header::AUTHORIZATION, v));
                    }
                }
                Err(crate::connect::NoToken::Connect) => {
                    audit("connect_required", None, serde_json::Value::Null);
                    return crate::connect::elicit_response(c, &user, &self.inner.name, id);
                }
                Err(crate::connect::NoToken::Failed(e)) => {
                    tracing::warn!(upstream = %self.inner.name, error = %e, "no upstream credential");
                    audit("credential_refused", None, serde_json::Value::Null);
                    return jsonrpc_error(
                        StatusCode::BAD_GATEWAY,
                        id,
                        "no credential for this upstream",
                    );
                }
            }
        }
        // GW-11: the caller's session id is ours; the upstream's stays here.
        let owner = format!("{}\n{}", who.caller().issuer, who.caller().subject);
        let client_sid = parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let session = match &client_sid {
            None => None,
            Some(c) => match self.inner.sessions.get(c, &owner) {
                Some(s) => Some(s),
                None => {
                    audit("unknown_session", Some(404), serde_json::Value::Null);
                    return jsonrpc_error(
                        StatusCode::NOT_FOUND,
                        serde_json::Value::Null,
                        "session not found",
                    );
                }
            },
        };
        let initialize = method.as_deref() == Some("initialize") && session.is_none();
        let forwarded = pick(&parts.headers, &FORWARDED);
        let send = |upstream_sid: Option<String>| {
            let mut out = self
                .inner
                .http
                .request(parts.method.clone(), &self.inner.url)
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
            c.forget(&user, &self.inner.name).await;
            audit("connect_required", Some(401), serde_json::Value::Null);
            let id = peek
                .as_ref()
                .and_then(|p| p.messages.first())
                .and_then(|m| m.id.clone())
                .unwrap_or(serde_json::Value::Null);
            return crate::connect::elicit_response(c, &user, &self.inner.name, id);
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
                        owner.clone(),
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
                let body = serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": {"code": -32603, "message": format!("upstream {} unreachable", self.inner.name)},
                });
                (
                    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response(),
                    None,
                )
            }
        };
        audit("allow", upstream_status, serde_json::Value::Null);
        response
    }
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
    owner: String,
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
        owner: String,
        init: bytes::Bytes,
        version: Option<HeaderValue>,
    ) -> String {
        let mut b = [0u8; 16];
        rand::fill(&mut b);
        let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
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
    fn get(&self, id: &str, owner: &str) -> Option<Arc<UpstreamSession>> {
        let s = self.map.lock().ok()?.get(id).cloned()?;
        if s.owner != owner {
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
        let request = |body: bytes::Bytes, sid: Option<&str>| {
            let mut out = self
                .inner
                .http
                .post(&self.inner.url)
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

/// Marks a response the proxy has audited already.
#[derive(Clone, Copy)]
struct Audited;

/// State of [`audit_refusals`]: the log and the upstream's name.
#[derive(Clone)]
pub(crate) struct RefusalAudit {
    pub(crate) audit: Option<Arc<Audit>>,
    pub(crate) server: String,
}

/// Outside the guard: requests it refused (no or bad token, missing scope, someone else's
/// session, malformed) never reach the proxy, so they are audited here, with the status and
/// the Bearer error; the caller is unknown at that point.
pub(crate) async fn audit_refusals(
    axum::extract::State(s): axum::extract::State<RefusalAudit>,
    req: http::Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.extensions().get::<Audited>().is_none() && !resp.status().is_success() {
        let reason = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("error=\"").nth(1))
            .and_then(|v| v.split('"').next())
            .map(str::to_owned);
        metrics::counter!("gatehouse_gateway_requests_total", "server" => s.server.clone(), "decision" => "refused")
            .increment(1);
        if let Some(a) = &s.audit {
            a.record(serde_json::json!({
                "time": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "server": s.server,
                "http_method": method.as_str(),
                "decision": "refused",
                "http_status": resp.status().as_u16(),
                "reason": reason,
                "latency_us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            }));
        }
    }
    resp
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

/// Append-only JSON lines, each carrying the SHA-256 of the previous line (`prev`) and its own
/// (`hash`, over `prev` and the record), so an edited or deleted line breaks the chain.
pub(crate) struct Audit {
    state: Mutex<(std::fs::File, String)>,
}

impl Audit {
    pub(crate) fn open(path: &str) -> Result<Self, String> {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("gateway.audit_log {path}: {e}"))?;
        }
        // Continue the chain of an existing log.
        let last = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().last().map(str::to_owned))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .and_then(|v| v["hash"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "0".repeat(64));
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o
            .open(path)
            .map_err(|e| format!("gateway.audit_log {path}: {e}"))?;
        Ok(Self {
            state: Mutex::new((f, last)),
        })
    }

    pub(crate) fn record(&self, mut v: serde_json::Value) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        v["prev"] = st.1.clone().into();
        let body = v.to_string();
        let hash = sha256_hex(&body);
        v["hash"] = hash.clone().into();
        let line = format!("{v}\n");
        if let Err(e) = st.0.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "audit log write failed");
            return;
        }
        st.1 = hash;
    }
}

/// Checks an audit log's chain; the index of the first broken line, if any.
#[cfg(test)]
pub(crate) fn verify_chain(log: &str) -> Option<usize> {
    let mut prev = "0".repeat(64);
    for (i, line) in log.lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(line).ok()?;
        let hash = v["hash"].as_str()?.to_owned();
        if v["prev"] != prev.as_str() {
            return Some(i);
        }
        v.as_object_mut()?.remove("hash");
        let h = sha256_hex(&v.to_string());
        if h != hash {
            return Some(i);
        }
        prev = hash;
    }
    None
}

/// A stdio upstream: one process per MCP session, started by `initialize` (clean environment:
/// `PATH` plus the configured variables), owned by the user who opened it, stopped by DELETE
/// or when the gateway stops. Answers are matched to requests by JSON-RPC id. What the server
/// sends on its own is relayed as Streamable HTTP does: progress for a request on that
/// request's SSE stream; other notifications and requests to the client (sampling,
/// elicitation) on an open request stream, else on the session's GET stream.
pub(crate) struct StdioUpstream {
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    sessions: Mutex<std::collections::HashMap<String, Arc<StdioSession>>>,
}

type Lines = tokio::sync::mpsc::UnboundedSender<String>;

/// Where the server's messages go.
#[derive(Default)]
struct Routes {
    /// Open requests by JSON-RPC id (as JSON text), in the order they were sent.
    requests: Vec<(String, Lines)>,
    /// Progress tokens (as JSON text) → the request that gave them.
    progress: std::collections::HashMap<String, String>,
    /// The session's GET stream, if one is open.
    standalone: Option<Lines>,
}

struct StdioSession {
    owner: (String, String),
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    routes: Arc<Mutex<Routes>>,
    last_used: Mutex<Instant>,
    _child: tokio::process::Child,
}

/// Longest wait for a stdio server's answer.
const STDIO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A session (its process) unused this long is stopped when the next one starts.
const STDIO_IDLE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Processes per user, and in all, for one stdio upstream: a caller cannot exhaust the host by
/// opening sessions (GW-14).
const STDIO_PER_USER: usize = 8;
const STDIO_TOTAL: usize = 256;

fn jsonrpc_error(status: StatusCode, id: serde_json::Value, msg: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": msg}})),
    )
        .into_response()
}

/// An SSE response carrying each line as one `message` event; it ends when the senders go.
fn sse(rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Response {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
                "event: message\ndata: {line}\n\n"
            ))),
            rx,
        ))
    });
    let mut resp = Response::new(Body::from_stream(events));
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

impl Routes {
    /// Delivers one line from the server to the stream it belongs on.
    fn deliver(&mut self, line: String) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            return;
        };
        let is_answer =
            v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some());
        if is_answer {
            let id = v.get("id").map(|i| i.to_string()).unwrap_or_default();
            if let Some(i) = self.requests.iter().position(|(r, _)| *r == id) {
                let (_, tx) = self.requests.remove(i);
                let _ = tx.send(line);
                self.progress.retain(|_, r| *r != id);
            }
            return;
        }
        let for_request = (v["method"] == "notifications/progress")
            .then(|| self.progress.get(&v["params"]["progressToken"].to_string()))
            .flatten()
            .and_then(|r| self.requests.iter().find(|(id, _)| id == r))
            .map(|(_, tx)| tx.clone());
        let target = for_request
            .or_else(|| self.requests.last().map(|(_, tx)| tx.clone()))
            .or_else(|| self.standalone.clone());
        match target {
            Some(tx) => {
                let _ = tx.send(line);
            }
            None => tracing::debug!("stdio server message with no open stream; dropped"),
        }
    }
}

impl StdioUpstream {
    pub(crate) fn new(u: &UpstreamEntry) -> Option<Self> {
        let command = u.command.clone()?;
        Some(Self {
            command,
            args: u.args.clone(),
            env: u
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            sessions: Mutex::default(),
        })
    }

    fn spawn(&self, owner: (String, String)) -> Result<StdioSession, String> {
        let mut cmd = tokio::process::Command::new(&self.command);
        cmd.args(&self.args)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH".to_owned(), p)))
            .envs(self.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.command))?;
        tracing::info!(command = %self.command, "stdio upstream started");
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let reader = routes.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut r) = reader.lock() {
                    r.deliver(line);
                }
            }
            // The process ended: every open stream ends with it.
            if let Ok(mut r) = reader.lock() {
                *r = Routes::default();
            }
        });
        Ok(StdioSession {
            owner,
            stdin: tokio::sync::Mutex::new(stdin),
            routes,
            last_used: Mutex::new(Instant::now()),
            _child: child,
        })
    }

    pub(crate) async fn handle(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        principal: Option<&Principal>,
        body: &[u8],
    ) -> (Response, Option<u16>) {
        let owner = principal
            .map(|p| (p.issuer.clone(), p.subject.clone()))
            .unwrap_or_default();
        let sid = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let existing = sid.as_ref().and_then(|s| {
            self.sessions
                .lock()
                .ok()
                .and_then(|m| m.get(s).cloned())
                .filter(|sess| sess.owner == owner)
        });
        if let Some(s) = &existing
            && let Ok(mut t) = s.last_used.lock()
        {
            *t = Instant::now();
        }
        let wants_sse = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        if *method == http::Method::DELETE {
            return match (sid, existing) {
                (Some(s), Some(_)) => {
                    if let Ok(mut m) = self.sessions.lock() {
                        m.remove(&s);
                    }
                    (StatusCode::OK.into_response(), None)
                }
                _ => (StatusCode::NOT_FOUND.into_response(), None),
            };
        }
        if *method == http::Method::GET {
            // The session's stream for messages that belong to no request.
            return match (existing, wants_sse) {
                (Some(s), true) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    if let Ok(mut r) = s.routes.lock() {
                        r.standalone = Some(tx);
                    }
                    (sse(rx), Some(200))
                }
                (Some(_), false) => (StatusCode::NOT_ACCEPTABLE.into_response(), None),
                (None, _) => (StatusCode::NOT_FOUND.into_response(), None),
            };
        }
        if *method != http::Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED.into_response(), None);
        }
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(body) else {
            return (
                jsonrpc_error(StatusCode::BAD_REQUEST, serde_json::Value::Null, "not JSON"),
                None,
            );
        };
        if !msg.is_object() {
            return (
                jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    serde_json::Value::Null,
                    "batches are not supported for stdio upstreams",
                ),
                None,
            );
        }
        let id = msg.get("id").cloned();
        let is_request = id.is_some() && msg.get("method").is_some();
        let initialize = msg.get("method").and_then(|m| m.as_str()) == Some("initialize");
        if existing.is_none() && sid.is_none() && initialize {
            let (mine, all) = match self.sessions.lock() {
                Ok(mut m) => {
                    let before = m.len();
                    m.retain(|_, s| s.last_used.lock().is_ok_and(|t| t.elapsed() < STDIO_IDLE));
                    if m.len() < before {
                        tracing::info!(stopped = before - m.len(), "idle stdio sessions stopped");
                    }
                    (m.values().filter(|s| s.owner == owner).count(), m.len())
                }
                Err(_) => (0, 0),
            };
            if mine >= STDIO_PER_USER || all >= STDIO_TOTAL {
                return (
                    jsonrpc_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        id.unwrap_or_default(),
                        "too many open sessions for this server; close one (DELETE) first",
                    ),
                    None,
                );
            }
        }
        let (session, new_id) = match (existing, sid, initialize) {
            (Some(s), _, _) => (s, None),
            (None, None, true) => match self.spawn(owner) {
                Ok(s) => {
                    let mut b = [0u8; 16];
                    rand::fill(&mut b);
                    let new: String = b.iter().map(|x| format!("{x:02x}")).collect();
                    let s = Arc::new(s);
                    if let Ok(mut m) = self.sessions.lock() {
                        m.insert(new.clone(), s.clone());
                    }
                    (s, Some(new))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stdio upstream did not start");
                    return (
                        jsonrpc_error(
                            StatusCode::BAD_GATEWAY,
                            id.unwrap_or_default(),
                            "the upstream server did not start",
                        ),
                        None,
                    );
                }
            },
            // An unknown (or someone else's) session, or no session and no initialize.
            (None, Some(_), _) => return (StatusCode::NOT_FOUND.into_response(), None),
            (None, None, false) => {
                return (
                    jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        id.unwrap_or_default(),
                        "no MCP session: initialize first",
                    ),
                    None,
                );
            }
        };
        let rx = is_request.then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            if let (Ok(mut r), Some(id)) = (session.routes.lock(), &id) {
                let key = id.to_string();
                if let Some(token) = msg.pointer("/params/_meta/progressToken") {
                    r.progress.insert(token.to_string(), key.clone());
                }
                r.requests.push((key, tx));
            }
            rx
        });
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = session.stdin.lock().await;
            let line = format!("{msg}\n");
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                return (
                    jsonrpc_error(
                        StatusCode::BAD_GATEWAY,
                        id.unwrap_or_default(),
                        "the upstream server stopped",
                    ),
                    None,
                );
            }
        }
        let Some(mut rx) = rx else {
            return (StatusCode::ACCEPTED.into_response(), Some(202));
        };
        let mut resp = if wants_sse {
            // Everything for this request, as it comes; the stream ends with the answer.
            sse(rx)
        } else {
            // JSON only: wait for the answer; what comes before it has nowhere to go.
            let answer = tokio::time::timeout(STDIO_TIMEOUT, async {
                let mut last = None;
                while let Some(line) = rx.recv().await {
                    last = Some(line);
                }
                last
            })
            .await;
            match answer {
                Ok(Some(line)) => {
                    ([(http::header::CONTENT_TYPE, "application/json")], line).into_response()
                }
                _ => {
                    return (
                        jsonrpc_error(
                            StatusCode::GATEWAY_TIMEOUT,
                            id.unwrap_or_default(),
                            "the upstream server did not answer",
                        ),
                        None,
                    );
                }
            }
        };
        if let Some(s) = new_id
            && let Ok(v) = HeaderValue::from_str(&s)
        {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        (resp, Some(200))
    }
}

#[cfg(test)]
mod tests {
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
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = s.open("up", "iss\nalice".into(), bytes::Bytes::new(), None);
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(id), "collision");
        }
        let id = s.open("up", "iss\nalice".into(), bytes::Bytes::new(), None);
        assert!(s.get(&id, "iss\nalice").is_some());
        assert!(s.get(&id, "iss\nbob").is_none());
        assert!(s.get(&id, "other-iss\nalice").is_none());
    }

    #[test]
    fn audit_chain_shows_tampering() {
        let path = std::env::temp_dir().join(format!("gh-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let p = path.display().to_string();
        let a = Audit::open(&p).expect("open");
        for i in 0..3 {
            a.record(serde_json::json!({"n": i, "subject": "alice"}));
        }
        drop(a);
        // Reopening continues the chain.
        Audit::open(&p)
            .expect("reopen")
            .record(serde_json::json!({"n": 3}));
        let log = std::fs::read_to_string(&path).expect("read");
        assert_eq!(log.lines().count(), 4);
        assert_eq!(verify_chain(&log), None);
        let tampered = log.replacen("alice", "mallory", 1);
        assert_eq!(verify_chain(&tampered), Some(0));
        let dropped: String = log.lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert_eq!(verify_chain(&dropped), Some(0));
        let _ = std::fs::remove_file(&path);
    }
}
