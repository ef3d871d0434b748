//! Who the client is: lookup (pre-registered, DCR, or a metadata document URL) and client
//! authentication at the token, revocation and introspection endpoints.
use crate::secrets::secret_matches;
use crate::{AuthServer, OAuthError};
use base64::Engine as _;
use gatehouse_store::ClientRecord;
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Credentials presented with a request.
pub(crate) struct Presented {
    pub(crate) client_id: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) basic: bool,
    /// A `private_key_jwt` client assertion (RFC 7523).
    pub(crate) assertion: Option<String>,
}

/// Reads client credentials from HTTP Basic and/or the form (RFC 6749 §2.3.1). Using more than
/// one method is an error.
pub(crate) fn presented(
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Result<Presented, OAuthError> {
    let basic = match headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(v) if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v[6..].trim())
                .map_err(|_| OAuthError::invalid_client("malformed Basic credentials"))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| OAuthError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = raw
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some((dec(id), dec(secret)))
        }
        _ => None,
    };
    let form_id = form.get("client_id").cloned();
    let form_secret = form.get("client_secret").cloned();
    let assertion = match (
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) {
        (None, None) => None,
        (Some(t), Some(a)) if t == JWT_BEARER_ASSERTION => Some(a.clone()),
        _ => {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {JWT_BEARER_ASSERTION}, with a client_assertion"
            )));
        }
    };
    if let Some(a) = assertion {
        if basic.is_some() || form_secret.is_some() {
            return Err(OAuthError::invalid_request(
                "client credentials sent by more than one method",
            ));
        }
        // The client is named by the assertion's subject when client_id is absent.
        let sub = jsonwebtoken::dangerous::insecure_decode_claims::<
            serde_json::Map<String, serde_json::Value>,
        >(&a)
        .ok()
        .and_then(|c| c.get("sub").and_then(|v| v.as_str()).map(str::to_owned));
        return Ok(Presented {
            client_id: form_id.or(sub),
            secret: None,
            basic: false,
            assertion: Some(a),
        });
    }
    match basic {
        Some((id, secret)) => {
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "client credentials sent by more than one method",
                ));
            }
            if form_id.as_deref().is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                ));
            }
            Ok(Presented {
                client_id: Some(id),
                secret: Some(secret),
                basic: true,
                assertion: None,
            })
        }
        None => Ok(Presented {
            client_id: form_id,
            secret: form_secret,
            basic: false,
            assertion: None,
        }),
    }
}

/// How long a stored *public* client's record is reused without reading it again. Public
/// clients are looked up on every token request, and on SQLite that read cost a tenth of the
/// token endpoint. Staleness is harmless for them: they hold no secret, and removing a client
/// revokes its grants in the same transaction, so no code or refresh token it was issued can be
/// redeemed once it is gone (each redemption reads its grant). Confidential clients are always
/// read afresh (a rotated secret or a removed machine client takes effect at once).
pub(crate) const PUBLIC_CLIENT_TTL: Duration = Duration::from_secs(1);
/// Records kept at most; past it, expired ones are dropped (all, if none has expired).
const PUBLIC_CLIENTS_MAX: usize = 4096;

#[derive(Default)]
pub(crate) struct PublicClients(Mutex<HashMap<String, (Instant, ClientRecord)>>);

impl PublicClients {
    fn get(&self, client_id: &str) -> Option<ClientRecord> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(client_id)
            .filter(|(at, _)| at.elapsed() < PUBLIC_CLIENT_TTL)
            .map(|(_, c)| c.clone())
    }

    fn put(&self, c: &ClientRecord) {
        if crate::token::is_confidential(c) || c.secret_hash.is_some() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= PUBLIC_CLIENTS_MAX {
            map.retain(|_, (at, _)| at.elapsed() < PUBLIC_CLIENT_TTL);
            if map.len() >= PUBLIC_CLIENTS_MAX {
                map.clear();
            }
        }
        map.insert(c.client_id.clone(), (Instant::now(), c.clone()));
    }
}

impl AuthServer {
    /// Finds a client by id: stored (pre-registered, DCR), or a metadata document URL fetched
    /// and validated (CIMD).
    pub(crate) async fn find_client(
        &self,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, OAuthError> {
        if self.inner.cfg.cimd_enabled && crate::cimd::looks_like_cimd(client_id) {
            return self.cimd_client(client_id).await.map(Some);
        }
        // A client an administrator disabled is, to everyone else, not there.
        let found = self
            .inner
            .store
            .get_client(client_id)
            .await?
            .filter(|c| !c.disabled);
        if let Some(c) = &found {
            self.inner.public_clients.put(c);
        }
        Ok(found)
    }

    /// [`Self::find_client`] for the token endpoint, where a stored public client may come from
    /// memory (`PUBLIC_CLIENT_TTL`). Authorization requests always read it afresh, so no new
    /// grant is made for a client deleted a moment ago.
    async fn find_client_for_token(
        &self,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, OAuthError> {
        match self.inner.public_clients.get(client_id) {
            Some(c) => Ok(Some(c)),
            None => self.find_client(client_id).await,
        }
    }

    /// Authenticates the client of a token-endpoint style request. Public clients present only
    /// their id; confidential clients must prove their secret (compared in constant time).
    pub(crate) async fn authenticate_client(
        &self,
        p: &Presented,
    ) -> Result<ClientRecord, OAuthError> {
        let fail = |d: &str| {
            let mut e = OAuthError::invalid_client(d.to_owned());
            e.basic_challenge = p.basic;
            e
        };
        let id = p
            .client_id
            .as_deref()
            .ok_or_else(|| fail("client authentication required"))?;
        let client = match self.find_client_for_token(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(fail("unknown client")),
            Err(e)
                if matches!(
                    e.code,
                    gatehouse_core::OAuthErrorCode::ServerError
                        | gatehouse_core::OAuthErrorCode::TemporarilyUnavailable
                ) =>
            {
                return Err(e);
            }
            Err(_) => return Err(fail("client metadata document could not be used")),
        };
        if let Some(a) = &p.assertion {
            if client.auth_method != "private_key_jwt" {
                return Err(fail(
                    "this client does not authenticate with private_key_jwt",
                ));
            }
            self.check_assertion(&client, a).await.map_err(|why| {
                tracing::info!(client_id = %client.client_id, why, "client assertion refused");
                fail(why)
            })?;
            return Ok(client);
        }
        match (&client.secret_hash, &p.secret) {
            (None, None) if client.auth_method == "none" => Ok(client),
            (None, Some(_)) => Err(fail("public clients do not have a secret")),
            (Some(h), Some(s)) if secret_matches(s, h) => {
                let method_ok = match client.auth_method.as_str() {
                    "client_secret_basic" => p.basic,
                    "client_secret_post" => !p.basic,
                    _ => false,
                };
                if method_ok {
                    Ok(client)
                } else {
                    Err(fail(
                        "client authentication method not allowed for this client",
                    ))
                }
            }
            _ => Err(fail("client authentication failed")),
        }
    }
}

impl AuthServer {
    /// The keys a `private_key_jwt` client registered: inline `jwks`, or `jwks_uri` fetched
    /// through the SSRF-safe fetcher.
    async fn client_keys(
        &self,
        client: &ClientRecord,
    ) -> Result<gatehouse_tokens::KeySet, &'static str> {
        let body = if let Some(jwks) = client.metadata.get("jwks") {
            serde_json::to_vec(jwks).map_err(|_| "client jwks unreadable")?
        } else if let Some(uri) = client.metadata.get("jwks_uri").and_then(|v| v.as_str()) {
            self.inner
                .client_fetcher
                .get_capped(uri, 16 * 1024)
                .await
                .map_err(|_| "client jwks_uri could not be fetched")?
                .body
                .to_vec()
        } else {
            return Err("client has no registered keys");
        };
        let keys = gatehouse_tokens::KeySet::parse(&body).map_err(|_| "client jwks unreadable")?;
        if keys.is_empty() {
            Err("client has no usable asymmetric keys")
        } else {
            Ok(keys)
        }
    }

    /// RFC 7523 §3: signed by the client's key, `iss` = `sub` = client_id, `aud` this token
    /// endpoint or issuer, short-lived, `jti` used once.
    async fn check_assertion(
        &self,
        client: &ClientRecord,
        assertion: &str,
    ) -> Result<(), &'static str> {
        let keys = self.client_keys(client).await?;
        let claims = keys
            .verify(assertion)
            .map_err(|_| "client assertion signature invalid")?;
        let s = |k: &str| claims.get(k).and_then(|v| v.as_str());
        if s("iss") != Some(client.client_id.as_str())
            || s("sub") != Some(client.client_id.as_str())
        {
            return Err("client assertion iss and sub must be the client_id");
        }
        let accepted = [
            self.inner.cfg.endpoint("/token"),
            self.inner.cfg.issuer.as_str().to_owned(),
        ];
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => accepted.contains(a),
            Some(serde_json::Value::Array(l)) => l
                .iter()
                .filter_map(|v| v.as_str())
                .any(|a| accepted.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err("client assertion audience is not this server");
        }
        let now = self.inner.clock.now_unix();
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_i64())
            .ok_or("client assertion has no exp")?;
        if exp + 30 < now {
            return Err("client assertion expired");
        }
        if exp > now + 600 {
            return Err("client assertion lives longer than 10 minutes");
        }
        if claims
            .get("nbf")
            .and_then(|v| v.as_i64())
            .is_some_and(|nbf| nbf > now + 30)
        {
            return Err("client assertion not yet valid");
        }
        let jti = s("jti")
            .filter(|j| !j.is_empty())
            .ok_or("client assertion has no jti")?;
        let key = crate::secrets::sha256_hex(&format!("{}\u{0}{jti}", client.client_id));
        match self.inner.store.use_assertion_jti(&key, exp + 60).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("client assertion replayed"),
            Err(_) => Err("client assertion could not be recorded"),
        }
    }
}
