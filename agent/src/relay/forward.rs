//! Forwarding (a receiver; a standby while the hub acts): this gateway's sightings go to its
//! peers over the LAN.
//!
//! In: sightings from the gate. Out: sealed [`SightingBatch`]es, `POST
//! {peer}/api/relay/sightings`: a sighting after a quiet spell leaves at once, and then at most
//! one batch per `forward_every_ms` carries what came meanwhile (so an arrival is not held up
//! by the batching, and a busy floor costs ten requests a second); an empty batch at least
//! every [`HEARTBEAT`] lets the hub tell a quiet room from a dead receiver.
//! Back-pressure: per peer, at most `forward_max_devices` devices wait, each with only its
//! latest advert (a newer advert replaces the waiting one: `relay_forward_coalesced`; a new
//! device past the cap is dropped: `relay_forward_dropped`). A peer that is slow or gone never
//! holds up the others or the sources: each peer has its own queue and task, one request at a
//! time, and what a failed or refused request carried is lost (`relay_sightings_lost`; a passive
//! standby's 503 is not a loss: the acting hub takes them), as the device's
//! next advert replaces it anyway.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use instore_protocol::auth::MessageKey;
use tokio_util::sync::CancellationToken;

use super::wire::{self, SightingBatch, WireSighting};
use crate::{
    engine::Clock,
    metrics::Metrics,
    sources::{Sighting, record::AdvertRecord},
};

/// Longest a peer goes without a batch from a forwarding gateway.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a batch may take to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What happened to an offered sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// The device's waiting advert was replaced.
    Replaced,
    /// The queue held its cap of devices.
    Dropped,
}

/// Sightings waiting for one peer: the latest per (zone, address), in the order devices came.
#[derive(Debug)]
pub struct Pending {
    waiting: HashMap<(Arc<str>, [u8; 6]), Sighting>,
    max: usize,
}

impl Pending {
    pub fn new(max: usize) -> Self {
        Self {
            waiting: HashMap::new(),
            max,
        }
    }

    pub fn offer(&mut self, s: Sighting) -> Offered {
        let len = self.waiting.len();
        match self.waiting.entry((s.zone.clone(), s.advert.address)) {
            Entry::Occupied(mut e) => {
                e.insert(s);
                Offered::Replaced
            }
            Entry::Vacant(_) if len >= self.max => Offered::Dropped,
            Entry::Vacant(e) => {
                e.insert(s);
                Offered::Queued
            }
        }
    }

    /// Up to `limit` waiting sightings, oldest first; the rest keep waiting.
    pub fn take(&mut self, limit: usize) -> Vec<Sighting> {
        if self.waiting.len() <= limit {
            let mut all: Vec<Sighting> = self.waiting.drain().map(|(_, s)| s).collect();
            all.sort_by_key(|s| s.at_ms);
            return all;
        }
        let mut keys: Vec<_> = self
            .waiting
            .iter()
            .map(|(k, s)| (s.at_ms, k.clone()))
            .collect();
        keys.sort_by_key(|(at, _)| *at);
        keys.truncate(limit);
        keys.into_iter()
            .filter_map(|(_, k)| self.waiting.remove(&k))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Who is forwarding, for the batches' headers.
#[derive(Debug, Clone)]
pub struct Sender {
    pub store_id: String,
    pub gateway_id: String,
    pub boot: String,
    pub key: MessageKey,
}

/// One peer's waiting sightings and the bell its task waits on.
#[derive(Debug)]
struct Queue {
    pending: Mutex<Pending>,
    bell: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned queue only means a panic elsewhere; its data is still sound.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queues of every peer; cloned into the gate.
#[derive(Debug, Clone)]
pub struct Forwarder {
    queues: Vec<Arc<Queue>>,
    metrics: Metrics,
}

impl Forwarder {
    /// Queues `s` for every peer.
    pub fn offer(&self, s: &Sighting) {
        for q in &self.queues {
            let outcome = q.lock().offer(s.clone());
            q.bell.notify_one();
            match outcome {
                Offered::Queued => {}
                Offered::Replaced => {
                    self.metrics.relay_forward_coalesced.inc();
                }
                Offered::Dropped => {
                    self.metrics.relay_forward_dropped.inc();
                }
            }
        }
    }
}

/// Starts one task per peer and returns the forwarder that feeds them.
pub fn spawn(
    cfg: &crate::config::HubConfig,
    sender: Sender,
    clock: Clock,
    metrics: Metrics,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> Result<Forwarder, reqwest::Error> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    let every = Duration::from_millis(cfg.forward_every_ms);
    let mut queues = Vec::new();
    for peer in &cfg.peers {
        let q = Arc::new(Queue {
            pending: Mutex::new(Pending::new(cfg.forward_max_devices)),
            bell: Notify::new(),
        });
        queues.push(q.clone());
        let url = format!("{}/api/relay/sightings", peer.trim_end_matches('/'));
        tracker.spawn(run_peer(
            url,
            q,
            http.clone(),
            sender.clone(),
            every,
            clock.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
    }
    Ok(Forwarder { queues, metrics })
}

#[allow(clippy::too_many_arguments)]
async fn run_peer(
    url: String,
    queue: Arc<Queue>,
    http: reqwest::Client,
    sender: Sender,
    every: Duration,
    clock: Clock,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut seq = 0u64;
    // Any batch (heartbeats too) / the last one that carried sightings, which paces the next.
    let mut last_sent = tokio::time::Instant::now();
    let mut last_full = last_sent;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = queue.bell.notified() => {}
            () = tokio::time::sleep_until(last_sent + HEARTBEAT) => {}
        }
        // At most one batch per `every`: what comes meanwhile joins the next.
        let next = last_full + every;
        if tokio::time::Instant::now() < next {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
        let due = {
            let mut q = queue.lock();
            let due = q.take(wire::MAX_SIGHTINGS);
            if !q.is_empty() {
                // More than one batch holds: the rest goes next, not at the heartbeat.
                queue.bell.notify_one();
            }
            due
        };
        if due.is_empty() && last_sent.elapsed() < HEARTBEAT {
            continue;
        }
        seq += 1;
        let count = due.len() as u64;
        let batch = SightingBatch {
            v: wire::VERSION,
            store_id: sender.store_id.clone(),
            gateway_id: sender.gateway_id.clone(),
            boot: sender.boot.clone(),
            seq,
            sent_ms: wire::wall_ms(),
            mono_ms: clock.now_ms(),
            sightings: due
                .iter()
                .map(|s| WireSighting {
                    zone: s.zone.to_string(),
                    advert: AdvertRecord::from_advert(s.at_ms, &s.advert),
                })
                .collect(),
        };
        let body = wire::seal(&sender.key, wire::SIGHTINGS_ROUTE, &batch);
        last_sent = tokio::time::Instant::now();
        if count > 0 {
            last_full = last_sent;
        }
        let sent = tokio::select! {
            () = cancel.cancelled() => return,
            r = http.post(&url).header("content-type", "application/json").body(body).send() => r,
        };
        let result = match sent {
            Ok(r) if r.status().is_success() => "accepted",
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => "passive",
            Ok(r) => {
                tracing::warn!(peer = %url, status = %r.status(), "forwarded sightings refused");
                "refused"
            }
            Err(_) => "failed",
        };
        metrics
            .relay_batches
            .get_or_create(&vec![("result", result)])
            .inc();
        // A passive standby refusing is no loss: the acting hub, another peer, takes them.
        if result == "refused" || result == "failed" {
            metrics.relay_sightings_lost.inc_by(count);
        }
        let now_reachable = result != "failed";
        if now_reachable != reachable {
            reachable = now_reachable;
            if reachable {
                tracing::info!(peer = %url, "peer reachable again");
            } else {
                tracing::warn!(peer = %url, "peer not answering; sightings for it are lost until it does");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{AddressType, Advert};

    fn sighting(zone: &str, last: u8, at_ms: u64, rssi: i16) -> Sighting {
        Sighting {
            zone: Arc::from(zone),
            at_ms,
            advert: Advert {
                address: [0xC0, 0, 0, 0, 0, last],
                address_type: AddressType::Random,
                rssi,
                manufacturer_data: vec![],
                service_data: vec![],
            },
        }
    }

    #[test]
    fn the_latest_advert_of_a_device_wins_and_new_devices_past_the_cap_are_dropped() {
        let mut p = Pending::new(2);
        assert_eq!(p.offer(sighting("entrance", 1, 10, -70)), Offered::Queued);
        assert_eq!(p.offer(sighting("entrance", 1, 20, -60)), Offered::Replaced);
        // The same device in another zone is another entry.
        assert_eq!(p.offer(sighting("till", 1, 30, -80)), Offered::Queued);
        assert_eq!(p.offer(sighting("entrance", 2, 40, -50)), Offered::Dropped);
        // A device already waiting still updates at the cap.
        assert_eq!(p.offer(sighting("till", 1, 50, -75)), Offered::Replaced);
        let out = p.take(10);
        assert_eq!(
            out.iter()
                .map(|s| (s.at_ms, s.advert.rssi))
                .collect::<Vec<_>>(),
            vec![(20, -60), (50, -75)]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn take_leaves_the_newest_beyond_its_limit_waiting() {
        let mut p = Pending::new(100);
        for i in 0..10u8 {
            p.offer(sighting("entrance", i, 100 - u64::from(i), -60));
        }
        let first = p.take(4);
        assert_eq!(
            first.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            vec![91, 92, 93, 94]
        );
        assert_eq!(p.len(), 6);
        assert_eq!(p.take(100).len(), 6);
    }
}
