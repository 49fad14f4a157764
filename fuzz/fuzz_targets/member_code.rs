//! Signed member codes (ISQ2): parse or error, never panic; a parsed code re-encodes to the
//! same text and its time window check is total.
#![no_main]

use instore_protocol::member_code;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = member_code::base45::decode(text);
    if let Ok(c) = member_code::parse(text) {
        let again = member_code::encode(&c.key_id, c.step, &c.signature);
        assert_eq!(member_code::parse(&again), Ok(c.clone()));
        let _ = c.check_time(i64::from(c.step) * 30_000);
        let _ = c.check_time(i64::MIN);
        let _ = c.check_time(i64::MAX);
    }
});
