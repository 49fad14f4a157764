//! `latency`: from an advert entering the agent to the clerk alert arriving at an SSE client on
//! loopback.
//!
//! The whole agent runs in-process (`runtime::start`: engine, outbox with its fsync, alert hub,
//! HTTP server); the benchmark plays the source through the agent's sighting queue and reads the
//! alert stream over real TCP like a tablet. One arrival is in flight at a time, so each figure is
//! the latency of one alert, not a queue's.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use instore_agent::{
    config::AgentConfig,
    runtime,
    sources::{AddressType, Advert, Sighting, sim},
};

const ADMIN: &str = "bench-admin";
const LAN_KEY: &str = "bench-store-lan-secret";

/// A receiver gateway forwarding to the hub at `hub`.
async fn receiver(
    dir: &std::path::Path,
    hub: std::net::SocketAddr,
) -> anyhow::Result<runtime::Agent> {
    let text = format!(
        "store_id = \"bench\"\ngateway_id = \"bench-rx\"\ndata_dir = {:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [hub]\nrole = \"receiver\"\nkey = \"{LAN_KEY}\"\npeers = [\"http://{hub}\"]\n",
        dir.join("receiver"),
    );
    let cfg = AgentConfig::parse(&text, "receiver.toml").context("receiver config")?;
    runtime::start(cfg).await
}

pub async fn run(arrivals: usize, warmup: usize, via_receiver: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"greet\"\non = \"arrive\"\npriority = \"high\"\n\
         message = \"Greet {display_name}\"\n",
    )?;
    let cfg_text = format!(
        "store_id = \"bench\"\ngateway_id = \"bench-gw\"\ndata_dir = {:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
         [react]\nrules = {:?}\nalerts_per_minute = 0\n\
         [presence]\narrive_sightings = 1\n[hub]\nkey = \"{LAN_KEY}\"\n",
        dir.path().join("data"),
        rules,
    );
    let cfg = AgentConfig::parse(&cfg_text, "bench.toml").context("bench config")?;
    let total = arrivals + warmup;
    // One in twenty simulated members has no presence consent and is never tracked.
    let members = u32::try_from(total * 20 / 19 + 20).context("too many arrivals")?;
    let agent = runtime::start(cfg).await?;
    let records: Vec<_> = sim::population(members.min(65_535));
    agent.set_members(&records).await?;
    let rx = match via_receiver {
        true => Some(receiver(dir.path(), agent.http_addr).await?),
        false => None,
    };
    let (input, clock) = match &rx {
        Some(r) => r.sighting_input(),
        None => agent.sighting_input(),
    };

    let url = format!("http://{}/api/alerts/stream", agent.http_addr);
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await?
        .error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    // Give the member set time to be swapped in before the first arrival.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let zone: Arc<str> = Arc::from("entrance");
    let mut lat_us = Vec::with_capacity(arrivals);
    let mut lost = 0usize;
    let eligible: Vec<(u16, u16)> = records
        .iter()
        .filter(|r| r.consent.presence)
        .filter_map(|r| match r.identifiers.first() {
            Some(instore_protocol::Identifier::Ibeacon { major, minor, .. }) => {
                Some((*major, *minor))
            }
            _ => None,
        })
        .collect();
    for (k, (major, minor)) in eligible.iter().copied().enumerate().take(total) {
        let advert = Advert {
            address: [0xc0, 0, 0, 0, (minor >> 8) as u8, minor as u8],
            address_type: AddressType::Random,
            rssi: -60,
            manufacturer_data: vec![(
                0x004c,
                sim::ibeacon_payload(&sim::SIM_UUID, major, minor, -59),
            )],
            service_data: vec![],
        };
        let want = format!("M{minor:06}");
        if via_receiver {
            // Arrivals apart, as on a shop floor: a receiver sends at most one batch per
            // forward_every_ms (100), so back-to-back arrivals would time that pacing instead.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let t0 = Instant::now();
        input
            .send(Sighting {
                zone: zone.clone(),
                at_ms: clock.now_ms(),
                advert,
            })
            .await
            .context("engine stopped")?;
        // Wait for this member's alert on the stream.
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if block.contains("event: alert\n") && block.contains(&want) {
                        return true;
                    }
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                    _ => return false,
                }
            }
        })
        .await;
        let elapsed = t0.elapsed();
        match got {
            Ok(true) if k >= warmup => lat_us.push(elapsed.as_secs_f64() * 1e6),
            Ok(true) => {}
            _ => lost += 1,
        }
    }
    if let Some(r) = rx {
        r.shutdown(Duration::from_secs(5)).await;
    }
    agent.shutdown(Duration::from_secs(5)).await;

    anyhow::ensure!(!lat_us.is_empty(), "no alert arrived ({lost} lost)");
    lat_us.sort_by(f64::total_cmp);
    let pct =
        |p: f64| lat_us[((lat_us.len() as f64 * p).ceil() as usize).clamp(1, lat_us.len()) - 1];
    let mean = lat_us.iter().sum::<f64>() / lat_us.len() as f64;
    let via = if via_receiver { "receiver" } else { "direct" };
    match via_receiver {
        true => println!(
            "latency: advert into a receiver gateway -> forwarded to the hub -> alert event at an SSE client (loopback)"
        ),
        false => {
            println!("latency: advert into the agent -> alert event at an SSE client (loopback)")
        }
    }
    println!(
        "  arrivals measured   {} (+{warmup} warm-up, {lost} lost)",
        lat_us.len()
    );
    println!("  p50                 {:.2} ms", pct(0.50) / 1000.0);
    println!("  p90                 {:.2} ms", pct(0.90) / 1000.0);
    println!("  p99                 {:.2} ms", pct(0.99) / 1000.0);
    println!(
        "  max                 {:.2} ms",
        lat_us[lat_us.len() - 1] / 1000.0
    );
    println!("  mean                {:.2} ms", mean / 1000.0);
    println!(
        "{}",
        serde_json::json!({"bench": "latency", "via": via, "arrivals": lat_us.len(), "lost": lost,
            "p50_ms": pct(0.50) / 1000.0, "p90_ms": pct(0.90) / 1000.0,
            "p99_ms": pct(0.99) / 1000.0, "max_ms": lat_us[lat_us.len() - 1] / 1000.0})
    );
    Ok(())
}
