//! `members.db` as a [`ChangeStore`]: the applier's reads and writes, inside one transaction.
//!
//! Tables (schema in `store.rs`): `members` (slot = rowid, never reused; the record as JSON),
//! `idents` (fixed identifiers → slot, one holder each), `keys` (short-lived keys with their own
//! expiry), `channels` (name → version), `memberships` (channel, slot), `tombstones` (a salted
//! SHA-256 of a removed member's id and the removal's rev: no readable trace of who left).

use std::collections::{BTreeMap, HashMap};

use instore_protocol::{IdentifierKey, MemberRecord};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{Slot, apply::ChangeStore, apply::Held};

const CHANNELS: &str = "SELECT name, version FROM channels";
const CHANNEL_ID: &str = "SELECT id FROM channels WHERE name = ?1";
const NEW_CHANNEL: &str = "INSERT INTO channels (name, version) VALUES (?1, 0)";
const SET_CHANNEL: &str = "INSERT INTO channels (name, version) VALUES (?1, ?2)
    ON CONFLICT(name) DO UPDATE SET version = excluded.version";
const CHANNEL_SLOTS: &str = "SELECT slot FROM memberships WHERE channel = ?1";
const DROP_MEMBERSHIPS: &str = "DELETE FROM memberships WHERE channel = ?1";
const DROP_CHANNEL: &str = "DELETE FROM channels WHERE id = ?1";
const FIND: &str = "SELECT slot, rev FROM members WHERE member_id = ?1";
const TOMBSTONE: &str = "SELECT rev FROM tombstones WHERE id_hash = ?1";
const SET_TOMBSTONE: &str = "INSERT INTO tombstones (id_hash, rev, at_ms) VALUES (?1, ?2, ?3)
    ON CONFLICT(id_hash) DO UPDATE SET rev = excluded.rev, at_ms = excluded.at_ms";
const CLEAR_TOMBSTONE: &str = "DELETE FROM tombstones WHERE id_hash = ?1";
const INSERT_MEMBER: &str = "INSERT INTO members (member_id, rev, record, marketing, last_visit)
    VALUES (?1, ?2, ?3, ?4, ?5)";
const UPDATE_MEMBER: &str = "UPDATE members SET rev = ?2, record = ?3, marketing = ?4,
    last_visit = ?5 WHERE slot = ?1";
const IDENTS_OF: &str = "SELECT key FROM idents WHERE slot = ?1";
const DELETE_IDENT: &str = "DELETE FROM idents WHERE key = ?1 AND slot = ?2";
const INSERT_IDENT: &str = "INSERT OR IGNORE INTO idents (key, slot) VALUES (?1, ?2)";
const DELETE_IDENTS: &str = "DELETE FROM idents WHERE slot = ?1";
const DELETE_KEYS: &str = "DELETE FROM keys WHERE slot = ?1";
const DELETE_HOLDS: &str = "DELETE FROM memberships WHERE slot = ?1";
const DELETE_MEMBER: &str = "DELETE FROM members WHERE slot = ?1";
const JOIN: &str = "INSERT INTO memberships (channel, slot, fresh) VALUES (?1, ?2, 1)
    ON CONFLICT(channel, slot) DO UPDATE SET fresh = 1";
const LEAVE: &str = "DELETE FROM memberships WHERE channel = ?1 AND slot = ?2";
const HOLDS: &str = "SELECT count(*) FROM memberships WHERE slot = ?1";
const INSERT_KEY: &str =
    "INSERT OR REPLACE INTO keys (slot, kind, period, exponent, key, expires_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const KEY_MEMBERS: &str = "SELECT
    (SELECT count(DISTINCT slot) FROM keys WHERE kind = 1),
    (SELECT count(DISTINCT slot) FROM keys WHERE kind = 2)";
const BEGIN_RESYNC: &str = "UPDATE memberships SET fresh = 0 WHERE channel = ?1";
const STALE_HOLDS: &str = "SELECT slot FROM memberships WHERE channel = ?1 AND fresh = 0";
const DROP_STALE: &str = "DELETE FROM memberships WHERE channel = ?1 AND fresh = 0";
pub(super) const PRUNE_KEYS: &str = "DELETE FROM keys WHERE expires_ms < ?1";
pub(super) const PRUNE_TOMBSTONES: &str = "DELETE FROM tombstones WHERE at_ms < ?1";

/// `keys.kind`.
pub(super) const KIND_DAY: i64 = 1;
pub(super) const KIND_EID: i64 = 2;

/// A short-lived key stops mattering this long after its day or epoch ends (clock skew, the
/// window tables' w+1).
const KEY_SLACK_MS: i64 = 3_600_000;

/// An identifier as stored in `idents.key`: a kind byte, then its bytes.
pub(super) fn ident_bytes(k: &IdentifierKey) -> Option<Vec<u8>> {
    let mut b = Vec::with_capacity(21);
    match k {
        IdentifierKey::Ibeacon { uuid, major, minor } => {
            b.push(1);
            b.extend_from_slice(uuid);
            b.extend_from_slice(&major.to_be_bytes());
            b.extend_from_slice(&minor.to_be_bytes());
        }
        IdentifierKey::EddystoneUid {
            namespace,
            instance,
        } => {
            b.push(2);
            b.extend_from_slice(namespace);
            b.extend_from_slice(instance);
        }
        IdentifierKey::Mac(a) => {
            b.push(3);
            b.extend_from_slice(a);
        }
        IdentifierKey::Irk(k) => {
            b.push(4);
            b.extend_from_slice(k);
        }
        // Only ever looked up on disk, by a scanned member code: never in the in-memory index.
        IdentifierKey::DeviceKey { key_id } => {
            b.push(5);
            b.extend_from_slice(key_id);
        }
        _ => return None,
    }
    Some(b)
}

pub(super) fn ident_from_bytes(b: &[u8]) -> Option<IdentifierKey> {
    let (kind, rest) = b.split_first()?;
    Some(match (kind, rest.len()) {
        (1, 20) => IdentifierKey::Ibeacon {
            uuid: rest[..16].try_into().ok()?,
            major: u16::from_be_bytes([rest[16], rest[17]]),
            minor: u16::from_be_bytes([rest[18], rest[19]]),
        },
        (2, 16) => IdentifierKey::EddystoneUid {
            namespace: rest[..10].try_into().ok()?,
            instance: rest[10..].try_into().ok()?,
        },
        (3, 6) => IdentifierKey::Mac(rest.try_into().ok()?),
        (4, 16) => IdentifierKey::Irk(rest.try_into().ok()?),
        (5, 8) => IdentifierKey::DeviceKey {
            key_id: rest.try_into().ok()?,
        },
        _ => return None,
    })
}

/// The applier's view of `members.db` inside a transaction the caller opened and commits.
pub(super) struct Db<'c> {
    pub conn: &'c Connection,
    pub salt: [u8; 8],
    pub now_ms: i64,
    channel_ids: HashMap<String, i64>,
}

impl<'c> Db<'c> {
    pub fn new(conn: &'c Connection, salt: [u8; 8], now_ms: i64) -> Self {
        Self {
            conn,
            salt,
            now_ms,
            channel_ids: HashMap::new(),
        }
    }

    fn id_hash(&self, member_id: &str) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(member_id.as_bytes());
        h.finalize().to_vec()
    }

    fn channel_id(&mut self, name: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.channel_ids.get(name) {
            return Ok(*id);
        }
        let found: Option<i64> = self
            .conn
            .prepare_cached(CHANNEL_ID)?
            .query_row([name], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                self.conn.prepare_cached(NEW_CHANNEL)?.execute([name])?;
                self.conn.last_insert_rowid()
            }
        };
        self.channel_ids.insert(name.to_string(), id);
        Ok(id)
    }

    fn slots(&self, sql: &str, channel: i64) -> rusqlite::Result<Vec<Slot>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([channel], |r| r.get::<_, i64>(0))?;
        rows.map(|r| r.map(|s| s as Slot)).collect()
    }

    fn idents_of(&self, slot: Slot) -> rusqlite::Result<Vec<IdentifierKey>> {
        let mut stmt = self.conn.prepare_cached(IDENTS_OF)?;
        let rows = stmt.query_map([slot], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(k) = ident_from_bytes(&r?) {
                out.push(k);
            }
        }
        Ok(out)
    }
}

/// The record as stored: without short-lived keys (they live in `keys`, with their expiry).
fn stored_json(record: &MemberRecord) -> String {
    let mut r = record.clone();
    r.identifiers.retain(|i| {
        !matches!(
            i,
            instore_protocol::Identifier::RotatingDayKey { .. }
                | instore_protocol::Identifier::EddystoneEidTemp { .. }
        )
    });
    // A plain struct of strings and numbers: serialising cannot fail.
    serde_json::to_string(&r).unwrap_or_default()
}

impl ChangeStore for Db<'_> {
    type Error = rusqlite::Error;

    fn channels(&mut self) -> rusqlite::Result<BTreeMap<String, u64>> {
        let mut stmt = self.conn.prepare_cached(CHANNELS)?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        rows.collect()
    }

    fn set_channel(&mut self, channel: &str, version: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(SET_CHANNEL)?
            .execute(params![channel, version as i64])?;
        Ok(())
    }

    fn drop_channel(&mut self, channel: &str) -> rusqlite::Result<Vec<Slot>> {
        let id = self.channel_id(channel)?;
        let slots = self.slots(CHANNEL_SLOTS, id)?;
        self.conn.prepare_cached(DROP_MEMBERSHIPS)?.execute([id])?;
        self.conn.prepare_cached(DROP_CHANNEL)?.execute([id])?;
        self.channel_ids.remove(channel);
        Ok(slots)
    }

    fn find(&mut self, member_id: &str) -> rusqlite::Result<Option<Held>> {
        self.conn
            .prepare_cached(FIND)?
            .query_row([member_id], |r| {
                Ok(Held {
                    slot: r.get::<_, i64>(0)? as Slot,
                    rev: r.get::<_, i64>(1)?.max(0) as u64,
                })
            })
            .optional()
    }

    fn tombstone(&mut self, member_id: &str) -> rusqlite::Result<Option<u64>> {
        let h = self.id_hash(member_id);
        self.conn
            .prepare_cached(TOMBSTONE)?
            .query_row([h], |r| Ok(r.get::<_, i64>(0)?.max(0) as u64))
            .optional()
    }

    fn set_tombstone(&mut self, member_id: &str, rev: Option<u64>) -> rusqlite::Result<()> {
        let h = self.id_hash(member_id);
        match rev {
            Some(rev) => self.conn.prepare_cached(SET_TOMBSTONE)?.execute(params![
                h,
                rev as i64,
                self.now_ms
            ])?,
            None => self.conn.prepare_cached(CLEAR_TOMBSTONE)?.execute([h])?,
        };
        Ok(())
    }

    fn put(
        &mut self,
        slot: Option<Slot>,
        record: &MemberRecord,
        rev: u64,
        identifiers: &[IdentifierKey],
    ) -> rusqlite::Result<(Slot, Vec<IdentifierKey>, Vec<IdentifierKey>)> {
        let json = stored_json(record);
        let cols = params![
            record.member_id,
            rev as i64,
            json,
            record.consent.marketing,
            record.last_visit
        ];
        let (slot, old) = match slot {
            Some(slot) => {
                self.conn.prepare_cached(UPDATE_MEMBER)?.execute(params![
                    slot,
                    rev as i64,
                    json,
                    record.consent.marketing,
                    record.last_visit
                ])?;
                (slot, self.idents_of(slot)?)
            }
            None => {
                self.conn.prepare_cached(INSERT_MEMBER)?.execute(cols)?;
                (self.conn.last_insert_rowid() as Slot, Vec::new())
            }
        };
        let mut removed = Vec::new();
        for k in old.iter().filter(|k| !identifiers.contains(k)) {
            if let Some(b) = ident_bytes(k) {
                self.conn
                    .prepare_cached(DELETE_IDENT)?
                    .execute(params![b, slot])?;
                removed.push(*k);
            }
        }
        let mut added = Vec::new();
        for k in identifiers.iter().filter(|k| !old.contains(k)) {
            if let Some(b) = ident_bytes(k)
                && self
                    .conn
                    .prepare_cached(INSERT_IDENT)?
                    .execute(params![b, slot])?
                    == 1
            {
                added.push(*k);
            }
        }
        Ok((slot, removed, added))
    }

    fn delete(&mut self, slot: Slot) -> rusqlite::Result<Vec<IdentifierKey>> {
        let idents = self.idents_of(slot)?;
        for sql in [DELETE_IDENTS, DELETE_KEYS, DELETE_HOLDS, DELETE_MEMBER] {
            self.conn.prepare_cached(sql)?.execute([slot])?;
        }
        Ok(idents)
    }

    fn join(&mut self, channel: &str, slot: Slot) -> rusqlite::Result<()> {
        let id = self.channel_id(channel)?;
        self.conn.prepare_cached(JOIN)?.execute(params![id, slot])?;
        Ok(())
    }

    fn leave(&mut self, channel: &str, slot: Slot) -> rusqlite::Result<()> {
        let id = self.channel_id(channel)?;
        self.conn
            .prepare_cached(LEAVE)?
            .execute(params![id, slot])?;
        Ok(())
    }

    fn holds(&mut self, slot: Slot) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached(HOLDS)?
            .query_row([slot], |r| Ok(r.get::<_, i64>(0)?.max(0) as usize))
    }

    fn set_keys(&mut self, slot: Slot, keys: &[IdentifierKey]) -> rusqlite::Result<()> {
        self.conn.prepare_cached(DELETE_KEYS)?.execute([slot])?;
        let mut stmt = self.conn.prepare_cached(INSERT_KEY)?;
        for k in keys {
            let (kind, period, exponent, key, expires) = match k {
                IdentifierKey::RotatingDayKey { day, key } => (
                    KIND_DAY,
                    i64::from(*day),
                    0,
                    key.to_vec(),
                    (i64::from(*day) + 1) * 86_400_000 + KEY_SLACK_MS,
                ),
                IdentifierKey::EddystoneEidTemp {
                    epoch,
                    key,
                    exponent,
                } => (
                    KIND_EID,
                    i64::from(*epoch),
                    i64::from(*exponent),
                    key.to_vec(),
                    ((i64::from(*epoch) + 1) << 16) * 1000 + KEY_SLACK_MS,
                ),
                _ => continue,
            };
            if expires < self.now_ms {
                continue;
            }
            stmt.execute(params![slot, kind, period, exponent, key, expires])?;
        }
        Ok(())
    }

    fn key_members(&mut self) -> rusqlite::Result<(usize, usize)> {
        self.conn.prepare_cached(KEY_MEMBERS)?.query_row([], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as usize,
                r.get::<_, i64>(1)?.max(0) as usize,
            ))
        })
    }

    fn begin_resync(&mut self, channel: &str) -> rusqlite::Result<()> {
        let id = self.channel_id(channel)?;
        self.conn.prepare_cached(BEGIN_RESYNC)?.execute([id])?;
        Ok(())
    }

    fn end_resync(&mut self, channel: &str) -> rusqlite::Result<Vec<Slot>> {
        let id = self.channel_id(channel)?;
        let slots = self.slots(STALE_HOLDS, id)?;
        self.conn.prepare_cached(DROP_STALE)?.execute([id])?;
        Ok(slots)
    }
}
