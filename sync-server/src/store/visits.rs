//! Visits: presence facts folded into one row per visit (store, visit id), visit counts per
//! member and day, and each member's last visit per store (the member-set policy's "visited in
//! the last N days"), in ingest's transaction.
//!
//! In: a [`PresenceFact`] of an event stored for the first time (a redelivered event is not
//! applied twice: ingest calls this only for new rows). Out: `visits`, `member_days.visits`,
//! `member_stores`, and the member marked for recomputation. A departure whose arrival was shed
//! by the gateway's outbox still makes a visit, dated back by its dwell.

use super::{StoreError, db::Sql, db::Tx, purchases::day_of};
use crate::{ingest::visits::PresenceFact, params};

const INSERT_VISIT: Sql = Sql::same(
    "INSERT INTO visits (store_id, visit_id, gateway_id, member_id, arrived_ms, zones_json)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT DO NOTHING",
);
const END_VISIT: Sql = Sql::same(
    "UPDATE visits SET departed_ms = ?3, dwell_s = ?4, zones_json = ?5
    WHERE store_id = ?1 AND visit_id = ?2",
);
const ADD_ALERT: Sql = Sql::same(
    "UPDATE visits SET alerts = alerts + 1 WHERE store_id = ?1 AND visit_id = (
        SELECT visit_id FROM visits WHERE store_id = ?1 AND member_id = ?2
        AND departed_ms IS NULL ORDER BY arrived_ms DESC LIMIT 1)",
);
const ADD_VISIT_DAY: Sql = Sql::same(
    "INSERT INTO member_days (member_id, day, visits) VALUES (?1, ?2, 1)
    ON CONFLICT(member_id, day) DO UPDATE SET visits = member_days.visits + 1",
);
const SEEN_AT_STORE: Sql = Sql::same(
    "INSERT INTO member_stores (member_id, store_id, last_day) VALUES (?1, ?2, ?3)
    ON CONFLICT(member_id, store_id) DO UPDATE SET last_day =
        CASE WHEN excluded.last_day > member_stores.last_day
            THEN excluded.last_day ELSE member_stores.last_day END",
);
const MARK_DIRTY: Sql = Sql::same("UPDATE members SET dirty = dirty + 1 WHERE member_id = ?1");
const SELECT_PRESENCE: Sql = Sql::same("SELECT presence FROM members WHERE member_id = ?1");

/// Whether head office holds the member and they have not consented to presence: their events
/// are not kept. A member head office does not know (imported at the gateway only) is kept.
pub fn opted_out(tx: &mut Tx<'_>, member_id: &str) -> Result<bool, StoreError> {
    Ok(match tx.query_opt(&SELECT_PRESENCE, params![member_id])? {
        Some(r) => !r.bool(0)?,
        None => false,
    })
}

/// Applies a new event's fact.
pub fn apply(
    tx: &mut Tx<'_>,
    store_id: &str,
    gateway_id: &str,
    fact: &PresenceFact,
    at_ms: i64,
) -> Result<(), StoreError> {
    match fact {
        PresenceFact::Arrive {
            member_id,
            visit_id,
            zone,
        } => {
            let zones = serde_json::to_string(&[zone]).unwrap_or_else(|_| "[]".into());
            let new = tx.execute(
                &INSERT_VISIT,
                params![store_id, visit_id, gateway_id, member_id, at_ms, zones],
            )?;
            if new > 0 {
                counted_visit(tx, store_id, member_id, at_ms)?;
            }
        }
        PresenceFact::Depart {
            member_id,
            visit_id,
            dwell_s,
            zones,
        } => {
            let dwell_ms = i64::try_from(dwell_s.saturating_mul(1000)).unwrap_or(i64::MAX);
            let arrived = at_ms.saturating_sub(dwell_ms);
            let zones_json = serde_json::to_string(zones).unwrap_or_else(|_| "[]".into());
            let new = tx.execute(
                &INSERT_VISIT,
                params![
                    store_id,
                    visit_id,
                    gateway_id,
                    member_id,
                    arrived,
                    &zones_json
                ],
            )?;
            if new > 0 {
                counted_visit(tx, store_id, member_id, arrived)?;
            }
            tx.execute(
                &END_VISIT,
                params![store_id, visit_id, at_ms, *dwell_s, zones_json],
            )?;
        }
        PresenceFact::AlertRaised { member_id } => {
            tx.execute(&ADD_ALERT, params![store_id, member_id])?;
        }
        PresenceFact::Seen { .. } | PresenceFact::QrScanned { .. } => {}
    }
    Ok(())
}

fn counted_visit(
    tx: &mut Tx<'_>,
    store_id: &str,
    member_id: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let day = day_of(at_ms);
    tx.execute(&ADD_VISIT_DAY, params![member_id, day])?;
    tx.execute(&SEEN_AT_STORE, params![member_id, store_id, day])?;
    tx.execute(&MARK_DIRTY, params![member_id])?;
    Ok(())
}
