//! iBeacon manufacturer data: decodes or errors, never panics; a decoded frame is at least 23
//! bytes and decodes as its first 23 do.
#![no_main]

// The agent's decoder source itself, compiled here without the agent's heavy dependencies.
#[path = "../../agent/src/identify/ibeacon.rs"]
#[allow(dead_code)]
mod ibeacon;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(b) = ibeacon::decode(data) {
        assert!(data.len() >= 23);
        assert_eq!(ibeacon::decode(&data[..23]), Ok(b));
        let _ = b.key();
    }
});
