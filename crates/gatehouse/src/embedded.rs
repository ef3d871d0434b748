//! The embedded authorization server as `serve --config` runs it.
use crate::Embedded;
use crate::config::Config;
use gatehouse_core::{SecretString, SystemClock};
use gatehouse_fetch::Fetcher;
use gatehouse_server::{
    AuthServer, AuthServerConfig, KeyEncryptionKey, ResourceEntry, UpstreamIdp,
};
use gatehouse_store::Store;
use std::sync::Arc;

/// The registration policy from `authorization_server.registration` (T17).
pub(crate) fn registration_policy(
    section: &crate::config::AuthServerSection,
) -> Result<gatehouse_server::RegistrationPolicy, String> {
    let r = &section.registration;
    let mut p = gatehouse_server::RegistrationPolicy {
        per_minute_per_source: section.registrations_per_minute,
        ..Default::default()
    };
    if let Some(g) = &r.grant_types {
        for x in g {
            if !matches!(
                x.as_str(),
                "authorization_code"
                    | "refresh_token"
                    | "client_credentials"
                    | "urn:ietf:params:oauth:grant-type:device_code"
            ) {
                return Err(format!(
                    "authorization_server.registration.grant_types: {x:?} cannot be opened to self-registered clients"
                ));
            }
        }
        p.grant_types = g.clone();
    }
    if let Some(m) = &r.auth_methods {
        for x in m {
            if !matches!(
                x.as_str(),
                "none" | "client_secret_basic" | "client_secret_post" | "private_key_jwt"
            ) {
                return Err(format!(
                    "authorization_server.registration.auth_methods: unknown method {x:?}"
                ));
            }
        }
        p.auth_methods = m.clone();
    }
    if let Some(s) = &r.machine_scopes {
        p.machine_scopes = s.clone();
    }
    p.initial_access_token_hash = r
        .initial_access_token
        .as_ref()
        .map(|t| gatehouse_server::sha256_hex(&t.0));
    if let Some(n) = r.per_minute_total {
        p.per_minute_total = n;
    }
    if let Some(t) = r.unused_ttl_seconds {
        p.unused_ttl_secs = t.max(60);
    }
    Ok(p)
}

/// `authorization_server.access_token_ttl_seconds`, within 30 s … 1 h.
pub(crate) fn access_token_ttl(
    section: &crate::config::AuthServerSection,
) -> Result<Option<i64>, String> {
    match section.access_token_ttl_seconds {
        Some(t) if !(30..=3600).contains(&t) => {
            Err("authorization_server.access_token_ttl_seconds must be 30 … 3600".into())
        }
        t => Ok(t),
    }
}

pub(crate) async fn build(
    cfg: &Config,
    revocations: &Arc<gatehouse_tokens::Revocations>,
) -> Result<Option<Embedded>, String> {
    let (Some(section), Some(issuer)) = (&cfg.authorization_server, cfg.embedded_issuer()?) else {
        return Ok(None);
    };
    let store = open_store(&section.database.0, "authorization_server.database").await?;
    let resources = if section.resources.is_empty() {
        // The demo endpoint and every gateway upstream, with the scopes their guards advertise.
        crate::plan::resource_scopes(cfg)?
            .into_iter()
            .map(|(resource, scopes)| ResourceEntry { resource, scopes })
            .collect()
    } else {
        section
            .resources
            .iter()
            .map(|r| ResourceEntry {
                resource: r.resource.clone(),
                scopes: r.scopes.clone(),
            })
            .collect()
    };
    let mut ac = AuthServerConfig::new(issuer.clone(), resources);
    ac.dcr_enabled = section.dynamic_registration;
    ac.registration = registration_policy(section)?;
    ac.dangerous_client_fetch_loopback = cfg.dangerous.allow_loopback_client_fetch.clone();
    ac.cimd_enabled = section.client_metadata_documents;
    if let Some(t) = access_token_ttl(section)? {
        ac.access_token_ttl = t;
    }
    if let Some(t) = section.refresh_token_ttl_seconds {
        ac.refresh_token_ttl = t.max(60);
    }
    ac.scope_descriptions
        .extend(section.scope_descriptions.clone());
    ac.local_login = section.local_login;
    ac.dpop_nonce = section.dpop_nonce;
    ac.jwt_bearer = jwt_bearer_issuers(section)?;
    ac.console = gatehouse_server::ConsoleConfig {
        admin_users: section.admin.users.clone(),
        admin_groups: section.admin.groups.clone(),
        admin_max_age_secs: section.admin.max_age_seconds.unwrap_or(3600).max(60),
        audit: cfg
            .gateway
            .as_ref()
            .and_then(|g| g.audit_log.clone())
            .map(|path| Arc::new(crate::audit_view::AuditFile { path }) as _),
    };
    ac.key_encryption_key = section
        .key_encryption_key
        .as_ref()
        .map(|k| KeyEncryptionKey::from_base64(&k.0))
        .transpose()
        .map_err(|e| format!("authorization_server.key_encryption_key: {e}"))?;
    if ac.key_encryption_key.is_none() {
        tracing::warn!(
            "signing keys are stored unencrypted; set authorization_server.key_encryption_key"
        );
    }
    ac.upstream = section.upstream.as_ref().map(|u| UpstreamIdp {
        issuer: u.issuer.clone(),
        client_id: u.client_id.0.clone(),
        client_secret: SecretString::new(u.client_secret.0.clone()),
        scopes: u.scopes.clone(),
        subject_claim: u.subject_claim.clone(),
        subject_prefix: u.subject_prefix.clone(),
        groups_claim: u.groups_claim.clone(),
        display_name: u.name.clone(),
    });
    // Metadata documents and the identity provider are fetched with the strict policy (https,
    // public addresses) plus only the loopback exceptions the operator named as dangerous.
    let fetcher = Fetcher::new(cfg.fetch_policy()?).map_err(|e| e.to_string())?;
    let tenants = cfg.tenant_issuers()?;
    let mut router = axum::Router::new();
    let mut banner = Vec::new();
    // GW-09: the public client through which a browser proves who it is before connecting an
    // upstream account (see connect.rs); kept in step with the config at every start.
    let connect = match &ac.key_encryption_key {
        Some(kek)
            if cfg
                .gateway
                .iter()
                .flat_map(|g| &g.upstreams)
                .any(|u| u.user_oauth.is_some()) =>
        {
            let public = cfg.public_url();
            store
                .upsert_client(&gatehouse_store::ClientRecord {
                    client_id: gatehouse_gateway::connect::IDENTITY_CLIENT.into(),
                    secret_hash: None,
                    auth_method: "none".into(),
                    redirect_uris: vec![format!("{}/connect/return", public.trim_end_matches('/'))],
                    grant_types: vec!["authorization_code".into()],
                    client_name: Some(
                        "Gatehouse gateway: connect your accounts at its servers".into(),
                    ),
                    scope: None,
                    source: gatehouse_store::ClientSource::Preregistered,
                    application_type: Some("web".into()),
                    metadata: serde_json::json!({}),
                    created_at: time::OffsetDateTime::now_utc().unix_timestamp(),
                    disabled: false,
                })
                .await
                .map_err(|e| format!("authorization_server.database: {e}"))?;
            Some(gatehouse_gateway::Backend {
                vault: Arc::new(StoreVault {
                    store: store.clone(),
                    kek: kek.clone(),
                }),
                issuer: issuer.as_str().trim_end_matches('/').to_owned(),
            })
        }
        _ => None,
    };
    let mut servers = vec![(ac.clone(), store)];
    for ((name, tenant_issuer), t) in tenants.into_iter().zip(&section.tenants) {
        let mut tac = ac.clone();
        tac.issuer = tenant_issuer;
        tac.tenant = Some(name.clone());
        let what = format!("authorization_server.tenants.{name}.database");
        servers.push((tac, open_store(&t.database.0, &what).await?));
    }
    let mut stores = Vec::new();
    let mut running = Vec::new();
    for (c, store) in servers {
        stores.push(store.clone());
        let issuer = c.issuer.clone();
        let server = AuthServer::with_revocations(
            c,
            store,
            fetcher.clone(),
            Arc::new(SystemClock),
            Some(revocations.clone()),
        )
        .await
        .map_err(|e| e.description)?;
        tracing::info!(%issuer, backend = server.store().backend(), "embedded authorization server");
        server.spawn_maintenance(std::time::Duration::from_secs(60));
        // T23: what `gatehouse admin` or another process on this store revokes reaches this
        // process's guards and gateways within a second.
        server.spawn_revocation_feed(std::time::Duration::from_secs(1));
        banner.push(format!("  authorization server {issuer}"));
        router = router.merge(server.router());
        running.push(server);
    }
    Ok(Some(Embedded {
        router,
        banner,
        connect,
        revocations: revocations.clone(),
        stores,
        servers: running,
    }))
}

/// `authorization_server.jwt_bearer`: each entry is exactly one of `id_jag` and `workload`;
/// issuers are unique; rules name a client and at least one claim.
pub(crate) fn jwt_bearer_issuers(
    section: &crate::config::AuthServerSection,
) -> Result<Vec<gatehouse_server::AssertionIssuer>, String> {
    use gatehouse_server::{AssertionIssuer, AssertionKind, WorkloadRule};
    let mut out: Vec<AssertionIssuer> = Vec::new();
    for (n, e) in section.jwt_bearer.iter().enumerate() {
        let at = format!("authorization_server.jwt_bearer[{n}]");
        if out.iter().any(|i| i.issuer == e.issuer) {
            return Err(format!("{at}: issuer {} is listed twice", e.issuer));
        }
        gatehouse_core::Issuer::parse(&e.issuer).map_err(|err| format!("{at}.issuer: {err}"))?;
        let prefix = |p: &Option<String>| p.clone().unwrap_or_else(|| format!("{}:", e.name));
        let kind = match (&e.id_jag, &e.workload) {
            (Some(j), None) => AssertionKind::IdJag {
                subject_claim: j.subject_claim.clone(),
                subject_prefix: prefix(&j.subject_prefix),
                scopes: j.scopes.clone(),
            },
            (None, Some(w)) => {
                let mut rules = Vec::new();
                for (k, r) in w.rules.iter().enumerate() {
                    if r.claims.is_empty() {
                        return Err(format!(
                            "{at}.workload.rules[{k}]: name at least one claim to match (sub, repository, namespace …)"
                        ));
                    }
                    if r.client_id.is_empty() {
                        return Err(format!("{at}.workload.rules[{k}].client_id is empty"));
                    }
                    rules.push(WorkloadRule {
                        claims: r.claims.clone().into_iter().collect(),
                        client_id: r.client_id.clone(),
                        scopes: r.scopes.clone(),
                    });
                }
                AssertionKind::Workload {
                    rules,
                    subject_prefix: prefix(&w.subject_prefix),
                }
            }
            _ => return Err(format!("{at}: give exactly one of id_jag and workload")),
        };
        out.push(AssertionIssuer {
            name: e.name.clone(),
            issuer: e.issuer.clone(),
            jwks_uri: e.jwks_uri.clone(),
            kind,
        });
    }
    Ok(out)
}

async fn open_store(db: &str, what: &str) -> Result<Store, String> {
    if let Some(path) = db.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{what}: {}: {e}", dir.display()))?;
    }
    Store::open(db).await.map_err(|e| format!("{what}: {e}"))
}

/// GW-09/GW-12: per-user upstream grants in the authorization server's store, sealed
/// (AES-256-GCM under the key-encryption key) with a label naming owner and upstream, so a
/// sealed grant moved to another row does not open.
struct StoreVault {
    store: Store,
    kek: KeyEncryptionKey,
}

impl StoreVault {
    fn label(owner: &gatehouse_gateway::Owner, upstream: &str) -> String {
        format!("upstream-grant:{}:{upstream}", owner.key())
    }
}

impl gatehouse_gateway::GrantVault for StoreVault {
    fn load<'a>(
        &'a self,
        owner: &'a gatehouse_gateway::Owner,
        upstream: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Vec<u8>>, gatehouse_gateway::VaultError>>
    {
        Box::pin(async move {
            let err = |e: String| gatehouse_gateway::VaultError(e);
            let Some(sealed) = self
                .store
                .get_upstream_grant(&owner.key(), upstream)
                .await
                .map_err(|e| err(e.to_string()))?
            else {
                return Ok(None);
            };
            self.kek
                .open_secret(&Self::label(owner, upstream), &sealed)
                .map(Some)
                .map_err(err)
        })
    }

    fn save<'a>(
        &'a self,
        owner: &'a gatehouse_gateway::Owner,
        upstream: &'a str,
        grant: Vec<u8>,
    ) -> futures::future::BoxFuture<'a, Result<(), gatehouse_gateway::VaultError>> {
        Box::pin(async move {
            let err = |e: String| gatehouse_gateway::VaultError(e);
            let sealed = self
                .kek
                .seal_secret(&Self::label(owner, upstream), &grant)
                .map_err(err)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            self.store
                .put_upstream_grant(&owner.key(), upstream, &sealed, now)
                .await
                .map_err(|e| err(e.to_string()))
        })
    }

    fn forget<'a>(
        &'a self,
        owner: &'a gatehouse_gateway::Owner,
        upstream: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), gatehouse_gateway::VaultError>> {
        Box::pin(async move {
            self.store
                .delete_upstream_grant(&owner.key(), upstream)
                .await
                .map(|_| ())
                .map_err(|e| gatehouse_gateway::VaultError(e.to_string()))
        })
    }
}
