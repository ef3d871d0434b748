/// Everything that can stop a client from reaching a protected server, worded for the person at
/// the terminal. No variant ever carries a token or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("refusing {what} {url:?}: {why}")]
    UnsafeUrl {
        what: &'static str,
        url: String,
        why: String,
    },
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error(
        "the protected resource metadata is for {found:?}, not {expected:?}; refusing to use it (CL-03)"
    )]
    ResourceMismatch { expected: String, found: String },
    #[error("client registration failed: {0}")]
    Registration(String),
    #[error("authorization failed: {0}")]
    Authorization(String),
    #[error("the authorization server refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        error: String,
        description: Option<String>,
    },
    #[error("still missing scope after {0} authorization attempts; giving up")]
    StepUpExhausted(u8),
    #[error("token cache: {0}")]
    Cache(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the server answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("not logged in to {0}; run `gatehouse login {0}`")]
    NotLoggedIn(String),
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display includes the URL, never headers or bodies: no token can leak here.
        Self::Http(e.to_string())
    }
}

impl ClientError {
    /// `invalid_grant` from a refresh: the refresh token is gone for good; log in again.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::OAuth { error, .. } if error == "invalid_grant")
    }
}
