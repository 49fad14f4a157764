//! The member cache's SQLite file. Each call opens its own short-lived connection: imports and
//! snapshots are rare, and no connection is ever shared between threads.

use std::path::{Path, PathBuf};

use instore_protocol::{MemberRecord, member::LineError, parse_ndjson};
use rusqlite::{Connection, OptionalExtension, params};

use super::MemberIndex;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS members (member_id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";
const UPSERT: &str = "INSERT INTO members (member_id, record) VALUES (?1, ?2)
    ON CONFLICT(member_id) DO UPDATE SET record = excluded.record";
const SELECT_ALL: &str = "SELECT record FROM members ORDER BY member_id";
const GET_VERSION: &str = "SELECT value FROM meta WHERE key = 'version'";
const SET_VERSION: &str = "INSERT INTO meta (key, value) VALUES ('version', ?1)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("member cache {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("member cache {path}: stored record {member_id} is unreadable: {source}")]
    Corrupt {
        path: String,
        member_id: String,
        source: serde_json::Error,
    },
}

/// What a local import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub imported: usize,
    pub skipped: Vec<LineError>,
}

#[derive(Debug, Clone)]
pub struct MemberCache {
    path: PathBuf,
}

impl MemberCache {
    /// Opens (creating if needed) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let cache = Self {
            path: path.to_path_buf(),
        };
        cache.connect()?;
        Ok(cache)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> CacheError + '_ {
        |source| CacheError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn connect(&self) -> Result<Connection, CacheError> {
        let conn = Connection::open(&self.path).map_err(self.err())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(self.err())?;
        conn.execute_batch(SCHEMA).map_err(self.err())?;
        Ok(conn)
    }

    /// The member-set version last taken from head office (0: never).
    pub fn version(&self) -> Result<u64, CacheError> {
        let conn = self.connect()?;
        let v: Option<i64> = conn
            .query_row(GET_VERSION, [], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Replaces the whole member set with head office's snapshot, atomically.
    pub fn replace_all(&self, version: u64, members: &[MemberRecord]) -> Result<(), CacheError> {
        let mut conn = self.connect()?;
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute("DELETE FROM members", []).map_err(self.err())?;
        Self::upsert_in(&tx, members).map_err(self.err())?;
        tx.execute(SET_VERSION, params![version as i64])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    /// Imports NDJSON text: valid lines are upserted in one transaction, bad lines are reported.
    pub fn import_ndjson(&self, text: &str) -> Result<ImportReport, CacheError> {
        let (members, skipped) = parse_ndjson(text);
        let mut conn = self.connect()?;
        let tx = conn.transaction().map_err(self.err())?;
        Self::upsert_in(&tx, &members).map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(ImportReport {
            imported: members.len(),
            skipped,
        })
    }

    fn upsert_in(tx: &rusqlite::Transaction<'_>, members: &[MemberRecord]) -> rusqlite::Result<()> {
        let mut stmt = tx.prepare_cached(UPSERT)?;
        for m in members {
            // Serialising a plain struct of strings cannot fail.
            let json = serde_json::to_string(m).unwrap_or_default();
            stmt.execute(params![m.member_id, json])?;
        }
        Ok(())
    }

    /// All stored member records.
    pub fn load(&self) -> Result<Vec<MemberRecord>, CacheError> {
        let conn = self.connect()?;
        let mut stmt = conn.prepare(SELECT_ALL).map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let json = row.map_err(self.err())?;
            let record = serde_json::from_str(&json).map_err(|source| CacheError::Corrupt {
                path: self.path.display().to_string(),
                member_id: json.chars().take(40).collect(),
                source,
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Builds the lookup index from what is stored.
    pub fn load_index(&self) -> Result<MemberIndex, CacheError> {
        let records = self.load()?;
        Ok(MemberIndex::build(self.version()?, &records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"member_id":"M1","display_name":"Ms. Li","tier":"platinum","consent":{"presence":true},"identifiers":[{"kind":"mac","address":"C0:11:22:33:44:55"}]}"#;

    #[test]
    fn an_import_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.db");
        let report = MemberCache::open(&path)
            .unwrap()
            .import_ndjson(&format!("{LINE}\n{{broken\n"))
            .unwrap();
        assert_eq!(report.imported, 1);
        assert_eq!(report.skipped[0].line, 2);
        let again = MemberCache::open(&path).unwrap();
        let index = again.load_index().unwrap();
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_snapshot_replaces_everything_and_records_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MemberCache::open(&dir.path().join("m.db")).unwrap();
        cache.import_ndjson(LINE).unwrap();
        let (other, _) = parse_ndjson(&LINE.replace("M1", "M2").replace("C0:", "C1:"));
        cache.replace_all(7, &other).unwrap();
        let ids: Vec<_> = cache
            .load()
            .unwrap()
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        assert_eq!(ids, ["M2"]);
        assert_eq!(cache.version().unwrap(), 7);
    }
}
