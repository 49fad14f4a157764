//! `instore-provision`: the fleet tool a field technician or head-office IT runs to enrol gateways.
//!
//! In: command-line arguments and head office's gateway secret file. Out: a new gateway secret
//! (`secret`), or a complete agent config for one gateway with its token minted (`gateway`).
//! Files it writes hold secrets, so they are created with mode 0600 and never overwritten without
//! `--force`. It talks to no network and no running service.
//!
//! Exit codes: 0 success; 1 bad input or I/O error (the message says which); 2 bad usage (clap).

mod agent_config;
mod files;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rand::{TryRngCore, rngs::OsRng};

use crate::agent_config::GatewayEnrolment;

/// Bytes of randomness in a gateway secret and in an admin token: 256 bits, beyond guessing.
const SECRET_BYTES: usize = 32;

#[derive(Parser)]
#[command(
    name = "instore-provision",
    version,
    about = "instore fleet tool: gateway enrolment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a gateway secret (64 hex characters) for head office's `[auth] gateway_secret`.
    Secret {
        /// Write it to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Enrol a gateway: mint its token and write its agent config (mode 0600).
    Gateway(GatewayArgs),
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// Store id (1-64 characters of A-Z a-z 0-9 _ -).
    #[arg(long)]
    store: String,
    /// Gateway id, unique in the chain (1-64 characters of A-Z a-z 0-9 _ -).
    #[arg(long)]
    gateway: String,
    /// Head office's gateway secret, as written by `instore-provision secret --out`.
    #[arg(
        long,
        required_unless_present = "hq_data_dir",
        conflicts_with = "hq_data_dir"
    )]
    secret_file: Option<PathBuf>,
    /// Head office's `data_dir`: read the gateway secret head office generated there on first
    /// start (`gateway_secret`), for a head office whose config has no `[auth] gateway_secret`.
    #[arg(long)]
    hq_data_dir: Option<PathBuf>,
    /// MQTT broker the gateway syncs through: mqtt://host:port or mqtts://host:port.
    #[arg(long)]
    broker: String,
    /// Head office HTTP base URL: http://... or https://...
    #[arg(long)]
    hq_url: String,
    /// Zone the gateway's BLE sightings are placed in.
    #[arg(long, default_value = "entrance")]
    zone: String,
    /// BlueZ adapter the gateway scans with.
    #[arg(long, default_value = "hci0")]
    adapter: String,
    /// Where to write the agent config.
    #[arg(long, default_value = "agent.toml")]
    out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Secret { out, force } => secret(out, force),
        Command::Gateway(args) => gateway(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("instore-provision: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// 32 bytes from the operating system's generator, as lowercase hex.
fn random_hex() -> Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .context("reading the operating system's random number generator")?;
    Ok(hex::encode(bytes))
}

fn secret(out: Option<PathBuf>, force: bool) -> Result<()> {
    let secret = random_hex()?;
    match out {
        // Exactly the 64 characters, no newline: the file's content is the secret, byte for byte.
        Some(path) => {
            files::write_private(&path, secret.as_bytes(), force)?;
            eprintln!(
                "wrote a new gateway secret to {} (mode 0600); put it in head office's \
                 [auth] gateway_secret",
                path.display()
            );
        }
        None => println!("{secret}"),
    }
    Ok(())
}

/// File name head office gives its generated gateway secret in its `data_dir` (kept equal to
/// `instore_sync::secrets::GATEWAY_SECRET_FILE`; the provisioning tool does not link head office).
const HQ_SECRET_FILE: &str = "gateway_secret";

fn gateway(args: GatewayArgs) -> Result<()> {
    let secret_file = match (&args.secret_file, &args.hq_data_dir) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.join(HQ_SECRET_FILE),
        (None, None) => bail!("pass --secret-file FILE or --hq-data-dir DIR"),
    };
    let secret = files::read_secret(&secret_file)?;
    check_secret_len(&secret)?;
    let enrolment = GatewayEnrolment {
        store_id: args.store,
        gateway_id: args.gateway,
        broker: args.broker,
        hq_url: args.hq_url,
        zone: args.zone,
        adapter: args.adapter,
    };
    let config = enrolment.agent_config(&secret, random_hex()?)?;
    let text = config.to_toml()?;
    files::write_private(&args.out, text.as_bytes(), args.force)?;
    eprintln!(
        "wrote the agent config of gateway {} in store {} to {} (mode 0600; it holds the \
         gateway token and the admin token)",
        enrolment.gateway_id,
        enrolment.store_id,
        args.out.display()
    );
    Ok(())
}

/// Refuses a secret too short to protect gateway tokens. Head office refuses the same
/// (`instore_sync::config::MIN_SECRET_LEN`); checking here too means a technician learns it at
/// enrolment rather than from gateways that cannot authenticate.
fn check_secret_len(secret: &str) -> Result<()> {
    const MIN_SECRET_LEN: usize = 16;
    if secret.len() < MIN_SECRET_LEN {
        bail!(
            "the gateway secret is {} characters; head office needs at least {MIN_SECRET_LEN} \
             (generate one with `instore-provision secret --out FILE`)",
            secret.len()
        );
    }
    Ok(())
}
