//! Composition: config → fetcher, validators, guard, demo MCP server → one axum router.
use crate::config::Config;
use crate::demo::DemoServer;
use gatehouse_core::{Clock, Resource, ScopeSet, SecretString, SystemClock};
use gatehouse_fetch::Fetcher;
use gatehouse_guard::{ApiKey, Guard, GuardConfig};
use gatehouse_tokens::{
    AccessTokenValidator, IntrospectionConfig, IntrospectionValidator, JwtValidator,
    JwtValidatorConfig, TrustedIssuer,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) struct App {
    pub(crate) router: axum::Router,
    pub(crate) resource: Resource,
    pub(crate) guard: Guard,
    pub(crate) jwt: Option<Arc<JwtValidator>>,
    pub(crate) cancel: CancellationToken,
    /// The gateway's policies and how often to re-read their file.
    pub(crate) policy: Option<(Arc<gatehouse_policy::Engine>, Duration)>,
    /// The listener's bounds (T21).
    pub(crate) limits: crate::listener::ListenerLimits,
    /// TLS on the listener (`tls:`).
    pub(crate) tls: Option<crate::tls::Tls>,
}

/// What `gatehouse config check` runs: everything is built and validated (policies, keys,
/// limits), but no file is created and nothing the embedded authorization server lends is
/// needed. Performs no network I/O.
pub(crate) fn check(cfg: &Config) -> Result<(), String> {
    if let Some(t) = &cfg.traces {
        crate::telemetry::check(t)?;
    }
    build_inner(cfg, false, None, None, true).map(|_| ())
}

/// Builds everything from a validated config, with what per-user upstream grants (GW-09)
/// need from the embedded authorization server. Performs no network I/O.
pub(crate) fn build_with(
    cfg: &Config,
    dev_origins: bool,
    connect: Option<gatehouse_gateway::Backend>,
    revocations: Option<Arc<gatehouse_tokens::Revocations>>,
) -> Result<App, String> {
    build_inner(cfg, dev_origins, connect, revocations, false)
}

fn build_inner(
    cfg: &Config,
    dev_origins: bool,
    connect: Option<gatehouse_gateway::Backend>,
    revocations: Option<Arc<gatehouse_tokens::Revocations>>,
    check_only: bool,
) -> Result<App, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let revocations = revocations.as_ref();
    let resource = cfg.resource()?;
    let fetcher = Fetcher::new(cfg.fetch_policy()?).map_err(|e| e.to_string())?;
    let scopes = crate::plan::resource_scopes(cfg)?;
    let (guard, jwt) = build_guard(cfg, &resource, &scopes, &fetcher, &clock, revocations, true)?;
    let mut upstream_routes = axum::Router::new();
    if let Some(crate::config::EventsPlan {
        path,
        audience,
        transmitters,
    }) = cfg.security_events()?
    {
        // (`config check` builds without one.)
        let list = revocations.cloned().unwrap_or_default();
        let shared = cfg
            .shared_state
            .as_ref()
            .map(|s| gatehouse_guard::SharedSessions::open(&s.redis_url.0))
            .transpose()
            .map_err(|e| format!("shared_state.redis_url: {e}"))?;
        let verifier = gatehouse_tokens::SetVerifier::new(
            transmitters,
            audience,
            fetcher.clone(),
            clock.clone(),
        );
        let events = gatehouse_guard::SecurityEvents::new(verifier, list, shared, clock.clone());
        if !check_only {
            events.spawn_feed();
        }
        upstream_routes = upstream_routes.merge(events.router(&path));
    }
    let mut policy = None;
    let gates = Arc::new(OriginGate::new(cfg, &resource, dev_origins));
    if let (Some(gw), Some(spec)) = (&cfg.gateway, crate::plan::gateway(cfg)?) {
        let audit = gw
            .audit_log
            .as_deref()
            .filter(|_| !check_only)
            .map(|p| {
                gatehouse_gateway::Audit::open(p).map_err(|e| format!("gateway.audit_log {p}: {e}"))
            })
            .transpose()?
            .map(Arc::new);
        let http = gatehouse_fetch::upstream::upstream_client(concat!(
            "gatehouse-gateway/",
            env!("CARGO_PKG_VERSION")
        ))
        .map_err(|e| e.to_string())?;
        let shared = cfg
            .shared_state
            .as_ref()
            .map(|s| gatehouse_gateway::SharedState::open(&s.redis_url.0))
            .transpose()
            .map_err(|e| format!("shared_state.redis_url: {e}"))?;
        let limits = spec
            .rate_limit
            .as_ref()
            .map(gatehouse_gateway::RateLimits::new)
            .transpose()
            .map_err(|e| format!("gateway.rate_limit.redis_url: {e}"))?
            .map(Arc::new);
        let engine = Arc::new(cfg.policy_engine()?);
        let reload = Duration::from_secs(gw.policy.as_ref().map_or(2, |p| p.reload_seconds).max(1));
        policy = Some((engine.clone(), reload));
        let user_oauth: Vec<_> = spec
            .upstreams
            .iter()
            .filter_map(|u| match &u.transport {
                gatehouse_gateway::spec::Transport::Http {
                    url,
                    credentials:
                        gatehouse_gateway::spec::CredentialSpec {
                            token: gatehouse_gateway::spec::UpstreamToken::UserOAuth(o),
                            ..
                        },
                } => Some((u.name.clone(), url.as_str().to_owned(), o.clone())),
                _ => None,
            })
            .collect();
        let connect = match (connect, user_oauth.is_empty()) {
            (_, true) => None,
            (Some(backend), false) => {
                let c = Arc::new(
                    gatehouse_gateway::Connect::new(
                        backend,
                        gatehouse_gateway::ConnectSpec {
                            public: cfg.public_url(),
                            identity_resource: resource.as_str().to_owned(),
                            identity_scope: cfg.guard.required_scopes.to_string(),
                            upstreams: user_oauth,
                            shared: shared.clone(),
                        },
                        fetcher.clone(),
                    )
                    .map_err(|e| e.to_string())?,
                );
                upstream_routes = upstream_routes.merge(c.router());
                Some(c)
            }
            (None, false) if check_only => None,
            (None, false) => {
                return Err("gateway: user_oauth needs the embedded authorization server running in this process".into());
            }
        };
        // The guards in front refuse past the caps; the maps behind them keep the same bounds,
        // evicting the oldest.
        let caps = cfg.limits.sessions()?;
        let aggregate_sessions = gatehouse_gateway::TableLimits {
            total: caps.total,
            per_owner: caps.per_subject,
            idle: caps.idle,
            when_owner_full: gatehouse_gateway::WhenOwnerFull::EvictOldest,
        };
        let deps = gatehouse_gateway::ProxyDeps {
            http,
            audit: audit.clone(),
            limits,
            policy: engine,
            connect,
            messages: spec.messages,
            required: spec.required_scopes.clone(),
            // An upstream's map holds its own route's sessions and the aggregate's members:
            // room for both guards' caps.
            sessions: gatehouse_gateway::TableLimits {
                total: aggregate_sessions.total.saturating_mul(2),
                per_owner: aggregate_sessions.per_owner.saturating_mul(2),
                ..aggregate_sessions
            },
            shared,
        };
        let mut proxies = Vec::new();
        for u in spec.upstreams {
            let r = u.resource.clone();
            let anonymous = u.anonymous;
            let name = u.name.as_str().to_owned();
            // Per-tool scopes are decided by the policy engine (with the upstream's own
            // entries), not by the guard; the guard authenticates and checks the baseline.
            let (g, _) = build_guard(cfg, &r, &scopes, &fetcher, &clock, revocations, false)?;
            let proxy = gatehouse_gateway::Proxy::new(u, &deps);
            proxies.push(proxy.clone());
            let refusals = gatehouse_gateway::RefusalAudit {
                audit: audit.clone(),
                server: name.clone(),
            };
            if anonymous {
                tracing::warn!(upstream = %name, "served without authentication (anonymous: true)");
            }
            upstream_routes = mount(
                upstream_routes,
                r.path_str(),
                &gates,
                refusals,
                (!anonymous).then_some(&g),
                proxy.into_service(),
            );
        }
        if let Some((name, r)) = &spec.aggregate {
            let (g, _) = build_guard(cfg, r, &scopes, &fetcher, &clock, revocations, false)?;
            let refusals = gatehouse_gateway::RefusalAudit {
                audit: audit.clone(),
                server: name.as_str().to_owned(),
            };
            upstream_routes = mount(
                upstream_routes,
                r.path_str(),
                &gates,
                refusals,
                Some(&g),
                gatehouse_gateway::Aggregate::new(proxies, aggregate_sessions).into_service(),
            );
        }
    }
    let mut app = finish(cfg, &gates, resource, guard, jwt, upstream_routes)?;
    app.policy = policy;
    Ok(app)
}

/// A gateway route: the Origin/Host gate, CORS, the audit of refusals, then the guard (unless
/// anonymous) and the service; with the guard, its path-inserted metadata document too.
fn mount<S>(
    router: axum::Router,
    path: &str,
    gates: &Arc<OriginGate>,
    refusals: gatehouse_gateway::RefusalAudit,
    guard: Option<&Guard>,
    svc: S,
) -> axum::Router
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let front = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            gates.clone(),
            origin_gate,
        ))
        .layer(cors_layer(&gates.origins))
        .layer(axum::middleware::from_fn_with_state(
            refusals,
            gatehouse_gateway::audit_refusals,
        ));
    match guard {
        None => router.route_service(path, front.service(svc)),
        Some(g) => router
            .route_service(path, front.layer(g.layer()).service(svc))
            .merge(g.path_metadata_router()),
    }
}

/// GW-08 / TR-11: requests from a browser page on another origin (DNS rebinding) and requests
/// for a host this server is not are refused before anything else.
pub(crate) struct OriginGate {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl OriginGate {
    fn new(cfg: &Config, resource: &Resource, dev_origins: bool) -> Self {
        let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if let Some(h) = resource.url().host_str() {
            hosts.push(h.trim_matches(['[', ']']).to_owned());
            if let Some(p) = resource.url().port() {
                hosts.push(format!("{h}:{p}"));
            }
        }
        hosts.extend(cfg.mcp.allowed_hosts.iter().cloned());
        let mut origins = cfg.mcp.allowed_origins.clone();
        if dev_origins {
            origins.extend([
                "http://localhost:*".to_owned(),
                "http://127.0.0.1:*".to_owned(),
            ]);
        }
        Self { hosts, origins }
    }

    fn host_allowed(&self, host: &str) -> bool {
        // `Host` may carry a port; entries without one match any port.
        let bare = match host.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let bare = bare.trim_matches(['[', ']']);
        self.hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(bare))
    }
}

async fn origin_gate(
    axum::extract::State(g): axum::extract::State<Arc<OriginGate>>,
    req: http::Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // (A header that is not text matches nothing.)
    let refused = {
        let h = req.headers();
        let text = |n| {
            h.get(n)
                .map(|v: &http::HeaderValue| v.to_str().unwrap_or("\u{fffd}"))
        };
        let host = text(http::header::HOST);
        match (text(http::header::ORIGIN), host) {
            (_, Some(host)) if !g.host_allowed(host) => Some("host not allowed"),
            // Same origin (a page served by this host, which passed the check above) is not
            // cross-origin; anything else must be listed.
            (Some(o), _)
                if !origin_allowed(&g.origins, o)
                    && !host.is_some_and(|h| {
                        o.strip_prefix("http://")
                            .or_else(|| o.strip_prefix("https://"))
                            .is_some_and(|rest| rest.eq_ignore_ascii_case(h))
                    }) =>
            {
                Some("origin not allowed")
            }
            _ => None,
        }
    };
    match refused {
        Some(why) => (
            http::StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "jsonrpc": "2.0",
                "error": {"code": -32000, "message": format!("forbidden: {why}")},
            })),
        )
            .into_response(),
        None => next.run(req).await,
    }
}

/// Origin patterns: exact, or `scheme://host:*` for any port.
fn origin_allowed(patterns: &[String], o: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix(":*") {
        Some(prefix) => {
            o == prefix
                || o.strip_prefix(prefix).is_some_and(|r| {
                    r.starts_with(':') && r[1..].bytes().all(|b| b.is_ascii_digit())
                })
        }
        None => o == p,
    })
}

/// The guard (and its JWT validator) for one protected resource: the demo endpoint or a
/// gateway upstream. Each has its own audience and Protected Resource Metadata.
fn build_guard(
    cfg: &Config,
    resource: &Resource,
    scopes: &[(Resource, ScopeSet)],
    fetcher: &Fetcher,
    clock: &Arc<dyn Clock>,
    revocations: Option<&Arc<gatehouse_tokens::Revocations>>,
    tool_scopes_in_guard: bool,
) -> Result<(Guard, Option<Arc<JwtValidator>>), String> {
    let (resource, clock) = (resource.clone(), clock.clone());
    let g = &cfg.guard;
    let issuers: Vec<TrustedIssuer> = g
        .authorization_servers
        .iter()
        .map(|a| TrustedIssuer {
            issuer: a.issuer.clone(),
            jwks_uri: a.jwks_uri.clone(),
        })
        .collect();
    let jwt = (!issuers.is_empty()).then(|| {
        let mut jc = JwtValidatorConfig::new(resource.clone(), issuers);
        jc.audience_policy = g.audience_policy;
        jc.strict_typ = g.strict_typ;
        jc.revocations = revocations.cloned();
        Arc::new(JwtValidator::new(jc, fetcher.clone(), clock.clone()))
    });
    let introspection = g.introspection.as_ref().map(|i| {
        IntrospectionValidator::new(
            IntrospectionConfig {
                endpoint: i.endpoint.0.clone(),
                client_id: i.client_id.0.clone(),
                client_secret: SecretString::new(i.client_secret.0.clone()),
                cache_ttl: Duration::from_secs(i.cache_seconds),
                revocations: revocations.cloned(),
                issuer: g
                    .authorization_servers
                    .first()
                    .map(|a| a.issuer.as_str().to_owned())
                    .unwrap_or_default(),
            },
            resource.clone(),
            g.audience_policy,
            fetcher.clone(),
            clock.clone(),
        )
    });
    let validator = Arc::new(AccessTokenValidator {
        jwt: jwt.clone(),
        introspection,
    });
    let mut gc = GuardConfig::new(
        resource.clone(),
        g.authorization_servers
            .iter()
            .map(|a| a.issuer.clone())
            .collect(),
    );
    gc.required_scopes = g.required_scopes.clone();
    if tool_scopes_in_guard {
        gc.tool_scopes = g.tool_scopes.clone();
    }
    // Advertised: the baseline and every scope a tool of this resource may need (the same
    // list the authorization server issues for it).
    gc.scopes_supported = scopes
        .iter()
        .find(|(r, _)| r.as_str() == resource.as_str())
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| g.required_scopes.clone());
    gc.resource_name = g.resource_name.clone();
    gc.resource_documentation = g.resource_documentation.clone();
    gc.ip_allow = g.ip_allow.clone();
    gc.sessions = cfg.limits.sessions()?;
    gc.shared_sessions = cfg
        .shared_state
        .as_ref()
        .map(|s| gatehouse_guard::SharedSessions::open(&s.redis_url.0))
        .transpose()
        .map_err(|e| format!("shared_state.redis_url: {e}"))?;
    gc.dpop_nonces = match (g.dpop_nonce, &g.dpop_nonce_secret, &cfg.shared_state) {
        (false, _, _) => None,
        (true, Some(secret), _) if secret.0.len() >= 16 => {
            Some(gatehouse_tokens::dpop::Nonces::new(secret.0.as_bytes()))
        }
        (true, Some(_), _) => {
            return Err("guard.dpop_nonce_secret: at least 16 characters".into());
        }
        (true, None, Some(_)) => {
            return Err(
                "guard.dpop_nonce with shared_state (replicas) needs guard.dpop_nonce_secret, the same on every replica"
                    .into(),
            );
        }
        (true, None, None) => Some(gatehouse_tokens::dpop::Nonces::random()),
    };
    gc.api_keys = g
        .api_keys
        .iter()
        .map(|k| {
            let expires_at = k
                .expires
                .as_deref()
                .map(|e| {
                    time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                        .map(|t| t.unix_timestamp())
                        .map_err(|err| format!("api key {}: {err}", k.name))
                })
                .transpose()?;
            if expires_at.is_none() {
                tracing::warn!(key = %k.name, "API key has no expiry; set `expires` so it cannot live forever");
            }
            Ok(ApiKey {
                name: k.name.clone(),
                hash: ApiKey::parse_hash(&k.hash.0).map_err(|e| e.to_string())?,
                scopes: k.scopes.clone(),
                expires_at,
                subject: k.subject.clone(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((Guard::new(gc, validator, clock), jwt))
}

fn finish(
    cfg: &Config,
    gates: &OriginGate,
    resource: Resource,
    guard: Guard,
    jwt: Option<Arc<JwtValidator>>,
    upstream_routes: axum::Router,
) -> Result<App, String> {
    let cancel = CancellationToken::new();
    let (hosts, origins) = (gates.hosts.clone(), gates.origins.clone());
    let mut mcp_cfg = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_cancellation_token(cancel.clone());
    mcp_cfg = if origins.is_empty() {
        // T5: no browser origin is allowed unless configured.
        mcp_cfg.enforce_origin_validation()
    } else {
        mcp_cfg.with_allowed_origins(origins.clone())
    };
    let notes = Arc::default();
    // The demo ends a session unused as long as the guard does, so neither keeps what the other
    // forgot.
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(cfg.limits.sessions()?.idle);
    let mcp = StreamableHttpService::new(
        move || Ok(DemoServer::new(Arc::clone(&notes))),
        Arc::new(sessions),
        mcp_cfg,
    );
    let cors = cors_layer(&origins);
    let guarded = tower::ServiceBuilder::new()
        .layer(cors)
        .layer(guard.layer())
        .service(mcp);
    let router = axum::Router::new()
        .route_service(&cfg.mcp.path, guarded)
        .merge(guard.metadata_router())
        .merge(upstream_routes);
    Ok(App {
        router,
        resource,
        guard,
        jwt,
        cancel,
        policy: None,
        limits: cfg.listener.limits(),
        // `config check` reads the files too: a pair that would not load is an error there.
        tls: cfg
            .tls
            .as_ref()
            .map(|t| crate::tls::Tls::load(&t.cert_file, &t.key_file))
            .transpose()?,
    })
}

/// CORS for browser clients (RS-22, TR-13): preflights answered before the guard, the challenge
/// and session headers exposed.
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    let allow_origin = if origins.is_empty() {
        tower_http::cors::AllowOrigin::list(Vec::<http::HeaderValue>::new())
    } else {
        let patterns = origins.to_vec();
        tower_http::cors::AllowOrigin::predicate(move |o, _| {
            o.to_str().is_ok_and(|o| origin_allowed(&patterns, o))
        })
    };
    tower_http::cors::CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("mcp-session-id"),
            HeaderName::from_static("mcp-protocol-version"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("mcp-method"),
            HeaderName::from_static("mcp-name"),
        ])
        .expose_headers([
            http::header::WWW_AUTHENTICATE,
            HeaderName::from_static("mcp-session-id"),
        ])
}

/// Scopes shown in the dev banner.
pub(crate) fn describe_scopes(g: &GuardConfig) -> String {
    let mut lines = vec![format!("{} (every call)", g.required_scopes)];
    let mut tools: Vec<_> = g.tool_scopes.iter().collect();
    tools.sort_by(|a, b| a.0.cmp(b.0));
    for (tool, s) in tools {
        let extra: ScopeSet = g.required_scopes.missing_from(s);
        lines.push(format!("{extra} ({tool})"));
    }
    lines.join(", ")
}

/// Serves until SIGTERM/SIGINT, then stops accepting, cancels open MCP streams and exits
/// (waiting at most 5 s for in-flight requests).
pub(crate) async fn serve(listener: tokio::net::TcpListener, app: App) -> std::io::Result<()> {
    let cancel = app.cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    let router = app
        .router
        .layer(axum::middleware::map_response(baseline_headers));
    if let Some(t) = &app.tls {
        t.spawn_reloader(app.cancel.clone());
    }
    let server = crate::listener::serve(listener, router, app.limits, app.cancel.clone(), app.tls);
    let cancelled = app.cancel.clone();
    tokio::select! {
        r = server => r,
        _ = async move { cancelled.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => {
            tracing::warn!("in-flight requests did not finish within 5 s; exiting");
            Ok(())
        }
    }
}

/// The security headers every answer carries unless it set its own (issue 14, row 18):
/// discovery documents, JSON errors and MCP answers are never sniffed as another type, framed,
/// or given a referrer.
async fn baseline_headers(mut r: axum::response::Response) -> axum::response::Response {
    use http::header::{REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
    let h = r.headers_mut();
    for (name, value) in [
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (REFERRER_POLICY, "no-referrer"),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, http::HeaderValue::from_static(value));
        }
    }
    r
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
