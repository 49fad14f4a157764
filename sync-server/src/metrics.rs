//! Head office's Prometheus metrics: one struct, cloned into every task that counts something.
//!
//! A metric is registered here once, with its help text; tasks only increment. Gauges that mirror
//! the database (gateways online, members) are refreshed when `/metrics` is scraped.

use std::sync::Arc;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Label set `reason="..."`.
pub type ReasonLabel = Vec<(&'static str, &'static str)>;

#[derive(Clone, Default)]
pub struct Metrics {
    pub events_received: Counter,
    pub duplicates_dropped: Counter,
    pub batches: Counter,
    pub bad_payloads: Family<ReasonLabel, Counter>,
    pub status_messages: Counter,
    pub ingest_commits: Counter,
    pub ingest_commit_failures: Counter,
    pub acks_sent: Counter,
    pub members_notices_sent: Counter,
    pub member_imports: Counter,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub gateways_online: Gauge,
    pub gateways_known: Gauge,
    pub members: Gauge,
    pub member_set_version: Gauge,
    pub http_unauthorized: Counter,
    pub events_missing: Gauge,
    pub events_shed: Gauge,
    pub hellos: Counter,
    pub ingest_retries: Counter,
    pub ingest_abandoned: Counter,
    pub events_redacted: Counter,
    pub purchases_imported: Counter,
    pub purchases_duplicate: Counter,
    pub purchases_refused: Counter,
    pub members_recomputed: Counter,
    pub compute_full_runs: Counter,
    pub compute_failures: Counter,
    pub change_requests: Counter,
    pub changes_served: Counter,
    pub change_bytes_served: Counter,
    pub snapshots_served: Counter,
    pub snapshot_bytes_served: Counter,
    pub member_lookups: Family<ReasonLabel, Counter>,
    pub lease_held: Gauge,
    pub lease_acquired: Counter,
    pub lease_lost: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The metrics and the registry that renders them.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    pub metrics: Metrics,
    registry: Arc<Registry>,
}

impl MetricsHandle {
    pub fn new() -> Self {
        let m = Metrics::default();
        let mut r = Registry::with_prefix("instore_sync");
        r.register(
            "lease_held",
            "1 while this instance runs the once-only work (compute, key re-issue); always 1 \
             without [broker] share_group",
            m.lease_held.clone(),
        );
        r.register(
            "lease_acquired",
            "Times this instance took the once-only work's lease",
            m.lease_acquired.clone(),
        );
        r.register(
            "lease_lost",
            "Times this instance lost the lease it held (not renewed in time, or taken over)",
            m.lease_lost.clone(),
        );
        r.register(
            "events_received",
            "Events stored for the first time",
            m.events_received.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Events received again (already stored) and dropped",
            m.duplicates_dropped.clone(),
        );
        r.register("batches", "Event batches ingested", m.batches.clone());
        r.register(
            "bad_payloads",
            "MQTT payloads refused (malformed, too large, wrong gateway...), by reason",
            m.bad_payloads.clone(),
        );
        r.register(
            "status_messages",
            "Gateway status messages applied",
            m.status_messages.clone(),
        );
        r.register(
            "ingest_commits",
            "SQLite transactions committed by ingest",
            m.ingest_commits.clone(),
        );
        r.register(
            "ingest_commit_failures",
            "Ingest transactions that failed (the batches are not acknowledged)",
            m.ingest_commit_failures.clone(),
        );
        r.register(
            "acks_sent",
            "Acks published to gateways",
            m.acks_sent.clone(),
        );
        r.register(
            "members_notices_sent",
            "Retained member-set notices published to stores",
            m.members_notices_sent.clone(),
        );
        r.register(
            "member_imports",
            "Member imports that changed the member set",
            m.member_imports.clone(),
        );
        r.register(
            "mqtt_connected",
            "1 while connected to the broker and subscribed",
            m.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Broker connection losses",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "gateways_online",
            "Gateways whose last status was online",
            m.gateways_online.clone(),
        );
        r.register(
            "gateways_known",
            "Gateways ever seen",
            m.gateways_known.clone(),
        );
        r.register("members", "Members in the member set", m.members.clone());
        r.register(
            "member_set_version",
            "Current member-set version",
            m.member_set_version.clone(),
        );
        r.register(
            "http_unauthorized",
            "HTTP requests refused for a missing or wrong token",
            m.http_unauthorized.clone(),
        );
        r.register(
            "events_missing",
            "Sequence numbers below gateways' last ones not held and not reported shed (gaps)",
            m.events_missing.clone(),
        );
        r.register(
            "events_shed",
            "Events gateways reported shed over their outbox quota",
            m.events_shed.clone(),
        );
        r.register(
            "hellos",
            "Gateway hellos answered (one per gateway connection)",
            m.hellos.clone(),
        );
        r.register(
            "ingest_retries",
            "Ingest commits retried after a failure (ingest pauses, the broker holds messages)",
            m.ingest_retries.clone(),
        );
        r.register(
            "ingest_abandoned",
            "Messages released unstored after repeated commit failures (the gateway re-sends)",
            m.ingest_abandoned.clone(),
        );
        r.register(
            "events_redacted",
            "Events of members without presence consent stored without their content",
            m.events_redacted.clone(),
        );
        r.register(
            "purchases_imported",
            "Purchases stored for the first time",
            m.purchases_imported.clone(),
        );
        r.register(
            "purchases_duplicate",
            "Purchases received again (same purchase_id) and ignored",
            m.purchases_duplicate.clone(),
        );
        r.register(
            "purchases_refused",
            "Purchase lines refused (malformed, wrong currency, ...)",
            m.purchases_refused.clone(),
        );
        r.register(
            "members_recomputed",
            "Members recomputed incrementally after a purchase, visit or import",
            m.members_recomputed.clone(),
        );
        r.register(
            "compute_full_runs",
            "Full recomputes (cut points, BG/NBD fit, every member)",
            m.compute_full_runs.clone(),
        );
        r.register(
            "compute_failures",
            "Compute passes that failed (retried)",
            m.compute_failures.clone(),
        );
        r.register(
            "change_requests",
            "Change-stream requests from gateways",
            m.change_requests.clone(),
        );
        r.register(
            "changes_served",
            "Channel changes sent to gateways",
            m.changes_served.clone(),
        );
        r.register(
            "change_bytes_served",
            "Bytes of change responses sent to gateways, as sent (compressed when asked)",
            m.change_bytes_served.clone(),
        );
        r.register(
            "snapshots_served",
            "Channel snapshot downloads (whole or ranges)",
            m.snapshots_served.clone(),
        );
        r.register(
            "snapshot_bytes_served",
            "Bytes of channel snapshots sent",
            m.snapshot_bytes_served.clone(),
        );
        r.register(
            "member_lookups",
            "Member-code lookups from gateways for members they do not hold, by result",
            m.member_lookups.clone(),
        );
        Self {
            metrics: m,
            registry: Arc::new(r),
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would only truncate the output.
        if encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}

impl Default for MetricsHandle {
    fn default() -> Self {
        Self::new()
    }
}
