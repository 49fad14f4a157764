//! `[[sources]]`: where sightings come from, one table per source.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

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
    /// A simulated store with one receiver per zone (kind = "sim"), the first the entrance
    /// every shopper passes on the way in and out; some shoppers spend the middle of their
    /// visit in one of the others. Every receiver hears every phone, the one of the zone the
    /// shopper is in loudest. Empty: one receiver, in `zone`.
    #[serde(default)]
    pub zones: Vec<String>,
    /// How much quieter a phone sounds at the receiver of another zone, dB (kind = "sim").
    #[serde(default = "default_zone_gap_db")]
    pub zone_gap_db: f64,
    /// Of `zones`, the receivers on this gateway (kind = "sim"; empty: all). Two gateways
    /// with the same seed and zones simulate one crowd, each hearing it through its own
    /// receivers: a hub and a receiver gateway of one store.
    #[serde(default)]
    pub hear_zones: Vec<String>,
    /// Recorded advert log (kind = "replay").
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// dB added to every RSSI this adapter reports (kind = "ble"): per-gateway calibration.
    #[serde(default)]
    pub rssi_offset: i16,
    /// Restart scanning when no advert arrived for this many seconds (kind = "ble").
    #[serde(default = "default_watchdog_s")]
    pub watchdog_s: u64,
    /// Forget a device silent for this many seconds (kind = "ble").
    #[serde(default = "default_device_ttl_s")]
    pub device_ttl_s: u64,
    /// Most devices remembered per adapter; a storm of random addresses evicts the least
    /// recently heard (kind = "ble").
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
    /// Replay speed: 1.0 = as recorded, 10.0 = ten times faster, 0 = as fast as possible
    /// (kind = "replay").
    #[serde(default = "default_speed")]
    pub speed: f64,
    /// TCP address scanners in TCP-client mode connect to, e.g. `0.0.0.0:7070` (kind = "qr",
    /// instead of `path`: a serial/HID-raw device or a FIFO, one code per line).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The store-LAN broker remote receivers publish to, `mqtt://host[:port]` (kind = "mqtt").
    #[serde(default)]
    pub broker: Option<String>,
    /// Topic filter of their reports (kind = "mqtt"; default `home/+/BTtoMQTT/#`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Login on that broker (kind = "mqtt").
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Remote receivers by id (the topic level before `BTtoMQTT`): zone and RSSI calibration
    /// (kind = "mqtt"). Receivers not listed land in `zone` with `rssi_offset`.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
}

/// One remote receiver of a `kind = "mqtt"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub id: String,
    /// Its zone; the source's `zone` when absent.
    #[serde(default)]
    pub zone: Option<String>,
    /// dB added to every RSSI it reports.
    #[serde(default)]
    pub rssi_offset: i16,
}

fn default_watchdog_s() -> u64 {
    60
}
fn default_device_ttl_s() -> u64 {
    300
}
fn default_max_devices() -> usize {
    20_000
}
fn default_speed() -> f64 {
    1.0
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
/// Most receivers one simulated store has.
const MAX_SIM_ZONES: usize = 8;

fn default_zone_gap_db() -> f64 {
    15.0
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
    /// A QR scanner (the code is a member's signed QR): a device/FIFO `path` or a TCP `listen`.
    #[serde(alias = "qr_serial")]
    Qr,
    /// Remote BLE receivers (OpenMQTTGateway, Theengs Gateway) reporting to a store-LAN broker.
    Mqtt,
}

impl SourceConfig {
    /// The first key that is wrong, and why.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = self;
        match s.kind {
            SourceKind::Ble if s.adapter.as_deref().unwrap_or("").is_empty() => {
                return Err((
                    "adapter",
                    "a ble source needs an adapter, e.g. \"hci0\"".into(),
                ));
            }
            SourceKind::Mqtt
                if !s
                    .broker
                    .as_deref()
                    .is_some_and(|b| b.starts_with("mqtt://") && b.len() > 7) =>
            {
                return Err((
                    "broker",
                    "an mqtt source needs broker = \"mqtt://host:port\", the store-LAN \
                     broker its receivers publish to"
                        .into(),
                ));
            }
            SourceKind::Qr if s.path.is_some() == s.listen.is_some() => {
                return Err((
                    "kind",
                    "a qr source needs either path (device or FIFO) or listen (TCP)".into(),
                ));
            }
            SourceKind::Replay if s.path.is_none() => {
                return Err(("path", "a replay source needs a path".into()));
            }
            SourceKind::Replay if !(s.speed >= 0.0 && s.speed <= 1_000_000.0) => {
                return Err((
                    "speed",
                    "must be between 0 (as fast as possible) and 1000000".into(),
                ));
            }
            SourceKind::Ble if s.watchdog_s == 0 || s.device_ttl_s == 0 => {
                return Err((
                    if s.watchdog_s == 0 {
                        "watchdog_s"
                    } else {
                        "device_ttl_s"
                    },
                    "must be at least 1".into(),
                ));
            }
            SourceKind::Ble if s.max_devices < 64 => {
                return Err(("max_devices", "must be at least 64".into()));
            }
            SourceKind::Sim if !(0.0..=1.0).contains(&s.member_share) => {
                return Err(("member_share", "must be between 0 and 1".into()));
            }
            SourceKind::Sim if !(s.mean_dwell_s >= 1.0 && s.mean_dwell_s <= 86_400.0) => {
                return Err(("mean_dwell_s", "must be between 1 and 86400".into()));
            }
            SourceKind::Sim if s.zones.len() > MAX_SIM_ZONES => {
                return Err((
                    "zones",
                    format!("at most {MAX_SIM_ZONES} simulated receivers"),
                ));
            }
            SourceKind::Sim
                if s.zones
                    .iter()
                    .enumerate()
                    .any(|(i, z)| z.trim().is_empty() || s.zones[..i].contains(z)) =>
            {
                return Err(("zones", "must be distinct, non-empty zone names".into()));
            }
            SourceKind::Sim if s.hear_zones.iter().any(|z| !s.zones.contains(z)) => {
                return Err(("hear_zones", "every one must be one of zones".into()));
            }
            SourceKind::Sim if !(0.0..=60.0).contains(&s.zone_gap_db) => {
                return Err(("zone_gap_db", "must be between 0 and 60".into()));
            }
            SourceKind::Sim if !(1..=65_535).contains(&s.population) => {
                return Err(("population", "must be between 1 and 65535".into()));
            }
            SourceKind::Sim
                if !(s.shoppers_per_minute > 0.0 && s.shoppers_per_minute <= 10_000.0) =>
            {
                return Err((
                    "shoppers_per_minute",
                    "must be above 0 and at most 10000".into(),
                ));
            }
            _ => {}
        }
        if s.zone.trim().is_empty() {
            return Err(("zone", "must not be empty".into()));
        }

        Ok(())
    }
}
