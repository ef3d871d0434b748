//! Tokens for one MCP server, kept fresh: cache → refresh → login, never in a loop.
use crate::ClientError;
use crate::cache::TokenCache;
use crate::discovery::{self, Discovered};
use crate::dpop::DpopKey;
use crate::login::{self, Listener};
use crate::opener::Opener;
use crate::registration::{self, Registration, RegistrationConfig, Source};
use crate::tokens::{self, TokenRequest, TokenSet, now};
use gatehouse_core::{BearerChallenge, ScopeSet};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Seconds before expiry at which a token counts as stale and is refreshed.
const REFRESH_MARGIN: i64 = 60;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub registration: RegistrationConfig,
    /// Scopes always requested on top of what the server asks for.
    pub extra_scope: Option<ScopeSet>,
    pub opener: Opener,
    /// Loopback port for the redirect; `None` picks one (and keeps it for the registration).
    pub callback_port: Option<u16>,
    pub login_timeout: Duration,
    /// Authorizations one request may trigger (a login plus step-ups) before it fails (CL-11).
    pub max_authorizations: u8,
    /// False: never start a login; report `NotLoggedIn` instead (scripts, `gatehouse token`).
    pub interactive: bool,
    /// Machine client: `client_credentials` instead of a user login (needs a secret or a key).
    pub client_credentials: bool,
    /// Machine client with an identity assertion: the RFC 7523 JWT-bearer grant.
    pub assertion: Option<AssertionSource>,
    /// Bind tokens to a DPoP key when the authorization server offers it (RFC 9449). Off only
    /// for tools that need plain Bearer tokens (`gatehouse check --login`).
    pub dpop: bool,
}

/// Where a JWT-bearer assertion comes from.
#[derive(Clone)]
pub enum AssertionSource {
    /// Workload identity federation (SEP-1933): a JWT the platform gives the workload (read from
    /// a file at each use, since platforms rotate it).
    Jwt(String),
    /// A file holding that JWT.
    JwtFile(std::path::PathBuf),
    /// Enterprise-managed authorization (SEP-990): the enterprise IdP exchanges the user's ID
    /// token (RFC 8693) for an identity assertion grant (ID-JAG) for this authorization server
    /// and resource.
    IdJag {
        idp_token_endpoint: String,
        idp_client_id: String,
        idp_client_secret: Option<String>,
        id_token: String,
    },
}

impl std::fmt::Debug for AssertionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Jwt(_) => "Jwt(..)",
            Self::JwtFile(_) => "JwtFile(..)",
            Self::IdJag { .. } => "IdJag(..)",
        })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            registration: RegistrationConfig {
                client_name: "Gatehouse".into(),
                ..Default::default()
            },
            extra_scope: None,
            opener: Opener::from_env(),
            callback_port: None,
            login_timeout: Duration::from_secs(300),
            max_authorizations: 3,
            interactive: true,
            client_credentials: false,
            assertion: None,
            dpop: true,
        }
    }
}

/// What the cache keeps per server.
#[derive(Serialize, Deserialize)]
struct Entry {
    issuer: String,
    resource: String,
    tokens: TokenSet,
    requested: Option<String>,
}

#[derive(Default)]
struct State {
    discovered: Option<Discovered>,
    tokens: Option<TokenSet>,
    requested: Option<ScopeSet>,
    /// The parsed DPoP key of `tokens` (PKCS#8 base64 and key).
    dpop: Option<(String, Arc<DpopKey>)>,
}

/// A fresh DPoP key when the authorization server binds tokens with ES256 (RFC 9449).
fn new_dpop_key(d: &Discovered, enabled: bool) -> Result<Option<Arc<DpopKey>>, ClientError> {
    let offered = enabled
        && d.metadata
            .extra
            .get("dpop_signing_alg_values_supported")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().any(|x| x == "ES256"));
    Ok(if offered {
        Some(Arc::new(DpopKey::generate()?))
    } else {
        None
    })
}

pub struct Session {
    server_url: String,
    cfg: ClientConfig,
    http: reqwest::Client,
    cache: TokenCache,
    state: tokio::sync::Mutex<State>,
}

const TOKENS: &str = "tokens";
const CLIENTS: &str = "clients";

impl Session {
    pub fn new(
        server_url: &str,
        cfg: ClientConfig,
        cache: TokenCache,
    ) -> Result<Self, ClientError> {
        crate::safety::check_endpoint("MCP server URL", server_url)?;
        Ok(Self {
            server_url: server_url.to_owned(),
            cfg,
            http: discovery::http_client()?,
            cache,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    pub fn max_authorizations(&self) -> u8 {
        self.cfg.max_authorizations.max(1)
    }

    fn load_entry(&self) -> Result<Option<Entry>, ClientError> {
        self.cache.load(TOKENS, &self.server_url)
    }

    fn save_entry(
        &self,
        d: &Discovered,
        t: &TokenSet,
        requested: Option<&ScopeSet>,
    ) -> Result<(), ClientError> {
        self.cache.save(
            TOKENS,
            &self.server_url,
            &Entry {
                issuer: d.issuer.as_str().to_owned(),
                resource: d.resource.clone(),
                tokens: t.clone(),
                requested: requested.map(ToString::to_string),
            },
        )
    }

    /// A usable access token without logging in: memory, then the cache, refreshing it if it is
    /// about to expire. `None` when a login is needed.
    pub async fn current_token(&self) -> Result<Option<String>, ClientError> {
        let mut st = self.state.lock().await;
        if let Some(t) = &st.tokens
            && t.fresh(now(), REFRESH_MARGIN)
        {
            return Ok(Some(t.access_token.clone()));
        }
        let Some(entry) = self.load_entry()? else {
            return Ok(None);
        };
        if st.requested.is_none() {
            st.requested = entry
                .requested
                .as_deref()
                .and_then(|s| ScopeSet::parse(s).ok());
        }
        if entry.tokens.fresh(now(), REFRESH_MARGIN) {
            st.tokens = Some(entry.tokens.clone());
            return Ok(Some(entry.tokens.access_token));
        }
        self.refresh_locked(&mut st, None).await
    }

    /// Refreshes under the cross-process lock. `bad` is a token the server just refused: a
    /// cached token equal to it is not "fresh" whatever its expiry says.
    async fn refresh_locked(
        &self,
        st: &mut State,
        bad: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let _lock = self.cache.lock(&self.server_url).await?;
        // Someone else may have refreshed while we waited for the lock.
        let Some(entry) = self.load_entry()? else {
            st.tokens = None;
            return Ok(None);
        };
        if entry.tokens.fresh(now(), REFRESH_MARGIN)
            && Some(entry.tokens.access_token.as_str()) != bad
        {
            st.tokens = Some(entry.tokens.clone());
            return Ok(Some(entry.tokens.access_token));
        }
        let Some(rt) = entry.tokens.refresh_token.clone() else {
            return Ok(None);
        };
        let d = match &st.discovered {
            Some(d) if d.issuer.as_str() == entry.issuer => d.clone(),
            _ => {
                let d = discovery::discover(&self.http, &self.server_url, None).await?;
                st.discovered = Some(d.clone());
                d
            }
        };
        if d.issuer.as_str() != entry.issuer {
            // The server moved to another authorization server: old tokens mean nothing there.
            self.cache.remove(TOKENS, &self.server_url)?;
            st.tokens = None;
            return Ok(None);
        }
        let Some(reg) = self.registration_for(&d)? else {
            return Ok(None);
        };
        // A DPoP-bound refresh token must be used with the key it is bound to.
        let refresh_key = entry
            .tokens
            .dpop_key
            .as_deref()
            .map(DpopKey::from_b64)
            .transpose()?;
        let res = tokens::request(
            &self.http,
            TokenRequest {
                endpoint: &d.token_endpoint,
                issuer: d.issuer.as_str(),
                registration: &reg,
                params: vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", rt.clone()),
                ],
                resource: &d.resource,
                requested_scope: entry.tokens.scope.clone(),
                dpop: refresh_key.as_ref(),
            },
        )
        .await;
        match res {
            Ok(mut t) => {
                // CL-21: a rotated refresh token replaces the old one; none new keeps the old.
                if t.refresh_token.is_none() {
                    t.refresh_token = Some(rt);
                }
                self.save_entry(&d, &t, st.requested.as_ref())?;
                crate::progress("access token refreshed");
                let at = t.access_token.clone();
                st.tokens = Some(t);
                Ok(Some(at))
            }
            Err(e) if e.is_invalid_grant() => {
                // The refresh token is dead: forget it and log in again (no retry loop).
                crate::progress("the refresh token was refused; a new login is needed");
                self.cache.remove(TOKENS, &self.server_url)?;
                st.tokens = None;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The registration to use at `d.issuer` without registering anew (`None`: DCR needed).
    fn registration_for(&self, d: &Discovered) -> Result<Option<Registration>, ClientError> {
        let cfg = &self.cfg.registration;
        if cfg.client_id.is_some() || (cfg.client_metadata_url.is_some() && d.supports_cimd()) {
            return Ok(Some(self.static_registration(d)));
        }
        let cached: Option<Registration> = self.cache.load(CLIENTS, d.issuer.as_str())?;
        Ok(cached.filter(|r| r.issuer == d.issuer.as_str() && !r.expired(now())))
    }

    fn static_registration(&self, d: &Discovered) -> Registration {
        let cfg = &self.cfg.registration;
        match &cfg.client_id {
            Some(id) => Registration {
                issuer: d.issuer.as_str().to_owned(),
                client_id: id.clone(),
                client_secret: cfg.client_secret.clone(),
                client_secret_expires_at: None,
                auth_method: cfg.auth_method.unwrap_or(if cfg.private_key_pem.is_some() {
                    registration::AuthMethod::PrivateKeyJwt
                } else if cfg.client_secret.is_some() {
                    registration::AuthMethod::ClientSecretBasic
                } else {
                    registration::AuthMethod::None
                }),
                redirect_uri: None,
                source: Source::PreRegistered,
                private_key_pem: cfg.private_key_pem.clone(),
            },
            None => Registration {
                issuer: d.issuer.as_str().to_owned(),
                client_id: cfg.client_metadata_url.clone().unwrap_or_default(),
                client_secret: None,
                client_secret_expires_at: None,
                auth_method: registration::AuthMethod::None,
                redirect_uri: None,
                source: Source::MetadataDocument,
                private_key_pem: None,
            },
        }
    }

    /// CL-10 / CL-11 / CL-22: the challenge's scope, else the PRM's `scopes_supported`, else
    /// none; plus what was asked before (step-up keeps it), plus configured extras, plus
    /// `offline_access` when the authorization server lists it.
    fn choose_scope(
        &self,
        d: &Discovered,
        challenge: Option<&BearerChallenge>,
        previous: Option<&ScopeSet>,
    ) -> Option<ScopeSet> {
        let mut s = match challenge
            .and_then(|c| c.scope.clone())
            .filter(|s| !s.is_empty())
        {
            Some(s) => s,
            None => ScopeSet::from_iter_strs(d.prm_scopes.iter().map(String::as_str))
                .unwrap_or_default(),
        };
        if let Some(p) = previous {
            s = s.union(p);
        }
        if let Some(x) = &self.cfg.extra_scope {
            s = s.union(x);
        }
        if !s.is_empty()
            && d.metadata
                .scopes_supported
                .iter()
                .any(|x| x == "offline_access")
        {
            s = s.union(&ScopeSet::parse("offline_access").unwrap_or_default());
        }
        (!s.is_empty()).then_some(s)
    }

    /// A full authorization (discovery, registration, login or client_credentials).
    /// `step_up` keeps the scopes asked for before (403 insufficient_scope).
    pub async fn login(
        &self,
        challenge: Option<&BearerChallenge>,
        step_up: bool,
    ) -> Result<String, ClientError> {
        let mut st = self.state.lock().await;
        self.login_locked(&mut st, challenge, step_up).await
    }

    async fn login_locked(
        &self,
        st: &mut State,
        challenge: Option<&BearerChallenge>,
        step_up: bool,
    ) -> Result<String, ClientError> {
        if !self.cfg.interactive && !self.cfg.client_credentials && self.cfg.assertion.is_none() {
            return Err(ClientError::NotLoggedIn(self.server_url.clone()));
        }
        let _lock = self.cache.lock(&self.server_url).await?;
        // Discovery runs again on every login: the server may have moved to another
        // authorization server (CL-04), whose registration is its own.
        let d = discovery::discover(&self.http, &self.server_url, challenge).await?;
        st.discovered = Some(d.clone());
        let previous = if step_up { st.requested.clone() } else { None };
        let scope = self.choose_scope(&d, challenge, previous.as_ref());
        let device_offered = d
            .metadata
            .extra
            .contains_key("device_authorization_endpoint");
        let tokens = if let Some(src) = &self.cfg.assertion {
            self.jwt_bearer(&d, src, scope.as_ref()).await?
        } else if self.cfg.client_credentials {
            self.client_credentials(&d, scope.as_ref()).await?
        } else if self.cfg.registration.device
            || (matches!(self.cfg.opener, Opener::PrintOnly) && device_offered)
        {
            self.device_flow(&d, scope.as_ref()).await?
        } else {
            self.code_flow(&d, scope.as_ref()).await?
        };
        self.save_entry(&d, &tokens, scope.as_ref())?;
        crate::progress(format!(
            "logged in to {} (authorization server {})",
            self.server_url, d.issuer
        ));
        st.requested = scope;
        let at = tokens.access_token.clone();
        st.tokens = Some(tokens);
        Ok(at)
    }

    /// The DPoP key `token` is bound to, if it is a DPoP token of this session.
    pub async fn dpop_for(&self, token: &str) -> Option<Arc<DpopKey>> {
        let mut st = self.state.lock().await;
        let b64 = st
            .tokens
            .as_ref()
            .filter(|t| t.access_token == token)
            .and_then(|t| t.dpop_key.clone())?;
        if let Some((k, key)) = &st.dpop
            && *k == b64
        {
            return Some(key.clone());
        }
        let key = Arc::new(DpopKey::from_b64(&b64).ok()?);
        st.dpop = Some((b64, key.clone()));
        Some(key)
    }

    async fn client_credentials(
        &self,
        d: &Discovered,
        scope: Option<&ScopeSet>,
    ) -> Result<TokenSet, ClientError> {
        let dpop = new_dpop_key(d, self.cfg.dpop)?;
        if self.cfg.registration.client_id.is_none() {
            return Err(ClientError::Registration("client_credentials needs a pre-registered client (--client-id with a secret or key)".into()));
        }
        let reg = self.static_registration(d);
        self.machine_grant(
            d,
            &reg,
            vec![("grant_type", "client_credentials".to_owned())],
            scope,
            dpop.as_deref(),
        )
        .await
    }

    /// A token request for a grant without a user step (client credentials, JWT bearer).
    async fn machine_grant(
        &self,
        d: &Discovered,
        reg: &Registration,
        mut params: Vec<(&'static str, String)>,
        scope: Option<&ScopeSet>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenSet, ClientError> {
        if let Some(s) = scope {
            params.push(("scope", s.to_string()));
        }
        tokens::request(
            &self.http,
            TokenRequest {
                endpoint: &d.token_endpoint,
                issuer: d.issuer.as_str(),
                registration: reg,
                params,
                resource: &d.resource,
                requested_scope: scope.map(ToString::to_string),
                dpop,
            },
        )
        .await
    }

    /// RFC 7523 JWT-bearer grant. Errors are surfaced as they are: no retry, no other grant.
    async fn jwt_bearer(
        &self,
        d: &Discovered,
        src: &AssertionSource,
        scope: Option<&ScopeSet>,
    ) -> Result<TokenSet, ClientError> {
        let dpop = new_dpop_key(d, self.cfg.dpop)?;
        let assertion = match src {
            AssertionSource::Jwt(j) => j.clone(),
            AssertionSource::JwtFile(p) => std::fs::read_to_string(p)
                .map_err(|e| ClientError::Authorization(format!("{}: {e}", p.display())))?
                .trim()
                .to_owned(),
            AssertionSource::IdJag {
                idp_token_endpoint,
                idp_client_id,
                idp_client_secret,
                id_token,
            } => {
                let endpoint =
                    crate::safety::check_endpoint("IdP token endpoint", idp_token_endpoint)?;
                let idp = Registration {
                    issuer: String::new(),
                    client_id: idp_client_id.clone(),
                    client_secret: idp_client_secret.clone(),
                    client_secret_expires_at: None,
                    auth_method: if idp_client_secret.is_some() {
                        registration::AuthMethod::ClientSecretBasic
                    } else {
                        registration::AuthMethod::None
                    },
                    redirect_uri: None,
                    source: Source::PreRegistered,
                    private_key_pem: None,
                };
                let mut params = vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange".to_owned(),
                    ),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:id-jag".to_owned(),
                    ),
                    ("audience", d.issuer.as_str().to_owned()),
                    ("subject_token", id_token.clone()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:id_token".to_owned(),
                    ),
                ];
                if let Some(s) = scope {
                    params.push(("scope", s.to_string()));
                }
                let v = tokens::form_post(
                    &self.http,
                    &endpoint,
                    idp_token_endpoint,
                    &idp,
                    params,
                    &d.resource,
                    None,
                )
                .await?;
                v["access_token"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ClientError::Authorization("the IdP returned no identity assertion".into())
                    })?
            }
        };
        let reg = match &self.cfg.registration.client_id {
            Some(_) => self.static_registration(d),
            None => {
                return Err(ClientError::Registration(
                    "the JWT-bearer grant needs a client_id (--client-id)".into(),
                ));
            }
        };
        let params = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
            ),
            ("assertion", assertion),
        ];
        self.machine_grant(d, &reg, params, scope, dpop.as_deref())
            .await
    }

    async fn device_flow(
        &self,
        d: &Discovered,
        scope: Option<&ScopeSet>,
    ) -> Result<TokenSet, ClientError> {
        let reg = match self.registration_for(d)? {
            Some(r) => r,
            None => {
                // DCR still wants a redirect URI; the device grant never uses it.
                let l = Listener::bind(0).await?;
                let mut cfg = self.cfg.registration.clone();
                cfg.device = true;
                let r = registration::register(&self.http, &cfg, d, &l.redirect_uri()).await?;
                if r.source == Source::Dynamic {
                    self.cache.save(CLIENTS, d.issuer.as_str(), &r)?;
                }
                r
            }
        };
        let dpop = new_dpop_key(d, self.cfg.dpop)?;
        login::device(
            &self.http,
            d,
            &reg,
            scope,
            &login::LoginOptions {
                opener: &self.cfg.opener,
                timeout: self.cfg.login_timeout,
                dpop: dpop.as_deref(),
            },
        )
        .await
    }

    async fn code_flow(
        &self,
        d: &Discovered,
        scope: Option<&ScopeSet>,
    ) -> Result<TokenSet, ClientError> {
        let existing = self.registration_for(d)?;
        // A dynamic registration is bound to its redirect port: reuse the port, or register anew
        // when it is taken.
        let wanted_port = existing
            .as_ref()
            .and_then(|r| r.redirect_uri.as_deref())
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.port())
            .or(self.cfg.callback_port)
            .unwrap_or(0);
        let (listener, reg) = match (Listener::bind(wanted_port).await, existing) {
            (Ok(l), Some(r)) => (l, r),
            (bound, _) => {
                let l = match bound {
                    Ok(l) => l,
                    Err(_) => Listener::bind(self.cfg.callback_port.unwrap_or(0)).await?,
                };
                let r = registration::register(
                    &self.http,
                    &self.cfg.registration,
                    d,
                    &l.redirect_uri(),
                )
                .await?;
                if r.source == Source::Dynamic {
                    self.cache.save(CLIENTS, d.issuer.as_str(), &r)?;
                }
                (l, r)
            }
        };
        let dpop = new_dpop_key(d, self.cfg.dpop)?;
        let res = login::authorize(
            &self.http,
            d,
            &reg,
            listener,
            scope,
            &login::LoginOptions {
                opener: &self.cfg.opener,
                timeout: self.cfg.login_timeout,
                dpop: dpop.as_deref(),
            },
        )
        .await;
        if let Err(ClientError::OAuth { error, .. }) = &res
            && error == "invalid_client"
            && reg.source == Source::Dynamic
        {
            // The server forgot us: the next login registers again.
            let _ = self.cache.remove(CLIENTS, d.issuer.as_str());
        }
        res
    }

    /// CL-23: the server refused `sent`: refresh once (or take what another process already
    /// refreshed). `None` when only a new login can help.
    pub async fn refresh_after_refusal(&self, sent: &str) -> Result<Option<String>, ClientError> {
        let mut st = self.state.lock().await;
        st.tokens = None;
        self.refresh_locked(&mut st, Some(sent)).await
    }

    /// CL-11: 403 insufficient_scope. A new authorization for the union of scopes, bounded by
    /// `max_authorizations`.
    pub async fn insufficient_scope(
        &self,
        challenge: &BearerChallenge,
    ) -> Result<String, ClientError> {
        let mut st = self.state.lock().await;
        crate::progress(format!(
            "the server needs more scope ({}); authorizing again",
            challenge
                .scope
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        ));
        self.login_locked(&mut st, Some(challenge), true).await
    }

    /// Forgets this server's tokens, revoking the refresh token where the server allows it.
    pub async fn logout(&self) -> Result<bool, ClientError> {
        let _lock = self.cache.lock(&self.server_url).await?;
        let Some(entry) = self.load_entry()? else {
            return Ok(false);
        };
        if let Some(rt) = &entry.tokens.refresh_token
            && let Ok(d) = discovery::discover(&self.http, &self.server_url, None).await
            && d.issuer.as_str() == entry.issuer
            && let (Some(endpoint), Ok(Some(reg))) = (
                d.metadata.revocation_endpoint.clone(),
                self.registration_for(&d),
            )
            && let Ok(endpoint) = crate::safety::check_endpoint("revocation_endpoint", &endpoint)
        {
            let r = tokens::revoke(&self.http, &endpoint, d.issuer.as_str(), &reg, rt).await;
            if let Err(e) = r {
                crate::progress(format!("could not revoke the refresh token: {e}"));
            }
        }
        self.cache.remove(TOKENS, &self.server_url)
    }
}
