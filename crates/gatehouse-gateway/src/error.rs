//! The gateway's one error type, its JSON-RPC codes, and the one place a refusal meets the wire.
//!
//! Every code is named once ([`RpcCode`]). A refusal of one message is a [`GatewayError`]; its
//! HTTP status (for a request of one message), its JSON-RPC code and message, and the
//! [`Outcome`] the audit log and metrics record are all derived from it, never passed alongside.
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::Value;

/// The longest caller-chosen text a record keeps (method, tool, reason); longer is cut.
pub const MAX_FIELD: usize = 256;

/// `s`, cut to [`MAX_FIELD`] bytes at a character boundary, marked when cut.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_owned();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &s[..end], s.len())
}

/// JSON-RPC error codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcCode {
    /// Generic server error (implementation-defined range): limits, upstream trouble.
    Server = -32000,
    /// The session is unknown, ended, or someone else's.
    SessionNotFound = -32001,
    /// The policies refuse the call.
    Forbidden = -32003,
    /// 2026-07-28: `Mcp-Method` / `Mcp-Name` disagree with the body.
    HeaderMismatch = -32020,
    /// The user must connect an upstream account first (URL-mode elicitation).
    UrlElicitationRequired = -32042,
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    Internal = -32603,
    Parse = -32700,
}

impl RpcCode {
    pub fn code(self) -> i64 {
        self as i64
    }
}

/// What became of one message: the audit record's `decision` and the metrics' label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    InsufficientScope,
    RateLimited,
    CredentialRefused,
    ConnectRequired,
    UnknownSession,
    /// Malformed: too long, unknown method, duplicate id, batch too big or not allowed.
    Invalid,
    UpstreamFailed,
}

impl Outcome {
    pub const ALL: [Self; 9] = [
        Self::Allow,
        Self::Deny,
        Self::InsufficientScope,
        Self::RateLimited,
        Self::CredentialRefused,
        Self::ConnectRequired,
        Self::UnknownSession,
        Self::Invalid,
        Self::UpstreamFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::InsufficientScope => "insufficient_scope",
            Self::RateLimited => "rate_limited",
            Self::CredentialRefused => "credential_refused",
            Self::ConnectRequired => "connect_required",
            Self::UnknownSession => "unknown_session",
            Self::Invalid => "invalid",
            Self::UpstreamFailed => "upstream_failed",
        }
    }
}

/// Why the gateway did not (or could not) pass a message on.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Parse(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("method not found: {0}")]
    UnknownMethod(String),
    #[error("{0}")]
    HeaderMismatch(String),
    #[error("{}", forbidden_message(.policies))]
    Forbidden { policies: Vec<String> },
    #[error("rate limit ({limit}) exceeded; retry in {retry_after} s")]
    RateLimited {
        limit: &'static str,
        retry_after: u64,
    },
    #[error("session not found")]
    SessionNotFound,
    #[error("too many open sessions for this server; close one (DELETE) first")]
    TooManySessions,
    #[error("{0}")]
    CredentialRefused(String),
    #[error("{0}")]
    Upstream(String),
    #[error("internal error")]
    Internal,
    /// Shared state (Redis) cannot be reached: nothing is let through unchecked.
    #[error("temporarily unavailable; retry shortly")]
    Unavailable,
}

fn forbidden_message(policies: &[String]) -> String {
    if policies.is_empty() {
        "forbidden: no policy allows this".to_owned()
    } else {
        format!("forbidden by policy: {}", policies.join(", "))
    }
}

impl GatewayError {
    pub fn rpc_code(&self) -> RpcCode {
        match self {
            Self::Invalid(_) | Self::TooLarge(_) => RpcCode::InvalidRequest,
            Self::Parse(_) => RpcCode::Parse,
            Self::UnknownMethod(_) => RpcCode::MethodNotFound,
            Self::HeaderMismatch(_) => RpcCode::HeaderMismatch,
            Self::Forbidden { .. } => RpcCode::Forbidden,
            Self::SessionNotFound => RpcCode::SessionNotFound,
            Self::RateLimited { .. }
            | Self::TooManySessions
            | Self::CredentialRefused(_)
            | Self::Upstream(_)
            | Self::Unavailable => RpcCode::Server,
            Self::Internal => RpcCode::Internal,
        }
    }

    /// The HTTP status when this error answers a whole request.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::Parse(_) | Self::HeaderMismatch(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            // The transport worked; the operation is refused (JSON-RPC level).
            Self::Forbidden { .. } | Self::UnknownMethod(_) => StatusCode::OK,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::SessionNotFound => StatusCode::NOT_FOUND,
            Self::TooManySessions | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::CredentialRefused(_) => StatusCode::FORBIDDEN,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Invalid(_)
            | Self::TooLarge(_)
            | Self::Parse(_)
            | Self::UnknownMethod(_)
            | Self::HeaderMismatch(_)
            | Self::TooManySessions => Outcome::Invalid,
            Self::Forbidden { .. } => Outcome::Deny,
            Self::RateLimited { .. } => Outcome::RateLimited,
            Self::SessionNotFound => Outcome::UnknownSession,
            Self::CredentialRefused(_) => Outcome::CredentialRefused,
            Self::Upstream(_) | Self::Internal | Self::Unavailable => Outcome::UpstreamFailed,
        }
    }

    /// What the audit record adds for this refusal.
    pub fn audit_extra(&self) -> Value {
        match self {
            Self::Forbidden { policies } => serde_json::json!({ "policies": policies }),
            Self::RateLimited { limit, .. } => serde_json::json!({ "limit": limit }),
            Self::Invalid(why) | Self::UnknownMethod(why) | Self::HeaderMismatch(why) => {
                serde_json::json!({ "reason": clip(why) })
            }
            _ => Value::Null,
        }
    }

    /// The JSON-RPC error object answering message `id`.
    pub fn body(&self, id: &Value) -> Value {
        rpc_error_body(id, self.rpc_code(), &self.to_string())
    }

    /// The whole answer to a request of one message (the one rescue into a response).
    pub fn into_response(self, id: &Value) -> Response {
        let mut resp = (self.status(), axum::Json(self.body(id))).into_response();
        let retry_after = match self {
            Self::RateLimited { retry_after, .. } => Some(retry_after),
            Self::Unavailable => Some(5),
            _ => None,
        };
        if let Some(v) = retry_after.and_then(|s| http::HeaderValue::from_str(&s.to_string()).ok())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A JSON-RPC error object.
pub fn rpc_error_body(id: &Value, code: RpcCode, message: &str) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.code(), "message": message}})
}

/// A whole answer that is one JSON-RPC error.
pub fn rpc_error(status: StatusCode, id: &Value, code: RpcCode, message: &str) -> Response {
    (status, axum::Json(rpc_error_body(id, code, message))).into_response()
}

/// A failure on the way to a per-user grant (store, upstream authorization server): logged,
/// never shown to the caller.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
