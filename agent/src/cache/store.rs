//! The member cache's SQLite file, `members.db`. Writers (the downlink, `members import`) use
//! short-lived connections of their own with `secure_delete` on, so a removed member's bytes are
//! overwritten, not left in free pages; the engine reads through [`SqliteMembers`], which keeps
//! one read transaction open between two patches so that what it reads from disk always matches
//! its in-memory index.
//!
//! The schema version is SQLite's `user_version`; [`MIGRATIONS`] bring an older file forward on
//! open, in one transaction (version 3 re-keys members by slot and fills the identifier, key and
//! channel tables from the stored records).

use std::{
    collections::BTreeMap,
    io::BufRead,
    path::{Path, PathBuf},
};

use instore_protocol::{
    MemberRecord,
    changes::{ChangesResponse, SnapshotHeader, SnapshotLine},
    member::{LineError, MemberError},
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    IndexBuilder, IndexPatch, MemberIndex, Members, Slot,
    apply::{Applier, ApplyStats, LEGACY_CHANNEL, LOCAL_CHANNEL},
    db::{self, Db, ident_bytes, ident_from_bytes},
    reader::{SqliteKeys, SqliteMembers},
};

/// Version 1: the original tables (`IF NOT EXISTS`: files made before `user_version` was set are
/// version 0 with these tables already in place).
const SCHEMA_V1: &str = "
    CREATE TABLE IF NOT EXISTS members (member_id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";
/// Version 2: marketing consent and last visit.
const SCHEMA_V2: &str = "
    ALTER TABLE members ADD COLUMN marketing INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE members ADD COLUMN last_visit TEXT;
    UPDATE members SET
        marketing = coalesce(json_extract(record, '$.consent.marketing'), 0),
        last_visit = json_extract(record, '$.last_visit');
";
/// Version 3: members by slot (rowid, `AUTOINCREMENT` so a slot is never given to another
/// member), fixed identifiers, short-lived keys, channels and holds, tombstones. The old rows are
/// moved by [`migrate_v3_rows`].
const SCHEMA_V3: &str = "
    ALTER TABLE members RENAME TO members_v2;
    CREATE TABLE members (
        slot INTEGER PRIMARY KEY AUTOINCREMENT,
        member_id TEXT NOT NULL UNIQUE,
        rev INTEGER NOT NULL,
        record TEXT NOT NULL,
        marketing INTEGER NOT NULL DEFAULT 0,
        last_visit TEXT);
    CREATE TABLE idents (key BLOB PRIMARY KEY, slot INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX idents_slot ON idents (slot);
    CREATE TABLE keys (slot INTEGER NOT NULL, kind INTEGER NOT NULL, period INTEGER NOT NULL,
        exponent INTEGER NOT NULL, key BLOB NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (slot, kind, period)) WITHOUT ROWID;
    CREATE INDEX keys_period ON keys (kind, period);
    CREATE TABLE channels (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL);
    CREATE TABLE memberships (channel INTEGER NOT NULL, slot INTEGER NOT NULL,
        fresh INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (channel, slot)) WITHOUT ROWID;
    CREATE INDEX memberships_slot ON memberships (slot);
    CREATE TABLE tombstones (id_hash BLOB PRIMARY KEY, rev INTEGER NOT NULL,
        at_ms INTEGER NOT NULL) WITHOUT ROWID;
";
/// `MIGRATIONS[i]` takes a file from `user_version` i to i + 1.
const MIGRATIONS: [&str; 3] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

const GET_META: &str = "SELECT value FROM meta WHERE key = ?1";
const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value";
const V2_ROWS: &str =
    "SELECT rowid, record FROM members_v2 WHERE rowid > ?1 ORDER BY rowid LIMIT 1000";
const ALL_SLOTS: &str = "SELECT slot FROM members";
const ALL_IDENTS: &str = "SELECT key, slot FROM idents";
const COUNTS: &str = "SELECT (SELECT count(*) FROM idents),
    (SELECT count(DISTINCT slot) FROM keys WHERE kind = 1),
    (SELECT count(DISTINCT slot) FROM keys WHERE kind = 2)";
const OWNER: &str = "SELECT m.member_id FROM idents i JOIN members m ON m.slot = i.slot
    WHERE i.key = ?1";
const RECORDS_PAGE: &str =
    "SELECT slot, record FROM members WHERE slot > ?1 ORDER BY slot LIMIT 1000";

/// Tombstones are kept this long: longer than head office keeps changes (35 days), so no
/// upsert older than a removal can still arrive after its tombstone went.
const TOMBSTONE_KEEP_MS: i64 = 90 * 86_400_000;
/// Import lines per transaction: a crash mid-import keeps what was committed, and re-running the
/// import is idempotent.
const IMPORT_BATCH: usize = 10_000;
/// Longest NDJSON line accepted (an import line, a snapshot line).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// SQLite page cache per connection (KiB): small, the OS caches the file.
const CACHE_KIB: i64 = 2_048;

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
    #[error("member cache {path}: stored record in slot {slot} is unreadable: {source}")]
    Corrupt {
        path: String,
        slot: Slot,
        source: serde_json::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
}

/// Why a snapshot's content was refused (it is then not applied at all).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error(
        "snapshot header is for {channel:?} version {version}, expected {want_channel:?} version {want_version}"
    )]
    Header {
        channel: String,
        version: u64,
        want_channel: String,
        want_version: u64,
    },
    #[error("snapshot holds {got} members, its header says {want}")]
    Count { got: u64, want: u64 },
    #[error(transparent)]
    Cache(#[from] CacheError),
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

pub(super) fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> CacheError + '_ {
    move |source| CacheError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

impl MemberCache {
    /// Opens (creating or migrating if needed) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let cache = Self {
            path: path.to_path_buf(),
        };
        cache.connect()?;
        Ok(cache)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> CacheError + '_ {
        sqlite_err(&self.path)
    }

    fn connect(&self) -> Result<Connection, CacheError> {
        let mut conn = Connection::open(&self.path).map_err(self.err())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(self.err())?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(self.err())?;
        // Removed members' bytes are overwritten, not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(self.err())?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
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
        for (i, step) in MIGRATIONS.iter().enumerate().skip(now.max(0) as usize) {
            tx.execute_batch(step).map_err(self.err())?;
            if i == 2 {
                self.migrate_v3_rows(&tx)?;
            }
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    /// Moves version-2 rows into the version-3 tables. Rows written after a head-office snapshot
    /// (meta `version` > 0) go to the legacy pseudo-channel, which the first change response
    /// replaces; rows of a gateway that never had one were imported locally.
    fn migrate_v3_rows(&self, tx: &Connection) -> Result<(), CacheError> {
        let err = self.err();
        let legacy: i64 = tx
            .query_row(GET_META, ["version"], |r| r.get(0))
            .optional()
            .map_err(&err)?
            .unwrap_or(0);
        let salt: i64 = rand::random();
        tx.execute(SET_META, params!["tombstone_salt", salt])
            .map_err(&err)?;
        let channel = if legacy > 0 {
            LEGACY_CHANNEL
        } else {
            LOCAL_CHANNEL
        };
        let mut db = Db::new(tx, salt.to_le_bytes(), crate::now_ms());
        let mut after = 0i64;
        loop {
            let page: Vec<(i64, String)> = {
                let mut stmt = tx.prepare(V2_ROWS).map_err(&err)?;
                let rows = stmt
                    .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(&err)?;
                rows.collect::<Result<_, _>>().map_err(&err)?
            };
            let Some((last, _)) = page.last() else { break };
            after = *last;
            let mut applier = Applier::new(&mut db, false);
            for (_, json) in &page {
                // A row that no longer parses is dropped: it could never be indexed anyway.
                if let Ok(record) = serde_json::from_str::<MemberRecord>(json) {
                    applier.upsert(channel, 0, &record, true).map_err(&err)?;
                }
            }
        }
        if legacy > 0 {
            use super::apply::ChangeStore;
            db.set_channel(LEGACY_CHANNEL, legacy as u64)
                .map_err(&err)?;
        }
        tx.execute_batch("DROP TABLE members_v2").map_err(&err)
    }

    fn salt(&self, conn: &Connection) -> Result<[u8; 8], CacheError> {
        let salt: i64 = match conn
            .query_row(GET_META, ["tombstone_salt"], |r| r.get(0))
            .optional()
            .map_err(self.err())?
        {
            Some(s) => s,
            None => {
                let s: i64 = rand::random();
                conn.execute(SET_META, params!["tombstone_salt", s])
                    .map_err(self.err())?;
                s
            }
        };
        Ok(salt.to_le_bytes())
    }

    /// Channels held and the version applied of each (pseudo-channels included).
    pub fn channels(&self) -> Result<BTreeMap<String, u64>, CacheError> {
        let conn = self.connect()?;
        let mut db = Db::new(&conn, [0; 8], 0);
        super::apply::ChangeStore::channels(&mut db).map_err(self.err())
    }

    /// The member-set version: the sum of head office's channel versions (0: never synced).
    pub fn version(&self) -> Result<u64, CacheError> {
        Ok(self
            .channels()?
            .iter()
            .filter(|(n, _)| n.as_str() != LOCAL_CHANNEL)
            .map(|(_, v)| *v)
            .sum())
    }

    /// Runs `f` with an applier in one immediate transaction; commits only if it succeeds.
    fn in_tx<T>(
        &self,
        collect: bool,
        f: impl FnOnce(&mut Applier<'_, Db<'_>>) -> Result<T, CacheError>,
    ) -> Result<(T, IndexPatch, ApplyStats), CacheError> {
        let mut conn = self.connect()?;
        let now = crate::now_ms();
        let salt = self.salt(&conn)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err())?;
        tx.execute(db::PRUNE_KEYS, [now]).map_err(self.err())?;
        tx.execute(db::PRUNE_TOMBSTONES, [now - TOMBSTONE_KEEP_MS])
            .map_err(self.err())?;
        let (out, patch, stats) = {
            let mut db = Db::new(&tx, salt, now);
            let mut applier = Applier::new(&mut db, collect);
            let out = f(&mut applier)?;
            let (patch, stats) = applier.finish().map_err(self.err())?;
            (out, patch, stats)
        };
        tx.commit().map_err(self.err())?;
        Ok((out, patch, stats))
    }

    /// Applies the change entries of one response in one transaction (snapshot entries are
    /// applied before, by [`Self::apply_snapshot`]).
    pub fn apply_response(
        &self,
        response: &ChangesResponse,
    ) -> Result<(IndexPatch, ApplyStats), CacheError> {
        let err = self.err();
        let ((), patch, stats) = self.in_tx(true, |a| a.response(response).map_err(&err))?;
        Ok((patch, stats))
    }

    /// Replaces `channel`'s members with a snapshot (decompressed NDJSON: header line, then one
    /// member a line), streamed, in one transaction; the channel is then at `version`. The
    /// engine reloads its index afterwards (a snapshot may hold a million members: no patch).
    pub fn apply_snapshot(
        &self,
        channel: &str,
        version: u64,
        members: u64,
        reader: &mut dyn BufRead,
        mut progress: impl FnMut(u64),
    ) -> Result<ApplyStats, SnapshotFormatError> {
        let mut lines = NdjsonLines::new(reader);
        let header: SnapshotHeader = match lines.next_line()? {
            Some((n, text)) => {
                serde_json::from_str(&text).map_err(|e| SnapshotFormatError::Line {
                    line: n,
                    reason: e.to_string(),
                })?
            }
            None => {
                return Err(SnapshotFormatError::Line {
                    line: 1,
                    reason: "empty snapshot".into(),
                });
            }
        };
        if header.channel != channel || header.version != version || header.members != members {
            return Err(SnapshotFormatError::Header {
                channel: header.channel,
                version: header.version,
                want_channel: channel.into(),
                want_version: version,
            });
        }
        let mut count = 0u64;
        let mut failure: Option<SnapshotFormatError> = None;
        let err = self.err();
        let result = self.in_tx(false, |a| {
            let iter = std::iter::from_fn(|| match lines.next_line() {
                Ok(Some((n, text))) => {
                    Some(serde_json::from_str::<SnapshotLine>(&text).map_err(|e| {
                        SnapshotFormatError::Line {
                            line: n,
                            reason: e.to_string(),
                        }
                    }))
                }
                Ok(None) => None,
                Err(e) => Some(Err(SnapshotFormatError::Io(e))),
            })
            .inspect(|l| {
                if l.is_ok() {
                    count += 1;
                    if count.is_multiple_of(10_000) {
                        progress(count);
                    }
                }
            });
            match a.snapshot(channel, version, iter).map_err(&err)? {
                Ok(()) if count == header.members => Ok(()),
                Ok(()) => {
                    failure = Some(SnapshotFormatError::Count {
                        got: count,
                        want: header.members,
                    });
                    Err(CacheError::Read {
                        what: "snapshot".into(),
                        source: std::io::Error::other("member count"),
                    })
                }
                Err(e) => {
                    failure = Some(e);
                    Err(CacheError::Read {
                        what: "snapshot".into(),
                        source: std::io::Error::other("bad line"),
                    })
                }
            }
        });
        progress(count);
        match (result, failure) {
            (_, Some(f)) => Err(f),
            (Ok(((), _, stats)), None) => Ok(stats),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// A whole-store snapshot from a head office that predates channels: the legacy
    /// pseudo-channel's members become `members`, at `version`.
    pub fn apply_legacy(
        &self,
        version: u64,
        members: &[MemberRecord],
    ) -> Result<ApplyStats, CacheError> {
        let err = self.err();
        let lines = members.iter().map(|m| {
            Ok::<_, std::convert::Infallible>(SnapshotLine {
                rev: version,
                member: m.clone(),
                keys: Vec::new(),
                keys_expire_ms: None,
            })
        });
        // Each snapshot is a new version: as a revision it replaces what an older one gave.
        let (r, _, stats) = self.in_tx(false, |a| {
            a.snapshot(LEGACY_CHANNEL, version, lines).map_err(&err)
        })?;
        let Ok(()) = r;
        Ok(stats)
    }

    /// Imports NDJSON into the local pseudo-channel, streamed, committed every
    /// [`IMPORT_BATCH`] lines. Bad lines (unparsable, invalid, or claiming an identifier another
    /// member holds) are reported with their number and skipped.
    pub fn import_ndjson(&self, reader: &mut dyn BufRead) -> Result<ImportReport, CacheError> {
        let mut report = ImportReport::default();
        let mut lines = NdjsonLines::new(reader);
        let mut done = false;
        while !done {
            let err = self.err();
            let (imported, _, _) = self.in_tx(false, |a| {
                let mut n = 0;
                for _ in 0..IMPORT_BATCH {
                    let (line, text) = match lines.next_line() {
                        Ok(Some(l)) => l,
                        Ok(None) => {
                            done = true;
                            break;
                        }
                        Err(e) => {
                            return Err(CacheError::Read {
                                what: "the import".into(),
                                source: e,
                            });
                        }
                    };
                    match check_import_line(a, &text) {
                        Ok(record) => {
                            a.upsert(LOCAL_CHANNEL, 0, &record, true).map_err(&err)?;
                            n += 1;
                        }
                        Err(error) => report.skipped.push(LineError { line, error }),
                    }
                }
                Ok(n)
            })?;
            report.imported += imported;
        }
        Ok(report)
    }

    /// Truncates the write-ahead log (its old frames may hold removed members' records);
    /// returns false when a reader kept it from completing.
    pub fn checkpoint(&self) -> Result<bool, CacheError> {
        let conn = self.connect()?;
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(self.err())?;
        Ok(busy == 0)
    }

    /// Every stored record, in slot order (tests and tools; a gateway never loads them all).
    pub fn load(&self) -> Result<Vec<MemberRecord>, CacheError> {
        let conn = self.connect()?;
        let mut out = Vec::new();
        let mut after = 0i64;
        loop {
            let mut stmt = conn.prepare_cached(RECORDS_PAGE).map_err(self.err())?;
            let page: Vec<(i64, String)> = stmt
                .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.err())?
                .collect::<Result<_, _>>()
                .map_err(self.err())?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for (slot, json) in page {
                out.push(
                    serde_json::from_str(&json).map_err(|source| CacheError::Corrupt {
                        path: self.path.display().to_string(),
                        slot: slot as Slot,
                        source,
                    })?,
                );
            }
        }
        Ok(out)
    }

    /// Builds the in-memory index from what is stored, streamed row by row.
    pub fn load_index(&self) -> Result<MemberIndex, CacheError> {
        let conn = self.connect()?;
        let err = self.err();
        let (idents, days, eids): (i64, i64, i64) = conn
            .query_row(COUNTS, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(&err)?;
        let mut b = IndexBuilder::new(idents.max(0) as usize);
        let mut stmt = conn.prepare(ALL_SLOTS).map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            b.member(r.get::<_, i64>(0).map_err(&err)? as Slot);
        }
        let mut stmt = conn.prepare(ALL_IDENTS).map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            let key: Vec<u8> = r.get(0).map_err(&err)?;
            let slot = r.get::<_, i64>(1).map_err(&err)? as Slot;
            if let Some(k) = ident_from_bytes(&key) {
                b.identifier(&k, slot);
            }
        }
        Ok(b.finish(self.version()?, days.max(0) as usize, eids.max(0) as usize))
    }

    /// What the engine holds: the index, a reader for records and keys.
    pub fn members(&self) -> Result<Members, CacheError> {
        let index = self.load_index()?;
        Ok(Members {
            index,
            records: Box::new(SqliteMembers::open(&self.path)?),
            keys: std::sync::Arc::new(SqliteKeys::new(&self.path)),
        })
    }
}

/// An import line → a record, or why it is skipped (the identifier check is against the file as
/// imported so far: every earlier line is already in the transaction or committed).
fn check_import_line(a: &mut Applier<'_, Db<'_>>, text: &str) -> Result<MemberRecord, MemberError> {
    let record: MemberRecord =
        serde_json::from_str(text).map_err(|e| MemberError::Json(e.to_string()))?;
    let keys = record.validate()?;
    let conn = a.store().conn;
    for (index, k) in keys.iter().enumerate() {
        let Some(b) = ident_bytes(k) else { continue };
        let owner: Option<String> = conn
            .prepare_cached(OWNER)
            .and_then(|mut s| s.query_row([b], |r| r.get(0)).optional())
            .unwrap_or(None);
        if let Some(other) = owner
            && other != record.member_id
        {
            return Err(MemberError::DuplicateIdentifier { index, other });
        }
    }
    Ok(record)
}

/// Non-blank lines of a reader, numbered from 1, each at most [`MAX_LINE_BYTES`].
struct NdjsonLines<'r> {
    reader: &'r mut dyn BufRead,
    line: usize,
    buf: Vec<u8>,
}

impl<'r> NdjsonLines<'r> {
    fn new(reader: &'r mut dyn BufRead) -> Self {
        Self {
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }

    fn next_line(&mut self) -> std::io::Result<Option<(usize, String)>> {
        loop {
            self.buf.clear();
            let r: &mut dyn BufRead = &mut *self.reader;
            let n = <&mut dyn BufRead as std::io::Read>::take(r, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(std::io::Error::other(format!(
                    "line {} is longer than {MAX_LINE_BYTES} bytes",
                    self.line
                )));
            }
            let text = String::from_utf8_lossy(&self.buf);
            let text = text.trim();
            if !text.is_empty() {
                return Ok(Some((self.line, text.to_string())));
            }
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
