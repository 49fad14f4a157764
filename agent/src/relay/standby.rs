//! Who acts as the store's hub: the hub, unless it has been unreachable for
//! `takeover_after_s`, in which case the standby does until the hub is back.
//!
//! The standby asks the hub for its state (`GET {hub}/api/relay/state`, sealed) every
//! [`CHECK_EVERY`]; a sealed, fresh answer of the hub's (acting or starting) is "alive".
//! [`Watch`] (pure) turns those answers into a takeover or a hand-back. A hub that starts asks
//! each peer to hand back (`POST {peer}/api/relay/handback`) before it acts itself, so the two
//! act together only for an in-flight request or two; a standby that cannot be reached then is
//! told again by its own next check. What a takeover loses and repeats is in ARCHITECTURE.md.

use std::time::Duration;

use instore_protocol::auth::MessageKey;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Handback, HubState};
use crate::metrics::Metrics;

pub const CHECK_EVERY: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(900);

/// What one check of the hub found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The hub answered (acting, or starting and about to).
    Alive,
    /// No answer, or not one the hub could have made.
    NoAnswer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    TakeOver,
    HandBack,
}

/// The standby's decision, on the monotonic clock.
#[derive(Debug, Clone)]
pub struct Watch {
    takeover_after_ms: u64,
    last_alive_ms: u64,
    acting: bool,
}

impl Watch {
    /// A standby that starts passive: the hub has `takeover_after_ms` from now to answer.
    pub fn new(takeover_after_ms: u64, now_ms: u64) -> Self {
        Self {
            takeover_after_ms,
            last_alive_ms: now_ms,
            acting: false,
        }
    }

    pub fn acting(&self) -> bool {
        self.acting
    }

    pub fn observe(&mut self, now_ms: u64, seen: Seen) -> Option<Change> {
        match seen {
            Seen::Alive => {
                self.last_alive_ms = now_ms;
                self.acting.then(|| {
                    self.acting = false;
                    Change::HandBack
                })
            }
            Seen::NoAnswer => {
                let quiet = now_ms.saturating_sub(self.last_alive_ms);
                (!self.acting && quiet >= self.takeover_after_ms).then(|| {
                    self.acting = true;
                    Change::TakeOver
                })
            }
        }
    }

    /// The hub asked to act again.
    pub fn hand_back(&mut self, now_ms: u64) -> Option<Change> {
        self.observe(now_ms, Seen::Alive)
    }
}

/// Reaching peers: their state, and asking them to hand back.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    key: MessageKey,
    store_id: String,
    gateway_id: String,
}

impl PeerClient {
    pub fn new(key: MessageKey, store_id: String, gateway_id: String) -> reqwest::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()?,
            key,
            store_id,
            gateway_id,
        })
    }

    /// The peer's sealed state, checked: `None` when it does not answer or the answer is not
    /// its store's, sealed and fresh.
    pub async fn state(&self, peer: &str) -> Option<HubState> {
        let url = format!("{}/api/relay/state", peer.trim_end_matches('/'));
        let body = self.http.get(url).send().await.ok()?.bytes().await.ok()?;
        self.read_state(&body)
    }

    fn read_state(&self, body: &[u8]) -> Option<HubState> {
        let s: HubState = wire::open(&self.key, wire::STATE_ROUTE, body).ok()?;
        wire::check_header(s.v, &s.store_id, s.sent_ms, &self.store_id, wire::wall_ms()).ok()?;
        (s.gateway_id != self.gateway_id).then_some(s)
    }

    /// Asks `peer` to stop acting as hub; true when it answered that it is not acting.
    pub async fn ask_hand_back(&self, peer: &str) -> bool {
        let url = format!("{}/api/relay/handback", peer.trim_end_matches('/'));
        let msg = Handback {
            v: wire::VERSION,
            store_id: self.store_id.clone(),
            gateway_id: self.gateway_id.clone(),
            sent_ms: wire::wall_ms(),
        };
        let body = wire::seal(&self.key, wire::HANDBACK_ROUTE, &msg);
        let Ok(resp) = self.http.post(url).body(body).send().await else {
            return false;
        };
        let Ok(bytes) = resp.bytes().await else {
            return false;
        };
        self.read_state(&bytes).is_some_and(|s| !s.active)
    }
}

/// The hub, starting: every peer that answers is asked to hand back, then the hub acts.
pub async fn start_hub(client: PeerClient, peers: Vec<String>, acting: super::Acting) {
    for peer in &peers {
        if client.ask_hand_back(peer).await {
            tracing::info!(peer = %peer, "standby is not acting (handed back or never took over)");
        } else {
            tracing::info!(peer = %peer, "standby did not answer; acting anyway");
        }
    }
    acting.set(true);
    tracing::info!("acting as the store's hub");
}

/// The standby's loop: checks the hub and acts while it is gone.
pub struct Standby {
    pub client: PeerClient,
    /// The hub's base URL.
    pub hub: String,
    pub watch: Watch,
    pub clock: crate::engine::Clock,
    pub acting: super::Acting,
    /// The hub's requests to hand back, from the web route.
    pub handbacks: tokio::sync::mpsc::Receiver<()>,
    pub metrics: Metrics,
}

impl Standby {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let change = tokio::select! {
                () = cancel.cancelled() => return,
                Some(()) = self.handbacks.recv() => self.watch.hand_back(self.clock.now_ms()),
                _ = tick.tick() => {
                    let seen = match self.client.state(&self.hub).await {
                        Some(_) => Seen::Alive,
                        None => Seen::NoAnswer,
                    };
                    self.watch.observe(self.clock.now_ms(), seen)
                }
            };
            let kind = match change {
                Some(Change::TakeOver) => {
                    tracing::warn!(hub = %self.hub, "hub unreachable: taking over as the store's hub");
                    "took_over"
                }
                Some(Change::HandBack) => {
                    tracing::info!(hub = %self.hub, "hub is back: handing back");
                    "handed_back"
                }
                None => continue,
            };
            self.metrics
                .relay_takeovers
                .get_or_create(&vec![("kind", kind)])
                .inc();
            self.acting.set(self.watch.acting());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standby_takes_over_only_after_the_hub_was_quiet_for_the_whole_period() {
        let mut w = Watch::new(10_000, 0);
        assert_eq!(w.observe(5_000, Seen::NoAnswer), None);
        assert_eq!(w.observe(6_000, Seen::Alive), None);
        // Quiet since 6 s: not yet at 15.9 s.
        assert_eq!(w.observe(15_999, Seen::NoAnswer), None);
        assert!(!w.acting());
        assert_eq!(w.observe(16_000, Seen::NoAnswer), Some(Change::TakeOver));
        assert!(w.acting());
        assert_eq!(w.observe(40_000, Seen::NoAnswer), None, "once");
        assert_eq!(w.observe(41_000, Seen::Alive), Some(Change::HandBack));
        assert!(!w.acting());
        assert_eq!(w.observe(42_000, Seen::Alive), None);
    }

    #[test]
    fn a_hand_back_request_ends_acting_and_restarts_the_wait() {
        let mut w = Watch::new(10_000, 0);
        assert_eq!(w.observe(10_000, Seen::NoAnswer), Some(Change::TakeOver));
        assert_eq!(w.hand_back(12_000), Some(Change::HandBack));
        assert_eq!(w.hand_back(12_500), None);
        assert_eq!(w.observe(22_499, Seen::NoAnswer), None);
        assert_eq!(w.observe(22_500, Seen::NoAnswer), Some(Change::TakeOver));
    }

    #[test]
    fn only_a_fresh_sealed_state_of_the_store_counts_as_the_hub_alive() {
        let key = MessageKey::for_store_lan("the store's shared secret", "s1");
        let c = PeerClient::new(key.clone(), "s1".into(), "gw-2".into()).unwrap();
        let state = |store: &str, gateway: &str, sent_ms: u64| HubState {
            v: wire::VERSION,
            store_id: store.into(),
            gateway_id: gateway.into(),
            role: "hub".into(),
            active: true,
            sent_ms,
            peers: vec![],
        };
        let now = wire::wall_ms();
        let good = wire::seal(&key, wire::STATE_ROUTE, &state("s1", "gw-1", now));
        assert!(c.read_state(&good).is_some());
        let other = MessageKey::for_store_lan("someone else's secret!", "s1");
        assert!(
            c.read_state(&wire::seal(
                &other,
                wire::STATE_ROUTE,
                &state("s1", "gw-1", now)
            ))
            .is_none()
        );
        let old = now - wire::MAX_SKEW_MS - 1_000;
        assert!(
            c.read_state(&wire::seal(
                &key,
                wire::STATE_ROUTE,
                &state("s1", "gw-1", old)
            ))
            .is_none(),
            "a recorded answer is worthless later"
        );
        assert!(
            c.read_state(&wire::seal(
                &key,
                wire::STATE_ROUTE,
                &state("s1", "gw-2", now)
            ))
            .is_none(),
            "its own answer reflected back is not the hub's"
        );
        assert!(c.read_state(b"{\"active\":true}").is_none());
    }
}
