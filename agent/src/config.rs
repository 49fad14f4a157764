//! The agent's TOML configuration: parsed, defaulted and validated in one place.
//!
//! `instore-agent check-config FILE` runs [`AgentConfig::load`] and prints its error, which names
//! the key and the line. Every key is documented in `agent/examples/agent.toml`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax and type errors; toml's message carries the line, column and key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key `{key}` (line {line}): {reason}")]
    Invalid {
        path: String,
        key: String,
        line: usize,
        reason: String,
    },
}

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
    pub react: ReactConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token with full access (head-office staff, scripts). Empty disables it.
    #[serde(default)]
    pub admin_token: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_token: String::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Zone this source's sightings are placed in (entrance, fitting-rooms, till, ...).
    #[serde(default = "default_zone")]
    pub zone: String,
    /// BLE adapter name, e.g. `hci0` (kind = "ble").
    #[serde(default)]
    pub adapter: Option<String>,
    /// Simulated crowd (kind = "sim").
    #[serde(default)]
    pub seed: u64,
    /// New shoppers per minute (kind = "sim").
    #[serde(default = "default_shoppers_per_minute")]
    pub shoppers_per_minute: f64,
    /// Share of shoppers who are members carrying a beacon, 0..=1 (kind = "sim").
    #[serde(default = "default_member_share")]
    pub member_share: f64,
    /// Size of the simulated member population, ids `M000001`.. (kind = "sim"); must match the
    /// members loaded into the cache for sim shoppers to be recognised.
    #[serde(default = "default_population")]
    pub population: u32,
    /// Mean time a simulated shopper stays, seconds (kind = "sim").
    #[serde(default = "default_mean_dwell_s")]
    pub mean_dwell_s: f64,
    /// Recorded advert log (kind = "replay").
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn default_zone() -> String {
    "entrance".into()
}
fn default_shoppers_per_minute() -> f64 {
    30.0
}
fn default_member_share() -> f64 {
    0.4
}
fn default_mean_dwell_s() -> f64 {
    300.0
}
fn default_population() -> u32 {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Sim,
    Ble,
    Replay,
    QrSerial,
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
        }
    }
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactConfig {
    /// Path of the rules file (relative paths are relative to the config file).
    #[serde(default)]
    pub rules: Option<PathBuf>,
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
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            arrive_sightings: default_arrive_sightings(),
            arrive_window_s: default_arrive_window_s(),
            depart_after_s: default_depart_after_s(),
            min_rssi: default_min_rssi(),
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

impl PresenceConfig {
    pub fn depart_after(&self) -> Duration {
        Duration::from_secs(self.depart_after_s)
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved against
    /// the file's folder, so a unit file and a shell see the same config.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &display)?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if let Some(rules) = &cfg.react.rules
            && rules.is_relative()
        {
            cfg.react.rules = Some(base.join(rules));
        }
        for s in &mut cfg.sources {
            if let Some(p) = &s.path
                && p.is_relative()
            {
                s.path = Some(base.join(p));
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
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
            match s.kind {
                SourceKind::Ble if s.adapter.as_deref().unwrap_or("").is_empty() => {
                    return Err(invalid(
                        "adapter",
                        "a ble source needs an adapter, e.g. \"hci0\"".into(),
                    ));
                }
                SourceKind::Replay if s.path.is_none() => {
                    return Err(invalid("path", "a replay source needs a path".into()));
                }
                SourceKind::Sim if !(0.0..=1.0).contains(&s.member_share) => {
                    return Err(invalid("member_share", "must be between 0 and 1".into()));
                }
                SourceKind::Sim if !(s.mean_dwell_s >= 1.0 && s.mean_dwell_s <= 86_400.0) => {
                    return Err(invalid(
                        "mean_dwell_s",
                        "must be between 1 and 86400".into(),
                    ));
                }
                SourceKind::Sim if !(1..=65_535).contains(&s.population) => {
                    return Err(invalid("population", "must be between 1 and 65535".into()));
                }
                SourceKind::Sim
                    if !(s.shoppers_per_minute > 0.0 && s.shoppers_per_minute <= 10_000.0) =>
                {
                    return Err(invalid(
                        "shoppers_per_minute",
                        "must be above 0 and at most 10000".into(),
                    ));
                }
                _ => {}
            }
            if s.zone.trim().is_empty() {
                return Err(invalid("zone", "must not be empty".into()));
            }
        }
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
            if self.sync.reconnect_min_ms == 0
                || self.sync.reconnect_min_ms > self.sync.reconnect_max_ms
            {
                return Err(invalid(
                    "reconnect_min_ms",
                    "must be above 0 and at most reconnect_max_ms".into(),
                ));
            }
        }
        if self.presence.arrive_sightings == 0 {
            return Err(invalid("arrive_sightings", "must be at least 1".into()));
        }
        if self.presence.depart_after_s == 0 {
            return Err(invalid("depart_after_s", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The 1-based line where `key` is first assigned, or 0 when it is absent (a missing key).
pub fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = \"/tmp/x\"\n";

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = AgentConfig::parse(MINIMAL, "t").unwrap();
        assert!(!c.sync.enabled);
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.presence.depart_after_s, 60);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../examples/agent.toml");
        AgentConfig::parse(text, "agent.toml").unwrap();
    }

    #[test]
    fn an_invalid_value_is_reported_with_key_and_line() {
        let text = format!(
            "{MINIMAL}\n[sync]\nenabled = true\nbroker = \"tcp://x\"\nhq_url = \"http://h\"\n"
        );
        let err = AgentConfig::parse(&text, "a.toml").unwrap_err().to_string();
        assert!(err.contains("`broker`") && err.contains("line 7"), "{err}");
    }

    #[test]
    fn a_type_error_names_the_line_and_key() {
        let text = "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = 5\n";
        let err = AgentConfig::parse(text, "a.toml").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("data_dir"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_rather_than_ignored() {
        let text = format!("{MINIMAL}stor_id = \"typo\"\n");
        let err = AgentConfig::parse(&text, "a.toml").unwrap_err().to_string();
        assert!(err.contains("stor_id"), "{err}");
    }

    #[test]
    fn ids_that_would_break_topics_are_refused() {
        let text = "store_id = \"s/1\"\ngateway_id = \"g1\"\ndata_dir = \"/tmp\"\n";
        let err = AgentConfig::parse(text, "a.toml").unwrap_err().to_string();
        assert!(err.contains("store_id") && err.contains("line 1"), "{err}");
    }
}
