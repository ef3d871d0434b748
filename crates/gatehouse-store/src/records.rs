//! What the store holds. Row types mirror the tables; hashes are lowercase hex SHA-256.

/// Where a client's registration came from (shown on the consent screen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    Preregistered,
    Dynamic,
    MetadataDocument,
}

impl ClientSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preregistered => "preregistered",
            Self::Dynamic => "dcr",
            Self::MetadataDocument => "cimd",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "preregistered" => Self::Preregistered,
            "dcr" => Self::Dynamic,
            "cimd" => Self::MetadataDocument,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    /// SHA-256 of the client secret; `None` for public clients.
    pub secret_hash: Option<String>,
    /// `none`, `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
    pub auth_method: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub client_name: Option<String>,
    /// Scopes the client may ask for (`None`: any the server supports).
    pub scope: Option<String>,
    pub source: ClientSource,
    pub application_type: Option<String>,
    /// The full registration metadata as received.
    pub metadata: serde_json::Value,
    pub created_at: i64,
    /// Disabled by an administrator: it gets no authorization and no token until enabled.
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    pub subject: String,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    pub subject: String,
    pub client_id: String,
    /// The resource (RFC 8707) the user approved the client for: consent for one resource never
    /// covers another (T20).
    pub resource: String,
    pub scope: String,
    /// The redirect URIs codes went to with this consent; a loopback redirect on another port is
    /// a new decision (T20).
    pub redirect_uris: Vec<String>,
    pub granted_at: i64,
}

/// A counter in a time window with an optional lock (login throttling, registration limits).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ThrottleRecord {
    pub key_hash: String,
    pub window_start: i64,
    pub count: i64,
    pub locked_until: i64,
    pub expires_at: i64,
}

/// One authorization (a refresh-token family): revoking it ends every token it issued.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GrantRecord {
    pub grant_id: String,
    pub subject: String,
    pub client_id: String,
    pub scope: String,
    pub resource: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Extra claims for the grant's access tokens (JSON object: groups, email, …), from an
    /// upstream identity provider.
    pub claims: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CodeRecord {
    pub code_hash: String,
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub resource: String,
    pub subject: String,
    pub auth_time: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The grant's extra claims (see [`GrantRecord::claims`]).
    pub claims: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshRecord {
    pub token_hash: String,
    pub grant_id: String,
    pub client_id: String,
    pub scope: String,
    pub resource: String,
    pub expires_at: i64,
    pub rotated_at: Option<i64>,
    pub reuse_count: i64,
    /// The token this one was rotated from (`None` for the first of a family). Set by the store.
    pub parent_hash: Option<String>,
    /// The DPoP key (RFC 7638 thumbprint) a public client's token is bound to (RFC 9449 §5).
    pub dpop_jkt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: String,
    /// PKCS#8 DER, base64.
    pub private_der: String,
    /// The public JWK, JSON.
    pub public_jwk: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    pub id_hash: String,
    pub subject: String,
    pub auth_time: i64,
    pub expires_at: i64,
    /// Claims from an upstream identity provider (JSON object), carried into grants.
    pub claims: Option<String>,
}

/// A login in flight at an upstream identity provider.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UpstreamLoginRecord {
    pub state_hash: String,
    /// The pending authorization it continues.
    pub pending_hash: String,
    /// PKCE verifier for the upstream code exchange.
    pub verifier: String,
    pub nonce: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingRecord {
    pub id_hash: String,
    /// The validated authorization request, JSON.
    pub request: String,
    /// Hash of the browser-binding cookie the request was started with.
    pub binding_hash: String,
    pub csrf_hash: String,
    pub expires_at: i64,
}

/// Outcome of redeeming an authorization code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// First use: the code's record (now marked used).
    Fresh(Box<CodeRecord>),
    /// Used before: the grant it issued has been revoked (AS-08, T9).
    Replayed {
        grant_id: String,
    },
    Expired,
    /// Its grant was revoked before it was redeemed (client or user deleted, `admin revoke`):
    /// refused, and the code is left as it was.
    Revoked,
    Unknown,
}

/// Outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// Accepted; the new token was stored. `grace` is true when this was the one duplicate use
    /// allowed shortly after rotation (two racing refreshes).
    Ok {
        old: RefreshRecord,
        /// The grant the family belongs to (not revoked).
        grant: Box<GrantRecord>,
        grace: bool,
    },
    /// A rotated token was used again outside the grace window: the family is revoked.
    Reused {
        grant_id: String,
    },
    /// A rotated token used again within the grace window after its one grace use, while no
    /// successor has been used yet: concurrent refreshes (a retry storm, replicas racing), not
    /// a replay. Refused; nothing is revoked and the winner's chain lives on (issue 16).
    Raced,
    Revoked,
    Expired,
    Unknown,
}

/// A device authorization request (RFC 8628), from the device endpoint to its one token.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceRecord {
    pub device_hash: String,
    pub user_code_hash: String,
    pub client_id: String,
    pub scope: String,
    pub resource: String,
    pub expires_at: i64,
    /// The polling interval the client must keep (grows by 5 s on each `slow_down`).
    pub interval_secs: i64,
    pub last_poll_at: Option<i64>,
    /// `pending`, `approved`, `denied` or `used`.
    pub status: String,
    /// Set at approval.
    pub grant_id: Option<String>,
    pub subject: Option<String>,
    pub claims: Option<String>,
}

/// What a poll of the token endpoint with a device code finds (RFC 8628 §3.5).
#[derive(Debug)]
pub enum DevicePoll {
    /// Approved, now used: the record, with the refresh token stored if one was asked for.
    Issued(Box<DeviceRecord>),
    Pending,
    /// Polled sooner than the interval allows: the interval was raised by 5 s.
    SlowDown,
    Denied,
    Expired,
    /// Used before: the grant it issued has been revoked.
    Replayed {
        grant_id: String,
    },
    /// Its grant was revoked after approval (user or client deleted, `admin revoke`).
    Revoked,
    /// No such code, or another client's.
    Unknown,
}

/// One app a user approved, as their account page and the console show it: a remembered consent
/// or live grants (or both) of one client for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedApp {
    pub client_id: String,
    pub resource: String,
    /// The scopes consented to and held by live grants, space-separated.
    pub scope: String,
    pub granted_at: i64,
    /// When a token was last issued for it (code redeemed or refresh token rotated).
    pub last_used_at: Option<i64>,
    /// Grants not revoked.
    pub live_grants: i64,
}

/// A console action, for the audit trail (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminEvent {
    pub event_id: String,
    pub at: i64,
    /// The administrator (subject) who acted.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Row counts for the console's overview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleCounts {
    pub clients: i64,
    pub users: i64,
    pub consents: i64,
    pub sessions: i64,
}
