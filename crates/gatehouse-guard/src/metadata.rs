use crate::GuardConfig;
use axum::routing::get;
use gatehouse_core::ProtectedResourceMetadata;

pub(crate) fn prm(cfg: &GuardConfig) -> ProtectedResourceMetadata {
    ProtectedResourceMetadata {
        // RS-04: byte-identical to the endpoint URL.
        resource: cfg.resource.as_str().to_owned(),
        authorization_servers: cfg
            .authorization_servers
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect(),
        scopes_supported: cfg.scopes_supported.to_vec(),
        bearer_methods_supported: vec!["header".into()],
        resource_name: cfg.resource_name.clone(),
        resource_documentation: cfg.resource_documentation.clone(),
        jwks_uri: None,
        // RFC 9728 §2 / RFC 9449 §5.1: DPoP-bound tokens are accepted with proofs by these.
        extra: serde_json::Map::from_iter([(
            "dpop_signing_alg_values_supported".to_owned(),
            serde_json::json!(gatehouse_tokens::dpop::DPOP_ALGS),
        )]),
    }
}

pub(crate) fn router(cfg: &GuardConfig, with_root: bool) -> axum::Router {
    let doc = prm(cfg);
    let handler = move || {
        let doc = doc.clone();
        async move {
            (
                [(http::header::CACHE_CONTROL, "public, max-age=300")],
                axum::Json(doc),
            )
        }
    };
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([http::Method::GET, http::Method::OPTIONS])
        .allow_headers([
            http::header::CONTENT_TYPE,
            http::HeaderName::from_static("mcp-protocol-version"),
        ]);
    let mut r = axum::Router::new().route(&cfg.resource.prm_path(), get(handler.clone()));
    let root = "/.well-known/oauth-protected-resource";
    if with_root && cfg.resource.prm_path() != root {
        r = r.route(root, get(handler));
    }
    r.layer(cors)
}
