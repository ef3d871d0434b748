//! Issue 17, part 3: the JWT-bearer grant on our authorization server, with assertions minted
//! by a test IdP and a test workload platform (their own keys, served as JWKS on loopback):
//! ID-JAGs for users (enterprise-managed authorization, AS-36, JB-1) and workload identity
//! tokens for machines (JB-2), each with the battery of bad assertions (JB-3); then our client
//! (`gatehouse login --assertion-file`) and a real MCP host through `gatehouse connect`.
mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// The enterprise IdP's key.
const IDP_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHRehx1M/U0Gy3Sx6
d6Ugrvrgbkr99TtfbCxmzFpDV2yhRANCAARReSiEZlf1rhBUK2fNig/lniPIkkc9
kWhKR459vfTY+FUQKgRc+6qgcSIoEikrQxfQXVwkdUukmebXekozYC05
-----END PRIVATE KEY-----
";
/// The workload platform's key (a CI system's token issuer).
const CI_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNtiB/ZrTR1Nhu8qg
ihlm0GjzDAj60T6Y64c4ihTZpqmhRANCAARD0pEEH60BbywQnUllt+aQHuVrCScK
XzYvZADIbHETqoOi1FgGG7OVEWagW7UKDYQtgL9n8/u2j8i1P3BUowPk
-----END PRIVATE KEY-----
";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn jwks(pem: &str, kid: &str) -> Value {
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    json!({"keys": [jwk]})
}

fn sign(pem: &str, kid: &str, typ: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("key");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    h.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

/// An unsigned JWT (`alg: none`).
fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).expect("json"))
    };
    format!(
        "{}.{}.",
        b(&json!({"alg": "none", "typ": "oauth-id-jag+jwt"})),
        b(claims)
    )
}

/// A JWT with a `crit` header, signed.
fn with_crit(pem: &str, kid: &str, claims: &Value) -> String {
    use base64::Engine as _;
    use jsonwebtoken::crypto::sign as raw_sign;
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).expect("json"))
    };
    let input = format!(
        "{}.{}",
        b(&json!({"alg": "ES256", "kid": kid, "typ": "oauth-id-jag+jwt", "crit": ["exp"]})),
        b(claims)
    );
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("key");
    let sig = raw_sign(input.as_bytes(), &key, Algorithm::ES256).expect("sign");
    format!("{input}.{sig}")
}

fn grant(assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", JWT_BEARER.to_owned()),
        ("assertion", assertion.to_owned()),
    ]
}

struct Setup {
    _proc: Proc,
    _idp: tokio::task::JoinHandle<()>,
    base: String,
    mcp: String,
    idp: String,
    ci: String,
    db: String,
    dir: std::path::PathBuf,
    http: reqwest::Client,
}

async fn start() -> Setup {
    // The IdP and the CI platform: two issuers on one loopback server, each with its own keys.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let idp_port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .route(
            "/idp/jwks",
            axum::routing::get(|| async { axum::Json(jwks(IDP_KEY, "idp-1")) }),
        )
        .route(
            "/ci/jwks",
            axum::routing::get(|| async { axum::Json(jwks(CI_KEY, "ci-1")) }),
        );
    let idp_task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = format!("http://127.0.0.1:{idp_port}/idp");
    let ci = format!("http://127.0.0.1:{idp_port}/ci");
    let dir = std::env::temp_dir().join(format!("gatehouse-jwt-bearer-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = format!("sqlite://{}", dir.join("as.db").display());
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen: 127.0.0.1:{port}
guard:
  required_scopes: [mcp:basic]
  tool_scopes: {{notes_add: [notes:write]}}
authorization_server:
  database: {db}
  jwt_bearer:
    - name: acme
      issuer: {idp}
      jwks_uri: {idp}/jwks
      id_jag:
        subject_claim: email
        scopes: [mcp:basic, notes:write]
    - name: ci
      issuer: {ci}
      jwks_uri: {ci}/jwks
      workload:
        rules:
          - claims: {{repository: acme/deploy, ref: "refs/heads/*"}}
            client_id: acme-deployer
            scopes: [mcp:basic]
dangerous:
  allow_loopback_fetch: ["127.0.0.1:{idp_port}"]
"#
        ),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(&cfg);
    let proc = Proc::start(cmd, "ready");
    Setup {
        _proc: proc,
        _idp: idp_task,
        mcp: format!("{base}/mcp"),
        base,
        idp,
        ci,
        db,
        dir,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    fn add_client(&self, name: &str) -> (String, String) {
        added_client(
            &gatehouse()
                .args([
                    "admin",
                    "--db",
                    &self.db,
                    "clients",
                    "add",
                    "--name",
                    name,
                    "--confidential",
                    "--grant",
                    JWT_BEARER,
                ])
                .output()
                .expect("admin"),
        )
    }

    async fn token(&self, client: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
        let mut r = self.http.post(format!("{}/token", self.base)).form(form);
        if let Some((id, secret)) = client {
            r = r.basic_auth(id, Some(secret));
        }
        let r = r.send().await.expect("token");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    async fn send(&self, form: Vec<(&str, String)>, c: Option<(&str, &str)>) -> (u16, Value) {
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.token(c, &f).await
    }

    fn id_jag_claims(&self, client_id: &str) -> Value {
        let t = now();
        json!({
            "iss": self.idp, "sub": "u-123", "email": "alice@acme.example",
            "aud": self.base, "resource": self.mcp, "client_id": client_id,
            "jti": gatehouse_core::random_token(), "iat": t, "exp": t + 300,
            "scope": "mcp:basic notes:write", "groups": ["eng"],
        })
    }

    fn workload_claims(&self) -> Value {
        let t = now();
        json!({
            "iss": self.ci, "sub": "repo:acme/deploy:ref:refs/heads/main",
            "repository": "acme/deploy", "ref": "refs/heads/main",
            "aud": format!("{}/token", self.base),
            "jti": gatehouse_core::random_token(), "iat": t, "exp": t + 300,
        })
    }
}

/// JB-1, JB-3 (AS-36): ID-JAGs from a trusted IdP for an authenticated client, and every bad
/// one refused with `invalid_grant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as36_jb1_jb3_id_jag_grants_and_the_bad_assertion_battery() {
    let s = start().await;
    let meta: Value = s
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", s.base))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(
        meta["authorization_grant_profiles_supported"],
        json!(["urn:ietf:params:oauth:grant-profile:id-jag"])
    );
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .is_some_and(|g| g.contains(&json!(JWT_BEARER))),
        "{meta}"
    );
    let (id, secret) = s.add_client("agent");
    let (other_id, other_secret) = s.add_client("other-agent");
    let client = Some((id.as_str(), secret.as_str()));
    let grant = |a: &str| {
        vec![
            ("grant_type", JWT_BEARER.to_owned()),
            ("assertion", a.to_owned()),
        ]
    };

    // A valid ID-JAG: a token for the resource, the user from `email`, scopes intersected.
    let good = sign(
        IDP_KEY,
        "idp-1",
        Some("oauth-id-jag+jwt"),
        &s.id_jag_claims(&id),
    );
    let mut f = grant(&good);
    f.push(("scope", "mcp:basic".into()));
    let (st, v) = s.send(f, client).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("refresh_token").is_none(), "no refresh token: {v}");
    let at = v["access_token"].as_str().expect("token").to_owned();
    let claims = jwt_claims(&at);
    assert_eq!(claims["aud"], json!(s.mcp));
    assert_eq!(claims["sub"], json!("acme:alice@acme.example"));
    assert_eq!(claims["client_id"], json!(id));
    assert_eq!(claims["scope"], json!("mcp:basic"), "requested ∩ asserted");
    assert_eq!(claims["groups"], json!(["eng"]), "identity claims carried");
    assert_eq!(mcp_initialize_status(&s.mcp, &at).await, 200);
    // The same assertion again: its jti was used.
    let (st, v) = s.send(grant(&good), client).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "replay: {v}"
    );

    // The battery: each is invalid_grant, and none leaves a grant behind.
    let base_claims = || s.id_jag_claims(&id);
    let with = |k: &str, v: Value| {
        let mut c = base_claims();
        c[k] = v;
        sign(IDP_KEY, "idp-1", Some("oauth-id-jag+jwt"), &c)
    };
    let t = now();
    let cases: Vec<(&str, String)> = vec![
        (
            "typ JWT",
            sign(IDP_KEY, "idp-1", Some("JWT"), &base_claims()),
        ),
        ("no typ", sign(IDP_KEY, "idp-1", None, &base_claims())),
        (
            "foreign aud",
            with("aud", json!("https://other-as.example")),
        ),
        (
            "foreign resource",
            with("resource", json!("https://elsewhere.example/mcp")),
        ),
        ("another client's", with("client_id", json!(other_id))),
        ("expired", with("exp", json!(t - 120))),
        ("issued in the future", with("iat", json!(t + 600))),
        ("lives for a day", with("exp", json!(t + 86_400))),
        ("no jti", {
            let mut c = base_claims();
            c.as_object_mut().expect("obj").remove("jti");
            sign(IDP_KEY, "idp-1", Some("oauth-id-jag+jwt"), &c)
        }),
        ("no email", {
            let mut c = base_claims();
            c.as_object_mut().expect("obj").remove("email");
            sign(IDP_KEY, "idp-1", Some("oauth-id-jag+jwt"), &c)
        }),
        ("alg none", unsigned(&base_claims())),
        ("crit header", with_crit(IDP_KEY, "idp-1", &base_claims())),
        (
            "signed by another key",
            sign(CI_KEY, "idp-1", Some("oauth-id-jag+jwt"), &base_claims()),
        ),
        (
            "untrusted issuer",
            with("iss", json!("https://evil.example")),
        ),
        ("not a JWT", "not-a-jwt".into()),
    ];
    for (why, a) in cases {
        let (st, v) = s.send(grant(&a), client).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{why}: {v}"
        );
    }
    // The request names another resource than the ID-JAG: refused.
    let a = sign(IDP_KEY, "idp-1", Some("oauth-id-jag+jwt"), &base_claims());
    let mut f = grant(&a);
    f.push(("resource", "https://elsewhere.example/mcp".into()));
    let (st, v) = s.send(f, client).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    // Without client authentication: invalid_client; with the other client's: invalid_grant.
    let a = sign(IDP_KEY, "idp-1", Some("oauth-id-jag+jwt"), &base_claims());
    let (st, v) = s.send(grant(&a), None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );
    let (st, v) = s.send(grant(&a), Some((&other_id, &other_secret))).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    // A client not allowed the grant.
    let (cc_id, cc_secret) = add_machine_client(&s.db, "machine");
    let a = sign(
        IDP_KEY,
        "idp-1",
        Some("oauth-id-jag+jwt"),
        &s.id_jag_claims(&cc_id),
    );
    let (st, v) = s.send(grant(&a), Some((&cc_id, &cc_secret))).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{v}"
    );
    // Scopes the assertion does not carry are not granted.
    let mut c = base_claims();
    c["scope"] = json!("mcp:basic");
    let a = sign(IDP_KEY, "idp-1", Some("oauth-id-jag+jwt"), &c);
    let (st, v) = s.send(grant(&a), client).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["scope"], json!("mcp:basic"));

    // Revocation reaches ID-JAG grants like any other.
    let out = gatehouse()
        .args(["admin", "--db", &s.db, "revoke", "--client", &id])
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut refused = false;
    for _ in 0..30 {
        if mcp_initialize_status(&s.mcp, &at).await == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(refused, "the revoked ID-JAG grant's token is refused");
}

/// JB-2, JB-3: workload identity tokens map through the operator's rules to a client and
/// scopes, with no stored secret; then our client logs in with one and a real MCP host calls a
/// tool through `gatehouse connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jb2_jb3_workload_identity_rules_and_our_client() {
    let s = start().await;
    let good = sign(CI_KEY, "ci-1", Some("JWT"), &s.workload_claims());
    let (st, v) = s.send(grant(&good), None).await;
    assert_eq!(st, 200, "{v}");
    let claims = jwt_claims(v["access_token"].as_str().expect("token"));
    assert_eq!(claims["client_id"], json!("acme-deployer"));
    assert_eq!(
        claims["sub"],
        json!("ci:repo:acme/deploy:ref:refs/heads/main")
    );
    assert_eq!(claims["scope"], json!("mcp:basic"));
    assert_eq!(claims["aud"], json!(s.mcp));
    let (st, v) = s.send(grant(&good), None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "replay: {v}"
    );

    let with = |k: &str, v: Value| {
        let mut c = s.workload_claims();
        c[k] = v;
        sign(CI_KEY, "ci-1", Some("JWT"), &c)
    };
    for (why, a) in [
        (
            "another repository",
            with("repository", json!("acme/deploy-fork")),
        ),
        ("a tag, not a branch", with("ref", json!("refs/tags/v1"))),
        (
            "for another audience",
            with("aud", json!("https://other-as.example/token")),
        ),
        ("expired", with("exp", json!(now() - 120))),
        (
            "signed by the IdP's key",
            sign(IDP_KEY, "ci-1", Some("JWT"), &s.workload_claims()),
        ),
        (
            "typed as an ID-JAG",
            sign(
                CI_KEY,
                "ci-1",
                Some("oauth-id-jag+jwt"),
                &s.workload_claims(),
            ),
        ),
    ] {
        let (st, v) = s.send(grant(&a), None).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{why}: {v}"
        );
    }
    // More scope than the rule allows; another client named.
    let a = sign(CI_KEY, "ci-1", Some("JWT"), &s.workload_claims());
    let (st, v) = s
        .token(
            None,
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &a),
                ("scope", "mcp:basic notes:write"),
            ],
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_scope")),
        "{v}"
    );
    let a = sign(CI_KEY, "ci-1", Some("JWT"), &s.workload_claims());
    let (st, v) = s
        .token(
            None,
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &a),
                ("client_id", "someone-else"),
            ],
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );

    // Our client: `gatehouse login --assertion-file` (it adds a DPoP proof, since our AS offers
    // DPoP), then the host through `gatehouse connect` with the cached token.
    let file = s.dir.join("workload.jwt");
    std::fs::write(
        &file,
        sign(CI_KEY, "ci-1", Some("JWT"), &s.workload_claims()),
    )
    .expect("write");
    let home = s.dir.join("home");
    let mut c = gatehouse();
    c.env("GATEHOUSE_HOME", &home)
        .env_remove("GATEHOUSE_TOKEN_KEY")
        .args([
            "login",
            &s.mcp,
            "--client-id",
            "acme-deployer",
            "--assertion-file",
        ])
        .arg(&file);
    let out = tokio::task::spawn_blocking(move || c.output().expect("login"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdio_host(&s.mcp, |c| {
        c.env("GATEHOUSE_HOME", &home)
            .env_remove("GATEHOUSE_TOKEN_KEY")
            .env("GATEHOUSE_BROWSER", "/bin/false");
    })
    .await;
    assert_eq!(line["sum"], json!(r#"{"sum":42}"#), "{line}");
    assert!(
        line["whoami"]
            .as_str()
            .is_some_and(|w| w.contains("acme-deployer")),
        "whoami names the workload's client: {line}"
    );
}
