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
    // BLE / replay sources (sources/ble, sources/replay.rs)
    pub ble_adverts_coalesced: Counter,
    pub ble_signals_malformed: Counter,
    pub ble_signals_overflow: Counter,
    pub ble_devices: Gauge,
    pub ble_devices_evicted: Counter,
    pub ble_reconnects: Counter,
    pub ble_watchdog_restarts: Counter,
    pub replay_malformed: Counter,
    // identify
    pub identified: Counter,
    pub strangers: Counter,
    pub rpa_cache_hits: Counter,
    pub rpa_resolutions: Counter,
    pub rpa_resolved: Counter,
    pub rpa_aes_blocks: Counter,
    /// Per-window rotating-ID/EID tables (identify/rotating.rs).
    pub id_table_builds: Counter,
    pub id_table_build_us: Counter,
    pub id_table_inline_builds: Counter,
    pub id_table_late: Counter,
    // presence
    pub presence_events: Family<KindLabel, Counter>,
    pub members_present: Gauge,
    // cache
    pub members_cached: Gauge,
    /// Matched members' records read from members.db (not from the record cache).
    pub member_record_reads: Counter,
    pub member_record_failures: Counter,
    pub member_snapshots_applied: Counter,
    /// Snapshot downloads or applies that failed, by `reason`.
    pub member_snapshot_failures: Family<KindLabel, Counter>,
    pub member_snapshot_bytes: Counter,
    pub member_snapshot_members: Counter,
    /// Change responses applied, changes in them, channel entries ignored (gap/replay/malformed).
    pub member_change_responses: Counter,
    /// Bytes of change responses as received (compressed when head office compressed them).
    pub change_bytes_received: Counter,
    pub member_changes_applied: Counter,
    pub member_change_gaps: Family<KindLabel, Counter>,
    pub member_change_failures: Family<KindLabel, Counter>,
    /// QR lookups at head office by `result` (found, refused, not_found, offline, timeout, …).
    pub qr_lookups: Family<KindLabel, Counter>,
    // react / alerts
    pub alerts_raised: Counter,
    pub alerts_suppressed: Counter,
    /// Matching rules held back, by `reason` (cooldown, quiet_hours, rate_limit).
    pub reactions_held: Family<KindLabel, Counter>,
    /// MQTT/webhook actions by `kind` and `result` (sent, acked, retried, failed, dropped).
    pub reaction_actions: Family<KindLabel, Counter>,
    pub rules_loaded: Gauge,
    pub rules_reloads: Counter,
    pub rules_reload_failures: Counter,
    pub qr_scans: Counter,
    /// QR codes that identified nobody, by `error`.
    pub qr_rejected: Family<Vec<(&'static str, String)>, Counter>,
    pub qr_lines_dropped: Counter,
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
    pub outbox_bytes: Gauge,
    pub outbox_quota_bytes: Gauge,
    pub outbox_shed_events: Counter,
    pub outbox_shed_ranges: Counter,
    pub outbox_renumbered: Counter,
    pub batches_inflight: Gauge,
    pub mqtt_connect_failures: Counter,
    // web
    pub http_unauthorized: Counter,
    // alert lifecycle and tablet pairing
    pub alert_steps: Family<KindLabel, Counter>,
    pub alert_steps_refused: Family<KindLabel, Counter>,
    pub alert_store_errors: Counter,
    pub pairing_attempts: Family<KindLabel, Counter>,
    pub tablets_paired: Gauge,
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
            "ble_adverts_coalesced",
            "BLE adverts replaced by a newer one from the same device while the engine was behind",
            m.ble_adverts_coalesced.clone(),
        );
        r.register(
            "ble_signals_malformed",
            "BlueZ D-Bus signals whose body could not be decoded (skipped)",
            m.ble_signals_malformed.clone(),
        );
        r.register(
            "ble_signals_overflow",
            "BlueZ D-Bus signals dropped because the BLE source's decode queue was full",
            m.ble_signals_overflow.clone(),
        );
        r.register(
            "ble_devices",
            "Devices in the BLE sources' device tables",
            m.ble_devices.clone(),
        );
        r.register(
            "ble_devices_evicted",
            "Devices evicted from a BLE device table by its cap (storm of new addresses)",
            m.ble_devices_evicted.clone(),
        );
        r.register(
            "ble_reconnects",
            "BLE scanning sessions re-opened after the adapter, bluetoothd or D-Bus went away",
            m.ble_reconnects.clone(),
        );
        r.register(
            "ble_watchdog_restarts",
            "BLE scans restarted because no advert arrived within the watchdog period",
            m.ble_watchdog_restarts.clone(),
        );
        r.register(
            "replay_malformed",
            "Replay records (NDJSON lines, btsnoop packets) malformed and skipped",
            m.replay_malformed.clone(),
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
            "rpa_cache_hits",
            "Resolvable private addresses answered from the RPA cache (member or stranger)",
            m.rpa_cache_hits.clone(),
        );
        r.register(
            "rpa_resolutions",
            "New resolvable private addresses tried against every IRK (RPA cache misses)",
            m.rpa_resolutions.clone(),
        );
        r.register(
            "rpa_resolved",
            "New resolvable private addresses that resolved to a member",
            m.rpa_resolved.clone(),
        );
        r.register(
            "rpa_aes_blocks",
            "AES blocks spent resolving resolvable private addresses",
            m.rpa_aes_blocks.clone(),
        );
        r.register(
            "id_table_builds",
            "Per-window rotating-ID/Eddystone-EID tables built (off the engine task)",
            m.id_table_builds.clone(),
        );
        r.register(
            "id_table_build_us",
            "Microseconds spent building per-window ID tables (divide by id_table_builds)",
            m.id_table_build_us.clone(),
        );
        r.register(
            "id_table_inline_builds",
            "Per-window ID tables built on the engine task because no builder thread could start",
            m.id_table_inline_builds.clone(),
        );
        r.register(
            "id_table_late",
            "Window changes where the new window's ID table was not ready yet",
            m.id_table_late.clone(),
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
            "member_record_reads",
            "Matched members' records read from members.db (record cache misses)",
            m.member_record_reads.clone(),
        );
        r.register(
            "member_record_failures",
            "Matched slots whose record could not be read (gone or unreadable)",
            m.member_record_failures.clone(),
        );
        r.register(
            "member_snapshots_applied",
            "Channel snapshots (or legacy store snapshots) applied",
            m.member_snapshots_applied.clone(),
        );
        r.register(
            "member_snapshot_failures",
            "Snapshot downloads or applies that failed, by reason",
            m.member_snapshot_failures.clone(),
        );
        r.register(
            "member_snapshot_bytes",
            "Snapshot bytes downloaded (resumed downloads count only what was fetched)",
            m.member_snapshot_bytes.clone(),
        );
        r.register(
            "member_snapshot_members",
            "Members applied from snapshots",
            m.member_snapshot_members.clone(),
        );
        r.register(
            "member_change_responses",
            "Change responses applied (one transaction each)",
            m.member_change_responses.clone(),
        );
        r.register(
            "member_change_bytes",
            "Bytes of change responses received, as sent on the wire (zstd when compressed)",
            m.change_bytes_received.clone(),
        );
        r.register(
            "member_changes_applied",
            "Member changes applied from change responses",
            m.member_changes_applied.clone(),
        );
        r.register(
            "member_change_gaps",
            "Channel entries ignored and asked again, by kind (gap, malformed)",
            m.member_change_gaps.clone(),
        );
        r.register(
            "member_change_failures",
            "Change requests that failed, by reason (http, status, decode, cache)",
            m.member_change_failures.clone(),
        );
        r.register(
            "qr_lookups",
            "Head-office lookups of scanned codes of members not held here, by result",
            m.qr_lookups.clone(),
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
            "reactions_held",
            "Matching rules held back, by reason (cooldown, quiet_hours, rate_limit)",
            m.reactions_held.clone(),
        );
        r.register(
            "reaction_actions",
            "MQTT and webhook reaction actions, by kind and result",
            m.reaction_actions.clone(),
        );
        r.register("rules_loaded", "Rules in force", m.rules_loaded.clone());
        r.register(
            "rules_reloads",
            "Successful rules reloads (SIGHUP or file change)",
            m.rules_reloads.clone(),
        );
        r.register(
            "rules_reload_failures",
            "Rules reloads refused (bad file); the previous rules stay in force",
            m.rules_reload_failures.clone(),
        );
        r.register("qr_scans", "QR codes read by scanners", m.qr_scans.clone());
        r.register(
            "qr_rejected",
            "QR codes that identified no member, by error",
            m.qr_rejected.clone(),
        );
        r.register(
            "qr_lines_dropped",
            "Scanner lines dropped: too long, not text, or the engine was behind",
            m.qr_lines_dropped.clone(),
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
            "outbox_bytes",
            "Bytes the outbox holds against its quota (event bodies plus a per-row overhead)",
            m.outbox_bytes.clone(),
        );
        r.register(
            "outbox_quota_bytes",
            "The outbox byte quota ([outbox] max_bytes)",
            m.outbox_quota_bytes.clone(),
        );
        r.register(
            "outbox_shed_events",
            "Events shed because the outbox was over its byte quota",
            m.outbox_shed_events.clone(),
        );
        r.register(
            "outbox_shed_ranges",
            "Sheddings (each reported to head office as one events_shed event)",
            m.outbox_shed_ranges.clone(),
        );
        r.register(
            "outbox_renumbered",
            "Unsent events renumbered above head office's mark after an outbox rollback",
            m.outbox_renumbered.clone(),
        );
        r.register(
            "batches_inflight",
            "Batches published and not yet acknowledged by head office",
            m.batches_inflight.clone(),
        );
        r.register(
            "mqtt_connect_failures",
            "Broker connection attempts that failed (refused, TLS, timeout) or connections lost",
            m.mqtt_connect_failures.clone(),
        );
        r.register(
            "http_unauthorized",
            "HTTP requests refused for a missing or wrong token",
            m.http_unauthorized.clone(),
        );
        r.register(
            "alert_steps",
            "Alert lifecycle steps recorded (taken, outcome, dismissed, expired)",
            m.alert_steps.clone(),
        );
        r.register(
            "alert_steps_refused",
            "Alert lifecycle steps refused (already taken or closed, unknown alert)",
            m.alert_steps_refused.clone(),
        );
        r.register(
            "alert_store_errors",
            "Alert states not saved to alerts.db (the outbox has the step; a restart replays it)",
            m.alert_store_errors.clone(),
        );
        r.register(
            "pairing_attempts",
            "Tablet pairing code redemptions by result (ok, bad_code, rate_limited)",
            m.pairing_attempts.clone(),
        );
        r.register(
            "tablets_paired",
            "Paired tablets with a valid token",
            m.tablets_paired.clone(),
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
