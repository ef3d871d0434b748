//! `--authorization-server`: active checks of the authorization server. They register one
//! public client through dynamic registration (and try to register a machine client), then send
//! authorization requests that a correct server refuses; none of them signs anybody in.
use crate::Finding;
use crate::catalogue::{fail, pass, skip};
use crate::probe::{Answer, Probe};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gatehouse_core::SecretString;
use serde_json::{Value, json};

const IDS: [&str; 6] = [
    "AS-PKCE-REQUIRED",
    "AS-PKCE-PLAIN",
    "AS-REDIRECT-EXACT",
    "AS-ERROR-REDIRECT",
    "AS-FRAMING",
    "AS-DCR-MACHINE",
];
/// The checks of a real sign-in (`--login`).
const LOGIN_IDS: [&str; 5] = [
    "AS-TOKEN-AUDIENCE",
    "AS-TOKEN-NO-STORE",
    "AS-REFRESH-ROTATION",
    "AS-REFRESH-REUSE",
    "AS-CODE-REUSE",
];

/// What a sign-in gave: the access token for the other checks, and what the reuse checks replay
/// once everything else has run.
pub(crate) struct LoggedIn {
    pub(crate) access_token: SecretString,
    token_url: url::Url,
    /// The code exchange, to send again (none after a device sign-in).
    code_form: Option<Vec<(String, String)>>,
    /// A refresh token whose successor has been used, with the request that uses it.
    stale_refresh: Option<Vec<(String, String)>>,
}

fn random(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    B64.encode(b)
}

/// Where an answer sends the browser, when it redirects.
fn location(a: &Answer) -> Option<String> {
    (300..400)
        .contains(&a.status)
        .then(|| a.header("location").map(str::to_owned))?
}

/// How the server answered an authorization request that must be refused: refused with an
/// error (to the client or on a page), or went on (a login or consent page, or a redirect
/// that is not an error).
fn refused(a: &Answer, redirect: &str) -> Result<String, String> {
    match location(a) {
        Some(l) if l.starts_with(redirect) => {
            let u = url::Url::parse(&l).map_err(|_| format!("redirect to {l}"))?;
            match u.query_pairs().find(|(k, _)| k == "error") {
                Some((_, e)) => Ok(format!("error={e} to the client")),
                None => Err("a code or a redirect without error".into()),
            }
        }
        Some(l) => Err(format!("redirected on to {l} (the request was taken)")),
        None if (400..500).contains(&a.status) => Ok(format!("refused ({})", a.status)),
        None => Err(format!("answered {} (a login or consent page)", a.status)),
    }
}

pub(crate) async fn run(
    p: &Probe,
    meta: &Value,
    opts: &crate::Options,
    scope_hint: Option<&str>,
    out: &mut Vec<Finding>,
) -> Option<LoggedIn> {
    let login = opts.login;
    let browser = opts
        .browser
        .clone()
        .unwrap_or_else(gatehouse_client::opener::Opener::from_env);
    let logged = run_inner(p, meta, login, opts.device, &browser, scope_hint, out).await;
    if logged.is_none() {
        for id in LOGIN_IDS {
            if !out.iter().any(|f| f.id == id) {
                out.push(skip(
                    id,
                    if login {
                        "the sign-in did not happen (see the checks before it)"
                    } else {
                        "needs --login (a sign-in through a browser)"
                    },
                ));
            }
        }
    }
    logged
}

#[allow(
    clippy::too_many_arguments,
    reason = "what the run was asked for, passed through once"
)]
async fn run_inner(
    p: &Probe,
    meta: &Value,
    login: bool,
    device: bool,
    browser: &gatehouse_client::opener::Opener,
    scope_hint: Option<&str>,
    out: &mut Vec<Finding>,
) -> Option<LoggedIn> {
    let url_of = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
    };
    let (Some(authz), Some(register)) = (
        url_of("authorization_endpoint"),
        url_of("registration_endpoint"),
    ) else {
        for id in IDS {
            out.push(skip(
                id,
                "no authorization_endpoint or registration_endpoint to check",
            ));
        }
        return None;
    };
    // The redirect: our loopback listener with --login, else a port nobody listens on (nothing
    // is ever followed).
    let listener = if login && !device {
        match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => Some(l),
            Err(e) => {
                out.push(skip(
                    "AS-TOKEN-AUDIENCE",
                    format!("no loopback listener: {e}"),
                ));
                None
            }
        }
    } else {
        None
    };
    let redirect = match listener.as_ref().and_then(|l| l.local_addr().ok()) {
        Some(a) => format!("http://127.0.0.1:{}/callback", a.port()),
        None => {
            let mut b = [0u8; 2];
            let _ = aws_lc_rs::rand::fill(&mut b);
            format!(
                "http://127.0.0.1:{}/gatehouse-check/callback",
                49152 + u16::from_le_bytes(b) % 16000
            )
        }
    };
    // refresh_token only where the server has it (a server may refuse a grant it lacks).
    let mut grant_types = match meta["grant_types_supported"].as_array() {
        Some(g) if !g.iter().any(|x| x == "refresh_token") => json!(["authorization_code"]),
        _ => json!(["authorization_code", "refresh_token"]),
    };
    if login
        && device
        && let Some(g) = grant_types.as_array_mut()
    {
        g.push(json!(DEVICE_CODE_GRANT));
    }
    let mut metadata = json!({"client_name": "gatehouse-check", "redirect_uris": [redirect],
        "grant_types": grant_types, "response_types": ["code"],
        "token_endpoint_auth_method": "none", "application_type": "native"});
    id_token_alg(meta, &mut metadata);
    let reg = p.post_json(&register, &metadata).await;
    let client_id = match reg.as_ref().ok().and_then(Answer::json) {
        Some(v) if v["client_id"].is_string() => {
            v["client_id"].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            let why = match reg {
                Ok(a) => format!("registration answered {}", a.status),
                Err(e) => e,
            };
            for id in &IDS[..5] {
                out.push(skip(id, format!("could not register a client: {why}")));
            }
            out.push(dcr_machine(p, meta, &register).await);
            return None;
        }
    };
    let verifier = random(32);
    let challenge = B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let supported: Vec<&str> = meta
        .get("scopes_supported")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // What the resource asks for; with --login also a refresh token, when the server has one.
    let mut scope = scope_hint
        .map(str::to_owned)
        .or_else(|| {
            supported
                .iter()
                .find(|s| **s != "openid")
                .map(|s| (*s).to_owned())
        })
        .unwrap_or_default();
    if login && supported.contains(&"offline_access") && !scope.contains("offline_access") {
        scope = format!("{scope} offline_access").trim().to_owned();
    }
    let request = |changes: &[(&str, Option<&str>)]| {
        let mut params: Vec<(String, String)> = vec![
            ("response_type".into(), "code".into()),
            ("client_id".into(), client_id.clone()),
            ("redirect_uri".into(), redirect.clone()),
            ("state".into(), "gatehouse-check".into()),
            ("code_challenge".into(), challenge.clone()),
            ("code_challenge_method".into(), "S256".into()),
            ("resource".into(), p.target.to_string()),
        ];
        if !scope.is_empty() {
            params.push(("scope".into(), scope.clone()));
        }
        for (k, v) in changes {
            params.retain(|(n, _)| n != k);
            if let Some(v) = v {
                params.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        let mut u = authz.clone();
        u.query_pairs_mut().extend_pairs(params);
        u
    };
    // The request as it should be: it must go on to sign-in, else nothing below can be told.
    match p.get(&request(&[])).await {
        Ok(a) if refused(&a, &redirect).is_err() => {
            out.push(framing(p, a, &authz, &redirect).await);
        }
        Ok(a) => {
            let why = refused(&a, &redirect).unwrap_or_default();
            for id in &IDS[..5] {
                out.push(skip(
                    id,
                    format!("a correct request was refused too ({why})"),
                ));
            }
            out.push(dcr_machine(p, meta, &register).await);
            return None;
        }
        Err(e) => {
            for id in &IDS[..5] {
                out.push(skip(id, e.clone()));
            }
            out.push(dcr_machine(p, meta, &register).await);
            return None;
        }
    }
    let judge = |id: &'static str, a: Result<Answer, String>| match a {
        Ok(a) => match refused(&a, &redirect) {
            Ok(d) => pass(id, d),
            Err(d) => fail(id, d),
        },
        Err(e) => skip(id, e),
    };
    out.push(judge(
        "AS-PKCE-REQUIRED",
        p.get(&request(&[
            ("code_challenge", None),
            ("code_challenge_method", None),
        ]))
        .await,
    ));
    out.push(judge(
        "AS-PKCE-PLAIN",
        p.get(&request(&[
            ("code_challenge", Some(&verifier)),
            ("code_challenge_method", Some("plain")),
        ]))
        .await,
    ));
    let off = format!("{redirect}x");
    out.push(
        match p.get(&request(&[("redirect_uri", Some(&off))])).await {
            Ok(a) => match (location(&a), refused(&a, &redirect)) {
                (Some(l), _) if l.starts_with(&off) => fail(
                    "AS-REDIRECT-EXACT",
                    format!("redirected to the unregistered {off}"),
                ),
                (_, Ok(d)) => pass("AS-REDIRECT-EXACT", d),
                // Going on to sign-in means the code would be sent there afterwards.
                (_, Err(d)) => fail("AS-REDIRECT-EXACT", format!("{off} was taken: {d}")),
            },
            Err(e) => skip("AS-REDIRECT-EXACT", e),
        },
    );
    out.push(
        match p.get(&request(&[("response_type", Some("token"))])).await {
            Ok(a) => match location(&a) {
                Some(l) if l.starts_with(&redirect) => fail(
                    "AS-ERROR-REDIRECT",
                    "an error for a self-registered client was redirected to it at once",
                ),
                _ => pass(
                    "AS-ERROR-REDIRECT",
                    format!("shown, not redirected ({})", a.status),
                ),
            },
            Err(e) => skip("AS-ERROR-REDIRECT", e),
        },
    );
    out.push(dcr_machine(p, meta, &register).await);
    let token_url = meta
        .get("token_endpoint")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())?;
    let introspection = meta
        .get("introspection_endpoint")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok());
    if login && device {
        return match device_sign_in(p, meta, browser, &token_url, &client_id, &scope).await {
            Ok(first) => tokens(p, token_url, introspection, first, None, &client_id, out).await,
            Err(e) => {
                out.push(skip("AS-TOKEN-AUDIENCE", format!("device sign-in: {e}")));
                None
            }
        };
    }
    let listener = listener?;
    // The sign-in, with a fresh verifier and state.
    let verifier = random(32);
    let challenge = B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let state = random(16);
    let url = request(&[
        ("code_challenge", Some(&challenge)),
        ("state", Some(&state)),
    ]);
    match sign_in(listener, browser, url.as_str(), &redirect).await {
        Err(e) => {
            out.push(skip("AS-TOKEN-AUDIENCE", format!("sign-in: {e}")));
            None
        }
        Ok(q) if q.get("state") != Some(&state) => {
            out.push(skip(
                "AS-TOKEN-AUDIENCE",
                "the answer did not carry our state",
            ));
            None
        }
        Ok(q) => match q.get("code") {
            None => {
                out.push(skip(
                    "AS-TOKEN-AUDIENCE",
                    format!("no code: {}", q.get("error").map_or("", String::as_str)),
                ));
                None
            }
            Some(code) => {
                let form: Vec<(String, String)> = vec![
                    ("grant_type".into(), "authorization_code".into()),
                    ("code".into(), code.clone()),
                    ("redirect_uri".into(), redirect.clone()),
                    ("client_id".into(), client_id.clone()),
                    ("code_verifier".into(), verifier.clone()),
                    ("resource".into(), p.target.to_string()),
                ];
                match p.post_form(&token_url, &form_refs(&form), None).await {
                    Ok(first) => {
                        tokens(
                            p,
                            token_url,
                            introspection,
                            first,
                            Some(form),
                            &client_id,
                            out,
                        )
                        .await
                    }
                    Err(e) => {
                        out.push(skip("AS-TOKEN-AUDIENCE", e));
                        None
                    }
                }
            }
        },
    }
}

/// AS-FRAMING: the page a correct authorization request leads to (through the server's own
/// redirects, e.g. to its login page) forbids framing: `frame-ancestors` without wildcards, or
/// else `X-Frame-Options` DENY or SAMEORIGIN.
async fn framing(p: &Probe, first: Answer, authz: &url::Url, redirect: &str) -> Finding {
    let id = "AS-FRAMING";
    let mut a = first;
    let mut at = authz.clone();
    // The cookies the hops set (a sign-in page is often bound to one), as a browser keeps them.
    let mut jar: Vec<String> = Vec::new();
    for _ in 0..4 {
        for c in a.headers.get_all("set-cookie").iter() {
            if let Some(pair) = c.to_str().ok().and_then(|v| v.split(';').next()) {
                let name = pair.split('=').next().unwrap_or_default();
                jar.retain(|p| p.split('=').next() != Some(name));
                jar.push(pair.trim().to_owned());
            }
        }
        let Some(l) = location(&a) else { break };
        if l.starts_with(redirect) {
            return skip(id, "the server approved at once (no page to frame)");
        }
        let Ok(next) = at.join(&l) else {
            return skip(id, format!("redirected to {l}"));
        };
        if next.origin() != authz.origin() {
            return skip(
                id,
                format!(
                    "the sign-in page is at {}",
                    next.origin().ascii_serialization()
                ),
            );
        }
        a = match p.get_page(&next, &jar.join("; ")).await {
            Ok(a) => a,
            Err(e) => return skip(id, e),
        };
        at = next;
    }
    if a.status != 200 {
        return skip(id, format!("the sign-in page answered {}", a.status));
    }
    let ancestors = a
        .headers
        .get_all("content-security-policy")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .find_map(|d| {
            d.strip_prefix("frame-ancestors")
                .map(str::trim)
                .map(str::to_owned)
        });
    let xfo = a.header("x-frame-options").map(str::to_ascii_uppercase);
    match (ancestors, xfo) {
        (Some(list), _)
            if list
                .split_whitespace()
                .any(|s| s == "*" || s == "https:" || s == "http:") =>
        {
            fail(id, format!("frame-ancestors {list} lets any site frame it"))
        }
        (Some(list), _) => pass(id, format!("frame-ancestors {list}")),
        (None, Some(x)) if x == "DENY" || x == "SAMEORIGIN" => {
            pass(id, format!("X-Frame-Options: {x}"))
        }
        _ => fail(
            id,
            "neither CSP frame-ancestors nor X-Frame-Options on the sign-in page",
        ),
    }
}

/// Waits (5 minutes at most) for the browser to come back to our listener, after sending it to
/// `url` as `gatehouse login` would (never through a shell).
async fn sign_in(
    listener: tokio::net::TcpListener,
    browser: &gatehouse_client::opener::Opener,
    url: &str,
    redirect: &str,
) -> Result<std::collections::HashMap<String, String>, String> {
    use std::collections::HashMap;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<HashMap<String, String>>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(
            move |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(q).await;
                    axum::response::Html(
                        "<!doctype html><meta charset=utf-8><title>gatehouse check</title><p>Signed in for gatehouse check. You can close this window.</p>",
                    )
                }
            },
        ),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    browser
        .open(url, redirect)
        .await
        .map_err(|e| e.to_string())?;
    let got = tokio::time::timeout(std::time::Duration::from_secs(300), rx.recv()).await;
    server.abort();
    match got {
        Ok(Some(q)) => Ok(q),
        _ => Err("no answer from the browser within 5 minutes".into()),
    }
}

fn form_refs(form: &[(String, String)]) -> Vec<(&str, &str)> {
    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The grant type of RFC 8628.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The sign-in by the device authorization grant (RFC 8628): the user code goes to standard
/// error and to the opener (as `gatehouse login --device` does); the token endpoint is polled at
/// the server's interval until the user decides or the code expires (10 minutes at most). The
/// token response that came.
async fn device_sign_in(
    p: &Probe,
    meta: &Value,
    browser: &gatehouse_client::opener::Opener,
    token_url: &url::Url,
    client_id: &str,
    scope: &str,
) -> Result<Answer, String> {
    let endpoint = meta["device_authorization_endpoint"]
        .as_str()
        .and_then(|u| url::Url::parse(u).ok())
        .ok_or("the server has no device_authorization_endpoint")?;
    let target = p.target.to_string();
    let mut form = vec![("client_id", client_id), ("resource", target.as_str())];
    if !scope.is_empty() {
        form.push(("scope", scope));
    }
    let a = p.post_form(&endpoint, &form, None).await?;
    let v = a
        .json()
        .filter(|v| a.status == 200 && v["device_code"].is_string())
        .ok_or_else(|| format!("the device authorization request answered {}", a.status))?;
    let device_code = v["device_code"].as_str().unwrap_or_default();
    let uri = v["verification_uri"].as_str().unwrap_or_default();
    let user_code = v["user_code"].as_str().unwrap_or_default();
    // Both come from the server: shown escaped, as every detail is.
    eprintln!(
        "gatehouse check: to sign in, visit {} and enter the code {}",
        crate::catalogue::printable(uri),
        crate::catalogue::printable(user_code)
    );
    let open = v["verification_uri_complete"].as_str().unwrap_or(uri);
    browser.open(open, "").await.map_err(|e| e.to_string())?;
    let mut interval = v["interval"].as_u64().unwrap_or(5).clamp(1, 60);
    let expires = v["expires_in"].as_u64().unwrap_or(600).min(600);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(expires);
    let poll = [
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code),
        ("client_id", client_id),
        ("resource", target.as_str()),
    ];
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() > deadline {
            return Err("the user code expired".into());
        }
        let a = p.post_form(token_url, &poll, None).await?;
        if a.status == 200 {
            return Ok(a);
        }
        match a
            .json()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .as_deref()
        {
            Some("authorization_pending") => {}
            // RFC 8628 §3.5: five seconds more from now on.
            Some("slow_down") => interval += 5,
            Some(e) => return Err(format!("the token endpoint answered {e}")),
            None => return Err(format!("the token endpoint answered {}", a.status)),
        }
    }
}

/// The token response of the sign-in (after `code_form`, or a device sign-in), the token's
/// audience, and refresh rotation (R0 → R1 → R2); the replays wait for `reuse_checks`.
async fn tokens(
    p: &Probe,
    token_url: url::Url,
    introspection: Option<url::Url>,
    first: Answer,
    code_form: Option<Vec<(String, String)>>,
    client_id: &str,
    out: &mut Vec<Finding>,
) -> Option<LoggedIn> {
    let tok = first.json().filter(|v| v["access_token"].is_string());
    let Some(tok) = tok else {
        out.push(skip(
            "AS-TOKEN-AUDIENCE",
            format!("the token request answered {}", first.status),
        ));
        return None;
    };
    out.push(
        match first.header("cache-control").map(str::to_ascii_lowercase) {
            Some(c) if c.split(',').any(|d| d.trim() == "no-store") => {
                pass("AS-TOKEN-NO-STORE", format!("Cache-Control: {c}"))
            }
            Some(c) => fail("AS-TOKEN-NO-STORE", format!("Cache-Control: {c}")),
            None => fail(
                "AS-TOKEN-NO-STORE",
                "no Cache-Control on the token response",
            ),
        },
    );
    let mut access = tok["access_token"].as_str().unwrap_or_default().to_owned();
    let target = p.target.as_str();
    // An opaque token's audience, from introspection where the server lets this public client
    // introspect (RFC 7662 §2.2 `aud`).
    let claims = match crate::checks::claims_of(&access) {
        Some(c) => Some(c),
        None => match &introspection {
            Some(u) => p
                .post_form(u, &[("token", &access), ("client_id", client_id)], None)
                .await
                .ok()
                .filter(|a| a.status == 200)
                .and_then(|a| a.json())
                .filter(|v| v["active"] == true && !v["aud"].is_null()),
            None => None,
        },
    };
    out.push(match claims {
        None => skip(
            "AS-TOKEN-AUDIENCE",
            "an opaque token: its audience cannot be read (nor introspected)",
        ),
        Some(c) => {
            let aud: Vec<&str> = match &c["aud"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if aud == [target] {
                pass("AS-TOKEN-AUDIENCE", format!("aud {target}"))
            } else if aud.contains(&target) {
                fail(
                    "AS-TOKEN-AUDIENCE",
                    format!("aud also names others: {}", aud.join(", ")),
                )
            } else {
                fail(
                    "AS-TOKEN-AUDIENCE",
                    format!("aud is {:?}, not the endpoint", aud),
                )
            }
        }
    });
    let mut stale_refresh = None;
    match tok["refresh_token"].as_str() {
        None => {
            out.push(skip("AS-REFRESH-ROTATION", "no refresh token was issued"));
            out.push(skip("AS-REFRESH-REUSE", "no refresh token was issued"));
        }
        Some(r0) => {
            let refresh = |r: &str| -> Vec<(String, String)> {
                vec![
                    ("grant_type".into(), "refresh_token".into()),
                    ("refresh_token".into(), r.to_owned()),
                    ("client_id".into(), client_id.to_owned()),
                    ("resource".into(), target.to_owned()),
                ]
            };
            let r1 = match p
                .post_form(&token_url, &form_refs(&refresh(r0)), None)
                .await
            {
                Ok(a) if a.status == 200 => a.json(),
                _ => None,
            };
            match r1.as_ref().map(|v| v["refresh_token"].as_str()) {
                None => {
                    out.push(skip("AS-REFRESH-ROTATION", "the refresh was refused"));
                    out.push(skip("AS-REFRESH-REUSE", "the refresh was refused"));
                }
                Some(None) => {
                    out.push(fail(
                        "AS-REFRESH-ROTATION",
                        "no new refresh token: the old one stays valid",
                    ));
                    out.push(skip("AS-REFRESH-REUSE", "the refresh token is not rotated"));
                }
                Some(Some(r)) if r == r0 => {
                    out.push(fail(
                        "AS-REFRESH-ROTATION",
                        "the same refresh token came back",
                    ));
                    out.push(skip("AS-REFRESH-REUSE", "the refresh token is not rotated"));
                }
                Some(Some(r1_token)) => {
                    out.push(pass(
                        "AS-REFRESH-ROTATION",
                        "a new refresh token on each use",
                    ));
                    // Use the successor, so that any grace window for racing refreshes is over.
                    if let Ok(a) = p
                        .post_form(&token_url, &form_refs(&refresh(r1_token)), None)
                        .await
                        && let Some(v) = a.json()
                        && let Some(at) = v["access_token"].as_str()
                    {
                        access = at.to_owned();
                        stale_refresh = Some(refresh(r0));
                    } else {
                        out.push(skip("AS-REFRESH-REUSE", "the second refresh was refused"));
                    }
                    if let Some(at) = r1.as_ref().and_then(|v| v["access_token"].as_str())
                        && stale_refresh.is_none()
                    {
                        access = at.to_owned();
                    }
                }
            }
        }
    }
    Some(LoggedIn {
        access_token: SecretString::new(access),
        token_url,
        code_form,
        stale_refresh,
    })
}

/// The replays, once every other check has used the sign-in's token: a refresh token whose
/// successor was used, and the authorization code.
pub(crate) async fn reuse_checks(p: &Probe, l: LoggedIn, out: &mut Vec<Finding>) {
    if let Some(form) = &l.stale_refresh {
        out.push(
            match p.post_form(&l.token_url, &form_refs(form), None).await {
                Ok(a) if a.status == 200 => {
                    fail("AS-REFRESH-REUSE", "a used refresh token worked again")
                }
                Ok(a) => pass("AS-REFRESH-REUSE", format!("refused ({})", a.status)),
                Err(e) => skip("AS-REFRESH-REUSE", e),
            },
        );
    }
    let Some(code_form) = &l.code_form else {
        out.push(skip(
            "AS-CODE-REUSE",
            "a device sign-in has no authorization code (sign in through a browser for it)",
        ));
        return;
    };
    out.push(
        match p.post_form(&l.token_url, &form_refs(code_form), None).await {
            Ok(a) if a.status == 200 => {
                fail("AS-CODE-REUSE", "the code was exchanged a second time")
            }
            Ok(a) => pass("AS-CODE-REUSE", format!("refused ({})", a.status)),
            Err(e) => skip("AS-CODE-REUSE", e),
        },
    );
}

/// An OpenID provider refuses clients whose default ID-token algorithm (RS256, OIDC Dynamic
/// Client Registration §2) it cannot sign with: ask for one it lists.
fn id_token_alg(meta: &Value, client: &mut Value) {
    if let Some(algs) = meta["id_token_signing_alg_values_supported"].as_array()
        && !algs.iter().any(|a| a == "RS256")
        && let Some(first) = algs.first()
    {
        client["id_token_signed_response_alg"] = first.clone();
    }
}

/// Registers a confidential client_credentials client and asks for a token for the target.
async fn dcr_machine(p: &Probe, meta: &Value, register: &url::Url) -> Finding {
    const ID: &str = "AS-DCR-MACHINE";
    let mut client = json!({"client_name": "gatehouse-check machine",
        "grant_types": ["client_credentials"], "response_types": [],
        "token_endpoint_auth_method": "client_secret_basic", "redirect_uris": []});
    id_token_alg(meta, &mut client);
    let reg = match p.post_json(register, &client).await {
        Ok(a) => a,
        Err(e) => return skip(ID, e),
    };
    let v = reg.json().unwrap_or(Value::Null);
    let (Some(id), Some(secret)) = (v["client_id"].as_str(), v["client_secret"].as_str()) else {
        return pass(ID, format!("no machine client registered ({})", reg.status));
    };
    let Some(token) = meta
        .get("token_endpoint")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
    else {
        return skip(ID, "no token_endpoint");
    };
    let target = p.target.to_string();
    match p
        .post_form(
            &token,
            &[("grant_type", "client_credentials"), ("resource", &target)],
            Some((id, secret)),
        )
        .await
    {
        Ok(a) if a.status == 200 && a.json().is_some_and(|v| v["access_token"].is_string()) => {
            fail(
                ID,
                "a self-registered client got a client_credentials token for the endpoint",
            )
        }
        Ok(a) => pass(ID, format!("registered, but no token ({})", a.status)),
        Err(e) => skip(ID, e),
    }
}
