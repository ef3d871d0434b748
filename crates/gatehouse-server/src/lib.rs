//! Gatehouse's embedded OAuth 2.1 authorization server for MCP.
//!
//! What each mechanism rules out (THREATS.md ids):
//! - PKCE S256 required, `plain` and missing refused (T7: a captured code is useless);
//! - redirect URIs matched exactly, loopback port flexibility only for IP literals, a mismatch
//!   gets an error page and never a redirect (AS-09, AS-11);
//! - codes single-use and short-lived; a replay revokes what the code issued (T9);
//! - refresh tokens rotate on every use; reuse revokes the family, with one bounded grace use
//!   for racing refreshes (T9);
//! - access tokens are ES256 JWTs audience-bound to one resource (RFC 8707, T8);
//! - consent is stored per user *and* per client, and a flow is bound to the browser that
//!   started it (T1); every form carries a CSRF token; pages cannot be framed (T5, T12);
//! - client metadata documents are fetched through the SSRF-safe fetcher (T6);
//! - open registration is rate-limited and marked unverified on the consent screen (T11);
//! - codes, refresh tokens, client secrets and session ids are stored only as hashes (T13).
#![forbid(unsafe_code)]

mod authorize;
mod cimd;
mod clients;
mod error;
mod keys;
mod metadata;
mod pages;
mod register;
mod secrets;
mod token;
mod upstream;

pub use error::OAuthError;
pub use keys::{KeyEncryptionKey, KeyManager};
pub use secrets::{hash_password, random_id, random_token, sha256_hex, verify_password};
pub use upstream::UpstreamIdp;

use gatehouse_core::{Clock, Issuer, Resource, ScopeSet};
use gatehouse_fetch::Fetcher;
use gatehouse_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A protected resource this server issues tokens for, and the scopes it understands.
#[derive(Debug, Clone)]
pub struct ResourceEntry {
    pub resource: Resource,
    pub scopes: ScopeSet,
}

/// Configuration of the authorization server.
#[derive(Debug, Clone)]
pub struct AuthServerConfig {
    /// Exactly the issuer string clients compare against (AS-02).
    pub issuer: Issuer,
    /// Resources tokens may be issued for (RFC 8707); anything else is `invalid_target`.
    pub resources: Vec<ResourceEntry>,
    /// Used when a request names no resource.
    pub default_resource: Option<Resource>,
    /// Plain-language descriptions of scopes for the consent screen.
    pub scope_descriptions: HashMap<String, String>,
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
    pub code_ttl: i64,
    /// A rotated refresh token is accepted once more within this many seconds (racing refreshes).
    pub refresh_grace_secs: i64,
    pub session_ttl: i64,
    /// Dynamic client registration (RFC 7591) on/off, and registrations per source address per
    /// minute.
    pub dcr_enabled: bool,
    pub dcr_per_minute: u32,
    /// Client ID Metadata Documents on/off.
    pub cimd_enabled: bool,
    /// `Secure` cookies with the `__Host-` prefix (off only for a loopback issuer).
    pub secure_cookies: bool,
    /// Sign-in through an upstream OpenID Connect identity provider (enterprise SSO).
    pub upstream: Option<UpstreamIdp>,
    /// Offer the local user-name/password form (on unless only SSO should be used).
    pub local_login: bool,
    /// Encrypt signing keys at rest under this key (strongly recommended in production).
    pub key_encryption_key: Option<KeyEncryptionKey>,
}

impl AuthServerConfig {
    pub fn new(issuer: Issuer, resources: Vec<ResourceEntry>) -> Self {
        let secure_cookies = !issuer.is_loopback();
        let default_resource = (resources.len() == 1).then(|| resources[0].resource.clone());
        let mut scope_descriptions = HashMap::new();
        for (s, d) in [
            ("mcp:basic", "Use this server's basic tools"),
            ("notes:write", "Create notes on your behalf"),
            ("offline_access", "Stay signed in (a refresh token)"),
        ] {
            scope_descriptions.insert(s.to_owned(), d.to_owned());
        }
        Self {
            issuer,
            resources,
            default_resource,
            scope_descriptions,
            access_token_ttl: 300,
            refresh_token_ttl: 30 * 86_400,
            code_ttl: 60,
            refresh_grace_secs: 5,
            session_ttl: 8 * 3600,
            dcr_enabled: true,
            dcr_per_minute: 10,
            cimd_enabled: true,
            secure_cookies,
            upstream: None,
            local_login: true,
            key_encryption_key: None,
        }
    }

    /// Every scope any resource understands, plus `offline_access`.
    pub fn scopes_supported(&self) -> ScopeSet {
        let mut all = self
            .resources
            .iter()
            .fold(ScopeSet::new(), |acc, r| acc.union(&r.scopes));
        if let Ok(s) = gatehouse_core::Scope::parse("offline_access") {
            all.insert(s);
        }
        all
    }

    /// An endpoint URL under the issuer (`{issuer}{path}`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.as_str().trim_end_matches('/'))
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: AuthServerConfig,
    pub(crate) store: Store,
    pub(crate) keys: KeyManager,
    pub(crate) fetcher: Fetcher,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cimd_cache: cimd::Cache,
    /// DCR registrations per source address in the current minute.
    pub(crate) dcr_window: Mutex<(i64, HashMap<std::net::IpAddr, u32>)>,
    /// Stored public clients, kept briefly (see `clients::PUBLIC_CLIENT_TTL`).
    pub(crate) public_clients: clients::PublicClients,
}

/// The authorization server. Cheap to clone.
#[derive(Clone)]
pub struct AuthServer {
    pub(crate) inner: Arc<Inner>,
}

impl AuthServer {
    /// Builds the server; makes sure a signing key exists.
    pub async fn new(
        cfg: AuthServerConfig,
        store: Store,
        fetcher: Fetcher,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OAuthError> {
        let keys = KeyManager::load(
            store.clone(),
            clock.clone(),
            cfg.access_token_ttl,
            cfg.key_encryption_key.clone(),
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                store,
                keys,
                fetcher,
                clock,
                cimd_cache: cimd::Cache::default(),
                dcr_window: Mutex::new((0, HashMap::new())),
                public_clients: clients::PublicClients::default(),
            }),
        })
    }

    pub fn config(&self) -> &AuthServerConfig {
        &self.inner.cfg
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn keys(&self) -> &KeyManager {
        &self.inner.keys
    }

    /// One round of housekeeping: delete expired codes, sessions, pending requests, refresh
    /// tokens and assertion ids, and reload signing keys (another replica or `gatehouse admin keys
    /// rotate` may have rotated them). Returns how many rows were purged.
    pub async fn maintain(&self) -> Result<u64, OAuthError> {
        let n = self
            .inner
            .store
            .purge_expired(self.inner.clock.now_unix())
            .await?;
        self.inner.keys.reload().await?;
        Ok(n)
    }

    /// Runs [`AuthServer::maintain`] every `every` until the process ends.
    pub fn spawn_maintenance(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match s.maintain().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "maintenance"),
                    Err(e) => tracing::warn!(error = %e.description, "maintenance failed"),
                }
            }
        })
    }

    /// All routes: discovery, JWKS, authorize/login/consent, token, register, revoke, introspect.
    pub fn router(&self) -> axum::Router {
        use axum::routing::{get, post};
        let issuer_path = self
            .inner
            .cfg
            .issuer
            .url()
            .path()
            .trim_end_matches('/')
            .to_owned();
        let p = |s: &str| format!("{issuer_path}{s}");
        let mut r = axum::Router::new()
            .route(&p("/jwks"), get(metadata::jwks))
            .route(&p("/authorize"), get(authorize::authorize))
            .route(&p("/login"), post(authorize::login))
            .route(&p("/login/upstream"), post(upstream::start))
            .route(&p("/login/callback"), get(upstream::callback))
            .route(&p("/consent"), post(authorize::consent))
            .route(&p("/token"), post(token::token))
            .route(&p("/revoke"), post(token::revoke))
            .route(&p("/introspect"), post(token::introspect))
            .route(&p("/register"), post(register::register));
        for path in metadata::well_known_paths(&self.inner.cfg.issuer) {
            r = r.route(&path, get(metadata::metadata));
        }
        r.with_state(self.clone())
    }
}
