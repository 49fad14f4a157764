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
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Import members from NDJSON (one member per line; bad lines are reported and skipped).
    /// A running agent picks them up on SIGHUP.
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("INSTORE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
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

fn import(cfg: &AgentConfig, file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let cache = MemberCache::open(&members_db(&cfg.data_dir))?;
    let report = cache.import_ndjson(&text)?;
    for skipped in &report.skipped {
        eprintln!("{}: {skipped}", file.display());
    }
    println!(
        "{}",
        serde_json::json!({"imported": report.imported, "skipped": report.skipped.len()})
    );
    Ok(())
}

fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let agent = runtime::start(cfg).await?;
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
        agent.shutdown(SHUTDOWN_GRACE).await;
        Ok(())
    })
}
