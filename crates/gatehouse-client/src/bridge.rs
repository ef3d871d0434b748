//! `gatehouse connect`: a stdio MCP server for the host, a Streamable HTTP client for the remote
//! server, with the login, refresh and step-up of [`crate::transport::McpHttp`] in between.
//!
//! Each line on stdin is one JSON-RPC message. `initialize` is sent first and alone (it yields the
//! MCP session and protocol version); later messages run concurrently so a slow tool call does
//! not hold back a cancellation. Answers, as JSON or SSE, go to stdout one message per line. A
//! request that cannot be delivered gets a JSON-RPC error, so the host never waits forever.
use crate::ClientError;
use crate::transport::{McpHttp, SseParser};
use bytes::Bytes;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The JSON-RPC error the host gets when the bridge cannot deliver a request.
fn error_reply(id: &serde_json::Value, msg: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": -32000, "message": format!("gatehouse: {msg}")},
    })
    .to_string()
}

/// Sends one message and forwards whatever comes back to `out`.
pub async fn forward(
    mcp: &McpHttp,
    line: String,
    out: &mpsc::Sender<String>,
) -> Result<(), ClientError> {
    let msg: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| ClientError::Http(format!("stdin: not JSON: {e}")))?;
    let id = msg
        .get("id")
        .cloned()
        .filter(|_| msg.get("method").is_some());
    let is_initialize = msg.get("method").and_then(|m| m.as_str()) == Some("initialize");
    if is_initialize && let Some(v) = msg["params"]["protocolVersion"].as_str() {
        // Newer revisions want the header on every request, initialize included; the answer's
        // version replaces it.
        mcp.set_protocol_version(v);
    }
    let resp = match mcp.post(Bytes::from(line)).await {
        Ok(r) => r,
        Err(e) => {
            crate::progress(&e);
            if let Some(id) = id {
                let _ = out.send(error_reply(&id, &e.to_string())).await;
            }
            return Ok(());
        }
    };
    let status = resp.status();
    if status == reqwest::StatusCode::ACCEPTED {
        return Ok(());
    }
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        // A JSON-RPC error body is passed on as it is; anything else becomes one.
        let is_jsonrpc = serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|v| v.get("jsonrpc").is_some());
        if is_jsonrpc {
            let _ = out.send(body).await;
        } else if let Some(id) = id {
            let msg = format!("the server answered {status}");
            let _ = out.send(error_reply(&id, &msg)).await;
        }
        return Ok(());
    }
    if ctype.starts_with("text/event-stream") {
        let mut parser = SseParser::default();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await? {
            for data in parser.feed(&chunk) {
                if is_initialize {
                    note_version(mcp, &data);
                }
                let _ = out.send(data).await;
            }
        }
    } else {
        let body = resp.text().await?;
        if is_initialize {
            note_version(mcp, &body);
        }
        let _ = out.send(body).await;
    }
    Ok(())
}

fn note_version(mcp: &McpHttp, body: &str) {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
        && let Some(pv) = v["result"]["protocolVersion"].as_str()
    {
        mcp.set_protocol_version(pv);
    }
}

/// Runs the bridge until stdin closes.
pub async fn run_stdio(mcp: Arc<McpHttp>) -> Result<(), ClientError> {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = rx.recv().await {
            // One message per line: JSON from the server has no raw newlines worth keeping.
            line.retain(|c| c != '\n' && c != '\r');
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| ClientError::Http(format!("stdin: {e}")))?
    {
        let line = line.trim().to_owned();
        if line.is_empty() {
            continue;
        }
        let first = mcp.mcp_session_id().is_none() && line.contains("\"initialize\"");
        if first {
            // Before anything else: the session id and protocol version come from here.
            if let Err(e) = forward(&mcp, line, &tx).await {
                crate::progress(&e);
            }
        } else {
            let (mcp, tx) = (mcp.clone(), tx.clone());
            tasks.spawn(async move {
                if let Err(e) = forward(&mcp, line, &tx).await {
                    crate::progress(&e);
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    mcp.delete().await;
    drop(tx);
    let _ = writer.await;
    Ok(())
}
