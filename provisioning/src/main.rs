//! `instore-provision`: the fleet tool a field technician or head-office IT runs to enrol gateways.
//!
//! In: command-line arguments, and head office's gateway secret file or its HTTP API. Out: a new
//! gateway secret (`secret`); a complete agent config for one gateway, with its token minted from
//! the secret (`gateway`, for whoever holds the secret) or handed out by head office for a
//! one-time code (`enrol`, for a technician, who never holds the secret); codes, and the registry
//! listed, revoked and rotated (`enrolment`, `gateways`, with the admin token); a member device
//! key registered at head office and its current signed code (`member-device`, `member-code`). Files it writes
//! hold secrets, so they are created with mode 0600 and never overwritten without `--force`.
//! A plaintext broker or head-office URL to another machine is refused unless `--insecure`.
//!
//! Exit codes: 0 success; 1 bad input or I/O error (the message says which); 2 bad usage (clap).

mod agent_config;
mod files;
mod hq;
mod member;
mod mosquitto;
mod png;

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
    /// Ask head office for a one-time enrolment code for one gateway (admin token).
    Enrolment(EnrolmentArgs),
    /// Enrol this gateway with a code from `enrolment`: head office hands out its token; write
    /// its agent config (mode 0600).
    Enrol(EnrolArgs),
    /// Head office's gateway registry (admin token): list, revoke, rotate.
    Gateways(GatewaysArgs),
    /// Mosquitto files for production: a password per gateway (its token), ACLs per gateway
    /// and for head office, anonymous clients off.
    Mosquitto(MosquittoArgs),
    /// Make a member device key (as a phone would), register its public key at head office
    /// (admin token) and write the key file (mode 0600).
    MemberDevice(MemberDeviceArgs),
    /// Print a device's current signed member code; `--svg`/`--png` also render it as a QR code.
    MemberCode(MemberCodeArgs),
}

#[derive(clap::Args)]
struct MemberDeviceArgs {
    #[arg(long)]
    member: String,
    #[arg(long)]
    hq_url: String,
    #[arg(long, env = "INSTORE_HQ_TOKEN")]
    token: String,
    /// Key algorithm: ES256 (P-256, what browsers make) or Ed25519.
    #[arg(long, default_value = "ES256", value_parser = parse_alg)]
    alg: instore_protocol::member_code::Algorithm,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    /// Allow a plaintext head-office URL to another machine.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::Args)]
struct MemberCodeArgs {
    /// The key file `member-device` wrote.
    #[arg(long)]
    key: PathBuf,
    /// Also write the QR code as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Also write the QR code as PNG here.
    #[arg(long)]
    png: Option<PathBuf>,
    /// The code of this Unix time in milliseconds instead of now (field checks of clocks).
    #[arg(long)]
    at_ms: Option<i64>,
}

fn parse_alg(s: &str) -> Result<instore_protocol::member_code::Algorithm, String> {
    instore_protocol::member_code::Algorithm::parse(s)
        .ok_or_else(|| format!("{s:?}: expected ES256 or Ed25519"))
}

#[derive(clap::Args)]
struct MosquittoArgs {
    /// The gateways: `store,gateway[,generation]` per line (`#` comments). Generation 0 for
    /// gateways enrolled with the secret, the registry's (`gateways list`) for the others.
    #[arg(long)]
    gateways: PathBuf,
    /// Head office's gateway secret file.
    #[arg(
        long,
        required_unless_present = "hq_data_dir",
        conflicts_with = "hq_data_dir"
    )]
    secret_file: Option<PathBuf>,
    /// Head office's `data_dir`, to read the secret it generated there.
    #[arg(long)]
    hq_data_dir: Option<PathBuf>,
    /// Head office's MQTT user (its `[broker] username`).
    #[arg(long, default_value = "instore-sync")]
    hq_user: String,
    /// Where to write `passwd`, `acl`, `instore.conf` and `hq_password` (head office's
    /// `[broker] password`, generated once and reused when the files are written again).
    #[arg(long)]
    out_dir: PathBuf,
    /// Replace existing `passwd`, `acl` and `instore.conf`.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct EnrolmentArgs {
    /// Head office HTTP base URL.
    #[arg(long)]
    hq_url: String,
    /// Head office's admin token (`[api] token`).
    #[arg(long, env = "INSTORE_HQ_TOKEN")]
    token: String,
    #[arg(long)]
    store: String,
    #[arg(long)]
    gateway: String,
    /// How long the code stays valid, in hours (at most a week).
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// Allow a plaintext head-office URL to another machine.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::Args)]
struct EnrolArgs {
    /// Head office HTTP base URL: http://... or https://...
    #[arg(long)]
    hq_url: String,
    /// The one-time code from `instore-provision enrolment` (dashes and case do not matter).
    #[arg(long)]
    code: String,
    /// MQTT broker the gateway syncs through: mqtt://host:port or mqtts://host:port.
    #[arg(long)]
    broker: String,
    #[arg(long, default_value = "entrance")]
    zone: String,
    #[arg(long, default_value = "hci0")]
    adapter: String,
    #[arg(long, default_value = "agent.toml")]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    /// Allow plaintext broker and head-office URLs to another machine.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::Args)]
struct GatewaysArgs {
    #[arg(long)]
    hq_url: String,
    #[arg(long, env = "INSTORE_HQ_TOKEN")]
    token: String,
    #[arg(long)]
    insecure: bool,
    #[command(subcommand)]
    action: GatewaysAction,
}

#[derive(Subcommand)]
enum GatewaysAction {
    /// Every registered gateway: id, store, generation, enrolled, revoked.
    List,
    /// Refuse the gateway from now on, on HTTP and MQTT.
    Revoke { gateway: String },
    /// Void the gateway's token and print its next one (to install on the gateway).
    Rotate { gateway: String },
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
    /// Allow plaintext broker and head-office URLs to another machine.
    #[arg(long)]
    insecure: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Secret { out, force } => secret(out, force),
        Command::Gateway(args) => gateway(args),
        Command::Enrolment(args) => enrolment(args),
        Command::Enrol(args) => enrol(args),
        Command::Gateways(args) => gateways(args),
        Command::Mosquitto(args) => mosquitto_files(args),
        Command::MemberDevice(args) => member_device(args),
        Command::MemberCode(args) => member_code(args),
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
    hq::check_transport("broker", &args.broker, args.insecure)?;
    hq::check_transport("head-office URL", &args.hq_url, args.insecure)?;
    let secret = fleet_secret(args.secret_file.as_deref(), args.hq_data_dir.as_deref())?;
    let enrolment = GatewayEnrolment {
        store_id: args.store,
        gateway_id: args.gateway,
        broker: args.broker,
        hq_url: args.hq_url,
        zone: args.zone,
        adapter: args.adapter,
    };
    enrolment.check()?;
    // The ids were checked, so `None` cannot happen; stay total rather than unwrap.
    let token = instore_protocol::token::gateway_token(
        secret.as_bytes(),
        &enrolment.store_id,
        &enrolment.gateway_id,
    )
    .context("minting the gateway token")?;
    let config = enrolment.agent_config(token, random_hex()?)?;
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

fn enrolment(args: EnrolmentArgs) -> Result<()> {
    hq::check_transport("head-office URL", &args.hq_url, args.insecure)?;
    let issued = hq::issue_code(
        &args.hq_url,
        &args.token,
        &args.store,
        &args.gateway,
        args.hours.saturating_mul(3600),
    )?;
    let code = issued["code"]
        .as_str()
        .context("no code in head office's answer")?;
    println!("{code}");
    eprintln!(
        "one-time code for gateway {} of store {}; on the gateway run:\n  instore-provision enrol \
         --hq-url {} --code {code} --broker mqtts://BROKER:8883",
        args.gateway, args.store, args.hq_url
    );
    Ok(())
}

fn enrol(args: EnrolArgs) -> Result<()> {
    hq::check_transport("broker", &args.broker, args.insecure)?;
    hq::check_transport("head-office URL", &args.hq_url, args.insecure)?;
    // Checked before the code is spent: a typo in the broker URL must not cost the code.
    let probe = GatewayEnrolment {
        store_id: "probe".into(),
        gateway_id: "probe".into(),
        broker: args.broker.clone(),
        hq_url: args.hq_url.clone(),
        zone: args.zone.clone(),
        adapter: args.adapter.clone(),
    };
    probe.check()?;
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists (pass --force to replace it)",
            args.out.display()
        );
    }
    let enrolled = hq::redeem(&args.hq_url, &args.code)?;
    let field = |k: &str| {
        enrolled[k]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {k} in head office's answer"))
    };
    let enrolment = GatewayEnrolment {
        store_id: field("store_id")?,
        gateway_id: field("gateway_id")?,
        ..probe
    };
    let config = enrolment.agent_config(field("token")?, random_hex()?)?;
    files::write_private(&args.out, config.to_toml()?.as_bytes(), args.force)?;
    eprintln!(
        "enrolled gateway {} of store {}; wrote its agent config to {} (mode 0600)",
        enrolment.gateway_id,
        enrolment.store_id,
        args.out.display()
    );
    Ok(())
}

fn gateways(args: GatewaysArgs) -> Result<()> {
    hq::check_transport("head-office URL", &args.hq_url, args.insecure)?;
    match args.action {
        GatewaysAction::List => {
            let list = hq::list(&args.hq_url, &args.token)?;
            println!("{:<24} {:<24} {:>4}  REVOKED", "GATEWAY", "STORE", "GEN");
            for g in list.as_array().map(Vec::as_slice).unwrap_or_default() {
                println!(
                    "{:<24} {:<24} {:>4}  {}",
                    g["gateway_id"].as_str().unwrap_or("?"),
                    g["store_id"].as_str().unwrap_or("?"),
                    g["generation"].as_u64().unwrap_or(0),
                    if g["revoked_ms"].is_null() {
                        "no"
                    } else {
                        "yes"
                    }
                );
            }
        }
        GatewaysAction::Revoke { gateway } => {
            hq::revoke(&args.hq_url, &args.token, &gateway)?;
            eprintln!("revoked {gateway}: refused from now on");
        }
        GatewaysAction::Rotate { gateway } => {
            let rotated = hq::rotate(&args.hq_url, &args.token, &gateway)?;
            let token = rotated["token"]
                .as_str()
                .context("no token in the answer")?;
            println!("{token}");
            eprintln!(
                "{gateway}: the old token is void; put this one in its [sync] token and restart it"
            );
        }
    }
    Ok(())
}

fn mosquitto_files(args: MosquittoArgs) -> Result<()> {
    let secret = fleet_secret(args.secret_file.as_deref(), args.hq_data_dir.as_deref())?;
    let list = std::fs::read_to_string(&args.gateways)
        .with_context(|| format!("reading {}", args.gateways.display()))?;
    let gateways = mosquitto::parse_gateways(&list)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let hq_password_path = args.out_dir.join("hq_password");
    let hq_password = if hq_password_path.exists() {
        files::read_secret(&hq_password_path)?
    } else {
        let p = random_hex()?;
        files::write_private(&hq_password_path, p.as_bytes(), false)?;
        p
    };
    let dir = std::fs::canonicalize(&args.out_dir)
        .with_context(|| format!("resolving {}", args.out_dir.display()))?;
    let mut salt_err = None;
    let out = mosquitto::files(
        &secret,
        &gateways,
        &args.hq_user,
        &hq_password,
        &dir.display().to_string(),
        || {
            let mut s = [0u8; 12];
            if let Err(e) = OsRng.try_fill_bytes(&mut s) {
                salt_err = Some(e);
            }
            s
        },
    )?;
    if let Some(e) = salt_err {
        bail!("reading the operating system's random number generator: {e}");
    }
    files::write_private(
        &args.out_dir.join("passwd"),
        out.passwd.as_bytes(),
        args.force,
    )?;
    files::write_private(&args.out_dir.join("acl"), out.acl.as_bytes(), args.force)?;
    files::write_private(
        &args.out_dir.join("instore.conf"),
        out.conf.as_bytes(),
        args.force,
    )?;
    eprintln!(
        "wrote passwd, acl and instore.conf for {} gateways to {}; head office connects as {} \
         with the password in {} ([broker] username and password)",
        gateways.len(),
        dir.display(),
        args.hq_user,
        hq_password_path.display()
    );
    Ok(())
}

/// Head office's gateway secret, from `--secret-file` or the file head office generated in its
/// `--hq-data-dir`, checked for length.
fn fleet_secret(
    secret_file: Option<&std::path::Path>,
    hq_data_dir: Option<&std::path::Path>,
) -> Result<String> {
    let path = match (secret_file, hq_data_dir) {
        (Some(file), _) => file.to_path_buf(),
        (None, Some(dir)) => dir.join(HQ_SECRET_FILE),
        (None, None) => bail!("pass --secret-file FILE or --hq-data-dir DIR"),
    };
    let secret = files::read_secret(&path)?;
    check_secret_len(&secret)?;
    Ok(secret)
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

fn member_device(args: MemberDeviceArgs) -> Result<()> {
    hq::check_transport("head-office URL", &args.hq_url, args.insecure)?;
    let key_id = member::create_device(
        &args.member,
        args.alg,
        &args.hq_url,
        &args.token,
        &args.out,
        args.force,
    )?;
    eprintln!(
        "registered device key {key_id} for member {} and wrote it to {} (mode 0600)",
        args.member,
        args.out.display()
    );
    Ok(())
}

fn member_code(args: MemberCodeArgs) -> Result<()> {
    let device = member::load_device(&args.key)?;
    let at = args.at_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    let code = device.code_at(at).context("signing the code")?;
    if args.svg.is_some() || args.png.is_some() {
        let qr = member::qr(&code)?;
        if let Some(path) = &args.svg {
            std::fs::write(path, member::svg(&qr))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &args.png {
            std::fs::write(path, member::png(&qr))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    println!("{code}");
    Ok(())
}
