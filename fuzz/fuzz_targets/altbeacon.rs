//! AltBeacon manufacturer data: decodes or errors, never panics.
#![no_main]

#[path = "../../agent/src/identify/altbeacon.rs"]
#[allow(dead_code)]
mod altbeacon;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(b) = altbeacon::decode(data) {
        assert_eq!(data.len(), 24);
        let _ = (b.uuid(), b.major(), b.minor());
    }
});
