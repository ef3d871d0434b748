//! Dynamic client registration (RFC 7591), the fallback after pre-registration and metadata
//! documents (AS-25, AS-26). Rate-limited per source address; such clients are shown as
//! "unverified" on the consent screen (T11).
use crate::secrets::{random_id, random_token, sha256_hex};
use crate::{AuthServer, OAuthError};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use gatehouse_core::{OAuthErrorCode, RedirectUri, ScopeSet};
use gatehouse_store::{ClientRecord, ClientSource};
use http::StatusCode;

fn bad_metadata(d: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidClientMetadata, d)
}

/// The largest registration request read (a JWKS of a few keys fits).
const MAX_BODY: usize = 16 * 1024;
const MAX_REDIRECT_URIS: usize = 10;
const MAX_REDIRECT_URI_LEN: usize = 512;
/// Kept metadata strings (`client_uri`) longer than this are refused: a registration stores a
/// few KiB at most, so the per-minute limits bound the store's growth too.
const MAX_KEPT_STRING: usize = 512;
/// The registration metadata kept with a client; anything else a stranger sends is dropped.
const KEPT_METADATA: [&str; 10] = [
    "client_name",
    "redirect_uris",
    "grant_types",
    "response_types",
    "token_endpoint_auth_method",
    "application_type",
    "scope",
    "jwks",
    "jwks_uri",
    "client_uri",
];

impl AuthServer {
    /// AS-26: registrations per source and in all, per minute, counted in the store (so every
    /// replica on it shares them).
    async fn dcr_allowed(&self, ip: Option<std::net::IpAddr>) -> Result<bool, OAuthError> {
        let policy = &self.inner.cfg.registration;
        let now = self.inner.clock.now_unix();
        let total = self
            .inner
            .store
            .bump_throttle(&sha256_hex("dcr:all"), now, 60, |_| 0)
            .await?;
        if total.count > i64::from(policy.per_minute_total) {
            return Ok(false);
        }
        self.source_budget("dcr:src", ip, 60, i64::from(policy.per_minute_per_source))
            .await
    }
}

pub(crate) async fn register(State(s): State<AuthServer>, req: axum::extract::Request) -> Response {
    let ip = crate::source::source_ip(req.extensions());
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| v[7..].trim().to_owned())
        });
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BODY).await else {
        return bad_metadata("registration request too large").into_response();
    };
    let r = register_inner(&s, ip, bearer.as_deref(), &body).await;
    let outcome = match &r {
        Ok(_) => "registered",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("gatehouse_as_registrations_total", "outcome" => outcome).increment(1);
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn register_inner(
    s: &AuthServer,
    ip: Option<std::net::IpAddr>,
    bearer: Option<&str>,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let cfg = &s.inner.cfg;
    let policy = &cfg.registration;
    if !cfg.dcr_enabled {
        return Err(OAuthError::new(
            OAuthErrorCode::AccessDenied,
            "dynamic client registration is disabled",
        ));
    }
    // RFC 7591 §3: an initial access token, when the operator requires one.
    if let Some(want) = &policy.initial_access_token_hash {
        let ok = bearer.is_some_and(|t| crate::secrets::secret_matches(t, want));
        if !ok {
            let mut e = OAuthError::new(
                OAuthErrorCode::InvalidToken,
                "registration needs the initial access token the operator gave you",
            );
            e.status = StatusCode::UNAUTHORIZED;
            return Err(e);
        }
    }
    if !s.dcr_allowed(ip).await? {
        let mut e = OAuthError::new(
            OAuthErrorCode::TemporarilyUnavailable,
            "too many registrations; try again in a minute",
        );
        e.status = StatusCode::TOO_MANY_REQUESTS;
        return Err(e);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad_metadata(format!("body is not JSON: {e}")))?;
    let obj = meta
        .as_object()
        .ok_or_else(|| bad_metadata("metadata must be a JSON object"))?;
    // Nothing verifies software statements here, so none is approved (rather than stored as if
    // it had been checked).
    if obj.contains_key("software_statement") {
        return Err(OAuthError::new(
            OAuthErrorCode::UnapprovedSoftwareStatement,
            "software statements are not accepted by this server",
        ));
    }
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
            "authorization_code"
                | "refresh_token"
                | "client_credentials"
                | crate::device::DEVICE_CODE_GRANT
        ) {
            return Err(bad_metadata(format!("grant type {g:?} is not supported")));
        }
        // T17: machine grants are the operator's to hand out.
        if !policy.grant_types.contains(g) {
            return Err(bad_metadata(format!(
                "grant type {g:?} is not open to self-registered clients; ask the operator to register this client"
            )));
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
    if redirect_uris.len() > MAX_REDIRECT_URIS
        || redirect_uris.iter().any(|u| u.len() > MAX_REDIRECT_URI_LEN)
    {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidRedirectUri,
            format!(
                "at most {MAX_REDIRECT_URIS} redirect URIs of at most {MAX_REDIRECT_URI_LEN} characters"
            ),
        ));
    }
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
    // Self-registered clients are public ("none") unless the operator's policy allows more.
    let requested = obj
        .get("token_endpoint_auth_method")
        .and_then(|v| v.as_str())
        .unwrap_or("none");
    if !matches!(
        requested,
        "none" | "client_secret_basic" | "client_secret_post" | "private_key_jwt"
    ) {
        return Err(bad_metadata(format!(
            "token_endpoint_auth_method {requested:?} is not supported"
        )));
    }
    let auth_method = if policy.auth_methods.iter().any(|m| m == requested) {
        requested.to_owned()
    } else if requested != "private_key_jwt" && policy.auth_methods.iter().any(|m| m == "none") {
        // RFC 7591 §3.2.1 lets the server replace a requested value; the answer says "none" and
        // carries no secret, so the client proceeds as a public client with PKCE (what most
        // MCP clients that ask for a secret by default, e.g. the Python SDK's, then do).
        tracing::info!(
            requested,
            "self-registered client made public (token_endpoint_auth_method none)"
        );
        "none".to_owned()
    } else {
        return Err(bad_metadata(format!(
            "token_endpoint_auth_method {requested:?} is not open to self-registered clients"
        )));
    };
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
    // Shown on the consent screen: nothing invisible that could make it read as another name.
    let client_name = obj
        .get("client_name")
        .and_then(|v| v.as_str())
        .and_then(|n| gatehouse_core::text::display_name(n, 100));
    if let Some(u) = obj.get("client_uri")
        && u.as_str().is_none_or(|u| u.len() > MAX_KEPT_STRING)
    {
        return Err(bad_metadata(format!(
            "client_uri must be a string of at most {MAX_KEPT_STRING} characters"
        )));
    }
    let kept: serde_json::Map<String, serde_json::Value> = obj
        .iter()
        .filter(|(k, _)| KEPT_METADATA.contains(&k.as_str()))
        .filter(|(k, _)| auth_method == "private_key_jwt" || !k.starts_with("jwks"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
        metadata: serde_json::Value::Object(kept),
        created_at: now,
        disabled: false,
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
            .client_fetcher
            .check(uri)
            .map(|_| ())
            .map_err(|e| bad_metadata(format!("jwks_uri: {e}"))),
        _ => Err(bad_metadata(
            "private_key_jwt needs exactly one of jwks or jwks_uri",
        )),
    }
}
