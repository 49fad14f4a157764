#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The uplink and downlink against a real, in-process MQTT broker (rumqttd) and a fake head
//! office: an MQTT client that stores batches and acknowledges them, and a tiny HTTP server that
//! serves member snapshots.

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::get,
};
use instore_agent::{
    cache::MemberCache,
    config::SyncConfig,
    engine::Control,
    metrics::Metrics,
    outbox::{NewEvent, Outbox},
};
use instore_protocol::{
    Ack, EventBatch, EventBody, GatewayStatus, MAX_PAYLOAD_BYTES, MemberRecord, MemberSnapshot,
    MembersNotice, SCHEMA_VERSION, SeqRange, topics,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::{
    broker::start_broker,
    sync::{SyncTask, spawn_sync},
    wait::eventually,
};
use tokio::sync::mpsc;

const STORE: &str = "s-1";
const GATEWAY: &str = "gw-1";
const TOKEN: &str = "gw-token";

/// What the fake head office has seen.
#[derive(Default)]
struct Hq {
    stored: Mutex<BTreeSet<u64>>,
    /// Events received, duplicates included.
    received: AtomicUsize,
    /// Acks to swallow before answering (a head office that crashed before replying).
    drop_acks: AtomicUsize,
    statuses: Mutex<Vec<bool>>,
    /// Each boot's floor: the high-water mark when a hello first named it.
    floors: Mutex<std::collections::HashMap<u64, u64>>,
}

impl Hq {
    fn stored(&self) -> Vec<u64> {
        self.stored.lock().unwrap().iter().copied().collect()
    }
    fn last_status(&self) -> Option<bool> {
        self.statuses.lock().unwrap().last().copied()
    }
}

/// Contiguous runs of a batch's sequence numbers, as head office acknowledges them.
fn runs(seqs: &[u64]) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(r) if r.last + 1 == s => r.last = s,
            _ => out.push(SeqRange { first: s, last: s }),
        }
    }
    out
}

/// Connects the fake head office to the broker: stores every batch, then acknowledges it.
async fn start_hq(port: u16, hq: Arc<Hq>) -> AsyncClient {
    let mut options = MqttOptions::new("hq", "127.0.0.1", port);
    options.set_max_packet_size(MAX_PAYLOAD_BYTES + 4096, MAX_PAYLOAD_BYTES + 4096);
    options.set_keep_alive(Duration::from_secs(15));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
        .subscribe(topics::ALL_EVENTS, QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(topics::ALL_STATUS, QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), ready_rx)
        .await
        .unwrap()
        .unwrap();
    let acker = client.clone();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if p.topic == topics::status(GATEWAY) {
                let s: GatewayStatus = serde_json::from_slice(&p.payload).unwrap();
                hq.statuses.lock().unwrap().push(s.online);
                continue;
            }
            let batch = EventBatch::decode(&p.payload).unwrap();
            assert_eq!(batch.gateway_id, GATEWAY);
            let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
            hq.received.fetch_add(seqs.len(), Ordering::SeqCst);
            // "Commit", then acknowledge.
            let high_water = {
                let mut stored = hq.stored.lock().unwrap();
                stored.extend(&seqs);
                stored.last().copied().unwrap_or(0)
            };
            let welcome = batch.hello.as_ref().map(|h| {
                let mut floors = hq.floors.lock().unwrap();
                instore_protocol::Welcome {
                    boot: h.boot,
                    floors: std::iter::once(h.boot)
                        .chain(h.boots.iter().copied())
                        .map(|boot| instore_protocol::BootFloor {
                            boot,
                            floor: *floors.entry(boot).or_insert(high_water),
                        })
                        .collect(),
                }
            });
            if welcome.is_none()
                && hq
                    .drop_acks
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                continue;
            }
            let ack = Ack {
                v: SCHEMA_VERSION,
                gateway_id: GATEWAY.into(),
                ranges: runs(&seqs),
                high_water,
                hello: welcome,
            };
            acker
                .publish(
                    topics::ack(GATEWAY),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&ack).unwrap(),
                )
                .await
                .unwrap();
        }
    });
    client
}

/// A broker with the fake head office connected, losing its first `drop_acks` acks.
async fn head_office(drop_acks: usize) -> (u16, Arc<Hq>, AsyncClient) {
    let broker = start_broker(MAX_PAYLOAD_BYTES + 4096);
    let hq = Arc::new(Hq::default());
    hq.drop_acks.store(drop_acks, Ordering::SeqCst);
    let client = start_hq(broker, hq.clone()).await;
    (broker, hq, client)
}

/// Head office's snapshot endpoint; fails the first `fail_first` requests with 503.
#[derive(Default)]
struct SnapshotServer {
    requests: AtomicUsize,
    fail_first: usize,
    bad_auth: AtomicUsize,
}

fn member(id: &str) -> MemberRecord {
    serde_json::from_value(serde_json::json!({
        "member_id": id, "display_name": "Ms. Li", "tier": "platinum",
        "consent": {"presence": true},
        "identifiers": [{"kind": "ibeacon", "uuid": "f7826da6-4fa2-4e98-8024-bc5b71e0893e",
                         "major": 1, "minor": 2}]
    }))
    .unwrap()
}

async fn snapshot(
    State(server): State<Arc<SnapshotServer>>,
    Path(store): Path<String>,
    headers: HeaderMap,
) -> Result<Json<MemberSnapshot>, StatusCode> {
    let n = server.requests.fetch_add(1, Ordering::SeqCst);
    let auth_ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"))
        && headers
            .get("x-instore-gateway")
            .and_then(|v| v.to_str().ok())
            == Some(GATEWAY);
    if !auth_ok {
        server.bad_auth.fetch_add(1, Ordering::SeqCst);
        return Err(StatusCode::UNAUTHORIZED);
    }
    if n < server.fail_first {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(MemberSnapshot {
        v: SCHEMA_VERSION,
        store_id: store,
        version: 7,
        members: vec![member("M1001"), member("M1002")],
    }))
}

async fn start_http(server: Arc<SnapshotServer>) -> u16 {
    let app = Router::new()
        .route("/api/stores/{store}/members/snapshot", get(snapshot))
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

struct Gateway {
    outbox: Outbox,
    cache: MemberCache,
    metrics: Metrics,
    sync: SyncTask,
    _dir: tempfile::TempDir,
}

fn start_gateway(broker_port: u16, http_port: u16) -> Gateway {
    start_gateway_in(tempfile::tempdir().unwrap(), broker_port, http_port)
}

/// Starts a gateway on an existing data directory (a reboot keeps its files).
fn start_gateway_in(dir: tempfile::TempDir, broker_port: u16, http_port: u16) -> Gateway {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "instore_agent=debug".into()),
        )
        .try_init();
    let metrics = Metrics::default();
    let outbox = Outbox::open(&dir.path().join("outbox.db"), metrics.clone()).unwrap();
    let cache = MemberCache::open(&dir.path().join("members.db")).unwrap();
    let cfg = SyncConfig {
        enabled: true,
        broker: format!("mqtt://127.0.0.1:{broker_port}"),
        hq_url: format!("http://127.0.0.1:{http_port}"),
        token: TOKEN.into(),
        batch_max_events: 25,
        batch_max_age_ms: 20,
        max_inflight_batches: 3,
        reconnect_min_ms: 50,
        reconnect_max_ms: 500,
        ..SyncConfig::default()
    };
    let sync = spawn_sync(STORE, GATEWAY, cfg, &outbox, &cache, &metrics);
    Gateway {
        outbox,
        cache,
        metrics,
        sync,
        _dir: dir,
    }
}

fn arrivals(from: u64, to: u64) -> Vec<NewEvent> {
    (from..=to)
        .map(|n| NewEvent {
            at_ms: instore_agent::now_ms(),
            body: EventBody::Arrive {
                member_id: format!("M{n}"),
                zone: "entrance".into(),
                visit_id: format!("v{n}"),
            },
        })
        .collect()
}

async fn stop(gw: &Gateway) {
    gw.sync.stop(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_head_office_and_acknowledged_ones_leave_the_outbox() {
    let (broker, hq, _hq_client) = head_office(0).await;
    let http = start_http(Arc::new(SnapshotServer::default())).await;

    let gw = start_gateway(broker, http);
    // Some events exist before the uplink has connected, some arrive while it runs.
    gw.outbox.append(arrivals(1, 40)).await.unwrap();
    eventually(
        "the gateway to report online",
        Duration::from_secs(10),
        || async { hq.last_status() == Some(true) },
    )
    .await;
    for chunk in 0..8u64 {
        gw.outbox
            .append(arrivals(41 + chunk * 10, 50 + chunk * 10))
            .await
            .unwrap();
    }
    eventually("the outbox to drain", Duration::from_secs(10), || async {
        gw.outbox.depth().await.unwrap() == 0
    })
    .await;
    assert_eq!(hq.stored(), (1..=120).collect::<Vec<u64>>());
    assert_eq!(gw.metrics.events_acked.get(), 120);
    assert!(
        gw.metrics.batches_sent.get() >= 120 / 25,
        "batched by batch_max_events"
    );
    assert_eq!(gw.metrics.mqtt_connected.get(), 1);
    assert_eq!(gw.metrics.outbox_depth.get(), 0);

    stop(&gw).await;
    eventually("the offline status", Duration::from_secs(5), || async {
        hq.last_status() == Some(false)
    })
    .await;
    assert_eq!(gw.metrics.mqtt_connected.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_makes_the_gateway_resend_and_nothing_is_lost() {
    let (broker, hq, _hq_client) = head_office(1).await;
    let http = start_http(Arc::new(SnapshotServer::default())).await;

    let gw = start_gateway(broker, http);
    gw.outbox.append(arrivals(1, 10)).await.unwrap();
    eventually(
        "the first batch at head office",
        Duration::from_secs(10),
        || async { hq.stored().len() == 10 },
    )
    .await;
    // Its ack was swallowed: the events stay in the outbox...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.outbox.depth().await.unwrap(), 10);
    // ...until the ack timeout re-sends them and head office acknowledges the duplicates.
    eventually(
        "the re-sent batch to be acknowledged",
        Duration::from_secs(20),
        || async { gw.outbox.depth().await.unwrap() == 0 },
    )
    .await;
    assert_eq!(hq.stored(), (1..=10).collect::<Vec<u64>>());
    assert!(
        hq.received.load(Ordering::SeqCst) >= 20,
        "the batch went twice"
    );
    assert_eq!(gw.metrics.events_acked.get(), 10);
    stop(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_office_without_change_streams_still_brings_its_whole_store_snapshot() {
    let (broker, hq, hq_client) = head_office(0).await;
    let server = Arc::new(SnapshotServer {
        fail_first: 1,
        ..SnapshotServer::default()
    });
    let http = start_http(server.clone()).await;

    let mut gw = start_gateway(broker, http);
    eventually(
        "the gateway to report online",
        Duration::from_secs(10),
        || async { hq.last_status() == Some(true) },
    )
    .await;
    let notice = MembersNotice {
        v: SCHEMA_VERSION,
        store_id: STORE.into(),
        version: 7,
        heads: Default::default(),
        campaigns: 0,
    };
    hq_client
        .publish(
            topics::members(STORE),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&notice).unwrap(),
        )
        .await
        .unwrap();
    let control = tokio::time::timeout(Duration::from_secs(10), gw.sync.engine.recv())
        .await
        .expect("the engine gets the new member set")
        .unwrap();
    let Control::Members(members) = control else {
        panic!("expected a member set")
    };
    // Its `changes` endpoint is missing (404): the legacy snapshot goes to the legacy channel.
    assert_eq!(members.index.version(), 7);
    assert_eq!(members.index.len(), 2);
    assert_eq!(gw.cache.version().unwrap(), 7);
    assert_eq!(
        gw.metrics
            .member_change_failures
            .get_or_create(&vec![("reason", "status")])
            .get(),
        1,
        "the 503 was retried"
    );
    // The counter is bumped just after the hand-over to the engine: give it a moment.
    for _ in 0..100 {
        if gw.metrics.member_snapshots_applied.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.metrics.member_snapshots_applied.get(), 1);
    assert_eq!(
        server.bad_auth.load(Ordering::SeqCst),
        0,
        "token and gateway id sent"
    );

    // A notice for a version the cache already has fetches nothing.
    let before = server.requests.load(Ordering::SeqCst);
    hq_client
        .publish(
            topics::members(STORE),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&notice).unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.requests.load(Ordering::SeqCst), before);
    stop(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_acks_are_counted_and_ignored() {
    let (broker, hq, hq_client) = head_office(0).await;
    let http = start_http(Arc::new(SnapshotServer::default())).await;
    let gw = start_gateway(broker, http);
    eventually(
        "the gateway to report online",
        Duration::from_secs(10),
        || async { hq.last_status() == Some(true) },
    )
    .await;
    // Give the gateway's subscriptions a moment to settle after its online status.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for bad in [
        &b"not json"[..],
        br#"{"v":1,"gateway_id":"gw-1","ranges":[{"first":5,"last":2}],"high_water":5}"#,
        br#"{"v":1,"gateway_id":"gw-other","ranges":[{"first":1,"last":2}],"high_water":2}"#,
    ] {
        hq_client
            .publish(topics::ack(GATEWAY), QoS::AtLeastOnce, false, bad.to_vec())
            .await
            .unwrap();
    }
    eventually(
        "three bad payloads counted",
        Duration::from_secs(5),
        || async { gw.metrics.mqtt_bad_payloads.get() == 3 },
    )
    .await;
    // The uplink still works afterwards.
    gw.outbox.append(arrivals(1, 3)).await.unwrap();
    eventually("the outbox to drain", Duration::from_secs(10), || async {
        gw.outbox.depth().await.unwrap() == 0
    })
    .await;
    stop(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_deletes_no_unsent_event_and_cannot_push_the_numbering_out_of_reach() {
    // Head office stores but never answers: what the gateway sent stays in flight, the rest
    // unsent (3 batches of 25 in flight at most).
    let (broker, hq, hq_client) = head_office(usize::MAX).await;
    let http = start_http(Arc::new(SnapshotServer::default())).await;
    let gw = start_gateway(broker, http);
    gw.outbox.append(arrivals(1, 200)).await.unwrap();
    eventually(
        "75 events at head office",
        Duration::from_secs(10),
        || async { hq.stored().len() == 75 },
    )
    .await;
    let refused = |reason: &'static str| {
        gw.metrics
            .acks_refused
            .get_or_create(&vec![("reason", reason)])
            .get()
    };
    let forge = |ack: serde_json::Value| {
        let c = hq_client.clone();
        async move {
            c.publish(
                topics::ack(GATEWAY),
                QoS::AtLeastOnce,
                false,
                ack.to_string(),
            )
            .await
            .unwrap();
        }
    };
    // Every number, with a plausible mark: only what was sent may go (a forged ack for sent
    // events is the authentication issue's to stop), the unsent 125 stay.
    forge(serde_json::json!({"v": 1, "gateway_id": GATEWAY,
        "ranges": [{"first": 1, "last": 10_000}], "high_water": 75}))
    .await;
    eventually(
        "the 75 sent deleted, the unsent part refused",
        Duration::from_secs(5),
        || async { refused("unsent") == 1 && gw.outbox.depth().await.unwrap() == 125 },
    )
    .await;
    // And it stays so: nothing else deletes the unsent 125 (head office never answers).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.outbox.depth().await.unwrap(), 125);
    // A mark just below the old limit would have left the gateway unable to number events (and
    // to start again): refused, and the next event is numbered as before.
    forge(
        serde_json::json!({"v": 1, "gateway_id": GATEWAY, "ranges": [],
        "high_water": (1u64 << 62) - 1}),
    )
    .await;
    eventually("the mark refused", Duration::from_secs(5), || async {
        refused("high_water") == 1
    })
    .await;
    let next = gw.outbox.append(arrivals(201, 201)).await.unwrap();
    assert_eq!(next[0].seq, 201);
    assert_eq!(gw.outbox.stats().await.unwrap().high_water, 75);
    stop(&gw).await;
}

/// A TCP proxy between the gateway and the broker whose connections the test can cut, like a 4G
/// link dropping.
struct Proxy {
    port: u16,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(broker_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let registry = links.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                let task = tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", broker_port))
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, links }
    }

    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_dropped_connection_everything_unacknowledged_is_sent_again() {
    // Head office stores but cannot answer (its acks are lost) until the link drops.
    let (broker, hq, _hq_client) = head_office(usize::MAX).await;
    let proxy = Proxy::start(broker).await;
    let http = start_http(Arc::new(SnapshotServer::default())).await;

    let gw = start_gateway(proxy.port, http);
    gw.outbox.append(arrivals(1, 30)).await.unwrap();
    eventually(
        "the events at head office",
        Duration::from_secs(10),
        || async { hq.stored().len() == 30 },
    )
    .await;
    let sent_before = gw.metrics.events_sent.get();
    hq.drop_acks.store(0, Ordering::SeqCst);
    proxy.cut();
    // Well inside the 10 s ack timeout: it is the reconnect that triggers the re-send.
    eventually(
        "the re-sent events to be acknowledged",
        Duration::from_secs(5),
        || async { gw.outbox.depth().await.unwrap() == 0 },
    )
    .await;
    assert!(gw.metrics.mqtt_reconnects.get() >= 1);
    assert!(gw.metrics.events_sent.get() >= sent_before + 30);
    assert_eq!(hq.stored(), (1..=30).collect::<Vec<u64>>());
    assert_eq!(gw.metrics.events_acked.get(), 30);
    stop(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_before_the_acks_arrive_loses_nothing() {
    let (broker, hq, _hq_client) = head_office(usize::MAX).await;
    let http = start_http(Arc::new(SnapshotServer::default())).await;

    let gw = start_gateway(broker, http);
    gw.outbox.append(arrivals(1, 20)).await.unwrap();
    eventually(
        "the events at head office",
        Duration::from_secs(10),
        || async { hq.stored().len() == 20 },
    )
    .await;
    // Power is pulled before any ack came back.
    stop(&gw).await;
    gw.outbox.close().await;
    let Gateway { _dir: dir, .. } = gw;
    hq.drop_acks.store(0, Ordering::SeqCst);

    let gw = start_gateway_in(dir, broker, http);
    assert_eq!(
        gw.outbox.depth().await.unwrap(),
        20,
        "nothing was deleted unacknowledged"
    );
    let more = gw.outbox.append(arrivals(21, 25)).await.unwrap();
    assert_eq!(more[0].seq, 21, "numbering continues after the reboot");
    eventually("the outbox to drain", Duration::from_secs(10), || async {
        gw.outbox.depth().await.unwrap() == 0
    })
    .await;
    assert_eq!(hq.stored(), (1..=25).collect::<Vec<u64>>());
    stop(&gw).await;
}
