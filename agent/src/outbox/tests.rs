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
