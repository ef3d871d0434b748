//! GW-10 for upstream MCP servers. Upstreams are chosen by the operator, not by strangers, so
//! internal addresses are normal (loopback, private, carrier-grade NAT, unique-local); but
//! link-local / cloud metadata, multicast, unspecified, reserved and transition ranges never
//! are, in any spelling of an address literal (`2852039166`, `[::ffff:a9fe:a9fe]`) and whatever
//! a host name resolves to, on every resolution (DNS rebinding).
use std::net::IpAddr;
use std::sync::Arc;

/// Why an upstream may not be reached at `ip`, if it may not.
pub fn upstream_ip_refused(ip: IpAddr) -> Option<&'static str> {
    let why = crate::forbidden_reason(ip)?;
    let internal = why == "loopback"
        || why.starts_with("private")
        || why.starts_with("carrier-grade NAT")
        || why.starts_with("unique-local");
    (!internal).then_some(why)
}

/// [`upstream_ip_refused`] for a URL's address literal (host names are checked when resolved).
pub fn upstream_address_refused(url: &url::Url) -> Option<&'static str> {
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    upstream_ip_refused(ip)
}

/// The client for upstream MCP servers: no redirects (a redirect could carry the upstream
/// credential elsewhere), no time limit on bodies (SSE streams last), names resolved through
/// [`UpstreamResolver`].
pub fn upstream_client(user_agent: &str) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(UpstreamResolver))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .user_agent(user_agent)
        .build()
}

/// Refuses a whole answer when any address is one [`upstream_ip_refused`] refuses.
pub struct UpstreamResolver;

impl reqwest::dns::Resolve for UpstreamResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((a, why)) = addrs
                .iter()
                .find_map(|a| upstream_ip_refused(a.ip()).map(|w| (a, w)))
            {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to {} ({why})", a.ip()).into();
                return Err(e);
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gw10_upstream_names_never_resolve_to_metadata_addresses() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = |n: &str| reqwest::dns::Name::from_str(n).expect("name");
        let ok = UpstreamResolver
            .resolve(name("localhost"))
            .await
            .expect("loopback is a normal upstream");
        assert!(ok.into_iter().count() > 0);
        for bad in ["169.254.169.254", "224.0.0.1"] {
            let e = UpstreamResolver
                .resolve(name(bad))
                .await
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains("resolves to"), "{e}");
        }
    }

    #[test]
    fn gw10_upstream_urls_to_metadata_and_odd_ranges_are_refused() {
        let refused = |u: &str| upstream_address_refused(&url::Url::parse(u).expect("url"));
        for bad in [
            "http://169.254.169.254/mcp",
            "http://2852039166/mcp",
            "http://0xa9fea9fe/mcp",
            "http://[::ffff:a9fe:a9fe]/mcp",
            "http://[fe80::1]/mcp",
            "http://0.0.0.0/mcp",
            "http://[::]/mcp",
            "http://224.0.0.1/mcp",
        ] {
            assert!(refused(bad).is_some(), "{bad}");
        }
        for fine in [
            "http://127.0.0.1:3001/mcp",
            "http://10.1.2.3/mcp",
            "http://192.168.0.5/mcp",
            "http://[fd00::5]/mcp",
            "https://tickets.internal/mcp",
        ] {
            assert!(refused(fine).is_none(), "{fine}");
        }
    }
}
