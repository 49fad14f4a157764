//! Day-key refresh: re-issues the member snapshot when the UTC day changes.
//!
//! Gateways get rotating-ID day keys for today and tomorrow only ([`super::for_gateways`]), and
//! fetch a snapshot only when a [`instore_protocol::MembersNotice`] announces a newer version. The
//! version used to change only on import, so two days without one left every gateway without
//! keys. This task bumps the member-set version once per UTC day (when some member has a rotating
//! secret) and hands the new version to the notifier like an import would, so every store fetches
//! the keys for its new "tomorrow" a full day before it needs them. Eddystone-EID temporary
//! keys work the same way per 2^16 s epoch (`meta.members_eid_epoch`, members with an
//! `eddystone_eid_identity`).
//!
//! In: the wall clock (injected), the store. Out: `meta.members_keys_day` (the UTC day the current
//! version was issued for), a bumped `meta.members_version`, and [`NoticeInput::Imported`].
//! A head office that was down over midnight catches up when it starts. A database from before
//! this task has no `members_keys_day`: the first start re-issues once.

use std::{sync::Arc, time::Duration};

use instore_protocol::{
    eddystone_eid::{EPOCH_SECS, epoch_of, ts_of_ms},
    rotating::{DAY_SECS, day_of_ms},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::notifier::NoticeInput;
use crate::{
    params,
    store::{
        Store, StoreError,
        db::{Db, Sql},
        members,
    },
};

/// `meta` key: the UTC day the current member-set version's day keys were issued for.
pub const META_KEYS_DAY: &str = "members_keys_day";
/// `meta` key: the Eddystone-EID epoch the current version's temporary keys were issued for.
pub const META_EID_EPOCH: &str = "members_eid_epoch";

const SELECT_META: Sql = Sql::same("SELECT value FROM meta WHERE key = ?1");
const SET_META: Sql = Sql::same(
    "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value",
);
/// Same key as the import's version (`store::sql::META_MEMBERS_VERSION`).
const SET_VERSION: Sql = Sql::same(
    "INSERT INTO meta (key, value) VALUES ('members_version', ?1)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value",
);

/// A member record in the store's JSON holds a rotating secret. serde writes the tag exactly so;
/// a display name containing it would be escaped (`\"`) and cannot match.
const HAS_ROTATING_SECRET: Sql = Sql::same(
    "SELECT COUNT(*) FROM (SELECT 1 FROM members
        WHERE record_json LIKE '%\"kind\":\"rotating_secret\"%' LIMIT 1) AS found",
);
/// Likewise for an Eddystone-EID identity key (its temporary keys change per 2^16 s epoch).
const HAS_EID_IDENTITY: Sql = Sql::same(
    "SELECT COUNT(*) FROM (SELECT 1 FROM members
        WHERE record_json LIKE '%\"kind\":\"eddystone_eid_identity\"%' LIMIT 1) AS found",
);

/// Unix milliseconds now; injected so tests can move the day without waiting for midnight.
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// Longest sleep between checks: bounds how late a re-issue comes after a wall-clock step (NTP,
/// a suspended VM), since a sleep runs on the monotonic clock.
pub const MAX_SLEEP: Duration = Duration::from_secs(600);

/// A re-issue: the new version and the stores to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reissue {
    pub version: u64,
    pub stores: Vec<String>,
}

/// Bumps the member-set version if its day keys were issued before `today` (UTC day number) and
/// some member has a rotating secret; records `today` either way. One transaction.
pub fn reissue_if_new_day(db: &mut Db, today: u32) -> Result<Option<Reissue>, StoreError> {
    reissue_if_new_period(db, META_KEYS_DAY, i64::from(today), &HAS_ROTATING_SECRET)
}

/// The same for Eddystone-EID temporary keys: bumps the version when the 2^16 s epoch changed
/// and some member has an EID identity key, so gateways fetch the next epoch's key a whole epoch
/// ahead.
pub fn reissue_if_new_epoch(db: &mut Db, epoch: u16) -> Result<Option<Reissue>, StoreError> {
    reissue_if_new_period(db, META_EID_EPOCH, i64::from(epoch), &HAS_EID_IDENTITY)
}

fn reissue_if_new_period(
    db: &mut Db,
    meta_key: &str,
    now: i64,
    has_keys_sql: &Sql,
) -> Result<Option<Reissue>, StoreError> {
    let mut tx = db.transaction()?;
    let issued = tx
        .query_opt(&SELECT_META, params![meta_key])?
        .map(|r| r.i64(0))
        .transpose()?;
    if issued.is_some_and(|d| d >= now) {
        return Ok(None);
    }
    let version = members::version_in(&mut tx)?;
    let has_keys = tx.query_one(has_keys_sql, params![])?.bool(0)?;
    let out = if version > 0 && has_keys {
        let v = version + 1;
        tx.execute(&SET_VERSION, params![v])?;
        let stores = crate::store::queries::stores_in(&mut tx)?;
        Some(Reissue { version: v, stores })
    } else {
        None
    };
    tx.execute(&SET_META, params![meta_key, now])?;
    tx.commit()?;
    Ok(out)
}

/// Checks now, then just after every UTC midnight (and at least every `max_sleep`), until
/// `cancel`. A store error is logged and retried at the next check.
pub async fn run(
    store: Store,
    notices: mpsc::Sender<NoticeInput>,
    clock: WallClock,
    max_sleep: Duration,
    cancel: CancellationToken,
) {
    loop {
        let now = clock();
        let today = day_of_ms(now);
        let epoch = epoch_of(ts_of_ms(now));
        let checked = store
            .call(move |c| {
                let day = reissue_if_new_day(c, today)?;
                // One notice is enough when both change at once: the later version covers both.
                let eid = reissue_if_new_epoch(c, epoch)?;
                Ok(eid.or(day))
            })
            .await;
        match checked {
            Ok(Some(r)) => {
                tracing::info!(
                    day = today,
                    eid_epoch = epoch,
                    version = r.version,
                    "member snapshot re-issued for new day keys or EID temporary keys"
                );
                let input = NoticeInput::Imported {
                    version: r.version,
                    stores: r.stores,
                };
                if notices.send(input).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "cannot check the day-key refresh"),
        }
        // A second past midnight (or the epoch's end), so that the period has surely moved on.
        let next_day_ms = (i64::from(today) + 1) * DAY_SECS * 1000 + 1000;
        let next_epoch_ms = (i64::from(epoch) + 1) * EPOCH_SECS * 1000 + 1000;
        let next_ms = next_day_ms.min(next_epoch_ms);
        let wait = Duration::from_millis(next_ms.saturating_sub(now).max(0) as u64);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait.min(max_sleep)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use instore_protocol::parse_ndjson;

    use super::*;
    use crate::store::testing::each_backend;

    const DAY_MS: i64 = DAY_SECS * 1000;

    fn line(id: &str, rotating: bool) -> String {
        let id_json = if rotating {
            format!(
                r#"{{"kind":"rotating_secret","secret":"{}"}}"#,
                hex::encode([7u8; 32])
            )
        } else {
            r#"{"kind":"mac","address":"C0:11:22:33:44:55"}"#.to_string()
        };
        format!(
            r#"{{"member_id":"{id}","display_name":"A","tier":"gold","consent":{{"presence":true}},"identifiers":[{id_json}]}}"#
        )
    }

    fn import(db: &mut Db, text: &str) -> u64 {
        let (records, errors) = parse_ndjson(text);
        assert!(errors.is_empty(), "{errors:?}");
        members::import(db, &records).unwrap().version
    }

    #[test]
    fn the_version_moves_once_per_new_day_only_when_day_keys_are_shipped() {
        each_backend(|c| {
            assert_eq!(
                reissue_if_new_day(c, 100).unwrap(),
                None,
                "nothing imported"
            );
            assert_eq!(import(c, &line("M1", false)), 1);
            assert_eq!(
                reissue_if_new_day(c, 101).unwrap(),
                None,
                "no rotating secret: the snapshot does not change with the day"
            );
            assert_eq!(members::version(c).unwrap(), 1);
            assert_eq!(import(c, &line("M2", true)), 2);
            assert_eq!(reissue_if_new_day(c, 101).unwrap(), None, "same day");
            let r = reissue_if_new_day(c, 102).unwrap().unwrap();
            assert_eq!(r.version, 3);
            assert_eq!(members::version(c).unwrap(), 3);
            assert_eq!(reissue_if_new_day(c, 102).unwrap(), None, "once per day");
            assert_eq!(
                reissue_if_new_day(c, 101).unwrap(),
                None,
                "a clock stepping back does not re-issue"
            );
            // Head office down for three days: one re-issue on the first check.
            assert_eq!(reissue_if_new_day(c, 105).unwrap().unwrap().version, 4);
        });
    }

    #[test]
    fn the_version_moves_when_the_eid_epoch_changes_only_with_eid_identity_keys() {
        each_backend(|c| {
            assert_eq!(import(c, &line("M1", true)), 1);
            assert_eq!(reissue_if_new_epoch(c, 7).unwrap(), None, "no EID keys");
            let eid = format!(
                r#"{{"member_id":"M2","display_name":"A","tier":"gold","consent":{{"presence":true}},"identifiers":[{{"kind":"eddystone_eid_identity","identity_key":"{}","exponent":10}}]}}"#,
                hex::encode([1u8; 16])
            );
            assert_eq!(import(c, &eid), 2);
            assert_eq!(reissue_if_new_epoch(c, 7).unwrap(), None, "same epoch");
            assert_eq!(reissue_if_new_epoch(c, 8).unwrap().unwrap().version, 3);
            assert_eq!(reissue_if_new_epoch(c, 8).unwrap(), None);
            // The day keys are tracked separately.
            assert_eq!(reissue_if_new_day(c, 50).unwrap().unwrap().version, 4);
        });
    }

    #[tokio::test]
    async fn the_task_announces_a_new_version_when_the_day_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) =
            Store::open(&crate::store::Location::Sqlite(dir.path().join("hq.db"))).unwrap();
        let text = line("M1", true);
        store
            .call(move |c| {
                let (records, _) = parse_ndjson(&text);
                members::import(c, &records)
            })
            .await
            .unwrap();
        // 23:59:59 UTC on day 20,000.
        let now = Arc::new(AtomicI64::new(20_001 * DAY_MS - 1000));
        let clock: WallClock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::SeqCst))
        };
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            tx,
            clock,
            Duration::from_millis(5),
            cancel.clone(),
        ));
        let next = async |rx: &mut mpsc::Receiver<NoticeInput>| {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a notice")
                .expect("task alive")
        };
        // A database from before the task has no keys day: it re-issues once at start.
        assert!(matches!(
            next(&mut rx).await,
            NoticeInput::Imported { version: 2, .. }
        ));
        // Many checks later, still the same day: nothing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        now.store(20_001 * DAY_MS + 5, Ordering::SeqCst);
        assert!(matches!(
            next(&mut rx).await,
            NoticeInput::Imported { version: 3, .. }
        ));
        let served = super::super::snapshot(&store, "s1").await.unwrap();
        assert_eq!(served.version, 3);
        cancel.cancel();
        task.await.unwrap();
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    }
}
