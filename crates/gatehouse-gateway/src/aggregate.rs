//! The aggregate endpoint: one MCP server made of every upstream. Tools and prompts appear as
//! `<upstream>__<name>`, resources keep their URIs (their names get the prefix) and reads are
//! routed to the upstream that listed them. Each request to an upstream goes through that
//! upstream's own proxy — its policies, limits, credentials, session mapping and audit — so
//! the aggregate adds no way around them. Requests an upstream makes of the client (sampling,
//! elicitation) are relayed with ids that name the upstream, so the replies go back to it.
use crate::error::{GatewayError, RpcCode, rpc_error};
use crate::proxy::{MAX_BODY, Proxy};
use crate::sessions::{Owner, SessionTable, TableLimits};
use crate::spec::InvalidName;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use gatehouse_core::{McpPeek, ProtocolVersion};
use gatehouse_tokens::Principal;
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Between the upstream's name and the tool's (upstream names have no `_`).
pub const SEPARATOR: &str = "__";

/// A name the aggregate lists or is called with: `<upstream>__<name>`. Split at the first
/// separator (upstream names never hold `_`), and refused unless the upstream part names an
/// upstream and the rest is a name an upstream could have listed: 1 to 128 of MCP's name
/// characters, not starting or ending with `_` (so `alpha__` and `alpha__echo__` are refused,
/// never sent on as `""` or `echo__`).
pub fn split_name<'a>(
    name: &'a str,
    upstreams: &[&str],
) -> Result<(&'a str, &'a str), InvalidName> {
    let Some((u, rest)) = name.split_once(SEPARATOR) else {
        return Err(InvalidName(format!(
            "unknown name {:?}: expected <server>{SEPARATOR}<name>",
            crate::error::clip(name)
        )));
    };
    if !upstreams.contains(&u) {
        return Err(InvalidName(format!(
            "unknown server {:?}",
            crate::error::clip(u)
        )));
    }
    if !valid_member_name(rest) {
        return Err(InvalidName(format!(
            "malformed name {:?}: the part after {SEPARATOR} must be 1 to 128 letters, digits, _, - or ., not starting or ending with _",
            crate::error::clip(name)
        )));
    }
    Ok((u, rest))
}

/// Whether an upstream's tool or prompt name can be listed (and called) as `<upstream>__<name>`.
pub fn valid_member_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && !n.starts_with('_')
        && !n.ends_with('_')
}

/// Pages read from one upstream for one list (cursor pagination).
const MAX_PAGES: usize = 20;

#[derive(Clone)]
pub struct Aggregate {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Vec<(String, Proxy)>,
    sessions: SessionTable<AggSession>,
}

struct AggSession {
    /// Each upstream's session id at its proxy (`None`: the upstream keeps no sessions).
    members: HashMap<String, Option<String>>,
    /// Resource URI → upstream, learned from `resources/list`.
    uris: Mutex<HashMap<String, String>>,
    /// URI templates per upstream, learned from `resources/templates/list`.
    templates: Mutex<Vec<(String, String)>>,
}

fn rpc_result(id: &Value, result: Value, session: Option<&str>) -> Response {
    let mut resp =
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
    if let Some(s) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        resp.headers_mut().insert("mcp-session-id", s);
    }
    resp
}

/// The JSON-RPC answer with `id` in a response (JSON, or one event of an SSE stream).
async fn answer(resp: Response, id: &Value) -> Option<Value> {
    let sse = crate::sse::is_event_stream(resp.headers());
    let body = axum::body::to_bytes(resp.into_body(), MAX_BODY)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    if !sse {
        return serde_json::from_str(&text).ok();
    }
    crate::sse::messages(&text).into_iter().find(|v| {
        v.get("id") == Some(id) && (v.get("result").is_some() || v.get("error").is_some())
    })
}

/// Ids of requests an upstream sends the client are made unique across upstreams, and name
/// the upstream the reply goes back to: `gh:<upstream>:<original id as JSON>`.
pub fn wrap_id(upstream: &str, id: &Value) -> Value {
    Value::String(format!("gh:{upstream}:{id}"))
}

pub fn unwrap_id(id: &str) -> Option<(String, Value)> {
    let (u, original) = id.strip_prefix("gh:")?.split_once(':')?;
    Some((u.to_owned(), serde_json::from_str(original).ok()?))
}

/// One SSE line from `upstream`: requests to the client get a wrapped id.
pub fn rewrite_line(upstream: &str, line: &[u8]) -> bytes::Bytes {
    let text = String::from_utf8_lossy(line);
    let Some(data) = crate::sse::data_of(&text) else {
        return bytes::Bytes::copy_from_slice(line);
    };
    let end = if text.ends_with("\r\n") { "\r\n" } else { "\n" };
    match serde_json::from_str::<Value>(data.trim()) {
        Ok(mut v) if v.get("method").is_some() && v.get("id").is_some() => {
            v["id"] = wrap_id(upstream, &v["id"]);
            bytes::Bytes::from(format!("data: {v}{end}"))
        }
        _ => bytes::Bytes::copy_from_slice(line),
    }
}

/// An upstream's SSE stream, line by line, with [`rewrite_line`] applied.
fn rewrite_stream(
    upstream: String,
    body: Body,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Send {
    use futures::StreamExt;
    crate::sse::lines(body.into_data_stream()).map(move |line| Ok(rewrite_line(&upstream, &line)))
}

fn is_sse(resp: &Response) -> bool {
    crate::sse::is_event_stream(resp.headers())
}

/// An upstream's answer, passed on; an SSE answer carries the upstream's own requests to the
/// client, whose ids are wrapped so the replies find their way back.
fn relay(upstream: &str, resp: Response) -> Response {
    if !is_sse(&resp) {
        return resp;
    }
    let (head, body) = resp.into_parts();
    Response::from_parts(
        head,
        Body::from_stream(rewrite_stream(upstream.to_owned(), body)),
    )
}

/// Does `uri` match an RFC 6570 level-1 template (`{var}` = one or more characters but `/`)?
pub fn template_matches(template: &str, uri: &str) -> bool {
    let mut rest = uri;
    let mut parts = template.split('{');
    let Some(head) = parts.next() else {
        return false;
    };
    let Some(r) = rest.strip_prefix(head) else {
        return false;
    };
    rest = r;
    for part in parts {
        let Some((_, literal)) = part.split_once('}') else {
            return false;
        };
        // The variable takes everything up to the next literal (or the end), without '/'.
        let end = if literal.is_empty() {
            rest.len()
        } else {
            match rest.find(literal) {
                Some(i) => i,
                None => return false,
            }
        };
        if end == 0 || rest[..end].contains('/') {
            return false;
        }
        rest = &rest[end + literal.len()..];
    }
    rest.is_empty()
}

impl Aggregate {
    /// `sessions`: the bounds of the aggregate's own session map (set them to the guard's).
    pub fn new(upstreams: Vec<Proxy>, sessions: TableLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstreams: upstreams
                    .into_iter()
                    .map(|p| (p.name().as_str().to_owned(), p))
                    .collect(),
                sessions: SessionTable::new(sessions),
            }),
        }
    }

    pub fn into_service(
        self,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |req: http::Request<Body>| {
            let a = self.clone();
            async move { Ok(a.handle(req).await) }
        })
    }

    fn proxy(&self, name: &str) -> Option<&Proxy> {
        self.inner
            .upstreams
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// Sends one JSON-RPC message to one upstream through its proxy, as the caller.
    async fn send(
        &self,
        upstream: &str,
        template: &http::request::Parts,
        session: Option<&str>,
        method: http::Method,
        body: Value,
    ) -> Response {
        let Some(proxy) = self.proxy(upstream) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        // GET and DELETE carry no body.
        let bytes = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut req = http::Request::new(Body::from(bytes.clone()));
        *req.method_mut() = method;
        for name in [
            http::header::AUTHORIZATION,
            http::header::ACCEPT,
            http::header::CONTENT_TYPE,
            http::header::HeaderName::from_static("mcp-protocol-version"),
            http::header::HeaderName::from_static("mcp-method"),
        ] {
            if let Some(v) = template.headers.get(&name) {
                req.headers_mut().insert(name, v.clone());
            }
        }
        let name = body
            .pointer("/params/name")
            .or_else(|| body.pointer("/params/uri"))
            .and_then(Value::as_str)
            .and_then(|n| HeaderValue::from_str(n).ok());
        if let (Some(n), true) = (name, template.headers.contains_key("mcp-name")) {
            req.headers_mut().insert("mcp-name", n);
        }
        if let Some(s) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
            req.headers_mut().insert("mcp-session-id", s);
        }
        if let Some(p) = template.extensions.get::<Principal>() {
            req.extensions_mut().insert(p.clone());
        }
        let version = template
            .headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok());
        if let Ok(peek) =
            ProtocolVersion::from_header(version).and_then(|v| McpPeek::parse(bytes.as_bytes(), v))
        {
            req.extensions_mut().insert(peek);
        }
        proxy.forward(req).await
    }

    async fn handle(&self, req: http::Request<Body>) -> Response {
        let (parts, body) = req.into_parts();
        let owner = parts
            .extensions
            .get::<Principal>()
            .map_or_else(Owner::anonymous, |p| Owner::new(&p.issuer, &p.subject));
        let sid = parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let session = match &sid {
            None => None,
            Some(s) => match self.inner.sessions.get(s, &owner) {
                Some(x) => Some(x),
                None => return GatewayError::SessionNotFound.into_response(&Value::Null),
            },
        };
        match parts.method {
            http::Method::DELETE => {
                let (Some(s), Some(sess)) = (&sid, &session) else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                self.to_every_member(&parts, sess, http::Method::DELETE, Value::Null)
                    .await;
                self.inner.sessions.remove(s, &owner);
                return StatusCode::OK.into_response();
            }
            http::Method::POST => {}
            http::Method::GET => {
                let Some(sess) = session else {
                    return StatusCode::METHOD_NOT_ALLOWED.into_response();
                };
                return self.merged_stream(&parts, &sess).await;
            }
            _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &Value::Null,
                RpcCode::InvalidRequest,
                "body too large",
            );
        };
        let Ok(msg) = serde_json::from_slice::<Value>(&bytes) else {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                RpcCode::Parse,
                "not JSON",
            );
        };
        if !msg.is_object() {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                RpcCode::InvalidRequest,
                "batches are not supported by the aggregate endpoint",
            );
        }
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if method == "initialize" {
            return self.initialize(&parts, &owner, &msg, &id).await;
        }
        if method == "server/discover" {
            return rpc_result(&id, Self::discover_result(), None);
        }
        let Some(sess) = session else {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                RpcCode::InvalidRequest,
                "no MCP session: initialize first",
            );
        };
        if msg.get("method").is_none() {
            // A reply to a request an upstream made (sampling, elicitation): its id says whose.
            let Some((u, original)) = id.as_str().and_then(unwrap_id) else {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    RpcCode::InvalidRequest,
                    "a reply to no request of this endpoint",
                );
            };
            let Some(member) = sess.members.get(&u) else {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    RpcCode::InvalidRequest,
                    "a reply to no request of this endpoint",
                );
            };
            let mut reply = msg.clone();
            reply["id"] = original;
            return self
                .send(&u, &parts, member.as_deref(), http::Method::POST, reply)
                .await;
        }
        if msg.get("id").is_none() {
            // Notifications go to every upstream of the session.
            self.to_every_member(&parts, &sess, http::Method::POST, msg.clone())
                .await;
            return StatusCode::ACCEPTED.into_response();
        }
        match method {
            "ping" => rpc_result(&id, json!({}), None),
            "logging/setLevel" => {
                self.to_every_member(&parts, &sess, http::Method::POST, msg.clone())
                    .await;
                rpc_result(&id, json!({}), None)
            }
            "tools/list" => {
                self.merge_list(&parts, &sess, &msg, &id, "tools", "name")
                    .await
            }
            "prompts/list" => {
                self.merge_list(&parts, &sess, &msg, &id, "prompts", "name")
                    .await
            }
            "resources/list" => {
                self.merge_list(&parts, &sess, &msg, &id, "resources", "name")
                    .await
            }
            "resources/templates/list" => {
                self.merge_list(&parts, &sess, &msg, &id, "resourceTemplates", "name")
                    .await
            }
            "tools/call" | "prompts/get" => {
                let name = msg
                    .pointer("/params/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let members: Vec<&str> = sess.members.keys().map(String::as_str).collect();
                let (u, original) = match split_name(name, &members) {
                    Ok(x) => x,
                    Err(why) => {
                        return rpc_error(StatusCode::OK, &id, RpcCode::InvalidParams, &why.0);
                    }
                };
                let Some(member) = sess.members.get(u) else {
                    return rpc_error(
                        StatusCode::OK,
                        &id,
                        RpcCode::InvalidParams,
                        "unknown server",
                    );
                };
                let mut forwarded = msg.clone();
                forwarded["params"]["name"] = Value::String(original.to_owned());
                relay(
                    u,
                    self.send(u, &parts, member.as_deref(), http::Method::POST, forwarded)
                        .await,
                )
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = msg
                    .pointer("/params/uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match self.route_uri(&sess, uri) {
                    Some(u) => {
                        let member = sess.members.get(&u).cloned().flatten();
                        let resp = self
                            .send(
                                &u,
                                &parts,
                                member.as_deref(),
                                http::Method::POST,
                                msg.clone(),
                            )
                            .await;
                        relay(&u, resp)
                    }
                    None => rpc_error(
                        StatusCode::OK,
                        &id,
                        RpcCode::InvalidParams,
                        "Resource not found (list resources through this endpoint first)",
                    ),
                }
            }
            "completion/complete" => {
                let reference = msg.pointer("/params/ref").cloned().unwrap_or_default();
                let (u, forwarded) = match reference["type"].as_str() {
                    Some("ref/prompt") => {
                        let name = reference["name"].as_str().unwrap_or_default();
                        let members: Vec<&str> = sess.members.keys().map(String::as_str).collect();
                        match split_name(name, &members).ok() {
                            Some((u, original)) => {
                                let mut f = msg.clone();
                                f["params"]["ref"]["name"] = Value::String(original.to_owned());
                                (Some(u.to_owned()), f)
                            }
                            None => (None, msg.clone()),
                        }
                    }
                    Some("ref/resource") => (
                        self.route_uri(&sess, reference["uri"].as_str().unwrap_or_default()),
                        msg.clone(),
                    ),
                    _ => (None, msg.clone()),
                };
                match u.filter(|u| sess.members.contains_key(u)) {
                    Some(u) => {
                        let member = sess.members.get(&u).cloned().flatten();
                        let resp = self
                            .send(&u, &parts, member.as_deref(), http::Method::POST, forwarded)
                            .await;
                        relay(&u, resp)
                    }
                    None => rpc_result(
                        &id,
                        json!({"completion": {"values": [], "hasMore": false}}),
                        None,
                    ),
                }
            }
            other => rpc_error(
                StatusCode::OK,
                &id,
                RpcCode::MethodNotFound,
                &format!(
                    "{} is not available on the aggregate endpoint",
                    crate::error::clip(other)
                ),
            ),
        }
    }

    /// Sends one message to every upstream of the session; their answers are not needed
    /// (notifications, `logging/setLevel`, DELETE).
    async fn to_every_member(
        &self,
        parts: &http::request::Parts,
        sess: &AggSession,
        method: http::Method,
        body: Value,
    ) {
        for (u, member) in &sess.members {
            let _ = self
                .send(u, parts, member.as_deref(), method.clone(), body.clone())
                .await;
        }
    }

    /// `GET`: the session's streams of every upstream that offers one, merged.
    async fn merged_stream(&self, parts: &http::request::Parts, sess: &AggSession) -> Response {
        let mut streams = Vec::new();
        for (u, member) in &sess.members {
            let resp = self
                .send(u, parts, member.as_deref(), http::Method::GET, Value::Null)
                .await;
            if resp.status() == StatusCode::OK && is_sse(&resp) {
                streams.push(Box::pin(rewrite_stream(u.clone(), resp.into_body())));
            }
        }
        if streams.is_empty() {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        crate::sse::sse_response(Body::from_stream(futures::stream::select_all(streams)))
    }

    fn route_uri(&self, sess: &AggSession, uri: &str) -> Option<String> {
        if let Some(u) = sess.uris.lock().ok()?.get(uri) {
            return Some(u.clone());
        }
        sess.templates
            .lock()
            .ok()?
            .iter()
            .find(|(_, t)| template_matches(t, uri))
            .map(|(u, _)| u.clone())
    }

    /// Opens a session with every upstream (with the caller's own `initialize`) and answers
    /// with the union of their capabilities.
    async fn initialize(
        &self,
        parts: &http::request::Parts,
        owner: &Owner,
        msg: &Value,
        id: &Value,
    ) -> Response {
        let mut members = HashMap::new();
        let mut capabilities = serde_json::Map::new();
        let mut version = None;
        for (u, _) in &self.inner.upstreams {
            let resp = self
                .send(u, parts, None, http::Method::POST, msg.clone())
                .await;
            let status = resp.status();
            let member = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let Some(result) = answer(resp, id)
                .await
                .and_then(|a| a.get("result").cloned())
            else {
                tracing::warn!(upstream = %u, %status, "left out of the aggregate session: initialize failed");
                continue;
            };
            if let Some(caps) = result["capabilities"].as_object() {
                for (k, v) in caps {
                    capabilities.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            version = version.or_else(|| result["protocolVersion"].as_str().map(str::to_owned));
            // The caller's `initialized` notification comes later and is fanned out then.
            members.insert(u.clone(), member);
        }
        if members.is_empty() {
            return rpc_error(
                StatusCode::BAD_GATEWAY,
                id,
                RpcCode::Internal,
                "no upstream could be initialized",
            );
        }
        // Server-to-client features are not merged; list changes are not relayed.
        for cap in ["tools", "prompts", "resources"] {
            if let Some(c) = capabilities.get_mut(cap).and_then(Value::as_object_mut) {
                c.remove("listChanged");
                if cap == "resources" {
                    c.remove("subscribe");
                }
            }
        }
        let opened = self.inner.sessions.open(
            owner,
            AggSession {
                members,
                uris: Mutex::default(),
                templates: Mutex::default(),
            },
        );
        let Ok((sid, _)) = opened else {
            return GatewayError::TooManySessions.into_response(id);
        };
        let version = version.unwrap_or_else(|| {
            msg.pointer("/params/protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-11-25")
                .to_owned()
        });
        rpc_result(
            id,
            json!({
                "protocolVersion": version,
                "capabilities": capabilities,
                "serverInfo": {"name": "gatehouse-aggregate", "version": env!("CARGO_PKG_VERSION")},
                "instructions": format!("Tools and prompts of several servers, named <server>{SEPARATOR}<name>."),
            }),
            Some(&sid),
        )
    }

    /// MCP 2026-07-28 `server/discover` (GW-D1), answered here without a session: the aggregate
    /// serves the session-based revisions (a 2026 client learns to fall back to `initialize`), with
    /// tools, prompts and resources. The same for every caller, so cacheable by anyone for a
    /// minute.
    fn discover_result() -> Value {
        let versions: Vec<&str> = gatehouse_core::ProtocolVersion::ALL
            .iter()
            .filter(|v| v.has_sessions())
            .map(|v| v.as_str())
            .collect();
        json!({
            "resultType": "complete",
            "supportedVersions": versions,
            "capabilities": {"tools": {}, "prompts": {}, "resources": {}},
            "instructions": format!("Tools and prompts of several servers, named <server>{SEPARATOR}<name>."),
            "ttlMs": 60_000,
            "cacheScope": "public",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "gatehouse-aggregate", "version": env!("CARGO_PKG_VERSION")}},
        })
    }

    /// Lists from every upstream (every page), prefixed and merged into one page.
    async fn merge_list(
        &self,
        parts: &http::request::Parts,
        sess: &AggSession,
        msg: &Value,
        id: &Value,
        key: &str,
        name_key: &str,
    ) -> Response {
        let mut merged = Vec::new();
        if key == "resourceTemplates"
            && let Ok(mut t) = sess.templates.lock()
        {
            t.clear();
        }
        let mut names: Vec<&String> = sess.members.keys().collect();
        names.sort();
        for u in names {
            let member = sess.members.get(u).cloned().flatten();
            let mut cursor: Option<Value> = None;
            for _ in 0..MAX_PAGES {
                let mut m = msg.clone();
                match &cursor {
                    Some(c) => m["params"] = json!({"cursor": c}),
                    None => {
                        if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut) {
                            p.remove("cursor");
                        }
                    }
                }
                let resp = self
                    .send(u, parts, member.as_deref(), http::Method::POST, m)
                    .await;
                let Some(result) = answer(resp, id)
                    .await
                    .and_then(|a| a.get("result").cloned())
                else {
                    break;
                };
                for mut item in result[key].as_array().cloned().unwrap_or_default() {
                    if key == "resources"
                        && let (Some(uri), Ok(mut map)) = (item["uri"].as_str(), sess.uris.lock())
                    {
                        map.insert(uri.to_owned(), u.clone());
                    }
                    if key == "resourceTemplates"
                        && let (Some(t), Ok(mut list)) =
                            (item["uriTemplate"].as_str(), sess.templates.lock())
                    {
                        list.push((u.clone(), t.to_owned()));
                    }
                    if let Some(n) = item[name_key].as_str() {
                        // A tool or prompt whose name could not be called back is not shown.
                        if matches!(key, "tools" | "prompts") && !valid_member_name(n) {
                            tracing::warn!(upstream = %u, "a listed name cannot be aggregated; left out");
                            continue;
                        }
                        item[name_key] = Value::String(format!("{u}{SEPARATOR}{n}"));
                    }
                    merged.push(item);
                }
                cursor = result.get("nextCursor").cloned().filter(|c| !c.is_null());
                if cursor.is_none() {
                    break;
                }
            }
        }
        // Each member's list was cut down for this caller (GW-C1).
        rpc_result(
            id,
            json!({ key: merged, "resultType": "complete", "cacheScope": "private", "ttlMs": 0 }),
            None,
        )
    }
}

#[cfg(test)]
mod tests;
