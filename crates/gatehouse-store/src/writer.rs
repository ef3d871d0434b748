//! The SQLite paths of the token endpoint's hot operations.
//!
//! Through sqlx every statement is a round trip to the connection's worker thread, so a
//! five-statement transaction costs ten thread switches; a dedicated writer thread still cost two
//! per operation, and on a small VM those switches were the largest single cost of the token
//! endpoint. So the work runs on the caller's own thread:
//!
//! - writes go through a *combining* writer: an operation is queued, and whichever caller finds
//!   the connection free runs everything queued in one transaction (group commit), each
//!   operation inside its own savepoint so one failing operation undoes only its own changes.
//!   Callers that find it busy wait (asynchronously) for their result. Results are released only
//!   after the commit: a token is never handed out before what it depends on is stored.
//! - reads take a connection from a small pool and run at once (WAL: readers never wait for
//!   the writer).
//!
//! Both block the calling runtime thread for the length of a few statements (tens of µs; a batch
//! is bounded by `MAX_BATCH`), which is cheaper than the thread switches they replace.
use crate::StoreError;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, TryLockError, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;

/// Operations taken into one transaction at most; bounds the latency a batch adds.
const MAX_BATCH: usize = 64;
/// Idle read connections kept.
const MAX_IDLE_READERS: usize = 4;

trait Job: Send {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Op<T, F> {
    f: Option<F>,
    out: Option<rusqlite::Result<T>>,
    reply: Option<oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> Job for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        let Some(f) = self.f.take() else { return };
        let out = exec(conn, "SAVEPOINT op").and_then(|()| match f(conn) {
            Ok(v) => exec(conn, "RELEASE op").map(|()| v),
            Err(e) => {
                // Undo this operation's writes only; the batch goes on.
                let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
                Err(e)
            }
        });
        self.out = Some(out);
    }

    fn finish(mut self: Box<Self>, committed: Result<(), String>) {
        let result = match (committed, self.out.take()) {
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Ok(()), Some(Err(e))) => Err(StoreError::Sqlite(e.to_string())),
            (Err(e), _) => Err(StoreError::Sqlite(format!("commit failed: {e}"))),
            (Ok(()), None) => Err(StoreError::Sqlite("operation did not run".into())),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away (client disconnected); the commit stands either way.
            let _ = reply.send(result);
        }
    }
}

/// Runs a statement without parameters, prepared once per connection: these run several times
/// per token request, and `execute_batch` would parse them every time.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn connect(path: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Sqlite(e.to_string()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .and_then(|()| {
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )
        })
        .map_err(|e| StoreError::Sqlite(e.to_string()))?;
    Ok(conn)
}

struct Writer {
    queue: Mutex<VecDeque<Box<dyn Job>>>,
    conn: Mutex<Connection>,
    /// Wakes the checkpointer after commits (see `checkpointer`).
    committed: mpsc::SyncSender<()>,
}

/// The combining writer. Cheap to clone.
#[derive(Clone)]
pub struct SqliteWriter {
    inner: Arc<Writer>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

impl SqliteWriter {
    pub(crate) fn open(path: &str) -> Result<Self, StoreError> {
        let conn = connect(path)?;
        // Checkpoints move to their own thread: run here, their fsyncs stalled every write.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(|e| StoreError::Sqlite(e.to_string()))?;
        let checkpoints = connect(path)?;
        // A RESTART checkpoint holds new writers while it waits for readers: never for long.
        checkpoints
            .busy_timeout(Duration::from_millis(100))
            .map_err(|e| StoreError::Sqlite(e.to_string()))?;
        let (committed, wake) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("gatehouse-sqlite-ckpt".into())
            .spawn(move || checkpointer(&checkpoints, &wake))
            .map_err(|e| StoreError::Sqlite(format!("cannot start the checkpointer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Writer {
                queue: Mutex::new(VecDeque::new()),
                conn: Mutex::new(conn),
                committed,
            }),
        })
    }

    /// Runs `f` in a write transaction and returns its result once the transaction has
    /// committed. An `Err` from `f` undoes `f`'s writes.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Op {
            f: Some(f),
            out: None,
            reply: Some(reply),
        });
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(job);
        self.inner.combine();
        rx.await
            .map_err(|_| StoreError::Sqlite("the write operation was dropped".into()))?
    }
}

impl Writer {
    /// Runs queued operations while this thread can have the connection. A caller that finds
    /// it taken leaves its operation to the holder, who looks at the queue again after letting
    /// go, so nothing queued is left behind.
    fn combine(&self) {
        loop {
            let conn = match self.conn.try_lock() {
                Ok(c) => c,
                Err(TryLockError::WouldBlock) => return,
                // An operation panicked mid-batch: its transaction is still open.
                Err(TryLockError::Poisoned(p)) => {
                    self.conn.clear_poison();
                    let c = p.into_inner();
                    let _ = c.execute_batch("ROLLBACK");
                    c
                }
            };
            loop {
                let batch: Vec<Box<dyn Job>> = {
                    let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                run_batch(&conn, batch);
                // Full means a wake-up is pending already.
                let _ = self.committed.try_send(());
            }
            drop(conn);
            if self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
            {
                return;
            }
        }
    }
}

fn run_batch(conn: &Connection, mut batch: Vec<Box<dyn Job>>) {
    let committed = match exec(conn, "BEGIN IMMEDIATE") {
        Ok(()) => {
            for job in &mut batch {
                job.run(conn);
            }
            exec(conn, "COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            })
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &committed {
        tracing::error!(error = %e, "sqlite write transaction failed");
    }
    for job in batch {
        job.finish(committed.clone());
    }
}

/// WAL frames (64 MiB) above which the checkpointer also makes the log start over.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// Copies the write-ahead log into the database file off the write path: PASSIVE checkpoints
/// never block writers, and a write load coalesces into one checkpoint every 50 ms; one that
/// writes raced is followed at once by another (shorter) one. The log starts over only when no
/// reader holds a snapshot in it, which under steady load is seldom, so past
/// `WAL_RESTART_FRAMES` a RESTART checkpoint waits for readers (and holds writers) until it
/// can. Ends when the writer is dropped.
fn checkpointer(conn: &Connection, wake: &mpsc::Receiver<()>) {
    // (frames in the log, frames copied)
    let checkpoint = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
    };
    let warn = |e: rusqlite::Error| tracing::warn!(error = %e, "sqlite checkpoint failed");
    while wake.recv().is_ok() {
        std::thread::sleep(Duration::from_millis(50));
        let mut rounds = 0;
        let log = loop {
            rounds += 1;
            match checkpoint("PASSIVE") {
                Ok((log, copied)) if copied < log && rounds < 8 => {}
                Ok((log, _)) => break log,
                Err(e) => {
                    warn(e);
                    break 0;
                }
            }
        };
        if log > WAL_RESTART_FRAMES {
            checkpoint("RESTART").map(drop).unwrap_or_else(warn);
        }
    }
}

/// Read connections for the hot path (client lookups): no transaction, no write lock.
#[derive(Clone)]
pub struct SqliteReader {
    path: Arc<str>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl std::fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteReader")
    }
}

impl SqliteReader {
    pub(crate) fn open(path: &str) -> Result<Self, StoreError> {
        let first = connect(path)?;
        Ok(Self {
            path: path.into(),
            idle: Arc::new(Mutex::new(vec![first])),
        })
    }

    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&conn).map_err(|e| StoreError::Sqlite(e.to_string()));
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}
