//! Canonical resource and issuer URLs.
//!
//! Both keep the exact string they were built from: the `url` crate would silently turn
//! `https://h` into `https://h/`, and a one-byte difference between the PRM `resource`, the token
//! `aud` and the client's `resource` parameter is exactly what breaks deployments (Appendix C.2).
//! Parsing only validates; comparisons are explicit.
use crate::error::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

fn parse_absolute(what: &'static str, s: &str) -> Result<url::Url, CoreError> {
    let err = |why: &str| CoreError::Url {
        what,
        why: why.to_owned(),
    };
    if s.trim() != s || s.is_empty() {
        return Err(err("empty or surrounded by white space"));
    }
    let u = url::Url::parse(s).map_err(|e| err(&e.to_string()))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(err("scheme must be https (or http on loopback)"));
    }
    if u.host().is_none() {
        return Err(err("no host"));
    }
    if u.fragment().is_some() || s.contains('#') {
        return Err(err("must not contain a fragment"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(err("must not contain user information"));
    }
    Ok(u)
}

/// True when the URL's host is a loopback IP literal or `localhost`.
pub fn is_loopback_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// How an audience is compared with this server's resource (RS-13). Scheme and host are always
/// compared case-insensitively; the trailing slash is a deliberate choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudiencePolicy {
    /// `https://h/mcp` and `https://h/mcp/` are different audiences (the default).
    #[default]
    Exact,
    /// A single trailing `/` on either side is ignored.
    IgnoreTrailingSlash,
}

/// The canonical URI of a protected resource (an MCP endpoint), e.g. `https://mcp.example.com/mcp`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    raw: String,
    parsed: url::Url,
}

impl Resource {
    /// Parses a resource identifier: absolute http(s), with a host, no fragment, no user info.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let parsed = parse_absolute("resource", s)?;
        Ok(Self {
            raw: s.to_owned(),
            parsed,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn url(&self) -> &url::Url {
        &self.parsed
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.parsed)
    }

    /// `scheme://host[:port]` exactly as written in the resource (no trailing slash).
    pub fn origin_str(&self) -> &str {
        origin_prefix(&self.raw)
    }

    /// The path of the resource as written (`""` for a bare origin), without query.
    pub fn path_str(&self) -> &str {
        let rest = &self.raw[self.origin_str().len()..];
        rest.split('?').next().unwrap_or("")
    }

    /// RFC 9728 §3.1: `/.well-known/oauth-protected-resource` inserted between host and path.
    /// A trailing `/` after the host is removed first.
    pub fn prm_url(&self) -> String {
        let path = self.path_str();
        let path = if path == "/" { "" } else { path };
        format!(
            "{}/.well-known/oauth-protected-resource{}",
            self.origin_str(),
            path
        )
    }

    /// The root PRM URL (`https://host/.well-known/oauth-protected-resource`).
    pub fn prm_root_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource", self.origin_str())
    }

    /// The well-known *path* (no origin) at which this resource's PRM is served.
    pub fn prm_path(&self) -> String {
        self.prm_url()[self.origin_str().len()..].to_owned()
    }

    /// RS-12/RS-13: does the audience value `aud` name this resource?
    pub fn matches_audience(&self, aud: &str, policy: AudiencePolicy) -> bool {
        // The common case, checked on every request: the very string this resource was
        // parsed from (a valid absolute URL), which every policy accepts.
        if aud == self.raw {
            return true;
        }
        let Ok(other) = parse_absolute("audience", aud) else {
            return false;
        };
        if !self.parsed.scheme().eq_ignore_ascii_case(other.scheme())
            || self.parsed.host() != other.host()
            || self.parsed.port_or_known_default() != other.port_or_known_default()
            || self.parsed.query() != other.query()
        {
            return false;
        }
        // Compare the paths as written, not as the url crate normalised them, so that
        // `https://h` and `https://h/` differ unless the policy says otherwise.
        let a = self.path_str();
        let b = raw_path(aud);
        match policy {
            AudiencePolicy::Exact => a == b,
            AudiencePolicy::IgnoreTrailingSlash => {
                a.trim_end_matches('/') == b.trim_end_matches('/')
                    && (a.len().abs_diff(b.len()) <= 1)
            }
        }
    }
}

fn origin_prefix(raw: &str) -> &str {
    // After "scheme://", the authority ends at the first '/', '?' or end of string.
    let start = raw.find("://").map(|i| i + 3).unwrap_or(0);
    let end = raw[start..]
        .find(['/', '?'])
        .map(|i| start + i)
        .unwrap_or(raw.len());
    &raw[..end]
}

fn raw_path(raw: &str) -> &str {
    let rest = &raw[origin_prefix(raw).len()..];
    rest.split('?').next().unwrap_or("")
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resource({})", self.raw)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An authorization server's issuer identifier (RFC 8414 §2): http(s), no query, no fragment.
/// Compared byte for byte (AS-02, CL-06): no normalisation ever.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Issuer {
    raw: String,
    parsed: url::Url,
}

impl Issuer {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let parsed = parse_absolute("issuer", s)?;
        if parsed.query().is_some() {
            return Err(CoreError::Url {
                what: "issuer",
                why: "must not contain a query".into(),
            });
        }
        Ok(Self {
            raw: s.to_owned(),
            parsed,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn url(&self) -> &url::Url {
        &self.parsed
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.parsed)
    }

    /// Metadata URLs in the order a client tries them (CL-05): RFC 8414 path-inserted, OIDC
    /// path-inserted, OIDC appended. For an issuer without a path: RFC 8414 then OIDC.
    pub fn metadata_urls(&self) -> Vec<String> {
        let origin = origin_prefix(&self.raw);
        let path = raw_path(&self.raw).trim_end_matches('/');
        if path.is_empty() {
            vec![
                format!("{origin}/.well-known/oauth-authorization-server"),
                format!("{origin}/.well-known/openid-configuration"),
            ]
        } else {
            vec![
                format!("{origin}/.well-known/oauth-authorization-server{path}"),
                format!("{origin}/.well-known/openid-configuration{path}"),
                format!("{origin}{path}/.well-known/openid-configuration"),
            ]
        }
    }
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Issuer({})", self.raw)
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Issuer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Issuer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resource {
        Resource::parse(s).expect("valid resource")
    }

    #[test]
    fn rs03_prm_url_is_path_inserted() {
        assert_eq!(
            r("https://example.com/public/mcp").prm_url(),
            "https://example.com/.well-known/oauth-protected-resource/public/mcp"
        );
        assert_eq!(
            r("https://example.com").prm_url(),
            "https://example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            r("https://example.com/").prm_url(),
            "https://example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            r("http://127.0.0.1:8080/mcp").prm_root_url(),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            r("http://127.0.0.1:8080/mcp").prm_path(),
            "/.well-known/oauth-protected-resource/mcp"
        );
    }

    #[test]
    fn no_silent_trailing_slash() {
        assert_eq!(r("https://h").as_str(), "https://h");
        assert_eq!(r("https://h/mcp").as_str(), "https://h/mcp");
    }

    #[test]
    fn rejects_bad_resources() {
        for bad in [
            "mcp.example.com/mcp",
            "ftp://h/mcp",
            "https://h/mcp#frag",
            "https://user:pw@h/mcp",
            " https://h/mcp",
            "",
            "javascript:alert(1)",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn rs13_audience_comparison() {
        let res = r("https://mcp.example.com/mcp");
        let exact = AudiencePolicy::Exact;
        assert!(res.matches_audience("https://mcp.example.com/mcp", exact));
        assert!(res.matches_audience("HTTPS://MCP.EXAMPLE.COM/mcp", exact));
        assert!(res.matches_audience("https://mcp.example.com:443/mcp", exact));
        assert!(!res.matches_audience("https://mcp.example.com/MCP", exact));
        assert!(!res.matches_audience("https://mcp.example.com/mcp/", exact));
        assert!(!res.matches_audience("https://other.example.com/mcp", exact));
        assert!(!res.matches_audience("http://mcp.example.com/mcp", exact));
        assert!(!res.matches_audience("https://mcp.example.com/mcp2", exact));
        assert!(!res.matches_audience("https://mcp.example.com", exact));
        let lenient = AudiencePolicy::IgnoreTrailingSlash;
        assert!(res.matches_audience("https://mcp.example.com/mcp/", lenient));
        assert!(!res.matches_audience("https://mcp.example.com/mcp//", lenient));
        assert!(!res.matches_audience("https://mcp.example.com/mc", lenient));
        let root = r("https://h");
        assert!(root.matches_audience("https://h", exact));
        assert!(!root.matches_audience("https://h/", exact));
        assert!(root.matches_audience("https://h/", lenient));
    }

    #[test]
    fn issuer_metadata_urls_in_spec_order() {
        let i = Issuer::parse("https://auth.example.com/tenant1").expect("issuer");
        assert_eq!(
            i.metadata_urls(),
            vec![
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration",
            ]
        );
        let root = Issuer::parse("http://127.0.0.1:9000").expect("issuer");
        assert_eq!(
            root.metadata_urls(),
            vec![
                "http://127.0.0.1:9000/.well-known/oauth-authorization-server",
                "http://127.0.0.1:9000/.well-known/openid-configuration",
            ]
        );
        assert!(Issuer::parse("https://a.example/?x=1").is_err());
    }

    proptest::proptest! {
        #[test]
        fn audience_match_is_reflexive_and_slash_strict(path in "(/[a-z0-9]{1,8}){0,3}") {
            let s = format!("https://mcp.example.com{path}");
            let res = r(&s);
            proptest::prop_assert!(res.matches_audience(&s, AudiencePolicy::Exact));
            let slashed = format!("{s}/");
            proptest::prop_assert!(!res.matches_audience(&slashed, AudiencePolicy::Exact));
            proptest::prop_assert!(res.matches_audience(&slashed, AudiencePolicy::IgnoreTrailingSlash));
            proptest::prop_assert_eq!(res.as_str(), s.as_str());
        }
    }
}
