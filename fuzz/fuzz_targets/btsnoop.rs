//! btsnoop captures (replay source): parse or count as malformed, never panic or overflow. The
//! parser is compiled from the agent's own file, with the advert type it produces.
#![no_main]

#[path = "../../agent/src/sources/advert.rs"]
#[allow(dead_code)]
mod advert;
#[path = "../../agent/src/sources/btsnoop.rs"]
#[allow(dead_code)]
mod btsnoop;

use advert::{AddressType, Advert};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The file form (header + records) and the bare HCI event form the records carry.
    let _ = btsnoop::parse_btsnoop(data);
    let _ = btsnoop::le_adverts(data);
});
