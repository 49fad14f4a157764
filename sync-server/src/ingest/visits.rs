//! Presence events as facts about a member's visit: what ingest keeps of an arrival, a
//! departure or an alert beyond the event itself. Pure: no I/O.
//!
//! In: an event body. Out: the [`PresenceFact`] it carries (or none: footfall, health, alert
//! steps by clerks). The store turns facts into visits per store (arrival, departure, dwell,
//! zones, alerts raised during it), visit counts per day and the member's last visit per store.
//! Every fact names a member, so ingest can drop the events of members without presence consent.

use instore_protocol::EventBody;

/// A member-related fact of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceFact {
    Arrive {
        member_id: String,
        visit_id: String,
        zone: String,
    },
    Depart {
        member_id: String,
        visit_id: String,
        dwell_s: u64,
        zones: Vec<String>,
    },
    /// Zone changes, dwell milestones, holdouts, and events head office cannot read that name a
    /// member: only the member matters (consent).
    Seen {
        member_id: String,
    },
    /// A QR scan identifies a member without a visit session of its own.
    QrScanned {
        member_id: String,
    },
    AlertRaised {
        member_id: String,
    },
}

impl PresenceFact {
    pub fn member_id(&self) -> &str {
        match self {
            PresenceFact::Arrive { member_id, .. }
            | PresenceFact::Depart { member_id, .. }
            | PresenceFact::Seen { member_id }
            | PresenceFact::QrScanned { member_id }
            | PresenceFact::AlertRaised { member_id } => member_id,
        }
    }
}

/// The fact an event carries, if any.
pub fn fact(body: &EventBody) -> Option<PresenceFact> {
    Some(match body {
        EventBody::Arrive {
            member_id,
            zone,
            visit_id,
        } => PresenceFact::Arrive {
            member_id: member_id.clone(),
            visit_id: visit_id.clone(),
            zone: zone.clone(),
        },
        EventBody::Depart {
            member_id,
            visit_id,
            dwell_s,
            zones,
            zone,
        } => PresenceFact::Depart {
            member_id: member_id.clone(),
            visit_id: visit_id.clone(),
            dwell_s: *dwell_s,
            zones: if zones.is_empty() {
                vec![zone.clone()]
            } else {
                zones.clone()
            },
        },
        EventBody::ZoneChange { member_id, .. }
        | EventBody::Dwell { member_id, .. }
        | EventBody::HeldOut { member_id, .. } => PresenceFact::Seen {
            member_id: member_id.clone(),
        },
        EventBody::QrScanned { member_id, .. } => PresenceFact::QrScanned {
            member_id: member_id.clone(),
        },
        EventBody::AlertRaised { member_id, .. } => PresenceFact::AlertRaised {
            member_id: member_id.clone(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_events_carry_their_member_and_others_carry_nothing() {
        let arrive = EventBody::Arrive {
            member_id: "M1".into(),
            zone: "entrance".into(),
            visit_id: "v1".into(),
        };
        assert_eq!(fact(&arrive).unwrap().member_id(), "M1");
        let depart = EventBody::Depart {
            member_id: "M1".into(),
            zone: "till".into(),
            visit_id: "v1".into(),
            dwell_s: 30,
            zones: vec![],
        };
        assert!(
            matches!(fact(&depart), Some(PresenceFact::Depart { zones, .. }) if zones == ["till"])
        );
        let footfall = EventBody::Footfall {
            interval_s: 60,
            unique_devices: 3,
        };
        assert_eq!(fact(&footfall), None);
    }
}
