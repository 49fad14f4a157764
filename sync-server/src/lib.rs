//! instore-sync: head office. Ingests gateway events exactly once, imports members and
//! purchases, computes what the stores act on (pyramid level, tier, stage, groups, expected
//! next visit), and fans each member out to the stores that hold them as ordered change streams.
//!
//! The modules follow the flow: `broker` (embedded rumqttd, optional) → `ingest` (gateway
//! events over MQTT with their visits; member and purchase imports) → `store` (SQLite or
//! PostgreSQL, the only owner of the database) → `compute` (the Data: a pure core and its
//! scheduling shell) → `fanout` (which stores hold whom, change streams, snapshots, notices) →
//! `http` (API and HQ page) and `dashboard` (the views for the people who run the chain). `cluster` makes several instances one head office (shared
//! subscriptions, a lease for once-only work); `registry` (gateways), `devices` (member device
//! keys) and `privacy` (erasure, retention) are the rest. `runtime` wires them; `config` reads the TOML.
//!
//! Library use (the demo, tests): build or load an [`HqConfig`], then
//! [`start`] it to learn the bound addresses ([`HeadOffice::http_addr`],
//! [`HeadOffice::mqtt_url`]) and [`HeadOffice::wait`] for it, or simply [`run`] it.

pub mod broker;
pub mod campaigns;
pub mod client;
pub mod cluster;
pub mod compute;
pub mod config;
pub mod dashboard;
pub mod devices;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod privacy;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod store;

pub use config::{ApiConfig, AuthConfig, BrokerConfig, ConfigError, HqConfig, HttpConfig};
pub use runtime::{HeadOffice, run, start};

/// Why head office could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot listen on {addr} for HTTP (is the port taken?): {source}")]
    HttpBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("{0} stopped unexpectedly")]
    Stopped(&'static str),
    #[error("{0}")]
    Task(String),
}

/// Milliseconds since the Unix epoch, for `received_at_ms` and `last_seen_ms`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
