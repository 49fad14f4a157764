//! `instore-bench scale-out`: head office's ingest with one and with two `instore-sync` instances
//! sharing Debian's Mosquitto (`[broker] share_group`) and one PostgreSQL, in one run.
//!
//! Each round gets a fresh broker and a fresh PostgreSQL schema. Pre-encoded batches from
//! `--gateways` gateways are published by one MQTT client, interleaved across gateways as a
//! fleet's would be; the round is timed from the first publish until every gateway's ack (sent
//! after the commit) carries its last number. The instances run in this process, each with its
//! own database connection and MQTT session, as separate processes would; they share the
//! machine's cores with the broker, PostgreSQL and the publisher, so on a small machine the ratio
//! is a floor.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use instore_protocol::{Ack, Event, EventBatch, EventBody, SCHEMA_VERSION, topics};
use instore_sync::store::testing::PgSchema;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const SECRET: &str = "bench-gateway-secret-0123456789";

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleOutArgs {
    /// Events per round.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Gateways the events come from (one head-office row lock each).
    #[arg(long, default_value_t = 40)]
    pub gateways: u64,
    /// Events per batch (the agent's default `batch_max_events`).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Instance counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub instances: Vec<usize>,
}

pub fn run(args: ScaleOutArgs) -> anyhow::Result<()> {
    if !Path::new(MOSQUITTO).exists() {
        bail!("scale-out needs Debian's mosquitto at {MOSQUITTO} (apt install mosquitto)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(rounds(args))
}

async fn rounds(args: ScaleOutArgs) -> anyhow::Result<()> {
    println!(
        "scale-out: {} events from {} gateways in batches of {}, Mosquitto + PostgreSQL, \
         instances in this process",
        args.events, args.gateways, args.batch
    );
    let mut rates = Vec::new();
    for &k in &args.instances {
        let rate = round(&args, k).await?;
        println!("  {k} instance(s)      {rate:>9.0} events/s");
        rates.push((k, rate));
    }
    if let (Some(&(1, one)), Some(&(k, many))) = (rates.first(), rates.last())
        && k > 1
    {
        println!("  ratio {k}:1          {:>9.2}x (goal >= 1.6x)", many / one);
    }
    let json: Vec<_> = rates
        .iter()
        .map(|(k, r)| serde_json::json!({"instances": k, "events_per_s": r.round()}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "scale_out", "events": args.events,
            "gateways": args.gateways, "batch": args.batch, "rounds": json})
    );
    Ok(())
}

/// Mosquitto on a free port in `dir`, killed when dropped.
struct Broker {
    child: std::process::Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_broker(dir: &Path) -> anyhow::Result<Broker> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 200\nmax_queued_messages 100000\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    let child = std::process::Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting mosquitto")?;
    let broker = Broker { child, port };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(broker);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("mosquitto did not listen on {port}");
}

async fn round(args: &ScaleOutArgs, instances: usize) -> anyhow::Result<f64> {
    let tmp = tempfile::tempdir()?;
    let broker = start_broker(tmp.path()).await?;
    let schema = tokio::task::spawn_blocking(PgSchema::new).await?;
    let cancel = CancellationToken::new();
    let mut offices = Vec::new();
    for i in 0..instances {
        let dir = tmp.path().join(format!("hq-{i}"));
        std::fs::create_dir_all(&dir)?;
        let text = format!(
            "data_dir = {dir:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[api]\ntoken = \"bench\"\n\
             [auth]\ngateway_secret = \"{SECRET}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             share_group = \"bench\"\n[database]\nurl = \"{url}\"\n",
            dir = dir.display().to_string(),
            port = broker.port,
            url = schema.url(),
        );
        let cfg = instore_sync::HqConfig::parse(&text, "bench hq.toml")?;
        let office = instore_sync::start(cfg, cancel.clone()).await?;
        wait_healthy(office.http_addr()).await?;
        offices.push(office);
    }

    let per_gateway = args.events.div_ceil(args.gateways);
    let gateways: Vec<String> = (0..args.gateways)
        .map(|g| format!("bench-gw-{g}"))
        .collect();
    let mut acks = ack_watch(broker.port, gateways.len()).await?;
    // Encoded first, interleaved across gateways: the timed part is head office's work.
    let at_ms = instore_agent::now_ms();
    let mut payloads = Vec::new();
    let mut seq = 1u64;
    while seq <= per_gateway {
        let last = (seq + args.batch as u64 - 1).min(per_gateway);
        for (g, gw) in gateways.iter().enumerate() {
            let b = EventBatch {
                v: SCHEMA_VERSION,
                gateway_id: gw.clone(),
                store_id: format!("store-{gw}"),
                hello: None,
                outbox: None,
                events: (seq..=last)
                    .map(|s| Event {
                        seq: s,
                        at_ms,
                        // What most of a busy store's outbox holds: an arrival (a visit row
                        // too). One member is at one store at a time: each gateway's members
                        // are its own, so no two gateways update one member's rows at once.
                        body: EventBody::Arrive {
                            member_id: format!("M{:07}", g as u64 * per_gateway + s),
                            zone: "entrance".into(),
                            visit_id: format!("v-{s:016x}"),
                        },
                    })
                    .collect(),
            };
            payloads.push((topics::events(gw), serde_json::to_vec(&b)?));
        }
        seq = last + 1;
    }
    let mut opts = MqttOptions::new("bench-publisher", "127.0.0.1", broker.port);
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
    let t0 = Instant::now();
    for (topic, p) in payloads {
        client.publish(topic, QoS::AtLeastOnce, false, p).await?;
    }
    let total = per_gateway * args.gateways;
    let mut last_print = Instant::now();
    loop {
        let done = {
            let marks = acks.borrow_and_update();
            let done: u64 = marks.values().map(|h| (*h).min(per_gateway)).sum();
            marks.len() == gateways.len() && marks.values().all(|h| *h >= per_gateway) || {
                if last_print.elapsed() > Duration::from_secs(10) {
                    last_print = Instant::now();
                    eprintln!("  {instances} instance(s): {done}/{total} acknowledged");
                }
                false
            }
        };
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("{instances} instance(s): not every batch acknowledged after 30 minutes");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), acks.changed()).await;
    }
    let took = t0.elapsed();
    driver.abort();
    cancel.cancel();
    for o in offices {
        o.wait().await?;
    }
    drop(broker);
    tokio::task::spawn_blocking(move || drop(schema)).await?;
    Ok(total as f64 / took.as_secs_f64())
}

async fn wait_healthy(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{addr}/healthz");
    for _ in 0..200 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("head office at {addr} not healthy (connected and subscribed) after 10 s");
}

/// Follows every gateway's acks: the highest `high_water` per gateway.
async fn ack_watch(
    port: u16,
    expected: usize,
) -> anyhow::Result<watch::Receiver<HashMap<String, u64>>> {
    let mut opts = MqttOptions::new("bench-acks", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe("instore/v1/gw/+/ack", QoS::AtMostOnce)
        .await?;
    let (tx, rx) = watch::channel(HashMap::with_capacity(expected));
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
                        tx.send_modify(|m| {
                            let h = m.entry(ack.gateway_id).or_insert(0);
                            *h = (*h).max(ack.high_water);
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
        .context("no SUBACK for the ack topics")??;
    Ok(rx)
}
