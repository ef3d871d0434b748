//! Who the client is: lookup (pre-registered, DCR, or a metadata document URL) and client
//! authentication at the token, revocation and introspection endpoints.
use crate::secrets::secret_matches;
use crate::{AuthServer, OAuthError};
use base64::Engine as _;
use gatehouse_store::ClientRecord;
use http::HeaderMap;

/// Credentials presented with a request.
pub(crate) struct Presented {
    pub(crate) client_id: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) basic: bool,
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
            })
        }
        None => Ok(Presented {
            client_id: form_id,
            secret: form_secret,
            basic: false,
        }),
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
        Ok(self.inner.store.get_client(client_id).await?)
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
        let client = match self.find_client(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(fail("unknown client")),
            Err(e) if e.code == gatehouse_core::OAuthErrorCode::ServerError => return Err(e),
            Err(_) => return Err(fail("client metadata document could not be used")),
        };
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
