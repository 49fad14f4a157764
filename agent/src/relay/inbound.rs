//! The hub's side of forwarding: sealed batches from the store's other gateways become
//! sightings for this gateway's engine, exactly as if its own adapter had heard them in the
//! sender's zone.
//!
//! A batch is refused whole when its seal, store, clock or version is wrong, when it is not
//! newer than the last batch of its sender's process (`replayed`), when this gateway is not
//! acting as hub (`passive`: a standby whose hub is up) or when it comes from a 65th sender
//! (`peers`). Within a batch, a sighting that is too old or does not parse is skipped
//! (`stale`); a full engine queue drops it (`adverts_dropped`), as for any live source.
//! A sender not heard for `peer_silent_s` gets a `Scanner` event (`relay:<gateway>`, stalled,
//! then recovered) and `relay_peers_silent`, like an adapter of this gateway's that stalls.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use instore_protocol::{ScannerState, auth::MessageKey};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::wire::{self, WireError};
use crate::{
    engine::Clock,
    metrics::Metrics,
    outbox::Outbox,
    sources::{Sighting, scanner_event, silence::Silence},
};

/// Senders remembered at most.
pub const MAX_PEERS: usize = 64;
/// Processes remembered per sender, so a batch of an earlier one cannot be replayed as new.
const BOOTS_KEPT: usize = 4;
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboundError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("batch {seq} of this process was not newer than one already taken")]
    Replayed { seq: u64 },
    #[error("this gateway is not acting as its store's hub")]
    Passive,
    #[error("more than {MAX_PEERS} gateways forward to this one")]
    TooManyPeers,
}

impl InboundError {
    pub fn reason(&self) -> &'static str {
        match self {
            InboundError::Wire(e) => e.reason(),
            InboundError::Replayed { .. } => "replayed",
            InboundError::Passive => "passive",
            InboundError::TooManyPeers => "peers",
        }
    }
}

/// Which batches were taken, per sender, and who went quiet. Pure bookkeeping; times are the
/// hub's monotonic ms.
#[derive(Debug, Default)]
pub struct Peers {
    /// Per sender: (boot, highest seq taken), newest boot last.
    boots: HashMap<String, VecDeque<(String, u64)>>,
    liveness: Silence<String>,
}

/// A sender's liveness changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Silent(String),
    Heard(String),
}

impl Peers {
    /// Takes batch `seq` of `boot` from `gateway` unless it is not newer than one taken.
    /// Returns the sender's liveness change, if any.
    pub fn take(
        &mut self,
        gateway: &str,
        boot: &str,
        seq: u64,
        now_ms: u64,
    ) -> Result<Option<Liveness>, InboundError> {
        if !self.boots.contains_key(gateway) && self.boots.len() >= MAX_PEERS {
            return Err(InboundError::TooManyPeers);
        }
        let boots = self.boots.entry(gateway.to_string()).or_default();
        match boots.iter_mut().find(|(b, _)| b == boot) {
            Some((_, last)) if seq <= *last => return Err(InboundError::Replayed { seq }),
            Some((_, last)) => *last = seq,
            None => {
                if boots.len() >= BOOTS_KEPT {
                    boots.pop_front();
                }
                boots.push_back((boot.to_string(), seq));
            }
        }
        let id = gateway.to_string();
        Ok(self
            .liveness
            .heard(&id, now_ms)
            .then_some(Liveness::Heard(id)))
    }

    /// Senders that have just gone silent (not heard for `silent_after_ms`).
    pub fn check(&mut self, now_ms: u64, silent_after_ms: u64) -> Vec<Liveness> {
        self.liveness
            .check(now_ms, silent_after_ms)
            .into_iter()
            .map(Liveness::Silent)
            .collect()
    }

    /// Forgets every sender (this gateway stopped acting: what they send now is refused, and
    /// their silence is no news).
    pub fn clear(&mut self) {
        self.boots.clear();
        self.liveness.clear();
    }

    pub fn silent(&self) -> usize {
        self.liveness.silent()
    }
}

/// What the web route hands forwarded batches to.
#[derive(Clone)]
pub struct Inbound {
    key: MessageKey,
    store_id: String,
    peers: Arc<Mutex<Peers>>,
    engine: mpsc::Sender<Sighting>,
    acting: watch::Receiver<bool>,
    clock: Clock,
    metrics: Metrics,
    outbox: Option<Outbox>,
}

impl Inbound {
    pub fn new(
        key: MessageKey,
        store_id: String,
        engine: mpsc::Sender<Sighting>,
        acting: watch::Receiver<bool>,
        clock: Clock,
        metrics: Metrics,
        outbox: Option<Outbox>,
    ) -> Self {
        Self {
            key,
            store_id,
            peers: Arc::new(Mutex::new(Peers::default())),
            engine,
            acting,
            clock,
            metrics,
            outbox,
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        match self.peers.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes one forwarded batch; returns how many sightings went to the engine.
    pub fn accept(&self, payload: &[u8]) -> Result<usize, InboundError> {
        let result = self.accept_inner(payload);
        if let Err(e) = &result {
            self.metrics
                .relay_refused
                .get_or_create(&vec![("reason", e.reason())])
                .inc();
        }
        result
    }

    fn accept_inner(&self, payload: &[u8]) -> Result<usize, InboundError> {
        let batch = wire::open_batch(&self.key, payload, &self.store_id, wire::wall_ms())?;
        if !*self.acting.borrow() {
            return Err(InboundError::Passive);
        }
        let now = self.clock.now_ms();
        let change = self
            .peers()
            .take(&batch.gateway_id, &batch.boot, batch.seq, now)?;
        if let Some(change) = change {
            self.liveness(change);
        }
        let mut taken = 0;
        for s in &batch.sightings {
            let Some((zone, age, advert)) = wire::local_sighting(batch.mono_ms, s) else {
                self.metrics
                    .relay_refused
                    .get_or_create(&vec![("reason", "stale")])
                    .inc();
                continue;
            };
            let sighting = Sighting {
                zone: Arc::from(zone.as_str()),
                at_ms: now.saturating_sub(age),
                advert,
            };
            self.metrics.relay_received.inc();
            match self.engine.try_send(sighting) {
                Ok(()) => taken += 1,
                Err(_) => {
                    self.metrics.adverts_dropped.inc();
                }
            }
        }
        Ok(taken)
    }

    fn liveness(&self, change: Liveness) {
        match change {
            Liveness::Silent(id) => {
                tracing::warn!(gateway = %id, "forwarding gateway silent");
                scanner_event(
                    self.outbox.as_ref(),
                    &format!("relay:{id}"),
                    ScannerState::Stalled,
                    "no forwarded sightings",
                );
            }
            Liveness::Heard(id) => {
                tracing::info!(gateway = %id, "forwarding gateway heard again");
                scanner_event(
                    self.outbox.as_ref(),
                    &format!("relay:{id}"),
                    ScannerState::Recovered,
                    "",
                );
            }
        }
        self.metrics
            .relay_peers_silent
            .set(self.peers().silent() as i64);
    }

    /// Watches for senders that go quiet, until `cancel`.
    pub async fn watch_silence(self, silent_after: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !*self.acting.borrow() {
                self.peers().clear();
                self.metrics.relay_peers_silent.set(0);
                continue;
            }
            let changes = self
                .peers()
                .check(self.clock.now_ms(), silent_after.as_millis() as u64);
            for c in changes {
                self.liveness(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_taken_once_per_process_and_earlier_processes_stay_refused() {
        let mut p = Peers::default();
        assert_eq!(p.take("gw-2", "b1", 1, 0), Ok(None));
        assert_eq!(p.take("gw-2", "b1", 2, 10), Ok(None));
        assert_eq!(
            p.take("gw-2", "b1", 2, 20),
            Err(InboundError::Replayed { seq: 2 })
        );
        assert_eq!(
            p.take("gw-2", "b1", 1, 20),
            Err(InboundError::Replayed { seq: 1 })
        );
        // The sender restarted: a new process starts at 1 again.
        assert_eq!(p.take("gw-2", "b2", 1, 30), Ok(None));
        assert_eq!(
            p.take("gw-2", "b1", 2, 40),
            Err(InboundError::Replayed { seq: 2 }),
            "the earlier process is still remembered"
        );
    }

    #[test]
    fn a_quiet_sender_is_reported_once_then_heard_again() {
        let mut p = Peers::default();
        p.take("gw-2", "b1", 1, 0).unwrap();
        p.take("gw-3", "b1", 1, 0).unwrap();
        assert!(p.check(10_000, 10_000).is_empty());
        p.take("gw-3", "b1", 2, 9_000).unwrap();
        assert_eq!(
            p.check(10_001, 10_000),
            vec![Liveness::Silent("gw-2".into())]
        );
        assert_eq!(
            p.check(20_000, 10_000),
            vec![Liveness::Silent("gw-3".into())],
            "gw-2 is reported once"
        );
        assert_eq!(p.silent(), 2);
        assert_eq!(
            p.take("gw-2", "b1", 2, 20_000),
            Ok(Some(Liveness::Heard("gw-2".into())))
        );
        assert_eq!(p.silent(), 1);
    }

    #[test]
    fn senders_are_bounded() {
        let mut p = Peers::default();
        for i in 0..MAX_PEERS {
            p.take(&format!("gw-{i}"), "b", 1, 0).unwrap();
        }
        assert_eq!(
            p.take("one-too-many", "b", 1, 0),
            Err(InboundError::TooManyPeers)
        );
        assert_eq!(p.take("gw-0", "b", 2, 0), Ok(None));
    }
}
