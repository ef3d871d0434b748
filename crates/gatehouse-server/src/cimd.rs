//! Client ID Metadata Documents: the client_id is an https URL whose document describes the
//! client (AS-16 … AS-22). Fetched only through the SSRF-safe fetcher, validated strictly,
//! cached as HTTP caching says (clamped), errors never cached.
use crate::{AuthServer, OAuthError};
use gatehouse_core::{OAuthErrorCode, RedirectUri};
use gatehouse_store::{ClientRecord, ClientSource};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<String, (ClientRecord, i64)>>,
}

const MAX_DOC_BYTES: usize = 5 * 1024;
const MIN_TTL: u64 = 60;
const MAX_TTL: u64 = 24 * 3600;
const DEFAULT_TTL: u64 = 300;

pub(crate) fn looks_like_cimd(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

fn bad(d: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidClient, d)
}

/// AS-17: the URL itself must be acceptable before anything is fetched.
pub(crate) fn check_client_id_url(client_id: &str) -> Result<url::Url, OAuthError> {
    let u = url::Url::parse(client_id).map_err(|e| bad(format!("client_id is not a URL: {e}")))?;
    if u.as_str() != client_id {
        return Err(bad("client_id URL is not in canonical form"));
    }
    if u.fragment().is_some()
        || !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
    {
        return Err(bad(
            "client_id URL must not contain a fragment, user information or a query",
        ));
    }
    let path = u.path();
    if path.is_empty() || path == "/" {
        return Err(bad("client_id URL must have a path"));
    }
    if path.split('/').any(|seg| {
        seg == "."
            || seg == ".."
            || seg.eq_ignore_ascii_case("%2e")
            || seg.eq_ignore_ascii_case("%2e%2e")
    }) {
        return Err(bad("client_id URL must not contain dot segments"));
    }
    Ok(u)
}

impl AuthServer {
    pub(crate) async fn cimd_client(&self, client_id: &str) -> Result<ClientRecord, OAuthError> {
        let now = self.inner.clock.now_unix();
        if let Some((c, until)) = self
            .inner
            .cimd_cache
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            && *until > now
        {
            return Ok(c.clone());
        }
        check_client_id_url(client_id)?;
        // The client fetcher enforces https (loopback http only where the operator named it as
        // dangerous for client documents), the address rules, no redirects, the time limit, and
        // stops reading past the 5 KiB cap.
        let fetched = self
            .inner
            .client_fetcher
            .get_capped(client_id, MAX_DOC_BYTES)
            .await
            .map_err(|e| bad(format!("client metadata document: {e}")))?;
        let doc: serde_json::Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| bad(format!("client metadata document is not JSON: {e}")))?;
        let mut c = validate_document(client_id, &doc, now)?;
        // What a stranger's document may claim is bounded by the registration policy (T17).
        c.grant_types
            .retain(|g| self.inner.cfg.registration.grant_types.contains(g));
        // Kept at least MIN_TTL even when the document says no-store or max-age=0: otherwise
        // every unauthenticated request naming it (e.g. at /token) would fetch it again. The
        // store gets a row only when a grant is made (see `authorize::issue_code`), so naming
        // new URLs adds nothing permanent.
        let ttl = fetched
            .max_age
            .map_or(DEFAULT_TTL, |d| d.as_secs().clamp(MIN_TTL, MAX_TTL));
        let mut cache = self
            .inner
            .cimd_cache
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, (_, u)| *u > now);
            if cache.len() > 10_000 {
                cache.clear();
            }
        }
        cache.insert(client_id.to_owned(), (c.clone(), now + ttl as i64));
        Ok(c)
    }
}

/// AS-18: the document must name itself, list valid redirect URIs and carry no secret.
pub(crate) fn validate_document(
    client_id: &str,
    doc: &serde_json::Value,
    now: i64,
) -> Result<ClientRecord, OAuthError> {
    let obj = doc
        .as_object()
        .ok_or_else(|| bad("client metadata document is not a JSON object"))?;
    if obj.get("client_id").and_then(|v| v.as_str()) != Some(client_id) {
        return Err(bad("document client_id does not equal its URL"));
    }
    if obj.contains_key("client_secret") || obj.contains_key("client_secret_expires_at") {
        return Err(bad(
            "client metadata documents must not contain a client_secret",
        ));
    }
    let method = obj
        .get("token_endpoint_auth_method")
        .and_then(|v| v.as_str())
        .unwrap_or("none");
    if method != "none" {
        return Err(bad(format!(
            "token_endpoint_auth_method {method:?} is not supported for metadata-document clients (only none)"
        )));
    }
    let uris: Vec<String> = obj
        .get("redirect_uris")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("document has no redirect_uris"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad("redirect_uris must be strings"))
        })
        .collect::<Result<_, _>>()?;
    if uris.is_empty() {
        return Err(bad("document has no redirect_uris"));
    }
    for u in &uris {
        RedirectUri::parse(u).map_err(|e| bad(e.to_string()))?;
    }
    let grant_types: Vec<String> = match obj.get("grant_types").and_then(|v| v.as_array()) {
        Some(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        None => vec!["authorization_code".into()],
    };
    Ok(ClientRecord {
        client_id: client_id.to_owned(),
        secret_hash: None,
        auth_method: method.to_owned(),
        redirect_uris: uris,
        grant_types,
        client_name: obj
            .get("client_name")
            .and_then(|v| v.as_str())
            .and_then(|s| gatehouse_core::text::display_name(s, 100)),
        scope: obj.get("scope").and_then(|v| v.as_str()).map(str::to_owned),
        source: ClientSource::MetadataDocument,
        application_type: obj
            .get("application_type")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        metadata: doc.clone(),
        created_at: now,
        disabled: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "https://app.example.com/oauth/client-metadata.json";

    #[test]
    fn as17_url_rules() {
        assert!(check_client_id_url(ID).is_ok());
        for bad in [
            "https://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/a/../b.json",
            "https://app.example.com/./b.json",
            "https://app.example.com/c.json#x",
            "https://u:p@app.example.com/c.json",
            "https://app.example.com/c.json?x=1",
        ] {
            assert!(check_client_id_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn as18_document_rules() {
        let good = json!({"client_id": ID, "client_name": "App", "redirect_uris": ["http://127.0.0.1/cb"]});
        let c = validate_document(ID, &good, 1).expect("valid");
        assert_eq!(c.source, ClientSource::MetadataDocument);
        assert_eq!(c.auth_method, "none");
        for doc in [
            json!({"client_id": "https://other.example/x.json", "redirect_uris": ["http://127.0.0.1/cb"]}),
            json!({"client_id": ID, "redirect_uris": []}),
            json!({"client_id": ID}),
            json!({"client_id": ID, "redirect_uris": ["http://evil.example/cb"]}),
            json!({"client_id": ID, "redirect_uris": ["http://127.0.0.1/cb"], "client_secret": "s"}),
            json!({"client_id": ID, "redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
            json!({"client_id": ID, "redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            json!([1, 2]),
        ] {
            assert!(validate_document(ID, &doc, 1).is_err(), "{doc}");
        }
    }
}
