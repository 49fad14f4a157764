//! The agent's TOML configuration: parsed, defaulted and validated in one place.
//!
//! `instore-agent check-config FILE` runs [`AgentConfig::load`] and prints its error, which names
//! the key and the line. Every key is documented in `agent/examples/agent.toml`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use instore_daemon::config::{ConfigError, first_line_of_key as line_of_key};
use instore_daemon::config::{TopLevel, resolve, resolve_opt};

/// The config's top-level keys, tables included, for errors about a missing one.
const TOP: TopLevel = TopLevel {
    keys: &[
        "store_id",
        "gateway_id",
        "data_dir",
        "http",
        "sources",
        "sync",
        "outbox",
        "record",
        "react",
        "presence",
        "alerts",
        "member_codes",
        "hub",
    ],
    tables: &[
        "http",
        "sync",
        "outbox",
        "record",
        "react",
        "presence",
        "alerts",
        "member_codes",
        "hub",
    ],
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub store_id: String,
    pub gateway_id: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub record: RecordConfig,
    #[serde(default)]
    pub react: ReactConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub member_codes: MemberCodesConfig,
    #[serde(default)]
    pub hub: HubConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberCodesConfig {
    /// Accept the HMAC member codes (`ISQ1.`) of before signed codes (`ISQ2:`, checked against
    /// the member's device key). True when the key is absent, so a deployed config keeps
    /// working; configs written by `instore-provision` and the example set it false. Every gateway
    /// holds the keys that make HMAC codes: with them on, a stolen gateway can forge any
    /// member's code. `instore_agent_member_codes_total{kind="legacy"}` shows how many still come.
    #[serde(default = "default_true")]
    pub legacy: bool,
}

fn default_true() -> bool {
    true
}

impl Default for MemberCodesConfig {
    fn default() -> Self {
        Self { legacy: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// An alert nobody took or closed within this many seconds expires (0: never).
    #[serde(default = "default_alert_expire_after_s")]
    pub expire_after_s: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            expire_after_s: default_alert_expire_after_s(),
        }
    }
}

fn default_alert_expire_after_s() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token with full access (head-office staff, scripts). Empty disables it.
    #[serde(default)]
    pub admin_token: String,
    /// How tablets reach this agent, for pairing URLs (`http://192.168.1.20:8080`). Default: the
    /// listen address, with the LAN interface's address for `0.0.0.0`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Who may read `/metrics`, which shows members present and identifications as they happen.
    #[serde(default)]
    pub metrics: MetricsAccess,
    /// Days a paired tablet's token lives from pairing or from its last renewal's first use.
    #[serde(default = "default_tablet_token_days")]
    pub tablet_token_days: u32,
}

/// `[http] metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Requests from this host, and from elsewhere with the admin token as a bearer.
    #[default]
    Local,
    /// The admin token as a bearer, from anywhere (this host included).
    Token,
    /// Anyone who can reach the listen address.
    Open,
}

fn default_tablet_token_days() -> u32 {
    90
}

impl HttpConfig {
    pub fn tablet_token_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.tablet_token_days) * 86_400)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_token: String::new(),
            public_url: None,
            metrics: MetricsAccess::default(),
            tablet_token_days: default_tablet_token_days(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// `[record]`: writes every advert the sources produce to an NDJSON file (the replay format).
/// For debugging only: the file holds raw addresses of everyone nearby, members or not.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Must be true for `path` to be accepted: an explicit acknowledgement that raw Bluetooth
    /// addresses of passers-by are written to disk.
    #[serde(default)]
    pub write_raw_addresses: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    #[serde(default)]
    pub enabled: bool,
    /// `mqtt://host:port` or `mqtts://host:port`.
    #[serde(default)]
    pub broker: String,
    /// Head office HTTP base URL, e.g. `http://hq.example:8090`.
    #[serde(default)]
    pub hq_url: String,
    /// This gateway's token (minted by `instore-provision`), for head office's HTTP API.
    #[serde(default)]
    pub token: String,
    /// Most events in one MQTT batch.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// How long a lone event may wait for company before its batch is sent.
    #[serde(default = "default_batch_max_age_ms")]
    pub batch_max_age_ms: u64,
    /// Batches published but not yet acknowledged by head office, at most.
    #[serde(default = "default_max_inflight")]
    pub max_inflight_batches: usize,
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// PEM file of the CA(s) that sign the broker's certificate (mqtts:// only). Empty: the
    /// operating system's trust roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to the broker; needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// How often head office is asked for member changes without a notice (a lost notice
    /// delays a change by at most this).
    #[serde(default = "default_changes_poll_s")]
    pub changes_poll_s: u64,
    /// How long a scan waits for head office's answer about a member not held here.
    #[serde(default = "default_lookup_timeout_ms")]
    pub lookup_timeout_ms: u64,
}

/// `[outbox]`: the durable queue of events waiting for head office.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Byte quota (event bodies plus a per-row overhead); over it the outbox sheds the oldest
    /// low-value events and reports the range. See `agent/examples/agent.toml` for sizing.
    #[serde(default = "default_outbox_max_bytes")]
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_outbox_max_bytes(),
        }
    }
}

fn default_outbox_max_bytes() -> u64 {
    crate::outbox::DEFAULT_MAX_BYTES
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            broker: String::new(),
            hq_url: String::new(),
            token: String::new(),
            batch_max_events: default_batch_max_events(),
            batch_max_age_ms: default_batch_max_age_ms(),
            max_inflight_batches: default_max_inflight(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            changes_poll_s: default_changes_poll_s(),
            lookup_timeout_ms: default_lookup_timeout_ms(),
        }
    }
}

fn default_changes_poll_s() -> u64 {
    300
}
fn default_lookup_timeout_ms() -> u64 {
    2_000
}

fn default_batch_max_events() -> usize {
    500
}
fn default_batch_max_age_ms() -> u64 {
    200
}
fn default_max_inflight() -> usize {
    8
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactConfig {
    /// Path of the rules file (relative paths are relative to the config file). Reloaded on
    /// SIGHUP and when its content changes.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// The store's time zone for rules' `hours`, quiet hours and "today": an IANA name
    /// ("Europe/Berlin") from the system tz database, so daylight saving time is followed.
    /// Neither this nor `timezone_offset_min`: the system's zone (`TZ`, `/etc/localtime`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Instead of `timezone`: local time is UTC plus this many minutes, all year (no DST).
    #[serde(default)]
    pub timezone_offset_min: Option<i32>,
    /// Local time range with no clerk alerts, e.g. "22:00-07:00" (empty: none).
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// At most this many clerk alerts per minute in the store (0: unlimited).
    #[serde(default = "default_alerts_per_minute")]
    pub alerts_per_minute: u32,
    /// Alerts allowed at once after a quiet spell (default: alerts_per_minute).
    #[serde(default)]
    pub alert_burst: Option<u32>,
    /// `mqtt://host:port` of the broker rules' `mqtt` actions publish to (none: they fail,
    /// counted).
    #[serde(default)]
    pub mqtt_broker: Option<String>,
    /// MQTT/webhook actions waiting for the action task, at most (more are dropped, counted).
    #[serde(default = "default_action_queue")]
    pub action_queue: usize,
}

impl Default for ReactConfig {
    fn default() -> Self {
        Self {
            rules: None,
            timezone: None,
            timezone_offset_min: None,
            quiet_hours: None,
            alerts_per_minute: default_alerts_per_minute(),
            alert_burst: None,
            mqtt_broker: None,
            action_queue: default_action_queue(),
        }
    }
}

fn default_alerts_per_minute() -> u32 {
    30
}
fn default_action_queue() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// Sightings needed within `arrive_window_s` before a member counts as arrived.
    #[serde(default = "default_arrive_sightings")]
    pub arrive_sightings: u32,
    #[serde(default = "default_arrive_window_s")]
    pub arrive_window_s: u64,
    /// Silence after which a present member departs.
    #[serde(default = "default_depart_after_s")]
    pub depart_after_s: u64,
    /// Adverts weaker than this are ignored (too far away: outside the shop window).
    #[serde(default = "default_min_rssi")]
    pub min_rssi: i16,
    /// Smoothed RSSI (dBm) at or above which a sighting counts towards arriving.
    #[serde(default = "default_enter_rssi")]
    pub enter_rssi: i16,
    /// Smoothed RSSI (dBm) below which a present member starts to leave; below `enter_rssi`, so
    /// a member at the edge of range does not flap.
    #[serde(default = "default_exit_rssi")]
    pub exit_rssi: i16,
    /// Smoothed RSSI below `exit_rssi` for this long (seconds) departs a member still advertising.
    #[serde(default = "default_exit_after_s")]
    pub exit_after_s: u64,
    /// Time constant of the RSSI moving average, seconds.
    #[serde(default = "default_smoothing_s")]
    pub smoothing_s: f64,
    /// A member changes zone when another zone hears them this much louder (dB) ...
    #[serde(default = "default_zone_margin_db")]
    pub zone_margin_db: f64,
    /// ... for this long without a break (seconds).
    #[serde(default = "default_zone_switch_s")]
    pub zone_switch_s: u64,
    /// Time in one zone (seconds, per visit) at which a dwell event fires, once each.
    #[serde(default = "default_dwell_s")]
    pub dwell_s: Vec<u64>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            arrive_sightings: default_arrive_sightings(),
            arrive_window_s: default_arrive_window_s(),
            depart_after_s: default_depart_after_s(),
            min_rssi: default_min_rssi(),
            enter_rssi: default_enter_rssi(),
            exit_rssi: default_exit_rssi(),
            exit_after_s: default_exit_after_s(),
            smoothing_s: default_smoothing_s(),
            zone_margin_db: default_zone_margin_db(),
            zone_switch_s: default_zone_switch_s(),
            dwell_s: default_dwell_s(),
        }
    }
}

fn default_arrive_sightings() -> u32 {
    2
}
fn default_arrive_window_s() -> u64 {
    10
}
fn default_depart_after_s() -> u64 {
    60
}
fn default_min_rssi() -> i16 {
    -90
}
fn default_enter_rssi() -> i16 {
    -80
}
fn default_exit_rssi() -> i16 {
    -88
}
fn default_exit_after_s() -> u64 {
    30
}
fn default_smoothing_s() -> f64 {
    5.0
}
// With RSSI noise of ±8 dB at a boundary between two equally loud zones, 6 dB for 5 s switched
// about three times an hour in simulation; 8 dB for 8 s did not switch in 30 hours.
fn default_zone_margin_db() -> f64 {
    8.0
}
fn default_zone_switch_s() -> u64 {
    8
}
fn default_dwell_s() -> Vec<u64> {
    vec![60, 300, 900]
}

impl PresenceConfig {
    pub fn depart_after(&self) -> Duration {
        Duration::from_secs(self.depart_after_s)
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved against
    /// the file's folder, so a unit file and a shell see the same config.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = instore_daemon::config::read(path)?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        resolve(base, &mut cfg.data_dir);
        resolve_opt(base, &mut cfg.react.rules);
        for s in &mut cfg.sources {
            resolve_opt(base, &mut s.path);
        }
        resolve_opt(base, &mut cfg.record.path);
        for p in [
            &mut cfg.sync.ca_file,
            &mut cfg.sync.client_cert,
            &mut cfg.sync.client_key,
        ] {
            resolve_opt(base, p);
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = instore_daemon::config::parse(text, origin, TOP)?;
        cfg.validate(text, origin)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            line: line_of_key(text, key),
            reason,
        };
        use instore_protocol::topics::valid_id;
        if !(1..=3650).contains(&self.http.tablet_token_days) {
            return Err(invalid(
                "tablet_token_days",
                "must be between 1 and 3650".into(),
            ));
        }
        if self.http.metrics == MetricsAccess::Token && self.http.admin_token.is_empty() {
            return Err(invalid(
                "metrics",
                "\"token\" needs an admin_token; nobody could read the metrics".into(),
            ));
        }
        if !valid_id(&self.store_id) {
            return Err(invalid(
                "store_id",
                "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            ));
        }
        if !valid_id(&self.gateway_id) {
            return Err(invalid(
                "gateway_id",
                "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            ));
        }
        for s in &self.sources {
            s.validate().map_err(|(key, reason)| invalid(key, reason))?;
        }
        self.hub
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        if self.sync.enabled {
            let b = &self.sync.broker;
            if !(b.starts_with("mqtt://") || b.starts_with("mqtts://")) {
                return Err(invalid(
                    "broker",
                    "must be an mqtt:// or mqtts:// URL".into(),
                ));
            }
            let h = &self.sync.hq_url;
            if !(h.starts_with("http://") || h.starts_with("https://")) {
                return Err(invalid(
                    "hq_url",
                    "must be an http:// or https:// URL".into(),
                ));
            }
            if self.sync.batch_max_events == 0 {
                return Err(invalid("batch_max_events", "must be at least 1".into()));
            }
            if self.sync.max_inflight_batches == 0 {
                return Err(invalid("max_inflight_batches", "must be at least 1".into()));
            }
            if self.sync.client_cert.is_some() != self.sync.client_key.is_some() {
                return Err(invalid(
                    if self.sync.client_cert.is_some() {
                        "client_key"
                    } else {
                        "client_cert"
                    },
                    "client_cert and client_key go together".into(),
                ));
            }
            if self.sync.reconnect_min_ms == 0
                || self.sync.reconnect_min_ms > self.sync.reconnect_max_ms
            {
                return Err(invalid(
                    "reconnect_min_ms",
                    "must be above 0 and at most reconnect_max_ms".into(),
                ));
            }
        }
        if self.record.path.is_some() && !self.record.write_raw_addresses {
            return Err(invalid(
                "path",
                "[record] writes raw Bluetooth addresses of everyone nearby to disk; set \
                 write_raw_addresses = true to confirm (debugging only)"
                    .into(),
            ));
        }
        if self.outbox.max_bytes < 1024 * 1024 {
            return Err(invalid(
                "max_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if let Err(e) = crate::react::ReactSettings::from_config(&self.react) {
            return Err(invalid(e.key, e.reason));
        }
        if self
            .react
            .mqtt_broker
            .as_deref()
            .is_some_and(|b| !b.starts_with("mqtt://"))
        {
            return Err(invalid("mqtt_broker", "must be an mqtt:// URL".into()));
        }
        if self.react.action_queue == 0 {
            return Err(invalid("action_queue", "must be at least 1".into()));
        }
        if !(1..=crate::presence::MAX_ARRIVE_SIGHTINGS).contains(&self.presence.arrive_sightings) {
            return Err(invalid(
                "arrive_sightings",
                format!("must be 1 to {}", crate::presence::MAX_ARRIVE_SIGHTINGS),
            ));
        }
        if self.presence.arrive_window_s == 0 {
            return Err(invalid("arrive_window_s", "must be at least 1".into()));
        }
        let pr = &self.presence;
        if !(pr.min_rssi <= pr.exit_rssi && pr.exit_rssi < pr.enter_rssi) {
            return Err(invalid(
                "exit_rssi",
                "must satisfy min_rssi <= exit_rssi < enter_rssi (the gap is the hysteresis)"
                    .into(),
            ));
        }
        if pr.exit_after_s == 0 {
            return Err(invalid("exit_after_s", "must be at least 1".into()));
        }
        if !(0.0..=600.0).contains(&pr.smoothing_s) {
            return Err(invalid("smoothing_s", "must be between 0 and 600".into()));
        }
        if !(0.0..=60.0).contains(&pr.zone_margin_db) {
            return Err(invalid("zone_margin_db", "must be between 0 and 60".into()));
        }
        if pr.dwell_s.len() > 16
            || pr.dwell_s.contains(&0)
            || !pr.dwell_s.windows(2).all(|w| w[0] < w[1])
        {
            return Err(invalid(
                "dwell_s",
                "must be at most 16 durations above 0, in ascending order".into(),
            ));
        }
        if self.presence.depart_after_s == 0 {
            return Err(invalid("depart_after_s", "must be at least 1".into()));
        }
        Ok(())
    }
}

mod hub;
mod sources;

pub use hub::{HubConfig, HubRole};
pub use sources::{ReceiverConfig, SourceConfig, SourceKind};

#[cfg(test)]
mod tests;
