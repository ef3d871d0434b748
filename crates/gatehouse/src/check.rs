//! `gatehouse check URL`: the checker's command line (the checks live in `gatehouse-check`).
use clap::Args;
use gatehouse_check::{Options, Severity};
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
    let opts = Options {
        target: a.url,
        allow_private: a.allow_private,
        token: a.token,
        foreign_token: a.foreign_token,
        expired_token: a.expired_token,
        authorization_server: a.authorization_server,
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
