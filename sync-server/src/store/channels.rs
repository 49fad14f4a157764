//! Members' channels and the channels' change streams (see [`instore_protocol::changes`]).
//!
//! In: a member's gateway record (or none: erased, no consent) and the channels the policy puts
//! them in, inside the caller's transaction, so a change and the fact that caused it commit
//! together. Out: rows in `channel_changes` (one per channel and change), `member_channels`,
//! each channel's head in `channels`, and the heads touched (for notices). Reading: what follows
//! a cursor in a channel, with upserts served from the member's *current* gateway record.

use std::collections::{BTreeMap, BTreeSet};

use instore_protocol::{
    Identifier, MemberRecord,
    changes::{Change, ChangeOp, ChannelChanges, RemoveReason},
};

use super::{StoreError, db::Sql, db::Tx};
use crate::params;

/// Channel → head after the writes, for the notifier.
pub type Touched = BTreeMap<String, u64>;

const SELECT_MEMBER_CHANNELS: Sql =
    Sql::same("SELECT channel FROM member_channels WHERE member_id = ?1 ORDER BY channel");
const INSERT_MEMBER_CHANNEL: Sql = Sql::same(
    "INSERT INTO member_channels (member_id, channel) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
);
const DELETE_MEMBER_CHANNEL: Sql =
    Sql::same("DELETE FROM member_channels WHERE member_id = ?1 AND channel = ?2");
const SELECT_GATEWAY_JSON: Sql =
    Sql::same("SELECT gateway_json, rev FROM members WHERE member_id = ?1");
const SET_GATEWAY_JSON: Sql =
    Sql::same("UPDATE members SET gateway_json = ?2, rev = ?3 WHERE member_id = ?1");
const NEXT_REV: Sql = Sql::same(
    "INSERT INTO meta (key, value) VALUES ('member_rev', 1)
    ON CONFLICT(key) DO UPDATE SET value = meta.value + 1 RETURNING value",
);
const BUMP_HEAD: Sql = Sql::same(
    "INSERT INTO channels (name, head) VALUES (?1, 1)
    ON CONFLICT(name) DO UPDATE SET head = channels.head + 1 RETURNING head",
);
const INSERT_CHANGE: Sql = Sql::same(
    "INSERT INTO channel_changes (channel, version, member_id, op, rev, reason, at_ms, expires_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
);
const SELECT_CHANNEL: Sql = Sql::same("SELECT head, floor FROM channels WHERE name = ?1");
pub(crate) const SELECT_ALL_HEADS: Sql = Sql::same("SELECT name, head FROM channels ORDER BY name");
const SELECT_CHANGES: Sql = Sql::same(
    "SELECT c.version, c.member_id, c.op, c.rev, c.reason, c.at_ms, c.expires_ms,
        m.gateway_json, m.rev, m.record_json
    FROM channel_changes c LEFT JOIN members m ON m.member_id = c.member_id
    WHERE c.channel = ?1 AND c.version > ?2 ORDER BY c.version LIMIT ?3",
);
const PRUNE_CHANGES: Sql =
    Sql::same("DELETE FROM channel_changes WHERE channel = ?1 AND version <= ?2");
const OLDEST_KEPT: Sql = Sql::same(
    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM channel_changes
    WHERE channel = ?1 AND at_ms < ?2",
);
const SET_FLOOR: Sql = Sql::same("UPDATE channels SET floor = ?2 WHERE name = ?1 AND floor < ?2");
const PRUNE_EXPIRED_KEYS: Sql = Sql::same(
    "DELETE FROM channel_changes WHERE op = 'keys' AND expires_ms IS NOT NULL AND expires_ms < ?1",
);
const SELECT_CHANNEL_NAMES: Sql = Sql::same("SELECT name FROM channels ORDER BY name");

/// What changed about a member, for [`place_member`].
#[derive(Debug, Clone)]
pub struct MemberChange<'a> {
    pub member_id: &'a str,
    /// The record gateways hold; `None` when the member must leave every gateway.
    pub gateway: Option<&'a MemberRecord>,
    /// The channels the member belongs to now (empty without a gateway record).
    pub channels: &'a BTreeSet<String>,
    /// Why the member leaves every channel when `gateway` is `None`.
    pub removal: RemoveReason,
    /// The member's long-term keys may have changed: send `keys` changes to every channel.
    pub keys_changed: bool,
    /// The member has long-term keys (a newly joined channel needs a `keys` change).
    pub has_keys: bool,
}

fn next_rev(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    tx.query_one(&NEXT_REV, params![])?.u64(0)
}

/// One row of a channel's stream.
struct Entry<'a> {
    member_id: &'a str,
    op: &'static str,
    rev: u64,
    reason: Option<&'static str>,
    at_ms: i64,
    expires_ms: Option<i64>,
}

/// Appends one change to `channel`; returns its version.
fn append(tx: &mut Tx<'_>, channel: &str, e: Entry<'_>) -> Result<u64, StoreError> {
    let version = tx.query_one(&BUMP_HEAD, params![channel])?.u64(0)?;
    tx.execute(
        &INSERT_CHANGE,
        params![
            channel,
            version,
            e.member_id,
            e.op,
            e.rev,
            e.reason,
            e.at_ms,
            e.expires_ms
        ],
    )?;
    Ok(version)
}

fn entry<'a>(member_id: &'a str, op: &'static str, rev: u64, at_ms: i64) -> Entry<'a> {
    Entry {
        member_id,
        op,
        rev,
        reason: None,
        at_ms,
        expires_ms: None,
    }
}

fn reason_name(r: RemoveReason) -> &'static str {
    match r {
        RemoveReason::LeftChannel => "left_channel",
        RemoveReason::ConsentWithdrawn => "consent_withdrawn",
        RemoveReason::Erased => "erased",
    }
}

fn reason_of(name: Option<&str>) -> RemoveReason {
    match name {
        Some("consent_withdrawn") => RemoveReason::ConsentWithdrawn,
        Some("erased") => RemoveReason::Erased,
        _ => RemoveReason::LeftChannel,
    }
}

/// Brings a member's channels and record at the stores in line with `change`: upserts where the
/// record changed or the member joined a channel, removals where they left one, `keys` where
/// their keys changed or a channel is new to them. Nothing is written when nothing changed.
pub fn place_member(
    tx: &mut Tx<'_>,
    change: &MemberChange<'_>,
    now_ms: i64,
    touched: &mut Touched,
) -> Result<(), StoreError> {
    let old: BTreeSet<String> = tx
        .query(&SELECT_MEMBER_CHANNELS, params![change.member_id])?
        .into_iter()
        .map(|r| r.string(0))
        .collect::<Result<_, _>>()?;
    let held = tx.query_opt(&SELECT_GATEWAY_JSON, params![change.member_id])?;
    let (old_json, old_rev) = match &held {
        Some(r) => (r.opt_string(0)?, r.u64(1)?),
        None => (None, 0),
    };
    let new_json = match change.gateway {
        Some(rec) => Some(
            serde_json::to_string(rec)
                .map_err(|e| StoreError::Corrupt(format!("member {}: {e}", change.member_id)))?,
        ),
        None => None,
    };
    let body_changed = new_json != old_json;
    let channels: &BTreeSet<String> = if change.gateway.is_some() {
        change.channels
    } else {
        &BTreeSet::new()
    };
    let leaving: Vec<&String> = old.difference(channels).collect();
    // A total removal carries a new revision, so that an older upsert can never bring the
    // member back at a gateway that sees the two out of order.
    let total = change.gateway.is_none() && !leaving.is_empty();
    let rev = if body_changed || total {
        let rev = next_rev(tx)?;
        if held.is_some() {
            tx.execute(
                &SET_GATEWAY_JSON,
                params![change.member_id, new_json.clone(), rev],
            )?;
        }
        rev
    } else {
        old_rev
    };
    for c in channels {
        let joined = !old.contains(c);
        if joined {
            tx.execute(&INSERT_MEMBER_CHANNEL, params![change.member_id, c])?;
        }
        if joined || body_changed {
            let v = append(tx, c, entry(change.member_id, "upsert", rev, now_ms))?;
            touched.insert(c.clone(), v);
        }
        // After every new upsert too: the stream keeps one entry per member and kind, so an
        // upsert that supersedes an older one would otherwise come after the member's keys, and
        // a gateway reading from the start would get keys for a member it does not hold yet.
        if change.has_keys && (joined || body_changed || change.keys_changed) {
            let v = append(tx, c, entry(change.member_id, "keys", rev, now_ms))?;
            touched.insert(c.clone(), v);
        }
    }
    for c in leaving {
        tx.execute(&DELETE_MEMBER_CHANNEL, params![change.member_id, c])?;
        let reason = if change.gateway.is_none() {
            change.removal
        } else {
            RemoveReason::LeftChannel
        };
        let v = append(
            tx,
            c,
            Entry {
                reason: Some(reason_name(reason)),
                ..entry(change.member_id, "remove", rev, now_ms)
            },
        )?;
        touched.insert(c.clone(), v);
    }
    Ok(())
}

/// Appends a `keys` change for a member to each of its channels (new day keys, a new EID epoch).
/// `expires_ms`: when these keys stop mattering, so they can be pruned early.
pub fn append_keys(
    tx: &mut Tx<'_>,
    member_id: &str,
    now_ms: i64,
    expires_ms: Option<i64>,
    touched: &mut Touched,
) -> Result<(), StoreError> {
    let channels: Vec<String> = tx
        .query(&SELECT_MEMBER_CHANNELS, params![member_id])?
        .into_iter()
        .map(|r| r.string(0))
        .collect::<Result<_, _>>()?;
    let rev = tx
        .query_opt(&SELECT_GATEWAY_JSON, params![member_id])?
        .map(|r| r.u64(1))
        .transpose()?
        .unwrap_or(0);
    for c in channels {
        let v = append(
            tx,
            &c,
            Entry {
                expires_ms,
                ..entry(member_id, "keys", rev, now_ms)
            },
        )?;
        touched.insert(c, v);
    }
    Ok(())
}

/// A channel's head and floor (the highest version pruned); `(0, 0)` for an unknown channel.
pub fn head_and_floor(tx: &mut Tx<'_>, channel: &str) -> Result<(u64, u64), StoreError> {
    Ok(match tx.query_opt(&SELECT_CHANNEL, params![channel])? {
        Some(r) => (r.u64(0)?, r.u64(1)?),
        None => (0, 0),
    })
}

/// Every channel's head.
pub fn heads(tx: &mut Tx<'_>) -> Result<Touched, StoreError> {
    tx.query(&SELECT_ALL_HEADS, params![])?
        .into_iter()
        .map(|r| Ok((r.string(0)?, r.u64(1)?)))
        .collect()
}

/// Builds the short-lived keys of a `keys` change from the member's record at the change's
/// time; a function so the store does not depend on the fan-out's key derivation.
pub type KeysOf<'a> = &'a dyn Fn(&MemberRecord, i64) -> (Vec<Identifier>, Option<i64>);

/// What follows `since` in `channel`, at most `limit` rows read. Only a member's last change of
/// each kind in the window is sent (later changes supersede earlier ones); upserts carry the
/// member's current record, and are left out for a member who has none now (erased or without
/// consent: their removal follows in the stream).
pub fn changes_since(
    tx: &mut Tx<'_>,
    channel: &str,
    since: u64,
    limit: usize,
    keys_of: KeysOf<'_>,
) -> Result<ChannelChanges, StoreError> {
    let (head, _) = head_and_floor(tx, channel)?;
    let rows = tx.query(&SELECT_CHANGES, params![channel, since, limit])?;
    let mut to = since;
    // Last index per (member, is_keys).
    let mut last: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        to = r.u64(0)?;
        let keys = r.str(2)? == "keys";
        last.insert((r.string(1)?, keys), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let mut changes = Vec::with_capacity(keep.len());
    for i in keep {
        let r = &rows[i];
        let version = r.u64(0)?;
        let member_id = r.string(1)?;
        let op = match r.str(2)? {
            "upsert" => {
                let Some(json) = r.opt_string(7)? else {
                    continue;
                };
                let member: MemberRecord = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
                ChangeOp::Upsert {
                    rev: r.u64(8)?,
                    member,
                }
            }
            "remove" => ChangeOp::Remove {
                member_id,
                rev: r.u64(3)?,
                reason: reason_of(r.opt_string(4)?.as_deref()),
            },
            "keys" => {
                // A member erased since, or without consent now, gets no keys.
                let (Some(_), Some(record)) = (r.opt_string(7)?, r.opt_string(9)?) else {
                    continue;
                };
                let record: MemberRecord = serde_json::from_str(&record)
                    .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
                let (keys, expires) = keys_of(&record, r.i64(5)?);
                ChangeOp::Keys {
                    member_id,
                    keys,
                    expires_ms: expires.or(r.opt_i64(6)?).unwrap_or(0),
                }
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "channel {channel} version {version}: unknown op {other:?}"
                )));
            }
        };
        changes.push(Change { version, op });
    }
    Ok(ChannelChanges {
        channel: channel.to_string(),
        from: since,
        to,
        head,
        snapshot: None,
        changes,
    })
}

/// Deletes changes older than `before_ms` from every channel (raising each channel's floor: a
/// gateway behind it takes a snapshot) and `keys` changes that have expired.
pub fn prune(tx: &mut Tx<'_>, before_ms: i64, now_ms: i64) -> Result<u64, StoreError> {
    let names: Vec<String> = tx
        .query(&SELECT_CHANNEL_NAMES, params![])?
        .into_iter()
        .map(|r| r.string(0))
        .collect::<Result<_, _>>()?;
    let mut deleted = 0;
    for name in names {
        let upto = tx
            .query_one(&OLDEST_KEPT, params![&name, before_ms])?
            .u64(0)?;
        if upto > 0 {
            deleted += tx.execute(&PRUNE_CHANGES, params![&name, upto])?;
            tx.execute(&SET_FLOOR, params![&name, upto])?;
        }
    }
    deleted += tx.execute(&PRUNE_EXPIRED_KEYS, params![now_ms])?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use instore_protocol::parse_ndjson;

    use super::*;
    use crate::store::{Db, testing::each_backend};

    const INSERT_MEMBER: Sql =
        Sql::same("INSERT INTO members (member_id, record_json, version) VALUES (?1, ?2, 1)");

    fn record(id: &str, tier: &str) -> MemberRecord {
        let (mut r, e) = parse_ndjson(&format!(
            r#"{{"member_id":"{id}","display_name":"N","tier":"{tier}","consent":{{"presence":true}}}}"#
        ));
        assert!(e.is_empty());
        r.remove(0)
    }

    fn no_keys(_: &MemberRecord, _: i64) -> (Vec<Identifier>, Option<i64>) {
        (Vec::new(), None)
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn place(db: &mut Db, id: &str, gateway: Option<&MemberRecord>, channels: &[&str]) -> Touched {
        let mut tx = db.transaction().unwrap();
        if tx
            .query_opt(&SELECT_GATEWAY_JSON, params![id])
            .unwrap()
            .is_none()
        {
            tx.execute(&INSERT_MEMBER, params![id, "{}"]).unwrap();
        }
        let mut touched = Touched::new();
        let channels = set(channels);
        place_member(
            &mut tx,
            &MemberChange {
                member_id: id,
                gateway,
                channels: &channels,
                removal: RemoveReason::ConsentWithdrawn,
                keys_changed: false,
                has_keys: false,
            },
            1_000,
            &mut touched,
        )
        .unwrap();
        tx.commit().unwrap();
        touched
    }

    fn read(db: &mut Db, channel: &str, since: u64) -> ChannelChanges {
        let mut tx = db.transaction().unwrap();
        let c = changes_since(&mut tx, channel, since, 100, &no_keys).unwrap();
        tx.commit().unwrap();
        c
    }

    #[test]
    fn a_member_joining_two_channels_is_upserted_in_each_once() {
        each_backend(|db| {
            let m = record("M1", "gold");
            let t = place(db, "M1", Some(&m), &["chain", "store:s1"]);
            assert_eq!(t, [("chain".into(), 1), ("store:s1".into(), 1)].into());
            // The same record again changes nothing.
            assert!(place(db, "M1", Some(&m), &["chain", "store:s1"]).is_empty());
            let c = read(db, "chain", 0);
            assert_eq!((c.from, c.to, c.head), (0, 1, 1));
            assert!(
                matches!(&c.changes[0].op, ChangeOp::Upsert { rev: 1, member } if member.tier == "gold")
            );
        });
    }

    #[test]
    fn moving_channels_removes_from_the_old_one_and_a_withdrawal_removes_everywhere() {
        each_backend(|db| {
            let m = record("M1", "member");
            place(db, "M1", Some(&m), &["store:s1"]);
            place(db, "M1", Some(&m), &["store:s2"]);
            let s1 = read(db, "store:s1", 1);
            assert!(matches!(
                &s1.changes[..],
                [Change {
                    version: 2,
                    op: ChangeOp::Remove {
                        reason: RemoveReason::LeftChannel,
                        ..
                    }
                }]
            ));
            let t = place(db, "M1", None, &[]);
            assert_eq!(t, [("store:s2".into(), 2)].into());
            let s2 = read(db, "store:s2", 0);
            // The upsert at version 1 is superseded by the removal in the same window.
            assert_eq!(s2.changes.len(), 1);
            let ChangeOp::Remove { rev, reason, .. } = &s2.changes[0].op else {
                panic!("{:?}", s2.changes)
            };
            assert_eq!(*reason, RemoveReason::ConsentWithdrawn);
            assert!(*rev > 1, "a total removal takes a new revision");
            // A reader still at version 0 in store:s1 never sees the member's record now.
            let s1 = read(db, "store:s1", 0);
            assert!(
                s1.changes
                    .iter()
                    .all(|c| !matches!(c.op, ChangeOp::Upsert { .. }))
            );
        });
    }

    #[test]
    fn a_changed_record_is_upserted_with_a_higher_revision_and_served_as_it_is_now() {
        each_backend(|db| {
            place(db, "M1", Some(&record("M1", "member")), &["chain"]);
            place(db, "M1", Some(&record("M1", "gold")), &["chain"]);
            let c = read(db, "chain", 0);
            assert_eq!(c.changes.len(), 1, "one upsert per member and window");
            assert!(
                matches!(&c.changes[0].op, ChangeOp::Upsert { rev: 2, member } if member.tier == "gold")
            );
            // Reading from version 1 still gives the second upsert.
            assert_eq!(read(db, "chain", 1).changes.len(), 1);
            assert_eq!(read(db, "chain", 2).changes.len(), 0);
        });
    }

    #[test]
    fn pruning_raises_the_floor_and_keeps_recent_changes() {
        each_backend(|db| {
            place(db, "M1", Some(&record("M1", "member")), &["chain"]);
            let mut tx = db.transaction().unwrap();
            // Everything so far was written at t = 1,000.
            assert_eq!(prune(&mut tx, 2_000, 2_000).unwrap(), 1);
            assert_eq!(head_and_floor(&mut tx, "chain").unwrap(), (1, 1));
            tx.commit().unwrap();
            assert!(read(db, "chain", 1).changes.is_empty());
        });
    }
}
