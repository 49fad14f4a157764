//! What the agent's integration test binaries share. The helpers every crate's tests use —
//! free ports and waiting (`net`, `wait`), an embedded rumqttd (`broker`), HTTP with a bearer
//! token and `/metrics` values (`http`), the real head office in-process (`hq`) — come from the
//! `instore-testkit` crate; the agent's own are here: members with an iBeacon and their phone
//! played into an agent (`beacon`), the real `instore-agent` binary as a child
//! process and its CLI (`process`), the uplink task (`sync`), a small head office serving the
//! member change streams, snapshots and lookups from a log the test controls (`test_hq`), pairing
//! requests (`http`), the alert stream as a tablet reads it (`sse`), member devices and QR scanners (`scanner`) and a BlueZ stand-in on a private bus (`bluez`); headless chromium (`browser`) is
//! the testkit's.
//!
//! Each test file includes it with `mod support;` and uses part of it, hence `dead_code` allowed
//! here (and `unused_imports`, for the re-exports a test file does not use).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use instore_testkit::{browser, net, rumqttd as broker, wait};

pub mod beacon;
pub mod bluez;
pub mod hq;
pub mod http;
pub mod process;
pub mod scanner;
pub mod sse;
pub mod sync;
pub mod test_hq;
