//! Secret strings: redacted in `Debug`, compared in constant time, wiped on drop.
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// A secret such as a bearer token, API key or client secret. Deliberately not `Display`; the value
/// is reachable only through [`SecretString::expose`], so every use of it is greppable.
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with another secret value.
    pub fn ct_eq(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Clone for SecretString {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretString::new("hunter2-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(s.ct_eq("hunter2-secret"));
        assert!(!s.ct_eq("hunter2-secreT"));
        assert!(!s.ct_eq("hunter2"));
    }
}

/// 256 random bits, base64url: codes, refresh tokens, client secrets, session ids.
pub fn random_token() -> String {
    use base64::Engine as _;
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// 128 random bits, base64url: identifiers that need not be secret (MCP session ids).
pub fn random_id() -> String {
    use base64::Engine as _;
    let b: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Lower-case hex SHA-256: how secrets are stored and looked up.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}

/// Lower-case hex of `bytes` (how hashes of secrets are stored and looked up). On the token
/// endpoint's path, so one allocation rather than a `format!` per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_matches_format() {
        let bytes: Vec<u8> = (0..=255).collect();
        let by_format: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&bytes), by_format);
        assert_eq!(super::hex(&[]), "");
    }
}
