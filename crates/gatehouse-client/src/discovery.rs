//! From a server URL (and maybe a 401) to an authorization server the client may use.
use crate::ClientError;
use crate::safety::check_endpoint;
use gatehouse_core::{
    AuthorizationServerMetadata, BearerChallenge, Issuer, ProtectedResourceMetadata,
};

/// A checked authorization server for one MCP server.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The MCP server URL as the user gave it.
    pub server_url: String,
    /// The RFC 8707 `resource` to send: the PRM `resource` verbatim (CL-03, CL-09).
    pub resource: String,
    pub issuer: Issuer,
    pub metadata: AuthorizationServerMetadata,
    pub authorization_endpoint: url::Url,
    pub token_endpoint: url::Url,
    pub registration_endpoint: Option<url::Url>,
    /// PRM `scopes_supported` (CL-10 step 2).
    pub prm_scopes: Vec<String>,
    /// The server predates Protected Resource Metadata (2025-03-26 rules).
    pub legacy: bool,
}

impl Discovered {
    /// RFC 9207 `iss` must be present in the authorization response.
    pub fn iss_required(&self) -> bool {
        self.metadata.authorization_response_iss_parameter_supported == Some(true)
    }

    pub fn supports_cimd(&self) -> bool {
        self.metadata.client_id_metadata_document_supported == Some(true)
    }
}

pub(crate) fn http_client() -> Result<reqwest::Client, ClientError> {
    // Redirects are not followed: every URL the client uses is one it checked (CL-24, CL-31).
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// GETs a JSON document; `None` when the server does not have it (any non-200 answer).
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    what: &'static str,
    url: &str,
) -> Result<Option<T>, ClientError> {
    let u = check_endpoint(what, url)?;
    tracing::debug!(%u, "discovery: GET {what}");
    let resp = match http
        .get(u)
        .header("accept", "application/json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "discovery: {what} unreachable");
            return Ok(None);
        }
    };
    if resp.status() != reqwest::StatusCode::OK {
        return Ok(None);
    }
    let bytes = resp.bytes().await?;
    if bytes.len() > 256 * 1024 {
        return Err(ClientError::Discovery(format!(
            "{what} at {url} is too large"
        )));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ClientError::Discovery(format!("{what} at {url} is not valid: {e}")))
}

/// PRM URLs in the order CL-02 gives: the challenge's, then path-inserted, then root.
pub fn prm_candidates(server: &url::Url, challenge: Option<&BearerChallenge>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rm) = challenge.and_then(|c| c.resource_metadata.clone()) {
        out.push(rm);
    }
    let origin = server.origin().ascii_serialization();
    let path = server.path().trim_end_matches('/');
    if !path.is_empty() {
        out.push(format!(
            "{origin}/.well-known/oauth-protected-resource{path}"
        ));
    }
    out.push(format!("{origin}/.well-known/oauth-protected-resource"));
    out.dedup();
    out
}

/// CL-03: the PRM `resource` must identify the server we asked about.
fn same_resource(expected: &str, found: &str) -> bool {
    if expected == found {
        return true;
    }
    // Only what URL parsing treats as identical (host case, default port); a different path,
    // even just a trailing slash, is a different resource.
    match (url::Url::parse(expected), url::Url::parse(found)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Finds and checks the authorization server for `server_url`.
pub async fn discover(
    http: &reqwest::Client,
    server_url: &str,
    challenge: Option<&BearerChallenge>,
) -> Result<Discovered, ClientError> {
    let server = check_endpoint("MCP server URL", server_url)?;
    let origin = server.origin().ascii_serialization();
    let root = format!("{origin}/.well-known/oauth-protected-resource");
    let from_header = challenge.and_then(|c| c.resource_metadata.clone());
    let mut prm: Option<ProtectedResourceMetadata> = None;
    for candidate in prm_candidates(&server, challenge) {
        if let Some(doc) =
            get_json::<ProtectedResourceMetadata>(http, "protected resource metadata", &candidate)
                .await?
        {
            // RFC 9728 §3.3: the document names the resource its URL was built from: the server
            // itself, or, for the root document (and a header-named one), the server's origin.
            let origin_ok = (candidate == root
                || from_header.as_deref() == Some(candidate.as_str()))
                && same_resource(&origin, &doc.resource);
            if !same_resource(server_url, &doc.resource) && !origin_ok {
                return Err(ClientError::ResourceMismatch {
                    expected: server_url.to_owned(),
                    found: doc.resource,
                });
            }
            prm = Some(doc);
            break;
        }
    }
    match prm {
        Some(prm) => {
            let Some(first) = prm.authorization_servers.first() else {
                return Err(ClientError::Discovery(
                    "the protected resource metadata lists no authorization server".into(),
                ));
            };
            let issuer = Issuer::parse(first).map_err(|e| {
                ClientError::Discovery(format!("authorization server {first:?}: {e}"))
            })?;
            let metadata = as_metadata(http, &issuer).await?.ok_or_else(|| {
                ClientError::Discovery(format!(
                    "no authorization server metadata for {issuer} at {}",
                    issuer.metadata_urls().join(", ")
                ))
            })?;
            finish(
                server_url,
                prm.resource,
                issuer,
                metadata,
                prm.scopes_supported,
                false,
            )
        }
        None => legacy(http, server_url, &server).await,
    }
}

/// RFC 8414 / OIDC metadata in CL-05 order; the first document found must name exactly `issuer`
/// (CL-06) or discovery stops: a mismatched document is never used, not even as a fallback.
pub async fn as_metadata(
    http: &reqwest::Client,
    issuer: &Issuer,
) -> Result<Option<AuthorizationServerMetadata>, ClientError> {
    for u in issuer.metadata_urls() {
        if let Some(doc) =
            get_json::<AuthorizationServerMetadata>(http, "authorization server metadata", &u)
                .await?
        {
            doc.check_issuer(issuer)
                .map_err(|e| ClientError::Discovery(format!("{u}: {e} (CL-06)")))?;
            return Ok(Some(doc));
        }
    }
    Ok(None)
}

/// 2025-03-26 servers: no PRM; the MCP server's origin is the issuer, with metadata at its root
/// or, failing that, the default `/authorize`, `/token` and `/register` endpoints.
async fn legacy(
    http: &reqwest::Client,
    server_url: &str,
    server: &url::Url,
) -> Result<Discovered, ClientError> {
    let origin = server.origin().ascii_serialization();
    let issuer = Issuer::parse(&origin)
        .map_err(|e| ClientError::Discovery(format!("server origin {origin}: {e}")))?;
    crate::progress(format!(
        "{server_url} publishes no protected resource metadata; using the 2025-03-26 rules with {origin} as the authorization server"
    ));
    let mut issuer = issuer;
    let metadata = match get_json::<AuthorizationServerMetadata>(
        http,
        "authorization server metadata",
        &format!("{origin}/.well-known/oauth-authorization-server"),
    )
    .await?
    {
        Some(doc) => {
            // 2025-03-26 placed this document by the MCP server's origin, not by an issuer, and
            // servers of that time name an issuer with a path on the same origin. The document
            // comes from the server itself, so an issuer on its origin is accepted and recorded
            // (for the `iss` check); any other origin is refused.
            let named = Issuer::parse(&doc.issuer)
                .map_err(|e| ClientError::Discovery(format!("metadata issuer: {e}")))?;
            if named.url().origin() != server.origin() {
                return Err(ClientError::Discovery(format!(
                    "metadata at {origin} names issuer {:?} on another origin (CL-06)",
                    doc.issuer
                )));
            }
            issuer = named;
            doc
        }
        None => serde_json::from_value(serde_json::json!({
            "issuer": origin,
            "authorization_endpoint": format!("{origin}/authorize"),
            "token_endpoint": format!("{origin}/token"),
            "registration_endpoint": format!("{origin}/register"),
            "code_challenge_methods_supported": ["S256"],
        }))
        .map_err(|e| ClientError::Discovery(e.to_string()))?,
    };
    finish(
        server_url,
        server_url.to_owned(),
        issuer,
        metadata,
        Vec::new(),
        true,
    )
}

fn finish(
    server_url: &str,
    resource: String,
    issuer: Issuer,
    metadata: AuthorizationServerMetadata,
    prm_scopes: Vec<String>,
    legacy: bool,
) -> Result<Discovered, ClientError> {
    if !metadata.supports_s256() {
        return Err(ClientError::Discovery(format!(
            "{issuer} does not advertise PKCE S256 (code_challenge_methods_supported); refusing to log in (CL-07)"
        )));
    }
    let required = |what: &'static str, v: &Option<String>| {
        v.as_deref()
            .ok_or_else(|| ClientError::Discovery(format!("{issuer} has no {what}")))
            .and_then(|s| check_endpoint(what, s))
    };
    let authorization_endpoint =
        required("authorization_endpoint", &metadata.authorization_endpoint)?;
    let token_endpoint = required("token_endpoint", &metadata.token_endpoint)?;
    let registration_endpoint = metadata
        .registration_endpoint
        .as_deref()
        .map(|s| check_endpoint("registration_endpoint", s))
        .transpose()?;
    Ok(Discovered {
        server_url: server_url.to_owned(),
        resource,
        issuer,
        metadata,
        authorization_endpoint,
        token_endpoint,
        registration_endpoint,
        prm_scopes,
        legacy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cl02_prm_order() {
        let s = url::Url::parse("https://mcp.example.com/a/mcp").expect("url");
        assert_eq!(
            prm_candidates(&s, None),
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/a/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource"
            ]
        );
        let root = url::Url::parse("https://mcp.example.com/").expect("url");
        assert_eq!(
            prm_candidates(&root, None),
            ["https://mcp.example.com/.well-known/oauth-protected-resource"]
        );
        let c = BearerChallenge {
            resource_metadata: Some("https://mcp.example.com/custom.json".into()),
            ..Default::default()
        };
        assert_eq!(
            prm_candidates(&s, Some(&c))[0],
            "https://mcp.example.com/custom.json"
        );
    }

    #[test]
    fn cl03_resource_comparison_is_exact_but_for_url_equivalence() {
        assert!(same_resource(
            "https://mcp.example.com/mcp",
            "https://mcp.example.com/mcp"
        ));
        assert!(same_resource(
            "https://MCP.example.com:443/mcp",
            "https://mcp.example.com/mcp"
        ));
        assert!(!same_resource(
            "https://mcp.example.com/mcp",
            "https://mcp.example.com/mcp/"
        ));
        assert!(!same_resource(
            "https://mcp.example.com/mcp",
            "https://evil.example.com/mcp"
        ));
        assert!(!same_resource(
            "https://mcp.example.com/mcp",
            "https://mcp.example.com/"
        ));
    }
}
