//! A store's gateways as one: one hub identifies, runs presence and rules, serves the clerk
//! tablets and owns the store's events; the others (receivers, and a standby while the hub is
//! up) forward what they hear to it over the store LAN (`[hub]`).
//!
//! ```text
//! receiver:  sources ─► gate ─► forward/ (per peer: latest per device, sealed batch / 100 ms) ─LAN─┐
//! standby:   sources ─► gate ─┬─ hub up:   forward/ ─LAN─────────────────────────────────────────┤
//!                             └─ hub gone: engine (acting: takes forwarded batches too)          │
//! hub:       sources ─► engine ◄─ inbound (web: POST /api/relay/sightings) ◄─────────────────────┘
//! ```
//! `acting` (a watch) says whether this gateway is the store's hub now: always for a hub once
//! it has asked its peers to hand back ([`standby::start_hub`]), never for a receiver, and for
//! a standby as [`standby::Watch`] decides. The gate reads it per sighting; inbound refuses
//! batches while it is false, so a passive standby's engine sees nothing and its presence ends
//! by silence. A gateway without `[hub]` peers or key has no gate: its sources feed its engine
//! directly, as before.

pub mod forward;
pub mod inbound;
pub mod standby;
pub mod wire;

use instore_protocol::auth::MessageKey;
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{HubConfig, HubRole},
    engine::Clock,
    metrics::Metrics,
    outbox::Outbox,
    sources::Sighting,
};

/// What the web routes of the relay read.
#[derive(Clone)]
pub struct Relay {
    pub role: HubRole,
    pub store_id: String,
    pub gateway_id: String,
    /// Sealing key; `None` on a lone hub (its state is served unsealed, nothing is taken in).
    pub key: Option<MessageKey>,
    pub peers: Vec<String>,
    pub acting: watch::Receiver<bool>,
    /// Forwarded batches go here; `None` unless this gateway can act as hub and has a key.
    pub inbound: Option<inbound::Inbound>,
    /// A hub's request to hand back (standby only).
    pub handbacks: Option<mpsc::Sender<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("role", &self.role)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// This gateway's state as peers and tablets read it.
    pub fn state(&self) -> wire::HubState {
        wire::HubState {
            v: wire::VERSION,
            store_id: self.store_id.clone(),
            gateway_id: self.gateway_id.clone(),
            role: self.role.as_str().to_string(),
            active: *self.acting.borrow(),
            sent_ms: wire::wall_ms(),
            peers: self.peers.clone(),
        }
    }

    /// The peers' origins (`http://10.0.0.3:8080`), for the clerk page's CSP.
    pub fn peer_origins(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter_map(|p| reqwest::Url::parse(p).ok())
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| o != "null")
            .collect()
    }

    /// The state, sealed when there is a key.
    pub fn state_bytes(&self) -> Vec<u8> {
        let state = self.state();
        match &self.key {
            Some(k) => wire::seal(k, wire::STATE_ROUTE, &state),
            None => serde_json::to_vec(&state).unwrap_or_default(),
        }
    }

    /// A hub asks this gateway to hand back: checked, then passed to the standby's loop.
    pub async fn hand_back(&self, payload: &[u8]) -> Result<(), wire::WireError> {
        let key = self.key.as_ref().ok_or(wire::WireError::BadSeal)?;
        let msg: wire::Handback = wire::open(key, wire::HANDBACK_ROUTE, payload)?;
        wire::check_header(
            msg.v,
            &msg.store_id,
            msg.sent_ms,
            &self.store_id,
            wire::wall_ms(),
        )?;
        if let Some(tx) = &self.handbacks {
            let _ = tx.send(()).await;
            // The loop applies it before its next tick; wait for the flag so the answer is true.
            let mut acting = self.acting.clone();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                acting.wait_for(|a| !*a),
            )
            .await;
        }
        Ok(())
    }
}

/// Sets whether this gateway acts as the store's hub: the flag the gate and inbound read, and
/// `relay_acting`.
pub struct Acting {
    tx: watch::Sender<bool>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Acting {
    pub fn set(&self, acting: bool) {
        self.tx.send_replace(acting);
        self.gauge.set(i64::from(acting));
    }
}

/// What [`start`] hands back to the runtime.
pub struct Started {
    pub relay: Relay,
    /// Where sources send sightings: the engine's queue itself, or the gate's.
    pub sources: mpsc::Sender<Sighting>,
}

/// Everything the relay needs from the runtime.
pub struct RelayContext<'a> {
    pub cfg: &'a HubConfig,
    pub store_id: &'a str,
    pub gateway_id: &'a str,
    pub boot: &'a str,
    pub engine: mpsc::Sender<Sighting>,
    pub clock: Clock,
    pub metrics: &'a Metrics,
    pub outbox: &'a Outbox,
    pub tracker: &'a TaskTracker,
    pub cancel: &'a CancellationToken,
}

/// Size of the gate's queue (the sources' side), as the engine's.
const GATE_QUEUE: usize = 4096;

/// Starts the roles' tasks. A lone hub gets no task and no gate.
pub fn start(ctx: RelayContext<'_>) -> anyhow::Result<Started> {
    let cfg = ctx.cfg;
    let key = (!cfg.key.is_empty()).then(|| MessageKey::for_store_lan(&cfg.key, ctx.store_id));
    let lone = cfg.role == HubRole::Hub && cfg.peers.is_empty();
    let (acting_tx, acting_rx) = watch::channel(lone);
    let acting_tx = Acting {
        tx: acting_tx,
        gauge: ctx.metrics.relay_acting.clone(),
    };
    acting_tx.set(lone);
    let inbound = match (&key, cfg.role) {
        (Some(k), HubRole::Hub | HubRole::Standby) => {
            let i = inbound::Inbound::new(
                k.clone(),
                ctx.store_id.to_string(),
                ctx.engine.clone(),
                acting_rx.clone(),
                ctx.clock.clone(),
                ctx.metrics.clone(),
                Some(ctx.outbox.clone()),
            );
            ctx.tracker.spawn(i.clone().watch_silence(
                std::time::Duration::from_secs(cfg.peer_silent_s),
                ctx.cancel.clone(),
            ));
            Some(i)
        }
        _ => None,
    };
    let mut relay = Relay {
        role: cfg.role,
        store_id: ctx.store_id.to_string(),
        gateway_id: ctx.gateway_id.to_string(),
        key: key.clone(),
        peers: cfg.peers.clone(),
        acting: acting_rx.clone(),
        inbound,
        handbacks: None,
    };
    if lone {
        return Ok(Started {
            relay,
            sources: ctx.engine,
        });
    }
    let Some(key) = key else {
        anyhow::bail!("[hub] key is needed with peers or another role (config validation)");
    };
    let client = standby::PeerClient::new(
        key.clone(),
        ctx.store_id.to_string(),
        ctx.gateway_id.to_string(),
    )?;
    let forwarder = match cfg.role {
        HubRole::Hub => {
            ctx.tracker
                .spawn(standby::start_hub(client, cfg.peers.clone(), acting_tx));
            None
        }
        HubRole::Receiver | HubRole::Standby => {
            let f = forward::spawn(
                cfg,
                forward::Sender {
                    store_id: ctx.store_id.to_string(),
                    gateway_id: ctx.gateway_id.to_string(),
                    boot: ctx.boot.to_string(),
                    key,
                },
                ctx.clock.clone(),
                ctx.metrics.clone(),
                ctx.tracker,
                ctx.cancel.clone(),
            )?;
            if cfg.role == HubRole::Standby {
                let (tx, rx) = mpsc::channel(4);
                relay.handbacks = Some(tx);
                let watch = standby::Watch::new(cfg.takeover_after_s * 1000, ctx.clock.now_ms());
                let standby = standby::Standby {
                    client,
                    hub: cfg.peers[0].clone(),
                    watch,
                    clock: ctx.clock.clone(),
                    acting: acting_tx,
                    handbacks: rx,
                    metrics: ctx.metrics.clone(),
                };
                ctx.tracker.spawn(standby.run(ctx.cancel.clone()));
            }
            Some(f)
        }
    };
    let (gate_tx, gate_rx) = mpsc::channel(GATE_QUEUE);
    ctx.tracker.spawn(gate(
        gate_rx,
        ctx.engine,
        acting_rx,
        forwarder,
        ctx.metrics.clone(),
        ctx.cancel.clone(),
    ));
    Ok(Started {
        relay,
        sources: gate_tx,
    })
}

/// Sends each of this gateway's sightings to its engine while it acts as hub, to its peers
/// otherwise (a hub that is starting drops them: it acts within a second or two).
async fn gate(
    mut rx: mpsc::Receiver<Sighting>,
    engine: mpsc::Sender<Sighting>,
    acting: watch::Receiver<bool>,
    forwarder: Option<forward::Forwarder>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        let s = tokio::select! {
            () = cancel.cancelled() => return,
            s = rx.recv() => match s {
                Some(s) => s,
                None => return,
            },
        };
        if *acting.borrow() {
            match engine.try_send(s) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.adverts_dropped.inc();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        } else if let Some(f) = &forwarder {
            f.offer(&s);
        } else {
            // A hub in its first second, asking its standby to hand back.
            metrics.adverts_dropped.inc();
        }
    }
}
