//! MCP JSON-RPC peeking: what a guard or gateway must know about a request body to authorize it
//! (method, tool name, id) without terminating the protocol.
use crate::error::CoreError;
use base64::Engine as _;
use serde_json::Value;

/// The MCP revisions Gatehouse speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    V2025_03_26,
    V2025_06_18,
    V2025_11_25,
    V2026_07_28,
}

impl ProtocolVersion {
    pub const ALL: [ProtocolVersion; 4] = [
        Self::V2025_03_26,
        Self::V2025_06_18,
        Self::V2025_11_25,
        Self::V2026_07_28,
    ];

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        Ok(match s {
            "2025-03-26" => Self::V2025_03_26,
            "2025-06-18" => Self::V2025_06_18,
            "2025-11-25" => Self::V2025_11_25,
            "2026-07-28" => Self::V2026_07_28,
            other => return Err(CoreError::ProtocolVersion(other.to_owned())),
        })
    }

    /// TR-10: a missing `MCP-Protocol-Version` header means 2025-03-26.
    pub fn from_header(h: Option<&str>) -> Result<Self, CoreError> {
        h.map_or(Ok(Self::V2025_03_26), Self::parse)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2025_03_26 => "2025-03-26",
            Self::V2025_06_18 => "2025-06-18",
            Self::V2025_11_25 => "2025-11-25",
            Self::V2026_07_28 => "2026-07-28",
        }
    }

    /// JSON-RPC batches exist only in 2025-03-26.
    pub fn allows_batch(self) -> bool {
        self == Self::V2025_03_26
    }

    /// `Mcp-Method` / `Mcp-Name` headers exist from 2026-07-28 on.
    pub fn has_method_headers(self) -> bool {
        self >= Self::V2026_07_28
    }

    /// `initialize` and `Mcp-Session-Id` sessions exist until 2025-11-25 (2026-07-28 is
    /// stateless, with `server/discover`).
    pub fn has_sessions(self) -> bool {
        self < Self::V2026_07_28
    }
}

/// What kind of JSON-RPC message one element of the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    Response,
}

/// One peeked JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct PeekedMessage {
    pub kind: MessageKind,
    pub method: Option<String>,
    pub id: Option<Value>,
    /// `params.name` of `tools/call` and `prompts/get`, `params.uri` of `resources/read`: the
    /// value the 2026-07-28 `Mcp-Name` header carries.
    pub name: Option<String>,
    /// `params` of the methods whose arguments policies look at (`tools/call`, `prompts/get`,
    /// `resources/subscribe`, `resources/unsubscribe`).
    pub params: Option<Value>,
}

impl PeekedMessage {
    /// The tool a `tools/call` invokes.
    pub fn tool_name(&self) -> Option<&str> {
        (self.method.as_deref() == Some("tools/call"))
            .then_some(self.name.as_deref())
            .flatten()
    }
}

/// The peeked body of one POST.
#[derive(Debug, Clone, PartialEq)]
pub struct McpPeek {
    pub messages: Vec<PeekedMessage>,
    pub batch: bool,
}

fn peek_one(v: &Value) -> Result<PeekedMessage, CoreError> {
    let obj = v
        .as_object()
        .ok_or_else(|| CoreError::JsonRpc("message is not a JSON object".into()))?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(CoreError::JsonRpc("\"jsonrpc\" must be \"2.0\"".into()));
    }
    let id = obj.get("id").cloned();
    if let Some(id) = &id
        && !(id.is_string() || id.is_number())
    {
        return Err(CoreError::JsonRpc(
            "\"id\" must be a string or a number".into(),
        ));
    }
    let method = match obj.get("method") {
        None => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(CoreError::JsonRpc("\"method\" must be a string".into())),
    };
    let kind = match (&method, &id) {
        (Some(_), Some(_)) => MessageKind::Request,
        (Some(_), None) => MessageKind::Notification,
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            MessageKind::Response
        }
        _ => {
            return Err(CoreError::JsonRpc(
                "neither a request, a notification nor a response".into(),
            ));
        }
    };
    let params = obj.get("params");
    let name = match method.as_deref() {
        Some("tools/call") | Some("prompts/get") => {
            let n = params.and_then(|p| p.get("name"));
            match n {
                Some(Value::String(s)) => Some(s.clone()),
                None if method.as_deref() == Some("tools/call") => {
                    return Err(CoreError::JsonRpc("tools/call without params.name".into()));
                }
                None => None,
                Some(_) => return Err(CoreError::JsonRpc("params.name must be a string".into())),
            }
        }
        Some("resources/read") => params
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let params = match method.as_deref() {
        Some("tools/call" | "prompts/get" | "resources/subscribe" | "resources/unsubscribe") => {
            params.cloned()
        }
        _ => None,
    };
    Ok(PeekedMessage {
        kind,
        method,
        id,
        name,
        params,
    })
}

/// Decodes a header value that may use the 2026-07-28 sentinel `=?base64?<b64>?=` for
/// non-ASCII content.
pub fn decode_header_value(v: &str) -> Result<String, CoreError> {
    if let Some(inner) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .map_err(|_| CoreError::JsonRpc("bad base64 in MCP header".into()))?;
        String::from_utf8(bytes).map_err(|_| CoreError::JsonRpc("MCP header is not UTF-8".into()))
    } else {
        Ok(v.to_owned())
    }
}

impl McpPeek {
    /// Parses a POST body. A batch (array) is accepted only when the version allows it.
    pub fn parse(body: &[u8], version: ProtocolVersion) -> Result<Self, CoreError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| CoreError::JsonRpc(format!("body is not JSON: {e}")))?;
        match &v {
            Value::Array(items) => {
                if !version.allows_batch() {
                    return Err(CoreError::JsonRpc(format!(
                        "JSON-RPC batches are not allowed in MCP {}",
                        version.as_str()
                    )));
                }
                if items.is_empty() {
                    return Err(CoreError::JsonRpc("empty batch".into()));
                }
                Ok(Self {
                    messages: items.iter().map(peek_one).collect::<Result<_, _>>()?,
                    batch: true,
                })
            }
            _ => Ok(Self {
                messages: vec![peek_one(&v)?],
                batch: false,
            }),
        }
    }

    /// GW-15: the 2026-07-28 `Mcp-Method` / `Mcp-Name` headers must agree with the body; the body
    /// is what gets authorized, so a disagreement is refused (400 `HeaderMismatch`, -32020).
    pub fn check_headers(
        &self,
        mcp_method: Option<&str>,
        mcp_name: Option<&str>,
    ) -> Result<(), CoreError> {
        let Some(first) = self.messages.first() else {
            return Ok(());
        };
        if self.batch && (mcp_method.is_some() || mcp_name.is_some()) {
            return Err(CoreError::JsonRpc(
                "Mcp-Method/Mcp-Name headers on a batch".into(),
            ));
        }
        if let Some(h) = mcp_method {
            let body = first.method.clone().unwrap_or_default();
            if h != body {
                return Err(CoreError::HeaderMismatch {
                    header: "Mcp-Method",
                    header_value: h.to_owned(),
                    body_value: body,
                });
            }
        }
        if let Some(h) = mcp_name {
            let decoded = decode_header_value(h)?;
            let body = first.name.clone().unwrap_or_default();
            if decoded != body {
                return Err(CoreError::HeaderMismatch {
                    header: "Mcp-Name",
                    header_value: decoded,
                    body_value: body,
                });
            }
        }
        Ok(())
    }

    /// Every tool this body calls.
    pub fn tool_names(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().filter_map(PeekedMessage::tool_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::*;

    const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"write_note","arguments":{"text":"x"}}}"#;

    #[test]
    fn peeks_tool_calls_in_every_version() {
        for v in ProtocolVersion::ALL {
            let p = McpPeek::parse(CALL.as_bytes(), v).expect("parses");
            assert_eq!(p.tool_names().collect::<Vec<_>>(), vec!["write_note"]);
            assert_eq!(p.messages[0].id, Some(serde_json::json!(7)));
            assert_eq!(p.messages[0].kind, MessageKind::Request);
        }
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        let batch =
            format!("[{CALL},{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}}]");
        let p = McpPeek::parse(batch.as_bytes(), V2025_03_26).expect("batch ok in 2025-03-26");
        assert!(p.batch);
        assert_eq!(p.messages[1].kind, MessageKind::Notification);
        for v in [V2025_06_18, V2025_11_25, V2026_07_28] {
            assert!(McpPeek::parse(batch.as_bytes(), v).is_err());
        }
        assert!(McpPeek::parse(b"[]", V2025_03_26).is_err());
    }

    #[test]
    fn gw15_headers_must_match_body() {
        let p = McpPeek::parse(CALL.as_bytes(), V2026_07_28).expect("parses");
        assert!(
            p.check_headers(Some("tools/call"), Some("write_note"))
                .is_ok()
        );
        assert!(p.check_headers(None, None).is_ok());
        assert!(matches!(
            p.check_headers(Some("tools/list"), None),
            Err(CoreError::HeaderMismatch { .. })
        ));
        assert!(matches!(
            p.check_headers(Some("tools/call"), Some("whoami")),
            Err(CoreError::HeaderMismatch { .. })
        ));
        // base64 sentinel form of "write_note"
        assert!(
            p.check_headers(None, Some("=?base64?d3JpdGVfbm90ZQ==?="))
                .is_ok()
        );
    }

    #[test]
    fn malformed_bodies() {
        for bad in [
            "",
            "{",
            "42",
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#,
            r#"{"jsonrpc":"2.0"}"#,
        ] {
            assert!(
                McpPeek::parse(bad.as_bytes(), V2025_11_25).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tr10_version_header() {
        assert_eq!(
            ProtocolVersion::from_header(None).expect("default"),
            V2025_03_26
        );
        assert!(ProtocolVersion::from_header(Some("1999-01-01")).is_err());
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()).expect("roundtrip"), v);
        }
    }

    proptest::proptest! {
        #[test]
        fn peek_never_panics(s in "\\PC{0,80}") {
            let _ = McpPeek::parse(s.as_bytes(), V2025_03_26);
        }
    }
}
