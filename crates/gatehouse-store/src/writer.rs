//! The SQLite write path for the token endpoint's hot operations.
//!
//! Through sqlx every statement is a round trip to the connection's worker thread, so a
//! five-statement transaction costs ten thread switches, and profiling showed the token endpoint
//! spending most of its time switching threads rather than working. Here one thread owns a
//! connection and runs a whole operation per message; operations that arrive together share one
//! transaction (group commit), each inside its own savepoint so one failing operation undoes only
//! its own changes. Results are released only after the commit: a token is never handed out
//! before what it depends on is stored.
use crate::StoreError;
use rusqlite::Connection;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Operations taken into one transaction at most; bounds the latency a batch adds.
const MAX_BATCH: usize = 64;

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
        let out = conn
            .execute_batch("SAVEPOINT op")
            .and_then(|()| match f(conn) {
                Ok(v) => conn.execute_batch("RELEASE op").map(|()| v),
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

/// Handle to the writer thread. Cheap to clone; the thread ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct SqliteWriter {
    tx: mpsc::Sender<Box<dyn Job>>,
}

impl SqliteWriter {
    pub(crate) fn open(path: &str) -> Result<Self, StoreError> {
        Self::start(path, true)
    }

    /// A thread for reads on the hot path (client lookups): no transaction, no write lock.
    pub(crate) fn open_reader(path: &str) -> Result<Self, StoreError> {
        Self::start(path, false)
    }

    fn start(path: &str, write: bool) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Sqlite(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .and_then(|()| {
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                )
            })
            .map_err(|e| StoreError::Sqlite(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name(
                if write {
                    "gatehouse-sqlite-w"
                } else {
                    "gatehouse-sqlite-r"
                }
                .into(),
            )
            .spawn(move || writer_loop(&conn, &rx, write))
            .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Runs `f` in a write transaction on the writer thread and returns its result once the
    /// transaction has committed. An `Err` from `f` undoes `f`'s writes.
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
        self.tx
            .send(job)
            .map_err(|_| StoreError::Sqlite("the writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Sqlite("the writer thread has stopped".into()))?
    }
}

fn writer_loop(conn: &Connection, rx: &mpsc::Receiver<Box<dyn Job>>, write: bool) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let begin = if write { "BEGIN IMMEDIATE" } else { "BEGIN" };
        let committed = match conn.execute_batch(begin) {
            Ok(()) => {
                for job in &mut batch {
                    job.run(conn);
                }
                conn.execute_batch("COMMIT").map_err(|e| {
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
}
