//! instore-agent: the store gateway daemon.
//!
//! The modules follow the data flow (see ARCHITECTURE.md):
//! `sources` → `identify` → `presence` → `react` → (`outbox` → `sync`) and `alerts` → `web`,
//! with `cache` feeding `identify` and `sync` feeding `cache`. `engine` is the one task that owns
//! identify, presence and react state; `runtime` wires the tasks together.

pub mod alerts;
pub mod cache;
pub mod config;
pub mod engine;
pub mod identify;
pub mod metrics;
pub mod outbox;
pub mod pairing;
pub mod presence;
pub mod react;
pub mod relay;
pub mod runtime;
pub mod service;
pub mod sources;
pub mod sync;
pub mod web;

/// Milliseconds since the Unix epoch, for event timestamps. Durations and timers use tokio's
/// clock instead, which tests can pause.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
