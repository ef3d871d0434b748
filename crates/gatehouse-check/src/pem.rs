//! A public JWK as the PEM a confused verifier would use as its HMAC secret (ALG-CONFUSION):
//! SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) for EC P-256/P-384 (RFC 5480) and RSA (RFC 8017).
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn integer(mut n: &[u8]) -> Vec<u8> {
    while n.len() > 1 && n[0] == 0 {
        n = &n[1..];
    }
    let mut v = Vec::with_capacity(n.len() + 1);
    if n.first().is_some_and(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(n);
    tlv(0x02, &v)
}

fn field(k: &Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(k[name].as_str()?).ok()
}

/// The SPKI DER of a public EC or RSA JWK.
fn spki(k: &Value) -> Option<Vec<u8>> {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let (algorithm, key) = match k["kty"].as_str()? {
        "EC" => {
            let curve = match k["crv"].as_str()? {
                "P-256" => P256,
                "P-384" => P384,
                _ => return None,
            };
            let mut point = vec![0x04];
            point.extend(field(k, "x")?);
            point.extend(field(k, "y")?);
            ([EC_PUBLIC_KEY, curve].concat(), point)
        }
        "RSA" => {
            let body = [integer(&field(k, "n")?), integer(&field(k, "e")?)].concat();
            (RSA.to_vec(), tlv(0x30, &body))
        }
        _ => return None,
    };
    let mut bits = vec![0u8];
    bits.extend(key);
    Some(tlv(
        0x30,
        &[tlv(0x30, &algorithm), tlv(0x03, &bits)].concat(),
    ))
}

/// `-----BEGIN PUBLIC KEY-----` PEM, 64 characters a line, with the final newline.
pub(crate) fn public_key_pem(k: &Value) -> Option<String> {
    let b64 = STANDARD.encode(spki(k)?);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).ok()?);
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EC key's PEM parses back as the same public key (aws-lc-rs reads SPKI).
    #[test]
    fn ec_pem_is_the_keys_spki() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("pair");
        let point = pair.public_key().as_ref().to_vec();
        let (x, y) = point[1..].split_at(32);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
        let der = spki(&jwk).expect("spki");
        let expected = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            pair.public_key(),
        )
        .expect("der");
        assert_eq!(der, expected.as_ref());
        assert!(
            public_key_pem(&jwk)
                .expect("pem")
                .starts_with("-----BEGIN PUBLIC KEY-----\nMFkw")
        );
    }
}
