use std::fmt;

/// Why a token was refused. The text is safe to send as `error_description`: it never contains
/// the token or key material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    Malformed(String),
    Algorithm(String),
    UnknownKey,
    Signature,
    Type(String),
    Issuer(String),
    Audience,
    Expired,
    NotYetValid,
    MissingClaim(&'static str),
    Inactive,
    /// The grant the token belongs to was revoked (T16, T23).
    Revoked,
    /// A sender-constrained token (`cnf`, e.g. DPoP-bound) presented as a plain bearer token.
    Unbound,
    /// A DPoP proof and the token's binding do not match.
    Binding(String),
    /// The authorization server or its keys could not be reached: not the caller's fault.
    Unavailable(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => write!(f, "malformed token: {m}"),
            Self::Algorithm(a) => write!(f, "signing algorithm not accepted: {a}"),
            Self::UnknownKey => f.write_str("token signed with an unknown key"),
            Self::Signature => f.write_str("signature verification failed"),
            Self::Type(t) => write!(f, "token type {t:?} is not an access token"),
            Self::Issuer(i) => write!(f, "issuer {i:?} is not trusted"),
            Self::Audience => f.write_str("token audience does not include this resource"),
            Self::Expired => f.write_str("token expired"),
            Self::NotYetValid => f.write_str("token not yet valid"),
            Self::MissingClaim(c) => write!(f, "token lacks the {c} claim"),
            Self::Inactive => f.write_str("token is not active"),
            Self::Revoked => f.write_str("token was revoked"),
            Self::Unbound => {
                f.write_str("token is bound to a key (cnf) and cannot be used as a bearer token")
            }
            Self::Binding(m) => f.write_str(m),
            Self::Unavailable(m) => write!(f, "token validation unavailable: {m}"),
        }
    }
}

impl std::error::Error for TokenError {}
