//! The admin console (`/admin`) and every user's account page (`/account`): server-rendered, no
//! JavaScript, the same headers as the sign-in pages (no framing, no caching, a strict CSP).
//!
//! What rules out what:
//! - every page needs a signed-in browser session; `/admin` also an administrator (a listed
//!   user, or a member of a listed group from single sign-on) who signed in recently, else 403;
//! - every form carries a CSRF token derived from the session id (which only this browser's
//!   HttpOnly cookie holds), and posts from another origin are refused before anything else;
//! - the sign-in form is bound to a cookie of its own (login CSRF) and goes through the same
//!   throttle and bounded password hashing as the authorization flow (T19);
//! - every console action is written to `admin_events` with who did it (never a secret), and a
//!   new client secret is shown once and stored only hashed.
use crate::authorize::Session;
use crate::pages::page;
use crate::secrets::{hash_password, random_id, random_token, sha256_hex};
use crate::source::source_ip;
use crate::{AuthServer, OAuthError};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use gatehouse_core::{RedirectUri, ScopeSet};
use gatehouse_store::{AdminEvent, ClientRecord, ClientSource, PendingRecord, UserRecord};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who may use the console, and what it shows besides the store.
#[derive(Clone, Default)]
pub struct ConsoleConfig {
    /// Subjects (local user names) that are administrators.
    pub admin_users: Vec<String>,
    /// Groups (the `groups` claim from single sign-on) whose members are administrators.
    pub admin_groups: Vec<String>,
    /// An administrator must have signed in within this many seconds (default one hour).
    pub admin_max_age_secs: i64,
    /// The gateway's audit log, shown with its chain status.
    pub audit: Option<Arc<dyn AuditTrail>>,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("admin_users", &self.admin_users)
            .field("admin_groups", &self.admin_groups)
            .field("admin_max_age_secs", &self.admin_max_age_secs)
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

/// A read of the gateway's audit log for the console.
pub trait AuditTrail: Send + Sync + 'static {
    /// The chain's status and the newest `recent` records. Reads the file (blocking).
    fn snapshot(&self, recent: usize) -> AuditSnapshot;
}

#[derive(Debug, Clone)]
pub struct AuditSnapshot {
    pub path: String,
    pub chain: ChainStatus,
    /// Newest first.
    pub recent: Vec<AuditEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Every record links to the one before: this many records.
    Intact(usize),
    /// Where and why it breaks (or why the log could not be read).
    Broken(String),
    /// Not checked here (say why; e.g. too large to read on a page view).
    Unchecked(String),
}

#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub time: String,
    pub subject: String,
    pub client: String,
    pub server: String,
    pub method: String,
    pub tool: String,
    pub decision: String,
}

/// Where to go after signing in: only these (no open redirect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Next {
    Account,
    Admin,
}

impl Next {
    fn as_str(self) -> &'static str {
        match self {
            Next::Account => "account",
            Next::Admin => "admin",
        }
    }
}

/// What a pending record holds for a console sign-in through single sign-on (an authorization
/// request holds a `Pending`, which has no `console` field).
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsoleSignin {
    pub(crate) console: Next,
}

/// A signed-in browser with the CSRF token its forms carry.
struct Signed {
    session: Session,
    id_hash: String,
    csrf: String,
}

/// A signed-in browser's post that carried its session's CSRF token and came from our own
/// origin: what every state-changing console action takes (made only by `check_post`).
struct Posted(Signed);

/// UTC time of a Unix timestamp, to the minute.
fn when(ts: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ts) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => ts.to_string(),
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl AuthServer {
    fn console(&self) -> &ConsoleConfig {
        &self.inner.cfg.console
    }

    async fn signed_in(&self, jar: &CookieJar) -> Result<Option<Signed>, OAuthError> {
        let Some(c) = jar.get(&self.cookie_name("gh_session")) else {
            return Ok(None);
        };
        let sid = c.value();
        let Some(session) = self.session_subject(jar).await? else {
            return Ok(None);
        };
        Ok(Some(Signed {
            session,
            id_hash: sha256_hex(sid),
            // Only this browser knows the session id (an HttpOnly cookie), so only its pages
            // can carry this.
            csrf: sha256_hex(&format!("gatehouse console csrf\0{sid}")),
        }))
    }

    fn is_admin(&self, session: &Session) -> bool {
        let c = self.console();
        if c.admin_users.contains(&session.subject) {
            return true;
        }
        if c.admin_groups.is_empty() {
            return false;
        }
        let groups = session
            .claims
            .as_deref()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("groups").cloned());
        groups.as_ref().and_then(|g| g.as_array()).is_some_and(|g| {
            g.iter()
                .filter_map(|x| x.as_str())
                .any(|x| c.admin_groups.iter().any(|a| a == x))
        })
    }

    /// A post from a page of another origin is refused whatever it carries (the CSRF token is
    /// the main defence; this one needs no state). Browsers that send `Sec-Fetch-Site` say
    /// exactly that; older ones send `Origin`, which is `null` under our no-referrer policy.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        if let Some(site) = headers.get("sec-fetch-site") {
            return site.as_bytes() == b"same-origin";
        }
        match headers.get(http::header::ORIGIN).map(|o| o.to_str()) {
            None | Some(Ok("null")) => true,
            Some(Ok(o)) => o == self.inner.cfg.issuer.url().origin().ascii_serialization(),
            Some(Err(_)) => false,
        }
    }

    /// A page of the console's own look for refusals (not the authorization flow's).
    fn console_error(&self, status: StatusCode, title: &str, message: &str) -> Response {
        let back = self.inner.cfg.endpoint("/account");
        page(
            status,
            ConsoleErrorPage {
                title,
                message,
                back: &back,
                back_label: "Go to your account",
            }
            .render(),
            None,
        )
    }

    /// The one check of every console post: our origin, and this session's CSRF token.
    fn check_post(
        &self,
        me: Signed,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<Posted, Box<Response>> {
        if self.same_origin(headers) && ct_eq(&me.csrf, csrf) {
            return Ok(Posted(me));
        }
        tracing::warn!(subject = %me.session.subject, "console post without this page's CSRF token or from another origin");
        Err(Box::new(self.console_error(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form was not sent from this page. Reload the page and try again.",
        )))
    }

    async fn audit_admin(&self, actor: &str, action: &str, target: &str, detail: &str) {
        tracing::info!(target: "gatehouse::admin", actor, action, target, detail, "console action");
        // Ids sort in the order actions happened (several can share a second).
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let e = AdminEvent {
            event_id: format!("{nanos:020}-{}", random_id()),
            at: self.inner.clock.now_unix(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(err) = self.inner.store.insert_admin_event(&e).await {
            tracing::error!(error = %err, action, "could not record a console action");
        }
    }

    fn signin_redirect(&self, next: Next) -> Response {
        Redirect::to(&format!(
            "{}?next={}",
            self.inner.cfg.endpoint("/account/signin"),
            next.as_str()
        ))
        .into_response()
    }
}

// ---- sign-in ----------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console_error.html")]
struct ConsoleErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    back: &'a str,
    back_label: &'a str,
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage<'a> {
    action: &'a str,
    csrf: &'a str,
    next: &'a str,
    error: Option<&'a str>,
    local: bool,
    issuer: &'a str,
    /// Single sign-on: (button text, form action, pending id, its CSRF token).
    sso: Option<(String, String, String, String)>,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<Next>,
}

impl AuthServer {
    async fn signin_page(
        &self,
        jar: CookieJar,
        ip: Option<std::net::IpAddr>,
        status: StatusCode,
        next: Next,
        error: Option<&str>,
    ) -> Response {
        // Login CSRF: the form is good only with the cookie set alongside it.
        let token = random_token();
        let jar = jar.add(self.cookie("gh_signin", token.clone(), 1800));
        // Single sign-on goes through a pending sign-in bound to this browser, like an
        // authorization request's (the identity provider's answer must come back here).
        let (jar, sso) = match &self.inner.cfg.upstream {
            None => (jar, None),
            Some(idp) => {
                match self.pending_allowed(ip).await {
                    Ok(true) => {}
                    Ok(false) => return crate::authorize::too_many_sign_ins(),
                    Err(e) => return e.into_response(),
                }
                let (jar, binding) = self.browser_binding(jar);
                let (pending_id, csrf) = (random_token(), random_token());
                let rec = PendingRecord {
                    id_hash: sha256_hex(&pending_id),
                    request: serde_json::to_string(&ConsoleSignin { console: next })
                        .unwrap_or_default(),
                    binding_hash: sha256_hex(&binding),
                    csrf_hash: sha256_hex(&csrf),
                    expires_at: self.inner.clock.now_unix() + crate::authorize::PENDING_TTL,
                };
                if let Err(e) = self.inner.store.insert_pending(&rec).await {
                    return OAuthError::from(e).into_response();
                }
                (
                    jar,
                    Some((
                        format!("Sign in with {}", idp.display_name),
                        self.inner.cfg.endpoint("/login/upstream"),
                        pending_id,
                        csrf,
                    )),
                )
            }
        };
        let action = self.inner.cfg.endpoint("/account/signin");
        (
            jar,
            page(
                status,
                SigninPage {
                    action: &action,
                    csrf: &token,
                    next: next.as_str(),
                    error,
                    local: self.inner.cfg.local_login,
                    issuer: self.inner.cfg.issuer.as_str(),
                    sso,
                }
                .render(),
                None,
            ),
        )
            .into_response()
    }

    /// After signing in (password or single sign-on): a new session, then where the user was
    /// going. The old session, if any, ends (no fixation).
    pub(crate) async fn finish_console_signin(
        &self,
        jar: CookieJar,
        subject: String,
        claims: Option<String>,
        next: Next,
    ) -> Response {
        if let Some(old) = jar.get(&self.cookie_name("gh_session")) {
            let _ = self
                .inner
                .store
                .delete_session(&sha256_hex(old.value()))
                .await;
        }
        let jar = jar.remove(self.cookie("gh_signin", String::new(), 0));
        let (jar, _) = match self.start_session(jar, subject, claims).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
        let to = self.inner.cfg.endpoint(match next {
            Next::Account => "/account",
            Next::Admin => "/admin",
        });
        (jar, Redirect::to(&to)).into_response()
    }
}

/// GET /account/signin
pub(crate) async fn signin_form(
    State(s): State<AuthServer>,
    ext: http::Extensions,
    jar: CookieJar,
    Query(q): Query<NextQuery>,
) -> Response {
    s.signin_page(
        jar,
        source_ip(&ext),
        StatusCode::OK,
        q.next.unwrap_or(Next::Account),
        None,
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct SigninForm {
    csrf: String,
    next: Next,
    username: String,
    password: String,
}

/// POST /account/signin
pub(crate) async fn signin(
    State(s): State<AuthServer>,
    ext: http::Extensions,
    headers: HeaderMap,
    jar: CookieJar,
    axum::Form(f): axum::Form<SigninForm>,
) -> Response {
    if !s.same_origin(&headers) {
        return s.console_error(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form was sent from another site.",
        );
    }
    let bound = jar
        .get(&s.cookie_name("gh_signin"))
        .is_some_and(|c| ct_eq(c.value(), &f.csrf));
    if !bound {
        return s
            .signin_page(
                jar,
                source_ip(&ext),
                StatusCode::BAD_REQUEST,
                f.next,
                Some("This sign-in form expired. Try again."),
            )
            .await;
    }
    if !s.inner.cfg.local_login {
        return s.console_error(
            StatusCode::BAD_REQUEST,
            "Sign-in",
            "Password sign-in is turned off on this server.",
        );
    }
    let ip = source_ip(&ext);
    let subject = match s
        .password_sign_in(&f.username, ip, f.password, "console")
        .await
    {
        Ok(Ok(subject)) => subject,
        Ok(Err(no)) => {
            let page = s
                .signin_page(jar, ip, no.status, f.next, Some(&no.message))
                .await;
            return no.answer(page);
        }
        Err(e) => return e.into_response(),
    };
    s.finish_console_signin(jar, subject, None, f.next).await
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
}

/// POST /account/signout: ends this browser's session.
pub(crate) async fn signout(
    State(s): State<AuthServer>,
    headers: HeaderMap,
    jar: CookieJar,
    axum::Form(f): axum::Form<CsrfForm>,
) -> Response {
    let signed = match s.signed_in(&jar).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if let Some(me) = signed {
        let Posted(me) = match s.check_post(me, &headers, &f.csrf) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        if let Err(e) = s.inner.store.delete_session(&me.id_hash).await {
            return OAuthError::from(e).into_response();
        }
        tracing::info!(subject = %me.session.subject, "signed out");
    }
    let jar = jar.remove(s.cookie("gh_session", String::new(), 0));
    (jar, s.signin_redirect(Next::Account)).into_response()
}

// ---- the account page -------------------------------------------------------------------------

struct AppView {
    client_id: String,
    client_name: String,
    verified: bool,
    resource: String,
    scopes: Vec<(String, String)>,
    granted: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    subject: &'a str,
    apps: Vec<AppView>,
    csrf: &'a str,
    action: &'a str,
    signout: &'a str,
    admin: Option<String>,
    message: Option<String>,
}

impl AuthServer {
    async fn account_page(&self, me: &Signed, message: Option<String>) -> Response {
        let apps = match self.inner.store.approved_apps(&me.session.subject).await {
            Ok(a) => a,
            Err(e) => return OAuthError::from(e).into_response(),
        };
        let mut views = Vec::with_capacity(apps.len());
        for a in apps {
            let client = self
                .inner
                .store
                .get_client(&a.client_id)
                .await
                .ok()
                .flatten();
            let (name, verified) = match &client {
                Some(c) => (
                    c.client_name.clone().unwrap_or_else(|| c.client_id.clone()),
                    c.source == ClientSource::Preregistered,
                ),
                None => (a.client_id.clone(), false),
            };
            views.push(AppView {
                client_name: name,
                verified,
                client_id: a.client_id,
                resource: a.resource,
                scopes: self.describe_scopes(&a.scope),
                granted: when(a.granted_at),
                last_used: a.last_used_at.map(when).unwrap_or_else(|| "not yet".into()),
            });
        }
        let action = self.inner.cfg.endpoint("/account");
        let signout = self.inner.cfg.endpoint("/account/signout");
        page(
            StatusCode::OK,
            AccountPage {
                subject: &me.session.subject,
                apps: views,
                csrf: &me.csrf,
                action: &action,
                signout: &signout,
                admin: self
                    .is_admin(&me.session)
                    .then(|| self.inner.cfg.endpoint("/admin")),
                message,
            }
            .render(),
            None,
        )
    }
}

/// GET /account
pub(crate) async fn account(State(s): State<AuthServer>, jar: CookieJar) -> Response {
    match s.signed_in(&jar).await {
        Ok(Some(me)) => s.account_page(&me, None).await,
        Ok(None) => s.signin_redirect(Next::Account),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    csrf: String,
    client_id: String,
    resource: String,
}

/// POST /account: revoke one approved app (its consent and every token of it).
pub(crate) async fn account_revoke(
    State(s): State<AuthServer>,
    headers: HeaderMap,
    jar: CookieJar,
    axum::Form(f): axum::Form<RevokeForm>,
) -> Response {
    let me = match s.signed_in(&jar).await {
        Ok(Some(me)) => me,
        Ok(None) => return s.signin_redirect(Next::Account),
        Err(e) => return e.into_response(),
    };
    let Posted(me) = match s.check_post(me, &headers, &f.csrf) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let now = s.inner.clock.now_unix();
    let n = match s
        .inner
        .store
        .revoke_approval(&me.session.subject, &f.client_id, &f.resource, now)
        .await
    {
        Ok(n) => n,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    tracing::info!(subject = %me.session.subject, client_id = %f.client_id, resource = %f.resource, grants = n, "user revoked an app");
    s.account_page(
        &me,
        Some(format!(
            "Access revoked: the app can no longer use {} for you. It must ask again.",
            f.resource
        )),
    )
    .await
}

// ---- the admin console ------------------------------------------------------------------------

/// Rows a console list shows at most (the newest): self-registration lets strangers add
/// clients, so no page loads a whole table.
const CONSOLE_ROWS: i64 = 500;

/// The console's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Home,
    Clients,
    Users,
    Consents,
    Sessions,
    Keys,
    Audit,
}

impl Section {
    const ALL: [Section; 7] = [
        Section::Home,
        Section::Clients,
        Section::Users,
        Section::Consents,
        Section::Sessions,
        Section::Keys,
        Section::Audit,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.path() == s)
    }

    fn path(self) -> &'static str {
        match self {
            Section::Home => "",
            Section::Clients => "clients",
            Section::Users => "users",
            Section::Consents => "consents",
            Section::Sessions => "sessions",
            Section::Keys => "keys",
            Section::Audit => "audit",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::Home => "Overview",
            Section::Clients => "Clients",
            Section::Users => "Users",
            Section::Consents => "Consents",
            Section::Sessions => "Sessions",
            Section::Keys => "Signing keys",
            Section::Audit => "Audit",
        }
    }
}

pub(crate) struct NavItem {
    href: String,
    title: &'static str,
    current: bool,
}

pub(crate) struct ClientView {
    id: String,
    name: String,
    source: &'static str,
    kind: String,
    redirect_uris: String,
    grant_types: String,
    created: String,
    disabled: bool,
    has_secret: bool,
}

pub(crate) struct UserView {
    username: String,
    subject: String,
    disabled: bool,
    created: String,
    admin: bool,
}

pub(crate) struct ConsentView {
    subject: String,
    client_id: String,
    client_name: String,
    resource: String,
    scope: String,
    granted: String,
}

pub(crate) struct SessionView {
    id_hash: String,
    short: String,
    subject: String,
    signed_in: String,
    expires: String,
    current: bool,
}

pub(crate) struct KeyView {
    kid: String,
    alg: String,
    created: String,
    state: &'static str,
}

pub(crate) struct EventView {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

pub(crate) struct GatewayAudit {
    path: String,
    chain_ok: bool,
    chain: String,
    recent: Vec<AuditEntry>,
}

pub(crate) enum AdminView {
    Home {
        clients: i64,
        users: i64,
        consents: i64,
        sessions: i64,
    },
    Clients(Vec<ClientView>),
    Users(Vec<UserView>),
    Consents(Vec<ConsentView>),
    Sessions(Vec<SessionView>),
    Keys(Vec<KeyView>),
    Audit {
        events: Vec<EventView>,
        gateway: Option<GatewayAudit>,
    },
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage<'a> {
    title: &'static str,
    subject: &'a str,
    nav: Vec<NavItem>,
    action: String,
    csrf: &'a str,
    signout: String,
    account: String,
    message: Option<String>,
    error: Option<String>,
    /// A list shows only its newest rows.
    note: Option<String>,
    /// A secret shown once: (client id, secret).
    secret: Option<(String, String)>,
    view: AdminView,
}

/// What an action left to show.
#[derive(Default)]
struct Outcome {
    message: Option<String>,
    error: Option<String>,
    secret: Option<(String, String)>,
}

impl Outcome {
    fn ok(m: impl Into<String>) -> Self {
        Self {
            message: Some(m.into()),
            ..Default::default()
        }
    }
    fn err(m: impl Into<String>) -> Self {
        Self {
            error: Some(m.into()),
            ..Default::default()
        }
    }
}

impl AuthServer {
    /// The signed-in administrator, or the response to send instead (sign-in, 403).
    async fn admin(&self, jar: &CookieJar) -> Result<Signed, Response> {
        let me = match self.signed_in(jar).await {
            Ok(Some(me)) => me,
            Ok(None) => return Err(self.signin_redirect(Next::Admin)),
            Err(e) => return Err(e.into_response()),
        };
        if !self.is_admin(&me.session) {
            tracing::info!(subject = %me.session.subject, "console refused: not an administrator");
            return Err(self.console_error(
                StatusCode::FORBIDDEN,
                "Not an administrator",
                "Your account is not an administrator of this server.",
            ));
        }
        let max_age = match self.console().admin_max_age_secs {
            0 => 3600,
            n => n,
        };
        if self.inner.clock.now_unix() - me.session.auth_time > max_age {
            return Err(self.signin_redirect(Next::Admin));
        }
        Ok(me)
    }

    /// The section's view, and a note when a list shows only the newest `CONSOLE_ROWS`.
    async fn admin_view(
        &self,
        section: Section,
        me: &Signed,
    ) -> Result<(AdminView, Option<String>), OAuthError> {
        let st = &self.inner.store;
        let now = self.inner.clock.now_unix();
        let counts = st.console_counts(now).await?;
        let cut = |total: i64, what: &str| {
            (total > CONSOLE_ROWS)
                .then(|| format!("Showing the newest {CONSOLE_ROWS} of {total} {what}."))
        };
        let note = match section {
            Section::Clients => cut(counts.clients, "clients"),
            Section::Consents => cut(counts.consents, "consents"),
            Section::Sessions => cut(counts.sessions, "sessions"),
            _ => None,
        };
        let view = match section {
            Section::Home => AdminView::Home {
                clients: counts.clients,
                users: counts.users,
                consents: counts.consents,
                sessions: counts.sessions,
            },
            Section::Clients => AdminView::Clients(
                st.list_clients_newest(CONSOLE_ROWS)
                    .await?
                    .into_iter()
                    .map(|c| ClientView {
                        name: c.client_name.clone().unwrap_or_default(),
                        source: match c.source {
                            ClientSource::Preregistered => "pre-registered",
                            ClientSource::Dynamic => "self-registered (DCR)",
                            ClientSource::MetadataDocument => "metadata document",
                        },
                        kind: c.auth_method.clone(),
                        redirect_uris: c.redirect_uris.join(" "),
                        grant_types: c.grant_types.join(" "),
                        created: when(c.created_at),
                        disabled: c.disabled,
                        has_secret: c.secret_hash.is_some(),
                        id: c.client_id,
                    })
                    .collect(),
            ),
            Section::Users => AdminView::Users(
                st.list_users()
                    .await?
                    .into_iter()
                    .map(|u| UserView {
                        admin: self.console().admin_users.contains(&u.subject),
                        created: when(u.created_at),
                        disabled: u.disabled,
                        username: u.username,
                        subject: u.subject,
                    })
                    .collect(),
            ),
            Section::Consents => {
                // The names of just the clients listed (each looked up once).
                let mut names: std::collections::HashMap<String, String> = Default::default();
                let mut rows = Vec::new();
                for c in st.list_consents(CONSOLE_ROWS).await? {
                    if !names.contains_key(&c.client_id) {
                        let name = st
                            .get_client(&c.client_id)
                            .await?
                            .and_then(|r| r.client_name)
                            .unwrap_or_else(|| c.client_id.clone());
                        names.insert(c.client_id.clone(), name);
                    }
                    rows.push(ConsentView {
                        client_name: names.get(&c.client_id).cloned().unwrap_or_default(),
                        granted: when(c.granted_at),
                        subject: c.subject,
                        client_id: c.client_id,
                        resource: c.resource,
                        scope: c.scope,
                    });
                }
                AdminView::Consents(rows)
            }
            Section::Sessions => AdminView::Sessions(
                st.list_sessions(now, CONSOLE_ROWS)
                    .await?
                    .into_iter()
                    .map(|x| SessionView {
                        short: x.id_hash.chars().take(12).collect(),
                        current: x.id_hash == me.id_hash,
                        signed_in: when(x.auth_time),
                        expires: when(x.expires_at),
                        subject: x.subject,
                        id_hash: x.id_hash,
                    })
                    .collect(),
            ),
            Section::Keys => AdminView::Keys(
                st.list_keys()
                    .await?
                    .into_iter()
                    .rev()
                    .map(|k| KeyView {
                        state: match k.retired_at {
                            None => "active",
                            Some(_) => "retired (published until its tokens expire)",
                        },
                        created: when(k.created_at),
                        kid: k.kid,
                        alg: k.alg,
                    })
                    .collect(),
            ),
            Section::Audit => {
                let events = st
                    .admin_events(200)
                    .await?
                    .into_iter()
                    .map(|e| EventView {
                        at: when(e.at),
                        actor: e.actor,
                        action: e.action,
                        target: e.target,
                        detail: e.detail,
                    })
                    .collect();
                let gateway = match self.console().audit.clone() {
                    None => None,
                    Some(a) => {
                        let snap = tokio::task::spawn_blocking(move || a.snapshot(100))
                            .await
                            .map_err(OAuthError::server_error)?;
                        Some(GatewayAudit {
                            path: snap.path,
                            chain_ok: !matches!(snap.chain, ChainStatus::Broken(_)),
                            chain: match snap.chain {
                                ChainStatus::Intact(n) => {
                                    format!("intact: {n} records, each linked to the one before")
                                }
                                ChainStatus::Broken(e) => format!("BROKEN: {e}"),
                                ChainStatus::Unchecked(why) => format!("not checked: {why}"),
                            },
                            recent: snap.recent,
                        })
                    }
                };
                AdminView::Audit { events, gateway }
            }
        };
        Ok((view, note))
    }

    async fn admin_page(&self, section: Section, me: &Signed, out: Outcome) -> Response {
        let (view, note) = match self.admin_view(section, me).await {
            Ok(v) => v,
            Err(e) => return e.into_response(),
        };
        let base = self.inner.cfg.endpoint("/admin");
        let href = |x: Section| match x.path() {
            "" => base.clone(),
            p => format!("{base}/{p}"),
        };
        page(
            if out.error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            AdminPage {
                title: section.title(),
                subject: &me.session.subject,
                nav: Section::ALL
                    .into_iter()
                    .map(|x| NavItem {
                        href: href(x),
                        title: x.title(),
                        current: x == section,
                    })
                    .collect(),
                action: href(section),
                csrf: &me.csrf,
                signout: self.inner.cfg.endpoint("/account/signout"),
                account: self.inner.cfg.endpoint("/account"),
                message: out.message,
                error: out.error,
                note,
                secret: out.secret,
                view,
            }
            .render(),
            None,
        )
    }
}

/// GET /admin
pub(crate) async fn admin_home(State(s): State<AuthServer>, jar: CookieJar) -> Response {
    match s.admin(&jar).await {
        Ok(me) => s.admin_page(Section::Home, &me, Outcome::default()).await,
        Err(r) => r,
    }
}

/// GET /admin/{section}
pub(crate) async fn admin_section(
    State(s): State<AuthServer>,
    Path(section): Path<String>,
    jar: CookieJar,
) -> Response {
    let me = match s.admin(&jar).await {
        Ok(me) => me,
        Err(r) => return r,
    };
    match Section::parse(&section).filter(|x| *x != Section::Home) {
        Some(x) => s.admin_page(x, &me, Outcome::default()).await,
        None => s.console_error(StatusCode::NOT_FOUND, "Not found", "No such page."),
    }
}

/// Every field any console form sends; each action reads the ones it needs.
#[derive(Deserialize)]
pub(crate) struct AdminForm {
    csrf: String,
    op: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    redirect_uris: String,
    #[serde(default)]
    client_type: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    session: String,
}

/// POST /admin/{section}
pub(crate) async fn admin_action(
    State(s): State<AuthServer>,
    Path(section): Path<String>,
    headers: HeaderMap,
    jar: CookieJar,
    axum::Form(f): axum::Form<AdminForm>,
) -> Response {
    let me = match s.admin(&jar).await {
        Ok(me) => me,
        Err(r) => return r,
    };
    let posted = match s.check_post(me, &headers, &f.csrf) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let Some(section) = Section::parse(&section).filter(|x| *x != Section::Home) else {
        return s.console_error(StatusCode::NOT_FOUND, "Not found", "No such page.");
    };
    let out = match s.act(section, &posted, f).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    s.admin_page(section, &posted.0, out).await
}

impl AuthServer {
    async fn act(
        &self,
        section: Section,
        Posted(me): &Posted,
        f: AdminForm,
    ) -> Result<Outcome, OAuthError> {
        let st = &self.inner.store;
        let now = self.inner.clock.now_unix();
        let actor = me.session.subject.as_str();
        let out = match (section, f.op.as_str()) {
            (Section::Clients, "add") => return self.add_client(actor, &f).await,
            (Section::Clients, op @ ("disable" | "enable")) => {
                if !st
                    .set_client_disabled(&f.client_id, op == "disable", now)
                    .await?
                {
                    return Ok(Outcome::err(format!("No client {}.", f.client_id)));
                }
                self.audit_admin(actor, &format!("client.{op}"), &f.client_id, "")
                    .await;
                Outcome::ok(match op {
                    "disable" => format!(
                        "Client {} disabled: its tokens are revoked and it can get no new ones.",
                        f.client_id
                    ),
                    _ => format!("Client {} enabled.", f.client_id),
                })
            }
            (Section::Clients, "rotate") => {
                let secret = random_token();
                if !st
                    .set_client_secret(&f.client_id, &sha256_hex(&secret))
                    .await?
                {
                    return Ok(Outcome::err(format!(
                        "Client {} has no secret to rotate (a public client, or one that signs with its keys).",
                        f.client_id
                    )));
                }
                self.audit_admin(actor, "client.rotate_secret", &f.client_id, "")
                    .await;
                Outcome {
                    message: Some(format!(
                        "New secret for {}: the old one no longer works.",
                        f.client_id
                    )),
                    secret: Some((f.client_id.clone(), secret)),
                    ..Default::default()
                }
            }
            (Section::Clients, "delete") => {
                if !st.delete_client(&f.client_id, now).await? {
                    return Ok(Outcome::err(format!("No client {}.", f.client_id)));
                }
                self.audit_admin(actor, "client.delete", &f.client_id, "")
                    .await;
                Outcome::ok(format!(
                    "Client {} deleted; its tokens are revoked.",
                    f.client_id
                ))
            }
            (Section::Users, "add") => {
                let name = f.username.trim();
                if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                    return Ok(Outcome::err("Give a user name (at most 128 characters)."));
                }
                // Subjects from single sign-on and assertions are `<prefix>:<id>`: a local name
                // with a colon could take over such a user's consents and grants.
                if name.contains(':') {
                    return Ok(Outcome::err("A local user name cannot contain `:`."));
                }
                if f.password.chars().count() < 8 {
                    return Ok(Outcome::err("The password needs at least 8 characters."));
                }
                let hash = self.hash(f.password).await?;
                match st
                    .insert_user(&UserRecord {
                        username: name.to_owned(),
                        subject: name.to_owned(),
                        password_hash: hash,
                        disabled: false,
                        created_at: now,
                    })
                    .await
                {
                    Ok(()) => {}
                    Err(gatehouse_store::StoreError::Conflict(_)) => {
                        return Ok(Outcome::err(format!("A user {name} exists already.")));
                    }
                    Err(e) => return Err(e.into()),
                }
                self.audit_admin(actor, "user.add", name, "").await;
                Outcome::ok(format!("User {name} added."))
            }
            (Section::Users, op @ ("disable" | "enable")) => {
                if !st.set_disabled(&f.username, op == "disable", now).await? {
                    return Ok(Outcome::err(format!("No user {}.", f.username)));
                }
                self.audit_admin(actor, &format!("user.{op}"), &f.username, "")
                    .await;
                Outcome::ok(match op {
                    "disable" => format!(
                        "User {} disabled: signed out everywhere, their apps' tokens revoked.",
                        f.username
                    ),
                    _ => format!("User {} enabled.", f.username),
                })
            }
            (Section::Users, "reset") => {
                if f.password.chars().count() < 8 {
                    return Ok(Outcome::err(
                        "The new password needs at least 8 characters.",
                    ));
                }
                let hash = self.hash(f.password).await?;
                if !st.set_password(&f.username, &hash, now).await? {
                    return Ok(Outcome::err(format!("No user {}.", f.username)));
                }
                self.audit_admin(actor, "user.reset_password", &f.username, "")
                    .await;
                Outcome::ok(format!(
                    "Password of {} reset: signed out everywhere, their apps must ask again.",
                    f.username
                ))
            }
            (Section::Users, "delete") => {
                if !st.delete_user(&f.username, now).await? {
                    return Ok(Outcome::err(format!("No user {}.", f.username)));
                }
                self.audit_admin(actor, "user.delete", &f.username, "")
                    .await;
                Outcome::ok(format!(
                    "User {} deleted; their tokens are revoked.",
                    f.username
                ))
            }
            (Section::Consents, "revoke") => {
                let n = st
                    .revoke_approval(&f.subject, &f.client_id, &f.resource, now)
                    .await?;
                self.audit_admin(
                    actor,
                    "consent.revoke",
                    &format!("{} / {}", f.subject, f.client_id),
                    &format!("resource {}; {n} grant(s) revoked", f.resource),
                )
                .await;
                Outcome::ok(format!(
                    "Consent of {} for {} revoked ({n} grant(s) ended).",
                    f.subject, f.client_id
                ))
            }
            (Section::Sessions, "revoke") => {
                st.delete_session(&f.session).await?;
                let short: String = f.session.chars().take(12).collect();
                self.audit_admin(actor, "session.revoke", &short, "").await;
                Outcome::ok(format!("Session {short}… ended."))
            }
            (Section::Keys, "rotate") => {
                let kid = self.inner.keys.rotate().await?;
                self.audit_admin(actor, "key.rotate", &kid, "").await;
                Outcome::ok(format!(
                    "New signing key {kid} is active; the old one is published until its tokens expire."
                ))
            }
            _ => Outcome::err("Unknown action."),
        };
        Ok(out)
    }

    async fn hash(&self, password: String) -> Result<String, OAuthError> {
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(OAuthError::server_error)?
            .map_err(OAuthError::server_error)
    }

    async fn add_client(&self, actor: &str, f: &AdminForm) -> Result<Outcome, OAuthError> {
        let name = f.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Ok(Outcome::err(
                "Give the client a name (at most 200 characters).",
            ));
        }
        let uris: Vec<String> = f
            .redirect_uris
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if uris.is_empty() {
            return Ok(Outcome::err("Give at least one redirect URI."));
        }
        for u in &uris {
            if let Err(e) = RedirectUri::parse(u) {
                return Ok(Outcome::err(format!("Redirect URI {u}: {e}")));
            }
        }
        let scope = match f.scope.trim() {
            "" => None,
            s => match ScopeSet::parse(s) {
                Ok(x) => Some(x.to_string()),
                Err(e) => return Ok(Outcome::err(format!("Scope: {e}"))),
            },
        };
        let confidential = match f.client_type.as_str() {
            "confidential" => true,
            "public" => false,
            _ => return Ok(Outcome::err("Choose public or confidential.")),
        };
        let id = random_id();
        let secret = confidential.then(random_token);
        self.inner
            .store
            .insert_client(&ClientRecord {
                client_id: id.clone(),
                secret_hash: secret.as_deref().map(sha256_hex),
                auth_method: if confidential {
                    "client_secret_basic".into()
                } else {
                    "none".into()
                },
                redirect_uris: uris.clone(),
                grant_types: vec!["authorization_code".into(), "refresh_token".into()],
                client_name: Some(name.to_owned()),
                scope,
                source: ClientSource::Preregistered,
                application_type: None,
                metadata: serde_json::json!({}),
                created_at: self.inner.clock.now_unix(),
                disabled: false,
            })
            .await?;
        self.audit_admin(
            actor,
            "client.add",
            &id,
            &format!(
                "{name}; {}; redirect {}",
                if confidential {
                    "confidential"
                } else {
                    "public"
                },
                uris.join(" ")
            ),
        )
        .await;
        Ok(Outcome {
            message: Some(format!("Client {name} added with client_id {id}.")),
            secret: secret.map(|s| (id, s)),
            ..Default::default()
        })
    }
}
