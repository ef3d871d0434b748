//! What the admin console and the account page read and change (issue 18).
use crate::*;
use std::collections::{BTreeMap, BTreeSet};

#[derive(sqlx::FromRow)]
struct LiveGrantRow {
    client_id: String,
    resource: String,
    scope: String,
    created_at: i64,
    last_rotated: Option<i64>,
}

type Apps = BTreeMap<(String, String), (BTreeSet<String>, ApprovedApp)>;

fn app_entry<'a>(
    apps: &'a mut Apps,
    client_id: &str,
    resource: &str,
    at: i64,
) -> &'a mut (BTreeSet<String>, ApprovedApp) {
    apps.entry((client_id.to_owned(), resource.to_owned()))
        .or_insert_with(|| {
            (
                BTreeSet::new(),
                ApprovedApp {
                    client_id: client_id.to_owned(),
                    resource: resource.to_owned(),
                    scope: String::new(),
                    granted_at: at,
                    last_used_at: None,
                    live_grants: 0,
                },
            )
        })
}

impl Store {
    /// Disables a client (revoking every grant it holds and the consents users gave it, in one
    /// transaction) or enables it again. Returns whether it exists.
    pub async fn set_client_disabled(
        &self,
        client_id: &str,
        disabled: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_tx!(self, tx => {
            let n = sqlx::query("UPDATE clients SET disabled_at = $1 WHERE client_id = $2")
                .bind(disabled.then_some(now)).bind(client_id).execute(&mut *tx).await?.rows_affected();
            if disabled && n > 0 {
                sqlx::query("UPDATE grants SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL").bind(now).bind(client_id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM consents WHERE client_id = $1").bind(client_id).execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(n > 0)
        })
    }

    /// Replaces a confidential client's secret (its SHA-256). Public clients and clients that
    /// authenticate with keys have none to replace: returns false for them and unknown ids.
    pub async fn set_client_secret(
        &self,
        client_id: &str,
        secret_hash: &str,
    ) -> Result<bool, StoreError> {
        let n = with_write!(self, p => sqlx::query("UPDATE clients SET secret_hash = $1 WHERE client_id = $2 AND secret_hash IS NOT NULL")
            .bind(secret_hash).bind(client_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// The newest `limit` remembered consents, newest first.
    pub async fn list_consents(&self, limit: i64) -> Result<Vec<ConsentRecord>, StoreError> {
        let rows: Vec<crate::ops::ConsentRow> = with_read!(self, p => sqlx::query_as("SELECT subject, client_id, resource, scope, redirect_uris, granted_at FROM consents ORDER BY granted_at DESC, subject, client_id, resource LIMIT $1")
            .bind(limit).fetch_all(p).await)?;
        rows.into_iter().map(ConsentRecord::try_from).collect()
    }

    /// Ends what a user approved for one client and one resource: the remembered consent and
    /// every grant (so every token) of it. Returns how many grants were revoked.
    pub async fn revoke_approval(
        &self,
        subject: &str,
        client_id: &str,
        resource: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        with_tx!(self, tx => {
            let n = sqlx::query("UPDATE grants SET revoked_at = $1 WHERE subject = $2 AND client_id = $3 AND resource = $4 AND revoked_at IS NULL")
                .bind(now).bind(subject).bind(client_id).bind(resource).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM consents WHERE subject = $1 AND client_id = $2 AND resource = $3")
                .bind(subject).bind(client_id).bind(resource).execute(&mut *tx).await?;
            Ok::<_, StoreError>(n)
        })
    }

    /// The newest `limit` browser sessions that have not expired, newest first.
    pub async fn list_sessions(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT id_hash, subject, auth_time, expires_at, claims FROM sessions WHERE expires_at > $1 ORDER BY auth_time DESC, id_hash LIMIT $2")
            .bind(now).bind(limit).fetch_all(p).await)?,
        )
    }

    /// The newest `limit` clients (strangers can register many: the console never loads them
    /// all), newest first.
    pub async fn list_clients_newest(&self, limit: i64) -> Result<Vec<ClientRecord>, StoreError> {
        let rows: Vec<crate::ops::ClientRow> = with_read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {} FROM clients ORDER BY created_at DESC, client_id LIMIT $1", crate::ops::CLIENT_COLS)))
            .bind(limit).fetch_all(p).await)?;
        rows.into_iter().map(ClientRecord::try_from).collect()
    }

    /// How many clients, users, remembered consents and live browser sessions there are.
    pub async fn console_counts(&self, now: i64) -> Result<ConsoleCounts, StoreError> {
        let (clients, users, consents): (i64, i64, i64) = with_read!(self, p => sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM clients), (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM consents)")
            .fetch_one(p).await)?;
        let (sessions,): (i64,) = with_read!(self, p => sqlx::query_as("SELECT COUNT(*) FROM sessions WHERE expires_at > $1")
            .bind(now).fetch_one(p).await)?;
        Ok(ConsoleCounts {
            clients,
            users,
            consents,
            sessions,
        })
    }

    /// The apps a user approved: remembered consents and live grants, one entry per client and
    /// resource, most recently used first.
    pub async fn approved_apps(&self, subject: &str) -> Result<Vec<ApprovedApp>, StoreError> {
        let rows: Vec<crate::ops::ConsentRow> = with_read!(self, p => sqlx::query_as("SELECT subject, client_id, resource, scope, redirect_uris, granted_at FROM consents WHERE subject = $1")
            .bind(subject).fetch_all(p).await)?;
        let consents = rows
            .into_iter()
            .map(ConsentRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        // Last use: the newest rotation of any of the grant's refresh tokens (each rotation
        // issued tokens), else when the grant was made. Read, never written on the hot path.
        let grants: Vec<LiveGrantRow> = with_read!(self, p => sqlx::query_as("SELECT g.client_id, g.resource, g.scope, g.created_at, (SELECT MAX(r.rotated_at) FROM refresh_tokens r WHERE r.grant_id = g.grant_id) AS last_rotated FROM grants g WHERE g.subject = $1 AND g.revoked_at IS NULL")
            .bind(subject).fetch_all(p).await)?;
        let mut apps = Apps::new();
        for c in &consents {
            let (scopes, app) = app_entry(&mut apps, &c.client_id, &c.resource, c.granted_at);
            scopes.extend(c.scope.split_whitespace().map(str::to_owned));
            app.granted_at = app.granted_at.min(c.granted_at);
        }
        for g in &grants {
            let (scopes, app) = app_entry(&mut apps, &g.client_id, &g.resource, g.created_at);
            scopes.extend(g.scope.split_whitespace().map(str::to_owned));
            app.granted_at = app.granted_at.min(g.created_at);
            let used = g.last_rotated.unwrap_or(g.created_at).max(g.created_at);
            app.last_used_at = Some(app.last_used_at.map_or(used, |t| t.max(used)));
            app.live_grants += 1;
        }
        let mut out: Vec<ApprovedApp> = apps
            .into_values()
            .map(|(scopes, mut app)| {
                app.scope = scopes.into_iter().collect::<Vec<_>>().join(" ");
                app
            })
            .collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.last_used_at.unwrap_or(a.granted_at)));
        Ok(out)
    }

    pub async fn insert_admin_event(&self, e: &AdminEvent) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO admin_events (event_id, at, actor, action, target, detail) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&e.event_id).bind(e.at).bind(&e.actor).bind(&e.action).bind(&e.target).bind(&e.detail).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The newest console actions, newest first.
    pub async fn admin_events(&self, limit: i64) -> Result<Vec<AdminEvent>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT event_id, at, actor, action, target, detail FROM admin_events ORDER BY at DESC, event_id DESC LIMIT $1")
            .bind(limit).fetch_all(p).await)?,
        )
    }
}
