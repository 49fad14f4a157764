//! `instore-bench`: benchmarks that print figures. Never run as tests (machines are noisy);
//! BENCHMARKS.md records what they printed and on what.
//!
//! `cargo run --release -p instore-bench -- hot-path [--members N] [--adverts N] [--member-share F]`
//! measures the agent's per-advert path — decode, match against the member index, presence — on
//! one core, with the engine's real `Core`.

use std::{sync::Arc, time::Instant};

use clap::{Parser, Subcommand};
use instore_agent::{
    cache::MemberIndex,
    engine::Core,
    metrics::Metrics,
    presence::{Presence, PresenceParams},
    react::Rules,
    sources::{AddressType, Advert, Sighting, sim},
};
use instore_protocol::{Consent, Identifier, MemberRecord};

#[derive(Parser)]
#[command(name = "instore-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode + match + presence throughput of the agent's hot path.
    HotPath {
        #[arg(long, default_value_t = 100_000)]
        members: u32,
        #[arg(long, default_value_t = 2_000_000)]
        adverts: usize,
        /// Share of adverts sent by members (the rest are strangers' phones).
        #[arg(long, default_value_t = 0.1)]
        member_share: f64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::HotPath {
            members,
            adverts,
            member_share,
        } => hot_path(members, adverts, member_share),
    }
}

/// Member `i` carries iBeacon (SIM_UUID, major 1000 + i / 65536, minor i % 65536).
fn member(i: u32) -> MemberRecord {
    MemberRecord {
        member_id: format!("B{i:07}"),
        display_name: format!("Bench {i}"),
        tier: if i.is_multiple_of(50) {
            "platinum"
        } else {
            "member"
        }
        .into(),
        stage: None,
        tags: vec![],
        groups: vec![],
        consent: Consent { presence: true },
        identifiers: vec![Identifier::Ibeacon {
            uuid: instore_protocol::member::format_uuid(&sim::SIM_UUID),
            major: 1000 + (i / 65_536) as u16,
            minor: (i % 65_536) as u16,
        }],
        birthday: None,
        last_purchase: None,
    }
}

/// A deterministic xorshift so the advert mix is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn hot_path(members: u32, n: usize, member_share: f64) -> anyhow::Result<()> {
    let members = members.max(1);
    let t = Instant::now();
    let records: Vec<MemberRecord> = (0..members).map(member).collect();
    let index = Arc::new(MemberIndex::build(1, &records));
    let build_s = t.elapsed().as_secs_f64();
    drop(records);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let zone: Arc<str> = Arc::from("entrance");
    let threshold = (member_share.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    // Adverts are prepared first so that the timed loop measures the agent, not the generator.
    let sightings: Vec<Sighting> = (0..n)
        .map(|k| {
            let at_ms = (k as u64) / 50; // 50,000 adverts per simulated second
            let r = rng.next();
            let advert = if r < threshold {
                let i = (rng.next() % u64::from(members)) as u32;
                Advert {
                    address: [0xc0, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                    address_type: AddressType::Random,
                    rssi: -60 - (r % 20) as i16,
                    manufacturer_data: vec![(
                        0x004c,
                        sim::ibeacon_payload(
                            &sim::SIM_UUID,
                            1000 + (i / 65_536) as u16,
                            (i % 65_536) as u16,
                            -59,
                        ),
                    )],
                    service_data: vec![],
                }
            } else {
                let a = rng.next().to_be_bytes();
                Advert {
                    address: [0x40 | (a[0] & 0x3f), a[1], a[2], a[3], a[4], a[5]],
                    address_type: AddressType::Random,
                    rssi: -70,
                    manufacturer_data: vec![(0x004c, vec![0x10, 0x05, a[6], a[7], 0x1c])],
                    service_data: vec![],
                }
            };
            Sighting {
                zone: zone.clone(),
                at_ms,
                advert,
            }
        })
        .collect();
    let strangers = sightings
        .iter()
        .filter(|s| s.advert.address[0] & 0xc0 == 0x40)
        .count();

    let presence = Presence::new(
        PresenceParams {
            arrive_sightings: 2,
            arrive_window_ms: 10_000,
            depart_after_ms: 60_000,
            min_rssi: -90,
        },
        "bench".into(),
    );
    let rules = Rules::parse(
        include_str!("../../agent/examples/rules.toml"),
        "rules.toml",
    )?;
    let mut core = Core::new(index, presence, rules, Metrics::default());
    let mut out = Vec::new();
    let mut outputs = 0usize;
    let t = Instant::now();
    let mut last_tick = 0;
    for s in &sightings {
        core.on_sighting(s, &mut out);
        if s.at_ms >= last_tick + 1000 {
            last_tick = s.at_ms;
            core.on_tick(s.at_ms, &mut out);
        }
        outputs += out.len();
        out.clear();
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!("hot path: decode + match + presence (+ rules, footfall), one core");
    println!("  members cached      {members}");
    println!("  index build         {:.2} s", build_s);
    println!("  adverts             {n}");
    println!(
        "  strangers           {:.1} %",
        100.0 * strangers as f64 / n as f64
    );
    println!("  presence/alert outputs {outputs}");
    println!("  throughput          {:.0} adverts/s", rate);
    println!("  per advert          {:.0} ns", 1e9 / rate);
    println!(
        "{}",
        serde_json::json!({"bench": "hot_path", "members": members, "adverts": n,
            "stranger_share": strangers as f64 / n as f64, "adverts_per_s": rate.round(),
            "ns_per_advert": (1e9 / rate).round()})
    );
    Ok(())
}
