//! Read-only views for the HTTP API and metrics.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    StoreError,
    db::{Db, Tx},
    sql,
};
use crate::{
    compute::uplift::{GroupCounts, Uplift, uplift},
    params,
};

/// An inclusive range of sequence numbers missing at head office.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapRange {
    pub first: u64,
    pub last: u64,
}

/// One row of `GET /api/gateways`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayRow {
    pub id: String,
    pub store: String,
    pub online: bool,
    /// Highest sequence number ever committed (the acks' high-water mark).
    pub last_seq: u64,
    /// Events stored for the first time.
    pub events_received: u64,
    /// Events received again and dropped.
    pub duplicates_dropped: u64,
    pub bad_payloads: u64,
    pub last_seen_ms: i64,
    /// Events numbered up to this one were deleted as past their retention age (0: none): no
    /// gaps are reported at or below it.
    pub retained_from: u64,
    /// The gateway seals its messages: plain ones in its name are refused.
    pub sealed: bool,
    /// Missing ranges below `last_seq`, lowest first, at most the requested number. Numbers
    /// the gateway reported as shed are not gaps.
    pub gaps: Vec<GapRange>,
    /// Ranges the gateway's outbox shed over its byte quota, lowest first.
    pub shed: Vec<ShedRange>,
}

/// A range a gateway reported shed: `count` events between `first` and `last` (inclusive) were
/// dropped, of the `kinds` named. Missing numbers inside it, up to `count`, are not gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShedRange {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub kinds: Vec<String>,
}

/// One stored event, as `GET /api/events` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub gateway_id: String,
    pub seq: u64,
    pub store_id: String,
    pub at_ms: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub body: serde_json::Value,
    pub received_at_ms: i64,
}

/// Figures behind the gauges refreshed on each `/metrics` scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub gateways_known: i64,
    pub gateways_online: i64,
    pub members: i64,
    pub member_set_version: i64,
    /// Numbers below each gateway's last one that head office does not hold and no shed report
    /// explains, summed over gateways (cheap: from the counters, not a scan).
    pub events_missing: i64,
    /// Events gateways reported shed, summed.
    pub events_shed: i64,
}

/// Every gateway with at most `max_gaps` gap ranges each.
pub fn gateways(db: &mut Db, max_gaps: usize) -> Result<Vec<GatewayRow>, StoreError> {
    let mut tx = db.read_transaction()?;
    let mut rows: Vec<GatewayRow> = tx
        .query(&sql::SELECT_GATEWAYS, params![])?
        .into_iter()
        .map(|r| {
            Ok(GatewayRow {
                id: r.string(0)?,
                store: r.string(1)?,
                online: r.bool(2)?,
                last_seq: r.u64(3)?,
                events_received: r.u64(4)?,
                duplicates_dropped: r.u64(5)?,
                bad_payloads: r.u64(6)?,
                last_seen_ms: r.i64(7)?,
                retained_from: r.u64(8)?,
                sealed: r.bool(9)?,
                gaps: Vec::new(),
                shed: Vec::new(),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    for row in &mut rows {
        row.shed = tx
            .query(&sql::SELECT_SHED_RANGES, params![&row.id])?
            .into_iter()
            .map(|r| {
                Ok(ShedRange {
                    first: r.u64(0)?,
                    last: r.u64(1)?,
                    count: r.u64(2)?,
                    kinds: serde_json::from_str(r.str(3)?).unwrap_or_default(),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        // A shed range explains its missing numbers only if no more are missing than it shed;
        // otherwise something else is lost in it too and its gaps stay listed.
        let mut explained = Vec::new();
        for r in &row.shed {
            // Only the part above what retention deleted can be missing.
            let first = r.first.max(row.retained_from + 1);
            let last = r.last.min(row.last_seq);
            if first > last {
                explained.push((r.first, r.last));
                continue;
            }
            let held = tx
                .query_one(&sql::COUNT_STORED_IN_RANGE, params![&row.id, first, last])?
                .u64(0)?;
            let span = last - first + 1;
            if span.saturating_sub(held) <= r.count {
                explained.push((r.first, r.last));
            }
        }
        // Streamed: explained gaps do not count towards `max_gaps`, so no LIMIT in SQL.
        let mut gaps = Vec::new();
        tx.for_each(
            &sql::SELECT_GAPS,
            params![&row.id, row.retained_from],
            |r| {
                if gaps.len() < max_gaps {
                    let gap = GapRange {
                        first: r.u64(0)?,
                        last: r.u64(1)?,
                    };
                    for piece in unexplained(gap, &explained) {
                        if gaps.len() < max_gaps {
                            gaps.push(piece);
                        }
                    }
                }
                Ok(())
            },
        )?;
        row.gaps = gaps;
    }
    tx.commit()?;
    Ok(rows)
}

/// The parts of `gap` outside every `explained` range.
fn unexplained(gap: GapRange, explained: &[(u64, u64)]) -> Vec<GapRange> {
    let mut pieces = vec![gap];
    for &(first, last) in explained {
        pieces = pieces
            .into_iter()
            .flat_map(|p| {
                let mut out = Vec::new();
                if p.last < first || p.first > last {
                    out.push(p);
                } else {
                    if p.first < first {
                        out.push(GapRange {
                            first: p.first,
                            last: first - 1,
                        });
                    }
                    if p.last > last {
                        out.push(GapRange {
                            first: last + 1,
                            last: p.last,
                        });
                    }
                }
                out
            })
            .collect();
    }
    pieces
}

/// Events of `gateway` with `seq > after_seq`, oldest first, at most `limit`.
pub fn events_after(
    db: &mut Db,
    gateway: &str,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<EventRow>, StoreError> {
    db.query(
        &sql::SELECT_EVENTS_AFTER,
        params![gateway, after_seq, i64::from(limit)],
    )?
    .into_iter()
    .map(|r| {
        let seq = r.u64(1)?;
        Ok(EventRow {
            gateway_id: r.string(0)?,
            seq,
            store_id: r.string(2)?,
            at_ms: r.i64(3)?,
            kind: r.string(4)?,
            body: serde_json::from_str(r.str(5)?)
                .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?,
            received_at_ms: r.i64(6)?,
        })
    })
    .collect()
}

/// Stores that have at least one known gateway.
pub fn stores(db: &mut Db) -> Result<Vec<String>, StoreError> {
    let mut tx = db.read_transaction()?;
    let stores = stores_in(&mut tx)?;
    tx.commit()?;
    Ok(stores)
}

/// [`stores`] inside a caller's transaction.
pub fn stores_in(tx: &mut Tx<'_>) -> Result<Vec<String>, StoreError> {
    tx.query(&sql::SELECT_STORES, params![])?
        .into_iter()
        .map(|r| r.string(0))
        .collect()
}

pub fn counts(db: &mut Db) -> Result<Counts, StoreError> {
    let mut tx = db.read_transaction()?;
    let g = tx.query_one(&sql::COUNT_GATEWAYS, params![])?;
    let members = tx.query_one(&sql::COUNT_MEMBERS, params![])?.i64(0)?;
    let member_set_version = super::members::version_in(&mut tx)? as i64;
    let seqs = tx.query_one(&sql::SUM_SEQ_AND_RECEIVED, params![])?;
    let (numbered, received) = (seqs.i64(0)?, seqs.i64(1)?);
    let events_shed = tx.query_one(&sql::SUM_SHED, params![])?.i64(0)?;
    tx.commit()?;
    Ok(Counts {
        gateways_known: g.i64(0)?,
        gateways_online: g.i64(1)?,
        members,
        member_set_version,
        events_missing: (numbered - received - events_shed).max(0),
        events_shed,
    })
}

/// One rule's line in `GET /api/rules/report`: how its clerk alerts ended. Each count is of
/// distinct alerts, so a step a gateway sent twice counts once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleReportRow {
    pub rule: String,
    pub raised: u64,
    pub taken: u64,
    /// Outcome `purchased`.
    pub converted: u64,
    pub no_sale: u64,
    pub not_found: u64,
    pub dismissed: u64,
    pub expired: u64,
    /// Alerted against held-out members over the report's window, all stores asked for
    /// together; absent for a rule that neither alerted nor held anyone out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutReport>,
    /// The same, per store.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<StoreHoldoutReport>,
}

/// One group of a holdout comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GroupReport {
    /// Eligible occasions: alerts raised, or members held out.
    pub occasions: u64,
    /// Occasions the member followed with a purchase within the window (imported purchases,
    /// at any store).
    pub purchased: u64,
    /// Their revenue, in minor units of the chain's currency.
    pub revenue_minor: i64,
    pub purchase_rate: Option<f64>,
    pub revenue_per_occasion_minor: Option<f64>,
}

impl GroupReport {
    fn new(c: GroupCounts) -> Self {
        Self {
            occasions: c.occasions,
            purchased: c.converted,
            revenue_minor: c.revenue_cents,
            purchase_rate: c.rate(),
            revenue_per_occasion_minor: c.revenue_per_occasion_cents(),
        }
    }
}

/// Alerted against held out, and the difference with its 95 % interval (absent until both
/// groups have an occasion).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HoldoutReport {
    pub window_days: u32,
    pub alerted: GroupReport,
    pub held_out: GroupReport,
    /// Alerts a clerk took.
    pub taken: u64,
    pub uplift: Option<Uplift>,
}

impl HoldoutReport {
    fn new(window_days: u32, alerted: GroupCounts, held_out: GroupCounts, taken: u64) -> Self {
        Self {
            window_days,
            alerted: GroupReport::new(alerted),
            held_out: GroupReport::new(held_out),
            taken,
            uplift: uplift(alerted, held_out),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreHoldoutReport {
    pub store_id: String,
    #[serde(flatten)]
    pub report: HoldoutReport,
}

/// Per rule: raised, taken, converted, and the other endings (all stores, or `store`'s), and
/// the rule's alerted members against its held-out ones over `window_days`.
pub fn rules_report(
    db: &mut Db,
    store: Option<&str>,
    window_days: u32,
) -> Result<Vec<RuleReportRow>, StoreError> {
    let mut rows: BTreeMap<String, RuleReportRow> = BTreeMap::new();
    for r in db.query(&sql::SELECT_RULES_REPORT, params![store])? {
        let rule = r.string(0)?;
        rows.insert(
            rule.clone(),
            RuleReportRow {
                rule,
                raised: r.u64(1)?,
                taken: r.u64(2)?,
                converted: r.u64(3)?,
                no_sale: r.u64(4)?,
                not_found: r.u64(5)?,
                dismissed: r.u64(6)?,
                expired: r.u64(7)?,
                holdout: None,
                stores: Vec::new(),
            },
        );
    }
    let mut taken: HashMap<(String, String), u64> = HashMap::new();
    for r in db.query(&sql::SELECT_TAKEN_BY_STORE, params![store])? {
        taken.insert((r.string(0)?, r.string(1)?), r.u64(2)?);
    }
    // (rule, store) → [alerted, held out]; BTreeMap for a stable order of stores.
    let mut groups: BTreeMap<(String, String), [GroupCounts; 2]> = BTreeMap::new();
    let window_ms = i64::from(window_days) * 86_400_000;
    for r in db.query(&sql::SELECT_HOLDOUT_GROUPS, params![store, window_ms])? {
        let held = usize::from(r.i64(2)? != 0);
        groups.entry((r.string(1)?, r.string(0)?)).or_default()[held] = GroupCounts {
            occasions: r.u64(3)?,
            converted: r.u64(4)?,
            revenue_cents: r.i64(5)?,
        };
    }
    for ((rule, store_id), [alerted, held_out]) in groups {
        let row = rows.entry(rule.clone()).or_insert_with(|| RuleReportRow {
            rule: rule.clone(),
            raised: 0,
            taken: 0,
            converted: 0,
            no_sale: 0,
            not_found: 0,
            dismissed: 0,
            expired: 0,
            holdout: None,
            stores: Vec::new(),
        });
        let taken = taken.get(&(store_id.clone(), rule)).copied().unwrap_or(0);
        row.stores.push(StoreHoldoutReport {
            store_id,
            report: HoldoutReport::new(window_days, alerted, held_out, taken),
        });
    }
    for row in rows.values_mut() {
        if row.stores.is_empty() {
            continue;
        }
        let pooled = |g: fn(&HoldoutReport) -> &GroupReport| {
            row.stores.iter().fold(GroupCounts::default(), |acc, s| {
                let g = g(&s.report);
                GroupCounts {
                    occasions: acc.occasions + g.occasions,
                    converted: acc.converted + g.purchased,
                    revenue_cents: acc.revenue_cents + g.revenue_minor,
                }
            })
        };
        let (alerted, held_out) = (pooled(|r| &r.alerted), pooled(|r| &r.held_out));
        let taken = row.stores.iter().map(|s| s.report.taken).sum();
        row.holdout = Some(HoldoutReport::new(window_days, alerted, held_out, taken));
    }
    Ok(rows.into_values().collect())
}
