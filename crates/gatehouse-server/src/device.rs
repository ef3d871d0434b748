//! The device authorization grant (RFC 8628; DG-1 … DG-4): for hosts with no browser.
//!
//! The device asks `/device_authorization` for a device code (its secret, stored hashed) and a
//! short user code; the user opens the verification page on any browser, types the user code,
//! and goes through the same login and consent pages as the code flow — a device request is
//! never approved from remembered consent, and its consent page warns against codes someone
//! else sent (§5.4, remote phishing). The device polls `/token`, paced by `slow_down`.
//!
//! What rules out what:
//! - user codes are 8 letters from a 20-letter alphabet (~34.5 bits, §6.1), live 10 minutes,
//!   and wrong entries are throttled per source address (§5.1 brute force);
//! - the code entry form carries a double-submit CSRF token (a `SameSite=Lax` cookie), and the
//!   request it finds continues as a pending authorization bound to that browser (T1, T5);
//! - the device code is single use and bound to its client; a second use revokes its grant
//!   (as a replayed authorization code does, T9);
//! - an answer is recorded once: approve and deny race to one conditional update.
use crate::pages::{DeviceDonePage, DevicePage, error_page, page};
use crate::secrets::{random_id, random_token, sha256_hex};
use crate::source::source_ip;
use crate::token::{Form, client_allows, no_store, parse_form, refresh_record, require};
use crate::{AuthServer, OAuthError};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use gatehouse_core::{OAuthErrorCode, ScopeSet};
use gatehouse_store::{ClientRecord, ClientSource, DevicePoll, DeviceRecord, GrantRecord};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use subtle::ConstantTimeEq;

pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// How long a device code and its user code live.
const DEVICE_TTL: i64 = 600;
/// The polling interval a device starts with (RFC 8628's default).
const INTERVAL: i64 = 5;
/// Consonants only (no vowels: no words; no look-alikes such as 0/O, 1/I), as §6.1 suggests.
const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;
/// Wrong user codes per source address in 15 minutes before it is locked out for 15 minutes.
const WRONG_CODES_PER_SOURCE: i64 = 10;
const WRONG_CODE_WINDOW: i64 = 900;
/// Device authorization requests per source address per minute (each stores a row).
const REQUESTS_PER_SOURCE: i64 = 30;

/// A new user code, `XXXX-XXXX`.
fn new_user_code() -> String {
    let mut s = String::with_capacity(USER_CODE_LEN + 1);
    for i in 0..USER_CODE_LEN {
        if i == USER_CODE_LEN / 2 {
            s.push('-');
        }
        s.push(char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]));
    }
    s
}

/// What the user typed, as the code it names: case, spaces and dashes do not matter (§6.1).
/// `None` when it cannot be a user code at all.
fn normalize_user_code(typed: &str) -> Option<String> {
    let s: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (s.len() == USER_CODE_LEN && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

fn user_code_hash(normalized: &str) -> String {
    sha256_hex(&format!("device:user:{normalized}"))
}

impl AuthServer {
    /// Whether this source has typed too many wrong user codes lately (read only).
    async fn device_locked(&self, ip: Option<std::net::IpAddr>) -> Result<bool, OAuthError> {
        let Some(ip) = ip else { return Ok(false) };
        let key = sha256_hex(&format!("device:wrong:{}", crate::source::source_key(ip)));
        let now = self.inner.clock.now_unix();
        Ok(self
            .inner
            .store
            .get_throttle(&key, now)
            .await?
            .is_some_and(|t| t.count >= WRONG_CODES_PER_SOURCE))
    }

    fn device_page(
        &self,
        status: StatusCode,
        jar: CookieJar,
        user_code: &str,
        error: Option<&str>,
    ) -> Response {
        // Double-submit CSRF token: the cookie is not sent on cross-site posts (SameSite=Lax).
        let csrf = random_token();
        let jar = jar.add(self.cookie("gh_device", csrf.clone(), DEVICE_TTL));
        let action = self.inner.cfg.endpoint("/device");
        let body = page(
            status,
            DevicePage {
                action: &action,
                csrf: &csrf,
                user_code,
                error,
            }
            .render(),
            None,
        );
        (jar, body).into_response()
    }

    /// The user's answer on the consent page of a device request (DG-3): recorded once, with
    /// the grant when approved; the page then sends the user back to the device.
    pub(crate) async fn device_decision(
        &self,
        device_hash: &str,
        p: &crate::authorize::Pending,
        client: &ClientRecord,
        session: &crate::authorize::Session,
        approve: bool,
    ) -> Response {
        let now = self.inner.clock.now_unix();
        let grant = approve.then(|| GrantRecord {
            grant_id: random_id(),
            subject: session.subject.clone(),
            client_id: client.client_id.clone(),
            scope: p.scope.clone(),
            resource: p.resource.clone(),
            created_at: now,
            revoked_at: None,
            claims: session.claims.clone(),
        });
        if approve && client.source == ClientSource::MetadataDocument {
            // As in the code flow: a metadata-document client is stored once it holds a grant.
            if let Err(e) = self.inner.store.upsert_client(client).await {
                return OAuthError::from(e).into_response();
            }
        }
        match self
            .inner
            .store
            .decide_device(device_hash, grant.as_ref(), now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "This device request was already answered or has expired.",
                );
            }
            Err(e) => return OAuthError::from(e).into_response(),
        }
        let name = client
            .client_name
            .clone()
            .unwrap_or_else(|| client.client_id.clone());
        let (title, message) = if approve {
            tracing::info!(subject = %session.subject, client_id = %client.client_id, scope = %p.scope, "device approved");
            (
                "Device connected",
                format!(
                    "{name} now has access to {} as {}. Go back to your device: it continues by itself.",
                    p.resource, session.subject
                ),
            )
        } else {
            tracing::info!(subject = %session.subject, client_id = %client.client_id, "device denied");
            (
                "Access denied",
                format!("{name} was not given access. Nothing was shared."),
            )
        };
        page(
            StatusCode::OK,
            DeviceDonePage {
                title,
                message: &message,
            }
            .render(),
            None,
        )
    }
}

/// POST /device_authorization (RFC 8628 §3.1, §3.2; DG-1).
pub(crate) async fn device_authorization(
    State(s): State<AuthServer>,
    ext: http::Extensions,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    async {
        let form = parse_form(&body)?;
        let creds = crate::clients::presented(&headers, &form)?;
        let client = s.authenticate_client(&creds).await?;
        client_allows(&s, &client, DEVICE_CODE_GRANT)?;
        if !s
            .source_budget("device:req", source_ip(&ext), 60, REQUESTS_PER_SOURCE)
            .await?
        {
            let mut e = OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "too many device authorization requests from this address; try again in a minute",
            );
            e.status = StatusCode::TOO_MANY_REQUESTS;
            return Err(e);
        }
        let (scope, resource) = requested(&s, &client, &form)?;
        let now = s.inner.clock.now_unix();
        let device_code = random_token();
        // A clash with a live user code is unlikely (~2^34 codes); draw again if it happens.
        let mut user_code = new_user_code();
        for attempt in 0.. {
            let rec = DeviceRecord {
                device_hash: sha256_hex(&device_code),
                user_code_hash: user_code_hash(&user_code.replace('-', "")),
                client_id: client.client_id.clone(),
                scope: scope.to_string(),
                resource: resource.clone(),
                expires_at: now + DEVICE_TTL,
                interval_secs: INTERVAL,
                last_poll_at: None,
                status: "pending".into(),
                grant_id: None,
                subject: None,
                claims: None,
            };
            match s.inner.store.insert_device(&rec).await {
                Ok(()) => break,
                Err(gatehouse_store::StoreError::Conflict(_)) if attempt < 3 => {
                    user_code = new_user_code();
                }
                Err(e) => return Err(e.into()),
            }
        }
        let verification_uri = s.inner.cfg.endpoint("/device");
        let mut complete = url::Url::parse(&verification_uri).map_err(OAuthError::server_error)?;
        complete
            .query_pairs_mut()
            .append_pair("user_code", &user_code);
        tracing::info!(client_id = %client.client_id, "device authorization started");
        Ok(no_store(serde_json::json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": complete.as_str(),
            "expires_in": DEVICE_TTL,
            "interval": INTERVAL,
        })))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// The scope and resource a device request asks for, checked as the authorization endpoint
/// checks them.
fn requested(
    s: &AuthServer,
    client: &ClientRecord,
    form: &Form,
) -> Result<(ScopeSet, String), OAuthError> {
    let res = s.resolve_resource(form.get("resource").map(String::as_str))?;
    let scope = match form.get("scope").filter(|v| !v.is_empty()) {
        Some(sc) => ScopeSet::parse(sc)
            .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidScope, e.to_string()))?,
        None => client
            .scope
            .as_deref()
            .and_then(|c| ScopeSet::parse(c).ok())
            .unwrap_or_else(|| res.scopes.clone()),
    };
    s.check_scopes(&scope, client, res)?;
    Ok((scope, res.resource.as_str().to_owned()))
}

#[derive(Deserialize)]
pub(crate) struct DeviceQuery {
    user_code: Option<String>,
}

/// GET /device: the verification page (RFC 8628 §3.3; DG-2). A `user_code` in the query
/// (`verification_uri_complete`) only fills the field; the user still confirms it.
pub(crate) async fn verification_page(
    State(s): State<AuthServer>,
    jar: CookieJar,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let prefill = q
        .user_code
        .as_deref()
        .and_then(normalize_user_code)
        .map(|c| format!("{}-{}", &c[..4], &c[4..]))
        .unwrap_or_default();
    s.device_page(StatusCode::OK, jar, &prefill, None)
}

#[derive(Deserialize)]
pub(crate) struct DeviceForm {
    csrf: String,
    user_code: String,
}

/// POST /device: the user code entered; continue with login (or consent when signed in).
pub(crate) async fn verify(
    State(s): State<AuthServer>,
    ext: http::Extensions,
    jar: CookieJar,
    axum::Form(f): axum::Form<DeviceForm>,
) -> Response {
    let csrf_ok = jar
        .get(&s.cookie_name("gh_device"))
        .is_some_and(|c| bool::from(c.value().as_bytes().ct_eq(f.csrf.as_bytes())));
    if !csrf_ok {
        return s.device_page(
            StatusCode::BAD_REQUEST,
            jar,
            "",
            Some("This page expired. Enter the code again."),
        );
    }
    let ip = source_ip(&ext);
    match s.device_locked(ip).await {
        Ok(false) => {}
        Ok(true) => {
            let mut r = s.device_page(
                StatusCode::TOO_MANY_REQUESTS,
                jar,
                "",
                Some("Too many wrong codes from your network. Try again in 15 minutes."),
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("900"),
            );
            return r;
        }
        Err(e) => return e.into_response(),
    }
    let now = s.inner.clock.now_unix();
    let found = match normalize_user_code(&f.user_code) {
        Some(c) => match s
            .inner
            .store
            .device_by_user_code(&user_code_hash(&c), now)
            .await
        {
            Ok(d) => d,
            Err(e) => return OAuthError::from(e).into_response(),
        },
        None => None,
    };
    let Some(d) = found else {
        if let Err(e) = s
            .source_budget(
                "device:wrong",
                ip,
                WRONG_CODE_WINDOW,
                WRONG_CODES_PER_SOURCE,
            )
            .await
        {
            return e.into_response();
        }
        tracing::info!("wrong or expired device user code");
        return s.device_page(
            StatusCode::BAD_REQUEST,
            jar,
            "",
            Some("That code is not valid or has expired. Check the code your device shows."),
        );
    };
    let client = match s.find_client(&d.client_id).await {
        Ok(Some(c)) => c,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The application is no longer registered.",
            );
        }
    };
    let session = match s.session_subject(&jar).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let p = crate::authorize::Pending::for_device(d.client_id, d.scope, d.resource, d.device_hash);
    s.begin_pending(jar, &p, &client, session.as_ref(), now, ip)
        .await
}

/// `grant_type=urn:ietf:params:oauth:grant-type:device_code` at the token endpoint (§3.4, §3.5;
/// DG-4).
pub(crate) async fn device_grant(
    s: &AuthServer,
    client: &ClientRecord,
    form: &Form,
    dpop_jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    client_allows(s, client, DEVICE_CODE_GRANT)?;
    let device_code = require(form, "device_code")?;
    let resource = form.get("resource").cloned();
    let now = s.inner.clock.now_unix();
    let wants_refresh = client.grant_types.iter().any(|g| g == "refresh_token");
    let refresh_secret = wants_refresh.then(random_token);
    let issued_refresh = refresh_secret.clone();
    let refresh_ttl = s.inner.cfg.refresh_token_ttl;
    // As in the code grant: a public client's refresh token is bound to its DPoP key.
    let refresh_jkt = dpop_jkt
        .filter(|_| !crate::token::is_confidential(client))
        .map(str::to_owned);
    let outcome = s
        .inner
        .store
        .poll_device(&sha256_hex(device_code), &client.client_id, now, |d| {
            crate::token::same_resource(resource.as_deref(), &d.resource)?;
            let grant_id = d.grant_id.as_deref().unwrap_or_default();
            Ok::<_, OAuthError>(issued_refresh.as_deref().map(|secret| {
                refresh_record(
                    secret,
                    grant_id,
                    &d.client_id,
                    &d.scope,
                    &d.resource,
                    now + refresh_ttl,
                    refresh_jkt,
                )
            }))
        })
        .await??;
    let err = |code, d: &str| Err(OAuthError::new(code, d.to_owned()));
    let d = match outcome {
        DevicePoll::Issued(d) => d,
        DevicePoll::Pending => {
            return err(
                OAuthErrorCode::AuthorizationPending,
                "the user has not answered yet",
            );
        }
        DevicePoll::SlowDown => {
            return err(
                OAuthErrorCode::SlowDown,
                "polling too often; wait 5 seconds longer between requests",
            );
        }
        DevicePoll::Denied => {
            return err(OAuthErrorCode::AccessDenied, "the user denied the request");
        }
        DevicePoll::Expired => return err(OAuthErrorCode::ExpiredToken, "the device code expired"),
        DevicePoll::Replayed { grant_id } => {
            s.publish_revocation(&grant_id, now);
            tracing::warn!(client_id = %client.client_id, grant_id, "device code used twice; grant revoked");
            return Err(OAuthError::invalid_grant("device code already used"));
        }
        DevicePoll::Revoked => {
            return Err(OAuthError::invalid_grant(
                "the authorization this device code belongs to was revoked",
            ));
        }
        DevicePoll::Unknown => return Err(OAuthError::invalid_grant("unknown device code")),
    };
    let (Some(subject), Some(grant_id)) = (d.subject.as_deref(), d.grant_id.as_deref()) else {
        return Err(OAuthError::server_error(
            "approved device code without grant",
        ));
    };
    let scope = ScopeSet::parse(&d.scope).unwrap_or_default();
    let access = s.access_token(
        subject,
        &d.client_id,
        &scope,
        &d.resource,
        grant_id,
        (d.claims.as_deref(), dpop_jkt),
    )?;
    Ok(s.token_response(access, &scope, refresh_secret, dpop_jkt.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_typed_forgivingly() {
        let c = new_user_code();
        assert_eq!(c.len(), 9);
        assert_eq!(c.as_bytes()[4], b'-');
        let n = normalize_user_code(&c).expect("own codes normalise");
        assert_eq!(n, c.replace('-', ""));
        assert_eq!(
            normalize_user_code(&format!(" {} ", c.to_lowercase())),
            Some(n.clone())
        );
        assert_eq!(normalize_user_code("BCDF GHJK"), Some("BCDFGHJK".into()));
        // Vowels, digits, wrong lengths: not a code.
        assert_eq!(normalize_user_code("ABCD-EFGH"), None);
        assert_eq!(normalize_user_code("BCDF-GHJ"), None);
        assert_eq!(normalize_user_code("BCDF-GHJK1"), None);
        assert_eq!(normalize_user_code(""), None);
        // Codes differ (20^8 possibilities).
        assert_ne!(new_user_code(), new_user_code());
    }
}
