//! The JWT-bearer grant (RFC 7523 §2.1) for two kinds of assertion (JB-1 … JB-3):
//!
//! - **ID-JAG** (enterprise-managed authorization, AS-36): an enterprise IdP the operator trusts
//!   vouches for a user to one client for one resource. The client authenticates; the assertion
//!   (`typ: oauth-id-jag+jwt`) must name this server (`aud`), one of its resources (`resource`)
//!   and that client (`client_id`); the user becomes `<prefix><claim>`; scopes are what the
//!   request, the assertion and the operator's limit all allow.
//! - **Workload identity** (SEP-1933): a platform (Kubernetes, a cloud, CI) vouches for a
//!   workload. No stored secret: the operator's rules for that issuer map the assertion's
//!   claims (`sub`, `repository`, `namespace` …) to a client identity and its scopes; no rule,
//!   no token.
//!
//! Common to both: the issuer is one the operator listed (the assertion's unverified `iss` only
//! picks which keys to try), the signature is checked with that issuer's keys (asymmetric only,
//! no `crit`), `exp`/`iat` in a short window, `jti` used once (in the store, so across
//! replicas). Every failure is `invalid_grant` and leaves nothing behind; assertions are never
//! logged. No refresh token: the client presents a new assertion.
use crate::secrets::{random_id, sha256_hex};
use crate::token::{Form, client_allows, require};
use crate::{AuthServer, OAuthError};
use axum::response::Response;
use gatehouse_core::{OAuthErrorCode, ScopeSet};
use gatehouse_store::{ClientRecord, GrantRecord};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub(crate) const ID_JAG_PROFILE: &str = "urn:ietf:params:oauth:grant-profile:id-jag";
const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// Clock skew allowed on `iat`/`exp`/`nbf`.
const SKEW: i64 = 30;
/// Assertions that live longer than this are refused (they are meant to be short-lived).
const MAX_LIFETIME: i64 = 3600;
/// Keys are refetched at most this often when an unknown `kid` comes.
const KEY_REFRESH_SECS: i64 = 30;
/// Keys are kept this long at most.
const KEY_TTL_SECS: i64 = 300;

/// An issuer of assertions the operator trusts, and what its assertions may give.
#[derive(Debug, Clone)]
pub struct AssertionIssuer {
    /// A short name for logs and the default subject prefix (`<name>:`).
    pub name: String,
    /// Exactly the assertions' `iss`.
    pub issuer: String,
    /// Where its keys are; default: `jwks_uri` from its discovery metadata.
    pub jwks_uri: Option<String>,
    pub kind: AssertionKind,
}

#[derive(Debug, Clone)]
pub enum AssertionKind {
    /// ID-JAGs for users.
    IdJag {
        /// The claim that names the user (`sub`, `email` …).
        subject_claim: String,
        /// Put before the claim's value to make our subject.
        subject_prefix: String,
        /// The most an assertion of this IdP may give (`None`: what the resource knows).
        scopes: Option<ScopeSet>,
    },
    /// Workload identity tokens for machines.
    Workload {
        rules: Vec<WorkloadRule>,
        subject_prefix: String,
    },
}

/// Claims that must all match, and what a matching workload becomes.
#[derive(Debug, Clone)]
pub struct WorkloadRule {
    /// Claim name → the value it must have (a trailing `*` matches any rest).
    pub claims: Vec<(String, String)>,
    /// The client identity its tokens name (`client_id`).
    pub client_id: String,
    /// The most it may get.
    pub scopes: ScopeSet,
}

/// Fetched key sets per issuer.
#[derive(Default)]
pub(crate) struct IssuerKeys {
    sets: Mutex<HashMap<String, (Arc<gatehouse_tokens::KeySet>, i64)>>,
    /// Single-flight: 100 requests that find the keys stale make one fetch, not 100.
    fetching: tokio::sync::Mutex<()>,
}

fn bad(d: impl Into<String>) -> OAuthError {
    OAuthError::invalid_grant(d)
}

/// A JOSE header or a claims set.
type Object = Map<String, Value>;

/// The header and claims of a compact JWS, unverified: only to pick the issuer's keys.
fn peek(assertion: &str) -> Result<(Object, Object), OAuthError> {
    use base64::Engine as _;
    let part = |i: usize| -> Result<Map<String, Value>, OAuthError> {
        let raw = assertion
            .split('.')
            .nth(i)
            .ok_or_else(|| bad("the assertion is not a compact JWS"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| bad("the assertion is not a compact JWS"))?;
        serde_json::from_slice(&bytes).map_err(|_| bad("the assertion is not a JWT"))
    };
    if assertion.len() > 16 * 1024 || assertion.split('.').count() != 3 {
        return Err(bad("the assertion is not a compact JWS"));
    }
    Ok((part(0)?, part(1)?))
}

/// `value` as a rule wants it: equal, or a prefix when the rule ends in `*`.
fn claim_matches(want: &str, got: &str) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => want == got,
    }
}

impl AuthServer {
    fn assertion_issuer(&self, iss: &str) -> Option<&AssertionIssuer> {
        self.inner.cfg.jwt_bearer.iter().find(|i| i.issuer == iss)
    }

    /// The issuer's keys, cached; refetched when stale, or (at most every 30 s) when a `kid`
    /// is not among them (the issuer rotated).
    async fn issuer_keys(
        &self,
        i: &AssertionIssuer,
        kid: Option<&str>,
    ) -> Result<Arc<gatehouse_tokens::KeySet>, OAuthError> {
        let usable = || {
            let now = self.inner.clock.now_unix();
            let (set, at) = self
                .inner
                .issuer_keys
                .sets
                .lock()
                .ok()
                .and_then(|m| m.get(&i.issuer).cloned())?;
            let fresh = now - at < KEY_TTL_SECS;
            let knows_kid = kid.is_none_or(|k| set.has_kid(k));
            (fresh && (knows_kid || now - at < KEY_REFRESH_SECS)).then_some(set)
        };
        if let Some(set) = usable() {
            return Ok(set);
        }
        let _one = self.inner.issuer_keys.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(set) = usable() {
            return Ok(set);
        }
        let now = self.inner.clock.now_unix();
        let unavailable = |what: &str| {
            tracing::warn!(issuer = %i.issuer, what, "assertion issuer keys unavailable");
            OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "the assertion issuer's keys cannot be fetched right now",
            )
        };
        let uri = match &i.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let issuer =
                    gatehouse_core::Issuer::parse(&i.issuer).map_err(|_| unavailable("issuer"))?;
                gatehouse_tokens::discover(&self.inner.fetcher, &issuer)
                    .await
                    .map_err(|_| unavailable("metadata"))?
                    .jwks_uri
                    .ok_or_else(|| unavailable("jwks_uri"))?
            }
        };
        let body = self
            .inner
            .fetcher
            .get_capped(&uri, 64 * 1024)
            .await
            .map_err(|_| unavailable("jwks"))?
            .body;
        let set = Arc::new(
            gatehouse_tokens::KeySet::parse(&body).map_err(|_| unavailable("jwks unreadable"))?,
        );
        if let Ok(mut m) = self.inner.issuer_keys.sets.lock() {
            m.insert(i.issuer.clone(), (set.clone(), now));
        }
        Ok(set)
    }

    /// Signature, `exp`/`iat`/`nbf`, `aud` among `audiences`, `jti` once. Returns the claims.
    async fn verified_assertion(
        &self,
        i: &AssertionIssuer,
        assertion: &str,
        header: &Map<String, Value>,
        audiences: &[String],
    ) -> Result<Map<String, Value>, OAuthError> {
        if header.contains_key("crit") {
            return Err(bad("the assertion has critical header extensions (crit)"));
        }
        let keys = self
            .issuer_keys(i, header.get("kid").and_then(Value::as_str))
            .await?;
        let claims = keys
            .verify(assertion)
            .map_err(|e| bad(format!("the assertion's signature is not valid: {e}")))?;
        let s = |k: &str| claims.get(k).and_then(Value::as_str);
        if s("iss") != Some(i.issuer.as_str()) {
            return Err(bad("the assertion's issuer is not trusted"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(a),
            Some(Value::Array(l)) => l
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(bad(
                "the assertion is not for this authorization server (aud)",
            ));
        }
        let now = self.inner.clock.now_unix();
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        let exp = num("exp").ok_or_else(|| bad("the assertion has no exp"))?;
        if exp + SKEW < now {
            return Err(bad("the assertion has expired"));
        }
        if exp > now + MAX_LIFETIME {
            return Err(bad("the assertion lives longer than an hour"));
        }
        let iat = num("iat").ok_or_else(|| bad("the assertion has no iat"))?;
        if iat > now + SKEW || num("nbf").is_some_and(|n| n > now + SKEW) {
            return Err(bad("the assertion is not valid yet"));
        }
        let jti = s("jti")
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("the assertion has no jti"))?;
        let key = sha256_hex(&format!("jwt-bearer:{}\u{0}{jti}", i.issuer));
        if !self
            .inner
            .store
            .use_assertion_jti(&key, exp + SKEW + 60)
            .await?
        {
            return Err(bad("the assertion was used before (jti)"));
        }
        Ok(claims)
    }

    /// Stores the grant and answers with its access token (no refresh token).
    #[allow(clippy::too_many_arguments, reason = "one grant's pieces")]
    async fn assertion_tokens(
        &self,
        subject: String,
        client_id: &str,
        scope: &ScopeSet,
        resource: &str,
        claims: Option<String>,
        dpop_jkt: Option<&str>,
        what: &str,
    ) -> Result<Response, OAuthError> {
        let now = self.inner.clock.now_unix();
        let grant = GrantRecord {
            grant_id: random_id(),
            subject,
            client_id: client_id.to_owned(),
            scope: scope.to_string(),
            resource: resource.to_owned(),
            created_at: now,
            revoked_at: None,
            claims,
        };
        self.inner.store.insert_grant(&grant).await?;
        tracing::info!(subject = %grant.subject, client_id, scope = %grant.scope, what, "jwt-bearer grant");
        let access = self.access_token(
            &grant.subject,
            client_id,
            scope,
            resource,
            &grant.grant_id,
            (grant.claims.as_deref(), dpop_jkt),
        )?;
        Ok(self.token_response(access, scope, None, dpop_jkt.is_some()))
    }
}

/// The scope asked for, if any (`invalid_scope` when malformed). `offline_access` is dropped:
/// this grant issues no refresh token, and asking for one is no error.
fn requested_scope(form: &Form) -> Result<Option<ScopeSet>, OAuthError> {
    let asked = form
        .get("scope")
        .filter(|s| !s.is_empty())
        .map(|s| ScopeSet::parse(s))
        .transpose()
        .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidScope, e.to_string()))?;
    Ok(asked
        .map(|a| {
            a.iter()
                .filter(|s| s.as_str() != "offline_access")
                .cloned()
                .collect::<ScopeSet>()
        })
        .filter(|a| !a.is_empty()))
}

/// Which issuer an assertion claims to come from, before anything is verified; `None` when it
/// names none the operator listed.
pub(crate) fn claimed_issuer<'a>(
    s: &'a AuthServer,
    form: &Form,
) -> Result<(&'a AssertionIssuer, Claimed), OAuthError> {
    let assertion = require(form, "assertion")?;
    let (header, claims) = peek(assertion)?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let i = s.assertion_issuer(iss).ok_or_else(|| {
        tracing::info!("jwt-bearer assertion from an issuer that is not trusted");
        bad("the assertion's issuer is not trusted")
    })?;
    Ok((
        i,
        Claimed {
            jws: assertion.to_owned(),
            header,
        },
    ))
}

/// An assertion as presented, with its (unverified) JOSE header, read once.
pub(crate) struct Claimed {
    jws: String,
    header: Object,
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an ID-JAG (JB-1, AS-36).
/// `client` is authenticated already.
pub(crate) async fn id_jag(
    s: &AuthServer,
    client: &ClientRecord,
    i: &AssertionIssuer,
    a: &Claimed,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    let (assertion, header) = (a.jws.as_str(), &a.header);
    let AssertionKind::IdJag {
        subject_claim,
        subject_prefix,
        scopes: idp_limit,
    } = &i.kind
    else {
        return Err(bad("the assertion's issuer is not an identity provider"));
    };
    client_allows(s, client, JWT_BEARER)?;
    if header.get("typ").and_then(Value::as_str) != Some(ID_JAG_TYP) {
        return Err(bad("an ID-JAG must be typed oauth-id-jag+jwt"));
    }
    let audiences = [s.inner.cfg.issuer.as_str().to_owned()];
    let claims = s
        .verified_assertion(i, assertion, header, &audiences)
        .await?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    if text("client_id") != Some(client.client_id.as_str()) {
        return Err(bad("the ID-JAG was issued to another client"));
    }
    let resource = text("resource").ok_or_else(|| bad("the ID-JAG names no resource"))?;
    let res = s
        .resolve_resource(Some(resource))
        .map_err(|_| bad("the ID-JAG's resource is not served by this authorization server"))?;
    crate::token::same_resource(form.get("resource").map(String::as_str), resource)
        .map_err(|_| bad("the request's resource differs from the ID-JAG's"))?;
    let user = text(subject_claim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad(format!("the ID-JAG has no {subject_claim} claim")))?;
    // Scopes: the request ∩ the assertion ∩ the operator's limit for this IdP ∩ the resource.
    let mut allowed = res.scopes.clone();
    if let Some(limit) = idp_limit {
        allowed = allowed.intersection(limit);
    }
    if let Some(asserted) = text("scope") {
        let asserted =
            ScopeSet::parse(asserted).map_err(|_| bad("the ID-JAG's scope is malformed"))?;
        allowed = allowed.intersection(&asserted);
    }
    let scope = match requested_scope(form)? {
        Some(r) => r.intersection(&allowed),
        None => allowed,
    };
    if scope.is_empty() {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidScope,
            "none of the requested scopes may be granted",
        ));
    }
    let extra: Map<String, Value> = crate::token::IDENTITY_CLAIMS
        .iter()
        .filter_map(|k| claims.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    let extra = (!extra.is_empty()).then(|| Value::Object(extra).to_string());
    s.assertion_tokens(
        format!("{subject_prefix}{user}"),
        &client.client_id,
        &scope,
        res.resource.as_str(),
        extra,
        dpop_jkt,
        "id-jag",
    )
    .await
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with a workload's platform token
/// (JB-2). No client authentication: the operator's rule for the claims names the client. A
/// client that authenticates, or names itself with `client_id`, must be the one the rule names.
pub(crate) async fn workload(
    s: &AuthServer,
    client: Option<&str>,
    i: &AssertionIssuer,
    a: &Claimed,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    let (assertion, header) = (a.jws.as_str(), &a.header);
    let AssertionKind::Workload {
        rules,
        subject_prefix,
    } = &i.kind
    else {
        return Err(bad("the assertion's issuer is not a workload issuer"));
    };
    if header.get("typ").and_then(Value::as_str) == Some(ID_JAG_TYP) {
        return Err(bad("an ID-JAG from a workload issuer"));
    }
    let audiences = [
        s.inner.cfg.endpoint("/token"),
        s.inner.cfg.issuer.as_str().to_owned(),
    ];
    let claims = s
        .verified_assertion(i, assertion, header, &audiences)
        .await?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("the assertion has no sub"))?;
    let rule = rules
        .iter()
        .find(|r| {
            r.claims.iter().all(|(k, want)| {
                claims
                    .get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|got| claim_matches(want, got))
            })
        })
        .ok_or_else(|| {
            tracing::info!(issuer = %i.name, sub, "no workload rule matches");
            bad("no rule of this server admits this workload")
        })?;
    if client.is_some_and(|c| c != rule.client_id) {
        return Err(bad(
            "the authenticated client is not the one this workload maps to",
        ));
    }
    let res = s.resolve_resource(form.get("resource").map(String::as_str))?;
    let allowed = res.scopes.intersection(&rule.scopes);
    let scope = match requested_scope(form)? {
        Some(r) => {
            let extra = allowed.missing_from(&r);
            if !extra.is_empty() {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidScope,
                    format!("scope not allowed for this workload: {extra}"),
                ));
            }
            r
        }
        None => allowed,
    };
    s.assertion_tokens(
        format!("{subject_prefix}{sub}"),
        &rule.client_id,
        &scope,
        res.resource.as_str(),
        None,
        dpop_jkt,
        "workload",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_values_match_exactly_or_by_prefix() {
        assert!(claim_matches("acme/deploy", "acme/deploy"));
        assert!(!claim_matches("acme/deploy", "acme/deploy-evil"));
        assert!(claim_matches("refs/heads/*", "refs/heads/main"));
        assert!(!claim_matches("refs/heads/*", "refs/tags/v1"));
        assert!(!claim_matches("acme", "ACME"));
    }

    #[test]
    fn peek_refuses_what_is_not_a_jws() {
        assert!(peek("a.b").is_err());
        assert!(peek("a.b.c.d").is_err());
        assert!(peek("!!.??.x").is_err());
        assert!(peek(&"a".repeat(20_000)).is_err());
    }
}
