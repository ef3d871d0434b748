//! Dynamic client registration (RFC 7591), the fallback after pre-registration and metadata
//! documents (AS-25, AS-26). Rate-limited per source address; such clients are shown as
//! "unverified" on the consent screen (T11).
use crate::secrets::{random_id, random_token, sha256_hex};
use crate::{AuthServer, OAuthError};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use gatehouse_core::{OAuthErrorCode, RedirectUri, ScopeSet};
use gatehouse_store::{ClientRecord, ClientSource};
use http::StatusCode;
use std::net::SocketAddr;

fn bad_metadata(d: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidClientMetadata, d)
}

impl AuthServer {
    /// Fixed one-minute window per address.
    fn dcr_allowed(&self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let minute = self.inner.clock.now_unix() / 60;
        let mut w = self
            .inner
            .dcr_window
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if w.0 != minute {
            *w = (minute, Default::default());
        }
        let n = w.1.entry(ip).or_insert(0);
        *n += 1;
        *n <= self.inner.cfg.dcr_per_minute
    }
}

pub(crate) async fn register(State(s): State<AuthServer>, req: axum::extract::Request) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return bad_metadata("registration request too large").into_response();
    };
    match register_inner(&s, ip, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn register_inner(
    s: &AuthServer,
    ip: Option<std::net::IpAddr>,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let cfg = &s.inner.cfg;
    if !cfg.dcr_enabled {
        return Err(OAuthError::new(
            OAuthErrorCode::AccessDenied,
            "dynamic client registration is disabled",
        ));
    }
    if !s.dcr_allowed(ip) {
        let mut e = OAuthError::new(
            OAuthErrorCode::TemporarilyUnavailable,
            "too many registrations from this address; try again in a minute",
        );
        e.status = StatusCode::TOO_MANY_REQUESTS;
        return Err(e);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad_metadata(format!("body is not JSON: {e}")))?;
    let obj = meta
        .as_object()
        .ok_or_else(|| bad_metadata("metadata must be a JSON object"))?;
    let strings = |key: &str| -> Result<Option<Vec<String>>, OAuthError> {
        match obj.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .ok_or_else(|| bad_metadata(format!("{key} must be an array")))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad_metadata(format!("{key} must hold strings")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    };
    let grant_types = strings("grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
    for g in &grant_types {
        if !matches!(
            g.as_str(),
            "authorization_code" | "refresh_token" | "client_credentials"
        ) {
            return Err(bad_metadata(format!("grant type {g:?} is not supported")));
        }
    }
    let response_types = strings("response_types")?.unwrap_or_else(|| vec!["code".into()]);
    if response_types.iter().any(|r| r != "code") {
        return Err(bad_metadata("only the code response type is supported"));
    }
    let application_type = match obj.get("application_type").and_then(|v| v.as_str()) {
        None => "web",
        Some(t @ ("web" | "native")) => t,
        Some(t) => {
            return Err(bad_metadata(format!(
                "application_type {t:?} must be web or native"
            )));
        }
    };
    let redirect_uris = strings("redirect_uris")?.unwrap_or_default();
    if grant_types.iter().any(|g| g == "authorization_code") && redirect_uris.is_empty() {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidRedirectUri,
            "redirect_uris are required for the authorization_code grant",
        ));
    }
    for u in &redirect_uris {
        let parsed = RedirectUri::parse(u)
            .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidRedirectUri, e.to_string()))?;
        // A web application's redirect URIs are https, unless it runs on loopback in development.
        let loopback = url::Url::parse(parsed.as_str())
            .is_ok_and(|x| gatehouse_core::url::is_loopback_host(&x));
        if application_type == "web" && !u.starts_with("https://") && !loopback {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidRedirectUri,
                format!("{u}: web applications need https redirect URIs"),
            ));
        }
    }
    // Public clients (native apps, browser apps) use "none": they cannot keep a secret.
    let auth_method = obj
        .get("token_endpoint_auth_method")
        .and_then(|v| v.as_str())
        .unwrap_or(if application_type == "native" {
            "none"
        } else {
            "client_secret_basic"
        })
        .to_owned();
    if !matches!(
        auth_method.as_str(),
        "none" | "client_secret_basic" | "client_secret_post" | "private_key_jwt"
    ) {
        return Err(bad_metadata(format!(
            "token_endpoint_auth_method {auth_method:?} is not supported"
        )));
    }
    if auth_method == "private_key_jwt" {
        check_client_keys(s, obj)?;
    }
    if auth_method == "none" && grant_types.iter().any(|g| g == "client_credentials") {
        return Err(bad_metadata(
            "client_credentials needs a confidential client",
        ));
    }
    let scope = match obj.get("scope").and_then(|v| v.as_str()) {
        None => None,
        Some(sc) => {
            let set = ScopeSet::parse(sc).map_err(|e| bad_metadata(e.to_string()))?;
            let supported = cfg.scopes_supported();
            let unknown = supported.missing_from(&set);
            if !unknown.is_empty() {
                return Err(bad_metadata(format!("unknown scopes: {unknown}")));
            }
            Some(set.to_string())
        }
    };
    let client_name = obj.get("client_name").and_then(|v| v.as_str()).map(|n| {
        n.chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect::<String>()
    });
    let now = s.inner.clock.now_unix();
    let client_id = random_id();
    let secret = matches!(
        auth_method.as_str(),
        "client_secret_basic" | "client_secret_post"
    )
    .then(random_token);
    let record = ClientRecord {
        client_id: client_id.clone(),
        secret_hash: secret.as_deref().map(sha256_hex),
        auth_method: auth_method.clone(),
        redirect_uris: redirect_uris.clone(),
        grant_types: grant_types.clone(),
        client_name: client_name.clone(),
        scope: scope.clone(),
        source: ClientSource::Dynamic,
        application_type: Some(application_type.to_owned()),
        metadata: meta.clone(),
        created_at: now,
    };
    s.inner.store.insert_client(&record).await?;
    tracing::info!(client_id = %client_id, name = client_name.as_deref().unwrap_or("-"), "registered client (DCR)");
    let mut out = serde_json::json!({
        "client_id": client_id,
        "client_id_issued_at": now,
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": response_types,
        "token_endpoint_auth_method": auth_method,
        "application_type": application_type,
    });
    if let Some(n) = client_name {
        out["client_name"] = n.into();
    }
    if let Some(sc) = scope {
        out["scope"] = sc.into();
    }
    if let Some(sec) = secret {
        out["client_secret"] = sec.into();
        out["client_secret_expires_at"] = 0.into();
    }
    let mut resp = (StatusCode::CREATED, axum::Json(out)).into_response();
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// A `private_key_jwt` client registers its public keys: inline `jwks` with at least one usable
/// asymmetric key, or an https `jwks_uri` the fetcher accepts.
pub(crate) fn check_client_keys(
    s: &AuthServer,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), OAuthError> {
    match (
        obj.get("jwks"),
        obj.get("jwks_uri").and_then(|v| v.as_str()),
    ) {
        (Some(jwks), None) => {
            let body = serde_json::to_vec(jwks).map_err(|e| bad_metadata(e.to_string()))?;
            let keys =
                gatehouse_tokens::KeySet::parse(&body).map_err(|e| bad_metadata(e.to_string()))?;
            if keys.is_empty() {
                return Err(bad_metadata("jwks has no usable asymmetric signing key"));
            }
            Ok(())
        }
        (None, Some(uri)) => s
            .inner
            .fetcher
            .check(uri)
            .map(|_| ())
            .map_err(|e| bad_metadata(format!("jwks_uri: {e}"))),
        _ => Err(bad_metadata(
            "private_key_jwt needs exactly one of jwks or jwks_uri",
        )),
    }
}
