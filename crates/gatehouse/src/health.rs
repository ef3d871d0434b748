//! `/healthz` (the process answers) and `/readyz` (it can serve: its database, Redis and
//! revocation feed are live, its signing keys loaded, the trusted issuers' keys at hand). A load balancer takes a replica that is not ready out of rotation
//! and puts it back by itself once `/readyz` answers 200 again (issue 16).
use axum::Json;
use axum::response::{IntoResponse, Response};
use gatehouse_core::{Clock, SystemClock};
use http::StatusCode;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default, Clone)]
pub(crate) struct Readiness {
    pub(crate) stores: Vec<gatehouse_store::Store>,
    pub(crate) shared: Option<gatehouse_gateway::SharedState>,
    pub(crate) revocations: Option<Arc<gatehouse_tokens::Revocations>>,
    /// The embedded authorization servers (their signing keys).
    pub(crate) servers: Vec<gatehouse_server::AuthServer>,
    /// The guard's validator (the trusted issuers' keys).
    pub(crate) jwt: Option<Arc<gatehouse_tokens::JwtValidator>>,
}

pub(crate) fn router(r: Readiness) -> axum::Router {
    axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let r = r.clone();
                async move { ready(&r).await }
            }),
        )
}

async fn ready(r: &Readiness) -> Response {
    // Each check answers within 2 s: a hung dependency is a failed one.
    const WITHIN: Duration = Duration::from_secs(2);
    let mut checks = Map::new();
    let mut ok = true;
    let mut note = |name: &str, result: Result<(), String>| {
        ok &= result.is_ok();
        checks.insert(
            name.to_owned(),
            match result {
                Ok(()) => json!("ok"),
                Err(e) => json!(e),
            },
        );
    };
    for (i, store) in r.stores.iter().enumerate() {
        let name = if i == 0 {
            "database".to_owned()
        } else {
            format!("database_{i}")
        };
        let result = match tokio::time::timeout(WITHIN, store.ping()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        };
        note(&name, result);
    }
    if let Some(s) = &r.shared {
        let result = match tokio::time::timeout(WITHIN, s.ping()).await {
            Ok(r) => r,
            Err(_) => Err("no answer within 2 s".into()),
        };
        note("redis", result);
    }
    if let Some(list) = &r.revocations {
        note(
            "revocations",
            match list.stale(SystemClock.now_unix()) {
                None => Ok(()),
                Some(s) => Err(format!("not confirmed for {s} s")),
            },
        );
    }
    for (i, server) in r.servers.iter().enumerate() {
        let name = if i == 0 {
            "signing_keys".to_owned()
        } else {
            format!("signing_keys_{i}")
        };
        let active = server.keys().list().iter().any(|(_, retired)| !retired);
        note(
            &name,
            if active {
                Ok(())
            } else {
                Err("no active signing key loaded".into())
            },
        );
    }
    if let Some(jwt) = &r.jwt {
        match tokio::time::timeout(WITHIN, jwt.keys_ready()).await {
            Ok(list) => {
                let mut bad = Map::new();
                for (iss, result) in list {
                    if let Err(e) = result {
                        bad.insert(iss, json!(e));
                    }
                }
                let result = if bad.is_empty() {
                    Ok(())
                } else {
                    Err(Value::Object(bad).to_string())
                };
                note("issuer_keys", result);
            }
            Err(_) => note("issuer_keys", Err("no answer within 2 s".into())),
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "not ready" },
            "checks": Value::Object(checks),
        })),
    )
        .into_response();
    if !ok {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("5"),
        );
    }
    resp
}
