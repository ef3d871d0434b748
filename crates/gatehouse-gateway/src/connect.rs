//! GW-09: per-user upstream OAuth grants, "connect once". An upstream configured with
//! `user_oauth` is called with the user's own token at the upstream's authorization server.
//! Without one, the MCP call answers `-32042` (URL elicitation required) with a link that
//! carries only a random id. The link proves nothing by itself: the browser must sign in at the
//! gateway's authorization server as the user who made the call (else: refused), approve on the
//! gateway's own page (who connects what, which scopes, where the browser goes), then authorize
//! at the upstream's authorization server (PKCE, `state` made only after approval, single use,
//! 10 minutes, `iss` checked). The tokens are stored sealed (AES-256-GCM under the
//! key-encryption key), per user and upstream, refreshed when they expire, and never leave the
//! gateway.
use crate::error::{Failure, RpcCode, rpc_error_body};
use crate::flows::{Flows, Link, Step};
use crate::pages::{page, refuse};
use crate::sessions::Owner;
use crate::spec::{UpstreamName, UserOAuthSpec};
use crate::vault::GrantVault;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use gatehouse_core::{Issuer, PkceVerifier, random_token, sha256_hex};
use gatehouse_fetch::Fetcher;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// The pre-registered public client of the embedded authorization server through which the
/// browser proves who it is.
pub const IDENTITY_CLIENT: &str = "gatehouse-connect";

/// What the embedded authorization server lends the gateway: where grants are kept, and the
/// issuer at which browsers show who they are.
#[derive(Clone)]
pub struct Backend {
    pub vault: std::sync::Arc<dyn GrantVault>,
    pub issuer: String,
}

/// Where the connect pages live and what the identity sign-in asks for.
pub struct ConnectSpec {
    /// The gateway's public URL (`<public>/connect/...`).
    pub public: String,
    pub identity_resource: String,
    pub identity_scope: String,
    pub upstreams: Vec<(UpstreamName, String, UserOAuthSpec)>,
    /// Redis shared by replicas: flows started on one continue on another.
    pub shared: Option<crate::SharedState>,
}

/// The upstream authorization server, discovered from the upstream's resource metadata.
#[derive(Clone)]
struct AsMeta {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    iss_parameter: bool,
}

/// One upstream with `user_oauth`.
struct UpstreamOAuth {
    name: String,
    resource: String,
    cfg: UserOAuthSpec,
    meta: tokio::sync::OnceCell<AsMeta>,
    /// One refresh at a time per upstream (refresh tokens rotate).
    refreshing: tokio::sync::Mutex<()>,
}

/// The stored grant (sealed).
#[derive(Serialize, Deserialize)]
struct Grant {
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<i64>,
}

pub struct Connect {
    backend: Backend,
    public: String,
    identity_resource: String,
    identity_scope: String,
    secure_cookies: bool,
    http: reqwest::Client,
    fetcher: Fetcher,
    upstreams: HashMap<String, Arc<UpstreamOAuth>>,
    /// Links and steps between the browser's visits (this process, or Redis).
    flows: Flows,
}

#[derive(Debug)]
pub enum NoToken {
    /// The user has not connected (or the grant ended): elicit.
    Connect,
    /// Something failed on the way (store, upstream AS); not the user's doing.
    Failed(String),
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Connect {
    pub fn new(
        backend: Backend,
        spec: ConnectSpec,
        fetcher: Fetcher,
    ) -> Result<Self, reqwest::Error> {
        let public = spec.public.trim_end_matches('/').to_owned();
        Ok(Self {
            secure_cookies: public.starts_with("https://"),
            public,
            backend,
            identity_resource: spec.identity_resource,
            identity_scope: spec.identity_scope,
            http: gatehouse_fetch::upstream::upstream_client(concat!(
                "gatehouse-gateway/",
                env!("CARGO_PKG_VERSION")
            ))?,
            fetcher,
            upstreams: spec
                .upstreams
                .into_iter()
                .map(|(name, resource, cfg)| {
                    (
                        name.as_str().to_owned(),
                        Arc::new(UpstreamOAuth {
                            name: name.as_str().to_owned(),
                            resource,
                            cfg,
                            meta: tokio::sync::OnceCell::new(),
                            refreshing: tokio::sync::Mutex::new(()),
                        }),
                    )
                })
                .collect(),
            flows: Flows::new(spec.shared),
        })
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/connect/return", axum::routing::get(identity_return))
            .route("/connect/approve", axum::routing::post(approve))
            .route("/connect/callback", axum::routing::get(upstream_callback))
            .route("/connect/{link}", axum::routing::get(start))
            .with_state(self.clone())
    }

    pub fn serves(&self, upstream: &str) -> bool {
        self.upstreams.contains_key(upstream)
    }

    async fn load(&self, owner: &Owner, upstream: &str) -> Result<Option<Grant>, Failure> {
        let Some(plain) = self
            .backend
            .vault
            .load(owner, upstream)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| Failure(e.to_string()))
    }

    async fn save(&self, owner: &Owner, upstream: &str, g: &Grant) -> Result<(), Failure> {
        let plain = serde_json::to_vec(g).map_err(|e| e.to_string())?;
        self.backend
            .vault
            .save(owner, upstream, plain)
            .await
            .map_err(|e| Failure(e.to_string()))
    }

    /// Forgets a user's grant (the upstream refused it).
    pub async fn forget(&self, owner: &Owner, upstream: &str) {
        if let Err(e) = self.backend.vault.forget(owner, upstream).await {
            tracing::warn!(error = %e, upstream, "could not forget an upstream grant");
        }
    }

    /// The user's access token for `upstream`, refreshed when it is about to expire.
    pub async fn token_for(&self, owner: &Owner, upstream: &str) -> Result<String, NoToken> {
        let u = self
            .upstreams
            .get(upstream)
            .ok_or_else(|| NoToken::Failed("not a user_oauth upstream".into()))?;
        let fresh = |g: &Grant| g.expires_at.is_none_or(|e| e > now() + 30);
        match self
            .load(owner, upstream)
            .await
            .map_err(|e| NoToken::Failed(e.0))?
        {
            None => return Err(NoToken::Connect),
            Some(g) if fresh(&g) => return Ok(g.access_token),
            Some(_) => {}
        }
        let _one = u.refreshing.lock().await;
        // Another request may have refreshed meanwhile.
        let g = match self
            .load(owner, upstream)
            .await
            .map_err(|e| NoToken::Failed(e.0))?
        {
            None => return Err(NoToken::Connect),
            Some(g) if fresh(&g) => return Ok(g.access_token),
            Some(g) => g,
        };
        let Some(refresh) = g.refresh_token else {
            self.forget(owner, upstream).await;
            return Err(NoToken::Connect);
        };
        let meta = self.meta(u).await.map_err(|e| NoToken::Failed(e.0))?;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("resource", u.resource.as_str()),
        ];
        match self.token_request(u, &meta, &mut form).await {
            Ok(t) => {
                // A server that does not rotate refresh tokens keeps the old one valid.
                let mut grant = t.into_grant();
                if grant.refresh_token.is_none() {
                    grant.refresh_token = Some(refresh.clone());
                }
                self.save(owner, upstream, &grant)
                    .await
                    .map_err(|e| NoToken::Failed(e.0))?;
                tracing::info!(upstream, "upstream token refreshed");
                Ok(grant.access_token)
            }
            Err(e) => {
                tracing::info!(upstream, error = %e, "upstream refresh refused; the user connects again");
                self.forget(owner, upstream).await;
                Err(NoToken::Connect)
            }
        }
    }

    /// A new link for `owner` to connect `upstream`: the `data` of the -32042 error.
    pub async fn elicitation(&self, owner: &Owner, upstream: &str) -> serde_json::Value {
        let id = random_token();
        self.flows
            .put_link(
                &id,
                Link {
                    owner: owner.clone(),
                    upstream: upstream.to_owned(),
                },
            )
            .await;
        serde_json::json!({
            "elicitations": [{
                "mode": "url",
                "elicitationId": id,
                "url": format!("{}/connect/{id}", self.public),
                "message": format!("Connect your account at {upstream} to use it through this gateway."),
            }]
        })
    }

    /// The upstream's authorization server: named in its config, else by its resource
    /// metadata (RFC 9728, `resource` byte-equal); its metadata found and its `issuer` checked
    /// byte for byte by the one discovery the workspace has (AS-02).
    async fn meta(&self, u: &UpstreamOAuth) -> Result<AsMeta, Failure> {
        u.meta
            .get_or_try_init(|| async {
                let issuer = match &u.cfg.issuer {
                    Some(i) => i.clone(),
                    None => {
                        let r = url::Url::parse(&u.resource).map_err(|e| e.to_string())?;
                        let prm = format!(
                            "{}/.well-known/oauth-protected-resource{}",
                            r.origin().ascii_serialization(),
                            r.path().trim_end_matches('/')
                        );
                        let (v, _): (serde_json::Value, _) = self
                            .fetcher
                            .get_json(&prm)
                            .await
                            .map_err(|e| format!("{}: {e}", u.name))?;
                        if v["resource"].as_str() != Some(u.resource.as_str()) {
                            return Err(
                                format!("{}: its metadata names another resource", u.name).into()
                            );
                        }
                        let named = v["authorization_servers"][0]
                            .as_str()
                            .ok_or_else(|| format!("{}: no authorization server", u.name))?;
                        Issuer::parse(named).map_err(|e| format!("{}: {e}", u.name))?
                    }
                };
                let m = gatehouse_tokens::discover(&self.fetcher, &issuer)
                    .await
                    .map_err(|e| format!("{}: {e}", u.name))?;
                if !m
                    .code_challenge_methods_supported
                    .iter()
                    .any(|x| x == "S256")
                {
                    return Err(format!(
                        "{}: the authorization server does not support PKCE S256",
                        u.name
                    )
                    .into());
                }
                let endpoint = |k: &str, e: Option<&String>| {
                    let e = e.ok_or_else(|| format!("{}: no {k}", u.name))?;
                    self.fetcher
                        .check(e)
                        .map(|_| e.clone())
                        .map_err(|err| format!("{}: {k}: {err}", u.name))
                };
                Ok::<_, Failure>(AsMeta {
                    authorization_endpoint: endpoint(
                        "authorization_endpoint",
                        m.authorization_endpoint.as_ref(),
                    )?,
                    token_endpoint: endpoint("token_endpoint", m.token_endpoint.as_ref())?,
                    iss_parameter: m.authorization_response_iss_parameter_supported == Some(true),
                    issuer: m.issuer,
                })
            })
            .await
            .cloned()
    }

    /// The upstream `name` and its authorization server, or the page that says why not.
    async fn upstream_and_meta(
        &self,
        name: &str,
    ) -> Result<(Arc<UpstreamOAuth>, AsMeta), Response> {
        let Some(u) = self.upstreams.get(name) else {
            return Err(refuse(StatusCode::NOT_FOUND, "Unknown server."));
        };
        match self.meta(u).await {
            Ok(m) => Ok((u.clone(), m)),
            Err(e) => {
                tracing::warn!(error = %e, "upstream authorization server discovery failed");
                Err(refuse(
                    StatusCode::BAD_GATEWAY,
                    "The server's authorization server could not be reached.",
                ))
            }
        }
    }

    async fn token_request<'a>(
        &self,
        u: &'a UpstreamOAuth,
        meta: &AsMeta,
        form: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<TokenResponse, Failure> {
        let id = u.cfg.client_id.as_str();
        let basic = u.cfg.client_secret.as_ref().map(|s| (id, s.expose()));
        if basic.is_none() {
            form.push(("client_id", id));
        }
        let f = self
            .fetcher
            .post_form(&meta.token_endpoint, form, basic)
            .await
            .map_err(|e| e.to_string())?;
        f.json(&meta.token_endpoint)
            .map_err(|e| Failure(e.to_string()))
    }

    fn flow_cookie(&self) -> String {
        if self.secure_cookies {
            "__Host-gh_connect".into()
        } else {
            "gh_connect".into()
        }
    }

    fn browser_of(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.flow_cookie();
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| sha256_hex(v))
    }

    /// Takes a step (single use) that belongs to this browser and has not expired; another
    /// browser's attempt leaves it in place.
    async fn take(&self, key: &str, headers: &HeaderMap) -> Option<Step> {
        let browser = self.browser_of(headers)?;
        self.flows.take_step(key, &browser).await
    }

    /// [`Self::take`] for an optional `state` parameter.
    async fn take_state(&self, state: Option<&str>, headers: &HeaderMap) -> Option<Step> {
        match state {
            Some(s) => self.take(s, headers).await,
            None => None,
        }
    }

    async fn put(&self, key: &str, browser: String, step: Step) {
        self.flows.put_step(key, browser, step).await;
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

impl TokenResponse {
    fn into_grant(self) -> Grant {
        Grant {
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            expires_at: self.expires_in.map(|e| now() + e),
        }
    }
}

/// The answer to a request that needs the user to connect first, with one URL-mode
/// elicitation (HTTP 200). To a client on MCP 2026-07-28 (`retry_with_input`): an
/// `input_required` result (multi round-trip requests, GW-R1), whose retry, once the user has
/// connected, goes through; to older clients: the `-32042` error.
pub async fn elicit_response(
    c: &Connect,
    owner: &Owner,
    upstream: &str,
    id: serde_json::Value,
    retry_with_input: bool,
) -> Response {
    let data = c.elicitation(owner, upstream).await;
    if retry_with_input {
        let mut params = data["elicitations"][0].clone();
        let key = format!("gatehouse/connect/{upstream}");
        if let Some(p) = params.as_object_mut() {
            // The elicitation request as the client would have received it from a server.
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "resultType": "input_required",
                    "inputRequests": { key: { "method": "elicitation/create", "params": p } },
                },
            });
            return (StatusCode::OK, axum::Json(body)).into_response();
        }
    }
    let mut body = rpc_error_body(
        &id,
        RpcCode::UrlElicitationRequired,
        &format!("{upstream} needs you to connect your account first"),
    );
    body["error"]["data"] = data;
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET /connect/{link}`: the browser shows who it is at the gateway's authorization server.
async fn start(State(c): State<Arc<Connect>>, Path(link): Path<String>) -> Response {
    if c.flows.link(&link, false).await.is_none() {
        return refuse(
            StatusCode::NOT_FOUND,
            "This link is unknown or has expired. Ask your MCP client to try again for a new one.",
        );
    }
    let flow = random_token();
    let state = random_token();
    let verifier = PkceVerifier::generate();
    let mut u = match url::Url::parse(&format!("{}/authorize", c.backend.issuer)) {
        Ok(u) => u,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", IDENTITY_CLIENT)
        .append_pair("redirect_uri", &format!("{}/connect/return", c.public))
        .append_pair("state", &state)
        .append_pair("code_challenge", verifier.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", &c.identity_resource);
    if !c.identity_scope.is_empty() {
        u.query_pairs_mut().append_pair("scope", &c.identity_scope);
    }
    c.put(
        &state,
        sha256_hex(&flow),
        Step::Identity {
            link,
            verifier: verifier.secret().to_owned(),
        },
    )
    .await;
    let cookie = format!(
        "{}={flow}; Path=/; HttpOnly; SameSite=Lax; Max-Age=600{}",
        c.flow_cookie(),
        if c.secure_cookies { "; Secure" } else { "" }
    );
    let mut resp = Redirect::to(u.as_str()).into_response();
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CodeReturn {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// `GET /connect/return`: back from the gateway's AS; the user must be the one the link was
/// made for. Then our own approval page.
async fn identity_return(
    State(c): State<Arc<Connect>>,
    headers: HeaderMap,
    Query(q): Query<CodeReturn>,
) -> Response {
    let Some(Step::Identity { link, verifier }) = c.take_state(q.state.as_deref(), &headers).await
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, used or expired, or was started in another browser.",
        );
    };
    if q.iss.as_deref() != Some(c.backend.issuer.as_str()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The answer came from an unexpected issuer.",
        );
    }
    let Some(code) = q.code.filter(|_| q.error.is_none()) else {
        return refuse(StatusCode::FORBIDDEN, "Sign-in was not completed.");
    };
    let token: Result<serde_json::Value, _> = async {
        c.http
            .post(format!("{}/token", c.backend.issuer))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("code_verifier", verifier.as_str()),
                ("client_id", IDENTITY_CLIENT),
                ("redirect_uri", &format!("{}/connect/return", c.public)),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
    .await;
    // Straight from our own token endpoint: its claims need no second check.
    let who = token
        .ok()
        .and_then(|t| t["access_token"].as_str().map(str::to_owned))
        .and_then(|at| {
            let payload = at.split('.').nth(1)?;
            let raw =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
            Some(Owner::new(v["iss"].as_str()?, v["sub"].as_str()?))
        });
    let Some(who) = who else {
        return refuse(StatusCode::BAD_GATEWAY, "Sign-in could not be confirmed.");
    };
    let Some(Link { owner, upstream }) = c.flows.link(&link, false).await else {
        return refuse(StatusCode::NOT_FOUND, "This link has expired.");
    };
    // GW-09: only the user who made the call may complete it.
    if who != owner {
        tracing::warn!(upstream, "connect link opened by another account; refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "This link was made for another account. Sign in as the user of the MCP client that asked for it.",
        );
    }
    let (u, meta) = match c.upstream_and_meta(&upstream).await {
        Ok(x) => x,
        Err(page) => return page,
    };
    let Some(browser) = c.browser_of(&headers) else {
        return refuse(StatusCode::BAD_REQUEST, "Cookies are needed.");
    };
    let approval = random_token();
    c.put(
        &approval,
        browser,
        Step::Approval {
            link,
            owner: owner.clone(),
        },
    )
    .await;
    crate::pages::approval(&crate::pages::Approval {
        subject: owner.subject(),
        upstream: &upstream,
        resource: &u.resource,
        issuer: &meta.issuer,
        authorization_endpoint: &meta.authorization_endpoint,
        public: &c.public,
        approval: &approval,
        scopes: &u.cfg.scopes,
    })
}

#[derive(Deserialize)]
struct ApproveForm {
    approval: String,
    decision: String,
}

/// `POST /connect/approve`: the user approved on our page; only now is the upstream `state`
/// made (GW-05), and the browser sent to the upstream's authorization server.
async fn approve(
    State(c): State<Arc<Connect>>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<ApproveForm>,
) -> Response {
    let Some(Step::Approval { link, owner }) = c.take(&f.approval, &headers).await else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This approval is unknown, used or expired, or came from another browser.",
        );
    };
    if f.decision != "approve" {
        return page(
            StatusCode::OK,
            "Not connected",
            "<p>Nothing was connected. You can close this page.</p>",
        );
    }
    let Some(Link { upstream, .. }) = c.flows.link(&link, false).await else {
        return refuse(StatusCode::NOT_FOUND, "This link has expired.");
    };
    let (u, meta) = match c.upstream_and_meta(&upstream).await {
        Ok(x) => x,
        Err(page) => return page,
    };
    let Some(browser) = c.browser_of(&headers) else {
        return refuse(StatusCode::BAD_REQUEST, "Cookies are needed.");
    };
    let state = random_token();
    let verifier = PkceVerifier::generate();
    let Ok(mut to) = url::Url::parse(&meta.authorization_endpoint) else {
        return refuse(StatusCode::BAD_GATEWAY, "Bad authorization endpoint.");
    };
    to.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &u.cfg.client_id)
        .append_pair("redirect_uri", &format!("{}/connect/callback", c.public))
        .append_pair("state", &state)
        .append_pair("code_challenge", verifier.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", &u.resource);
    if !u.cfg.scopes.is_empty() {
        to.query_pairs_mut()
            .append_pair("scope", &u.cfg.scopes.to_string());
    }
    c.put(
        &state,
        browser,
        Step::Upstream {
            link,
            owner,
            verifier: verifier.secret().to_owned(),
        },
    )
    .await;
    Redirect::to(to.as_str()).into_response()
}

/// `GET /connect/callback`: back from the upstream's authorization server.
async fn upstream_callback(
    State(c): State<Arc<Connect>>,
    headers: HeaderMap,
    Query(q): Query<CodeReturn>,
) -> Response {
    let Some(Step::Upstream {
        link,
        owner,
        verifier,
    }) = c.take_state(q.state.as_deref(), &headers).await
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This authorization is unknown, used or expired, or was started in another browser.",
        );
    };
    let Some(Link { upstream, .. }) = c.flows.link(&link, true).await else {
        return refuse(StatusCode::NOT_FOUND, "This link has expired.");
    };
    let (u, meta) = match c.upstream_and_meta(&upstream).await {
        Ok(x) => x,
        Err(page) => return page,
    };
    // RFC 9207: the answer must come from the authorization server we sent the browser to.
    match q.iss.as_deref() {
        Some(i) if i != meta.issuer => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "The answer came from an unexpected issuer.",
            );
        }
        None if meta.iss_parameter => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "The answer did not say who sent it.",
            );
        }
        _ => {}
    }
    let Some(code) = q.code.filter(|_| q.error.is_none()) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "The server's authorization server did not grant access.",
        );
    };
    let redirect = format!("{}/connect/callback", c.public);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("resource", u.resource.as_str()),
    ];
    let grant = match c.token_request(&u, &meta, &mut form).await {
        Ok(t) => t.into_grant(),
        Err(e) => {
            tracing::warn!(upstream, error = %e, "upstream token request failed");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "The server's authorization server refused the code.",
            );
        }
    };
    if let Err(e) = c.save(&owner, &upstream, &grant).await {
        tracing::error!(upstream, error = %e, "could not store an upstream grant");
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The grant could not be stored.",
        );
    }
    tracing::info!(upstream, "upstream account connected");
    page(
        StatusCode::OK,
        &format!("{upstream} connected"),
        "<p>Done. You can close this page and return to your MCP client.</p>",
    )
}
