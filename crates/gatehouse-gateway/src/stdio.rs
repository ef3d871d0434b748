//! stdio upstreams: one process per MCP session, Streamable HTTP on the caller's side.
use crate::error::{RpcCode, rpc_error};
use crate::sessions::{Owner, SessionTable, TableLimits, WhenOwnerFull};
use crate::spec::StdioSpec;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::sync::{Arc, Mutex};

/// A stdio upstream: one process per MCP session, started by `initialize` (clean environment:
/// `PATH` plus the configured variables), owned by the user who opened it, stopped by DELETE
/// or when the gateway stops. Answers are matched to requests by JSON-RPC id. What the server
/// sends on its own is relayed as Streamable HTTP does: progress for a request on that
/// request's SSE stream; other notifications and requests to the client (sampling,
/// elicitation) on an open request stream, else on the session's GET stream.
pub struct StdioUpstream {
    spec: StdioSpec,
    sessions: SessionTable<StdioSession>,
}

type Lines = tokio::sync::mpsc::UnboundedSender<String>;

/// Where the server's messages go.
#[derive(Default)]
struct Routes {
    /// Open requests by JSON-RPC id (as JSON text), in the order they were sent.
    requests: Vec<(String, Lines)>,
    /// Progress tokens (as JSON text) → the request that gave them.
    progress: std::collections::HashMap<String, String>,
    /// The session's GET stream, if one is open.
    standalone: Option<Lines>,
}

struct StdioSession {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    routes: Arc<Mutex<Routes>>,
    _child: tokio::process::Child,
}

/// Longest wait for a stdio server's answer.
const STDIO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Processes per user, and in all, for one stdio upstream: a caller cannot exhaust the host by
/// opening sessions (GW-14). A session (its process) unused for 30 minutes is stopped when the
/// table needs room.
const STDIO_SESSIONS: TableLimits = TableLimits {
    total: 256,
    per_owner: 8,
    idle: std::time::Duration::from_secs(30 * 60),
    when_owner_full: WhenOwnerFull::Refuse,
};

/// An SSE response carrying each line as one `message` event; it ends when the senders go.
fn sse(rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Response {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
                "event: message\ndata: {line}\n\n"
            ))),
            rx,
        ))
    });
    crate::sse::sse_response(Body::from_stream(events))
}

/// GW-14: the answer when the caller (or everyone) holds every process allowed.
fn too_many(id: Option<serde_json::Value>) -> Response {
    crate::error::GatewayError::TooManySessions.into_response(&id.unwrap_or_default())
}

impl Routes {
    /// Delivers one line from the server to the stream it belongs on.
    fn deliver(&mut self, line: String) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            return;
        };
        let is_answer =
            v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some());
        if is_answer {
            let id = v.get("id").map(|i| i.to_string()).unwrap_or_default();
            if let Some(i) = self.requests.iter().position(|(r, _)| *r == id) {
                let (_, tx) = self.requests.remove(i);
                let _ = tx.send(line);
                self.progress.retain(|_, r| *r != id);
            }
            return;
        }
        let for_request = (v["method"] == "notifications/progress")
            .then(|| self.progress.get(&v["params"]["progressToken"].to_string()))
            .flatten()
            .and_then(|r| self.requests.iter().find(|(id, _)| id == r))
            .map(|(_, tx)| tx.clone());
        let target = for_request
            .or_else(|| self.requests.last().map(|(_, tx)| tx.clone()))
            .or_else(|| self.standalone.clone());
        match target {
            Some(tx) => {
                let _ = tx.send(line);
            }
            None => tracing::debug!("stdio server message with no open stream; dropped"),
        }
    }
}

impl StdioUpstream {
    pub fn new(spec: StdioSpec) -> Self {
        Self {
            spec,
            sessions: SessionTable::new(STDIO_SESSIONS),
        }
    }

    fn spawn(&self) -> std::io::Result<StdioSession> {
        let mut cmd = tokio::process::Command::new(&self.spec.command);
        cmd.args(&self.spec.args)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH".to_owned(), p)))
            .envs(
                self.spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_owned())),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        tracing::info!(command = %self.spec.command, "stdio upstream started");
        let no_pipe = || std::io::Error::other("no pipe to the process");
        let stdin = child.stdin.take().ok_or_else(no_pipe)?;
        let stdout = child.stdout.take().ok_or_else(no_pipe)?;
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let reader = routes.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut r) = reader.lock() {
                    r.deliver(line);
                }
            }
            // The process ended: every open stream ends with it.
            if let Ok(mut r) = reader.lock() {
                *r = Routes::default();
            }
        });
        Ok(StdioSession {
            stdin: tokio::sync::Mutex::new(stdin),
            routes,
            _child: child,
        })
    }

    /// The session `sid` of `owner`, if it is theirs: checked before any message is put to
    /// the policies or any budget spent (an unknown session is 404 first).
    pub fn knows(&self, sid: &str, owner: &Owner) -> bool {
        self.sessions.get(sid, owner).is_some()
    }

    /// Handles one request of `owner` whose body (one message) the proxy has screened.
    pub async fn handle(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        owner: &Owner,
        body: &[u8],
    ) -> (Response, Option<u16>) {
        let sid = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let existing = sid.as_ref().and_then(|s| self.sessions.get(s, owner));
        let wants_sse = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        if *method == http::Method::DELETE {
            return match (sid, existing) {
                (Some(s), Some(_)) => {
                    self.sessions.remove(&s, owner);
                    (StatusCode::OK.into_response(), None)
                }
                _ => (StatusCode::NOT_FOUND.into_response(), None),
            };
        }
        if *method == http::Method::GET {
            // The session's stream for messages that belong to no request.
            return match (existing, wants_sse) {
                (Some(s), true) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    if let Ok(mut r) = s.routes.lock() {
                        r.standalone = Some(tx);
                    }
                    (sse(rx), Some(200))
                }
                (Some(_), false) => (StatusCode::NOT_ACCEPTABLE.into_response(), None),
                (None, _) => (StatusCode::NOT_FOUND.into_response(), None),
            };
        }
        if *method != http::Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED.into_response(), None);
        }
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(body) else {
            return (
                rpc_error(
                    StatusCode::BAD_REQUEST,
                    &serde_json::Value::Null,
                    RpcCode::Parse,
                    "not JSON",
                ),
                None,
            );
        };
        if !msg.is_object() {
            return (
                rpc_error(
                    StatusCode::BAD_REQUEST,
                    &serde_json::Value::Null,
                    RpcCode::InvalidRequest,
                    "batches are not supported for stdio upstreams",
                ),
                None,
            );
        }
        let id = msg.get("id").cloned();
        let is_request = id.is_some() && msg.get("method").is_some();
        let initialize = msg.get("method").and_then(|m| m.as_str()) == Some("initialize");
        let (session, new_id) = match (existing, sid, initialize) {
            (Some(s), _, _) => (s, None),
            (None, None, true) if self.sessions.has_room(owner).is_err() => {
                return (too_many(id), None);
            }
            (None, None, true) => match self.spawn() {
                Ok(s) => match self.sessions.open(owner, s) {
                    Ok((new, s)) => (s, Some(new)),
                    // Dropping the session stops its process.
                    Err(_) => return (too_many(id), None),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "stdio upstream did not start");
                    return (
                        rpc_error(
                            StatusCode::BAD_GATEWAY,
                            &id.unwrap_or_default(),
                            RpcCode::Server,
                            "the upstream server did not start",
                        ),
                        None,
                    );
                }
            },
            // An unknown (or someone else's) session, or no session and no initialize.
            (None, Some(_), _) => {
                return (
                    crate::error::GatewayError::SessionNotFound
                        .into_response(&serde_json::Value::Null),
                    None,
                );
            }
            (None, None, false) => {
                return (
                    rpc_error(
                        StatusCode::BAD_REQUEST,
                        &id.unwrap_or_default(),
                        RpcCode::Server,
                        "no MCP session: initialize first",
                    ),
                    None,
                );
            }
        };
        let rx = is_request.then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            if let (Ok(mut r), Some(id)) = (session.routes.lock(), &id) {
                let key = id.to_string();
                if let Some(token) = msg.pointer("/params/_meta/progressToken") {
                    r.progress.insert(token.to_string(), key.clone());
                }
                r.requests.push((key, tx));
            }
            rx
        });
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = session.stdin.lock().await;
            let line = format!("{msg}\n");
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                return (
                    rpc_error(
                        StatusCode::BAD_GATEWAY,
                        &id.unwrap_or_default(),
                        RpcCode::Server,
                        "the upstream server stopped",
                    ),
                    None,
                );
            }
        }
        let Some(mut rx) = rx else {
            return (StatusCode::ACCEPTED.into_response(), Some(202));
        };
        let mut resp = if wants_sse {
            // Everything for this request, as it comes; the stream ends with the answer.
            sse(rx)
        } else {
            // JSON only: wait for the answer; what comes before it has nowhere to go.
            let answer = tokio::time::timeout(STDIO_TIMEOUT, async {
                let mut last = None;
                while let Some(line) = rx.recv().await {
                    last = Some(line);
                }
                last
            })
            .await;
            match answer {
                Ok(Some(line)) => {
                    ([(http::header::CONTENT_TYPE, "application/json")], line).into_response()
                }
                _ => {
                    return (
                        rpc_error(
                            StatusCode::GATEWAY_TIMEOUT,
                            &id.unwrap_or_default(),
                            RpcCode::Server,
                            "the upstream server did not answer",
                        ),
                        None,
                    );
                }
            }
        };
        if let Some(s) = new_id
            && let Ok(v) = HeaderValue::from_str(&s)
        {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        (resp, Some(200))
    }
}
