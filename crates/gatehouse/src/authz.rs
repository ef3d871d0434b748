//! The gateway's use of the policy engine: who is asking (from the guard's principal), what the
//! JSON-RPC body asks for (from the guard's parse), the answer on the wire, and list filtering.
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use gatehouse_core::{McpPeek, ScopeSet};
use gatehouse_policy::{Ask, Caller, Decision, Policies};
use gatehouse_tokens::Principal;
use http::StatusCode;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// JSON-RPC error code for a call the policies refuse (implementation-defined range).
pub(crate) const FORBIDDEN_CODE: i64 = -32003;

/// The caller's identity as the policies see it; `None` principal = an anonymous upstream.
/// Borrows the principal's claims: they are read once per decision, never changed.
pub(crate) struct Who<'a> {
    pub(crate) owner: crate::gateway::Owner,
    client: Option<&'a str>,
    tenant: Option<&'a str>,
    scopes: BTreeSet<String>,
    claims: &'a Map<String, Value>,
}

static NO_CLAIMS: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Who<'a> {
    pub(crate) fn of(p: Option<&'a Principal>) -> Self {
        match p {
            Some(p) => Self {
                owner: crate::gateway::Owner::of(Some(p)),
                client: p.client_id.as_deref(),
                tenant: p.tenant.as_deref(),
                scopes: p.scopes.to_vec().into_iter().collect(),
                claims: &p.claims,
            },
            None => Self {
                owner: crate::gateway::Owner::of(None),
                client: None,
                tenant: None,
                scopes: BTreeSet::new(),
                claims: &NO_CLAIMS,
            },
        }
    }

    pub(crate) fn caller(&self) -> Caller<'_> {
        Caller {
            issuer: &self.owner.issuer,
            subject: &self.owner.subject,
            client: self.client,
            tenant: self.tenant,
            scopes: &self.scopes,
            claims: self.claims,
        }
    }
}

/// The outcome for a whole HTTP request (a message or a batch).
pub(crate) enum Verdict {
    Allow,
    NeedScopes(BTreeSet<String>),
    Deny {
        policies: Vec<String>,
        /// Ids of the refused requests.
        ids: Vec<Value>,
    },
}

/// Decides every request in the body: any denial refuses the whole request (a batch is
/// not split), and a scope is asked for only when scopes alone stand in the way.
pub(crate) fn decide(policies: &Policies, who: &Who<'_>, server: &str, peek: &McpPeek) -> Verdict {
    let caller = who.caller();
    let mut needed = BTreeSet::new();
    let mut denied: Option<(Vec<String>, Vec<Value>)> = None;
    for m in &peek.messages {
        // Notifications and responses (to the server's own requests) carry no new intent.
        let (Some(method), Some(id)) = (m.method.as_deref(), m.id.as_ref()) else {
            continue;
        };
        let params = m.params.as_ref();
        let target = match method {
            "resources/subscribe" | "resources/unsubscribe" => {
                params.and_then(|p| p.get("uri")).and_then(Value::as_str)
            }
            _ => m.name.as_deref(),
        };
        let ask = Ask {
            server,
            method,
            target,
            arguments: params
                .and_then(|p| p.get("arguments"))
                .and_then(Value::as_object),
        };
        match policies.decide(&caller, &ask) {
            Decision::Allow => {}
            Decision::NeedScopes(s) => needed.extend(s),
            Decision::Deny { policies } => {
                let d = denied.get_or_insert_with(Default::default);
                d.0.extend(policies);
                d.1.push(id.clone());
            }
        }
    }
    match denied {
        Some((policies, ids)) => Verdict::Deny { policies, ids },
        None if !needed.is_empty() => Verdict::NeedScopes(needed),
        None => Verdict::Allow,
    }
}

/// The answer to a refused request: HTTP 200 with a JSON-RPC error per refused request
/// (the transport worked; the operation is not allowed).
pub(crate) fn denied_response(policies: &[String], ids: &[Value], batch: bool) -> Response {
    let message = if policies.is_empty() {
        "forbidden: no policy allows this".to_owned()
    } else {
        format!("forbidden by policy: {}", policies.join(", "))
    };
    let errors: Vec<Value> = ids
        .iter()
        .map(|id| crate::gateway::jsonrpc_error_body(id, FORBIDDEN_CODE, &message))
        .collect();
    let body = match (batch, errors.first()) {
        (false, Some(one)) => one.clone(),
        _ => Value::Array(errors),
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The 403 `insufficient_scope` challenge (RS-08): the baseline plus what the call needs.
pub(crate) fn scope_response(
    prm_url: &str,
    required: &ScopeSet,
    needed: &BTreeSet<String>,
) -> Response {
    let extra = ScopeSet::from_iter_strs(needed.iter().map(String::as_str)).unwrap_or_default();
    gatehouse_guard::GuardError::InsufficientScope {
        needed: required.union(&extra),
        description: format!("this call needs the scope {extra}"),
    }
    .into_response(prm_url, required)
}

/// Which list answers are filtered, the array in the result, and each entry's key.
fn list_shape(method: &str) -> Option<(&'static str, &'static str)> {
    match method {
        "tools/list" => Some(("tools", "name")),
        "prompts/list" => Some(("prompts", "name")),
        "resources/list" => Some(("resources", "uri")),
        "resources/templates/list" => Some(("resourceTemplates", "uriTemplate")),
        _ => None,
    }
}

pub(crate) fn is_filtered_list(method: Option<&str>) -> bool {
    method.and_then(list_shape).is_some()
}

/// Removes the entries the caller may not use from a list answer.
fn filter_message(policies: &Policies, who: &Who<'_>, server: &str, method: &str, msg: &mut Value) {
    let Some((array, key)) = list_shape(method) else {
        return;
    };
    let caller = who.caller();
    if let Some(items) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut(array))
        .and_then(Value::as_array_mut)
    {
        items.retain(|t| {
            t[key]
                .as_str()
                .is_some_and(|n| policies.lists(&caller, server, method, n))
        });
    }
}

/// Filters a whole list answer, JSON or SSE (one JSON message per `data:` line).
pub(crate) fn filter_body(
    policies: &Policies,
    who: &Who<'_>,
    server: &str,
    method: &str,
    sse: bool,
    body: &[u8],
) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    if !sse {
        return match serde_json::from_str::<Value>(&text) {
            Ok(mut v) => {
                filter_message(policies, who, server, method, &mut v);
                v.to_string().into_bytes()
            }
            Err(_) => body.to_vec(),
        };
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (content, end) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        let (content, cr) = match content.strip_suffix('\r') {
            Some(c) => (c, "\r"),
            None => (content, ""),
        };
        match content
            .strip_prefix("data:")
            .map(|d| serde_json::from_str::<Value>(d.trim_start()))
        {
            Some(Ok(mut v)) => {
                filter_message(policies, who, server, method, &mut v);
                out.push_str("data: ");
                out.push_str(&v.to_string());
            }
            _ => out.push_str(content),
        }
        out.push_str(cr);
        out.push_str(end);
    }
    out.into_bytes()
}

/// Reads a whole (short) list answer and filters it.
pub(crate) async fn filter_response(
    policies: &Policies,
    who: &Who<'_>,
    server: &str,
    method: &str,
    resp: Response,
) -> Response {
    let (head, body) = resp.into_parts();
    let sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let body = axum::body::to_bytes(body, crate::gateway::MAX_BODY)
        .await
        .unwrap_or_default();
    let filtered = filter_body(policies, who, server, method, sse, &body);
    let mut resp = Response::from_parts(head, Body::from(filtered));
    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_policy::ScopeRule;

    #[test]
    fn tools_list_filtered_by_policy_in_json_and_sse() {
        let p = Policies::compile(
            None,
            "t",
            &[ScopeRule {
                server: None,
                tool: "get-env".into(),
                scopes: ["mcp:admin".to_owned()].into(),
            }],
        )
        .expect("policies");
        let mut basic = Who::of(None);
        basic.scopes = ["mcp:basic".to_owned()].into();
        let mut admin = Who::of(None);
        admin.scopes = ["mcp:basic".to_owned(), "mcp:admin".to_owned()].into();
        let msg =
            r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"},{"name":"get-env"}]}}"#;
        let names = |b: &[u8], sse: bool| -> Vec<String> {
            let text = String::from_utf8(b.to_vec()).expect("utf8");
            let json = if sse {
                text.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data line")
                    .to_owned()
            } else {
                text
            };
            let v: Value = serde_json::from_str(&json).expect("json");
            v["result"]["tools"]
                .as_array()
                .expect("tools")
                .iter()
                .map(|t| t["name"].as_str().expect("name").to_owned())
                .collect()
        };
        let out = filter_body(&p, &basic, "s", "tools/list", false, msg.as_bytes());
        assert_eq!(names(&out, false), ["echo"]);
        let out = filter_body(&p, &admin, "s", "tools/list", false, msg.as_bytes());
        assert_eq!(names(&out, false), ["echo", "get-env"]);
        let sse = format!("event: message\r\nid: 1\r\ndata: {msg}\r\n\r\n");
        let out = filter_body(&p, &basic, "s", "tools/list", true, sse.as_bytes());
        assert!(String::from_utf8_lossy(&out).starts_with("event: message\r\nid: 1\r\ndata: "));
        assert_eq!(names(&out, true), ["echo"]);
    }

    #[test]
    fn resource_templates_list_filtered_by_policy() {
        let p = Policies::compile(
            Some(
                r#"
@id("all")
permit(principal, action, resource);
@id("no secrets")
forbid(principal, action == Action::"resources/read", resource)
when { resource.uri like "secret://*" };
"#,
            ),
            "t",
            &[],
        )
        .expect("policies");
        let who = Who::of(None);
        let msg = r#"{"jsonrpc":"2.0","id":3,"result":{"resourceTemplates":[{"uriTemplate":"secret://{name}","name":"secrets"},{"uriTemplate":"file:///{path}","name":"files"},{"name":"no template"}]}}"#;
        let out = filter_body(
            &p,
            &who,
            "s",
            "resources/templates/list",
            false,
            msg.as_bytes(),
        );
        let v: Value = serde_json::from_slice(&out).expect("json");
        let kept: Vec<&str> = v["result"]["resourceTemplates"]
            .as_array()
            .expect("templates")
            .iter()
            .map(|t| t["name"].as_str().expect("name"))
            .collect();
        // An entry without a template cannot be put to the policies: it is left out.
        assert_eq!(kept, ["files"]);
    }
}
