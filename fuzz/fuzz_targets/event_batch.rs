//! MQTT event batch payloads as head office decodes them: a batch or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = instore_protocol::EventBatch::decode(data) {
        // What decoded re-encodes (head office stores and re-serialises these).
        let _ = serde_json::to_vec(&batch);
    }
});
