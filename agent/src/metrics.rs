//! The agent's Prometheus metrics: one struct, cloned into every task that counts something.
//!
//! A metric is registered here once, with its help text; tasks only increment. Served at
//! `GET /metrics` in the Prometheus text format.

use prometheus_client::{
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
    pub remote_reports: Counter,
    pub remote_reports_refused: Family<KindLabel, Counter>,
    pub remote_receivers_silent: Gauge,
    pub remote_broker_errors: Counter,
    // store hub and its peers (relay/)
    pub relay_acting: Gauge,
    pub relay_forward_coalesced: Counter,
    pub relay_forward_dropped: Counter,
    pub relay_batches: Family<KindLabel, Counter>,
    pub relay_sightings_lost: Counter,
    pub relay_received: Counter,
    pub relay_refused: Family<KindLabel, Counter>,
    pub relay_peers_silent: Gauge,
    pub relay_takeovers: Family<KindLabel, Counter>,
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
    pub campaigns_refused: Counter,
    pub campaign_sets_received: Counter,
    pub qr_scans: Counter,
    /// QR codes that identified nobody, by `error`.
    pub qr_rejected: Family<Vec<(&'static str, String)>, Counter>,
    pub qr_lines_dropped: Counter,
    /// Member codes by `kind` (signed, legacy) and `result`.
    pub member_codes: Family<KindLabel, Counter>,
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
    pub acks_refused: Family<KindLabel, Counter>,
    pub mqtt_auth_refused: Family<KindLabel, Counter>,
    pub outbox_bytes: Gauge,
    pub outbox_quota_bytes: Gauge,
    pub outbox_shed_events: Counter,
    pub outbox_shed_ranges: Counter,
    pub outbox_renumbered: Counter,
    pub batches_inflight: Gauge,
    pub mqtt_connect_failures: Counter,
    // web
    pub http_unauthorized: Counter,
    pub http_refused_remote: Family<KindLabel, Counter>,
    // alert lifecycle and tablet pairing
    pub alert_steps: Family<KindLabel, Counter>,
    pub alert_steps_refused: Family<KindLabel, Counter>,
    pub alert_store_errors: Counter,
    pub pairing_attempts: Family<KindLabel, Counter>,
    pub tablets_paired: Gauge,
    pub tablet_tokens: Family<KindLabel, Counter>,
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
        instore_daemon::register!(r, m, {
            adverts: "BLE/sim adverts received from sources",
            adverts_dropped: "Adverts dropped because the engine was behind (source channel full)",
            ble_adverts_coalesced: "BLE adverts replaced by a newer one from the same device while the engine was behind",
            ble_signals_malformed: "BlueZ D-Bus signals whose body could not be decoded (skipped)",
            ble_signals_overflow: "BlueZ D-Bus signals dropped because the BLE source's decode queue was full",
            ble_devices: "Devices in the BLE sources' device tables",
            ble_devices_evicted: "Devices evicted from a BLE device table by its cap (storm of new addresses)",
            ble_reconnects: "BLE scanning sessions re-opened after the adapter, bluetoothd or D-Bus went away",
            ble_watchdog_restarts: "BLE scans restarted because no advert arrived within the watchdog period",
            remote_reports: "Reports from remote receivers (kind = \"mqtt\") turned into sightings",
            remote_reports_refused: "Remote receiver reports skipped, by reason (too_large, topic, json, address, rssi, data)",
            remote_receivers_silent: "Remote receivers not heard for their watchdog period",
            remote_broker_errors: "Connection losses to the store-LAN broker of remote receivers",
            relay_acting: "1 while this gateway acts as its store's hub (identifies, runs presence and rules, serves tablets), 0 while it forwards",
            relay_forward_coalesced: "Sightings waiting to be forwarded replaced by a newer one of the same device and zone",
            relay_forward_dropped: "Sightings not forwarded because a peer's queue held forward_max_devices devices",
            relay_batches: "Batches of sightings forwarded to a peer, by result (accepted; passive: a standby not acting; refused; failed: no answer)",
            relay_sightings_lost: "Forwarded sightings in batches no peer accepted (the device's next advert replaces them)",
            relay_received: "Forwarded sightings taken in from the store's other gateways",
            relay_refused: "Forwarded batches or sightings refused, by reason (bad_seal, clock, wrong_store, replayed, malformed, too_large, stale, passive, peers)",
            relay_peers_silent: "Forwarding gateways not heard for peer_silent_s",
            relay_takeovers: "Standby transitions, by kind (took_over, handed_back)",
            replay_malformed: "Replay records (NDJSON lines, btsnoop packets) malformed and skipped",
            identified: "Adverts matched to a member",
            strangers: "Adverts not matched to any member",
            rpa_cache_hits: "Resolvable private addresses answered from the RPA cache (member or stranger)",
            rpa_resolutions: "New resolvable private addresses tried against every IRK (RPA cache misses)",
            rpa_resolved: "New resolvable private addresses that resolved to a member",
            rpa_aes_blocks: "AES blocks spent resolving resolvable private addresses",
            id_table_builds: "Per-window rotating-ID/Eddystone-EID tables built (off the engine task)",
            id_table_build_us: "Microseconds spent building per-window ID tables (divide by id_table_builds)",
            id_table_inline_builds: "Per-window ID tables built on the engine task because no builder thread could start",
            id_table_late: "Window changes where the new window's ID table was not ready yet",
            presence_events: "Presence events emitted, by kind",
            members_present: "Members present now",
            members_cached: "Consenting members in the cache index",
            member_record_reads: "Matched members' records read from members.db (record cache misses)",
            member_record_failures: "Matched slots whose record could not be read (gone or unreadable)",
            member_snapshots_applied: "Channel snapshots (or legacy store snapshots) applied",
            member_snapshot_failures: "Snapshot downloads or applies that failed, by reason",
            member_snapshot_bytes: "Snapshot bytes downloaded (resumed downloads count only what was fetched)",
            member_snapshot_members: "Members applied from snapshots",
            member_change_responses: "Change responses applied (one transaction each)",
        });
        r.register(
            "member_change_bytes",
            "Bytes of change responses received, as sent on the wire (zstd when compressed)",
            m.change_bytes_received.clone(),
        );
        instore_daemon::register!(r, m, {
            member_changes_applied: "Member changes applied from change responses",
            member_change_gaps: "Channel entries ignored and asked again, by kind (gap, malformed)",
            member_change_failures: "Change requests that failed, by reason (http, status, decode, cache)",
            qr_lookups: "Head-office lookups of scanned codes of members not held here, by result",
            alerts_raised: "Clerk alerts raised",
            alerts_suppressed: "Alerts a rule matched but a cooldown or limit suppressed",
            reactions_held: "Matching rules held back, by reason (cooldown, quiet_hours, rate_limit)",
            reaction_actions: "MQTT and webhook reaction actions, by kind and result",
            rules_loaded: "Rules in force",
            rules_reloads: "Successful rules reloads (SIGHUP or file change)",
            rules_reload_failures: "Rules reloads refused (bad file); the previous rules stay in force",
            campaigns_refused: "Head-office campaigns left out at a rules build (this gateway cannot run them)",
            campaign_sets_received: "Campaign sets received from head office (a change in the store's campaigns)",
            qr_scans: "QR codes read by scanners",
            qr_rejected: "QR codes that identified no member, by error",
            qr_lines_dropped: "Scanner lines dropped: too long, not text, or the engine was behind",
            member_codes: "Member codes scanned, by kind and result: signed (identified, duplicate, refused), legacy HMAC codes (arrived, or refused with [member_codes] legacy = false)",
            sse_clients: "Connected alert-stream clients",
            outbox_appended: "Events written to the outbox",
            outbox_depth: "Events in the outbox not yet acknowledged",
            outbox_oldest_age_seconds: "Age of the oldest unacknowledged event",
            outbox_commits: "Outbox write transactions (fsync points)",
            events_sent: "Events published to the broker (including re-sends)",
            events_acked: "Events acknowledged by head office",
            batches_sent: "Event batches published",
            mqtt_connected: "1 while connected to the broker",
            mqtt_reconnects: "Broker connection attempts after the first",
            mqtt_bad_payloads: "MQTT payloads refused as malformed",
            acks_refused: "Acks refused in whole or part, by reason (high_water: a mark too far ahead to keep numbering; unsent: events this gateway never sent, not deleted)",
            mqtt_auth_refused: "Acks and members notices refused as not head office's, by kind and reason (bad_mac: sealed but not verifying; unsigned: plain where head office seals)",
            outbox_bytes: "Bytes the outbox holds against its quota (event bodies plus a per-row overhead)",
            outbox_quota_bytes: "The outbox byte quota ([outbox] max_bytes)",
            outbox_shed_events: "Events shed because the outbox was over its byte quota",
            outbox_shed_ranges: "Sheddings (each reported to head office as one events_shed event)",
            outbox_renumbered: "Unsent events renumbered above head office's mark after an outbox rollback",
            batches_inflight: "Batches published and not yet acknowledged by head office",
            mqtt_connect_failures: "Broker connection attempts that failed (refused, TLS, timeout) or connections lost",
            http_unauthorized: "HTTP requests refused for a missing or wrong token",
            http_refused_remote: "HTTP requests refused because they came from another host, by route (admin: the admin API answers on loopback only; metrics: see [http] metrics)",
            alert_steps: "Alert lifecycle steps recorded (taken, outcome, dismissed, expired)",
            alert_steps_refused: "Alert lifecycle steps refused (already taken or closed, unknown alert)",
            alert_store_errors: "Alert states not saved to alerts.db (the outbox has the step; a restart replays it)",
            pairing_attempts: "Tablet pairing code redemptions by result (ok, bad_code, rate_limited)",
            tablets_paired: "Paired tablets with a valid token",
            tablet_tokens: "Tablet token events by kind (renewed: a new token handed out; switched: first used, the old one retired; expired)",
        });
        (m, r)
    }
}

pub use instore_daemon::metrics::render;
