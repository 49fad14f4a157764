//! Store-wide reaction settings from the agent config's `[react]` table: time zone, quiet hours
//! and the store's alert rate limit.

use super::calendar::HoursRange;

/// Store-wide settings from the agent config's `[react]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ReactSettings {
    /// The store's time zone: local time of day and dates for `hours`, quiet hours and "today".
    pub zone: jiff::tz::TimeZone,
    /// No clerk alerts in this local time range.
    pub quiet_hours: Option<HoursRange>,
    /// At most this many clerk alerts per minute in the store (0: unlimited).
    pub alerts_per_minute: u32,
    /// Alerts allowed at once after a quiet spell (the token bucket's size).
    pub alert_burst: u32,
}

impl Default for ReactSettings {
    /// UTC, no quiet hours, no rate limit: what tests and a rules set without config start with.
    fn default() -> Self {
        Self {
            zone: jiff::tz::TimeZone::UTC,
            quiet_hours: None,
            alerts_per_minute: 0,
            alert_burst: 0,
        }
    }
}

/// A `[react]` setting that cannot be used, with the config key to blame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: &'static str,
    pub reason: String,
}

impl ReactSettings {
    pub fn from_config(c: &crate::config::ReactConfig) -> Result<Self, SettingsError> {
        let bad = |key: &'static str| move |reason: String| SettingsError { key, reason };
        Ok(Self {
            zone: store_zone(c)?,
            quiet_hours: c
                .quiet_hours
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(HoursRange::parse)
                .transpose()
                .map_err(bad("quiet_hours"))?,
            alerts_per_minute: c.alerts_per_minute,
            alert_burst: c.alert_burst.unwrap_or(c.alerts_per_minute),
        })
    }
}

/// The zone named by `timezone`, or the fixed `timezone_offset_min`, or else the system's own
/// (`TZ`, `/etc/localtime`), or else UTC with a warning: a gateway without a configured zone
/// would otherwise run every rule's hours against the wrong clock without saying so.
fn store_zone(c: &crate::config::ReactConfig) -> Result<jiff::tz::TimeZone, SettingsError> {
    use jiff::tz::{Offset, TimeZone};
    match (c.timezone.as_deref(), c.timezone_offset_min) {
        (Some(_), Some(_)) => Err(SettingsError {
            key: "timezone_offset_min",
            reason: "set either timezone (an IANA name, following daylight saving time) or \
                     timezone_offset_min (fixed), not both"
                .into(),
        }),
        (Some(name), None) => TimeZone::get(name.trim()).map_err(|e| SettingsError {
            key: "timezone",
            reason: format!(
                "unknown time zone {name:?} (an IANA name like \"Europe/Berlin\", as in \
                 /usr/share/zoneinfo): {e}"
            ),
        }),
        (None, Some(min)) => {
            if !(-14 * 60..=14 * 60).contains(&min) {
                return Err(SettingsError {
                    key: "timezone_offset_min",
                    reason: "must be between -840 and 840".into(),
                });
            }
            Offset::from_seconds(min * 60)
                .map(TimeZone::fixed)
                .map_err(|e| SettingsError {
                    key: "timezone_offset_min",
                    reason: e.to_string(),
                })
        }
        (None, None) => Ok(TimeZone::try_system().unwrap_or_else(|e| {
            tracing::warn!(
                error = %e,
                "cannot tell the system's time zone: rules use UTC; set [react] timezone"
            );
            TimeZone::UTC
        })),
    }
}
