//! The one outbound HTTP client of Gatehouse, for every URL that comes from the network (JWKS,
//! authorization-server metadata, introspection, later CIMD and upstreams).
//!
//! Threat ruled out (THREATS T6, CL-24, AS-21, GW-10): server-side request forgery. An attacker who
//! chooses a URL must not make Gatehouse connect to loopback, private, link-local (cloud
//! metadata), CGNAT, unique-local or multicast addresses. The rules:
//! - https only; `http` only for an authority listed in the `dangerous_allow_loopback` option.
//! - IP literals (every spelling the URL parser accepts: decimal, octal, hex, short forms,
//!   IPv4-mapped IPv6) are checked before connecting, because the connector never asks the
//!   resolver about them.
//! - Host names go through [`GuardedResolver`], which refuses the whole answer when any address
//!   is forbidden; the connector connects only to the addresses it returned, so DNS rebinding
//!   between check and connect is impossible.
//! - No redirect is followed unless asked for; each hop is checked like the first URL.
//! - Environment proxies are ignored (a proxy would resolve the name itself).
//! - Bodies are read with a size cap; every request has a time limit.
#![forbid(unsafe_code)]

mod ip;
pub mod upstream;

pub use ip::forbidden_reason;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a fetch failed. `Blocked` is the SSRF refusal; the rest are ordinary failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("refused to fetch {url}: {reason}")]
    Blocked { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with a redirect (HTTP {status}); redirects are not followed")]
    Redirect { url: String, status: u16 },
    #[error("{url}: response body exceeds {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: response is not valid JSON of the expected shape: {message}")]
    Decode { url: String, message: String },
    #[error("invalid fetch configuration: {0}")]
    Config(String),
}

/// The refusal carried through reqwest's error chain from the resolver or redirect policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// Limits and exceptions for outbound fetches.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// 0 (the default) follows no redirect at all.
    pub max_redirects: usize,
    /// DANGEROUS: loopback authorities (`127.0.0.1:8081`, `localhost:9000`) that may be fetched,
    /// over plain http too. Meant for `gatehouse dev` and tests with a local authorization
    /// server; anything that is not loopback is rejected when the fetcher is built.
    pub dangerous_allow_loopback: Vec<String>,
    /// Extra trust anchors (PEM), added to the platform's: for operators whose client metadata
    /// documents or identity providers sit behind a private certificate authority.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 0,
            dangerous_allow_loopback: Vec::new(),
            extra_roots_pem: None,
        }
    }
}

/// Host names that are cloud metadata services even when they resolve elsewhere.
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

#[derive(Debug, Clone, Default)]
struct Exceptions {
    /// Lower-cased `host:port` authorities.
    authorities: HashSet<String>,
    /// Lower-cased host names (not IPs) among them, for the resolver.
    names: HashSet<String>,
}

fn authority_of(u: &url::Url) -> Option<String> {
    let host = match u.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => format!("[{ip}]"),
    };
    Some(format!("{host}:{}", u.port_or_known_default()?))
}

impl Exceptions {
    fn build(list: &[String]) -> Result<Self, FetchError> {
        let mut out = Self::default();
        for a in list {
            let u = url::Url::parse(&format!("http://{a}"))
                .map_err(|e| FetchError::Config(format!("bad loopback authority {a:?}: {e}")))?;
            let loopback = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if !loopback {
                return Err(FetchError::Config(format!(
                    "{a:?} is not a loopback authority; only loopback may be excepted"
                )));
            }
            let auth = authority_of(&u)
                .ok_or_else(|| FetchError::Config(format!("bad loopback authority {a:?}")))?;
            if let Some(url::Host::Domain(d)) = u.host() {
                out.names.insert(d.to_ascii_lowercase());
            }
            out.authorities.insert(auth);
        }
        Ok(out)
    }

    fn allows(&self, u: &url::Url) -> bool {
        authority_of(u).is_some_and(|a| self.authorities.contains(&a))
    }
}

/// Checks a URL before any connection is made. Public so that callers can refuse a URL early
/// (for example when it is configured) with the same rules the fetcher applies.
pub fn check_url(u: &url::Url, policy: &FetchPolicy) -> Result<(), FetchError> {
    let ex = Exceptions::build(&policy.dangerous_allow_loopback)?;
    check_url_with(u, &ex)
}

fn check_url_with(u: &url::Url, ex: &Exceptions) -> Result<(), FetchError> {
    let blocked = |reason: &str| FetchError::Blocked {
        url: u.as_str().to_owned(),
        reason: reason.to_owned(),
    };
    let excepted = ex.allows(u);
    match u.scheme() {
        "https" => {}
        "http" if excepted => {}
        "http" => return Err(blocked("plain http is not allowed (https only)")),
        _ => return Err(blocked("only https URLs are fetched")),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(blocked("URLs with user information are not fetched"));
    }
    match u.host() {
        None => Err(blocked("no host")),
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), excepted).map_err(|r| blocked(&r)),
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), excepted).map_err(|r| blocked(&r)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if (d == "localhost" || d.ends_with(".localhost")) && !excepted {
                return Err(blocked("localhost is a loopback name"));
            }
            if METADATA_HOSTS.contains(&d.as_str()) {
                return Err(blocked("cloud metadata host"));
            }
            Ok(())
        }
    }
}

fn check_ip(ip: IpAddr, excepted: bool) -> Result<(), String> {
    match forbidden_reason(ip) {
        None => Ok(()),
        Some(_) if excepted && ip::is_loopback(ip) => Ok(()),
        Some(reason) => Err(format!("{ip} is a {reason} address")),
    }
}

/// The resolver behind every outbound connection: the whole answer is refused when any address
/// in it is forbidden.
#[derive(Debug, Clone)]
struct GuardedResolver {
    loopback_names: Arc<HashSet<String>>,
    timeout: Duration,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let loopback_ok = self.loopback_names.contains(&host);
        let timeout = self.timeout;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), 0)))
                    .await
                    .map_err(|_| -> Box<dyn std::error::Error + Send + Sync> {
                        Refusal(format!("resolving {host} timed out")).into()
                    })??
                    .collect();
            if addrs.is_empty() {
                return Err(Refusal(format!("{host} has no address")).into());
            }
            for a in &addrs {
                if let Err(r) = check_ip(a.ip(), loopback_ok) {
                    return Err(Refusal(format!("{host} resolves to {r}")).into());
                }
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// The resolver the fetcher connects through, with no loopback exceptions: every name that
/// resolves to a loopback, private, link-local or otherwise non-public address is refused at
/// connect time (no window between a check and the connection). For other clients that must
/// reach only public addresses (`gatehouse check`).
pub fn public_only_resolver(timeout: Duration) -> Arc<dyn reqwest::dns::Resolve> {
    Arc::new(GuardedResolver {
        loopback_names: Arc::new(HashSet::new()),
        timeout,
    })
}

/// A fetched response body with what HTTP caching says about it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub body: bytes::Bytes,
    /// `Cache-Control: max-age`, if present (and not `no-store`/`no-cache`).
    pub max_age: Option<Duration>,
    pub content_type: Option<String>,
}

impl Fetched {
    pub fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        serde_json_from(&self.body, url)
    }
}

fn serde_json_from<T: serde::de::DeserializeOwned>(b: &[u8], url: &str) -> Result<T, FetchError> {
    serde_json::from_slice(b).map_err(|e| FetchError::Decode {
        url: url.to_owned(),
        message: e.to_string(),
    })
}

fn cache_max_age(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let cc = h.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut max_age = None;
    for d in cc.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

/// The SSRF-safe client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<FetchPolicy>,
    exceptions: Arc<Exceptions>,
}

impl Fetcher {
    pub fn new(policy: FetchPolicy) -> Result<Self, FetchError> {
        let exceptions = Arc::new(Exceptions::build(&policy.dangerous_allow_loopback)?);
        let resolver = GuardedResolver {
            loopback_names: Arc::new(exceptions.names.clone()),
            timeout: policy.connect_timeout,
        };
        let redirect = if policy.max_redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            let ex = exceptions.clone();
            let max = policy.max_redirects;
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max {
                    return attempt.error(Refusal(format!("more than {max} redirects")));
                }
                match check_url_with(attempt.url(), &ex) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(Refusal(format!("redirect {e}"))),
                }
            })
        };
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &policy.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| FetchError::Config(format!("extra CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(FetchError::Config(
                    "extra CA file holds no PEM certificate".into(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .dns_resolver(Arc::new(resolver))
            .no_proxy()
            .redirect(redirect)
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Config(e.to_string()))?;
        Ok(Self {
            client,
            policy: Arc::new(policy),
            exceptions,
        })
    }

    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Checks a URL string against this fetcher's rules without connecting.
    pub fn check(&self, url: &str) -> Result<url::Url, FetchError> {
        let u = url::Url::parse(url).map_err(|e| FetchError::Blocked {
            url: url.to_owned(),
            reason: format!("not a URL: {e}"),
        })?;
        check_url_with(&u, &self.exceptions)?;
        Ok(u)
    }

    /// GET with `Accept: application/json`.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        self.get_capped(url, self.policy.max_body_bytes).await
    }

    /// [`Fetcher::get`] with a smaller body cap for this one document (at most the policy's):
    /// reading stops as soon as the cap is passed, so a large answer costs no more than `limit`.
    pub async fn get_capped(&self, url: &str, limit: usize) -> Result<Fetched, FetchError> {
        let u = self.check(url)?;
        let req = self
            .client
            .get(u)
            .header(reqwest::header::ACCEPT, "application/json");
        self.send(url, req, limit.min(self.policy.max_body_bytes))
            .await
    }

    /// GET and decode JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<(T, Fetched), FetchError> {
        let f = self.get(url).await?;
        Ok((f.json(url)?, f))
    }

    /// POST a form (RFC 7662 introspection and similar), optionally with HTTP Basic client auth.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<Fetched, FetchError> {
        let u = self.check(url)?;
        let mut req = self
            .client
            .post(u)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form);
        if let Some((id, secret)) = basic {
            // RFC 6749 §2.3.1: form-urlencode the parts before Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(id), Some(enc(secret)));
        }
        self.send(url, req, self.policy.max_body_bytes).await
    }

    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Fetched, FetchError> {
        let mut resp = req.send().await.map_err(|e| self.map_err(url, &e))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit,
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let max_age = cache_max_age(resp.headers());
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.map_err(url, &e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            status: status.as_u16(),
            body: body.freeze(),
            max_age,
            content_type,
        })
    }

    fn map_err(&self, url: &str, e: &reqwest::Error) -> FetchError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(r) = s.downcast_ref::<Refusal>() {
                return FetchError::Blocked {
                    url: url.to_owned(),
                    reason: r.0.clone(),
                };
            }
            src = s.source();
        }
        if e.is_timeout() {
            return FetchError::Timeout {
                url: url.to_owned(),
            };
        }
        // The innermost cause is the informative one ("connection refused", "dns error", …).
        let mut inner: &dyn std::error::Error = e;
        while let Some(s) = inner.source() {
            inner = s;
        }
        FetchError::Transport {
            url: url.to_owned(),
            message: inner.to_string(),
        }
    }
}
