//! The in-memory member index: identifier → slot, and nothing else per member.
//!
//! What a million members cost here (measured in BENCHMARKS.md): one [`IdTable`] entry per fixed
//! identifier (iBeacon, Eddystone UID, address: ~16 bytes with load and filter), the IRK table
//! (~180 bytes per IRK, 1 % of members), one bit per slot for "live". Records stay in
//! `members.db` and are read on a match ([`super::MemberSource`]); short-lived keys (rotating-ID
//! day keys, EID temporary keys) stay there too and are read once per window by the table
//! builder ([`super::WindowKeys`]).
//!
//! iBeacon UUIDs and Eddystone namespaces are few per chain, so they are dictionary-encoded: an
//! advert whose UUID or namespace is not in the dictionary is a stranger after a few comparisons,
//! and the rest of the identifier fits a `u64` key with the code.
//!
//! The engine owns the index and patches it in place ([`MemberIndex::apply`]) with what one
//! change response did ([`IndexPatch`]), between two sightings: identification sees the old or the
//! new state of a response, never half.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use foldhash::fast::RandomState;
use instore_protocol::IdentifierKey;

use super::{Slot, table::IdTable};
use crate::identify::rpa::IrkTable;

/// Distinct UUIDs (or namespaces) up to which the dictionary is a list scanned without hashing.
const DICT_SCAN_MAX: usize = 8;
/// Codes fit 14 bits of a key.
const DICT_MAX: usize = (1 << 14) - 1;

const TAG_IBEACON: u64 = 1 << 62;
const TAG_UID: u64 = 2 << 62;
const TAG_MAC: u64 = 3 << 62;

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed)
}

/// Byte strings (UUIDs, namespaces) → small codes, in order of first use.
#[derive(Debug, Clone, Default)]
struct Dict<const N: usize> {
    list: Vec<[u8; N]>,
    map: HashMap<[u8; N], u16, RandomState>,
}

impl<const N: usize> Dict<N> {
    #[inline]
    fn code(&self, v: &[u8; N]) -> Option<u16> {
        if self.list.len() <= DICT_SCAN_MAX {
            self.list.iter().position(|x| x == v).map(|i| i as u16 + 1)
        } else {
            self.map.get(v).copied()
        }
    }

    fn code_or_add(&mut self, v: &[u8; N]) -> Option<u16> {
        if let Some(c) = self.code(v) {
            return Some(c);
        }
        if self.list.len() >= DICT_MAX {
            return None;
        }
        self.list.push(*v);
        let c = self.list.len() as u16;
        self.map.insert(*v, c);
        Some(c)
    }
}

/// One step of an [`IndexPatch`], applied in order (a member changed twice in one response
/// drops and takes identifiers in the order the changes did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOp {
    /// The member in this slot is held now (added, or its record changed: cached records of it
    /// are stale).
    Live(Slot),
    /// The member in this slot is no longer held.
    Gone(Slot),
    Add(IdentifierKey, Slot),
    Remove(IdentifierKey, Slot),
}

/// What one applied change response did to the member set, for the engine's index. Built by the
/// applier inside the transaction that wrote it, sent to the engine after the commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexPatch {
    pub ops: Vec<PatchOp>,
    /// Some member's short-lived keys changed: per-window tables are rebuilt.
    pub keys_changed: bool,
    /// Members with day keys / EID temporary keys after the change (absolute).
    pub day_key_members: usize,
    pub eid_key_members: usize,
    /// The member-set version after the change (sum of the channel versions).
    pub version: u64,
}

impl IndexPatch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && !self.keys_changed
    }

    /// Slots whose record changed or went.
    pub fn touched(&self) -> impl Iterator<Item = Slot> + '_ {
        self.ops.iter().filter_map(|op| match op {
            PatchOp::Live(s) | PatchOp::Gone(s) => Some(*s),
            _ => None,
        })
    }

    /// Slots no longer held.
    pub fn gone(&self) -> impl Iterator<Item = Slot> + '_ {
        self.ops.iter().filter_map(|op| match op {
            PatchOp::Gone(s) => Some(*s),
            _ => None,
        })
    }
}

/// Identifier → member slot for a million members in a few tens of MB (see the module docs).
#[derive(Debug, Default)]
pub struct MemberIndex {
    build_id: u64,
    version: u64,
    uuids: Dict<16>,
    namespaces: Dict<10>,
    ids: IdTable,
    /// Key schedules expanded once, not per advert.
    irks: IrkTable,
    /// One bit per slot: the member is held (and consenting).
    live: Vec<u64>,
    members: usize,
    day_key_members: usize,
    eid_key_members: usize,
    /// Changes whenever the short-lived keys may have: per-window tables built before are stale.
    keys_version: u64,
    /// Changes whenever IRKs were added: remembered "stranger" answers for RPAs are stale.
    irk_version: u64,
    /// Identifiers refused because another member holds them.
    conflicts: u64,
}

/// Builds a [`MemberIndex`] from a stream of members and identifiers (from `members.db` or
/// memory), sized once.
#[derive(Debug)]
pub struct IndexBuilder {
    index: MemberIndex,
}

impl IndexBuilder {
    /// `identifiers`: how many fixed identifiers will be added (sizes the table exactly).
    pub fn new(identifiers: usize) -> Self {
        let v = next_version();
        Self {
            index: MemberIndex {
                build_id: v,
                keys_version: v,
                irk_version: v,
                ids: IdTable::with_capacity(identifiers),
                ..Default::default()
            },
        }
    }

    pub fn member(&mut self, slot: Slot) {
        self.index.set_live(slot, true);
    }

    pub fn identifier(&mut self, key: &IdentifierKey, slot: Slot) {
        self.index.add(key, slot);
    }

    pub fn finish(
        mut self,
        version: u64,
        day_key_members: usize,
        eid_key_members: usize,
    ) -> MemberIndex {
        self.index.version = version;
        self.index.day_key_members = day_key_members;
        self.index.eid_key_members = eid_key_members;
        self.index.live.shrink_to_fit();
        self.index
    }
}

impl MemberIndex {
    fn set_live(&mut self, slot: Slot, live: bool) {
        let (w, b) = (slot as usize / 64, slot % 64);
        if w >= self.live.len() {
            if !live {
                return;
            }
            self.live.resize((w + 1).next_power_of_two(), 0);
        }
        let was = self.live[w] & (1 << b) != 0;
        if live {
            self.live[w] |= 1 << b;
        } else {
            self.live[w] &= !(1 << b);
        }
        match (was, live) {
            (false, true) => self.members += 1,
            (true, false) => self.members -= 1,
            _ => {}
        }
    }

    /// Whether `slot` is a member held now (tables built earlier may name departed slots).
    #[inline]
    pub fn is_live(&self, slot: Slot) -> bool {
        self.live
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn encode(&mut self, key: &IdentifierKey) -> Option<u64> {
        match key {
            IdentifierKey::Ibeacon { uuid, major, minor } => {
                let c = self.uuids.code_or_add(uuid)?;
                Some(ibeacon_key(c, *major, *minor))
            }
            IdentifierKey::EddystoneUid {
                namespace,
                instance,
            } => {
                let c = self.namespaces.code_or_add(namespace)?;
                Some(uid_key(c, instance))
            }
            IdentifierKey::Mac(a) => Some(mac_key(a)),
            _ => None,
        }
    }

    fn add(&mut self, key: &IdentifierKey, slot: Slot) {
        if let IdentifierKey::Irk(irk) = key {
            self.irks.push(irk, slot);
            self.irk_version = next_version();
            return;
        }
        // Rotating secrets, EID identity keys and short-lived keys are not looked up here.
        let Some(k) = self.encode(key) else { return };
        if !self.ids.insert(k, slot) {
            self.conflicts += 1;
        }
    }

    fn remove(&mut self, key: &IdentifierKey, slot: Slot) {
        if let IdentifierKey::Irk(_) = key {
            self.irks.remove_slot(slot);
            return;
        }
        let k = match key {
            IdentifierKey::Ibeacon { uuid, major, minor } => self
                .uuids
                .code(uuid)
                .map(|c| ibeacon_key(c, *major, *minor)),
            IdentifierKey::EddystoneUid {
                namespace,
                instance,
            } => self
                .namespaces
                .code(namespace)
                .map(|c| uid_key(c, instance)),
            IdentifierKey::Mac(a) => Some(mac_key(a)),
            _ => None,
        };
        if let Some(k) = k {
            self.ids.remove(k, slot);
        }
    }

    /// Applies what one change response did, in place.
    pub fn apply(&mut self, patch: &IndexPatch) {
        let mut gone = false;
        for op in &patch.ops {
            match op {
                PatchOp::Live(slot) => self.set_live(*slot, true),
                PatchOp::Gone(slot) => {
                    self.irks.remove_slot(*slot);
                    self.set_live(*slot, false);
                    gone = true;
                }
                PatchOp::Add(key, slot) => self.add(key, *slot),
                PatchOp::Remove(key, slot) => self.remove(key, *slot),
            }
        }
        if patch.keys_changed || gone {
            self.keys_version = next_version();
        }
        self.day_key_members = patch.day_key_members;
        self.eid_key_members = patch.eid_key_members;
        self.version = patch.version;
    }

    /// Whether some member's iBeacon could have this UUID: a few comparisons, no hashing.
    #[inline]
    pub fn may_have_ibeacon_uuid(&self, uuid: &[u8; 16]) -> bool {
        self.uuids.code(uuid).is_some()
    }

    #[inline]
    pub fn ibeacon(&self, uuid: &[u8; 16], major: u16, minor: u16) -> Option<Slot> {
        let c = self.uuids.code(uuid)?;
        self.ids.get(ibeacon_key(c, major, minor))
    }

    #[inline]
    pub fn eddystone_uid(&self, namespace: &[u8; 10], instance: &[u8; 6]) -> Option<Slot> {
        let c = self.namespaces.code(namespace)?;
        self.ids.get(uid_key(c, instance))
    }

    #[inline]
    pub fn mac(&self, address: &[u8; 6]) -> Option<Slot> {
        self.ids.get(mac_key(address))
    }

    /// The member holding `key` (fixed identifiers only).
    pub fn lookup(&self, key: &IdentifierKey) -> Option<Slot> {
        match key {
            IdentifierKey::Ibeacon { uuid, major, minor } => self.ibeacon(uuid, *major, *minor),
            IdentifierKey::EddystoneUid {
                namespace,
                instance,
            } => self.eddystone_uid(namespace, instance),
            IdentifierKey::Mac(a) => self.mac(a),
            _ => None,
        }
    }

    /// Identity resolving keys of consenting members, for resolvable private addresses.
    pub fn irks(&self) -> &IrkTable {
        &self.irks
    }

    pub fn has_day_keys(&self) -> bool {
        self.day_key_members > 0
    }

    pub fn has_eid_keys(&self) -> bool {
        self.eid_key_members > 0
    }

    /// Whether per-window tables (rotating IDs, EIDs) are worth building for this index.
    pub fn has_window_keys(&self) -> bool {
        self.has_day_keys() || self.has_eid_keys()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Distinguishes this index (a whole load) from every other one this process built.
    pub fn build_id(&self) -> u64 {
        self.build_id
    }

    /// Changes when short-lived keys may have changed (per-window tables then rebuild).
    pub fn keys_version(&self) -> u64 {
        self.keys_version
    }

    /// Changes when IRKs were added (cached RPA answers then start over).
    pub fn irk_version(&self) -> u64 {
        self.irk_version
    }

    /// Members held.
    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Fixed identifiers held (the IRKs apart).
    pub fn identifiers(&self) -> usize {
        self.ids.len()
    }

    /// Identifiers refused because another member already held them.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Heap bytes of the structures (table, filter, IRKs, live bits), for the benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes() + self.irks.heap_bytes() + self.live.capacity() * 8
    }
}

#[inline]
fn ibeacon_key(code: u16, major: u16, minor: u16) -> u64 {
    TAG_IBEACON | u64::from(code) << 48 | u64::from(major) << 16 | u64::from(minor)
}

#[inline]
fn uid_key(code: u16, instance: &[u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(instance);
    TAG_UID | u64::from(code) << 48 | u64::from_be_bytes(b)
}

#[inline]
fn mac_key(a: &[u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(a);
    TAG_MAC | u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beacon(minor: u16) -> IdentifierKey {
        IdentifierKey::Ibeacon {
            uuid: [7; 16],
            major: 1,
            minor,
        }
    }

    #[test]
    fn a_patch_moves_identifiers_in_place_and_a_departed_slot_is_no_longer_live() {
        let mut b = IndexBuilder::new(2);
        b.member(1);
        b.identifier(&beacon(1), 1);
        b.member(2);
        b.identifier(&IdentifierKey::Mac([1, 2, 3, 4, 5, 6]), 2);
        let mut idx = b.finish(5, 0, 0);
        assert_eq!((idx.ibeacon(&[7; 16], 1, 1), idx.len()), (Some(1), 2));
        idx.apply(&IndexPatch {
            ops: vec![
                PatchOp::Remove(IdentifierKey::Mac([1, 2, 3, 4, 5, 6]), 2),
                PatchOp::Gone(2),
                PatchOp::Remove(beacon(1), 1),
                PatchOp::Add(beacon(2), 1),
                PatchOp::Live(1),
                PatchOp::Live(3),
                PatchOp::Add(beacon(1), 3),
            ],
            version: 6,
            ..Default::default()
        });
        assert_eq!(idx.ibeacon(&[7; 16], 1, 2), Some(1));
        assert_eq!(idx.ibeacon(&[7; 16], 1, 1), Some(3));
        assert_eq!(idx.mac(&[1, 2, 3, 4, 5, 6]), None);
        assert!(!idx.is_live(2) && idx.is_live(3));
        assert_eq!((idx.len(), idx.version()), (2, 6));
        assert!(!idx.may_have_ibeacon_uuid(&[8; 16]));
    }
}
