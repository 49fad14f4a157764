//! Runs a storage test on both backends: an in-memory SQLite database and a fresh schema in the
//! PostgreSQL server named by `INSTORE_TEST_POSTGRES_URL` (default the local server on
//! 127.0.0.1:5432 as user `postgres`; the test command starts one when none answers). A
//! PostgreSQL that cannot be reached fails the test: a skipped backend would hide its bugs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Db, Location, schema};

/// The server the tests use when `INSTORE_TEST_POSTGRES_URL` is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn postgres_url() -> String {
    std::env::var("INSTORE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

/// A schema of its own in the test server, dropped with the value. Usable from async tests:
/// the synchronous client runs on a thread of its own (it may not start its runtime inside
/// another).
pub struct PgSchema {
    name: String,
    url: String,
}

/// Runs one statement batch against the test server on a thread of its own.
fn admin_batch(base: &str, sql: String) -> Result<(), String> {
    let base = base.to_string();
    std::thread::spawn(move || {
        let mut admin = postgres::Client::connect(&base, postgres::NoTls)
            .map_err(|e| format!("PostgreSQL at {base} (INSTORE_TEST_POSTGRES_URL): {e}"))?;
        admin.batch_execute(&sql).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the PostgreSQL admin thread panicked".to_string())?
}

impl PgSchema {
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = postgres_url();
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        if let Err(e) = admin_batch(&base, format!("CREATE SCHEMA {name}")) {
            panic!("the storage tests need PostgreSQL: {e}");
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        Self { name, url }
    }

    /// A URL whose connections work inside this schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn location(&self) -> Location {
        Location::Postgres(self.url.clone())
    }
}

impl Default for PgSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = admin_batch(
            &postgres_url(),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

/// A migrated in-memory SQLite database.
pub fn sqlite() -> Db {
    let mut db = Db::from_sqlite(rusqlite::Connection::open_in_memory().unwrap());
    schema::migrate(&mut db).unwrap();
    db
}

/// Calls `test` with a fresh, migrated database of each backend in turn. A failure names the
/// backend it happened on.
pub fn each_backend(mut test: impl FnMut(&mut Db)) {
    {
        let mut db = sqlite();
        run_named("sqlite", || test(&mut db));
    }
    let schema = PgSchema::new();
    let mut db = schema.location().connect().unwrap();
    run_named("postgres", || test(&mut db));
}

fn run_named(backend: &str, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        eprintln!("storage test failed on the {backend} backend");
        std::panic::resume_unwind(panic);
    }
}
