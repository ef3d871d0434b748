//! Streamable HTTP requests with the session's bearer token, and what to do when the server
//! refuses it: 401 → refresh once or log in (CL-23); 403 insufficient_scope → step up (CL-11);
//! never more than the configured number of authorizations for one request.
use crate::ClientError;
use crate::session::Session;
use base64::Engine;
use bytes::Bytes;
use gatehouse_core::{BearerChallenge, BearerError, Challenge, McpPeek, ProtocolVersion};
use std::sync::Arc;

pub struct McpHttp {
    session: Arc<Session>,
    http: reqwest::Client,
    url: String,
    mcp_session: std::sync::Mutex<Option<String>>,
    protocol_version: std::sync::Mutex<Option<String>>,
    /// The latest `DPoP-Nonce` the server gave.
    rs_nonce: std::sync::Mutex<Option<String>>,
}

/// A `DPoP error="use_dpop_nonce"` challenge.
fn dpop_nonce_challenge(resp: &reqwest::Response) -> bool {
    challenges(resp)
        .iter()
        .any(|c| c.is_scheme("dpop") && c.param("error") == Some("use_dpop_nonce"))
}

/// Every challenge of every `WWW-Authenticate` line (CL-01); none when they do not parse.
fn challenges(resp: &reqwest::Response) -> Vec<Challenge> {
    let values: Vec<&str> = resp
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Challenge::parse_all(values.iter().copied()).unwrap_or_default()
}

/// The Bearer challenge in a response, if any (CL-01).
pub fn challenge_of(resp: &reqwest::Response) -> Option<BearerChallenge> {
    BearerChallenge::from_challenges(&challenges(resp)).and_then(Result::ok)
}

impl McpHttp {
    pub fn new(session: Arc<Session>) -> Result<Self, ClientError> {
        Ok(Self {
            url: session.server_url().to_owned(),
            session,
            // Redirects are not followed, so the token never goes to another origin (CL-31).
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
                .build()?,
            mcp_session: std::sync::Mutex::new(None),
            protocol_version: std::sync::Mutex::new(None),
            rs_nonce: std::sync::Mutex::new(None),
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn set_protocol_version(&self, v: &str) {
        if let Ok(mut p) = self.protocol_version.lock() {
            *p = Some(v.to_owned());
        }
    }

    pub fn mcp_session_id(&self) -> Option<String> {
        self.mcp_session.lock().ok().and_then(|s| s.clone())
    }

    async fn decorate(
        &self,
        mut req: reqwest::RequestBuilder,
        method: &str,
        token: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        // CL-12: the token goes in the header on every request, never in the URL.
        if let Some(t) = token {
            match self.session.dpop_for(t).await {
                // RFC 9449 §7.1: the DPoP scheme and a fresh proof bound to this token.
                Some(key) => {
                    let nonce = self.rs_nonce.lock().ok().and_then(|n| n.clone());
                    req = req.header("authorization", format!("DPoP {t}")).header(
                        "dpop",
                        key.proof(method, &self.url, Some(t), nonce.as_deref())?,
                    );
                }
                None => req = req.bearer_auth(t),
            }
        }
        if let Some(s) = self.mcp_session_id() {
            req = req.header("mcp-session-id", s);
        }
        if let Some(v) = self.protocol_version.lock().ok().and_then(|p| p.clone()) {
            req = req.header("mcp-protocol-version", v);
        }
        Ok(req)
    }

    /// 2026-07-28: `Mcp-Method` and `Mcp-Name` mirror the body of a single message.
    fn method_headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let version = self.protocol_version.lock().ok().and_then(|p| p.clone());
        let Some(v) = version.and_then(|v| ProtocolVersion::parse(&v).ok()) else {
            return Vec::new();
        };
        if !v.has_method_headers() {
            return Vec::new();
        }
        let Ok(peek) = McpPeek::parse(body, v) else {
            return Vec::new();
        };
        let Some(m) = peek.messages.first().filter(|_| !peek.batch) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(method) = &m.method {
            out.push(("mcp-method", method.clone()));
        }
        if let Some(name) = &m.name {
            let plain = name.chars().all(|c| (' '..='~').contains(&c));
            out.push((
                "mcp-name",
                if plain {
                    name.clone()
                } else {
                    format!(
                        "=?base64?{}?=",
                        base64::engine::general_purpose::STANDARD.encode(name)
                    )
                },
            ));
        }
        out
    }

    /// POSTs one JSON-RPC message (or batch). Returns the server's answer (JSON, SSE or 202).
    pub async fn post(&self, body: Bytes) -> Result<reqwest::Response, ClientError> {
        let extra = self.method_headers(&body);
        let mut token = self.session.current_token().await?;
        let mut authorizations = 0u8;
        let (mut tried_refresh, mut logged_in, mut nonce_retried) = (false, false, false);
        loop {
            let mut req = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.clone());
            for (k, v) in &extra {
                req = req.header(*k, v);
            }
            let resp = self
                .decorate(req, "POST", token.as_deref())
                .await?
                .send()
                .await?;
            let server_nonce = resp
                .headers()
                .get("dpop-nonce")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // RFC 9449 §9: the resource server wants a nonce in the proof; retry once with it.
            let nonce_asked =
                resp.status() == reqwest::StatusCode::UNAUTHORIZED && dpop_nonce_challenge(&resp);
            if let Some(n) = server_nonce
                && let Ok(mut slot) = self.rs_nonce.lock()
            {
                *slot = Some(n);
            }
            if nonce_asked && !nonce_retried {
                nonce_retried = true;
                continue;
            }
            if let Some(id) = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                && let Ok(mut s) = self.mcp_session.lock()
            {
                *s = Some(id.to_owned());
            }
            let challenge = challenge_of(&resp);
            match resp.status().as_u16() {
                401 => {
                    if let Some(sent) = token.as_deref()
                        && !tried_refresh
                    {
                        tried_refresh = true;
                        if let Some(t) = self.session.refresh_after_refusal(sent).await? {
                            token = Some(t);
                            continue;
                        }
                    }
                    if logged_in {
                        // A token fresh from a login refused again: no loop (CL-23).
                        return Err(ClientError::Server {
                            status: 401,
                            body: "the server refused a freshly issued token".into(),
                        });
                    }
                    if authorizations >= self.session.max_authorizations() {
                        return Err(ClientError::StepUpExhausted(authorizations));
                    }
                    authorizations += 1;
                    logged_in = true;
                    token = Some(self.session.login(challenge.as_ref(), false).await?);
                }
                403 if challenge
                    .as_ref()
                    .is_some_and(|c| c.error == Some(BearerError::InsufficientScope)) =>
                {
                    if authorizations >= self.session.max_authorizations() {
                        return Err(ClientError::StepUpExhausted(authorizations));
                    }
                    authorizations += 1;
                    let c = challenge.unwrap_or_default();
                    token = Some(self.session.insufficient_scope(&c).await?);
                }
                _ => return Ok(resp),
            }
        }
    }

    /// Ends the MCP session (best effort).
    pub async fn delete(&self) {
        if self.mcp_session_id().is_none() {
            return;
        }
        let token = self.session.current_token().await.ok().flatten();
        if let Ok(req) = self
            .decorate(self.http.delete(&self.url), "DELETE", token.as_deref())
            .await
        {
            let _ = req.send().await;
        }
    }
}

/// Reads `text/event-stream` into JSON-RPC message payloads.
#[derive(Default)]
pub struct SseParser {
    line: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the `data` of every event completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        self.line.push_str(&String::from_utf8_lossy(chunk));
        while let Some(i) = self.line.find('\n') {
            let mut l: String = self.line.drain(..=i).collect();
            l.pop();
            if l.ends_with('\r') {
                l.pop();
            }
            if l.is_empty() {
                if !self.data.is_empty() {
                    out.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(d) = l.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
            }
            // `event:`, `id:`, `retry:` and comments carry nothing a stdio host needs.
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: message\r\ndata: {\"a\"").is_empty());
        let got = p.feed(b":1}\r\n\r\n: comment\ndata: x\ndata: y\n\n");
        assert_eq!(got, ["{\"a\":1}", "x\ny"]);
    }
}
