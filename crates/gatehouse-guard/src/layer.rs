use crate::apikey::{self, API_KEY_PREFIX};
use crate::sessions::{Evicted, InUse, Reservation, Sessions, Use};
use crate::{GuardError, GuardInner};
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use gatehouse_core::{McpPeek, ProtocolVersion, ScopeSet};
use gatehouse_tokens::{Principal, PrincipalSource, TokenError};
use http::{Request, Response, header};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Tower layer applying the guard.
#[derive(Clone)]
pub struct GuardLayer {
    inner: Arc<GuardInner>,
}

impl GuardLayer {
    pub(crate) fn new(inner: Arc<GuardInner>) -> Self {
        Self { inner }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, service: S) -> GuardService<S> {
        GuardService {
            guard: self.inner.clone(),
            service,
        }
    }
}

/// The guarded service.
#[derive(Clone)]
pub struct GuardService<S> {
    guard: Arc<GuardInner>,
    service: S,
}

/// Who made the request, for the access log (never a secret).
struct Who {
    name: String,
    client: Option<String>,
    /// Session owner key: (issuer, subject).
    owner: String,
    tool: Option<String>,
}

/// How long an `initialize` waits for the server behind to end a session evicted for it.
const END_SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the request does to the caller's sessions.
enum Admission {
    /// Uses an existing session, in use until the response ends.
    Existing(InUse),
    /// Opens one (`initialize`): the place held for it, and the idle sessions evicted to make
    /// room, which the server behind is told to end.
    Opening(Reservation, Vec<Evicted>),
    None,
}

fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// How the token came: `Authorization: Bearer` or `Authorization: DPoP` (RFC 9449 §7.1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

/// RS-10/RS-14/RS-15: the token from the one `Authorization` header, if any, and its scheme.
fn bearer_token(req: &Request<Body>) -> Result<Option<(String, Scheme)>, GuardError> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GuardError::InvalidRequest(
            "more than one Authorization header".into(),
        ));
    }
    let v = v
        .to_str()
        .map_err(|_| GuardError::InvalidRequest("Authorization header is not ASCII".into()))?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        // Another scheme is no credential of ours: challenge as if none was sent.
        return Ok(None);
    };
    let token = rest.trim_start_matches(' ');
    if !is_token68(token) {
        return Err(GuardError::InvalidRequest("malformed credentials".into()));
    }
    Ok(Some((token.to_owned(), scheme)))
}

/// The one `DPoP` header's proof.
fn dpop_header(req: &Request<Body>) -> Result<String, GuardError> {
    let mut values = req.headers().get_all("dpop").iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(GuardError::InvalidDpopProof(
            "send exactly one DPoP header with a DPoP token".into(),
        ));
    };
    v.to_str()
        .map(str::to_owned)
        .map_err(|_| GuardError::InvalidDpopProof("DPoP header is not ASCII".into()))
}

fn form_has_access_token(req: &Request<Body>, body: &[u8]) -> bool {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    is_form && url::form_urlencoded::parse(body).any(|(k, _)| k == "access_token")
}

fn header_str<'a>(req: &'a Request<Body>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

impl GuardInner {
    /// RFC 9449 §7: the proof must be fresh, by the key the token is bound to, for this
    /// method and this resource's URL, name this token (`ath`), and never have been seen
    /// before (in this process, or by any replica sharing Redis).
    async fn authenticate_dpop(
        &self,
        method: &str,
        proof: Result<String, GuardError>,
        token: &str,
    ) -> Result<Principal, GuardError> {
        if token.starts_with(API_KEY_PREFIX) {
            return Err(GuardError::DpopInvalidToken(
                "API keys are not DPoP-bound; send them as Bearer".into(),
            ));
        }
        let proof = proof?;
        let now = self.clock.now_unix();
        let p = gatehouse_tokens::dpop::verify(
            &proof,
            &gatehouse_tokens::dpop::Expect {
                method,
                url: self.cfg.resource.as_str(),
                now,
                access_token: Some(token),
            },
        )
        .map_err(|e| GuardError::InvalidDpopProof(e.0))?;
        if let Some(n) = &self.cfg.dpop_nonces
            && !p.nonce.as_deref().is_some_and(|x| n.valid(x, now))
        {
            return Err(GuardError::UseDpopNonce(n.issue(now)));
        }
        // The token first: only a proof that comes with a valid token bound to its key is
        // recorded, so a stranger's self-signed proofs cannot fill the replay cache.
        let principal =
            self.validator
                .validate_bound(token, &p.jkt)
                .await
                .map_err(|e| match e {
                    TokenError::Unavailable(why) => {
                        tracing::warn!(error = %why, "token validation unavailable");
                        GuardError::Unavailable
                    }
                    other => GuardError::DpopInvalidToken(other.to_string()),
                })?;
        let fresh = match &self.cfg.shared_sessions {
            Some(shared) => shared
                .first_use(&p.replay_key(), p.remember_until() - now)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e.0, "DPoP replay cache unreachable");
                    GuardError::SessionsUnavailable
                })?,
            None => self
                .dpop_replay
                .first_use(&p.replay_key(), p.remember_until(), now),
        };
        if !fresh {
            return Err(GuardError::InvalidDpopProof(
                "DPoP proof already used".into(),
            ));
        }
        Ok(principal)
    }

    async fn authenticate(&self, token: &str) -> Result<Principal, GuardError> {
        if token.starts_with(API_KEY_PREFIX) {
            let key = apikey::find(&self.cfg.api_keys, token)
                .ok_or_else(|| GuardError::InvalidToken("unknown API key".into()))?;
            if key.expires_at.is_some_and(|e| self.clock.now_unix() >= e) {
                return Err(GuardError::InvalidToken("API key expired".into()));
            }
            return Ok(Principal {
                issuer: "urn:gatehouse:api-key".into(),
                subject: key.subject(),
                client_id: None,
                scopes: key.scopes.clone(),
                tenant: None,
                expires_at: key.expires_at,
                source: PrincipalSource::ApiKey {
                    name: key.name.clone(),
                },
                claims: Default::default(),
            });
        }
        self.validator.validate(token).await.map_err(|e| match e {
            TokenError::Unavailable(why) => {
                tracing::warn!(error = %why, "token validation unavailable");
                GuardError::Unavailable
            }
            other => GuardError::InvalidToken(other.to_string()),
        })
    }

    /// Runs every check; on success returns the request to forward (body restored, principal
    /// attached) and who it is.
    async fn check(
        &self,
        req: Request<Body>,
    ) -> Result<(Request<Body>, Who, Admission), (GuardError, Option<Who>)> {
        if !self.cfg.ip_allow.is_empty() {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            if !ip.is_some_and(|ip| self.cfg.ip_allow.iter().any(|n| n.contains(&ip))) {
                return Err((GuardError::AddressNotAllowed, None));
            }
        }
        let token = bearer_token(&req).map_err(|e| (e, None))?;
        let (parts, body) = req.into_parts();
        let body: Bytes = match http_body_util::Limited::new(body, self.cfg.max_body_bytes)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => return Err((GuardError::BodyTooLarge, None)),
        };
        let req = Request::from_parts(parts, Body::empty());
        if form_has_access_token(&req, &body) {
            return Err((
                if token.is_some() {
                    GuardError::InvalidRequest(
                        "token sent both in the header and in the body".into(),
                    )
                } else {
                    // Only the header method is supported (bearer_methods_supported).
                    GuardError::NoCredentials
                },
                None,
            ));
        }
        let Some((token, scheme)) = token else {
            return Err((GuardError::NoCredentials, None));
        };
        // A span for the trace exporter (DEBUG: not in the default log); never the token.
        let span = tracing::debug_span!(
            "token.validate",
            otel.kind = "internal",
            auth.scheme = match scheme {
                Scheme::Bearer => "Bearer",
                Scheme::Dpop => "DPoP",
            },
            outcome = tracing::field::Empty,
        );
        let principal = match scheme {
            Scheme::Bearer => {
                tracing::Instrument::instrument(self.authenticate(&token), span.clone()).await
            }
            Scheme::Dpop => {
                let (method, proof) = (req.method().as_str().to_owned(), dpop_header(&req));
                tracing::Instrument::instrument(
                    self.authenticate_dpop(&method, proof, &token),
                    span.clone(),
                )
                .await
            }
        };
        span.record(
            "outcome",
            if principal.is_ok() {
                "valid"
            } else {
                "refused"
            },
        );
        let principal = principal.map_err(|e| (e, None))?;
        let mut who = Who {
            name: match &principal.source {
                PrincipalSource::ApiKey { name } => format!("key:{name}"),
                _ => format!("sub:{}", principal.subject),
            },
            client: principal.client_id.clone(),
            owner: Sessions::owner_key(&principal.issuer, &principal.subject),
            tool: None,
        };
        let mut admission = Admission::None;
        if let Some(sid) = header_str(&req, "mcp-session-id") {
            match self.sessions.use_session(sid, &who.owner).await {
                Ok(Use::Owner(in_use)) => admission = Admission::Existing(in_use),
                Ok(Use::Unknown) => return Err((GuardError::UnknownSession, Some(who))),
                Err(down) => {
                    tracing::error!(error = %down.0, "session store unreachable");
                    return Err((GuardError::SessionsUnavailable, Some(who)));
                }
            }
        }
        let mut needed = self.cfg.required_scopes.clone();
        let mut peeked = None;
        if req.method() == http::Method::POST {
            let version = ProtocolVersion::from_header(header_str(&req, "mcp-protocol-version"))
                .map_err(|e| {
                    (
                        GuardError::BadMessage {
                            code: -32600,
                            message: e.to_string(),
                        },
                        None,
                    )
                })?;
            let peek = McpPeek::parse(&body, version).map_err(|e| {
                (
                    GuardError::BadMessage {
                        code: -32700,
                        message: e.to_string(),
                    },
                    None,
                )
            })?;
            peek.check_headers(header_str(&req, "mcp-method"), header_str(&req, "mcp-name"))
                .map_err(|e| {
                    (
                        GuardError::BadMessage {
                            code: -32020,
                            message: e.to_string(),
                        },
                        None,
                    )
                })?;
            for t in peek.tool_names() {
                needed = needed.union(&self.cfg.scopes_for_tool(t));
                who.tool = Some(t.to_owned());
            }
            peeked = Some(peek);
        }
        let missing: ScopeSet = principal.scopes.missing_from(&needed);
        if !missing.is_empty() {
            let description = format!("requires scope {missing}");
            return Err((
                GuardError::InsufficientScope {
                    needed,
                    description,
                },
                Some(who),
            ));
        }
        // Issue 20: a new session is counted before the server behind creates it.
        let opens = matches!(admission, Admission::None)
            && peeked.as_ref().is_some_and(|p| {
                p.messages
                    .iter()
                    .any(|m| m.method.as_deref() == Some("initialize"))
            });
        if opens {
            match self.sessions.reserve(&who.owner).await {
                Ok(Ok((place, evicted))) => admission = Admission::Opening(place, evicted),
                Ok(Err(full)) => {
                    tracing::warn!(who = %who.name, ?full, "session refused: cap reached");
                    return Err((GuardError::TooManySessions(full), Some(who)));
                }
                Err(down) => {
                    tracing::error!(error = %down.0, "session store unreachable");
                    return Err((GuardError::SessionsUnavailable, Some(who)));
                }
            }
        }
        let (mut parts, _) = req.into_parts();
        parts.extensions.insert(principal);
        // What the body says, for the service behind (the gateway audits it): parsed once here.
        if let Some(p) = peeked {
            parts.extensions.insert(p);
        }
        Ok((Request::from_parts(parts, Body::from(body)), who, admission))
    }
}

/// The request that tells the server behind to end an evicted session. For the caller's own
/// session it carries the caller's credentials (a gateway may need them upstream); another
/// owner's is ended as that owner, without a token, which ends what needs none.
fn end_session(
    like: &http::request::Parts,
    evicted: &Evicted,
    caller: &str,
) -> Option<Request<Body>> {
    let mut req = Request::builder()
        .method(http::Method::DELETE)
        .uri(like.uri.clone())
        .header("mcp-session-id", &evicted.session);
    let mut copied = vec![header::HOST, header::ORIGIN];
    if evicted.owner == caller {
        copied.push(header::AUTHORIZATION);
    }
    for name in copied {
        if let Some(v) = like.headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let mut req = req.body(Body::empty()).ok()?;
    let principal = match like.extensions.get::<Principal>() {
        Some(p) if evicted.owner == caller => p.clone(),
        _ => {
            let (issuer, subject) = Sessions::split_owner(&evicted.owner);
            Principal {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                client_id: None,
                scopes: ScopeSet::new(),
                tenant: None,
                expires_at: None,
                source: PrincipalSource::Jwt,
                claims: Default::default(),
            }
        }
    };
    req.extensions_mut().insert(principal);
    if let Some(c) = like.extensions.get::<ConnectInfo<SocketAddr>>() {
        req.extensions_mut().insert(*c);
    }
    Some(req)
}

impl<S, ResBody> tower::Service<Request<Body>> for GuardService<S>
where
    S: tower::Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let guard = self.guard.clone();
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.service.clone();
        let mut service = std::mem::replace(&mut self.service, clone);
        Box::pin(async move {
            let started = Instant::now();
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let (resp, who) = match guard.check(req).await {
                Ok((req, who, admission)) => {
                    let session_in = header_str(&req, "mcp-session-id").map(str::to_owned);
                    let is_delete = req.method() == http::Method::DELETE;
                    let (parts, body) = req.into_parts();
                    let ends: Vec<_> = match &admission {
                        Admission::Opening(_, evicted) => evicted
                            .iter()
                            .filter_map(|e| end_session(&parts, e, &who.owner))
                            .collect(),
                        _ => Vec::new(),
                    };
                    // Evicted sessions end in the server behind first (their memory goes with
                    // them), so the new one finds the room there too; bounded in time.
                    for end in ends {
                        let mut svc = service.clone();
                        let Ok(r) = tower::ServiceExt::ready(&mut svc).await;
                        if tokio::time::timeout(END_SESSION_WAIT, r.call(end))
                            .await
                            .is_err()
                        {
                            tracing::warn!(
                                "ending an evicted session took too long; it ends by idle expiry"
                            );
                        }
                    }
                    let resp = service.call(Request::from_parts(parts, body)).await?;
                    let issued = resp
                        .headers()
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let resp = match admission {
                        // Bind a newly issued session to its opener; without one the place
                        // is given back when the reservation drops.
                        Admission::Opening(place, _) => {
                            if let Some(sid) = issued
                                && let Err(down) = place.bind(&sid).await
                            {
                                tracing::error!(error = %down.0, "session store unreachable; the new session is not counted");
                            }
                            resp.map(Body::new)
                        }
                        // The session stays in use until the body ends (streams included): the
                        // body owns the mark, and dropping it marks the session idle.
                        Admission::Existing(in_use) => resp.map(|body| {
                            Body::new(body.map_frame(move |frame| {
                                let _held = &in_use;
                                frame
                            }))
                        }),
                        Admission::None => resp.map(Body::new),
                    };
                    if is_delete
                        && resp.status().is_success()
                        && let Some(sid) = session_in
                    {
                        guard.sessions.remove(&sid, &who.owner).await;
                    }
                    guard.metrics.record("allowed", started.elapsed());
                    (resp, Some(who))
                }
                Err((e, who)) => {
                    guard.metrics.record(e.outcome(), started.elapsed());
                    (
                        e.into_response(&guard.prm_url, &guard.cfg.required_scopes),
                        who,
                    )
                }
            };
            // One access-log line per request; names the key or subject, never a secret.
            tracing::info!(
                target: "gatehouse::access",
                %method,
                path,
                status = resp.status().as_u16(),
                who = who.as_ref().map_or("-", |w| w.name.as_str()),
                client = who.as_ref().and_then(|w| w.client.as_deref()).unwrap_or("-"),
                tool = who.as_ref().and_then(|w| w.tool.as_deref()).unwrap_or("-"),
                ms = started.elapsed().as_millis() as u64,
                "request"
            );
            Ok(resp)
        })
    }
}
