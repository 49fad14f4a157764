//! Remote receiver reports (`kind = "mqtt"`, OpenMQTTGateway / Theengs Gateway `BTtoMQTT`
//! JSON): parse or error, never panic. The parser is compiled from the agent's own file.
#![no_main]

#[path = "../../agent/src/sources/advert.rs"]
#[allow(dead_code)]
mod advert;

/// What `report.rs` imports from the agent's `sources` module.
mod sources {
    pub use crate::advert::{AddressType, Advert, parse_address};
}

#[path = "../../agent/src/sources/remote/report.rs"]
#[allow(dead_code)]
mod report;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first line is the topic, the rest the payload.
    let (topic, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"home/r/BTtoMQTT/x"[..], data),
    };
    let topic = String::from_utf8_lossy(topic);
    if let Ok((receiver, advert)) = report::parse(&topic, payload) {
        assert!(!receiver.is_empty());
        assert!((-127..=20).contains(&advert.rssi));
    }
});
