//! Member QR payloads: parse or error, never panic; a parsed payload verifies or errors.
#![no_main]

use instore_protocol::qr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = qr::parse(text) {
        let _ = p.day();
        let _ = p.verify(&[0u8; 32], i64::from(p.step) * 30_000);
    }
});
