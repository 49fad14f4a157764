//! iBeacon manufacturer data: decodes or errors, never panics; a decoded frame is 23 bytes.
#![no_main]

// The agent's decoder source itself, compiled here without the agent's heavy dependencies.
#[path = "../../agent/src/identify/ibeacon.rs"]
#[allow(dead_code)]
mod ibeacon;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(b) = ibeacon::decode(data) {
        assert_eq!(data.len(), 23);
        let _ = b.key();
    }
});
