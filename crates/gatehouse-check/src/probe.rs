//! The requests the checks send: to the target and to the metadata it names. Without
//! `--allow-private`, loopback, private and link-local addresses are refused (the checker must
//! not become a way to reach an internal network), for the target and for every URL its
//! metadata points at.
use crate::CheckError;
use std::time::Duration;

/// Most of a response body read (metadata, JSON-RPC answers).
const MAX_BODY: usize = 256 * 1024;

pub(crate) struct Probe {
    client: reqwest::Client,
    pub(crate) target: url::Url,
    allow_private: bool,
}

/// An answer, read whole (up to `MAX_BODY`).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        // A Streamable HTTP answer may come as one SSE event.
        let text = self.body.trim();
        if let Some(data) = text
            .lines()
            .find_map(|l| l.strip_prefix("data:").map(str::trim))
        {
            return serde_json::from_str(data).ok();
        }
        serde_json::from_str(text).ok()
    }
}

impl Probe {
    pub(crate) async fn new(target: &url::Url, allow_private: bool) -> Result<Self, CheckError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("gatehouse-check/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            // Names are checked where they are resolved for the connection (the fetcher's
            // resolver): a name that answers differently the second time gains nothing.
            builder = builder.dns_resolver(gatehouse_fetch::public_only_resolver(
                Duration::from_secs(5),
            ));
        }
        let client = builder
            .build()
            .map_err(|e| CheckError::Connect(e.to_string()))?;
        let p = Self {
            client,
            target: target.clone(),
            allow_private,
        };
        p.allowed(target).map_err(CheckError::Usage)?;
        Ok(p)
    }

    /// What can be refused before connecting: IP literals that are not public and loopback
    /// names (names that resolve to such addresses are refused by the resolver).
    pub(crate) fn allowed(&self, u: &url::Url) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        let ip: std::net::IpAddr = match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d == "localhost" || d.ends_with(".localhost") {
                    return Err(format!(
                        "{d} is a loopback name; pass --allow-private to check it"
                    ));
                }
                return Ok(());
            }
            None => return Err("no host".into()),
        };
        match gatehouse_fetch::forbidden_reason(ip) {
            Some(why) => Err(format!("{ip} is {why}; pass --allow-private to check it")),
            None => Ok(()),
        }
    }

    async fn read(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut resp = resp;
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_BODY {
                body.truncate(MAX_BODY);
                break;
            }
        }
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// GET `u` (after the address check).
    pub(crate) async fn get(&self, u: &url::Url) -> Result<Answer, String> {
        self.allowed(u)?;
        let r = self
            .client
            .get(u.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("{u}: {e}"))?;
        Ok(Self::read(r).await)
    }

    /// GET `u` as a browser page, with `cookie` (what earlier hops set).
    pub(crate) async fn get_page(&self, u: &url::Url, cookie: &str) -> Result<Answer, String> {
        self.allowed(u)?;
        let mut r = self.client.get(u.clone()).header("accept", "text/html");
        if !cookie.is_empty() {
            r = r.header("cookie", cookie);
        }
        let r = r.send().await.map_err(|e| format!("{u}: {e}"))?;
        Ok(Self::read(r).await)
    }

    /// POST a JSON document to `u` (dynamic client registration).
    pub(crate) async fn post_json(
        &self,
        u: &url::Url,
        body: &serde_json::Value,
    ) -> Result<Answer, String> {
        self.allowed(u)?;
        let r = self
            .client
            .post(u.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{u}: {e}"))?;
        Ok(Self::read(r).await)
    }

    /// POST a form to `u`, with HTTP Basic client authentication when given.
    pub(crate) async fn post_form(
        &self,
        u: &url::Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<Answer, String> {
        self.allowed(u)?;
        let mut r = self.client.post(u.clone()).form(form);
        if let Some((id, secret)) = basic {
            r = r.basic_auth(id, Some(secret));
        }
        let r = r.send().await.map_err(|e| format!("{u}: {e}"))?;
        Ok(Self::read(r).await)
    }

    /// POST a JSON-RPC body to the target (or the target with `query`), with `headers`.
    pub(crate) async fn post(
        &self,
        body: &str,
        headers: &[(&str, &str)],
        query: Option<&str>,
    ) -> Result<Answer, String> {
        let mut u = self.target.clone();
        if let Some(q) = query {
            u.set_query(Some(q));
        }
        let mut r = self
            .client
            .post(u)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.target))?;
        Ok(Self::read(resp).await)
    }

    /// The status of a `method` request to the target with `headers`; the body is not read (a
    /// GET may open an event stream that never ends).
    pub(crate) async fn status_of(
        &self,
        method: reqwest::Method,
        headers: &[(&str, &str)],
    ) -> Result<u16, String> {
        Ok(self.head_of(method, headers).await?.0)
    }

    /// As `status_of`, and whether the answer is an event stream (a GET that opened one).
    pub(crate) async fn head_of(
        &self,
        method: reqwest::Method,
        headers: &[(&str, &str)],
    ) -> Result<(u16, bool), String> {
        let mut r = self.client.request(method, self.target.clone());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.target))?;
        let stream = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
        Ok((resp.status().as_u16(), stream))
    }

    /// An OPTIONS request (CORS preflight) to the target.
    pub(crate) async fn preflight(&self, origin: &str) -> Result<Answer, String> {
        let resp = self
            .client
            .request(reqwest::Method::OPTIONS, self.target.clone())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, mcp-session-id",
            )
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.target))?;
        Ok(Self::read(resp).await)
    }
}
