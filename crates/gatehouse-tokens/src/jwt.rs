use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gatehouse_core::{AudiencePolicy, Clock, Issuer, Resource};
use gatehouse_fetch::Fetcher;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::{Principal, PrincipalSource, TokenError, discover};

/// An issuer whose tokens this server accepts (RS-24: only listed issuers).
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: Issuer,
    /// Where its keys are; discovered from its metadata when not given.
    pub jwks_uri: Option<String>,
}

/// What a JWT must satisfy.
#[derive(Debug, Clone)]
pub struct JwtValidatorConfig {
    pub audience: Resource,
    pub audience_policy: AudiencePolicy,
    pub issuers: Vec<TrustedIssuer>,
    /// Asymmetric algorithms only; HMAC is never accepted from a JWKS.
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: i64,
    /// Accept only `typ: at+jwt` (RFC 9068). Off by default because Keycloak, Auth0, Okta and
    /// Entra issue `typ: JWT`; other types (ID-JAGs, logout tokens, DPoP proofs) are always refused.
    pub strict_typ: bool,
    /// How long fetched keys are used before they are fetched again (unless the JWKS response's
    /// `Cache-Control: max-age` says otherwise, clamped to 1 min … 1 h).
    pub jwks_ttl: Duration,
    /// At most one refetch forced by an unknown `kid` per this interval.
    pub jwks_min_refetch: Duration,
    /// Grants revoked at the issuers (Gatehouse's own authorization server names the grant in
    /// `gid`): their tokens are refused before they expire.
    pub revocations: Option<std::sync::Arc<crate::Revocations>>,
}

impl JwtValidatorConfig {
    pub fn new(audience: Resource, issuers: Vec<TrustedIssuer>) -> Self {
        Self {
            audience,
            audience_policy: AudiencePolicy::Exact,
            issuers,
            algorithms: ASYMMETRIC_ALGORITHMS.to_vec(),
            leeway_secs: 30,
            strict_typ: false,
            jwks_ttl: Duration::from_secs(600),
            jwks_min_refetch: Duration::from_secs(30),
            revocations: None,
        }
    }
}

#[derive(Clone)]
struct CachedKey {
    kid: Option<String>,
    key: DecodingKey,
    algs: Vec<Algorithm>,
}

#[derive(Default)]
struct KeyState {
    jwks_uri: Option<String>,
    keys: Vec<CachedKey>,
    fetched_at: Option<Instant>,
    ttl: Duration,
    last_forced: Option<Instant>,
}

struct IssuerKeys {
    trusted: TrustedIssuer,
    state: RwLock<KeyState>,
    /// Single-flight: one JWKS fetch per issuer at a time.
    refresh: tokio::sync::Mutex<()>,
}

/// After a signing-key change, how long an unknown kid may force a JWKS fetch every time.
const KEY_CHANGE_WINDOW_SECS: i64 = 10;

/// Keys stay usable this long past their TTL when the JWKS cannot be refetched.
const STALE_GRACE: Duration = Duration::from_secs(600);

/// Validates JWT access tokens against the JWKS of trusted issuers.
pub struct JwtValidator {
    cfg: JwtValidatorConfig,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    issuers: HashMap<String, Arc<IssuerKeys>>,
    /// Signatures already verified, by the SHA-256 of the token: the claims are checked again
    /// on every use (expiry, audience), only the signature check is skipped. Emptied whenever
    /// keys are fetched (a key that went away takes its tokens with it); entries live at most
    /// [`VERIFIED_TTL`].
    verified: std::sync::Mutex<HashMap<[u8; 32], (Instant, Verified)>>,
}

/// The issuer and claims of a token whose signature was checked.
type Verified = Arc<(String, Map<String, Value>)>;

/// How long a verified signature is trusted without checking it again.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Tokens remembered at most (then expired ones go, or all).
const VERIFIED_MAX: usize = 10_000;

/// The algorithms a JWK may verify: fixed by its key type and curve (and its `alg`, when given),
/// intersected with the allow-list. Symmetric keys get none.
pub(crate) fn key_algorithms(jwk: &Jwk, allow: &[Algorithm]) -> Vec<Algorithm> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Vec::new();
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => vec![],
    };
    let mut algs = match jwk.common.key_algorithm {
        None => family,
        Some(ka) => match ka.to_string().parse::<Algorithm>() {
            Ok(a) if family.contains(&a) => vec![a],
            _ => vec![],
        },
    };
    algs.retain(|a| allow.contains(a));
    algs
}

fn parse_jwks(body: &[u8], allow: &[Algorithm]) -> Result<Vec<CachedKey>, TokenError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| TokenError::Unavailable(format!("JWKS is not a key set: {e}")))?;
    // Keys this version cannot use are skipped one by one rather than failing the whole set.
    Ok(set
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| {
            let algs = key_algorithms(&jwk, allow);
            if algs.is_empty() {
                return None;
            }
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(CachedKey {
                kid: jwk.common.key_id.clone(),
                key,
                algs,
            })
        })
        .collect())
}

/// Asymmetric algorithms accepted from a JWKS by default.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A parsed key set (a client's `jwks`, say) with the same rules as the validator: each key's
/// algorithms come from the key itself, symmetric keys are never used.
pub struct KeySet {
    keys: Vec<CachedKey>,
}

impl KeySet {
    pub fn parse(body: &[u8]) -> Result<Self, TokenError> {
        Ok(Self {
            keys: parse_jwks(body, &ASYMMETRIC_ALGORITHMS)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this `kid` is among them.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Verifies a compact JWS signed by one of these keys and returns its claims. Only the
    /// signature is checked here; the caller checks the claims.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Malformed(format!("bad JOSE header: {e}")))?;
        if !ASYMMETRIC_ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates: Vec<&CachedKey> = self
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .filter(|k| k.algs.contains(&header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        verify_with(token, header.alg, candidates)
    }
}

/// RFC 9449 §7.1 / RFC 8705: a key-bound token (`cnf`) is no bearer token. It passes only with
/// a verified DPoP proof by the key it names (`cnf.jkt`); a token with no binding does not pass
/// with a proof either (its presenter would claim a binding nobody made).
pub(crate) fn check_binding(cnf: Option<&Value>, dpop_jkt: Option<&str>) -> Result<(), TokenError> {
    match (cnf, dpop_jkt) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(TokenError::Unbound),
        (None, Some(_)) => Err(TokenError::Binding(
            "the token is not bound to a DPoP key; send it as Bearer".into(),
        )),
        (Some(c), Some(jkt)) => {
            if c.get("jkt").and_then(Value::as_str) == Some(jkt) {
                Ok(())
            } else {
                Err(TokenError::Binding(
                    "the DPoP proof's key is not the key the token is bound to".into(),
                ))
            }
        }
    }
}

/// Tries each candidate key (signature only; claims are the caller's). A bad signature moves on
/// to the next key; anything else about the token is malformed.
fn verify_with<'a>(
    token: &str,
    alg: Algorithm,
    keys: impl IntoIterator<Item = &'a CachedKey>,
) -> Result<Map<String, Value>, TokenError> {
    refuse_critical_extensions(token)?;
    for k in keys {
        let mut v = Validation::new(alg);
        v.algorithms = k.algs.clone();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &v) {
            Ok(d) => return Ok(d.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {}
            Err(e) => return Err(TokenError::Malformed(e.to_string())),
        }
    }
    Err(TokenError::Signature)
}

/// RFC 7515 §4.1.11: a JWS whose `crit` header names extensions must be rejected unless they
/// are understood; this code understands none, so any `crit` is refused.
fn refuse_critical_extensions(token: &str) -> Result<(), TokenError> {
    use base64::Engine as _;
    let head = token.split('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenError::Malformed("bad JOSE header encoding".into()))?;
    let header: Map<String, Value> = serde_json::from_slice(&raw)
        .map_err(|_| TokenError::Malformed("JOSE header is not a JSON object".into()))?;
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "JOSE header has critical extensions (crit) this server does not understand".into(),
        ));
    }
    Ok(())
}

impl JwtValidator {
    pub fn new(cfg: JwtValidatorConfig, fetcher: Fetcher, clock: Arc<dyn Clock>) -> Self {
        let issuers = cfg
            .issuers
            .iter()
            .map(|t| {
                (
                    t.issuer.as_str().to_owned(),
                    Arc::new(IssuerKeys {
                        trusted: t.clone(),
                        state: RwLock::new(KeyState::default()),
                        refresh: tokio::sync::Mutex::new(()),
                    }),
                )
            })
            .collect();
        Self {
            cfg,
            fetcher,
            clock,
            issuers,
            verified: std::sync::Mutex::default(),
        }
    }

    pub fn config(&self) -> &JwtValidatorConfig {
        &self.cfg
    }

    /// Fetches every issuer's keys now, so the first request does not pay for it and a
    /// misconfiguration shows at start-up.
    pub async fn prefetch(&self) -> Result<(), TokenError> {
        for ik in self.issuers.values() {
            self.refresh(ik, false, None).await?;
        }
        Ok(())
    }

    /// Readiness (issue 18): per trusted issuer, whether its keys are at hand — cached (even
    /// if due for a refetch), else fetched now, at most once per `jwks_min_refetch` (a flood of
    /// unauthenticated `/readyz` cannot make this server hammer an issuer that is down).
    pub async fn keys_ready(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for (iss, ik) in &self.issuers {
            let cached = !ik
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys
                .is_empty();
            let r = if cached {
                Ok(())
            } else {
                self.refresh(ik, true, None).await.map_err(|e| match e {
                    TokenError::UnknownKey => {
                        "keys not available (fetched lately; retried soon)".into()
                    }
                    e => format!("keys not available: {e}"),
                })
            };
            out.push((iss.clone(), r));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn lookup(ik: &IssuerKeys, kid: Option<&str>, alg: Algorithm) -> Vec<CachedKey> {
        let st = ik.state.read().unwrap_or_else(|p| p.into_inner());
        st.keys
            .iter()
            .filter(|k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .filter(|k| k.algs.contains(&alg))
            .cloned()
            .collect()
    }

    fn is_fresh(ik: &IssuerKeys) -> bool {
        let st = ik.state.read().unwrap_or_else(|p| p.into_inner());
        st.fetched_at.is_some_and(|t| t.elapsed() < st.ttl)
    }

    /// Fetches the issuer's JWKS. `seen` is the fetch time the caller observed; if another task
    /// refreshed since, nothing is fetched again.
    async fn refresh(
        &self,
        ik: &IssuerKeys,
        forced: bool,
        seen: Option<Option<Instant>>,
    ) -> Result<(), TokenError> {
        let _single = ik.refresh.lock().await;
        let (jwks_uri, fetched_at) = {
            let st = ik.state.read().unwrap_or_else(|p| p.into_inner());
            (st.jwks_uri.clone(), st.fetched_at)
        };
        if let Some(seen) = seen
            && fetched_at != seen
        {
            return Ok(());
        }
        if forced {
            // Right after a key rotation (on any replica) a new kid is expected: fetch at once,
            // even if a replica that had not reloaded yet answered the last fetch.
            let rotated = self.cfg.revocations.as_ref().is_some_and(|r| {
                r.keys_changed_within(self.clock.now_unix(), KEY_CHANGE_WINDOW_SECS)
            });
            let mut st = ik.state.write().unwrap_or_else(|p| p.into_inner());
            if !rotated
                && st
                    .last_forced
                    .is_some_and(|t| t.elapsed() < self.cfg.jwks_min_refetch)
            {
                return Err(TokenError::UnknownKey);
            }
            st.last_forced = Some(Instant::now());
        }
        let result = async {
            let uri = match jwks_uri.or_else(|| ik.trusted.jwks_uri.clone()) {
                Some(u) => u,
                None => discover(&self.fetcher, &ik.trusted.issuer)
                    .await?
                    .jwks_uri
                    .ok_or_else(|| {
                        TokenError::Unavailable("issuer metadata has no jwks_uri".into())
                    })?,
            };
            let fetched = self
                .fetcher
                .get(&uri)
                .await
                .map_err(|e| TokenError::Unavailable(e.to_string()))?;
            let keys = parse_jwks(&fetched.body, &self.cfg.algorithms)?;
            let ttl = fetched
                .max_age
                .map(|d| d.clamp(Duration::from_secs(60), Duration::from_secs(3600)))
                .unwrap_or(self.cfg.jwks_ttl);
            Ok::<_, TokenError>((uri, keys, ttl))
        }
        .await;
        let mut st = ik.state.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((uri, keys, ttl)) => {
                tracing::info!(issuer = %ik.trusted.issuer, keys = keys.len(), forced, "fetched JWKS");
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                st.jwks_uri = Some(uri);
                st.keys = keys;
                st.ttl = ttl;
                st.fetched_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %ik.trusted.issuer, error = %e, "JWKS fetch failed");
                let usable = st
                    .fetched_at
                    .is_some_and(|t| t.elapsed() < st.ttl + STALE_GRACE);
                if usable && !st.keys.is_empty() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn keys_for(
        &self,
        ik: &IssuerKeys,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<CachedKey>, TokenError> {
        if !Self::is_fresh(ik) {
            let seen = ik
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .fetched_at;
            self.refresh(ik, false, Some(seen)).await?;
        }
        let found = Self::lookup(ik, kid, alg);
        if !found.is_empty() || kid.is_none() {
            return if found.is_empty() {
                Err(TokenError::UnknownKey)
            } else {
                Ok(found)
            };
        }
        // Unknown kid: the issuer may have rotated its keys.
        let seen = ik
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .fetched_at;
        self.refresh(ik, true, Some(seen)).await?;
        let found = Self::lookup(ik, kid, alg);
        if found.is_empty() {
            Err(TokenError::UnknownKey)
        } else {
            Ok(found)
        }
    }

    /// Validates a compact JWS access token presented as a bearer token.
    pub async fn validate_jwt(&self, token: &str) -> Result<Principal, TokenError> {
        self.validate_jwt_bound(token, None).await
    }

    /// Validates an access token; `dpop_jkt` is the thumbprint of a verified DPoP proof's key
    /// when the token came with one (RFC 9449 §7): the token must then be bound to that key,
    /// and a bound token without one is refused.
    pub async fn validate_jwt_bound(
        &self,
        token: &str,
        dpop_jkt: Option<&str>,
    ) -> Result<Principal, TokenError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let hit = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .filter(|(at, _)| at.elapsed() < VERIFIED_TTL)
            .map(|(_, v)| v.clone());
        if let Some(v) = hit {
            let (issuer, claims) = &*v;
            return self.check_claims(issuer, claims.clone(), dpop_jkt);
        }
        let (issuer, claims) = self.verify_signature(token).await?;
        let principal = self.check_claims(&issuer, claims.clone(), dpop_jkt)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < VERIFIED_TTL);
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (Instant::now(), Arc::new((issuer, claims))));
        Ok(principal)
    }

    /// The header checks and the signature, with the issuer's keys: the issuer and the claims.
    async fn verify_signature(
        &self,
        token: &str,
    ) -> Result<(String, Map<String, Value>), TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Malformed(format!("bad JOSE header: {e}")))?;
        if !self.cfg.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        if let Some(typ) = &header.typ {
            let t = typ.to_ascii_lowercase();
            let ok =
                t == "at+jwt" || t == "application/at+jwt" || (!self.cfg.strict_typ && t == "jwt");
            if !ok {
                return Err(TokenError::Type(typ.clone()));
            }
        }
        // The issuer picks which keys to try; the signature check below is what trusts it.
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| TokenError::Malformed(format!("bad claims: {e}")))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("iss"))?;
        let ik = self
            .issuers
            .get(iss)
            .cloned()
            .ok_or_else(|| TokenError::Issuer(iss.to_owned()))?;
        let keys = self
            .keys_for(&ik, header.kid.as_deref(), header.alg)
            .await?;
        let claims = verify_with(token, header.alg, &keys)?;
        Ok((ik.trusted.issuer.as_str().to_owned(), claims))
    }

    fn check_claims(
        &self,
        issuer: &str,
        claims: Map<String, Value>,
        dpop_jkt: Option<&str>,
    ) -> Result<Principal, TokenError> {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(TokenError::Issuer(
                claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self
                .cfg
                .audience
                .matches_audience(a, self.cfg.audience_policy),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| {
                self.cfg
                    .audience
                    .matches_audience(a, self.cfg.audience_policy)
            }),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        let now = self.clock.now_unix();
        let leeway = self.cfg.leeway_secs;
        let num = |n: &str| {
            claims
                .get(n)
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        };
        let exp = num("exp").ok_or(TokenError::MissingClaim("exp"))?;
        if now > exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = num("nbf")
            && now.saturating_add(leeway) < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(iat) = num("iat")
            && now.saturating_add(leeway) < iat
        {
            return Err(TokenError::NotYetValid);
        }
        check_binding(claims.get("cnf"), dpop_jkt)?;
        if let (Some(r), Some(gid)) = (
            &self.cfg.revocations,
            claims.get("gid").and_then(Value::as_str),
        ) {
            // Fail closed: a list that has not heard from the store lately may miss a
            // revocation another replica made.
            if let Some(secs) = r.stale(now) {
                return Err(TokenError::Unavailable(format!(
                    "revocations not confirmed for {secs} s"
                )));
            }
            if r.is_revoked(issuer, gid) {
                return Err(TokenError::Revoked);
            }
        }
        if let (Some(r), Some(sub)) = (
            &self.cfg.revocations,
            claims.get("sub").and_then(Value::as_str),
        ) && r.subject_revoked(issuer, sub, num("iat"))
        {
            return Err(TokenError::Revoked);
        }
        Principal::from_claims(issuer.to_owned(), claims, PrincipalSource::Jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn t10_symmetric_and_mismatched_keys_get_no_algorithm() {
        let allow = JwtValidatorConfig::new(Resource::parse("https://r/mcp").expect("r"), vec![])
            .algorithms;
        let oct: Jwk =
            serde_json::from_value(json!({"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"h"}))
                .expect("jwk");
        assert!(key_algorithms(&oct, &allow).is_empty());
        let ec: Jwk = serde_json::from_value(json!({
            "kty":"EC","crv":"P-256","kid":"e",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .expect("jwk");
        assert_eq!(key_algorithms(&ec, &allow), vec![Algorithm::ES256]);
        let ec_claims_rs: Jwk = serde_json::from_value(json!({
            "kty":"EC","crv":"P-256","kid":"e","alg":"RS256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .expect("jwk");
        assert!(key_algorithms(&ec_claims_rs, &allow).is_empty());
        let keys = parse_jwks(
            serde_json::to_vec(
                &json!({"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"weird"},
                {"kty":"EC","crv":"P-256","kid":"e","use":"sig",
                 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}),
            )
            .expect("json")
            .as_slice(),
            &allow,
        )
        .expect("parses");
        assert_eq!(keys.len(), 1);
    }
}
