//! The token endpoint (AS-27 … AS-31, AS-35), revocation (RFC 7009) and introspection
//! (RFC 7662).
use crate::clients::presented;
use crate::secrets::{random_id, random_token, sha256_hex};
use crate::{AuthServer, OAuthError};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use gatehouse_core::{OAuthErrorCode, PkceChallenge, PkceVerifier, Resource, ScopeSet};
use gatehouse_store::{ClientRecord, GrantRecord, Redeemed, RefreshRecord, Rotated};
use http::HeaderMap;
use std::collections::HashMap;

pub(crate) type Form = HashMap<String, String>;

pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Parses a form body, refusing repeated parameters (RFC 6749 §3.2: parameters MUST NOT be
/// included more than once). That includes `resource`: RFC 8707 allows several, but a grant here
/// is bound to exactly one resource, so a second one is an error rather than silently dropped.
pub(crate) fn parse_form(body: &[u8]) -> Result<Form, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k} repeated"
            )));
        }
    }
    Ok(out)
}

pub(crate) fn no_store(v: serde_json::Value) -> Response {
    let mut r = axum::Json(v).into_response();
    let h = r.headers_mut();
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::PRAGMA,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

pub(crate) fn require<'a>(f: &'a Form, name: &str) -> Result<&'a str, OAuthError> {
    f.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
}

impl AuthServer {
    /// RFC 8707: the resource a token is for. Unknown resources are `invalid_target`.
    pub(crate) fn resolve_resource(
        &self,
        requested: Option<&str>,
    ) -> Result<&crate::ResourceEntry, OAuthError> {
        let cfg = &self.inner.cfg;
        let target = |d: String| OAuthError::new(OAuthErrorCode::InvalidTarget, d);
        let want = match requested {
            Some(r) => Resource::parse(r).map_err(|e| target(e.to_string()))?,
            None => cfg
                .default_resource
                .clone()
                .ok_or_else(|| target("resource is required".into()))?,
        };
        cfg.resources
            .iter()
            .find(|e| e.resource.as_str() == want.as_str())
            .ok_or_else(|| target(format!("unknown resource {}", want.as_str())))
    }

    /// The scopes a request may get: requested ∩ what the resource knows ∩ what the client may
    /// ask for; an unknown or disallowed scope is `invalid_scope`.
    pub(crate) fn check_scopes(
        &self,
        requested: &ScopeSet,
        client: &ClientRecord,
        res: &crate::ResourceEntry,
    ) -> Result<(), OAuthError> {
        let mut allowed = res.scopes.clone();
        if let Ok(s) = gatehouse_core::Scope::parse("offline_access") {
            allowed.insert(s);
        }
        // Only an operator's limit binds: a self-registered (DCR) or self-published (CIMD) scope
        // list is the client's own claim, and step-up must be able to go beyond it; the user's
        // consent is the boundary there.
        if let (Some(cs), gatehouse_store::ClientSource::Preregistered) =
            (&client.scope, client.source)
        {
            let client_set = ScopeSet::parse(cs).unwrap_or_default();
            allowed =
                ScopeSet::from_iter(allowed.iter().filter(|s| client_set.contains(s)).cloned());
        }
        let extra = allowed.missing_from(requested);
        if extra.is_empty() {
            Ok(())
        } else {
            Err(OAuthError::new(
                OAuthErrorCode::InvalidScope,
                format!("scope not allowed: {extra}"),
            ))
        }
    }

    pub(crate) fn access_token(
        &self,
        subject: &str,
        client_id: &str,
        scope: &ScopeSet,
        resource: &str,
        grant_id: &str,
        (extra, dpop_jkt): (Option<&str>, Option<&str>),
    ) -> Result<(String, i64), OAuthError> {
        let now = self.inner.clock.now_unix();
        let ttl = self.inner.cfg.access_token_ttl;
        // offline_access governs refresh tokens; it is no permission at the resource.
        let at_scope: ScopeSet = scope
            .iter()
            .filter(|s| s.as_str() != "offline_access")
            .cloned()
            .collect();
        let claims = serde_json::json!({
            "iss": self.inner.cfg.issuer.as_str(),
            "sub": subject,
            "aud": resource,
            "client_id": client_id,
            "scope": at_scope.to_string(),
            "iat": now,
            "exp": now + ttl,
            "jti": random_id(),
            "gid": grant_id,
        });
        let mut claims = claims;
        if let Some(jkt) = dpop_jkt {
            // RFC 9449 §6: bound to the key that proved possession at this request.
            claims["cnf"] = serde_json::json!({ "jkt": jkt });
        }
        self.add_tenant(&mut claims);
        copy_identity_claims(
            extra.and_then(|e| serde_json::from_str(e).ok()).as_ref(),
            &mut claims,
        );
        Ok((self.inner.keys.sign(&claims)?, ttl))
    }

    /// Embedded tenants name themselves in their tokens, so per-tenant limits and policies
    /// apply to them (issue 14, row 10).
    fn add_tenant(&self, claims: &mut serde_json::Value) {
        if let Some(t) = &self.inner.cfg.tenant {
            claims["tenant"] = t.as_str().into();
        }
    }

    pub(crate) fn token_response(
        &self,
        access: (String, i64),
        scope: &ScopeSet,
        refresh: Option<String>,
        dpop: bool,
    ) -> Response {
        let mut v = serde_json::json!({
            "access_token": access.0,
            "token_type": if dpop { "DPoP" } else { "Bearer" },
            "expires_in": access.1,
            "scope": scope.to_string(),
        });
        if let Some(r) = refresh {
            v["refresh_token"] = r.into();
        }
        no_store(v)
    }
}

impl AuthServer {
    /// RFC 9449 §5: the proof in the one `DPoP` header, if any, verified for this endpoint and
    /// used once (in the store, so across replicas). A request without one gets Bearer tokens.
    async fn dpop_proof(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<gatehouse_tokens::dpop::Proof>, OAuthError> {
        let bad = |d: &str| OAuthError::new(OAuthErrorCode::InvalidDpopProof, d.to_owned());
        let mut values = headers.get_all("dpop").iter();
        let Some(v) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(bad("more than one DPoP header"));
        }
        let proof = v.to_str().map_err(|_| bad("DPoP header is not ASCII"))?;
        let now = self.inner.clock.now_unix();
        let p = gatehouse_tokens::dpop::verify(
            proof,
            &gatehouse_tokens::dpop::Expect {
                method: "POST",
                url: &self.inner.cfg.endpoint("/token"),
                now,
                access_token: None,
            },
        )
        .map_err(|e| bad(&e.0))?;
        // RFC 9449 §8: checked before the jti is spent; the client retries with the nonce.
        if let Some(n) = &self.inner.nonces
            && !p.nonce.as_deref().is_some_and(|x| n.valid(x, now))
        {
            let mut e = OAuthError::new(
                OAuthErrorCode::UseDpopNonce,
                "the DPoP proof must carry the nonce in the DPoP-Nonce header",
            );
            e.dpop_nonce = Some(n.issue(now));
            return Err(e);
        }
        if !self
            .inner
            .store
            .use_assertion_jti(&p.replay_key(), p.remember_until())
            .await?
        {
            return Err(bad("DPoP proof already used"));
        }
        Ok(Some(p))
    }
}

pub(crate) async fn token(
    State(s): State<AuthServer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let form = parse_form(&body)?;
        if form.get("grant_type").map(String::as_str) == Some(crate::assertion::JWT_BEARER) {
            return jwt_bearer(&s, &headers, &form).await;
        }
        let creds = presented(&headers, &form)?;
        let client = s.authenticate_client(&creds).await?;
        let proof = s.dpop_proof(&headers).await?;
        let jkt = proof.as_ref().map(|p| p.jkt.as_str());
        match require(&form, "grant_type")? {
            "authorization_code" => code_grant(&s, &client, &form, jkt).await,
            "refresh_token" => refresh_grant(&s, &client, &form, jkt).await,
            "client_credentials" => client_credentials(&s, &client, &form, jkt).await,
            TOKEN_EXCHANGE => token_exchange(&s, &client, &form, jkt).await,
            crate::device::DEVICE_CODE_GRANT => {
                crate::device::device_grant(&s, &client, &form, jkt).await
            }
            other => Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                format!("grant_type {other} is not supported"),
            )),
        }
    }
    .await;
    // Per grant type and outcome (labels from fixed lists: a caller cannot mint series).
    let grant = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| match v.as_ref() {
            "authorization_code" => "authorization_code",
            "refresh_token" => "refresh_token",
            "client_credentials" => "client_credentials",
            TOKEN_EXCHANGE => "token_exchange",
            crate::device::DEVICE_CODE_GRANT => "device_code",
            crate::assertion::JWT_BEARER => "jwt_bearer",
            _ => "other",
        })
        .unwrap_or("none");
    let outcome = match &r {
        Ok(_) => "issued",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("gatehouse_as_tokens_total", "grant_type" => grant, "outcome" => outcome)
        .increment(1);
    let mut r = r.unwrap_or_else(IntoResponse::into_response);
    // The next nonce with every answer (RFC 9449 §8.2), so clients rarely need a retry.
    if let Some(n) = &s.inner.nonces
        && let Ok(v) = http::HeaderValue::from_str(&n.issue(s.inner.clock.now_unix()))
    {
        r.headers_mut().insert("dpop-nonce", v);
    }
    r
}

/// The JWT-bearer grant (RFC 7523 §2.1): an ID-JAG with client authentication, or a
/// workload's platform token with none (see `assertion.rs`).
async fn jwt_bearer(
    s: &AuthServer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Response, OAuthError> {
    let (issuer, assertion) = crate::assertion::claimed_issuer(s, form)?;
    let creds = presented(headers, form)?;
    // A workload has no stored secret: a bare client_id only names the client its rule must
    // map to; credentials, when sent, must authenticate.
    let authenticates = creds.secret.is_some() || creds.assertion.is_some() || creds.basic;
    let workload = matches!(issuer.kind, crate::AssertionKind::Workload { .. });
    let client = if workload && !authenticates {
        None
    } else {
        Some(s.authenticate_client(&creds).await?)
    };
    let proof = s.dpop_proof(headers).await?;
    let jkt = proof.as_ref().map(|p| p.jkt.as_str());
    match client {
        Some(c) if !workload => {
            crate::assertion::id_jag(s, &c, issuer, &assertion, form, jkt).await
        }
        c => {
            let named = c
                .as_ref()
                .map(|c| c.client_id.as_str())
                .or(creds.client_id.as_deref());
            crate::assertion::workload(s, named, issuer, &assertion, form, jkt).await
        }
    }
}

/// Claims an identity provider contributes to access tokens (for policies at resource servers
/// and gateways). An allow-list: nothing from upstream can set `iss`, `aud`, `sub` or `scope`.
pub(crate) const IDENTITY_CLAIMS: [&str; 4] = ["groups", "email", "name", "preferred_username"];

fn copy_identity_claims(from: Option<&serde_json::Value>, to: &mut serde_json::Value) {
    let Some(from) = from else { return };
    for k in IDENTITY_CLAIMS {
        if let Some(v) = from.get(k) {
            to[k] = v.clone();
        }
    }
}

/// A new refresh token of a grant's family, as stored (only the hash of `secret`).
pub(crate) fn refresh_record(
    secret: &str,
    grant_id: &str,
    client_id: &str,
    scope: &str,
    resource: &str,
    expires_at: i64,
    dpop_jkt: Option<String>,
) -> RefreshRecord {
    RefreshRecord {
        token_hash: sha256_hex(secret),
        grant_id: grant_id.to_owned(),
        client_id: client_id.to_owned(),
        scope: scope.to_owned(),
        resource: resource.to_owned(),
        expires_at,
        rotated_at: None,
        reuse_count: 0,
        parent_hash: None,
        dpop_jkt,
    }
}

/// RFC 8707: a token request may name the resource again, but only the one the grant is bound to.
pub(crate) fn same_resource(requested: Option<&str>, bound: &str) -> Result<(), OAuthError> {
    if requested.is_some_and(|r| r != bound) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidTarget,
            "resource differs from the one this grant is bound to",
        ));
    }
    Ok(())
}

/// A client that proves possession of a secret or a private key (not a public client).
pub(crate) fn is_confidential(client: &ClientRecord) -> bool {
    client.auth_method != "none"
}

pub(crate) fn client_allows(
    s: &AuthServer,
    client: &ClientRecord,
    grant: &str,
) -> Result<(), OAuthError> {
    // A self-registered client holds only what the registration policy in force allows (T17),
    // whatever it was registered with before.
    let policy_ok = client.source == gatehouse_store::ClientSource::Preregistered
        || s.inner
            .cfg
            .registration
            .grant_types
            .iter()
            .any(|g| g == grant);
    if policy_ok && client.grant_types.iter().any(|g| g == grant) {
        Ok(())
    } else {
        Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            format!("client may not use the {grant} grant"),
        ))
    }
}

async fn code_grant(
    s: &AuthServer,
    client: &ClientRecord,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    client_allows(s, client, "authorization_code")?;
    let code = require(form, "code")?;
    let verifier = PkceVerifier::parse(require(form, "code_verifier")?)
        .map_err(|e| OAuthError::invalid_request(e.to_string()))?;
    let redirect_uri = form.get("redirect_uri").cloned();
    let resource = form.get("resource").cloned();
    let now = s.inner.clock.now_unix();
    let wants_refresh = client.grant_types.iter().any(|g| g == "refresh_token");
    let refresh_secret = wants_refresh.then(random_token);
    let refresh_ttl = s.inner.cfg.refresh_token_ttl;
    let client_id = client.client_id.clone();
    let issued_refresh = refresh_secret.clone();
    // RFC 9449 §5: a public client's refresh token is bound to its DPoP key (a confidential
    // client's is already bound to its credentials).
    let refresh_jkt = dpop_jkt
        .filter(|_| !is_confidential(client))
        .map(str::to_owned);
    let outcome = s
        .inner
        .store
        .redeem_code(&sha256_hex(code), now, move |c| {
            // Every binding is checked before the code is spent; a failure changes nothing.
            if c.client_id != client_id {
                return Err(OAuthError::invalid_grant(
                    "code was issued to another client",
                ));
            }
            let challenge = PkceChallenge::parse(&c.code_challenge, Some("S256"))
                .map_err(|_| OAuthError::invalid_grant("stored challenge invalid"))?;
            if !challenge.verify(&verifier) {
                return Err(OAuthError::invalid_grant("PKCE verification failed"));
            }
            if redirect_uri.as_deref().is_some_and(|r| r != c.redirect_uri) {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri does not match the authorization request",
                ));
            }
            same_resource(resource.as_deref(), &c.resource)?;
            Ok(issued_refresh.as_deref().map(|secret| {
                refresh_record(
                    secret,
                    &c.grant_id,
                    &c.client_id,
                    &c.scope,
                    &c.resource,
                    now + refresh_ttl,
                    refresh_jkt,
                )
            }))
        })
        .await??;
    let c = match outcome {
        Redeemed::Fresh(c) => c,
        Redeemed::Replayed { grant_id } => {
            s.publish_revocation(&grant_id, now);
            tracing::warn!(client_id = %client.client_id, grant_id, "authorization code replayed; grant revoked");
            return Err(OAuthError::invalid_grant("authorization code already used"));
        }
        Redeemed::Expired => return Err(OAuthError::invalid_grant("authorization code expired")),
        Redeemed::Revoked => {
            return Err(OAuthError::invalid_grant(
                "the authorization this code belongs to was revoked",
            ));
        }
        Redeemed::Unknown => return Err(OAuthError::invalid_grant("unknown authorization code")),
    };
    let scope = ScopeSet::parse(&c.scope).unwrap_or_default();
    let access = s.access_token(
        &c.subject,
        &c.client_id,
        &scope,
        &c.resource,
        &c.grant_id,
        (c.claims.as_deref(), dpop_jkt),
    )?;
    Ok(s.token_response(access, &scope, refresh_secret, dpop_jkt.is_some()))
}

async fn refresh_grant(
    s: &AuthServer,
    client: &ClientRecord,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    client_allows(s, client, "refresh_token")?;
    let presented_token = require(form, "refresh_token")?;
    let requested_scope = form
        .get("scope")
        .map(|sc| ScopeSet::parse(sc))
        .transpose()
        .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidScope, e.to_string()))?;
    let resource = form.get("resource").cloned();
    let now = s.inner.clock.now_unix();
    let new_secret = random_token();
    let cfg = &s.inner.cfg;
    let client_id = client.client_id.clone();
    let (stored_secret, checked_scope, refresh_ttl) = (
        new_secret.clone(),
        requested_scope.clone(),
        cfg.refresh_token_ttl,
    );
    let presented_jkt = dpop_jkt.map(str::to_owned);
    let outcome = s
        .inner
        .store
        .rotate_refresh(
            &sha256_hex(presented_token),
            now,
            cfg.refresh_grace_secs,
            move |old| {
                if old.client_id != client_id {
                    return Err(OAuthError::invalid_grant(
                        "refresh token was issued to another client",
                    ));
                }
                if old.dpop_jkt.is_some() && old.dpop_jkt != presented_jkt {
                    return Err(OAuthError::new(
                        OAuthErrorCode::InvalidDpopProof,
                        "this refresh token is bound to a DPoP key: send a proof signed by it",
                    ));
                }
                same_resource(resource.as_deref(), &old.resource)?;
                let granted = ScopeSet::parse(&old.scope).unwrap_or_default();
                if let Some(req) = &checked_scope
                    && !granted.is_superset(req)
                {
                    return Err(OAuthError::new(
                        OAuthErrorCode::InvalidScope,
                        "refresh may not widen the scope; authorize again",
                    ));
                }
                // The family keeps its granted scope; a narrower request narrows only the access token.
                Ok(refresh_record(
                    &stored_secret,
                    &old.grant_id,
                    &old.client_id,
                    &old.scope,
                    &old.resource,
                    now + refresh_ttl,
                    old.dpop_jkt.clone(),
                ))
            },
        )
        .await??;
    let (old, grant) = match outcome {
        Rotated::Ok { old, grant, grace } => {
            if grace {
                tracing::info!(client_id = %client.client_id, "refresh token used twice within the grace window");
            }
            (old, grant)
        }
        Rotated::Reused { grant_id } => {
            s.publish_revocation(&grant_id, now);
            tracing::warn!(client_id = %client.client_id, grant_id, "refresh token reuse detected; grant revoked");
            return Err(OAuthError::invalid_grant(
                "refresh token already used; the grant has been revoked",
            ));
        }
        Rotated::Raced => {
            tracing::info!(client_id = %client.client_id, "refresh token used again while its successor is new; refused, nothing revoked");
            return Err(OAuthError::invalid_grant(
                "refresh token already used; use the newest refresh token",
            ));
        }
        Rotated::Revoked => return Err(OAuthError::invalid_grant("grant revoked")),
        Rotated::Expired => return Err(OAuthError::invalid_grant("refresh token expired")),
        Rotated::Unknown => return Err(OAuthError::invalid_grant("unknown refresh token")),
    };
    let scope = requested_scope.unwrap_or_else(|| ScopeSet::parse(&old.scope).unwrap_or_default());
    let access = s.access_token(
        &grant.subject,
        &old.client_id,
        &scope,
        &old.resource,
        &old.grant_id,
        (grant.claims.as_deref(), dpop_jkt),
    )?;
    Ok(s.token_response(access, &scope, Some(new_secret), dpop_jkt.is_some()))
}

async fn client_credentials(
    s: &AuthServer,
    client: &ClientRecord,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    client_allows(s, client, "client_credentials")?;
    if !is_confidential(client) {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "client_credentials needs a confidential client",
        ));
    }
    let res = s.resolve_resource(form.get("resource").map(String::as_str))?;
    let scope = match form.get("scope") {
        Some(sc) => ScopeSet::parse(sc)
            .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidScope, e.to_string()))?,
        None => client
            .scope
            .as_deref()
            .map(ScopeSet::parse)
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_default(),
    };
    s.check_scopes(&scope, client, res)?;
    // A self-registered machine client (only where the operator's policy opens the grant) gets
    // at most the policy's machine scopes, never every scope the resource knows (T17).
    if client.source != gatehouse_store::ClientSource::Preregistered {
        let extra = s.inner.cfg.registration.machine_scopes.missing_from(&scope);
        if !extra.is_empty() {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidScope,
                format!("scope not allowed for a self-registered client: {extra}"),
            ));
        }
    }
    let now = s.inner.clock.now_unix();
    let grant = GrantRecord {
        grant_id: random_id(),
        subject: client.client_id.clone(),
        client_id: client.client_id.clone(),
        scope: scope.to_string(),
        resource: res.resource.as_str().to_owned(),
        created_at: now,
        revoked_at: None,
        claims: None,
    };
    s.inner.store.insert_grant(&grant).await?;
    let access = s.access_token(
        &grant.subject,
        &grant.client_id,
        &scope,
        &grant.resource,
        &grant.grant_id,
        (None, dpop_jkt),
    )?;
    Ok(s.token_response(access, &scope, None, dpop_jkt.is_some()))
}

/// RFC 8693 token exchange, for gateways (AS-34): a confidential client presents a user's access
/// token issued by this server and gets one for another resource, acting for that user. Policy:
/// the client may exchange only to the resources listed in its `token_exchange_targets` (set by
/// the operator); scopes narrow, never widen; the new token carries `act` (the exchanging client)
/// and lives no longer than the subject token; revoking the user's grant ends both.
async fn token_exchange(
    s: &AuthServer,
    client: &ClientRecord,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    client_allows(s, client, TOKEN_EXCHANGE)?;
    if !is_confidential(client) {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "token exchange needs a confidential client",
        ));
    }
    if require(form, "subject_token_type")? != ACCESS_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(
            "only access tokens can be exchanged",
        ));
    }
    if let Some(t) = form.get("requested_token_type")
        && t != ACCESS_TOKEN_TYPE
    {
        return Err(OAuthError::invalid_request(
            "only access tokens can be requested",
        ));
    }
    if form.contains_key("actor_token") {
        return Err(OAuthError::invalid_request(
            "actor tokens are not supported; the authenticated client is the actor",
        ));
    }
    let subject = s
        .inner
        .keys
        .verify(require(form, "subject_token")?)
        .ok_or_else(|| {
            OAuthError::invalid_grant("subject_token is not a valid access token of this server")
        })?;
    let gid = subject
        .get("gid")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let grant = s.inner.store.get_grant(&gid).await?;
    if grant.as_ref().is_none_or(|g| g.revoked_at.is_some()) {
        return Err(OAuthError::invalid_grant(
            "the subject token's grant is revoked",
        ));
    }
    // Every target named must be one resource this client may exchange for: an unlisted
    // `audience` beside a listed `resource` is refused, not ignored (issue 14, row 17).
    let res = s.resolve_resource(
        form.get("resource")
            .or_else(|| form.get("audience"))
            .map(String::as_str),
    )?;
    for other in [form.get("resource"), form.get("audience")]
        .into_iter()
        .flatten()
    {
        if s.resolve_resource(Some(other))?.resource.as_str() != res.resource.as_str() {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidTarget,
                "resource and audience name different targets; a token has one",
            ));
        }
    }
    let allowed: Vec<&str> = client
        .metadata
        .get("token_exchange_targets")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if !allowed.contains(&res.resource.as_str()) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidTarget,
            "this client may not exchange tokens for that resource",
        ));
    }
    let held = ScopeSet::parse(subject.get("scope").and_then(|v| v.as_str()).unwrap_or(""))
        .unwrap_or_default();
    let scope = match form.get("scope") {
        Some(sc) => ScopeSet::parse(sc)
            .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidScope, e.to_string()))?,
        None => held.clone(),
    };
    if !held.is_superset(&scope) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidScope,
            "exchange may not widen the subject token's scope",
        ));
    }
    let scope: ScopeSet = scope
        .iter()
        .filter(|x| res.scopes.contains(x))
        .cloned()
        .collect();
    let now = s.inner.clock.now_unix();
    let subject_exp = subject.get("exp").and_then(|v| v.as_i64()).unwrap_or(now);
    let ttl = (subject_exp - now).clamp(0, s.inner.cfg.access_token_ttl);
    let sub = subject
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let mut claims = serde_json::json!({
        "iss": s.inner.cfg.issuer.as_str(),
        "sub": sub,
        "aud": res.resource.as_str(),
        "client_id": subject.get("client_id").cloned().unwrap_or_default(),
        "scope": scope.to_string(),
        "iat": now,
        "exp": now + ttl,
        "jti": random_id(),
        "gid": gid,
        "act": { "sub": client.client_id },
    });
    s.add_tenant(&mut claims);
    copy_identity_claims(
        Some(&serde_json::Value::Object(subject.clone())),
        &mut claims,
    );
    // A chain of exchanges keeps the earlier actors (RFC 8693 §4.1).
    if let Some(prior) = subject.get("act") {
        claims["act"]["act"] = prior.clone();
    }
    if let Some(jkt) = dpop_jkt {
        claims["cnf"] = serde_json::json!({ "jkt": jkt });
    }
    let token = s.inner.keys.sign(&claims)?;
    tracing::info!(client_id = %client.client_id, subject = sub, target = %res.resource, "token exchanged");
    Ok(no_store(serde_json::json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": if dpop_jkt.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": ttl,
        "scope": scope.to_string(),
    })))
}

/// RFC 7009. Always 200 for a well-formed request from an authenticated client, whether or not
/// the token was known (no oracle); only the client a token was issued to may revoke it.
pub(crate) async fn revoke(
    State(s): State<AuthServer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let form = parse_form(&body)?;
        let client = s.authenticate_client(&presented(&headers, &form)?).await?;
        let token = require(&form, "token")?;
        let now = s.inner.clock.now_unix();
        let grant_id = if let Some(claims) = s.inner.keys.verify(token) {
            (claims.get("client_id").and_then(|v| v.as_str()) == Some(client.client_id.as_str()))
                .then(|| {
                    claims
                        .get("gid")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                })
                .flatten()
        } else {
            s.inner
                .store
                .get_refresh(&sha256_hex(token))
                .await?
                .filter(|r| r.client_id == client.client_id)
                .map(|r| r.grant_id)
        };
        if let Some(g) = grant_id {
            s.inner.store.revoke_grant(&g, now).await?;
            s.publish_revocation(&g, now);
            tracing::info!(client_id = %client.client_id, grant_id = %g, "grant revoked by client");
        }
        Ok::<_, OAuthError>(no_store(serde_json::json!({})))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// RFC 7662 (AS-33). The caller must be an authenticated confidential client, and a token is
/// described only to a resource server the operator allowed to introspect for the token's
/// resource (`introspection_resources`), or to the client the token was issued to. Everyone else,
/// like anything unknown, expired or revoked, gets exactly `{"active": false}`: a stranger with a
/// registered client learns nothing about a stolen token, and a refresh token cannot be tested
/// without rotating it.
pub(crate) async fn introspect(
    State(s): State<AuthServer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let form = parse_form(&body)?;
        let client = s.authenticate_client(&presented(&headers, &form)?).await?;
        if !is_confidential(&client) {
            return Err(OAuthError::invalid_client(
                "introspection requires a confidential client",
            ));
        }
        let token = require(&form, "token")?;
        let inactive = || no_store(serde_json::json!({"active": false}));
        let may_see = |resource: &str, issued_to: &str| {
            issued_to == client.client_id
                || (client.source == gatehouse_store::ClientSource::Preregistered
                    && client
                        .metadata
                        .get("introspection_resources")
                        .and_then(|v| v.as_array())
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(resource))))
        };
        if let Some(mut claims) = s.inner.keys.verify(token) {
            let (aud, cid) = (
                claims
                    .get("aud")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
                claims
                    .get("client_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
            );
            if !may_see(aud, cid) {
                return Ok(inactive());
            }
            let gid = claims
                .get("gid")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let live = s
                .inner
                .store
                .get_grant(&gid)
                .await?
                .is_some_and(|g| g.revoked_at.is_none());
            if !live {
                return Ok(inactive());
            }
            claims.insert("active".into(), true.into());
            claims.insert("token_type".into(), "Bearer".into());
            return Ok(no_store(serde_json::Value::Object(claims)));
        }
        let Some(r) = s.inner.store.get_refresh(&sha256_hex(token)).await? else {
            return Ok(inactive());
        };
        // A refresh token is described only to the client it was issued to: resource servers
        // never see refresh tokens.
        if r.client_id != client.client_id {
            return Ok(inactive());
        }
        let grant = s.inner.store.get_grant(&r.grant_id).await?;
        let now = s.inner.clock.now_unix();
        match grant {
            Some(g) if g.revoked_at.is_none() && r.rotated_at.is_none() && r.expires_at > now => {
                Ok(no_store(serde_json::json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "scope": r.scope,
                    "client_id": r.client_id,
                    "sub": g.subject,
                    "aud": r.resource,
                    "iss": s.inner.cfg.issuer.as_str(),
                    "exp": r.expires_at,
                })))
            }
            _ => Ok(inactive()),
        }
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}
