//! Member NDJSON imports: every line is a member or a reported error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (members, errors) = instore_protocol::parse_ndjson(text);
    assert!(members.len() + errors.len() <= text.lines().count());
});
