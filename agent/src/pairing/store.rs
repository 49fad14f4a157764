//! Paired tablets on disk (`data_dir/tablets.db`): id, label, SHA-256 of the token, times.
//!
//! Short per-call connections (like the member cache): pairing and revoking are rare, and the
//! running agent answers every request from its in-memory copy.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tablets (
    id            TEXT PRIMARY KEY,
    label         TEXT    NOT NULL,
    token_sha256  BLOB    NOT NULL UNIQUE,
    created_ms    INTEGER NOT NULL,
    last_seen_ms  INTEGER,
    revoked_ms    INTEGER
);";
const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";
const INSERT: &str =
    "INSERT INTO tablets (id, label, token_sha256, created_ms) VALUES (?1, ?2, ?3, ?4)";
const SELECT_VALID: &str = "SELECT id, label, token_sha256, created_ms, last_seen_ms FROM tablets
    WHERE revoked_ms IS NULL ORDER BY created_ms";
const REVOKE: &str = "UPDATE tablets SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL";
const TOUCH: &str =
    "UPDATE tablets SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), ?2) WHERE id = ?1";
const SELECT_ONE: &str = "SELECT revoked_ms FROM tablets WHERE id = ?1";

#[derive(Debug, thiserror::Error)]
#[error("tablet store {path}: {source}")]
pub struct StoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

/// A tablet row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub label: String,
    pub digest: [u8; 32],
    pub created_ms: i64,
    pub last_seen_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct TabletStore {
    path: PathBuf,
}

impl TabletStore {
    /// Creates the file and table if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            path: path.to_owned(),
        };
        store.conn()?;
        Ok(store)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn conn(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(|e| self.err(e))?;
        conn.execute_batch(PRAGMAS).map_err(|e| self.err(e))?;
        conn.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
        Ok(conn)
    }

    pub fn insert(&self, row: &Row) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                INSERT,
                params![row.id, row.label, &row.digest[..], row.created_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Tablets not revoked, oldest first. Rows with a malformed digest are skipped (they could
    /// never match a token anyway).
    pub fn valid(&self) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(SELECT_VALID).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let digest: Vec<u8> = r.get(2)?;
                Ok((
                    Row {
                        id: r.get(0)?,
                        label: r.get(1)?,
                        digest: [0; 32],
                        created_ms: r.get(3)?,
                        last_seen_ms: r.get(4)?,
                    },
                    digest,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(mut row, digest)| {
                row.digest = digest.try_into().ok()?;
                Some(row)
            })
            .collect())
    }

    /// Marks a tablet revoked. Returns false if it was unknown or already revoked.
    pub fn revoke(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let n = self
            .conn()?
            .execute(REVOKE, params![id, at_ms])
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Whether a tablet id exists and when it was revoked.
    pub fn revoked_at(&self, id: &str) -> Result<Option<Option<i64>>, StoreError> {
        self.conn()?
            .query_row(SELECT_ONE, params![id], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn touch(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for (id, at) in seen {
            tx.execute(TOUCH, params![id, at])
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}
