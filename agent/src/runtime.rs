//! Wiring: opens the stores, starts every task of the agent and stops them within a deadline.
//!
//! No domain logic lives here. Task map (channels are bounded):
//! sources ─(sightings, 4096, drop+count when full)─► engine ─► outbox ─► sync (MQTT)
//!                                  engine ─► alerts hub ─► web (SSE)   sync ─(control, 16)─► engine
//! web (clerk actions) and the expiry tick ─► alerts lifecycle ─► outbox, then the hub

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    alerts::AlertHub,
    cache::MemberCache,
    config::AgentConfig,
    engine::{self, Clock, Control, Core, EngineIo},
    metrics::Metrics,
    outbox::{NewEvent, Outbox},
    presence::{Presence, PresenceParams},
    react::Rules,
    sources, sync, web,
};

/// How many sightings may wait for the engine before sources start dropping.
const SIGHTING_QUEUE: usize = 4096;
/// Alerts kept for `GET /api/alerts` and SSE catch-up.
const ALERT_RING: usize = 500;

/// A running agent.
pub struct Agent {
    pub http_addr: SocketAddr,
    pub outbox: Outbox,
    pub metrics: Metrics,
    pub alerts: AlertHub,
    /// Where sources send sightings (the engine's queue, or on a gateway with `[hub]` peers the
    /// gate before it) and the clock, for benchmarks and tests that play a source.
    inject: (mpsc::Sender<sources::Sighting>, Clock),
    control: mpsc::Sender<Control>,
    cache: MemberCache,
    /// Sources and the engine: stopped first, so a drain sees no new events.
    intake: TaskTracker,
    intake_cancel: CancellationToken,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The engine's loop counter, for systemd's watchdog ([`Agent::supervise`]).
    heartbeat: instore_sdnotify::Heartbeat,
    sync_enabled: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("http_addr", &self.http_addr)
            .finish()
    }
}

/// Paths of the agent's files under `data_dir`.
/// Head office's campaigns for this store, as last received.
pub fn campaigns_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("campaigns.json")
}
pub fn members_db(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("members.db")
}
pub fn outbox_db(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("outbox.db")
}
pub fn tablets_db(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("tablets.db")
}
pub fn alerts_db(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("alerts.db")
}
/// Channel snapshots being downloaded or applied (deleted once applied).
pub fn snapshots_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("snapshots")
}

/// Starts every task. Fails before anything runs if a store cannot be opened, the rules are bad
/// or the HTTP port is taken.
pub async fn start(cfg: AgentConfig) -> anyhow::Result<Agent> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let (metrics, registry) = Metrics::new();
    let cache = MemberCache::open(&members_db(&cfg.data_dir))?;
    let members = cache.members()?;
    let outbox = Outbox::open_with(
        &outbox_db(&cfg.data_dir),
        crate::outbox::OutboxOptions {
            max_bytes: cfg.outbox.max_bytes,
        },
        metrics.clone(),
    )?;
    // The campaigns head office sent last: a gateway restarting offline keeps running them.
    let campaigns = if cfg.sync.enabled {
        sync::campaigns::load(&campaigns_file(&cfg.data_dir))
    } else {
        instore_protocol::campaign::CampaignSet::new(Vec::new())
    };
    if cfg.react.rules.is_none()
        && campaigns.campaigns.is_empty()
        && cfg.hub.role != crate::config::HubRole::Receiver
    {
        tracing::warn!("no [react] rules configured and no campaigns yet: no clerk alerts");
    }
    let (mut rules, skipped) = Rules::load_with(cfg.react.rules.as_deref(), &campaigns.campaigns)?;
    for why in skipped {
        tracing::warn!(error = %why, "campaign left out: this gateway cannot run it");
    }
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", cfg.http.listen))?;
    let http_addr = listener.local_addr()?;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let intake_cancel = cancel.child_token();
    let intake = TaskTracker::new();
    let clock = Clock::new();
    let boot = format!("{:08x}", rand::random::<u32>());
    tracing::info!(
        store = %cfg.store_id, gateway = %cfg.gateway_id, boot = %boot,
        members = members.index.len(), rules = rules.len(), http = %http_addr,
        "agent starting"
    );
    outbox
        .append(vec![NewEvent {
            at_ms: crate::now_ms(),
            body: instore_protocol::EventBody::GatewayStarted {
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        }])
        .await?;

    let heartbeat = instore_sdnotify::Heartbeat::new();
    let (sighting_tx, sighting_rx) = mpsc::channel(SIGHTING_QUEUE);
    let (control_tx, control_rx) = mpsc::channel(16);
    let (presence_tx, presence_rx) = watch::channel(Arc::new(Vec::new()));
    // Before the engine runs: alerts raised before a restart keep their state and numbering
    // order, and steps the store missed are replayed from the outbox.
    let alert_store = crate::alerts::AlertStore::open(&alerts_db(&cfg.data_dir))?;
    let stored = alert_store.recent(
        crate::now_ms(),
        crate::alerts::store::KEEP_CLOSED_MS,
        ALERT_RING,
    )?;
    let alerts = AlertHub::with_store(ALERT_RING, alert_store, metrics.alert_store_errors.clone());
    let (loaded, replayed) = crate::alerts::lifecycle::recover(&alerts, stored, &outbox).await?;
    tracing::info!(loaded, replayed, "alerts restored");

    let presence = Presence::new(
        PresenceParams::from(&cfg.presence),
        format!("{}-{boot}", cfg.gateway_id),
    );
    rules.set_settings(
        crate::react::ReactSettings::from_config(&cfg.react).map_err(anyhow::Error::msg)?,
    );
    for rule in rules.unreachable_dwell_rules(&cfg.presence.dwell_s) {
        tracing::warn!(
            rule,
            "dwell rule longer than every [presence] dwell_s duration: it will never fire"
        );
    }
    let actions = crate::react::actions::spawn(
        crate::react::ActionSettings {
            mqtt_broker: cfg.react.mqtt_broker.clone(),
            mqtt_client_id: format!("{}-actions", cfg.gateway_id),
            queue: cfg.react.action_queue,
        },
        metrics.clone(),
        &tracker,
        cancel.clone(),
    )?;
    let core = Core::new(members, presence, rules, metrics.clone())
        .with_legacy_codes(cfg.member_codes.legacy);
    let (lookup_tx, lookup_rx) = if cfg.sync.enabled {
        let (tx, rx) = mpsc::channel(sync::LOOKUP_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let io = EngineIo {
        sightings: sighting_rx,
        control: control_rx,
        outbox: outbox.clone(),
        alerts: alerts.clone(),
        presence: presence_tx,
        metrics: metrics.clone(),
        rules_path: cfg.react.rules.clone(),
        campaigns: campaigns.clone(),
        actions,
        lookups: lookup_tx,
        heartbeat: heartbeat.clone(),
    };
    tracker.spawn(engine::run(core, clock.clone(), io, cancel.clone()));

    sources::qr::spawn_all(
        &cfg.sources,
        clock.clone(),
        control_tx.clone(),
        &metrics,
        &intake,
        &intake_cancel,
    )
    .await?;
    // A store's other gateways: sources feed the engine directly on a lone hub, through the
    // gate (to the engine or forwarded to the hub) otherwise.
    let relay = crate::relay::start(crate::relay::RelayContext {
        cfg: &cfg.hub,
        store_id: &cfg.store_id,
        gateway_id: &cfg.gateway_id,
        boot: &boot,
        engine: sighting_tx,
        clock: clock.clone(),
        metrics: &metrics,
        outbox: &outbox,
        tracker: &tracker,
        cancel: &cancel,
    })?;
    let inject = (relay.sources.clone(), clock.clone());
    sources::spawn_all(
        &cfg.sources,
        &cfg.record,
        clock,
        relay.sources.clone(),
        &metrics,
        Some(&outbox),
        &tracker,
        &cancel,
    )
    .await?;

    let tablets = crate::pairing::Tablets::open(
        &tablets_db(&cfg.data_dir),
        &crate::pairing::url_base(http_addr, cfg.http.public_url.as_deref()),
        cfg.http.tablet_token_ttl(),
        metrics.clone(),
    )?;
    tracker.spawn(crate::pairing::run_flush(tablets.clone(), cancel.clone()));
    let lifecycle = crate::alerts::Lifecycle::new(alerts.clone(), outbox.clone(), metrics.clone());
    if cfg.alerts.expire_after_s > 0 {
        // Alerts that ran out while the agent was down end now, before any tablet connects. An
        // expired alert is saved as such, so a second restart does not expire it again.
        let expired = lifecycle
            .expire_due(Duration::from_secs(cfg.alerts.expire_after_s))
            .await;
        if expired > 0 {
            tracing::info!(expired, "alerts expired while the agent was down");
        }
    }
    tracker.spawn(crate::alerts::lifecycle::run_expiry(
        lifecycle.clone(),
        Duration::from_secs(cfg.alerts.expire_after_s),
        intake_cancel.clone(),
    ));
    let state = web::WebState {
        store_id: cfg.store_id.clone(),
        gateway_id: cfg.gateway_id.clone(),
        admin_token: cfg.http.admin_token.clone(),
        alerts: alerts.clone(),
        lifecycle: Some(lifecycle),
        tablets: Some(tablets),
        presence: presence_rx,
        metrics: metrics.clone(),
        registry: Arc::new(registry),
        metrics_access: cfg.http.metrics,
        relay: Some(relay.relay.clone()),
    };
    {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = web::serve(listener, state, cancel).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }

    if cfg.sync.enabled {
        sync::spawn(
            sync::SyncContext {
                store_id: cfg.store_id.clone(),
                gateway_id: cfg.gateway_id.clone(),
                cfg: cfg.sync.clone(),
                outbox: outbox.clone(),
                cache: cache.clone(),
                engine: control_tx.clone(),
                metrics: metrics.clone(),
                snapshot_dir: snapshots_dir(&cfg.data_dir),
                campaigns_path: campaigns_file(&cfg.data_dir),
                campaigns_tag: campaigns.tag.clone(),
                lookups: lookup_rx,
                // A receiver identifies nobody: it holds no member data (a stolen one leaks
                // none) and only reports its own health upwards.
                downlink: cfg.hub.role != crate::config::HubRole::Receiver,
            },
            &tracker,
            cancel.clone(),
        )?;
    } else {
        tracing::info!("sync disabled: running standalone");
    }

    Ok(Agent {
        http_addr,
        outbox,
        metrics,
        alerts,
        inject,
        control: control_tx,
        cache,
        intake,
        intake_cancel,
        tracker,
        cancel,
        heartbeat,
        sync_enabled: cfg.sync.enabled,
    })
}

impl Agent {
    /// Tells systemd the agent is ready (the stores are open and the HTTP listener is bound:
    /// `start` returned), then keeps it told: status lines, and watchdog keep-alives every
    /// `watchdog` (half of `WATCHDOG_USEC`) while the engine's loop turns.
    pub fn supervise(&self, notifier: Arc<instore_sdnotify::Notifier>, watchdog: Option<Duration>) {
        let (metrics, sync_enabled) = (self.metrics.clone(), self.sync_enabled);
        let status = move || crate::service::status_line(&metrics, sync_enabled);
        match notifier.ready(&status()) {
            Ok(()) => tracing::info!(
                watchdog_ms = watchdog.map(|d| d.as_millis() as u64),
                "told systemd: ready"
            ),
            Err(e) => tracing::warn!(error = %e, "READY=1 not sent"),
        }
        self.tracker.spawn(crate::service::run(
            notifier,
            watchdog,
            crate::service::STATUS_EVERY,
            self.heartbeat.clone(),
            status,
            self.cancel.clone(),
        ));
    }

    /// Re-reads the rules file and the member cache (after a local `members import`).
    pub async fn reload(&self) {
        let _ = self.control.send(Control::ReloadRules).await;
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.members()).await {
            Ok(Ok(members)) => {
                let _ = self.control.send(Control::Members(Box::new(members))).await;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "member cache reload failed"),
            Err(e) => tracing::warn!(error = %e, "member cache reload task failed"),
        }
    }

    /// Imports `records` into the member cache (the local pseudo-channel) and has the engine
    /// take the new set (tests, benchmarks, demo).
    pub async fn set_members(
        &self,
        records: &[instore_protocol::MemberRecord],
    ) -> anyhow::Result<()> {
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        let cache = self.cache.clone();
        let members = tokio::task::spawn_blocking(move || {
            cache.import_ndjson(&mut text.as_bytes())?;
            cache.members()
        })
        .await??;
        self.control
            .send(Control::Members(Box::new(members)))
            .await
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }

    /// The sources' sighting queue and the agent's monotonic clock (`Sighting::at_ms`), so a
    /// benchmark or test can act as a source.
    pub fn sighting_input(&self) -> (mpsc::Sender<sources::Sighting>, Clock) {
        self.inject.clone()
    }

    /// A token that stops the agent when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops taking in sightings, then waits up to `timeout` for the uplink to empty the outbox.
    /// Returns the events still unacknowledged (0: fully drained).
    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<u64> {
        self.intake_cancel.cancel();
        self.intake.close();
        self.intake.wait().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let depth = self.outbox.depth().await?;
            if depth == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(depth);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every task; gives up waiting after `grace`. Returns false if tasks were still running.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.intake.close();
        self.tracker.close();
        let both = async {
            self.intake.wait().await;
            self.tracker.wait().await;
        };
        let done = tokio::time::timeout(grace, both).await.is_ok();
        self.outbox.close().await;
        if !done {
            tracing::warn!(?grace, "some tasks did not stop within the grace period");
        }
        done
    }
}
