//! Head office's Prometheus metrics: one struct, cloned into every task that counts something.
//!
//! A metric is registered here once, with its help text; tasks only increment. Gauges that mirror
//! the database (gateways online, members) are refreshed when `/metrics` is scraped.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Label set `reason="..."`.
pub type ReasonLabel = Vec<(&'static str, &'static str)>;

#[derive(Clone, Default)]
pub struct Metrics {
    pub events_received: Counter,
    pub duplicates_dropped: Counter,
    pub seq_jumps_refused: Counter,
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
    pub events_unreadable: Counter,
    pub campaigns_stored: Counter,
    pub campaign_sets_served: Counter,
    pub events_expired: Counter,
    pub members_erased: Counter,
    pub enrolments: Family<ReasonLabel, Counter>,
    pub gateways_revoked: Counter,
    pub mqtt_logins_refused: Family<ReasonLabel, Counter>,
    pub device_keys_registered: Counter,
    pub device_keys_revoked: Counter,
    pub member_codes_cross_store: Counter,
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
        instore_daemon::register!(r, m, {
            lease_acquired: "Times this instance took the once-only work's lease",
            lease_lost: "Times this instance lost the lease it held (not renewed in time, or taken over)",
            events_received: "Events stored for the first time",
            duplicates_dropped: "Events received again (already stored) and dropped",
            seq_jumps_refused: "Events not stored: numbered more than 2^32 beyond their gateway's last (forged or corrupt)",
            batches: "Event batches ingested",
            bad_payloads: "MQTT payloads refused (malformed, too large, wrong gateway...), by reason",
            status_messages: "Gateway status messages applied",
            ingest_commits: "SQLite transactions committed by ingest",
            ingest_commit_failures: "Ingest transactions that failed (the batches are not acknowledged)",
            acks_sent: "Acks published to gateways",
            members_notices_sent: "Retained member-set notices published to stores",
            member_imports: "Member imports that changed the member set",
            mqtt_connected: "1 while connected to the broker and subscribed",
            mqtt_reconnects: "Broker connection losses",
            gateways_online: "Gateways whose last status was online",
            gateways_known: "Gateways ever seen",
            members: "Members in the member set",
            member_set_version: "Current member-set version",
            http_unauthorized: "HTTP requests refused for a missing or wrong token",
            events_missing: "Sequence numbers below gateways' last ones not held and not reported shed (gaps)",
            events_shed: "Events gateways reported shed over their outbox quota",
            hellos: "Gateway hellos answered (one per gateway connection)",
            ingest_retries: "Ingest commits retried after a failure (ingest pauses, the broker holds messages)",
            ingest_abandoned: "Messages released unstored after repeated commit failures (the gateway re-sends)",
            campaigns_stored: "Campaign versions stored (PUT /api/campaigns/{id}; refused ones are not)",
            campaign_sets_served: "Change responses that carried a store's campaign set (it differed from the gateway's)",
            events_unreadable: "Events of a type or shape this head office cannot read (a newer gateway), stored as sent with type \"unreadable\" (counted per batch received, re-sends included)",
            events_redacted: "Events of members without presence consent (or erased) stored without their content",
            events_expired: "Events deleted as older than [privacy] events_days",
            members_erased: "Members erased (DELETE /api/members/{id})",
            enrolments: "Enrolment code redemptions by result (ok, bad_code, rate_limited)",
            gateways_revoked: "Gateways revoked in the registry",
            device_keys_registered: "Member device keys registered (signed member codes)",
            device_keys_revoked: "Member device keys revoked",
            member_codes_cross_store: "Signed member codes a store used after another store had (GET /api/member-codes/flags)",
            mqtt_logins_refused: "Logins the embedded broker refused, by reason (bad_password, \
                revoked, unknown_gateway, client_id, rate_limited)",
            purchases_imported: "Purchases stored for the first time",
            purchases_duplicate: "Purchases received again (same purchase_id) and ignored",
            purchases_refused: "Purchase lines refused (malformed, wrong currency, ...)",
            members_recomputed: "Members recomputed incrementally after a purchase, visit or import",
            compute_full_runs: "Full recomputes (cut points, BG/NBD fit, every member)",
            compute_failures: "Compute passes that failed (retried)",
            change_requests: "Change-stream requests from gateways",
            changes_served: "Channel changes sent to gateways",
            change_bytes_served: "Bytes of change responses sent to gateways, as sent (compressed when asked)",
            snapshots_served: "Channel snapshot downloads (whole or ranges)",
            snapshot_bytes_served: "Bytes of channel snapshots sent",
            member_lookups: "Member-code lookups from gateways for members they do not hold, by result",
        });
        Self {
            metrics: m,
            registry: Arc::new(r),
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        instore_daemon::metrics::render(&self.registry)
    }
}

impl Default for MetricsHandle {
    fn default() -> Self {
        Self::new()
    }
}
