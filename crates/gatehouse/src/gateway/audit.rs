//! The audit log (hash-chained JSON lines) and the audit of requests the guard refuses.
use axum::body::Body;
use axum::response::Response;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Marks a response the proxy has audited already.
#[derive(Clone, Copy)]
pub(crate) struct Audited;

/// State of [`audit_refusals`]: the log and the upstream's name.
#[derive(Clone)]
pub(crate) struct RefusalAudit {
    pub(crate) audit: Option<Arc<Audit>>,
    pub(crate) server: String,
}

/// Outside the guard: requests it refused (no or bad token, missing scope, someone else's
/// session, malformed) never reach the proxy, so they are audited here, with the status and
/// the Bearer error; the caller is unknown at that point.
pub(crate) async fn audit_refusals(
    axum::extract::State(s): axum::extract::State<RefusalAudit>,
    req: http::Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.extensions().get::<Audited>().is_none() && !resp.status().is_success() {
        let reason = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("error=\"").nth(1))
            .and_then(|v| v.split('"').next())
            .map(str::to_owned);
        metrics::counter!("gatehouse_gateway_requests_total", "server" => s.server.clone(), "decision" => "refused")
            .increment(1);
        if let Some(a) = &s.audit {
            a.record(&serde_json::json!({
                "time": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "server": s.server,
                "http_method": method.as_str(),
                "decision": "refused",
                "http_status": resp.status().as_u16(),
                "reason": reason,
                "latency_us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            }));
        }
    }
    resp
}

/// Append-only JSON lines, each carrying the SHA-256 of the previous line (`prev`) and its own
/// (`hash`, over `prev` and the record), so an edited or deleted line breaks the chain.
pub(crate) struct Audit {
    state: Mutex<(std::fs::File, String)>,
}

impl Audit {
    pub(crate) fn open(path: &str) -> Result<Self, String> {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("gateway.audit_log {path}: {e}"))?;
        }
        // Continue the chain of an existing log.
        let last = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().last().map(str::to_owned))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .and_then(|v| v["hash"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "0".repeat(64));
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o
            .open(path)
            .map_err(|e| format!("gateway.audit_log {path}: {e}"))?;
        Ok(Self {
            state: Mutex::new((f, last)),
        })
    }

    /// Appends `record` (a JSON object) with `prev` and `hash` added at its end. The record is
    /// serialised once; the bytes are those of the object with `prev` (what `hash` covers), then
    /// `hash` — what [`verify_chain`] recomputes from a parsed line.
    pub(crate) fn record(&self, record: &impl serde::Serialize) {
        let mut line = match serde_json::to_vec(record) {
            Ok(b) if b.len() >= 2 && b.first() == Some(&b'{') && b.last() == Some(&b'}') => b,
            Ok(_) => {
                tracing::error!("audit record is not a JSON object; not written");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit record does not serialise; not written");
                return;
            }
        };
        line.pop();
        if line.len() > 1 {
            line.push(b',');
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        // `prev` and `hash` are hex digests: nothing in them to escape.
        line.extend_from_slice(b"\"prev\":\"");
        line.extend_from_slice(st.1.as_bytes());
        line.extend_from_slice(b"\"}");
        let hash = gatehouse_core::hex(&<sha2::Sha256 as sha2::Digest>::digest(&line));
        line.pop();
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}\n");
        if let Err(e) = st.0.write_all(&line) {
            tracing::error!(error = %e, "audit log write failed");
            return;
        }
        st.1 = hash;
    }
}

/// Checks an audit log's chain; the index of the first broken line, if any.
#[cfg(test)]
pub(crate) fn verify_chain(log: &str) -> Option<usize> {
    let mut prev = "0".repeat(64);
    for (i, line) in log.lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(line).ok()?;
        let hash = v["hash"].as_str()?.to_owned();
        if v["prev"] != prev.as_str() {
            return Some(i);
        }
        v.as_object_mut()?.remove("hash");
        let h = gatehouse_server::sha256_hex(&v.to_string());
        if h != hash {
            return Some(i);
        }
        prev = hash;
    }
    None
}
