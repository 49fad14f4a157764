//! Eddystone service data: decodes or errors, never panics.
#![no_main]

#[path = "../../agent/src/identify/eddystone.rs"]
#[allow(dead_code)]
mod eddystone;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(eddystone::Eddystone::Uid { .. }) = eddystone::decode(data) {
        assert!(data.len() == 18 || data.len() == 20);
    }
});
