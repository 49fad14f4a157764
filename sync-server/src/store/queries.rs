//! Read-only views for the HTTP API and metrics.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{StoreError, sql};

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

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// Every gateway with at most `max_gaps` gap ranges each.
pub fn gateways(conn: &Connection, max_gaps: usize) -> Result<Vec<GatewayRow>, StoreError> {
    let mut stmt = conn.prepare_cached(sql::SELECT_GATEWAYS)?;
    let mut rows: Vec<GatewayRow> = stmt
        .query_map([], |r| {
            Ok(GatewayRow {
                id: r.get(0)?,
                store: r.get(1)?,
                online: r.get(2)?,
                last_seq: u(r.get(3)?),
                events_received: u(r.get(4)?),
                duplicates_dropped: u(r.get(5)?),
                bad_payloads: u(r.get(6)?),
                last_seen_ms: r.get(7)?,
                gaps: Vec::new(),
                shed: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut gaps = conn.prepare_cached(sql::SELECT_GAPS)?;
    let mut shed = conn.prepare_cached(sql::SELECT_SHED_RANGES)?;
    let mut stored = conn.prepare_cached(sql::COUNT_STORED_IN_RANGE)?;
    for row in &mut rows {
        row.shed = shed
            .query_map(params![row.id], |r| {
                let kinds: String = r.get(3)?;
                Ok(ShedRange {
                    first: u(r.get(0)?),
                    last: u(r.get(1)?),
                    count: u(r.get(2)?),
                    kinds: serde_json::from_str(&kinds).unwrap_or_default(),
                })
            })?
            .collect::<Result<_, _>>()?;
        // A shed range explains its missing numbers only if no more are missing than it shed;
        // otherwise something else is lost in it too and its gaps stay listed.
        let mut explained = Vec::new();
        for r in &row.shed {
            let held: i64 = stored.query_row(
                params![row.id, r.first as i64, r.last.min(row.last_seq) as i64],
                |x| x.get(0),
            )?;
            let span = r.last.min(row.last_seq).saturating_sub(r.first) + 1;
            if span.saturating_sub(u(held)) <= r.count {
                explained.push((r.first, r.last));
            }
        }
        // No LIMIT in SQL: explained gaps do not count towards `max_gaps`.
        let mut found = gaps.query(params![row.id, i64::MAX])?;
        while row.gaps.len() < max_gaps
            && let Some(r) = found.next()?
        {
            let gap = GapRange {
                first: u(r.get(0)?),
                last: u(r.get(1)?),
            };
            for piece in unexplained(gap, &explained) {
                if row.gaps.len() < max_gaps {
                    row.gaps.push(piece);
                }
            }
        }
    }
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
    conn: &Connection,
    gateway: &str,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<EventRow>, StoreError> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(sql::SELECT_EVENTS_AFTER)?;
    let rows = stmt
        .query_map(params![gateway, after, i64::from(limit)], |r| {
            let body: String = r.get(5)?;
            Ok((
                EventRow {
                    gateway_id: r.get(0)?,
                    seq: u(r.get(1)?),
                    store_id: r.get(2)?,
                    at_ms: r.get(3)?,
                    kind: r.get(4)?,
                    body: serde_json::Value::Null,
                    received_at_ms: r.get(6)?,
                },
                body,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(mut row, body)| {
            row.body = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", row.seq)))?;
            Ok(row)
        })
        .collect()
}

/// Stores that have at least one known gateway.
pub fn stores(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql::SELECT_STORES)?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    let (gateways_known, gateways_online) =
        conn.query_row(sql::COUNT_GATEWAYS, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let members = conn.query_row(sql::COUNT_MEMBERS, [], |r| r.get(0))?;
    let member_set_version = super::members::version(conn)? as i64;
    let (numbered, received): (i64, i64) = conn.query_row(sql::SUM_SEQ_AND_RECEIVED, [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let events_shed: i64 = conn.query_row(sql::SUM_SHED, [], |r| r.get(0))?;
    Ok(Counts {
        gateways_known,
        gateways_online,
        members,
        member_set_version,
        events_missing: (numbered - received - events_shed).max(0),
        events_shed,
    })
}

/// One rule's line in `GET /api/rules/report`: how its clerk alerts ended. Each count is of
/// distinct alerts, so a step a gateway sent twice counts once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// Alert lifecycle events grouped by rule, optionally for one store. Kept beside its only caller
/// rather than in `sql.rs` (another owner's file at the time); it reads, never writes.
const SELECT_RULES_REPORT: &str = "SELECT json_extract(body_json, '$.rule') AS rule,
    COUNT(DISTINCT CASE WHEN type = 'alert_raised' THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_taken' THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND json_extract(body_json, '$.outcome') = 'purchased'
        THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND json_extract(body_json, '$.outcome') = 'no_sale'
        THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND json_extract(body_json, '$.outcome') = 'not_found'
        THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_dismissed' THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_expired' THEN json_extract(body_json, '$.alert_id') END)
    FROM events
    WHERE type IN ('alert_raised', 'alert_taken', 'alert_outcome', 'alert_dismissed', 'alert_expired')
      AND (?1 IS NULL OR store_id = ?1)
    GROUP BY rule
    HAVING rule IS NOT NULL
    ORDER BY rule";

/// Per rule: raised, taken, converted, and the other endings (all stores, or `store`'s).
pub fn rules_report(
    conn: &Connection,
    store: Option<&str>,
) -> Result<Vec<RuleReportRow>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_RULES_REPORT)?;
    let rows = stmt
        .query_map(params![store], |r| {
            Ok(RuleReportRow {
                rule: r.get(0)?,
                raised: u(r.get(1)?),
                taken: u(r.get(2)?),
                converted: u(r.get(3)?),
                no_sale: u(r.get(4)?),
                not_found: u(r.get(5)?),
                dismissed: u(r.get(6)?),
                expired: u(r.get(7)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
