//! Server-rendered pages (no JavaScript). askama escapes every value (HTML context).
use askama::Template;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct LoginPage<'a> {
    pub(crate) client_name: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) issuer: &'a str,
    pub(crate) action: &'a str,
    pub(crate) pending: &'a str,
    pub(crate) csrf: &'a str,
    pub(crate) error: Option<&'a str>,
    /// The upstream identity provider's display name, when SSO is configured.
    pub(crate) upstream: Option<&'a str>,
    pub(crate) upstream_action: &'a str,
    pub(crate) local: bool,
}

#[derive(Template)]
#[template(path = "consent.html")]
pub(crate) struct ConsentPage<'a> {
    pub(crate) client_name: &'a str,
    pub(crate) identity: &'a str,
    pub(crate) verified: bool,
    pub(crate) redirect_uri: &'a str,
    pub(crate) loopback: bool,
    pub(crate) resource: &'a str,
    pub(crate) resource_host: &'a str,
    pub(crate) scopes: Vec<(String, String)>,
    pub(crate) subject: &'a str,
    pub(crate) action: &'a str,
    pub(crate) pending: &'a str,
    pub(crate) csrf: &'a str,
    /// Answers a device authorization: no redirect; a phishing warning instead.
    pub(crate) device: bool,
}

#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage<'a> {
    pub(crate) message: &'a str,
}

/// Headers on every page: no framing (T12), no caching, no referrer, and a CSP that allows only
/// our own inline styles and form posts to us (plus where the consent form's redirect goes).
pub(crate) fn page(
    status: StatusCode,
    html: Result<String, askama::Error>,
    form_target: Option<&str>,
) -> Response {
    let html = match html {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "template rendering failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    let mut r = (status, axum::response::Html(html)).into_response();
    let h = r.headers_mut();
    let form_action = match form_target {
        Some(t) => format!("'self' {t}"),
        None => "'self'".into(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    page(status, ErrorPage { message }.render(), None)
}

#[derive(Template)]
#[template(path = "client_error.html")]
pub(crate) struct ClientErrorPage<'a> {
    pub(crate) client_name: &'a str,
    pub(crate) identity: &'a str,
    pub(crate) message: &'a str,
    pub(crate) return_url: &'a str,
    pub(crate) return_host: &'a str,
}

/// The device verification page (RFC 8628 §3.3): one field for the user code.
#[derive(Template)]
#[template(path = "device.html")]
pub(crate) struct DevicePage<'a> {
    pub(crate) action: &'a str,
    pub(crate) csrf: &'a str,
    pub(crate) user_code: &'a str,
    pub(crate) error: Option<&'a str>,
}

/// The end of a device sign-in: what was decided, and to go back to the device.
#[derive(Template)]
#[template(path = "device_done.html")]
pub(crate) struct DeviceDonePage<'a> {
    pub(crate) title: &'a str,
    pub(crate) message: &'a str,
}
