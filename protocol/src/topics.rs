//! MQTT topic names. No other code builds a topic string.
//!
//! Layout: `instore/v1/gw/{gateway}/...` for per-gateway traffic and `instore/v1/store/{store}/...`
//! for what head office sends to every gateway of a store. Gateway and store ids are restricted to
//! `[A-Za-z0-9_-]` (see [`valid_id`]) so they can never inject `/`, `+` or `#` into a topic.

const PREFIX: &str = "instore/v1";

/// Gateway → head office: event batches (QoS 1).
pub fn events(gateway_id: &str) -> String {
    format!("{PREFIX}/gw/{gateway_id}/events")
}

/// Head office → gateway: acknowledgements of committed events (QoS 1).
pub fn ack(gateway_id: &str) -> String {
    format!("{PREFIX}/gw/{gateway_id}/ack")
}

/// Gateway status, retained; the broker publishes the gateway's last will here when it drops.
pub fn status(gateway_id: &str) -> String {
    format!("{PREFIX}/gw/{gateway_id}/status")
}

/// Head office → all gateways of a store: the current member-set version (retained).
pub fn members(store_id: &str) -> String {
    format!("{PREFIX}/store/{store_id}/members")
}

/// Head office's subscription filter for all gateways' event batches.
pub const ALL_EVENTS: &str = "instore/v1/gw/+/events";
/// Head office's subscription filter for all gateways' status.
pub const ALL_STATUS: &str = "instore/v1/gw/+/status";

/// Which per-gateway topic a message arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayTopic {
    Events(String),
    Ack(String),
    Status(String),
}

/// Parses a per-gateway topic back into its kind and gateway id.
pub fn parse_gateway_topic(topic: &str) -> Option<GatewayTopic> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/gw/")?;
    let (gw, leaf) = rest.split_once('/')?;
    if !valid_id(gw) {
        return None;
    }
    let gw = gw.to_string();
    match leaf {
        "events" => Some(GatewayTopic::Events(gw)),
        "ack" => Some(GatewayTopic::Ack(gw)),
        "status" => Some(GatewayTopic::Status(gw)),
        _ => None,
    }
}

/// A store or gateway id: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_the_parser() {
        assert_eq!(
            parse_gateway_topic(&events("gw-1")),
            Some(GatewayTopic::Events("gw-1".into()))
        );
        assert_eq!(
            parse_gateway_topic(&ack("gw_2")),
            Some(GatewayTopic::Ack("gw_2".into()))
        );
        assert_eq!(
            parse_gateway_topic(&status("g")),
            Some(GatewayTopic::Status("g".into()))
        );
    }

    #[test]
    fn foreign_or_malformed_topics_are_not_parsed() {
        assert_eq!(parse_gateway_topic("instore/v1/gw/+/events"), None);
        assert_eq!(parse_gateway_topic("instore/v1/gw/a/b/events"), None);
        assert_eq!(parse_gateway_topic("other/v1/gw/a/events"), None);
        assert_eq!(parse_gateway_topic("instore/v1/gw/a/unknown"), None);
    }

    #[test]
    fn ids_cannot_carry_mqtt_wildcards_or_separators() {
        assert!(valid_id("store-42_a"));
        for bad in ["", "a/b", "a+", "#", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?} must be refused");
        }
    }
}
