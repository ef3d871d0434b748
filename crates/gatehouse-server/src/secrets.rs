//! Random values, hashes and passwords.
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

// Moved to core, where the gateway shares them; kept here under their old paths.
pub use gatehouse_core::{random_id, random_token, sha256_hex};

/// Constant-time comparison of a presented secret with a stored hash.
pub(crate) fn secret_matches(presented: &str, stored_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    sha256_hex(presented)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Argon2id PHC string of a password.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a PHC string (constant time inside argon2).
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A fixed hash to verify against when the user does not exist, so a wrong user name costs the
/// same time as a wrong password.
pub(crate) fn dummy_hash() -> &'static str {
    static H: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password("not-a-real-password").unwrap_or_default());
    H.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secrets() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("x", "not a phc string"));
        let t = random_token();
        assert_eq!(t.len(), 43);
        assert!(secret_matches(&t, &sha256_hex(&t)));
        assert!(!secret_matches("other", &sha256_hex(&t)));
    }
}
