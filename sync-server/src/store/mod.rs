//! Head office's SQLite database: events, gateways, members.
//!
//! In: closures sent by ingest, members and HTTP over a bounded channel. Out: their results.
//! One blocking thread owns the only connection, so writes never contend and a transaction is
//! never interleaved with another; the channel's bound is the back-pressure. This module alone
//! imports rusqlite; the functions in its submodules take a `&mut Connection` and are plain,
//! synchronous and testable.

pub mod ingest;
pub mod members;
pub mod queries;
mod sql;

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use ingest::{
    BatchOutcome, HelloItem, IngestBatch, IngestItem, ItemOutcome, ShedReport, StoredEvent,
};
pub use members::ImportOutcome;
pub use queries::{Counts, EventRow, GapRange, GatewayRow, ShedRange};

/// Jobs waiting for the database thread, at most; senders wait beyond it.
const QUEUE_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this build ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the database thread has stopped")]
    Closed,
    #[error("cannot start the database thread: {0}")]
    Thread(std::io::Error),
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the database thread. Cheap to clone; the thread exits when the last clone drops.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Joins the database thread once every [`Store`] handle is gone.
#[derive(Debug)]
pub struct StoreThread(std::thread::JoinHandle<()>);

impl StoreThread {
    /// Blocks until queued jobs (in-flight commits) are done. Call after dropping the handles.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the database thread panicked");
        }
    }
}

impl Store {
    /// Opens (creating if needed) `hq.sqlite` in `data_dir`, migrates it and starts the thread.
    pub fn open(data_dir: &Path, db_path: &Path) -> Result<(Self, StoreThread), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let mut conn = Connection::open(db_path)?;
        prepare(&mut conn)?;
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("instore-sync-db".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(StoreError::Thread)?;
        Ok((Self { jobs: tx }, StoreThread(handle)))
    }

    /// Runs `f` on the database thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone (cancelled request); the work is done either way.
            let _ = reply.send(f(conn));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Applies pragmas and migrations.
pub fn prepare(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(sql::PRAGMAS)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > sql::SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: sql::SCHEMA_VERSION,
        });
    }
    for (i, step) in sql::MIGRATIONS
        .iter()
        .enumerate()
        .skip(found.max(0) as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// An in-memory database with the schema, for unit tests.
#[cfg(test)]
pub(crate) fn test_connection() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    prepare(&mut c).unwrap();
    c
}
