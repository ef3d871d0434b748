//! Logs and traces. Logs go to stderr (text or one JSON object per line); with `traces:` the
//! same `tracing` spans are also exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK:
//! one server span per request (continuing a caller's W3C `traceparent`), and inside it the
//! guard's token validation, the gateway's policy decision and its upstream call, whose
//! `traceparent` names that span (so the upstream's spans join the trace).
//!
//! Spans are at DEBUG level under `gatehouse…` targets: the exporter's own filter takes them,
//! while the log filter (`GATEHOUSE_LOG`, default `info`) leaves log lines as they were. Span
//! fields never hold a token, a query string or a request body.
use crate::config::TracesSection;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The exporter, kept to flush what is buffered when the process stops.
pub(crate) struct Traces(SdkTracerProvider);

impl Traces {
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("warning: traces not all exported at exit: {e}");
        }
    }
}

fn exporter(t: &TracesSection) -> Result<SdkTracerProvider, String> {
    let base = t.otlp_endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let parsed = url::Url::parse(&url).map_err(|e| format!("traces.otlp_endpoint: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("traces.otlp_endpoint: an http or https URL".into());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(std::time::Duration::from_secs(10))
        .with_headers(
            t.headers
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        )
        .build()
        .map_err(|e| format!("traces: {e}"))?;
    let ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        return Err("traces.sample_ratio: 0.0 … 1.0".into());
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            t.service_name
                .clone()
                .unwrap_or_else(|| "gatehouse".to_owned()),
        )
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Checks `traces:` without starting anything (`config check`).
pub(crate) fn check(t: &TracesSection) -> Result<(), String> {
    // Building the exporter makes a blocking HTTP client, which must not happen on a runtime
    // thread; the URL and ratio are what can be wrong.
    let base = t.otlp_endpoint.trim_end_matches('/');
    let u = url::Url::parse(base).map_err(|e| format!("traces.otlp_endpoint: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("traces.otlp_endpoint: an http or https URL".into());
    }
    if !(0.0..=1.0).contains(&t.sample_ratio.unwrap_or(1.0)) {
        return Err("traces.sample_ratio: 0.0 … 1.0".into());
    }
    Ok(())
}

/// Installs the log output and, with `traces`, the OTLP exporter. Call before any runtime
/// starts (the exporter runs on threads of its own with a blocking client).
pub(crate) fn init(json: bool, traces: Option<&TracesSection>) -> Result<Option<Traces>, String> {
    let filter =
        EnvFilter::try_from_env("GATEHOUSE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let provider = traces.map(exporter).transpose()?;
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let spans = tracing_subscriber::filter::Targets::new()
            .with_target("gatehouse", tracing::Level::DEBUG)
            .with_target("gatehouse_guard", tracing::Level::DEBUG)
            .with_target("gatehouse_gateway", tracing::Level::DEBUG)
            .with_target("gatehouse_server", tracing::Level::DEBUG)
            .with_target("gatehouse_tokens", tracing::Level::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("gatehouse"))
            .with_filter(spans)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Ok(provider.map(Traces))
}

/// A path with every segment that looks like a random identifier (16 or more URL-safe
/// characters with a digit or a capital among them; words like `oauth-protected-resource`
/// have neither) replaced by `{id}`.
fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let random = seg.len() >= 16
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && seg
                    .bytes()
                    .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            if random { "{id}" } else { seg }
        })
        .collect::<Vec<_>>()
        .join("/")
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Middleware: one server span per request, the child of the caller's `traceparent` when it
/// sends a valid one, named by method and path; the status is recorded when the answer is
/// ready.
pub(crate) async fn request_span(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // The path only (a query string can hold codes and states), with long random segments
    // (the gateway's connect links are capabilities) replaced by `{id}`.
    let route = redact_path(req.uri().path());
    let method = req.method().as_str().to_owned();
    let span = tracing::debug_span!(
        target: "gatehouse::request",
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let _ = span.set_parent(parent);
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_path_segments_are_not_exported() {
        assert_eq!(
            super::redact_path("/connect/Xk3v_9QmZp2LrT8wYb4N"),
            "/connect/{id}"
        );
        assert_eq!(
            super::redact_path("/servers/everything/mcp"),
            "/servers/everything/mcp"
        );
        assert_eq!(
            super::redact_path("/.well-known/oauth-protected-resource/mcp"),
            "/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(super::redact_path("/admin/sessions"), "/admin/sessions");
    }
}
