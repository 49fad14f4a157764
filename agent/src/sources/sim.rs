//! A simulated crowd: shoppers walk in, linger and leave, their phones advertising about once a
//! second with noisy RSSI. Members carry the member app's iBeacon; strangers' phones send vendor
//! adverts that identify nobody. Deterministic for a given seed and clock, so a test or a demo
//! run can be replayed exactly.
//!
//! The simulated member population is fixed by [`population`]: member `i` (1-based) is `M{i:06}`
//! with iBeacon ([`SIM_UUID`], major 100, minor `i`). Head office or `members import` must hold the
//! same records for the shoppers to be recognised.

use std::{collections::HashSet, sync::Arc};

use instore_protocol::{Consent, Identifier, MemberRecord, member::LastPurchase};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AddressType, Advert, Sighting, offer};
use crate::{config::SourceConfig, engine::Clock, metrics::Metrics};

/// The proximity UUID of the simulated member app.
pub const SIM_UUID: [u8; 16] = [
    0x1b, 0x6f, 0x6d, 0x2a, 0x9c, 0x4e, 0x4b, 0x1e, 0x8a, 0x3d, 0x5f, 0x2e, 0x7c, 0x11, 0x90, 0x0d,
];
const SIM_MAJOR: u16 = 100;
const APPLE: u16 = 0x004c;

const FIRST: [&str; 12] = [
    "Li", "Garcia", "Okafor", "Novak", "Tanaka", "Silva", "Müller", "Haddad", "Kowalski", "Nguyen",
    "Rossi", "Larsen",
];
const TITLE: [&str; 3] = ["Ms.", "Mr.", "Mx."];
const TAGS: [&str; 8] = [
    "linen",
    "denim",
    "outerwear",
    "shoes",
    "kids",
    "accessories",
    "formal",
    "sport",
];

/// The tier of simulated member `i`, following the brief's pyramid (top 2 %, 2–5 %, 5–10 %, ...).
fn tier_of(i: u32) -> &'static str {
    // A fixed bijective scramble keeps the tiers spread over the id range.
    let r = (i.wrapping_mul(2_654_435_761) >> 7) % 100;
    match r {
        0..=1 => "platinum",
        2..=4 => "gold",
        5..=9 => "silver",
        10..=19 => "bronze",
        _ => "member",
    }
}

/// The simulated member population: `n` records, deterministic.
pub fn population(n: u32) -> Vec<MemberRecord> {
    (1..=n.min(65_535))
        .map(|i| {
            let idx = i as usize;
            MemberRecord {
                member_id: format!("M{i:06}"),
                display_name: format!("{} {}", TITLE[idx % 3], FIRST[idx % FIRST.len()]),
                tier: tier_of(i).to_string(),
                stage: Some(instore_protocol::member::STAGES[idx % 5].to_string()),
                tags: vec![TAGS[idx % TAGS.len()].to_string()],
                groups: vec![],
                // One in twenty has not consented: the gateway must never track them.
                consent: Consent {
                    presence: i % 20 != 7,
                    marketing: i % 3 == 0,
                },
                identifiers: vec![Identifier::Ibeacon {
                    uuid: instore_protocol::member::format_uuid(&SIM_UUID),
                    major: SIM_MAJOR,
                    minor: i as u16,
                }],
                birthday: None,
                last_purchase: Some(LastPurchase {
                    date: format!("2026-{:02}-{:02}", 1 + idx % 10, 1 + idx % 28),
                    summary: format!("{} ({} items)", TAGS[(idx + 3) % TAGS.len()], 1 + idx % 4),
                }),
                // Visited on or after the last purchase.
                last_visit: Some(format!("2026-{:02}-28", 1 + idx % 10)),
                ..Default::default()
            }
        })
        .collect()
}

/// The iBeacon manufacturer data (after the company id) for a proximity UUID, major and minor.
pub fn ibeacon_payload(uuid: &[u8; 16], major: u16, minor: u16, tx_power: i8) -> Vec<u8> {
    let mut d = Vec::with_capacity(23);
    d.extend_from_slice(&[0x02, 0x15]);
    d.extend_from_slice(uuid);
    d.extend_from_slice(&major.to_be_bytes());
    d.extend_from_slice(&minor.to_be_bytes());
    d.push(tx_power as u8);
    d
}

#[derive(Debug, Clone)]
pub struct CrowdConfig {
    pub seed: u64,
    pub shoppers_per_minute: f64,
    pub member_share: f64,
    pub population: u32,
    pub mean_dwell_s: f64,
}

impl CrowdConfig {
    /// `salt` separates several sim sources configured with the same seed.
    pub fn from_source(cfg: &SourceConfig, salt: u64) -> Self {
        Self {
            seed: cfg.seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            shoppers_per_minute: cfg.shoppers_per_minute,
            member_share: cfg.member_share,
            population: cfg.population.max(1),
            mean_dwell_s: cfg.mean_dwell_s,
        }
    }
}

#[derive(Debug)]
enum Device {
    Member(u16),
    Stranger([u8; 6], Vec<u8>),
}

#[derive(Debug)]
struct Shopper {
    device: Device,
    leave_at_ms: u64,
    next_advert_ms: u64,
    base_rssi: f64,
}

/// The crowd's state. Pure: advance it with a clock reading and it returns the adverts due.
#[derive(Debug)]
pub struct Crowd {
    cfg: CrowdConfig,
    /// Advert timing, loss and noise.
    rng: ChaCha8Rng,
    /// Who walks in when: a stream of its own, so the shoppers (and strangers' addresses) do not
    /// depend on how often the crowd is advanced. Tests can rebuild them from the seed alone.
    arrivals: ChaCha8Rng,
    shoppers: Vec<Shopper>,
    members_inside: HashSet<u16>,
    next_arrival_ms: u64,
}

impl Crowd {
    pub fn new(cfg: CrowdConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut arrivals = ChaCha8Rng::seed_from_u64(cfg.seed);
        arrivals.set_stream(1);
        let first = exp_sample(&mut arrivals, 60_000.0 / cfg.shoppers_per_minute) as u64;
        Self {
            cfg,
            rng,
            arrivals,
            shoppers: Vec::new(),
            members_inside: HashSet::new(),
            next_arrival_ms: first,
        }
    }

    /// Shoppers in the store now.
    pub fn len(&self) -> usize {
        self.shoppers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shoppers.is_empty()
    }

    /// Moves the crowd to `now_ms`, appending the adverts heard since the last call to `out`.
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<Advert>) {
        while self.next_arrival_ms <= now_ms {
            let at = self.next_arrival_ms;
            self.arrive(at);
            let gap = exp_sample(&mut self.arrivals, 60_000.0 / self.cfg.shoppers_per_minute);
            self.next_arrival_ms = at + gap.max(1.0) as u64;
        }
        let mut i = 0;
        while i < self.shoppers.len() {
            if self.shoppers[i].leave_at_ms <= now_ms {
                let s = self.shoppers.swap_remove(i);
                if let Device::Member(m) = s.device {
                    self.members_inside.remove(&m);
                }
                continue;
            }
            while self.shoppers[i].next_advert_ms <= now_ms {
                let jitter = self.rng.random_range(800..1200);
                let lost = self.rng.random_bool(0.15);
                let noise = normal_sample(&mut self.rng) * 5.0;
                let s = &mut self.shoppers[i];
                s.next_advert_ms += jitter;
                if !lost {
                    let rssi = (s.base_rssi + noise).clamp(-100.0, -30.0) as i16;
                    out.push(advert_of(&s.device, rssi));
                }
            }
            i += 1;
        }
    }

    fn arrive(&mut self, at_ms: u64) {
        let rng = &mut self.arrivals;
        let dwell_ms = exp_sample(rng, self.cfg.mean_dwell_s * 1000.0).max(20_000.0);
        let base_rssi = rng.random_range(-80.0..-50.0);
        let device = if rng.random_bool(self.cfg.member_share.clamp(0.0, 1.0)) {
            let minor = rng.random_range(1..=self.cfg.population.min(65_535)) as u16;
            if !self.members_inside.insert(minor) {
                return; // already inside: the same person cannot walk in twice
            }
            Device::Member(minor)
        } else {
            let mut addr: [u8; 6] = rng.random();
            addr[0] = (addr[0] & 0x3f) | 0x40; // resolvable private address, like a real phone
            let mut payload = vec![0x10, 0x05]; // Apple "nearby info": identifies nobody
            payload.extend((0..5).map(|_| rng.random::<u8>()));
            Device::Stranger(addr, payload)
        };
        self.shoppers.push(Shopper {
            device,
            leave_at_ms: at_ms + dwell_ms as u64,
            next_advert_ms: at_ms,
            base_rssi,
        });
    }
}

fn advert_of(device: &Device, rssi: i16) -> Advert {
    match device {
        Device::Member(minor) => {
            let m = minor.to_be_bytes();
            Advert {
                // The member app's beacon uses a static random address (top bits 11).
                address: [0xc0 | 0x1b, 0x5e, 0x00, SIM_MAJOR as u8, m[0], m[1]],
                address_type: AddressType::Random,
                rssi,
                manufacturer_data: vec![(
                    APPLE,
                    ibeacon_payload(&SIM_UUID, SIM_MAJOR, *minor, -59),
                )],
                service_data: vec![],
            }
        }
        Device::Stranger(addr, payload) => Advert {
            address: *addr,
            address_type: AddressType::Random,
            rssi,
            manufacturer_data: vec![(APPLE, payload.clone())],
            service_data: vec![],
        },
    }
}

fn exp_sample(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    -u.ln() * mean
}

/// Standard normal by Box–Muller.
fn normal_sample(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Drives a crowd on the agent's clock, ten steps a second, until cancelled.
pub async fn run(
    mut crowd: Crowd,
    zone: Arc<str>,
    clock: Clock,
    tx: mpsc::Sender<Sighting>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = clock.now_ms();
        crowd.advance(now, &mut buf);
        for advert in buf.drain(..) {
            let s = Sighting {
                zone: zone.clone(),
                at_ms: now,
                advert,
            };
            if !offer(&tx, s, &metrics) {
                return; // engine gone: shutting down
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> CrowdConfig {
        CrowdConfig {
            seed,
            shoppers_per_minute: 60.0,
            member_share: 0.5,
            population: 100,
            mean_dwell_s: 120.0,
        }
    }

    fn run_for(seed: u64, ms: u64) -> Vec<Advert> {
        let mut crowd = Crowd::new(cfg(seed));
        let mut out = Vec::new();
        let mut t = 0;
        while t <= ms {
            crowd.advance(t, &mut out);
            t += 100;
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_crowd() {
        assert_eq!(run_for(7, 120_000), run_for(7, 120_000));
        assert_ne!(run_for(7, 120_000), run_for(8, 120_000));
    }

    #[test]
    fn a_busy_minute_has_members_and_strangers_advertising_about_once_a_second() {
        let adverts = run_for(1, 300_000);
        let members = adverts
            .iter()
            .filter(|a| a.manufacturer_data[0].1.starts_with(&[0x02, 0x15]))
            .count();
        let strangers = adverts.len() - members;
        assert!(members > 100 && strangers > 100, "{members} / {strangers}");
        // ~60 shoppers/min, staying ~2 min, ~0.85 adverts/s each: thousands, not millions.
        assert!(adverts.len() < 300 * 200, "{}", adverts.len());
        assert!(adverts.iter().all(|a| (-100..=-30).contains(&a.rssi)));
    }

    #[test]
    fn the_same_shoppers_arrive_however_often_the_crowd_is_advanced() {
        // The strangers in the store at two minutes, advanced in whole seconds or in odd steps.
        let strangers = |step: u64| {
            let mut crowd = Crowd::new(cfg(11));
            let mut out = Vec::new();
            let mut t = 0;
            while t < 120_000 {
                crowd.advance(t, &mut out);
                t += step;
            }
            crowd.advance(120_000, &mut out);
            let mut addrs: Vec<[u8; 6]> = crowd
                .shoppers
                .iter()
                .filter_map(|s| match &s.device {
                    Device::Stranger(a, _) => Some(*a),
                    Device::Member(_) => None,
                })
                .collect();
            addrs.sort_unstable();
            addrs
        };
        let coarse = strangers(1000);
        assert!(coarse.len() > 20, "{}", coarse.len());
        assert_eq!(strangers(37), coarse);
    }

    #[test]
    fn shoppers_leave_again() {
        let mut crowd = Crowd::new(CrowdConfig {
            shoppers_per_minute: 0.001,
            ..cfg(3)
        });
        crowd.arrive(0);
        let mut out = Vec::new();
        crowd.advance(1000, &mut out);
        assert_eq!(crowd.len(), 1);
        crowd.advance(24 * 3_600_000, &mut out);
        assert!(crowd.is_empty());
    }

    #[test]
    fn the_population_follows_the_tier_pyramid_and_parses_as_the_import_format() {
        let pop = population(10_000);
        let share = |t: &str| pop.iter().filter(|m| m.tier == t).count() as f64 / 100.0;
        assert!(
            (1.0..=3.0).contains(&share("platinum")),
            "{}",
            share("platinum")
        );
        assert!((2.0..=4.0).contains(&share("gold")), "{}", share("gold"));
        let text: String = pop
            .iter()
            .map(|m| serde_json::to_string(m).unwrap() + "\n")
            .collect();
        let (parsed, errors) = instore_protocol::parse_ndjson(&text);
        assert!(errors.is_empty(), "{:?}", &errors[..1]);
        assert_eq!(parsed.len(), 10_000);
    }
}
