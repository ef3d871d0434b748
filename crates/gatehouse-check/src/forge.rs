//! Tokens signed by a key the target has never seen: what a server that does not verify
//! signatures, or verifies them with a key the token names itself, would accept.
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

/// The signature family the target expects: its issuer's keys decide (a verifier that pins
/// algorithms would refuse another family before looking at the signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Es256,
    Rs256,
}

impl Family {
    /// From the given token's `alg`, else the issuer's first signing key; ES256 otherwise.
    pub(crate) fn of(token: Option<&str>, jwks: &[Value]) -> Self {
        let alg = token
            .and_then(crate::checks::header_of)
            .and_then(|h| h["alg"].as_str().map(str::to_owned));
        match alg.as_deref() {
            Some(a) if a.starts_with("RS") || a.starts_with("PS") => return Self::Rs256,
            Some(a) if a.starts_with("ES") => return Self::Es256,
            _ => {}
        }
        match jwks.iter().find_map(|k| k["kty"].as_str()) {
            Some("RSA") => Self::Rs256,
            _ => Self::Es256,
        }
    }
}

/// `claims` signed with a fresh key of `family`. `kid` names one of the issuer's keys (a server
/// that picks the key by `kid` looks there); `embed` puts the fresh public key in the `jwk`
/// header instead.
pub(crate) fn foreign_signed(
    claims: &Value,
    family: Family,
    kid: Option<&str>,
    embed: bool,
) -> Option<String> {
    let rng = SystemRandom::new();
    let mut header = json!({"typ": "at+jwt"});
    enum Signer {
        Ec(signature::EcdsaKeyPair),
        Rsa(aws_lc_rs::rsa::KeyPair),
    }
    let (signer, jwk) = match family {
        Family::Es256 => {
            let kp = signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .ok()?;
            // The uncompressed point: 0x04 || x || y.
            let point = kp.public_key().as_ref();
            let (x, y) = point.get(1..33).zip(point.get(33..65))?;
            header["alg"] = "ES256".into();
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y)});
            (Signer::Ec(kp), jwk)
        }
        Family::Rs256 => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).ok()?;
            let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
            header["alg"] = "RS256".into();
            let jwk = json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e)});
            (Signer::Rsa(kp), jwk)
        }
    };
    if embed {
        header["jwk"] = jwk;
    } else if let Some(k) = kid {
        header["kid"] = k.into();
    }
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = match signer {
        Signer::Ec(kp) => kp.sign(&rng, input.as_bytes()).ok()?.as_ref().to_vec(),
        Signer::Rsa(kp) => {
            let mut sig = vec![0; kp.public_modulus_len()];
            kp.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut sig,
            )
            .ok()?;
            sig
        }
    };
    Some(format!("{input}.{}", B64.encode(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(t: &str) -> Value {
        crate::checks::header_of(t).unwrap_or_default()
    }

    #[test]
    fn the_family_follows_the_token_then_the_keys() {
        let rsa = [json!({"kty": "RSA"})];
        assert_eq!(Family::of(None, &rsa), Family::Rs256);
        assert_eq!(Family::of(None, &[]), Family::Es256);
        let es = format!("{}.e30.x", B64.encode(br#"{"alg":"ES384"}"#));
        assert_eq!(Family::of(Some(&es), &rsa), Family::Es256);
    }

    #[test]
    fn forged_tokens_name_the_key_as_asked() {
        let c = json!({"sub": "x"});
        for family in [Family::Es256, Family::Rs256] {
            let t = foreign_signed(&c, family, Some("k1"), false);
            let h = header_of(t.as_deref().unwrap_or_default());
            assert_eq!(h["kid"], "k1");
            assert!(h.get("jwk").is_none());
            let t = foreign_signed(&c, family, Some("k1"), true);
            let h = header_of(t.as_deref().unwrap_or_default());
            assert!(h.get("kid").is_none());
            assert!(h["jwk"]["kty"].is_string(), "{h}");
        }
    }
}
