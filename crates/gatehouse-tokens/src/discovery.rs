use gatehouse_core::{AuthorizationServerMetadata, Issuer};
use gatehouse_fetch::{FetchError, Fetcher};

use crate::TokenError;

/// Fetches an issuer's metadata, trying RFC 8414 then OIDC discovery (path-aware), and refuses a
/// document whose `issuer` is not byte-equal to the one asked for (AS-02, CL-06).
pub async fn discover(
    fetcher: &Fetcher,
    issuer: &Issuer,
) -> Result<AuthorizationServerMetadata, TokenError> {
    let mut last = String::from("no metadata URL answered");
    for url in issuer.metadata_urls() {
        match fetcher.get_json::<AuthorizationServerMetadata>(&url).await {
            Ok((doc, _)) => {
                doc.check_issuer(issuer)
                    .map_err(|e| TokenError::Unavailable(e.to_string()))?;
                return Ok(doc);
            }
            // Not there: try the next well-known location.
            Err(FetchError::Status {
                status: 404 | 400 | 405,
                ..
            }) => {
                last = format!("{url}: not found");
            }
            Err(e @ FetchError::Blocked { .. }) => {
                return Err(TokenError::Unavailable(e.to_string()));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(TokenError::Unavailable(format!(
        "metadata of issuer {issuer} not found ({last})"
    )))
}
