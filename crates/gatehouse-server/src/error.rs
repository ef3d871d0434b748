//! OAuth errors and their one mapping to the wire (RFC 6749 §5.2 JSON for endpoints).
use axum::response::{IntoResponse, Response};
use gatehouse_core::OAuthErrorCode;
use http::{HeaderValue, StatusCode, header};

/// An OAuth error as an endpoint returns it. The description never contains secrets.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    pub description: String,
    pub status: StatusCode,
    /// `invalid_client` after HTTP Basic: answer with a Basic challenge (RFC 6749 §5.2).
    pub basic_challenge: bool,
    /// A `DPoP-Nonce` to send with the answer (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
}

impl OAuthError {
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        let status = match code {
            OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            code,
            description: description.into(),
            status,
            basic_challenge: false,
            dpop_nonce: None,
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, d)
    }
    pub fn server_error(d: impl std::fmt::Display) -> Self {
        // Details go to the log, not to the caller.
        tracing::warn!(error = %d, "authorization server internal error");
        Self::new(OAuthErrorCode::ServerError, "internal error")
    }
}

impl From<gatehouse_store::StoreError> for OAuthError {
    fn from(e: gatehouse_store::StoreError) -> Self {
        if e.is_unavailable() {
            // Not the caller's fault, and over once the database is back (issue 16): 503.
            tracing::warn!(error = %e, "database unavailable");
            return Self::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "the database is unavailable; retry shortly",
            );
        }
        Self::server_error(e)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Some(v) = self
            .dpop_nonce
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            h.insert("dpop-nonce", v);
        }
        if self.basic_challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gatehouse\""),
            );
        }
        resp
    }
}
