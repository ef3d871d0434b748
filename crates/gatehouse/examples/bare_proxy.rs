//! For `bench/gateway.sh` only: the least a proxy on the gateway's own stack (axum serving,
//! reqwest with a keep-alive pool to the upstream, mimalloc) does for a call — no
//! authentication, policy, limits, audit or session mapping. The latency it adds is the floor
//! under the gateway's on this machine.
//!   bare_proxy LISTEN UPSTREAM_URL
#![forbid(unsafe_code)]

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Request headers passed on, as the gateway does.
const FORWARDED: [&str; 4] = [
    "content-type",
    "accept",
    "mcp-protocol-version",
    "mcp-session-id",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN UPSTREAM_URL".into());
    };
    let upstream = reqwest::Url::parse(&upstream)?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let app = axum::Router::new().fallback(move |req: http::Request<Body>| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let (parts, body) = req.into_parts();
            let Ok(body) = axum::body::to_bytes(body, 4 << 20).await else {
                return StatusCode::PAYLOAD_TOO_LARGE.into_response();
            };
            let mut headers = http::HeaderMap::new();
            for name in FORWARDED {
                if let Some(v) = parts.headers.get(name) {
                    headers.insert(name, v.clone());
                }
            }
            let answer = match http
                .request(parts.method, upstream)
                .headers(headers)
                .body(body)
                .send()
                .await
            {
                Ok(a) => a,
                Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
            };
            let status = answer.status();
            let mut headers = http::HeaderMap::new();
            for name in ["content-type", "mcp-session-id"] {
                if let Some(v) = answer.headers().get(name) {
                    headers.insert(name, v.clone());
                }
            }
            match answer.bytes().await {
                Ok(b) => {
                    let mut resp = Response::new(Body::from(b));
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    resp
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
