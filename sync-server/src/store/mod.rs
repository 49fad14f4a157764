//! Head office's database: events, gateways, members — SQLite in `data_dir` by default,
//! PostgreSQL with `[database] url`.
//!
//! In: closures sent by ingest, members and HTTP over a bounded channel. Out: their results.
//! One blocking thread owns the connection, so a transaction is never interleaved with another;
//! the channel's bound is the back-pressure. This module alone imports rusqlite and postgres
//! ([`db`] wraps both); the functions in its submodules take a `&mut Db` and are plain,
//! synchronous and testable on either backend ([`testing::each_backend`]).

mod bulk;
pub mod channels;
pub mod db;
pub mod ingest;
pub mod members;
pub mod purchases;
pub mod queries;
pub mod schema;
mod sql;
#[doc(hidden)]
pub mod testing;
pub mod visits;

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

pub use db::{Backend, Db};

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
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("database schema version {found} is newer than this build ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the database thread has stopped")]
    Closed,
    #[error("cannot start the database thread: {0}")]
    Thread(std::io::Error),
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

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

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created with its folder if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Location {
    /// Opens a connection and brings the schema up to date.
    pub fn connect(&self) -> Result<Db, StoreError> {
        let mut db = match self {
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                Db::from_sqlite(rusqlite::Connection::open(path)?)
            }
            Location::Postgres(url) => Db::connect_postgres(url)?,
        };
        schema::migrate(&mut db)?;
        Ok(db)
    }
}

impl Store {
    /// Opens (creating if needed) the database, migrates it and starts the thread.
    pub fn open(location: &Location) -> Result<(Self, StoreThread), StoreError> {
        Self::start(location.connect()?)
    }

    /// Starts the database thread on an open connection.
    pub fn start(mut db: Db) -> Result<(Self, StoreThread), StoreError> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("instore-sync-db".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut db);
                }
            })
            .map_err(StoreError::Thread)?;
        Ok((Self { jobs: tx }, StoreThread(handle)))
    }

    /// Runs `f` on the database thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            // The caller may have gone (cancelled request); the work is done either way.
            let _ = reply.send(f(db));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
