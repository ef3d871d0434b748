use gatehouse_core::ScopeSet;
use serde_json::{Map, Value};

/// How the caller was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalSource {
    Jwt,
    Introspection,
    /// A static API key, by its configured name (never its value).
    ApiKey {
        name: String,
    },
}

/// A validated caller. Per-user state is keyed on (`issuer`, `subject`), never on a session id
/// (RS-21).
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
    pub client_id: Option<String>,
    pub scopes: ScopeSet,
    pub tenant: Option<String>,
    pub expires_at: Option<i64>,
    pub source: PrincipalSource,
    /// Every claim, for policy engines.
    pub claims: Map<String, Value>,
}

impl Principal {
    /// Builds a principal from JWT or introspection claims, reading the claim spellings of the
    /// common identity providers (`scope` string or `scp` list; `client_id`/`azp`/`cid`/`appid`;
    /// `tid`/`tenant`).
    pub(crate) fn from_claims(
        issuer: String,
        claims: Map<String, Value>,
        source: PrincipalSource,
    ) -> Result<Self, crate::TokenError> {
        let non_empty = |n: &str| {
            claims
                .get(n)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        // RFC 7662 makes `sub` optional; a machine (client_credentials) token's subject is then
        // its client. JWT access tokens must carry `sub` (RFC 9068).
        let subject = match (non_empty("sub"), &source) {
            (Some(s), _) => s,
            (None, PrincipalSource::Introspection) => {
                non_empty("client_id").ok_or(crate::TokenError::MissingClaim("sub"))?
            }
            (None, _) => return Err(crate::TokenError::MissingClaim("sub")),
        }
        .to_owned();
        let scopes = scopes_of(&claims)?;
        let str_claim = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| claims.get(*n).and_then(Value::as_str))
                .map(str::to_owned)
        };
        Ok(Self {
            issuer,
            subject,
            client_id: str_claim(&["client_id", "azp", "cid", "appid"]),
            scopes,
            tenant: str_claim(&["tenant", "tid", "tenant_id"]),
            expires_at: claims.get("exp").and_then(Value::as_i64),
            source,
            claims,
        })
    }
}

fn scopes_of(claims: &Map<String, Value>) -> Result<ScopeSet, crate::TokenError> {
    let bad = |_| crate::TokenError::Malformed("scope claim has invalid scope tokens".into());
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => ScopeSet::parse(s).map_err(bad),
        (_, Some(Value::String(s))) => ScopeSet::parse(s).map_err(bad),
        (_, Some(Value::Array(a))) => {
            ScopeSet::from_iter_strs(a.iter().filter_map(Value::as_str)).map_err(bad)
        }
        (None, None) => Ok(ScopeSet::new()),
        _ => Err(crate::TokenError::Malformed(
            "scope claim has the wrong type".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_common_claim_spellings() {
        let Value::Object(c) = json!({"sub":"u1","scp":["a","b"],"azp":"cli","tid":"t9","exp":5})
        else {
            unreachable!()
        };
        let p = Principal::from_claims("https://i".into(), c, PrincipalSource::Jwt).expect("ok");
        assert_eq!(p.scopes.to_string(), "a b");
        assert_eq!(p.client_id.as_deref(), Some("cli"));
        assert_eq!(p.tenant.as_deref(), Some("t9"));
        let Value::Object(c) = json!({"scope":"x"}) else {
            unreachable!()
        };
        assert!(Principal::from_claims("i".into(), c, PrincipalSource::Jwt).is_err());
    }
}
