//! What the agent's, head office's and the demo's integration tests share, each helper once:
//! loopback ports (`net`), waiting for a condition (`wait`), real binaries as child processes
//! (`process`), Debian's Mosquitto and an embedded rumqttd (`mosquitto`, `rumqttd`), HTTP with a
//! bearer token and Prometheus values (`http`), and the real head office in-process on SQLite or
//! PostgreSQL (`hq`), and Debian's chromium headless through chromedriver (`browser`).
//!
//! Test code: a helper that cannot do its job panics, which fails the test with the reason.
//! It is a dev-dependency only; nothing here ships.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod hq;
pub mod http;
pub mod mosquitto;
pub mod net;
pub mod process;
pub mod rumqttd;
pub mod wait;
