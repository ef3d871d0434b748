//! Getting the user to the authorization URL. Never through a shell (CVE-2025-6514): the URL is
//! checked by [`crate::safety::check_endpoint`] first and then passed as one argument to a program
//! started directly; it is always printed too, for machines with no browser.
use crate::ClientError;
use crate::safety::check_endpoint;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub enum Opener {
    /// The desktop's URL handler (`xdg-open`, `open`, or `rundll32 url.dll` on Windows), or the
    /// program named by `GATEHOUSE_BROWSER`.
    #[default]
    System,
    /// Only print the URL (headless machines: open it anywhere that can reach the redirect).
    PrintOnly,
    /// Run this program with the URL as its only argument.
    Program(PathBuf),
    /// Follow the authorization server's redirects without a browser and deliver the final one to
    /// the loopback listener: for servers that answer `/authorize` with a redirect at once
    /// (test servers, pre-approved consent). Every hop is checked like an endpoint.
    Headless,
}

impl Opener {
    /// `System`, unless `GATEHOUSE_BROWSER` names a program (`none` prints only).
    pub fn from_env() -> Self {
        match std::env::var_os("GATEHOUSE_BROWSER") {
            Some(v) if v == "none" => Self::PrintOnly,
            Some(v) if !v.is_empty() => Self::Program(PathBuf::from(v)),
            _ => Self::System,
        }
    }

    /// Sends the user (or the headless follower) to `url`, which must pass the endpoint check.
    pub async fn open(&self, url: &str, redirect_uri: &str) -> Result<(), ClientError> {
        let checked = check_endpoint("authorization URL", url)?;
        let url = checked.as_str();
        match self {
            Self::PrintOnly => {
                crate::progress(format!(
                    "open this URL in a browser to log in:\n\n  {url}\n"
                ));
                Ok(())
            }
            Self::System => {
                crate::progress(format!(
                    "opening your browser; if it does not open, visit:\n\n  {url}\n"
                ));
                let (program, pre): (&str, &[&str]) = if cfg!(target_os = "macos") {
                    ("open", &[])
                } else if cfg!(windows) {
                    ("rundll32", &["url.dll,FileProtocolHandler"])
                } else {
                    ("xdg-open", &[])
                };
                spawn(program.as_ref(), pre, url);
                Ok(())
            }
            Self::Program(p) => {
                crate::progress(format!("opening {}; the URL is:\n\n  {url}\n", p.display()));
                spawn(p.as_os_str(), &[], url);
                Ok(())
            }
            // Without a redirect to deliver (device grant) there is nothing to follow.
            Self::Headless if redirect_uri.is_empty() => Ok(()),
            Self::Headless => follow(url, redirect_uri).await,
        }
    }
}

/// Starts the program directly (no shell) and does not wait; a failure to start is reported and
/// the printed URL remains the way in.
fn spawn(program: &std::ffi::OsStr, pre: &[&str], url: &str) {
    match std::process::Command::new(program)
        .args(pre)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reap it in the background so it does not linger as a zombie.
            std::thread::spawn(move || child.wait());
        }
        Err(e) => crate::progress(format!(
            "could not start {}: {e}; open the URL above yourself",
            program.to_string_lossy()
        )),
    }
}

async fn follow(start: &str, redirect_uri: &str) -> Result<(), ClientError> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut url = start.to_owned();
    for _ in 0..10 {
        let resp = http.get(&url).send().await?;
        let Some(next) = resp.headers().get(reqwest::header::LOCATION) else {
            return Err(ClientError::Authorization(format!(
                "the authorization server answered {} without redirecting (it needs a browser; run without --headless)",
                resp.status()
            )));
        };
        let next = next
            .to_str()
            .map_err(|_| ClientError::Authorization("unreadable redirect".into()))?;
        let base = url::Url::parse(&url)
            .map_err(|e| ClientError::Authorization(format!("bad URL: {e}")))?;
        let next = base
            .join(next)
            .map_err(|e| ClientError::Authorization(format!("bad redirect: {e}")))?;
        if next.as_str().starts_with(redirect_uri) {
            // Deliver to our own listener exactly as a browser would.
            http.get(next.as_str()).send().await?;
            return Ok(());
        }
        url = check_endpoint("redirect", next.as_str())?.to_string();
    }
    Err(ClientError::Authorization("too many redirects".into()))
}
