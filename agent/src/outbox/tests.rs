#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use instore_protocol::{EventBody, SeqRange};

use super::*;

fn footfall(n: u64) -> NewEvent {
    NewEvent {
        at_ms: 1_700_000_000_000 + n as i64,
        body: EventBody::Footfall {
            interval_s: 60,
            unique_devices: n,
        },
    }
}

fn open(path: &Path) -> (Outbox, Metrics) {
    let metrics = Metrics::default();
    (Outbox::open(path, metrics.clone()).unwrap(), metrics)
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn range(first: u64, last: u64) -> SeqRange {
    SeqRange { first, last }
}

#[tokio::test]
async fn sequence_numbers_start_at_one_and_stay_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, metrics) = open(&dir.path().join("outbox.db"));
    assert_eq!(outbox.last_seq().await.unwrap(), 0);
    let a = outbox.append(vec![footfall(1), footfall(2)]).await.unwrap();
    let b = outbox.append(vec![footfall(3)]).await.unwrap();
    assert_eq!(seqs(&a), [1, 2]);
    assert_eq!(seqs(&b), [3]);
    assert_eq!(a[1].body, footfall(2).body, "events come back as given");
    assert_eq!(outbox.depth().await.unwrap(), 3);
    assert_eq!(outbox.last_seq().await.unwrap(), 3);
    assert_eq!(metrics.outbox_appended.get(), 3);
    assert_eq!(metrics.outbox_depth.get(), 3);
    let pending = outbox.pending(1, 10).await.unwrap();
    assert_eq!(seqs(&pending), [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_queued_together_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (outbox, metrics) = open(&path);
    // Hold SQLite's write lock from another connection so the writer's first transaction waits
    // while the other appends queue up behind it.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.append(vec![footfall(n)]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.execute_batch("ROLLBACK").unwrap();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(seqs(&t.await.unwrap().unwrap()));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>());
    let commits = metrics.outbox_commits.get();
    assert!(commits <= 3, "100 queued appends took {commits} commits");
}

#[tokio::test]
async fn acknowledging_deletes_only_the_acknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, metrics) = open(&dir.path().join("outbox.db"));
    outbox
        .append((1..=10).map(footfall).collect())
        .await
        .unwrap();
    let deleted = outbox
        .acknowledge(vec![range(1, 3), range(5, 5), range(9, 40)], 10)
        .await
        .unwrap();
    assert_eq!(deleted, 6);
    let left = outbox.pending(0, 100).await.unwrap();
    assert_eq!(seqs(&left), [4, 6, 7, 8]);
    assert_eq!(outbox.depth().await.unwrap(), 4);
    assert_eq!(metrics.outbox_depth.get(), 4);
    // A repeated ack is harmless.
    let again = outbox.acknowledge(vec![range(1, 3)], 10).await.unwrap();
    assert_eq!(again, 0);
    assert_eq!(outbox.depth().await.unwrap(), 4);
}

#[tokio::test]
async fn reopening_keeps_the_sequence_and_the_unacknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    {
        let (outbox, _) = open(&path);
        outbox
            .append((1..=5).map(footfall).collect())
            .await
            .unwrap();
        // Acknowledging everything empties the table; the counter must survive that.
        outbox.acknowledge(vec![range(1, 5)], 5).await.unwrap();
        outbox.append(vec![footfall(6)]).await.unwrap();
        outbox.close().await;
        assert!(matches!(
            outbox.append(vec![footfall(7)]).await,
            Err(OutboxError::Closed)
        ));
    }
    let (outbox, metrics) = open(&path);
    assert_eq!(outbox.last_seq().await.unwrap(), 6);
    assert_eq!(seqs(&outbox.pending(0, 10).await.unwrap()), [6]);
    assert_eq!(metrics.outbox_depth.get(), 1);
    let next = outbox.append(vec![footfall(7)]).await.unwrap();
    assert_eq!(seqs(&next), [7]);
}

#[tokio::test]
async fn a_rolled_back_database_never_reuses_a_number_head_office_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let snapshot = dir.path().join("snapshot");
    std::fs::create_dir(&snapshot).unwrap();
    // The shared-memory index is rebuilt from the WAL on open; a stale copy would only confuse.
    let files = ["outbox.db", "outbox.db-wal"];
    {
        let (outbox, _) = open(&path);
        outbox
            .append((1..=3).map(footfall).collect())
            .await
            .unwrap();
        // The card "keeps" this state: copy the database as it is now (WAL included).
        for f in files {
            let from = dir.path().join(f);
            if from.exists() {
                std::fs::copy(&from, snapshot.join(f)).unwrap();
            }
        }
        outbox
            .append((4..=8).map(footfall).collect())
            .await
            .unwrap();
        outbox.acknowledge(vec![range(1, 8)], 8).await.unwrap();
        outbox.close().await;
    }
    // Power cut; the card comes back with the older copy.
    for f in ["outbox.db", "outbox.db-wal", "outbox.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    for f in files {
        let from = snapshot.join(f);
        if from.exists() {
            std::fs::copy(&from, dir.path().join(f)).unwrap();
        }
    }
    let (outbox, _) = open(&path);
    assert_eq!(outbox.last_seq().await.unwrap(), 3, "the rollback happened");
    // The first ack after reconnecting tells the gateway where head office is.
    outbox.set_high_water(8).await.unwrap();
    let next = outbox.append(vec![footfall(9)]).await.unwrap();
    assert_eq!(seqs(&next), [9]);
    // The old, already-delivered events are still there to be re-sent (head office de-duplicates).
    assert_eq!(seqs(&outbox.pending(0, 10).await.unwrap()), [1, 2, 3, 9]);
    outbox.close().await;
    let (outbox, _) = open(&path);
    assert_eq!(
        outbox.stats().await.unwrap().high_water,
        8,
        "the mark is stored"
    );
}

#[tokio::test]
async fn an_absurd_high_water_mark_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(&dir.path().join("outbox.db"));
    outbox.append(vec![footfall(1)]).await.unwrap();
    assert!(matches!(
        outbox.acknowledge(vec![range(1, 1)], u64::MAX).await,
        Err(OutboxError::HighWaterOutOfRange(_))
    ));
    assert_eq!(outbox.depth().await.unwrap(), 1);
    assert_eq!(seqs(&outbox.append(vec![footfall(2)]).await.unwrap()), [2]);
}

#[tokio::test]
async fn a_mark_too_far_ahead_to_keep_numbering_is_refused_and_a_catch_up_is_taken() {
    use instore_protocol::{MAX_SEQ_JUMP, SEQ_LIMIT};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (outbox, _) = open(&path);
    outbox.append(vec![footfall(1), footfall(2)]).await.unwrap();
    // Just below the old limit: a gateway that took it could number only a few more events, and
    // would not start again once past it.
    for mark in [
        SEQ_LIMIT - 1,
        SEQ_LIMIT - MAX_SEQ_JUMP,
        3 + MAX_SEQ_JUMP + 1,
    ] {
        assert!(
            matches!(
                outbox.acknowledge(vec![range(1, 2)], mark).await,
                Err(OutboxError::HighWaterOutOfRange(m)) if m == mark
            ),
            "{mark}"
        );
        assert!(matches!(
            outbox.reconcile(mark, Vec::new()).await,
            Err(OutboxError::HighWaterOutOfRange(_))
        ));
    }
    assert_eq!(
        outbox.depth().await.unwrap(),
        2,
        "a refused ack deletes nothing"
    );
    assert_eq!(seqs(&outbox.append(vec![footfall(3)]).await.unwrap()), [3]);
    // Head office ahead by what a rolled-back card lost is taken, up to the bound.
    outbox.set_high_water(3 + MAX_SEQ_JUMP).await.unwrap();
    assert_eq!(
        seqs(&outbox.append(vec![footfall(4)]).await.unwrap()),
        [4 + MAX_SEQ_JUMP]
    );
    outbox.close().await;
    let (outbox, _) = open(&path);
    assert_eq!(outbox.stats().await.unwrap().high_water, 3 + MAX_SEQ_JUMP);
}

#[tokio::test]
async fn an_oversized_event_is_refused_without_spoiling_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(&dir.path().join("outbox.db"));
    let huge = NewEvent {
        at_ms: 1,
        body: EventBody::GatewayStarted {
            version: "x".repeat(MAX_EVENT_BYTES + 1),
        },
    };
    let (a, b) = tokio::join!(outbox.append(vec![huge]), outbox.append(vec![footfall(1)]));
    assert!(matches!(a, Err(OutboxError::TooLarge { .. })));
    assert_eq!(seqs(&b.unwrap()), [1]);
    assert_eq!(outbox.depth().await.unwrap(), 1);
}

#[tokio::test]
async fn a_row_that_no_longer_decodes_is_quarantined_instead_of_blocking_the_uplink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (outbox, _) = open(&path);
    outbox
        .append((1..=3).map(footfall).collect())
        .await
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "UPDATE outbox SET body = '{\"type\":\"from_the_future\"}' WHERE seq = 2",
            [],
        )
        .unwrap();
    assert_eq!(seqs(&outbox.pending(0, 10).await.unwrap()), [1, 3]);
    assert_eq!(outbox.depth().await.unwrap(), 2);
    let kept: i64 = other
        .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
}

#[tokio::test]
async fn a_commit_wakes_whoever_waits_for_new_events() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(&dir.path().join("outbox.db"));
    let mut appended = outbox.appended();
    assert_eq!(*appended.borrow_and_update(), 0);
    outbox.append(vec![footfall(1), footfall(2)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), appended.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*appended.borrow(), 2);
}

#[tokio::test]
async fn dropping_every_handle_stops_the_writer_after_finishing_its_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (outbox, _) = open(&path);
    let mut appended = outbox.appended();
    outbox.append(vec![footfall(1)]).await.unwrap();
    drop(outbox);
    // The writer drops its end of the wake-up channel when it exits.
    tokio::time::timeout(Duration::from_secs(2), async {
        while appended.changed().await.is_ok() {}
    })
    .await
    .unwrap();
    let (outbox, _) = open(&path);
    assert_eq!(outbox.last_seq().await.unwrap(), 1);
}

fn scanner(n: u64) -> NewEvent {
    NewEvent {
        at_ms: 1_700_000_000_000 + n as i64,
        body: EventBody::Scanner {
            adapter: "hci0".into(),
            state: instore_protocol::ScannerState::Stalled,
            detail: "x".repeat(200),
        },
    }
}

fn arrive(n: u64) -> NewEvent {
    NewEvent {
        at_ms: 1_700_000_000_000 + n as i64,
        body: EventBody::Arrive {
            member_id: format!("M{n:06}"),
            zone: "entrance".into(),
            visit_id: format!("v{n}").repeat(20),
        },
    }
}

fn open_quota(path: &Path, max_bytes: u64) -> (Outbox, Metrics) {
    let metrics = Metrics::default();
    let outbox = Outbox::open_with(path, OutboxOptions { max_bytes }, metrics.clone()).unwrap();
    (outbox, metrics)
}

fn shed_reports(events: &[Event]) -> Vec<(u64, u64, u64, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::EventsShed {
                first_seq,
                last_seq,
                count,
                kinds,
            } => Some((*first_seq, *last_seq, *count, kinds.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn over_its_quota_the_outbox_sheds_health_first_then_footfall_and_reports_each_range() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, metrics) = open_quota(&dir.path().join("outbox.db"), 40_000);
    // Interleaved: scanner (health), footfall and arrivals, ~100 of each.
    let mut n = 0;
    for _ in 0..100 {
        outbox
            .append(vec![scanner(n), footfall(n + 1), arrive(n + 2)])
            .await
            .unwrap();
        n += 3;
    }
    let stats = outbox.stats().await.unwrap();
    assert!(stats.bytes <= 40_000, "{stats:?}");
    let left = outbox.pending(0, 10_000).await.unwrap();
    let kinds: Vec<&str> = left.iter().map(|e| e.body.kind()).collect();
    let arrivals = kinds.iter().filter(|k| **k == "arrive").count();
    assert_eq!(
        arrivals, 100,
        "presence is shed last: every arrival is kept"
    );
    let reports = shed_reports(&left);
    assert!(!reports.is_empty());
    let shed: u64 = reports.iter().map(|r| r.2).sum();
    assert_eq!(shed, metrics.outbox_shed_events.get());
    assert_eq!(reports.len() as u64, metrics.outbox_shed_ranges.get());
    // Health goes first; footfall only once no health event is left to shed.
    assert_eq!(reports[0].3, ["scanner"]);
    let footfall_shed = reports
        .iter()
        .any(|r| r.3.contains(&"footfall".to_string()));
    assert!(
        !footfall_shed || !kinds.contains(&"scanner"),
        "footfall shed while health remained"
    );
    // What is left is in order, and every number is either held or inside a reported range.
    let held = seqs(&left);
    assert!(held.windows(2).all(|w| w[0] < w[1]));
    let last = *held.last().unwrap();
    for s in 1..=last {
        assert!(
            held.contains(&s) || reports.iter().any(|r| r.0 <= s && s <= r.1),
            "{s} neither held nor reported"
        );
    }
    let missing = (1..=last).filter(|s| !held.contains(s)).count() as u64;
    assert_eq!(missing, shed, "the counts add up");
    assert_eq!(
        metrics.outbox_bytes.get() as u64,
        outbox.stats().await.unwrap().bytes
    );
}

#[tokio::test]
async fn presence_is_shed_when_nothing_else_is_left_but_shed_reports_never_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (outbox, _) = open_quota(&path, 20_000);
    for n in 0..300 {
        outbox.append(vec![arrive(n)]).await.unwrap();
    }
    let left = outbox.pending(0, 10_000).await.unwrap();
    let reports = shed_reports(&left);
    assert!(reports.len() >= 2, "{}", reports.len());
    assert!(reports.iter().all(|r| r.3 == ["arrive"]));
    // The newest arrivals survive; the oldest went.
    assert!(left.iter().any(|e| e.body == arrive(299).body));
    assert!(!left.iter().any(|e| e.body == arrive(0).body));
    // The byte count survives a restart.
    let bytes = outbox.stats().await.unwrap().bytes;
    outbox.close().await;
    let (outbox, _) = open_quota(&path, 20_000);
    assert_eq!(outbox.stats().await.unwrap().bytes, bytes);
}

#[tokio::test]
async fn reconcile_renumbers_only_events_at_or_below_their_boots_floor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let old_boot = {
        let (outbox, _) = open(&path);
        outbox
            .append((1..=3).map(footfall).collect())
            .await
            .unwrap();
        let b = outbox.boots().await.unwrap();
        assert!(b.others.is_empty());
        outbox.close().await;
        b.current
    };
    let (outbox, metrics) = open(&path);
    let boots = outbox.boots().await.unwrap();
    assert_ne!(boots.current, old_boot, "every opening is a new boot");
    assert_eq!(boots.others, [old_boot]);
    outbox
        .append((4..=6).map(footfall).collect())
        .await
        .unwrap();
    // Head office holds up to 10 and first heard of this boot at 10: 4..=6 are other events.
    // The old boot's floor is 0: its events may be the very ones head office holds; kept.
    let floors = vec![
        instore_protocol::BootFloor {
            boot: boots.current,
            floor: 10,
        },
        instore_protocol::BootFloor {
            boot: old_boot,
            floor: 0,
        },
    ];
    let moved = outbox.reconcile(10, floors.clone()).await.unwrap();
    assert_eq!(moved, 3);
    assert_eq!(metrics.outbox_renumbered.get(), 3);
    let left = outbox.pending(0, 100).await.unwrap();
    assert_eq!(seqs(&left), [1, 2, 3, 11, 12, 13]);
    assert_eq!(left[3].body, footfall(4).body, "order is kept");
    assert_eq!(seqs(&outbox.append(vec![footfall(7)]).await.unwrap()), [14]);
    // The same answer again changes nothing: renumbered events are above the floor now.
    assert_eq!(outbox.reconcile(10, floors).await.unwrap(), 0);
    outbox.close().await;
    let (outbox, _) = open(&path);
    assert_eq!(outbox.last_seq().await.unwrap(), 14, "the move is durable");
}
