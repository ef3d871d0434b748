//! The session checks (SESSION-ID, SESSION-USER) and INSUFFICIENT-SCOPE, which need sessions
//! opened and ended the way a client does it.
use crate::Finding;
use crate::catalogue::{fail, pass, skip};
use crate::checks::{INIT, INITIALIZED, LIST, accepted, bearer, claims_of, now};
use crate::probe::{Answer, Probe};
use gatehouse_core::challenge::Challenge;
use serde_json::json;

/// A session opened with `token` as a client does it: `initialize`, then
/// `notifications/initialized` on the session. The session id (when the server keeps
/// sessions) and the protocol version.
pub(crate) async fn open_session(
    p: &Probe,
    token: &str,
) -> Result<(Option<String>, String), String> {
    let auth = bearer(token);
    let a = p.post(INIT, &[("authorization", &auth)], None).await?;
    if !accepted(&a) {
        return Err(format!("initialize with the token answered {}", a.status));
    }
    let version = a
        .json()
        .and_then(|v| v["result"]["protocolVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "2025-11-25".into());
    let sid = a.header("mcp-session-id").map(str::to_owned);
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", version.as_str()),
    ];
    if let Some(s) = &sid {
        h.push(("mcp-session-id", s));
    }
    p.post(INITIALIZED, &h, None).await?;
    Ok((sid, version))
}

/// Ends a session the checker opened (MCP clients SHOULD): servers that cap sessions per user
/// are not left holding ours. What the server answers does not matter.
pub(crate) async fn close_session(p: &Probe, token: &str, sid: &str, version: &str) {
    let auth = bearer(token);
    let _ = p
        .status_of(
            reqwest::Method::DELETE,
            &[
                ("authorization", auth.as_str()),
                ("mcp-session-id", sid),
                ("mcp-protocol-version", version),
            ],
        )
        .await;
}

/// SESSION-ID: two sessions' ids are long, visible ASCII and not a counter or a clock.
pub(crate) async fn session_ids(p: &Probe, token: &str, first: Option<&str>) -> Finding {
    let Some(first) = first else {
        return skip("SESSION-ID", "the server opened no session (stateless)");
    };
    // A session id the client made up must not be adopted (session fixation).
    let chosen = format!("gatehouse-check-chosen-{}", now());
    match p
        .post(
            INIT,
            &[
                ("authorization", &bearer(token)),
                ("mcp-session-id", &chosen),
            ],
            None,
        )
        .await
    {
        Ok(a) if a.header("mcp-session-id") == Some(chosen.as_str()) => {
            return fail(
                "SESSION-ID",
                "the server took the session id the client chose (session fixation)",
            );
        }
        Ok(a) => {
            if let Some(s) = a.header("mcp-session-id") {
                close_session(p, token, s, "2025-11-25").await;
            }
        }
        Err(e) => return skip("SESSION-ID", e),
    }
    let second = match open_session(p, token).await {
        Ok((Some(s), v)) => {
            close_session(p, token, &s, &v).await;
            close_session(p, token, first, &v).await;
            s
        }
        Ok((None, _)) => return skip("SESSION-ID", "the second initialize opened no session"),
        Err(e) => return skip("SESSION-ID", e),
    };
    if let Some(bad) = [first, second.as_str()]
        .iter()
        .find(|s| s.bytes().any(|b| !(0x21..=0x7e).contains(&b)))
    {
        return fail(
            "SESSION-ID",
            format!(
                "a session id of {} bytes has characters outside 0x21–0x7E",
                bad.len()
            ),
        );
    }
    let shortest = first.len().min(second.len());
    if shortest < 16 {
        return fail(
            "SESSION-ID",
            format!("a session id of {shortest} characters (too short to be unguessable)"),
        );
    }
    let span = differing_span(first.as_bytes(), second.as_bytes());
    if span < 12 {
        return fail(
            "SESSION-ID",
            format!("two sessions' ids differ in {span} characters only (predictable)"),
        );
    }
    pass(
        "SESSION-ID",
        format!("{shortest}+ characters, two ids differ over {span}"),
    )
}

/// How many characters lie between the common prefix and the common suffix of `a` and `b`
/// (in the longer one): a counter or a clock changes a few at one end.
fn differing_span(a: &[u8], b: &[u8]) -> usize {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    a.len().max(b.len()) - suffix
}

/// SESSION-USER: a session another user opened, used with this user's (valid) token.
pub(crate) async fn session_user(p: &Probe, token: &str, other: Option<&str>) -> Finding {
    let Some(other) = other else {
        return skip(
            "SESSION-USER",
            "needs --other-user-token (a token for this endpoint of another user)",
        );
    };
    let sub = |t: &str| claims_of(t).and_then(|c| c["sub"].as_str().map(str::to_owned));
    if let (Some(a), Some(b)) = (sub(token), sub(other))
        && a == b
    {
        return skip("SESSION-USER", "both tokens name the same user (`sub`)");
    }
    match open_session(p, other).await {
        Err(e) => return skip("SESSION-USER", format!("the other user's token: {e}")),
        Ok((Some(sid), v)) => close_session(p, other, &sid, &v).await,
        Ok((None, _)) => {}
    }
    let (sid, version) = match open_session(p, token).await {
        Ok((Some(sid), v)) => (sid, v),
        Ok((None, _)) => return skip("SESSION-USER", "the server opened no session (stateless)"),
        Err(e) => return skip("SESSION-USER", e),
    };
    // The session's own user first: a refusal there would make the other's mean nothing.
    let found = match list_on(p, &sid, &version, token).await {
        Ok(a) if accepted(&a) => match list_on(p, &sid, &version, other).await {
            Ok(a) if accepted(&a) => fail(
                "SESSION-USER",
                format!("another user's token used the session ({})", a.status),
            ),
            Ok(a) => pass("SESSION-USER", format!("refused ({})", a.status)),
            Err(e) => skip("SESSION-USER", e),
        },
        Ok(a) => skip(
            "SESSION-USER",
            format!("tools/list by the session's own user answered {}", a.status),
        ),
        Err(e) => skip("SESSION-USER", e),
    };
    close_session(p, token, &sid, &version).await;
    found
}

/// tools/list on session `sid` with `token`.
async fn list_on(p: &Probe, sid: &str, version: &str, token: &str) -> Result<Answer, String> {
    let auth = bearer(token);
    let h = [
        ("mcp-session-id", sid),
        ("mcp-protocol-version", version),
        ("authorization", auth.as_str()),
    ];
    p.post(LIST, &h, None).await
}

/// INSUFFICIENT-SCOPE: the tool the operator named (one `token`'s scopes do not cover), called
/// with empty arguments.
pub(crate) async fn insufficient_scope(p: &Probe, token: &str, tool: Option<&str>) -> Finding {
    let id = "INSUFFICIENT-SCOPE";
    let Some(tool) = tool else {
        return skip(
            id,
            "needs --scope-tool NAME (a tool the token's scopes do not cover)",
        );
    };
    let (sid, version) = match open_session(p, token).await {
        Ok(s) => s,
        Err(e) => return skip(id, e),
    };
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}})
    .to_string();
    let auth = bearer(token);
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", version.as_str()),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ];
    if let Some(s) = &sid {
        h.push(("mcp-session-id", s));
    }
    let a = p.post(&call, &h, None).await;
    if let Some(s) = &sid {
        close_session(p, token, s, &version).await;
    }
    let a = match a {
        Ok(a) => a,
        Err(e) => return skip(id, e),
    };
    let ch = Challenge::parse_all(
        a.headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .unwrap_or_default();
    let bearer_ch = ch.iter().find(|c| c.is_scheme("Bearer"));
    let error = bearer_ch.and_then(|c| c.param("error"));
    let scope = bearer_ch.and_then(|c| c.param("scope"));
    let held: Vec<String> = claims_of(token)
        .and_then(|c| c["scope"].as_str().map(str::to_owned))
        .map(|s| s.split(' ').map(str::to_owned).collect())
        .unwrap_or_default();
    match (a.status, error, scope) {
        (403, Some("insufficient_scope"), Some(s)) => {
            let needed: Vec<&str> = s.split(' ').filter(|x| !x.is_empty()).collect();
            if !held.is_empty() && needed.iter().all(|n| held.iter().any(|h| h == n)) {
                fail(
                    id,
                    format!("403 names scope=\"{s}\", all of which the token holds"),
                )
            } else {
                pass(id, format!("403, scope=\"{s}\""))
            }
        }
        (403, Some("insufficient_scope"), None) => {
            fail(id, "403 insufficient_scope without the `scope` needed")
        }
        (403, _, _) => fail(id, "403 without Bearer error=\"insufficient_scope\""),
        (401, _, _) => fail(
            id,
            "401 for a valid token lacking scope (clients re-authenticate instead of stepping up)",
        ),
        (s, _, _) if (200..300).contains(&s) => {
            let rpc_error = a
                .json()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
            fail(
                id,
                match rpc_error {
                    Some(m) => format!(
                        "HTTP {s} with a JSON-RPC error ({}) instead of 403",
                        m.chars().take(80).collect::<String>()
                    ),
                    None => format!("the call of {tool} was not refused ({s})"),
                },
            )
        }
        (s, _, _) => fail(id, format!("answered {s}, not 403")),
    }
}

#[cfg(test)]
mod tests {
    use super::differing_span;

    #[test]
    fn a_counter_or_a_clock_differs_in_a_few_characters_random_ids_everywhere() {
        assert_eq!(
            differing_span(b"session-0000000041", b"session-0000000042"),
            1
        );
        assert_eq!(differing_span(b"1733456789123-a", b"1733456789999-a"), 3);
        assert_eq!(differing_span(b"same", b"same"), 0);
        let (a, b) = (
            b"3f2c9a1e-8b7d-4c55-9e1f-0a6b2d4c8e71",
            b"b81e44d0-2a9c-4f13-8d6e-7c3b9f0e5a22",
        );
        assert!(differing_span(a, b) >= 30);
        // Different lengths: the longer one's middle counts.
        assert_eq!(differing_span(b"s1", b"s10"), 1);
    }
}
