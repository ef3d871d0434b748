//! The catalogue: every check's stable id, group, title, severity, reference and fix hint, in
//! report order; and the constructors of findings, which take all but the detail from here.
use crate::{Finding, Severity, Status};

pub(crate) struct Def {
    pub(crate) id: &'static str,
    pub(crate) group: &'static str,
    pub(crate) title: &'static str,
    pub(crate) severity: Severity,
    pub(crate) reference: &'static str,
    pub(crate) hint: &'static str,
}

pub(crate) const DEFS: &[Def] = &[
    Def {
        id: "HTTPS",
        group: "Transport",
        title: "The endpoint is served over https",
        severity: Severity::High,
        reference: "OAuth 2.1 §1.5; MCP 2025-11-25 Authorization §Communication Security",
        hint: "Serve the endpoint over TLS (plain http only on loopback for development).",
    },
    Def {
        id: "ORIGIN",
        group: "Transport",
        title: "A request from a hostile Origin is refused",
        severity: Severity::High,
        reference: "MCP 2025-11-25 Transports §Security Warning (Origin validation, DNS rebinding)",
        hint: "Validate the Origin header and answer 403 to origins you do not serve.",
    },
    Def {
        id: "CORS",
        group: "Transport",
        title: "CORS does not reflect arbitrary origins",
        severity: Severity::Medium,
        reference: "Fetch Standard §CORS protocol; MCP 2025-11-25 Transports §Security Warning",
        hint: "Allow only the browser origins you serve; never echo the request's Origin.",
    },
    Def {
        id: "HOST",
        group: "Transport",
        title: "A loopback server refuses a foreign Host (DNS rebinding)",
        severity: Severity::Medium,
        reference: "MCP 2025-11-25 Transports §Security Warning (DNS rebinding)",
        hint: "On loopback, accept only the Host names you serve (localhost, 127.0.0.1:PORT).",
    },
    Def {
        id: "MCP-METHOD",
        group: "Transport",
        title: "An Mcp-Method header that contradicts the body is refused (2026-07-28)",
        severity: Severity::Medium,
        reference: "MCP 2026-07-28 Transports §Request Headers",
        hint: "Compare Mcp-Method/Mcp-Name with the JSON-RPC body and answer 400 when they differ.",
    },
    Def {
        id: "MCP-NAME",
        group: "Transport",
        title: "An Mcp-Name header that contradicts the body is refused (2026-07-28)",
        severity: Severity::Medium,
        reference: "MCP 2026-07-28 Transports §Request Headers",
        hint: "Compare Mcp-Name with the tool, prompt or resource named in the body and answer 400 when they differ.",
    },
    Def {
        id: "AUTH-REQUIRED",
        group: "Challenge",
        title: "A request without credentials is refused",
        severity: Severity::Critical,
        reference: "MCP 2025-11-25 Authorization §Access Token Usage; RFC 6750 §3",
        hint: "Require a valid access token on every request to the MCP endpoint.",
    },
    Def {
        id: "CHALLENGE",
        group: "Challenge",
        title: "401 with a Bearer challenge naming resource_metadata",
        severity: Severity::High,
        reference: "RFC 9728 §5.1; MCP 2025-11-25 Authorization §Protected Resource Metadata Discovery",
        hint: "Answer 401 with `WWW-Authenticate: Bearer resource_metadata=\"<PRM URL>\"`.",
    },
    Def {
        id: "CHALLENGE-NO-ERROR",
        group: "Challenge",
        title: "No error code in the challenge to a request without credentials",
        severity: Severity::Low,
        reference: "RFC 6750 §3.1",
        hint: "Leave out `error=` when the request carried no token.",
    },
    Def {
        id: "CHALLENGE-SCOPE",
        group: "Challenge",
        title: "The challenge names the scope needed",
        severity: Severity::Low,
        reference: "MCP 2025-11-25 Authorization §Scope Selection Strategy; RFC 6750 §3",
        hint: "Add `scope=\"…\"` to the 401 challenge so clients ask for the right scopes.",
    },
    Def {
        id: "PRM-WELLKNOWN",
        group: "Protected resource metadata",
        title: "Metadata at the well-known location (or through the challenge)",
        severity: Severity::Medium,
        reference: "RFC 9728 §3.1; MCP 2025-11-25 Authorization §Protected Resource Metadata Discovery",
        hint: "Serve the metadata at /.well-known/oauth-protected-resource<path of the endpoint>.",
    },
    Def {
        id: "PRM-RESOURCE",
        group: "Protected resource metadata",
        title: "The metadata's `resource` is exactly the endpoint URL",
        severity: Severity::High,
        reference: "RFC 9728 §3.3",
        hint: "Set `resource` to the exact URL clients use (scheme, host, port, path).",
    },
    Def {
        id: "PRM-AS",
        group: "Protected resource metadata",
        title: "The metadata names an https authorization server",
        severity: Severity::High,
        reference: "RFC 9728 §2; MCP 2025-11-25 Authorization §Authorization Server Location",
        hint: "List the issuer in `authorization_servers` (https).",
    },
    Def {
        id: "AS-METADATA",
        group: "Authorization server",
        title: "Authorization server metadata found, `issuer` exact",
        severity: Severity::High,
        reference: "RFC 8414 §3, §3.3; MCP 2025-11-25 Authorization §Authorization Server Metadata Discovery",
        hint: "Serve RFC 8414 metadata whose `issuer` is byte-for-byte the listed issuer.",
    },
    Def {
        id: "AS-PKCE",
        group: "Authorization server",
        title: "PKCE with S256 advertised",
        severity: Severity::High,
        reference: "OAuth 2.1 §4.1.1, §7.5.2; MCP 2025-11-25 Authorization §Authorization Code Protection",
        hint: "Support S256 and list it in `code_challenge_methods_supported` (not `plain`).",
    },
    Def {
        id: "AS-ISS",
        group: "Authorization server",
        title: "The `iss` authorization response parameter is supported",
        severity: Severity::Medium,
        reference: "RFC 9207 §3",
        hint: "Send `iss` with every authorization response and advertise it (mix-up defence).",
    },
    Def {
        id: "AS-ENDPOINTS-HTTPS",
        group: "Authorization server",
        title: "The authorization server's endpoints are https URLs",
        severity: Severity::High,
        reference: "OAuth 2.1 §1.5; RFC 8414 §2",
        hint: "Publish only https endpoints (clients open authorization_endpoint in a browser).",
    },
    Def {
        id: "AS-AUTH-ALGS",
        group: "Authorization server",
        title: "JWT client authentication lists its algorithms, never `none`",
        severity: Severity::Medium,
        reference: "RFC 8414 §2 (token_endpoint_auth_signing_alg_values_supported); RFC 7523 §3",
        hint: "With private_key_jwt or client_secret_jwt, list the signing algorithms you verify and never `none`.",
    },
    Def {
        id: "ALG-NONE",
        group: "Tokens",
        title: "An unsigned token (`alg: none`) is refused",
        severity: Severity::Critical,
        reference: "RFC 8725 §2.1, §3.1; RFC 9068 §4",
        hint: "Verify every token's signature with the issuer's keys; never accept `alg: none`.",
    },
    Def {
        id: "ALG-CONFUSION",
        group: "Tokens",
        title: "A token MACed with the issuer's public key (HS256) is refused",
        severity: Severity::Critical,
        reference: "RFC 8725 §2.1, §3.1 (algorithm confusion)",
        hint: "Pin the algorithms each key may verify; never verify HMAC with a public key.",
    },
    Def {
        id: "TOKEN-VALID",
        group: "Tokens",
        title: "The given valid token is accepted",
        severity: Severity::Info,
        reference: "MCP 2025-11-25 Authorization §Token Handling",
        hint: "Check the token is for this endpoint (audience) and not expired.",
    },
    Def {
        id: "TAMPERED",
        group: "Tokens",
        title: "A token with altered claims is refused",
        severity: Severity::Critical,
        reference: "RFC 7515 §5.2; RFC 9068 §4",
        hint: "Verify the signature over the whole token before reading any claim.",
    },
    Def {
        id: "SIGNATURE",
        group: "Tokens",
        title: "A token signed by a key that is not the issuer's is refused",
        severity: Severity::Critical,
        reference: "RFC 7515 §5.2; RFC 8725 §3.1; RFC 9068 §4",
        hint: "Verify the signature with the issuer's published keys (its jwks_uri) only.",
    },
    Def {
        id: "EMBEDDED-KEY",
        group: "Tokens",
        title: "A token carrying its own key (`jwk` header) is refused",
        severity: Severity::Critical,
        reference: "RFC 8725 §3.10 (key in the header); RFC 7515 §4.1.3",
        hint: "Never verify with a key named in the token itself (jwk, jku, x5u, x5c).",
    },
    Def {
        id: "AUDIENCE",
        group: "Tokens",
        title: "A token for another resource is refused",
        severity: Severity::Critical,
        reference: "RFC 8707 §2; RFC 9068 §4; MCP 2025-11-25 Authorization §Token Audience Binding",
        hint: "Accept only tokens whose `aud` is this endpoint (no token passthrough, no confused deputy).",
    },
    Def {
        id: "EXPIRED",
        group: "Tokens",
        title: "An expired token is refused",
        severity: Severity::High,
        reference: "RFC 7519 §4.1.4; RFC 9068 §4",
        hint: "Check `exp` (with at most a minute of leeway).",
    },
    Def {
        id: "QUERY-TOKEN",
        group: "Tokens",
        title: "A token in the URL query is refused",
        severity: Severity::High,
        reference: "OAuth 2.1 §5.2; MCP 2025-11-25 Authorization §Token Requirements",
        hint: "Read the token from the Authorization header only.",
    },
    Def {
        id: "INVALID-TOKEN",
        group: "Tokens",
        title: "A malformed token gets 401 with error=\"invalid_token\"",
        severity: Severity::Medium,
        reference: "MCP 2025-11-25 Authorization §Error Handling; RFC 6750 §3.1",
        hint: "Answer an invalid, expired or malformed token with 401 and `Bearer error=\"invalid_token\"` (clients then get a new token).",
    },
    Def {
        id: "INSUFFICIENT-SCOPE",
        group: "Tokens",
        title: "A call the token's scopes do not cover gets 403 naming the scopes needed",
        severity: Severity::Medium,
        reference: "MCP 2025-11-25 Authorization §Runtime Insufficient Scope Errors; RFC 6750 §3.1",
        hint: "Answer 403 with `Bearer error=\"insufficient_scope\", scope=\"<every scope needed>\"` (not 401: clients re-authenticate instead of stepping up).",
    },
    Def {
        id: "SESSION-AUTH",
        group: "Sessions",
        title: "A session id alone does not authenticate",
        severity: Severity::Critical,
        reference: "MCP 2025-11-25 Security Best Practices §Session Hijacking",
        hint: "Require the token on every request and bind sessions to the user who opened them.",
    },
    Def {
        id: "SESSION-USER",
        group: "Sessions",
        title: "Another user's token cannot use a session",
        severity: Severity::High,
        reference: "MCP 2025-11-25 Security Best Practices §Session Hijacking (bind sessions to the user)",
        hint: "Store the user with the session and refuse requests whose token names another user.",
    },
    Def {
        id: "SESSION-ID",
        group: "Sessions",
        title: "Session ids are the server's own: long, random, visible ASCII",
        severity: Severity::Medium,
        reference: "MCP 2025-11-25 Transports §Session Management; Security Best Practices §Session Hijacking",
        hint: "Make session ids from a secure random source (at least 128 bits), e.g. a random UUID.",
    },
    Def {
        id: "AS-PKCE-REQUIRED",
        group: "Authorization server (active)",
        title: "An authorization request without PKCE is refused",
        severity: Severity::High,
        reference: "OAuth 2.1 §4.1.1; MCP 2025-11-25 Authorization §Authorization Code Protection",
        hint: "Refuse authorization requests without code_challenge (invalid_request).",
    },
    Def {
        id: "AS-PKCE-PLAIN",
        group: "Authorization server (active)",
        title: "PKCE `plain` is refused",
        severity: Severity::High,
        reference: "OAuth 2.1 §4.1.1, §7.5.2",
        hint: "Accept only code_challenge_method=S256.",
    },
    Def {
        id: "AS-REDIRECT-EXACT",
        group: "Authorization server (active)",
        title: "A redirect URI one character off is never redirected to",
        severity: Severity::Critical,
        reference: "OAuth 2.1 §2.3.1, §4.1.2.1; RFC 9700 §4.1",
        hint: "Compare redirect URIs exactly (only the port of a loopback IP literal may vary).",
    },
    Def {
        id: "AS-ERROR-REDIRECT",
        group: "Authorization server (active)",
        title: "Errors are not redirected to a self-registered client before the user saw a page",
        severity: Severity::Low,
        reference: "RFC 9700 §4.11.2 (open redirection); MCP 2025-11-25 Security Best Practices",
        hint: "For unverified (self-registered) clients show errors on a page instead of redirecting.",
    },
    Def {
        id: "AS-FRAMING",
        group: "Authorization server (active)",
        title: "The sign-in page cannot be framed (clickjacking)",
        severity: Severity::Medium,
        reference: "RFC 9700 §4.16; OAuth 2.1 §7.8",
        hint: "Send `Content-Security-Policy: frame-ancestors 'none'` (and `X-Frame-Options: DENY`) on login and consent pages.",
    },
    Def {
        id: "AS-DCR-MACHINE",
        group: "Authorization server (active)",
        title: "Open registration cannot mint client_credentials tokens",
        severity: Severity::High,
        reference: "RFC 7591 §5; MCP 2025-11-25 Security Best Practices",
        hint: "Limit what self-registered clients may be: public authorization_code clients only.",
    },
    Def {
        id: "AS-TOKEN-AUDIENCE",
        group: "Authorization server (active)",
        title: "The token issued for the endpoint names it as its audience",
        severity: Severity::Critical,
        reference: "RFC 8707 §2.2; MCP 2025-11-25 Authorization §Resource Parameter Implementation",
        hint: "Honour `resource`: put it in the token's `aud` (and nothing broader).",
    },
    Def {
        id: "AS-TOKEN-NO-STORE",
        group: "Authorization server (active)",
        title: "Token responses are not cached (`Cache-Control: no-store`)",
        severity: Severity::Medium,
        reference: "OAuth 2.1 §3.2.3; RFC 6749 §5.1",
        hint: "Send `Cache-Control: no-store` with every token response.",
    },
    Def {
        id: "AS-REFRESH-ROTATION",
        group: "Authorization server (active)",
        title: "A public client's refresh token is rotated on use",
        severity: Severity::Medium,
        reference: "OAuth 2.1 §4.3.1; RFC 9700 §4.14.2",
        hint: "Issue a new refresh token on every refresh (or bind it to the client with DPoP).",
    },
    Def {
        id: "AS-REFRESH-REUSE",
        group: "Authorization server (active)",
        title: "A rotated refresh token used again is refused",
        severity: Severity::High,
        reference: "RFC 9700 §4.14.2 (refresh token reuse detection)",
        hint: "Refuse a refresh token once its successor was used, and revoke the family.",
    },
    Def {
        id: "AS-CODE-REUSE",
        group: "Authorization server (active)",
        title: "An authorization code is accepted once only",
        severity: Severity::High,
        reference: "OAuth 2.1 §4.1.3; RFC 9700 §4.5",
        hint: "Mark codes used at the first exchange and refuse (and revoke on) any replay.",
    },
];

/// Every check: id, severity, title and reference, in report order.
pub(crate) fn catalogue()
-> impl Iterator<Item = (&'static str, Severity, &'static str, &'static str)> {
    DEFS.iter()
        .map(|d| (d.id, d.severity, d.title, d.reference))
}

fn finding(id: &'static str, status: Status, detail: impl Into<String>) -> Finding {
    let d = DEFS.iter().find(|d| d.id == id);
    let (title, severity, reference, hint, group) = match d {
        Some(d) => (d.title, d.severity, d.reference, d.hint, d.group),
        None => ("", Severity::Info, "", "", ""),
    };
    Finding {
        id,
        title,
        severity,
        status,
        detail: printable(&detail.into()),
        reference,
        hint,
        group,
    }
}

/// Most characters of a detail shown.
const MAX_DETAIL: usize = 300;

/// A detail as it may reach a terminal: details quote what the target sent (its metadata, its
/// headers, its error messages), so control characters (terminal escapes, new lines) are shown
/// escaped and the length is bounded.
pub(crate) fn printable(detail: &str) -> String {
    let mut out = String::new();
    for (i, c) in detail.chars().enumerate() {
        if i == MAX_DETAIL {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn pass(id: &'static str, detail: impl Into<String>) -> Finding {
    finding(id, Status::Pass, detail)
}
pub(crate) fn fail(id: &'static str, detail: impl Into<String>) -> Finding {
    finding(id, Status::Fail, detail)
}
pub(crate) fn skip(id: &'static str, detail: impl Into<String>) -> Finding {
    finding(id, Status::Skip, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_target_sent_reaches_the_terminal_escaped_and_bounded() {
        let f = fail(
            "PRM-RESOURCE",
            "resource is \u{1b}[2J\u{1b}]0;owned\u{7}\nline",
        );
        assert!(!f.detail.chars().any(char::is_control), "{:?}", f.detail);
        assert!(f.detail.contains("\\u{1b}[2J"), "{}", f.detail);
        let long = fail("PRM-RESOURCE", "x".repeat(10_000));
        assert_eq!(long.detail.chars().count(), MAX_DETAIL + 1);
    }
}
