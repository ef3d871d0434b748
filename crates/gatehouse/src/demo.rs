//! The demo MCP server behind the guard: a handful of real tools needing different scopes. Notes
//! are kept per (issuer, subject) from the validated token, never per session (RS-21).
use gatehouse_guard::Principal;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Scope every demo call needs.
pub(crate) const BASE_SCOPE: &str = "mcp:basic";
/// Scope `notes_add` needs in addition.
pub(crate) const WRITE_SCOPE: &str = "notes:write";

type Notes = Arc<Mutex<HashMap<(String, String), Vec<String>>>>;

#[derive(Clone)]
pub(crate) struct DemoServer {
    notes: Notes,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct AddParams {
    /// First addend.
    pub(crate) a: i64,
    /// Second addend.
    pub(crate) b: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct AddResult {
    pub(crate) sum: i64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct EchoParams {
    pub(crate) text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct NoteParams {
    /// The note to store (at most 4096 characters).
    pub(crate) text: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct WhoAmI {
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) client_id: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) authenticated_by: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct NoteList {
    pub(crate) notes: Vec<String>,
}

/// The principal the guard attached to the HTTP request carrying this call.
fn principal(parts: &http::request::Parts) -> Result<Principal, ErrorData> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("no authenticated principal on the request", None))
}

#[tool_router]
impl DemoServer {
    pub(crate) fn new(notes: Notes) -> Self {
        Self { notes }
    }

    #[tool(description = "Add two integers.")]
    fn add(&self, Parameters(p): Parameters<AddParams>) -> Result<Json<AddResult>, ErrorData> {
        p.a.checked_add(p.b)
            .map(|sum| Json(AddResult { sum }))
            .ok_or_else(|| ErrorData::invalid_params("overflow", None))
    }

    #[tool(description = "Echo the text back.")]
    fn echo(&self, Parameters(p): Parameters<EchoParams>) -> String {
        p.text
    }

    #[tool(
        description = "Who the server thinks you are: issuer, subject, client and scopes from your token."
    )]
    fn whoami(
        &self,
        rmcp::handler::server::common::Extension(parts): rmcp::handler::server::common::Extension<
            http::request::Parts,
        >,
    ) -> Result<Json<WhoAmI>, ErrorData> {
        let p = principal(&parts)?;
        Ok(Json(WhoAmI {
            issuer: p.issuer,
            subject: p.subject,
            client_id: p.client_id,
            scopes: p.scopes.to_vec(),
            authenticated_by: match p.source {
                gatehouse_guard::PrincipalSource::Jwt => "jwt".into(),
                gatehouse_guard::PrincipalSource::Introspection => "introspection".into(),
                gatehouse_guard::PrincipalSource::ApiKey { name } => format!("api-key:{name}"),
            },
        }))
    }

    #[tool(description = "List your notes.")]
    fn notes_list(
        &self,
        rmcp::handler::server::common::Extension(parts): rmcp::handler::server::common::Extension<
            http::request::Parts,
        >,
    ) -> Result<Json<NoteList>, ErrorData> {
        let p = principal(&parts)?;
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Json(NoteList {
            notes: notes
                .get(&(p.issuer, p.subject))
                .cloned()
                .unwrap_or_default(),
        }))
    }

    #[tool(description = "Add a note (needs the notes:write scope).")]
    fn notes_add(
        &self,
        rmcp::handler::server::common::Extension(parts): rmcp::handler::server::common::Extension<
            http::request::Parts,
        >,
        Parameters(n): Parameters<NoteParams>,
    ) -> Result<Json<NoteList>, ErrorData> {
        let p = principal(&parts)?;
        if n.text.chars().count() > 4096 {
            return Err(ErrorData::invalid_params(
                "note longer than 4096 characters",
                None,
            ));
        }
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        let list = notes.entry((p.issuer, p.subject)).or_default();
        if list.len() >= 100 {
            return Err(ErrorData::invalid_params(
                "at most 100 notes per user",
                None,
            ));
        }
        list.push(n.text);
        Ok(Json(NoteList {
            notes: list.clone(),
        }))
    }
}

#[tool_handler]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("gatehouse-demo", env!("CARGO_PKG_VERSION")))
            .with_instructions("Gatehouse demo server: add, echo, whoami, notes_list need mcp:basic; notes_add also needs notes:write.")
    }
}
