//! The member cache's SQLite file. Each call opens its own short-lived connection: imports and
//! snapshots are rare, and no connection is ever shared between threads.
//!
//! A row is the whole record as JSON (what the index is built from) plus columns an operator can
//! query with `sqlite3` without parsing JSON (`marketing`, `last_visit`). The schema version is
//! SQLite's `user_version`; [`MIGRATIONS`] bring an older file forward on open, in one
//! transaction, backfilling new columns from the stored JSON.

use std::path::{Path, PathBuf};

use instore_protocol::{MemberRecord, member::LineError, parse_ndjson};
use rusqlite::{Connection, OptionalExtension, params};

use super::MemberIndex;

/// Version 1: the original tables (`IF NOT EXISTS`: files made before `user_version` was set are
/// version 0 with these tables already in place).
const SCHEMA_V1: &str = "
    CREATE TABLE IF NOT EXISTS members (member_id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";
/// Version 2: marketing consent and last visit (records written before carry neither: the JSON
/// lacks them, so the backfill gives 0 and NULL, which is what the record deserialises to).
const SCHEMA_V2: &str = "
    ALTER TABLE members ADD COLUMN marketing INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE members ADD COLUMN last_visit TEXT;
    UPDATE members SET
        marketing = coalesce(json_extract(record, '$.consent.marketing'), 0),
        last_visit = json_extract(record, '$.last_visit');
";
/// `MIGRATIONS[i]` takes a file from `user_version` i to i + 1.
const MIGRATIONS: [&str; 2] = [SCHEMA_V1, SCHEMA_V2];
const UPSERT: &str = "INSERT INTO members (member_id, record, marketing, last_visit)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT(member_id) DO UPDATE SET record = excluded.record,
        marketing = excluded.marketing, last_visit = excluded.last_visit";
const SELECT_ALL: &str = "SELECT record FROM members ORDER BY member_id";
const GET_VERSION: &str = "SELECT value FROM meta WHERE key = 'version'";
const SET_VERSION: &str = "INSERT INTO meta (key, value) VALUES ('version', ?1)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "member cache {path} has schema version {found}, newer than this agent's {supported}: \
         upgrade the agent"
    )]
    TooNew {
        path: String,
        found: i64,
        supported: usize,
    },
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
        let mut conn = Connection::open(&self.path).map_err(self.err())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(self.err())?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(self.err())?;
        self.migrate(&mut conn)?;
        Ok(conn)
    }

    fn migrate(&self, conn: &mut Connection) -> Result<(), CacheError> {
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err())?;
        if found == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        if found > MIGRATIONS.len() as i64 {
            return Err(CacheError::TooNew {
                path: self.path.display().to_string(),
                found,
                supported: MIGRATIONS.len(),
            });
        }
        // Immediate: two processes opening an old file at once must not both migrate it.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let now: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err())?;
        for step in MIGRATIONS.iter().skip(now.max(0) as usize) {
            tx.execute_batch(step).map_err(self.err())?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(self.err())?;
        tx.commit().map_err(self.err())
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
            stmt.execute(params![
                m.member_id,
                json,
                m.consent.marketing,
                m.last_visit
            ])?;
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

    #[test]
    fn a_cache_file_from_before_marketing_and_last_visit_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // Exactly what the first agent release created and wrote.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS members (member_id TEXT PRIMARY KEY, record TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT INTO meta (key, value) VALUES ('version', 4);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO members (member_id, record) VALUES ('M1', ?1)",
                [LINE],
            )
            .unwrap();
        }
        let cache = MemberCache::open(&path).unwrap();
        assert_eq!(cache.version().unwrap(), 4, "the snapshot version survives");
        let old = &cache.load().unwrap()[0];
        assert!(!old.consent.marketing);
        assert_eq!(old.last_visit, None);
        let newer = LINE
            .replace("\"presence\":true", "\"presence\":true,\"marketing\":true")
            .replace(
                "\"identifiers\"",
                "\"last_visit\":\"2026-11-01\",\"identifiers\"",
            );
        cache.import_ndjson(&newer).unwrap();
        let m = &cache.load_index().unwrap();
        let member = m.member("M1").unwrap();
        assert!(member.consent.marketing);
        assert_eq!(member.last_visit.as_deref(), Some("2026-11-01"));
        // The columns agree with the records, and reopening does not migrate twice.
        let conn = MemberCache::open(&path).unwrap().connect().unwrap();
        let row: (bool, Option<String>, i64) = conn
            .query_row(
                "SELECT marketing, last_visit, (SELECT count(*) FROM members) FROM members",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, (true, Some("2026-11-01".into()), 1));
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_cache_file_from_a_newer_agent_is_refused_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = MemberCache::open(&path).unwrap_err();
        assert!(matches!(err, CacheError::TooNew { found: 99, .. }), "{err}");
    }
}
