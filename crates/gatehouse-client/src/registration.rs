//! Client registration in the order of CL-17: pre-registered, then a Client ID Metadata
//! Document, then Dynamic Client Registration. Registrations are kept per issuer (CL-04): a
//! client_id from one authorization server is never shown to another.
use crate::ClientError;
use crate::discovery::Discovered;
use serde::{Deserialize, Serialize};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "client_secret_basic" => Self::ClientSecretBasic,
            "client_secret_post" => Self::ClientSecretPost,
            "private_key_jwt" => Self::PrivateKeyJwt,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    PreRegistered,
    MetadataDocument,
    Dynamic,
}

/// What the client is known as at one authorization server.
#[derive(Clone, Serialize, Deserialize)]
pub struct Registration {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Unix time; 0 or absent means it does not expire.
    pub client_secret_expires_at: Option<i64>,
    pub auth_method: AuthMethod,
    /// The redirect URI registered (DCR), or `None` when any loopback port is acceptable.
    pub redirect_uri: Option<String>,
    pub source: Source,
    /// PEM private key for `private_key_jwt`.
    #[serde(default)]
    pub private_key_pem: Option<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Registration {
    pub fn expired(&self, now: i64) -> bool {
        self.client_secret_expires_at
            .is_some_and(|t| t != 0 && t <= now)
    }
}

/// What the operator configured.
#[derive(Debug, Clone, Default)]
pub struct RegistrationConfig {
    pub client_name: String,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub auth_method: Option<AuthMethod>,
    pub private_key_pem: Option<String>,
    /// An https URL whose document describes this client (CIMD).
    pub client_metadata_url: Option<String>,
    /// Register for the device authorization grant (RFC 8628) as well.
    pub device: bool,
}

/// Picks how to identify the client at `d.issuer`. `redirect_uri` is what DCR registers.
pub async fn register(
    http: &reqwest::Client,
    cfg: &RegistrationConfig,
    d: &Discovered,
    redirect_uri: &str,
) -> Result<Registration, ClientError> {
    let issuer = d.issuer.as_str().to_owned();
    if let Some(client_id) = &cfg.client_id {
        let auth_method = cfg.auth_method.unwrap_or(if cfg.private_key_pem.is_some() {
            AuthMethod::PrivateKeyJwt
        } else if cfg.client_secret.is_some() {
            AuthMethod::ClientSecretBasic
        } else {
            AuthMethod::None
        });
        return Ok(Registration {
            issuer,
            client_id: client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            client_secret_expires_at: None,
            auth_method,
            redirect_uri: None,
            source: Source::PreRegistered,
            private_key_pem: cfg.private_key_pem.clone(),
        });
    }
    if let Some(doc) = &cfg.client_metadata_url
        && d.supports_cimd()
    {
        return Ok(Registration {
            issuer,
            client_id: doc.clone(),
            client_secret: None,
            client_secret_expires_at: None,
            auth_method: AuthMethod::None,
            redirect_uri: None,
            source: Source::MetadataDocument,
            private_key_pem: None,
        });
    }
    let Some(endpoint) = &d.registration_endpoint else {
        return Err(ClientError::Registration(format!(
            "{} offers neither client ID metadata documents{} nor dynamic registration; configure a pre-registered client (--client-id)",
            d.issuer,
            if cfg.client_metadata_url.is_some() {
                ""
            } else {
                " (none configured)"
            }
        )));
    };
    dcr(http, cfg, d, endpoint, redirect_uri).await
}

async fn dcr(
    http: &reqwest::Client,
    cfg: &RegistrationConfig,
    d: &Discovered,
    endpoint: &url::Url,
    redirect_uri: &str,
) -> Result<Registration, ClientError> {
    // A public client unless the server takes no such thing (CL-19).
    let offered = &d.metadata.token_endpoint_auth_methods_supported;
    let method = if offered.is_empty() || offered.iter().any(|m| m == "none") {
        "none"
    } else if offered.iter().any(|m| m == "client_secret_basic") {
        "client_secret_basic"
    } else if offered.iter().any(|m| m == "client_secret_post") {
        "client_secret_post"
    } else {
        return Err(ClientError::Registration(format!(
            "{} supports none of the token endpoint authentication methods this client can use: {offered:?}",
            d.issuer
        )));
    };
    let mut grants = vec!["authorization_code", "refresh_token"];
    if cfg.device {
        grants.push("urn:ietf:params:oauth:grant-type:device_code");
    }
    let body = serde_json::json!({
        "client_name": cfg.client_name,
        "redirect_uris": [redirect_uri],
        "grant_types": grants,
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
        "application_type": "native",
    });
    crate::progress(format!(
        "registering with {} (dynamic client registration)",
        d.issuer
    ));
    let resp = http.post(endpoint.clone()).json(&body).send().await?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ClientError::Registration(format!(
            "{} answered {status}: {} {}",
            d.issuer,
            v["error"].as_str().unwrap_or("(no error code)"),
            v["error_description"].as_str().unwrap_or("")
        )));
    }
    let client_id = v["client_id"]
        .as_str()
        .ok_or_else(|| ClientError::Registration("no client_id in the answer".into()))?;
    let client_secret = v["client_secret"].as_str().map(str::to_owned);
    let auth_method = v["token_endpoint_auth_method"]
        .as_str()
        .and_then(AuthMethod::parse)
        .unwrap_or(match (method, &client_secret) {
            (_, None) => AuthMethod::None,
            ("client_secret_post", Some(_)) => AuthMethod::ClientSecretPost,
            (_, Some(_)) => AuthMethod::ClientSecretBasic,
        });
    Ok(Registration {
        issuer: d.issuer.as_str().to_owned(),
        client_id: client_id.to_owned(),
        client_secret,
        client_secret_expires_at: v["client_secret_expires_at"].as_i64(),
        auth_method,
        redirect_uri: Some(redirect_uri.to_owned()),
        source: Source::Dynamic,
        private_key_pem: None,
    })
}
