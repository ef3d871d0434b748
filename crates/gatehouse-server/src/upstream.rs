//! Sign-in through an upstream OpenID Connect identity provider (enterprise SSO: Keycloak, Okta,
//! Entra ID, …). The authorization server is then a confidential OIDC client of the IdP.
//!
//! What rules out what: `state` is single-use and bound to the pending authorization, which is
//! bound to the browser that started it (a callback from another browser is refused, T1); PKCE
//! S256 protects the upstream code; `iss` in the response is checked exactly when the IdP
//! advertises RFC 9207 (mix-up, T14); the ID token's signature (algorithm from the IdP's key),
//! `iss`, `aud`, `azp`, `exp` and `nonce` are verified; every URL is fetched through the SSRF-safe
//! fetcher. Only allow-listed claims (groups, email, name) flow into our tokens.
use crate::authorize::Pending;
use crate::pages::error_page;
use crate::secrets::{random_token, sha256_hex};
use crate::{AuthServer, OAuthError};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use gatehouse_core::{Issuer, PkceVerifier, SecretString};
use gatehouse_store::{PendingRecord, UpstreamLoginRecord};
use http::StatusCode;
use serde::Deserialize;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

const LOGIN_TTL: i64 = 600;

/// An upstream OpenID Connect identity provider.
#[derive(Debug, Clone)]
pub struct UpstreamIdp {
    pub issuer: Issuer,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Space-separated; must include `openid`.
    pub scopes: String,
    /// The ID-token claim that identifies the user (default `sub`).
    pub subject_claim: String,
    /// Prepended to that value to form our subject, so federated users never collide with local
    /// accounts (default `sso:`).
    pub subject_prefix: String,
    /// The ID-token claim holding group names, copied into our tokens as `groups`.
    pub groups_claim: Option<String>,
    /// Shown on the sign-in button.
    pub display_name: String,
}

#[derive(Deserialize)]
pub(crate) struct StartForm {
    pending: String,
    csrf: String,
}

/// POST /login/upstream: leave for the identity provider.
pub(crate) async fn start(
    State(s): State<AuthServer>,
    jar: CookieJar,
    axum::Form(f): axum::Form<StartForm>,
) -> Response {
    let Some(idp) = s.inner.cfg.upstream.clone() else {
        return error_page(StatusCode::NOT_FOUND, "Single sign-on is not configured.");
    };
    // An authorization request's sign-in, or the console's.
    if let Err(r) = s.verified_pending_record(&jar, &f.pending, &f.csrf).await {
        return r;
    }
    let meta = match gatehouse_tokens::discover(&s.inner.fetcher, &idp.issuer).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "upstream identity provider unreachable");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached right now.",
            );
        }
    };
    let Some(authz) = meta
        .authorization_endpoint
        .as_deref()
        .and_then(|a| s.inner.fetcher.check(a).ok())
    else {
        return error_page(
            StatusCode::BAD_GATEWAY,
            "The identity provider's metadata has no usable authorization endpoint.",
        );
    };
    let state = random_token();
    let nonce = random_token();
    let verifier = PkceVerifier::generate();
    let rec = UpstreamLoginRecord {
        state_hash: sha256_hex(&state),
        pending_hash: sha256_hex(&f.pending),
        verifier: verifier.secret().to_owned(),
        nonce: nonce.clone(),
        expires_at: s.inner.clock.now_unix() + LOGIN_TTL,
    };
    if let Err(e) = s.inner.store.insert_upstream_login(&rec).await {
        return OAuthError::from(e).into_response();
    }
    let mut url = authz;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &idp.client_id)
        .append_pair("redirect_uri", &s.inner.cfg.endpoint("/login/callback"))
        .append_pair("scope", &idp.scopes)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", verifier.challenge().as_str())
        .append_pair("code_challenge_method", "S256");
    Redirect::to(url.as_str()).into_response()
}

/// GET /login/callback: back from the identity provider.
pub(crate) async fn callback(
    State(s): State<AuthServer>,
    jar: CookieJar,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match callback_inner(&s, jar, &q).await {
        Ok(r) => r,
        Err(message) => error_page(StatusCode::BAD_REQUEST, &message),
    }
}

async fn callback_inner(
    s: &AuthServer,
    jar: CookieJar,
    q: &HashMap<String, String>,
) -> Result<Response, String> {
    let idp = s
        .inner
        .cfg
        .upstream
        .clone()
        .ok_or("Single sign-on is not configured.")?;
    let now = s.inner.clock.now_unix();
    let state = q
        .get("state")
        .ok_or("The identity provider's answer has no state.")?;
    let login = s
        .inner
        .store
        .take_upstream_login(&sha256_hex(state), now)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("This sign-in has expired or was already completed.")?;
    let pending = s
        .inner
        .store
        .get_pending(&login.pending_hash, now)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("This sign-in request has expired.")?;
    // The browser coming back must be the one that started the authorization (T1).
    let binding = jar
        .get(&s.cookie_name("gh_bind"))
        .map(|c| sha256_hex(c.value()))
        .unwrap_or_default();
    if !bool::from(binding.as_bytes().ct_eq(pending.binding_hash.as_bytes())) {
        return Err("This sign-in was started in another browser.".into());
    }
    if let Some(e) = q.get("error") {
        tracing::info!(error = %e, "upstream sign-in failed or was cancelled");
        return Err("Sign-in at the identity provider was cancelled or failed.".into());
    }
    let meta = gatehouse_tokens::discover(&s.inner.fetcher, &idp.issuer)
        .await
        .map_err(|e| e.to_string())?;
    // RFC 9207: an advertised iss must be present and byte-equal; a present iss must match anyway.
    match (
        q.get("iss"),
        meta.authorization_response_iss_parameter_supported == Some(true),
    ) {
        (Some(iss), _) if iss != idp.issuer.as_str() => {
            return Err("The answer came from another identity provider.".into());
        }
        (None, true) => return Err("The identity provider's answer lacks its issuer.".into()),
        _ => {}
    }
    let code = q
        .get("code")
        .ok_or("The identity provider's answer has no code.")?;
    let token_endpoint = meta
        .token_endpoint
        .as_deref()
        .ok_or("The identity provider has no token endpoint.")?;
    let redirect_uri = s.inner.cfg.endpoint("/login/callback");
    let resp = s
        .inner
        .fetcher
        .post_form(
            token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &login.verifier),
            ],
            Some((&idp.client_id, idp.client_secret.expose())),
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "upstream token request failed");
            "The identity provider did not accept the sign-in.".to_owned()
        })?;
    let tokens: serde_json::Value = resp.json(token_endpoint).map_err(|e| e.to_string())?;
    let id_token = tokens
        .get("id_token")
        .and_then(|v| v.as_str())
        .ok_or("The identity provider returned no ID token.")?;
    let jwks_uri = meta
        .jwks_uri
        .as_deref()
        .ok_or("The identity provider publishes no keys.")?;
    let jwks = s
        .inner
        .fetcher
        .get(jwks_uri)
        .await
        .map_err(|e| e.to_string())?;
    let keys = gatehouse_tokens::KeySet::parse(&jwks.body).map_err(|e| e.to_string())?;
    let claims = keys
        .verify(id_token)
        .map_err(|e| format!("The ID token is not valid: {e}"))?;
    let str_claim = |k: &str| claims.get(k).and_then(|v| v.as_str());
    if str_claim("iss") != Some(idp.issuer.as_str()) {
        return Err("The ID token was issued by someone else.".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => *a == idp.client_id,
        Some(serde_json::Value::Array(l)) => {
            l.iter().any(|a| a.as_str() == Some(idp.client_id.as_str()))
                && (l.len() == 1 || str_claim("azp") == Some(idp.client_id.as_str()))
        }
        _ => false,
    };
    if !aud_ok {
        return Err("The ID token is meant for another client.".into());
    }
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64())
        .ok_or("The ID token has no expiry.")?;
    if exp + 30 < now
        || claims
            .get("iat")
            .and_then(|v| v.as_i64())
            .is_some_and(|iat| iat > now + 30)
    {
        return Err("The ID token is expired or not yet valid.".into());
    }
    if !str_claim("nonce").is_some_and(|n| bool::from(n.as_bytes().ct_eq(login.nonce.as_bytes()))) {
        return Err("The ID token does not belong to this sign-in.".into());
    }
    let id = str_claim(&idp.subject_claim)
        .filter(|v| !v.is_empty())
        .ok_or("The ID token does not identify the user.")?;
    let subject = format!("{}{id}", idp.subject_prefix);
    let mut extra = serde_json::Map::new();
    if let Some(g) = idp
        .groups_claim
        .as_deref()
        .and_then(|g| claims.get(g))
        .and_then(|v| v.as_array())
    {
        let groups: Vec<&str> = g.iter().filter_map(|x| x.as_str()).collect();
        extra.insert("groups".into(), groups.into());
    }
    for k in ["email", "name", "preferred_username"] {
        if let Some(v) = claims.get(k).and_then(|v| v.as_str()) {
            extra.insert(k.into(), v.into());
        }
    }
    let claims = (!extra.is_empty()).then(|| serde_json::Value::Object(extra.clone()).to_string());
    // Single use, whatever it was for.
    if !s
        .inner
        .store
        .take_pending(&login.pending_hash)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err("This sign-in request was already used.".into());
    }
    // A sign-in to the console or the account page: a session, then where it was going.
    if let Ok(c) = serde_json::from_str::<crate::console::ConsoleSignin>(&pending.request) {
        tracing::info!(subject = %subject, idp = %idp.issuer, "signed in to the console through the identity provider");
        return Ok(s
            .finish_console_signin(jar, subject, claims, c.console)
            .await);
    }
    // The pending authorization continues under a fresh id and CSRF token.
    let p: Pending = serde_json::from_str(&pending.request).map_err(|e| e.to_string())?;
    let client = s
        .find_client(&p.client_id)
        .await
        .map_err(|e| e.description)?
        .ok_or("The application is no longer registered.")?;
    let (pending_id, csrf) = (random_token(), random_token());
    s.inner
        .store
        .insert_pending(&PendingRecord {
            id_hash: sha256_hex(&pending_id),
            request: pending.request.clone(),
            binding_hash: pending.binding_hash.clone(),
            csrf_hash: sha256_hex(&csrf),
            expires_at: now + LOGIN_TTL,
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(subject = %subject, idp = %idp.issuer, "signed in through the identity provider");
    Ok(
        s.finish_login(jar, &p, &client, &pending_id, &csrf, subject, claims)
            .await,
    )
}
