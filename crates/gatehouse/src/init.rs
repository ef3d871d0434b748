//! `gatehouse init` (issue 18, IN-1): a production configuration to start from. An https public
//! URL on its own TLS listener, PostgreSQL, a fresh key-encryption key, a registration policy
//! that gives strangers nothing they should not have, session caps and Redis for replicas when
//! asked. Secrets never go into the config file: they go into an environment file (mode 0600)
//! that the systemd unit (`packaging/gatehouse.service`) reads, and the config names them with
//! `${env:…}`. Nothing existing is overwritten.
use base64::Engine as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// The https origin clients use, e.g. https://mcp.example.com.
    #[arg(long)]
    public_url: String,
    /// PostgreSQL URL of the authorization server's database (kept in the environment file).
    #[arg(long)]
    database: String,
    /// Redis URL shared by replicas (kept in the environment file); without it, one replica.
    #[arg(long)]
    redis: Option<String>,
    /// Where the config goes.
    #[arg(long, default_value = "gatehouse.yaml")]
    config: PathBuf,
    /// Where the secrets go (mode 0600).
    #[arg(long, default_value = "gatehouse.env")]
    env_file: PathBuf,
    /// TLS certificate and key (PEM) for the listener.
    #[arg(long, default_value = "/etc/gatehouse/tls/fullchain.pem")]
    tls_cert: String,
    #[arg(long, default_value = "/etc/gatehouse/tls/privkey.pem")]
    tls_key: String,
    #[arg(long, default_value = "0.0.0.0:443")]
    listen: String,
}

fn create_new(path: &Path, mode: u32, text: &str) -> Result<(), String> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("{} exists; nothing was overwritten", path.display())
        }
        _ => format!("{}: {e}", path.display()),
    })?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A value for a line `KEY=value` of an environment file (systemd's `EnvironmentFile=`).
fn env_value(v: &str) -> Result<String, String> {
    if v.contains(['\n', '\r', '"', '\\']) {
        return Err(format!("{v:?} cannot go into an environment file"));
    }
    Ok(format!("\"{v}\""))
}

pub(crate) fn run(a: &InitArgs) -> Result<String, String> {
    let public = url::Url::parse(&a.public_url).map_err(|e| format!("--public-url: {e}"))?;
    if public.scheme() != "https" || public.host_str().is_none() {
        return Err("--public-url must be an https origin (e.g. https://mcp.example.com)".into());
    }
    let public_url = public.origin().ascii_serialization();
    if !(a.database.starts_with("postgres://") || a.database.starts_with("postgresql://")) {
        return Err(
            "--database must be a postgres:// URL (SQLite is for single-node trials)".into(),
        );
    }
    if let Some(r) = &a.redis
        && !(r.starts_with("redis://") || r.starts_with("rediss://"))
    {
        return Err("--redis must be a redis:// or rediss:// URL".into());
    }
    a.listen
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("--listen: {e}"))?;
    let kek: [u8; 32] = rand::random();
    let kek = base64::engine::general_purpose::STANDARD.encode(kek);
    let mut env = format!(
        "# Secrets for {} (gatehouse init). Keep this file 0600, readable by the service only.\n\
         GATEHOUSE_DATABASE={}\n\
         GATEHOUSE_KEY_ENCRYPTION_KEY={}\n",
        a.config.display(),
        env_value(&a.database)?,
        env_value(&kek)?,
    );
    if let Some(r) = &a.redis {
        env.push_str(&format!("GATEHOUSE_REDIS_URL={}\n", env_value(r)?));
    }
    let shared = if a.redis.is_some() {
        "\n# State every replica shares (sessions, rate limits, DPoP proofs, connect flows).\nshared_state:\n  redis_url: ${env:GATEHOUSE_REDIS_URL}\n"
    } else {
        ""
    };
    let config = format!(
        r#"# Gatehouse, production (written by `gatehouse init`; every key: `gatehouse config schema`).
# Secrets are in the environment file; this file may be world-readable.
listen: {listen}
public_url: {public_url}
tls:
  cert_file: {cert}
  key_file: {key}
log:
  json: true
guard:
  required_scopes: [mcp:basic]
authorization_server:
  database: ${{env:GATEHOUSE_DATABASE}}
  key_encryption_key: ${{env:GATEHOUSE_KEY_ENCRYPTION_KEY}}
  dynamic_registration: true
  registrations_per_minute: 10
  registration:
    # Strangers may register public clients that sign users in, nothing more (T17).
    grant_types: [authorization_code, refresh_token, "urn:ietf:params:oauth:grant-type:device_code"]
    auth_methods: [none]
    per_minute_total: 60
    unused_ttl_seconds: 86400
  client_metadata_documents: true
  access_token_ttl_seconds: 300
listener:
  header_timeout_seconds: 15
  body_timeout_seconds: 30
limits:
  sessions_per_subject: 64
  sessions_total: 10000
{shared}"#,
        listen = a.listen,
        cert = a.tls_cert,
        key = a.tls_key,
    );
    // Checked before anything is written: what init writes, `config check` accepts.
    check_written(&config, &env)?;
    create_new(&a.env_file, 0o600, &env)?;
    if let Err(e) = create_new(&a.config, 0o644, &config) {
        let _ = std::fs::remove_file(&a.env_file);
        return Err(e);
    }
    Ok(format!(
        "wrote {} and {} (secrets, mode 0600)\nnext: put the TLS pair at {} and {}, then\n  set -a; . {}; set +a; gatehouse config check {}\n  gatehouse serve --config {}   (or packaging/gatehouse.service)",
        a.config.display(),
        a.env_file.display(),
        a.tls_cert,
        a.tls_key,
        a.env_file.display(),
        a.config.display(),
        a.config.display()
    ))
}

/// Parses the config as `serve` would, with the environment file's values (TLS files, which
/// are not there yet, aside).
fn check_written(config: &str, env: &str) -> Result<(), String> {
    let mut text = config.to_owned();
    for line in env.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            // A YAML single-quoted scalar: a quote inside is doubled.
            let v = v.trim_matches('"').replace('\'', "''");
            text = text.replace(&format!("${{env:{k}}}"), &format!("'{v}'"));
        }
    }
    crate::config::Config::parse("(written config)", &text)
        .map(|_| ())
        .map_err(|e| format!("internal: {e}"))
}
