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
    /// Missing ranges below `last_seq`, lowest first, at most the requested number.
    pub gaps: Vec<GapRange>,
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
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut gaps = conn.prepare_cached(sql::SELECT_GAPS)?;
    for row in &mut rows {
        row.gaps = gaps
            .query_map(params![row.id, max_gaps as i64], |r| {
                Ok(GapRange {
                    first: u(r.get(0)?),
                    last: u(r.get(1)?),
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(rows)
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
    Ok(Counts {
        gateways_known,
        gateways_online,
        members,
        member_set_version,
    })
}
