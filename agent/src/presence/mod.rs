//! Presence: turns identified sightings into arrive / depart per member.

use serde::Serialize;

/// A member present now, as `GET /api/presence` lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresentMember {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub zone: String,
    /// Arrival, milliseconds since the Unix epoch.
    pub since: i64,
    pub last_seen: i64,
    pub last_rssi: i16,
}
