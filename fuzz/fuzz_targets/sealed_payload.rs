//! Sealed MQTT payloads (`instore_protocol::auth`) as both ends open them: split, verify,
//! decode the message. Whatever the bytes: a result or an error, never a panic, and a payload
//! that verifies under the fuzzer's key is one sealed under it.
#![no_main]

use instore_protocol::auth::{MessageKey, open, seal};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = MessageKey::for_gateway("fuzz-token");
    if let Ok(opened) = open(data) {
        let topic = &instore_protocol::topics::events("g1");
        if opened.verify(&key, topic) {
            // Only a payload sealed under this key verifies: re-sealing gives it back.
            assert_eq!(seal(&key, topic, opened.message()).ok().as_deref(), Some(data));
        }
        let _ = instore_protocol::EventBatch::decode(opened.message());
    }
});
