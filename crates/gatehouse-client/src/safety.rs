//! Which URLs the client will talk to or open (CL-24, CL-25, CL-26; CVE-2025-6514).
//!
//! Every URL that comes from a server (metadata documents, `resource_metadata`, endpoints) goes
//! through [`check_endpoint`] before it is fetched, posted to, or handed to a browser: `https`,
//! or `http` only to a loopback host; no credentials in the URL; and only characters RFC 3986
//! allows unescaped, so quotes, spaces, backticks, pipes and the like (what shell injection
//! through an `authorization_endpoint` relied on) never reach a process. Opening itself never
//! uses a shell either (see `opener`).
use crate::ClientError;

/// True for `localhost`, `127.0.0.0/8` and `[::1]`.
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// RFC 3986 unreserved, reserved and `%`: anything else must have been percent-encoded.
fn rfc3986_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// Parses and checks a URL the client is about to use. `what` names it in the error.
pub fn check_endpoint(what: &'static str, raw: &str) -> Result<url::Url, ClientError> {
    let refuse = |why: &str| ClientError::UnsafeUrl {
        what,
        url: raw.chars().take(200).collect(),
        why: why.to_owned(),
    };
    if raw.is_empty() || !raw.chars().all(rfc3986_char) {
        return Err(refuse(
            "contains characters a URL may not carry unescaped (spaces, quotes, shell metacharacters, control or non-ASCII characters)",
        ));
    }
    // Legal in a URL but the stuff of command injection (T4); no authorization server needs them
    // unescaped, so refusing is cheap insurance on top of never using a shell.
    if raw.contains(';') || raw.contains("$(") {
        return Err(refuse("contains shell metacharacters (`;` or `$(`)"));
    }
    let u = url::Url::parse(raw).map_err(|e| refuse(&format!("not a URL: {e}")))?;
    match u.scheme() {
        "https" => {}
        "http" if is_loopback(&u) => {}
        "http" => return Err(refuse("plain http is allowed only to a loopback host")),
        other => {
            return Err(refuse(&format!(
                "scheme {other}: is not allowed (https only)"
            )));
        }
    }
    if u.host().is_none() {
        return Err(refuse("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(refuse("credentials in the URL"));
    }
    if u.fragment().is_some() {
        return Err(refuse("a fragment"));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cl25_cl26_only_https_or_loopback_http_and_no_shell_metacharacters() {
        for ok in [
            "https://auth.example.com/authorize",
            "https://auth.example.com/authorize?a=1&b=2",
            "http://127.0.0.1:8080/authorize",
            "http://localhost:3000/authorize",
            "http://[::1]:3000/authorize",
        ] {
            assert!(check_endpoint("authorization_endpoint", ok).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "vbscript:msgbox(1)",
            "http://auth.example.com/token",
            "http://169.254.169.254/latest/meta-data/",
            "https://auth.example.com/a b",
            "https://auth.example.com/$(touch${IFS}/tmp/pwned)",
            "https://auth.example.com/`id`",
            "https://auth.example.com/a|calc.exe",
            "https://auth.example.com/a;calc.exe",
            "https://auth.example.com/$(id)",
            "https://auth.example.com/\"&calc.exe",
            "https://auth.example.com/a\ncalc",
            "https://user:pw@auth.example.com/authorize",
            "https://auth.example.com/authorize#frag",
            "calc.exe & whoami",
            "",
        ] {
            assert!(
                check_endpoint("authorization_endpoint", bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }
}
