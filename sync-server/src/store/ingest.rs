//! Storing event batches and gateway status: one transaction per group of items.

use std::collections::{BTreeSet, HashSet};

use instore_protocol::{BootFloor, MAX_SEQ_JUMP, SEQ_LIMIT, Welcome};

use super::{
    StoreError, bulk,
    db::{Db, Tx, Value},
    sql, visits,
};

/// The type of a stored event whose member has not consented to presence: number kept, content
/// dropped.
pub const REDACTED_KIND: &str = "redacted_no_consent";
use crate::params;

/// An event ready for its row: validated and serialised by ingest.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: &'static str,
    pub body_json: String,
    /// Set when the event is an `events_shed` report.
    pub shed: Option<ShedReport>,
    /// The member fact of a presence event (arrival, departure, alert, ...).
    pub presence: Option<crate::ingest::visits::PresenceFact>,
    /// A signed member code's id (`key_id:step`) a `qr_scanned` event reports.
    pub code_use: Option<String>,
}

/// A range a gateway's outbox shed, as its `events_shed` event reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShedReport {
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: i64,
    pub kinds_json: String,
}

/// A gateway's hello, checked: boot ids fit SQLite's integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloItem {
    pub boot: i64,
    pub boots: Vec<i64>,
}

/// A decoded batch whose topic matched its gateway.
#[derive(Debug, Clone)]
pub struct IngestBatch {
    pub gateway_id: String,
    pub store_id: String,
    pub hello: Option<HelloItem>,
    pub events: Vec<StoredEvent>,
    /// Arrived sealed, and its MAC verified under the gateway's key.
    pub signed: bool,
    /// Events stored as [`crate::ingest::decode::UNREADABLE_KIND`].
    pub unreadable: u64,
    /// The gateway's outbox depth when it sent the batch (newer gateways).
    pub outbox: Option<i64>,
}

/// One thing ingest learned from the broker.
#[derive(Debug, Clone)]
pub enum IngestItem {
    Batch(IngestBatch),
    Status {
        gateway_id: String,
        store_id: String,
        online: bool,
        signed: bool,
    },
    /// A refused payload on this gateway's topic: counted against it if the gateway is known.
    Bad {
        gateway_id: String,
    },
}

impl IngestItem {
    /// The gateway the item came from, for logs.
    pub fn gateway_id(&self) -> &str {
        match self {
            IngestItem::Batch(b) => &b.gateway_id,
            IngestItem::Status { gateway_id, .. } | IngestItem::Bad { gateway_id } => gateway_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub inserted: u64,
    pub duplicates: u64,
    /// Events of members without presence consent, stored without their content.
    pub redacted: u64,
    /// Highest sequence number ever committed for the gateway, this batch included.
    pub high_water: u64,
    /// The answer to the batch's hello, if it had one.
    pub welcome: Option<Welcome>,
    /// Events not stored (nor to be acknowledged) because their numbers jumped more than
    /// [`MAX_SEQ_JUMP`] beyond the gateway's last: a forged or corrupt batch, which would
    /// otherwise raise the high-water mark every ack carries out of the gateway's reach.
    pub refused: u64,
    /// The highest number the batch could have stored: its refused events lie above.
    pub seq_bound: i64,
    /// Member codes this batch reports used that another store used first.
    pub codes_cross_store: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Batch(BatchOutcome),
    Status,
    Bad,
    /// A plain (unsealed) message from a gateway that seals its messages: a forgery, or a
    /// downgrade. Nothing about the gateway changed.
    Unsigned,
}

/// Stores `items` in one transaction. Nothing is visible (or acknowledged) unless all of it is.
///
/// Items are written in the order of their gateway ids (a stable sort: one gateway's batches
/// keep their order), because each takes its gateway's row lock: instances of a shared head
/// office committing overlapping groups at once then lock rows in the same order and wait for
/// each other instead of deadlocking. Outcomes come back in the order of `items`.
pub fn ingest(
    db: &mut Db,
    items: &[IngestItem],
    now_ms: i64,
) -> Result<Vec<ItemOutcome>, StoreError> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[a].gateway_id().cmp(items[b].gateway_id()));
    let mut tx = db.transaction()?;
    let mut out: Vec<Option<ItemOutcome>> = vec![None; items.len()];
    for i in order {
        out[i] = Some(ingest_one(&mut tx, &items[i], now_ms)?);
    }
    tx.commit()?;
    Ok(out.into_iter().flatten().collect())
}

/// Whether a message may be stored, given what the gateway's upsert returned: a sealed one
/// always; a plain one only from a gateway that has never sealed.
fn admitted(signed: bool, row_signs: bool) -> bool {
    signed || !row_signs
}

fn ingest_one(tx: &mut Tx<'_>, item: &IngestItem, now_ms: i64) -> Result<ItemOutcome, StoreError> {
    Ok(match item {
        IngestItem::Batch(b) => {
            let row = tx.query_one(
                &sql::UPSERT_GATEWAY_SEEN_LAST_SEQ,
                params![&b.gateway_id, &b.store_id, now_ms, i64::from(b.signed)],
            )?;
            if !admitted(b.signed, row.bool(0)?) {
                return Ok(ItemOutcome::Unsigned);
            }
            let last_seq = row.i64(1)?;
            let seq_bound = seq_bound(last_seq);
            let kept;
            let (b, refused) = if b.events.iter().all(|e| e.seq <= seq_bound) {
                (b, 0)
            } else {
                let mut k = b.clone();
                k.events.retain(|e| e.seq <= seq_bound);
                let refused = (b.events.len() - k.events.len()) as u64;
                kept = k;
                (&kept, refused)
            };
            let (inserted, redacted, codes_cross_store) = insert_events(tx, b, now_ms)?;
            let duplicates = b.events.len() as u64 - inserted;
            let max_seq = b.events.last().map_or(0, |e| e.seq);
            let high_water = tx
                .query_one(
                    &sql::ADD_BATCH_COUNTS,
                    params![&b.gateway_id, max_seq, inserted, duplicates, b.outbox],
                )?
                .u64(0)?;
            let welcome = match &b.hello {
                Some(h) => Some(welcome(tx, &b.gateway_id, h, now_ms)?),
                None => None,
            };
            ItemOutcome::Batch(BatchOutcome {
                inserted,
                duplicates,
                redacted,
                high_water,
                welcome,
                refused,
                seq_bound,
                codes_cross_store,
            })
        }
        IngestItem::Status {
            gateway_id,
            store_id,
            online,
            signed,
        } => {
            let row = tx.query_one(
                &sql::UPSERT_GATEWAY_SEEN,
                params![gateway_id, store_id, now_ms, i64::from(*signed)],
            )?;
            if !admitted(*signed, row.bool(0)?) {
                return Ok(ItemOutcome::Unsigned);
            }
            tx.execute(&sql::SET_GATEWAY_ONLINE, params![gateway_id, *online])?;
            ItemOutcome::Status
        }
        IngestItem::Bad { gateway_id } => {
            tx.execute(&sql::ADD_BAD_PAYLOAD, params![gateway_id])?;
            ItemOutcome::Bad
        }
    })
}

/// The highest sequence number a batch may store for a gateway whose last is `last_seq`.
fn seq_bound(last_seq: i64) -> i64 {
    let bound = u64::try_from(last_seq.max(0))
        .unwrap_or(0)
        .saturating_add(MAX_SEQ_JUMP)
        .min(SEQ_LIMIT);
    i64::try_from(bound).unwrap_or(i64::MAX)
}

/// Writes a batch's events in a few multi-row statements ([`super::bulk`]) and applies the
/// facts of those stored for the first time, in order. Returns (inserted, redacted, member
/// codes first used at another store).
///
/// The event a gateway's process sends first.
const GATEWAY_STARTED: &str = "gateway_started";

/// An opted-out member's event keeps its number (no gap at head office) but nothing of what it
/// said, and makes no visit.
fn insert_events(
    tx: &mut Tx<'_>,
    b: &IngestBatch,
    now_ms: i64,
) -> Result<(u64, u64, u64), StoreError> {
    let members: Vec<Value> = b
        .events
        .iter()
        .filter_map(|e| e.presence.as_ref().map(|f| f.member_id()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(Value::from)
        .collect();
    let mut opted_out = HashSet::new();
    if !members.is_empty() {
        bulk::for_each(tx, &sql::SELECT_OPTED_OUT, &members, |r| {
            opted_out.insert(r.string(0)?);
            Ok(())
        })?;
        opted_out.extend(erased_among(tx, &members)?);
    }
    let is_opted_out = |e: &StoredEvent| {
        e.presence
            .as_ref()
            .is_some_and(|f| opted_out.contains(f.member_id()))
    };

    let mut rows = Vec::with_capacity(b.events.len() * sql::INSERT_EVENTS.width);
    for e in &b.events {
        let (kind, body) = if is_opted_out(e) {
            (REDACTED_KIND, "{}")
        } else {
            (e.kind, e.body_json.as_str())
        };
        rows.extend([
            Value::from(&b.gateway_id),
            Value::from(e.seq),
            Value::from(&b.store_id),
            Value::from(e.at_ms),
            Value::from(kind),
            Value::from(body),
            Value::from(now_ms),
        ]);
    }
    let mut new = HashSet::with_capacity(b.events.len());
    bulk::for_each(tx, &sql::INSERT_EVENTS, &rows, |r| {
        new.insert(r.i64(0)?);
        Ok(())
    })?;
    let inserted = new.len() as u64;

    let mut redacted = 0u64;
    let mut cross_store = 0u64;
    let mut facts = Vec::new();
    for e in &b.events {
        // `remove`: a sequence number twice in one batch is stored, and applied, once.
        if !new.remove(&e.seq) {
            continue;
        }
        if e.kind == GATEWAY_STARTED {
            // A new process: what its predecessor had open ended with it (a crash, a power
            // cut, a SIGKILL never sends departures). Facts before this point come first.
            visits::apply_all(tx, &b.store_id, &b.gateway_id, &facts)?;
            facts.clear();
            visits::end_open(tx, &b.store_id, &b.gateway_id, e.at_ms)?;
        }
        if is_opted_out(e) {
            redacted += 1;
        } else if let Some(f) = &e.presence {
            facts.push((f, e.at_ms));
        }
        if let Some(code) = e.code_use.as_deref().filter(|_| !is_opted_out(e)) {
            cross_store += u64::from(crate::devices::uses::record(
                tx,
                code,
                &b.store_id,
                &b.gateway_id,
                e.at_ms,
                now_ms,
            )?);
        }
        if let Some(r) = &e.shed {
            tx.execute(
                &sql::INSERT_SHED_RANGE,
                params![
                    &b.gateway_id,
                    e.seq,
                    r.first_seq,
                    r.last_seq,
                    r.count,
                    &r.kinds_json
                ],
            )?;
        }
    }
    visits::apply_all(tx, &b.store_id, &b.gateway_id, &facts)?;
    Ok((inserted, redacted, cross_store))
}

/// Of `members` (text values), those erased and not imported again since: a gateway that had not
/// yet heard of an erasure may still send their events.
fn erased_among(tx: &mut Tx<'_>, members: &[Value]) -> Result<Vec<String>, StoreError> {
    let by_hash: std::collections::HashMap<String, &str> = members
        .iter()
        .filter_map(|v| match v {
            Value::Text(id) => Some((crate::privacy::member_hash(id), id.as_str())),
            _ => None,
        })
        .collect();
    let hashes: Vec<Value> = by_hash.keys().map(Value::from).collect();
    let mut erased = Vec::new();
    bulk::for_each(tx, &sql::SELECT_ERASED, &hashes, |r| {
        if let Some(id) = by_hash.get(r.str(0)?) {
            erased.push(Value::from(*id));
        }
        Ok(())
    })?;
    if erased.is_empty() {
        return Ok(Vec::new());
    }
    let mut held = HashSet::new();
    bulk::for_each(tx, &sql::SELECT_HELD, &erased, |r| {
        held.insert(r.string(0)?);
        Ok(())
    })?;
    Ok(erased
        .into_iter()
        .filter_map(|v| match v {
            Value::Text(id) if !held.contains(&id) => Some(id),
            _ => None,
        })
        .collect())
}

/// Records the hello's boots on first mention (floor = the gateway's mark now) and answers with
/// every named boot's floor. The gateway row exists: the caller upserted it.
fn welcome(
    tx: &mut Tx<'_>,
    gateway_id: &str,
    hello: &HelloItem,
    now_ms: i64,
) -> Result<Welcome, StoreError> {
    let mut floors = Vec::with_capacity(hello.boots.len() + 1);
    for &boot in std::iter::once(&hello.boot).chain(&hello.boots) {
        tx.execute(&sql::INSERT_BOOT, params![gateway_id, boot, now_ms])?;
        let floor = tx
            .query_opt(&sql::SELECT_BOOT_FLOOR, params![gateway_id, boot])?
            .map(|r| r.u64(0))
            .transpose()?
            .unwrap_or(0);
        floors.push(BootFloor {
            boot: boot.max(0) as u64,
            floor,
        });
    }
    Ok(Welcome {
        boot: hello.boot.max(0) as u64,
        floors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{queries, testing::each_backend};

    fn batch(gw: &str, seqs: &[i64]) -> IngestItem {
        IngestItem::Batch(IngestBatch {
            gateway_id: gw.into(),
            store_id: "s1".into(),
            events: seqs
                .iter()
                .map(|&seq| StoredEvent {
                    seq,
                    at_ms: 1,
                    kind: "footfall",
                    body_json: "{}".into(),
                    shed: None,
                    presence: None,
                    code_use: None,
                })
                .collect(),
            hello: None,
            signed: false,
            unreadable: 0,
            outbox: None,
        })
    }

    fn sealed(mut item: IngestItem) -> IngestItem {
        match &mut item {
            IngestItem::Batch(b) => b.signed = true,
            IngestItem::Status { signed, .. } => *signed = true,
            IngestItem::Bad { .. } => {}
        }
        item
    }

    fn status(gw: &str, store: &str, online: bool) -> IngestItem {
        IngestItem::Status {
            gateway_id: gw.into(),
            store_id: store.into(),
            online,
            signed: false,
        }
    }

    #[test]
    fn once_a_gateway_seals_its_plain_messages_change_nothing() {
        each_backend(|c| {
            // A gateway of an older release, plain: accepted as before.
            let o = ingest(c, &[batch("old", &[1]), status("old", "s1", true)], 10).unwrap();
            assert!(matches!(o[0], ItemOutcome::Batch(_)));
            assert!(matches!(o[1], ItemOutcome::Status));
            // A gateway that seals; then plain messages in its name: a forgery or a downgrade.
            let o = ingest(
                c,
                &[sealed(batch("g1", &[1])), sealed(status("g1", "s1", true))],
                20,
            )
            .unwrap();
            assert!(matches!(o[0], ItemOutcome::Batch(_)));
            let o = ingest(c, &[batch("g1", &[2, 3]), status("g1", "s9", false)], 30).unwrap();
            assert_eq!(o, [ItemOutcome::Unsigned, ItemOutcome::Unsigned]);
            let gws = queries::gateways(c, 10).unwrap();
            let g1 = gws.iter().find(|g| g.id == "g1").unwrap();
            assert_eq!((g1.store.as_str(), g1.online, g1.last_seq), ("s1", true, 1));
            assert_eq!(g1.events_received, 1);
        });
    }

    #[test]
    fn a_resent_batch_counts_duplicates_and_keeps_the_high_water() {
        each_backend(|c| {
            let first = ingest(c, &[batch("g1", &[1, 2, 3])], 10).unwrap();
            assert_eq!(
                first,
                [ItemOutcome::Batch(BatchOutcome {
                    inserted: 3,
                    duplicates: 0,
                    redacted: 0,
                    high_water: 3,
                    welcome: None,
                    refused: 0,
                    seq_bound: MAX_SEQ_JUMP as i64,
                    codes_cross_store: 0,
                })]
            );
            let again = ingest(c, &[batch("g1", &[2, 3, 4])], 11).unwrap();
            assert_eq!(
                again,
                [ItemOutcome::Batch(BatchOutcome {
                    inserted: 1,
                    duplicates: 2,
                    redacted: 0,
                    high_water: 4,
                    welcome: None,
                    refused: 0,
                    seq_bound: 3 + MAX_SEQ_JUMP as i64,
                    codes_cross_store: 0,
                })]
            );
            let old = ingest(c, &[batch("g1", &[1])], 12).unwrap();
            assert_eq!(
                old,
                [ItemOutcome::Batch(BatchOutcome {
                    inserted: 0,
                    duplicates: 1,
                    redacted: 0,
                    high_water: 4,
                    welcome: None,
                    refused: 0,
                    seq_bound: 4 + MAX_SEQ_JUMP as i64,
                    codes_cross_store: 0,
                })]
            );
            let gws = queries::gateways(c, 10).unwrap();
            assert_eq!(gws[0].events_received, 4);
            assert_eq!(gws[0].duplicates_dropped, 3);
            // Only status messages move `online`: a batch may be a redelivery from long ago.
            assert!(!gws[0].online);
        });
    }

    #[test]
    fn numbers_jumping_too_far_are_refused_and_the_mark_stays_in_reach() {
        let j = MAX_SEQ_JUMP as i64;
        each_backend(|c| {
            ingest(c, &[batch("g1", &[1, 2])], 1).unwrap();
            // A forged batch: one plausible number, one that would raise the mark towards 2^62.
            let out = ingest(c, &[batch("g1", &[3, 1 << 61])], 2).unwrap();
            let [ItemOutcome::Batch(o)] = out.as_slice() else {
                panic!("{out:?}")
            };
            assert_eq!((o.inserted, o.refused, o.high_water), (1, 1, 3));
            assert_eq!(o.seq_bound, 2 + j);
            // Right at the bound is taken (a rolled-back gateway catching up), one beyond is not.
            let out = ingest(c, &[batch("g1", &[3 + j, 4 + 2 * j])], 3).unwrap();
            let [ItemOutcome::Batch(o)] = out.as_slice() else {
                panic!("{out:?}")
            };
            assert_eq!(
                (o.inserted, o.refused, o.high_water),
                (1, 1, (3 + j) as u64)
            );
            let gws = queries::gateways(c, 10).unwrap();
            assert_eq!(gws[0].last_seq, (3 + j) as u64);
            assert_eq!(
                gws[0].events_received, 4,
                "refused events are not counted as received"
            );
            // A new gateway may start anywhere below the bound, not above it.
            let out = ingest(c, &[batch("g2", &[j + 1])], 4).unwrap();
            let [ItemOutcome::Batch(o)] = out.as_slice() else {
                panic!("{out:?}")
            };
            assert_eq!((o.inserted, o.refused, o.high_water), (0, 1, 0));
        });
    }

    #[test]
    fn gaps_are_the_missing_ranges_below_the_last_sequence_number() {
        each_backend(|c| {
            ingest(c, &[batch("g1", &[3, 4, 7, 10])], 1).unwrap();
            let gws = queries::gateways(c, 10).unwrap();
            let gaps: Vec<_> = gws[0].gaps.iter().map(|g| (g.first, g.last)).collect();
            assert_eq!(gaps, [(1, 2), (5, 6), (8, 9)]);
            assert_eq!(gws[0].last_seq, 10);
        });
    }

    #[test]
    fn status_sets_online_and_bad_payloads_count_only_for_known_gateways() {
        each_backend(|c| {
            let items = [
                IngestItem::Status {
                    gateway_id: "g1".into(),
                    store_id: "s1".into(),
                    online: false,
                    signed: false,
                },
                IngestItem::Bad {
                    gateway_id: "g1".into(),
                },
                IngestItem::Bad {
                    gateway_id: "stranger".into(),
                },
            ];
            ingest(c, &items, 1).unwrap();
            let gws = queries::gateways(c, 10).unwrap();
            assert_eq!(gws.len(), 1, "a bad payload does not create a gateway");
            assert!(!gws[0].online);
            assert_eq!(gws[0].bad_payloads, 1);
        });
    }

    #[test]
    fn outcomes_come_back_in_the_order_of_the_items() {
        each_backend(|c| {
            let out = ingest(
                c,
                &[
                    batch("g2", &[1]),
                    batch("g1", &[1, 2]),
                    batch("g2", &[2, 3]),
                ],
                1,
            )
            .unwrap();
            let marks: Vec<(u64, u64)> = out
                .iter()
                .map(|o| match o {
                    ItemOutcome::Batch(b) => (b.inserted, b.high_water),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(marks, [(1, 1), (2, 2), (2, 3)]);
        });
    }

    /// Two instances of a shared head office commit groups naming the same gateways in opposite
    /// orders, at once: without a common locking order PostgreSQL aborts one as a deadlock.
    #[test]
    fn concurrent_instances_with_overlapping_groups_do_not_deadlock() {
        let schema = crate::store::testing::PgSchema::new();
        let run = |reverse: bool| {
            let loc = schema.location();
            std::thread::spawn(move || {
                let mut db = loc.connect().unwrap();
                for round in 0..40i64 {
                    let mut group: Vec<IngestItem> = (0..8)
                        .map(|g| batch(&format!("g{g}"), &[round * 2 + 1 + i64::from(reverse)]))
                        .collect();
                    if reverse {
                        group.reverse();
                    }
                    ingest(&mut db, &group, round).unwrap();
                }
            })
        };
        let (a, b) = (run(false), run(true));
        a.join().unwrap();
        b.join().unwrap();
        let mut db = schema.location().connect().unwrap();
        let gws = queries::gateways(&mut db, 10).unwrap();
        assert_eq!(gws.len(), 8);
        for g in gws {
            assert_eq!(
                (g.last_seq, g.events_received, g.gaps.len()),
                (80, 80, 0),
                "{}",
                g.id
            );
        }
    }
}
