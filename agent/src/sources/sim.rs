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
    /// Receivers, one per zone (at least 1); receiver 0 is the entrance.
    pub receivers: usize,
    /// dB a phone loses at a receiver of another zone than the shopper's.
    pub zone_gap_db: f64,
}

/// Share of shoppers who spend the middle of their visit in a zone past the entrance (with
/// more than one receiver).
const WANDER_SHARE: f64 = 0.6;
/// A receiver of another zone misses more adverts than the near one.
const FAR_LOSS: f64 = 0.35;
const NEAR_LOSS: f64 = 0.15;

impl CrowdConfig {
    /// `salt` separates several sim sources configured with the same seed.
    pub fn from_source(cfg: &SourceConfig, salt: u64) -> Self {
        Self {
            seed: cfg.seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            shoppers_per_minute: cfg.shoppers_per_minute,
            member_share: cfg.member_share,
            population: cfg.population.max(1),
            mean_dwell_s: cfg.mean_dwell_s,
            receivers: cfg.zones.len().max(1),
            zone_gap_db: cfg.zone_gap_db,
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
    /// `(from_ms, until_ms, receiver)`: the part of the visit spent in a zone past the entrance.
    wander: Option<(u64, u64, usize)>,
}

impl Shopper {
    /// The receiver of the zone the shopper is in at `t_ms`.
    fn zone_at(&self, t_ms: u64) -> usize {
        match self.wander {
            Some((from, until, z)) if (from..until).contains(&t_ms) => z,
            _ => 0,
        }
    }
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

    /// Moves the crowd to `now_ms`, appending the adverts heard since the last call to `out`,
    /// each with the receiver that heard it (0 with a single receiver; with several, one advert
    /// is usually heard by more than one).
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<(usize, Advert)>) {
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
                let sent_at = self.shoppers[i].next_advert_ms;
                let here = self.shoppers[i].zone_at(sent_at);
                // Receiver 0 first, with the draws a single-receiver crowd has always made, so
                // its adverts stay what they were for a given seed.
                for r in 0..self.cfg.receivers {
                    let near = r == here;
                    let lost = self
                        .rng
                        .random_bool(if near { NEAR_LOSS } else { FAR_LOSS });
                    let noise = normal_sample(&mut self.rng) * 5.0;
                    let s = &self.shoppers[i];
                    let gap = if near { 0.0 } else { self.cfg.zone_gap_db };
                    if !lost {
                        let rssi = (s.base_rssi - gap + noise).clamp(-100.0, -30.0) as i16;
                        out.push((r, advert_of(&s.device, rssi)));
                    }
                }
                self.shoppers[i].next_advert_ms += jitter;
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
        // With several receivers, some shoppers go past the entrance for the middle of their
        // visit (drawn only then: a single-receiver crowd's arrivals stay as they were).
        let wander = if self.cfg.receivers > 1 && rng.random_bool(WANDER_SHARE) {
            let zone = rng.random_range(1..self.cfg.receivers);
            let d = dwell_ms as u64;
            Some((at_ms + d / 5, at_ms + d - d / 5, zone))
        } else {
            None
        };
        self.shoppers.push(Shopper {
            device,
            leave_at_ms: at_ms + dwell_ms as u64,
            next_advert_ms: at_ms,
            base_rssi,
            wander,
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
/// The crowd's time step.
const STEP_MS: u64 = 100;

pub async fn run(
    mut crowd: Crowd,
    zones: Vec<Option<Arc<str>>>,
    clock: Clock,
    tx: mpsc::Sender<Sighting>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(STEP_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = Vec::new();
    // The crowd moves in fixed steps whatever the timer's jitter, so one seed draws the same
    // crowd in every process: two gateways simulating one store hear the same shoppers.
    let mut stepped = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = clock.now_ms();
        while stepped + STEP_MS <= now {
            stepped += STEP_MS;
            crowd.advance(stepped, &mut buf);
        }
        for (receiver, advert) in buf.drain(..) {
            let Some(Some(zone)) = zones.get(receiver) else {
                continue;
            };
            let s = Sighting {
                zone: zone.clone(),
                at_ms: stepped,
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
            receivers: 1,
            zone_gap_db: 15.0,
        }
    }

    fn run_cfg(c: CrowdConfig, ms: u64) -> Vec<(usize, Advert)> {
        let mut crowd = Crowd::new(c);
        let mut out = Vec::new();
        let mut t = 0;
        while t <= ms {
            crowd.advance(t, &mut out);
            t += 100;
        }
        out
    }

    fn run_for(seed: u64, ms: u64) -> Vec<Advert> {
        run_cfg(cfg(seed), ms).into_iter().map(|(_, a)| a).collect()
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
        assert!(out.iter().all(|(r, _)| *r == 0), "one receiver");
        assert_eq!(crowd.len(), 1);
        crowd.advance(24 * 3_600_000, &mut out);
        assert!(crowd.is_empty());
    }

    #[test]
    fn with_two_receivers_a_wandering_shopper_is_loudest_where_they_are() {
        let c = CrowdConfig {
            shoppers_per_minute: 0.001,
            receivers: 2,
            // A long visit: enough adverts either side of the move for the means to settle.
            mean_dwell_s: 1200.0,
            ..cfg(5)
        };
        let mut crowd = Crowd::new(c);
        // Arrivals until one wanders (60 % do).
        let mut at = 0;
        loop {
            crowd.arrive(at);
            if crowd.shoppers.last().is_some_and(|s| s.wander.is_some()) {
                break;
            }
            crowd.shoppers.clear();
            crowd.members_inside.clear();
            at += 1;
        }
        let (from, until, zone) = crowd.shoppers[0].wander.unwrap();
        assert_eq!(zone, 1);
        let mut out = Vec::new();
        let mut heard: Vec<(u64, usize, i16)> = Vec::new();
        let mut t = at;
        while !crowd.is_empty() {
            crowd.advance(t, &mut out);
            heard.extend(out.drain(..).map(|(r, a)| (t, r, a.rssi)));
            t += 100;
        }
        let mean = |inside: bool, r: usize| {
            let v: Vec<f64> = heard
                .iter()
                .filter(|(t, rr, _)| *rr == r && (from..until).contains(t) == inside)
                .map(|(_, _, rssi)| f64::from(*rssi))
                .collect();
            assert!(
                v.len() > 5,
                "receiver {r} inside={inside}: {} adverts",
                v.len()
            );
            v.iter().sum::<f64>() / v.len() as f64
        };
        // 15 dB apart on average, either way round, with noise of 5 dB.
        assert!(mean(true, 1) - mean(true, 0) > 10.0);
        assert!(mean(false, 0) - mean(false, 1) > 10.0);
    }

    #[test]
    fn the_presence_engine_follows_a_simulated_store_to_its_fitting_rooms_one_visit_each() {
        use crate::presence::{Presence, PresenceChange, PresenceParams};
        let zones: Vec<Arc<str>> = vec![Arc::from("entrance"), Arc::from("fitting-rooms")];
        let c = CrowdConfig {
            member_share: 1.0,
            population: 60_000,
            shoppers_per_minute: 6.0,
            mean_dwell_s: 300.0,
            receivers: 2,
            ..cfg(9)
        };
        let mut crowd = Crowd::new(c);
        let mut presence = Presence::new(PresenceParams::default(), "v".into());
        let mut members: std::collections::HashMap<u16, Arc<crate::cache::Member>> =
            std::collections::HashMap::new();
        let (mut out, mut changes) = (Vec::new(), Vec::new());
        let mut stays = 0usize;
        let mut crowd_wanderers = 0usize;
        let mut seen_inside = HashSet::new();
        for t in (0..3_600_000u64).step_by(100) {
            crowd.advance(t, &mut out);
            for s in &crowd.shoppers {
                if let Device::Member(m) = s.device
                    && seen_inside.insert((m, s.leave_at_ms))
                {
                    stays += 1;
                    crowd_wanderers += usize::from(s.wander.is_some());
                }
            }
            for (r, a) in out.drain(..) {
                let minor = u16::from_be_bytes([a.address[4], a.address[5]]);
                let m = members.entry(minor).or_insert_with(|| {
                    Arc::new(crate::cache::Member {
                        member_id: format!("M{minor:06}"),
                        ..Default::default()
                    })
                });
                presence.observe(m, &zones[r], a.rssi, t, &mut changes);
            }
            if t % 1000 == 0 {
                changes.extend(presence.tick(t));
            }
        }
        let arrivals = changes
            .iter()
            .filter(|c| matches!(c, PresenceChange::Arrive { .. }))
            .count();
        let to_fitting = changes
            .iter()
            .filter(
                |c| matches!(c, PresenceChange::ZoneChange { to, .. } if &**to == "fitting-rooms"),
            )
            .count();
        let visits_moved: HashSet<&str> = changes
            .iter()
            .filter_map(|c| match c {
                PresenceChange::ZoneChange { to, visit_id, .. } if &**to == "fitting-rooms" => {
                    Some(visit_id.as_str())
                }
                _ => None,
            })
            .collect();
        // One visit per stay, not one per receiver; most stays heard well enough to arrive.
        assert!(stays > 200, "{stays}");
        assert!(arrivals <= stays, "{arrivals} arrivals for {stays} stays");
        assert!(
            arrivals * 10 >= stays * 9,
            "{arrivals} arrivals for {stays} stays"
        );
        // The zone follows the louder receiver into the fitting rooms for nearly every shopper
        // who went there, and for nobody who did not.
        let wanderers = crowd_wanderers;
        assert!(wanderers * 10 >= stays * 5, "{wanderers} of {stays} wander");
        assert!(
            visits_moved.len() <= wanderers,
            "{} > {wanderers}",
            visits_moved.len()
        );
        assert!(
            visits_moved.len() * 10 >= wanderers * 9,
            "{} of {wanderers}",
            visits_moved.len()
        );
        // Noise makes a few visits go back and forth across the 8 dB margin; not most.
        assert!(
            to_fitting * 10 <= visits_moved.len() * 12,
            "{to_fitting} moves"
        );
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
