//! Gatehouse core: the wire types and pure rules of MCP authorization. No I/O happens here; every
//! value that arrives from the network is parsed into one of these types at the edge, and the rest
//! of Gatehouse works on the types.
#![forbid(unsafe_code)]

pub mod challenge;
pub mod clock;
pub mod error;
pub mod jsonrpc;
pub mod metadata;
pub mod pkce;
pub mod redirect;
pub mod scope;
pub mod secret;
pub mod text;
pub mod url;

pub use challenge::{BearerChallenge, BearerError, Challenge};
pub use clock::{Clock, SystemClock};
pub use error::{CoreError, OAuthErrorCode};
pub use jsonrpc::{McpPeek, ProtocolVersion};
pub use metadata::{AuthorizationServerMetadata, ProtectedResourceMetadata};
pub use pkce::{PkceChallenge, PkceVerifier};
pub use redirect::RedirectUri;
pub use scope::{Scope, ScopeSet};
pub use secret::{SecretString, hex, random_id, random_token, sha256_hex};
pub use url::{AudiencePolicy, Issuer, Resource};
