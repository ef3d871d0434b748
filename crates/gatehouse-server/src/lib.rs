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
//! - codes, refresh tokens, client secrets and session ids are stored only as hashes (T13);
//! - the device grant's user codes are throttled per source, its consent is never remembered
//!   and warns against codes someone else sent (RFC 8628 §5; see `device.rs`).
#![forbid(unsafe_code)]

mod assertion;
mod authorize;
mod cimd;
mod clients;
mod console;
mod device;
mod error;
mod keys;
mod metadata;
mod pages;
mod register;
mod secrets;
mod source;
mod token;
mod upstream;

pub use assertion::{AssertionIssuer, AssertionKind, WorkloadRule};
pub use console::{AuditEntry, AuditSnapshot, AuditTrail, ChainStatus, ConsoleConfig};
pub use error::OAuthError;
pub use keys::{KeyEncryptionKey, KeyManager};
pub use secrets::{hash_password, random_id, random_token, sha256_hex, verify_password};
pub use upstream::UpstreamIdp;

use gatehouse_core::{Clock, Issuer, Resource, ScopeSet};
use gatehouse_fetch::Fetcher;
use gatehouse_store::Store;
use gatehouse_tokens::Revocations;
use std::collections::HashMap;
use std::sync::Arc;

/// A protected resource this server issues tokens for, and the scopes it understands.
#[derive(Debug, Clone)]
pub struct ResourceEntry {
    pub resource: Resource,
    pub scopes: ScopeSet,
}

/// What a stranger may register without an operator (DCR, and what metadata-document clients
/// may be): by default a public `authorization_code` client and nothing more (T17). Machine
/// grants, token exchange and introspection belong to operator-registered clients.
#[derive(Debug, Clone)]
pub struct RegistrationPolicy {
    /// Grant types a self-registered client may hold (`authorization_code`, `refresh_token`,
    /// `urn:ietf:params:oauth:grant-type:device_code`, `client_credentials`).
    pub grant_types: Vec<String>,
    /// Token endpoint authentication methods it may use (`none`, `client_secret_basic`,
    /// `client_secret_post`, `private_key_jwt`). A request for another one is refused.
    pub auth_methods: Vec<String>,
    /// The scopes a self-registered client's machine tokens (`client_credentials`) may carry;
    /// user tokens are bounded by the user's consent instead.
    pub machine_scopes: ScopeSet,
    /// SHA-256 (hex) of an initial access token (RFC 7591 §3): when set, registration needs
    /// `Authorization: Bearer <it>`.
    pub initial_access_token_hash: Option<String>,
    /// Registrations per source address per minute, and in all per minute (AS-26).
    pub per_minute_per_source: u32,
    pub per_minute_total: u32,
    /// Self-registered clients that got no grant within this many seconds are deleted (AS-26).
    pub unused_ttl_secs: i64,
}

impl Default for RegistrationPolicy {
    fn default() -> Self {
        Self {
            // The device grant is a user's sign-in like the code flow: the user sees who asks
            // (marked unverified) and a phishing warning, and always decides anew.
            grant_types: vec![
                "authorization_code".into(),
                "refresh_token".into(),
                device::DEVICE_CODE_GRANT.into(),
            ],
            auth_methods: vec!["none".into()],
            machine_scopes: ScopeSet::new(),
            initial_access_token_hash: None,
            per_minute_per_source: 10,
            per_minute_total: 60,
            unused_ttl_secs: 86_400,
        }
    }
}

/// Sign-in throttling (T19): per account and per source address, failures in a window lead to
/// a growing delay and then a temporary lock; the same for names that are not accounts, so the
/// answers reveal nothing about which exist.
#[derive(Debug, Clone)]
pub struct LoginThrottle {
    /// The window failures are counted in (seconds).
    pub window_secs: i64,
    /// Failures allowed per account before each further one waits (doubling from 2 s).
    pub free_failures: i64,
    /// Failures per account after which it is locked for `lock_secs`.
    pub lock_after: i64,
    pub lock_secs: i64,
    /// Failures per source address (any accounts) after which it is locked for `lock_secs`.
    pub per_source: i64,
    /// Password checks running at once in this process; more wait briefly, then get 503.
    pub concurrent_hashes: usize,
    /// Sign-ins a source address may start (pending authorizations, console sign-ins through
    /// the identity provider) per 10 minutes: each is a stored row, and strangers can start them.
    pub pending_per_source: i64,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            window_secs: 900,
            free_failures: 5,
            lock_after: 8,
            lock_secs: 900,
            per_source: 50,
            concurrent_hashes: 4,
            pending_per_source: 1000,
        }
    }
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
    /// Dynamic client registration (RFC 7591) on/off, and what it may register.
    pub dcr_enabled: bool,
    pub registration: RegistrationPolicy,
    pub login_throttle: LoginThrottle,
    /// The tenant this server is (embedded tenants): carried as the `tenant` claim in its tokens.
    pub tenant: Option<String>,
    /// DANGEROUS: loopback authorities client-controlled URLs (metadata documents, `jwks_uri`)
    /// may be fetched from. Separate from the fetcher's own exceptions, which are for the
    /// operator's identity provider.
    pub dangerous_client_fetch_loopback: Vec<String>,
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
    /// Require server-provided nonces in DPoP proofs at `/token` (RFC 9449 §8).
    pub dpop_nonce: bool,
    /// Issuers whose JWT assertions the JWT-bearer grant accepts (ID-JAG, workload identity).
    pub jwt_bearer: Vec<AssertionIssuer>,
    /// Who may use the admin console, and the audit log it shows.
    pub console: ConsoleConfig,
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
            registration: RegistrationPolicy::default(),
            login_throttle: LoginThrottle::default(),
            tenant: None,
            dangerous_client_fetch_loopback: Vec::new(),
            cimd_enabled: true,
            secure_cookies,
            upstream: None,
            local_login: true,
            key_encryption_key: None,
            dpop_nonce: false,
            jwt_bearer: Vec::new(),
            console: ConsoleConfig::default(),
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
    /// For the operator's identity provider.
    pub(crate) fetcher: Fetcher,
    /// For URLs a client chooses (metadata documents, `jwks_uri`): never the operator's
    /// loopback exceptions (issue 14, row 17).
    pub(crate) client_fetcher: Fetcher,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cimd_cache: cimd::Cache,
    /// Password checks (argon2, ~19 MiB each) running at once: bounded (T19).
    pub(crate) hashing: Arc<tokio::sync::Semaphore>,
    /// Where revocations are published for this process's guards and gateways.
    pub(crate) revocations: Option<Arc<Revocations>>,
    /// Stored public clients, kept briefly (see `clients::PUBLIC_CLIENT_TTL`).
    pub(crate) public_clients: clients::PublicClients,
    /// DPoP nonces, when required, under a secret shared through the store.
    pub(crate) nonces: Option<gatehouse_tokens::dpop::Nonces>,
    /// Keys of the JWT-bearer grant's issuers.
    pub(crate) issuer_keys: assertion::IssuerKeys,
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
        Self::with_revocations(cfg, store, fetcher, clock, None).await
    }

    /// [`AuthServer::new`], publishing every revocation to `revocations` (shared with this
    /// process's guards and gateways: T23) at once, and what other processes on the same store
    /// revoke within a second (see [`AuthServer::spawn_revocation_feed`]).
    pub async fn with_revocations(
        cfg: AuthServerConfig,
        store: Store,
        fetcher: Fetcher,
        clock: Arc<dyn Clock>,
        revocations: Option<Arc<Revocations>>,
    ) -> Result<Self, OAuthError> {
        let client_fetcher = Fetcher::new(gatehouse_fetch::FetchPolicy {
            dangerous_allow_loopback: cfg.dangerous_client_fetch_loopback.clone(),
            ..fetcher.policy().clone()
        })
        .map_err(OAuthError::server_error)?;
        let keys = KeyManager::load(
            store.clone(),
            clock.clone(),
            cfg.access_token_ttl,
            cfg.key_encryption_key.clone(),
        )
        .await?;
        let nonces = match cfg.dpop_nonce {
            true => Some(gatehouse_tokens::dpop::Nonces::new(
                store
                    .server_secret("dpop_nonce", &secrets::random_token())
                    .await?
                    .as_bytes(),
            )),
            false => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                nonces,
                issuer_keys: Default::default(),
                hashing: Arc::new(tokio::sync::Semaphore::new(
                    cfg.login_throttle.concurrent_hashes.max(1),
                )),
                cfg,
                store,
                keys,
                fetcher,
                client_fetcher,
                clock,
                cimd_cache: cimd::Cache::default(),
                public_clients: clients::PublicClients::default(),
                revocations,
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

    /// The DPoP nonces of this server, when it requires them: a guard in the same deployment
    /// shares them (one secret in the store for every replica).
    pub fn dpop_nonces(&self) -> Option<gatehouse_tokens::dpop::Nonces> {
        self.inner.nonces.clone()
    }

    /// One round of housekeeping: delete expired codes, sessions, pending requests, refresh
    /// tokens and assertion ids, and reload signing keys (another replica or `gatehouse admin keys
    /// rotate` may have rotated them). Returns how many rows were purged.
    pub async fn maintain(&self) -> Result<u64, OAuthError> {
        let now = self.inner.clock.now_unix();
        let mut n = self.inner.store.purge_expired(now).await?;
        n += self
            .inner
            .store
            .purge_unused_clients(now - self.inner.cfg.registration.unused_ttl_secs)
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

    /// Publishes a revoked grant to this process's guards and gateways (T23): its access tokens
    /// are refused from now on, not when they expire.
    pub(crate) fn publish_revocation(&self, grant_id: &str, revoked_at: i64) {
        if let Some(r) = &self.inner.revocations {
            // Tokens of the grant were issued before `revoked_at` and live at most the access
            // token lifetime, plus the validators' leeway.
            r.revoke(
                self.inner.cfg.issuer.as_str(),
                grant_id,
                revoked_at + self.inner.cfg.access_token_ttl + 60,
            );
        }
    }

    /// Keeps this process's revocation list in step with the store (by `gatehouse admin`, user
    /// deletion, another replica): on PostgreSQL each revocation wakes it at commit (LISTEN/
    /// NOTIFY), and it also reads every `every` (SQLite, or a notice lost with a connection).
    /// Each read takes everything revoked since the last one (less a margin for replicas'
    /// clocks), starting from the revocations young enough to matter, so a restart or a
    /// reconnect misses none. A signing-key notice reloads the keys. Every successful read is
    /// recorded in the list, so a replica cut off from the store can tell (issue 16).
    pub fn spawn_revocation_feed(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            let Some(list) = s.inner.revocations.clone() else {
                return;
            };
            // Writers stamp revocations with their own clocks.
            const SKEW: i64 = 5;
            let ttl = s.inner.cfg.access_token_ttl + 60;
            let mut since = s.inner.clock.now_unix() - ttl;
            let mut feed = s.inner.store.changes();
            loop {
                let now = s.inner.clock.now_unix();
                match s.inner.store.revoked_since(since - SKEW).await {
                    Ok(rows) => {
                        for (gid, at) in rows {
                            s.publish_revocation(&gid, at);
                            since = since.max(at);
                        }
                        list.confirm(now);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read revocations"),
                }
                list.prune(now);
                match feed.wait(every).await {
                    gatehouse_store::Wake::Changed(t) if t.iter().any(|t| t == "signing_keys") => {
                        if let Err(e) = s.inner.keys.reload().await {
                            tracing::warn!(error = %e.description, "could not reload signing keys");
                        }
                        list.keys_changed(s.inner.clock.now_unix());
                    }
                    gatehouse_store::Wake::Down(e) => {
                        tracing::warn!(error = %e, "change notices unavailable; polling");
                    }
                    _ => {}
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
            .route(
                &p("/device_authorization"),
                post(device::device_authorization),
            )
            .route(
                &p("/device"),
                get(device::verification_page).post(device::verify),
            )
            .route(&p("/token"), post(token::token))
            .route(&p("/revoke"), post(token::revoke))
            .route(&p("/introspect"), post(token::introspect))
            .route(&p("/register"), post(register::register))
            .route(
                &p("/account/signin"),
                get(console::signin_form).post(console::signin),
            )
            .route(&p("/account/signout"), post(console::signout))
            .route(
                &p("/account"),
                get(console::account).post(console::account_revoke),
            )
            .route(&p("/admin"), get(console::admin_home))
            .route(
                &p("/admin/{section}"),
                get(console::admin_section).post(console::admin_action),
            );
        for path in metadata::well_known_paths(&self.inner.cfg.issuer) {
            r = r.route(&path, get(metadata::metadata));
        }
        r.with_state(self.clone())
    }
}
