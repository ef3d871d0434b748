//! Access-token validation for resource servers and gateways.
//!
//! What each check rules out (RS-12, RS-17, RS-18, RS-24; THREATS T8, T10):
//! - the signing algorithm comes from the key (and an allow-list), never from the token header,
//!   so `alg: none` and HMAC-with-a-public-key forgeries fail;
//! - only issuers this server trusts are accepted, compared byte for byte;
//! - `aud` must name this server's canonical resource URI, so tokens minted for another resource
//!   (passthrough, audience confusion) are refused;
//! - `exp`/`nbf` are checked against an injectable clock with a small leeway;
//! - JWKS are refetched on an unknown `kid` at most once per interval, so rotation works and a
//!   flood of random `kid`s cannot turn the guard into a fetch amplifier.
#![forbid(unsafe_code)]

mod discovery;
pub mod dpop;
mod error;
pub mod events;
mod introspection;
mod jwt;
mod principal;
mod revocations;

pub use discovery::discover;
pub use error::TokenError;
pub use events::{SetError, SetVerifier, SubjectRevocation, Transmitter};
pub use introspection::{IntrospectionConfig, IntrospectionValidator};
pub use jwt::{ASYMMETRIC_ALGORITHMS, JwtValidator, JwtValidatorConfig, KeySet, TrustedIssuer};
pub use principal::{Principal, PrincipalSource};
pub use revocations::{Revocations, STALE_AFTER_SECS};

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so validators can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Anything that turns a bearer token into a [`Principal`] or a reason to refuse it.
pub trait TokenValidator: Send + Sync {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, TokenError>>;

    /// [`Self::validate`] for a token presented with a verified DPoP proof whose key has
    /// thumbprint `jkt`. Validators that know no bindings refuse.
    fn validate_bound<'a>(
        &'a self,
        token: &'a str,
        jkt: &'a str,
    ) -> BoxFuture<'a, Result<Principal, TokenError>> {
        let _ = (token, jkt);
        Box::pin(async { Err(TokenError::Binding("DPoP is not supported here".into())) })
    }
}

/// JWTs by signature, other tokens by introspection, as configured. The JWT validator is shared
/// so its owner can prefetch keys.
pub struct AccessTokenValidator {
    pub jwt: Option<std::sync::Arc<JwtValidator>>,
    pub introspection: Option<IntrospectionValidator>,
}

/// Compact JWS: three base64url segments.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts[..2].iter().all(|p| !p.is_empty())
}

impl TokenValidator for AccessTokenValidator {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, TokenError>> {
        self.validate_with(token, None)
    }

    fn validate_bound<'a>(
        &'a self,
        token: &'a str,
        jkt: &'a str,
    ) -> BoxFuture<'a, Result<Principal, TokenError>> {
        self.validate_with(token, Some(jkt))
    }
}

impl AccessTokenValidator {
    fn validate_with<'a>(
        &'a self,
        token: &'a str,
        jkt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Principal, TokenError>> {
        Box::pin(async move {
            match (&self.jwt, &self.introspection) {
                (Some(j), _) if looks_like_jwt(token) => j.validate_jwt_bound(token, jkt).await,
                (_, Some(i)) => i.introspect_bound(token, jkt).await,
                (Some(_), None) => Err(TokenError::Malformed("not a JWT".into())),
                (None, None) => Err(TokenError::Unavailable(
                    "no token validator configured".into(),
                )),
            }
        })
    }
}
