//! Stage 7 of the pipeline, the answer: reading what must be read whole, the version an
//! `initialize` settled, and the refused messages' errors merged into what the upstream said.
use crate::authorize::Refusal;
use crate::error::{GatewayError, RpcCode, rpc_error};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gatehouse_core::ProtocolVersion;
use http::{HeaderValue, StatusCode};
use serde_json::Value;

/// The largest answer read whole (list answers, `initialize`, batches with refusals).
pub const MAX_READ: usize = 8 * 1024 * 1024;

pub async fn read_capped(r: reqwest::Response, cap: usize) -> Option<Bytes> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        if out.len() + chunk.len() > cap {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(Bytes::from(out))
}

/// The version an `initialize` answer settled on.
pub fn negotiated_version(body: &[u8], sse: bool) -> Option<HeaderValue> {
    let text = String::from_utf8_lossy(body);
    let answers = if sse {
        crate::sse::messages(&text)
    } else {
        serde_json::from_str::<Value>(&text).into_iter().collect()
    };
    answers
        .iter()
        .find_map(|a| a.pointer("/result/protocolVersion").and_then(Value::as_str))
        .and_then(|v| ProtocolVersion::parse(v).ok())
        .map(|v| HeaderValue::from_static(v.as_str()))
}

/// The version an `initialize` asked for (when its answer could not be read).
pub fn requested_version(init: &[u8]) -> Option<HeaderValue> {
    serde_json::from_slice::<Value>(init)
        .ok()?
        .pointer("/params/protocolVersion")
        .and_then(Value::as_str)
        .and_then(|v| ProtocolVersion::parse(v).ok())
        .map(|v| HeaderValue::from_static(v.as_str()))
}

/// The answer when nothing of the body went upstream.
pub fn refusals_only(refused: &[Refusal], batch: bool) -> Response {
    if !batch && let Some(r) = refused.first() {
        let mut resp = r
            .error
            .clone()
            .into_response(r.id.as_ref().unwrap_or(&Value::Null));
        // A refused notification is a 4xx (TR-03), never a 200 with nothing to answer.
        if r.id.is_none() && !resp.status().is_client_error() {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
        }
        return resp;
    }
    let errors: Vec<Value> = refused
        .iter()
        .filter_map(|r| r.id.as_ref().map(|id| r.error.body(id)))
        .collect();
    if errors.is_empty() {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            RpcCode::InvalidRequest,
            "every message of the batch was refused",
        );
    }
    let mut resp = (StatusCode::OK, axum::Json(Value::Array(errors))).into_response();
    retry_after(&mut resp, refused);
    resp
}

fn retry_after(resp: &mut Response, refused: &[Refusal]) {
    let wait = refused
        .iter()
        .filter_map(|r| match r.error {
            GatewayError::RateLimited { retry_after, .. } => Some(retry_after),
            GatewayError::Unavailable => Some(5),
            _ => None,
        })
        .max();
    if let Some(v) = wait.and_then(|w| HeaderValue::from_str(&w.to_string()).ok()) {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
}

/// The upstream's answer to the cleared messages of a batch, with the refused ones' errors:
/// appended to a JSON batch answer, sent first on an event stream, or alone when the upstream
/// had nothing to answer (202).
pub async fn merge_refusals(resp: Response, refused: &[Refusal]) -> Response {
    let errors: Vec<Value> = refused
        .iter()
        .filter_map(|r| r.id.as_ref().map(|id| r.error.body(id)))
        .collect();
    if errors.is_empty() {
        return resp;
    }
    let mut out = if resp.status() == StatusCode::ACCEPTED {
        (StatusCode::OK, axum::Json(Value::Array(errors))).into_response()
    } else if crate::sse::is_event_stream(resp.headers()) {
        use futures::StreamExt;
        let (head, body) = resp.into_parts();
        let first = futures::stream::iter(
            errors
                .iter()
                .map(|e| Ok::<_, axum::Error>(crate::sse::event(e)))
                .collect::<Vec<_>>(),
        );
        let rest = body.into_data_stream();
        Response::from_parts(head, Body::from_stream(first.chain(rest)))
    } else {
        let (mut head, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_READ)
            .await
            .unwrap_or_default();
        let mut all = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(a)) => a,
            Ok(one) => vec![one],
            Err(_) => Vec::new(),
        };
        all.extend(errors);
        head.headers.remove(http::header::CONTENT_LENGTH);
        head.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Response::from_parts(head, Body::from(Value::Array(all).to_string()))
    };
    retry_after(&mut out, refused);
    out
}
