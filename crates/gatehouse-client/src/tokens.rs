//! Token requests (CL-27) and tolerant token responses (CL-28).
use crate::ClientError;
use crate::registration::{AuthMethod, Registration};
use base64::Engine;
use serde::{Deserialize, Serialize};

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Tokens for one server. `Debug` never shows them.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    /// Unix time the access token expires, when the server said (`expires_in` is optional).
    pub expires_at: Option<i64>,
    pub refresh_token: Option<String>,
    /// The granted scope, if the server said; else the requested one.
    pub scope: Option<String>,
    /// For a DPoP-bound token: the key it is bound to (PKCS#8, base64url). Kept with the tokens
    /// because the refresh token is bound to it too.
    #[serde(default)]
    pub dpop_key: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSet {
    /// Usable for at least `margin` more seconds.
    pub fn fresh(&self, now: i64, margin: i64) -> bool {
        self.expires_at.is_none_or(|t| t - margin > now)
    }
}

/// A token request: the grant's parameters; client authentication and `resource` are added.
pub struct TokenRequest<'a> {
    pub endpoint: &'a url::Url,
    /// The issuer, as the audience of a `private_key_jwt` assertion.
    pub issuer: &'a str,
    pub registration: &'a Registration,
    pub params: Vec<(&'static str, String)>,
    /// RFC 8707, on every token request (CL-09), including refreshes.
    pub resource: &'a str,
    /// What was asked for, kept when the response does not name a scope.
    pub requested_scope: Option<String>,
    /// Request a DPoP-bound token with this key (RFC 9449).
    pub dpop: Option<&'a crate::dpop::DpopKey>,
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn client_assertion(reg: &Registration, audience: &str) -> Result<String, ClientError> {
    let pem = reg
        .private_key_pem
        .as_deref()
        .ok_or_else(|| ClientError::Registration("private_key_jwt needs a private key".into()))?;
    let (key, alg) = if pem.contains("RSA PRIVATE KEY") {
        (
            jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
            jsonwebtoken::Algorithm::RS256,
        )
    } else if let Ok(k) = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()) {
        (Ok(k), jsonwebtoken::Algorithm::ES256)
    } else {
        (
            jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
            jsonwebtoken::Algorithm::RS256,
        )
    };
    let key = key.map_err(|e| ClientError::Registration(format!("private key: {e}")))?;
    let now = now();
    let mut jti = [0u8; 16];
    rand::fill(&mut jti);
    let claims = serde_json::json!({
        "iss": reg.client_id,
        "sub": reg.client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key)
        .map_err(|e| ClientError::Registration(format!("signing the client assertion: {e}")))
}

/// Adds client authentication (the registered method) to a token or revocation request.
fn authenticate(
    mut req: reqwest::RequestBuilder,
    form: &mut Vec<(&'static str, String)>,
    reg: &Registration,
    audience: &str,
) -> Result<reqwest::RequestBuilder, ClientError> {
    match reg.auth_method {
        AuthMethod::None => form.push(("client_id", reg.client_id.clone())),
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts form-encoded before Base64.
            let secret = reg.client_secret.as_deref().unwrap_or_default();
            let pair = format!("{}:{}", form_encode(&reg.client_id), form_encode(secret));
            req = req.header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            );
        }
        AuthMethod::ClientSecretPost => {
            form.push(("client_id", reg.client_id.clone()));
            form.push((
                "client_secret",
                reg.client_secret.clone().unwrap_or_default(),
            ));
        }
        AuthMethod::PrivateKeyJwt => {
            form.push(("client_id", reg.client_id.clone()));
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push(("client_assertion", client_assertion(reg, audience)?));
        }
    }
    Ok(req)
}

/// RFC 7009 revocation of a refresh token (logout).
pub async fn revoke(
    http: &reqwest::Client,
    endpoint: &url::Url,
    issuer: &str,
    reg: &Registration,
    refresh_token: &str,
) -> Result<(), ClientError> {
    let mut form = vec![
        ("token", refresh_token.to_owned()),
        ("token_type_hint", "refresh_token".to_owned()),
    ];
    let req = authenticate(http.post(endpoint.clone()), &mut form, reg, issuer)?;
    let resp = req.form(&form).send().await?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(ClientError::Server {
            status: resp.status().as_u16(),
            body: "revocation refused".into(),
        })
    }
}

/// POSTs an authenticated form (with `resource`) and returns the JSON answer, or the OAuth error.
pub(crate) async fn form_post(
    http: &reqwest::Client,
    endpoint: &url::Url,
    issuer: &str,
    reg: &Registration,
    mut form: Vec<(&'static str, String)>,
    resource: &str,
    dpop: Option<&crate::dpop::DpopKey>,
) -> Result<serde_json::Value, ClientError> {
    form.push(("resource", resource.to_owned()));
    let mut nonce: Option<String> = None;
    // At most one retry: when the server asks for a DPoP nonce (RFC 9449 §8).
    for _ in 0..2 {
        // Client assertions are single-use: a retry builds a fresh one.
        let mut f = form.clone();
        let mut req = authenticate(http.post(endpoint.clone()), &mut f, reg, issuer)?;
        if let Some(k) = dpop {
            req = req.header(
                "dpop",
                k.proof("POST", endpoint.as_str(), None, nonce.as_deref())?,
            );
        }
        let resp = req
            .header("accept", "application/json")
            .form(&f)
            .send()
            .await?;
        let status = resp.status();
        let server_nonce = resp
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.is_success() {
            return Ok(v);
        }
        if dpop.is_some()
            && nonce.is_none()
            && v["error"] == "use_dpop_nonce"
            && server_nonce.is_some()
        {
            nonce = server_nonce;
            continue;
        }
        return Err(oauth_error(&v));
    }
    Err(ClientError::Authorization(
        "the server kept asking for a new DPoP nonce".into(),
    ))
}

fn oauth_error(v: &serde_json::Value) -> ClientError {
    ClientError::OAuth {
        error: v["error"]
            .as_str()
            .unwrap_or("server_error")
            .chars()
            .take(64)
            .collect(),
        description: v["error_description"]
            .as_str()
            .map(|d| d.chars().take(300).collect()),
    }
}

/// Sends a token request and parses the answer.
pub async fn request(http: &reqwest::Client, r: TokenRequest<'_>) -> Result<TokenSet, ClientError> {
    let v = form_post(
        http,
        r.endpoint,
        r.issuer,
        r.registration,
        r.params,
        r.resource,
        r.dpop,
    )
    .await?;
    let mut t = parse_response(&v, r.requested_scope, r.dpop.is_some())?;
    if t.dpop_key.is_some()
        && let Some(k) = r.dpop
    {
        t.dpop_key = Some(k.to_b64());
    }
    Ok(t)
}

/// CL-28: unknown fields ignored, `token_type` compared without case, `expires_in` optional, the
/// response `scope` is the granted one.
pub fn parse_response(
    v: &serde_json::Value,
    requested_scope: Option<String>,
    sent_dpop: bool,
) -> Result<TokenSet, ClientError> {
    let access_token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ClientError::Authorization("no access_token in the token response".into())
        })?;
    let token_type = v["token_type"].as_str().unwrap_or_default();
    let dpop = sent_dpop && token_type.eq_ignore_ascii_case("dpop");
    if !token_type.eq_ignore_ascii_case("bearer") && !dpop {
        return Err(ClientError::Authorization(format!(
            "token_type {token_type:?} is not supported"
        )));
    }
    Ok(TokenSet {
        access_token: access_token.to_owned(),
        expires_at: v["expires_in"].as_i64().map(|s| now() + s),
        refresh_token: v["refresh_token"].as_str().map(str::to_owned),
        scope: v["scope"].as_str().map(str::to_owned).or(requested_scope),
        // Filled in with the key by `request`; a marker here.
        dpop_key: dpop.then(String::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cl28_tolerant_parsing() {
        let t = parse_response(
            &serde_json::json!({"access_token": "a", "token_type": "bearer", "x": 1, "scope": "s1"}),
            Some("s1 s2".into()),
            false,
        )
        .expect("accepted");
        assert_eq!(t.scope.as_deref(), Some("s1"), "the granted scope wins");
        assert!(t.expires_at.is_none() && t.refresh_token.is_none());
        assert!(
            parse_response(
                &serde_json::json!({"access_token": "a", "token_type": "DPoP"}),
                None,
                false
            )
            .is_err()
        );
        assert!(parse_response(&serde_json::json!({"token_type": "Bearer"}), None, false).is_err());
    }
}
