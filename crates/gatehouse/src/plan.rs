//! Configuration → typed plans, in one place: every check of the gateway section lives here,
//! and what passes becomes the gateway's typed spec. `Config::parse` (hence `gatehouse config
//! check`) runs it, and `serve` builds from its result, so both accept exactly the same files.
//! The scopes of each protected resource are derived here too, once, for the guards' metadata
//! and the authorization server's resource list alike.
use crate::config::{Config, LimitConfig, UpstreamEntry};
use gatehouse_core::{Resource, ScopeSet, SecretString};
use gatehouse_gateway::spec::{
    CredentialSpec, ExchangeSpec, GatewaySpec, LimitSpec, MessageLimits, RateLimitSpec, StdioSpec,
    Transport, UpstreamName, UpstreamSpec, UpstreamToken, UserOAuthSpec,
};
use std::num::NonZeroU32;

/// The gateway section as the gateway takes it; `None` without one.
pub(crate) fn gateway(cfg: &Config) -> Result<Option<GatewaySpec>, String> {
    let Some(g) = &cfg.gateway else {
        return Ok(None);
    };
    let mut seen = std::collections::HashSet::new();
    let mut upstreams = Vec::new();
    for u in &g.upstreams {
        let name =
            UpstreamName::parse(&u.name).map_err(|e| format!("gateway.upstreams: name {e}"))?;
        if !seen.insert(u.name.as_str()) {
            return Err(format!("gateway.upstreams: {:?} appears twice", u.name));
        }
        for (tool, scopes) in &u.tool_scopes {
            if scopes.is_empty() {
                return Err(format!(
                    "gateway.upstreams.{}.tool_scopes.{tool}: empty scope list",
                    u.name
                ));
            }
        }
        upstreams.push(UpstreamSpec {
            transport: transport(cfg, u)?,
            resource: cfg.upstream_resource(&u.name)?,
            anonymous: u.anonymous,
            name,
        });
    }
    let aggregate = match &g.aggregate {
        None => None,
        Some(a) => {
            let name = UpstreamName::parse(&a.name)
                .ok()
                .filter(|_| seen.insert(a.name.as_str()))
                .ok_or_else(|| {
                    format!(
                        "gateway.aggregate.name {:?}: lower-case letters, digits and -, and not an upstream's name",
                        a.name
                    )
                })?;
            if g.upstreams.iter().any(|u| u.anonymous) {
                return Err(
                    "gateway.aggregate: not with anonymous upstreams (the aggregate is authenticated; it would mix the two)".into(),
                );
            }
            Some((name, cfg.upstream_resource(&a.name)?))
        }
    };
    let rate_limit = match &g.rate_limit {
        None => None,
        Some(rl) => Some(RateLimitSpec {
            subject: limit("", rl.per_minute, rl.burst)?,
            per_tenant: rl
                .per_tenant
                .as_ref()
                .map(|l| limit_of(".per_tenant", l))
                .transpose()?,
            per_tool: rl
                .per_tool
                .iter()
                .map(|(k, l)| Ok((k.clone(), limit_of(&format!(".per_tool.{k}"), l)?)))
                .collect::<Result<_, String>>()?,
            // Replicas that share state share their limits unless told otherwise.
            redis_url: rl
                .redis_url
                .as_ref()
                .or(cfg.shared_state.as_ref().map(|s| &s.redis_url))
                .map(|u| SecretString::new(u.0.clone())),
        }),
    };
    let messages = MessageLimits {
        max_batch: match g.max_batch {
            Some(0) => return Err("gateway.max_batch must be at least 1".into()),
            Some(n) => n,
            None => MessageLimits::default().max_batch,
        },
        ..MessageLimits::default()
    };
    // Policies are compiled and validated here, so `config check` refuses bad ones.
    cfg.policy_engine()?;
    Ok(Some(GatewaySpec {
        upstreams,
        aggregate,
        rate_limit,
        messages,
        required_scopes: cfg.guard.required_scopes.clone(),
    }))
}

fn limit_of(what: &str, l: &LimitConfig) -> Result<LimitSpec, String> {
    limit(what, l.per_minute, l.burst)
}

/// A GCRA budget; the default burst is a tenth of a minute's worth.
fn limit(what: &str, per_minute: u32, burst: Option<u32>) -> Result<LimitSpec, String> {
    let bad = || format!("gateway.rate_limit{what}: per_minute and burst must be above 0");
    let per_minute = NonZeroU32::new(per_minute).ok_or_else(bad)?;
    let burst = NonZeroU32::new(burst.unwrap_or((per_minute.get() / 10).max(1))).ok_or_else(bad)?;
    Ok(LimitSpec { per_minute, burst })
}

/// How the gateway reaches one upstream, and with which credentials.
fn transport(cfg: &Config, u: &UpstreamEntry) -> Result<Transport, String> {
    let at = |what: &str| format!("gateway.upstreams.{}{what}", u.name);
    if u.user_oauth.is_some() {
        let Some(a) = &cfg.authorization_server else {
            return Err(format!(
                "{} needs the embedded authorization_server (users sign in there)",
                at(".user_oauth")
            ));
        };
        if a.key_encryption_key.is_none() {
            return Err(format!(
                "{} needs authorization_server.key_encryption_key (user tokens are stored encrypted)",
                at(".user_oauth")
            ));
        }
        if u.token_exchange.is_some() || u.command.is_some() || u.anonymous {
            return Err(format!(
                "{}: for authenticated HTTP upstreams without token_exchange",
                at(".user_oauth")
            ));
        }
    }
    match (&u.command, u.url.is_empty()) {
        (Some(command), true) => {
            if u.token_exchange.is_some() || !u.headers.is_empty() {
                return Err(format!(
                    "{}: headers and token_exchange are for HTTP upstreams",
                    at("")
                ));
            }
            Ok(Transport::Stdio(StdioSpec {
                command: command.clone(),
                args: u.args.clone(),
                env: u
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), SecretString::new(v.0.clone())))
                    .collect(),
            }))
        }
        (None, false) => {
            let url = url::Url::parse(&u.url).map_err(|e| format!("{}: {e}", at(".url")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{} must be http(s)", at(".url")));
            }
            if let Some(why) = gatehouse_fetch::upstream::upstream_address_refused(&url) {
                return Err(format!(
                    "{}: {why} is never an MCP server (GW-10)",
                    at(".url")
                ));
            }
            let headers = u
                .headers
                .iter()
                .map(|(k, v)| {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("{}: bad name {k:?}", at(".headers")))?;
                    let mut value = http::HeaderValue::from_str(&v.0)
                        .map_err(|_| format!("{}: bad value for {k:?}", at(".headers")))?;
                    value.set_sensitive(true);
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?;
            let token = match (&u.token_exchange, &u.user_oauth) {
                (Some(x), _) => UpstreamToken::Exchange(ExchangeSpec {
                    token_endpoint: match &x.token_endpoint {
                        Some(e) => e.clone(),
                        None => cfg
                            .embedded_issuer()?
                            .map(|i| format!("{}/token", i.as_str().trim_end_matches('/')))
                            .ok_or_else(|| {
                                format!(
                                    "{} is needed without the embedded authorization server",
                                    at(".token_exchange.token_endpoint")
                                )
                            })?,
                    },
                    client_id: x.client_id.0.clone(),
                    client_secret: SecretString::new(x.client_secret.0.clone()),
                    resource: x.resource.clone().unwrap_or_else(|| u.url.clone()),
                }),
                (None, Some(o)) => UpstreamToken::UserOAuth(UserOAuthSpec {
                    client_id: o.client_id.0.clone(),
                    client_secret: o
                        .client_secret
                        .as_ref()
                        .map(|s| SecretString::new(s.0.clone())),
                    scopes: o.scopes.clone(),
                    issuer: o.issuer.clone(),
                }),
                (None, None) => UpstreamToken::None,
            };
            let identity = match &u.identity_header {
                Some(h) if h.secret.0.len() >= 32 => Some(gatehouse_gateway::spec::IdentitySpec {
                    issuer: cfg.public_url(),
                    audience: url.as_str().to_owned(),
                    secret: SecretString::new(h.secret.0.clone()),
                }),
                Some(_) => {
                    return Err(format!(
                        "{}: at least 32 characters",
                        at(".identity_header.secret")
                    ));
                }
                None => None,
            };
            Ok(Transport::Http {
                url,
                credentials: CredentialSpec {
                    headers,
                    token,
                    identity,
                },
            })
        }
        _ => Err(format!("{}: give either url or command", at(""))),
    }
}

/// Every protected resource this process serves, with the scopes it advertises: the demo
/// endpoint (the guard's scopes), each upstream (those plus its own tool scopes), each token
/// exchange audience, and the aggregate (the union). The guards' metadata and the embedded
/// authorization server's resource list both come from here, so they cannot drift apart.
pub(crate) fn resource_scopes(cfg: &Config) -> Result<Vec<(Resource, ScopeSet)>, String> {
    let g = &cfg.guard;
    let base = g.scopes_supported.clone().unwrap_or_else(|| {
        g.tool_scopes
            .values()
            .fold(g.required_scopes.clone(), |acc, s| acc.union(s))
    });
    let mut all = vec![(cfg.resource()?, base.clone())];
    let mut every = base.clone();
    for u in cfg.gateway.iter().flat_map(|g| &g.upstreams) {
        let own = u
            .tool_scopes
            .values()
            .fold(base.clone(), |acc, s| acc.union(s));
        every = every.union(&own);
        all.push((cfg.upstream_resource(&u.name)?, own));
        // The audience a token exchange for this upstream asks for.
        if let Some(x) = &u.token_exchange {
            let r = x.resource.as_deref().unwrap_or(&u.url);
            all.push((
                Resource::parse(r).map_err(|e| format!("gateway.upstreams.{}: {e}", u.name))?,
                base.clone(),
            ));
        }
    }
    if let Some(name) = cfg.aggregate_name() {
        all.push((cfg.upstream_resource(name)?, every));
    }
    Ok(all)
}
