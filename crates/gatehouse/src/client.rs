//! The client commands: `login`, `logout`, `token`, `connect`, and the conformance-suite runner.
use bytes::Bytes;
use gatehouse_client::cache::TokenCache;
use gatehouse_client::opener::Opener;
use gatehouse_client::registration::AuthMethod;
use gatehouse_client::transport::{McpHttp, SseParser};
use gatehouse_client::{ClientConfig, ClientError, Session};
use gatehouse_core::ScopeSet;
use std::process::ExitCode;
use std::sync::Arc;

/// Options every client command shares.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// The MCP server URL, e.g. https://mcp.example.com/mcp.
    pub(crate) url: String,
    /// A pre-registered client_id at the server's authorization server (else CIMD, else DCR).
    #[arg(long, env = "GATEHOUSE_CLIENT_ID")]
    client_id: Option<String>,
    /// The pre-registered client's secret (prefer the environment variable).
    #[arg(long, env = "GATEHOUSE_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// A PEM private key file for private_key_jwt client authentication.
    #[arg(long)]
    client_key_file: Option<String>,
    /// An https URL of this client's metadata document (used when the server supports CIMD).
    #[arg(long, env = "GATEHOUSE_CLIENT_METADATA_URL")]
    client_metadata_url: Option<String>,
    /// Scopes to request in addition to what the server asks for (space-separated).
    #[arg(long)]
    scope: Option<String>,
    /// Do not start a browser; print the URL to open instead.
    #[arg(long)]
    no_browser: bool,
    /// Loopback port for the login redirect (default: a free one, kept per registration).
    #[arg(long)]
    callback_port: Option<u16>,
    /// Machine login with client_credentials (needs --client-id with a secret or key).
    #[arg(long)]
    client_credentials: bool,
    /// Machine login with the JWT-bearer grant (RFC 7523) using the workload identity token in
    /// this file (workload identity federation); needs --client-id.
    #[arg(long)]
    assertion_file: Option<std::path::PathBuf>,
    /// Log in with the device authorization grant (RFC 8628): a code to enter on any device.
    /// Chosen by itself with --no-browser when the authorization server offers it.
    #[arg(long)]
    device: bool,
    /// Where tokens are kept (default $GATEHOUSE_HOME or ~/.local/state/gatehouse).
    #[arg(long, env = "GATEHOUSE_HOME")]
    home: Option<std::path::PathBuf>,
}

impl ClientArgs {
    fn config(&self, interactive: bool) -> Result<ClientConfig, String> {
        let mut cfg = ClientConfig {
            interactive,
            client_credentials: self.client_credentials,
            callback_port: self.callback_port,
            ..ClientConfig::default()
        };
        if self.no_browser {
            cfg.opener = Opener::PrintOnly;
        }
        cfg.registration.client_id = self.client_id.clone();
        cfg.registration.client_secret = self.client_secret.clone();
        cfg.registration.client_metadata_url = self.client_metadata_url.clone();
        cfg.registration.device = self.device;
        cfg.assertion = self
            .assertion_file
            .clone()
            .map(gatehouse_client::AssertionSource::JwtFile);
        if let Some(f) = &self.client_key_file {
            cfg.registration.private_key_pem =
                Some(std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?);
        }
        cfg.extra_scope = self
            .scope
            .as_deref()
            .map(ScopeSet::parse)
            .transpose()
            .map_err(|e| format!("--scope: {e}"))?;
        Ok(cfg)
    }

    fn session(&self, interactive: bool) -> Result<Session, String> {
        let cache = TokenCache::open(self.home.clone()).map_err(|e| e.to_string())?;
        Session::new(&self.url, self.config(interactive)?, cache).map_err(|e| e.to_string())
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// Probes the server without a token and returns its Bearer challenge, if it sent one.
async fn probe(url: &str) -> Result<Option<gatehouse_core::BearerChallenge>, ClientError> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "gatehouse", "version": env!("CARGO_PKG_VERSION")}}});
    let resp = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await?;
    Ok(gatehouse_client::transport::challenge_of(&resp))
}

/// Builds the session and a runtime, then runs `f` to an exit code.
fn run<F, Fut>(args: &ClientArgs, interactive: bool, f: F) -> ExitCode
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let session = match args.session(interactive) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(f(session)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

pub(crate) fn login(args: &ClientArgs) -> ExitCode {
    run(args, true, |session| async move {
        let challenge = probe(session.server_url()).await?;
        session.login(challenge.as_ref(), false).await.map(|_| ())
    })
}

pub(crate) fn logout(args: &ClientArgs) -> ExitCode {
    run(args, false, |session| async move {
        let was = session.logout().await?;
        let url = session.server_url();
        if was {
            eprintln!("gatehouse: logged out of {url}");
        } else {
            eprintln!("gatehouse: not logged in to {url}");
        }
        Ok(())
    })
}

/// Prints a current access token (refreshing it if needed) for scripts; never logs in.
pub(crate) fn token(args: &ClientArgs) -> ExitCode {
    run(args, false, |session| async move {
        let t = session
            .current_token()
            .await?
            .ok_or_else(|| ClientError::NotLoggedIn(session.server_url().to_owned()))?;
        println!("{t}");
        Ok(())
    })
}

pub(crate) fn connect(args: &ClientArgs) -> ExitCode {
    run(args, true, |session| async move {
        let mcp = Arc::new(McpHttp::new(Arc::new(session))?);
        gatehouse_client::bridge::run_stdio(mcp).await
    })
}

/// One JSON-RPC request through the authenticated transport; the response message.
async fn call(
    mcp: &McpHttp,
    id: u64,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let resp = mcp.post(Bytes::from(body.to_string())).await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(ClientError::Server {
            status: status.as_u16(),
            body: resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect(),
        });
    }
    let sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !sse {
        return Ok(resp.json().await?);
    }
    let mut parser = SseParser::default();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await? {
        for data in parser.feed(&chunk) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&data)
                && v.get("id") == Some(&serde_json::json!(id))
            {
                return Ok(v);
            }
        }
    }
    Err(ClientError::Http(format!("no answer to {method}")))
}

async fn notify(mcp: &McpHttp, method: &str) -> Result<(), ClientError> {
    let body = serde_json::json!({"jsonrpc": "2.0", "method": method});
    mcp.post(Bytes::from(body.to_string())).await.map(|_| ())
}

/// `conformance/client`: the client under test for `@modelcontextprotocol/conformance`. It is the
/// same library as `connect`, configured from the suite's environment: the scenario's context
/// gives pre-registered or machine credentials, CIMD uses the URL the suite expects, and the
/// browser step is the headless redirect follower (the suite's authorization server answers at
/// once with a redirect).
pub(crate) fn conformance(url: &str) -> ExitCode {
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let ctx: serde_json::Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_default();
    let home = std::env::temp_dir().join(format!(
        "gatehouse-conformance-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut cfg = ClientConfig {
        opener: Opener::Headless,
        login_timeout: std::time::Duration::from_secs(20),
        ..ClientConfig::default()
    };
    cfg.registration.client_name = "gatehouse-conformance".into();
    cfg.registration.client_metadata_url =
        Some("https://conformance-test.local/client-metadata.json".into());
    let s = |k: &str| ctx[k].as_str().map(str::to_owned);
    if let Some(id) = s("client_id") {
        cfg.registration.client_id = Some(id);
        cfg.registration.client_secret = s("client_secret");
        cfg.registration.private_key_pem = s("private_key_pem");
        if cfg.registration.private_key_pem.is_some() {
            cfg.registration.auth_method = Some(AuthMethod::PrivateKeyJwt);
        }
        cfg.client_credentials = scenario.starts_with("auth/client-credentials");
    }
    if let (Some(endpoint), Some(idp_client_id), Some(id_token)) = (
        s("idp_token_endpoint"),
        s("idp_client_id"),
        s("idp_id_token"),
    ) {
        cfg.assertion = Some(gatehouse_client::AssertionSource::IdJag {
            idp_token_endpoint: endpoint,
            idp_client_id,
            idp_client_secret: None,
            id_token,
        });
    }
    if let Some(jwt) = s("valid_jwt") {
        cfg.assertion = Some(gatehouse_client::AssertionSource::Jwt(jwt));
    }
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let code = rt.block_on(async {
        let cache = TokenCache::with_key(home.clone(), None)?;
        let mcp = McpHttp::new(Arc::new(Session::new(url, cfg, cache)?))?;
        let version = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION")
            .unwrap_or_else(|_| "2025-11-25".into());
        // Newer revisions want the header on every request, initialize included.
        mcp.set_protocol_version(&version);
        // 2026-07-28 has no initialize: every request carries the version and capabilities.
        let stateless = gatehouse_core::ProtocolVersion::parse(&version)
            .is_ok_and(|v| v.has_method_headers());
        let params = |mut p: serde_json::Value| {
            if stateless {
                p["_meta"] = serde_json::json!({
                    "io.modelcontextprotocol/protocolVersion": version,
                    "io.modelcontextprotocol/clientCapabilities": {},
                });
            }
            p
        };
        if !stateless {
            let init = call(
                &mcp,
                1,
                "initialize",
                serde_json::json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "gatehouse-conformance", "version": env!("CARGO_PKG_VERSION")}}),
            )
            .await?;
            if let Some(v) = init["result"]["protocolVersion"].as_str() {
                mcp.set_protocol_version(v);
            }
            notify(&mcp, "notifications/initialized").await?;
        }
        let tools = call(&mcp, 2, "tools/list", params(serde_json::json!({}))).await?;
        let names: Vec<String> = tools["result"]["tools"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for (id, name) in (3..).zip(names) {
            let args = if name == "add_numbers" {
                serde_json::json!({"a": 2, "b": 3})
            } else {
                serde_json::json!({})
            };
            let r = call(
                &mcp,
                id,
                "tools/call",
                params(serde_json::json!({"name": name, "arguments": args})),
            )
            .await?;
            if r.get("error").is_some() {
                return Err(ClientError::Http(format!("tools/call {name}: {}", r["error"])));
            }
        }
        mcp.delete().await;
        Ok::<_, ClientError>(())
    });
    let _ = std::fs::remove_dir_all(&home);
    match code {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Logs in to `url` as `gatehouse login` does (browser, or the device grant) and returns the
/// access token, for `gatehouse check --login`. Tokens are cached as for `login`.
pub(crate) async fn login_token(
    url: &str,
    device: bool,
    no_browser: bool,
) -> Result<String, String> {
    let cache = TokenCache::open(std::env::var_os("GATEHOUSE_HOME").map(Into::into))
        .map_err(|e| e.to_string())?;
    // Bearer tokens: the checks send the token as Bearer (a DPoP-bound one would be refused).
    let mut cfg = ClientConfig {
        interactive: true,
        dpop: false,
        ..ClientConfig::default()
    };
    cfg.registration.device = device;
    if no_browser {
        cfg.opener = Opener::PrintOnly;
    }
    let session = Session::new(url, cfg, cache).map_err(|e| e.to_string())?;
    let challenge = probe(url).await.map_err(|e| e.to_string())?;
    session
        .login(challenge.as_ref(), false)
        .await
        .map_err(|e| e.to_string())?;
    session
        .current_token()
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the login gave no token".to_owned())
}
