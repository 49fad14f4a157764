//! Where the engine's records and short-lived keys come from: traits, so that the engine's core
//! is tested against memory ([`MemoryMembers`]) and runs against `members.db`
//! ([`super::store::SqliteMembers`]) without knowing which.
//!
//! [`Records`] is the engine's bounded cache of records in front of its [`MemberSource`]: the
//! members heard recently (presence holds the same `Arc`s while they are present), so a member's
//! adverts cost a disk read once, not per advert.

use std::{collections::HashMap, sync::Arc};

use foldhash::fast::RandomState;
use instore_protocol::{IdentifierKey, MemberRecord, eddystone_eid::TempKey, rotating::DayKey};

use instore_protocol::member_code::{Algorithm, KEY_ID_LEN};

use super::{CacheError, IndexBuilder, Member, MemberIndex, Slot};

/// A member's registered device key, as a gateway holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    pub slot: Slot,
    pub alg: Algorithm,
    pub public_key: Vec<u8>,
    /// Revoked at head office: its codes are refused as `revoked_key`.
    pub revoked: bool,
}

/// The device key with id `key_id` among a record's identifiers.
pub fn device_key_in(
    record: &MemberRecord,
    slot: Slot,
    key_id: &[u8; KEY_ID_LEN],
) -> Option<DeviceKey> {
    record.identifiers.iter().find_map(|i| match i {
        instore_protocol::Identifier::DeviceKey {
            alg,
            public_key,
            revoked,
        } => {
            let (alg, raw) = instore_protocol::member::device_key(alg, public_key).ok()?;
            (instore_protocol::member_code::key_id(&raw) == *key_id).then_some(DeviceKey {
                slot,
                alg,
                public_key: raw,
                revoked: *revoked,
            })
        }
        _ => None,
    })
}

/// Records by slot and id, for the engine (one owner; reads may touch disk).
pub trait MemberSource: Send {
    /// The record of the member in `slot`, if held.
    fn member(&mut self, slot: Slot) -> Result<Option<Member>, CacheError>;
    /// The slot of the member with this id, if held.
    fn slot_of(&mut self, member_id: &str) -> Result<Option<Slot>, CacheError>;
    /// The rotating-ID day key of the member in `slot` for `day` (QR codes are signed with it).
    fn day_key(&mut self, slot: Slot, day: u32) -> Result<Option<DayKey>, CacheError>;
    /// The consenting member whose registered device key has this id, with the key: what a
    /// signed member code is checked against. Sources without device keys hold none.
    fn device_key(&mut self, _key_id: &[u8; KEY_ID_LEN]) -> Result<Option<DeviceKey>, CacheError> {
        Ok(None)
    }
    /// The engine applied a patch: read the state it describes from now on. `truncate_log`:
    /// members were removed, so old copies of their records in the write-ahead log go now.
    fn refresh(&mut self, _truncate_log: bool) -> Result<(), CacheError> {
        Ok(())
    }
}

/// Every member's short-lived keys of one day or epoch, for the per-window table builder thread.
pub trait WindowKeys: Send + Sync + std::fmt::Debug {
    fn day_keys(&self, day: u32, out: &mut dyn FnMut(Slot, &DayKey)) -> Result<(), CacheError>;
    fn eid_keys(
        &self,
        epoch: u16,
        out: &mut dyn FnMut(Slot, u8, &TempKey),
    ) -> Result<(), CacheError>;
}

/// What the engine holds of the member set: the index, and where records and keys come from.
pub struct Members {
    pub index: MemberIndex,
    pub records: Box<dyn MemberSource>,
    pub keys: Arc<dyn WindowKeys>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("index", &self.index)
            .finish()
    }
}

impl Members {
    /// An index over `records` held in memory (tests, benchmarks): consenting, valid records;
    /// slots 1, 2, … in order; a second claim on an identifier is ignored.
    pub fn in_memory(version: u64, records: &[MemberRecord]) -> Self {
        let memory = MemoryMembers::new(records);
        let index = memory.index(version);
        Self {
            index,
            keys: Arc::new(memory.keys.clone()),
            records: Box::new(memory),
        }
    }
}

/// Short-lived keys held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryKeys {
    days: Vec<(Slot, u32, DayKey)>,
    eids: Vec<(Slot, u16, u8, TempKey)>,
}

impl WindowKeys for MemoryKeys {
    fn day_keys(&self, day: u32, out: &mut dyn FnMut(Slot, &DayKey)) -> Result<(), CacheError> {
        for (slot, d, key) in &self.days {
            if *d == day {
                out(*slot, key);
            }
        }
        Ok(())
    }

    fn eid_keys(
        &self,
        epoch: u16,
        out: &mut dyn FnMut(Slot, u8, &TempKey),
    ) -> Result<(), CacheError> {
        for (slot, e, exponent, key) in &self.eids {
            if *e == epoch {
                out(*slot, *exponent, key);
            }
        }
        Ok(())
    }
}

/// Members held in memory: the record source of the engine's tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct MemoryMembers {
    members: Vec<(Member, Vec<IdentifierKey>)>,
    by_id: HashMap<String, Slot>,
    keys: MemoryKeys,
}

impl MemoryMembers {
    pub fn new(records: &[MemberRecord]) -> Self {
        let mut m = Self::default();
        for r in records {
            if !r.consent.presence || m.by_id.contains_key(&r.member_id) {
                continue;
            }
            let Ok(keys) = r.validate() else { continue };
            let slot = m.members.len() as Slot + 1;
            for k in &keys {
                match k {
                    IdentifierKey::RotatingDayKey { day, key } => {
                        m.keys.days.push((slot, *day, *key));
                    }
                    IdentifierKey::EddystoneEidTemp {
                        epoch,
                        key,
                        exponent,
                    } => {
                        m.keys.eids.push((slot, *epoch, *exponent, *key));
                    }
                    _ => {}
                }
            }
            m.by_id.insert(r.member_id.clone(), slot);
            m.members.push((Member::from_record(slot, r), keys));
        }
        m
    }

    /// The index of these members.
    pub fn index(&self, version: u64) -> MemberIndex {
        let mut b = IndexBuilder::new(self.members.iter().map(|(_, k)| k.len()).sum());
        for (m, keys) in &self.members {
            b.member(m.slot);
            for k in keys {
                b.identifier(k, m.slot);
            }
        }
        let members_with = |f: fn(&IdentifierKey) -> bool| {
            self.members
                .iter()
                .filter(|(_, keys)| keys.iter().any(f))
                .count()
        };
        b.finish(
            version,
            members_with(|k| matches!(k, IdentifierKey::RotatingDayKey { .. })),
            members_with(|k| matches!(k, IdentifierKey::EddystoneEidTemp { .. })),
        )
    }

    /// The member in `slot`.
    pub fn get(&self, slot: Slot) -> Option<&Member> {
        slot.checked_sub(1)
            .and_then(|i| self.members.get(i as usize))
            .map(|(m, _)| m)
    }

    /// The member with this id.
    pub fn by_id(&self, member_id: &str) -> Option<&Member> {
        self.by_id.get(member_id).and_then(|s| self.get(*s))
    }

    /// Their short-lived keys.
    pub fn keys(&self) -> &MemoryKeys {
        &self.keys
    }

    /// Members held.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl MemberSource for MemoryMembers {
    fn member(&mut self, slot: Slot) -> Result<Option<Member>, CacheError> {
        Ok(slot
            .checked_sub(1)
            .and_then(|i| self.members.get(i as usize))
            .map(|(m, _)| m.clone()))
    }

    fn slot_of(&mut self, member_id: &str) -> Result<Option<Slot>, CacheError> {
        Ok(self.by_id.get(member_id).copied())
    }

    fn day_key(&mut self, slot: Slot, day: u32) -> Result<Option<DayKey>, CacheError> {
        Ok(self
            .keys
            .days
            .iter()
            .find(|(s, d, _)| *s == slot && *d == day)
            .map(|(_, _, k)| *k))
    }
}

/// Records kept in memory at most (members heard recently); past it, records nobody else holds
/// are dropped first.
pub const RECORD_CACHE: usize = 4_096;

/// What a record read did, for the engine's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRead {
    Cached,
    Disk,
    Missing,
    Failed,
}

/// The engine's bounded record cache in front of its [`MemberSource`].
pub struct Records {
    source: Box<dyn MemberSource>,
    cache: HashMap<Slot, Arc<Member>, RandomState>,
    capacity: usize,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Records {
    pub fn new(source: Box<dyn MemberSource>, capacity: usize) -> Self {
        Self {
            source,
            cache: HashMap::default(),
            capacity: capacity.max(16),
        }
    }

    /// The member in `slot`: from memory, or read from the source and remembered.
    pub fn get(&mut self, slot: Slot) -> (Option<Arc<Member>>, RecordRead) {
        if let Some(m) = self.cache.get(&slot) {
            return (Some(m.clone()), RecordRead::Cached);
        }
        match self.source.member(slot) {
            Ok(Some(m)) => {
                if self.cache.len() >= self.capacity {
                    self.evict();
                }
                let m = Arc::new(m);
                self.cache.insert(slot, m.clone());
                (Some(m), RecordRead::Disk)
            }
            Ok(None) => (None, RecordRead::Missing),
            Err(e) => {
                tracing::warn!(error = %e, "member record read failed");
                (None, RecordRead::Failed)
            }
        }
    }

    /// Drops records only the cache holds (presence holds those of members present); if that
    /// frees too little, half of the rest.
    fn evict(&mut self) {
        self.cache.retain(|_, m| Arc::strong_count(m) > 1);
        if self.cache.len() >= self.capacity / 2 {
            let mut n = 0;
            self.cache.retain(|_, _| {
                n += 1;
                n % 2 == 0
            });
        }
    }

    /// Forgets the records of slots a patch changed, and re-pins the source's view.
    pub fn invalidate(&mut self, slots: impl IntoIterator<Item = Slot>, truncate_log: bool) {
        for s in slots {
            self.cache.remove(&s);
        }
        if let Err(e) = self.source.refresh(truncate_log) {
            tracing::warn!(error = %e, "member record source refresh failed");
        }
    }

    pub fn clear(&mut self) {
        self.cache.clear();
    }

    pub fn source(&mut self) -> &mut dyn MemberSource {
        &mut *self.source
    }

    pub fn replace_source(&mut self, source: Box<dyn MemberSource>) {
        self.source = source;
        self.cache.clear();
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
