//! Redirect URIs: exact matching with the loopback-port rule (AS-09, AS-10, RFC 8252 §7.3).
//!
//! Decision (Appendix C.3): the port may differ only when the registered URI is `http` on a
//! loopback IP literal (`127.0.0.1`, `[::1]`). `localhost` is matched exactly, port included,
//! because its resolution is not guaranteed to be loopback.
use crate::error::CoreError;
use crate::url::is_loopback_host;

/// A redirect URI, keeping the exact string it was registered or presented with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUri {
    raw: String,
    parsed: url::Url,
}

/// Parses `s` and checks it is printable ASCII in the parser's canonical form.
fn canonical(s: &str) -> Result<url::Url, String> {
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) || s.contains('\\') {
        return Err("only printable ASCII without spaces or backslashes".into());
    }
    let parsed = url::Url::parse(s).map_err(|e| e.to_string())?;
    let c = parsed.as_str();
    if c != s && c.strip_suffix('/') != Some(s) {
        return Err(format!("not in canonical form (would be {c:?})"));
    }
    Ok(parsed)
}

/// Splits `scheme://authority/rest` at the authority. Returns (scheme+"://", rest).
fn split_authority(raw: &str) -> Option<(&str, &str)> {
    let start = raw.find("://")? + 3;
    let end = raw[start..]
        .find(['/', '?'])
        .map(|i| start + i)
        .unwrap_or(raw.len());
    Some((&raw[..start], &raw[end..]))
}

impl RedirectUri {
    /// AS-10: only `https`, or `http` on loopback. No fragment, no user info. The string must be
    /// printable ASCII already in canonical form (what the URL parser would produce, a bare origin
    /// may omit its `/`): exact matching must not depend on how a parser reads `\`, control
    /// bytes or letter case.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let bad = |why: &str| CoreError::RedirectUri(format!("{why}: {s:?}"));
        let parsed = canonical(s).map_err(|why| bad(&why))?;
        if s.contains('#') {
            return Err(bad("must not contain a fragment"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("must not contain user information"));
        }
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback_host(&parsed) => {}
            "http" => return Err(bad("http is allowed only for loopback redirect URIs")),
            _ => return Err(bad("scheme must be https, or http on loopback")),
        }
        match parsed.host() {
            None => return Err(bad("no host")),
            // `app.example.com.` resolves like `app.example.com` but reads as another name on a
            // consent screen (issue 14, row 15).
            Some(url::Host::Domain(d)) if d.ends_with('.') => {
                return Err(bad("host must not end with a dot"));
            }
            Some(_) => {}
        }
        Ok(Self {
            raw: s.to_owned(),
            parsed,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    fn is_loopback_ip_literal(&self) -> bool {
        self.parsed.scheme() == "http"
            && match self.parsed.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                _ => false,
            }
    }

    /// AS-09: does `presented` match this registered URI? Byte-exact, except that a loopback IP
    /// literal registration accepts any port (native apps bind an ephemeral port).
    pub fn matches(&self, presented: &str) -> bool {
        if self.raw == presented {
            return true;
        }
        if !self.is_loopback_ip_literal() {
            return false;
        }
        let Ok(p) = canonical(presented) else {
            return false;
        };
        if p.scheme() != "http" || p.host() != self.parsed.host() || presented.contains('#') {
            return false;
        }
        // Everything after the authority must be byte-identical, and the host must be written
        // the same way (no alternative spellings of the address).
        match (split_authority(&self.raw), split_authority(presented)) {
            (Some((s1, rest1)), Some((s2, rest2))) => {
                let host_raw = |raw: &str, scheme: &str, rest: &str| {
                    let auth = &raw[scheme.len()..raw.len() - rest.len()];
                    // Strip ":port" (for [::1]:port the port follows the bracket).
                    match auth.rfind(':') {
                        Some(i) if !auth[i..].contains(']') => auth[..i].to_owned(),
                        _ => auth.to_owned(),
                    }
                };
                s1 == s2
                    && rest1 == rest2
                    && host_raw(&self.raw, s1, rest1) == host_raw(presented, s2, rest2)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RedirectUri {
        RedirectUri::parse(s).expect("valid redirect URI")
    }

    #[test]
    fn as09_exact_match_one_character_off_fails() {
        let r = reg("https://app.example.com/callback");
        assert!(r.matches("https://app.example.com/callback"));
        for near in [
            "https://app.example.com/callback/",
            "https://app.example.com/Callback",
            "https://app.example.com/callbacK",
            "https://app.example.com/callback?x=1",
            "https://app.example.com:443/callback",
            "https://APP.example.com/callback",
            "https://app.example.com/callback#f",
            "https://app.example.co/callback",
            "http://app.example.com/callback",
        ] {
            assert!(!r.matches(near), "{near} must not match");
        }
    }

    #[test]
    fn as09_loopback_ip_literal_any_port() {
        let r = reg("http://127.0.0.1/callback");
        assert!(r.matches("http://127.0.0.1:53211/callback"));
        assert!(r.matches("http://127.0.0.1:1/callback"));
        assert!(!r.matches("http://127.0.0.1:53211/callbacks"));
        assert!(!r.matches("http://127.0.0.2:53211/callback"));
        assert!(!r.matches("http://localhost:53211/callback"));
        assert!(!r.matches("https://127.0.0.1:53211/callback"));
        assert!(!r.matches("http://0x7f.0.0.1:53211/callback"));
        assert!(!r.matches("http://2130706433:53211/callback"));
        let r6 = reg("http://[::1]:3000/cb");
        assert!(r6.matches("http://[::1]:4000/cb"));
        assert!(!r6.matches("http://[::1]:4000/cb2"));
    }

    #[test]
    fn non_canonical_strings_are_refused() {
        // Found by the redirect_uri fuzz target: junk after the port was ignored when comparing.
        for bad in [
            "Http://[::1]:300\\\0\0\0",
            "http://127.0.0.1:300\\evil",
            "HTTP://127.0.0.1/cb",
            "http://127.0.0.1/c b",
            "http://127.0.0.1:80/cb",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let r = reg("http://[::1]:300/cb");
        assert!(!r.matches("http://[::1]:400\\cb"));
        assert!(!r.matches("http://[::1]:400/cb\u{1}"));
        assert!(
            reg("http://127.0.0.1:3000").matches("http://127.0.0.1:4000"),
            "bare origin allowed"
        );
    }

    #[test]
    fn appendix_c3_localhost_is_exact() {
        let r = reg("http://localhost:3000/cb");
        assert!(r.matches("http://localhost:3000/cb"));
        assert!(!r.matches("http://localhost:3001/cb"));
    }

    #[test]
    fn as10_only_https_or_loopback_http() {
        for bad in [
            "http://app.example.com/cb",
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "https://u:p@app.example.com/cb",
            "https://app.example.com/cb#x",
            "custom:/cb",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad} must be refused");
        }
        assert!(RedirectUri::parse("http://[::1]/cb").is_ok());
    }
}
