//! The gateway's settings, already parsed and checked: no serde, no YAML paths. The binary
//! translates its configuration file into these once (`plan.rs`), and everything a check can
//! refuse is refused there, so what builds here cannot fail on its settings.
use gatehouse_core::{Issuer, Resource, ScopeSet, SecretString};
use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::num::NonZeroU32;

/// A name that is not one (an upstream's, or an aggregate name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// An upstream's name: 1–63 of `[a-z0-9-]`, so it is a path segment as it is and can never
/// contain the aggregate's `__` separator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamName(String);

impl UpstreamName {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName(format!(
                "{s:?} must be 1 to 63 lower-case letters, digits and -"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the gateway reaches an upstream: "url xor command" cannot be written any other way, and
/// a stdio server has no credentials field at all.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per upstream at start
pub enum Transport {
    Http {
        url: url::Url,
        credentials: CredentialSpec,
    },
    Stdio(StdioSpec),
}

/// A stdio MCP server: one process per MCP session, started with a clean environment (`PATH`
/// plus `env`).
#[derive(Debug, Clone)]
pub struct StdioSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, SecretString)>,
}

/// What goes upstream instead of the caller's credentials (T3): configured headers (marked
/// sensitive), and at most one source of a bearer token.
#[derive(Debug, Default)]
pub struct CredentialSpec {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub token: UpstreamToken,
    /// A signed statement of who is calling, and through whom, for upstreams that cannot
    /// exchange tokens (GW-A2).
    pub identity: Option<IdentitySpec>,
}

/// The `Gatehouse-Identity` header: an HS256 JWT under a secret shared with the upstream, with
/// the caller (`sub`, its issuer as `user_iss`, `client_id`, `scope`), its verified delegation
/// chain (`act`, as the token carried it), `aud` the upstream's URL, `iss` the gateway, and
/// 60 s of life.
#[derive(Debug, Clone)]
pub struct IdentitySpec {
    pub issuer: String,
    pub audience: String,
    pub secret: SecretString,
}

#[derive(Debug, Default)]
pub enum UpstreamToken {
    #[default]
    None,
    /// RFC 8693: the caller's token exchanged for one whose audience is the upstream.
    Exchange(ExchangeSpec),
    /// GW-09: each user's own grant at the upstream's authorization server.
    UserOAuth(UserOAuthSpec),
}

#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// The audience asked for.
    pub resource: String,
}

#[derive(Debug, Clone)]
pub struct UserOAuthSpec {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub scopes: ScopeSet,
    /// Default: the first authorization server the upstream's resource metadata names.
    pub issuer: Option<Issuer>,
}

/// One upstream.
#[derive(Debug)]
pub struct UpstreamSpec {
    pub name: UpstreamName,
    pub transport: Transport,
    /// The resource callers address: this upstream at the gateway (its PRM and audience).
    pub resource: Resource,
    /// Served without authentication (policies and limits apply to the anonymous caller).
    pub anonymous: bool,
}

impl UpstreamSpec {
    /// The upstream's own URL (HTTP upstreams).
    pub fn url(&self) -> Option<&url::Url> {
        match &self.transport {
            Transport::Http { url, .. } => Some(url),
            Transport::Stdio(_) => None,
        }
    }
}

/// One GCRA budget.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

/// Calls allowed per owner (across upstreams), optionally per tenant and per tool.
#[derive(Debug, Clone)]
pub struct RateLimitSpec {
    pub subject: LimitSpec,
    pub per_tenant: Option<LimitSpec>,
    /// By `<upstream>/<tool>`, or a bare tool name (that tool on every upstream).
    pub per_tool: BTreeMap<String, LimitSpec>,
    /// Shared through Redis (replicas), else kept in this process.
    pub redis_url: Option<SecretString>,
}

/// Bounds on what one HTTP request may carry (T22).
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Messages in one JSON-RPC batch; the rest are refused one by one.
    pub max_batch: usize,
    /// Bytes of a method name.
    pub max_method: usize,
    /// Bytes of a tool or prompt name.
    pub max_name: usize,
    /// Bytes of a request id (as JSON).
    pub max_id: usize,
    /// Bytes of a resource URI.
    pub max_uri: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_method: 128,
            // The MCP tool-name rule allows 1 to 128 characters.
            max_name: 128,
            max_id: 128,
            max_uri: 4096,
        }
    }
}

/// Everything the gateway is.
#[derive(Debug)]
pub struct GatewaySpec {
    pub upstreams: Vec<UpstreamSpec>,
    /// The aggregate endpoint's name and resource.
    pub aggregate: Option<(UpstreamName, Resource)>,
    pub rate_limit: Option<RateLimitSpec>,
    pub messages: MessageLimits,
    /// The scopes every call needs (the 403 challenge names them with what a call adds).
    pub required_scopes: ScopeSet,
}
