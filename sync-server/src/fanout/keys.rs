//! Short-lived keys to the stores: a `keys` change per member and channel each UTC day and each
//! Eddystone-EID epoch.
//!
//! Gateways get rotating-ID day keys for today and tomorrow only, and EID temporary keys for the
//! current and next 2^16 s epoch ([`super::gateway_form::short_lived_keys`]). So that a gateway
//! always holds tomorrow's key a day ahead, this task appends, when the day or the epoch moves
//! on, a `keys` change for every member with long-term keys to each of their channels. Keys
//! travel as their own expiring changes: a new day never changes a member's record and never
//! forces a snapshot, and head office prunes them once they have expired.
//!
//! In: the wall clock (injected), the store. Out: `keys` changes, `meta.members_keys_day` and
//! `meta.members_eid_epoch` (what was issued last), and the heads touched for the notifier. A
//! head office that was down over midnight catches up when it starts; one stopped half-way
//! re-issues from the start (a repeated `keys` change is harmless).

use std::{sync::Arc, time::Duration};

use instore_protocol::{
    eddystone_eid::{EPOCH_SECS, epoch_of, ts_of_ms},
    rotating::{DAY_SECS, day_of_ms},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{gateway_form, notifier::NoticeInput};
use crate::cluster::lease::LeaseHandle;
use crate::{
    params,
    store::{
        Store, StoreError,
        channels::{self, Touched},
        db::{Db, Sql},
    },
};

/// `meta` key: the UTC day keys were last issued for.
pub const META_KEYS_DAY: &str = "members_keys_day";
/// `meta` key: the Eddystone-EID epoch keys were last issued for.
pub const META_EID_EPOCH: &str = "members_eid_epoch";

/// Members per transaction: bounds how long the store's thread is held.
const CHUNK: usize = 2_000;

const SELECT_META: Sql = Sql::same("SELECT value FROM meta WHERE key = ?1");
const SET_META: Sql = Sql::same(
    "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value",
);
const SELECT_KEYED_MEMBERS: Sql = Sql::same(
    "SELECT member_id, record_json FROM members
    WHERE has_keys = 1 AND gateway_json IS NOT NULL AND member_id > ?1
    ORDER BY member_id LIMIT ?2",
);

/// Unix milliseconds now; injected so tests can move the day without waiting for midnight.
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> WallClock {
    Arc::new(crate::now_ms)
}

/// Longest sleep between checks: bounds how late a re-issue comes after a wall-clock step (NTP,
/// a suspended VM), since a sleep runs on the monotonic clock.
pub const MAX_SLEEP: Duration = Duration::from_secs(600);

/// Whether the day or the epoch of `now_ms` is past what was issued last.
pub fn due(db: &mut Db, now_ms: i64) -> Result<bool, StoreError> {
    let mut tx = db.read_transaction()?;
    let get = |tx: &mut crate::store::db::Tx<'_>, key: &str| -> Result<Option<i64>, StoreError> {
        tx.query_opt(&SELECT_META, params![key])?
            .map(|r| r.i64(0))
            .transpose()
    };
    let day = get(&mut tx, META_KEYS_DAY)?;
    let epoch = get(&mut tx, META_EID_EPOCH)?;
    tx.commit()?;
    let today = i64::from(day_of_ms(now_ms));
    let now_epoch = i64::from(epoch_of(ts_of_ms(now_ms)));
    Ok(day.is_none_or(|d| d < today) || epoch.is_none_or(|e| e < now_epoch))
}

/// One chunk of the re-issue: `keys` changes for up to [`CHUNK`] members after `after`.
/// Returns the last member handled (`None` when done).
pub fn reissue_chunk(
    db: &mut Db,
    after: &str,
    now_ms: i64,
    touched: &mut Touched,
) -> Result<Option<String>, StoreError> {
    let mut tx = db.transaction()?;
    let rows = tx.query(&SELECT_KEYED_MEMBERS, params![after, CHUNK])?;
    let mut last = None;
    for r in &rows {
        let member_id = r.string(0)?;
        let record = serde_json::from_str(r.str(1)?)
            .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
        let (_, expires) = gateway_form::short_lived_keys(&record, now_ms);
        channels::append_keys(&mut tx, &member_id, now_ms, expires, touched)?;
        last = Some(member_id);
    }
    tx.commit()?;
    Ok(if rows.len() < CHUNK { None } else { last })
}

/// Records that keys were issued for the day and epoch of `now_ms`.
pub fn mark_issued(db: &mut Db, now_ms: i64) -> Result<(), StoreError> {
    let mut tx = db.transaction()?;
    tx.execute(
        &SET_META,
        params![META_KEYS_DAY, i64::from(day_of_ms(now_ms))],
    )?;
    tx.execute(
        &SET_META,
        params![META_EID_EPOCH, i64::from(epoch_of(ts_of_ms(now_ms)))],
    )?;
    tx.commit()
}

/// Re-issues every keyed member's keys if due; returns the heads touched.
pub async fn reissue_if_due(store: &Store, now_ms: i64) -> Result<Touched, StoreError> {
    let mut touched = Touched::new();
    if !store.call(move |db| due(db, now_ms)).await? {
        return Ok(touched);
    }
    let mut after = String::new();
    loop {
        let from = after.clone();
        let (next, t) = store
            .call(move |db| {
                let mut t = Touched::new();
                let next = reissue_chunk(db, &from, now_ms, &mut t)?;
                Ok((next, t))
            })
            .await?;
        for (c, h) in t {
            let e = touched.entry(c).or_default();
            *e = (*e).max(h);
        }
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    store.call(move |db| mark_issued(db, now_ms)).await?;
    Ok(touched)
}

/// Checks now, then just after every UTC midnight and EID epoch (and at least every
/// `max_sleep`), until `cancel`. A store error is logged and retried at the next check. Only
/// while `lease` is held: one instance of a shared head office re-issues.
pub async fn run(
    store: Store,
    notices: mpsc::Sender<NoticeInput>,
    clock: WallClock,
    max_sleep: Duration,
    mut lease: LeaseHandle,
    cancel: CancellationToken,
) {
    loop {
        if !lease.is_held() {
            tokio::select! {
                () = cancel.cancelled() => return,
                held = lease.held() => if !held { return },
            }
        }
        let now = clock();
        match reissue_if_due(&store, now).await {
            Ok(t) if !t.is_empty() => {
                tracing::info!(
                    day = day_of_ms(now),
                    channels = t.len(),
                    "short-lived keys issued for a new day or EID epoch"
                );
                if notices.send(NoticeInput::Heads(t)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "cannot issue short-lived keys"),
        }
        let today = i64::from(day_of_ms(now));
        let epoch = i64::from(epoch_of(ts_of_ms(now)));
        // A second past midnight (or the epoch's end), so that the period has surely moved on.
        let next_day_ms = (today + 1) * DAY_SECS * 1000 + 1000;
        let next_epoch_ms = (epoch + 1) * EPOCH_SECS * 1000 + 1000;
        let wait =
            Duration::from_millis(next_day_ms.min(next_epoch_ms).saturating_sub(now).max(0) as u64);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait.min(max_sleep)) => {}
        }
    }
}
