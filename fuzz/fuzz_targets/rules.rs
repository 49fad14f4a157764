//! Rules files and campaigns (TOML) as a gateway and head office check them: rules or an error
//! naming the rule, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(rules) = instore_protocol::rules::parse_rules(text, "fuzz")
    {
        for (spec, line) in rules {
            assert!(line >= 1);
            assert!(!spec.name.trim().is_empty());
        }
    }
});
