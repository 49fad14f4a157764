//! `instore-bench uplink`: the store-to-head-office path over loopback, in one process (head office
//! with its embedded broker, and the real agent runtime), measured three ways:
//!
//! 1. **Ingest**: pre-encoded event batches published straight to head office's broker by one
//!    MQTT client; timed from the first publish until head office's ack (sent after its commit)
//!    carries the last number. Measures broker + decode + SQLite ingest + ack, not the agent.
//! 2. **Drain**: an agent outbox filled with N events while no agent runs (a store offline for
//!    days), then the agent started; timed from its start until head office acknowledges the
//!    N-th event.
//! 3. **Steady load**: an agent whose simulated crowd produces a steady stream; the outbox's own
//!    counters give write transactions (each one fsync with `synchronous=FULL`) per 1,000 events.
//!
//! Both programs share the machine's cores, as they would not in production: the figures are a
//! floor for head office and for a gateway.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use instore_agent::{
    config::AgentConfig,
    metrics::Metrics,
    outbox::{NewEvent, Outbox, OutboxOptions},
};
use instore_protocol::{Ack, Event, EventBatch, EventBody, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const API_TOKEN: &str = "bench-api-token";
const SECRET: &str = "bench-gateway-secret-0123456789";
const STORE: &str = "bench-store";
/// A quota no run of this benchmark reaches: shedding would make the drain figure meaningless.
const QUOTA_BYTES: u64 = 16 << 30;

#[derive(Debug, Clone, clap::Args)]
pub struct UplinkArgs {
    /// Events buffered in the outbox before the drain starts.
    #[arg(long, default_value_t = 1_000_000)]
    pub drain_events: u64,
    /// Events published straight to head office for the ingest figure.
    #[arg(long, default_value_t = 1_000_000)]
    pub ingest_events: u64,
    /// Events per batch in the ingest run (the agent's default `batch_max_events`).
    #[arg(long, default_value_t = 500)]
    pub ingest_batch: usize,
    /// Seconds of steady load for the fsync figure (0 skips it).
    #[arg(long, default_value_t = 30)]
    pub steady_s: u64,
    /// Shoppers per minute during the steady load (each makes an arrival, an alert and a
    /// departure event).
    #[arg(long, default_value_t = 3000.0)]
    pub shoppers_per_minute: f64,
    /// Extra lines for the agent's `[sync]` table in the drain and steady runs, e.g.
    /// `batch_max_events = 1000`.
    #[arg(long, default_value = "")]
    pub sync_extra: String,
}

pub fn run(args: UplinkArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(uplink(args))
}

struct HqHandle {
    office: instore_sync::HeadOffice,
    cancel: CancellationToken,
    http: String,
    mqtt: String,
}

async fn start_hq(dir: &Path) -> anyhow::Result<HqHandle> {
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "data_dir = {dir:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[api]\ntoken = \"{API_TOKEN}\"\n\
         [auth]\ngateway_secret = \"{SECRET}\"\n[broker]\nlisten = \"127.0.0.1:0\"\n",
        dir = dir.display().to_string(),
    );
    let cfg = instore_sync::HqConfig::parse(&text, "bench hq.toml")?;
    let cancel = CancellationToken::new();
    let office = instore_sync::start(cfg, cancel.clone()).await?;
    Ok(HqHandle {
        http: format!("http://{}", office.http_addr()),
        mqtt: office.mqtt_url(),
        office,
        cancel,
    })
}

/// The broker login of `gateway` (head office's embedded broker refuses anonymous clients); the
/// client ids above name the store, which head office has not learnt yet.
fn login_token(gateway: &str) -> anyhow::Result<String> {
    instore_protocol::token::gateway_token(SECRET.as_bytes(), STORE, gateway)
        .context("minting the gateway token")
}

/// Follows head office's acks to `gateway`: the watch holds the highest `high_water` seen.
async fn ack_watch(mqtt: &str, gateway: &str) -> anyhow::Result<watch::Receiver<u64>> {
    let (host, port) = host_port(mqtt)?;
    let mut opts = MqttOptions::new(format!("{gateway}:{STORE}:bench-acks"), host, port);
    opts.set_credentials(gateway, login_token(gateway)?);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(topics::ack(gateway), QoS::AtMostOnce)
        .await?;
    let (tx, rx) = watch::channel(0u64);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    if let Ok(ack) = Ack::decode(&p.payload) {
                        tx.send_if_modified(|h| {
                            let higher = ack.high_water > *h;
                            *h = (*h).max(ack.high_water);
                            higher
                        });
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .context("no SUBACK for the ack topic")??;
    Ok(rx)
}

fn host_port(mqtt: &str) -> anyhow::Result<(String, u16)> {
    let rest = mqtt.strip_prefix("mqtt://").context("mqtt:// URL")?;
    let (h, p) = rest.rsplit_once(':').context("host:port")?;
    Ok((h.to_string(), p.parse()?))
}

/// Waits until `acks` reaches `target`, printing progress every 5 s; returns the elapsed time
/// since `t0`.
async fn wait_for_ack(
    acks: &mut watch::Receiver<u64>,
    target: u64,
    t0: Instant,
    what: &str,
) -> anyhow::Result<Duration> {
    let mut last_print = Instant::now();
    loop {
        let h = *acks.borrow_and_update();
        if h >= target {
            return Ok(t0.elapsed());
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "  {what}: {h}/{target} acknowledged after {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("{what}: stuck at {h}/{target} after 30 minutes");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), acks.changed()).await;
    }
}

/// A plausible presence event: what most of a busy store's outbox holds.
fn arrive(i: u64) -> EventBody {
    EventBody::Arrive {
        member_id: format!("M{:06}", 1 + i % 65_535),
        zone: "entrance".into(),
        visit_id: format!("v-{i:016x}"),
    }
}

async fn uplink(args: UplinkArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let hq = start_hq(&tmp.path().join("hq")).await?;
    println!("uplink: head office with its embedded broker and the agent, one process, loopback");

    if args.ingest_events > 0 {
        ingest(&hq, args.ingest_events, args.ingest_batch.max(1)).await?;
    }
    if args.drain_events > 0 {
        drain(&hq, tmp.path(), args.drain_events, &args.sync_extra).await?;
    }
    if args.steady_s > 0 {
        steady(&hq, tmp.path(), &args).await?;
    }
    hq.cancel.cancel();
    hq.office.wait().await?;
    Ok(())
}

async fn ingest(hq: &HqHandle, n: u64, batch: usize) -> anyhow::Result<()> {
    let gateway = "bench-ingest";
    let mut acks = ack_watch(&hq.mqtt, gateway).await?;
    // Encoded first: the timed part is head office's work, not serde's on the sending side.
    let mut payloads = Vec::new();
    let mut bytes = 0usize;
    let mut seq = 1u64;
    let at_ms = instore_agent::now_ms();
    while seq <= n {
        let last = (seq + batch as u64 - 1).min(n);
        let b = EventBatch {
            v: SCHEMA_VERSION,
            gateway_id: gateway.into(),
            store_id: STORE.into(),
            hello: None,
            outbox: None,
            events: (seq..=last)
                .map(|s| Event {
                    seq: s,
                    at_ms,
                    body: arrive(s),
                })
                .collect(),
        };
        let p = serde_json::to_vec(&b)?;
        bytes += p.len();
        payloads.push(p);
        seq = last + 1;
    }
    let (host, port) = host_port(&hq.mqtt)?;
    let mut opts = MqttOptions::new(format!("{gateway}:{STORE}:bench-publisher"), host, port);
    opts.set_credentials(gateway, login_token(gateway)?);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let driver = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let batches = payloads.len();
    let t0 = Instant::now();
    let topic = topics::events(gateway);
    for p in payloads {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, p)
            .await?;
    }
    let published = t0.elapsed();
    let took = wait_for_ack(&mut acks, n, t0, "ingest").await?;
    driver.abort();
    let rate = n as f64 / took.as_secs_f64();
    println!("head-office ingest: {n} events in {batches} pre-encoded batches of {batch}");
    println!(
        "  payload             {:.1} MB ({:.0} bytes/event)",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    println!("  all published after {:.2} s", published.as_secs_f64());
    println!("  last ack after      {:.2} s", took.as_secs_f64());
    println!("  ingest rate         {rate:.0} events/s (target >= 100,000)");
    println!(
        "{}",
        serde_json::json!({"bench": "uplink_ingest", "events": n, "batch": batch,
            "seconds": took.as_secs_f64(), "events_per_s": rate.round()})
    );
    Ok(())
}

/// An agent config for the bench: a sim source (quiet unless `shoppers_per_minute` says
/// otherwise), sync to `hq`, a quota no run reaches.
fn agent_config(
    dir: &Path,
    hq: &HqHandle,
    gateway: &str,
    shoppers_per_minute: f64,
    sync_extra: &str,
) -> anyhow::Result<AgentConfig> {
    std::fs::create_dir_all(dir)?;
    let token = instore_protocol::token::gateway_token(SECRET.as_bytes(), STORE, gateway)
        .context("minting the gateway token")?;
    let text = format!(
        r#"store_id = "{STORE}"
gateway_id = "{gateway}"
data_dir = "data"
[http]
listen = "127.0.0.1:0"
admin_token = "bench-admin-token"
[[sources]]
kind = "sim"
seed = 7
shoppers_per_minute = {shoppers_per_minute:?}
member_share = 1.0
population = 3000
mean_dwell_s = 4.0
[presence]
depart_after_s = 2
[outbox]
max_bytes = {QUOTA_BYTES}
[sync]
enabled = true
broker = "{mqtt}"
hq_url = "{http}"
token = "{token}"
{sync_extra}
"#,
        mqtt = hq.mqtt,
        http = hq.http,
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(AgentConfig::load(&path)?)
}

async fn drain(hq: &HqHandle, root: &Path, n: u64, sync_extra: &str) -> anyhow::Result<()> {
    let gateway = "bench-drain";
    let dir = root.join("drain");
    let cfg = agent_config(&dir, hq, gateway, 0.0001, sync_extra)?;

    // The backlog: written through the outbox's own API while no agent runs, as a store offline
    // for days would have written it (in larger transactions than live traffic, which only makes
    // the fill faster, not the drain).
    let t = Instant::now();
    std::fs::create_dir_all(&cfg.data_dir)?;
    {
        let outbox = Outbox::open_with(
            &instore_agent::runtime::outbox_db(&cfg.data_dir),
            OutboxOptions {
                max_bytes: QUOTA_BYTES,
            },
            Metrics::default(),
        )?;
        let at_ms = instore_agent::now_ms();
        let chunk = 10_000u64;
        let mut i = 0u64;
        while i < n {
            let events = (i..(i + chunk).min(n))
                .map(|k| NewEvent {
                    at_ms,
                    body: arrive(k),
                })
                .collect();
            outbox.append(events).await?;
            i += chunk;
        }
        let stats = outbox.stats().await?;
        outbox.close().await;
        if stats.last_seq != n || stats.depth != n {
            bail!("the outbox holds {stats:?} after filling {n}");
        }
    }
    let fill = t.elapsed();
    let db_bytes: u64 = std::fs::read_dir(&cfg.data_dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    let mut acks = ack_watch(&hq.mqtt, gateway).await?;
    let t0 = Instant::now();
    let agent = instore_agent::runtime::start(cfg).await?;
    let took = wait_for_ack(&mut acks, n, t0, "drain").await?;
    let rate = n as f64 / took.as_secs_f64();
    let m = &agent.metrics;
    println!("drain: {n} events buffered in the agent's outbox, then the agent started");
    println!(
        "  fill                {:.1} s ({:.0} events/s), files {:.0} MB",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64(),
        db_bytes as f64 / 1e6
    );
    println!(
        "  drained after       {:.2} s (agent start to head office's ack of #{n})",
        took.as_secs_f64()
    );
    println!("  drain rate          {rate:.0} events/s (target >= 50,000)");
    println!(
        "  agent               {} batches, {} events sent, {} acked, {} outbox commits",
        m.batches_sent.get(),
        m.events_sent.get(),
        m.events_acked.get(),
        m.outbox_commits.get()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "uplink_drain", "events": n,
            "seconds": took.as_secs_f64(), "events_per_s": rate.round(),
            "batches": m.batches_sent.get(), "events_sent": m.events_sent.get()})
    );
    agent.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn steady(hq: &HqHandle, root: &Path, args: &UplinkArgs) -> anyhow::Result<()> {
    let gateway = "bench-steady";
    // The crowd's members must be known at head office for the agent to recognise them.
    let ndjson: String = instore_agent::sources::sim::population(3000)
        .iter()
        .map(|m| serde_json::to_string(m).map(|s| s + "\n"))
        .collect::<Result<_, _>>()?;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/members", hq.http))
        .bearer_auth(API_TOKEN)
        .body(ndjson)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("member import failed: {}", resp.status());
    }
    let cfg = agent_config(
        &root.join("steady"),
        hq,
        gateway,
        args.shoppers_per_minute,
        &args.sync_extra,
    )?;
    let agent = instore_agent::runtime::start(cfg).await?;
    let m = agent.metrics.clone();
    // Warm-up: the member snapshot arrives and the crowd fills the store.
    let t = Instant::now();
    while m.members_cached.get() == 0 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (a0, c0, b0) = (
        m.outbox_appended.get(),
        m.outbox_commits.get(),
        m.batches_sent.get(),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_s)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (events, commits, batches) = (
        m.outbox_appended.get() - a0,
        m.outbox_commits.get() - c0,
        m.batches_sent.get() - b0,
    );
    agent.shutdown(Duration::from_secs(10)).await;
    if events == 0 {
        bail!("no events in the steady window: did the member snapshot arrive?");
    }
    let per_k = 1000.0 * commits as f64 / events as f64;
    println!(
        "steady load: {} shoppers/min for {:.0} s",
        args.shoppers_per_minute, secs
    );
    println!(
        "  events              {events} ({:.0}/s)",
        events as f64 / secs
    );
    println!("  outbox commits      {commits} (appends and ack deletes; one fsync each)");
    println!("  fsyncs / 1,000 ev   {per_k:.0}");
    println!(
        "  batches             {batches} ({:.1} events/batch)",
        events as f64 / batches.max(1) as f64
    );
    println!(
        "{}",
        serde_json::json!({"bench": "uplink_steady", "events": events, "seconds": secs,
            "commits": commits, "fsyncs_per_1000_events": per_k.round(), "batches": batches})
    );
    Ok(())
}
