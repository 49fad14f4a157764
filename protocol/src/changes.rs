//! The downlink: what head office sends a store's gateways about members, as ordered change
//! streams they resume from a checkpoint, with snapshots only for a gateway that is new or was
//! away longer than head office keeps changes.
//!
//! ## Channels
//! Members reach stores through *channels* (Couchbase Sync Gateway's word): `chain` (members every
//! store holds, e.g. the top tiers), `group:<id>` (members of a store group or region) and
//! `store:<id>` (members held by one store: home store, recent visitors, explicit lists). A
//! member sits in zero or more channels; a store *subscribes* to its own channel, its groups'
//! and `chain`. A store's member set is the union of its channels' members. One change to a
//! chain-wide member is written once, not once per store, so a chain of thousands of stores
//! does not multiply its writes by its store count.
//!
//! Each channel is an ordered stream of [`Change`]s numbered by the channel's *version*, rising
//! by one per change. A gateway keeps, per channel, the version it has applied, and asks
//! `GET /api/stores/{store}/changes?since=CURSOR` (see [`Cursor`]) for what follows. The answer
//! ([`ChangesResponse`]) lists every channel the store subscribes to *now*; a channel the gateway
//! holds that is not listed was dropped (its members leave unless another channel holds them).
//!
//! ## Applying
//! - A channel's batch applies only when its `from` equals the gateway's version for it; then the
//!   gateway's version becomes `to`. Anything else (an older or newer `from`) is a gap or a
//!   replay: the batch is ignored and asked again. Versions inside a batch rise but need not be
//!   contiguous (head office leaves out changes that no longer matter, e.g. an upsert of a member
//!   who has since withdrawn consent).
//! - `Upsert` carries the member's record in gateway form (no long-term secrets, no short-lived
//!   keys: those come as `Keys`) and its revision `rev`, which rises with every change of the
//!   member at head office. A gateway keeps the record with the highest `rev` and notes that the
//!   channel holds the member.
//! - `Remove` with [`RemoveReason::LeftChannel`] drops the member from that channel only;
//!   [`RemoveReason::ConsentWithdrawn`] and [`RemoveReason::Erased`] drop the member from the
//!   gateway altogether, and an upsert with a `rev` not above the removal's is ignored after it.
//! - `Keys` replaces the member's short-lived keys (rotating-ID day keys, Eddystone-EID temporary
//!   keys) with the ones listed. They expire on their own (`expires_ms`): the gateway forgets
//!   keys of past days without being told.
//! - All channels of one response are applied in one transaction: a member moving from one
//!   channel to another is never missing in between.
//!
//! ## Snapshots
//! When `from` is older than the oldest change head office keeps, the channel's entry carries a
//! [`SnapshotRef`] instead of changes. The snapshot is a file: zstd-compressed NDJSON, a
//! [`SnapshotHeader`] line then one [`SnapshotLine`] per member, immutable once written and named
//! by its channel and version, so a cut download resumes with an HTTP `Range` request
//! (`If-Range: "<sha256>"`). `sha256` covers the compressed bytes as served. After applying it
//! the gateway's version for the channel is the snapshot's, and it carries on with changes.
//!
//! ## Notices
//! After changes commit, head office publishes a retained [`crate::MembersNotice`] per store with
//! each subscribed channel's head; a gateway that is behind on any channel asks for changes. The
//! notice only says "there is more": gateways also ask on start and on a timer, so a lost notice
//! delays, never loses, a change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Identifier, MemberRecord, topics::valid_id};

/// Most changes head office sends in one response, over all channels; a gateway asks again while
/// any channel's `to` is below its `head`.
pub const MAX_CHANGES_PER_RESPONSE: usize = 5_000;

/// The channel every store subscribes to.
pub const CHAIN_CHANNEL: &str = "chain";

/// A channel name: `chain`, `group:<id>` or `store:<id>` with `<id>` a valid id.
pub fn valid_channel(name: &str) -> bool {
    if name == CHAIN_CHANNEL {
        return true;
    }
    match name.split_once(':') {
        Some(("group" | "store", id)) => valid_id(id),
        _ => false,
    }
}

/// The channel of one store's own members.
pub fn store_channel(store_id: &str) -> String {
    format!("store:{store_id}")
}

/// The channel of a store group's members.
pub fn group_channel(group: &str) -> String {
    format!("group:{group}")
}

/// A gateway's position in each channel: `channel=version` pairs joined by commas, e.g.
/// `chain=120,store:s1=40`. A channel not named is at version 0 (nothing applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<String, u64>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor entry {0:?} is not channel=version")]
    Entry(String),
    #[error("cursor names an invalid channel {0:?}")]
    Channel(String),
    #[error("cursor names channel {0:?} twice")]
    Duplicate(String),
    #[error("cursor names more than {MAX_CURSOR_CHANNELS} channels")]
    TooMany,
}

/// Channels a cursor may name: a store subscribes to its own, a few groups and the chain.
pub const MAX_CURSOR_CHANNELS: usize = 64;

impl Cursor {
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let mut map = BTreeMap::new();
        for entry in text.split(',').filter(|e| !e.is_empty()) {
            let (name, version) = entry
                .split_once('=')
                .ok_or_else(|| CursorError::Entry(entry.to_string()))?;
            let version: u64 = version
                .parse()
                .map_err(|_| CursorError::Entry(entry.to_string()))?;
            if !valid_channel(name) {
                return Err(CursorError::Channel(name.to_string()));
            }
            if map.insert(name.to_string(), version).is_some() {
                return Err(CursorError::Duplicate(name.to_string()));
            }
            if map.len() > MAX_CURSOR_CHANNELS {
                return Err(CursorError::TooMany);
            }
        }
        Ok(Self(map))
    }

    pub fn version(&self, channel: &str) -> u64 {
        self.0.get(channel).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={v}")?;
        }
        Ok(())
    }
}

/// `GET /api/stores/{store}/changes?since=CURSOR[&limit=N]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesResponse {
    pub v: u32,
    pub store_id: String,
    /// Every channel the store subscribes to now, each with what follows the cursor.
    pub channels: Vec<ChannelChanges>,
    /// The store's live campaigns, when the request named a set (`&campaigns=TAG`) other than
    /// this one ([`crate::campaign`]); absent when it is the same, or was not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaigns: Option<crate::campaign::CampaignSet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelChanges {
    pub channel: String,
    /// The version this batch follows: the cursor's version for the channel.
    pub from: u64,
    /// The version the gateway is at once the batch is applied (`from` when there is nothing).
    pub to: u64,
    /// The channel's newest version at head office.
    pub head: u64,
    /// Set when `from` is older than head office keeps changes (or 0 for a channel with history
    /// already pruned): take this snapshot instead; `changes` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// One change in a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub version: u64,
    #[serde(flatten)]
    pub op: ChangeOp,
}

// Most changes are upserts, so boxing the record would only add an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ChangeOp {
    /// The member's current record (gateway form) at revision `rev`.
    Upsert { rev: u64, member: MemberRecord },
    Remove {
        member_id: String,
        rev: u64,
        reason: RemoveReason,
    },
    /// The member's short-lived keys now: only `rotating_day_key` and `eddystone_eid_temp`
    /// identifiers. `expires_ms`: when the last of them stops mattering.
    Keys {
        member_id: String,
        keys: Vec<Identifier>,
        expires_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    /// The member no longer belongs to this channel (e.g. moved home store, tier fell below the
    /// chain-wide tiers, visit older than the policy's window).
    LeftChannel,
    /// The member withdrew presence consent: forget them everywhere, at once.
    ConsentWithdrawn,
    /// Head office erased the member.
    Erased,
}

impl RemoveReason {
    /// Whether the member leaves the gateway altogether rather than one channel.
    pub fn is_total(self) -> bool {
        !matches!(self, RemoveReason::LeftChannel)
    }
}

/// Where to fetch a channel's snapshot and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// Path below head office's base URL, e.g.
    /// `/api/stores/s1/channels/chain/snapshots/1200`.
    pub path: String,
    /// The channel version the snapshot holds: the gateway's version once it is applied.
    pub version: u64,
    /// Lowercase hex SHA-256 of the file as served (compressed); also its `ETag`.
    pub sha256: String,
    /// Size of the file as served.
    pub bytes: u64,
    /// Members in it.
    pub members: u64,
}

/// First line of a snapshot file (after decompression).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub v: u32,
    pub channel: String,
    pub version: u64,
    pub members: u64,
    pub created_ms: i64,
}

/// Every further line of a snapshot file: one member with its revision and current keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotLine {
    pub rev: u64,
    pub member: MemberRecord,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_expire_ms: Option<i64>,
}

/// `POST /api/stores/{store}/members/lookup`: a gateway asks head office about a member code
/// scanned at the store whose member the store does not hold. Bounded by a short timeout at the
/// gateway; offline, the scan is refused with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    /// The scanned member code, exactly as read.
    pub code: String,
}

/// 200 answer to a [`LookupRequest`]: the member, if the code is valid now and the member has
/// presence consent (404 otherwise, with `{"error": reason}`). The gateway may keep it for the
/// visit; it is not added to any channel by the lookup itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupResponse {
    pub rev: u64,
    pub member: MemberRecord,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Identifier>,
}

/// The channel heads a [`crate::MembersNotice`] carries, by channel name.
pub type Heads = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_chain_group_or_store_with_a_valid_id() {
        assert!(valid_channel("chain"));
        assert!(valid_channel("store:s-1"));
        assert!(valid_channel("group:north_2"));
        for bad in [
            "",
            "chain:x",
            "store:",
            "store:a/b",
            "region:x",
            "store:a+b",
            "Store:s",
        ] {
            assert!(!valid_channel(bad), "{bad}");
        }
    }

    #[test]
    fn a_cursor_round_trips_and_defaults_unnamed_channels_to_zero() {
        let c = Cursor::parse("store:s1=40,chain=120").unwrap();
        assert_eq!(c.to_string(), "chain=120,store:s1=40");
        assert_eq!(c.version("chain"), 120);
        assert_eq!(c.version("group:g"), 0);
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
    }

    #[test]
    fn a_bad_cursor_is_refused_with_the_entry_at_fault() {
        assert_eq!(
            Cursor::parse("chain=1,chain=2"),
            Err(CursorError::Duplicate("chain".into()))
        );
        assert_eq!(
            Cursor::parse("chain=-1"),
            Err(CursorError::Entry("chain=-1".into()))
        );
        assert_eq!(
            Cursor::parse("nope=1"),
            Err(CursorError::Channel("nope".into()))
        );
        let many: Vec<String> = (0..=MAX_CURSOR_CHANNELS)
            .map(|i| format!("store:s{i}=1"))
            .collect();
        assert_eq!(Cursor::parse(&many.join(",")), Err(CursorError::TooMany));
    }

    #[test]
    fn changes_serialise_with_an_op_tag() {
        let c = Change {
            version: 7,
            op: ChangeOp::Remove {
                member_id: "M1".into(),
                rev: 3,
                reason: RemoveReason::ConsentWithdrawn,
            },
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"version":7,"op":"remove","member_id":"M1","rev":3,"reason":"consent_withdrawn"}"#
        );
        assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), c);
        assert!(RemoveReason::Erased.is_total() && !RemoveReason::LeftChannel.is_total());
    }
}
