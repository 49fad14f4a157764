#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A lying SD card: the gateway's outbox comes back from a power cut *older* than what head
//! office already holds. Real SQLite files, the real head office (embedded broker, SQLite, HTTP)
//! in-process, the real uplink.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use instore_agent::{
    cache::MemberCache,
    config::SyncConfig,
    metrics::Metrics,
    outbox::{NewEvent, Outbox},
};
use instore_protocol::EventBody;

mod support;

use support::{
    hq::{GATEWAY, Hq, WAIT, embedded, events_of},
    sync::{SyncTask, spawn_sync},
};

const STORE: &str = "s-1";

/// The test's events: footfall whose `unique_devices` is its creation number.
fn event(n: u64) -> NewEvent {
    NewEvent {
        at_ms: 1_700_000_000_000 + n as i64,
        body: EventBody::Footfall {
            interval_s: 60,
            unique_devices: n,
        },
    }
}

async fn append(outbox: &Outbox, numbers: std::ops::RangeInclusive<u64>) {
    for n in numbers {
        outbox.append(vec![event(n)]).await.unwrap();
    }
}

fn start_uplink(hq: &Hq, dir: &Path, outbox: &Outbox, metrics: &Metrics) -> SyncTask {
    let cache = MemberCache::open(&dir.join("members.db")).unwrap();
    let cfg = SyncConfig {
        enabled: true,
        broker: hq.mqtt_url(),
        hq_url: format!("http://{}", hq.http),
        batch_max_events: 4,
        batch_max_age_ms: 10,
        reconnect_min_ms: 50,
        reconnect_max_ms: 500,
        // Head office's embedded broker lets in only gateways with their token.
        token: instore_protocol::token::gateway_token(
            support::hq::SECRET.as_bytes(),
            STORE,
            GATEWAY,
        )
        .unwrap(),
        ..SyncConfig::default()
    };
    spawn_sync(STORE, GATEWAY, cfg, outbox, &cache, metrics)
}

async fn wait_drained(outbox: &Outbox) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while outbox.depth().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FILES: [&str; 2] = ["outbox.db", "outbox.db-wal"];

fn copy_files(from: &Path, to: &Path) {
    for f in FILES {
        let src = from.join(f);
        if src.exists() {
            std::fs::copy(&src, to.join(f)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_outbox_reuses_no_acknowledged_number_and_loses_nothing_created_after() {
    let hq = Hq::start(embedded()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let snapshot: PathBuf = dir.path().join("snapshot");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    let path = data.join("outbox.db");

    // Boot A: events 1..=5 written while offline; the card "keeps" this state.
    let metrics = Metrics::default();
    let outbox = Outbox::open(&path, metrics.clone()).unwrap();
    append(&outbox, 1..=5).await;
    copy_files(&data, &snapshot);
    // Then online: 6..=20 follow and head office acknowledges all twenty.
    let uplink = start_uplink(&hq, &data, &outbox, &metrics);
    append(&outbox, 6..=20).await;
    wait_drained(&outbox).await;
    uplink.stop(WAIT).await;
    outbox.close().await;
    assert_eq!(
        events_of(&hq, GATEWAY).await,
        (1..=20).map(|n| (n, n)).collect::<Vec<_>>()
    );

    // Power cut; the card comes back with the older copy: it remembers issuing only 1..=5.
    for f in ["outbox.db", "outbox.db-wal", "outbox.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    copy_files(&snapshot, &data);

    // Boot B: events 21..=30 are written before head office is reachable (before any ack) and
    // take the numbers 6..=15, which head office holds for other events.
    let metrics = Metrics::default();
    let outbox = Outbox::open(&path, metrics.clone()).unwrap();
    assert_eq!(outbox.last_seq().await.unwrap(), 5, "the rollback happened");
    append(&outbox, 21..=30).await;
    let uplink = start_uplink(&hq, &data, &outbox, &metrics);
    append(&outbox, 31..=40).await;
    wait_drained(&outbox).await;
    uplink.stop(WAIT).await;
    outbox.close().await;

    let held = events_of(&hq, GATEWAY).await;
    // No acknowledged number was reused: 1..=20 still hold the events first stored under them.
    assert_eq!(held[..20], (1..=20).map(|n| (n, n)).collect::<Vec<_>>()[..]);
    // Every event created after the restart arrived, once, above head office's mark, in order.
    let after: Vec<u64> = held[20..].iter().map(|&(_, n)| n).collect();
    assert_eq!(after, (21..=40).collect::<Vec<_>>());
    assert!(held[20..].iter().all(|&(seq, _)| seq > 20));
    // 21..=30 certainly collided; live events appended before the welcome moved with them.
    let renumbered = metrics.outbox_renumbered.get();
    assert!((10..=20).contains(&renumbered), "{renumbered}");
    let gateways = hq.get_json("/api/gateways").await;
    assert_eq!(gateways[0]["events_received"], 40);
    // Only the snapshot's own 1..=5 (the same events) were dropped as duplicates.
    assert_eq!(gateways[0]["duplicates_dropped"], 5);
    assert_eq!(
        gateways[0]["gaps"].as_array().unwrap().len(),
        0,
        "{gateways}"
    );
    hq.cancel.cancel();
}
