//! `cargo run --release -- demo`: the whole product on one machine.
//!
//! Starts head office (embedded MQTT broker, SQLite) and several simulated stores, each two real
//! agents (the entrance's hub and the fitting rooms' receiver, which forwards what it hears to
//! the hub; `[hub]`), each with its own SQLite files, HTTP port and MQTT connection over loopback. Head office
//! imports the simulated member population and a year of their purchases, ranks them (pyramid,
//! tiers, stages) and pushes them to the stores; shoppers walk in; VIPs raise clerk alerts; every
//! event travels to head office. On stop it drains the stores' outboxes
//! and prints, as its last stdout line, one JSON object:
//! `{"alerts":..,"events_sent":..,"events_at_hq":..,...}`.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use instore_agent::{
    config::AgentConfig, pairing::client::AdminClient, runtime::Agent, sources::sim,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "instore-demo",
    about = "Head office plus simulated stores on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo until Ctrl-C or for a fixed time.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long = "for", value_name = "SECONDS")]
        for_secs: Option<u64>,
        /// Number of simulated stores.
        #[arg(long, default_value_t = 2)]
        stores: u32,
        /// Keep data here instead of a temporary folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Simulated members (ids M000001..).
        #[arg(long, default_value_t = 300)]
        members: u32,
    },
}

const RULES: &str = include_str!("../demo-rules.toml");
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,instore_demo=info,instore_agent=info,instore_sync=info,rumqttd=off",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Command::Demo {
        for_secs,
        stores,
        data_dir,
        members,
    } = Cli::parse().command;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("instore-demo: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo(
        for_secs,
        stores.clamp(1, 50),
        data_dir,
        members.clamp(1, 65_535),
    )) {
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("instore-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A free loopback port. Another process could take it before we bind again; the demo then fails
/// with a clear "address in use" error rather than misbehaving.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn token() -> String {
    (0..4)
        .map(|_| format!("{:08x}", rand_u32()))
        .collect::<String>()
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

async fn demo(
    for_secs: Option<u64>,
    stores: u32,
    data_dir: Option<PathBuf>,
    members: u32,
) -> anyhow::Result<serde_json::Value> {
    let _tmp;
    let root = match data_dir {
        Some(d) => d,
        None => {
            let t = tempfile::tempdir().context("creating a temporary folder")?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    std::fs::create_dir_all(&root)?;

    // Head office.
    let api_token = token();
    let secret = token();
    let hq_http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let broker: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let hq_dir = root.join("hq");
    std::fs::create_dir_all(&hq_dir)?;
    let hq_cfg = format!(
        "data_dir = {dir:?}\n[http]\nlisten = \"{hq_http}\"\n[api]\ntoken = \"{api_token}\"\n\
         [auth]\ngateway_secret = \"{secret}\"\n[broker]\nlisten = \"{broker}\"\n\
         [compute]\ncurrency = \"EUR\"\n# Rank as soon as the purchases are in, not a minute later.\n\
         rerank_min_interval_s = 0\n",
        dir = hq_dir.display().to_string(),
    );
    std::fs::write(hq_dir.join("hq.toml"), &hq_cfg)?;
    let hq_cfg = instore_sync::HqConfig::parse(&hq_cfg, "hq.toml")?;
    let hq_cancel = CancellationToken::new();
    let hq = instore_sync::start(hq_cfg, hq_cancel.clone()).await?;
    let hq_url = format!("http://{}", hq.http_addr());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // The member population, imported at head office: it reaches the stores by snapshot.
    let ndjson: String = sim::population(members)
        .iter()
        .map(|m| serde_json::to_string(m).map(|s| s + "\n"))
        .collect::<Result<_, _>>()?;
    let resp = http
        .post(format!("{hq_url}/api/members"))
        .bearer_auth(&api_token)
        .body(ndjson)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("member import at head office failed: {}", resp.status());
    }
    // A year of their purchases: head office ranks them and the tiers the stores see follow.
    let resp = http
        .post(format!("{hq_url}/api/purchases"))
        .bearer_auth(&api_token)
        .body(purchases_ndjson(members, stores, instore_sync::now_ms()))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("purchase import at head office failed: {}", resp.status());
    }

    // Stores.
    let mut agents = Vec::new();
    let mut clerk_urls = Vec::new();
    for i in 1..=stores {
        let store = StoreSetup {
            root: &root,
            i,
            hq_url: &hq_url,
            mqtt_url: &hq.mqtt_url(),
            secret: &secret,
            population: members,
            lan_key: &token(),
        };
        let cfg = store.config(Part::Hub)?;
        let admin = AdminClient::for_config(&cfg)?;
        let agent = instore_agent::runtime::start(cfg).await?;
        // The fitting rooms' receiver: a second gateway hearing the same simulated crowd,
        // forwarding to the hub, which alone identifies and alerts.
        let receiver = store.config(Part::Receiver {
            hub: agent.http_addr,
        })?;
        agents.push(instore_agent::runtime::start(receiver).await?);
        // Clerk pages need a paired tablet: pair one browser per store up front, so the printed
        // link opens straight onto the live feed (once; pair more with `instore-agent pair-tablet`).
        let paired = admin
            .pair("demo tablet", Duration::from_secs(12 * 3600))
            .await
            .context("pairing the demo's clerk page")?;
        clerk_urls.push(paired.url);
        agents.push(agent);
    }
    eprintln!();
    eprintln!("instore demo running: head office and {stores} simulated stores");
    println!("head office: {hq_url}/#token={api_token}");
    println!("dashboard: {hq_url}/dashboard#token={api_token}");
    for (i, url) in clerk_urls.iter().enumerate() {
        println!("store-{:03} clerk page: {url}  (pairs one browser)", i + 1);
    }
    eprintln!("data: {}", root.display());
    eprintln!("press Ctrl-C to stop");

    let started = Instant::now();
    match for_secs {
        Some(s) => tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(s)) => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("stopping: draining the stores' outboxes to head office");

    let mut alerts = 0;
    let mut events_sent = 0;
    let mut undrained = 0;
    for agent in &agents {
        undrained += agent.drain(DRAIN_TIMEOUT).await?;
        alerts += agent.metrics.alerts_raised.get();
        events_sent += agent.outbox.last_seq().await?;
    }
    let events_at_hq = events_at_hq(&http, &hq_url, &api_token).await?;
    // Members per pyramid level, as head office ranked them from the purchases.
    let pyramid: serde_json::Value = http
        .get(format!("{hq_url}/api/pyramid"))
        .bearer_auth(&api_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let levels: serde_json::Map<String, serde_json::Value> = pyramid
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["level"].as_str()?.to_string(), l["members"].clone())))
        .collect();
    for agent in agents {
        stop(agent).await;
    }
    hq_cancel.cancel();
    hq.wait().await?;
    Ok(serde_json::json!({
        "alerts": alerts,
        "events_sent": events_sent,
        "events_at_hq": events_at_hq,
        "undrained": undrained,
        "stores": stores,
        "pyramid": levels,
        "seconds": started.elapsed().as_secs(),
    }))
}

/// A year of purchases for the simulated population, deterministic: members with lower ids buy
/// more often (a few regulars, a long tail), 20 to 400 EUR a time, linen, shoes or home.
fn purchases_ndjson(members: u32, stores: u32, now_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    const CATEGORIES: [&str; 3] = ["linen", "shoes", "home"];
    let mut out = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 1..=members {
        let count = 1 + (next() % u64::from(1 + 24 / (1 + i / 20))) as i64;
        for k in 0..count {
            let at = now_ms - 3_600_000 - (next() % 365) as i64 * DAY_MS;
            let Ok(at) = jiff::Timestamp::from_millisecond(at) else {
                continue;
            };
            let amount = 2_000 + (next() % 38_000) as i64;
            let category = CATEGORIES[(next() % 3) as usize];
            let store = 1 + (u64::from(i) + next() % 2) % u64::from(stores.max(1));
            out.push_str(&format!(
                r#"{{"purchase_id":"D{i}-{k}","member_id":"M{i:06}","store_id":"store-{store:03}","at":"{at}","amount_minor":{amount},"currency":"EUR","items":[{{"category":"{category}","qty":1,"amount_minor":{amount}}}]}}"#
            ));
            out.push('\n');
        }
    }
    out
}

async fn stop(agent: Agent) {
    agent.shutdown(Duration::from_secs(5)).await;
}

/// One simulated store's settings, for the configs of its two gateways.
struct StoreSetup<'a> {
    root: &'a Path,
    i: u32,
    hq_url: &'a str,
    mqtt_url: &'a str,
    secret: &'a str,
    population: u32,
    /// The store's `[hub] key`, shared by its gateways.
    lan_key: &'a str,
}

/// Which of a store's gateways.
enum Part {
    /// The entrance's, the store's hub.
    Hub,
    /// The fitting rooms' receiver, forwarding to the hub at this address.
    Receiver { hub: std::net::SocketAddr },
}

impl StoreSetup<'_> {
    fn config(&self, part: Part) -> anyhow::Result<AgentConfig> {
        let (i, population, lan_key) = (self.i, self.population, self.lan_key);
        let store = format!("store-{i:03}");
        let (suffix, hears, hub) = match part {
            Part::Hub => ("a", "entrance", format!("key = \"{lan_key}\"")),
            Part::Receiver { hub } => (
                "b",
                "fitting-rooms",
                format!("role = \"receiver\"\nkey = \"{lan_key}\"\npeers = [\"http://{hub}\"]"),
            ),
        };
        let gateway = format!("gw-{i:03}-{suffix}");
        let dir = self.root.join(&store).join(&gateway);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("rules.toml"), RULES)?;
        let gw_token =
            instore_protocol::token::gateway_token(self.secret.as_bytes(), &store, &gateway)
                .context("minting the gateway token")?;
        let admin = token();
        let port = free_port()?;
        let (hq_url, mqtt_url) = (self.hq_url, self.mqtt_url);
        // Short dwell and departure times so that a one-minute demo shows whole visits.
        let text = format!(
            r#"store_id = "{store}"
gateway_id = "{gateway}"
data_dir = "data"
[http]
listen = "127.0.0.1:{port}"
admin_token = "{admin}"
[[sources]]
kind = "sim"
# A store with an entrance receiver and a fitting-room receiver, one on each of its two
# gateways (the same seed: the same crowd): shoppers come in at the entrance, some spend the
# middle of their visit in the fitting rooms.
zone = "entrance"
zones = ["entrance", "fitting-rooms"]
hear_zones = ["{hears}"]
seed = {i}
shoppers_per_minute = 60.0
member_share = 0.6
population = {population}
mean_dwell_s = 40.0
[presence]
depart_after_s = 15
[react]
rules = "rules.toml"
[hub]
{hub}
[sync]
enabled = true
broker = "{mqtt_url}"
hq_url = "{hq_url}"
token = "{gw_token}"
"#
        );
        let path = dir.join("agent.toml");
        std::fs::write(&path, &text)?;
        Ok(AgentConfig::load(&path)?)
    }
}

async fn events_at_hq(http: &reqwest::Client, hq_url: &str, token: &str) -> anyhow::Result<u64> {
    let gateways: Vec<serde_json::Value> = http
        .get(format!("{hq_url}/api/gateways"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(gateways
        .iter()
        .filter_map(|g| g["events_received"].as_u64())
        .sum())
}
