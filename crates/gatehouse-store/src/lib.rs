//! Persistence for the authorization server: one interface, two backends.
//!
//! SQLite (WAL, zero set-up) is the default; PostgreSQL serves replicas. Both run the same SQL
//! (`$N` parameters work in both) through [`Store`]'s methods, and the same test suite runs
//! against both. Everything that must not be lost is written in one transaction before the
//! response goes out: a token either was issued and is stored, or was not issued.
//!
//! Nothing secret is stored in the clear: client secrets, authorization codes, refresh tokens,
//! session and pending-request ids are SHA-256 hashes (callers hash; this crate never sees the
//! values), passwords are argon2id PHC strings.
#![forbid(unsafe_code)]

mod changes;
mod records;
mod sqlite_ops;
mod writer;

pub use changes::{ChangeFeed, Wake};
pub use records::*;
pub use writer::SqliteWriter;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL (use sqlite://PATH or postgres://…)")]
    Url,
    #[error("{0} already exists")]
    Conflict(String),
    #[error("database error: {0}")]
    Sqlite(String),
}

impl StoreError {
    /// The database cannot be reached (down, restarting, out of connections): retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Db(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// The store. Cheap to clone (pool handles).
///
/// SQLite allows one writer at a time; writers that collide wait in SQLite's busy handler, which
/// *sleeps* (1, 2, 5, 10 … ms). So SQLite gets a single-connection write pool, where writers queue
/// without sleeping, and a pool of read connections beside it (WAL lets reads run concurrently).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        /// The token endpoint's hot writes (see `writer.rs`).
        writer: writer::SqliteWriter,
        /// The token endpoint's hot reads (client lookups).
        reader: writer::SqliteReader,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the pool for reads. Bodies are written once and type-checked
/// against both backends.
macro_rules! with_read {
    ($self:expr, $p:ident => $body:expr) => {
        match $self {
            Store::Sqlite { read: $p, .. } => $body,
            Store::Postgres($p) => $body,
        }
    };
}

/// Like `with_read!`, with the pool for single-statement writes.
macro_rules! with_write {
    ($self:expr, $p:ident => $body:expr) => {
        match $self {
            Store::Sqlite { write: $p, .. } => $body,
            Store::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` in a write transaction bound to `$tx`, committing when it returns `Ok`. SQLite
/// write transactions start IMMEDIATE so two writers never deadlock upgrading a read lock.
macro_rules! with_tx {
    ($self:expr, $tx:ident => $body:expr) => {
        match $self {
            Store::Sqlite { write: p, .. } => {
                let mut $tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let r = $body;
                if r.is_ok() {
                    $tx.commit().await?;
                }
                r
            }
            Store::Postgres(p) => {
                let mut $tx = p.begin().await?;
                let r = $body;
                if r.is_ok() {
                    $tx.commit().await?;
                }
                r
            }
        }
    };
}

mod console;
mod ops;

impl Store {
    /// Opens `sqlite://PATH` (created if missing) or `postgres://…`, and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = if let Some(path) = url.strip_prefix("sqlite://") {
            let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL in WAL mode survives a killed process (only an OS crash can lose the
                // last commits); FULL would fsync on every token.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone())
                .await?;
            sqlx::migrate!("./migrations").run(&write).await?;
            let read = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts.read_only(true))
                .await?;
            let file = path.split('?').next().unwrap_or(path);
            Store::Sqlite {
                read,
                write,
                writer: writer::SqliteWriter::open(file)?,
                reader: writer::SqliteReader::open(file)?,
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                // A database that went away fails a request in seconds (503), not half a minute.
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations").run(&pool).await?;
            changes::install_triggers(&pool).await?;
            Store::Postgres(pool)
        } else {
            return Err(StoreError::Url);
        };
        Ok(store)
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_read!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite { .. } => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite { read, write, .. } => {
                read.close().await;
                write.close().await;
            }
            Store::Postgres(p) => p.close().await,
        }
    }
}
