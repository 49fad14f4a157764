//! `instore-agent`: the store gateway daemon's command line. Thin: parsing, logging, signals.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad configuration or rules (systemd's
//! `RestartPreventExitStatus=2` keeps a broken config from restart-looping).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use instore_agent::{
    cache::MemberCache,
    config::AgentConfig,
    pairing::{client::AdminClient, qr},
    react::Rules,
    runtime::{self, members_db},
};

const EXIT_BAD_CONFIG: u8 = 2;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "instore-agent",
    version,
    about = "instore store gateway daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM (SIGHUP reloads rules and the member cache).
    Run {
        #[arg(
            long,
            env = "INSTORE_AGENT_CONFIG",
            default_value = "/etc/instore/agent.toml"
        )]
        config: PathBuf,
    },
    /// Validate a config file (and the rules file it names); exit 2 if it is wrong.
    CheckConfig { file: PathBuf },
    /// Member cache commands.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Print a one-time pairing code and QR code for a clerk tablet (asks the running agent).
    PairTablet {
        /// What other clerks see when this tablet takes an alert.
        #[arg(long, default_value = "tablet")]
        label: String,
        /// How long the code stays valid: 90s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = parse_ttl)]
        ttl: Duration,
        #[arg(
            long,
            env = "INSTORE_AGENT_CONFIG",
            default_value = "/etc/instore/agent.toml"
        )]
        config: PathBuf,
    },
    /// Paired tablets: list, revoke (asks the running agent; effective at once).
    Tablets {
        #[command(subcommand)]
        command: TabletsCommand,
        #[arg(
            long,
            global = true,
            env = "INSTORE_AGENT_CONFIG",
            default_value = "/etc/instore/agent.toml"
        )]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TabletsCommand {
    /// id, label, paired at, last seen.
    List,
    /// Revoke a tablet's token; its open alert streams close.
    Revoke { id: String },
}

/// `90s`, `10m`, `1h`, or plain seconds.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in `{s}` (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Import members from NDJSON (one member per line; bad lines are reported and skipped),
    /// into the local pseudo-channel: head office's channels never remove them (a consent
    /// withdrawal or erasure from head office does). A running agent picks them up on SIGHUP.
    Import {
        file: PathBuf,
        #[arg(
            long,
            env = "INSTORE_AGENT_CONFIG",
            default_value = "/etc/instore/agent.toml"
        )]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => return check_config(&file),
        Command::Run { config } => match load_config(&config) {
            Ok(cfg) => run(cfg),
            Err(code) => return code,
        },
        Command::Members {
            command: MembersCommand::Import { file, config },
        } => match load_config(&config) {
            Ok(cfg) => import(&cfg, &file),
            Err(code) => return code,
        },
        Command::PairTablet { label, ttl, config } => match load_config(&config) {
            Ok(cfg) => pair_tablet(&cfg, &label, ttl),
            Err(code) => return code,
        },
        Command::Tablets { command, config } => match load_config(&config) {
            Ok(cfg) => tablets(&cfg, command),
            Err(code) => return code,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("instore-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    instore_daemon::logging::init("info");
}

fn load_config(path: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path).map_err(|e| {
        eprintln!("instore-agent: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    if let Some(rules) = &cfg.react.rules
        && let Err(e) = Rules::load(rules)
    {
        eprintln!("instore-agent: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    println!("{}: ok", path.display());
    ExitCode::SUCCESS
}

/// Streams the file into the cache's local pseudo-channel (never all records in memory).
fn import(cfg: &AgentConfig, file: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, f);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let cache = MemberCache::open(&members_db(&cfg.data_dir))?;
    let report = cache.import_ndjson(&mut reader)?;
    for skipped in &report.skipped {
        eprintln!("{}: {skipped}", file.display());
    }
    println!(
        "{}",
        serde_json::json!({"imported": report.imported, "skipped": report.skipped.len()})
    );
    Ok(())
}

fn admin_client(cfg: &AgentConfig) -> anyhow::Result<(AdminClient, tokio::runtime::Runtime)> {
    let client = AdminClient::for_config(cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    Ok((client, rt))
}

fn pair_tablet(cfg: &AgentConfig, label: &str, ttl: Duration) -> anyhow::Result<()> {
    let (client, rt) = admin_client(cfg)?;
    let issued = rt.block_on(client.pair(label, ttl))?;
    let qr = qr::render(&issued.url).context("rendering the QR code")?;
    println!("{qr}");
    println!("Pairing code for \"{}\": {}", issued.label, issued.code);
    println!("Open on the tablet (or scan): {}", issued.url);
    println!(
        "Valid for {} s, once.",
        (issued.expires_at_ms - instore_agent::now_ms()).max(0) / 1000
    );
    Ok(())
}

fn tablets(cfg: &AgentConfig, command: TabletsCommand) -> anyhow::Result<()> {
    let (client, rt) = admin_client(cfg)?;
    match command {
        TabletsCommand::List => {
            let list = rt.block_on(client.list())?;
            println!(
                "{:<12} {:<24} {:<20} {:<20} LAST SEEN",
                "ID", "LABEL", "PAIRED", "TOKEN EXPIRES"
            );
            for t in list {
                println!(
                    "{:<12} {:<24} {:<20} {:<20} {}",
                    t.id,
                    t.label,
                    fmt_ms(Some(t.created_ms)),
                    fmt_ms(Some(t.expires_ms)),
                    fmt_ms(t.last_seen_ms)
                );
            }
        }
        TabletsCommand::Revoke { id } => {
            if !rt.block_on(client.revoke(&id))? {
                anyhow::bail!("no paired tablet with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// UTC, to the second: enough to tell a tablet in use from a forgotten one.
fn fmt_ms(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let agent = runtime::start(cfg).await?;
        // Under systemd (Type=notify): READY=1 now, status lines and watchdog keep-alives after.
        let notifier = instore_agent::service::notifier_from_env();
        if let Some(n) = &notifier {
            agent.supervise(n.clone(), instore_sdnotify::watchdog_period());
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading rules and member cache");
                    agent.reload().await;
                }
            }
        }
        tracing::info!("shutting down");
        if let Some(n) = &notifier
            && let Err(e) = n.stopping()
        {
            tracing::debug!(error = %e, "STOPPING=1 not sent");
        }
        agent.shutdown(SHUTDOWN_GRACE).await;
        Ok(())
    })
}
