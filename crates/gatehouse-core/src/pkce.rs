//! PKCE (RFC 7636), S256 only: `plain` gives no protection against code interception (AS-06).
use crate::error::CoreError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// The secret half of PKCE. Single use: not `Clone`, redacted in `Debug`, wiped on drop.
pub struct PkceVerifier(String);

impl PkceVerifier {
    /// 32 random bytes, base64url: 43 characters (the RFC's recommended form).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a verifier received on the wire (43–128 unreserved characters).
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        if !(43..=128).contains(&s.len()) {
            return Err(CoreError::Pkce(
                "code_verifier must be 43 to 128 characters",
            ));
        }
        if !s.bytes().all(is_unreserved) {
            return Err(CoreError::Pkce(
                "code_verifier has characters outside [A-Za-z0-9-._~]",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    pub fn challenge(&self) -> PkceChallenge {
        PkceChallenge(URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl std::fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PkceVerifier(<redacted>)")
    }
}

impl Drop for PkceVerifier {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The public half: `BASE64URL(SHA256(verifier))`, always 43 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkceChallenge(String);

impl PkceChallenge {
    /// Parses `code_challenge` + `code_challenge_method` from an authorization request. A missing
    /// method defaults to `plain` in RFC 7636, so it is refused like `plain` itself.
    pub fn parse(challenge: &str, method: Option<&str>) -> Result<Self, CoreError> {
        match method {
            Some("S256") => {}
            Some("plain") => {
                return Err(CoreError::Pkce(
                    "code_challenge_method plain is not allowed; use S256",
                ));
            }
            None => {
                return Err(CoreError::Pkce(
                    "code_challenge_method is required and must be S256",
                ));
            }
            Some(_) => {
                return Err(CoreError::Pkce(
                    "unsupported code_challenge_method; use S256",
                ));
            }
        }
        if challenge.len() != 43 || !challenge.bytes().all(is_unreserved) {
            return Err(CoreError::Pkce(
                "code_challenge must be 43 base64url characters",
            ));
        }
        Ok(Self(challenge.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// AS-07: constant-time check of a verifier against this challenge.
    pub fn verify(&self, verifier: &PkceVerifier) -> bool {
        verifier
            .challenge()
            .0
            .as_bytes()
            .ct_eq(self.0.as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = PkceVerifier::parse("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").expect("valid");
        assert_eq!(
            v.challenge().as_str(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let c = PkceChallenge::parse("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", Some("S256"))
            .expect("valid");
        assert!(c.verify(&v));
        assert!(!c.verify(&PkceVerifier::generate()));
    }

    #[test]
    fn as06_plain_and_missing_method_refused() {
        let ch = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(PkceChallenge::parse(ch, Some("plain")).is_err());
        assert!(PkceChallenge::parse(ch, None).is_err());
        assert!(PkceChallenge::parse(ch, Some("s256")).is_err());
        assert!(PkceChallenge::parse("short", Some("S256")).is_err());
        assert!(PkceVerifier::parse("too-short").is_err());
        assert!(PkceVerifier::parse(&"a".repeat(129)).is_err());
        assert!(PkceVerifier::parse(&format!("{}+", "a".repeat(43))).is_err());
    }

    #[test]
    fn generated_verifiers_are_valid_and_distinct() {
        let a = PkceVerifier::generate();
        let b = PkceVerifier::generate();
        assert_eq!(a.secret().len(), 43);
        assert!(PkceVerifier::parse(a.secret()).is_ok());
        assert_ne!(a.secret(), b.secret());
        assert!(!format!("{a:?}").contains(a.secret()));
    }
}
