//! Visits: presence facts folded into one row per visit (store, visit id), visit counts per
//! member and day, and each member's last visit per store (the member-set policy's "visited in
//! the last N days"), in ingest's transaction.
//!
//! In: a [`PresenceFact`] of an event stored for the first time (a redelivered event is not
//! applied twice: ingest calls this only for new rows). Out: `visits`, `member_days.visits`,
//! `member_stores`, and the member marked for recomputation. A departure whose arrival was shed
//! by the gateway's outbox still makes a visit, dated back by its dwell.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{
    StoreError,
    bulk::{self, Rows},
    db::{Sql, Tx, Value},
    purchases::day_of,
};
use crate::{ingest::visits::PresenceFact, params};

static INSERT_VISITS: Rows = Rows {
    head: "INSERT INTO visits (store_id, visit_id, gateway_id, member_id, arrived_ms, zones_json)
    VALUES",
    width: 6,
    tail: "ON CONFLICT DO NOTHING RETURNING visit_id",
};
static ADD_VISIT_DAYS: Rows = Rows {
    head: "INSERT INTO member_days (member_id, day, visits) VALUES",
    width: 3,
    tail: "ON CONFLICT(member_id, day) DO UPDATE SET visits = member_days.visits + excluded.visits",
};
static SEEN_AT_STORES: Rows = Rows {
    head: "INSERT INTO member_stores (member_id, store_id, last_day) VALUES",
    width: 3,
    tail: "ON CONFLICT(member_id, store_id) DO UPDATE SET last_day =
        CASE WHEN excluded.last_day > member_stores.last_day
            THEN excluded.last_day ELSE member_stores.last_day END",
};
static MARK_DIRTY_ALL: Rows = Rows {
    head: "UPDATE members SET dirty = dirty + 1 WHERE member_id IN (VALUES",
    width: 1,
    tail: ")",
};

const END_VISIT: Sql = Sql::same(
    "UPDATE visits SET departed_ms = ?3, dwell_s = ?4, zones_json = ?5
    WHERE store_id = ?1 AND visit_id = ?2",
);
/// Open visits of a gateway's earlier process: departed at its restart, dwell unknown.
const END_OPEN: Sql = Sql::same(
    "UPDATE visits SET departed_ms = ?3
    WHERE store_id = ?1 AND gateway_id = ?2 AND departed_ms IS NULL AND arrived_ms <= ?3",
);
const ADD_ALERT: Sql = Sql::same(
    "UPDATE visits SET alerts = alerts + 1 WHERE store_id = ?1 AND visit_id = (
        SELECT visit_id FROM visits WHERE store_id = ?1 AND member_id = ?2
        AND departed_ms IS NULL ORDER BY arrived_ms DESC LIMIT 1)",
);
/// Applies the facts of a batch's new events (in sequence order) with as few statements as
/// their order allows: the visits arrivals and departures open are inserted many rows at a
/// time, held back only until a departure or an alert (which read the visits) comes next; then
/// the day counts, last visits and marks of the visits that are new, in one statement each.
/// The result is that of applying the facts one at a time.
pub fn apply_all(
    tx: &mut Tx<'_>,
    store_id: &str,
    gateway_id: &str,
    facts: &[(&PresenceFact, i64)],
) -> Result<(), StoreError> {
    let mut openings = Openings {
        store_id,
        gateway_id,
        all: Vec::new(),
        flushed: 0,
        mentioned: HashSet::new(),
        new: HashSet::new(),
    };
    for &(fact, at_ms) in facts {
        match fact {
            PresenceFact::Arrive {
                member_id,
                visit_id,
                zone,
            } => openings.add(visit_id, member_id, at_ms, || zones_text(&[zone])),
            PresenceFact::Depart {
                member_id,
                visit_id,
                dwell_s,
                zones,
            } => {
                let arrived = departed_arrival(at_ms, *dwell_s);
                let zones_json = zones_text(zones);
                openings.add(visit_id, member_id, arrived, || zones_json.clone());
                openings.flush(tx)?;
                tx.execute(
                    &END_VISIT,
                    params![store_id, visit_id, at_ms, *dwell_s, zones_json],
                )?;
            }
            PresenceFact::AlertRaised { member_id } => {
                openings.flush(tx)?;
                tx.execute(&ADD_ALERT, params![store_id, member_id])?;
            }
            PresenceFact::Seen { .. } | PresenceFact::QrScanned { .. } => {}
        }
    }
    openings.flush(tx)?;
    openings.count_new_visits(tx)
}

/// Ends the visits `gateway_id` still has open at `restart_ms`, when a new process of it
/// started: its previous one sent no departure for them and never will. They keep no dwell
/// (`dwell_s` NULL: the departure is known only to have come before the restart, so the
/// store's mean dwell leaves them out) and stop counting as present. Returns how many.
pub fn end_open(
    tx: &mut Tx<'_>,
    store_id: &str,
    gateway_id: &str,
    restart_ms: i64,
) -> Result<u64, StoreError> {
    let n = tx.execute(&END_OPEN, params![store_id, gateway_id, restart_ms])?;
    if n > 0 {
        tracing::info!(gateway = %gateway_id, visits = n, "open visits ended by the gateway's restart");
    }
    Ok(n)
}

/// The visits a batch's facts open, in order; those before `flushed` are in the database.
struct Openings<'a> {
    store_id: &'a str,
    gateway_id: &'a str,
    /// (visit id, member id, arrived, zones JSON); the first mention of a visit decides its
    /// arrival time and first zones, as it would one fact at a time.
    all: Vec<(&'a str, &'a str, i64, String)>,
    flushed: usize,
    mentioned: HashSet<&'a str>,
    /// Visits the inserts created (the others existed: a redelivery or a second gateway).
    new: HashSet<String>,
}

impl<'a> Openings<'a> {
    fn add(
        &mut self,
        visit_id: &'a str,
        member_id: &'a str,
        arrived: i64,
        zones_json: impl FnOnce() -> String,
    ) {
        if self.mentioned.insert(visit_id) {
            self.all.push((visit_id, member_id, arrived, zones_json()));
        }
    }

    fn flush(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let pending = &self.all[self.flushed..];
        if pending.is_empty() {
            return Ok(());
        }
        let mut values = Vec::with_capacity(pending.len() * INSERT_VISITS.width);
        for (visit_id, member_id, arrived, zones_json) in pending {
            values.extend([
                Value::from(self.store_id),
                Value::from(*visit_id),
                Value::from(self.gateway_id),
                Value::from(*member_id),
                Value::from(*arrived),
                Value::from(zones_json.as_str()),
            ]);
        }
        let new = &mut self.new;
        bulk::for_each(tx, &INSERT_VISITS, &values, |r| {
            new.insert(r.string(0)?);
            Ok(())
        })?;
        self.flushed = self.all.len();
        Ok(())
    }

    /// Day counts, last visit per store and the recompute mark of each new visit's member,
    /// folded per key (one multi-row upsert may not touch a row twice) and sorted, so rows are
    /// locked in the same order in every transaction.
    fn count_new_visits(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let mut days: BTreeMap<(&str, i64), i64> = BTreeMap::new();
        let mut last_day: BTreeMap<&str, i64> = BTreeMap::new();
        let mut dirty: BTreeSet<&str> = BTreeSet::new();
        for (visit_id, member_id, arrived, _) in &self.all {
            if !self.new.contains(*visit_id) {
                continue;
            }
            let day = day_of(*arrived);
            *days.entry((member_id, day)).or_default() += 1;
            let last = last_day.entry(member_id).or_insert(day);
            *last = (*last).max(day);
            dirty.insert(member_id);
        }
        let values: Vec<Value> = days
            .iter()
            .flat_map(|(&(m, day), &n)| [Value::from(m), Value::from(day), Value::from(n)])
            .collect();
        bulk::execute(tx, &ADD_VISIT_DAYS, &values)?;
        let values: Vec<Value> = last_day
            .iter()
            .flat_map(|(&m, &day)| [Value::from(m), Value::from(self.store_id), Value::from(day)])
            .collect();
        bulk::execute(tx, &SEEN_AT_STORES, &values)?;
        let values: Vec<Value> = dirty.iter().map(|&m| Value::from(m)).collect();
        bulk::execute(tx, &MARK_DIRTY_ALL, &values)
    }
}

fn zones_text<T: serde::Serialize>(zones: &[T]) -> String {
    serde_json::to_string(zones).unwrap_or_else(|_| "[]".into())
}

/// A departure whose arrival was never stored is a visit dated back by its dwell.
fn departed_arrival(at_ms: i64, dwell_s: u64) -> i64 {
    let dwell_ms = i64::try_from(dwell_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    at_ms.saturating_sub(dwell_ms)
}

#[cfg(test)]
mod tests {
    use crate::{
        ingest::visits::PresenceFact,
        params,
        store::{
            IngestBatch, IngestItem, StoredEvent,
            db::{Db, Sql},
            ingest::ingest,
            testing::each_backend,
        },
    };

    const DAY: i64 = 86_400_000;

    fn event(seq: i64, at_ms: i64, fact: PresenceFact) -> StoredEvent {
        StoredEvent {
            seq,
            at_ms,
            kind: "presence",
            body_json: "{}".into(),
            shed: None,
            presence: Some(fact),
            code_use: None,
        }
    }
    fn arrive(m: &str, v: &str, zone: &str) -> PresenceFact {
        PresenceFact::Arrive {
            member_id: m.into(),
            visit_id: v.into(),
            zone: zone.into(),
        }
    }
    fn depart(m: &str, v: &str, dwell_s: u64) -> PresenceFact {
        PresenceFact::Depart {
            member_id: m.into(),
            visit_id: v.into(),
            dwell_s,
            zones: vec!["door".into(), "till".into()],
        }
    }
    fn alert(m: &str) -> PresenceFact {
        PresenceFact::AlertRaised {
            member_id: m.into(),
        }
    }
    fn batch(events: Vec<StoredEvent>) -> IngestItem {
        IngestItem::Batch(IngestBatch {
            gateway_id: "g1".into(),
            store_id: "s1".into(),
            hello: None,
            events,
            signed: false,
            unreadable: 0,
            outbox: None,
        })
    }
    type VisitRow = (String, String, i64, Option<i64>, Option<i64>, String, i64);

    fn visits(db: &mut Db) -> Vec<VisitRow> {
        db.query(
            &Sql::same(
                "SELECT visit_id, member_id, arrived_ms, departed_ms, dwell_s, zones_json, alerts
                FROM visits ORDER BY visit_id",
            ),
            params![],
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.string(0).unwrap(),
                r.string(1).unwrap(),
                r.i64(2).unwrap(),
                r.opt_i64(3).unwrap(),
                r.opt_i64(4).unwrap(),
                r.string(5).unwrap(),
                r.i64(6).unwrap(),
            )
        })
        .collect()
    }

    fn triples(db: &mut Db, text: &'static str) -> Vec<(String, i64, i64)> {
        db.query(&Sql::same(text), params![])
            .unwrap()
            .into_iter()
            .map(|r| (r.string(0).unwrap(), r.i64(1).unwrap(), r.i64(2).unwrap()))
            .collect()
    }

    /// One batch with everything a gateway sends about visits, then the same batch again (a
    /// redelivery): visits, day counts and last visits are those of the facts applied once, in
    /// order; the opted-out member makes none.
    #[test]
    fn a_batch_of_facts_makes_each_visit_once_and_counts_it_once() {
        each_backend(|db| {
            db.execute(
                &Sql::same(
                    "INSERT INTO members (member_id, record_json, version, presence, dirty)
                    VALUES (?1, '{}', 1, 1, 0), (?2, '{}', 1, 1, 0), (?3, '{}', 1, 0, 0)",
                ),
                params!["m1", "m2", "optout"],
            )
            .unwrap();
            let day = 20_000;
            let d = day * DAY;
            let events = vec![
                event(1, d + 1_000, arrive("m1", "v1", "door")),
                event(2, d + 2_000, alert("m1")),
                event(3, d + 3_000, arrive("optout", "v9", "door")),
                // A departure whose arrival was shed: a visit dated back by its dwell, to the
                // day before.
                event(4, d + 4_000, depart("m2", "v2", 3_600)),
                event(5, d + 65_000, depart("m1", "v1", 64)),
                // The same member again the next day, still there, with an alert.
                event(6, d + DAY, arrive("m1", "v3", "till")),
                event(7, d + DAY + 1, alert("m1")),
            ];
            let both = r#"["door","till"]"#.to_string();
            for round in 0..2 {
                ingest(db, &[batch(events.clone())], 1).unwrap();
                assert_eq!(
                    visits(db),
                    [
                        (
                            "v1".into(),
                            "m1".into(),
                            d + 1_000,
                            Some(d + 65_000),
                            Some(64),
                            both.clone(),
                            1
                        ),
                        (
                            "v2".into(),
                            "m2".into(),
                            d + 4_000 - 3_600_000,
                            Some(d + 4_000),
                            Some(3_600),
                            both.clone(),
                            0
                        ),
                        (
                            "v3".into(),
                            "m1".into(),
                            d + DAY,
                            None,
                            None,
                            r#"["till"]"#.into(),
                            1
                        ),
                    ],
                    "round {round}"
                );
                assert_eq!(
                    triples(
                        db,
                        "SELECT member_id, day, visits FROM member_days ORDER BY member_id, day"
                    ),
                    [
                        ("m1".into(), day, 1),
                        ("m1".into(), day + 1, 1),
                        ("m2".into(), day - 1, 1),
                    ],
                    "round {round}"
                );
                assert_eq!(
                    triples(
                        db,
                        "SELECT member_id, last_day, dirty FROM member_stores
                        JOIN members USING (member_id) ORDER BY member_id"
                    ),
                    [("m1".into(), day + 1, 1), ("m2".into(), day - 1, 1)],
                    "round {round}"
                );
            }
        });
    }

    fn started(seq: i64, at_ms: i64) -> StoredEvent {
        StoredEvent {
            seq,
            at_ms,
            kind: "gateway_started",
            body_json: "{}".into(),
            shed: None,
            presence: None,
            code_use: None,
        }
    }

    /// A gateway killed with members present sends no departures; its next process's first
    /// event ends them (no dwell), in the order the batch has them, and touches no other
    /// gateway's visits.
    #[test]
    fn a_gateways_restart_ends_the_visits_its_previous_process_left_open() {
        each_backend(|db| {
            db.execute(
                &Sql::same(
                    "INSERT INTO members (member_id, record_json, version, presence, dirty)
                    VALUES (?1, '{}', 1, 1, 0), (?2, '{}', 1, 1, 0)",
                ),
                params!["m1", "m2"],
            )
            .unwrap();
            let d = 20_000 * DAY;
            let mut other = batch(vec![event(1, d + 500, arrive("m2", "w1", "door"))]);
            if let IngestItem::Batch(b) = &mut other {
                b.gateway_id = "g2".into();
            }
            ingest(db, &[other], 1).unwrap();
            // One batch: the old process's arrival, the restart, the new process's arrival.
            let events = vec![
                event(1, d + 1_000, arrive("m1", "v1", "door")),
                started(2, d + 5_000),
                event(3, d + 6_000, arrive("m1", "v2", "door")),
            ];
            ingest(db, &[batch(events.clone())], 1).unwrap();
            let door = r#"["door"]"#.to_string();
            // No dwell on any: v1 ended by the restart, the others still open.
            let row = |v: &str, m: &str, arrived, departed| -> VisitRow {
                (v.into(), m.into(), arrived, departed, None, door.clone(), 0)
            };
            let want = vec![
                row("v1", "m1", d + 1_000, Some(d + 5_000)),
                row("v2", "m1", d + 6_000, None),
                row("w1", "m2", d + 500, None),
            ];
            assert_eq!(visits(db), want);
            // Redelivered: nothing moves (v2 stays open).
            ingest(db, &[batch(events)], 1).unwrap();
            assert_eq!(visits(db), want);
            // The next restart ends v2.
            ingest(db, &[batch(vec![started(4, d + 9_000)])], 1).unwrap();
            assert_eq!(visits(db)[1].3, Some(d + 9_000));
        });
    }
}
