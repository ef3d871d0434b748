//! The MCP-aware gateway: one front door for many MCP servers.
//!
//! Each upstream is served on its own guarded route by a [`Proxy`]; an optional [`Aggregate`]
//! serves every upstream as one server through those same proxies. What each part rules out:
//! - **T2 / GW-07, session hijack**: every session ([`SessionTable`]) belongs to the [`Owner`]
//!   of the token that opened it; another owner's id is "not found".
//! - **T3 / GW-01, token passthrough**: an [`UpstreamRequest`] is made only from a [`Permit`],
//!   an allow-list of the caller's headers and the upstream's own [`Credentials`].
//! - **T22, batch smuggling**: every message of a JSON-RPC batch is screened, limited, audited
//!   and (for lists) filtered as its own call; batches are capped, and allowed only where the
//!   session's protocol version has them ([`authorize::screen`]).
//! - **GW-09, third-party tokens**: per-user grants stay sealed in a [`GrantVault`] and go only
//!   to their upstream ([`Connect`]).
//! - **GW-10, SSRF**: upstream addresses are checked on every resolution
//!   (`gatehouse_fetch::upstream`).
//! - **GW-11, Streamable HTTP across the hop**: session ids mapped per hop, re-initialization,
//!   SSE streamed unbuffered ([`sse`]).
//! - **GW-14, stdio servers**: processes per user and in all are capped ([`StdioUpstream`]).
//! - **GW-T1, tracing**: W3C trace context continues (or starts) across the hop and names the
//!   trace in the audit log ([`trace`]).
//!
//! The pipeline's stages and their order are documented on [`proxy`].
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod answer;
pub mod audit;
pub mod authorize;
pub mod connect;
pub mod error;
mod flows;
pub mod limits;
mod pages;
pub mod proxy;
pub mod sessions;
pub mod shared;
pub mod spec;
pub mod sse;
pub mod stdio;
pub mod trace;
pub mod upstream;
pub mod vault;

pub use aggregate::Aggregate;
pub use audit::{Audit, RefusalAudit, audit_refusals, verify_chain};
pub use authorize::{Caller, Permit};
pub use connect::{Backend, Connect, ConnectSpec};
pub use error::{GatewayError, Outcome, RpcCode};
pub use limits::RateLimits;
pub use proxy::{DEFAULT_SESSIONS, Proxy, ProxyDeps};
pub use sessions::{Owner, SessionTable, TableLimits, WhenOwnerFull};
pub use shared::SharedState;
pub use spec::GatewaySpec;
pub use stdio::StdioUpstream;
pub use upstream::{Credentials, UpstreamRequest};
pub use vault::{GrantVault, VaultError};
