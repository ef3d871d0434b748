//! The connect flow's pages (GW-09): escaped, never framed, cached or given a referrer.
use axum::response::{Html, IntoResponse, Response};
use gatehouse_core::ScopeSet;
use http::StatusCode;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A page of ours: no framing (clickjacking), no caching, no referrer.
pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head><body><main>\
         <h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    );
    (
        status,
        [
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; form-action 'self' https: http:; frame-ancestors 'none'",
            ),
            (http::header::X_FRAME_OPTIONS, "DENY"),
            (http::header::CACHE_CONTROL, "no-store"),
            (http::header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(html),
    )
        .into_response()
}

pub(crate) fn refuse(status: StatusCode, why: &str) -> Response {
    page(status, "Not connected", &format!("<p>{}</p>", esc(why)))
}

/// What the approval page shows.
pub(crate) struct Approval<'a> {
    pub(crate) subject: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) issuer: &'a str,
    pub(crate) authorization_endpoint: &'a str,
    pub(crate) public: &'a str,
    pub(crate) approval: &'a str,
    pub(crate) scopes: &'a ScopeSet,
}

/// The gateway's own approval page: who connects what, which scopes, where the browser goes.
pub(crate) fn approval(a: &Approval<'_>) -> Response {
    let scopes = if a.scopes.is_empty() {
        "<li>what the server grants by default</li>".to_owned()
    } else {
        a.scopes
            .iter()
            .map(|s| format!("<li><code>{}</code></li>", esc(s.as_str())))
            .collect()
    };
    page(
        StatusCode::OK,
        &format!("Connect {}?", a.upstream),
        &format!(
            "<p>Signed in as <strong>{sub}</strong>.</p>\
             <p>The gateway asks to act for you at <strong>{upstream}</strong> ({resource}). \
             You will sign in at its authorization server <strong>{issuer}</strong> \
             ({authz}), which sends you back to <code>{cb}</code>. The gateway keeps the \
             token (encrypted) and never gives it to your MCP client.</p>\
             <p>It asks for:</p><ul>{scopes}</ul>\
             <form method=\"post\" action=\"{public}/connect/approve\">\
             <input type=\"hidden\" name=\"approval\" value=\"{approval}\">\
             <button type=\"submit\" name=\"decision\" value=\"approve\">Connect</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">Cancel</button></form>",
            sub = esc(a.subject),
            upstream = esc(a.upstream),
            resource = esc(a.resource),
            issuer = esc(a.issuer),
            authz = esc(a.authorization_endpoint),
            cb = esc(&format!("{}/connect/callback", a.public)),
            public = esc(a.public),
            approval = esc(a.approval),
        ),
    )
}
