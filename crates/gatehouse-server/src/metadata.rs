//! RFC 8414 / OIDC discovery and the JWKS (AS-01 … AS-03).
use crate::AuthServer;
use axum::extract::State;
use axum::response::IntoResponse;
use gatehouse_core::Issuer;

/// Well-known paths at which the metadata is served: RFC 8414 path-inserted, OIDC path-inserted
/// and OIDC appended (for an issuer with a path), so every client order finds it.
pub(crate) fn well_known_paths(issuer: &Issuer) -> Vec<String> {
    let path = issuer.url().path().trim_end_matches('/');
    let mut v = vec![
        format!("/.well-known/oauth-authorization-server{path}"),
        format!("/.well-known/openid-configuration{path}"),
    ];
    if !path.is_empty() {
        v.push(format!("{path}/.well-known/openid-configuration"));
    }
    v
}

pub(crate) fn document(s: &AuthServer) -> serde_json::Value {
    let c = &s.inner.cfg;
    let mut doc = serde_json::json!({
        "issuer": c.issuer.as_str(),
        "authorization_endpoint": c.endpoint("/authorize"),
        "token_endpoint": c.endpoint("/token"),
        "jwks_uri": c.endpoint("/jwks"),
        "revocation_endpoint": c.endpoint("/revoke"),
        "introspection_endpoint": c.endpoint("/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "device_authorization_endpoint": c.endpoint("/device_authorization"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", crate::token::TOKEN_EXCHANGE, crate::device::DEVICE_CODE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "RS256", "PS256"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": c.scopes_supported().to_vec(),
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": c.cimd_enabled,
        // RFC 9449 §5.1: a proof with any of these at /token gets DPoP-bound tokens.
        "dpop_signing_alg_values_supported": gatehouse_tokens::dpop::DPOP_ALGS,
    });
    if !c.jwt_bearer.is_empty()
        && let Some(g) = doc["grant_types_supported"].as_array_mut()
    {
        g.push(crate::assertion::JWT_BEARER.into());
    }
    if c.jwt_bearer
        .iter()
        .any(|i| matches!(i.kind, crate::AssertionKind::IdJag { .. }))
    {
        doc["authorization_grant_profiles_supported"] =
            serde_json::json!([crate::assertion::ID_JAG_PROFILE]);
    }
    if c.dcr_enabled {
        doc["registration_endpoint"] = c.endpoint("/register").into();
    }
    doc
}

pub(crate) async fn metadata(State(s): State<AuthServer>) -> impl IntoResponse {
    (
        [
            (http::header::CACHE_CONTROL, "public, max-age=300"),
            (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        axum::Json(document(&s)),
    )
}

pub(crate) async fn jwks(State(s): State<AuthServer>) -> impl IntoResponse {
    (
        [
            (http::header::CACHE_CONTROL, "public, max-age=60"),
            (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        axum::Json(s.inner.keys.jwks()),
    )
}
