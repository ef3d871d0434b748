//! W3C Trace Context across the hop (GW-T1): a valid inbound `traceparent` continues its trace
//! with a span of the gateway's own (a new parent id, the same trace id and flags) and its
//! `tracestate` passes on; an invalid or missing one starts a new trace. Either way the
//! upstream gets a `traceparent` and the audit record names the trace id, so a call can be
//! followed from client to gateway to upstream.
//!
//! When traces are exported (OpenTelemetry), the request's span already continues the caller's
//! trace: its trace id is the one audited, and the upstream's `traceparent` names the span of
//! the upstream call, so the exported spans and the upstream's join up.
use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry ids of `span` (trace id, span id, flags) when traces are exported.
fn otel_ids(span: &tracing::Span) -> Option<(String, String, String)> {
    // Without exported traces the spans are off: no context to build on every call.
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            format!("{:02x}", sc.trace_flags().to_u8()),
        )
    })
}

/// The `traceparent` naming `span`, when traces are exported.
pub fn otel_traceparent(span: &tracing::Span) -> Option<HeaderValue> {
    let (trace, id, flags) = otel_ids(span)?;
    HeaderValue::from_str(&format!("00-{trace}-{id}-{flags}")).ok()
}

/// The trace a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    trace_id: String,
    flags: String,
    /// The inbound `tracestate`, kept only with a valid `traceparent` (W3C §3.3).
    state: Option<HeaderValue>,
}

fn hex_of(len: usize, s: &str) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A random, non-zero id: 16 bytes (a trace id) or 8 (a span id), as lower-case hex.
fn random_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>().max(1))
}

fn random_span_id() -> String {
    format!("{:016x}", rand::random::<u64>().max(1))
}

impl Trace {
    /// The trace of an inbound request: continued when its (single) `traceparent` is a valid
    /// version-00 header, else new.
    pub fn from_headers(h: &HeaderMap) -> Self {
        let mut values = h.get_all("traceparent").iter();
        let parsed = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().and_then(Self::parse),
            _ => None,
        };
        let state = || {
            h.get("tracestate")
                .filter(|v| v.len() <= 512 && h.get_all("tracestate").iter().count() == 1)
                .cloned()
        };
        // The request's exported span continued (or began) the trace already.
        if let Some((trace_id, _, flags)) = otel_ids(&tracing::Span::current()) {
            let state = parsed.filter(|(t, _)| *t == trace_id).and_then(|_| state());
            return Self {
                trace_id,
                flags,
                state,
            };
        }
        match parsed {
            Some((trace_id, flags)) => Self {
                trace_id,
                flags,
                state: state(),
            },
            None => Self {
                trace_id: random_trace_id(),
                flags: "00".into(),
                state: None,
            },
        }
    }

    fn parse(v: &str) -> Option<(String, String)> {
        let mut parts = v.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let ok = parts.next().is_none()
            && version == "00"
            && hex_of(32, trace)
            && trace.bytes().any(|b| b != b'0')
            && hex_of(16, parent)
            && parent.bytes().any(|b| b != b'0')
            && hex_of(2, flags);
        ok.then(|| (trace.to_owned(), flags.to_owned()))
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// Puts this hop's `traceparent` (a new span of the trace) and the kept `tracestate` in
    /// `h`, replacing what the caller sent.
    pub fn apply(&self, h: &mut HeaderMap) {
        let parent = format!("00-{}-{}-{}", self.trace_id, random_span_id(), self.flags);
        h.remove("traceparent");
        h.remove("tracestate");
        if let Ok(v) = HeaderValue::from_str(&parent) {
            h.insert("traceparent", v);
        }
        if let Some(s) = &self.state {
            h.insert("tracestate", s.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("ascii"));
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = Trace::from_headers(&headers(&[("traceparent", inbound), ("tracestate", "v=1")]));
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = headers(&[("traceparent", inbound)]);
        t.apply(&mut out);
        let p = out["traceparent"].to_str().expect("ascii");
        assert!(p.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && p.ends_with("-01"));
        assert_ne!(p, inbound, "the gateway's own span");
        assert_eq!(out["tracestate"], "v=1");
    }

    #[test]
    fn invalid_or_missing_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
        ] {
            let t = Trace::from_headers(&headers(&[("traceparent", bad), ("tracestate", "v=1")]));
            assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(hex_of(32, t.trace_id()));
            let mut out = HeaderMap::new();
            t.apply(&mut out);
            assert!(
                out.get("tracestate").is_none(),
                "no state without a valid parent: {bad}"
            );
            assert!(Trace::parse(out["traceparent"].to_str().expect("ascii")).is_some());
        }
        let two = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_ne!(
            Trace::from_headers(&two).trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
