//! The agent's hot path — decode, match against the member index, presence, rules — on one core,
//! with the engine's real `Core`, against a realistic member and advert mix.
//!
//! Members (default 1,000,000), by `i mod 10`: 0-3 iBeacon, 4 Eddystone UID, 5 Eddystone EID
//! (temporary keys for this epoch and the next, as head office ships them), 6-7 public address,
//! 8 rotating ID (day keys for today and tomorrow, as head office ships them), 9 IRK for one member
//! in ten of those (1 % of all: IRKs come only from pairing) and a public address otherwise.
//! Adverts: `member_share` from members, each in the frame its identifier implies; the rest from a
//! population of strangers' devices with resolvable private addresses sending what phones send
//! (Apple nearby/Find My, Google Fast Pair, Microsoft Swift Pair, an unknown iBeacon now and then).

use std::{sync::Arc, time::Instant};

use instore_agent::{
    cache::{MemberCache, Members},
    engine::Core,
    identify::{COMPANY_APPLE, Identify, rotating::WindowTable, rpa},
    metrics::Metrics,
    presence::{Presence, PresenceParams},
    react::Rules,
    sources::{AddressType, Advert, Sighting, sim},
};
use instore_protocol::{
    Consent, Identifier, MemberRecord,
    eddystone_eid::{self, eid_from_identity, shipped_epochs, temporary_key},
    member::format_uuid,
    rotating::{self, day_key, shipped_days, window_of_ms},
};

/// Eddystone-EID rotation exponent of the bench's beacons (a new EID every 1,024 s).
const EID_EXPONENT: u8 = 10;

fn identity_key(i: u32) -> [u8; 16] {
    let mut k = [0x3c; 16];
    k[..4].copy_from_slice(&i.to_be_bytes());
    k
}

/// A deterministic xorshift so the advert mix is the same on every run.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn secret(i: u32) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..4].copy_from_slice(&i.to_be_bytes());
    s
}

fn irk(i: u32) -> [u8; 16] {
    let mut k = [0xa5; 16];
    k[..4].copy_from_slice(&i.to_be_bytes());
    k
}

fn public_address(i: u32) -> [u8; 6] {
    public_address_of(i)
}

/// The public address of bench member `i` (for members whose identifier is an address).
pub(crate) fn public_address_of(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x00, 0x1b, b[0], b[1], b[2], b[3]]
}

fn eddystone_ids(i: u32) -> ([u8; 10], [u8; 6]) {
    let b = i.to_be_bytes();
    (*b"instorens1", [0, 0, b[0], b[1], b[2], b[3]])
}

pub(crate) fn member(i: u32, now_ms: i64) -> MemberRecord {
    let identifier = match i % 10 {
        0..=3 => Identifier::Ibeacon {
            uuid: format_uuid(&sim::SIM_UUID),
            major: 1000 + (i / 65_536) as u16,
            minor: (i % 65_536) as u16,
        },
        4 => {
            let (ns, inst) = eddystone_ids(i);
            Identifier::EddystoneUid {
                namespace: hex::encode(ns),
                instance: hex::encode(inst),
            }
        }
        5 => Identifier::EddystoneEidIdentity {
            identity_key: hex::encode(identity_key(i)),
            exponent: EID_EXPONENT,
        },
        8 => Identifier::RotatingSecret {
            secret: hex::encode(secret(i)),
        },
        9 if i % 100 == 9 => Identifier::Irk {
            irk: hex::encode(irk(i)),
        },
        _ => Identifier::Mac {
            address: public_address(i)
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
        },
    };
    let mut r = MemberRecord {
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
        consent: Consent {
            presence: true,
            marketing: false,
        },
        identifiers: vec![identifier],
        birthday: None,
        last_purchase: None,
        last_visit: None,
        ..Default::default()
    };
    // What head office does to a rotating secret before a gateway sees it.
    if let Identifier::RotatingSecret { .. } = r.identifiers[0] {
        r.identifiers = shipped_days(now_ms)
            .map(|day| Identifier::RotatingDayKey {
                day,
                key: hex::encode(day_key(&secret(i), day)),
            })
            .collect();
    }
    // And to an Eddystone-EID identity key.
    if let Identifier::EddystoneEidIdentity { .. } = r.identifiers[0] {
        r.identifiers = shipped_epochs(now_ms)
            .map(|epoch| Identifier::EddystoneEidTemp {
                epoch,
                key: hex::encode(temporary_key(&identity_key(i), epoch)),
                exponent: EID_EXPONENT,
            })
            .collect();
    }
    r
}

pub(crate) fn member_advert(i: u32, r: u64, now_ms: i64) -> Advert {
    let stranger_addr = {
        let a = r.to_be_bytes();
        [0x40 | (a[0] & 0x3f), a[1], a[2], a[3], a[4], a[5]]
    };
    let mut advert = Advert {
        address: stranger_addr,
        address_type: AddressType::Random,
        rssi: -60 - (r % 20) as i16,
        manufacturer_data: vec![],
        service_data: vec![],
    };
    match i % 10 {
        0..=3 => {
            advert.manufacturer_data = vec![(
                COMPANY_APPLE,
                sim::ibeacon_payload(
                    &sim::SIM_UUID,
                    1000 + (i / 65_536) as u16,
                    (i % 65_536) as u16,
                    -59,
                ),
            )]
        }
        4 => {
            let (ns, inst) = eddystone_ids(i);
            let mut d = vec![0x00, 0xec];
            d.extend_from_slice(&ns);
            d.extend_from_slice(&inst);
            advert.service_data = vec![(0xFEAA, d)];
        }
        5 => {
            let ts = eddystone_eid::ts_of_ms(now_ms);
            let eid = eid_from_identity(&identity_key(i), EID_EXPONENT, ts);
            advert.service_data = vec![(0xFEAA, eddystone_eid::frame(&eid, -4).to_vec())];
        }
        8 => {
            let w = window_of_ms(now_ms);
            let k = day_key(&secret(i), rotating::day_of_window(w));
            advert.manufacturer_data = vec![(COMPANY_APPLE, rotating::frame(&k, w, -59).to_vec())];
        }
        9 if i % 100 == 9 => {
            // The member's phone keeps one RPA for the run (they rotate every ~15 minutes).
            let b = i.to_be_bytes();
            let prand = [0x40 | (b[1] & 0x3f), b[2], b[3]];
            let h = rpa::ah_with_irk(&irk(i), prand);
            advert.address = [prand[0], prand[1], prand[2], h[0], h[1], h[2]];
        }
        _ => {
            advert.address = public_address(i);
            advert.address_type = AddressType::Public;
        }
    }
    advert
}

/// What strangers' phones send, by `kind`.
pub(crate) fn stranger_advert(device: u64, kind: u64) -> Advert {
    let a = device.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
    let address = [0x40 | (a[0] & 0x3f), a[1], a[2], a[3], a[4], a[5]];
    let (manufacturer_data, service_data) = match kind % 20 {
        0..=9 => (
            vec![(COMPANY_APPLE, vec![0x10, 0x05, a[6], a[7], 0x1c])],
            vec![],
        ),
        10..=13 => (
            vec![(COMPANY_APPLE, vec![0x12, 0x19, a[6], a[7], 0, 0])],
            vec![],
        ),
        14..=16 => (vec![], vec![(0xFE2C, vec![a[6], a[7], a[1]])]),
        17 | 18 => (vec![(0x0006, vec![0x03, 0x00, 0x80, a[6]])], vec![]),
        _ => (
            vec![(COMPANY_APPLE, sim::ibeacon_payload(&[a[7]; 16], 1, 2, -59))],
            vec![],
        ),
    };
    Advert {
        address,
        address_type: AddressType::Random,
        rssi: -75,
        manufacturer_data,
        service_data,
    }
}

pub(crate) fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(
    members: u32,
    n: usize,
    member_share: f64,
    strangers: u64,
    present: u32,
) -> anyhow::Result<()> {
    let members = members.max(1);
    let now_ms = instore_agent::now_ms();
    // The members go through members.db, as on a gateway: the engine holds the index and reads
    // a matched member's record from the file (once; then from its record cache).
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(dir.path().join("m.ndjson"))?);
        for i in 0..members {
            serde_json::to_writer(&mut w, &member(i, now_ms))?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let cache = MemberCache::open(&dir.path().join("members.db"))?;
    let f = std::fs::File::open(dir.path().join("m.ndjson"))?;
    cache.import_ndjson(&mut std::io::BufReader::new(f))?;
    std::fs::remove_file(dir.path().join("m.ndjson"))?;
    let records_s = t.elapsed().as_secs_f64();
    let rss_start = vm_rss_kib();
    let t = Instant::now();
    let loaded: Members = cache.members()?;
    let build_s = t.elapsed().as_secs_f64();
    let rss_index = vm_rss_kib();
    let index_heap = loaded.index.heap_bytes();
    let keys = loaded.keys.clone();
    let index = &loaded.index;

    // One window's rotating-ID + EID table (built per 15-minute window on the id-tables thread).
    let t = Instant::now();
    let table = WindowTable::build(
        &*keys,
        instore_agent::identify::rotating::TableOrigin::of(index),
        window_of_ms(now_ms),
    );
    let table_s = t.elapsed().as_secs_f64();
    let rotating_members = table.len();
    drop(table);
    // What the engine tick costs at a window boundary now: swapping in the table built a window
    // ahead and asking for the next one (it used to build the table inline: `table_s`).
    let mut ident = Identify::new(now_ms);
    ident.prepare_and_wait(index, &keys, 0);
    let t = Instant::now();
    ident.prepare(index, &keys, 15 * 60_000);
    let boundary_tick_us = t.elapsed().as_secs_f64() * 1e6;
    drop(ident);
    // A new RPA costs one AES block per IRK (then it is cached).
    let irks = index.irks().len();
    let t = Instant::now();
    let probes = 200u32;
    for p in 0..probes {
        let b = p.to_be_bytes();
        std::hint::black_box(rpa::resolve(&[0x41, b[2], b[3], 1, 2, 3], index.irks()));
    }
    let new_rpa_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(probes);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let zone: Arc<str> = Arc::from("entrance");
    let threshold = (member_share.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut stranger_count = 0usize;
    // Adverts are prepared first so that the timed loop measures the agent, not the generator.
    let sightings: Vec<Sighting> = (0..n)
        .map(|k| {
            let at_ms = (k as u64) / 50; // 50,000 adverts per simulated second
            let r = rng.next();
            let advert = if r < threshold {
                // Members present: a store sees hundreds or thousands a day, not its whole base.
                let i = ((rng.next() % u64::from(present.clamp(1, members))) * 7919
                    % u64::from(members)) as u32;
                member_advert(i, r, now_ms + at_ms as i64)
            } else {
                stranger_count += 1;
                let device = rng.next() % strangers.max(1);
                stranger_advert(device, device ^ (k as u64 >> 12))
            };
            Sighting {
                zone: zone.clone(),
                at_ms,
                advert,
            }
        })
        .collect();

    let presence = Presence::new(
        PresenceParams {
            arrive_sightings: 2,
            arrive_window_ms: 10_000,
            depart_after_ms: 60_000,
            min_rssi: -90,
            ..PresenceParams::default()
        },
        "bench".into(),
    );
    let rules = Rules::parse(
        include_str!("../../agent/examples/rules.toml"),
        "rules.toml",
    )?;
    let metrics = Metrics::default();
    let mut core = Core::new(loaded, presence, rules, metrics.clone());
    // The engine has its window tables from its first ticks on; don't time their building.
    core.prepare_id_tables_and_wait(0);
    let mut out = Vec::new();
    let mut outputs = 0usize;
    let mut marker = crate::marker::Marker::new();
    marker.start();
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
    marker.stop();
    let rate = n as f64 / secs;
    let identified = metrics.identified.get();
    let stranger_share = stranger_count as f64 / n as f64;
    let index_mib = rss_index.saturating_sub(rss_start) as f64 / 1024.0;
    println!("hot path: decode + match + presence (+ rules, footfall), one core");
    println!("  members cached      {members} (IRKs {irks}, rotating IDs {rotating_members})");
    println!("  members.db import   {records_s:.2} s");
    println!(
        "  index load          {build_s:.2} s (heap {:.1} MiB)",
        index_heap as f64 / 1048576.0
    );
    println!(
        "  member adverts from {present} members present, records read {} times from members.db",
        metrics.member_record_reads.get()
    );
    println!(
        "  resident memory     {:.0} MiB before, {:.0} MiB with the index ({index_mib:.0} MiB, {:.0} B/member)",
        rss_start as f64 / 1024.0,
        rss_index as f64 / 1024.0,
        index_mib * 1024.0 * 1024.0 / f64::from(members)
    );
    println!(
        "  window table        {:.0} ms per window ({rotating_members} rotating IDs + EIDs), off the engine",
        table_s * 1e3
    );
    println!("  tick at a window    {boundary_tick_us:.0} us (swap a ready table, queue the next)");
    println!("  new RPA resolution  {new_rpa_us:.0} us ({irks} IRKs; cached per address after)");
    println!("  adverts             {n} ({strangers} stranger devices)");
    println!("  strangers           {:.1} %", 100.0 * stranger_share);
    println!("  identified          {identified}");
    println!("  presence/alert outputs {outputs}");
    println!("  throughput          {rate:.0} adverts/s");
    println!("  per advert          {:.0} ns", 1e9 / rate);
    println!(
        "  resident at end     {:.0} MiB",
        vm_rss_kib() as f64 / 1024.0
    );
    println!(
        "{}",
        serde_json::json!({"bench": "hot_path", "members": members, "adverts": n,
            "irks": irks, "rotating": rotating_members,
            "stranger_share": stranger_share, "adverts_per_s": rate.round(),
            "ns_per_advert": (1e9 / rate).round(), "index_build_s": build_s,
            "index_rss_mib": index_mib.round(), "rotating_table_ms": (table_s * 1e3).round(),
            "boundary_tick_us": boundary_tick_us.round(),
            "new_rpa_us": new_rpa_us.round()})
    );
    Ok(())
}
