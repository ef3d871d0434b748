//! `--authorization-server`: active checks of the authorization server. They register one
//! public client through dynamic registration (and try to register a machine client), then send
//! authorization requests that a correct server refuses; none of them signs anybody in.
use crate::Finding;
use crate::checks::{fail, pass, skip};
use crate::probe::{Answer, Probe};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

const IDS: [&str; 5] = [
    "AS-PKCE-REQUIRED",
    "AS-PKCE-PLAIN",
    "AS-REDIRECT-EXACT",
    "AS-ERROR-REDIRECT",
    "AS-DCR-MACHINE",
];

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

pub(crate) async fn run(p: &Probe, meta: &Value, out: &mut Vec<Finding>) {
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
        return;
    };
    // A loopback redirect on a port nobody listens on: nothing is ever followed.
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let redirect = format!(
        "http://127.0.0.1:{}/gatehouse-check/callback",
        49152 + u16::from_le_bytes(b) % 16000
    );
    let reg = p
        .post_json(
            &register,
            &json!({"client_name": "gatehouse-check", "redirect_uris": [redirect],
                "grant_types": ["authorization_code"], "response_types": ["code"],
                "token_endpoint_auth_method": "none", "application_type": "native"}),
        )
        .await;
    let client_id = match reg.as_ref().ok().and_then(Answer::json) {
        Some(v) if v["client_id"].is_string() => {
            v["client_id"].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            let why = match reg {
                Ok(a) => format!("registration answered {}", a.status),
                Err(e) => e,
            };
            for id in &IDS[..4] {
                out.push(skip(id, format!("could not register a client: {why}")));
            }
            out.push(dcr_machine(p, meta, &register).await);
            return;
        }
    };
    let verifier = random(32);
    let challenge = B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let scope = meta
        .get("scopes_supported")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().filter_map(Value::as_str).find(|s| *s != "openid"))
        .unwrap_or("")
        .to_owned();
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
        Ok(a) if refused(&a, &redirect).is_err() => {}
        Ok(a) => {
            let why = refused(&a, &redirect).unwrap_or_default();
            for id in &IDS[..4] {
                out.push(skip(
                    id,
                    format!("a correct request was refused too ({why})"),
                ));
            }
            out.push(dcr_machine(p, meta, &register).await);
            return;
        }
        Err(e) => {
            for id in &IDS[..4] {
                out.push(skip(id, e.clone()));
            }
            out.push(dcr_machine(p, meta, &register).await);
            return;
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
}

/// Registers a confidential client_credentials client and asks for a token for the target.
async fn dcr_machine(p: &Probe, meta: &Value, register: &url::Url) -> Finding {
    const ID: &str = "AS-DCR-MACHINE";
    let reg = match p
        .post_json(
            register,
            &json!({"client_name": "gatehouse-check machine", "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "client_secret_basic", "redirect_uris": []}),
        )
        .await
    {
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
