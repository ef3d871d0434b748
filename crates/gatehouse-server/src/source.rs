//! Where a request comes from, and budgets counted per source in the store (so every replica
//! on it shares them): what a stranger can make the server do is bounded per address.
use crate::secrets::sha256_hex;
use crate::{AuthServer, OAuthError};
use axum::extract::ConnectInfo;

/// The peer address of a request, when the listener records it.
pub(crate) fn source_ip(ext: &http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The source a limit counts: the address, or its /64 for IPv6 (one host has many).
pub(crate) fn source_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl AuthServer {
    /// Counts an event for `prefix` and this source in a window; true while under `limit`
    /// (always, when the source is unknown).
    pub(crate) async fn source_budget(
        &self,
        prefix: &str,
        ip: Option<std::net::IpAddr>,
        window: i64,
        limit: i64,
    ) -> Result<bool, OAuthError> {
        let Some(ip) = ip else { return Ok(true) };
        let key = sha256_hex(&format!("{prefix}:{}", source_key(ip)));
        let now = self.inner.clock.now_unix();
        let t = self
            .inner
            .store
            .bump_throttle(&key, now, window, |_| 0)
            .await?;
        Ok(t.count <= limit)
    }
}
