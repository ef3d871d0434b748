//! The resource-server guard: a tower layer that protects any MCP server exactly as the MCP
//! authorization spec demands.
//!
//! Per request, in order (each step's threat in brackets):
//! 1. client address against the IP allow-list [exposure of internal servers];
//! 2. credentials: exactly one `Authorization: Bearer` header; tokens in the query string are
//!    ignored (RS-14) and a second transmission method is a 400 (RS-10) [token leakage via URLs];
//! 3. authentication: a static API key (hashed, constant-time, expiring) or an access token
//!    validated for *this* resource (RS-07, RS-12) [passthrough, audience confusion];
//! 4. authorization: the scopes every request needs plus those of each tool the JSON-RPC body
//!    calls (RS-08, RS-09); 2026-07-28 `Mcp-Method`/`Mcp-Name` headers must agree with the body
//!    (GW-15) [header spoofing];
//! 5. the validated [`Principal`] is put in the request extensions for handlers (RS-21).
//!
//! Every refusal is built in [`GuardError::into_response`], the one place errors meet the wire.
#![forbid(unsafe_code)]

mod apikey;
mod error;
mod events;
mod layer;
mod metadata;
mod sessions;

pub use apikey::{API_KEY_PREFIX, ApiKey, ApiKeyError, generate_api_key};
pub use error::GuardError;
pub use events::SecurityEvents;
pub use gatehouse_tokens::{Principal, PrincipalSource};
pub use layer::{GuardLayer, GuardService};
pub use sessions::{SessionLimits, SessionsFull, SharedSessions};

use gatehouse_core::{Clock, Issuer, Resource, ScopeSet};
use gatehouse_tokens::TokenValidator;
use std::collections::HashMap;
use std::sync::Arc;

/// What the guard enforces for one protected MCP endpoint.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// The endpoint's canonical URI; the PRM `resource` and the required token audience.
    pub resource: Resource,
    /// Issuers listed in the PRM (and the only ones whose tokens are accepted).
    pub authorization_servers: Vec<Issuer>,
    /// PRM `scopes_supported`: keep it minimal (RS-20).
    pub scopes_supported: ScopeSet,
    /// Scopes every request needs; also the `scope` of the 401 challenge (RS-06).
    pub required_scopes: ScopeSet,
    /// Extra scopes per tool name (`tools/call`).
    pub tool_scopes: HashMap<String, ScopeSet>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
    /// Static API keys for team use; several may be active at once for rotation.
    pub api_keys: Vec<ApiKey>,
    /// When non-empty, only these client networks are served.
    pub ip_allow: Vec<ipnet::IpNet>,
    /// Largest request body the guard buffers to read the JSON-RPC method.
    pub max_body_bytes: usize,
    /// How many MCP sessions each subject and the endpoint may hold (issue 20).
    pub sessions: SessionLimits,
    /// Count sessions in Redis, shared by every replica, instead of in this process.
    pub shared_sessions: Option<SharedSessions>,
    /// Require server-provided nonces in DPoP proofs (RFC 9449 §9); replicas must share the
    /// secret.
    pub dpop_nonces: Option<gatehouse_tokens::dpop::Nonces>,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSessions(redis)")
    }
}

impl GuardConfig {
    pub fn new(resource: Resource, authorization_servers: Vec<Issuer>) -> Self {
        Self {
            resource,
            authorization_servers,
            scopes_supported: ScopeSet::new(),
            required_scopes: ScopeSet::new(),
            tool_scopes: HashMap::new(),
            resource_name: None,
            resource_documentation: None,
            api_keys: Vec::new(),
            ip_allow: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            sessions: SessionLimits::default(),
            shared_sessions: None,
            dpop_nonces: None,
        }
    }

    /// All scopes a call of `tool` needs.
    pub fn scopes_for_tool(&self, tool: &str) -> ScopeSet {
        match self.tool_scopes.get(tool) {
            Some(s) => self.required_scopes.union(s),
            None => self.required_scopes.clone(),
        }
    }
}

pub(crate) struct GuardInner {
    pub(crate) cfg: GuardConfig,
    pub(crate) validator: Arc<dyn TokenValidator>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) prm_url: String,
    pub(crate) sessions: sessions::Sessions,
    /// DPoP proofs seen, when no Redis is shared.
    pub(crate) dpop_replay: gatehouse_tokens::dpop::ReplayCache,
    pub(crate) metrics: GuardMetrics,
}

/// The guard's metric handles, registered on first use (after the recorder is installed):
/// looking a labelled series up in the registry on every request costs more than counting.
#[derive(Default)]
pub(crate) struct GuardMetrics {
    outcomes: [std::sync::OnceLock<metrics::Counter>; error::OUTCOMES.len()],
    latency: std::sync::OnceLock<metrics::Histogram>,
}

impl GuardMetrics {
    pub(crate) fn record(&self, outcome: &'static str, took: std::time::Duration) {
        if let Some(i) = error::OUTCOMES.iter().position(|o| *o == outcome)
            && let Some(c) = self.outcomes.get(i)
        {
            c.get_or_init(
                || metrics::counter!("gatehouse_guard_requests_total", "outcome" => outcome),
            )
            .increment(1);
        }
        self.latency
            .get_or_init(|| metrics::histogram!("gatehouse_guard_request_seconds"))
            .record(took.as_secs_f64());
    }
}

/// A configured guard. Cheap to clone; hands out the layer and the metadata routes.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

impl Guard {
    pub fn new(
        cfg: GuardConfig,
        validator: Arc<dyn TokenValidator>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let prm_url = cfg.resource.prm_url();
        let sessions = sessions::Sessions::new(
            cfg.sessions,
            cfg.shared_sessions.as_ref(),
            cfg.resource.as_str(),
        );
        Self {
            inner: Arc::new(GuardInner {
                cfg,
                validator,
                clock,
                prm_url,
                sessions,
                dpop_replay: Default::default(),
                metrics: Default::default(),
            }),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.inner.cfg
    }

    /// The layer to wrap the MCP endpoint with (use `route_layer`/`route_service` so unknown
    /// paths stay 404).
    pub fn layer(&self) -> GuardLayer {
        GuardLayer::new(self.inner.clone())
    }

    /// The Protected Resource Metadata document (RS-01, RS-04).
    pub fn prm(&self) -> gatehouse_core::ProtectedResourceMetadata {
        metadata::prm(&self.inner.cfg)
    }

    /// Routes serving the PRM at the path-inserted and the root well-known URLs (RS-02, RS-03),
    /// without authentication and with CORS (RS-22).
    pub fn metadata_router(&self) -> axum::Router {
        metadata::router(&self.inner.cfg, true)
    }

    /// Only the path-inserted PRM: for one of several resources on a host (gateway upstreams),
    /// where the root document belongs to another.
    pub fn path_metadata_router(&self) -> axum::Router {
        metadata::router(&self.inner.cfg, false)
    }
}
