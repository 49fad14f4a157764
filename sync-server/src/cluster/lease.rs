//! A lease in the database, so that work which must run once runs on one instance, and carries
//! on elsewhere when that instance dies.
//!
//! A row `leases(name, holder, expires_ms)`: an instance takes the lease when it is free or
//! expired, and renews it every [`RENEW_EVERY`] for [`TTL`]. Expiry is judged by the database's
//! clock alone, so instances' clocks need not agree. The holder believes it holds the lease only
//! until `TTL - SAFETY` after the start of its last successful renewal, by its own monotonic
//! clock: it stops believing before another instance can take the lease. A clean shutdown
//! releases the lease, so another instance takes over at its next renewal rather than after the
//! TTL.
//!
//! What this does not give: fencing. A holder frozen (SIGSTOP, a VM paused) past the TTL while in
//! the middle of a chunk of work finishes that chunk after another instance took over. The work
//! under the lease tolerates that: compute writes the same fields from the same data, and a
//! repeated `keys` change is harmless.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    params,
    store::{
        Location, StoreError,
        db::{Db, Sql},
    },
};

/// The lease of the once-only work (compute passes, key re-issue).
pub const ONCE_ONLY: &str = "once-only";
/// How long a taken or renewed lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(15);
/// How often the holder renews (and others try to take it).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The holder gives the lease up this long before it could expire at the database (a fifth of
/// the TTL when that is shorter).
const SAFETY: Duration = Duration::from_secs(2);

/// Takes the lease if free, expired or already ours; renews it then. One row is written exactly
/// when the lease is ours for `ttl_ms` from now (database clock).
const TAKE: Sql = Sql::per_backend(
    "INSERT INTO leases (name, holder, expires_ms)
    VALUES (?1, ?2, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + ?3)
    ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
    WHERE leases.holder = excluded.holder
        OR leases.expires_ms < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    "INSERT INTO leases (name, holder, expires_ms)
    VALUES ($1, $2, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3)
    ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
    WHERE leases.holder = excluded.holder
        OR leases.expires_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
);
const RELEASE: Sql = Sql::same("DELETE FROM leases WHERE name = ?1 AND holder = ?2");
const HOLDER: Sql = Sql::per_backend(
    "SELECT holder FROM leases WHERE name = ?1
        AND expires_ms >= CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    "SELECT holder FROM leases WHERE name = $1
        AND expires_ms >= CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
);

/// Takes or renews `name` for `holder`; `true` when it is `holder`'s for `ttl` from now.
pub fn try_take(db: &mut Db, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let mut tx = db.transaction()?;
    let n = tx.execute(&TAKE, params![name, holder, ttl_ms])?;
    tx.commit()?;
    Ok(n == 1)
}

/// Gives `name` up if `holder` holds it.
pub fn release(db: &mut Db, name: &str, holder: &str) -> Result<(), StoreError> {
    let mut tx = db.transaction()?;
    tx.execute(&RELEASE, params![name, holder])?;
    tx.commit()
}

/// Who holds `name` now (an expired lease has no holder).
pub fn holder(db: &mut Db, name: &str) -> Result<Option<String>, StoreError> {
    let mut tx = db.read_transaction()?;
    let h = tx
        .query_opt(&HOLDER, params![name])?
        .map(|r| r.string(0))
        .transpose()?;
    tx.commit()?;
    Ok(h)
}

/// Whether this instance holds the lease now, and a way to wait for that to change. A lone head
/// office holds it always ([`LeaseHandle::always`]).
#[derive(Debug, Clone)]
pub struct LeaseHandle(watch::Receiver<bool>);

impl LeaseHandle {
    /// Held for good: a single instance, no lease in the database.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        drop(tx);
        Self(rx)
    }

    pub fn is_held(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the lease is held; `false` if it never will be (the lease task stopped).
    pub async fn held(&mut self) -> bool {
        self.0.wait_for(|h| *h).await.is_ok()
    }

    /// Waits until the lease is lost or the lease task stops; never returns while it is held for
    /// good.
    pub async fn lost(&mut self) {
        if self.0.wait_for(|h| !*h).await.is_err() && self.is_held() {
            std::future::pending::<()>().await;
        }
    }
}

/// The task that takes, renews and releases a lease.
#[derive(Debug)]
pub struct LeaseTask {
    pub location: Location,
    pub name: &'static str,
    pub holder: String,
    pub ttl: Duration,
    pub renew_every: Duration,
    pub metrics: Metrics,
}

impl LeaseTask {
    /// Starts the task; the handle says whether the lease is held.
    pub fn spawn(self, cancel: CancellationToken) -> (LeaseHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let join = tokio::spawn(self.run(tx, cancel));
        (LeaseHandle(rx), join)
    }

    async fn run(self, held_tx: watch::Sender<bool>, cancel: CancellationToken) {
        let LeaseTask {
            location,
            name,
            holder,
            ttl,
            renew_every,
            metrics,
        } = self;
        let mut db: Option<Db> = None;
        let mut held = false;
        let mut valid_until = tokio::time::Instant::now();
        loop {
            let started = tokio::time::Instant::now();
            let (loc, h) = (location.clone(), holder.clone());
            let job = tokio::task::spawn_blocking(move || {
                let mut conn = match db {
                    Some(c) => c,
                    None => match loc.connect() {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e)),
                    },
                };
                let r = try_take(&mut conn, name, &h, ttl);
                (Some(conn), r)
            });
            let outcome = match job.await {
                Ok((conn, r)) => {
                    // A failed statement may have broken the connection: open a new one next time.
                    db = if r.is_ok() {
                        conn
                    } else {
                        drop_off_runtime(conn)
                    };
                    r
                }
                Err(e) => {
                    tracing::error!(error = %e, lease = name, "lease task failed");
                    db = None;
                    Err(StoreError::Closed)
                }
            };
            let now = tokio::time::Instant::now();
            let was_held = held;
            match outcome {
                Ok(true) => {
                    held = true;
                    valid_until = started + ttl.saturating_sub(SAFETY.min(ttl / 5));
                }
                Ok(false) => held = false,
                Err(e) => {
                    tracing::warn!(error = %e, lease = name, "cannot renew the lease");
                    held = held && now < valid_until;
                }
            }
            if held != was_held {
                if held {
                    metrics.lease_acquired.inc();
                    tracing::info!(lease = name, holder = %holder, "took the lease: this instance runs the once-only work");
                } else {
                    metrics.lease_lost.inc();
                    tracing::warn!(lease = name, holder = %holder, "lost the lease: another instance runs the once-only work");
                }
                held_tx.send_replace(held);
            }
            metrics.lease_held.set(i64::from(held));
            let mut wait = renew_every;
            if held {
                // Wake in time to give the lease up if renewals keep failing.
                wait = wait.min(valid_until.saturating_duration_since(now));
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
        }
        held_tx.send_replace(false);
        metrics.lease_held.set(0);
        if held {
            let h = holder.clone();
            let release_job = tokio::task::spawn_blocking(move || {
                let r = db.as_mut().map(|c| release(c, name, &h));
                drop(db);
                r
            });
            match tokio::time::timeout(Duration::from_secs(3), release_job).await {
                Ok(Ok(Some(Ok(())))) => {
                    tracing::info!(lease = name, "released the lease")
                }
                _ => tracing::warn!(
                    lease = name,
                    "could not release the lease; it expires on its own"
                ),
            }
        } else {
            let _ = tokio::task::spawn_blocking(move || drop(db)).await;
        }
    }
}

/// A PostgreSQL client owns a runtime of its own: it must not be dropped on an async thread.
fn drop_off_runtime(conn: Option<Db>) -> Option<Db> {
    if let Some(c) = conn {
        tokio::task::spawn_blocking(move || drop(c));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    #[test]
    fn one_holder_at_a_time_until_it_expires_or_is_released() {
        each_backend(|db| {
            let long = Duration::from_secs(60);
            assert!(try_take(db, ONCE_ONLY, "a", long).unwrap());
            assert!(!try_take(db, ONCE_ONLY, "b", long).unwrap(), "held by a");
            assert!(try_take(db, ONCE_ONLY, "a", long).unwrap(), "a renews");
            assert_eq!(holder(db, ONCE_ONLY).unwrap().as_deref(), Some("a"));
            // b cannot release what a holds.
            release(db, ONCE_ONLY, "b").unwrap();
            assert_eq!(holder(db, ONCE_ONLY).unwrap().as_deref(), Some("a"));
            release(db, ONCE_ONLY, "a").unwrap();
            assert_eq!(holder(db, ONCE_ONLY).unwrap(), None);
            assert!(try_take(db, ONCE_ONLY, "b", Duration::ZERO).unwrap());
            std::thread::sleep(Duration::from_millis(20));
            // Expired: nobody holds it, and a takes it over.
            assert_eq!(holder(db, ONCE_ONLY).unwrap(), None);
            assert!(try_take(db, ONCE_ONLY, "a", long).unwrap());
            assert!(
                try_take(db, "other-work", "b", long).unwrap(),
                "leases of different names are independent"
            );
        });
    }

    fn task(location: &Location, holder: &str, metrics: &Metrics) -> LeaseTask {
        LeaseTask {
            location: location.clone(),
            name: ONCE_ONLY,
            holder: holder.into(),
            ttl: Duration::from_secs(2),
            renew_every: Duration::from_millis(200),
            metrics: metrics.clone(),
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_moves_on_a_clean_stop_and_after_the_ttl_when_its_holder_vanishes() {
        let schema = crate::store::testing::PgSchema::new();
        let loc = schema.location();
        let metrics: Vec<Metrics> = (0..3).map(|_| Metrics::default()).collect();
        let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let mut handles = Vec::new();
        let mut joins = Vec::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let (h, j) = task(&loc, name, &metrics[i]).spawn(stops[i].clone());
            handles.push(h);
            joins.push(Some(j));
        }
        until("one holder", || handles.iter().any(LeaseHandle::is_held)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let holding: Vec<usize> = (0..2).filter(|&i| handles[i].is_held()).collect();
        assert_eq!(holding.len(), 1, "exactly one holder");
        let (first, second) = (holding[0], 1 - holding[0]);

        // A clean stop releases the row at once, so the other need not wait out the TTL.
        stops[first].cancel();
        joins[first].take().unwrap().await.unwrap();
        assert!(!handles[first].is_held());
        assert_eq!(metrics[first].lease_held.get(), 0);
        let l = loc.clone();
        let left = tokio::task::spawn_blocking(move || {
            let mut db = l.connect().unwrap();
            holder(&mut db, ONCE_ONLY).unwrap()
        })
        .await
        .unwrap();
        let first_name = ["a", "b"][first];
        assert_ne!(
            left.as_deref(),
            Some(first_name),
            "released on a clean stop"
        );
        until("a takeover after the release", || handles[second].is_held()).await;
        assert_eq!(metrics[second].lease_held.get(), 1);
        assert_eq!(metrics[second].lease_acquired.get(), 1);

        // The new holder vanishes without releasing (aborted, as a killed process would): a
        // third instance takes over once the TTL has run out, not before.
        let (c, join_c) = task(&loc, "c", &metrics[2]).spawn(stops[2].clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!c.is_held(), "held by the second instance");
        let vanished = tokio::time::Instant::now();
        joins[second].take().unwrap().abort();
        until("a takeover after the TTL", || c.is_held()).await;
        let took = vanished.elapsed();
        assert!(
            took >= Duration::from_millis(1000),
            "took over after {took:?}, before the TTL"
        );
        stops[2].cancel();
        join_c.await.unwrap();
    }
}
