//! Issue 3: login federated to an upstream OpenID Connect identity provider (enterprise SSO). The
//! real oidc-provider (npm) plays the company IdP; Gatehouse is its confidential client, maps the
//! IdP's subject and groups into its own tokens, and refuses replayed, cross-browser and mixed-up
//! answers.
mod common;

use common::browser::{Browser, Page};
use common::*;
use gatehouse_core::PkceVerifier;
use serde_json::{Value, json};

struct Setup {
    _idp: Proc,
    gh: Proc,
    base: String,
    idp: String,
}

fn setup(local_login: bool) -> Setup {
    let (as_port, port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let idp_url = format!("http://127.0.0.1:{as_port}");
    let idp = oidc_provider_with(
        as_port,
        &[("UPSTREAM_REDIRECT", &format!("{base}/login/callback"))],
    );
    let dir = std::env::temp_dir().join(format!("gatehouse-sso-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: sqlite://{}/as.db\n  local_login: {local_login}\n  upstream:\n    issuer: '{idp_url}'\n    client_id: gatehouse-upstream\n    client_secret: ${{env:GH_TEST_IDP_SECRET}}\n    scopes: openid email groups\n    groups_claim: groups\n    name: Example Corp SSO\n  admin:\n    groups: [{admin_group}]\ndangerous:\n  allow_loopback_fetch: ['127.0.0.1:{as_port}']\n",
            dir.display(),
            // Every user of the test IdP is in `engineering` and `staff`.
            admin_group = if local_login { "staff" } else { "auditors" },
        ),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.env("GH_TEST_IDP_SECRET", "upstream-secret-not-for-production")
        .args(["serve", "--config"])
        .arg(&cfg);
    Setup {
        _idp: idp,
        gh: Proc::start(cmd, "ready"),
        base,
        idp: idp_url,
    }
}

/// Registers a client and opens the authorization page; returns (client_id, verifier, login page).
async fn begin(s: &Setup, b: &mut Browser) -> (String, PkceVerifier, Page) {
    let reg: Value = reqwest::Client::new()
        .post(format!("{}/register", s.base))
        .json(&json!({"client_name": "SSO App", "redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["authorization_code"], "token_endpoint_auth_method": "none", "application_type": "native"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let client_id = reg["client_id"].as_str().expect("id").to_owned();
    let v = PkceVerifier::generate();
    let mut u = url::Url::parse(&format!("{}/authorize", s.base)).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:6000/cb")
        .append_pair("code_challenge", v.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", "mcp:basic");
    let page = b.get(u.as_str()).await;
    (client_id, v, page)
}

/// Clicks "Sign in with …", signs in at the IdP's own pages as `user`, and stops at the redirect
/// back to Gatehouse's callback, returning its URL.
async fn through_idp(s: &Setup, b: &mut Browser, login: &Page, user: &str) -> String {
    let (p, c) = (
        login.field("pending").expect("pending"),
        login.field("csrf").expect("csrf"),
    );
    let mut page = b
        .post_form(
            &format!("{}/login/upstream", s.base),
            &[("pending", &p), ("csrf", &c)],
        )
        .await;
    for _ in 0..12 {
        if let Some(loc) = page.location() {
            let abs = url::Url::parse(&s.idp)
                .expect("idp")
                .join(&loc)
                .expect("join")
                .to_string();
            if abs.starts_with(&format!("{}/login/callback", s.base)) {
                return abs;
            }
            page = b.get(&abs).await;
            continue;
        }
        assert_eq!(page.status, 200, "IdP page: {}", page.body);
        let action = page
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a form on the IdP page")
            .to_owned();
        let mut fields: Vec<(String, String)> = Vec::new();
        for part in page.body.split("<input").skip(1) {
            let attr = |n: &str| {
                part.split(&format!("{n}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_owned)
            };
            if let Some(name) = attr("name") {
                let value = match name.as_str() {
                    "login" => user.to_owned(),
                    "password" => "any".to_owned(),
                    _ => attr("value").unwrap_or_default(),
                };
                fields.push((name, value));
            }
        }
        let form: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let target = url::Url::parse(&s.idp)
            .expect("idp")
            .join(&action)
            .expect("join")
            .to_string();
        page = b.post_form(&target, &form).await;
    }
    panic!("never came back from the IdP");
}

/// CO-1 with single sign-on: the console's sign-in page offers the identity provider; a user in
/// an administrators' group (`admin.groups`, from the IdP's groups claim) gets the console, one
/// who is not gets 403; the callback is single use and bound to the browser, as for authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co1_console_sign_in_through_the_idp_admits_by_group() {
    for (local, admitted) in [(true, true), (false, false)] {
        let s = setup(local);
        let mut b = Browser::new();
        let r = b.get(&format!("{}/admin", s.base)).await;
        assert_eq!(r.status, 303);
        let page = b.get(&r.location().expect("to sign-in")).await;
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("Sign in with Example Corp SSO"),
            "{}",
            page.body
        );
        assert_eq!(page.body.contains("type=\"password\""), local);
        let callback = through_idp(&s, &mut b, &page, "dana").await;
        let back = b.get(&callback).await;
        assert_eq!(back.status, 303, "{}", back.body);
        assert_eq!(back.location(), Some(format!("{}/admin", s.base)));
        let admin = b.get(&format!("{}/admin", s.base)).await;
        if admitted {
            assert_eq!(admin.status, 200, "{}", admin.body);
            assert!(admin.body.contains("sso:dana"), "{}", admin.body);
        } else {
            assert_eq!(admin.status, 403, "not in auditors: {}", admin.body);
        }
        let account = b.get(&format!("{}/account", s.base)).await;
        assert_eq!(account.status, 200);
        assert!(
            account
                .body
                .contains("Signed in as <strong>sso:dana</strong>")
        );
        assert_eq!(b.get(&callback).await.status, 400, "single use");
        let stolen = Browser::new().get(&callback).await;
        assert_eq!(stolen.status, 400, "{}", stolen.body);
        // A console sign-in's pending record is not an authorization request: posting it to
        // the login form does nothing.
        let mut b2 = Browser::new();
        let page = b2
            .get(&format!("{}/account/signin?next=admin", s.base))
            .await;
        let (p, c) = (
            page.field("pending").expect("p"),
            page.field("csrf").expect("c"),
        );
        let r = b2
            .post_form(
                &format!("{}/consent", s.base),
                &[("pending", &p), ("csrf", &c), ("decision", "approve")],
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains("not an authorization request"),
            "{}",
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_the_company_idp_maps_subject_and_groups() {
    let s = setup(false);
    let mut b = Browser::new();
    let (client_id, v, login) = begin(&s, &mut b).await;
    assert!(login.body.contains("Sign in with Example Corp SSO"));
    assert!(
        !login.body.contains("type=\"password\""),
        "local sign-in turned off"
    );
    let callback = through_idp(&s, &mut b, &login, "alice").await;
    let params: std::collections::HashMap<String, String> = url::Url::parse(&callback)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(
        params.get("iss"),
        Some(&s.idp),
        "the IdP sends iss (RFC 9207)"
    );
    let consent = b.get(&callback).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(
        consent.body.contains("Signed in as sso:alice"),
        "{}",
        consent.body
    );
    let (p, c) = (
        consent.field("pending").expect("p"),
        consent.field("csrf").expect("c"),
    );
    let done = b
        .post_form(
            &format!("{}/consent", s.base),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await;
    let code = done.redirect_params()["code"].clone();
    let tok: Value = reqwest::Client::new()
        .post(format!("{}/token", s.base))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", v.secret()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let at = jwt_claims(tok["access_token"].as_str().expect("at"));
    assert_eq!(
        at["sub"], "sso:alice",
        "prefixed so it never collides with local users"
    );
    assert_eq!(
        at["groups"],
        json!(["engineering", "staff"]),
        "groups from the IdP"
    );
    assert_eq!(at["email"], "alice@example.com");
    assert_eq!(at["iss"], json!(s.base), "our token, not the IdP's");
    // The callback is single use.
    let again = b.get(&callback).await;
    assert_eq!(again.status, 400);
    assert!(again.location().is_none());
    let logs = s.gh.all_output();
    assert!(
        !logs.contains("upstream-secret-not-for-production"),
        "the IdP secret is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_t14_callbacks_from_another_browser_or_with_a_wrong_issuer_are_refused() {
    let s = setup(true);
    let mut b = Browser::new();
    let (_, _, login) = begin(&s, &mut b).await;
    assert!(
        login.body.contains("type=\"password\""),
        "local sign-in offered too"
    );
    let callback = through_idp(&s, &mut b, &login, "bob").await;
    // Another browser presenting the callback: refused, and the login is spent.
    let mut other = Browser::new();
    let r = other.get(&callback).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("another browser"), "{}", r.body);
    assert_eq!(
        b.get(&callback).await.status,
        400,
        "spent by the failed attempt"
    );
    // A fresh login whose answer claims another issuer (mix-up): refused.
    let (_, _, login) = begin(&s, &mut b).await;
    let callback = through_idp(&s, &mut b, &login, "bob").await;
    let mut u = url::Url::parse(&callback).expect("url");
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("iss", "https://evil.example");
    let r = b.get(u.as_str()).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("another identity provider"), "{}", r.body);
}
