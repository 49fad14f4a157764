//! The uplink under fire, from the outside: real `instore-agent` and `instore-sync` processes, the
//! embedded broker or Debian's Mosquitto, a TCP proxy standing in for the store's internet link,
//! SIGKILLs, broker restarts and garbage on head office's topics.
//!
//! Every test ends the same way ([`settle_and_verify`]): the busy agent is stopped, a quiet one
//! (same database, no shoppers) drains what is left, and then the agent's own record — the last
//! sequence number its outbox issued — must equal head office's `last_seq` and `events_received`,
//! with no gap: nothing lost, nothing stored twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use support::*;

const WAIT: Duration = Duration::from_secs(90);
/// Members in the simulated population (and at head office).
const POPULATION: u32 = 3000;

/// One store and head office, with the broker of the given kind.
struct Rig {
    kind: BrokerKind,
    mosquitto: Option<Mosquitto>,
    hq: Hq,
    agent_dir: PathBuf,
    setup: AgentSetup,
    // Last: the folder outlives the processes above, whose drops kill them.
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(kind: BrokerKind, gateway: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mosquitto = match kind {
            BrokerKind::Embedded => None,
            BrokerKind::Mosquitto => Some(Mosquitto::start(dir.path()).await),
        };
        let url = mosquitto.as_ref().map(Mosquitto::url);
        let hq = start_hq_with(dir.path(), url.as_deref()).await;
        hq.import_members(population_ndjson(POPULATION)).await;
        let agent_dir = dir.path().join("store");
        std::fs::create_dir_all(&agent_dir).unwrap();
        // A busy store: about 50 shoppers a second, each an arrival, an alert and a departure
        // a few seconds later — some 150 events a second.
        let mut setup = AgentSetup::new("store-c", gateway, free_port());
        setup.shoppers_per_minute = 3000.0;
        setup.population = POPULATION;
        setup.mean_dwell_s = 4.0;
        setup.depart_after_s = 2;
        Rig {
            kind,
            mosquitto,
            hq,
            agent_dir,
            setup,
            _dir: dir,
        }
    }

    fn gateway(&self) -> &str {
        &self.setup.gateway
    }

    fn agent_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.setup.http_port)
    }

    /// Starts an agent with `setup` (written as `name`) and waits for its HTTP server.
    async fn start_agent_with(&self, setup: &AgentSetup, name: &str) -> Proc {
        let cfg = setup.write(&self.agent_dir, &self.hq, ALERT_ON_EVERY_ARRIVAL, name);
        let p = Proc::spawn(
            &bin("instore-agent"),
            &["run", "--config", cfg.to_str().unwrap()],
            self.agent_dir.join("agent.log"),
        );
        let url = self.agent_url("/healthz");
        eventually("the agent's /healthz", WAIT, || {
            let url = url.clone();
            async move {
                reqwest::get(url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        p
    }

    async fn start_agent(&self) -> Proc {
        self.start_agent_with(&self.setup, "agent.toml").await
    }

    async fn agent_metrics(&self) -> String {
        scrape(&self.agent_url("/metrics")).await
    }

    async fn gw(&self) -> Option<serde_json::Value> {
        self.hq.gateway(self.gateway()).await
    }

    /// Waits until head office holds a sequence number above `beyond`; returns its view.
    async fn progress_beyond(&self, beyond: u64) -> serde_json::Value {
        eventually(
            &format!("{} past seq {beyond} at head office", self.gateway()),
            WAIT,
            || async move { self.gw().await.filter(|g| seq(g, "last_seq") > beyond) },
        )
        .await
    }

    /// With the agent running: reads how many events it has written, then waits until head
    /// office holds all of them exactly once. Returns that count.
    async fn written_so_far_arrives(&self) -> u64 {
        let written = metric(
            &self.agent_metrics().await,
            "instore_agent_outbox_appended_total",
        ) as u64;
        assert!(written > 0, "the agent wrote nothing");
        eventually(
            &format!("the {written} events the agent wrote, at head office once"),
            WAIT,
            || async move { self.gw().await.filter(|g| seq(g, "last_seq") >= written) },
        )
        .await;
        written
    }
}

fn seq(g: &serde_json::Value, key: &str) -> u64 {
    g[key].as_u64().unwrap_or(0)
}

/// Stops `busy`, drains the rest of its outbox with a quiet agent (same database, no shoppers),
/// stops that too, and checks head office against the agent's own record: the last sequence
/// number its outbox issued. Returns head office's final view of the gateway.
async fn settle_and_verify(rig: &Rig, mut busy: Proc) -> serde_json::Value {
    busy.signal("TERM");
    assert!(
        busy.wait_exit(Duration::from_secs(20)).is_some(),
        "the agent did not stop on SIGTERM\n{}",
        busy.log_text()
    );
    let mut quiet_setup = rig.setup.clone();
    quiet_setup.shoppers_per_minute = 0.0001;
    let mut quiet = rig.start_agent_with(&quiet_setup, "quiet.toml").await;
    eventually("the outbox drained to head office", WAIT, || async {
        let m = rig.agent_metrics().await;
        let connected = metric(&m, "instore_agent_mqtt_connected") == 1.0;
        let depth = metric(&m, "instore_agent_outbox_depth");
        let g = rig.gw().await?;
        (connected && depth == 0.0 && seq(&g, "last_seq") == seq(&g, "events_received"))
            .then_some(())
    })
    .await;
    quiet.signal("TERM");
    assert!(
        quiet.wait_exit(Duration::from_secs(20)).is_some(),
        "the quiet agent did not stop on SIGTERM\n{}",
        quiet.log_text()
    );

    let (last_issued, left) = outbox_record(&rig.agent_dir.join("data")).await;
    let g = rig.gw().await.expect("the gateway is listed");
    let ctx = format!("agent issued 1..={last_issued}, {left} unacknowledged; head office: {g}");
    assert!(last_issued > 0, "{ctx}");
    assert_eq!(seq(&g, "last_seq"), last_issued, "{ctx}");
    assert_eq!(seq(&g, "events_received"), last_issued, "{ctx}");
    assert_eq!(g["gaps"], serde_json::json!([]), "{ctx}");
    assert_eq!(left, 0, "{ctx}");
    // Shedding happens only past the byte quota, far away in these tests: a listed shed range
    // here would be events thrown away.
    if let Some(shed) = g.get("shed").and_then(|s| s.as_array()) {
        assert!(shed.is_empty(), "{ctx}");
    }
    eprintln!(
        "{:?} {}: {} events, {} duplicates dropped at head office",
        rig.kind,
        rig.gateway(),
        last_issued,
        seq(&g, "duplicates_dropped")
    );
    g
}

/// The agent's own record, read from its outbox file with the agent stopped: the last sequence
/// number issued and the events still unacknowledged.
async fn outbox_record(data_dir: &Path) -> (u64, u64) {
    let path = instore_agent::runtime::outbox_db(data_dir);
    let (metrics, _registry) = instore_agent::metrics::Metrics::new();
    let outbox = instore_agent::outbox::Outbox::open(&path, metrics).unwrap();
    let stats = outbox.stats().await.unwrap();
    outbox.close().await;
    (stats.last_seq, stats.depth)
}

// --- SIGKILL mid-burst ---------------------------------------------------------------------

async fn agent_killed_again_and_again(kind: BrokerKind) {
    let rig = Rig::new(kind, "gw-kill").await;
    let mut seen = 0;
    for round in 0..10u64 {
        let mut agent = rig.start_agent().await;
        // In full flow first (batches in flight, group commits under way), then the plug is
        // pulled at a different point of the burst each round.
        seen = seq(&rig.progress_beyond(seen + 30).await, "last_seq");
        tokio::time::sleep(Duration::from_millis(100 + 97 * round)).await;
        agent.signal("KILL");
        agent.wait_exit(Duration::from_secs(5)).expect("killed");
    }
    let agent = rig.start_agent().await;
    rig.progress_beyond(seen).await;
    settle_and_verify(&rig, agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_an_agent_killed_mid_burst_again_and_again_loses_and_doubles_nothing() {
    agent_killed_again_and_again(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_an_agent_killed_mid_burst_again_and_again_loses_and_doubles_nothing() {
    agent_killed_again_and_again(BrokerKind::Mosquitto).await;
}

// --- broker and head office restarts -------------------------------------------------------

async fn broker_and_head_office_restarted_mid_stream(kind: BrokerKind) {
    let mut rig = Rig::new(kind, "gw-restart").await;
    let agent = rig.start_agent().await;
    let mut seen = seq(&rig.progress_beyond(0).await, "last_seq");

    // The broker goes away mid-stream.
    match kind {
        BrokerKind::Mosquitto => {
            let m = rig.mosquitto.as_mut().unwrap();
            m.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            m.start_again().await;
        }
        // The embedded broker lives and dies with head office.
        BrokerKind::Embedded => {
            rig.hq.stop("KILL");
            tokio::time::sleep(Duration::from_secs(3)).await;
            rig.hq.start_again().await;
        }
    }
    seen = seq(&rig.progress_beyond(seen + 200).await, "last_seq");

    // Head office restarts (a deploy), then is killed outright while the stream goes on.
    rig.hq.stop("TERM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.hq.start_again().await;
    seen = seq(&rig.progress_beyond(seen + 200).await, "last_seq");
    rig.hq.stop("KILL");
    rig.hq.start_again().await;
    rig.progress_beyond(seen + 200).await;

    rig.written_so_far_arrives().await;
    settle_and_verify(&rig, agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_restarts_of_broker_and_head_office_mid_stream_lose_and_double_nothing() {
    broker_and_head_office_restarted_mid_stream(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_restarts_of_broker_and_head_office_mid_stream_lose_and_double_nothing() {
    broker_and_head_office_restarted_mid_stream(BrokerKind::Mosquitto).await;
}

// --- the store's link cut ------------------------------------------------------------------

fn broker_port(rig: &Rig) -> u16 {
    let url = match &rig.mosquitto {
        Some(m) => m.url(),
        None => rig.hq.mqtt.clone(),
    };
    url.rsplit_once(':').unwrap().1.parse().unwrap()
}

async fn link_cut_and_restored(kind: BrokerKind) {
    let mut rig = Rig::new(kind, "gw-cut").await;
    let proxy = TcpProxy::start(broker_port(&rig)).await;
    rig.setup.broker = Some(proxy.url());
    let agent = rig.start_agent().await;
    let mut seen = seq(&rig.progress_beyond(0).await, "last_seq");

    for outage_s in [12, 4] {
        proxy.cut();
        // What was already past the proxy may still reach head office; then nothing may.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cut_at = seq(&rig.gw().await.unwrap(), "last_seq");
        tokio::time::sleep(Duration::from_secs(outage_s)).await;
        let stuck = seq(&rig.gw().await.unwrap(), "last_seq");
        let written = metric(
            &rig.agent_metrics().await,
            "instore_agent_outbox_appended_total",
        ) as u64;
        assert_eq!(stuck, cut_at, "events crossed a cut link");
        assert!(
            written > stuck,
            "the store wrote {written} events; head office holds {stuck}"
        );
        proxy.restore();
        seen = seq(&rig.progress_beyond(seen.max(written)).await, "last_seq");
    }
    rig.written_so_far_arrives().await;
    settle_and_verify(&rig, agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_a_cut_store_link_loses_and_doubles_nothing() {
    link_cut_and_restored(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_a_cut_store_link_loses_and_doubles_nothing() {
    link_cut_and_restored(BrokerKind::Mosquitto).await;
}

/// The link dies silently (no reset, no FIN): the agent must notice by itself (keepalive), the
/// broker must publish its last will, and everything written meanwhile must arrive afterwards.
async fn link_blackholed(kind: BrokerKind) {
    let mut rig = Rig::new(kind, "gw-silent").await;
    let proxy = TcpProxy::start(broker_port(&rig)).await;
    rig.setup.broker = Some(proxy.url());
    let agent = rig.start_agent().await;
    let seen = seq(&rig.progress_beyond(0).await, "last_seq");
    eventually("the gateway online at head office", WAIT, || async {
        rig.gw().await.filter(|g| g["online"] == true)
    })
    .await;

    proxy.blackhole();
    // Keepalive is 15 s: the broker gives up after 1.5 times that and publishes the will.
    eventually(
        "head office to see the silent gateway offline",
        Duration::from_secs(60),
        || async { rig.gw().await.filter(|g| g["online"] == false) },
    )
    .await;
    let stuck = seq(&rig.gw().await.unwrap(), "last_seq");
    let written = metric(
        &rig.agent_metrics().await,
        "instore_agent_outbox_appended_total",
    ) as u64;
    assert!(
        written > stuck,
        "the store wrote {written} events; head office holds {stuck}"
    );
    proxy.restore();
    rig.progress_beyond(seen.max(written)).await;
    eventually("the gateway online again", WAIT, || async {
        rig.gw().await.filter(|g| g["online"] == true)
    })
    .await;
    rig.written_so_far_arrives().await;
    settle_and_verify(&rig, agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_a_silently_dead_link_is_noticed_and_loses_and_doubles_nothing() {
    link_blackholed(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_a_silently_dead_link_is_noticed_and_loses_and_doubles_nothing() {
    link_blackholed(BrokerKind::Mosquitto).await;
}

// --- broker down for a minute --------------------------------------------------------------

/// Most connection attempts the agent's backoff allows within `window`: every delay is at least
/// half the current window, which doubles from `min` up to `max`.
fn max_attempts(min_ms: u64, max_ms: u64, window: Duration) -> u64 {
    let mut w = min_ms;
    let mut t = 0;
    let mut n = 0;
    loop {
        t += w / 2;
        if t > window.as_millis() as u64 {
            return n;
        }
        n += 1;
        w = (w * 2).min(max_ms);
    }
}

async fn broker_down_for_a_minute(kind: BrokerKind) {
    let mut rig = Rig::new(kind, "gw-down").await;
    // The shipped defaults: 0.5 s doubling to a 30 s cap.
    rig.setup.reconnect_min_ms = 500;
    rig.setup.reconnect_max_ms = 30_000;
    let agent = rig.start_agent().await;
    let seen = seq(&rig.progress_beyond(0).await, "last_seq");

    let before = metric(
        &rig.agent_metrics().await,
        "instore_agent_mqtt_reconnects_total",
    );
    let down_at = tokio::time::Instant::now();
    match kind {
        BrokerKind::Mosquitto => rig.mosquitto.as_mut().unwrap().kill(),
        BrokerKind::Embedded => rig.hq.stop("KILL"),
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let attempts = metric(
        &rig.agent_metrics().await,
        "instore_agent_mqtt_reconnects_total",
    ) - before;
    let bound = max_attempts(500, 30_000, down_at.elapsed());
    let written = metric(
        &rig.agent_metrics().await,
        "instore_agent_outbox_appended_total",
    ) as u64;
    eprintln!("{kind:?}: {attempts} connection attempts in 60 s (bound {bound})");
    assert!(
        attempts >= 1.0 && attempts <= bound as f64,
        "{attempts} connection attempts in a minute; the backoff allows {bound}"
    );

    match kind {
        BrokerKind::Mosquitto => rig.mosquitto.as_mut().unwrap().start_again().await,
        BrokerKind::Embedded => rig.hq.start_again().await,
    }
    // The next attempt may be up to one capped delay away.
    rig.progress_beyond(seen.max(written)).await;
    rig.written_so_far_arrives().await;
    settle_and_verify(&rig, agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_down_for_a_minute_few_connection_attempts_then_everything_arrives() {
    broker_down_for_a_minute(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_down_for_a_minute_few_connection_attempts_then_everything_arrives() {
    broker_down_for_a_minute(BrokerKind::Mosquitto).await;
}

// --- the outbox rolled back (a lying SD card) ------------------------------------------------

/// The outbox's files (database, WAL, shared memory) in `data`.
fn outbox_files(data: &Path) -> Vec<PathBuf> {
    ["outbox.db", "outbox.db-wal", "outbox.db-shm"]
        .iter()
        .map(|f| data.join(f))
        .collect()
}

async fn outbox_rolled_back(kind: BrokerKind) {
    let rig = Rig::new(kind, "gw-rollback").await;
    let data = rig.agent_dir.join("data");
    let saved = rig.agent_dir.join("saved");
    std::fs::create_dir_all(&saved).unwrap();

    // A first run; its files, as a card that never really flushed what came after would keep
    // them.
    let mut agent = rig.start_agent().await;
    rig.progress_beyond(100).await;
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(20)).expect("stopped");
    for f in outbox_files(&data) {
        if f.exists() {
            std::fs::copy(&f, saved.join(f.file_name().unwrap())).unwrap();
        }
    }
    let (old_last, _) = outbox_record(&data).await;

    // A second run: head office acknowledges numbers the saved files never issued.
    let mut agent = rig.start_agent().await;
    rig.progress_beyond(old_last + 300).await;
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(20)).expect("stopped");
    let acknowledged = eventually("head office settled", WAIT, || async {
        let g = rig.gw().await?;
        (seq(&g, "last_seq") == seq(&g, "events_received")).then_some(seq(&g, "last_seq"))
    })
    .await;

    // The power comes back with the old files.
    for f in outbox_files(&data) {
        let _ = std::fs::remove_file(&f);
        let s = saved.join(f.file_name().unwrap());
        if s.exists() {
            std::fs::copy(&s, &f).unwrap();
        }
    }
    let agent = rig.start_agent().await;
    rig.progress_beyond(acknowledged + 100).await;
    // Every event this run created must arrive under a number above what head office held:
    // reusing one would have it dropped as a duplicate of a different event.
    let m = rig.agent_metrics().await;
    let created = metric(&m, "instore_agent_outbox_appended_total") as u64;
    eventually(
        &format!("the {created} events created after the rollback, above #{acknowledged}"),
        WAIT,
        || async {
            rig.gw().await.filter(|g| {
                seq(g, "last_seq") >= acknowledged + created
                    && seq(g, "events_received") == seq(g, "last_seq")
            })
        },
    )
    .await;
    eprintln!(
        "{kind:?}: rolled back from #{acknowledged} to #{old_last}; {} events renumbered",
        metric(&m, "instore_agent_outbox_renumbered_total")
    );
    settle_and_verify(&rig, agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_a_rolled_back_outbox_reuses_no_acknowledged_number() {
    outbox_rolled_back(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_a_rolled_back_outbox_reuses_no_acknowledged_number() {
    outbox_rolled_back(BrokerKind::Mosquitto).await;
}

// --- garbage on head office's topics -------------------------------------------------------

async fn garbage_is_refused_counted_and_ingest_goes_on(kind: BrokerKind) {
    let rig = Rig::new(kind, "gw-garbage").await;
    let agent = rig.start_agent().await;
    let g = rig.progress_beyond(0).await;
    let bad = |m: &str, reason: &str| {
        metric(
            m,
            &format!("instore_sync_bad_payloads_total{{reason=\"{reason}\"}}"),
        )
    };
    let m0 = rig.hq.metrics().await;

    // A batch as the agent would send it, cut short; bytes that are not JSON at all; a
    // well-formed batch claiming to be another gateway's. All on the real agent's topic.
    let batch = instore_protocol::EventBatch {
        v: instore_protocol::SCHEMA_VERSION,
        gateway_id: rig.gateway().into(),
        store_id: "store-c".into(),
        hello: None,
        outbox: None,
        events: (1..=50)
            .map(|s| instore_protocol::Event {
                seq: 1_000_000 + s,
                at_ms: 1,
                body: instore_protocol::EventBody::GatewayStarted {
                    version: "forged".into(),
                },
            })
            .collect(),
    };
    let full = serde_json::to_vec(&batch).unwrap();
    let mut foreign = batch.clone();
    foreign.gateway_id = "gw-someone-else".into();
    publish_raw(
        &rig.hq,
        ("gw-someone-else", "store-c"),
        false,
        &instore_protocol::topics::events(rig.gateway()),
        vec![
            full[..full.len() / 2].to_vec(),
            b"\x00\xff\xfe not json at all".to_vec(),
            serde_json::to_vec(&foreign).unwrap(),
        ],
    )
    .await;

    let m1 = eventually("the garbage counted at head office", WAIT, || async {
        let m = rig.hq.metrics().await;
        (bad(&m, "malformed") >= bad(&m0, "malformed") + 2.0
            && bad(&m, "gateway_mismatch") > bad(&m0, "gateway_mismatch"))
        .then_some(m)
    })
    .await;
    eprintln!(
        "{kind:?}: malformed {} -> {}, gateway_mismatch {} -> {}",
        bad(&m0, "malformed"),
        bad(&m1, "malformed"),
        bad(&m0, "gateway_mismatch"),
        bad(&m1, "gateway_mismatch"),
    );
    // The real agent's events keep arriving after the garbage, and none of the forged numbers
    // were stored.
    rig.progress_beyond(seq(&g, "last_seq") + 300).await;
    rig.written_so_far_arrives().await;
    let g = settle_and_verify(&rig, agent).await;
    assert!(seq(&g, "last_seq") < 1_000_000, "{g}");
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_garbage_on_the_events_topic_is_refused_counted_and_ingest_goes_on() {
    garbage_is_refused_counted_and_ingest_goes_on(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_garbage_on_the_events_topic_is_refused_counted_and_ingest_goes_on() {
    garbage_is_refused_counted_and_ingest_goes_on(BrokerKind::Mosquitto).await;
}

#[test]
fn the_reconnect_bound_follows_the_backoff() {
    // 0.25, 0.5, 1, 2, 4, 8, 15, 15 s at the least: 8 attempts fit in 46 s, 9 in 61 s.
    assert_eq!(max_attempts(500, 30_000, Duration::from_secs(60)), 8);
    assert_eq!(max_attempts(500, 30_000, Duration::from_secs(62)), 9);
}
