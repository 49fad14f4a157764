//! Paired tablets on disk (`data_dir/tablets.db`): id, label, SHA-256 of the token (and of the
//! renewed token the tablet has not used yet), expiry, times.
//!
//! Short per-call connections (like the member cache): pairing and revoking are rare, and the
//! running agent answers every request from its in-memory copy.
//!
//! Files from before token expiry have no `expires_ms` and `next_sha256` columns: [`TabletStore::open`]
//! adds them, and the tablets in them get a full lifetime from the first start that knows about
//! expiry (expiring them by their pairing date would lock every store's tablets out on upgrade).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tablets (
    id            TEXT PRIMARY KEY,
    label         TEXT    NOT NULL,
    token_sha256  BLOB    NOT NULL UNIQUE,
    created_ms    INTEGER NOT NULL,
    last_seen_ms  INTEGER,
    revoked_ms    INTEGER,
    expires_ms    INTEGER,
    next_sha256   BLOB
);";
/// Columns added after the first release, with their types, for files made before them.
const ADDED_COLUMNS: &[(&str, &str)] = &[("expires_ms", "INTEGER"), ("next_sha256", "BLOB")];
const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";
const INSERT: &str = "INSERT INTO tablets (id, label, token_sha256, created_ms, expires_ms)
    VALUES (?1, ?2, ?3, ?4, ?5)";
const SELECT_VALID: &str = "SELECT id, label, token_sha256, created_ms, last_seen_ms, expires_ms,
    next_sha256 FROM tablets WHERE revoked_ms IS NULL ORDER BY created_ms";
const SET_EXPIRY_IF_NONE: &str =
    "UPDATE tablets SET expires_ms = ?1 WHERE expires_ms IS NULL AND revoked_ms IS NULL";
const SET_NEXT: &str = "UPDATE tablets SET next_sha256 = ?2 WHERE id = ?1 AND revoked_ms IS NULL";
const SWITCH: &str = "UPDATE tablets SET token_sha256 = ?2, next_sha256 = NULL, expires_ms = ?3
    WHERE id = ?1 AND next_sha256 = ?2 AND revoked_ms IS NULL";
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
    /// When the token stops working; `None` only in files from before expiry.
    pub expires_ms: Option<i64>,
    /// A renewed token handed out but not used yet.
    pub next_digest: Option<[u8; 32]>,
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
        store.migrate()?;
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

    /// Adds the columns a file from an older release lacks.
    fn migrate(&self) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info('tablets')")
            .map_err(|e| self.err(e))?;
        let have = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        for (name, ty) in ADDED_COLUMNS {
            if !have.iter().any(|h| h == name) {
                conn.execute_batch(&format!("ALTER TABLE tablets ADD COLUMN {name} {ty}"))
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Gives tablets without an expiry (paired before expiry existed) one at `expires_ms`.
    pub fn set_missing_expiry(&self, expires_ms: i64) -> Result<usize, StoreError> {
        self.conn()?
            .execute(SET_EXPIRY_IF_NONE, params![expires_ms])
            .map_err(|e| self.err(e))
    }

    /// Records a renewed token for `id`, replacing any earlier one not used yet. Returns false
    /// if the tablet is unknown or revoked.
    pub fn set_next(&self, id: &str, next: &[u8; 32]) -> Result<bool, StoreError> {
        let n = self
            .conn()?
            .execute(SET_NEXT, params![id, &next[..]])
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Makes the renewed token `next` the tablet's token, valid until `expires_ms`; the old one
    /// is forgotten. Does nothing if `next` is no longer the pending token (idempotent).
    pub fn switch(&self, switched: &[(String, [u8; 32], i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for (id, next, expires_ms) in switched {
            tx.execute(SWITCH, params![id, &next[..], expires_ms])
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn insert(&self, row: &Row) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                INSERT,
                params![
                    row.id,
                    row.label,
                    &row.digest[..],
                    row.created_ms,
                    row.expires_ms
                ],
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
                let next: Option<Vec<u8>> = r.get(6)?;
                Ok((
                    Row {
                        id: r.get(0)?,
                        label: r.get(1)?,
                        digest: [0; 32],
                        created_ms: r.get(3)?,
                        last_seen_ms: r.get(4)?,
                        expires_ms: r.get(5)?,
                        // A malformed pending digest only means the renewal is lost.
                        next_digest: next.and_then(|n| n.try_into().ok()),
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
