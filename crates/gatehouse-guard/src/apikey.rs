//! Static API keys for teams: random 256-bit secrets shown once, stored only as SHA-256 hashes
//! (a slow hash adds nothing for a key with that much entropy), compared in constant time.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::ScopeSet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so a key is recognised without trying the token validator and
/// secret scanners can find leaked keys.
pub const API_KEY_PREFIX: &str = "ghk_";

/// A configured key: its name, hash, scopes and expiry. Never the key itself.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: ScopeSet,
    /// Unix seconds; `None` never expires (discouraged; the config loader warns).
    pub expires_at: Option<i64>,
    /// The subject the key acts as; defaults to `apikey:<name>`.
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("API key hash must be \"sha256:\" followed by 64 hex digits")]
    BadHash,
}

impl ApiKey {
    /// Parses `sha256:<64 hex digits>`.
    pub fn parse_hash(s: &str) -> Result<[u8; 32], ApiKeyError> {
        let h = s.strip_prefix("sha256:").ok_or(ApiKeyError::BadHash)?;
        if h.len() != 64 {
            return Err(ApiKeyError::BadHash);
        }
        let mut out = [0u8; 32];
        for (i, chunk) in h.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).map_err(|_| ApiKeyError::BadHash)?;
            out[i] = u8::from_str_radix(s, 16).map_err(|_| ApiKeyError::BadHash)?;
        }
        Ok(out)
    }

    pub fn hash_of(secret: &str) -> [u8; 32] {
        Sha256::digest(secret.as_bytes()).into()
    }

    pub fn format_hash(hash: &[u8; 32]) -> String {
        format!("sha256:{}", gatehouse_core::hex(hash))
    }

    pub fn subject(&self) -> String {
        self.subject
            .clone()
            .unwrap_or_else(|| format!("apikey:{}", self.name))
    }
}

/// A new key and its storable hash.
pub fn generate_api_key() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = ApiKey::format_hash(&ApiKey::hash_of(&key));
    (key, hash)
}

/// Finds the key whose hash matches. Every configured key is compared (constant time each), so
/// timing does not reveal which key nearly matched.
pub(crate) fn find<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a ApiKey> {
    let h = ApiKey::hash_of(presented);
    let mut found = None;
    for k in keys {
        if bool::from(k.hash.ct_eq(&h)) && found.is_none() {
            found = Some(k);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_find() {
        let (key, hash) = generate_api_key();
        assert!(key.starts_with(API_KEY_PREFIX));
        assert_eq!(key.len(), 4 + 43);
        let parsed = ApiKey::parse_hash(&hash).expect("own hash parses");
        let k = ApiKey {
            name: "ci".into(),
            hash: parsed,
            scopes: ScopeSet::new(),
            expires_at: None,
            subject: None,
        };
        assert_eq!(
            find(std::slice::from_ref(&k), &key).map(|k| k.name.as_str()),
            Some("ci")
        );
        assert!(find(std::slice::from_ref(&k), &format!("{key}x")).is_none());
        assert_eq!(k.subject(), "apikey:ci");
        assert!(ApiKey::parse_hash("sha256:zz").is_err());
        assert!(ApiKey::parse_hash(&hash.replace("sha256:", "md5:")).is_err());
        assert!(!format!("{k:?}").contains(&key));
    }
}
