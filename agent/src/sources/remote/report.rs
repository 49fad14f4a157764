//! What a remote receiver reports: OpenMQTTGateway's and Theengs Gateway's `BTtoMQTT` JSON, one
//! advert per message on `…/<receiver>/BTtoMQTT/<address>`. Pure: topic and payload in, the
//! receiver and an [`Advert`] out, or a typed error.
//!
//! Read: `id` (the address, `AA:BB:CC:DD:EE:FF`), `rssi`, `mac_type` (0 public, 1 random;
//! absent: public), `manufacturerdata` (hex: the company id little-endian, then the data, as
//! on air), `servicedata` with `servicedatauuid` (hex; `feaa`, `0xfeaa` or the 128-bit form).
//! Everything a receiver decoded itself (`brand`, `model`, `uuid`, …) is ignored: the agent
//! decodes the raw data with its own decoders, so a member is recognised the same way whichever
//! receiver heard them. A receiver's clock is never read: a report is timed when it arrives.

use crate::sources::{AddressType, Advert, parse_address};

/// Largest report read: a BLE advert is at most 31 bytes (62 hex digits) per field.
pub const MAX_REPORT_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report of {0} bytes, more than {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    #[error("topic names no receiver (expected …/<receiver>/BTtoMQTT/…)")]
    Topic,
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("`id` is not an AA:BB:CC:DD:EE:FF address")]
    Address,
    #[error("`rssi` missing or not a number")]
    Rssi,
    #[error("`{0}` is not hex")]
    Hex(&'static str),
    #[error("`servicedatauuid` is not a 16-bit UUID")]
    Uuid,
}

impl ReportError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::TooLarge(_) => "too_large",
            ReportError::Topic => "topic",
            ReportError::Json(_) => "json",
            ReportError::Address => "address",
            ReportError::Rssi => "rssi",
            ReportError::Hex(_) | ReportError::Uuid => "data",
        }
    }
}

/// The receiver a topic is from: the level before `BTtoMQTT`.
pub fn receiver_of(topic: &str) -> Option<&str> {
    let mut previous = None;
    for level in topic.split('/') {
        if level == "BTtoMQTT" {
            return previous.filter(|p: &&str| !p.is_empty());
        }
        previous = Some(level);
    }
    None
}

fn hex_field(v: &serde_json::Value, key: &'static str) -> Result<Option<Vec<u8>>, ReportError> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            hex::decode(s).map(Some).map_err(|_| ReportError::Hex(key))
        }
        Some(_) => Err(ReportError::Hex(key)),
    }
}

fn uuid16(s: &str) -> Option<u16> {
    let s = s.trim_start_matches("0x").trim_start_matches("0X");
    let short = match s.len() {
        4 => s,
        // 0000xxxx-0000-1000-8000-00805f9b34fb
        36 if s[8..].eq_ignore_ascii_case("-0000-1000-8000-00805f9b34fb")
            && s.starts_with("0000") =>
        {
            &s[4..8]
        }
        _ => return None,
    };
    u16::from_str_radix(short, 16).ok()
}

/// The receiver and advert of one report.
pub fn parse(topic: &str, payload: &[u8]) -> Result<(String, Advert), ReportError> {
    if payload.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge(payload.len()));
    }
    let receiver = receiver_of(topic).ok_or(ReportError::Topic)?;
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| ReportError::Json(e.to_string()))?;
    if !v.is_object() {
        return Err(ReportError::Json("not an object".into()));
    }
    let address = v
        .get("id")
        .and_then(|a| a.as_str())
        .and_then(parse_address)
        .ok_or(ReportError::Address)?;
    let rssi = v
        .get("rssi")
        .and_then(serde_json::Value::as_i64)
        .ok_or(ReportError::Rssi)?
        .clamp(-127, 20) as i16;
    let address_type = match v.get("mac_type").and_then(serde_json::Value::as_i64) {
        Some(1) => AddressType::Random,
        _ => AddressType::Public,
    };
    let mut manufacturer_data = Vec::new();
    if let Some(m) = hex_field(&v, "manufacturerdata")? {
        if m.len() < 2 {
            return Err(ReportError::Hex("manufacturerdata"));
        }
        manufacturer_data.push((u16::from_le_bytes([m[0], m[1]]), m[2..].to_vec()));
    }
    let mut service_data = Vec::new();
    if let Some(d) = hex_field(&v, "servicedata")? {
        let uuid = v
            .get("servicedatauuid")
            .and_then(|u| u.as_str())
            .and_then(uuid16)
            .ok_or(ReportError::Uuid)?;
        service_data.push((uuid, d));
    }
    Ok((
        receiver.to_string(),
        Advert {
            address,
            address_type,
            rssi,
            manufacturer_data,
            service_data,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // As Theengs Gateway 1.x publishes an iBeacon with advertisement data publishing on (its
    // decoder's own fields kept alongside the raw ones).
    const THEENGS_IBEACON: &str = r#"{"name":"","id":"C0:FF:EE:00:00:01","rssi":-63,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","type":"BCON","mfid":"4c00","uuid":"f7826da64fa24e988024bc5b71e0893e","major":1,"minor":2,"txpower":-59,"manufacturerdata":"4c000215f7826da64fa24e988024bc5b71e0893e00010002c5"}"#;
    // OpenMQTTGateway with an Eddystone-UID frame.
    const OMG_EDDYSTONE: &str = r#"{"id":"D1:22:33:44:55:66","mac_type":1,"rssi":-80,"servicedatauuid":"0xfeaa","servicedata":"00e2edd1ebeac04e5defa0170000000004d20000"}"#;

    #[test]
    fn theengs_and_openmqttgateway_reports_become_adverts() {
        let (receiver, a) = parse(
            "home/entrance-esp/BTtoMQTT/C0FFEE000001",
            THEENGS_IBEACON.as_bytes(),
        )
        .unwrap();
        assert_eq!(receiver, "entrance-esp");
        assert_eq!(a.address, [0xC0, 0xFF, 0xEE, 0, 0, 1]);
        assert_eq!(a.rssi, -63);
        assert_eq!(a.address_type, AddressType::Public);
        assert_eq!(a.manufacturer_data[0].0, 0x004C);
        assert_eq!(&a.manufacturer_data[0].1[..2], &[0x02, 0x15]);
        let (_, e) = parse(
            "home/fitting/BTtoMQTT/D12233445566",
            OMG_EDDYSTONE.as_bytes(),
        )
        .unwrap();
        assert_eq!(e.address_type, AddressType::Random);
        assert_eq!(e.service_data[0].0, 0xFEAA);
        assert_eq!(e.service_data[0].1[0], 0x00);
        assert_eq!(uuid16("0000feaa-0000-1000-8000-00805f9b34fb"), Some(0xFEAA));
        assert_eq!(uuid16("feaa"), Some(0xFEAA));
    }

    #[test]
    fn bad_reports_get_typed_errors() {
        let t = "home/r1/BTtoMQTT/x";
        assert_eq!(parse("home/r1/x", b"{}"), Err(ReportError::Topic));
        assert_eq!(parse("BTtoMQTT/x", b"{}"), Err(ReportError::Topic));
        assert!(matches!(parse(t, b"not json"), Err(ReportError::Json(_))));
        assert!(matches!(parse(t, b"[1]"), Err(ReportError::Json(_))));
        assert_eq!(
            parse(t, br#"{"id":"nope","rssi":-1}"#),
            Err(ReportError::Address)
        );
        assert_eq!(
            parse(t, br#"{"id":"C0:FF:EE:00:00:01"}"#),
            Err(ReportError::Rssi)
        );
        assert_eq!(
            parse(
                t,
                br#"{"id":"C0:FF:EE:00:00:01","rssi":-1,"manufacturerdata":"zz"}"#
            ),
            Err(ReportError::Hex("manufacturerdata"))
        );
        assert_eq!(
            parse(
                t,
                br#"{"id":"C0:FF:EE:00:00:01","rssi":-1,"servicedata":"00"}"#
            ),
            Err(ReportError::Uuid)
        );
        assert_eq!(
            parse(t, &vec![b' '; MAX_REPORT_BYTES + 1]),
            Err(ReportError::TooLarge(MAX_REPORT_BYTES + 1))
        );
        // A wild RSSI is clamped, not trusted.
        let (_, a) = parse(t, br#"{"id":"C0:FF:EE:00:00:01","rssi":-99999}"#).unwrap();
        assert_eq!(a.rssi, -127);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_reports_parse_or_error_without_panicking(
            topic in "\\PC{0,40}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let _ = parse(&topic, &payload);
        }
    }
}
