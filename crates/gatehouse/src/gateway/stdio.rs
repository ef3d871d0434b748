//! stdio upstreams: one process per MCP session, Streamable HTTP on the caller's side.
use super::{SERVER_ERROR, jsonrpc_error};
use crate::config::UpstreamEntry;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use gatehouse_tokens::Principal;
use http::{HeaderMap, HeaderValue, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A stdio upstream: one process per MCP session, started by `initialize` (clean environment:
/// `PATH` plus the configured variables), owned by the user who opened it, stopped by DELETE
/// or when the gateway stops. Answers are matched to requests by JSON-RPC id. What the server
/// sends on its own is relayed as Streamable HTTP does: progress for a request on that
/// request's SSE stream; other notifications and requests to the client (sampling,
/// elicitation) on an open request stream, else on the session's GET stream.
pub(crate) struct StdioUpstream {
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    sessions: Mutex<std::collections::HashMap<String, Arc<StdioSession>>>,
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
    owner: super::Owner,
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    routes: Arc<Mutex<Routes>>,
    last_used: Mutex<Instant>,
    _child: tokio::process::Child,
}

/// Longest wait for a stdio server's answer.
const STDIO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A session (its process) unused this long is stopped when the next one starts.
const STDIO_IDLE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Processes per user, and in all, for one stdio upstream: a caller cannot exhaust the host by
/// opening sessions (GW-14).
const STDIO_PER_USER: usize = 8;
const STDIO_TOTAL: usize = 256;

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
    super::sse_response(Body::from_stream(events))
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
    pub(crate) fn new(u: &UpstreamEntry) -> Option<Self> {
        let command = u.command.clone()?;
        Some(Self {
            command,
            args: u.args.clone(),
            env: u
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            sessions: Mutex::default(),
        })
    }

    fn spawn(&self, owner: super::Owner) -> Result<StdioSession, String> {
        let mut cmd = tokio::process::Command::new(&self.command);
        cmd.args(&self.args)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH".to_owned(), p)))
            .envs(self.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.command))?;
        tracing::info!(command = %self.command, "stdio upstream started");
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
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
            owner,
            stdin: tokio::sync::Mutex::new(stdin),
            routes,
            last_used: Mutex::new(Instant::now()),
            _child: child,
        })
    }

    pub(crate) async fn handle(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        principal: Option<&Principal>,
        body: &[u8],
    ) -> (Response, Option<u16>) {
        let owner = super::Owner::of(principal);
        let sid = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let existing = sid.as_ref().and_then(|s| {
            self.sessions
                .lock()
                .ok()
                .and_then(|m| m.get(s).cloned())
                .filter(|sess| sess.owner == owner)
        });
        if let Some(s) = &existing
            && let Ok(mut t) = s.last_used.lock()
        {
            *t = Instant::now();
        }
        let wants_sse = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        if *method == http::Method::DELETE {
            return match (sid, existing) {
                (Some(s), Some(_)) => {
                    if let Ok(mut m) = self.sessions.lock() {
                        m.remove(&s);
                    }
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
                jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    &serde_json::Value::Null,
                    SERVER_ERROR,
                    "not JSON",
                ),
                None,
            );
        };
        if !msg.is_object() {
            return (
                jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    &serde_json::Value::Null,
                    SERVER_ERROR,
                    "batches are not supported for stdio upstreams",
                ),
                None,
            );
        }
        let id = msg.get("id").cloned();
        let is_request = id.is_some() && msg.get("method").is_some();
        let initialize = msg.get("method").and_then(|m| m.as_str()) == Some("initialize");
        if existing.is_none() && sid.is_none() && initialize {
            let (mine, all) = match self.sessions.lock() {
                Ok(mut m) => {
                    let before = m.len();
                    m.retain(|_, s| s.last_used.lock().is_ok_and(|t| t.elapsed() < STDIO_IDLE));
                    if m.len() < before {
                        tracing::info!(stopped = before - m.len(), "idle stdio sessions stopped");
                    }
                    (m.values().filter(|s| s.owner == owner).count(), m.len())
                }
                Err(_) => (0, 0),
            };
            if mine >= STDIO_PER_USER || all >= STDIO_TOTAL {
                return (
                    jsonrpc_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &id.unwrap_or_default(),
                        SERVER_ERROR,
                        "too many open sessions for this server; close one (DELETE) first",
                    ),
                    None,
                );
            }
        }
        let (session, new_id) = match (existing, sid, initialize) {
            (Some(s), _, _) => (s, None),
            (None, None, true) => match self.spawn(owner) {
                Ok(s) => {
                    let new = gatehouse_server::random_id();
                    let s = Arc::new(s);
                    if let Ok(mut m) = self.sessions.lock() {
                        m.insert(new.clone(), s.clone());
                    }
                    (s, Some(new))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stdio upstream did not start");
                    return (
                        jsonrpc_error(
                            StatusCode::BAD_GATEWAY,
                            &id.unwrap_or_default(),
                            SERVER_ERROR,
                            "the upstream server did not start",
                        ),
                        None,
                    );
                }
            },
            // An unknown (or someone else's) session, or no session and no initialize.
            (None, Some(_), _) => return (StatusCode::NOT_FOUND.into_response(), None),
            (None, None, false) => {
                return (
                    jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        &id.unwrap_or_default(),
                        SERVER_ERROR,
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
                    jsonrpc_error(
                        StatusCode::BAD_GATEWAY,
                        &id.unwrap_or_default(),
                        SERVER_ERROR,
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
                        jsonrpc_error(
                            StatusCode::GATEWAY_TIMEOUT,
                            &id.unwrap_or_default(),
                            SERVER_ERROR,
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
