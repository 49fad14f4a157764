//! Forwarded sightings (`POST /api/relay/sightings`): a batch from the store LAN opens, is
//! checked and yields local sightings, or errors, never panics. Inputs are sealed under the
//! fuzzer's key half the time, so the JSON behind the seal is explored too. The code is the
//! agent's own files.
#![no_main]

#[path = "../../agent/src/sources/advert.rs"]
#[allow(dead_code)]
mod advert;
pub use advert::{AddressType, Advert, parse_address};

#[path = "../../agent/src/sources/advert_log.rs"]
#[allow(dead_code)]
mod advert_log;

/// What `wire.rs` imports from the agent's `sources` module.
mod sources {
    pub use crate::advert::Advert;
    pub mod record {
        pub use crate::advert_log::AdvertRecord;
    }
}

/// The agent's wall clock, as `wire.rs` reads it.
fn now_ms() -> i64 {
    1_700_000_000_000
}

#[path = "../../agent/src/relay/wire.rs"]
#[allow(dead_code)]
mod wire;

use instore_protocol::auth::{self, MessageKey};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = MessageKey::for_store_lan("the fuzzer's store secret", "s1");
    let (seal, body) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => (false, data),
    };
    let payload = if seal {
        auth::seal(&key, wire::SIGHTINGS_ROUTE, body).unwrap_or_else(|_| body.to_vec())
    } else {
        body.to_vec()
    };
    if let Ok(batch) = wire::open_batch(&key, &payload, "s1", now_ms() as u64) {
        assert!(batch.sightings.len() <= wire::MAX_SIGHTINGS);
        for s in &batch.sightings {
            if let Some((zone, age, _)) = wire::local_sighting(batch.mono_ms, s) {
                assert!(!zone.is_empty() && age <= wire::MAX_AGE_MS);
            }
        }
    }
});
