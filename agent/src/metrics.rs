//! The agent's Prometheus metrics: one struct, cloned into every task that counts something.
//!
//! A metric is registered here once, with its help text; tasks only increment. Served at
//! `GET /metrics` in the Prometheus text format.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Label set `kind="..."`.
pub type KindLabel = Vec<(&'static str, &'static str)>;

#[derive(Clone, Default)]
pub struct Metrics {
    // sources
    pub adverts: Counter,
    pub adverts_dropped: Counter,
    // identify
    pub identified: Counter,
    pub strangers: Counter,
    // presence
    pub presence_events: Family<KindLabel, Counter>,
    pub members_present: Gauge,
    // cache
    pub members_cached: Gauge,
    pub member_snapshots_applied: Counter,
    pub member_snapshot_failures: Counter,
    // react / alerts
    pub alerts_raised: Counter,
    pub alerts_suppressed: Counter,
    pub sse_clients: Gauge,
    // outbox / sync
    pub outbox_appended: Counter,
    pub outbox_depth: Gauge,
    pub outbox_oldest_age_seconds: Gauge,
    pub outbox_commits: Counter,
    pub events_sent: Counter,
    pub events_acked: Counter,
    pub batches_sent: Counter,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub mqtt_bad_payloads: Counter,
    // web
    pub http_unauthorized: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates the metrics and the registry that exposes them.
    pub fn new() -> (Self, Registry) {
        let m = Self::default();
        let mut r = Registry::with_prefix("instore_agent");
        r.register(
            "adverts",
            "BLE/sim adverts received from sources",
            m.adverts.clone(),
        );
        r.register(
            "adverts_dropped",
            "Adverts dropped because the engine was behind (source channel full)",
            m.adverts_dropped.clone(),
        );
        r.register(
            "identified",
            "Adverts matched to a member",
            m.identified.clone(),
        );
        r.register(
            "strangers",
            "Adverts not matched to any member",
            m.strangers.clone(),
        );
        r.register(
            "presence_events",
            "Presence events emitted, by kind",
            m.presence_events.clone(),
        );
        r.register(
            "members_present",
            "Members present now",
            m.members_present.clone(),
        );
        r.register(
            "members_cached",
            "Consenting members in the cache index",
            m.members_cached.clone(),
        );
        r.register(
            "member_snapshots_applied",
            "Member snapshots taken from head office",
            m.member_snapshots_applied.clone(),
        );
        r.register(
            "member_snapshot_failures",
            "Member snapshot downloads or applies that failed",
            m.member_snapshot_failures.clone(),
        );
        r.register(
            "alerts_raised",
            "Clerk alerts raised",
            m.alerts_raised.clone(),
        );
        r.register(
            "alerts_suppressed",
            "Alerts a rule matched but a cooldown or limit suppressed",
            m.alerts_suppressed.clone(),
        );
        r.register(
            "sse_clients",
            "Connected alert-stream clients",
            m.sse_clients.clone(),
        );
        r.register(
            "outbox_appended",
            "Events written to the outbox",
            m.outbox_appended.clone(),
        );
        r.register(
            "outbox_depth",
            "Events in the outbox not yet acknowledged",
            m.outbox_depth.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unacknowledged event",
            m.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "outbox_commits",
            "Outbox write transactions (fsync points)",
            m.outbox_commits.clone(),
        );
        r.register(
            "events_sent",
            "Events published to the broker (including re-sends)",
            m.events_sent.clone(),
        );
        r.register(
            "events_acked",
            "Events acknowledged by head office",
            m.events_acked.clone(),
        );
        r.register(
            "batches_sent",
            "Event batches published",
            m.batches_sent.clone(),
        );
        r.register(
            "mqtt_connected",
            "1 while connected to the broker",
            m.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Broker connection attempts after the first",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "mqtt_bad_payloads",
            "MQTT payloads refused as malformed",
            m.mqtt_bad_payloads.clone(),
        );
        r.register(
            "http_unauthorized",
            "HTTP requests refused for a missing or wrong token",
            m.http_unauthorized.clone(),
        );
        (m, r)
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}
