//! The error type of the core crate and the OAuth error codes every layer maps to.
use std::fmt;

/// OAuth 2.x / RFC 6750 / RFC 8707 error codes, spelled exactly as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    UnsupportedResponseType,
    ServerError,
    TemporarilyUnavailable,
    InvalidToken,
    InsufficientScope,
    InvalidClientMetadata,
    InvalidRedirectUri,
    /// RFC 7591 §3.2.2: a software statement this server does not accept.
    UnapprovedSoftwareStatement,
    /// RFC 9449 §5: the DPoP proof is missing, malformed or replayed.
    InvalidDpopProof,
    /// RFC 8628 §3.5: the device request is not answered yet / poll less often / it expired.
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    /// RFC 9449 §8, §9: the proof must carry the nonce sent in `DPoP-Nonce`.
    UseDpopNonce,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::AccessDenied => "access_denied",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::InvalidClientMetadata => "invalid_client_metadata",
            Self::InvalidRedirectUri => "invalid_redirect_uri",
            Self::UnapprovedSoftwareStatement => "unapproved_software_statement",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::ExpiredToken => "expired_token",
            Self::UseDpopNonce => "use_dpop_nonce",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invalid_request" => Self::InvalidRequest,
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_scope" => Self::InvalidScope,
            "invalid_target" => Self::InvalidTarget,
            "access_denied" => Self::AccessDenied,
            "unsupported_response_type" => Self::UnsupportedResponseType,
            "server_error" => Self::ServerError,
            "temporarily_unavailable" => Self::TemporarilyUnavailable,
            "invalid_token" => Self::InvalidToken,
            "insufficient_scope" => Self::InsufficientScope,
            "invalid_client_metadata" => Self::InvalidClientMetadata,
            "invalid_redirect_uri" => Self::InvalidRedirectUri,
            "unapproved_software_statement" => Self::UnapprovedSoftwareStatement,
            "invalid_dpop_proof" => Self::InvalidDpopProof,
            "authorization_pending" => Self::AuthorizationPending,
            "slow_down" => Self::SlowDown,
            "expired_token" => Self::ExpiredToken,
            "use_dpop_nonce" => Self::UseDpopNonce,
            _ => return None,
        })
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can be wrong with a value parsed by this crate. Each variant says what was
/// refused and why, without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("invalid URL {what}: {why}")]
    Url { what: &'static str, why: String },
    #[error("invalid scope {0:?}: scope tokens are printable ASCII without space, '\"' or '\\'")]
    Scope(String),
    #[error("malformed WWW-Authenticate header: {0}")]
    Challenge(String),
    #[error("invalid PKCE value: {0}")]
    Pkce(&'static str),
    #[error("invalid redirect URI: {0}")]
    RedirectUri(String),
    #[error("malformed JSON-RPC message: {0}")]
    JsonRpc(String),
    #[error("MCP header {header} says {header_value:?} but the body says {body_value:?}")]
    HeaderMismatch {
        header: &'static str,
        header_value: String,
        body_value: String,
    },
    #[error("unsupported MCP protocol version {0:?}")]
    ProtocolVersion(String),
}
