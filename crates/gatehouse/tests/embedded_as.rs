//! Issue 3: the embedded authorization server in `gatehouse dev`, driven over real HTTP by a
//! scripted browser and token requests. Each test names the REQUIREMENTS.md items it proves.
mod common;

use common::browser::{Browser, Page};
use common::*;
use gatehouse_core::PkceVerifier;
use serde_json::{Value, json};
use std::process::Command;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";

struct Dev {
    proc: Proc,
    base: String,
    mcp: String,
    data_dir: std::path::PathBuf,
    http: reqwest::Client,
}

fn start() -> Dev {
    let port = free_port();
    let data_dir = std::env::temp_dir().join(format!("gatehouse-as-{port}"));
    let mut cmd = gatehouse();
    cmd.env("GATEHOUSE_DEV_USER", USER)
        .env("GATEHOUSE_DEV_PASSWORD", PASSWORD)
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data_dir);
    let proc = Proc::start(cmd, "ready");
    let base = format!("http://127.0.0.1:{port}");
    Dev {
        proc,
        mcp: format!("{base}/mcp"),
        base,
        data_dir,
        http: reqwest::Client::new(),
    }
}

struct Flow {
    client_id: String,
    verifier: PkceVerifier,
}

/// The href of a page's "Return to …" link, unescaped.
fn return_link(body: &str) -> String {
    let i = body.find("<a href=\"").expect("a link back") + 9;
    let j = body[i..].find('"').expect("end of href");
    html_unescape(&body[i..i + j])
}

/// Undoes HTML escaping (named and numeric character references) in an attribute value.
fn html_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find(';') else { break };
        let entity = &rest[i + 1..i + j];
        let c = match entity {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .or_else(|| e.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        out.push(c.expect("a known character reference"));
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}

impl Dev {
    async fn register(&self, redirect_uri: &str, extra: Value) -> Value {
        let mut body = json!({
            "client_name": "Test App",
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let r = self
            .http
            .post(format!("{}/register", self.base))
            .json(&body)
            .send()
            .await
            .expect("register");
        let status = r.status().as_u16();
        let mut v: Value = r.json().await.expect("json");
        v["_status"] = status.into();
        v
    }

    async fn public_client(&self) -> Flow {
        let v = self.register("http://127.0.0.1/callback", json!({})).await;
        assert_eq!(v["_status"], 201, "{v}");
        Flow {
            client_id: v["client_id"].as_str().expect("id").into(),
            verifier: PkceVerifier::generate(),
        }
    }

    fn authorize_url(
        &self,
        f: &Flow,
        redirect_uri: &str,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> String {
        let mut u = url::Url::parse(&format!("{}/authorize", self.base)).expect("url");
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &f.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code_challenge", f.verifier.challenge().as_str())
                .append_pair("code_challenge_method", "S256")
                .append_pair("state", "st-123")
                .append_pair("scope", scope)
                .append_pair("resource", &self.mcp);
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        u.to_string()
    }

    /// Authorize → login → consent; returns the final redirect page.
    async fn authorize(&self, b: &mut Browser, f: &Flow, scope: &str) -> Page {
        let login = b
            .get(&self.authorize_url(f, "http://127.0.0.1:53100/callback", scope, &[]))
            .await;
        if login.status == 307 {
            // Consent already given by this user to this client: straight back with a code.
            return login;
        }
        assert_eq!(login.status, 200, "{}", login.body);
        let (p, c) = (
            login.field("pending").expect("pending"),
            login.field("csrf").expect("csrf"),
        );
        let consent = if login.body.contains("type=\"password\"") {
            b.post_form(
                &format!("{}/login", self.base),
                &[
                    ("pending", &p),
                    ("csrf", &c),
                    ("username", USER),
                    ("password", PASSWORD),
                ],
            )
            .await
        } else {
            login
        };
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(consent.body.contains("value=\"approve\""));
        b.post_form(
            &format!("{}/consent", self.base),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await
    }

    /// Authorize for `mcp:basic` (signing in and consenting as needed) and redeem the code: the
    /// token response.
    async fn code_tokens(&self, b: &mut Browser, f: &Flow) -> Value {
        let code = self.authorize(b, f, "mcp:basic").await.redirect_params()["code"].clone();
        let (st, tok) = self.redeem(f, &code).await;
        assert_eq!(st, 200, "{tok}");
        tok
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/token", self.base))
            .form(form)
            .send()
            .await
            .expect("token");
        let status = r.status().as_u16();
        assert_eq!(
            r.headers()
                .get("cache-control")
                .map(|v| v.to_str().expect("ascii")),
            Some("no-store")
        );
        (status, r.json().await.expect("json"))
    }

    async fn redeem(&self, f: &Flow, code: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", f.verifier.secret()),
            ("client_id", &f.client_id),
            ("redirect_uri", "http://127.0.0.1:53100/callback"),
            ("resource", &self.mcp),
        ])
        .await
    }

    async fn refresh(&self, f: &Flow, rt: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", &f.client_id),
        ])
        .await
    }

    async fn mcp_status(&self, token: &str) -> u16 {
        mcp_initialize_status(&self.mcp, token).await
    }

    fn admin(&self) -> Command {
        let mut c = gatehouse();
        c.arg("admin")
            .arg("--db")
            .arg(format!("sqlite://{}/gatehouse.db", self.data_dir.display()));
        c
    }

    /// `gatehouse admin ARGS`, which must succeed.
    fn admin_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.admin().args(args).output().expect("admin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A confidential machine client (client_credentials, scope mcp:basic): (id, secret).
    fn add_machine_client(&self, name: &str) -> (String, String) {
        add_machine_client(
            &format!("sqlite://{}/gatehouse.db", self.data_dir.display()),
            name,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as01_as02_as03_discovery() {
    let d = start();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = d
            .http
            .get(format!("{}{path}", d.base))
            .send()
            .await
            .expect("get");
        // Issue 14, row 18: the baseline security headers on every answer.
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{path}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(
            v["issuer"],
            json!(d.base),
            "AS-02: issuer exactly the URL it is served for"
        );
        assert_eq!(v["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(v["authorization_response_iss_parameter_supported"], true);
        assert_eq!(v["client_id_metadata_document_supported"], true);
        assert_eq!(v["response_types_supported"], json!(["code"]));
        for k in [
            "authorization_endpoint",
            "token_endpoint",
            "registration_endpoint",
            "revocation_endpoint",
            "introspection_endpoint",
            "jwks_uri",
        ] {
            assert!(v[k].as_str().is_some_and(|u| u.starts_with(&d.base)), "{k}");
        }
    }
    let jwks: Value = d
        .http
        .get(format!("{}/jwks", d.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private key material"
    );
    // The guard's PRM names this issuer.
    let prm: Value = d
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            d.base
        ))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(prm["authorization_servers"], json!([d.base]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_tokens_refresh_and_the_guarded_server() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let done = d.authorize(&mut b, &f, "mcp:basic").await;
    assert_eq!(done.status, 303);
    let params = done.redirect_params();
    assert_eq!(params["state"], "st-123", "AS-12: state round trip");
    assert_eq!(params["iss"], d.base, "RFC 9207 iss");
    assert!(
        done.location()
            .expect("loc")
            .starts_with("http://127.0.0.1:53100/callback?"),
        "AS-09: any loopback port"
    );
    let (st, tok) = d.redeem(&f, &params["code"]).await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["token_type"], "Bearer");
    let at = tok["access_token"].as_str().expect("at");
    let c = jwt_claims(at);
    assert_eq!(
        c["aud"],
        json!(d.mcp),
        "AS-13: audience bound to the resource"
    );
    assert_eq!(c["iss"], json!(d.base));
    assert_eq!(c["sub"], USER);
    assert_eq!(c["scope"], "mcp:basic");
    assert!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat") <= 600,
        "AS-28 short-lived"
    );
    assert_eq!(
        d.mcp_status(at).await,
        200,
        "the guard accepts the embedded issuer's token"
    );

    // AS-29: rotation; the old refresh token stops working after the grace use.
    let rt1 = tok["refresh_token"].as_str().expect("rt").to_owned();
    let (st, t2) = d.refresh(&f, &rt1).await;
    assert_eq!(st, 200, "{t2}");
    let rt2 = t2["refresh_token"].as_str().expect("rt2").to_owned();
    assert_ne!(rt1, rt2);
    assert_eq!(
        d.mcp_status(t2["access_token"].as_str().expect("at")).await,
        200
    );
    // Scope may not widen on refresh.
    let (st, e) = d
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("client_id", &f.client_id),
            ("scope", "mcp:basic notes:write"),
        ])
        .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as29_t9_rp6_refresh_reuse_revokes_the_family_and_racing_refreshes_survive() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let code = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let (_, tok) = d.redeem(&f, &code).await;
    let rt1 = tok["refresh_token"].as_str().expect("rt").to_owned();
    // Two refreshes racing with the same token: both succeed (bounded grace).
    let (a, b2) = tokio::join!(d.refresh(&f, &rt1), d.refresh(&f, &rt1));
    assert_eq!((a.0, b2.0), (200, 200), "{} {}", a.1, b2.1);
    // A third use within the grace window, before any successor was used, lost the race
    // (RP-6): invalid_grant, and nothing is revoked.
    let (st, e) = d.refresh(&f, &rt1).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let rt2 = a.1["refresh_token"].as_str().expect("rt2");
    let (st, next) = d.refresh(&f, rt2).await;
    assert_eq!(st, 200, "the winner's chain goes on: {next}");
    // Once a successor was used, the old token again is a replay: the family is revoked.
    let (st, e) = d.refresh(&f, &rt1).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let rt3 = next["refresh_token"].as_str().expect("rt3");
    let (st, e) = d.refresh(&f, rt3).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "family revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as07_as08_t9_bad_code_exchanges_change_nothing_and_replay_revokes() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let code = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let wrong = PkceVerifier::generate();
    for (what, form) in [
        ("wrong verifier", vec![("code_verifier", wrong.secret())]),
        (
            "wrong redirect_uri",
            vec![
                ("code_verifier", f.verifier.secret()),
                ("redirect_uri", "http://127.0.0.1:53100/callbacK"),
            ],
        ),
        (
            "other resource",
            vec![
                ("code_verifier", f.verifier.secret()),
                ("resource", "http://127.0.0.1:1/mcp"),
            ],
        ),
    ] {
        let mut full = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", f.client_id.as_str()),
        ];
        full.extend(form);
        let (st, e) = d.token(&full).await;
        assert_eq!(st, 400, "{what}: {e}");
        assert!(
            matches!(
                e["error"].as_str(),
                Some("invalid_grant" | "invalid_target")
            ),
            "{what}: {e}"
        );
    }
    let (st, e) = d
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &f.client_id),
        ])
        .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_request")),
        "missing verifier"
    );
    // None of that spent the code.
    let (st, tok) = d.redeem(&f, &code).await;
    assert_eq!(st, 200, "{tok}");
    let rt = tok["refresh_token"].as_str().expect("rt").to_owned();
    // A replay is refused and revokes what the first redemption issued.
    let (st, e) = d.redeem(&f, &code).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let (st, _) = d.refresh(&f, &rt).await;
    assert_eq!(st, 400, "refresh token of a replayed code is dead");
    // Another client cannot redeem someone else's code.
    let g = d.public_client().await;
    let code2 = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let (st, e) = d
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code2),
            ("code_verifier", f.verifier.secret()),
            ("client_id", &g.client_id),
        ])
        .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as06_as09_as13_authorize_errors() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    // AS-09/AS-11: a redirect URI off by one character gets an error page, never a redirect.
    for bad in [
        "http://127.0.0.1:53100/callbacK",
        "http://127.0.0.2/callback",
        "http://localhost/callback",
        "https://evil.example/callback",
    ] {
        let p = b.get(&d.authorize_url(&f, bad, "mcp:basic", &[])).await;
        assert_eq!(p.status, 400, "{bad}");
        assert!(p.location().is_none(), "{bad}: never redirected");
        assert_eq!(p.headers["x-frame-options"], "DENY");
    }
    let unknown = Flow {
        client_id: "no-such-client".into(),
        verifier: PkceVerifier::generate(),
    };
    let p = b
        .get(&d.authorize_url(&unknown, "http://127.0.0.1/callback", "mcp:basic", &[]))
        .await;
    assert_eq!(p.status, 400);
    assert!(p.location().is_none());
    // Once client and redirect are verified, errors go back with state and iss.
    let base = d.authorize_url(&f, "http://127.0.0.1:53100/callback", "mcp:basic", &[]);
    let strip = |url: &str, key: &str| {
        let mut u = url::Url::parse(url).expect("url");
        let kept: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != key)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        u.query_pairs_mut().clear().extend_pairs(kept);
        u.to_string()
    };
    let cases_for = |base: &str| {
        let base = base.to_owned();
        [
            (
                "AS-06 no PKCE",
                strip(&strip(&base, "code_challenge"), "code_challenge_method"),
                "invalid_request",
            ),
            (
                "AS-06 plain",
                format!(
                    "{}&code_challenge_method=plain",
                    strip(&base, "code_challenge_method")
                ),
                "invalid_request",
            ),
            (
                "AS-13 unknown resource",
                format!(
                    "{}&resource=https%3A%2F%2Fother.example%2Fmcp",
                    strip(&base, "resource")
                ),
                "invalid_target",
            ),
            (
                "unknown scope",
                format!("{}&scope=admin%3Aall", strip(&base, "scope")),
                "invalid_scope",
            ),
            (
                "response_type token",
                format!("{}&response_type=token", strip(&base, "response_type")),
                "unsupported_response_type",
            ),
        ]
    };
    let cases = cases_for(&base);
    // T18 (issue 14, row 3): this client registered itself, so no error is redirected to it
    // before the user saw a page: a page names it and offers the way back.
    for (what, url, code) in &cases {
        let p = b.get(url).await;
        assert_eq!(p.status, 400, "{what}: {}", p.body);
        assert!(p.location().is_none(), "{what}: never redirected");
        assert!(
            p.body.contains("Test App") && p.body.contains("unverified"),
            "{what}"
        );
        let back = return_link(&p.body);
        let u = url::Url::parse(&back).expect("link");
        assert!(
            back.starts_with("http://127.0.0.1:53100/callback?"),
            "{what}: {back}"
        );
        let params: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(
            params.get("error").map(String::as_str),
            Some(*code),
            "{what}"
        );
        assert_eq!(params["state"], "st-123", "{what}");
    }
    // An operator-registered client's redirect URI is trusted: errors go back with state and
    // iss at once.
    let out = d.admin_ok(&[
        "clients",
        "add",
        "--name",
        "Operator App",
        "--redirect-uri",
        "http://127.0.0.1/callback",
    ]);
    let pre_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("client_id:"))
        .expect("client_id")
        .trim()
        .to_owned();
    let pre = Flow {
        client_id: pre_id,
        verifier: PkceVerifier::generate(),
    };
    let pre_base = d.authorize_url(&pre, "http://127.0.0.1:53100/callback", "mcp:basic", &[]);
    for (what, url, code) in cases_for(&pre_base) {
        let p = b.get(&url).await;
        assert_eq!(p.status, 303, "{what}: {}", p.body);
        let params = p.redirect_params();
        assert_eq!(
            params.get("error").map(String::as_str),
            Some(code),
            "{what}"
        );
        assert_eq!(params["state"], "st-123", "{what}");
        assert_eq!(params["iss"], d.base, "{what}");
    }
    // Repeated parameters are refused.
    let p = b.get(&format!("{base}&state=again")).await;
    assert_eq!(p.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as14_as15_t1_t5_t12_consent_screen_csrf_binding_and_per_client_memory() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let login = b
        .get(&d.authorize_url(
            &f,
            "http://127.0.0.1:53100/callback",
            "mcp:basic notes:write",
            &[],
        ))
        .await;
    for h in ["x-frame-options", "content-security-policy"] {
        assert!(login.headers.get(h).is_some(), "T12: {h} on the login page");
    }
    assert!(
        login.headers["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(
        login.body.matches("type=\"password\"").count(),
        1,
        "one password field"
    );
    let (p, c) = (
        login.field("pending").expect("p"),
        login.field("csrf").expect("c"),
    );
    // Wrong password: no session, the form again.
    let again = b
        .post_form(
            &format!("{}/login", d.base),
            &[
                ("pending", &p),
                ("csrf", &c),
                ("username", USER),
                ("password", "wrong"),
            ],
        )
        .await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("Wrong user name or password"));
    let consent = b
        .post_form(
            &format!("{}/login", d.base),
            &[
                ("pending", &p),
                ("csrf", &c),
                ("username", USER),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(consent.status, 200);
    // AS-14: who asks, where the code goes, what it may do, in plain words.
    assert!(consent.body.contains("Test App"));
    assert!(
        consent.body.contains("unverified"),
        "DCR clients are marked unverified"
    );
    assert!(consent.body.contains("http://127.0.0.1:53100/callback"));
    assert!(
        consent.body.contains("a program on this computer"),
        "loopback redirect marked"
    );
    assert!(consent.body.contains("Create notes on your behalf"));
    assert_eq!(
        consent.body.matches("value=\"approve\"").count(),
        1,
        "one approve button"
    );
    assert!(
        consent.headers["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("form-action 'self' http://127.0.0.1:53100")
    );
    // AS-15 / T5: a post without the CSRF token, or from another browser, yields no code.
    let forged = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", "forged"), ("decision", "approve")],
        )
        .await;
    assert_eq!(forged.status, 400);
    assert!(forged.location().is_none());
    let mut other = Browser::new();
    other
        .cookies
        .insert("gh_session".into(), b.cookies["gh_session"].clone());
    let hijack = other
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await;
    assert_eq!(hijack.status, 400, "T1: a flow bound to another browser");
    assert!(hijack.location().is_none());
    // The real post works once, and only once.
    let ok = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await;
    assert_eq!(ok.status, 303);
    assert!(ok.redirect_params().contains_key("code"));
    let twice = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await;
    assert_eq!(twice.status, 400);
    // Consent remembered for this client: straight back with a code.
    let again = b
        .get(&d.authorize_url(&f, "http://127.0.0.1:53100/callback", "mcp:basic", &[]))
        .await;
    assert_eq!(again.status, 307, "remembered consent: {}", again.body);
    assert!(again.redirect_params().contains_key("code"));
    // T1: never shared with another client of the same user.
    let g = d.public_client().await;
    let other_client = b
        .get(&d.authorize_url(&g, "http://127.0.0.1:53100/callback", "mcp:basic", &[]))
        .await;
    assert_eq!(
        other_client.status, 200,
        "a second client sees the consent screen"
    );
    assert!(other_client.body.contains("value=\"approve\""));
    // Deny goes back with access_denied.
    let (p2, c2) = (
        other_client.field("pending").expect("p"),
        other_client.field("csrf").expect("c"),
    );
    let denied = b
        .post_form(
            &format!("{}/consent", d.base),
            &[("pending", &p2), ("csrf", &c2), ("decision", "deny")],
        )
        .await;
    assert_eq!(denied.redirect_params()["error"], "access_denied");
    // Step-up: a wider scope asks again.
    let wider = b
        .get(&d.authorize_url(
            &f,
            "http://127.0.0.1:53100/callback",
            "mcp:basic notes:write admin",
            &[],
        ))
        .await;
    assert_eq!(
        wider.status, 400,
        "unknown scope refused (a page: the client registered itself)"
    );
    assert!(wider.location().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as10_as25_as26_t11_registration_rules() {
    let d = start();
    for (what, uri) in [
        ("non-loopback http", "http://app.example.com/cb"),
        ("javascript", "javascript:alert(1)"),
        ("fragment", "https://app.example.com/cb#x"),
    ] {
        let v = d.register(uri, json!({})).await;
        assert_eq!(v["_status"], 400, "{what}");
        assert_eq!(v["error"], "invalid_redirect_uri", "{what}");
    }
    let v = d
        .register(
            "https://app.example.com/cb",
            json!({"application_type": "web", "token_endpoint_auth_method": "client_secret_basic"}),
        )
        .await;
    assert_eq!(v["_status"], 201);
    assert!(
        v.get("client_secret").is_none() && v["token_endpoint_auth_method"] == "none",
        "T17: self-registered clients are public unless the operator's policy says otherwise: {v}"
    );
    let v = d
        .register(
            "http://127.0.0.1/cb",
            json!({"token_endpoint_auth_method": "private_key_jwt"}),
        )
        .await;
    assert_eq!(v["error"], "invalid_client_metadata");
    let v = d
        .register("http://127.0.0.1/cb", json!({"scope": "mcp:basic root"}))
        .await;
    assert_eq!(v["error"], "invalid_client_metadata");
    // T11: registrations per address are limited (10 a minute by default; 4 used above).
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            d.register("http://127.0.0.1/cb", json!({})).await["_status"]
                .as_u64()
                .expect("status"),
        );
    }
    assert!(statuses.contains(&429), "rate limited: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as32_as33_as35_revocation_introspection_client_credentials_via_admin_cli() {
    let d = start();
    let out = d.admin_ok(&[
        "clients",
        "add",
        "--name",
        "Resource Server",
        "--confidential",
        "--grant",
        "client_credentials",
        "--scope",
        "mcp:basic",
        "--introspect-for",
        &d.mcp,
    ]);
    let (rs_id, rs_secret) = added_client(&out);
    // AS-35: client_credentials for the confidential client.
    let r = d
        .http
        .post(format!("{}/token", d.base))
        .basic_auth(&rs_id, Some(&rs_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "mcp:basic"),
            ("resource", &d.mcp),
        ])
        .send()
        .await
        .expect("cc");
    assert_eq!(r.status(), 200);
    let cc: Value = r.json().await.expect("json");
    assert_eq!(
        jwt_claims(cc["access_token"].as_str().expect("at"))["sub"],
        json!(rs_id)
    );
    assert_eq!(
        d.mcp_status(cc["access_token"].as_str().expect("at")).await,
        200
    );
    let r = d
        .http
        .post(format!("{}/token", d.base))
        .basic_auth(&rs_id, Some("wrong-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("cc");
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let r = d
        .http
        .post(format!("{}/token", d.base))
        .basic_auth(&rs_id, Some(&rs_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "notes:write"),
        ])
        .send()
        .await
        .expect("cc");
    assert_eq!(r.status(), 400, "scope beyond the client's");

    // A user's tokens, then revocation.
    let f = d.public_client().await;
    let mut b = Browser::new();
    let code = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let (_, tok) = d.redeem(&f, &code).await;
    let (at, rt) = (
        tok["access_token"].as_str().expect("at").to_owned(),
        tok["refresh_token"].as_str().expect("rt").to_owned(),
    );
    let introspect = |token: String| {
        let (http, base, id, sec) = (
            d.http.clone(),
            d.base.clone(),
            rs_id.clone(),
            rs_secret.clone(),
        );
        async move {
            let r = http
                .post(format!("{base}/introspect"))
                .basic_auth(id, Some(sec))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .expect("introspect");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    let v = introspect(at.clone()).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["aud"], json!(d.mcp));
    assert_eq!(
        introspect(rt.clone()).await,
        json!({"active": false}),
        "a resource server never sees refresh tokens"
    );
    assert_eq!(introspect("garbage".into()).await["active"], false);
    // AS-33: only authenticated confidential clients may introspect.
    let r = d
        .http
        .post(format!("{}/introspect", d.base))
        .form(&[("token", at.as_str()), ("client_id", f.client_id.as_str())])
        .send()
        .await
        .expect("i");
    assert_eq!(r.status(), 401);
    // AS-32: the client revokes its refresh token: the grant ends.
    let r = d
        .http
        .post(format!("{}/revoke", d.base))
        .form(&[("token", rt.as_str()), ("client_id", f.client_id.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
    assert_eq!(d.refresh(&f, &rt).await.0, 400);
    assert_eq!(
        introspect(at.clone()).await["active"],
        false,
        "the access token's grant is revoked"
    );
    // Unknown tokens: still 200 (no oracle).
    let r = d
        .http
        .post(format!("{}/revoke", d.base))
        .form(&[("token", "nope"), ("client_id", f.client_id.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);

    // Admin: revoke all of a user's grants; key rotation is published.
    let code = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let (_, tok) = d.redeem(&f, &code).await;
    let out = d
        .admin()
        .args(["revoke", "--subject", USER])
        .output()
        .expect("admin");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked 1 grant"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        d.refresh(&f, tok["refresh_token"].as_str().expect("rt"))
            .await
            .0,
        400
    );
    let logs = d.proc.all_output();
    for secret in [&at, &rt, &rs_secret] {
        assert!(
            !logs.contains(secret.as_str()),
            "T13: no secret in the logs"
        );
    }
}

/// Deleting a client takes effect at once, though stored public clients are kept in memory for
/// a moment between token requests (`PUBLIC_CLIENT_TTL`): its codes and refresh tokens die with
/// its grants, and a confidential client is never served from memory (AS-07, AS-29, AS-35).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_client_takes_effect_at_once() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let code = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let pending = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let (status, tok) = d.redeem(&f, &code).await;
    assert_eq!(status, 200, "{tok}");
    // Refreshed just now: the client's record is the one in memory.
    let (status, tok) = d
        .refresh(&f, tok["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!(status, 200, "{tok}");
    d.admin_ok(&["clients", "delete", &f.client_id]);
    let (status, e) = d
        .refresh(&f, tok["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    let (status, e) = d.redeem(&f, &pending).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));

    let (id, secret) = d.add_machine_client("machine");
    let cc = || {
        d.http
            .post(format!("{}/token", d.base))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "mcp:basic")])
            .send()
    };
    assert_eq!(cc().await.expect("cc").status(), 200);
    d.admin_ok(&["clients", "delete", &id]);
    assert_eq!(cc().await.expect("cc").status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as34_token_exchange_is_policy_bound_narrowing_and_carries_act() {
    const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
    let d = start();
    let add = |extra: &[&str]| {
        let mut c = d.admin();
        c.args([
            "clients",
            "add",
            "--name",
            "Gateway",
            "--confidential",
            "--grant",
            TE,
        ])
        .args(extra);
        added_client(&c.output().expect("admin"))
    };
    let (gw, gw_secret) = add(&["--exchange-target", &d.mcp]);
    let (other, other_secret) = add(&[]);
    let f = d.public_client().await;
    let mut b = Browser::new();
    let code = d
        .authorize(&mut b, &f, "mcp:basic notes:write")
        .await
        .redirect_params()["code"]
        .clone();
    let (_, tok) = d.redeem(&f, &code).await;
    let user_at = tok["access_token"].as_str().expect("at").to_owned();
    let exchange = |id: String, secret: String, form: Vec<(&'static str, String)>| {
        let http = d.http.clone();
        let url = format!("{}/token", d.base);
        async move {
            let r = http
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&form)
                .send()
                .await
                .expect("exchange");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.expect("json"))
        }
    };
    let base = |scope: &str, token: &str, resource: &str| {
        vec![
            ("grant_type", TE.to_owned()),
            ("subject_token", token.to_owned()),
            ("subject_token_type", AT.to_owned()),
            ("resource", resource.to_owned()),
            ("scope", scope.to_owned()),
        ]
    };
    let (st, v) = exchange(
        gw.clone(),
        gw_secret.clone(),
        base("mcp:basic", &user_at, &d.mcp),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["issued_token_type"], AT);
    let c = jwt_claims(v["access_token"].as_str().expect("at"));
    let u = jwt_claims(&user_at);
    assert_eq!(c["sub"], USER, "acts for the user");
    assert_eq!(c["act"]["sub"], json!(gw), "RFC 8693 act names the gateway");
    assert_eq!(c["aud"], json!(d.mcp));
    assert_eq!(c["scope"], "mcp:basic", "narrowed as asked");
    assert!(
        c["exp"].as_i64() <= u["exp"].as_i64(),
        "never outlives the subject token"
    );
    assert_eq!(
        d.mcp_status(v["access_token"].as_str().expect("at")).await,
        200
    );
    // Issue 14, row 17: an unlisted audience beside a listed resource is refused, not ignored.
    let mut both = base("mcp:basic", &user_at, &d.mcp);
    both.push(("audience", "https://elsewhere.example/mcp".to_owned()));
    let (st, v) = exchange(gw.clone(), gw_secret.clone(), both).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_target")),
        "{v}"
    );
    for (what, id, secret, form, err) in [
        (
            "widening",
            gw.clone(),
            gw_secret.clone(),
            base("mcp:basic notes:write offline_access", &user_at, &d.mcp),
            "invalid_scope",
        ),
        (
            "target not allowed for this client",
            other.clone(),
            other_secret.clone(),
            base("mcp:basic", &user_at, &d.mcp),
            "invalid_target",
        ),
        (
            "unknown target",
            gw.clone(),
            gw_secret.clone(),
            base("mcp:basic", &user_at, "https://elsewhere.example/mcp"),
            "invalid_target",
        ),
        (
            "forged subject token",
            gw.clone(),
            gw_secret.clone(),
            base("mcp:basic", "eyJhbGciOiJub25lIn0.e30.", &d.mcp),
            "invalid_grant",
        ),
    ] {
        let (st, v) = exchange(id, secret, form).await;
        assert_eq!((st, v["error"].as_str()), (400, Some(err)), "{what}: {v}");
    }
    let mut wrong_type = base("mcp:basic", &user_at, &d.mcp);
    wrong_type[2].1 = "urn:ietf:params:oauth:token-type:refresh_token".into();
    let (st, v) = exchange(gw.clone(), gw_secret.clone(), wrong_type).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_request")));
    // A public client may not exchange at all.
    let r = d
        .http
        .post(format!("{}/token", d.base))
        .form(&[
            ("grant_type", TE),
            ("client_id", f.client_id.as_str()),
            ("subject_token", user_at.as_str()),
            ("subject_token_type", AT),
        ])
        .send()
        .await
        .expect("x");
    assert_eq!(r.status(), 400);
    // The user's grant revoked: nothing more can be exchanged from it.
    let out = d
        .admin()
        .args(["revoke", "--subject", USER])
        .output()
        .expect("admin");
    assert!(out.status.success());
    let (st, v) = exchange(gw, gw_secret, base("mcp:basic", &user_at, &d.mcp)).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as23_as35_private_key_jwt_client_authentication() {
    use gatehouse_testkit::{TestKey, forge_alg_none, forge_hs256_with_public_key, now};
    const ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    let d = start();
    let key = TestKey::es256("client-key-1");
    let jwks = json!({"keys": [serde_json::to_value(&key.jwk).expect("jwk")]});
    // Machine clients are the operator's to register (T17).
    let jwks_file = d.data_dir.join("client-jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).expect("jwks file");
    let out = d.admin_ok(&[
        "clients",
        "add",
        "--name",
        "Key client",
        "--confidential",
        "--grant",
        "client_credentials",
        "--jwks-file",
        jwks_file.to_str().expect("path"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("client_secret"),
        "no secret for a key-authenticated client"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("client_id:"))
        .expect("client_id")
        .trim()
        .to_owned();
    let token_url = format!("{}/token", d.base);
    let assertion_claims = |aud: &str, exp: i64, jti: Option<&str>| {
        let mut c = json!({"iss": id, "sub": id, "aud": aud, "iat": now(), "exp": exp});
        if let Some(j) = jti {
            c["jti"] = j.into();
        }
        c
    };
    let cc = |assertion: String| {
        let (http, url) = (d.http.clone(), token_url.clone());
        async move {
            let r = http
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "mcp:basic"),
                    ("client_assertion_type", ASSERTION),
                    ("client_assertion", assertion.as_str()),
                ])
                .send()
                .await
                .expect("token");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.expect("json"))
        }
    };
    let good = key.sign(&assertion_claims(&token_url, now() + 60, Some("j-1")));
    let (st, v) = cc(good.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        jwt_claims(v["access_token"].as_str().expect("at"))["sub"],
        json!(id)
    );
    // The issuer is an accepted audience too.
    assert_eq!(
        cc(key.sign(&assertion_claims(&d.base, now() + 60, Some("j-2"))))
            .await
            .0,
        200
    );
    let other = TestKey::es256("client-key-1");
    let mut wrong_iss = assertion_claims(&token_url, now() + 60, Some("j-9"));
    wrong_iss["iss"] = "someone-else".into();
    for (what, assertion) in [
        ("replayed jti", good),
        (
            "wrong audience",
            key.sign(&assertion_claims(
                "https://other.example/token",
                now() + 60,
                Some("j-3"),
            )),
        ),
        ("wrong iss", key.sign(&wrong_iss)),
        (
            "signed by another key",
            other.sign(&assertion_claims(&token_url, now() + 60, Some("j-4"))),
        ),
        (
            "expired",
            key.sign(&assertion_claims(&token_url, now() - 300, Some("j-5"))),
        ),
        (
            "too long-lived",
            key.sign(&assertion_claims(&token_url, now() + 7200, Some("j-6"))),
        ),
        (
            "no jti",
            key.sign(&assertion_claims(&token_url, now() + 60, None)),
        ),
        (
            "alg none",
            forge_alg_none(&assertion_claims(&token_url, now() + 60, Some("j-7"))),
        ),
        (
            "HMAC with the public key",
            forge_hs256_with_public_key(
                &key,
                &assertion_claims(&token_url, now() + 60, Some("j-8")),
            )
            .remove(0),
        ),
    ] {
        let (st, v) = cc(assertion).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {v}"
        );
    }
    // An assertion together with a secret is two methods at once.
    let r = d
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", "x"),
            ("client_assertion_type", ASSERTION),
            ("client_assertion", "a.b.c"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 400);
    // Registration needs usable keys.
    let bad = d.register("http://127.0.0.1/cb", json!({"grant_types": ["client_credentials"], "redirect_uris": [], "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}})).await;
    assert_eq!(bad["error"], "invalid_client_metadata");
    let meta: Value = d
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", d.base))
        .send()
        .await
        .expect("m")
        .json()
        .await
        .expect("j");
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .expect("a")
            .iter()
            .any(|m| m == "private_key_jwt")
    );
}

/// T17, AS-25, AS-35 (issue 14, rows 1, 11, 15): open registration gives a stranger a public
/// code-flow client and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t17_as25_as35_open_registration_grants_nothing_a_stranger_should_not_have() {
    let d = start();
    // Machine grants are refused at registration.
    let v = d
        .register(
            "http://127.0.0.1/callback",
            json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic"}),
        )
        .await;
    assert_eq!(v["_status"], 400, "{v}");
    assert_eq!(v["error"], "invalid_client_metadata");
    let v = d
        .register(
            "http://127.0.0.1/callback",
            json!({"grant_types": ["authorization_code", "client_credentials"]}),
        )
        .await;
    assert_eq!(v["_status"], 400, "{v}");
    // A request for a secret gets a public client (RFC 7591 §3.2.1: the server may replace
    // values), and says so.
    for method in ["client_secret_basic", "client_secret_post"] {
        let v = d
            .register(
                "https://app.example.com/cb",
                json!({"token_endpoint_auth_method": method, "application_type": "web"}),
            )
            .await;
        assert_eq!(v["_status"], 201, "{v}");
        assert_eq!(v["token_endpoint_auth_method"], "none", "{method}");
        assert!(v.get("client_secret").is_none(), "{method}: no secret");
        // And that public client cannot mint machine tokens for any resource.
        let (st, e) = d
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", v["client_id"].as_str().expect("id")),
                ("resource", &d.mcp),
                ("scope", "mcp:basic"),
            ])
            .await;
        assert_eq!(
            (st, e["error"].as_str()),
            (400, Some("unauthorized_client")),
            "{e}"
        );
    }
    // Software statements are never stored as if verified.
    let v = d
        .register(
            "http://127.0.0.1/callback",
            json!({"software_statement": "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."}),
        )
        .await;
    assert_eq!(
        (v["_status"].as_u64(), v["error"].as_str()),
        (Some(400), Some("unapproved_software_statement"))
    );
    // Row 15: invisible characters cannot make a name read as another; trailing-dot hosts are
    // refused.
    let v = d
        .register(
            "http://127.0.0.1/callback",
            json!({"client_name": "Good\u{202e}elgooG\u{200b} App"}),
        )
        .await;
    assert_eq!(v["_status"], 201, "{v}");
    assert_eq!(v["client_name"], "GoodelgooG App");
    let v = d
        .register(
            "https://app.example.com./cb",
            json!({"application_type": "web"}),
        )
        .await;
    assert_eq!(
        (v["_status"].as_u64(), v["error"].as_str()),
        (Some(400), Some("invalid_redirect_uri")),
        "{v}"
    );
    // Row 11: a bounded number of redirect URIs.
    let many: Vec<String> = (0..11).map(|i| format!("http://127.0.0.1/cb{i}")).collect();
    let v = d
        .register("http://127.0.0.1/callback", json!({"redirect_uris": many}))
        .await;
    assert_eq!(v["_status"], 400, "{v}");
}

/// AS-33 (issue 14, row 2): introspection tells a token's claims only to a resource server the
/// operator allowed for its audience, or to the client it was issued to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as33_introspection_only_for_the_audience_or_the_owner() {
    let d = start();
    let (stranger_id, stranger_secret) = d.add_machine_client("Someone else");
    let f = d.public_client().await;
    let mut b = Browser::new();
    let tok = d.code_tokens(&mut b, &f).await;
    let (at, rt) = (
        tok["access_token"].as_str().expect("at"),
        tok["refresh_token"].as_str().expect("rt"),
    );
    let introspect = |token: &str| {
        let req = d
            .http
            .post(format!("{}/introspect", d.base))
            .basic_auth(&stranger_id, Some(&stranger_secret))
            .form(&[("token", token)]);
        async move {
            let r = req.send().await.expect("introspect");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    assert_eq!(
        introspect(at).await,
        json!({"active": false}),
        "a user's access token"
    );
    assert_eq!(
        introspect(rt).await,
        json!({"active": false}),
        "a user's refresh token"
    );
    // Its own token it may see.
    let (st, cc) = d
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &stranger_id),
            ("client_secret", &stranger_secret),
            ("resource", &d.mcp),
            ("scope", "mcp:basic"),
        ])
        .await;
    assert_eq!(st, 401, "the machine client authenticates with Basic: {cc}");
    let r = d
        .http
        .post(format!("{}/token", d.base))
        .basic_auth(&stranger_id, Some(&stranger_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", d.mcp.as_str()),
            ("scope", "mcp:basic"),
        ])
        .send()
        .await
        .expect("cc");
    let cc: Value = r.json().await.expect("json");
    let own = introspect(cc["access_token"].as_str().expect("at")).await;
    assert_eq!(own["active"], true, "{own}");
    assert_eq!(own["client_id"], json!(stranger_id));
}

/// T23, T16 (issue 14, row 8): a revocation reaches the guard in this process at once, and a
/// password change ends the browser session and remembered consent: no code without a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_revocation_and_password_change_end_tokens_sessions_and_consent() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let tok = d.code_tokens(&mut b, &f).await;
    let (at, rt) = (
        tok["access_token"].as_str().expect("at").to_owned(),
        tok["refresh_token"].as_str().expect("rt").to_owned(),
    );
    assert_eq!(d.mcp_status(&at).await, 200);
    // /revoke in this process: the access token is refused by the very next request.
    let r = d
        .http
        .post(format!("{}/revoke", d.base))
        .form(&[("token", rt.as_str()), ("client_id", f.client_id.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
    assert_eq!(d.mcp_status(&at).await, 401, "revoked grant's access token");
    // A new grant through the remembered consent, then the operator's incident response from
    // another process (the admin CLI): the guard refuses within a second or two.
    let done = d.authorize(&mut b, &f, "mcp:basic").await;
    assert_eq!(
        done.status, 307,
        "remembered consent: straight back with a code"
    );
    let (_, tok) = d.redeem(&f, &done.redirect_params()["code"]).await;
    let at = tok["access_token"].as_str().expect("at").to_owned();
    assert_eq!(d.mcp_status(&at).await, 200);
    let out = d
        .admin()
        .env("GATEHOUSE_PASSWORD", "a new password 2")
        .args(["users", "passwd", USER])
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut refused = false;
    for _ in 0..50 {
        if d.mcp_status(&at).await == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "the password change revoked the grant everywhere in this process"
    );
    // The old browser session and consent are gone: a login page, not a code.
    let p = b
        .get(&d.authorize_url(&f, "http://127.0.0.1:53100/callback", "mcp:basic", &[]))
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("type=\"password\""), "sign in again");
}

/// T20 (issue 14, row 5): remembered consent covers only the redirect URIs it sent codes to; a
/// loopback redirect on a new port shows the consent page before any code leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_remembered_consent_is_bound_to_the_approved_loopback_port() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let done = d.authorize(&mut b, &f, "mcp:basic").await;
    assert_eq!(done.status, 303);
    let again = b
        .get(&d.authorize_url(&f, "http://127.0.0.1:53100/callback", "mcp:basic", &[]))
        .await;
    assert_eq!(again.status, 307, "same port: remembered");
    let other = b
        .get(&d.authorize_url(&f, "http://127.0.0.1:41999/callback", "mcp:basic", &[]))
        .await;
    assert_eq!(other.status, 200, "a new port is a new decision");
    assert!(other.location().is_none());
    assert!(other.body.contains("value=\"approve\""), "the consent page");
    assert!(
        other.body.contains("41999"),
        "it shows where the code would go"
    );
}

/// AS-08 (issue 14, row 9): a replay that is not itself valid revokes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as08_an_invalid_replay_does_not_revoke_the_victims_grant() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let code = d.authorize(&mut b, &f, "mcp:basic").await.redirect_params()["code"].clone();
    let (st, tok) = d.redeem(&f, &code).await;
    assert_eq!(st, 200, "{tok}");
    let attacker = d.public_client().await;
    let junk = PkceVerifier::generate();
    for (client, verifier) in [
        (attacker.client_id.as_str(), junk.secret()),
        (f.client_id.as_str(), junk.secret()),
    ] {
        let (st, e) = d
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", verifier),
                ("client_id", client),
            ])
            .await;
        assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    }
    let (st, r) = d
        .refresh(&f, tok["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!(st, 200, "the victim's grant lives: {r}");
}

/// AS-29 (issue 14, row 12): the grace use of a rotated refresh token ends once its successor
/// is used; using the old one then is reuse and ends the family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as29_grace_ends_when_the_successor_is_used() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let tok = d.code_tokens(&mut b, &f).await;
    let rt1 = tok["refresh_token"].as_str().expect("rt").to_owned();
    let (st, t2) = d.refresh(&f, &rt1).await;
    assert_eq!(st, 200);
    let rt2 = t2["refresh_token"].as_str().expect("rt").to_owned();
    let (st, t3) = d.refresh(&f, &rt2).await;
    assert_eq!(st, 200, "{t3}");
    let rt3 = t3["refresh_token"].as_str().expect("rt").to_owned();
    let (st, e) = d.refresh(&f, &rt1).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "no second branch"
    );
    assert_eq!(d.refresh(&f, &rt3).await.0, 400, "reuse ended the family");
}

/// T19 (issue 14, rows 4 and 14): failed sign-ins slow down, then lock, the same way for names
/// that are not accounts; the right password does not get through a lock; a password typed
/// into the name field never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t19_sign_in_is_throttled_per_account_without_revealing_accounts() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let login = b
        .get(&d.authorize_url(&f, "http://127.0.0.1:53100/callback", "mcp:basic", &[]))
        .await;
    let (p, c) = (
        login.field("pending").expect("p"),
        login.field("csrf").expect("c"),
    );
    let url = format!("{}/login", d.base);
    let form = |user: &'static str, password: &'static str| {
        [
            ("pending", p.clone()),
            ("csrf", c.clone()),
            ("username", user.to_owned()),
            ("password", password.to_owned()),
        ]
    };
    async fn post(b: &mut Browser, url: &str, form: [(&str, String); 4]) -> (u16, bool) {
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = b.post_form(url, &f).await;
        (r.status, r.headers.get("retry-after").is_some())
    }
    macro_rules! attempt {
        ($user:expr, $password:expr) => {
            post(&mut b, &url, form($user, $password))
        };
    }
    let mut seen = std::collections::HashMap::new();
    for user in [USER, "no-such-user"] {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(attempt!(user, "wrong password").await.0);
        }
        // Past five failures each guess waits; the right password waits too.
        let (st, retry) = attempt!(user, PASSWORD).await;
        statuses.push(st);
        assert!(retry, "429 carries Retry-After");
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        statuses.push(attempt!(user, "wrong password").await.0);
        tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
        statuses.push(attempt!(user, "wrong password").await.0);
        // Now locked for minutes, whatever is typed.
        statuses.push(attempt!(user, PASSWORD).await.0);
        seen.insert(user, statuses);
    }
    assert_eq!(
        seen[USER],
        vec![401, 401, 401, 401, 401, 401, 429, 401, 401, 429],
        "account: slower, then locked"
    );
    assert_eq!(
        seen[USER], seen["no-such-user"],
        "no difference for names that are not accounts"
    );
    // Row 14: a password typed into the name field is not logged.
    let _ = attempt!("my-Secret-Password-123", "x").await;
    let logs = d.proc.all_output();
    assert!(
        !logs.contains("my-Secret-Password-123"),
        "T13: no password in the log"
    );
}

/// T19 (issue 14, row 4): guesses sent together for one account do not all get through: each is
/// checked against the lock again once its turn to hash comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t19_a_burst_of_guesses_is_throttled_too() {
    let d = start();
    let f = d.public_client().await;
    let mut b = Browser::new();
    let login = b
        .get(&d.authorize_url(&f, "http://127.0.0.1:53100/callback", "mcp:basic", &[]))
        .await;
    let (p, c) = (
        login.field("pending").expect("p"),
        login.field("csrf").expect("c"),
    );
    let cookie = b
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let posts = (0..40).map(|_| {
        let req = d
            .http
            .post(format!("{}/login", d.base))
            .header("cookie", &cookie)
            .form(&[
                ("pending", p.as_str()),
                ("csrf", c.as_str()),
                ("username", USER),
                ("password", "wrong password"),
            ]);
        async move { req.send().await.expect("post").status().as_u16() }
    });
    let statuses = futures::future::join_all(posts).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 10,
        "at most the free failures plus those already hashing: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 429 | 503)),
        "{statuses:?}"
    );
}
