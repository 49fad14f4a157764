//! The applier as a pure function over a model: head office's channel logs in memory, a gateway
//! store in memory, and deliveries that are reordered, duplicated, gapped, cut short or replaced
//! by a snapshot. Whatever the deliveries, once the gateway has caught up its members are
//! head office's: the union of its channels, each at its latest revision.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
};

use instore_protocol::{
    Consent, Identifier, IdentifierKey, MemberRecord,
    changes::{
        Change, ChangeOp, ChangesResponse, ChannelChanges, RemoveReason, SnapshotLine, SnapshotRef,
    },
};
use proptest::prelude::*;

use super::*;

/// The gateway's store in memory.
#[derive(Debug, Default)]
struct Mem {
    channels: BTreeMap<String, u64>,
    members: BTreeMap<Slot, (String, u64, Vec<IdentifierKey>)>,
    by_id: HashMap<String, Slot>,
    idents: HashMap<IdentifierKey, Slot>,
    holds: BTreeMap<(String, Slot), bool>,
    tombstones: HashMap<String, u64>,
    keys: BTreeMap<Slot, Vec<IdentifierKey>>,
    next: Slot,
}

impl ChangeStore for Mem {
    type Error = Infallible;
    fn channels(&mut self) -> Result<BTreeMap<String, u64>, Infallible> {
        Ok(self.channels.clone())
    }
    fn set_channel(&mut self, c: &str, v: u64) -> Result<(), Infallible> {
        self.channels.insert(c.into(), v);
        Ok(())
    }
    fn drop_channel(&mut self, c: &str) -> Result<Vec<Slot>, Infallible> {
        self.channels.remove(c);
        let slots: Vec<Slot> = self
            .holds
            .keys()
            .filter(|(n, _)| n == c)
            .map(|(_, s)| *s)
            .collect();
        self.holds.retain(|(n, _), _| n != c);
        Ok(slots)
    }
    fn find(&mut self, id: &str) -> Result<Option<Held>, Infallible> {
        Ok(self.by_id.get(id).map(|s| Held {
            slot: *s,
            rev: self.members[s].1,
        }))
    }
    fn tombstone(&mut self, id: &str) -> Result<Option<u64>, Infallible> {
        Ok(self.tombstones.get(id).copied())
    }
    fn set_tombstone(&mut self, id: &str, rev: Option<u64>) -> Result<(), Infallible> {
        match rev {
            Some(r) => self.tombstones.insert(id.into(), r),
            None => self.tombstones.remove(id),
        };
        Ok(())
    }
    fn put(
        &mut self,
        slot: Option<Slot>,
        r: &MemberRecord,
        rev: u64,
        ids: &[IdentifierKey],
    ) -> Result<(Slot, Vec<IdentifierKey>, Vec<IdentifierKey>), Infallible> {
        let slot = slot.unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        let old = self
            .members
            .get(&slot)
            .map(|m| m.2.clone())
            .unwrap_or_default();
        let removed: Vec<_> = old.iter().filter(|k| !ids.contains(k)).copied().collect();
        for k in &removed {
            self.idents.remove(k);
        }
        let mut added = Vec::new();
        let mut mine: Vec<_> = old.iter().filter(|k| ids.contains(k)).copied().collect();
        for k in ids.iter().filter(|k| !old.contains(k)) {
            if !self.idents.contains_key(k) {
                self.idents.insert(*k, slot);
                added.push(*k);
                mine.push(*k);
            }
        }
        self.members.insert(slot, (r.member_id.clone(), rev, mine));
        self.by_id.insert(r.member_id.clone(), slot);
        Ok((slot, removed, added))
    }
    fn delete(&mut self, slot: Slot) -> Result<Vec<IdentifierKey>, Infallible> {
        let (id, _, ids) = self.members.remove(&slot).unwrap_or_default();
        self.by_id.remove(&id);
        for k in &ids {
            self.idents.remove(k);
        }
        self.keys.remove(&slot);
        self.holds.retain(|(_, s), _| *s != slot);
        Ok(ids)
    }
    fn join(&mut self, c: &str, slot: Slot) -> Result<(), Infallible> {
        self.holds.insert((c.into(), slot), true);
        Ok(())
    }
    fn leave(&mut self, c: &str, slot: Slot) -> Result<(), Infallible> {
        self.holds.remove(&(c.into(), slot));
        Ok(())
    }
    fn holds(&mut self, slot: Slot) -> Result<usize, Infallible> {
        Ok(self.holds.keys().filter(|(_, s)| *s == slot).count())
    }
    fn set_keys(&mut self, slot: Slot, keys: &[IdentifierKey]) -> Result<(), Infallible> {
        self.keys.insert(slot, keys.to_vec());
        Ok(())
    }
    fn key_members(&mut self) -> Result<(usize, usize), Infallible> {
        Ok((self.keys.values().filter(|k| !k.is_empty()).count(), 0))
    }
    fn begin_resync(&mut self, c: &str) -> Result<(), Infallible> {
        for ((n, _), fresh) in self.holds.iter_mut() {
            if n == c {
                *fresh = false;
            }
        }
        Ok(())
    }
    fn end_resync(&mut self, c: &str) -> Result<Vec<Slot>, Infallible> {
        let stale: Vec<Slot> = self
            .holds
            .iter()
            .filter(|((n, _), fresh)| n == c && !**fresh)
            .map(|((_, s), _)| *s)
            .collect();
        self.holds.retain(|(n, _), fresh| n != c || *fresh);
        Ok(stale)
    }
}

const CHANNELS: [&str; 3] = ["chain", "group:north", "store:s1"];

fn record(i: u8, rev: u64) -> MemberRecord {
    MemberRecord {
        member_id: format!("M{i}"),
        display_name: format!("rev {rev}"),
        tier: "gold".into(),
        consent: Consent {
            presence: true,
            marketing: false,
        },
        identifiers: vec![Identifier::Mac {
            address: format!("C0:00:00:00:00:{i:02X}"),
        }],
        ..Default::default()
    }
}

/// Head office: per-channel logs, who is in which channel, each member's revision.
#[derive(Debug, Default)]
struct HeadOffice {
    logs: BTreeMap<String, Vec<Change>>,
    rev: HashMap<u8, u64>,
    /// Members each channel holds now.
    holds: BTreeMap<String, BTreeSet<u8>>,
    /// Changes before this version were pruned (a cursor below it gets a snapshot).
    pruned_below: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
enum Op {
    Upsert { member: u8, channel: usize },
    Leave { member: u8, channel: usize },
    Withdraw { member: u8 },
    Erase { member: u8 },
    Keys { member: u8 },
    Prune { channel: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8, 0usize..3).prop_map(|(member, channel)| Op::Upsert { member, channel }),
        2 => (0u8..8, 0usize..3).prop_map(|(member, channel)| Op::Leave { member, channel }),
        1 => (0u8..8).prop_map(|member| Op::Withdraw { member }),
        1 => (0u8..8).prop_map(|member| Op::Erase { member }),
        1 => (0u8..8).prop_map(|member| Op::Keys { member }),
        1 => (0usize..3).prop_map(|channel| Op::Prune { channel }),
    ]
}

impl HeadOffice {
    fn head(&self, c: &str) -> u64 {
        self.logs
            .get(c)
            .and_then(|l| l.last())
            .map_or(0, |x| x.version)
    }

    fn push(&mut self, c: &str, op: ChangeOp) {
        let version = self.head(c) + 1;
        self.logs
            .entry(c.into())
            .or_default()
            .push(Change { version, op });
    }

    fn bump(&mut self, m: u8) -> u64 {
        let r = self.rev.entry(m).or_insert(0);
        *r += 1;
        *r
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Upsert { member, channel } => {
                let rev = self.bump(member);
                self.holds
                    .entry(CHANNELS[channel].into())
                    .or_default()
                    .insert(member);
                // A change of a member goes to every channel holding them.
                let holding: Vec<String> = self
                    .holds
                    .iter()
                    .filter(|(_, s)| s.contains(&member))
                    .map(|(c, _)| c.clone())
                    .collect();
                for c in holding {
                    self.push(
                        &c,
                        ChangeOp::Upsert {
                            rev,
                            member: record(member, rev),
                        },
                    );
                }
            }
            Op::Leave { member, channel } => {
                let c = CHANNELS[channel];
                if self.holds.get_mut(c).is_some_and(|s| s.remove(&member)) {
                    let rev = self.rev[&member];
                    self.push(
                        c,
                        ChangeOp::Remove {
                            member_id: format!("M{member}"),
                            rev,
                            reason: RemoveReason::LeftChannel,
                        },
                    );
                }
            }
            Op::Withdraw { member } | Op::Erase { member } => {
                let reason = if matches!(op, Op::Withdraw { .. }) {
                    RemoveReason::ConsentWithdrawn
                } else {
                    RemoveReason::Erased
                };
                let holding: Vec<String> = self
                    .holds
                    .iter_mut()
                    .filter_map(|(c, s)| s.remove(&member).then(|| c.clone()))
                    .collect();
                if holding.is_empty() {
                    return;
                }
                let rev = self.bump(member);
                for c in holding {
                    self.push(
                        &c,
                        ChangeOp::Remove {
                            member_id: format!("M{member}"),
                            rev,
                            reason,
                        },
                    );
                }
            }
            Op::Keys { member } => {
                let holding: Vec<String> = self
                    .holds
                    .iter()
                    .filter(|(_, s)| s.contains(&member))
                    .map(|(c, _)| c.clone())
                    .collect();
                for c in holding {
                    self.push(
                        &c,
                        ChangeOp::Keys {
                            member_id: format!("M{member}"),
                            keys: vec![Identifier::RotatingDayKey {
                                day: 30_000,
                                key: hex::encode([member; 32]),
                            }],
                            expires_ms: i64::MAX,
                        },
                    );
                }
            }
            Op::Prune { channel } => {
                let c = CHANNELS[channel];
                let head = self.head(c);
                self.pruned_below.insert(c.into(), head);
            }
        }
    }

    /// The honest answer to `cursor`, at most `limit` changes per channel.
    fn answer(&self, cursor: &BTreeMap<String, u64>, limit: usize) -> ChangesResponse {
        self.answer_each(cursor, [limit; 3])
    }

    /// The honest answer with a limit per channel (0: that channel lags this time).
    fn answer_each(&self, cursor: &BTreeMap<String, u64>, limits: [usize; 3]) -> ChangesResponse {
        let channels = CHANNELS
            .iter()
            .zip(limits)
            .map(|(c, limit)| {
                let from = cursor.get(*c).copied().unwrap_or(0);
                let head = self.head(c);
                let pruned = self.pruned_below.get(*c).copied().unwrap_or(0);
                if from < pruned {
                    return ChannelChanges {
                        channel: c.to_string(),
                        from,
                        to: from,
                        head,
                        snapshot: Some(SnapshotRef {
                            path: format!("/snap/{c}/{head}"),
                            version: head,
                            sha256: String::new(),
                            bytes: 0,
                            members: 0,
                        }),
                        changes: vec![],
                    };
                }
                let changes: Vec<Change> = self
                    .logs
                    .get(*c)
                    .map(|l| {
                        l.iter()
                            .filter(|x| x.version > from)
                            .take(limit)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let to = changes.last().map_or(from, |x| x.version);
                ChannelChanges {
                    channel: c.to_string(),
                    from,
                    to,
                    head,
                    snapshot: None,
                    changes,
                }
            })
            .collect();
        ChangesResponse {
            v: 1,
            campaigns: None,
            store_id: "s1".into(),
            channels,
        }
    }

    /// A channel's snapshot now: its members at their revisions.
    fn snapshot(&self, c: &str) -> Vec<SnapshotLine> {
        self.holds
            .get(c)
            .into_iter()
            .flatten()
            .map(|m| SnapshotLine {
                rev: self.rev[m],
                member: record(*m, self.rev[m]),
                keys: vec![],
                keys_expire_ms: None,
            })
            .collect()
    }

    /// Who the store holds: every member of a channel, at their revision.
    fn truth(&self) -> BTreeMap<String, u64> {
        self.holds
            .values()
            .flatten()
            .map(|m| (format!("M{m}"), self.rev[m]))
            .collect()
    }
}

/// One delivery of a response (snapshots first, as the downlink does).
fn deliver(store: &mut Mem, hq: &HeadOffice, r: &ChangesResponse) {
    let told = removals_told(store, r);
    TOLD.with(|t| t.borrow_mut().extend(told));
    for c in &r.channels {
        if let Some(s) = &c.snapshot
            && store.channels.get(&c.channel).copied().unwrap_or(0) < s.version
        {
            let lines = hq.snapshot(&c.channel);
            let mut a = Applier::new(store, true);
            let Ok(Ok(())) = a.snapshot(&c.channel, s.version, lines.into_iter().map(Ok::<_, ()>))
            else {
                panic!("snapshot apply failed");
            };
        }
    }
    let mut a = Applier::new(store, true);
    let Ok(()) = a.response(r);
}

/// The total removals among the entries of `r` the gateway will apply (their `from` is its
/// version): what it has been told about consent withdrawals and erasures.
fn removals_told(store: &Mem, r: &ChangesResponse) -> Vec<(String, u64)> {
    r.channels
        .iter()
        .filter(|c| c.snapshot.is_none())
        .filter(|c| c.from == store.channels.get(&c.channel).copied().unwrap_or(0))
        .flat_map(|c| &c.changes)
        .filter_map(|x| match &x.op {
            ChangeOp::Remove {
                member_id,
                rev,
                reason,
            } if reason.is_total() => Some((member_id.clone(), *rev)),
            _ => None,
        })
        .collect()
}

/// Between deliveries too: once told of a member's consent withdrawal or erasure, the gateway
/// never holds an older record of them again (a lagging channel's old upsert cannot bring them
/// back).
fn no_resurrection(store: &Mem, told: &[(String, u64)]) -> Result<(), TestCaseError> {
    let held = held(store);
    for (member_id, rev) in told {
        if let Some(h) = held.get(member_id) {
            prop_assert!(
                *h > *rev,
                "{member_id} back at rev {h} after removal at {rev}"
            );
        }
    }
    Ok(())
}

thread_local! {
    /// Removals delivered so far in this case (`deliver` notes them).
    static TOLD: std::cell::RefCell<Vec<(String, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn told() -> Vec<(String, u64)> {
    TOLD.with(|t| t.borrow().clone())
}

fn held(store: &Mem) -> BTreeMap<String, u64> {
    store
        .members
        .values()
        .map(|(id, rev, _)| (id.clone(), *rev))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_deliveries_the_caught_up_gateway_holds_head_offices_members(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(op(), 0..6), 0u8..8, 1usize..4),
            1..12,
        ),
    ) {
        let mut hq = HeadOffice::default();
        let mut store = Mem::default();
        TOLD.with(|t| t.borrow_mut().clear());
        let mut sent: Vec<ChangesResponse> = Vec::new();
        for (ops, fault, limit) in &rounds {
            for op in ops {
                hq.apply(op);
            }
            let cursor = store.channels.clone();
            let honest = hq.answer(&cursor, *limit);
            match fault {
                // Replayed: an older response again (its `from` no longer matches: ignored).
                0 if !sent.is_empty() => {
                    let old = sent[sent.len() / 2].clone();
                    deliver(&mut store, &hq, &old);
                }
                // Duplicated: the same response twice.
                1 => {
                    deliver(&mut store, &hq, &honest);
                    deliver(&mut store, &hq, &honest);
                }
                // Gapped: a response to a cursor ahead of the gateway's (its first change lost).
                2 => {
                    let ahead: BTreeMap<String, u64> =
                        cursor.iter().map(|(c, v)| (c.clone(), v + 1)).collect();
                    deliver(&mut store, &hq, &hq.answer(&ahead, *limit));
                }
                // Lost: nothing arrives this round.
                3 => {}
                // Channels lag one another: only one channel moves this time.
                4 | 5 => {
                    let mut limits = [0; 3];
                    limits[usize::from(*fault) + *limit % 2 - 4] = *limit;
                    deliver(&mut store, &hq, &hq.answer_each(&cursor, limits));
                }
                _ => deliver(&mut store, &hq, &honest),
            }
            sent.push(honest);
            no_resurrection(&store, &told())?;
        }
        // Then the link is good: the gateway asks until every channel is at its head.
        for _ in 0..1_000 {
            let r = hq.answer(&store.channels, 3);
            let done = r.channels.iter().all(|c| c.to == c.head && c.snapshot.is_none());
            deliver(&mut store, &hq, &r);
            no_resurrection(&store, &told())?;
            if done {
                break;
            }
        }
        prop_assert_eq!(held(&store), hq.truth());
        for c in CHANNELS {
            prop_assert_eq!(store.channels.get(c).copied().unwrap_or(0), hq.head(c));
        }
        // Every member held is held by a channel; identifiers belong to members held.
        for slot in store.members.keys() {
            prop_assert!(store.holds.keys().any(|(_, s)| s == slot));
        }
        for slot in store.idents.values() {
            prop_assert!(store.members.contains_key(slot));
        }
    }
}

#[test]
fn a_consent_withdrawal_removes_the_member_everywhere_and_an_older_upsert_cannot_bring_them_back() {
    let mut store = Mem::default();
    let mut a = Applier::new(&mut store, true);
    let Ok(_) = a.upsert(LOCAL_CHANNEL, 0, &record(1, 0), true);
    let Ok(_) = a.upsert("chain", 3, &record(1, 3), false);
    let Ok(()) = a.remove("store:s1", "M1", 4, RemoveReason::ConsentWithdrawn);
    let Ok(_) = a.upsert("chain", 3, &record(1, 3), false);
    let Ok((patch, stats)) = a.finish();
    assert!(store.members.is_empty(), "gone from the local channel too");
    assert_eq!(store.tombstones.get("M1"), Some(&4));
    assert_eq!(stats.stale, 1, "the old upsert was ignored");
    assert!(patch.gone().count() == 1);
    let mut a = Applier::new(&mut store, true);
    let Ok(_) = a.upsert("chain", 5, &record(1, 5), false);
    assert_eq!(
        held(&store).get("M1"),
        Some(&5),
        "consent given again at a higher rev"
    );
}

#[test]
fn a_member_leaving_one_channel_stays_while_another_holds_them() {
    let mut store = Mem::default();
    let mut a = Applier::new(&mut store, true);
    let Ok(_) = a.upsert("chain", 1, &record(1, 1), false);
    let Ok(_) = a.upsert("store:s1", 1, &record(1, 1), false);
    let Ok(()) = a.remove("chain", "M1", 1, RemoveReason::LeftChannel);
    assert_eq!(held(&store).len(), 1);
    let mut a = Applier::new(&mut store, true);
    let Ok(()) = a.remove("store:s1", "M1", 1, RemoveReason::LeftChannel);
    assert!(held(&store).is_empty());
}

#[test]
fn a_record_without_presence_consent_is_never_stored() {
    let mut store = Mem::default();
    let mut r = record(2, 1);
    r.consent.presence = false;
    let mut a = Applier::new(&mut store, true);
    let Ok(None) = a.upsert("chain", 1, &r, false) else {
        panic!("stored")
    };
    let Ok((_, stats)) = a.finish();
    assert_eq!(stats.no_consent, 1);
    assert!(store.members.is_empty());
}

/// Head office restored from a backup answers a gateway that is ahead of it with a snapshot at
/// a lower version and lower revisions. The gateway takes it as it is; had it kept "highest rev
/// wins", the member would keep the lost record and refuse every change up to rev 40.
#[test]
fn a_snapshot_from_a_head_office_gone_back_to_a_backup_is_taken_as_it_is() {
    let line = |rev| SnapshotLine {
        rev,
        member: record(1, rev),
        keys: vec![],
        keys_expire_ms: None,
    };
    let mut store = Mem::default();
    let mut a = Applier::new(&mut store, true);
    assert!(matches!(
        a.snapshot("chain", 50, [Ok::<_, ()>(line(40))].into_iter()),
        Ok(Ok(()))
    ));
    let Ok(_) = a.finish();
    assert_eq!(held(&store).get("M1"), Some(&40));

    let mut a = Applier::new(&mut store, true);
    assert!(matches!(
        a.snapshot("chain", 30, [Ok::<_, ()>(line(20))].into_iter()),
        Ok(Ok(()))
    ));
    let Ok(_) = a.finish();
    assert_eq!(held(&store).get("M1"), Some(&20), "the restored record");
    assert_eq!(store.channels.get("chain"), Some(&30));

    let mut a = Applier::new(&mut store, true);
    let Ok(Some(_)) = a.upsert("chain", 31, &record(1, 31), false) else {
        panic!("a change after the restore was refused")
    };
    assert_eq!(held(&store).get("M1"), Some(&31));

    // A snapshot at or above the version held is the ordinary catch-up: older revisions lose.
    let mut a = Applier::new(&mut store, true);
    assert!(matches!(
        a.snapshot("chain", 30, [Ok::<_, ()>(line(25))].into_iter()),
        Ok(Ok(()))
    ));
    let Ok((_, stats)) = a.finish();
    assert_eq!(held(&store).get("M1"), Some(&31));
    assert_eq!(stats.stale, 1);
}
