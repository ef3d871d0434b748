//! The audit log: append-only JSON lines, each carrying the SHA-256 of the previous line
//! (`prev`) and its own (`hash`, over the record with `prev`), so an edited, inserted or
//! deleted line breaks the chain. [`verify_chain`] is the check `gatehouse audit verify` runs.
//! Records never hold a token or a tool argument, and every caller-chosen string is clipped.
use axum::body::Body;
use axum::response::Response;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use crate::error::{MAX_FIELD, clip};

/// Marks a response the proxy has audited already.
#[derive(Clone, Copy)]
pub struct Audited;

/// State of [`audit_refusals`]: the log and the upstream's name.
#[derive(Clone)]
pub struct RefusalAudit {
    pub audit: Option<Arc<Audit>>,
    pub server: String,
}

/// Outside the guard: requests it refused (no or bad token, missing scope, someone else's
/// session, malformed) never reach the proxy, so they are audited here, with the status and
/// the Bearer error; the caller is unknown at that point.
pub async fn audit_refusals(
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
            .map(clip);
        metrics::counter!("gatehouse_gateway_requests_total", "server" => s.server.clone(), "decision" => "refused")
            .increment(1);
        if let Some(a) = &s.audit {
            a.record(&serde_json::json!({
                "time": now_rfc3339(),
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

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One audit line for one message the proxy handled (never a token or a tool argument).
#[derive(serde::Serialize)]
pub struct CallRecord<'a> {
    pub time: String,
    pub subject: Option<&'a str>,
    pub client: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub server: &'a str,
    pub http_method: &'a str,
    pub method: Option<String>,
    pub tool: Option<String>,
    /// The message's position in a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<usize>,
    pub decision: &'static str,
    // Integers only: the chain is checked by re-serialising records, and floats do not
    // round-trip byte for byte.
    pub latency_us: u64,
    pub upstream_status: Option<u16>,
    /// The W3C trace the call belongs to (GW-T1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// What the decision adds (the refusing policies, the scopes needed, the limit hit).
    #[serde(flatten)]
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The proxy's metrics handles, one per outcome, registered on first use (after the recorder
/// is installed): building labelled names and finding them in the registry cost more than the
/// increments.
pub struct ProxyMetrics {
    server: String,
    /// Indexed by `Outcome as usize`.
    outcomes: [std::sync::OnceLock<metrics::Counter>; crate::error::Outcome::ALL.len()],
    latency: std::sync::OnceLock<metrics::Histogram>,
}

impl ProxyMetrics {
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            outcomes: Default::default(),
            latency: std::sync::OnceLock::new(),
        }
    }

    pub fn record(&self, outcome: crate::error::Outcome, took: std::time::Duration) {
        if let Some(counter) = self.outcomes.get(outcome as usize) {
            counter
                .get_or_init(|| {
                    metrics::counter!("gatehouse_gateway_requests_total", "server" => self.server.clone(), "decision" => outcome.as_str())
                })
                .increment(1);
        }
        self.latency
            .get_or_init(|| {
                metrics::histogram!("gatehouse_gateway_request_seconds", "server" => self.server.clone())
            })
            .record(took.as_secs_f64());
    }
}

/// The hash-chained log.
pub struct Audit {
    state: Mutex<(std::fs::File, String)>,
}

/// The chain's start: the `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Audit {
    /// Opens (or creates, mode 0600) the log at `path`, continuing its chain.
    pub fn open(path: &str) -> std::io::Result<Self> {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        let last = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().last().map(str::to_owned))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .and_then(|v| v["hash"].as_str().map(str::to_owned))
            .unwrap_or_else(|| GENESIS.to_owned());
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o.open(path)?;
        Ok(Self {
            state: Mutex::new((f, last)),
        })
    }

    /// Appends `record` (a JSON object) with `prev` and `hash` added at its end. The record is
    /// serialised once; the bytes are those of the object with `prev` (what `hash` covers), then
    /// `hash`: what [`verify_chain`] recomputes from a parsed line.
    pub fn record(&self, record: &impl serde::Serialize) {
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

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number.
    pub line: usize,
    pub why: &'static str,
}

/// Checks a whole log: the number of records when the chain holds, else the first bad line.
pub fn verify_chain(log: &str) -> Result<usize, ChainBreak> {
    let mut prev = GENESIS.to_owned();
    let mut count = 0;
    for (i, line) in log.split_terminator('\n').enumerate() {
        let bad = |why| ChainBreak { line: i + 1, why };
        let mut v: serde_json::Value =
            serde_json::from_str(line).map_err(|_| bad("not a JSON object"))?;
        let obj = v.as_object_mut().ok_or_else(|| bad("not a JSON object"))?;
        let hash = obj
            .remove("hash")
            .and_then(|h| h.as_str().map(str::to_owned))
            .ok_or_else(|| bad("no hash"))?;
        if obj.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
            return Err(bad("prev is not the hash of the line before"));
        }
        let h = gatehouse_core::sha256_hex(&v.to_string());
        if h != hash {
            return Err(bad("hash does not match the record"));
        }
        prev = hash;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_chain_shows_tampering() {
        let path = std::env::temp_dir().join(format!("gh-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let p = path.display().to_string();
        let a = Audit::open(&p).expect("open");
        for i in 0..3 {
            a.record(&serde_json::json!({"n": i, "subject": "alice \u{1F600} \\ \""}));
        }
        a.record(&serde_json::json!({"policies": ["no \"secrets\"\n"], "upstream_status": null}));
        drop(a);
        // Reopening continues the chain.
        Audit::open(&p)
            .expect("reopen")
            .record(&serde_json::json!({"n": 3}));
        let log = std::fs::read_to_string(&path).expect("read");
        assert_eq!(log.lines().count(), 5);
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Value>(log.lines().nth(3).expect("line"))
                .expect("json")
                .as_object()
                .expect("object")
                .keys()
                .cloned()
                .collect();
        assert_eq!(keys.last().map(String::as_str), Some("hash"), "hash last");
        assert_eq!(verify_chain(&log), Ok(5));
        assert_eq!(verify_chain(""), Ok(0));
        let tampered = log.replacen("alice", "mallory", 1);
        assert_eq!(verify_chain(&tampered).map_err(|b| b.line), Err(1));
        let dropped: String = log.lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert_eq!(verify_chain(&dropped).map_err(|b| b.line), Err(1));
        let mut lines: Vec<&str> = log.lines().collect();
        lines.swap(2, 3);
        assert_eq!(verify_chain(&lines.join("\n")).map_err(|b| b.line), Err(3));
        let cut = format!("{}garbage\n", log);
        assert_eq!(verify_chain(&cut).map_err(|b| b.line), Err(6));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn long_fields_are_clipped() {
        let long = "m".repeat(100_000);
        let c = clip(&long);
        assert!(c.len() < 300 && c.ends_with("(100000 bytes)"), "{c}");
        assert_eq!(clip("tools/call"), "tools/call");
        let multi = "é".repeat(200);
        assert!(clip(&multi).starts_with('é'));
    }
}
