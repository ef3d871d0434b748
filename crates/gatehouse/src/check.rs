//! `gatehouse check URL`: the checker's command line (the checks live in `gatehouse-check`).
use clap::Args;
use gatehouse_check::{Options, SecretString, Severity};
use std::process::ExitCode;

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The MCP endpoint, exactly as clients use it.
    url: String,
    /// Allow loopback and private addresses (the target and the metadata it points at).
    #[arg(long)]
    allow_private: bool,
    /// A valid access token for the endpoint (enables the token checks; never printed).
    #[arg(long, env = "GATEHOUSE_CHECK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A valid token of the same authorization server for another resource (AUDIENCE).
    #[arg(long, env = "GATEHOUSE_CHECK_FOREIGN_TOKEN", hide_env_values = true)]
    foreign_token: Option<String>,
    /// A token of the same authorization server whose `exp` has passed (EXPIRED).
    #[arg(long, env = "GATEHOUSE_CHECK_EXPIRED_TOKEN", hide_env_values = true)]
    expired_token: Option<String>,
    /// A valid token for the endpoint of another user: a session opened with the token must
    /// refuse it (SESSION-USER).
    #[arg(long, env = "GATEHOUSE_CHECK_OTHER_USER_TOKEN", hide_env_values = true)]
    other_user_token: Option<String>,
    /// A tool of the endpoint that the token's scopes do not cover: called once with the token
    /// and empty arguments, it must be refused with 403 insufficient_scope (INSUFFICIENT-SCOPE).
    /// A server that does not check scopes runs it.
    #[arg(long, value_name = "NAME")]
    scope_tool: Option<String>,
    /// Get the token by signing in (as `gatehouse login`: browser, or `--device`) instead of
    /// giving --token.
    #[arg(long, conflicts_with = "token")]
    login: bool,
    /// With --login: the device authorization grant (a code to enter on any device).
    #[arg(long, requires = "login")]
    device: bool,
    /// With --login: print the URL to open instead of starting a browser.
    #[arg(long, requires = "login")]
    no_browser: bool,
    /// `human` (default), `json` or `sarif`.
    #[arg(long, default_value = "human")]
    format: String,
    /// Exit 1 when a check at or above this severity fails: critical, high (default), medium,
    /// low or info.
    #[arg(long, default_value = "high")]
    fail_on: String,
    /// Active checks of the authorization server: registers a client through dynamic
    /// registration and sends authorization requests that must be refused (nobody signs in).
    #[arg(long)]
    authorization_server: bool,
}

pub(crate) fn run(a: CheckArgs) -> ExitCode {
    let Some(level) = Severity::parse(&a.fail_on) else {
        eprintln!("error: --fail-on: critical, high, medium, low or info");
        return ExitCode::from(2);
    };
    if !matches!(a.format.as_str(), "human" | "json" | "sarif") {
        eprintln!("error: --format: human, json or sarif");
        return ExitCode::from(2);
    }
    let Some(rt) = crate::runtime() else {
        return ExitCode::from(2);
    };
    // With --authorization-server the checker signs in itself (it needs the code and the
    // refresh token); else `gatehouse login` gets the token.
    let token = if a.login && !a.authorization_server {
        match rt.block_on(crate::client::login_token(&a.url, a.device, a.no_browser)) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: --login: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        a.token
    };
    let opts = Options {
        target: a.url,
        allow_private: a.allow_private,
        token: token.map(SecretString::new),
        foreign_token: a.foreign_token.map(SecretString::new),
        expired_token: a.expired_token.map(SecretString::new),
        scope_tool: a.scope_tool,
        other_user_token: a.other_user_token.map(SecretString::new),
        authorization_server: a.authorization_server,
        login: a.login && a.authorization_server,
        device: a.device,
        browser: a
            .no_browser
            .then_some(gatehouse_client::opener::Opener::PrintOnly),
    };
    let report = match rt.block_on(gatehouse_check::run(&opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match a.format.as_str() {
        "json" => gatehouse_check::render_json(&report),
        "sarif" => gatehouse_check::render_sarif(&report),
        _ => gatehouse_check::render_human(&report),
    };
    println!("{text}");
    if report.fails_at(level) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
