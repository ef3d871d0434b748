//! The checks. Each has a stable id (`DEFS`); a run reports every one of them: pass, fail, or
//! skip with the reason (what it needs that was not given).
use crate::probe::{Answer, Probe};
use crate::{CheckError, Finding, Options, Severity, Status};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gatehouse_core::challenge::Challenge;
use serde_json::{Value, json};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"gatehouse-check","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
/// The checks of the authorization server's metadata.
const AS_PASSIVE: [&str; 5] = [
    "AS-METADATA",
    "AS-PKCE",
    "AS-ISS",
    "AS-ENDPOINTS-HTTPS",
    "AS-AUTH-ALGS",
];
/// An origin no deployment allows (`.invalid` never resolves, RFC 6761).
const HOSTILE_ORIGIN: &str = "https://attacker.gatehouse-check.invalid";

struct Def {
    id: &'static str,
    group: &'static str,
    title: &'static str,
    severity: Severity,
    reference: &'static str,
    hint: &'static str,
}

const DEFS: &[Def] = &[
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
        detail: detail.into(),
        reference,
        hint,
        group,
    }
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

/// The claims of a JWT (unverified), when it is one.
pub(crate) fn claims_of(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether an answer let the request in (any 2xx).
fn accepted(a: &Answer) -> bool {
    (200..300).contains(&a.status)
}

fn is_loopback(u: &url::Url) -> bool {
    gatehouse_core::url::is_loopback_host(u)
}

/// https, or http on loopback when private targets are allowed (development).
fn secure_url(u: &url::Url, allow_private: bool) -> bool {
    u.scheme() == "https" || (allow_private && u.scheme() == "http" && is_loopback(u))
}

/// RFC 8414 §3.1 / RFC 9728 §3.1: `/.well-known/<name>` inserted before the path.
fn well_known(u: &url::Url, name: &str) -> Option<url::Url> {
    let path = u.path().trim_end_matches('/');
    let mut w = u.clone();
    w.set_query(None);
    w.set_fragment(None);
    w.set_path(&format!("/.well-known/{name}{path}"));
    Some(w)
}

struct Discovered {
    prm: Option<Value>,
    issuer: Option<String>,
    scope: Option<String>,
    /// The issuer's public keys (its JWKS), when found.
    jwks: Vec<Value>,
    /// What `--login` with `--authorization-server` signed in to: its access token, and the
    /// reuse checks to run last (a replay revokes what the sign-in issued).
    login: Option<crate::active::LoggedIn>,
}

pub(crate) async fn run_all(p: &Probe, opts: &Options) -> Result<Vec<Finding>, CheckError> {
    let mut out = Vec::new();
    let target = p.target.clone();
    out.push(if target.scheme() == "https" {
        pass("HTTPS", "https")
    } else if is_loopback(&target) {
        pass("HTTPS", "plain http on loopback (development only)")
    } else {
        fail("HTTPS", "the endpoint is plain http")
    });

    // Without credentials: the challenge.
    let unauth = p.post(INIT, &[], None).await.map_err(CheckError::Connect)?;
    let challenges: Vec<Challenge> = Challenge::parse_all(
        unauth
            .headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .unwrap_or_default();
    let bearer_ch = challenges.iter().find(|c| c.is_scheme("Bearer"));
    out.push(auth_required(p, &unauth).await);
    let metadata_url = bearer_ch.and_then(|c| c.param("resource_metadata"));
    out.push(match (unauth.status, bearer_ch, metadata_url) {
        (401, Some(_), Some(m)) => pass("CHALLENGE", format!("resource_metadata={m}")),
        (401, Some(_), None) => fail("CHALLENGE", "the Bearer challenge has no resource_metadata"),
        (401, None, _) => fail("CHALLENGE", "401 without a Bearer challenge"),
        (s, _, _) => fail("CHALLENGE", format!("answered {s}, not 401")),
    });
    out.push(match bearer_ch {
        None => skip("CHALLENGE-NO-ERROR", "no Bearer challenge"),
        Some(c) => match c.param("error") {
            Some(e) => fail(
                "CHALLENGE-NO-ERROR",
                format!("error=\"{e}\" without any token sent"),
            ),
            None => pass("CHALLENGE-NO-ERROR", "no error code"),
        },
    });
    let scope = bearer_ch.and_then(|c| c.param("scope")).map(str::to_owned);
    out.push(match (bearer_ch, &scope) {
        (None, _) => skip("CHALLENGE-SCOPE", "no Bearer challenge"),
        (Some(_), Some(s)) => pass("CHALLENGE-SCOPE", format!("scope=\"{s}\"")),
        (Some(_), None) => fail("CHALLENGE-SCOPE", "no scope in the challenge"),
    });

    // Protected resource metadata.
    let d = discover(p, opts, metadata_url, scope, &mut out).await;

    // A token from --login (with --authorization-server) serves like one given.
    let mut effective = opts.clone();
    if effective.token.is_none() {
        effective.token = d.login.as_ref().map(|l| l.access_token.clone());
    }
    // Tokens: refusals mean something only where a request without credentials is refused.
    if accepted(&unauth) {
        for d in DEFS
            .iter()
            .filter(|d| matches!(d.group, "Tokens" | "Sessions"))
        {
            out.push(skip(
                d.id,
                "the endpoint accepts requests without credentials (AUTH-REQUIRED)",
            ));
        }
    } else {
        token_checks(p, &effective, &d, &mut out).await;
    }

    // Transport rules that need the request to get past authentication.
    transport_checks(p, &effective, &unauth, &mut out).await;
    // Last: replays that revoke what the sign-in issued.
    if let Some(l) = d.login {
        crate::active::reuse_checks(p, l, &mut out).await;
    }

    // Every check is reported: what did not run says why.
    for d in DEFS {
        if !out.iter().any(|f| f.id == d.id) {
            out.push(skip(
                d.id,
                if d.group == "Authorization server (active)" && !opts.authorization_server {
                    "needs --authorization-server (registers a client at the authorization server)"
                } else {
                    "not reached (see the checks before it)"
                },
            ));
        }
    }
    // Report in the order of DEFS.
    out.sort_by_key(|f| DEFS.iter().position(|d| d.id == f.id).unwrap_or(usize::MAX));
    Ok(out)
}

/// AUTH-REQUIRED: every method of the endpoint wants credentials, not only POST: the event
/// stream (GET) and the end of a session (DELETE) too.
async fn auth_required(p: &Probe, post: &Answer) -> Finding {
    if accepted(post) {
        return fail(
            "AUTH-REQUIRED",
            format!("initialize without a token answered {}", post.status),
        );
    }
    let mut seen = vec![format!("POST {}", post.status)];
    for (method, headers) in [
        (reqwest::Method::GET, &[("accept", "text/event-stream")][..]),
        (reqwest::Method::DELETE, &[][..]),
    ] {
        match p.status_of(method.clone(), headers).await {
            Ok(s) if (200..300).contains(&s) => {
                return fail(
                    "AUTH-REQUIRED",
                    format!("{method} without a token answered {s}"),
                );
            }
            Ok(s) => seen.push(format!("{method} {s}")),
            Err(e) => seen.push(format!("{method}: {e}")),
        }
    }
    pass("AUTH-REQUIRED", format!("answered {}", seen.join(", ")))
}

async fn fetch_json(p: &Probe, u: &url::Url) -> Result<Value, String> {
    let a = p.get(u).await?;
    if a.status != 200 {
        return Err(format!("{u} answered {}", a.status));
    }
    serde_json::from_str(&a.body).map_err(|e| format!("{u}: not JSON ({e})"))
}

async fn discover(
    p: &Probe,
    opts: &Options,
    metadata_url: Option<&str>,
    scope: Option<String>,
    out: &mut Vec<Finding>,
) -> Discovered {
    let target = &p.target;
    let path_form = well_known(target, "oauth-protected-resource");
    let mut root = target.clone();
    root.set_path("/.well-known/oauth-protected-resource");
    root.set_query(None);
    let mut prm = None;
    let mut wk_ok = None;
    for u in path_form.iter().chain(std::iter::once(&root)) {
        if let Ok(v) = fetch_json(p, u).await
            && v.is_object()
        {
            wk_ok = Some(u.to_string());
            prm = Some(v);
            break;
        }
    }
    let nothing = format!(
        "nothing at {}",
        path_form
            .as_ref()
            .map_or(root.to_string(), url::Url::to_string)
    );
    // MCP 2025-11-25 lets a server publish its metadata either way: through the challenge's
    // `resource_metadata` or at the well-known URI. Only neither is a failure.
    let through_challenge = match (&wk_ok, metadata_url.and_then(|m| url::Url::parse(m).ok())) {
        (None, Some(u)) => fetch_json(p, &u).await.is_ok_and(|v| v.is_object()),
        _ => false,
    };
    out.push(match &wk_ok {
        Some(u) => pass("PRM-WELLKNOWN", u.clone()),
        None if through_challenge => pass(
            "PRM-WELLKNOWN",
            format!("{nothing}; found through the challenge's resource_metadata (allowed)"),
        ),
        None => fail("PRM-WELLKNOWN", nothing),
    });
    // The challenge's URL is what clients follow first.
    if let Some(m) = metadata_url {
        match url::Url::parse(m) {
            Ok(u) => match fetch_json(p, &u).await {
                Ok(v) if v.is_object() => prm = Some(v),
                Ok(_) => {}
                Err(e) => {
                    if prm.is_none() {
                        out.push(fail("PRM-RESOURCE", format!("resource_metadata: {e}")));
                    }
                }
            },
            Err(e) => out.push(fail(
                "PRM-RESOURCE",
                format!("resource_metadata is not a URL: {e}"),
            )),
        }
    }
    let Some(prm) = prm else {
        if !out.iter().any(|f| f.id == "PRM-RESOURCE") {
            out.push(fail("PRM-RESOURCE", "no protected resource metadata found"));
        }
        out.push(fail("PRM-AS", "no protected resource metadata found"));
        for id in AS_PASSIVE {
            out.push(skip(
                id,
                "no protected resource metadata to find the authorization server",
            ));
        }
        return Discovered {
            prm: None,
            issuer: None,
            scope,
            jwks: Vec::new(),
            login: None,
        };
    };
    if !out.iter().any(|f| f.id == "PRM-RESOURCE") {
        out.push(match prm.get("resource").and_then(Value::as_str) {
            Some(r) if r == opts.target => pass("PRM-RESOURCE", r.to_owned()),
            Some(r) => fail(
                "PRM-RESOURCE",
                format!("resource is {r}, the endpoint is {}", opts.target),
            ),
            None => fail("PRM-RESOURCE", "no `resource` in the metadata"),
        });
    }
    let servers: Vec<String> = prm
        .get("authorization_servers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let issuer = servers.first().cloned();
    out.push(match &issuer {
        None => fail("PRM-AS", "no authorization_servers"),
        Some(i) => match url::Url::parse(i) {
            Ok(u) if secure_url(&u, opts.allow_private) => pass("PRM-AS", i.clone()),
            Ok(_) => fail("PRM-AS", format!("{i} is not https")),
            Err(e) => fail("PRM-AS", format!("{i}: {e}")),
        },
    });
    let scope = scope.or_else(|| {
        prm.get("scopes_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
    });
    let (jwks, login) = match &issuer {
        Some(i) => as_checks(p, opts, i, scope.as_deref(), out).await,
        None => {
            for id in AS_PASSIVE {
                out.push(skip(id, "no authorization server named"));
            }
            (Vec::new(), None)
        }
    };
    Discovered {
        prm: Some(prm),
        issuer,
        scope,
        jwks,
        login,
    }
}

/// The authorization server's checks; returns its public keys (for ALG-CONFUSION).
async fn as_checks(
    p: &Probe,
    opts: &Options,
    issuer: &str,
    scope: Option<&str>,
    out: &mut Vec<Finding>,
) -> (Vec<Value>, Option<crate::active::LoggedIn>) {
    let Ok(iu) = url::Url::parse(issuer) else {
        for id in AS_PASSIVE {
            out.push(skip(id, "the issuer is not a URL"));
        }
        return (Vec::new(), None);
    };
    // RFC 8414 path insertion, then the OpenID forms (MCP 2025-11-25 lists all three).
    let mut candidates: Vec<url::Url> = Vec::new();
    candidates.extend(well_known(&iu, "oauth-authorization-server"));
    candidates.extend(well_known(&iu, "openid-configuration"));
    let mut appended = iu.clone();
    appended.set_path(&format!(
        "{}/.well-known/openid-configuration",
        iu.path().trim_end_matches('/')
    ));
    candidates.push(appended);
    let mut meta = None;
    let mut errors = Vec::new();
    for u in &candidates {
        match fetch_json(p, u).await {
            Ok(v) if v.is_object() => {
                meta = Some(v);
                break;
            }
            Ok(_) => errors.push(format!("{u}: not an object")),
            Err(e) => errors.push(e),
        }
    }
    let Some(meta) = meta else {
        out.push(fail("AS-METADATA", errors.join("; ")));
        for id in ["AS-PKCE", "AS-ISS", "AS-ENDPOINTS-HTTPS", "AS-AUTH-ALGS"] {
            out.push(skip(id, "no authorization server metadata"));
        }
        return (Vec::new(), None);
    };
    out.push(match meta.get("issuer").and_then(Value::as_str) {
        Some(i) if i == issuer => pass(
            "AS-METADATA",
            format!("issuer {i}; clients register by {}", registration(&meta)),
        ),
        Some(i) => fail("AS-METADATA", format!("issuer is {i}, listed as {issuer}")),
        None => fail("AS-METADATA", "no issuer in the metadata"),
    });
    let methods: Vec<&str> = meta
        .get("code_challenge_methods_supported")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push(if methods.contains(&"S256") {
        pass(
            "AS-PKCE",
            if methods.contains(&"plain") {
                "S256 (plain listed too: clients must not use it)".to_owned()
            } else {
                "S256".to_owned()
            },
        )
    } else if methods.is_empty() {
        fail(
            "AS-PKCE",
            "code_challenge_methods_supported is missing (MCP clients must refuse)",
        )
    } else {
        fail("AS-PKCE", format!("only {}", methods.join(", ")))
    });
    out.push(
        match meta
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
        {
            Some(true) => pass("AS-ISS", "advertised"),
            _ => fail(
                "AS-ISS",
                "authorization_response_iss_parameter_supported is not true",
            ),
        },
    );
    let mut bad = Vec::new();
    for k in [
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "device_authorization_endpoint",
    ] {
        if let Some(v) = meta.get(k).and_then(Value::as_str) {
            match url::Url::parse(v) {
                Ok(u) if secure_url(&u, opts.allow_private) => {}
                _ => bad.push(format!("{k} {v}")),
            }
        }
    }
    out.push(if bad.is_empty() {
        pass("AS-ENDPOINTS-HTTPS", "every endpoint https")
    } else {
        fail("AS-ENDPOINTS-HTTPS", bad.join("; "))
    });
    out.push(auth_algs(&meta));
    let login = if opts.authorization_server {
        crate::active::run(p, &meta, opts, scope, out).await
    } else {
        None
    };
    let Some(jwks_uri) = meta
        .get("jwks_uri")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
    else {
        return (Vec::new(), login);
    };
    let keys = match fetch_json(p, &jwks_uri).await {
        Ok(v) => v["keys"].as_array().cloned().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    (keys, login)
}

/// How a client the server has never seen gets a client id (reported, not judged: an
/// authorization server may rightly take pre-registered clients only).
fn registration(meta: &Value) -> &'static str {
    let cimd = meta["client_id_metadata_document_supported"] == true;
    let dcr = meta["registration_endpoint"].is_string();
    match (cimd, dcr) {
        (true, true) => "client ID metadata documents or dynamic registration",
        (true, false) => "client ID metadata documents",
        (false, true) => "dynamic registration",
        (false, false) => "pre-registration only",
    }
}

/// AS-AUTH-ALGS: JWT client authentication (private_key_jwt, client_secret_jwt) comes with its
/// algorithms, and `none` is not one of them.
fn auth_algs(meta: &Value) -> Finding {
    let list = |k: &str| -> Vec<&str> {
        meta[k]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let methods = list("token_endpoint_auth_methods_supported");
    let jwt: Vec<&str> = methods
        .iter()
        .copied()
        .filter(|m| matches!(*m, "private_key_jwt" | "client_secret_jwt"))
        .collect();
    if jwt.is_empty() {
        return pass("AS-AUTH-ALGS", "no JWT client authentication offered");
    }
    let algs = list("token_endpoint_auth_signing_alg_values_supported");
    if algs.is_empty() {
        fail(
            "AS-AUTH-ALGS",
            format!(
                "{} without token_endpoint_auth_signing_alg_values_supported",
                jwt.join(", ")
            ),
        )
    } else if algs.iter().any(|a| a.eq_ignore_ascii_case("none")) {
        fail(
            "AS-AUTH-ALGS",
            "`none` is listed as a client assertion algorithm",
        )
    } else {
        pass(
            "AS-AUTH-ALGS",
            format!("{}: {}", jwt.join(", "), algs.join(", ")),
        )
    }
}

async fn token_checks(p: &Probe, opts: &Options, d: &Discovered, out: &mut Vec<Finding>) {
    // ALG-NONE needs no token: unsigned claims that would otherwise fit this endpoint.
    let claims = opts
        .token
        .as_deref()
        .and_then(claims_of)
        .unwrap_or_else(|| {
            let t = now();
            json!({
                "iss": d.issuer.clone().unwrap_or_else(|| p.target.origin().ascii_serialization()),
                "sub": "gatehouse-check", "aud": p.target.as_str(), "client_id": "gatehouse-check",
                "scope": d.scope.clone().unwrap_or_default(), "iat": t, "exp": t + 300,
                "jti": format!("gatehouse-check-{t}"),
            })
        });
    let header = B64.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let unsigned = format!("{header}.{}.", B64.encode(claims.to_string()));
    out.push(
        match p
            .post(INIT, &[("authorization", &bearer(&unsigned))], None)
            .await
        {
            Ok(a) if accepted(&a) => fail("ALG-NONE", format!("accepted ({})", a.status)),
            Ok(a) => pass("ALG-NONE", format!("refused ({})", a.status)),
            Err(e) => skip("ALG-NONE", e),
        },
    );
    let _ = &d.prm;
    out.push(alg_confusion(p, &claims, &d.jwks).await);
    foreign_keys(p, opts, &claims, &d.jwks, out).await;
    out.push(invalid_token(p).await);

    let Some(token) = opts.token.as_deref() else {
        for id in [
            "TOKEN-VALID",
            "TAMPERED",
            "QUERY-TOKEN",
            "SESSION-AUTH",
            "SESSION-ID",
            "SESSION-USER",
        ] {
            out.push(skip(id, "needs --token"));
        }
        out.push(skip(
            "INSUFFICIENT-SCOPE",
            "needs --token and --scope-tool (a tool the token's scopes do not cover)",
        ));
        foreign_and_expired(p, opts, false, out).await;
        return;
    };
    let valid = match p
        .post(INIT, &[("authorization", &bearer(token))], None)
        .await
    {
        Ok(a) if accepted(&a) => {
            out.push(pass("TOKEN-VALID", format!("accepted ({})", a.status)));
            Some(a)
        }
        Ok(a) => {
            out.push(fail(
                "TOKEN-VALID",
                format!(
                    "the given token was refused ({}): token checks are skipped",
                    a.status
                ),
            ));
            None
        }
        Err(e) => {
            out.push(skip("TOKEN-VALID", e));
            None
        }
    };
    let Some(valid) = valid else {
        for id in [
            "TAMPERED",
            "QUERY-TOKEN",
            "SESSION-AUTH",
            "SESSION-ID",
            "SESSION-USER",
            "INSUFFICIENT-SCOPE",
        ] {
            out.push(skip(id, "the given token is not accepted"));
        }
        foreign_and_expired(p, opts, false, out).await;
        return;
    };
    // TAMPERED: the same signature over other claims.
    out.push(
        match (
            token.split('.').collect::<Vec<_>>().as_slice(),
            claims_of(token),
        ) {
            ([h, _, s], Some(mut c)) => {
                let sub = c
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or("user")
                    .to_owned();
                c["sub"] = Value::String(format!("{sub}-admin"));
                let forged = format!("{h}.{}.{s}", B64.encode(c.to_string()));
                match p
                    .post(INIT, &[("authorization", &bearer(&forged))], None)
                    .await
                {
                    Ok(a) if accepted(&a) => fail(
                        "TAMPERED",
                        format!("a changed `sub` was accepted ({})", a.status),
                    ),
                    Ok(a) => pass("TAMPERED", format!("refused ({})", a.status)),
                    Err(e) => skip("TAMPERED", e),
                }
            }
            _ => skip(
                "TAMPERED",
                "the token is not a JWT (opaque tokens cannot be altered this way)",
            ),
        },
    );
    // QUERY-TOKEN: the same valid token, in the URL only.
    let q = format!(
        "access_token={}",
        url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
    );
    out.push(match p.post(INIT, &[], Some(&q)).await {
        Ok(a) if accepted(&a) => fail("QUERY-TOKEN", format!("accepted ({})", a.status)),
        Ok(a) => pass("QUERY-TOKEN", format!("refused ({})", a.status)),
        Err(e) => skip("QUERY-TOKEN", e),
    });
    // SESSION-AUTH: the session the valid token opened, without the token.
    out.push(match valid.header("mcp-session-id") {
        None => skip("SESSION-AUTH", "the server opened no session (stateless)"),
        Some(sid) => {
            let version = valid
                .json()
                .and_then(|v| v["result"]["protocolVersion"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "2025-11-25".into());
            let h = [
                ("mcp-session-id", sid),
                ("mcp-protocol-version", version.as_str()),
            ];
            let mut get = h.to_vec();
            get.push(("accept", "text/event-stream"));
            match (
                p.post(LIST, &h, None).await,
                p.status_of(reqwest::Method::GET, &get).await,
            ) {
                (Ok(a), _) if accepted(&a) => fail(
                    "SESSION-AUTH",
                    format!("tools/list with the session id alone answered {}", a.status),
                ),
                (_, Ok(s)) if (200..300).contains(&s) => fail(
                    "SESSION-AUTH",
                    format!("the event stream (GET) with the session id alone answered {s}"),
                ),
                (Ok(a), Ok(s)) => pass(
                    "SESSION-AUTH",
                    format!("refused (POST {}, GET {s})", a.status),
                ),
                (Err(e), _) | (_, Err(e)) => skip("SESSION-AUTH", e),
            }
        }
    });
    out.push(session_ids(p, token, valid.header("mcp-session-id")).await);
    out.push(session_user(p, token, opts.other_user_token.as_deref()).await);
    out.push(insufficient_scope(p, token, opts.scope_tool.as_deref()).await);
    foreign_and_expired(p, opts, true, out).await;
}

/// SIGNATURE and EMBEDDED-KEY: claims that fit the endpoint, signed with a key the target has
/// never seen (the issuer's key id named), and with that key in the token's own `jwk` header.
async fn foreign_keys(
    p: &Probe,
    opts: &Options,
    claims: &Value,
    jwks: &[Value],
    out: &mut Vec<Finding>,
) {
    let family = crate::forge::Family::of(opts.token.as_deref(), jwks);
    let kid = opts
        .token
        .as_deref()
        .and_then(|t| t.split('.').next())
        .and_then(|h| B64.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned))
        .or_else(|| {
            jwks.iter()
                .find_map(|k| k["kid"].as_str().map(str::to_owned))
        });
    for (id, embed, what) in [
        ("SIGNATURE", false, "a token signed by an unknown key"),
        (
            "EMBEDDED-KEY",
            true,
            "a token verified by the key in its own header",
        ),
    ] {
        let Some(forged) = crate::forge::foreign_signed(claims, family, kid.as_deref(), embed)
        else {
            out.push(skip(id, "could not make a signing key"));
            continue;
        };
        out.push(
            match p
                .post(INIT, &[("authorization", &bearer(&forged))], None)
                .await
            {
                Ok(a) if accepted(&a) => fail(id, format!("{what} was accepted ({})", a.status)),
                Ok(a) => pass(id, format!("refused ({})", a.status)),
                Err(e) => skip(id, e),
            },
        );
    }
}

/// INVALID-TOKEN: a token that is no token at all.
async fn invalid_token(p: &Probe) -> Finding {
    let a = match p
        .post(
            INIT,
            &[("authorization", "Bearer gatehouse-check.not-a-token")],
            None,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => return skip("INVALID-TOKEN", e),
    };
    if accepted(&a) {
        return fail(
            "INVALID-TOKEN",
            format!("a malformed token was accepted ({})", a.status),
        );
    }
    let error = Challenge::parse_all(
        a.headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .unwrap_or_default()
    .iter()
    .find(|c| c.is_scheme("Bearer"))
    .and_then(|c| c.param("error").map(str::to_owned));
    match (a.status, error.as_deref()) {
        (401, Some("invalid_token")) => pass("INVALID-TOKEN", "401, error=\"invalid_token\""),
        (401, Some(e)) => fail("INVALID-TOKEN", format!("401 with error=\"{e}\"")),
        (401, None) => fail("INVALID-TOKEN", "401 without error=\"invalid_token\""),
        (s, _) => fail(
            "INVALID-TOKEN",
            format!("answered {s}, not 401 (clients do not know to get a new token)"),
        ),
    }
}

/// A session opened with `token` as a client does it: `initialize`, then
/// `notifications/initialized` on the session. The session id (when the server keeps
/// sessions) and the protocol version.
async fn open_session(p: &Probe, token: &str) -> Result<(Option<String>, String), String> {
    let auth = bearer(token);
    let a = p.post(INIT, &[("authorization", &auth)], None).await?;
    if !accepted(&a) {
        return Err(format!("initialize with the token answered {}", a.status));
    }
    let version = a
        .json()
        .and_then(|v| v["result"]["protocolVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "2025-11-25".into());
    let sid = a.header("mcp-session-id").map(str::to_owned);
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", version.as_str()),
    ];
    if let Some(s) = &sid {
        h.push(("mcp-session-id", s));
    }
    p.post(INITIALIZED, &h, None).await?;
    Ok((sid, version))
}

/// Ends a session the checker opened (MCP clients SHOULD): servers that cap sessions per user
/// are not left holding ours. What the server answers does not matter.
async fn close_session(p: &Probe, token: &str, sid: &str, version: &str) {
    let auth = bearer(token);
    let _ = p
        .delete(&[
            ("authorization", auth.as_str()),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", version),
        ])
        .await;
}

/// SESSION-ID: two sessions' ids are long, visible ASCII and not a counter or a clock.
async fn session_ids(p: &Probe, token: &str, first: Option<&str>) -> Finding {
    let Some(first) = first else {
        return skip("SESSION-ID", "the server opened no session (stateless)");
    };
    // A session id the client made up must not be adopted (session fixation).
    let chosen = format!("gatehouse-check-chosen-{}", now());
    match p
        .post(
            INIT,
            &[
                ("authorization", &bearer(token)),
                ("mcp-session-id", &chosen),
            ],
            None,
        )
        .await
    {
        Ok(a) if a.header("mcp-session-id") == Some(chosen.as_str()) => {
            return fail(
                "SESSION-ID",
                "the server took the session id the client chose (session fixation)",
            );
        }
        Ok(a) => {
            if let Some(s) = a.header("mcp-session-id") {
                close_session(p, token, s, "2025-11-25").await;
            }
        }
        Err(e) => return skip("SESSION-ID", e),
    }
    let second = match open_session(p, token).await {
        Ok((Some(s), v)) => {
            close_session(p, token, &s, &v).await;
            close_session(p, token, first, &v).await;
            s
        }
        Ok((None, _)) => return skip("SESSION-ID", "the second initialize opened no session"),
        Err(e) => return skip("SESSION-ID", e),
    };
    if let Some(bad) = [first, second.as_str()]
        .iter()
        .find(|s| s.bytes().any(|b| !(0x21..=0x7e).contains(&b)))
    {
        return fail(
            "SESSION-ID",
            format!(
                "a session id of {} bytes has characters outside 0x21–0x7E",
                bad.len()
            ),
        );
    }
    let shortest = first.len().min(second.len());
    if shortest < 16 {
        return fail(
            "SESSION-ID",
            format!("a session id of {shortest} characters (too short to be unguessable)"),
        );
    }
    let span = differing_span(first.as_bytes(), second.as_bytes());
    if span < 12 {
        return fail(
            "SESSION-ID",
            format!("two sessions' ids differ in {span} characters only (predictable)"),
        );
    }
    pass(
        "SESSION-ID",
        format!("{shortest}+ characters, two ids differ over {span}"),
    )
}

/// How many characters lie between the common prefix and the common suffix of `a` and `b`
/// (in the longer one): a counter or a clock changes a few at one end.
fn differing_span(a: &[u8], b: &[u8]) -> usize {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    a.len().max(b.len()) - suffix
}

/// SESSION-USER: a session another user opened, used with this user's (valid) token.
async fn session_user(p: &Probe, token: &str, other: Option<&str>) -> Finding {
    let Some(other) = other else {
        return skip(
            "SESSION-USER",
            "needs --other-user-token (a token for this endpoint of another user)",
        );
    };
    let sub = |t: &str| claims_of(t).and_then(|c| c["sub"].as_str().map(str::to_owned));
    if let (Some(a), Some(b)) = (sub(token), sub(other))
        && a == b
    {
        return skip("SESSION-USER", "both tokens name the same user (`sub`)");
    }
    match open_session(p, other).await {
        Err(e) => return skip("SESSION-USER", format!("the other user's token: {e}")),
        Ok((Some(sid), v)) => close_session(p, other, &sid, &v).await,
        Ok((None, _)) => {}
    }
    let (sid, version) = match open_session(p, token).await {
        Ok((Some(sid), v)) => (sid, v),
        Ok((None, _)) => return skip("SESSION-USER", "the server opened no session (stateless)"),
        Err(e) => return skip("SESSION-USER", e),
    };
    // The session's own user first: a refusal there would make the other's mean nothing.
    let found = match list_on(p, &sid, &version, token).await {
        Ok(a) if accepted(&a) => match list_on(p, &sid, &version, other).await {
            Ok(a) if accepted(&a) => fail(
                "SESSION-USER",
                format!("another user's token used the session ({})", a.status),
            ),
            Ok(a) => pass("SESSION-USER", format!("refused ({})", a.status)),
            Err(e) => skip("SESSION-USER", e),
        },
        Ok(a) => skip(
            "SESSION-USER",
            format!("tools/list by the session's own user answered {}", a.status),
        ),
        Err(e) => skip("SESSION-USER", e),
    };
    close_session(p, token, &sid, &version).await;
    found
}

/// tools/list on session `sid` with `token`.
async fn list_on(p: &Probe, sid: &str, version: &str, token: &str) -> Result<Answer, String> {
    let auth = bearer(token);
    let h = [
        ("mcp-session-id", sid),
        ("mcp-protocol-version", version),
        ("authorization", auth.as_str()),
    ];
    p.post(LIST, &h, None).await
}

/// INSUFFICIENT-SCOPE: the tool the operator named (one `token`'s scopes do not cover), called
/// with empty arguments.
async fn insufficient_scope(p: &Probe, token: &str, tool: Option<&str>) -> Finding {
    let id = "INSUFFICIENT-SCOPE";
    let Some(tool) = tool else {
        return skip(
            id,
            "needs --scope-tool NAME (a tool the token's scopes do not cover)",
        );
    };
    let (sid, version) = match open_session(p, token).await {
        Ok(s) => s,
        Err(e) => return skip(id, e),
    };
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}})
    .to_string();
    let auth = bearer(token);
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", version.as_str()),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ];
    if let Some(s) = &sid {
        h.push(("mcp-session-id", s));
    }
    let a = p.post(&call, &h, None).await;
    if let Some(s) = &sid {
        close_session(p, token, s, &version).await;
    }
    let a = match a {
        Ok(a) => a,
        Err(e) => return skip(id, e),
    };
    let ch = Challenge::parse_all(
        a.headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .unwrap_or_default();
    let bearer_ch = ch.iter().find(|c| c.is_scheme("Bearer"));
    let error = bearer_ch.and_then(|c| c.param("error"));
    let scope = bearer_ch.and_then(|c| c.param("scope"));
    let held: Vec<String> = claims_of(token)
        .and_then(|c| c["scope"].as_str().map(str::to_owned))
        .map(|s| s.split(' ').map(str::to_owned).collect())
        .unwrap_or_default();
    match (a.status, error, scope) {
        (403, Some("insufficient_scope"), Some(s)) => {
            let needed: Vec<&str> = s.split(' ').filter(|x| !x.is_empty()).collect();
            if !held.is_empty() && needed.iter().all(|n| held.iter().any(|h| h == n)) {
                fail(
                    id,
                    format!("403 names scope=\"{s}\", all of which the token holds"),
                )
            } else {
                pass(id, format!("403, scope=\"{s}\""))
            }
        }
        (403, Some("insufficient_scope"), None) => {
            fail(id, "403 insufficient_scope without the `scope` needed")
        }
        (403, _, _) => fail(id, "403 without Bearer error=\"insufficient_scope\""),
        (401, _, _) => fail(
            id,
            "401 for a valid token lacking scope (clients re-authenticate instead of stepping up)",
        ),
        (s, _, _) if (200..300).contains(&s) => {
            let rpc_error = a
                .json()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
            fail(
                id,
                match rpc_error {
                    Some(m) => format!(
                        "HTTP {s} with a JSON-RPC error ({}) instead of 403",
                        m.chars().take(80).collect::<String>()
                    ),
                    None => format!("the call of {tool} was not refused ({s})"),
                },
            )
        }
        (s, _, _) => fail(id, format!("answered {s}, not 403")),
    }
}

/// HS256 over the claims, keyed with each public key as a server that confuses algorithms
/// would take it: its PEM (with and without the final newline) and its JWK as JSON.
async fn alg_confusion(p: &Probe, claims: &Value, jwks: &[Value]) -> Finding {
    let keys: Vec<&Value> = jwks
        .iter()
        .filter(|k| matches!(k["kty"].as_str(), Some("EC" | "RSA")))
        .collect();
    if keys.is_empty() {
        return skip(
            "ALG-CONFUSION",
            "no public EC or RSA key found in the issuer's JWKS",
        );
    }
    let payload = B64.encode(claims.to_string());
    for k in keys {
        let mut secrets: Vec<Vec<u8>> = vec![k.to_string().into_bytes()];
        if let Some(pem) = crate::pem::public_key_pem(k) {
            secrets.push(pem.trim_end().as_bytes().to_vec());
            secrets.push(pem.into_bytes());
        }
        let mut header = json!({"alg": "HS256", "typ": "at+jwt"});
        if let Some(kid) = k["kid"].as_str() {
            header["kid"] = Value::String(kid.to_owned());
        }
        let signing_input = format!("{}.{payload}", B64.encode(header.to_string()));
        for secret in secrets {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
            let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
            let forged = format!("{signing_input}.{}", B64.encode(tag.as_ref()));
            match p
                .post(INIT, &[("authorization", &bearer(&forged))], None)
                .await
            {
                Ok(a) if accepted(&a) => {
                    return fail(
                        "ALG-CONFUSION",
                        format!(
                            "an HS256 token keyed with a public key was accepted ({})",
                            a.status
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => return skip("ALG-CONFUSION", e),
            }
        }
    }
    pass(
        "ALG-CONFUSION",
        "refused with every public key as an HMAC key",
    )
}

async fn foreign_and_expired(p: &Probe, opts: &Options, _have_valid: bool, out: &mut Vec<Finding>) {
    out.push(match opts.foreign_token.as_deref() {
        None => skip(
            "AUDIENCE",
            "needs --foreign-token (a token of the same issuer for another resource)",
        ),
        Some(t) => match p.post(INIT, &[("authorization", &bearer(t))], None).await {
            Ok(a) if accepted(&a) => fail(
                "AUDIENCE",
                format!("a token for another resource was accepted ({})", a.status),
            ),
            Ok(a) => pass("AUDIENCE", format!("refused ({})", a.status)),
            Err(e) => skip("AUDIENCE", e),
        },
    });
    out.push(match opts.expired_token.as_deref() {
        None => skip("EXPIRED", "needs --expired-token"),
        Some(t) => match claims_of(t).and_then(|c| c.get("exp").and_then(Value::as_i64)) {
            Some(exp) if exp > now() => {
                skip("EXPIRED", "the given --expired-token has not expired")
            }
            _ => match p.post(INIT, &[("authorization", &bearer(t))], None).await {
                Ok(a) if accepted(&a) => fail("EXPIRED", format!("accepted ({})", a.status)),
                Ok(a) => pass("EXPIRED", format!("refused ({})", a.status)),
                Err(e) => skip("EXPIRED", e),
            },
        },
    });
}

async fn transport_checks(p: &Probe, opts: &Options, unauth: &Answer, out: &mut Vec<Finding>) {
    let auth = opts.token.as_deref().map(bearer);
    let mut h: Vec<(&str, &str)> = vec![("origin", HOSTILE_ORIGIN)];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    out.push(match p.post(INIT, &h, None).await {
        Ok(a) if accepted(&a) => fail(
            "ORIGIN",
            format!("Origin {HOSTILE_ORIGIN} accepted ({})", a.status),
        ),
        Ok(a) if a.status == 401 && auth.is_none() => skip(
            "ORIGIN",
            "the server asks for credentials before it checks Origin: needs --token",
        ),
        Ok(a) if a.status == 401 => skip("ORIGIN", "the token was refused with the Origin header"),
        Ok(a) => pass("ORIGIN", format!("refused ({})", a.status)),
        Err(e) => skip("ORIGIN", e),
    });
    out.push(match p.preflight(HOSTILE_ORIGIN).await {
        Ok(a) => match a.header("access-control-allow-origin") {
            Some(o) if o == HOSTILE_ORIGIN => {
                fail("CORS", "the preflight echoes an arbitrary Origin")
            }
            Some("*") if a.header("access-control-allow-credentials") == Some("true") => {
                fail("CORS", "`*` with credentials")
            }
            Some(o) => pass("CORS", format!("Access-Control-Allow-Origin: {o}")),
            None => pass("CORS", "no CORS for a foreign origin"),
        },
        Err(e) => skip("CORS", e),
    });
    let _ = unauth;
    out.push(match (&auth, is_loopback(&p.target)) {
        (_, false) => skip("HOST", "only for loopback servers"),
        (None, true) => skip("HOST", "needs --token"),
        (Some(a), true) => {
            let host = format!(
                "rebind.gatehouse-check.invalid:{}",
                p.target.port_or_known_default().unwrap_or(80)
            );
            match p
                .post(
                    INIT,
                    &[("authorization", a.as_str()), ("host", &host)],
                    None,
                )
                .await
            {
                Ok(r) if accepted(&r) => {
                    fail("HOST", format!("Host {host} accepted ({})", r.status))
                }
                Ok(r) => pass("HOST", format!("refused ({})", r.status)),
                Err(e) => skip("HOST", e),
            }
        }
    });
    out.push(match &auth {
        None => skip("MCP-NAME", "needs --token"),
        Some(a) => {
            // A tool nobody has: a server that ignores the header answers a JSON-RPC error,
            // and nothing runs either way.
            let body = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
                "name": "gatehouse-check-no-such-tool", "arguments": {},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
            .to_string();
            let h = [
                ("authorization", a.as_str()),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "gatehouse-check-another-tool"),
            ];
            match p.post(&body, &h, None).await {
                Ok(r) if accepted(&r) => fail(
                    "MCP-NAME",
                    format!(
                        "Mcp-Name naming another tool than the body answered {}",
                        r.status
                    ),
                ),
                Ok(r) => pass("MCP-NAME", format!("refused ({})", r.status)),
                Err(e) => skip("MCP-NAME", e),
            }
        }
    });
    out.push(match &auth {
        None => skip("MCP-METHOD", "needs --token"),
        Some(a) => {
            let h = [
                ("authorization", a.as_str()),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "initialize"),
            ];
            match p.post(LIST, &h, None).await {
                Ok(r) if accepted(&r) => fail(
                    "MCP-METHOD",
                    format!(
                        "Mcp-Method: initialize on a tools/list body answered {}",
                        r.status
                    ),
                ),
                Ok(r) => pass("MCP-METHOD", format!("refused ({})", r.status)),
                Err(e) => skip("MCP-METHOD", e),
            }
        }
    });
}
