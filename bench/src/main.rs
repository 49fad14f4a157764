//! `instore-bench`: benchmarks that print figures. Never run as tests (machines are noisy);
//! BENCHMARKS.md records what they printed and on what.
//!
//! `cargo run --release -p instore-bench -- hot-path [--members N] [--adverts N] [--member-share F] [--strangers N]`
//! measures the agent's per-advert path — decode, match against the member index, presence — on
//! one core, with the engine's real `Core`.
//!
//! `cargo run --release -p instore-bench -- cache [--members N]` measures the member cache at a
//! million members: import and snapshot apply time and peak memory, delta apply, the running
//! agent's memory, stranger rejection and record reads (see `cache.rs`).
//!
//! `cargo run --release -p instore-bench -- uplink [--drain-events N] [--ingest-events N]
//! [--steady-s S]` measures head office's ingest rate, the drain of a buffered outbox, and fsyncs
//! per 1,000 events at steady load (see `uplink.rs`).
//!
//! `cargo run --release -p instore-bench -- ble [--rates 500,2000,..] [--seconds S] [--btleplug]`
//! measures the end-to-end ceiling of the BLE path on a BlueZ stand-in and the agent's CPU share
//! per rate (see `ble.rs`).
//!
//! `cargo run --release -p instore-bench -- relay [--batches N] [--batch N]` measures what
//! forwarded sightings cost the store's hub (see `relay.rs`).
//!
//! `cargo run --release -p instore-bench -- data [--members N] [--purchases N] [--backend B]`
//! measures head office's purchase import rows/s, a full recompute of a chain-sized base, and the
//! latency from a purchase to the store's change stream, on SQLite and PostgreSQL (see `data.rs`).
//!
//! `cargo run --release -p instore-bench -- scale-out [--events N] [--gateways N] [--instances 1,2]`
//! measures head-office ingest with one and with two instances sharing Mosquitto and PostgreSQL,
//! and their ratio (see `scaleout.rs`).
//!
//! `cargo run --release -p instore-bench -- peers [--adverts N] [--core C]` runs the agent's
//! advert decoders and TheengsDecoder (from PyPI, in a venv the command makes) on the same
//! stream pinned to one core, and prints their ratio (see `peers.rs`).
//!
//! `cargo run --release -p instore-bench -- instructions [--members N] [--adverts N] [--events N]`
//! counts instructions per advert on the hot path and per event in head-office ingest under
//! valgrind's callgrind, figures that repeat on a noisy machine (see `instructions.rs`).
//!
//! `cargo run --release -p instore-bench -- latency [--arrivals N]` measures an advert entering the
//! agent to its clerk alert arriving at an SSE client on loopback, p50/p99 (see `latency.rs`).
//!
//! `cargo run --release -p instore-bench -- sizes [--cross aarch64,armv7]` builds the release
//! binaries and prints their stripped sizes (see `sizes.rs`).
//!
//! `cargo run --release -p instore-bench -- all [--quick] [--only S,..] [--markdown BENCHMARKS.md]`
//! runs every one of them, each in its own process, and writes the figures with the machine, load
//! and time as JSON and as a table (see `all.rs`).

mod all;
#[cfg(target_os = "linux")]
mod ble;
mod cache;
mod data;
mod hot_path;
mod instructions;
mod latency;
mod marker;
mod peers;
mod relay;
mod scaleout;
mod sizes;
mod uplink;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "instore-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode + match + presence throughput of the agent's hot path.
    HotPath {
        #[arg(long, default_value_t = 1_000_000)]
        members: u32,
        #[arg(long, default_value_t = 2_000_000)]
        adverts: usize,
        /// Share of adverts sent by members (the rest are strangers' phones).
        #[arg(long, default_value_t = 0.1)]
        member_share: f64,
        /// Distinct strangers' devices the other adverts come from.
        #[arg(long, default_value_t = 5_000)]
        strangers: u64,
        /// Members whose adverts are heard (spread over the whole member set).
        #[arg(long, default_value_t = 2_000)]
        present: u32,
    },
    /// The member cache at scale: import, snapshot apply, delta apply, agent memory, lookups.
    Cache {
        #[arg(long, default_value_t = 1_000_000)]
        members: u32,
    },
    /// (internal) one measured step of `cache` in a process of its own.
    #[command(hide = true)]
    CacheChild { args: Vec<String> },
    /// Head-office ingest rate, drain of a buffered outbox, fsyncs per 1,000 events.
    Uplink(uplink::UplinkArgs),
    /// Head-office ingest with one and with two instances on Mosquitto + PostgreSQL (ratio).
    ScaleOut(scaleout::ScaleOutArgs),
    /// Head office's Data: purchase import rows/s, full recompute of a chain, purchase -> store.
    Data(data::DataArgs),
    /// Instructions per advert (hot path) and per event (ingest) under valgrind's callgrind.
    Instructions(instructions::InstructionsArgs),
    /// The agent's decoders and TheengsDecoder (PyPI, in a venv) on one stream, one core.
    Peers(peers::PeersArgs),
    /// Advert into the agent -> alert at an SSE client on loopback: p50, p99.
    Latency {
        #[arg(long, default_value_t = 2000)]
        arrivals: usize,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// The advert enters a receiver gateway, which forwards it to the hub over loopback
        /// HTTP (`[hub]`), instead of the hub's own source.
        #[arg(long)]
        via_receiver: bool,
    },
    /// Release binaries' sizes, stripped, for the host and the gateways.
    Sizes(sizes::SizesArgs),
    /// What forwarded sightings cost the store's hub: sightings/s, bytes each.
    Relay(relay::RelayArgs),
    /// Every benchmark, one process each: a table on stdout, the run as JSON.
    All(all::AllArgs),
    /// End-to-end ceiling of the BLE path on a BlueZ stand-in; the agent's CPU share per rate.
    #[cfg(target_os = "linux")]
    Ble(ble::BleArgs),
    /// (internal) the agent as the `ble` benchmark's child process.
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    BleAgent {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// (internal) btleplug's event path as the `ble` benchmark's child process.
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    BleBtleplug,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::HotPath {
            members,
            adverts,
            member_share,
            strangers,
            present,
        } => hot_path::run(members, adverts, member_share, strangers, present),
        Command::Cache { members } => cache::run(members),
        Command::CacheChild { args } => cache::child_main(&args),
        Command::Uplink(args) => uplink::run(args),
        Command::Data(args) => data::run(args),
        Command::ScaleOut(args) => scaleout::run(args),
        Command::Peers(args) => peers::run(args),
        Command::Instructions(args) => instructions::run(args),
        Command::Sizes(args) => sizes::run(args),
        Command::Relay(args) => relay::run(args),
        Command::All(args) => all::run(args),
        Command::Latency {
            arrivals,
            warmup,
            via_receiver,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(latency::run(arrivals, warmup, via_receiver)),
        #[cfg(target_os = "linux")]
        Command::Ble(args) => ble::run(args),
        #[cfg(target_os = "linux")]
        Command::BleAgent { config } => ble::agent_child(&config),
        #[cfg(target_os = "linux")]
        Command::BleBtleplug => ble::btleplug_child(),
    }
}
