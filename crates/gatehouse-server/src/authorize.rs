//! The authorization endpoint and its login/consent pages (AS-05 … AS-15).
//!
//! A request is validated in the spec's order: until the client and its redirect URI are known
//! good, errors are shown on a page and never redirected (AS-09, AS-11); after that they go back
//! to the client with `state` and `iss`. A validated request becomes a *pending* authorization
//! bound to this browser (a cookie whose hash is stored with it) and to a CSRF token; login and
//! consent are accepted only from the same browser with the same token, once (T1, T5).
use crate::pages::{ClientErrorPage, ConsentPage, LoginPage, error_page, page};
use crate::secrets::{dummy_hash, random_id, random_token, sha256_hex, verify_password};
use crate::{AuthServer, OAuthError};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use gatehouse_core::{OAuthErrorCode, PkceChallenge, RedirectUri, ScopeSet};
use gatehouse_store::{
    ClientRecord, ClientSource, CodeRecord, ConsentRecord, GrantRecord, PendingRecord,
    SessionRecord,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

pub(crate) const PENDING_TTL: i64 = 600;
/// Redirect URIs remembered per consent (native clients pick a new loopback port per login).
const MAX_REMEMBERED_REDIRECTS: usize = 8;

/// A signed-in browser.
pub(crate) struct Session {
    pub(crate) subject: String,
    pub(crate) auth_time: i64,
    /// Claims from an upstream identity provider (JSON object), carried into grants.
    pub(crate) claims: Option<String>,
}

/// A validated authorization request, waiting for login and consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) client_id: String,
    redirect_uri: String,
    code_challenge: String,
    pub(crate) scope: String,
    pub(crate) resource: String,
    state: Option<String>,
    /// A device authorization (RFC 8628) this sign-in answers: the device code's hash. Such a
    /// request has no redirect URI and no code; consent is never taken as remembered for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) device: Option<String>,
}

impl Pending {
    /// The sign-in that answers a device authorization request.
    pub(crate) fn for_device(
        client_id: String,
        scope: String,
        resource: String,
        device_hash: String,
    ) -> Self {
        Self {
            client_id,
            redirect_uri: String::new(),
            code_challenge: String::new(),
            scope,
            resource,
            state: None,
            device: Some(device_hash),
        }
    }
}

impl AuthServer {
    pub(crate) fn cookie_name(&self, base: &str) -> String {
        // Tenants share the host (and `__Host-` cookies must have Path=/), so each issuer path
        // gets its own cookie names: signing in to one tenant never replaces another's session.
        let path = self.inner.cfg.issuer.url().path().trim_matches('/');
        let name = if path.is_empty() {
            base.to_owned()
        } else {
            let tag: String = path
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            format!("{base}_{tag}")
        };
        if self.inner.cfg.secure_cookies {
            format!("__Host-{name}")
        } else {
            name
        }
    }

    pub(crate) fn cookie(&self, base: &str, value: String, max_age: i64) -> Cookie<'static> {
        let mut c = Cookie::new(self.cookie_name(base), value);
        c.set_path("/");
        c.set_http_only(true);
        c.set_same_site(SameSite::Lax);
        c.set_secure(self.inner.cfg.secure_cookies);
        c.set_max_age(time_duration(max_age));
        c
    }

    /// The redirect to the client with the response parameters, always with `iss` (RFC 9207).
    fn client_redirect(
        &self,
        redirect_uri: &str,
        params: &[(&str, &str)],
        state: Option<&str>,
    ) -> Result<String, OAuthError> {
        let mut u = url::Url::parse(redirect_uri).map_err(OAuthError::server_error)?;
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", self.inner.cfg.issuer.as_str());
        }
        Ok(u.to_string())
    }

    /// An error before the user has seen any page of ours. Only an operator-registered client's
    /// redirect URI is trusted enough to be sent there automatically; a self-registered (DCR or
    /// metadata-document) client gets a page naming it, with a link back the user may follow
    /// (RFC 9700 §4.11.2, AS-11, T18).
    fn error_redirect(
        &self,
        p: &Pending,
        client: &ClientRecord,
        code: OAuthErrorCode,
        description: &str,
    ) -> Response {
        let url = match self.client_redirect(
            &p.redirect_uri,
            &[("error", code.as_str()), ("error_description", description)],
            p.state.as_deref(),
        ) {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
        if client.source == ClientSource::Preregistered {
            return Redirect::to(&url).into_response();
        }
        let (identity, _) = client_identity(client);
        let name = client
            .client_name
            .clone()
            .unwrap_or_else(|| client.client_id.clone());
        let host = url::Url::parse(&p.redirect_uri)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        page(
            StatusCode::BAD_REQUEST,
            ClientErrorPage {
                client_name: &name,
                identity: &identity,
                message: &format!("{code}: {description}"),
                return_url: &url,
                return_host: &host,
            }
            .render(),
            None,
        )
    }

    pub(crate) fn describe_scopes(&self, scope: &str) -> Vec<(String, String)> {
        ScopeSet::parse(scope)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let d = self
                    .inner
                    .cfg
                    .scope_descriptions
                    .get(s.as_str())
                    .cloned()
                    .unwrap_or_else(|| format!("Permission \u{201c}{s}\u{201d}"));
                (s.to_string(), d)
            })
            .collect()
    }

    /// AS-14: who is asking, where the code goes, what it may do.
    fn consent_page(
        &self,
        p: &Pending,
        client: &ClientRecord,
        subject: &str,
        pending_id: &str,
        csrf: &str,
    ) -> Response {
        let (identity, verified) = client_identity(client);
        let loopback = url::Url::parse(&p.redirect_uri)
            .is_ok_and(|u| gatehouse_core::url::is_loopback_host(&u));
        let resource_host = url::Url::parse(&p.resource)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let name = client
            .client_name
            .clone()
            .unwrap_or_else(|| client.client_id.clone());
        let action = self.inner.cfg.endpoint("/consent");
        let target = redirect_origin(&p.redirect_uri).filter(|_| p.device.is_none());
        page(
            StatusCode::OK,
            ConsentPage {
                client_name: &name,
                identity: &identity,
                verified,
                redirect_uri: &p.redirect_uri,
                loopback,
                resource: &p.resource,
                resource_host: &resource_host,
                scopes: self.describe_scopes(&p.scope),
                subject,
                action: &action,
                pending: pending_id,
                csrf,
                device: p.device.is_some(),
            }
            .render(),
            target.as_deref(),
        )
    }

    pub(crate) fn login_page(
        &self,
        status: StatusCode,
        p: &Pending,
        client: &ClientRecord,
        pending_id: &str,
        csrf: &str,
        error: Option<&str>,
    ) -> Response {
        let name = client
            .client_name
            .clone()
            .unwrap_or_else(|| client.client_id.clone());
        let action = self.inner.cfg.endpoint("/login");
        let upstream_action = self.inner.cfg.endpoint("/login/upstream");
        page(
            status,
            LoginPage {
                client_name: &name,
                resource: &p.resource,
                issuer: self.inner.cfg.issuer.as_str(),
                action: &action,
                pending: pending_id,
                csrf,
                error,
                upstream: self
                    .inner
                    .cfg
                    .upstream
                    .as_ref()
                    .map(|u| u.display_name.as_str()),
                upstream_action: &upstream_action,
                local: self.inner.cfg.local_login,
            }
            .render(),
            None,
        )
    }

    pub(crate) async fn session_subject(
        &self,
        jar: &CookieJar,
    ) -> Result<Option<Session>, OAuthError> {
        let Some(c) = jar.get(&self.cookie_name("gh_session")) else {
            return Ok(None);
        };
        let now = self.inner.clock.now_unix();
        Ok(self
            .inner
            .store
            .get_session(&sha256_hex(c.value()), now)
            .await?
            .map(|s| Session {
                subject: s.subject,
                auth_time: s.auth_time,
                claims: s.claims,
            }))
    }

    /// Starts a browser session for `subject` (a new id, stored hashed) and sets its cookie.
    pub(crate) async fn start_session(
        &self,
        jar: CookieJar,
        subject: String,
        claims: Option<String>,
    ) -> Result<(CookieJar, Session), OAuthError> {
        let now = self.inner.clock.now_unix();
        let sid = random_token();
        let ttl = self.inner.cfg.session_ttl;
        self.inner
            .store
            .insert_session(&SessionRecord {
                id_hash: sha256_hex(&sid),
                subject: subject.clone(),
                auth_time: now,
                expires_at: now + ttl,
                claims: claims.clone(),
            })
            .await?;
        tracing::info!(subject = %subject, "signed in");
        let session = Session {
            subject,
            auth_time: now,
            claims,
        };
        Ok((jar.add(self.cookie("gh_session", sid, ttl)), session))
    }

    /// After a successful sign-in (local password or upstream identity provider): start the
    /// session, then issue a code at once if this user already consented to this client for
    /// these scopes, else show the consent page.
    #[allow(
        clippy::too_many_arguments,
        reason = "the pieces of one pending authorization"
    )]
    pub(crate) async fn finish_login(
        &self,
        jar: CookieJar,
        p: &Pending,
        client: &ClientRecord,
        pending_id: &str,
        csrf: &str,
        subject: String,
        claims: Option<String>,
    ) -> Response {
        let (jar, session) = match self.start_session(jar, subject, claims).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
        // A device request is always shown (RFC 8628 §5.4: the user must see who asks).
        if p.device.is_none() && self.consented(&session.subject, p).await {
            if let Ok(true) = self.inner.store.take_pending(&sha256_hex(pending_id)).await {
                let r = self
                    .issue_code(p, client, &session, true)
                    .await
                    .unwrap_or_else(IntoResponse::into_response);
                return (jar, r).into_response();
            }
            return error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in request was already used.",
            );
        }
        (
            jar,
            self.consent_page(p, client, &session.subject, pending_id, csrf),
        )
            .into_response()
    }

    /// T20: a remembered consent covers a request only if it is this user's, for this client
    /// and this resource, covers every scope asked for, and the code goes to a redirect URI that
    /// consent already sent codes to (a loopback redirect on a new port is a new decision).
    async fn consented(&self, subject: &str, p: &Pending) -> bool {
        let Ok(Some(c)) = self
            .inner
            .store
            .get_consent(subject, &p.client_id, &p.resource)
            .await
        else {
            return false;
        };
        ScopeSet::parse(&c.scope)
            .unwrap_or_default()
            .is_superset(&ScopeSet::parse(&p.scope).unwrap_or_default())
            && c.redirect_uris.contains(&p.redirect_uri)
    }

    /// Creates the grant and code and redirects to the client.
    async fn issue_code(
        &self,
        p: &Pending,
        client: &ClientRecord,
        session: &Session,
        status_see_other: bool,
    ) -> Result<Response, OAuthError> {
        // A metadata-document client gets its row only once it holds a grant (issue 14, row
        // 16): naming new document URLs adds nothing permanent.
        if client.source == ClientSource::MetadataDocument {
            self.inner.store.upsert_client(client).await?;
        }
        let (subject, auth_time) = (session.subject.as_str(), session.auth_time);
        let now = self.inner.clock.now_unix();
        let code = random_token();
        let grant = GrantRecord {
            grant_id: random_id(),
            subject: subject.to_owned(),
            client_id: p.client_id.clone(),
            scope: p.scope.clone(),
            resource: p.resource.clone(),
            created_at: now,
            revoked_at: None,
            claims: session.claims.clone(),
        };
        let rec = CodeRecord {
            code_hash: sha256_hex(&code),
            grant_id: grant.grant_id.clone(),
            client_id: p.client_id.clone(),
            redirect_uri: p.redirect_uri.clone(),
            code_challenge: p.code_challenge.clone(),
            scope: p.scope.clone(),
            resource: p.resource.clone(),
            subject: subject.to_owned(),
            auth_time,
            expires_at: now + self.inner.cfg.code_ttl,
            used_at: None,
            claims: session.claims.clone(),
        };
        self.inner
            .store
            .insert_grant_with_code(&grant, &rec)
            .await?;
        let url = self.client_redirect(&p.redirect_uri, &[("code", &code)], p.state.as_deref())?;
        Ok(if status_see_other {
            Redirect::to(&url).into_response()
        } else {
            Redirect::temporary(&url).into_response()
        })
    }

    /// Loads a pending authorization for a form post and checks the browser binding and CSRF
    /// token. Any failure is an error page: nothing is redirected for an unverified post.
    pub(crate) async fn verified_pending(
        &self,
        jar: &CookieJar,
        pending_id: &str,
        csrf: &str,
    ) -> Result<(Pending, ClientRecord), Response> {
        let rec = self.verified_pending_record(jar, pending_id, csrf).await?;
        // A console sign-in's record is not an authorization request.
        let p: Pending = serde_json::from_str(&rec.request).map_err(|_| {
            error_page(
                StatusCode::BAD_REQUEST,
                "This is not an authorization request.",
            )
        })?;
        let client = match self.find_client(&p.client_id).await {
            Ok(Some(c)) => c,
            _ => {
                return Err(error_page(
                    StatusCode::BAD_REQUEST,
                    "The application is no longer registered.",
                ));
            }
        };
        Ok((p, client))
    }

    /// A pending sign-in (an authorization request or a console sign-in) posted by the browser
    /// it is bound to, with its CSRF token.
    pub(crate) async fn verified_pending_record(
        &self,
        jar: &CookieJar,
        pending_id: &str,
        csrf: &str,
    ) -> Result<PendingRecord, Response> {
        let now = self.inner.clock.now_unix();
        let expired = || {
            error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in request has expired or was started in another browser.",
            )
        };
        let rec = match self
            .inner
            .store
            .get_pending(&sha256_hex(pending_id), now)
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return Err(expired()),
            Err(e) => return Err(OAuthError::from(e).into_response()),
        };
        let binding = jar
            .get(&self.cookie_name("gh_bind"))
            .map(|c| sha256_hex(c.value()))
            .unwrap_or_default();
        let bound: bool = binding.as_bytes().ct_eq(rec.binding_hash.as_bytes()).into();
        let csrf_ok: bool = sha256_hex(csrf)
            .as_bytes()
            .ct_eq(rec.csrf_hash.as_bytes())
            .into();
        if !bound || !csrf_ok {
            return Err(expired());
        }
        Ok(rec)
    }

    /// This browser's binding cookie (made if missing): pending sign-ins are bound to its hash.
    pub(crate) fn browser_binding(&self, jar: CookieJar) -> (CookieJar, String) {
        match jar.get(&self.cookie_name("gh_bind")) {
            Some(c) => {
                let v = c.value().to_owned();
                (jar, v)
            }
            None => {
                let v = random_token();
                (
                    jar.add(self.cookie("gh_bind", v.clone(), PENDING_TTL * 6)),
                    v,
                )
            }
        }
    }
}

/// Who a client is, as the pages say it, and whether that is vouched for (AS-14).
fn client_identity(client: &ClientRecord) -> (String, bool) {
    match client.source {
        ClientSource::MetadataDocument => (
            format!(
                "verified by its domain {}",
                url::Url::parse(&client.client_id)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            true,
        ),
        ClientSource::Preregistered => {
            ("registered by the operator of this server".to_owned(), true)
        }
        ClientSource::Dynamic => (
            "unverified: this application registered itself".to_owned(),
            false,
        ),
    }
}

fn time_duration(secs: i64) -> time::Duration {
    time::Duration::seconds(secs)
}

/// `scheme://host[:port]` of a redirect URI, for the consent page's CSP `form-action` (Chrome
/// applies it to the redirect after the form post).
fn redirect_origin(u: &str) -> Option<String> {
    let u = url::Url::parse(u).ok()?;
    Some(u.origin().ascii_serialization())
}

/// GET /authorize
pub(crate) async fn authorize(
    State(s): State<AuthServer>,
    ext: http::Extensions,
    jar: CookieJar,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in q {
        if params.insert(k.clone(), v).is_some() {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("The parameter {k} was sent more than once."),
            );
        }
    }
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = get("client_id") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The request names no application (client_id is missing).",
        );
    };
    let client = match s.find_client(client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The application is not registered with this server.",
            );
        }
        Err(e) if e.code == OAuthErrorCode::ServerError => {
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Internal error.");
        }
        Err(e) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The application's metadata could not be used: {}",
                    e.description
                ),
            );
        }
    };
    // AS-09: exact match against the registered redirect URIs (loopback IP literals: any port).
    let redirect_uri = match get("redirect_uri") {
        Some(r) => {
            let ok = client
                .redirect_uris
                .iter()
                .any(|reg| RedirectUri::parse(reg).is_ok_and(|x| x.matches(r)));
            if !ok {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "The redirect URI does not match any URI registered for this application.",
                );
            }
            r.to_owned()
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "redirect_uri is required for this application.",
            );
        }
    };
    let mut p = Pending {
        client_id: client.client_id.clone(),
        redirect_uri,
        code_challenge: String::new(),
        scope: String::new(),
        resource: String::new(),
        state: get("state").map(str::to_owned),
        device: None,
    };
    // From here on, errors go back to the (verified) redirect URI.
    if get("response_type") != Some("code") {
        return s.error_redirect(
            &p,
            &client,
            OAuthErrorCode::UnsupportedResponseType,
            "response_type must be code",
        );
    }
    if !client.grant_types.iter().any(|g| g == "authorization_code") {
        return s.error_redirect(
            &p,
            &client,
            OAuthErrorCode::UnauthorizedClient,
            "client may not use the authorization code grant",
        );
    }
    match PkceChallenge::parse(
        get("code_challenge").unwrap_or(""),
        get("code_challenge_method"),
    ) {
        Ok(c) => p.code_challenge = c.as_str().to_owned(),
        Err(e) => {
            return s.error_redirect(&p, &client, OAuthErrorCode::InvalidRequest, &e.to_string());
        }
    }
    let res = match s.resolve_resource(get("resource")) {
        Ok(r) => r.clone(),
        Err(e) => return s.error_redirect(&p, &client, e.code, &e.description),
    };
    p.resource = res.resource.as_str().to_owned();
    let scope = match get("scope") {
        Some(sc) => match ScopeSet::parse(sc) {
            Ok(set) => set,
            Err(e) => {
                return s.error_redirect(&p, &client, OAuthErrorCode::InvalidScope, &e.to_string());
            }
        },
        None => client
            .scope
            .as_deref()
            .and_then(|c| ScopeSet::parse(c).ok())
            .unwrap_or_else(|| res.scopes.clone()),
    };
    if let Err(e) = s.check_scopes(&scope, &client, &res) {
        return s.error_redirect(&p, &client, e.code, &e.description);
    }
    p.scope = scope.to_string();

    let now = s.inner.clock.now_unix();
    // Remembered consent (per user *and* client) covering the request: no page needed.
    let session = match s.session_subject(&jar).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if let Some(sess) = &session
        && get("prompt") != Some("consent")
        && s.consented(&sess.subject, &p).await
    {
        return s
            .issue_code(&p, &client, sess, false)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    s.begin_pending(
        jar,
        &p,
        &client,
        session.as_ref(),
        now,
        crate::source::source_ip(&ext),
    )
    .await
}

impl AuthServer {
    /// Stores a validated request as pending, bound to this browser (a cookie) and a CSRF
    /// token, and shows the next page: consent when signed in, else the login page.
    pub(crate) async fn begin_pending(
        &self,
        jar: CookieJar,
        p: &Pending,
        client: &ClientRecord,
        session: Option<&Session>,
        now: i64,
        ip: Option<std::net::IpAddr>,
    ) -> Response {
        match self.pending_allowed(ip).await {
            Ok(true) => {}
            Ok(false) => return too_many_sign_ins(),
            Err(e) => return e.into_response(),
        }
        let (jar, binding) = self.browser_binding(jar);
        let pending_id = random_token();
        let csrf = random_token();
        let rec = PendingRecord {
            id_hash: sha256_hex(&pending_id),
            request: serde_json::to_string(p).unwrap_or_default(),
            binding_hash: sha256_hex(&binding),
            csrf_hash: sha256_hex(&csrf),
            expires_at: now + PENDING_TTL,
        };
        if let Err(e) = self.inner.store.insert_pending(&rec).await {
            return OAuthError::from(e).into_response();
        }
        let body = match session {
            Some(sess) => self.consent_page(p, client, &sess.subject, &pending_id, &csrf),
            None => self.login_page(StatusCode::OK, p, client, &pending_id, &csrf, None),
        };
        (jar, body).into_response()
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    pending: String,
    csrf: String,
    username: String,
    password: String,
}

/// Why a password check did not happen.
enum Throttled {
    /// The account or the source is locked, or must wait: for this many seconds.
    Wait(i64),
    /// Too many password checks are running: try again in a moment.
    Busy,
}

impl AuthServer {
    pub(crate) fn login_keys(
        username: &str,
        ip: Option<std::net::IpAddr>,
    ) -> (String, Option<String>) {
        // Keyed by the name as typed (lower-cased), existing or not, so throttling answers the
        // same for accounts that do not exist.
        let account = sha256_hex(&format!("login:acct:{}", username.to_lowercase()));
        let source =
            ip.map(|ip| sha256_hex(&format!("login:src:{}", crate::source::source_key(ip))));
        (account, source)
    }

    /// T19: is either key locked or waiting?
    async fn login_wait(&self, keys: &(String, Option<String>)) -> Result<Option<i64>, OAuthError> {
        let now = self.inner.clock.now_unix();
        let mut wait = 0;
        for k in std::iter::once(&keys.0).chain(keys.1.as_ref()) {
            if let Some(t) = self.inner.store.get_throttle(k, now).await? {
                wait = wait.max(t.locked_until - now);
            }
        }
        Ok((wait > 0).then_some(wait))
    }

    /// T19: counts a failed sign-in against the account and the source. Past a few failures each
    /// further one waits (2 s, 4 s, 8 s … up to a minute); past `lock_after` the account is
    /// locked for `lock_secs`; a source that fails `per_source` times is locked likewise.
    async fn login_failed(&self, keys: &(String, Option<String>)) -> Result<(), OAuthError> {
        let t = &self.inner.cfg.login_throttle;
        let now = self.inner.clock.now_unix();
        let (free, lock_after, lock_secs) = (t.free_failures, t.lock_after, t.lock_secs);
        self.inner
            .store
            .bump_throttle(&keys.0, now, t.window_secs, move |n| {
                if n >= lock_after {
                    lock_secs
                } else if n > free {
                    // At least 2 s: the store counts whole seconds.
                    (1i64 << (n - free).min(6)).min(60)
                } else {
                    0
                }
            })
            .await?;
        if let Some(src) = &keys.1 {
            let per_source = t.per_source;
            self.inner
                .store
                .bump_throttle(src, now, t.window_secs, move |n| {
                    if n >= per_source { lock_secs } else { 0 }
                })
                .await?;
        }
        Ok(())
    }

    /// Checks a password under the throttle and the bound on concurrent hashing (T19), and
    /// counts a failure (a wrong password, no such account, a disabled one). The same argon2
    /// work is done whether or not the user exists.
    async fn check_password(
        &self,
        keys: &(String, Option<String>),
        user: Option<&gatehouse_store::UserRecord>,
        password: String,
    ) -> Result<Result<bool, Throttled>, OAuthError> {
        if let Some(w) = self.login_wait(keys).await? {
            return Ok(Err(Throttled::Wait(w)));
        }
        // Each check holds ~19 MiB for ~50 ms: a few at a time keep memory flat under a flood;
        // the rest wait a little, then are told to come back.
        let permit = match tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.inner.hashing.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => return Ok(Err(Throttled::Busy)),
        };
        // Again after the wait: guesses that queued together must not all get through once
        // the first of them has locked the account.
        if let Some(w) = self.login_wait(keys).await? {
            return Ok(Err(Throttled::Wait(w)));
        }
        let hash = user
            .map_or(dummy_hash(), |u| u.password_hash.as_str())
            .to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        let ok = ok && user.is_some_and(|u| !u.disabled);
        if !ok {
            // Counted while the permit is held, so the next queued guess sees this failure.
            self.login_failed(keys).await?;
        }
        drop(permit);
        Ok(Ok(ok))
    }
}

impl AuthServer {
    /// Whether this source may start one more sign-in (a stored pending row): at most
    /// `pending_per_source` in the 10 minutes a pending sign-in lives.
    pub(crate) async fn pending_allowed(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<bool, OAuthError> {
        let limit = self.inner.cfg.login_throttle.pending_per_source;
        self.source_budget("pending", ip, PENDING_TTL, limit).await
    }
}

/// The answer when a source has started too many sign-ins lately.
pub(crate) fn too_many_sign_ins() -> Response {
    let mut r = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-ins were started from your network. Try again in a few minutes.",
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("60"),
    );
    r
}

/// Why a password sign-in did not go through: the status and the words for the page the user
/// typed into, and how long to wait first (`Retry-After`).
pub(crate) struct SignInRefused {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    retry_after: Option<i64>,
}

impl SignInRefused {
    /// `page` (the caller's form again, showing `message`) with `Retry-After` when there is a
    /// wait.
    pub(crate) fn answer(&self, mut page: Response) -> Response {
        if let Some(v) = self
            .retry_after
            .and_then(|s| http::HeaderValue::from_str(&s.to_string()).ok())
        {
            page.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        page
    }
}

impl AuthServer {
    /// T19: a password sign-in, the same for the authorization flow and the console: the
    /// account, the throttle and the bounded hashing, metrics and logs (the name only when it is
    /// an account: a password typed into the name field never reaches the log, issue 14 row 14).
    /// The subject when it went through; `place` names the page in the logs.
    pub(crate) async fn password_sign_in(
        &self,
        username: &str,
        ip: Option<std::net::IpAddr>,
        password: String,
        place: &'static str,
    ) -> Result<Result<String, SignInRefused>, OAuthError> {
        let user = self.inner.store.get_user(username).await?;
        let keys = Self::login_keys(username, ip);
        let refused = |status, message: &str, retry_after| {
            Ok(Err(SignInRefused {
                status,
                message: message.to_owned(),
                retry_after,
            }))
        };
        let ok = match self.check_password(&keys, user.as_ref(), password).await? {
            Ok(ok) => ok,
            Err(Throttled::Wait(secs)) => {
                metrics::counter!("gatehouse_as_logins_total", "outcome" => "throttled")
                    .increment(1);
                tracing::info!(wait = secs, place, "sign-in throttled");
                let wait = if secs < 120 {
                    format!("{secs} seconds")
                } else {
                    format!("{} minutes", (secs + 59) / 60)
                };
                return refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("Too many failed sign-ins. Try again in {wait}."),
                    Some(secs),
                );
            }
            Err(Throttled::Busy) => {
                metrics::counter!("gatehouse_as_logins_total", "outcome" => "busy").increment(1);
                return refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is busy. Try again in a moment.",
                    Some(2),
                );
            }
        };
        match user {
            Some(u) if ok => {
                self.inner.store.clear_throttle(&keys.0).await?;
                metrics::counter!("gatehouse_as_logins_total", "outcome" => "success").increment(1);
                Ok(Ok(u.subject))
            }
            other => {
                metrics::counter!("gatehouse_as_logins_total", "outcome" => "failed").increment(1);
                match &other {
                    Some(u) => tracing::info!(username = %u.username, place, "failed sign-in"),
                    None => tracing::info!(place, "failed sign-in (no such account)"),
                }
                refused(
                    StatusCode::UNAUTHORIZED,
                    "Wrong user name or password.",
                    None,
                )
            }
        }
    }
}

/// POST /login
pub(crate) async fn login(
    State(s): State<AuthServer>,
    ext: http::Extensions,
    jar: CookieJar,
    axum::Form(f): axum::Form<LoginForm>,
) -> Response {
    if !s.inner.cfg.local_login {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Password sign-in is turned off; use single sign-on.",
        );
    }
    let (p, client) = match s.verified_pending(&jar, &f.pending, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ip = crate::source::source_ip(&ext);
    let subject = match s
        .password_sign_in(&f.username, ip, f.password, "authorization")
        .await
    {
        Ok(Ok(subject)) => subject,
        Ok(Err(no)) => {
            return no.answer(s.login_page(
                no.status,
                &p,
                &client,
                &f.pending,
                &f.csrf,
                Some(&no.message),
            ));
        }
        Err(e) => return e.into_response(),
    };
    s.finish_login(jar, &p, &client, &f.pending, &f.csrf, subject, None)
        .await
}

#[derive(Deserialize)]
pub(crate) struct ConsentForm {
    pending: String,
    csrf: String,
    decision: String,
}

/// POST /consent
pub(crate) async fn consent(
    State(s): State<AuthServer>,
    jar: CookieJar,
    axum::Form(f): axum::Form<ConsentForm>,
) -> Response {
    let (p, client) = match s.verified_pending(&jar, &f.pending, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let session = match s.session_subject(&jar).await {
        Ok(Some(x)) => x,
        Ok(None) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "You are not signed in any more. Start again from the application.",
            );
        }
        Err(e) => return e.into_response(),
    };
    // Single use: a second post of the same form does nothing.
    match s.inner.store.take_pending(&sha256_hex(&f.pending)).await {
        Ok(true) => {}
        Ok(false) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "This request was already answered.",
            );
        }
        Err(e) => return OAuthError::from(e).into_response(),
    }
    if let Some(device_hash) = &p.device {
        return s
            .device_decision(device_hash, &p, &client, &session, f.decision == "approve")
            .await;
    }
    if f.decision != "approve" {
        tracing::info!(subject = %session.subject, client_id = %client.client_id, "consent denied");
        return match s.client_redirect(
            &p.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "the user denied the request"),
            ],
            p.state.as_deref(),
        ) {
            Ok(u) => Redirect::to(&u).into_response(),
            Err(e) => e.into_response(),
        };
    }
    let now = s.inner.clock.now_unix();
    let prior = s
        .inner
        .store
        .get_consent(&session.subject, &client.client_id, &p.resource)
        .await
        .ok()
        .flatten();
    let (prior_scope, mut redirect_uris) = prior
        .map(|c| {
            (
                ScopeSet::parse(&c.scope).unwrap_or_default(),
                c.redirect_uris,
            )
        })
        .unwrap_or_default();
    let scope = prior_scope.union(&ScopeSet::parse(&p.scope).unwrap_or_default());
    // The redirect URIs this consent has sent codes to, newest last, a few at most.
    redirect_uris.retain(|u| *u != p.redirect_uri);
    redirect_uris.push(p.redirect_uri.clone());
    if redirect_uris.len() > MAX_REMEMBERED_REDIRECTS {
        redirect_uris.drain(..redirect_uris.len() - MAX_REMEMBERED_REDIRECTS);
    }
    if let Err(e) = s
        .inner
        .store
        .put_consent(&ConsentRecord {
            subject: session.subject.clone(),
            client_id: client.client_id.clone(),
            resource: p.resource.clone(),
            scope: scope.to_string(),
            redirect_uris,
            granted_at: now,
        })
        .await
    {
        return OAuthError::from(e).into_response();
    }
    tracing::info!(subject = %session.subject, client_id = %client.client_id, scope = %p.scope, "consent granted");
    s.issue_code(&p, &client, &session, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
