//! The change applier: what one [`ChangesResponse`] (or one channel snapshot) does to the member
//! set, following the rules of [`instore_protocol::changes`]. No I/O of its own: it works on a
//! [`ChangeStore`] (a SQLite transaction in the agent, a plain model in the property tests) and
//! says what it did in an [`IndexPatch`] for the engine.
//!
//! Rules, per channel entry of a response:
//! - `from` must equal the version held for the channel (0 when none), and the changes' versions
//!   must rise within `(from, to]`; otherwise the entry is a gap, a replay or malformed and is
//!   ignored (the next request asks again from the version held).
//! - `Upsert` keeps the record with the highest `rev` and records that the channel holds the
//!   member. A record without presence consent is treated as a consent withdrawal (head office
//!   should never send one). A record refused by validation is skipped and counted.
//! - `Remove` `left_channel` drops the channel's hold; a member no channel holds is deleted.
//!   `consent_withdrawn` / `erased` delete the member everywhere (the local pseudo-channel
//!   included) and leave a tombstone at that `rev`: a later upsert at or below it is ignored. A
//!   removal older than the record held (the member came back at a higher `rev`) is ignored.
//! - `Keys` replaces the member's short-lived keys; each expires on its own.
//! - A channel snapshot below the version held (head office restored from a backup) is taken as
//!   it is: its records at their revisions, lower or not, tombstones of its members cleared.
//! - A channel held that the response does not list is dropped (the local pseudo-channel is never
//!   listed by head office and never dropped).

use std::collections::BTreeMap;

use instore_protocol::{
    IdentifierKey, MemberRecord,
    changes::{
        ChangeOp, ChangesResponse, ChannelChanges, RemoveReason, SnapshotLine, valid_channel,
    },
};

use super::{IndexPatch, PatchOp, Slot};

/// How an upsert weighs the record it brings against the one held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Head office's stream: the highest `rev` wins; a tombstone at or above it refuses it.
    Newer,
    /// A local import: replaces the record, keeps the held `rev`.
    Local,
    /// A snapshot from a head office that went back: record and `rev` as given, tombstone
    /// cleared.
    AsGiven,
}

/// Members a local `members import` brings in: a channel head office can never name (not a valid
/// channel), so its streams never remove them; only a consent withdrawal or erasure does.
pub const LOCAL_CHANNEL: &str = "local";
/// Members taken from a head office that predates channels (its whole-store snapshot). Not listed
/// by any change response, so the first one from a newer head office drops it, in the same
/// transaction that brings that head office's channels.
pub const LEGACY_CHANNEL: &str = "legacy";

/// Whether `channel` is one of the gateway's own pseudo-channels (never in a cursor).
pub fn is_pseudo(channel: &str) -> bool {
    channel == LOCAL_CHANNEL || channel == LEGACY_CHANNEL
}

/// A member the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub slot: Slot,
    pub rev: u64,
}

/// What the applier needs of the member store. Every method acts inside one transaction.
pub trait ChangeStore {
    type Error;
    /// Channels held and their versions (pseudo-channels included).
    fn channels(&mut self) -> Result<BTreeMap<String, u64>, Self::Error>;
    fn set_channel(&mut self, channel: &str, version: u64) -> Result<(), Self::Error>;
    /// Forgets a channel and its holds; returns the slots it held.
    fn drop_channel(&mut self, channel: &str) -> Result<Vec<Slot>, Self::Error>;
    fn find(&mut self, member_id: &str) -> Result<Option<Held>, Self::Error>;
    fn tombstone(&mut self, member_id: &str) -> Result<Option<u64>, Self::Error>;
    /// `Some(rev)` sets it, `None` clears it.
    fn set_tombstone(&mut self, member_id: &str, rev: Option<u64>) -> Result<(), Self::Error>;
    /// Inserts (`slot` None) or replaces a record and its fixed identifiers (addresses, beacons,
    /// IRKs). An identifier another member holds is not taken. Returns the slot, the identifiers
    /// dropped and those taken.
    #[allow(clippy::type_complexity)]
    fn put(
        &mut self,
        slot: Option<Slot>,
        record: &MemberRecord,
        rev: u64,
        identifiers: &[IdentifierKey],
    ) -> Result<(Slot, Vec<IdentifierKey>, Vec<IdentifierKey>), Self::Error>;
    /// Deletes a member: record, identifiers, keys, holds. Returns its identifiers.
    fn delete(&mut self, slot: Slot) -> Result<Vec<IdentifierKey>, Self::Error>;
    fn join(&mut self, channel: &str, slot: Slot) -> Result<(), Self::Error>;
    fn leave(&mut self, channel: &str, slot: Slot) -> Result<(), Self::Error>;
    /// Channels holding the member.
    fn holds(&mut self, slot: Slot) -> Result<usize, Self::Error>;
    /// Replaces the member's short-lived keys (day keys, EID temporary keys).
    fn set_keys(&mut self, slot: Slot, keys: &[IdentifierKey]) -> Result<(), Self::Error>;
    /// Members with day keys, with EID temporary keys.
    fn key_members(&mut self) -> Result<(usize, usize), Self::Error>;
    /// A resync of `channel` from a snapshot begins: its holds become provisional.
    fn begin_resync(&mut self, channel: &str) -> Result<(), Self::Error>;
    /// The snapshot is in: holds not confirmed since [`Self::begin_resync`] are dropped and
    /// their slots returned.
    fn end_resync(&mut self, channel: &str) -> Result<Vec<Slot>, Self::Error>;
}

/// What an apply did, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Changes (or snapshot lines) applied.
    pub applied: u64,
    /// Upserts and removals older than what the gateway holds.
    pub stale: u64,
    /// Records refused by validation.
    pub invalid: u64,
    /// Records without presence consent (treated as a withdrawal).
    pub no_consent: u64,
    /// Channel entries ignored: `from` not the version held (a gap or a replay).
    pub gaps: Vec<String>,
    /// Channel entries ignored as malformed (versions out of order or out of range).
    pub malformed: Vec<String>,
    /// Channels dropped because the store no longer subscribes to them.
    pub dropped: Vec<String>,
    /// Members deleted.
    pub removed: u64,
}

/// Applies changes to a [`ChangeStore`], collecting the [`IndexPatch`] (unless told not to: a
/// snapshot of a million members reloads the index instead of patching it).
pub struct Applier<'a, S: ChangeStore> {
    store: &'a mut S,
    collect: bool,
    pub patch: IndexPatch,
    pub stats: ApplyStats,
}

/// Splits a record's identifiers into the fixed ones (indexed) and the short-lived keys.
fn split(keys: Vec<IdentifierKey>) -> (Vec<IdentifierKey>, Vec<IdentifierKey>) {
    keys.into_iter().partition(|k| {
        !matches!(
            k,
            IdentifierKey::RotatingDayKey { .. } | IdentifierKey::EddystoneEidTemp { .. }
        )
    })
}

/// Only the kinds a `Keys` change may carry.
fn short_lived(keys: &[instore_protocol::Identifier]) -> Vec<IdentifierKey> {
    keys.iter()
        .filter_map(|k| k.key().ok())
        .filter(|k| {
            matches!(
                k,
                IdentifierKey::RotatingDayKey { .. } | IdentifierKey::EddystoneEidTemp { .. }
            )
        })
        .collect()
}

impl<'a, S: ChangeStore> Applier<'a, S> {
    pub fn new(store: &'a mut S, collect: bool) -> Self {
        Self {
            store,
            collect,
            patch: IndexPatch::default(),
            stats: ApplyStats::default(),
        }
    }

    /// The store, for checks the applier does not make itself.
    pub fn store(&mut self) -> &mut S {
        self.store
    }

    fn deleted(&mut self, slot: Slot, idents: Vec<IdentifierKey>) {
        self.stats.removed += 1;
        self.patch.keys_changed = true;
        if self.collect {
            self.patch
                .ops
                .extend(idents.into_iter().map(|k| PatchOp::Remove(k, slot)));
            self.patch.ops.push(PatchOp::Gone(slot));
        }
    }

    /// Deletes the member in `slot` if no channel holds it any more.
    fn collect_orphan(&mut self, slot: Slot) -> Result<(), S::Error> {
        if self.store.holds(slot)? == 0 {
            let idents = self.store.delete(slot)?;
            self.deleted(slot, idents);
        }
        Ok(())
    }

    /// `channel` holds `record` at `rev`. `force` (local imports): the record replaces the one
    /// held whatever the revisions, and keeps the held revision.
    pub fn upsert(
        &mut self,
        channel: &str,
        rev: u64,
        record: &MemberRecord,
        force: bool,
    ) -> Result<Option<Slot>, S::Error> {
        let mode = if force { Mode::Local } else { Mode::Newer };
        self.upsert_as(channel, rev, record, mode)
    }

    fn upsert_as(
        &mut self,
        channel: &str,
        rev: u64,
        record: &MemberRecord,
        mode: Mode,
    ) -> Result<Option<Slot>, S::Error> {
        let force = mode == Mode::Local;
        if !record.consent.presence {
            self.stats.no_consent += 1;
            self.remove_total(Some(channel), &record.member_id, rev, force)?;
            return Ok(None);
        }
        let Ok(keys) = record.validate() else {
            self.stats.invalid += 1;
            return Ok(None);
        };
        if !force {
            match self.store.tombstone(&record.member_id)? {
                Some(t) if t >= rev && mode == Mode::Newer => {
                    self.stats.stale += 1;
                    return Ok(None);
                }
                Some(_) => self.store.set_tombstone(&record.member_id, None)?,
                None => {}
            }
        }
        let (fixed, short) = split(keys);
        let held = self.store.find(&record.member_id)?;
        let slot = match held {
            Some(h) if h.rev >= rev && mode == Mode::Newer => {
                self.stats.stale += 1;
                h.slot
            }
            _ => {
                let rev = match (held, force) {
                    (Some(h), true) => h.rev,
                    _ => rev,
                };
                let (slot, removed, added) =
                    self.store.put(held.map(|h| h.slot), record, rev, &fixed)?;
                if self.collect {
                    let ops = &mut self.patch.ops;
                    ops.extend(removed.into_iter().map(|k| PatchOp::Remove(k, slot)));
                    ops.push(PatchOp::Live(slot));
                    ops.extend(added.into_iter().map(|k| PatchOp::Add(k, slot)));
                }
                if !short.is_empty() {
                    self.store.set_keys(slot, &short)?;
                    self.patch.keys_changed = true;
                }
                self.stats.applied += 1;
                slot
            }
        };
        self.store.join(channel, slot)?;
        Ok(Some(slot))
    }

    /// The member leaves the gateway altogether (consent withdrawn, erased). `channel`: where
    /// the removal came from (`None`: a local import).
    fn remove_total(
        &mut self,
        channel: Option<&str>,
        member_id: &str,
        rev: u64,
        force: bool,
    ) -> Result<(), S::Error> {
        let held = self.store.find(member_id)?;
        if let Some(h) = held
            && h.rev > rev
            && !force
        {
            // The member came back at a higher revision: for the member this removal is
            // history, but the channel it came from no longer held them then.
            self.stats.stale += 1;
            if let Some(c) = channel {
                self.store.leave(c, h.slot)?;
                self.collect_orphan(h.slot)?;
            }
            return Ok(());
        }
        if !force {
            let t = self.store.tombstone(member_id)?;
            self.store
                .set_tombstone(member_id, Some(t.unwrap_or(0).max(rev)))?;
        }
        if let Some(h) = held {
            let idents = self.store.delete(h.slot)?;
            self.deleted(h.slot, idents);
        }
        self.stats.applied += 1;
        Ok(())
    }

    pub fn remove(
        &mut self,
        channel: &str,
        member_id: &str,
        rev: u64,
        reason: RemoveReason,
    ) -> Result<(), S::Error> {
        if reason.is_total() {
            return self.remove_total(Some(channel), member_id, rev, false);
        }
        if let Some(h) = self.store.find(member_id)? {
            self.store.leave(channel, h.slot)?;
            self.collect_orphan(h.slot)?;
        }
        self.stats.applied += 1;
        Ok(())
    }

    pub fn keys(
        &mut self,
        member_id: &str,
        keys: &[instore_protocol::Identifier],
    ) -> Result<(), S::Error> {
        if let Some(h) = self.store.find(member_id)? {
            self.store.set_keys(h.slot, &short_lived(keys))?;
            self.patch.keys_changed = true;
            self.stats.applied += 1;
        }
        Ok(())
    }

    fn entry_is_well_formed(entry: &ChannelChanges) -> bool {
        let mut last = entry.from;
        entry.to >= entry.from
            && entry.changes.iter().all(|c| {
                let ok = c.version > last && c.version <= entry.to;
                last = c.version;
                ok
            })
    }

    /// Applies every channel entry of `response` that carries changes (entries with a snapshot
    /// are the caller's: it applies the snapshot first, see [`Self::snapshot`]), then drops
    /// channels the response no longer lists.
    pub fn response(&mut self, response: &ChangesResponse) -> Result<(), S::Error> {
        let held = self.store.channels()?;
        for entry in &response.channels {
            if entry.snapshot.is_some() {
                continue;
            }
            if !valid_channel(&entry.channel) {
                self.stats.malformed.push(entry.channel.clone());
                continue;
            }
            let have = held.get(&entry.channel).copied().unwrap_or(0);
            if entry.from != have {
                self.stats.gaps.push(entry.channel.clone());
                continue;
            }
            if !Self::entry_is_well_formed(entry) {
                self.stats.malformed.push(entry.channel.clone());
                continue;
            }
            for change in &entry.changes {
                match &change.op {
                    ChangeOp::Upsert { rev, member } => {
                        self.upsert(&entry.channel, *rev, member, false)?;
                    }
                    ChangeOp::Remove {
                        member_id,
                        rev,
                        reason,
                    } => self.remove(&entry.channel, member_id, *rev, *reason)?,
                    ChangeOp::Keys {
                        member_id, keys, ..
                    } => self.keys(member_id, keys)?,
                }
            }
            if entry.to != have || !held.contains_key(&entry.channel) {
                self.store.set_channel(&entry.channel, entry.to)?;
            }
        }
        for name in held.keys() {
            if name == LOCAL_CHANNEL || response.channels.iter().any(|c| c.channel == *name) {
                continue;
            }
            self.drop_channel(name)?;
        }
        Ok(())
    }

    /// Drops a channel and every member only it held.
    pub fn drop_channel(&mut self, name: &str) -> Result<(), S::Error> {
        let slots = self.store.drop_channel(name)?;
        self.stats.dropped.push(name.to_string());
        for slot in slots {
            self.collect_orphan(slot)?;
        }
        Ok(())
    }

    /// Replaces `channel`'s members with a snapshot's lines (streamed: one line at a time) and
    /// sets its version.
    pub fn snapshot<E>(
        &mut self,
        channel: &str,
        version: u64,
        lines: impl Iterator<Item = Result<SnapshotLine, E>>,
    ) -> Result<Result<(), E>, S::Error> {
        // A snapshot older than the version held: head office went back (restored from a
        // backup). Its revisions are the truth now, lower or not; kept to the rule "highest rev
        // wins", the gateway would hold the lost future's records and refuse every change until
        // head office's revisions passed the ones held.
        let held_version = self.store.channels()?.get(channel).copied().unwrap_or(0);
        let mode = if version < held_version {
            tracing::warn!(
                channel,
                version,
                held_version,
                "channel snapshot older than the version held: head office went back, taking its records as they are"
            );
            Mode::AsGiven
        } else {
            Mode::Newer
        };
        self.store.begin_resync(channel)?;
        for line in lines {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(slot) = self.upsert_as(channel, line.rev, &line.member, mode)?
                && !line.keys.is_empty()
            {
                self.store.set_keys(slot, &short_lived(&line.keys))?;
                self.patch.keys_changed = true;
            }
        }
        for slot in self.store.end_resync(channel)? {
            self.collect_orphan(slot)?;
        }
        self.store.set_channel(channel, version)?;
        Ok(Ok(()))
    }

    /// Fills the patch's absolute figures (key-carrying members, version) at the end.
    pub fn finish(mut self) -> Result<(IndexPatch, ApplyStats), S::Error> {
        let (days, eids) = self.store.key_members()?;
        self.patch.day_key_members = days;
        self.patch.eid_key_members = eids;
        self.patch.version = self
            .store
            .channels()?
            .iter()
            .filter(|(n, _)| !is_pseudo(n))
            .map(|(_, v)| *v)
            .sum();
        Ok((self.patch, self.stats))
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
