//! The authorization code flow with PKCE on a loopback redirect (CL-08 … CL-16).
use crate::ClientError;
use crate::discovery::Discovered;
use crate::opener::Opener;
use crate::registration::Registration;
use crate::tokens::{self, TokenRequest, TokenSet};
use axum::extract::{Query, State};
use axum::response::Html;
use base64::Engine;
use gatehouse_core::{PkceVerifier, ScopeSet};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// The path the loopback listener answers; anything else gets 404.
pub const CALLBACK_PATH: &str = "/callback";

/// A loopback listener for one authorization response (RFC 8252 §7.3).
pub struct Listener {
    tcp: tokio::net::TcpListener,
    port: u16,
}

impl Listener {
    /// Binds 127.0.0.1:`port` (0 picks a free one). The IP literal, not `localhost` (CL-14).
    pub async fn bind(port: u16) -> Result<Self, ClientError> {
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| {
                ClientError::Authorization(format!("cannot listen on 127.0.0.1:{port}: {e}"))
            })?;
        let port = tcp
            .local_addr()
            .map_err(|e| ClientError::Authorization(e.to_string()))?
            .port();
        Ok(Self { tcp, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{CALLBACK_PATH}", self.port)
    }
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The authorization request URL (CL-08, CL-09, CL-10, CL-15).
pub fn authorization_url(
    d: &Discovered,
    reg: &Registration,
    redirect_uri: &str,
    verifier: &PkceVerifier,
    state: &str,
    scope: Option<&ScopeSet>,
) -> String {
    let mut u = d.authorization_endpoint.clone();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &reg.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_challenge", verifier.challenge().as_str())
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", state)
            .append_pair("resource", &d.resource);
        // CL-10 step 3: no scope at all rather than `scope=`.
        if let Some(s) = scope.filter(|s| !s.is_empty()) {
            q.append_pair("scope", &s.to_string());
        }
    }
    u.to_string()
}

const DONE_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Gatehouse</title><p>Login finished. You can close this window and return to your terminal.</p>";

async fn callback(
    State(tx): State<mpsc::Sender<HashMap<String, String>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Html<&'static str> {
    let _ = tx.send(q).await;
    Html(DONE_PAGE)
}

/// Checks an authorization response against what was sent (CL-15, CL-16). Nothing from a
/// response that fails these checks is shown or used.
pub fn check_response(
    d: &Discovered,
    sent_state: &str,
    q: &HashMap<String, String>,
) -> Result<String, ClientError> {
    if q.get("state").map(String::as_str) != Some(sent_state) {
        return Err(ClientError::Authorization(
            "the authorization response does not carry our state; ignored (possible CSRF)".into(),
        ));
    }
    match q.get("iss") {
        // RFC 9207 / CL-16: simple string comparison, no normalisation of any kind.
        Some(iss) if iss != d.issuer.as_str() => {
            return Err(ClientError::Authorization(format!(
                "the authorization response comes from issuer {iss:?}, not {:?}; refusing it (mix-up defence)",
                d.issuer.as_str()
            )));
        }
        None if d.iss_required() => {
            return Err(ClientError::Authorization(
                "the authorization server promises an iss parameter but the response has none; refusing it".into(),
            ));
        }
        _ => {}
    }
    if let Some(e) = q.get("error") {
        return Err(ClientError::OAuth {
            error: e.chars().take(64).collect(),
            description: q
                .get("error_description")
                .map(|d| d.chars().take(300).collect()),
        });
    }
    q.get("code")
        .filter(|c| !c.is_empty())
        .cloned()
        .ok_or_else(|| ClientError::Authorization("no code in the authorization response".into()))
}

/// Runs one authorization: opens the URL, waits for the redirect, redeems the code.
/// How a login reaches the user, how long it waits, and the DPoP key tokens are bound to.
pub struct LoginOptions<'a> {
    pub opener: &'a Opener,
    pub timeout: Duration,
    pub dpop: Option<&'a crate::dpop::DpopKey>,
}

pub async fn authorize(
    http: &reqwest::Client,
    d: &Discovered,
    reg: &Registration,
    listener: Listener,
    scope: Option<&ScopeSet>,
    opts: &LoginOptions<'_>,
) -> Result<TokenSet, ClientError> {
    let (opener, timeout, dpop) = (opts.opener, opts.timeout, opts.dpop);
    let redirect_uri = listener.redirect_uri();
    let verifier = PkceVerifier::generate();
    let state = random_b64(32);
    let url = authorization_url(d, reg, &redirect_uri, &verifier, &state, scope);
    let (tx, mut rx) = mpsc::channel(4);
    let app = axum::Router::new()
        .route(CALLBACK_PATH, axum::routing::get(callback))
        .with_state(tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener.tcp, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    let outcome = async {
        opener.open(&url, &redirect_uri).await?;
        let q = tokio::time::timeout(timeout, rx.recv())
            .await
            .map_err(|_| {
                ClientError::Authorization(format!(
                    "no authorization response within {} s",
                    timeout.as_secs()
                ))
            })?
            .ok_or_else(|| ClientError::Authorization("the redirect listener stopped".into()))?;
        check_response(d, &state, &q)
    }
    .await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let code = outcome?;
    tokens::request(
        http,
        TokenRequest {
            endpoint: &d.token_endpoint,
            issuer: d.issuer.as_str(),
            registration: reg,
            params: vec![
                ("grant_type", "authorization_code".into()),
                ("code", code),
                ("code_verifier", verifier.secret().to_owned()),
                ("redirect_uri", redirect_uri),
            ],
            resource: &d.resource,
            requested_scope: scope.map(ToString::to_string),
            dpop,
        },
    )
    .await
}

/// RFC 8628 device authorization grant: for hosts with no browser. The user opens the
/// verification URI anywhere (it is printed, and handed to the opener, which never uses a shell)
/// and enters the code; the client polls the token endpoint as the server paces it.
pub async fn device(
    http: &reqwest::Client,
    d: &Discovered,
    reg: &Registration,
    scope: Option<&ScopeSet>,
    opts: &LoginOptions<'_>,
) -> Result<TokenSet, ClientError> {
    let (opener, timeout, dpop) = (opts.opener, opts.timeout, opts.dpop);
    let endpoint = d
        .metadata
        .extra
        .get("device_authorization_endpoint")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            ClientError::Authorization(format!(
                "{} does not offer the device authorization grant",
                d.issuer
            ))
        })?;
    let endpoint = crate::safety::check_endpoint("device_authorization_endpoint", endpoint)?;
    let mut params = vec![];
    if let Some(s) = scope.filter(|s| !s.is_empty()) {
        params.push(("scope", s.to_string()));
    }
    let v = tokens::form_post(
        http,
        &endpoint,
        d.issuer.as_str(),
        reg,
        params,
        &d.resource,
        None,
    )
    .await?;
    let field = |k: &str| {
        v[k].as_str().map(str::to_owned).ok_or_else(|| {
            ClientError::Authorization(format!("device authorization answer without {k}"))
        })
    };
    let device_code = field("device_code")?;
    let user_code = field("user_code")?;
    let verification_uri = field("verification_uri")?;
    crate::safety::check_endpoint("verification_uri", &verification_uri)?;
    let complete = v["verification_uri_complete"].as_str().map(str::to_owned);
    let mut interval = v["interval"].as_u64().unwrap_or(5).max(1);
    let expires = v["expires_in"].as_u64().unwrap_or(600);
    crate::progress(format!(
        "to log in, visit {verification_uri} and enter the code {user_code}"
    ));
    if let Some(c) = &complete {
        // The same checks as an authorization URL; a refused one is only printed above.
        if let Err(e) = opener.open(c, "").await {
            crate::progress(e);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(expires).min(timeout);
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() > deadline {
            return Err(ClientError::Authorization(
                "the device code expired before the login finished".into(),
            ));
        }
        let res = tokens::request(
            http,
            TokenRequest {
                endpoint: &d.token_endpoint,
                issuer: d.issuer.as_str(),
                registration: reg,
                params: vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:device_code".into(),
                    ),
                    ("device_code", device_code.clone()),
                ],
                resource: &d.resource,
                requested_scope: scope.map(ToString::to_string),
                dpop,
            },
        )
        .await;
        match res {
            Ok(t) => return Ok(t),
            Err(ClientError::OAuth { error, .. }) if error == "authorization_pending" => {}
            // RFC 8628 §3.5: slow down by 5 seconds, for this and every later request.
            Err(ClientError::OAuth { error, .. }) if error == "slow_down" => interval += 5,
            Err(e) => return Err(e),
        }
    }
}
