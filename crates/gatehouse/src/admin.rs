//! `gatehouse admin`: users, clients, signing keys and grants of the embedded authorization
//! server, straight on its store.
use clap::{Args, Subcommand};
use gatehouse_core::{Clock, RedirectUri, ScopeSet, SystemClock};
use gatehouse_server::{
    KeyEncryptionKey, KeyManager, hash_password, random_id, random_token, sha256_hex,
};
use gatehouse_store::{ClientRecord, ClientSource, Store, UserRecord};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub(crate) struct AdminArgs {
    /// The store: sqlite://PATH or postgres://…
    #[arg(
        long,
        env = "GATEHOUSE_DATABASE",
        default_value = "sqlite://.gatehouse/gatehouse.db"
    )]
    db: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Local user accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Pre-registered clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Revoke every grant of a user (optionally only for one client), with their remembered
    /// consents (without --client their browser sessions end too); or, with --client alone,
    /// every grant and token of that client, for every user. Every replica's guards and
    /// gateways refuse the tokens within a second.
    #[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["subject", "client"])))]
    Revoke {
        // Generated ids may start with `-`.
        #[arg(long, allow_hyphen_values = true)]
        subject: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        client: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user; the password is read from an environment variable (never an argument).
    Add {
        name: String,
        #[arg(long, default_value = "GATEHOUSE_PASSWORD")]
        password_env: String,
    },
    /// Set a user's password from an environment variable; ends their browser sessions,
    /// remembered consents and grants.
    Passwd {
        name: String,
        #[arg(long, default_value = "GATEHOUSE_PASSWORD")]
        password_env: String,
    },
    /// Disable a user: no sign-in; their sessions, consents and grants end.
    Disable {
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        name: String,
    },
    List,
    /// Delete a user, their sessions and consents, and revoke their grants.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Pre-register a client. Confidential clients get a secret, printed once.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        #[arg(long)]
        confidential: bool,
        /// Grant types (repeatable); default authorization_code and refresh_token.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Scopes the client may request (space-separated); default: any.
        #[arg(long)]
        scope: Option<String>,
        /// A fixed client_id (default: random).
        #[arg(long)]
        client_id: Option<String>,
        /// Resources this client may exchange users' tokens for (RFC 8693; repeatable).
        #[arg(long = "exchange-target")]
        exchange_targets: Vec<String>,
        /// Authenticate with private_key_jwt using the public keys in this JWKS file.
        #[arg(long)]
        jwks_file: Option<String>,
        /// A resource server: it may introspect tokens issued for this resource (RFC 7662;
        /// repeatable). Without it a client introspects only its own tokens.
        #[arg(long = "introspect-for")]
        introspection_resources: Vec<String>,
    },
    List,
    /// Delete a client and revoke its grants.
    Delete {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key active; the old one is published until its tokens expire.
    Rotate,
    List,
}

fn password_from(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(p) if p.chars().count() >= 8 => Ok(p),
        Ok(_) => Err(format!(
            "the password in {var} is shorter than 8 characters"
        )),
        Err(_) => Err(format!(
            "set the password in the environment variable {var}"
        )),
    }
}

pub(crate) fn run(args: AdminArgs) -> ExitCode {
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(run_inner(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_inner(args: AdminArgs) -> Result<(), String> {
    if let Some(path) = args.db.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let store = Store::open(&args.db).await.map_err(|e| e.to_string())?;
    let clock = SystemClock;
    let now = clock.now_unix();
    match args.command {
        AdminCommand::Users { command } => match command {
            UsersCommand::Add { name, password_env } => {
                // Subjects from single sign-on and assertions are `<prefix>:<id>`.
                if name.contains(':') {
                    return Err(format!(
                        "{name}: a local user name cannot contain ':' (it could be another identity's subject)"
                    ));
                }
                let hash = hash_password(&password_from(&password_env)?)?;
                store
                    .insert_user(&UserRecord {
                        username: name.clone(),
                        subject: name.clone(),
                        password_hash: hash,
                        disabled: false,
                        created_at: now,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                println!("added user {name}");
            }
            UsersCommand::Passwd { name, password_env } => {
                let hash = hash_password(&password_from(&password_env)?)?;
                if !store
                    .set_password(&name, &hash, now)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("no user {name}"));
                }
                println!(
                    "password of {name} changed; their sessions, consents and grants are ended"
                );
            }
            UsersCommand::Disable { name } => {
                if !store
                    .set_disabled(&name, true, now)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("no user {name}"));
                }
                println!("disabled user {name}; their sessions, consents and grants are ended");
            }
            UsersCommand::Enable { name } => {
                if !store
                    .set_disabled(&name, false, now)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("no user {name}"));
                }
                println!("enabled user {name}");
            }
            UsersCommand::List => {
                for u in store.list_users().await.map_err(|e| e.to_string())? {
                    println!(
                        "{}\t{}{}",
                        u.username,
                        u.subject,
                        if u.disabled { "\tdisabled" } else { "" }
                    );
                }
            }
            UsersCommand::Delete { name } => {
                if !store
                    .delete_user(&name, now)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("no user {name}"));
                }
                println!("deleted user {name}; their grants are revoked");
            }
        },
        AdminCommand::Clients { command } => match command {
            ClientsCommand::Add {
                name,
                redirect_uris,
                confidential,
                grants,
                scope,
                client_id,
                exchange_targets,
                jwks_file,
                introspection_resources,
            } => {
                let jwks = jwks_file
                    .map(|f| {
                        let text = std::fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?;
                        let keys = gatehouse_tokens::KeySet::parse(text.as_bytes())
                            .map_err(|e| format!("{f}: {e}"))?;
                        if keys.is_empty() {
                            return Err(format!("{f}: no usable asymmetric signing key"));
                        }
                        serde_json::from_str::<serde_json::Value>(&text)
                            .map_err(|e| format!("{f}: {e}"))
                    })
                    .transpose()?;
                for t in &exchange_targets {
                    gatehouse_core::Resource::parse(t)
                        .map_err(|e| format!("--exchange-target: {e}"))?;
                }
                for t in &introspection_resources {
                    gatehouse_core::Resource::parse(t)
                        .map_err(|e| format!("--introspect-for: {e}"))?;
                }
                if !introspection_resources.is_empty() && !confidential {
                    return Err("--introspect-for needs --confidential".into());
                }
                for u in &redirect_uris {
                    RedirectUri::parse(u).map_err(|e| e.to_string())?;
                }
                let grants = if grants.is_empty() {
                    vec!["authorization_code".to_owned(), "refresh_token".to_owned()]
                } else {
                    grants
                };
                if grants.iter().any(|g| g == "authorization_code") && redirect_uris.is_empty() {
                    return Err(
                        "--redirect-uri is required for the authorization_code grant".into(),
                    );
                }
                if let Some(s) = &scope {
                    ScopeSet::parse(s).map_err(|e| e.to_string())?;
                }
                let id = client_id.unwrap_or_else(random_id);
                let secret = (confidential && jwks.is_none()).then(random_token);
                let hash = secret.as_deref().map(sha256_hex);
                store
                    .insert_client(&ClientRecord {
                        client_id: id.clone(),
                        secret_hash: hash,
                        auth_method: match (&jwks, confidential) {
                            (Some(_), _) => "private_key_jwt".into(),
                            (None, true) => "client_secret_basic".into(),
                            (None, false) => "none".into(),
                        },
                        redirect_uris,
                        grant_types: grants,
                        client_name: Some(name),
                        scope,
                        source: ClientSource::Preregistered,
                        application_type: None,
                        metadata: {
                            let mut m = serde_json::json!({
                                "token_exchange_targets": exchange_targets,
                                "introspection_resources": introspection_resources,
                            });
                            if let Some(k) = &jwks {
                                m["jwks"] = k.clone();
                            }
                            m
                        },
                        created_at: now,
                        disabled: false,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                println!("client_id: {id}");
                if let Some(s) = secret {
                    println!("client_secret: {s}");
                    eprintln!("(the secret is shown once; only its hash is stored)");
                }
            }
            ClientsCommand::List => {
                for c in store.list_clients().await.map_err(|e| e.to_string())? {
                    println!(
                        "{}\t{}\t{}\t{}{}",
                        c.client_id,
                        c.source.as_str(),
                        c.client_name.unwrap_or_default(),
                        c.redirect_uris.join(" "),
                        if c.disabled { "\tdisabled" } else { "" }
                    );
                }
            }
            ClientsCommand::Delete { client_id } => {
                if !store
                    .delete_client(&client_id, now)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("no client {client_id}"));
                }
                println!("deleted client {client_id}; its grants are revoked");
            }
        },
        AdminCommand::Keys { command } => {
            let kek = std::env::var("GATEHOUSE_KEY_ENCRYPTION_KEY")
                .ok()
                .map(|k| KeyEncryptionKey::from_base64(&k))
                .transpose()?;
            let km = KeyManager::load(store.clone(), Arc::new(clock), 300, kek)
                .await
                .map_err(|e| e.description)?;
            match command {
                KeysCommand::Rotate => {
                    let kid = km.rotate().await.map_err(|e| e.description)?;
                    println!("active signing key: {kid}");
                }
                KeysCommand::List => {
                    for (kid, retired) in km.list() {
                        println!("{kid}\t{}", if retired { "retired" } else { "active" });
                    }
                }
            }
        }
        AdminCommand::Revoke { subject, client } => {
            let n = match (&subject, &client) {
                (Some(subject), client) => {
                    store
                        .revoke_grants_of(subject, client.as_deref(), now)
                        .await
                }
                (None, Some(client)) => store.revoke_client_grants(client, now).await,
                (None, None) => return Err("give --subject, --client or both".into()),
            }
            .map_err(|e| e.to_string())?;
            println!("revoked {n} grant(s)");
        }
    }
    store.close().await;
    Ok(())
}
