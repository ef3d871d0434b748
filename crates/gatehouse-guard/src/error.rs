//! Every refusal the guard makes, and the one function that turns it into its wire form.
use gatehouse_core::{BearerChallenge, BearerError, ScopeSet};
use http::{HeaderValue, StatusCode, header};

/// Why the guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardError {
    /// The client address is not in the allow-list.
    AddressNotAllowed,
    /// RS-10: a malformed `Authorization` header or more than one way of sending a token.
    InvalidRequest(String),
    /// RS-05: no Bearer credentials at all.
    NoCredentials,
    /// RS-07: the token or API key is not valid for this resource.
    InvalidToken(String),
    /// RFC 9449 §7.1: the DPoP proof is missing, malformed, replayed or for another request.
    InvalidDpopProof(String),
    /// The token sent with a valid DPoP proof is not valid (or not bound to its key).
    DpopInvalidToken(String),
    /// RFC 9449 §9: the proof lacks a current server nonce; this one is to be used.
    UseDpopNonce(String),
    /// RS-08/RS-09: valid, but the operation needs these scopes (all of them, not only the
    /// missing ones, so a client that replaces its token keeps what it had).
    InsufficientScope {
        needed: ScopeSet,
        description: String,
    },
    /// The authorization server could not be reached to validate the token.
    Unavailable,
    BodyTooLarge,
    /// RS-16: a session id that does not belong to this principal (answered as unknown).
    UnknownSession,
    /// Issue 20: the caller (429) or the endpoint (503) holds as many sessions as allowed.
    TooManySessions(crate::SessionsFull),
    /// The shared session store could not be reached: refused, never let through unbounded.
    SessionsUnavailable,
    /// The JSON-RPC body could not be read (code per JSON-RPC / MCP).
    BadMessage {
        code: i64,
        message: String,
    },
}

fn json_body(v: serde_json::Value) -> axum::body::Body {
    axum::body::Body::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// Every value of `gatehouse_guard_requests_total{outcome}`: `allowed` and each refusal.
pub(crate) const OUTCOMES: [&str; 13] = [
    "allowed",
    "address_not_allowed",
    "invalid_request",
    "no_credentials",
    "invalid_token",
    "invalid_dpop_proof",
    "use_dpop_nonce",
    "insufficient_scope",
    "unavailable",
    "body_too_large",
    "unknown_session",
    "too_many_sessions",
    "bad_message",
];

impl GuardError {
    /// The refusal's name in metrics (one of [`OUTCOMES`]).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::AddressNotAllowed => "address_not_allowed",
            Self::InvalidRequest(_) => "invalid_request",
            Self::NoCredentials => "no_credentials",
            Self::InvalidToken(_) | Self::DpopInvalidToken(_) => "invalid_token",
            Self::InvalidDpopProof(_) => "invalid_dpop_proof",
            Self::UseDpopNonce(_) => "use_dpop_nonce",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Unavailable | Self::SessionsUnavailable => "unavailable",
            Self::BodyTooLarge => "body_too_large",
            Self::UnknownSession => "unknown_session",
            Self::TooManySessions(_) => "too_many_sessions",
            Self::BadMessage { .. } => "bad_message",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::AddressNotAllowed => StatusCode::FORBIDDEN,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoCredentials
            | Self::InvalidToken(_)
            | Self::InvalidDpopProof(_)
            | Self::DpopInvalidToken(_)
            | Self::UseDpopNonce(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownSession => StatusCode::NOT_FOUND,
            Self::TooManySessions(crate::SessionsFull::Subject { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::TooManySessions(crate::SessionsFull::Total { .. })
            | Self::SessionsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadMessage { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The response for this refusal. `prm_url` and `base_scope` go into every Bearer challenge.
    pub fn into_response(
        self,
        prm_url: &str,
        base_scope: &ScopeSet,
    ) -> http::Response<axum::body::Body> {
        let status = self.status();
        let dpop_error = match &self {
            Self::InvalidDpopProof(d) => Some(("invalid_dpop_proof", d.clone())),
            Self::DpopInvalidToken(d) => Some(("invalid_token", d.clone())),
            Self::UseDpopNonce(_) => Some((
                "use_dpop_nonce",
                "the DPoP proof must carry the nonce in the DPoP-Nonce header".into(),
            )),
            _ => None,
        };
        let nonce = match &self {
            Self::UseDpopNonce(n) => HeaderValue::from_str(n).ok(),
            _ => None,
        };
        let retry_after = match &self {
            Self::TooManySessions(
                crate::SessionsFull::Subject { retry_after, .. }
                | crate::SessionsFull::Total { retry_after },
            ) => Some(*retry_after),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        };
        let challenge =
            |error: Option<BearerError>, description: Option<String>, scope: &ScopeSet| {
                BearerChallenge {
                    error,
                    error_description: description,
                    scope: Some(scope.clone()),
                    resource_metadata: Some(prm_url.to_owned()),
                }
                .to_header_value()
            };
        let (www, body) = match self {
            Self::AddressNotAllowed => (
                None,
                json_body(
                    serde_json::json!({"error":"access_denied","error_description":"client address not allowed"}),
                ),
            ),
            Self::InvalidRequest(d) => (
                Some(challenge(
                    Some(BearerError::InvalidRequest),
                    Some(d.clone()),
                    base_scope,
                )),
                json_body(serde_json::json!({"error":"invalid_request","error_description":d})),
            ),
            Self::NoCredentials => (
                Some(challenge(None, None, base_scope)),
                json_body(
                    serde_json::json!({"error":"unauthorized","error_description":"authorization required"}),
                ),
            ),
            Self::InvalidToken(d) => (
                Some(challenge(
                    Some(BearerError::InvalidToken),
                    Some(d.clone()),
                    base_scope,
                )),
                json_body(serde_json::json!({"error":"invalid_token","error_description":d})),
            ),
            Self::InvalidDpopProof(d) => (
                Some(challenge(None, None, base_scope)),
                json_body(serde_json::json!({"error":"invalid_dpop_proof","error_description":d})),
            ),
            Self::DpopInvalidToken(d) => (
                Some(challenge(None, None, base_scope)),
                json_body(serde_json::json!({"error":"invalid_token","error_description":d})),
            ),
            Self::UseDpopNonce(_) => (
                Some(challenge(None, None, base_scope)),
                json_body(
                    serde_json::json!({"error":"use_dpop_nonce","error_description":"the DPoP proof must carry the nonce in the DPoP-Nonce header"}),
                ),
            ),
            Self::InsufficientScope {
                needed,
                description,
            } => (
                Some(challenge(
                    Some(BearerError::InsufficientScope),
                    Some(description.clone()),
                    &needed,
                )),
                json_body(
                    serde_json::json!({"error":"insufficient_scope","error_description":description,"scope":needed.to_string()}),
                ),
            ),
            Self::Unavailable => (
                None,
                json_body(
                    serde_json::json!({"error":"temporarily_unavailable","error_description":"token validation is temporarily unavailable"}),
                ),
            ),
            Self::BodyTooLarge => (
                None,
                json_body(
                    serde_json::json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request body too large"}}),
                ),
            ),
            Self::UnknownSession => (
                None,
                json_body(
                    serde_json::json!({"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"session not found"}}),
                ),
            ),
            // A JSON-RPC error as for any refused request; the HTTP status and Retry-After say
            // what to do.
            Self::TooManySessions(full) => {
                let message = match full {
                    crate::SessionsFull::Subject { limit, retry_after } => format!(
                        "too many sessions: this caller already holds {limit} (limits.sessions_per_subject), all in recent use; end one with HTTP DELETE or retry after {retry_after} s"
                    ),
                    crate::SessionsFull::Total { retry_after } => format!(
                        "this server holds as many sessions as it allows (limits.sessions_total); retry after {retry_after} s"
                    ),
                };
                (
                    None,
                    json_body(
                        serde_json::json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":message}}),
                    ),
                )
            }
            Self::SessionsUnavailable => (
                None,
                json_body(
                    serde_json::json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"the session store is temporarily unavailable"}}),
                ),
            ),
            Self::BadMessage { code, message } => (
                None,
                json_body(
                    serde_json::json!({"jsonrpc":"2.0","id":null,"error":{"code":code,"message":message}}),
                ),
            ),
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(n) = nonce {
            h.insert("dpop-nonce", n);
        }
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(v) = www.and_then(|w| HeaderValue::from_str(&w).ok()) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        // RFC 9449 §7.1: a 401 also offers the DPoP scheme, with the error when it was a proof
        // (or a token sent with one) that failed.
        if status == StatusCode::UNAUTHORIZED {
            let algs = gatehouse_tokens::dpop::DPOP_ALGS.join(" ");
            let dpop = match &dpop_error {
                Some((code, d)) => format!(
                    "DPoP error=\"{code}\", error_description=\"{}\", algs=\"{algs}\"",
                    d.replace(['"', '\\'], "'")
                ),
                None => format!("DPoP algs=\"{algs}\""),
            };
            if let Ok(v) = HeaderValue::from_str(&dpop) {
                h.append(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_counted_outcome() {
        let all = [
            GuardError::AddressNotAllowed,
            GuardError::InvalidRequest(String::new()),
            GuardError::NoCredentials,
            GuardError::InvalidToken(String::new()),
            GuardError::InvalidDpopProof(String::new()),
            GuardError::DpopInvalidToken(String::new()),
            GuardError::UseDpopNonce(String::new()),
            GuardError::InsufficientScope {
                needed: ScopeSet::new(),
                description: String::new(),
            },
            GuardError::Unavailable,
            GuardError::BodyTooLarge,
            GuardError::UnknownSession,
            GuardError::TooManySessions(crate::SessionsFull::Total { retry_after: 1 }),
            GuardError::SessionsUnavailable,
            GuardError::BadMessage {
                code: 0,
                message: String::new(),
            },
        ];
        for e in &all {
            assert!(OUTCOMES.contains(&e.outcome()), "{e:?}");
        }
    }
}
