//! RS-07, RS-12, RS-13, RS-17, RS-24, T8, T10: JWT validation against a real loopback issuer.
use gatehouse_core::{AudiencePolicy, Issuer, Resource, SystemClock};
use gatehouse_fetch::{FetchPolicy, Fetcher};
use gatehouse_testkit::{TestIssuer, TestKey, forge_alg_none, forge_hs256_with_public_key, now};
use gatehouse_tokens::{JwtValidator, JwtValidatorConfig, TokenError, TrustedIssuer};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const AUD: &str = "http://127.0.0.1:9999/mcp";

fn validator(iss: &TestIssuer, tweak: impl FnOnce(&mut JwtValidatorConfig)) -> JwtValidator {
    let mut cfg = JwtValidatorConfig::new(
        Resource::parse(AUD).expect("resource"),
        vec![TrustedIssuer {
            issuer: Issuer::parse(&iss.issuer).expect("issuer"),
            jwks_uri: None,
        }],
    );
    tweak(&mut cfg);
    let fetcher = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![iss.authority()],
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    JwtValidator::new(cfg, fetcher, Arc::new(SystemClock))
}

#[tokio::test]
async fn valid_token_gives_a_principal() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    let p = v
        .validate_jwt(&iss.mint(AUD, "mcp:basic notes:write"))
        .await
        .expect("valid token");
    assert_eq!(p.subject, "alice");
    assert_eq!(p.issuer, iss.issuer);
    assert_eq!(p.client_id.as_deref(), Some("test-client"));
    assert_eq!(p.scopes.to_string(), "mcp:basic notes:write");
}

#[tokio::test]
async fn rs12_t8_wrong_audience_refused() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    for aud in [
        json!("https://other.example.com/mcp"),
        json!("http://127.0.0.1:9999/mcp/"),
        json!("http://127.0.0.1:9999"),
        json!(["https://a.example", "https://b.example"]),
        json!(null),
    ] {
        let mut c = iss.claims(AUD, "mcp:basic", "alice");
        c["aud"] = aud.clone();
        let e = v
            .validate_jwt(&iss.current_key().sign(&c))
            .await
            .expect_err("wrong audience");
        assert_eq!(e, TokenError::Audience, "aud {aud}");
    }
    // An array that contains this resource is fine; so is upper-case scheme/host (RS-13).
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["aud"] = json!(["https://x.example", "HTTP://127.0.0.1:9999/mcp"]);
    v.validate_jwt(&iss.current_key().sign(&c))
        .await
        .expect("array audience containing this resource");
}

#[tokio::test]
async fn rs13_trailing_slash_policy_is_pinned() {
    let iss = TestIssuer::start().await;
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["aud"] = json!(format!("{AUD}/"));
    let t = iss.current_key().sign(&c);
    let strict = validator(&iss, |_| {});
    assert_eq!(
        strict.validate_jwt(&t).await.expect_err("strict"),
        TokenError::Audience
    );
    let lenient = validator(&iss, |c| {
        c.audience_policy = AudiencePolicy::IgnoreTrailingSlash
    });
    lenient
        .validate_jwt(&t)
        .await
        .expect("lenient accepts the slash");
}

#[tokio::test]
async fn rs07_expired_and_not_yet_valid() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["exp"] = json!(now() - 120);
    assert_eq!(
        v.validate_jwt(&iss.current_key().sign(&c))
            .await
            .expect_err("expired"),
        TokenError::Expired
    );
    // Within the leeway is still fine.
    c["exp"] = json!(now() - 5);
    v.validate_jwt(&iss.current_key().sign(&c))
        .await
        .expect("within leeway");
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["nbf"] = json!(now() + 600);
    assert_eq!(
        v.validate_jwt(&iss.current_key().sign(&c))
            .await
            .expect_err("nbf"),
        TokenError::NotYetValid
    );
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        v.validate_jwt(&iss.current_key().sign(&c))
            .await
            .expect_err("no exp"),
        TokenError::MissingClaim("exp")
    );
}

#[tokio::test]
async fn rs17_t10_forgeries_refused() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    let claims = iss.claims(AUD, "mcp:basic", "alice");
    assert!(matches!(
        v.validate_jwt(&forge_alg_none(&claims)).await,
        Err(TokenError::Malformed(_) | TokenError::Algorithm(_))
    ));
    for forged in forge_hs256_with_public_key(&iss.current_key(), &claims) {
        assert!(matches!(
            v.validate_jwt(&forged).await,
            Err(TokenError::Algorithm(_))
        ));
    }
    // Signed by a key the issuer never published, with the issuer's kid.
    let rogue = TestKey::es256("k1");
    assert_eq!(
        v.validate_jwt(&rogue.sign(&claims))
            .await
            .expect_err("rogue key"),
        TokenError::Signature
    );
    // A tampered payload.
    let good = iss.mint(AUD, "mcp:basic");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&iss.claims(AUD, "mcp:basic admin", "mallory")).expect("json")
        ),
        parts[2]
    );
    assert_eq!(
        v.validate_jwt(&tampered).await.expect_err("tampered"),
        TokenError::Signature
    );
    assert!(matches!(
        v.validate_jwt("not-a-jwt").await,
        Err(TokenError::Malformed(_))
    ));
}

#[tokio::test]
async fn rs17_typ_rules() {
    let iss = TestIssuer::start().await;
    let claims = iss.claims(AUD, "mcp:basic", "alice");
    let key = iss.current_key();
    let with_typ = |typ: Option<&str>| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(key.kid.clone());
        h.typ = typ.map(str::to_owned);
        key.sign_with(h, &claims)
    };
    let lenient = validator(&iss, |_| {});
    let strict = validator(&iss, |c| c.strict_typ = true);
    for (typ, lenient_ok, strict_ok) in [
        (Some("at+jwt"), true, true),
        (Some("application/at+JWT"), true, true),
        (Some("JWT"), true, false),
        (None, true, true),
        (Some("oauth-id-jag+jwt"), false, false),
        (Some("logout+jwt"), false, false),
    ] {
        let t = with_typ(typ);
        assert_eq!(
            lenient.validate_jwt(&t).await.is_ok(),
            lenient_ok,
            "{typ:?} lenient"
        );
        assert_eq!(
            strict.validate_jwt(&t).await.is_ok(),
            strict_ok,
            "{typ:?} strict"
        );
    }
}

#[tokio::test]
async fn rs24_unlisted_issuer_refused() {
    let iss = TestIssuer::start().await;
    let other = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    let t = other.mint(AUD, "mcp:basic");
    assert!(matches!(
        v.validate_jwt(&t).await,
        Err(TokenError::Issuer(_))
    ));
    assert_eq!(
        other.jwks_hits(),
        0,
        "an untrusted issuer's keys are never fetched"
    );
    // A trusted issuer's name on a token signed by another issuer's key.
    let mut c = other.claims(AUD, "mcp:basic", "alice");
    c["iss"] = json!(iss.issuer);
    assert_eq!(
        v.validate_jwt(&other.current_key().sign(&c))
            .await
            .expect_err("wrong key"),
        TokenError::Signature
    );
}

#[tokio::test]
async fn jwks_refetched_on_unknown_kid_and_rate_limited() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |c| c.jwks_min_refetch = Duration::from_secs(3600));
    v.validate_jwt(&iss.mint(AUD, "mcp:basic"))
        .await
        .expect("first key");
    assert_eq!(iss.jwks_hits(), 1);
    // Cached: no fetch per request.
    for _ in 0..5 {
        v.validate_jwt(&iss.mint(AUD, "mcp:basic"))
            .await
            .expect("cached");
    }
    assert_eq!(iss.jwks_hits(), 1);
    iss.rotate("k2");
    v.validate_jwt(&iss.mint(AUD, "mcp:basic"))
        .await
        .expect("rotated key found by refetch");
    assert_eq!(iss.jwks_hits(), 2);
    // A flood of unknown kids causes no further fetches inside the interval.
    for i in 0..20 {
        let rogue = TestKey::es256(&format!("rogue{i}"));
        let e = v
            .validate_jwt(&rogue.sign(&iss.claims(AUD, "mcp:basic", "alice")))
            .await
            .expect_err("unknown kid");
        assert_eq!(e, TokenError::UnknownKey);
    }
    assert_eq!(iss.jwks_hits(), 2);
}

#[tokio::test]
async fn unreachable_issuer_is_unavailable_not_invalid() {
    let iss = TestIssuer::start().await;
    let token = iss.mint(AUD, "mcp:basic");
    let v = validator(&iss, |c| {
        c.issuers[0].jwks_uri = Some("http://127.0.0.1:1/jwks".into());
    });
    // Port 1 is not in the loopback exceptions: the fetch is refused, not attempted.
    assert!(matches!(
        v.validate_jwt(&token).await,
        Err(TokenError::Unavailable(_))
    ));
}

/// A clock the test moves.
#[derive(Debug, Default)]
struct MovingClock(std::sync::atomic::AtomicI64);

impl gatehouse_core::Clock for MovingClock {
    fn now_unix(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A token seen before skips only the signature check: expiry and audience are checked on
/// every use, and a key that leaves the issuer's JWKS takes its tokens with it.
#[tokio::test]
async fn rs07_verified_tokens_are_still_checked_for_expiry_and_their_key() {
    let iss = TestIssuer::start().await;
    let clock = Arc::new(MovingClock::default());
    clock.0.store(now(), std::sync::atomic::Ordering::Relaxed);
    let fetcher = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![iss.authority()],
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    let mut cfg = JwtValidatorConfig::new(
        Resource::parse(AUD).expect("resource"),
        vec![TrustedIssuer {
            issuer: Issuer::parse(&iss.issuer).expect("issuer"),
            jwks_uri: None,
        }],
    );
    cfg.jwks_min_refetch = Duration::ZERO;
    let v = JwtValidator::new(cfg, fetcher, clock.clone());
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["exp"] = json!(now() + 60);
    let token = iss.current_key().sign(&c);
    for _ in 0..3 {
        v.validate_jwt(&token)
            .await
            .expect("valid, then remembered");
    }
    clock
        .0
        .store(now() + 600, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        v.validate_jwt(&token).await.expect_err("expired"),
        TokenError::Expired
    );
    // Back in time: valid again; then the key is rotated out of the JWKS and a fetch happens
    // (another token with the new key): the old token is verified anew, and refused.
    clock.0.store(now(), std::sync::atomic::Ordering::Relaxed);
    v.validate_jwt(&token).await.expect("valid");
    iss.rotate("k2");
    v.validate_jwt(&iss.mint(AUD, "mcp:basic"))
        .await
        .expect("the new key");
    assert!(v.validate_jwt(&token).await.is_err(), "the old key is gone");
}

/// Issue 14, row 13: a key-bound token (`cnf`, RFC 9449 DPoP or RFC 8705) is no bearer token:
/// this validator checks no proof of possession, so it refuses the token instead of voiding the
/// binding.
#[tokio::test]
async fn rfc9449_cnf_bound_token_refused_as_bearer() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    let e = v
        .validate_jwt(&iss.current_key().sign(&c))
        .await
        .expect_err("bound token as bearer");
    assert_eq!(e, TokenError::Unbound);
}

/// Issue 14, row 13: RFC 7515 §4.1.11: a JWS with critical header extensions this validator
/// does not understand is rejected, even with a good signature.
#[tokio::test]
async fn rfc7515_unknown_crit_header_refused() {
    let iss = TestIssuer::start().await;
    let v = validator(&iss, |_| {});
    let key = iss.current_key();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = key.jwk.common.key_id.clone();
    h.crit = Some(vec!["exp-ext".into()]);
    h.extras.insert("exp-ext", true);
    let e = v
        .validate_jwt(&key.sign_with(h, &iss.claims(AUD, "mcp:basic", "alice")))
        .await
        .expect_err("unknown crit");
    assert!(
        matches!(e, TokenError::Malformed(ref m) if m.contains("crit")),
        "{e:?}"
    );
}

/// T16, T23: a token whose grant (`gid`) was revoked is refused at once, for that issuer only.
#[tokio::test]
async fn t23_revoked_grant_refused_before_expiry() {
    let iss = TestIssuer::start().await;
    let revocations = Arc::new(gatehouse_tokens::Revocations::new());
    let v = validator(&iss, |c| c.revocations = Some(revocations.clone()));
    let mut c = iss.claims(AUD, "mcp:basic", "alice");
    c["gid"] = json!("grant-1");
    let token = iss.current_key().sign(&c);
    v.validate_jwt(&token)
        .await
        .expect("valid before revocation");
    revocations.revoke("https://another-issuer.example", "grant-1", now() + 600);
    v.validate_jwt(&token)
        .await
        .expect("another issuer's grant of that id");
    revocations.revoke(&iss.issuer, "grant-1", now() + 600);
    assert_eq!(
        v.validate_jwt(&token).await.expect_err("revoked"),
        TokenError::Revoked,
        "refused, also from the verified-token cache"
    );
}
