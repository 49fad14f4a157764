//! `relay`: what forwarded sightings cost the store's hub. Batches of `--batch` sightings from
//! one receiver (a busy 100 ms: distinct phones, members' and strangers' adverts alike), sealed
//! as a receiver seals them, go through the hub's real `Inbound::accept` (seal check, clock and
//! replay checks, JSON, conversion to local sightings, the engine's queue, drained by a second
//! thread) on one core. Prints forwarded sightings per second and the bytes each costs on the
//! store LAN.

use std::{sync::Arc, time::Instant};

use clap::Args;
use instore_agent::{
    engine::Clock,
    metrics::Metrics,
    relay::{
        inbound::Inbound,
        wire::{self, SightingBatch, WireSighting},
    },
    sources::{AddressType, Advert, record::AdvertRecord, sim},
};
use instore_protocol::auth::MessageKey;

#[derive(Args)]
pub struct RelayArgs {
    /// Batches sent.
    #[arg(long, default_value_t = 3000)]
    batches: usize,
    /// Sightings per batch.
    #[arg(long, default_value_t = 200)]
    batch: usize,
}

pub fn run(args: RelayArgs) -> anyhow::Result<()> {
    let key = MessageKey::for_store_lan("bench-store-lan-secret", "bench");
    let (tx, mut rx) = tokio::sync::mpsc::channel(65_536);
    let drain = std::thread::spawn(move || {
        let mut n = 0u64;
        while rx.blocking_recv().is_some() {
            n += 1;
        }
        n
    });
    let (_acting_tx, acting) = tokio::sync::watch::channel(true);
    let clock = Clock::new();
    let inbound = Inbound::new(
        key.clone(),
        "bench".into(),
        tx,
        acting,
        clock.clone(),
        Metrics::default(),
        None,
    );
    let advert = |i: usize| Advert {
        address: [0xC0, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        address_type: AddressType::Random,
        rssi: -60 - (i % 30) as i16,
        manufacturer_data: vec![(
            0x004c,
            sim::ibeacon_payload(&sim::SIM_UUID, 1, (i % 65_536) as u16, -59),
        )],
        service_data: vec![],
    };
    // Sealed before the clock starts: the receiver's work is not the hub's.
    let zone: Arc<str> = Arc::from("fitting-rooms");
    let mut bodies = Vec::with_capacity(args.batches);
    let mut bytes = 0usize;
    for b in 0..args.batches {
        let now = clock.now_ms();
        let batch = SightingBatch {
            v: wire::VERSION,
            store_id: "bench".into(),
            gateway_id: "bench-rx".into(),
            boot: "b".into(),
            seq: b as u64 + 1,
            sent_ms: wire::wall_ms(),
            mono_ms: now,
            sightings: (0..args.batch)
                .map(|i| WireSighting {
                    zone: zone.to_string(),
                    advert: AdvertRecord::from_advert(now, &advert(b * args.batch + i)),
                })
                .collect(),
        };
        let body = wire::seal(&key, wire::SIGHTINGS_ROUTE, &batch);
        bytes += body.len();
        bodies.push(body);
    }
    let t0 = Instant::now();
    let mut taken = 0usize;
    for body in &bodies {
        taken += inbound
            .accept(body)
            .map_err(|e| anyhow::anyhow!("batch refused: {e}"))?;
    }
    let took = t0.elapsed();
    drop(inbound);
    let drained = drain.join().map_err(|_| anyhow::anyhow!("drain thread"))?;
    let sightings = args.batches * args.batch;
    anyhow::ensure!(taken == sightings, "{taken} of {sightings} taken");
    let per_s = sightings as f64 / took.as_secs_f64().max(f64::EPSILON);
    let ns = took.as_nanos() as f64 / sightings as f64;
    let per_sighting = bytes as f64 / sightings as f64;
    println!("relay: forwarded sightings taken in by the hub (one core, sealed batches)");
    println!(
        "  batches             {} x {} sightings",
        args.batches, args.batch
    );
    println!("  sightings/s         {per_s:.0}");
    println!("  ns/sighting         {ns:.0}");
    println!("  bytes/sighting      {per_sighting:.0} (on the LAN, JSON, seal shared per batch)");
    println!("  drained             {drained}");
    println!(
        "{}",
        serde_json::json!({"bench": "relay", "sightings": sightings, "batch": args.batch,
            "sightings_per_s": per_s, "ns_per_sighting": ns, "bytes_per_sighting": per_sighting,
            "seconds": took.as_secs_f64()})
    );
    Ok(())
}
