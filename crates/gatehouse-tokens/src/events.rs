//! Security Event Tokens (RFC 8417) pushed by an external authorization server (RFC 8935), in
//! the OpenID Shared Signals / CAEP form (issue 16): `session-revoked` and `credential-change`
//! about a subject end that subject's tokens issued up to the event, as a revocation at
//! Gatehouse's own authorization server ends a grant's.
//!
//! A SET is verified like a token from a trusted issuer: the transmitter must be listed, its
//! signature must check against the transmitter's JWKS (asymmetric keys only, no `crit`), it
//! must be explicitly typed `secevent+jwt` if typed at all, name this receiver in `aud` and carry
//! `iat`, `jti` and `events`. Replaying one changes nothing: an event only ever refuses tokens
//! issued before it.
use crate::TokenError;
use crate::jwt::KeySet;
use gatehouse_core::Clock;
use gatehouse_fetch::Fetcher;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

/// Who may push events, and about whose tokens.
#[derive(Debug, Clone)]
pub struct Transmitter {
    /// The SETs' `iss`.
    pub issuer: String,
    pub jwks_uri: String,
    /// The authorization server whose tokens the events are about (often the same issuer).
    pub tokens_of: String,
}

/// Refuse `issuer`'s tokens for `subject` issued at or before `cutoff` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectRevocation {
    pub issuer: String,
    pub subject: String,
    pub cutoff: i64,
}

/// Why a SET was refused, with its RFC 8935 §2.4 error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("the SET's issuer is not a configured transmitter")]
    InvalidIssuer,
    #[error("the SET's audience does not name this receiver")]
    InvalidAudience,
    /// The transmitter's keys could not be fetched: not the transmitter's fault; retry.
    #[error("{0}")]
    Unavailable(String),
}

impl SetError {
    /// The `err` value of the error response.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidAudience => "invalid_audience",
            Self::Unavailable(_) => "temporarily_unavailable",
        }
    }
}

/// Verifies pushed SETs.
pub struct SetVerifier {
    transmitters: Vec<Transmitter>,
    audience: Vec<String>,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    /// Keys per transmitter, and when they were fetched.
    keys: Mutex<HashMap<String, (Arc<KeySet>, Instant)>>,
}

/// Keys are used this long before they are fetched again; an unknown key forces a refetch at
/// most this often.
const KEYS_TTL: Duration = Duration::from_secs(600);
const MIN_REFETCH: Duration = Duration::from_secs(30);

impl SetVerifier {
    pub fn new(
        transmitters: Vec<Transmitter>,
        audience: Vec<String>,
        fetcher: Fetcher,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            transmitters,
            audience,
            fetcher,
            clock,
            keys: Mutex::default(),
        }
    }

    /// The subject revocations a SET asks for (none for event types this server does not act
    /// on).
    pub async fn verify(&self, set: &str) -> Result<Vec<SubjectRevocation>, SetError> {
        let bad = |m: &str| SetError::InvalidRequest(m.to_owned());
        let iss = unverified_issuer(set).ok_or_else(|| bad("not a signed JWT with an iss"))?;
        let t = self
            .transmitters
            .iter()
            .find(|t| t.issuer == iss)
            .ok_or(SetError::InvalidIssuer)?;
        check_type(set)?;
        let claims = self.verify_signature(t, set).await?;
        let now = self.clock.now_unix();
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.audience.contains(a),
            Some(Value::Array(l)) => l
                .iter()
                .filter_map(Value::as_str)
                .any(|a| self.audience.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(SetError::InvalidAudience);
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("iat is missing"))?;
        if iat > now + 60 {
            return Err(bad("iat is in the future"));
        }
        if !claims.get("jti").is_some_and(Value::is_string) {
            return Err(bad("jti is missing"));
        }
        let events = claims
            .get("events")
            .and_then(Value::as_object)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| bad("events is missing"))?;
        let mut out = Vec::new();
        for (kind, event) in events {
            if kind != SESSION_REVOKED && kind != CREDENTIAL_CHANGE {
                continue;
            }
            // SSF 1.0 names the subject in `sub_id`; earlier CAEP drafts inside the event.
            let subject = claims
                .get("sub_id")
                .or_else(|| event.get("subject"))
                .ok_or_else(|| bad("the event names no subject (sub_id)"))?;
            let subject = subject_of(subject, &t.tokens_of)?;
            let cutoff = event
                .get("event_timestamp")
                .and_then(Value::as_i64)
                .unwrap_or(iat)
                .min(now + 60);
            out.push(SubjectRevocation {
                issuer: t.tokens_of.clone(),
                subject,
                cutoff,
            });
        }
        Ok(out)
    }

    async fn verify_signature(
        &self,
        t: &Transmitter,
        set: &str,
    ) -> Result<Map<String, Value>, SetError> {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&t.issuer)
            .cloned();
        let keys = match &cached {
            Some((k, at)) if at.elapsed() < KEYS_TTL => k.clone(),
            _ => self.fetch_keys(t).await?,
        };
        match keys.verify(set) {
            Ok(c) => Ok(c),
            // A rotated key: fetch again, at most every MIN_REFETCH.
            Err(TokenError::UnknownKey | TokenError::Signature)
                if cached
                    .as_ref()
                    .is_none_or(|(_, at)| at.elapsed() >= MIN_REFETCH) =>
            {
                self.fetch_keys(t).await?.verify(set).map_err(key_error)
            }
            Err(e) => Err(key_error(e)),
        }
    }

    async fn fetch_keys(&self, t: &Transmitter) -> Result<Arc<KeySet>, SetError> {
        let f = self
            .fetcher
            .get(&t.jwks_uri)
            .await
            .map_err(|e| SetError::Unavailable(format!("transmitter keys: {e}")))?;
        let keys = Arc::new(
            KeySet::parse(&f.body)
                .map_err(|e| SetError::Unavailable(format!("transmitter keys: {e}")))?,
        );
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t.issuer.clone(), (keys.clone(), Instant::now()));
        Ok(keys)
    }
}

fn key_error(e: TokenError) -> SetError {
    match e {
        TokenError::UnknownKey | TokenError::Signature => SetError::InvalidKey(e.to_string()),
        other => SetError::InvalidRequest(other.to_string()),
    }
}

/// The `iss` of a compact JWS, read before verifying (to choose the keys).
fn unverified_issuer(set: &str) -> Option<String> {
    use base64::Engine as _;
    let mut parts = set.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&raw).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// RFC 8417 §2.3: a typed SET says `secevent+jwt`; any other type (an access or ID token) is
/// refused.
fn check_type(set: &str) -> Result<(), SetError> {
    let header = jsonwebtoken::decode_header(set)
        .map_err(|e| SetError::InvalidRequest(format!("bad JOSE header: {e}")))?;
    match header.typ.as_deref() {
        None => Ok(()),
        Some(t)
            if t.eq_ignore_ascii_case("secevent+jwt")
                || t.eq_ignore_ascii_case("application/secevent+jwt") =>
        {
            Ok(())
        }
        Some(t) => Err(SetError::InvalidRequest(format!(
            "typ {t:?} is not secevent+jwt"
        ))),
    }
}

/// The token `sub` a subject identifier (RFC 9493) names: `iss_sub` of the token issuer, or
/// `opaque`.
fn subject_of(id: &Value, tokens_of: &str) -> Result<String, SetError> {
    let bad = |m: String| SetError::InvalidRequest(m);
    let format = id
        .get("format")
        .or_else(|| id.get("subject_type"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let text = |k: &str| id.get(k).and_then(Value::as_str).map(str::to_owned);
    match format {
        "iss_sub" | "iss-sub" => {
            if text("iss")
                .is_some_and(|i| i.trim_end_matches('/') != tokens_of.trim_end_matches('/'))
            {
                return Err(bad(
                    "the subject's iss is not the authorization server this transmitter speaks for"
                        .into(),
                ));
            }
            text("sub").ok_or_else(|| bad("iss_sub subject without sub".into()))
        }
        "opaque" => text("id").ok_or_else(|| bad("opaque subject without id".into())),
        other => Err(bad(format!(
            "subject format {other:?} is not supported (iss_sub, opaque)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subjects_by_format() {
        let of = "https://idp.example";
        assert_eq!(
            subject_of(
                &json!({"format": "iss_sub", "iss": "https://idp.example", "sub": "alice"}),
                of
            ),
            Ok("alice".into())
        );
        assert_eq!(
            subject_of(&json!({"format": "opaque", "id": "u-1"}), of),
            Ok("u-1".into())
        );
        assert!(
            subject_of(
                &json!({"format": "iss_sub", "iss": "https://evil.example", "sub": "alice"}),
                of
            )
            .is_err()
        );
        assert!(subject_of(&json!({"format": "email", "email": "a@b"}), of).is_err());
    }
}
