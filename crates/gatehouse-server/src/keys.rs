//! Signing keys: ES256, stored in the store, rotated by command; the JWKS keeps retired keys until
//! every token they signed has expired.
use crate::OAuthError;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse_core::Clock;
use gatehouse_store::{KeyRecord, Store};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use std::sync::{Arc, RwLock};

#[derive(Clone)]
struct Loaded {
    kid: String,
    /// Parsed once: jsonwebtoken's `encode` parses and checks the PKCS#8 key on every call,
    /// which was half the cost of signing a token.
    signer: Arc<EcdsaKeyPair>,
    decoding: DecodingKey,
    jwk: Jwk,
    retired_at: Option<i64>,
}

/// The server's signing keys.
pub struct KeyManager {
    store: Store,
    clock: Arc<dyn Clock>,
    access_ttl: i64,
    kek: Option<KeyEncryptionKey>,
    keys: RwLock<Vec<Loaded>>,
}

/// A key-encryption key: signing keys are stored AES-256-GCM-encrypted under it (with the kid as
/// associated data, so a ciphertext cannot be moved to another row). 32 bytes; never printed.
#[derive(Clone)]
pub struct KeyEncryptionKey([u8; 32]);

impl KeyEncryptionKey {
    /// From base64 (standard or url-safe) of exactly 32 random bytes.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let raw = STANDARD
            .decode(s.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim()))
            .map_err(|_| "the key-encryption key is not base64".to_owned())?;
        <[u8; 32]>::try_from(raw.as_slice())
            .map(Self)
            .map_err(|_| "the key-encryption key must be 32 bytes".to_owned())
    }

    fn key(&self) -> Result<aws_lc_rs::aead::LessSafeKey, OAuthError> {
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &self.0)
            .map(aws_lc_rs::aead::LessSafeKey::new)
            .map_err(|_| OAuthError::server_error("bad key-encryption key"))
    }

    fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<String, OAuthError> {
        let nonce: [u8; 12] = rand::random();
        let mut buf = plaintext.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(kid.as_bytes()),
                &mut buf,
            )
            .map_err(|_| OAuthError::server_error("key encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED}{}", STANDARD.encode(out)))
    }

    fn open(&self, kid: &str, sealed: &str) -> Result<Vec<u8>, OAuthError> {
        let raw = STANDARD
            .decode(sealed)
            .map_err(|_| OAuthError::server_error(format!("key {kid} is corrupt")))?;
        if raw.len() < 12 + 16 {
            return Err(OAuthError::server_error(format!("key {kid} is corrupt")));
        }
        let (nonce, ct) = raw.split_at(12);
        let mut buf = ct.to_vec();
        let nonce =
            <[u8; 12]>::try_from(nonce).map_err(|_| OAuthError::server_error("bad nonce"))?;
        let plain = self
            .key()?
            .open_in_place(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(kid.as_bytes()),
                &mut buf,
            )
            .map_err(|_| {
                OAuthError::server_error(format!(
                    "key {kid} cannot be decrypted with this key-encryption key"
                ))
            })?;
        Ok(plain.to_vec())
    }
}

impl KeyEncryptionKey {
    /// Seals a secret other than a signing key (e.g. a user's upstream tokens), bound to
    /// `label` (associated data: the row it belongs to).
    pub fn seal_secret(&self, label: &str, plaintext: &[u8]) -> Result<String, String> {
        self.seal(label, plaintext).map_err(|e| e.description)
    }

    /// Opens what [`Self::seal_secret`] sealed under the same `label`.
    pub fn open_secret(&self, label: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let body = sealed
            .strip_prefix(SEALED)
            .ok_or_else(|| "not a sealed value".to_owned())?;
        self.open(label, body).map_err(|e| e.description)
    }
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(<redacted>)")
    }
}

/// Marks an encrypted private key in the store.
const SEALED: &str = "aes256gcm:";

fn generate(now: i64, kek: Option<&KeyEncryptionKey>) -> Result<KeyRecord, OAuthError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| OAuthError::server_error("key generation failed"))?;
    let enc = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk =
        Jwk::from_encoding_key(&enc, Algorithm::ES256).map_err(OAuthError::server_error)?;
    // RFC 7638 thumbprint as kid: stable and derived from the key itself.
    let kid = jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .map_err(OAuthError::server_error)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::ES256);
    let private_der = match kek {
        Some(k) => k.seal(&kid, pkcs8.as_ref())?,
        None => STANDARD.encode(pkcs8.as_ref()),
    };
    Ok(KeyRecord {
        kid,
        alg: "ES256".into(),
        private_der,
        public_jwk: serde_json::to_string(&jwk).map_err(OAuthError::server_error)?,
        created_at: now,
        retired_at: None,
    })
}

fn load(r: &KeyRecord, kek: Option<&KeyEncryptionKey>) -> Result<Loaded, OAuthError> {
    let der = match (r.private_der.strip_prefix(SEALED), kek) {
        (Some(sealed), Some(k)) => k.open(&r.kid, sealed)?,
        (Some(_), None) => {
            return Err(OAuthError::server_error(format!(
                "signing key {} is encrypted; configure the key-encryption key",
                r.kid
            )));
        }
        (None, _) => STANDARD
            .decode(&r.private_der)
            .map_err(|_| OAuthError::server_error(format!("key {} is corrupt", r.kid)))?,
    };
    let jwk: Jwk = serde_json::from_str(&r.public_jwk).map_err(OAuthError::server_error)?;
    Ok(Loaded {
        kid: r.kid.clone(),
        signer: Arc::new(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| OAuthError::server_error(format!("key {} is corrupt", r.kid)))?,
        ),
        decoding: DecodingKey::from_jwk(&jwk).map_err(OAuthError::server_error)?,
        jwk,
        retired_at: r.retired_at,
    })
}

impl KeyManager {
    pub async fn load(
        store: Store,
        clock: Arc<dyn Clock>,
        access_ttl: i64,
        kek: Option<KeyEncryptionKey>,
    ) -> Result<Self, OAuthError> {
        let km = Self {
            store,
            clock,
            access_ttl,
            kek,
            keys: RwLock::new(Vec::new()),
        };
        km.reload().await?;
        if km.active_signer().is_none() {
            let rec = generate(km.clock.now_unix(), km.kek.as_ref())?;
            km.store.insert_key(&rec).await?;
            km.reload().await?;
        }
        Ok(km)
    }

    /// Re-reads keys from the store (another replica may have rotated).
    pub async fn reload(&self) -> Result<(), OAuthError> {
        let loaded = self
            .store
            .list_keys()
            .await?
            .iter()
            .map(|r| load(r, self.kek.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// The active key's id and signer (the rest of it stays in place).
    fn active_signer(&self) -> Option<(String, Arc<EcdsaKeyPair>)> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|k| k.retired_at.is_none())
            .map(|k| (k.kid.clone(), Arc::clone(&k.signer)))
    }

    /// Makes a new key the signing key; the old one stays in the JWKS until its tokens expire.
    /// Returns the new kid.
    pub async fn rotate(&self) -> Result<String, OAuthError> {
        let now = self.clock.now_unix();
        let rec = generate(now, self.kek.as_ref())?;
        self.store.rotate_key(&rec, now).await?;
        // Keys retired long enough ago that no token of theirs can still be valid.
        self.store.purge_keys(now - self.access_ttl - 3600).await?;
        self.reload().await?;
        Ok(rec.kid)
    }

    /// Signs claims as an RFC 9068 access token with the active key.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<String, OAuthError> {
        let (kid, signer) = self
            .active_signer()
            .ok_or_else(|| OAuthError::server_error("no active signing key"))?;
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(kid);
        // JWS compact serialization (RFC 7515 §7.1); ES256 signatures are r‖s, 64 bytes (RFC 7518 §3.4).
        let header = serde_json::to_vec(&h).map_err(OAuthError::server_error)?;
        let payload = serde_json::to_vec(claims).map_err(OAuthError::server_error)?;
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let sig = signer
            .sign(&SystemRandom::new(), jws.as_bytes())
            .map_err(|_| OAuthError::server_error("signing failed"))?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut jws);
        Ok(jws)
    }

    /// Verifies a token this server signed (signature and `exp`); for revocation/introspection.
    pub(crate) fn verify(&self, token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::ES256 {
            return None;
        }
        let kid = header.kid?;
        let key = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.decoding.clone())?;
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let claims =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .ok()?
                .claims;
        let exp = claims.get("exp")?.as_i64()?;
        (exp > self.clock.now_unix()).then_some(claims)
    }

    /// The published key set: the active key and retired keys whose tokens may still be valid.
    pub fn jwks(&self) -> serde_json::Value {
        let now = self.clock.now_unix();
        let keys: Vec<_> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|k| k.retired_at.is_none_or(|r| r + self.access_ttl + 60 > now))
            .map(|k| serde_json::to_value(&k.jwk).unwrap_or_default())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// (kid, retired?) of every stored key, newest first.
    pub fn list(&self) -> Vec<(String, bool)> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|k| (k.kid.clone(), k.retired_at.is_some()))
            .collect()
    }
}
