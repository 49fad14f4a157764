//! What the store gateway (`instore-agent`) and head office (`instore-sync`) do the same way, so
//! that an operator meets one behaviour in both: a TOML config whose errors name the key and its
//! line (`config`), logs on stderr as text or JSON (`logging`), and Prometheus metrics declared
//! once with their help text (`metrics`), and TLS to an MQTT broker (`tls`). Wire formats live in the protocol crate, not here.

pub mod config;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod tls;
