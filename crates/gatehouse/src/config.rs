//! The one YAML configuration file. Unknown keys are errors with line and column; secrets come
//! from the environment through `${env:VAR}` (`$${` writes a literal `${`).
use gatehouse_core::{AudiencePolicy, Issuer, Resource, ScopeSet};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;

/// A string in which `${env:VAR}` is replaced by the variable's value while parsing, so a missing
/// variable is reported with the line and column of the value that needs it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct EnvString(pub(crate) String);

impl std::fmt::Debug for EnvString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // May hold a secret.
        f.write_str("EnvString(..)")
    }
}

/// `${env:VAR}` expanded in a plain string: addresses that differ per deployment (replicas
/// behind a load balancer, an upstream's URL).
fn env_expanded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    EnvString::deserialize(d).map(|e| e.0)
}

fn env_expanded_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<EnvString>::deserialize(d).map(|o| o.map(|e| e.0))
}

pub(crate) fn expand_env(
    s: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${env:") {
            let end = t
                .find('}')
                .ok_or_else(|| "unterminated ${env:…} reference".to_owned())?;
            let name = &t[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            let v =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&v);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl schemars::JsonSchema for EnvString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvString".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A string; `${env:VAR}` is replaced by the variable's value"
        })
    }
}

/// Stand-ins for types of other crates, as the configuration file writes them.
pub(crate) mod schema {
    /// One space-delimited string of scopes, or a list of scopes.
    #[allow(dead_code, reason = "only its schema is used")]
    #[derive(schemars::JsonSchema)]
    #[serde(untagged)]
    pub(crate) enum ScopeList {
        One(String),
        Many(Vec<String>),
    }

    #[allow(dead_code, reason = "only its schema is used")]
    #[derive(schemars::JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum AudiencePolicyRepr {
        Exact,
        IgnoreTrailingSlash,
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw, |n| std::env::var(n).ok())
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Address to bind, e.g. `127.0.0.1:8080`.
    pub(crate) listen: SocketAddr,
    /// The origin clients use to reach this server (`https://mcp.example.com`); the protected
    /// endpoint is this plus `mcp.path`. Defaults to `http://<listen>`.
    #[serde(default, deserialize_with = "env_expanded_opt")]
    pub(crate) public_url: Option<String>,
    #[serde(default)]
    pub(crate) log: LogConfig,
    /// Export traces (spans for each request, token validation, policy and upstream calls)
    /// over OTLP.
    #[serde(default)]
    pub(crate) traces: Option<TracesSection>,
    #[serde(default)]
    pub(crate) mcp: McpConfig,
    pub(crate) guard: GuardSection,
    /// Run the embedded authorization server on the same listener.
    #[serde(default)]
    pub(crate) authorization_server: Option<AuthServerSection>,
    /// Serve Prometheus metrics at `http://<this>/metrics` (a separate listener).
    #[serde(default)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// The gateway: upstream MCP servers, each behind its own guarded path.
    #[serde(default)]
    pub(crate) gateway: Option<GatewaySection>,
    /// Extra CA certificates (a PEM file) trusted for outbound https, besides the platform's:
    /// for identity providers or client metadata documents behind a private PKI.
    #[serde(default)]
    pub(crate) trusted_ca_file: Option<String>,
    /// Serve https on `listen` with this certificate and key (PEM; re-read when they change
    /// or on SIGHUP).
    #[serde(default)]
    pub(crate) tls: Option<TlsSection>,
    /// Bounds of the listener (T21); every key optional.
    #[serde(default)]
    pub(crate) listener: ListenerSection,
    /// What each caller may hold (issue 20); every key optional.
    #[serde(default)]
    pub(crate) limits: LimitsSection,
    /// State shared by replicas: MCP session counts live there, and the gateway's rate limits
    /// unless they name their own Redis.
    #[serde(default)]
    pub(crate) shared_state: Option<SharedStateSection>,
    #[serde(default)]
    pub(crate) dangerous: Dangerous,
}

/// Bounds on MCP sessions, per guarded endpoint. Defaults: 64 live sessions per subject (issuer
/// and subject of the token), 10,000 in all, ended after 30 minutes unused; a caller at its cap
/// loses its least recently used session once that one has had no request in flight for 60 s.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    #[serde(default)]
    pub(crate) sessions_per_subject: Option<usize>,
    #[serde(default)]
    pub(crate) sessions_total: Option<usize>,
    #[serde(default)]
    pub(crate) session_idle_seconds: Option<u64>,
    #[serde(default)]
    pub(crate) session_reclaim_seconds: Option<u64>,
}

impl LimitsSection {
    pub(crate) fn sessions(&self) -> Result<gatehouse_guard::SessionLimits, String> {
        let d = gatehouse_guard::SessionLimits::default();
        let l = gatehouse_guard::SessionLimits {
            per_subject: self.sessions_per_subject.unwrap_or(d.per_subject),
            total: self.sessions_total.unwrap_or(d.total),
            idle: self
                .session_idle_seconds
                .map_or(d.idle, std::time::Duration::from_secs),
            reclaim_after: self
                .session_reclaim_seconds
                .map_or(d.reclaim_after, std::time::Duration::from_secs),
        };
        if l.per_subject == 0 {
            return Err("limits.sessions_per_subject must be at least 1".into());
        }
        // One caller at its cap must leave room for others.
        if l.total <= l.per_subject {
            return Err(format!(
                "limits.sessions_total ({}) must be larger than limits.sessions_per_subject ({})",
                l.total, l.per_subject
            ));
        }
        if l.idle.is_zero() {
            return Err("limits.session_idle_seconds must be at least 1".into());
        }
        if l.reclaim_after > l.idle {
            return Err(
                "limits.session_reclaim_seconds cannot exceed limits.session_idle_seconds".into(),
            );
        }
        Ok(l)
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SharedStateSection {
    /// `redis://` or `rediss://`.
    pub(crate) redis_url: EnvString,
}

/// Limits of the listener; defaults: 3/4 of the process's open-file limit in all, a quarter of
/// that per client address, 15 s for request headers (and idle keep-alive), 30 s for a body.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerSection {
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    #[serde(default)]
    pub(crate) per_source_connections: Option<usize>,
    #[serde(default)]
    pub(crate) header_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(crate) body_timeout_seconds: Option<u64>,
}

impl ListenerSection {
    pub(crate) fn limits(&self) -> crate::listener::ListenerLimits {
        let d = crate::listener::ListenerLimits::default();
        let max_connections = self.max_connections.unwrap_or(d.max_connections).max(1);
        crate::listener::ListenerLimits {
            max_connections,
            per_source: self
                .per_source_connections
                .unwrap_or(d.per_source)
                .clamp(1, max_connections),
            header_timeout: self.header_timeout_seconds.map_or(d.header_timeout, |s| {
                std::time::Duration::from_secs(s.max(1))
            }),
            body_timeout: self
                .body_timeout_seconds
                .map_or(d.body_timeout, |s| std::time::Duration::from_secs(s.max(1))),
        }
    }
}

/// The gateway (issue 5, first part): each upstream is served at `/servers/<name>/mcp` with its
/// own Protected Resource Metadata and the guard's validation; the inbound token never goes
/// upstream, only the headers configured here.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewaySection {
    pub(crate) upstreams: Vec<UpstreamEntry>,
    /// Append-only JSON-lines audit log, one hash-chained record per request.
    #[serde(default)]
    pub(crate) audit_log: Option<String>,
    /// Requests per subject (issuer + subject), across all upstreams; optionally also per
    /// tenant and per tool.
    #[serde(default)]
    pub(crate) rate_limit: Option<RateLimitConfig>,
    /// Cedar policies deciding who may do what on which upstream (with `tool_scopes`
    /// compiled into the same set).
    #[serde(default)]
    pub(crate) policy: Option<PolicySection>,
    /// One more endpoint, `/servers/<name>/mcp`, serving every upstream at once: tools and
    /// prompts as `<upstream>__<name>`, resources routed by URI. Each call still goes through
    /// its upstream's policies, limits, credentials and audit.
    #[serde(default)]
    pub(crate) aggregate: Option<AggregateSection>,
    /// Messages in one JSON-RPC batch (2025-03-26 sessions); the rest are refused one by
    /// one. Default 32.
    #[serde(default)]
    pub(crate) max_batch: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AggregateSection {
    pub(crate) name: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySection {
    /// A Cedar policy file (relative to this config file), validated against the schema in
    /// `gatehouse-policy` (`SCHEMA`). Without it, everything the scope rules allow is permitted.
    #[serde(default)]
    pub(crate) file: Option<String>,
    /// How often the file is checked for changes (a valid change replaces the policies in
    /// force without a restart; an invalid one is refused and logged).
    #[serde(default = "two")]
    pub(crate) reload_seconds: u64,
}

fn two() -> u64 {
    2
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitConfig {
    pub(crate) per_minute: u32,
    /// Default: a tenth of a minute's worth.
    #[serde(default)]
    pub(crate) burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitConfig {
    /// Sustained rate.
    pub(crate) per_minute: u32,
    /// Requests allowed at once above the sustained rate (default: a tenth of a minute's worth).
    #[serde(default)]
    pub(crate) burst: Option<u32>,
    /// Share the limits across replicas through Redis (`redis://127.0.0.1:6379`); otherwise
    /// they are kept in this process.
    #[serde(default)]
    pub(crate) redis_url: Option<EnvString>,
    /// Requests per tenant (the token's tenant claim), all its subjects together.
    #[serde(default)]
    pub(crate) per_tenant: Option<LimitConfig>,
    /// Calls of one tool per subject, by `<upstream>/<tool>`, or by a bare tool name: one budget
    /// for that tool across every upstream.
    #[serde(default)]
    pub(crate) per_tool: std::collections::BTreeMap<String, LimitConfig>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamEntry {
    /// Lower-case letters, digits and `-`: the path segment.
    pub(crate) name: String,
    /// The upstream's Streamable HTTP endpoint (or `command` for a stdio server).
    #[serde(default, deserialize_with = "env_expanded")]
    pub(crate) url: String,
    /// A stdio MCP server the gateway starts, one process per MCP session, with a clean
    /// environment: only `PATH` and what `env` sets.
    #[serde(default)]
    pub(crate) command: Option<String>,
    #[serde(default)]
    pub(crate) args: Vec<String>,
    #[serde(default)]
    pub(crate) env: std::collections::BTreeMap<String, EnvString>,
    /// Headers sent upstream instead of the caller's credentials (e.g. `Authorization: Bearer
    /// ${env:UPSTREAM_TOKEN}`).
    #[serde(default)]
    pub(crate) headers: std::collections::BTreeMap<String, EnvString>,
    /// RFC 8693: exchange the caller's token for one whose audience is this upstream.
    #[serde(default)]
    pub(crate) token_exchange: Option<TokenExchangeConfig>,
    /// Scopes per tool of this upstream (in addition to `guard.tool_scopes`, which apply to
    /// every upstream); compiled into the Cedar policy set.
    #[serde(default)]
    #[schemars(with = "HashMap<String, schema::ScopeList>")]
    pub(crate) tool_scopes: HashMap<String, ScopeSet>,
    /// Serve this upstream without authentication (policies and limits still apply, to the
    /// principal `anonymous`). For public servers and conformance runs only.
    #[serde(default)]
    pub(crate) anonymous: bool,
    /// GW-09: each user connects their own account at the upstream's authorization server
    /// once (through a link the MCP client shows, URL-mode elicitation); the gateway then calls
    /// the upstream with that user's token. Needs the embedded authorization server (users
    /// sign in there to prove who they are) and its `key_encryption_key` (tokens are stored
    /// encrypted).
    #[serde(default)]
    pub(crate) user_oauth: Option<UserOAuthConfig>,
    /// GW-A2: send a signed `Gatehouse-Identity` header (HS256 under this secret, shared with
    /// the upstream) naming the caller and its verified delegation chain, for upstreams that
    /// cannot exchange tokens.
    #[serde(default)]
    pub(crate) identity_header: Option<IdentityHeaderConfig>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityHeaderConfig {
    /// At least 32 characters; give it as `${env:…}`.
    pub(crate) secret: EnvString,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    #[serde(deserialize_with = "env_expanded")]
    pub(crate) cert_file: String,
    #[serde(deserialize_with = "env_expanded")]
    pub(crate) key_file: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserOAuthConfig {
    /// The gateway's client at the upstream's authorization server; its redirect URI there
    /// is `<public_url>/connect/callback`.
    pub(crate) client_id: EnvString,
    /// For a confidential client (sent with HTTP Basic); a public client uses PKCE alone.
    #[serde(default)]
    pub(crate) client_secret: Option<EnvString>,
    #[serde(default)]
    #[schemars(with = "schema::ScopeList")]
    pub(crate) scopes: ScopeSet,
    /// The upstream's authorization server; default: the first one its Protected Resource
    /// Metadata names.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) issuer: Option<Issuer>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenExchangeConfig {
    /// The authorization server's token endpoint (default: the embedded one).
    #[serde(default)]
    pub(crate) token_endpoint: Option<String>,
    /// The gateway's confidential client there (allowed to exchange for this upstream).
    pub(crate) client_id: EnvString,
    pub(crate) client_secret: EnvString,
    /// The audience asked for (default: the upstream's `url`).
    #[serde(default)]
    pub(crate) resource: Option<String>,
}

impl Config {
    /// The protected resource of each gateway upstream: `<public_url>/servers/<name>/mcp`.
    pub(crate) fn upstream_resource(&self, name: &str) -> Result<Resource, String> {
        let base = self.public_url();
        Resource::parse(&format!(
            "{}/servers/{name}/mcp",
            base.trim_end_matches('/')
        ))
        .map_err(|e| format!("gateway upstream {name}: {e}"))
    }

    /// The aggregate endpoint's name (its path segment), if configured.
    pub(crate) fn aggregate_name(&self) -> Option<&str> {
        self.gateway
            .as_ref()
            .and_then(|g| g.aggregate.as_ref())
            .map(|a| a.name.as_str())
    }

    /// The gateway's policy engine: the Cedar file (if any) and every `tool_scopes` entry,
    /// validated together.
    pub(crate) fn policy_engine(&self) -> Result<gatehouse_policy::Engine, String> {
        let rule =
            |server: Option<&str>, tool: &str, scopes: &ScopeSet| gatehouse_policy::ScopeRule {
                server: server.map(str::to_owned),
                tool: tool.to_owned(),
                scopes: scopes.to_vec().into_iter().collect(),
            };
        let mut rules: Vec<_> = self
            .guard
            .tool_scopes
            .iter()
            .map(|(t, s)| rule(None, t, s))
            .collect();
        let upstreams = self.gateway.iter().flat_map(|g| &g.upstreams);
        for u in upstreams {
            rules.extend(u.tool_scopes.iter().map(|(t, s)| rule(Some(&u.name), t, s)));
        }
        // Deterministic order, so messages name the same rule every time.
        rules.sort_by(|a, b| (&a.server, &a.tool).cmp(&(&b.server, &b.tool)));
        let file = self
            .gateway
            .as_ref()
            .and_then(|g| g.policy.as_ref())
            .and_then(|p| p.file.as_deref())
            .map(std::path::Path::new);
        gatehouse_policy::Engine::load(file, rules).map_err(|e| format!("gateway.policy: {e}"))
    }

    /// The policy for every outbound fetch (metadata, JWKS, client documents, the IdP).
    pub(crate) fn fetch_policy(&self) -> Result<gatehouse_fetch::FetchPolicy, String> {
        let extra_roots_pem = self
            .trusted_ca_file
            .as_deref()
            .map(|f| std::fs::read(f).map_err(|e| format!("trusted_ca_file {f}: {e}")))
            .transpose()?;
        Ok(gatehouse_fetch::FetchPolicy {
            dangerous_allow_loopback: self.dangerous.allow_loopback_fetch.clone(),
            extra_roots_pem,
            ..gatehouse_fetch::FetchPolicy::default()
        })
    }
}

fn yes() -> bool {
    true
}

fn ten() -> u32 {
    10
}

/// The embedded authorization server.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthServerSection {
    /// The issuer, exactly as clients will compare it; default: `public_url`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) issuer: Option<Issuer>,
    /// `sqlite://PATH` or `postgres://…` (use `${env:…}` for credentials).
    pub(crate) database: EnvString,
    /// Resources tokens are issued for; default: the guarded endpoint with its scopes.
    #[serde(default)]
    pub(crate) resources: Vec<ResourceSection>,
    #[serde(default = "yes")]
    pub(crate) dynamic_registration: bool,
    /// Registrations per source address per minute (AS-26).
    #[serde(default = "ten")]
    pub(crate) registrations_per_minute: u32,
    /// What self-registered clients (DCR, metadata documents) may be; default: public
    /// authorization_code clients only (T17).
    #[serde(default)]
    pub(crate) registration: RegistrationSection,
    #[serde(default = "yes")]
    pub(crate) client_metadata_documents: bool,
    #[serde(default)]
    pub(crate) access_token_ttl_seconds: Option<i64>,
    #[serde(default)]
    pub(crate) refresh_token_ttl_seconds: Option<i64>,
    /// Plain-language text for the consent screen, per scope.
    #[serde(default)]
    pub(crate) scope_descriptions: HashMap<String, String>,
    /// Sign-in through an upstream OpenID Connect identity provider (enterprise SSO).
    #[serde(default)]
    pub(crate) upstream: Option<UpstreamSection>,
    /// Offer the local password form (turn off to allow SSO only).
    #[serde(default = "yes")]
    pub(crate) local_login: bool,
    /// More authorization servers on the same listener, one per tenant, each with its own
    /// database and the issuer `<issuer>/tenants/<name>`.
    #[serde(default)]
    pub(crate) tenants: Vec<TenantSection>,
    /// Base64 of 32 random bytes; signing keys are stored encrypted under it. Give it as
    /// `${env:GATEHOUSE_KEY_ENCRYPTION_KEY}` (never in the file itself).
    #[serde(default)]
    pub(crate) key_encryption_key: Option<EnvString>,
    /// Require server-provided nonces in DPoP proofs at `/token` (RFC 9449 §8); the secret is
    /// kept in the database, so replicas agree.
    #[serde(default)]
    pub(crate) dpop_nonce: bool,
    /// Issuers whose JWT assertions the JWT-bearer grant accepts: enterprise IdPs' ID-JAGs
    /// (`id_jag:`) and workload platforms' tokens (`workload:`).
    #[serde(default)]
    pub(crate) jwt_bearer: Vec<JwtBearerIssuerSection>,
    /// Who may use the admin console at `/admin` (everyone else gets 403).
    #[serde(default)]
    pub(crate) admin: AdminSection,
}

/// The admin console's administrators.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    /// Local user names (subjects) that are administrators.
    #[serde(default)]
    pub(crate) users: Vec<String>,
    /// Groups from single sign-on (the `groups` claim) whose members are administrators.
    #[serde(default)]
    pub(crate) groups: Vec<String>,
    /// An administrator must have signed in within this many seconds; default 3600.
    #[serde(default)]
    pub(crate) max_age_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtBearerIssuerSection {
    /// A short name (logs; the default subject prefix `<name>:`).
    pub(crate) name: String,
    /// Exactly the assertions' `iss`.
    pub(crate) issuer: String,
    /// Default: from the issuer's discovery metadata.
    #[serde(default, deserialize_with = "env_expanded_opt")]
    pub(crate) jwks_uri: Option<String>,
    #[serde(default)]
    pub(crate) id_jag: Option<IdJagSection>,
    #[serde(default)]
    pub(crate) workload: Option<WorkloadSection>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdJagSection {
    /// The claim naming the user; default `sub`.
    #[serde(default = "default_subject_claim")]
    pub(crate) subject_claim: String,
    /// Default `<name>:`; `""` maps onto local account names.
    #[serde(default)]
    pub(crate) subject_prefix: Option<String>,
    /// The most this IdP's assertions may give; default what the resource knows.
    #[serde(default)]
    #[schemars(with = "Option<schema::ScopeList>")]
    pub(crate) scopes: Option<ScopeSet>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkloadSection {
    #[serde(default)]
    pub(crate) subject_prefix: Option<String>,
    pub(crate) rules: Vec<WorkloadRuleSection>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkloadRuleSection {
    /// Claims that must all have these values (a trailing `*` matches any rest).
    pub(crate) claims: std::collections::BTreeMap<String, String>,
    pub(crate) client_id: String,
    #[schemars(with = "schema::ScopeList")]
    pub(crate) scopes: ScopeSet,
}

fn default_upstream_scopes() -> String {
    "openid email profile".into()
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_subject_prefix() -> String {
    "sso:".into()
}

fn default_upstream_name() -> String {
    "single sign-on".into()
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamSection {
    #[schemars(with = "String")]
    pub(crate) issuer: Issuer,
    pub(crate) client_id: EnvString,
    pub(crate) client_secret: EnvString,
    #[serde(default = "default_upstream_scopes")]
    pub(crate) scopes: String,
    #[serde(default = "default_subject_claim")]
    pub(crate) subject_claim: String,
    #[serde(default = "default_subject_prefix")]
    pub(crate) subject_prefix: String,
    #[serde(default)]
    pub(crate) groups_claim: Option<String>,
    /// Shown on the sign-in button.
    #[serde(default = "default_upstream_name")]
    pub(crate) name: String,
}

/// The registration policy for clients nobody vetted (T17).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrationSection {
    /// Grant types they may hold; default `[authorization_code, refresh_token]`.
    #[serde(default)]
    pub(crate) grant_types: Option<Vec<String>>,
    /// Token endpoint authentication methods; default `[none]` (a request for a secret gets a
    /// public client instead).
    #[serde(default)]
    pub(crate) auth_methods: Option<Vec<String>>,
    /// Scopes their machine tokens may carry, where `client_credentials` is allowed above.
    #[serde(default)]
    #[schemars(with = "Option<schema::ScopeList>")]
    pub(crate) machine_scopes: Option<ScopeSet>,
    /// RFC 7591 initial access token: registration needs `Authorization: Bearer <it>`. Give it
    /// as `${env:…}`.
    #[serde(default)]
    pub(crate) initial_access_token: Option<EnvString>,
    /// Registrations per minute from all sources together; default 60.
    #[serde(default)]
    pub(crate) per_minute_total: Option<u32>,
    /// Self-registered clients without a grant are deleted after this many seconds; default
    /// 86400.
    #[serde(default)]
    pub(crate) unused_ttl_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantSection {
    /// `[a-z0-9-]`, 1 to 32 characters.
    pub(crate) name: String,
    pub(crate) database: EnvString,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceSection {
    #[schemars(with = "String")]
    pub(crate) resource: Resource,
    #[schemars(with = "schema::ScopeList")]
    pub(crate) scopes: ScopeSet,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// One JSON object per line (never a secret) instead of text.
    #[serde(default)]
    pub(crate) json: bool,
    /// `json` or `text` (the same as `json: true|false`).
    #[serde(default)]
    pub(crate) format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Json,
    Text,
}

impl LogConfig {
    pub(crate) fn is_json(&self) -> bool {
        match self.format {
            Some(f) => f == LogFormat::Json,
            None => self.json,
        }
    }
}

/// OpenTelemetry traces over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracesSection {
    /// The collector's OTLP/HTTP base URL (e.g. `http://127.0.0.1:4318`); spans go to
    /// `<it>/v1/traces` unless it already ends so.
    #[serde(deserialize_with = "env_expanded")]
    pub(crate) otlp_endpoint: String,
    /// `service.name` of the spans; default `gatehouse`.
    #[serde(default)]
    pub(crate) service_name: Option<String>,
    /// The share of new traces recorded, 0.0 … 1.0 (default 1.0); a caller's sampled flag is
    /// followed.
    #[serde(default)]
    pub(crate) sample_ratio: Option<f64>,
    /// Extra headers for the collector (e.g. an API key through `${env:…}`).
    #[serde(default)]
    pub(crate) headers: HashMap<String, EnvString>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct McpConfig {
    #[serde(default = "default_path")]
    pub(crate) path: String,
    /// Extra `Host` values accepted (DNS-rebinding protection); the public URL's host is
    /// always accepted.
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the endpoint; empty allows requests without `Origin` only
    /// plus same-origin.
    #[serde(default)]
    pub(crate) allowed_origins: Vec<String>,
}

fn default_path() -> String {
    "/mcp".into()
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            allowed_hosts: vec![],
            allowed_origins: vec![],
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerEntry {
    #[schemars(with = "String")]
    pub(crate) issuer: Issuer,
    #[serde(default)]
    pub(crate) jwks_uri: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IntrospectionSection {
    pub(crate) endpoint: EnvString,
    pub(crate) client_id: EnvString,
    pub(crate) client_secret: EnvString,
    #[serde(default = "default_cache_secs")]
    pub(crate) cache_seconds: u64,
}

fn default_cache_secs() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyEntry {
    pub(crate) name: String,
    /// `sha256:<hex>` as printed by `gatehouse apikey new`.
    pub(crate) hash: EnvString,
    #[serde(default)]
    #[schemars(with = "schema::ScopeList")]
    pub(crate) scopes: ScopeSet,
    /// RFC 3339 time after which the key stops working.
    #[serde(default)]
    pub(crate) expires: Option<String>,
    #[serde(default)]
    pub(crate) subject: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GuardSection {
    #[serde(default)]
    pub(crate) authorization_servers: Vec<IssuerEntry>,
    #[serde(default)]
    #[schemars(with = "schema::AudiencePolicyRepr")]
    pub(crate) audience_policy: AudiencePolicy,
    #[serde(default)]
    pub(crate) strict_typ: bool,
    #[serde(default)]
    #[schemars(with = "Option<schema::ScopeList>")]
    pub(crate) scopes_supported: Option<ScopeSet>,
    #[serde(default)]
    #[schemars(with = "schema::ScopeList")]
    pub(crate) required_scopes: ScopeSet,
    #[serde(default)]
    #[schemars(with = "HashMap<String, schema::ScopeList>")]
    pub(crate) tool_scopes: HashMap<String, ScopeSet>,
    #[serde(default)]
    pub(crate) resource_name: Option<String>,
    #[serde(default)]
    pub(crate) resource_documentation: Option<String>,
    #[serde(default)]
    pub(crate) introspection: Option<IntrospectionSection>,
    #[serde(default)]
    pub(crate) api_keys: Vec<ApiKeyEntry>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) ip_allow: Vec<ipnet::IpNet>,
    /// Receive revocations from external authorization servers as pushed Security Event
    /// Tokens (RFC 8935; CAEP `session-revoked`, `credential-change`).
    #[serde(default)]
    pub(crate) security_events: Option<SecurityEventsSection>,
    /// Require server-provided nonces in DPoP proofs (RFC 9449 §9).
    #[serde(default)]
    pub(crate) dpop_nonce: bool,
    /// The nonces' MAC secret (at least 16 characters; give it as `${env:…}`): replicas must
    /// share it, so it is required with `shared_state`. Without it: a secret of this process.
    #[serde(default)]
    pub(crate) dpop_nonce_secret: Option<EnvString>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecurityEventsSection {
    /// Where transmitters POST their SETs; default `/security-events`.
    #[serde(default = "default_events_path")]
    pub(crate) path: String,
    /// What the SETs' `aud` must name; default: the endpoint's URL and `public_url`.
    #[serde(default)]
    pub(crate) audience: Vec<String>,
    pub(crate) transmitters: Vec<TransmitterEntry>,
}

/// The receiver as `serve` builds it.
pub(crate) struct EventsPlan {
    pub(crate) path: String,
    pub(crate) audience: Vec<String>,
    pub(crate) transmitters: Vec<gatehouse_tokens::Transmitter>,
}

fn default_events_path() -> String {
    "/security-events".into()
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransmitterEntry {
    /// The SETs' `iss`.
    pub(crate) issuer: String,
    #[serde(deserialize_with = "env_expanded")]
    pub(crate) jwks_uri: String,
    /// The authorization server (one of `authorization_servers`) whose tokens its events are
    /// about; default: the transmitter's issuer.
    #[serde(default)]
    pub(crate) authorization_server: Option<String>,
}

/// Options that weaken security, off by default and named so in the file.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Dangerous {
    /// Allow fetching metadata/JWKS from these loopback `host:port` authorities over http (a
    /// local authorization server in development).
    #[serde(default)]
    pub(crate) allow_loopback_fetch: Vec<String>,
    /// Allow fetching client metadata documents and client `jwks_uri` from these loopback
    /// `host:port` authorities. Separate from `allow_loopback_fetch`: those URLs are chosen by
    /// strangers.
    #[serde(default)]
    pub(crate) allow_loopback_client_fetch: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub(crate) fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub(crate) fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // The policy file travels with the config: a relative path is relative to it.
        if let Some(f) = cfg
            .gateway
            .as_mut()
            .and_then(|g| g.policy.as_mut())
            .and_then(|p| p.file.as_mut())
            && std::path::Path::new(f.as_str()).is_relative()
            && let Some(dir) = std::path::Path::new(path).parent()
        {
            *f = dir.join(f.as_str()).display().to_string();
        }
        cfg.normalize().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    pub(crate) fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    /// The canonical resource URI of the protected endpoint.
    pub(crate) fn resource(&self) -> Result<Resource, String> {
        let base = self.public_url();
        let base = base.trim_end_matches('/');
        Resource::parse(&format!("{base}{}", self.mcp.path))
            .map_err(|e| format!("public_url + mcp.path: {e}"))
    }

    /// The embedded authorization server's issuer (configured, or the public URL).
    pub(crate) fn embedded_issuer(&self) -> Result<Option<Issuer>, String> {
        let Some(a) = &self.authorization_server else {
            return Ok(None);
        };
        match &a.issuer {
            Some(i) => Ok(Some(i.clone())),
            None => Issuer::parse(self.public_url().trim_end_matches('/'))
                .map(Some)
                .map_err(|e| format!("authorization_server.issuer (from public_url): {e}")),
        }
    }

    /// The issuers of the embedded tenants: `<issuer>/tenants/<name>`.
    pub(crate) fn tenant_issuers(&self) -> Result<Vec<(String, Issuer)>, String> {
        let (Some(a), Some(base)) = (&self.authorization_server, self.embedded_issuer()?) else {
            return Ok(vec![]);
        };
        let mut seen = std::collections::HashSet::new();
        a.tenants
            .iter()
            .map(|t| {
                let ok = (1..=32).contains(&t.name.len())
                    && t.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(format!(
                        "authorization_server.tenants: name {:?} must be [a-z0-9-], 1 to 32 characters",
                        t.name
                    ));
                }
                if !seen.insert(t.name.as_str()) {
                    return Err(format!("authorization_server.tenants: {:?} appears twice", t.name));
                }
                let i = Issuer::parse(&format!("{}/tenants/{}", base.as_str().trim_end_matches('/'), t.name))
                    .map_err(|e| format!("tenant {}: {e}", t.name))?;
                Ok((t.name.clone(), i))
            })
            .collect()
    }

    /// The Security Event Token receiver, checked.
    pub(crate) fn security_events(&self) -> Result<Option<EventsPlan>, String> {
        let Some(ev) = &self.guard.security_events else {
            return Ok(None);
        };
        if !ev.path.starts_with('/') || ev.path.contains(['?', '#']) {
            return Err("guard.security_events.path must be an absolute path".into());
        }
        if ev.transmitters.is_empty() {
            return Err("guard.security_events.transmitters: list at least one".into());
        }
        let trusted = |i: &str| {
            self.guard
                .authorization_servers
                .iter()
                .any(|a| a.issuer.as_str().trim_end_matches('/') == i.trim_end_matches('/'))
        };
        let transmitters = ev
            .transmitters
            .iter()
            .enumerate()
            .map(|(n, t)| {
                let tokens_of = t.authorization_server.clone().unwrap_or_else(|| t.issuer.clone());
                if !trusted(&tokens_of) {
                    return Err(format!("guard.security_events.transmitters[{n}]: {tokens_of} is not one of guard.authorization_servers"));
                }
                url::Url::parse(&t.jwks_uri).map_err(|e| {
                    format!("guard.security_events.transmitters[{n}].jwks_uri: {e}")
                })?;
                Ok(gatehouse_tokens::Transmitter {
                    issuer: t.issuer.clone(),
                    jwks_uri: t.jwks_uri.clone(),
                    tokens_of,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let public = self.public_url();
        let audience = if ev.audience.is_empty() {
            vec![
                format!("{}{}", public.trim_end_matches('/'), ev.path),
                public.trim_end_matches('/').to_owned(),
            ]
        } else {
            ev.audience.clone()
        };
        Ok(Some(EventsPlan {
            path: ev.path.clone(),
            audience,
            transmitters,
        }))
    }

    /// The embedded issuers are trusted by the guard without being listed twice; a loopback one
    /// may be fetched over http (it is this very process).
    fn normalize(&mut self) -> Result<(), String> {
        let Some(issuer) = self.embedded_issuer()? else {
            return Ok(());
        };
        if issuer.url().scheme() != "https" && !issuer.is_loopback() {
            return Err(format!(
                "authorization_server.issuer {issuer} must be https off loopback"
            ));
        }
        if !self
            .guard
            .authorization_servers
            .iter()
            .any(|a| a.issuer == issuer)
        {
            self.guard.authorization_servers.push(IssuerEntry {
                issuer: issuer.clone(),
                jwks_uri: None,
            });
        }
        for (_, t) in self.tenant_issuers()? {
            if !self
                .guard
                .authorization_servers
                .iter()
                .any(|a| a.issuer == t)
            {
                self.guard.authorization_servers.push(IssuerEntry {
                    issuer: t,
                    jwks_uri: None,
                });
            }
        }
        if issuer.is_loopback() {
            let u = issuer.url();
            if let (Some(h), Some(p)) = (u.host_str(), u.port_or_known_default()) {
                self.dangerous.allow_loopback_fetch.push(format!("{h}:{p}"));
            }
        }
        Ok(())
    }

    /// Is this URL's `host:port` one of the `dangerous.allow_loopback_fetch` authorities? Exact,
    /// like the fetcher's own rule (a prefix would let `127.0.0.1` match `127.0.0.10:9`).
    fn loopback_fetch_allowed(&self, u: &url::Url) -> bool {
        let (Some(h), Some(p)) = (u.host_str(), u.port_or_known_default()) else {
            return false;
        };
        let authority = format!("{h}:{p}");
        self.dangerous
            .allow_loopback_fetch
            .iter()
            .any(|x| x.eq_ignore_ascii_case(&authority))
    }

    fn validate(&self) -> Result<(), String> {
        self.limits.sessions()?;
        if let Some(i) = &self.guard.introspection
            && i.cache_seconds > 300
        {
            // A cached answer outlives a revocation at the authorization server by this much.
            return Err("guard.introspection.cache_seconds must be at most 300".into());
        }
        self.security_events()?;
        if let Some(s) = &self.shared_state {
            gatehouse_guard::SharedSessions::open(&s.redis_url.0)
                .map_err(|e| format!("shared_state.redis_url: {e}"))?;
        }
        // The gateway's checks are its translation into the gateway's spec.
        crate::plan::gateway(self)?;
        if let Some(a) = &self.authorization_server {
            // What `serve` checks when it builds the authorization server, checked here too so
            // `config check` accepts exactly what `serve` does.
            crate::embedded::registration_policy(a)?;
            crate::embedded::access_token_ttl(a)?;
            crate::embedded::jwt_bearer_issuers(a)?;
            if let Some(up) = &a.upstream {
                if up.issuer.url().scheme() != "https"
                    && !self.loopback_fetch_allowed(up.issuer.url())
                {
                    return Err(format!(
                        "authorization_server.upstream.issuer {} is not https (a loopback development IdP needs dangerous.allow_loopback_fetch)",
                        up.issuer
                    ));
                }
                if !up.scopes.split(' ').any(|s| s == "openid") {
                    return Err("authorization_server.upstream.scopes must include openid".into());
                }
            }
            if !a.local_login && a.upstream.is_none() {
                return Err("authorization_server: local_login is off and no upstream is configured; nobody could sign in".into());
            }
            if let Some(k) = &a.key_encryption_key {
                gatehouse_server::KeyEncryptionKey::from_base64(&k.0)
                    .map_err(|e| format!("authorization_server.key_encryption_key: {e}"))?;
            }
        }
        if !self.mcp.path.starts_with('/') || self.mcp.path.contains(['?', '#']) {
            return Err(format!(
                "mcp.path {:?} must be a path starting with '/'",
                self.mcp.path
            ));
        }
        let resource = self.resource()?;
        if resource.url().scheme() == "http" && !resource.is_loopback() {
            return Err(format!(
                "public_url {} is plain http off loopback; use https (terminate TLS in front and set public_url)",
                self.public_url()
            ));
        }
        let g = &self.guard;
        if g.authorization_servers.is_empty() && g.api_keys.is_empty() && g.introspection.is_none()
        {
            return Err("guard: configure authorization_servers, introspection or api_keys; nothing could authenticate".into());
        }
        for a in &g.authorization_servers {
            if a.issuer.url().scheme() != "https" && !self.loopback_fetch_allowed(a.issuer.url()) {
                return Err(format!(
                    "guard.authorization_servers: issuer {} is not https (a loopback development issuer needs dangerous.allow_loopback_fetch)",
                    a.issuer
                ));
            }
        }
        for (name, scopes) in &g.tool_scopes {
            if scopes.is_empty() {
                return Err(format!("guard.tool_scopes.{name}: empty scope list"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for k in &g.api_keys {
            if !names.insert(&k.name) {
                return Err(format!("guard.api_keys: duplicate name {:?}", k.name));
            }
            gatehouse_guard::ApiKey::parse_hash(&k.hash.0)
                .map_err(|e| format!("guard.api_keys.{}.hash: {e}", k.name))?;
            if let Some(e) = &k.expires {
                time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                    .map_err(|err| {
                        format!(
                            "guard.api_keys.{}.expires: {e:?} is not an RFC 3339 time: {err}",
                            k.name
                        )
                    })?;
            }
        }
        for s in g.scopes_supported.iter().flat_map(|s| s.iter()) {
            let s = s.as_str();
            if s == "*" || s == "all" || s == "full-access" || s == "offline_access" {
                return Err(format!(
                    "guard.scopes_supported: {s:?} must not be advertised (RS-20)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gw10_upstream_urls_to_metadata_and_odd_ranges_are_refused() {
        let cfg = "listen: 127.0.0.1:1\nguard: {api_keys: [{name: a, hash: 'sha256:ab'}]}\ngateway:\n  upstreams:\n    - {name: meta, url: 'http://2852039166/latest'}\n";
        let err = super::Config::parse("t.yaml", cfg)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("GW-10") && err.contains("metadata"), "{err}");
    }

    use super::*;

    const MIN: &str = "listen: 127.0.0.1:8080\nguard:\n  authorization_servers:\n    - issuer: https://auth.example.com\n  required_scopes: [mcp:basic]\n";

    #[test]
    fn rs_h1_rs_h2_session_limits_default_and_are_checked() {
        let c = Config::parse("t.yaml", MIN).expect("valid");
        let l = c.limits.sessions().expect("defaults");
        assert_eq!((l.per_subject, l.total), (64, 10_000));
        for (bad, why) in [
            ("limits: {sessions_per_subject: 0}\n", "at least 1"),
            (
                "limits: {sessions_per_subject: 10, sessions_total: 10}\n",
                "larger than",
            ),
            ("limits: {session_idle_seconds: 0}\n", "at least 1"),
            (
                "limits: {session_idle_seconds: 30, session_reclaim_seconds: 60}\n",
                "cannot exceed",
            ),
            (
                "shared_state: {redis_url: 'http://x'}\n",
                "shared_state.redis_url",
            ),
        ] {
            let e = Config::parse("t.yaml", &format!("{bad}{MIN}"))
                .expect_err(bad)
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let c = Config::parse(
            "t.yaml",
            &format!("limits: {{sessions_per_subject: 3, sessions_total: 4}}\n{MIN}"),
        )
        .expect("valid");
        assert_eq!(c.limits.sessions().expect("ok").per_subject, 3);
    }

    #[test]
    fn minimal_config_parses() {
        let c = Config::parse("t.yaml", MIN).expect("valid");
        assert_eq!(
            c.resource().expect("resource").as_str(),
            "http://127.0.0.1:8080/mcp"
        );
        assert_eq!(c.guard.required_scopes.to_string(), "mcp:basic");
    }

    #[test]
    fn unknown_keys_rejected_with_line_and_column() {
        let text = format!("{MIN}  requierd_scopes: [x]\n");
        let e = Config::parse("t.yaml", &text)
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("requierd_scopes"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("column"), "{e}");
    }

    #[test]
    fn env_expansion() {
        let get = |n: &str| (n == "SECRET").then(|| "s3cr$t".to_owned());
        assert_eq!(expand_env("a${env:SECRET}b", get).expect("ok"), "as3cr$tb");
        assert_eq!(
            expand_env("$${env:SECRET}", get).expect("ok"),
            "${env:SECRET}"
        );
        assert_eq!(expand_env("cost: $5", get).expect("ok"), "cost: $5");
        assert!(
            expand_env("${env:MISSING}", get)
                .expect_err("missing")
                .contains("MISSING")
        );
        assert!(expand_env("${env:BAD NAME}", get).is_err());
        assert!(expand_env("${env:SECRET", get).is_err());
    }

    #[test]
    fn missing_env_var_reported_with_location() {
        let text = format!(
            "{MIN}  introspection:\n    endpoint: https://auth.example.com/introspect\n    client_id: rs\n    client_secret: ${{env:GATEHOUSE_TEST_UNSET_VAR}}\n"
        );
        let e = Config::parse("t.yaml", &text)
            .expect_err("unset var")
            .to_string();
        assert!(e.contains("GATEHOUSE_TEST_UNSET_VAR is not set"), "{e}");
        // yaml_serde places custom errors at the enclosing mapping, with its key path.
        assert!(
            e.contains("guard.introspection") && e.contains("line 7"),
            "{e}"
        );
    }

    #[test]
    fn each_mistake_has_a_clear_error() {
        for (text, needle) in [
            (
                "listen: nope\nguard: {authorization_servers: [{issuer: https://a.example}]}\n",
                "listen",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\n",
                "nothing could authenticate",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {authorization_servers: [{issuer: http://a.example}]}\n",
                "not https",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {authorization_servers: [{issuer: 'https://a.example#x'}]}\n",
                "fragment",
            ),
            (
                "listen: 127.0.0.1:1\npublic_url: http://mcp.example.com\nguard: {authorization_servers: [{issuer: https://a.example}]}\n",
                "plain http off loopback",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {api_keys: [{name: a, hash: 'sha256:00'}]}\n",
                "64 hex",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {authorization_servers: [{issuer: https://a.example}], scopes_supported: ['*']}\n",
                "RS-20",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {authorization_servers: [{issuer: https://a.example}], required_scopes: 'a\"b'}\n",
                "invalid scope",
            ),
            (
                "listen: 127.0.0.1:1\nmcp: {path: mcp}\nguard: {authorization_servers: [{issuer: https://a.example}]}\n",
                "mcp.path",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', tenants: [{name: Bad_Name, database: 'sqlite:///tmp/y.db'}]}\n",
                "must be [a-z0-9-]",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', tenants: [{name: a, database: 'sqlite:///tmp/y.db'}, {name: a, database: 'sqlite:///tmp/z.db'}]}\n",
                "appears twice",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', local_login: false}\n",
                "nobody could sign in",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {authorization_servers: [{issuer: 'http://127.0.0.1:9'}]}\ndangerous: {allow_loopback_fetch: ['127.0.0.1:90']}\n",
                "is not https",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', upstream: {issuer: 'http://idp.example', client_id: a, client_secret: b}}\n",
                "is not https",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', upstream: {issuer: 'https://idp.example', client_id: a, client_secret: b, scopes: email}}\n",
                "must include openid",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', key_encryption_key: c2hvcnQ=}\n",
                "32 bytes",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', access_token_ttl_seconds: 10}\n",
                "30 … 3600",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\nauthorization_server: {database: 'sqlite:///tmp/x.db', registration: {grant_types: [password]}}\n",
                "cannot be opened",
            ),
            (
                "listen: 127.0.0.1:1\nguard: {}\ngateway: {max_batch: 0, upstreams: []}\n",
                "max_batch",
            ),
        ] {
            let e = Config::parse("t.yaml", text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
