//! Events older than `[privacy] events_days` are deleted.
//!
//! Per gateway, oldest first by sequence number (the primary key, so no index on time is
//! needed and ingest pays nothing for retention): the sweep deletes the leading run of events
//! received before the cutoff, [`CHUNK`] per transaction, and stops at the first younger one.
//! Numbers rise with time at a gateway, so what it leaves is at most a few old events behind a
//! younger one with a lower number (a re-sent event after an outbox rollback), which go on the
//! next sweep after it. Runs hourly, on the instance holding the `once-only` lease.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    cluster::lease::LeaseHandle,
    metrics::Metrics,
    params,
    store::{
        Store, StoreError,
        db::{Db, Sql},
    },
};

/// Events deleted per transaction.
pub const CHUNK: i64 = 5_000;
/// How often the sweep runs.
pub const EVERY: Duration = Duration::from_secs(3_600);
const DAY_MS: i64 = 86_400_000;

const GATEWAYS: Sql = Sql::same("SELECT DISTINCT gateway_id FROM events");
/// The gateway's lowest-numbered events, with when they arrived: a walk along the primary key.
const OLDEST: Sql =
    Sql::same("SELECT seq, received_at_ms FROM events WHERE gateway_id = ?1 ORDER BY seq LIMIT ?2");
const DELETE_UP_TO: Sql =
    Sql::same("DELETE FROM events WHERE gateway_id = ?1 AND seq <= ?2 AND received_at_ms < ?3");
const RAISE_RETAINED_FROM: Sql =
    Sql::same("UPDATE gateways SET retained_from = ?2 WHERE id = ?1 AND retained_from < ?2");

/// Deletes events received before `cutoff_ms`; returns how many.
pub fn sweep(db: &mut Db, cutoff_ms: i64) -> Result<u64, StoreError> {
    let gateways: Vec<String> = {
        let mut tx = db.read_transaction()?;
        let rows = tx.query(&GATEWAYS, params![])?;
        tx.commit()?;
        rows.into_iter()
            .map(|r| r.string(0))
            .collect::<Result<_, _>>()?
    };
    let mut deleted = 0;
    for gateway in gateways {
        loop {
            let mut tx = db.transaction()?;
            let rows = tx.query(&OLDEST, params![&gateway, CHUNK])?;
            // The leading run of old events: up to the first young one.
            let mut last_old = None;
            for r in &rows {
                if r.i64(1)? >= cutoff_ms {
                    break;
                }
                last_old = Some(r.i64(0)?);
            }
            let Some(up_to) = last_old else {
                tx.commit()?;
                break;
            };
            let n = tx.execute(&DELETE_UP_TO, params![&gateway, up_to, cutoff_ms])?;
            // In the same transaction: the numbers just deleted must never read as gaps.
            tx.execute(&RAISE_RETAINED_FROM, params![&gateway, up_to])?;
            tx.commit()?;
            deleted += n;
            if (rows.len() as i64) < CHUNK || n < CHUNK as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Sweeps every [`EVERY`] (the first time at start) while `lease` is held, until `cancel`.
pub async fn run(
    store: Store,
    events_days: u32,
    metrics: Metrics,
    mut lease: LeaseHandle,
    cancel: CancellationToken,
) {
    if events_days == 0 {
        return;
    }
    loop {
        if !lease.is_held() {
            tokio::select! {
                () = cancel.cancelled() => return,
                held = lease.held() => if !held { return },
            }
        }
        let cutoff = crate::now_ms() - i64::from(events_days) * DAY_MS;
        match store.call(move |db| sweep(db, cutoff)).await {
            Ok(n) => {
                metrics.events_expired.inc_by(n);
                if n > 0 {
                    tracing::info!(deleted = n, events_days, "events past retention deleted");
                }
            }
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retried next hour"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{queries, testing::each_backend};

    const INSERT_EVENT: Sql = Sql::same(
        "INSERT INTO events (gateway_id, seq, store_id, at_ms, type, body_json, received_at_ms)
        VALUES (?1, ?2, 's1', ?3, 'arrive', '{}', ?3)",
    );
    const INSERT_GATEWAY: Sql =
        Sql::same("INSERT INTO gateways (id, store, last_seq) VALUES (?1, 's1', ?2)");

    fn seqs(db: &mut Db, gateway: &str) -> Vec<i64> {
        db.query(
            &Sql::same("SELECT seq FROM events WHERE gateway_id = ?1 ORDER BY seq"),
            params![gateway],
        )
        .unwrap()
        .iter()
        .map(|r| r.i64(0).unwrap())
        .collect()
    }

    #[test]
    fn old_events_go_oldest_first_and_leave_no_gaps_behind() {
        each_backend(|db| {
            let day = DAY_MS;
            // gw-a: 1..=6000 old (over two chunks), then 6001..=6003 young, with a hole at
            // 6002 that is a real gap. gw-b: all young.
            db.execute(&INSERT_GATEWAY, params!["gw-a", 6_003]).unwrap();
            db.execute(&INSERT_GATEWAY, params!["gw-b", 2]).unwrap();
            let mut tx = db.transaction().unwrap();
            for seq in 1..=6_000 {
                tx.execute(&INSERT_EVENT, params!["gw-a", seq, 10 * day + seq])
                    .unwrap();
            }
            for seq in [6_001, 6_003] {
                tx.execute(&INSERT_EVENT, params!["gw-a", seq, 500 * day])
                    .unwrap();
            }
            for seq in [1, 2] {
                tx.execute(&INSERT_EVENT, params!["gw-b", seq, 500 * day])
                    .unwrap();
            }
            // An old straggler behind a younger number stays until a later sweep.
            tx.execute(&INSERT_EVENT, params!["gw-b", 3, day]).unwrap();
            tx.commit().unwrap();

            let deleted = sweep(db, 100 * day).unwrap();
            assert_eq!(deleted, 6_000);
            assert_eq!(seqs(db, "gw-a"), [6_001, 6_003]);
            assert_eq!(seqs(db, "gw-b"), [1, 2, 3]);
            let gws = queries::gateways(db, 10).unwrap();
            let a = gws.iter().find(|g| g.id == "gw-a").unwrap();
            assert_eq!(a.retained_from, 6_000);
            let gaps: Vec<(u64, u64)> = a.gaps.iter().map(|g| (g.first, g.last)).collect();
            assert_eq!(gaps, [(6_002, 6_002)], "only the real gap is listed");
            // Nothing more to do: a second sweep deletes nothing.
            assert_eq!(sweep(db, 100 * day).unwrap(), 0);
        });
    }
}
