use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_core::{AudiencePolicy, Clock, Resource, SecretString};
use gatehouse_fetch::{FetchError, Fetcher};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{Principal, PrincipalSource, TokenError};

/// How this resource server authenticates to the RFC 7662 endpoint.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Active results are cached no longer than this (nor past the token's `exp`).
    pub cache_ttl: Duration,
    /// The issuer to attribute tokens to when the response has no `iss`.
    pub issuer: String,
    /// Subjects the issuer's Security Event Tokens revoked: refused even from the cache.
    pub revocations: Option<Arc<crate::Revocations>>,
}

/// Validates opaque tokens by introspection (RS-18): `active` must be true, `aud` must name this
/// resource (RFC 7662 does not check audience for us), `exp` must be in the future.
pub struct IntrospectionValidator {
    cfg: IntrospectionConfig,
    audience: Resource,
    policy: AudiencePolicy,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    /// Keyed by SHA-256 of the token, so the cache never holds a usable token.
    cache: Mutex<HashMap<[u8; 32], (Principal, i64)>>,
}

const CACHE_MAX: usize = 10_000;

impl IntrospectionValidator {
    pub fn new(
        cfg: IntrospectionConfig,
        audience: Resource,
        policy: AudiencePolicy,
        fetcher: Fetcher,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            cfg,
            audience,
            policy,
            fetcher,
            clock,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn introspect(&self, token: &str) -> Result<Principal, TokenError> {
        self.introspect_bound(token, None).await
    }

    /// [`Self::introspect`] with the thumbprint of a verified DPoP proof's key, if any: the
    /// answer's `cnf` must match (RFC 9449 §7).
    pub async fn introspect_bound(
        &self,
        token: &str,
        dpop_jkt: Option<&str>,
    ) -> Result<Principal, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now_unix();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(_, until)| *until > now)
            .map(|(p, _)| p.clone());
        if let Some(p) = cached {
            crate::jwt::check_binding(p.claims.get("cnf"), dpop_jkt)?;
            if self.revoked(&p) {
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                return Err(TokenError::Revoked);
            }
            return Ok(p);
        }
        let resp = self
            .fetcher
            .post_form(
                &self.cfg.endpoint,
                &[("token", token), ("token_type_hint", "access_token")],
                Some((&self.cfg.client_id, self.cfg.client_secret.expose())),
            )
            .await
            .map_err(|e| match e {
                // Never reflect the AS's body; say only what failed.
                FetchError::Status { status, .. } => TokenError::Unavailable(format!(
                    "introspection endpoint answered HTTP {status}"
                )),
                other => TokenError::Unavailable(other.to_string()),
            })?;
        let claims: Map<String, Value> = resp
            .json(&self.cfg.endpoint)
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(TokenError::Inactive);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.audience.matches_audience(a, self.policy),
            Some(Value::Array(l)) => l
                .iter()
                .filter_map(Value::as_str)
                .any(|a| self.audience.matches_audience(a, self.policy)),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        // A key-bound token (RFC 9449 `cnf`) is no bearer token (see the JWT validator).
        crate::jwt::check_binding(claims.get("cnf"), dpop_jkt)?;
        let exp = claims.get("exp").and_then(Value::as_i64);
        if exp.is_some_and(|e| now >= e) {
            return Err(TokenError::Expired);
        }
        if let Some(iss) = claims.get("iss").and_then(Value::as_str)
            && iss != self.cfg.issuer
        {
            return Err(TokenError::Issuer(iss.to_owned()));
        }
        let p = Principal::from_claims(
            self.cfg.issuer.clone(),
            claims,
            PrincipalSource::Introspection,
        )?;
        if self.revoked(&p) {
            return Err(TokenError::Revoked);
        }
        let ttl = i64::try_from(self.cfg.cache_ttl.as_secs()).unwrap_or(60);
        let until = exp.map_or(now + ttl, |e| e.min(now + ttl));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, u)| *u > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (p.clone(), until));
        Ok(p)
    }

    /// Whether a security event revoked the principal's tokens issued up to now.
    fn revoked(&self, p: &Principal) -> bool {
        self.cfg.revocations.as_ref().is_some_and(|r| {
            r.subject_revoked(
                &p.issuer,
                &p.subject,
                p.claims.get("iat").and_then(Value::as_i64),
            )
        })
    }
}
