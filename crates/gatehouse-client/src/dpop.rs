//! DPoP (RFC 9449, MCP extension SEP-1932): tokens bound to a key the client holds, so a stolen
//! token is useless without it. Used when the authorization server offers ES256 DPoP.
use crate::ClientError;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use sha2::{Digest, Sha256};

/// A P-256 key for DPoP proofs. The PKCS#8 form is kept with the tokens it is bound to.
pub struct DpopKey {
    pkcs8: Vec<u8>,
    key: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DpopKey(..)")
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl DpopKey {
    pub fn generate() -> Result<Self, ClientError> {
        let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| ClientError::Authorization("cannot create a DPoP key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, ClientError> {
        let key = EncodingKey::from_ec_der(pkcs8);
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .map_err(|e| ClientError::Authorization(format!("DPoP key: {e}")))?;
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            key,
            jwk,
        })
    }

    pub fn to_b64(&self) -> String {
        b64(&self.pkcs8)
    }

    pub fn from_b64(s: &str) -> Result<Self, ClientError> {
        let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| ClientError::Cache(format!("DPoP key: {e}")))?;
        Self::from_pkcs8(&der)
    }

    /// A proof for one request (RFC 9449 §4.2): `htu` without query or fragment; `ath` binds it
    /// to the access token on resource requests; `nonce` when the server demands one.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut u = url::Url::parse(htu)
            .map_err(|e| ClientError::Authorization(format!("DPoP htu: {e}")))?;
        u.set_query(None);
        u.set_fragment(None);
        let mut jti = [0u8; 16];
        rand::fill(&mut jti);
        let mut claims = serde_json::json!({
            "jti": b64(&jti),
            "htm": htm,
            "htu": u.as_str(),
            "iat": crate::tokens::now(),
        });
        if let Some(t) = access_token {
            claims["ath"] = b64(&Sha256::digest(t.as_bytes())).into();
        }
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(self.jwk.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| ClientError::Authorization(format!("DPoP proof: {e}")))
    }
}
