//! Discovery documents: RFC 9728 Protected Resource Metadata and RFC 8414 AS metadata.
use crate::error::CoreError;
use crate::url::Issuer;
use serde::{Deserialize, Serialize};

/// RFC 9728 Protected Resource Metadata (RS-01). Empty arrays are omitted, not sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bearer_methods_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_documentation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Fields this version does not model are kept, so nothing is lost when documents pass through.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// RFC 8414 authorization server metadata, with the fields MCP relies on named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationServerMetadata {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_types_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_metadata_document_supported: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl AuthorizationServerMetadata {
    /// AS-02 / CL-06: a document whose `issuer` is not byte-equal to the issuer it was fetched
    /// for must not be used (mix-up defence).
    pub fn check_issuer(&self, expected: &Issuer) -> Result<(), CoreError> {
        if self.issuer == expected.as_str() {
            Ok(())
        } else {
            Err(CoreError::Url {
                what: "metadata issuer",
                why: format!(
                    "document says {:?} but it was fetched for {:?}",
                    self.issuer,
                    expected.as_str()
                ),
            })
        }
    }

    /// CL-07: PKCE S256 must be advertised.
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prm_omits_empty_arrays_and_keeps_unknown_fields() {
        let doc: ProtectedResourceMetadata = serde_json::from_str(
            r#"{"resource":"https://mcp.example.com/mcp","authorization_servers":["https://auth.example.com/tenant1"],"x_custom":1}"#,
        )
        .expect("parses");
        let v = serde_json::to_value(&doc).expect("serialises");
        assert!(v.get("scopes_supported").is_none());
        assert_eq!(v["x_custom"], 1);
        assert_eq!(v["resource"], "https://mcp.example.com/mcp");
    }

    #[test]
    fn as02_issuer_must_match_exactly() {
        let doc: AuthorizationServerMetadata = serde_json::from_str(
            r#"{"issuer":"https://auth.example.com/tenant1/","code_challenge_methods_supported":["plain","S256"]}"#,
        )
        .expect("parses");
        let iss = Issuer::parse("https://auth.example.com/tenant1").expect("issuer");
        assert!(doc.check_issuer(&iss).is_err());
        assert!(doc.supports_s256());
        let iss2 = Issuer::parse("https://auth.example.com/tenant1/").expect("issuer");
        assert!(doc.check_issuer(&iss2).is_ok());
    }
}
