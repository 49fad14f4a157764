//! What the agent's integration test binaries share, each helper once: free ports and waiting
//! (`net`, `wait`), the real `instore-agent` binary as a child process and its CLI (`process`),
//! HTTP with a bearer token and `/metrics` values (`http`), an embedded rumqttd (`broker`), the
//! real head office in-process (`hq`), a small head office serving the member change streams,
//! snapshots and lookups from a log the test controls (`test_hq`) and a BlueZ stand-in on a
//! private bus (`bluez`).
//!
//! Each test file includes it with `mod support;` and uses part of it, hence `dead_code` allowed
//! here. The sync-server and demo crates keep their own copies of the few helpers they share with
//! these (free port, head office start): test support cannot be shared across crates' `tests/`
//! without a published test-support crate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod bluez;
pub mod broker;
pub mod hq;
pub mod http;
pub mod net;
pub mod process;
pub mod sync;
pub mod test_hq;
pub mod wait;
