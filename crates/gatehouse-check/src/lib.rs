//! `gatehouse check URL`: audits a deployed MCP server's authorization from outside, as a client
//! (and, given tokens, as an attacker holding one) would see it. Passive checks change nothing at
//! the target: they read metadata and send requests without credentials or with credentials that
//! must be refused. Token checks use tokens the operator gives (`--token`, `--foreign-token`,
//! `--expired-token`) and never print them.
//!
//! Each check has a stable id, a severity, a reference (spec or RFC section) and a fix hint; the
//! report grades the target by the worst failure.
#![forbid(unsafe_code)]

mod active;
mod catalogue;
mod checks;
mod forge;
mod output;
mod pem;
mod probe;
mod sessions;

pub use output::{render_human, render_json, render_sarif};

pub use gatehouse_core::SecretString;
use serde::Serialize;

/// What to check and with what.
/// Tokens are `SecretString`s: redacted in `Debug`, never `Display`, so no report or log line
/// can show one by accident.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub target: String,
    /// Loopback and private addresses (the target and what its metadata points at).
    pub allow_private: bool,
    /// A valid access token for the target.
    pub token: Option<SecretString>,
    /// A valid token of the same authorization server for another resource.
    pub foreign_token: Option<SecretString>,
    /// A token of the same authorization server whose `exp` has passed.
    pub expired_token: Option<SecretString>,
    /// A tool of the endpoint that `token`'s scopes do not cover (INSUFFICIENT-SCOPE calls it
    /// with that token and empty arguments: a server that does not check scopes runs it).
    pub scope_tool: Option<String>,
    /// A valid token for the endpoint of another user (SESSION-USER).
    pub other_user_token: Option<SecretString>,
    /// Active checks of the authorization server: registers a client (and may get a token for
    /// it), sends authorization requests that must be refused.
    pub authorization_server: bool,
    /// With `authorization_server`: sign in once through a browser (the code flow, done by the
    /// checker itself) to check code reuse, refresh rotation and reuse, and the token's audience;
    /// the token then serves the token checks too.
    pub login: bool,
    /// With `login`: sign in by the device authorization grant (a code to enter on any device)
    /// instead of the code flow; everything but AS-CODE-REUSE is checked.
    pub device: bool,
    /// How the `login` sign-in reaches a browser; default as `gatehouse login`
    /// (`GATEHOUSE_BROWSER`, else the desktop's).
    pub browser: Option<gatehouse_client::opener::Opener>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "info" => Self::Info,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            "critical" => Self::Critical,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    pub status: Status,
    pub detail: String,
    pub reference: &'static str,
    /// What to change when it fails.
    pub hint: &'static str,
    /// The group it is shown under.
    #[serde(skip)]
    pub group: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub grade: &'static str,
    pub checks: Vec<Finding>,
}

impl Report {
    fn new(target: String, checks: Vec<Finding>) -> Self {
        let worst = checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.severity)
            .max();
        let grade = match worst {
            None => "A",
            Some(Severity::Info | Severity::Low) => "B",
            Some(Severity::Medium) => "C",
            Some(Severity::High) => "D",
            Some(Severity::Critical) => "F",
        };
        Self {
            target,
            grade,
            checks,
        }
    }

    /// Whether anything at or above `level` failed (the exit code of `--fail-on`).
    pub fn fails_at(&self, level: Severity) -> bool {
        self.checks
            .iter()
            .any(|c| c.status == Status::Fail && c.severity >= level)
    }
}

/// Why no report could be made (usage or connection errors: exit code 2).
#[derive(Debug)]
pub enum CheckError {
    Usage(String),
    Connect(String),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Connect(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CheckError {}

/// Every check this version knows (id, severity, title, reference), in report order: ids are
/// stable once released.
pub fn catalogue() -> Vec<(&'static str, Severity, &'static str, &'static str)> {
    catalogue::catalogue().collect()
}

/// Runs every check that applies and grades the target.
pub async fn run(opts: &Options) -> Result<Report, CheckError> {
    let target = url::Url::parse(&opts.target)
        .map_err(|e| CheckError::Usage(format!("{}: {e}", opts.target)))?;
    if !matches!(target.scheme(), "http" | "https") || target.host_str().is_none() {
        return Err(CheckError::Usage(format!(
            "{}: an http or https URL of an MCP endpoint",
            opts.target
        )));
    }
    if target.fragment().is_some() {
        return Err(CheckError::Usage("the URL must not have a fragment".into()));
    }
    let probe = probe::Probe::new(&target, opts.allow_private).await?;
    let findings = checks::run_all(&probe, opts).await?;
    Ok(Report::new(opts.target.clone(), findings))
}
