use std::{
    borrow::Borrow,
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::identify::rpa::IrkTable;
use foldhash::fast::RandomState;
use instore_protocol::{
    Consent, IdentifierKey, MemberRecord, eddystone_eid::TempKey, member::LastPurchase,
    rotating::DayKey,
};

/// A member as the gateway uses it: the fields rules and clerk cards need.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub stage: Option<String>,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    pub birthday: Option<String>,
    pub last_purchase: Option<LastPurchase>,
    /// `YYYY-MM-DD`; `None` when head office has not recorded one.
    pub last_visit: Option<String>,
    /// Presence always holds for an indexed member; the other consents gate rules.
    pub consent: Consent,
}

impl From<&MemberRecord> for Member {
    fn from(r: &MemberRecord) -> Self {
        Self {
            member_id: r.member_id.clone(),
            display_name: r.display_name.clone(),
            tier: r.tier.clone(),
            stage: r.stage.clone(),
            tags: r.tags.clone(),
            groups: r.groups.clone(),
            birthday: r.birthday.clone(),
            last_purchase: r.last_purchase.clone(),
            last_visit: r.last_visit.clone(),
            consent: r.consent.clone(),
        }
    }
}

/// Position of a member in the index; compact (4 bytes) so that the identifier maps stay small
/// with a million members.
pub type Slot = u32;

type Map<K, V> = HashMap<K, V, RandomState>;

/// Distinct iBeacon UUIDs up to which the index keeps a list to reject strangers' beacons with a
/// few comparisons before any hashing (a chain usually issues one or two UUIDs).
const UUID_PREFILTER_MAX: usize = 8;

static NEXT_BUILD: AtomicU64 = AtomicU64::new(1);

/// One day's rotating-ID key of one member.
#[derive(Clone, PartialEq, Eq)]
pub struct DayKeyEntry {
    pub slot: Slot,
    pub day: u32,
    pub key: DayKey,
}

impl std::fmt::Debug for DayKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DayKeyEntry")
            .field("slot", &self.slot)
            .field("day", &self.day)
            .finish()
    }
}

/// One epoch's Eddystone-EID temporary key of one member.
#[derive(Clone, PartialEq, Eq)]
pub struct EidKeyEntry {
    pub slot: Slot,
    pub epoch: u16,
    pub exponent: u8,
    pub key: TempKey,
}

impl std::fmt::Debug for EidKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EidKeyEntry")
            .field("slot", &self.slot)
            .field("epoch", &self.epoch)
            .field("exponent", &self.exponent)
            .finish()
    }
}

/// A member found by its id without a second copy of the id string.
#[derive(Debug)]
struct ById {
    member: Arc<Member>,
    slot: Slot,
}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.member.member_id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as `str` does, for lookups by `&str`.
        self.member.member_id.as_str().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.member.member_id == other.member.member_id
    }
}
impl Eq for ById {}

/// Identifier → member in one hash lookup, for a million members. Immutable: a new member set
/// builds a new index, which the engine swaps in whole, so identification never sees half an
/// update.
///
/// Keys are fixed-size byte arrays (no per-identifier allocation) mapping to a 4-byte [`Slot`];
/// the maps use a keyed fast hash (foldhash, randomly seeded per process) so that an advert costs a
/// few nanoseconds to look up yet crafted adverts cannot aim at one bucket.
#[derive(Debug, Default)]
pub struct MemberIndex {
    build_id: u64,
    version: u64,
    members: Vec<Arc<Member>>,
    by_id: HashSet<ById, RandomState>,
    ibeacon: Map<[u8; 20], Slot>,
    /// `None` when members use too many UUIDs for a list to pay off.
    ibeacon_uuids: Option<Vec<[u8; 16]>>,
    eddystone: Map<[u8; 16], Slot>,
    mac: Map<[u8; 6], Slot>,
    /// Key schedules expanded once, at build time, not per advert.
    irks: IrkTable,
    /// Sorted by (slot, day).
    day_keys: Vec<DayKeyEntry>,
    /// Eddystone-EID temporary keys, sorted by (epoch, slot).
    eid_keys: Vec<EidKeyEntry>,
}

fn ibeacon_key(uuid: &[u8; 16], major: u16, minor: u16) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(uuid);
    k[16..18].copy_from_slice(&major.to_be_bytes());
    k[18..].copy_from_slice(&minor.to_be_bytes());
    k
}

fn eddystone_key(namespace: &[u8; 10], instance: &[u8; 6]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..10].copy_from_slice(namespace);
    k[10..].copy_from_slice(instance);
    k
}

impl MemberIndex {
    /// Builds the index of consenting members. Records that fail validation are skipped (they were
    /// validated on the way in; this keeps a corrupted cache row from poisoning the index). When two
    /// members claim one identifier the first keeps it. A long-term rotating secret, should one
    /// reach a gateway, is ignored: gateways work only with day keys.
    pub fn build(version: u64, records: &[MemberRecord]) -> Self {
        let mut index = MemberIndex {
            build_id: NEXT_BUILD.fetch_add(1, Ordering::Relaxed),
            version,
            ..Default::default()
        };
        let mut uuids: Vec<[u8; 16]> = Vec::new();
        let mut many_uuids = false;
        for r in records {
            if !r.consent.presence {
                continue;
            }
            let Ok(keys) = r.validate() else { continue };
            let Ok(slot) = Slot::try_from(index.members.len()) else {
                break;
            };
            let member = Arc::new(Member::from(r));
            if !index.by_id.insert(ById {
                member: member.clone(),
                slot,
            }) {
                continue;
            }
            index.members.push(member);
            for k in keys {
                match k {
                    IdentifierKey::Ibeacon { uuid, major, minor } => {
                        index
                            .ibeacon
                            .entry(ibeacon_key(&uuid, major, minor))
                            .or_insert(slot);
                        if !many_uuids && !uuids.contains(&uuid) {
                            uuids.push(uuid);
                            many_uuids = uuids.len() > UUID_PREFILTER_MAX;
                        }
                    }
                    IdentifierKey::EddystoneUid {
                        namespace,
                        instance,
                    } => {
                        index
                            .eddystone
                            .entry(eddystone_key(&namespace, &instance))
                            .or_insert(slot);
                    }
                    IdentifierKey::Mac(a) => {
                        index.mac.entry(a).or_insert(slot);
                    }
                    IdentifierKey::Irk(irk) => index.irks.push(&irk, slot),
                    IdentifierKey::RotatingDayKey { day, key } => {
                        index.day_keys.push(DayKeyEntry { slot, day, key })
                    }
                    IdentifierKey::EddystoneEidTemp {
                        epoch,
                        key,
                        exponent,
                    } => index.eid_keys.push(EidKeyEntry {
                        slot,
                        epoch,
                        exponent,
                        key,
                    }),
                    IdentifierKey::RotatingSecret(_)
                    | IdentifierKey::EddystoneEidIdentity { .. } => {}
                }
            }
        }
        index.ibeacon_uuids = (!many_uuids).then_some(uuids);
        index.day_keys.sort_by_key(|e| (e.slot, e.day));
        index.day_keys.dedup_by_key(|e| (e.slot, e.day));
        index.eid_keys.sort_by_key(|e| (e.epoch, e.slot));
        index.eid_keys.dedup_by_key(|e| (e.epoch, e.slot));
        index.members.shrink_to_fit();
        index
    }

    /// The member holding `key` (fixed identifiers; IRKs and day keys are not looked up this way).
    pub fn lookup(&self, key: &IdentifierKey) -> Option<&Arc<Member>> {
        let slot = match key {
            IdentifierKey::Ibeacon { uuid, major, minor } => self.ibeacon(uuid, *major, *minor),
            IdentifierKey::EddystoneUid {
                namespace,
                instance,
            } => self.eddystone_uid(namespace, instance),
            IdentifierKey::Mac(a) => self.mac(a),
            IdentifierKey::Irk(_)
            | IdentifierKey::RotatingSecret(_)
            | IdentifierKey::RotatingDayKey { .. }
            | IdentifierKey::EddystoneEidIdentity { .. }
            | IdentifierKey::EddystoneEidTemp { .. } => None,
        }?;
        self.at(slot)
    }

    /// Whether some member's iBeacon could have this UUID: a few comparisons, no hashing.
    #[inline]
    pub fn may_have_ibeacon_uuid(&self, uuid: &[u8; 16]) -> bool {
        match &self.ibeacon_uuids {
            Some(list) => list.contains(uuid),
            None => true,
        }
    }

    #[inline]
    pub fn ibeacon(&self, uuid: &[u8; 16], major: u16, minor: u16) -> Option<Slot> {
        if self.ibeacon.is_empty() || !self.may_have_ibeacon_uuid(uuid) {
            return None;
        }
        self.ibeacon.get(&ibeacon_key(uuid, major, minor)).copied()
    }

    #[inline]
    pub fn eddystone_uid(&self, namespace: &[u8; 10], instance: &[u8; 6]) -> Option<Slot> {
        if self.eddystone.is_empty() {
            return None;
        }
        self.eddystone
            .get(&eddystone_key(namespace, instance))
            .copied()
    }

    #[inline]
    pub fn mac(&self, address: &[u8; 6]) -> Option<Slot> {
        if self.mac.is_empty() {
            return None;
        }
        self.mac.get(address).copied()
    }

    /// The member in `slot`.
    #[inline]
    pub fn at(&self, slot: Slot) -> Option<&Arc<Member>> {
        self.members.get(slot as usize)
    }

    /// The consenting member with this id.
    pub fn member(&self, member_id: &str) -> Option<&Arc<Member>> {
        self.by_id.get(member_id).map(|e| &e.member)
    }

    /// The slot of the consenting member with this id.
    pub fn slot_of(&self, member_id: &str) -> Option<Slot> {
        self.by_id.get(member_id).map(|e| e.slot)
    }

    /// Identity resolving keys of consenting members, for resolvable private addresses.
    pub fn irks(&self) -> &IrkTable {
        &self.irks
    }

    /// Every member's key for `day` (the rotating-ID table of a window is built from these).
    pub fn day_keys_for(&self, day: u32) -> impl Iterator<Item = &DayKeyEntry> + '_ {
        self.day_keys.iter().filter(move |e| e.day == day)
    }

    /// Whether any member has rotating-ID day keys.
    pub fn has_day_keys(&self) -> bool {
        !self.day_keys.is_empty()
    }

    /// Every member's Eddystone-EID temporary key for `epoch`.
    pub fn eid_keys_for(&self, epoch: u16) -> &[EidKeyEntry] {
        let start = self.eid_keys.partition_point(|e| e.epoch < epoch);
        let end = self.eid_keys.partition_point(|e| e.epoch <= epoch);
        &self.eid_keys[start..end]
    }

    /// Whether any member has Eddystone-EID temporary keys.
    pub fn has_eid_keys(&self) -> bool {
        !self.eid_keys.is_empty()
    }

    /// Whether per-window tables (rotating IDs, EIDs) are worth building for this index.
    pub fn has_window_keys(&self) -> bool {
        self.has_day_keys() || self.has_eid_keys()
    }

    /// The day key of the member in `slot` for `day`.
    pub fn day_key(&self, slot: Slot, day: u32) -> Option<&DayKey> {
        self.day_keys
            .binary_search_by_key(&(slot, day), |e| (e.slot, e.day))
            .ok()
            .map(|i| &self.day_keys[i].key)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Distinguishes this build from every other index built by this process, so that state derived
    /// from an index (resolution caches, rotating-ID tables) knows when to start over.
    pub fn build_id(&self) -> u64 {
        self.build_id
    }

    /// Number of consenting members indexed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use instore_protocol::{Consent, Identifier};

    use super::*;

    fn record(id: &str, minor: u16, consent: bool) -> MemberRecord {
        MemberRecord {
            member_id: id.into(),
            display_name: "N".into(),
            tier: "gold".into(),
            stage: None,
            tags: vec![],
            groups: vec![],
            consent: Consent {
                presence: consent,
                marketing: false,
            },
            identifiers: vec![Identifier::Ibeacon {
                uuid: "f7826da6-4fa2-4e98-8024-bc5b71e0893e".into(),
                major: 1,
                minor,
            }],
            birthday: None,
            last_purchase: None,
            last_visit: None,
            ..Default::default()
        }
    }

    #[test]
    fn consenting_members_are_found_by_identifier() {
        let idx = MemberIndex::build(3, &[record("A", 1, true), record("B", 2, true)]);
        let key = record("B", 2, true).validate().unwrap()[0];
        assert_eq!(idx.lookup(&key).unwrap().member_id, "B");
        assert_eq!((idx.len(), idx.version()), (2, 3));
    }

    #[test]
    fn members_without_consent_are_not_indexed() {
        let idx = MemberIndex::build(1, &[record("A", 1, false)]);
        let key = record("A", 1, false).validate().unwrap()[0];
        assert!(idx.lookup(&key).is_none());
        assert!(idx.is_empty());
    }

    #[test]
    fn eid_temporary_keys_are_indexed_by_epoch_and_an_identity_key_is_ignored() {
        let mut with_temp = record("T", 1, true);
        with_temp.identifiers = [7u16, 8]
            .map(|epoch| Identifier::EddystoneEidTemp {
                epoch,
                key: hex::encode([epoch as u8; 16]),
                exponent: 10,
            })
            .to_vec();
        let mut with_identity = record("I", 2, true);
        with_identity.identifiers = vec![Identifier::EddystoneEidIdentity {
            identity_key: hex::encode([1u8; 16]),
            exponent: 10,
        }];
        let idx = MemberIndex::build(1, &[with_identity, with_temp]);
        assert_eq!(idx.len(), 2);
        let e8 = idx.eid_keys_for(8);
        assert_eq!(
            e8.len(),
            1,
            "only the temporary key; the identity key never counts"
        );
        assert_eq!((e8[0].slot, e8[0].key), (1, [8; 16]));
        assert!(idx.eid_keys_for(9).is_empty());
        assert!(idx.has_window_keys());
    }
}
