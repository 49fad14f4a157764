//! AltBeacon manufacturer data: decodes or errors, never panics; a decoded frame is 24 bytes, or
//! 23 without the reserved byte.
#![no_main]

#[path = "../../agent/src/identify/altbeacon.rs"]
#[allow(dead_code)]
mod altbeacon;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(b) = altbeacon::decode(data) {
        assert!(data.len() == 24 || data.len() == 23);
        assert_eq!(b.reserved.is_some(), data.len() == 24);
        let _ = (b.uuid(), b.major(), b.minor());
    }
});
