//! The checks. Each has a stable id (`catalogue::DEFS`); a run reports every one of them: pass,
//! fail, or skip with the reason (what it needs that was not given).
use crate::catalogue::{DEFS, fail, pass, skip};
use crate::probe::{Answer, Probe};
use crate::sessions::{insufficient_scope, session_ids, session_user};
use crate::{CheckError, Finding, Options};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gatehouse_core::SecretString;
use gatehouse_core::challenge::Challenge;
use serde_json::{Value, json};

pub(crate) const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"gatehouse-check","version":"1"}}}"#;
pub(crate) const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
pub(crate) const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
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

/// Part `n` of a JWT (0 header, 1 claims) as JSON, unverified, when it is one.
fn jwt_part(token: &str, n: usize) -> Option<Value> {
    let part = token.split('.').nth(n)?;
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

/// The claims of a JWT (unverified), when it is one.
pub(crate) fn claims_of(token: &str) -> Option<Value> {
    jwt_part(token, 1)
}

/// The JOSE header of a JWT, when it is one.
pub(crate) fn header_of(token: &str) -> Option<Value> {
    jwt_part(token, 0)
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether an answer let the request in (any 2xx).
pub(crate) fn accepted(a: &Answer) -> bool {
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
    transport_checks(p, &effective, &mut out).await;
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
        let rpc = post.json().is_some_and(|v| v["jsonrpc"] == "2.0");
        return fail(
            "AUTH-REQUIRED",
            format!(
                "initialize without a token answered {}{}",
                post.status,
                if rpc {
                    ""
                } else {
                    " (not a JSON-RPC answer: is this URL the MCP endpoint?)"
                }
            ),
        );
    }
    let mut seen = vec![format!("POST {}", post.status)];
    // GET counts when it opened an event stream (a page at the same URL is not one).
    match p
        .head_of(reqwest::Method::GET, &[("accept", "text/event-stream")])
        .await
    {
        Ok((s, true)) if (200..300).contains(&s) => {
            return fail(
                "AUTH-REQUIRED",
                format!("GET without a token opened an event stream ({s})"),
            );
        }
        Ok((s, _)) => seen.push(format!("GET {s}")),
        Err(e) => seen.push(format!("GET: {e}")),
    }
    match p.status_of(reqwest::Method::DELETE, &[]).await {
        Ok(s) if (200..300).contains(&s) => {
            return fail(
                "AUTH-REQUIRED",
                format!("DELETE without a token answered {s}"),
            );
        }
        Ok(s) => seen.push(format!("DELETE {s}")),
        Err(e) => seen.push(format!("DELETE: {e}")),
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
        .as_ref()
        .map(SecretString::expose)
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
    out.push(alg_confusion(p, &claims, &d.jwks).await);
    foreign_keys(p, opts, &claims, &d.jwks, out).await;
    out.push(invalid_token(p).await);

    let Some(token) = opts.token.as_ref().map(SecretString::expose) else {
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
        foreign_and_expired(p, opts, out).await;
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
        foreign_and_expired(p, opts, out).await;
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
                p.head_of(reqwest::Method::GET, &get).await,
            ) {
                (Ok(a), _) if accepted(&a) => fail(
                    "SESSION-AUTH",
                    format!("tools/list with the session id alone answered {}", a.status),
                ),
                (_, Ok((s, true))) if (200..300).contains(&s) => fail(
                    "SESSION-AUTH",
                    format!("the event stream (GET) with the session id alone answered {s}"),
                ),
                (Ok(a), Ok((s, _))) => pass(
                    "SESSION-AUTH",
                    format!("refused (POST {}, GET {s})", a.status),
                ),
                (Err(e), _) | (_, Err(e)) => skip("SESSION-AUTH", e),
            }
        }
    });
    out.push(session_ids(p, token, valid.header("mcp-session-id")).await);
    out.push(
        session_user(
            p,
            token,
            opts.other_user_token.as_ref().map(SecretString::expose),
        )
        .await,
    );
    out.push(insufficient_scope(p, token, opts.scope_tool.as_deref()).await);
    foreign_and_expired(p, opts, out).await;
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
    let family = crate::forge::Family::of(opts.token.as_ref().map(SecretString::expose), jwks);
    let kid = opts
        .token
        .as_ref()
        .map(SecretString::expose)
        .and_then(header_of)
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

async fn foreign_and_expired(p: &Probe, opts: &Options, out: &mut Vec<Finding>) {
    out.push(
        match opts.foreign_token.as_ref().map(SecretString::expose) {
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
        },
    );
    out.push(
        match opts.expired_token.as_ref().map(SecretString::expose) {
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
        },
    );
}

async fn transport_checks(p: &Probe, opts: &Options, out: &mut Vec<Finding>) {
    let auth = opts.token.as_ref().map(SecretString::expose).map(bearer);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn jwt_client_authentication_needs_its_algorithms_and_never_none() {
        let st = |m: Value| auth_algs(&m).status;
        assert_eq!(st(json!({})), Status::Pass);
        assert_eq!(
            st(json!({"token_endpoint_auth_methods_supported": ["none", "client_secret_basic"]})),
            Status::Pass
        );
        assert_eq!(
            st(json!({"token_endpoint_auth_methods_supported": ["private_key_jwt"]})),
            Status::Fail
        );
        assert_eq!(
            st(
                json!({"token_endpoint_auth_methods_supported": ["client_secret_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["HS256", "None"]})
            ),
            Status::Fail
        );
        assert_eq!(
            st(
                json!({"token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["ES256"]})
            ),
            Status::Pass
        );
    }

    #[test]
    fn registration_paths_are_named() {
        assert_eq!(registration(&json!({})), "pre-registration only");
        assert_eq!(
            registration(&json!({"client_id_metadata_document_supported": true,
                "registration_endpoint": "https://as/register"})),
            "client ID metadata documents or dynamic registration"
        );
    }
}
