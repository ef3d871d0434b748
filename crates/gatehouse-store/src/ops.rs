//! Store operations, each written once for both backends.
use crate::*;

/// Ends what a user's identity opened (T23), inside a transaction: browser sessions, remembered
/// consents, grants. A macro because the transaction's type differs per backend.
macro_rules! end_user {
    ($tx:ident, $subject:expr, $now:expr) => {{
        sqlx::query("DELETE FROM sessions WHERE subject = $1")
            .bind($subject)
            .execute(&mut *$tx)
            .await?;
        sqlx::query("DELETE FROM consents WHERE subject = $1")
            .bind($subject)
            .execute(&mut *$tx)
            .await?;
        sqlx::query("UPDATE grants SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL")
            .bind($now)
            .bind($subject)
            .execute(&mut *$tx)
            .await?;
    }};
}

#[derive(sqlx::FromRow)]
pub(crate) struct ClientRow {
    pub(crate) client_id: String,
    pub(crate) secret_hash: Option<String>,
    pub(crate) auth_method: String,
    pub(crate) redirect_uris: String,
    pub(crate) grant_types: String,
    pub(crate) client_name: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) source: String,
    pub(crate) application_type: Option<String>,
    pub(crate) metadata: String,
    pub(crate) created_at: i64,
    pub(crate) disabled_at: Option<i64>,
}

impl TryFrom<ClientRow> for ClientRecord {
    type Error = StoreError;
    fn try_from(r: ClientRow) -> Result<Self, StoreError> {
        fn json<T: serde::de::DeserializeOwned>(
            id: &str,
            s: &str,
            what: &str,
        ) -> Result<T, StoreError> {
            serde_json::from_str(s)
                .map_err(|e| StoreError::Corrupt(format!("client {id}: {what}: {e}")))
        }
        Ok(ClientRecord {
            redirect_uris: json(&r.client_id, &r.redirect_uris, "redirect_uris")?,
            grant_types: json(&r.client_id, &r.grant_types, "grant_types")?,
            metadata: json(&r.client_id, &r.metadata, "metadata")?,
            source: ClientSource::parse(&r.source).ok_or_else(|| {
                StoreError::Corrupt(format!("client {}: source {}", r.client_id, r.source))
            })?,
            client_id: r.client_id,
            secret_hash: r.secret_hash,
            auth_method: r.auth_method,
            client_name: r.client_name,
            scope: r.scope,
            application_type: r.application_type,
            created_at: r.created_at,
            disabled: r.disabled_at.is_some(),
        })
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    username: String,
    subject: String,
    password_hash: String,
    disabled: i64,
    created_at: i64,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        UserRecord {
            username: r.username,
            subject: r.subject,
            password_hash: r.password_hash,
            disabled: r.disabled != 0,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ConsentRow {
    subject: String,
    client_id: String,
    resource: String,
    scope: String,
    redirect_uris: String,
    granted_at: i64,
}

impl TryFrom<ConsentRow> for ConsentRecord {
    type Error = StoreError;
    fn try_from(r: ConsentRow) -> Result<Self, StoreError> {
        Ok(ConsentRecord {
            redirect_uris: serde_json::from_str(&r.redirect_uris)
                .map_err(|e| StoreError::Corrupt(format!("consent redirect_uris: {e}")))?,
            subject: r.subject,
            client_id: r.client_id,
            resource: r.resource,
            scope: r.scope,
            granted_at: r.granted_at,
        })
    }
}

pub(crate) const CLIENT_COLS: &str = "client_id, secret_hash, auth_method, redirect_uris, grant_types, client_name, scope, source, application_type, metadata, created_at, disabled_at";

/// Whether a presented refresh token may rotate: a fresh one always; a rotated one once more
/// within `grace` seconds (racing refreshes), and only while neither that grace use nor its
/// successor has been used (`reuse_count` marks both). Anything else is reuse (AS-29, T9).
pub(crate) fn may_rotate(r: &RefreshRecord, now: i64, grace: i64) -> bool {
    r.reuse_count == 0 && r.rotated_at.is_none_or(|t| now - t <= grace)
}

/// 1 when token `$1`, which may not rotate, lost a race rather than being replayed: it really
/// rotated (a retired twin has no child), at or after `$2` (within the grace window), and none of
/// its successors (child, grace child) has been used or retired since.
const LOST_RACE: &str = "SELECT COUNT(*) FROM refresh_tokens t WHERE t.token_hash = $1 AND t.child_hash IS NOT NULL AND t.rotated_at >= $2 AND NOT EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.rotated_at IS NOT NULL AND (s.token_hash = t.child_hash OR s.token_hash = t.grace_child))";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    // ---- clients ----------------------------------------------------------------------------

    /// Inserts a client; `Conflict` if the id exists.
    pub async fn insert_client(&self, c: &ClientRecord) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let grants = serde_json::to_string(&c.grant_types)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let meta = c.metadata.to_string();
        let r = with_write!(self, p => sqlx::query(
            "INSERT INTO clients (client_id, secret_hash, auth_method, redirect_uris, grant_types, client_name, scope, source, application_type, metadata, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)")
            .bind(&c.client_id).bind(&c.secret_hash).bind(&c.auth_method).bind(&uris).bind(&grants)
            .bind(&c.client_name).bind(&c.scope).bind(c.source.as_str()).bind(&c.application_type)
            .bind(&meta).bind(c.created_at)
            .execute(p).await.map(|_| ()));
        r.map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("client {}", c.client_id))
            } else {
                e.into()
            }
        })
    }

    /// Inserts or replaces a client (used for refreshed metadata documents and admin updates).
    pub async fn upsert_client(&self, c: &ClientRecord) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let grants = serde_json::to_string(&c.grant_types)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let meta = c.metadata.to_string();
        with_write!(self, p => sqlx::query(
            "INSERT INTO clients (client_id, secret_hash, auth_method, redirect_uris, grant_types, client_name, scope, source, application_type, metadata, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)
             ON CONFLICT (client_id) DO UPDATE SET secret_hash = excluded.secret_hash, auth_method = excluded.auth_method,
               redirect_uris = excluded.redirect_uris, grant_types = excluded.grant_types, client_name = excluded.client_name,
               scope = excluded.scope, source = excluded.source, application_type = excluded.application_type, metadata = excluded.metadata")
            .bind(&c.client_id).bind(&c.secret_hash).bind(&c.auth_method).bind(&uris).bind(&grants)
            .bind(&c.client_name).bind(&c.scope).bind(c.source.as_str()).bind(&c.application_type)
            .bind(&meta).bind(c.created_at)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        if let Store::Sqlite { reader, .. } = self {
            let row = reader.run(|c| crate::sqlite_ops::get_client(c, client_id))?;
            return row.map(ClientRecord::try_from).transpose();
        }
        let row: Option<ClientRow> = with_read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {CLIENT_COLS} FROM clients WHERE client_id = $1")))
            .bind(client_id).fetch_optional(p).await)?;
        row.map(ClientRecord::try_from).transpose()
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let rows: Vec<ClientRow> = with_read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {CLIENT_COLS} FROM clients ORDER BY created_at, client_id")))
            .fetch_all(p).await)?;
        rows.into_iter().map(ClientRecord::try_from).collect()
    }

    /// Deletes a client and revokes everything it holds. Returns whether it existed.
    pub async fn delete_client(&self, client_id: &str, now: i64) -> Result<bool, StoreError> {
        with_tx!(self, tx => {
            let n = sqlx::query("DELETE FROM clients WHERE client_id = $1").bind(client_id).execute(&mut *tx).await?.rows_affected();
            sqlx::query("UPDATE grants SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL").bind(now).bind(client_id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM consents WHERE client_id = $1").bind(client_id).execute(&mut *tx).await?;
            Ok::<_, StoreError>(n > 0)
        })
    }

    // ---- users ------------------------------------------------------------------------------

    pub async fn insert_user(&self, u: &UserRecord) -> Result<(), StoreError> {
        let r = with_write!(self, p => sqlx::query("INSERT INTO users (username, subject, password_hash, disabled, created_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&u.username).bind(&u.subject).bind(&u.password_hash).bind(i64::from(u.disabled)).bind(u.created_at)
            .execute(p).await.map(|_| ()));
        r.map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("user {}", u.username))
            } else {
                e.into()
            }
        })
    }

    /// Sets a user's password and ends what the old one opened (T23): browser sessions,
    /// remembered consents and grants. False when there is no such user.
    pub async fn set_password(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let Some(u) = self.get_user(username).await? else {
            return Ok(false);
        };
        with_tx!(self, tx => {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2").bind(password_hash).bind(username).execute(&mut *tx).await?;
            end_user!(tx, &u.subject, now);
            Ok::<_, StoreError>(true)
        })
    }

    /// Disables (or enables) a user; disabling ends their sessions, consents and grants (T23).
    pub async fn set_disabled(
        &self,
        username: &str,
        disabled: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let Some(u) = self.get_user(username).await? else {
            return Ok(false);
        };
        with_tx!(self, tx => {
            sqlx::query("UPDATE users SET disabled = $1 WHERE username = $2").bind(i64::from(disabled)).bind(username).execute(&mut *tx).await?;
            if disabled {
                end_user!(tx, &u.subject, now);
            }
            Ok::<_, StoreError>(true)
        })
    }

    pub async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<UserRow> = with_read!(self, p => sqlx::query_as("SELECT username, subject, password_hash, disabled, created_at FROM users WHERE username = $1")
            .bind(username).fetch_optional(p).await)?;
        Ok(row.map(UserRecord::from))
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows: Vec<UserRow> = with_read!(self, p => sqlx::query_as("SELECT username, subject, password_hash, disabled, created_at FROM users ORDER BY username")
            .fetch_all(p).await)?;
        Ok(rows.into_iter().map(UserRecord::from).collect())
    }

    /// Deletes a user, their sessions and consents, and revokes their grants.
    pub async fn delete_user(&self, username: &str, now: i64) -> Result<bool, StoreError> {
        let Some(u) = self.get_user(username).await? else {
            return Ok(false);
        };
        with_tx!(self, tx => {
            sqlx::query("DELETE FROM users WHERE username = $1").bind(username).execute(&mut *tx).await?;
            end_user!(tx, &u.subject, now);
            Ok::<_, StoreError>(true)
        })
    }

    // ---- consent ----------------------------------------------------------------------------

    /// Consent is per user, client **and** resource (T1, T20): never shared across clients or
    /// resources.
    pub async fn get_consent(
        &self,
        subject: &str,
        client_id: &str,
        resource: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        let row: Option<ConsentRow> = with_read!(self, p => sqlx::query_as("SELECT subject, client_id, resource, scope, redirect_uris, granted_at FROM consents WHERE subject = $1 AND client_id = $2 AND resource = $3")
            .bind(subject).bind(client_id).bind(resource).fetch_optional(p).await)?;
        row.map(ConsentRecord::try_from).transpose()
    }

    pub async fn put_consent(&self, c: &ConsentRecord) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        with_write!(self, p => sqlx::query("INSERT INTO consents (subject, client_id, resource, scope, redirect_uris, granted_at) VALUES ($1,$2,$3,$4,$5,$6)
            ON CONFLICT (subject, client_id, resource) DO UPDATE SET scope = excluded.scope, redirect_uris = excluded.redirect_uris, granted_at = excluded.granted_at")
            .bind(&c.subject).bind(&c.client_id).bind(&c.resource).bind(&c.scope).bind(&uris).bind(c.granted_at).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    // ---- grants, codes, refresh tokens --------------------------------------------------------

    pub async fn get_grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT grant_id, subject, client_id, scope, resource, created_at, revoked_at, claims FROM grants WHERE grant_id = $1")
            .bind(grant_id).fetch_optional(p).await)?,
        )
    }

    pub async fn revoke_grant(&self, grant_id: &str, now: i64) -> Result<bool, StoreError> {
        let n = with_write!(self, p => sqlx::query("UPDATE grants SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL")
            .bind(now).bind(grant_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Revokes every grant of a subject (optionally only for one client), with the consents that
    /// would hand out new ones silently; without a client, the subject's browser sessions end too
    /// (T23). Returns how many grants were revoked.
    pub async fn revoke_grants_of(
        &self,
        subject: &str,
        client_id: Option<&str>,
        now: i64,
    ) -> Result<u64, StoreError> {
        with_tx!(self, tx => {
            let n = sqlx::query("UPDATE grants SET revoked_at = $1 WHERE subject = $2 AND ($3 IS NULL OR client_id = $3) AND revoked_at IS NULL")
                .bind(now).bind(subject).bind(client_id).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM consents WHERE subject = $1 AND ($2 IS NULL OR client_id = $2)").bind(subject).bind(client_id).execute(&mut *tx).await?;
            if client_id.is_none() {
                sqlx::query("DELETE FROM sessions WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(n)
        })
    }

    /// Revokes every grant a client holds, for every subject (its machine tokens and its users'
    /// alike: each token names its grant), with the consents users gave it; the client stays
    /// registered. Returns how many grants were revoked.
    pub async fn revoke_client_grants(&self, client_id: &str, now: i64) -> Result<u64, StoreError> {
        with_tx!(self, tx => {
            let n = sqlx::query("UPDATE grants SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL")
                .bind(now).bind(client_id).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM consents WHERE client_id = $1").bind(client_id).execute(&mut *tx).await?;
            Ok::<_, StoreError>(n)
        })
    }

    /// Grants revoked at or after `since` (grant id, revocation time), oldest first: what the
    /// guards and gateways of this process (and of replicas on the same store) must refuse.
    pub async fn revoked_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT grant_id, revoked_at FROM grants WHERE revoked_at >= $1 ORDER BY revoked_at LIMIT 100000")
            .bind(since).fetch_all(p).await)?,
        )
    }

    /// Stores a new grant and its authorization code together.
    pub async fn insert_grant_with_code(
        &self,
        g: &GrantRecord,
        c: &CodeRecord,
    ) -> Result<(), StoreError> {
        with_tx!(self, tx => {
            sqlx::query("INSERT INTO grants (grant_id, subject, client_id, scope, resource, created_at, revoked_at, claims) VALUES ($1,$2,$3,$4,$5,$6,NULL,$7)")
                .bind(&g.grant_id).bind(&g.subject).bind(&g.client_id).bind(&g.scope).bind(&g.resource).bind(g.created_at).bind(&g.claims)
                .execute(&mut *tx).await?;
            sqlx::query("INSERT INTO auth_codes (code_hash, grant_id, client_id, redirect_uri, code_challenge, scope, resource, subject, auth_time, expires_at, used_at, claims) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,NULL,$11)")
                .bind(&c.code_hash).bind(&c.grant_id).bind(&c.client_id).bind(&c.redirect_uri).bind(&c.code_challenge)
                .bind(&c.scope).bind(&c.resource).bind(&c.subject).bind(c.auth_time).bind(c.expires_at).bind(&c.claims)
                .execute(&mut *tx).await?;
            Ok::<_, StoreError>(())
        })
    }

    /// Stores a grant without a code (client_credentials, token exchange).
    pub async fn insert_grant(&self, g: &GrantRecord) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO grants (grant_id, subject, client_id, scope, resource, created_at, revoked_at, claims) VALUES ($1,$2,$3,$4,$5,$6,NULL,$7)")
            .bind(&g.grant_id).bind(&g.subject).bind(&g.client_id).bind(&g.scope).bind(&g.resource).bind(g.created_at).bind(&g.claims)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Marks a code used, exactly once, and stores the refresh token `issue` builds from it, in
    /// one transaction. A second redemption revokes the grant the first one issued (AS-08).
    /// `check` runs on the fresh record before anything is issued; if it fails, nothing changes.
    pub async fn redeem_code<E>(
        &self,
        code_hash: &str,
        now: i64,
        check: impl FnOnce(&CodeRecord) -> Result<Option<RefreshRecord>, E> + Send + 'static,
    ) -> Result<Result<Redeemed, E>, StoreError>
    where
        E: Send + 'static,
    {
        if let Store::Sqlite { writer, .. } = self {
            let code_hash = code_hash.to_owned();
            return writer
                .run(move |c| crate::sqlite_ops::redeem_code(c, &code_hash, now, check))
                .await;
        }
        with_tx!(self, tx => async {
            let row: Option<CodeRecord> = sqlx::query_as("SELECT code_hash, grant_id, client_id, redirect_uri, code_challenge, scope, resource, subject, auth_time, expires_at, used_at, claims FROM auth_codes WHERE code_hash = $1")
                .bind(code_hash).fetch_optional(&mut *tx).await?;
            let Some(c) = row else { return Ok(Ok(Redeemed::Unknown)) };
            let replayed = |grant_id: String| Ok(Ok(Redeemed::Replayed { grant_id }));
            if c.used_at.is_some() {
                // AS-08: only a fully valid replay revokes (see sqlite_ops::redeem_code).
                if let Err(e) = check(&c) {
                    return Ok(Err(e));
                }
                sqlx::query("UPDATE grants SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL").bind(now).bind(&c.grant_id).execute(&mut *tx).await?;
                return replayed(c.grant_id);
            }
            if c.expires_at <= now {
                return Ok(Ok(Redeemed::Expired));
            }
            let revoked: Option<Option<i64>> = sqlx::query_scalar("SELECT revoked_at FROM grants WHERE grant_id = $1")
                .bind(&c.grant_id).fetch_optional(&mut *tx).await?;
            if !matches!(revoked, Some(None)) {
                return Ok(Ok(Redeemed::Revoked));
            }
            let refresh = match check(&c) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            // Conditional: of two concurrent redemptions exactly one marks the code.
            let marked = sqlx::query("UPDATE auth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL").bind(now).bind(code_hash).execute(&mut *tx).await?.rows_affected();
            if marked != 1 {
                sqlx::query("UPDATE grants SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL").bind(now).bind(&c.grant_id).execute(&mut *tx).await?;
                return replayed(c.grant_id);
            }
            if let Some(r) = refresh {
                sqlx::query("INSERT INTO refresh_tokens (token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt) VALUES ($1,$2,$3,$4,$5,$6,NULL,0,NULL,$7)")
                    .bind(&r.token_hash).bind(&r.grant_id).bind(&r.client_id).bind(&r.scope).bind(&r.resource).bind(r.expires_at).bind(&r.dpop_jkt)
                    .execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(Ok(Redeemed::Fresh(Box::new(CodeRecord { used_at: Some(now), ..c }))))
        }.await)
    }

    /// Rotates a refresh token (AS-29, T9): the presented token is marked rotated and `issue`'s
    /// token stored. A rotated token presented again within `grace` seconds is accepted once more
    /// (two racing refreshes must not log the user out); any other reuse revokes the family.
    /// `check` validates the request against the stored record before anything changes.
    pub async fn rotate_refresh<E>(
        &self,
        token_hash: &str,
        now: i64,
        grace: i64,
        check: impl FnOnce(&RefreshRecord) -> Result<RefreshRecord, E> + Send + 'static,
    ) -> Result<Result<Rotated, E>, StoreError>
    where
        E: Send + 'static,
    {
        if let Store::Sqlite { writer, .. } = self {
            let token_hash = token_hash.to_owned();
            return writer
                .run(move |c| crate::sqlite_ops::rotate_refresh(c, &token_hash, now, grace, check))
                .await;
        }
        with_tx!(self, tx => async {
            let row: Option<RefreshRecord> = sqlx::query_as("SELECT token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash).fetch_optional(&mut *tx).await?;
            let Some(r) = row else { return Ok(Ok(Rotated::Unknown)) };
            let grant: Option<GrantRecord> = sqlx::query_as("SELECT grant_id, subject, client_id, scope, resource, created_at, revoked_at, claims FROM grants WHERE grant_id = $1").bind(&r.grant_id).fetch_optional(&mut *tx).await?;
            let Some(grant) = grant.filter(|g| g.revoked_at.is_none()) else {
                return Ok(Ok(Rotated::Revoked));
            };
            if r.expires_at <= now {
                return Ok(Ok(Rotated::Expired));
            }
            if !may_rotate(&r, now, grace) {
                let raced: i64 = sqlx::query_scalar(LOST_RACE).bind(token_hash).bind(now - grace).fetch_one(&mut *tx).await?;
                if raced > 0 {
                    return Ok(Ok(Rotated::Raced));
                }
                sqlx::query("UPDATE grants SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL").bind(now).bind(&r.grant_id).execute(&mut *tx).await?;
                return Ok(Ok(Rotated::Reused { grant_id: r.grant_id }));
            }
            let new = match check(&r) {
                Ok(n) => RefreshRecord { parent_hash: Some(r.token_hash.clone()), ..n },
                Err(e) => return Ok(Err(e)),
            };
            // Conditional updates decide races: the first use rotates the token, one more use
            // within the grace window is allowed, anything beyond is reuse.
            let mut grace_use = false;
            let rotated = sqlx::query("UPDATE refresh_tokens SET rotated_at = $1, child_hash = $3 WHERE token_hash = $2 AND rotated_at IS NULL").bind(now).bind(token_hash).bind(&new.token_hash).execute(&mut *tx).await?.rows_affected();
            if rotated != 1 {
                grace_use = true;
                let again = sqlx::query("UPDATE refresh_tokens SET reuse_count = 1, grace_child = $3 WHERE token_hash = $1 AND reuse_count = 0 AND rotated_at >= $2").bind(token_hash).bind(now - grace).bind(&new.token_hash).execute(&mut *tx).await?.rows_affected();
                if again != 1 {
                    // Another transaction took the grace use meanwhile (it has committed: the
                    // update waited for its lock): read what it left.
                    let raced: i64 = sqlx::query_scalar(LOST_RACE).bind(token_hash).bind(now - grace).fetch_one(&mut *tx).await?;
                    if raced > 0 {
                        return Ok(Ok(Rotated::Raced));
                    }
                    sqlx::query("UPDATE grants SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL").bind(now).bind(&r.grant_id).execute(&mut *tx).await?;
                    return Ok(Ok(Rotated::Reused { grant_id: r.grant_id }));
                }
            } else if let Some(parent) = &r.parent_hash
                // Using a successor ends its parent's grace and retires its siblings (T9, row 12);
                // siblings exist only if the parent's grace use already set reuse_count.
                && sqlx::query("UPDATE refresh_tokens SET reuse_count = 1 WHERE token_hash = $1 AND reuse_count = 0").bind(parent).execute(&mut *tx).await?.rows_affected() == 0
            {
                sqlx::query("UPDATE refresh_tokens SET rotated_at = $1, reuse_count = 1 WHERE token_hash IN (SELECT child_hash FROM refresh_tokens WHERE token_hash = $2 UNION ALL SELECT grace_child FROM refresh_tokens WHERE token_hash = $2) AND token_hash <> $3 AND rotated_at IS NULL")
                    .bind(now).bind(parent).bind(&r.token_hash).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO refresh_tokens (token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt) VALUES ($1,$2,$3,$4,$5,$6,NULL,0,$7,$8)")
                .bind(&new.token_hash).bind(&new.grant_id).bind(&new.client_id).bind(&new.scope).bind(&new.resource).bind(new.expires_at).bind(&new.parent_hash).bind(&new.dpop_jkt)
                .execute(&mut *tx).await?;
            Ok::<_, StoreError>(Ok(Rotated::Ok { old: r, grant: Box::new(grant), grace: grace_use }))
        }.await)
    }

    /// The refresh token's record, for revocation and introspection.
    pub async fn get_refresh(&self, token_hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash).fetch_optional(p).await)?,
        )
    }

    // ---- signing keys -----------------------------------------------------------------------

    pub async fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO signing_keys (kid, alg, private_der, public_jwk, created_at, retired_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&k.kid).bind(&k.alg).bind(&k.private_der).bind(&k.public_jwk).bind(k.created_at).bind(k.retired_at)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// All keys, newest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT kid, alg, private_der, public_jwk, created_at, retired_at FROM signing_keys ORDER BY (retired_at IS NULL) DESC, created_at DESC, kid")
            .fetch_all(p).await)?,
        )
    }

    /// Adds `new` as the active key and retires every other active key, atomically.
    pub async fn rotate_key(&self, new: &KeyRecord, now: i64) -> Result<(), StoreError> {
        with_tx!(self, tx => {
            sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL").bind(now).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO signing_keys (kid, alg, private_der, public_jwk, created_at, retired_at) VALUES ($1,$2,$3,$4,$5,NULL)")
                .bind(&new.kid).bind(&new.alg).bind(&new.private_der).bind(&new.public_jwk).bind(new.created_at)
                .execute(&mut *tx).await?;
            Ok::<_, StoreError>(())
        })
    }

    /// Deletes keys retired before `before` (their tokens have expired).
    pub async fn purge_keys(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            with_write!(self, p => sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
            .bind(before).execute(p).await.map(|r| r.rows_affected()))?,
        )
    }

    // ---- browser sessions and pending authorizations ------------------------------------------

    pub async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO sessions (id_hash, subject, auth_time, expires_at, claims) VALUES ($1,$2,$3,$4,$5)")
            .bind(&s.id_hash).bind(&s.subject).bind(s.auth_time).bind(s.expires_at).bind(&s.claims).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn get_session(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT id_hash, subject, auth_time, expires_at, claims FROM sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash).bind(now).fetch_optional(p).await)?,
        )
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn insert_pending(&self, r: &PendingRecord) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO pending_authorizations (id_hash, request, binding_hash, csrf_hash, expires_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&r.id_hash).bind(&r.request).bind(&r.binding_hash).bind(&r.csrf_hash).bind(r.expires_at).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn get_pending(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<PendingRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT id_hash, request, binding_hash, csrf_hash, expires_at FROM pending_authorizations WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash).bind(now).fetch_optional(p).await)?,
        )
    }

    /// Removes a pending authorization; true only for the caller that removed it (single use).
    pub async fn take_pending(&self, id_hash: &str) -> Result<bool, StoreError> {
        let n = with_write!(self, p => sqlx::query("DELETE FROM pending_authorizations WHERE id_hash = $1").bind(id_hash).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    pub async fn insert_upstream_login(&self, r: &UpstreamLoginRecord) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO upstream_logins (state_hash, pending_hash, verifier, nonce, expires_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&r.state_hash).bind(&r.pending_hash).bind(&r.verifier).bind(&r.nonce).bind(r.expires_at)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Removes and returns an upstream login (single use), if it has not expired.
    pub async fn take_upstream_login(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<UpstreamLoginRecord>, StoreError> {
        with_tx!(self, tx => async {
            let r: Option<UpstreamLoginRecord> = sqlx::query_as("SELECT state_hash, pending_hash, verifier, nonce, expires_at FROM upstream_logins WHERE state_hash = $1")
                .bind(state_hash).fetch_optional(&mut *tx).await?;
            sqlx::query("DELETE FROM upstream_logins WHERE state_hash = $1").bind(state_hash).execute(&mut *tx).await?;
            Ok::<_, StoreError>(r.filter(|r| r.expires_at > now))
        }.await)
    }

    /// The shared secret called `name`, created from `fresh` by the first replica that asks.
    pub async fn server_secret(&self, name: &str, fresh: &str) -> Result<String, StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name).bind(fresh).execute(p).await.map(|r| r.rows_affected()))?;
        let v: (String,) = with_write!(self, p => sqlx::query_as("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name).fetch_one(p).await)?;
        Ok(v.0)
    }

    /// Stores a new device authorization request. A user code already in use is a conflict
    /// (the caller draws another).
    pub async fn insert_device(&self, d: &DeviceRecord) -> Result<(), StoreError> {
        let r = with_write!(self, p => sqlx::query("INSERT INTO device_codes (device_hash, user_code_hash, client_id, scope, resource, expires_at, interval_secs, last_poll_at, status, grant_id, subject, claims) VALUES ($1,$2,$3,$4,$5,$6,$7,NULL,'pending',NULL,NULL,NULL)")
            .bind(&d.device_hash).bind(&d.user_code_hash).bind(&d.client_id).bind(&d.scope).bind(&d.resource).bind(d.expires_at).bind(d.interval_secs)
            .execute(p).await.map(|r| r.rows_affected()));
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("user code".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// The pending, unexpired request a user code names.
    pub async fn device_by_user_code(
        &self,
        user_code_hash: &str,
        now: i64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT device_hash, user_code_hash, client_id, scope, resource, expires_at, interval_secs, last_poll_at, status, grant_id, subject, claims FROM device_codes WHERE user_code_hash = $1 AND status = 'pending' AND expires_at > $2")
            .bind(user_code_hash).bind(now).fetch_optional(p).await)?,
        )
    }

    /// The user's answer to a pending device request, once: with a grant (stored in the same
    /// transaction) it is approved, without one denied. False when it was already answered or
    /// has expired.
    pub async fn decide_device(
        &self,
        device_hash: &str,
        grant: Option<&GrantRecord>,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_tx!(self, tx => async {
            let n = sqlx::query("UPDATE device_codes SET status = $1, grant_id = $2, subject = $3, claims = $4 WHERE device_hash = $5 AND status = 'pending' AND expires_at > $6")
                .bind(if grant.is_some() { "approved" } else { "denied" })
                .bind(grant.map(|g| &g.grant_id)).bind(grant.map(|g| &g.subject)).bind(grant.and_then(|g| g.claims.as_ref()))
                .bind(device_hash).bind(now)
                .execute(&mut *tx).await?.rows_affected();
            if n != 1 {
                return Ok(false);
            }
            if let Some(g) = grant {
                sqlx::query("INSERT INTO grants (grant_id, subject, client_id, scope, resource, created_at, revoked_at, claims) VALUES ($1,$2,$3,$4,$5,$6,NULL,$7)")
                    .bind(&g.grant_id).bind(&g.subject).bind(&g.client_id).bind(&g.scope).bind(&g.resource).bind(g.created_at).bind(&g.claims)
                    .execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(true)
        }.await)
    }

    /// One poll of the token endpoint with a device code by `client_id` (RFC 8628 §3.4, §3.5).
    /// Polls closer together than the interval (less a second for network jitter) get
    /// `SlowDown` and raise it by 5 s. An approved request is marked used exactly once and the
    /// refresh token `issue` builds from it stored with it; a second use revokes the grant.
    pub async fn poll_device<E: Send>(
        &self,
        device_hash: &str,
        client_id: &str,
        now: i64,
        issue: impl FnOnce(&DeviceRecord) -> Result<Option<RefreshRecord>, E> + Send,
    ) -> Result<Result<DevicePoll, E>, StoreError> {
        with_tx!(self, tx => async {
            let row: Option<DeviceRecord> = sqlx::query_as("SELECT device_hash, user_code_hash, client_id, scope, resource, expires_at, interval_secs, last_poll_at, status, grant_id, subject, claims FROM device_codes WHERE device_hash = $1")
                .bind(device_hash).fetch_optional(&mut *tx).await?;
            let Some(d) = row.filter(|d| d.client_id == client_id) else {
                return Ok(Ok(DevicePoll::Unknown));
            };
            if d.status == "used" {
                let grant_id = d.grant_id.clone().unwrap_or_default();
                sqlx::query("UPDATE grants SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL").bind(now).bind(&grant_id).execute(&mut *tx).await?;
                return Ok(Ok(DevicePoll::Replayed { grant_id }));
            }
            if d.expires_at <= now {
                return Ok(Ok(DevicePoll::Expired));
            }
            let too_soon = d.last_poll_at.is_some_and(|t| now - t < d.interval_secs - 1);
            sqlx::query("UPDATE device_codes SET last_poll_at = $1, interval_secs = interval_secs + $2 WHERE device_hash = $3")
                .bind(now).bind(if too_soon { 5i64 } else { 0 }).bind(device_hash).execute(&mut *tx).await?;
            if too_soon {
                return Ok(Ok(DevicePoll::SlowDown));
            }
            match d.status.as_str() {
                "pending" => return Ok(Ok(DevicePoll::Pending)),
                "approved" => {}
                _ => return Ok(Ok(DevicePoll::Denied)),
            }
            let revoked: Option<Option<i64>> = sqlx::query_scalar("SELECT revoked_at FROM grants WHERE grant_id = $1")
                .bind(&d.grant_id).fetch_optional(&mut *tx).await?;
            if !matches!(revoked, Some(None)) {
                return Ok(Ok(DevicePoll::Revoked));
            }
            // Checked before the code is spent: a wrong request (another resource) leaves it
            // usable.
            let refresh = match issue(&d) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            let marked = sqlx::query("UPDATE device_codes SET status = 'used' WHERE device_hash = $1 AND status = 'approved'")
                .bind(device_hash).execute(&mut *tx).await?.rows_affected();
            if marked != 1 {
                return Ok(Ok(DevicePoll::Unknown));
            }
            if let Some(r) = refresh {
                sqlx::query("INSERT INTO refresh_tokens (token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt) VALUES ($1,$2,$3,$4,$5,$6,NULL,0,NULL,$7)")
                    .bind(&r.token_hash).bind(&r.grant_id).bind(&r.client_id).bind(&r.scope).bind(&r.resource).bind(r.expires_at).bind(&r.dpop_jkt)
                    .execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(Ok(DevicePoll::Issued(Box::new(DeviceRecord { status: "used".into(), ..d }))))
        }.await)
    }

    /// Stores (or replaces) a user's sealed grant for an upstream (GW-09).
    pub async fn put_upstream_grant(
        &self,
        owner_hash: &str,
        upstream: &str,
        sealed: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("INSERT INTO upstream_grants (owner_hash, upstream, sealed, updated_at) VALUES ($1,$2,$3,$4) ON CONFLICT (owner_hash, upstream) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at")
            .bind(owner_hash).bind(upstream).bind(sealed).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A user's sealed grant for an upstream.
    pub async fn get_upstream_grant(
        &self,
        owner_hash: &str,
        upstream: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_read!(self, p => sqlx::query_as("SELECT sealed FROM upstream_grants WHERE owner_hash = $1 AND upstream = $2")
            .bind(owner_hash).bind(upstream).fetch_optional(p).await)?;
        Ok(row.map(|r| r.0))
    }

    /// Forgets a user's grant for an upstream; true when there was one.
    pub async fn delete_upstream_grant(
        &self,
        owner_hash: &str,
        upstream: &str,
    ) -> Result<bool, StoreError> {
        let n = with_write!(self, p => sqlx::query("DELETE FROM upstream_grants WHERE owner_hash = $1 AND upstream = $2")
            .bind(owner_hash).bind(upstream).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Records a client assertion's jti; false when it was seen before (a replay).
    pub async fn use_assertion_jti(
        &self,
        jti_hash: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let r = with_write!(self, p => sqlx::query("INSERT INTO assertion_jtis (jti_hash, expires_at) VALUES ($1, $2)")
            .bind(jti_hash).bind(expires_at).execute(p).await.map(|r| r.rows_affected()));
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    // ---- throttles ----------------------------------------------------------------------------

    /// The counter under `key_hash`, if it has not expired.
    pub async fn get_throttle(
        &self,
        key_hash: &str,
        now: i64,
    ) -> Result<Option<ThrottleRecord>, StoreError> {
        Ok(
            with_read!(self, p => sqlx::query_as("SELECT key_hash, window_start, count, locked_until, expires_at FROM throttles WHERE key_hash = $1 AND expires_at > $2")
            .bind(key_hash).bind(now).fetch_optional(p).await)?,
        )
    }

    /// Counts one event under `key_hash` in a window of `window` seconds (a new window starts
    /// when the old one has passed) and sets the lock `lock(count)` seconds from now (0: none).
    /// Returns the updated counter. Atomic, so replicas on one store share every count.
    pub async fn bump_throttle(
        &self,
        key_hash: &str,
        now: i64,
        window: i64,
        lock: impl Fn(i64) -> i64 + Send,
    ) -> Result<ThrottleRecord, StoreError> {
        with_tx!(self, tx => async {
            let prior: Option<ThrottleRecord> = sqlx::query_as("SELECT key_hash, window_start, count, locked_until, expires_at FROM throttles WHERE key_hash = $1")
                .bind(key_hash).fetch_optional(&mut *tx).await?;
            let (window_start, count) = match prior {
                Some(t) if t.window_start + window > now => (t.window_start, t.count + 1),
                _ => (now, 1),
            };
            let locked_until = match lock(count) { 0 => 0, secs => now + secs };
            let expires_at = (window_start + window).max(locked_until);
            let rec = ThrottleRecord { key_hash: key_hash.to_owned(), window_start, count, locked_until, expires_at };
            sqlx::query("INSERT INTO throttles (key_hash, window_start, count, locked_until, expires_at) VALUES ($1,$2,$3,$4,$5)
                ON CONFLICT (key_hash) DO UPDATE SET window_start = excluded.window_start, count = excluded.count, locked_until = excluded.locked_until, expires_at = excluded.expires_at")
                .bind(&rec.key_hash).bind(rec.window_start).bind(rec.count).bind(rec.locked_until).bind(rec.expires_at)
                .execute(&mut *tx).await?;
            Ok::<_, StoreError>(rec)
        }.await)
    }

    /// Forgets a counter (a successful sign-in clears its account's failures).
    pub async fn clear_throttle(&self, key_hash: &str) -> Result<(), StoreError> {
        with_write!(self, p => sqlx::query("DELETE FROM throttles WHERE key_hash = $1").bind(key_hash).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Deletes self-registered clients (DCR, metadata documents) created before `before` that
    /// never got a grant (AS-26: unused registrations expire). Returns how many.
    pub async fn purge_unused_clients(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            with_write!(self, p => sqlx::query("DELETE FROM clients WHERE source IN ('dcr', 'cimd') AND created_at < $1 AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id)")
            .bind(before).execute(p).await.map(|r| r.rows_affected()))?,
        )
    }

    /// Deletes expired codes, sessions, pending requests and refresh tokens.
    pub async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for q in [
            "DELETE FROM auth_codes WHERE expires_at < $1",
            "DELETE FROM sessions WHERE expires_at < $1",
            "DELETE FROM pending_authorizations WHERE expires_at < $1",
            "DELETE FROM refresh_tokens WHERE expires_at < $1",
            "DELETE FROM assertion_jtis WHERE expires_at < $1",
            "DELETE FROM upstream_logins WHERE expires_at < $1",
            "DELETE FROM device_codes WHERE expires_at < $1",
            "DELETE FROM throttles WHERE expires_at < $1",
        ] {
            n += with_write!(self, p => sqlx::query(q).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        }
        Ok(n)
    }
}
