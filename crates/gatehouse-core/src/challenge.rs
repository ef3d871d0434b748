//! `WWW-Authenticate` (RFC 9110 §11.6.1) parsing and RFC 6750 Bearer challenge formatting.
//!
//! Parsing is tolerant in the ways RFC 9110 allows and CL-01 demands: several challenges in one
//! header or over several header lines, case-insensitive scheme and parameter names, quoted and
//! bare values, escapes, any parameter order. It is strict where ambiguity would be dangerous:
//! a parameter repeated inside one challenge is an error.
use crate::error::CoreError;
use crate::scope::ScopeSet;
use std::fmt::Write as _;

/// One parsed challenge. Parameter names are lower-cased; values are unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub token68: Option<String>,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parses every challenge in all the given header values, in order.
    pub fn parse_all<'a>(
        header_values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Challenge>, CoreError> {
        let mut out = Vec::new();
        for v in header_values {
            Parser {
                s: v.as_bytes(),
                i: 0,
            }
            .challenges(&mut out)?;
        }
        Ok(out)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> CoreError {
        CoreError::Challenge(format!("{what} at byte {}", self.i))
    }
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ows(&mut self) -> bool {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i > start
    }
    fn skip_ows_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> &str {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        // tchar is ASCII, so the slice is valid UTF-8.
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or("")
    }

    /// A token68 is a run of token68 characters, optional trailing '=', then the end of the
    /// challenge. `name=value` is a parameter, not a token68.
    fn try_token68(&mut self) -> Option<String> {
        let start = self.i;
        let mut j = start;
        while self.s.get(j).copied().is_some_and(is_token68_char) {
            j += 1;
        }
        if j == start {
            return None;
        }
        while self.s.get(j) == Some(&b'=') {
            j += 1;
        }
        let mut k = j;
        while matches!(self.s.get(k), Some(b' ' | b'\t')) {
            k += 1;
        }
        if k == self.s.len() || self.s[k] == b',' {
            self.i = k;
            return std::str::from_utf8(&self.s[start..j])
                .ok()
                .map(str::to_owned);
        }
        None
    }

    fn quoted(&mut self) -> Result<String, CoreError> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted-string")),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.err("dangling escape"));
                    };
                    out.push(c);
                    self.i += 1;
                }
                Some(c) if c == b'\t' || c >= 0x20 && c != 0x7f => {
                    out.push(c);
                    self.i += 1;
                }
                Some(_) => return Err(self.err("control character in quoted-string")),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("quoted-string is not UTF-8"))
    }

    /// At the start of an item after a comma: is it `token BWS "="` (a parameter of the current
    /// challenge) rather than the scheme of a new one?
    fn next_is_param(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).copied().is_some_and(is_tchar) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        self.s.get(j) == Some(&b'=')
    }

    fn challenges(&mut self, out: &mut Vec<Challenge>) -> Result<(), CoreError> {
        loop {
            self.skip_ows_commas();
            if self.eof() {
                return Ok(());
            }
            let scheme = self.token().to_owned();
            if scheme.is_empty() {
                return Err(self.err("expected an auth-scheme"));
            }
            let mut ch = Challenge {
                scheme,
                token68: None,
                params: Vec::new(),
            };
            let spaced = self.skip_ows();
            if self.eof() || self.peek() == Some(b',') {
                out.push(ch);
                continue;
            }
            if !spaced {
                return Err(self.err("expected a space after the auth-scheme"));
            }
            if let Some(t) = self.try_token68() {
                ch.token68 = Some(t);
                out.push(ch);
                continue;
            }
            loop {
                let name = self.token().to_ascii_lowercase();
                if name.is_empty() {
                    return Err(self.err("expected a parameter name"));
                }
                self.skip_ows();
                if self.peek() != Some(b'=') {
                    return Err(self.err("expected '=' after a parameter name"));
                }
                self.i += 1;
                self.skip_ows();
                let value = match self.peek() {
                    Some(b'"') => self.quoted()?,
                    _ => {
                        let t = self.token().to_owned();
                        if t.is_empty() {
                            return Err(self.err("expected a parameter value"));
                        }
                        t
                    }
                };
                if ch.params.iter().any(|(n, _)| *n == name) {
                    return Err(CoreError::Challenge(format!(
                        "parameter {name:?} appears twice in one challenge"
                    )));
                }
                ch.params.push((name, value));
                self.skip_ows();
                if self.eof() {
                    break;
                }
                if self.peek() != Some(b',') {
                    return Err(self.err("expected ',' between parameters"));
                }
                self.skip_ows_commas();
                if self.eof() || !self.next_is_param() {
                    break;
                }
            }
            out.push(ch);
        }
    }
}

/// The `error` values of an RFC 6750 Bearer challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
}

impl BearerError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// The HTTP status that goes with the error (RFC 6750 §3.1).
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::InvalidToken => 401,
            Self::InsufficientScope => 403,
        }
    }
}

/// A Bearer challenge as a resource server emits it (RS-05 … RS-09, RS-23).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BearerChallenge {
    pub error: Option<BearerError>,
    pub error_description: Option<String>,
    pub scope: Option<ScopeSet>,
    pub resource_metadata: Option<String>,
}

/// Writes `value` as an RFC 9110 quoted-string restricted to what RFC 6750 allows in a value
/// (printable ASCII). Anything else is dropped rather than risk header injection.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

impl BearerChallenge {
    /// The header value, e.g. `Bearer error="invalid_token", resource_metadata="…", scope="…"`.
    pub fn to_header_value(&self) -> String {
        let mut out = String::from("Bearer");
        let mut sep = " ";
        let mut param = |out: &mut String, name: &str, value: &str| {
            let _ = write!(out, "{sep}{name}=");
            push_quoted(out, value);
            sep = ", ";
        };
        if let Some(e) = self.error {
            param(&mut out, "error", e.as_str());
        }
        if let Some(d) = &self.error_description {
            // error_description excludes '"' and '\' entirely (RFC 6750 §3).
            let clean: String = d.chars().filter(|c| *c != '"' && *c != '\\').collect();
            param(&mut out, "error_description", &clean);
        }
        if let Some(rm) = &self.resource_metadata {
            param(&mut out, "resource_metadata", rm);
        }
        if let Some(s) = self.scope.as_ref().filter(|s| !s.is_empty()) {
            param(&mut out, "scope", &s.to_string());
        }
        out
    }

    /// Picks the first Bearer challenge out of parsed challenges (client side, CL-01).
    pub fn from_challenges(challenges: &[Challenge]) -> Option<Result<Self, CoreError>> {
        let c = challenges.iter().find(|c| c.is_scheme("bearer"))?;
        let error = match c.param("error") {
            None => None,
            Some("invalid_request") => Some(BearerError::InvalidRequest),
            Some("invalid_token") => Some(BearerError::InvalidToken),
            Some("insufficient_scope") => Some(BearerError::InsufficientScope),
            // Unknown codes are kept out rather than guessed at.
            Some(_) => None,
        };
        let scope = match c.param("scope").map(ScopeSet::parse).transpose() {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Self {
            error,
            error_description: c.param("error_description").map(str::to_owned),
            scope,
            resource_metadata: c.param("resource_metadata").map(str::to_owned),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Vec<Challenge> {
        Challenge::parse_all(lines.iter().copied()).expect("parses")
    }

    #[test]
    fn cl01_fixture_table() {
        let cs = parse(&[
            r#"Basic realm="x", Bearer scope="a b", resource_metadata="https://h/.well-known/oauth-protected-resource/mcp""#,
        ]);
        assert_eq!(cs.len(), 2);
        assert!(cs[0].is_scheme("basic"));
        assert_eq!(cs[0].param("realm"), Some("x"));
        assert_eq!(cs[1].param("scope"), Some("a b"));
        assert_eq!(
            cs[1].param("resource_metadata"),
            Some("https://h/.well-known/oauth-protected-resource/mcp")
        );

        let cs = parse(&[
            r#"Basic realm="x""#,
            r#"BEARER error=invalid_token, Scope="s1""#,
        ]);
        assert_eq!(cs.len(), 2);
        let b = BearerChallenge::from_challenges(&cs)
            .expect("bearer present")
            .expect("valid");
        assert_eq!(b.error, Some(BearerError::InvalidToken));
        assert_eq!(b.scope.expect("scope").to_string(), "s1");

        let cs = parse(&[
            r#"Bearer resource_metadata = "https://h/x" , error="insufficient_scope",scope="a\"b c""#,
        ]);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].param("scope"), Some("a\"b c"));
        assert_eq!(cs[0].param("error"), Some("insufficient_scope"));

        // `realm=` is a token68 by RFC 9110's grammar, not an empty parameter.
        assert_eq!(
            parse(&["Bearer realm="])[0].token68.as_deref(),
            Some("realm=")
        );
        let cs = parse(&["Negotiate abc123==, Bearer"]);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].token68.as_deref(), Some("abc123=="));
        assert!(cs[1].is_scheme("Bearer"));
        assert!(cs[1].params.is_empty());

        let cs = parse(&["Bearer realm=\"a, b\", Basic realm=y, DPoP algs=\"ES256\""]);
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].param("realm"), Some("a, b"));
        assert_eq!(cs[2].param("algs"), Some("ES256"));
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            "Bearer realm=\"unterminated",
            "Bearer realm=x=y",
            "Bearer scope=\"a\", scope=\"b\"",
            "Bearer =x",
            "Bearer realm=\"x\" junk",
        ] {
            assert!(
                Challenge::parse_all([bad]).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn rs05_rs23_formatting_roundtrips() {
        let c = BearerChallenge {
            error: Some(BearerError::InsufficientScope),
            error_description: Some("needs \"notes:write\"\u{7}".into()),
            scope: Some(ScopeSet::parse("mcp:basic notes:write").expect("valid")),
            resource_metadata: Some("https://h/.well-known/oauth-protected-resource/mcp".into()),
        };
        let v = c.to_header_value();
        assert_eq!(
            v,
            "Bearer error=\"insufficient_scope\", error_description=\"needs notes:write\", resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:basic notes:write\""
        );
        let back = BearerChallenge::from_challenges(&parse(&[&v]))
            .expect("bearer")
            .expect("valid");
        assert_eq!(back.error, c.error);
        assert_eq!(back.scope, c.scope);
        assert_eq!(back.resource_metadata, c.resource_metadata);
        let none = BearerChallenge::default().to_header_value();
        assert_eq!(none, "Bearer");
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,64}") {
            let _ = Challenge::parse_all([s.as_str()]);
        }

        #[test]
        fn formatted_values_roundtrip(desc in "[ -~]{0,40}", rm in "https://[a-z]{1,8}/[a-z/]{0,10}") {
            let c = BearerChallenge {
                error: Some(BearerError::InvalidToken),
                error_description: Some(desc.clone()),
                scope: None,
                resource_metadata: Some(rm.clone()),
            };
            let parsed = Challenge::parse_all([c.to_header_value().as_str()]).expect("own output parses");
            proptest::prop_assert_eq!(parsed.len(), 1);
            proptest::prop_assert_eq!(parsed[0].param("resource_metadata"), Some(rm.as_str()));
            let expected: String = desc.chars().filter(|c| *c != '"' && *c != '\\').collect();
            proptest::prop_assert_eq!(parsed[0].param("error_description"), Some(expected.as_str()));
        }
    }
}
