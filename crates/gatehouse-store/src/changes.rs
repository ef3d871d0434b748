//! Change notices between replicas (issue 16). On PostgreSQL a trigger wakes every listening
//! replica at commit when a grant is revoked or a signing key changes; the replica then reads
//! the tables, so a lost notice (a dropped connection) costs time, never a revocation. SQLite
//! serves one node: there the feed just polls.
use crate::{Store, StoreError};
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;

/// The channel the triggers notify; the payload is the table that changed.
const CHANNEL: &str = "gatehouse_changes";

/// Installed after the migrations on PostgreSQL (in one transaction under an advisory lock, so
/// replicas starting together do not race). Statement-level: one notice per revoking statement,
/// and PostgreSQL folds repeats within a transaction.
pub(crate) const PG_TRIGGERS: [&str; 3] = [
    "CREATE OR REPLACE FUNCTION gatehouse_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM pg_notify('gatehouse_changes', TG_TABLE_NAME); RETURN NULL; END $$",
    "CREATE OR REPLACE TRIGGER gatehouse_grants_revoked AFTER UPDATE OF revoked_at ON grants \
     FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_notify_change()",
    "CREATE OR REPLACE TRIGGER gatehouse_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys \
     FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_notify_change()",
];

pub(crate) async fn install_triggers(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // Any constant: the key of this installation's lock.
    sqlx::query("SELECT pg_advisory_xact_lock(7301151640)")
        .execute(&mut *tx)
        .await?;
    for sql in PG_TRIGGERS {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What woke a [`ChangeFeed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// These tables changed (`grants`, `signing_keys`).
    Changed(Vec<String>),
    /// The wait ran out, or the connection was lost and notices may be missing: read anyway.
    Anyway,
    /// The store cannot be reached; waited a moment before saying so.
    Down(String),
}

/// Waits for change notices. Cheap when idle: one connection (PostgreSQL) or none (SQLite).
pub struct ChangeFeed {
    pool: Option<PgPool>,
    listener: Option<PgListener>,
}

impl Store {
    /// A feed of this store's change notices.
    pub fn changes(&self) -> ChangeFeed {
        ChangeFeed {
            pool: match self {
                Store::Postgres(p) => Some(p.clone()),
                Store::Sqlite { .. } => None,
            },
            listener: None,
        }
    }
}

impl ChangeFeed {
    /// Whether notices arrive (PostgreSQL) or the caller must poll (SQLite).
    pub fn pushes(&self) -> bool {
        self.pool.is_some()
    }

    /// Waits at most `max` for a notice.
    pub async fn wait(&mut self, max: Duration) -> Wake {
        let Some(pool) = &self.pool else {
            tokio::time::sleep(max).await;
            return Wake::Anyway;
        };
        if self.listener.is_none() {
            match listen(pool).await {
                Ok(l) => {
                    self.listener = Some(l);
                    // Notices sent before this connection listened are lost: read now.
                    return Wake::Anyway;
                }
                Err(e) => {
                    tokio::time::sleep(max.min(Duration::from_secs(1))).await;
                    return Wake::Down(e.to_string());
                }
            }
        }
        let Some(l) = self.listener.as_mut() else {
            return Wake::Anyway;
        };
        match tokio::time::timeout(max, l.try_recv()).await {
            Err(_) => Wake::Anyway,
            // The connection dropped; the next wait connects again.
            Ok(Ok(None)) => {
                self.listener = None;
                Wake::Anyway
            }
            Ok(Ok(Some(n))) => {
                let mut tables = vec![n.payload().to_owned()];
                while let Some(n) = l.next_buffered() {
                    tables.push(n.payload().to_owned());
                }
                tables.sort();
                tables.dedup();
                Wake::Changed(tables)
            }
            Ok(Err(e)) => {
                self.listener = None;
                Wake::Down(e.to_string())
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect_with(pool).await?;
    l.ignore_pool_close_event(true);
    l.listen(CHANNEL).await?;
    Ok(l)
}
