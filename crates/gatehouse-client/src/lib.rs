//! The client half of MCP authorization: what a host needs to reach a protected remote MCP server.
//!
//! - [`discovery`]: from a 401 to a checked authorization server (PRM order, `resource` check,
//!   RFC 8414 / OIDC order, exact `issuer`, S256 required, 2025-03-26 fallbacks).
//! - [`registration`]: pre-registered → Client ID Metadata Document → DCR, per issuer.
//! - [`login`]: PKCE S256 + `resource` + `state` + `iss` on a loopback redirect; the authorization
//!   URL is validated and opened without a shell (CVE-2025-6514).
//! - [`cache`]: tokens on disk (0600, atomic, optionally sealed), single-flight refresh across
//!   processes with a file lock.
//! - [`session`]: tokens for one server: refresh before expiry, re-login instead of loops, step-up.
//! - [`transport`] / [`bridge`]: Streamable HTTP with auth, and the stdio ↔ HTTP bridge.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod cache;
pub mod discovery;
pub mod dpop;
mod error;
pub mod login;
pub mod opener;
pub mod registration;
pub mod safety;
pub mod session;
pub mod tokens;
pub mod transport;

pub use error::ClientError;
pub use session::{AssertionSource, ClientConfig, Session};

/// Progress for the person at the terminal: always stderr, never a secret.
pub(crate) fn progress(msg: impl std::fmt::Display) {
    eprintln!("gatehouse: {msg}");
}
