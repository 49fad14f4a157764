//! How the engine and the window-table thread read `members.db`: [`SqliteMembers`] (records and
//! day keys on a match, one pinned read transaction between patches) and [`SqliteKeys`] (every
//! member's short-lived keys of one day or epoch, once per window).

use std::path::{Path, PathBuf};

use instore_protocol::{MemberRecord, eddystone_eid::TempKey, rotating::DayKey};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Member, Slot,
    db::ident_bytes,
    db::{KIND_DAY, KIND_EID},
    source::{DeviceKey, MemberSource, WindowKeys, device_key_in},
    store::{CacheError, sqlite_err},
};

const RECORD: &str = "SELECT record FROM members WHERE slot = ?1";
const SLOT_OF: &str = "SELECT slot FROM members WHERE member_id = ?1";
const BY_DEVICE_KEY: &str =
    "SELECT m.slot, m.record FROM idents i JOIN members m ON m.slot = i.slot
    WHERE i.key = ?1";
const DAY_KEY: &str = "SELECT key FROM keys WHERE slot = ?1 AND kind = 1 AND period = ?2";
const KEYS_OF_PERIOD: &str = "SELECT slot, exponent, key FROM keys WHERE kind = ?1 AND period = ?2";
/// The engine's reader: it reads one record per new member heard (KiB).
const READER_CACHE_KIB: i64 = 1_024;

/// The engine's reader of `members.db`: one connection, one read transaction held open until the
/// next [`MemberSource::refresh`], so records read always belong to the state the index shows.
/// Between the two transactions it truncates the write-ahead log when members were removed
/// (nobody else writes then: the downlink waits for the engine's answer), so no old frame keeps a
/// removed member's record; `query_only` keeps it from changing data.
pub struct SqliteMembers {
    path: PathBuf,
    conn: Connection,
}

impl SqliteMembers {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let err = sqlite_err(path);
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(&err)?;
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
            .map_err(&err)?;
        conn.pragma_update(None, "query_only", "ON").map_err(&err)?;
        // Short: the engine waits on this at most once per patch.
        conn.busy_timeout(std::time::Duration::from_millis(200))
            .map_err(&err)?;
        let mut s = Self {
            path: path.to_path_buf(),
            conn,
        };
        s.pin(true)?;
        Ok(s)
    }

    fn pin(&mut self, truncate_log: bool) -> Result<(), CacheError> {
        let err = sqlite_err(&self.path);
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(&err)?;
        }
        if truncate_log {
            let busy: i64 = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(&err)?;
            if busy != 0 {
                tracing::warn!("member cache: write-ahead log not truncated (busy); next time");
            }
        }
        self.conn.execute_batch("BEGIN").map_err(&err)?;
        // The first read fixes the snapshot.
        self.conn
            .query_row("SELECT count(*) FROM channels", [], |_| Ok(()))
            .map_err(&err)
    }
}

impl MemberSource for SqliteMembers {
    fn member(&mut self, slot: Slot) -> Result<Option<Member>, CacheError> {
        let err = sqlite_err(&self.path);
        let json: Option<String> = self
            .conn
            .prepare_cached(RECORD)
            .map_err(&err)?
            .query_row([slot], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        let Some(json) = json else { return Ok(None) };
        let record: MemberRecord =
            serde_json::from_str(&json).map_err(|source| CacheError::Corrupt {
                path: self.path.display().to_string(),
                slot,
                source,
            })?;
        // Defensive: a record without presence consent is never identified.
        Ok(record
            .consent
            .presence
            .then(|| Member::from_record(slot, &record)))
    }

    fn slot_of(&mut self, member_id: &str) -> Result<Option<Slot>, CacheError> {
        let err = sqlite_err(&self.path);
        self.conn
            .prepare_cached(SLOT_OF)
            .map_err(&err)?
            .query_row([member_id], |r| Ok(r.get::<_, i64>(0)? as Slot))
            .optional()
            .map_err(&err)
    }

    fn device_key(
        &mut self,
        key_id: &[u8; instore_protocol::member_code::KEY_ID_LEN],
    ) -> Result<Option<DeviceKey>, CacheError> {
        let err = sqlite_err(&self.path);
        let Some(key) =
            ident_bytes(&instore_protocol::IdentifierKey::DeviceKey { key_id: *key_id })
        else {
            return Ok(None);
        };
        let row: Option<(i64, String)> = self
            .conn
            .prepare_cached(BY_DEVICE_KEY)
            .map_err(&err)?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(&err)?;
        let Some((slot, json)) = row else {
            return Ok(None);
        };
        let slot = slot as Slot;
        let record: MemberRecord =
            serde_json::from_str(&json).map_err(|source| CacheError::Corrupt {
                path: self.path.display().to_string(),
                slot,
                source,
            })?;
        if !record.consent.presence {
            return Ok(None);
        }
        Ok(device_key_in(&record, slot, key_id))
    }

    fn day_key(&mut self, slot: Slot, day: u32) -> Result<Option<DayKey>, CacheError> {
        let err = sqlite_err(&self.path);
        let key: Option<Vec<u8>> = self
            .conn
            .prepare_cached(DAY_KEY)
            .map_err(&err)?
            .query_row(params![slot, day], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        Ok(key.and_then(|k| k.try_into().ok()))
    }

    fn refresh(&mut self, truncate_log: bool) -> Result<(), CacheError> {
        self.pin(truncate_log)
    }
}

/// Short-lived keys from `members.db`, read by the window-table thread (a connection per read:
/// once per window).
#[derive(Debug, Clone)]
pub struct SqliteKeys {
    path: PathBuf,
}

impl SqliteKeys {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    fn each(
        &self,
        kind: i64,
        period: i64,
        out: &mut dyn FnMut(Slot, u8, &[u8]),
    ) -> Result<(), CacheError> {
        let err = sqlite_err(&self.path);
        let conn =
            Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(&err)?;
        let mut stmt = conn.prepare(KEYS_OF_PERIOD).map_err(&err)?;
        let mut rows = stmt.query(params![kind, period]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            let slot = r.get::<_, i64>(0).map_err(&err)? as Slot;
            let exponent = r.get::<_, i64>(1).map_err(&err)?.clamp(0, 255) as u8;
            let key: Vec<u8> = r.get(2).map_err(&err)?;
            out(slot, exponent, &key);
        }
        Ok(())
    }
}

impl WindowKeys for SqliteKeys {
    fn day_keys(&self, day: u32, out: &mut dyn FnMut(Slot, &DayKey)) -> Result<(), CacheError> {
        self.each(KIND_DAY, i64::from(day), &mut |slot, _, key| {
            if let Ok(k) = <DayKey>::try_from(key) {
                out(slot, &k);
            }
        })
    }

    fn eid_keys(
        &self,
        epoch: u16,
        out: &mut dyn FnMut(Slot, u8, &TempKey),
    ) -> Result<(), CacheError> {
        self.each(KIND_EID, i64::from(epoch), &mut |slot, exponent, key| {
            if let Ok(k) = <TempKey>::try_from(key) {
                out(slot, exponent, &k);
            }
        })
    }
}
