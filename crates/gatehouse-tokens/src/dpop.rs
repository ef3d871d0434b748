//! DPoP proofs (RFC 9449), checked by the authorization server's token endpoint and by guards.
//!
//! A proof is a JWS the client signs with the key its tokens are bound to: typed `dpop+jwt`, the
//! public key in the header (`jwk`, never a private part), asymmetric algorithms only, no
//! `crit`, with `jti`, `htm`, `htu` (compared without query and fragment, scheme and host
//! lower-cased, default port dropped), a recent `iat` and, at a resource, `ath` (the hash of the
//! access token it comes with). Single use is the caller's: it holds the replay cache.
use crate::jwt::{ASYMMETRIC_ALGORITHMS, key_algorithms};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// What metadata advertises (`dpop_signing_alg_values_supported`) and challenges name (`algs`).
pub const DPOP_ALGS: [&str; 9] = [
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// A proof older than this (or this much in the future, for clocks) is refused.
pub const PROOF_WINDOW_SECS: i64 = 60;

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url: what `cnf.jkt` names.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub nonce: Option<String>,
}

impl Proof {
    /// The replay-cache key: a proof is single use per key.
    pub fn replay_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.jkt.as_bytes());
        h.update(b"\n");
        h.update(self.jti.as_bytes());
        format!("dpop:{}", hex(&h.finalize()))
    }

    /// Until when the replay cache must remember it.
    pub fn remember_until(&self) -> i64 {
        self.iat + PROOF_WINDOW_SECS + 5
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// What the proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub method: &'a str,
    /// The URL the request was sent to, as the client knows it.
    pub url: &'a str,
    pub now: i64,
    /// At a resource: the access token the proof must name (`ath`).
    pub access_token: Option<&'a str>,
}

/// Why a proof was refused (`invalid_dpop_proof`); the text is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DpopError(pub String);

fn bad(m: impl Into<String>) -> DpopError {
    DpopError(m.into())
}

/// `htu`/request URL in comparable form: no query or fragment, scheme and host lower-case,
/// default port dropped, empty path as `/`.
pub fn normalize_htu(u: &str) -> Option<String> {
    let mut url = url::Url::parse(u).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    // `url` already lower-cases scheme and host and drops default ports.
    Some(url.to_string())
}

/// RFC 7638 thumbprint of a public JWK.
pub fn thumbprint(jwk: &Jwk) -> Result<String, DpopError> {
    let canonical = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => {
            let crv = serde_json::to_value(&ec.curve).map_err(|e| bad(e.to_string()))?;
            format!(
                r#"{{"crv":{},"kty":"EC","x":"{}","y":"{}"}}"#,
                crv, ec.x, ec.y
            )
        }
        AlgorithmParameters::RSA(r) => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, r.e, r.n),
        AlgorithmParameters::OctetKeyPair(o) => {
            let crv = serde_json::to_value(&o.curve).map_err(|e| bad(e.to_string()))?;
            format!(r#"{{"crv":{},"kty":"OKP","x":"{}"}}"#, crv, o.x)
        }
        _ => return Err(bad("only EC, RSA and OKP keys can sign proofs")),
    };
    Ok(b64(&Sha256::digest(canonical.as_bytes())))
}

/// `ath`: base64url SHA-256 of the access token.
pub fn ath(access_token: &str) -> String {
    b64(&Sha256::digest(access_token.as_bytes()))
}

/// Verifies a proof's form, signature and claims against `expect` (not its single use).
pub fn verify(proof: &str, expect: &Expect<'_>) -> Result<Proof, DpopError> {
    if proof.len() > 8 * 1024 {
        return Err(bad("DPoP proof too long"));
    }
    let head = proof.split('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| bad("DPoP proof is not a compact JWS"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&raw).map_err(|_| bad("DPoP proof header is not JSON"))?;
    if header.contains_key("crit") {
        return Err(bad("DPoP proof header has critical extensions (crit)"));
    }
    if !header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(bad("DPoP proof typ must be dpop+jwt"));
    }
    let jwk_raw = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("DPoP proof has no jwk"))?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|k| jwk_raw.contains_key(*k))
    {
        return Err(bad("DPoP proof jwk contains a private key"));
    }
    let h = jsonwebtoken::decode_header(proof).map_err(|e| bad(format!("DPoP header: {e}")))?;
    let jwk = h.jwk.ok_or_else(|| bad("DPoP proof has no jwk"))?;
    let algs = key_algorithms(&jwk, &ASYMMETRIC_ALGORITHMS);
    if !algs.contains(&h.alg) {
        return Err(bad(
            "DPoP proof algorithm does not fit its key or is not allowed",
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(format!("DPoP jwk: {e}")))?;
    let mut v = Validation::new(h.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Map<String, Value>>(proof, &key, &v)
        .map_err(|e| bad(format!("DPoP proof signature: {e}")))?
        .claims;
    let text = |n: &str| claims.get(n).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| bad("DPoP proof jti missing"))?;
    if text("htm") != Some(expect.method) {
        return Err(bad("DPoP proof htm does not match the request method"));
    }
    let htu = text("htu").and_then(normalize_htu);
    if htu.is_none() || htu != normalize_htu(expect.url) {
        return Err(bad("DPoP proof htu does not match the request URL"));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("DPoP proof iat missing"))?;
    if iat < expect.now - PROOF_WINDOW_SECS || iat > expect.now + PROOF_WINDOW_SECS {
        return Err(bad("DPoP proof iat is outside the accepted window"));
    }
    if let Some(token) = expect.access_token
        && text("ath") != Some(ath(token).as_str())
    {
        return Err(bad("DPoP proof ath does not match the access token"));
    }
    Ok(Proof {
        jkt: thumbprint(&jwk)?,
        jti: jti.to_owned(),
        iat,
        nonce: text("nonce").map(str::to_owned),
    })
}

/// Proofs seen, in this process, until they leave the window. Bounded: when full, what has
/// expired goes (at most once a second, so a full cache costs no scan per proof); if nothing
/// has, new proofs are refused (fail closed) rather than forgotten. Keys are kept as SHA-256
/// digests (40 bytes an entry with its deadline): the cap below is about 20 MiB at most, and
/// only callers with valid bound tokens add to it (the guard records a proof after its token).
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<ReplaySet>,
}

#[derive(Debug, Default)]
struct ReplaySet {
    until: HashMap<[u8; 32], i64>,
    pruned_at: i64,
}

/// About 7,500 proofs a second for the 65 s each is remembered.
const REPLAY_MAX: usize = 500_000;

impl ReplayCache {
    /// True the first time `key` is seen before `until`; false for a replay (or a full cache).
    pub fn first_use(&self, key: &str, until: i64, now: i64) -> bool {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if m.until.get(&digest).is_some_and(|u| *u > now) {
            return false;
        }
        if m.until.len() >= REPLAY_MAX {
            if m.pruned_at < now {
                m.until.retain(|_, u| *u > now);
                m.pruned_at = now;
            }
            if m.until.len() >= REPLAY_MAX {
                return false;
            }
        }
        m.until.insert(digest, until);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_compares_without_query_fragment_case_or_default_port() {
        assert_eq!(
            normalize_htu("HTTPS://Example.COM:443/mcp?x=1#f"),
            normalize_htu("https://example.com/mcp")
        );
        assert_ne!(
            normalize_htu("https://example.com/mcp/"),
            normalize_htu("https://example.com/mcp")
        );
        assert_ne!(
            normalize_htu("https://example.com:8443/mcp"),
            normalize_htu("https://example.com/mcp")
        );
        assert_eq!(normalize_htu("urn:x"), None);
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1's RSA key and thumbprint.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        }))
        .expect("jwk");
        assert_eq!(
            thumbprint(&jwk).expect("thumbprint"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn a_full_replay_cache_fails_closed_then_makes_room_as_proofs_expire() {
        let c = ReplayCache::default();
        for i in 0..REPLAY_MAX {
            assert!(c.first_use(&i.to_string(), 10, 0));
        }
        assert!(
            !c.first_use("one more", 10, 0),
            "full, nothing expired: refused"
        );
        assert!(!c.first_use("one more", 10, 5));
        assert!(c.first_use("one more", 20, 11), "expired ones pruned");
        assert!(!c.first_use("one more", 20, 12), "and still single use");
    }

    #[test]
    fn replays_are_refused_until_they_expire() {
        let c = ReplayCache::default();
        assert!(c.first_use("a", 100, 0));
        assert!(!c.first_use("a", 100, 50));
        assert!(c.first_use("a", 200, 100), "expired: a new window");
        assert!(c.first_use("b", 100, 0));
    }
}

/// Server-provided nonces (RFC 9449 §8 at the token endpoint, §9 at a resource): a proof must
/// carry one this server issued lately, so proofs cannot be made ahead of time. Stateless: a
/// nonce is a time step and an HMAC of it under a secret every replica shares; it is good in
/// its step and the next (one to two minutes), and it is the same for every client in a step,
/// so issuing one costs nothing and needs no store.
#[derive(Clone)]
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces(..)")
    }
}

/// The length of a nonce's time step.
pub const NONCE_STEP_SECS: i64 = 60;

impl Nonces {
    /// Nonces under `secret` (at least 16 bytes; replicas must share it).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
        }
    }

    /// Nonces under a secret of this process only (one replica).
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut secret);
        Self::new(&secret)
    }

    /// The nonce for the current step.
    pub fn issue(&self, now: i64) -> String {
        let step = now.div_euclid(NONCE_STEP_SECS).to_be_bytes();
        let tag = aws_lc_rs::hmac::sign(&self.key, &step);
        let mut raw = step.to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        b64(&raw)
    }

    /// Whether `nonce` was issued in this step or the one before (MAC checked in constant time).
    pub fn valid(&self, nonce: &str, now: i64) -> bool {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 24 {
            return false;
        }
        let mut step = [0u8; 8];
        step.copy_from_slice(&raw[..8]);
        let current = now.div_euclid(NONCE_STEP_SECS);
        if !(current - 1..=current).contains(&i64::from_be_bytes(step)) {
            return false;
        }
        let tag = aws_lc_rs::hmac::sign(&self.key, &step);
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag.as_ref()[..16], &raw[8..]).is_ok()
    }
}

#[cfg(test)]
mod nonce_tests {
    use super::*;

    #[test]
    fn nonces_live_two_steps_under_one_secret() {
        let n = Nonces::new(b"a secret shared by every replica");
        let t = 1_800_000_000;
        let nonce = n.issue(t);
        assert!(n.valid(&nonce, t));
        assert!(n.valid(&nonce, t + NONCE_STEP_SECS));
        assert!(!n.valid(&nonce, t + 2 * NONCE_STEP_SECS), "expired");
        assert!(!n.valid(&nonce, t - NONCE_STEP_SECS), "from the future");
        assert_eq!(
            Nonces::new(b"a secret shared by every replica").issue(t),
            nonce,
            "replicas agree"
        );
        assert!(!Nonces::new(b"another secret, another server").valid(&nonce, t));
        assert!(!Nonces::random().valid(&nonce, t));
        let mut forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&nonce)
            .expect("b64");
        forged[23] ^= 1;
        assert!(!n.valid(&b64(&forged), t));
        assert!(!n.valid("", t) && !n.valid("not base64!", t));
    }
}
