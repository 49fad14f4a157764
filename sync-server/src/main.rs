//! `instore-sync`: head office's binary. Thin: parses the command line, sets up logging and
//! signals, and calls the library.
//!
//! Exit codes: 0 success; 1 runtime failure (including a failed `members import` request);
//! 2 bad configuration (systemd's `RestartPreventExitStatus=2` keeps it from restarting in a loop).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use instore_sync::{Error, HqConfig};
use tokio_util::sync::CancellationToken;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
/// Whole-shutdown deadline after SIGTERM/Ctrl-C; the runtime's own steps are shorter.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "instore-sync",
    version,
    about = "instore head office: ingest, members, API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run head office.
    Run {
        #[arg(long, env = "INSTORE_SYNC_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file; prints the first problem with its key and line, exits 2 if bad.
    CheckConfig { file: PathBuf },
    /// Member administration against a running head office.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Purchase imports into a running head office.
    Purchases {
        #[command(subcommand)]
        command: PurchasesCommand,
    },
}

#[derive(Subcommand)]
enum PurchasesCommand {
    /// Stream an NDJSON or CSV purchase file (CSV: a header row; `.csv` or a first line that is
    /// not JSON) to the running head office; prints the report, refused lines by number.
    Import {
        file: PathBuf,
        #[arg(long, env = "INSTORE_SYNC_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum MembersCommand {
    /// POST an NDJSON member file to the running head office and print its report.
    Import {
        file: PathBuf,
        #[arg(long, env = "INSTORE_SYNC_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rumqttd logs every connection at info.
    instore_daemon::logging::init("info,rumqttd=warn");
    match cli.command {
        Command::CheckConfig { file } => match HqConfig::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            let cfg = match HqConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let code = match e.downcast_ref::<Error>() {
                        Some(Error::Config(_) | Error::Secret(_)) => EXIT_CONFIG,
                        _ => EXIT_RUNTIME,
                    };
                    eprintln!("error: {e:#}");
                    ExitCode::from(code)
                }
            }
        }
        Command::Purchases {
            command: PurchasesCommand::Import { file, config },
        } => {
            let cfg = match HqConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match block_on(import_purchases(cfg, file)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Members {
            command: MembersCommand::Import { file, config },
        } => {
            let cfg = match HqConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match block_on(import_members(cfg, file)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(f)
}

async fn serve(cfg: HqConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let office = instore_sync::start(cfg, cancel.clone()).await?;
    // Under systemd (Type=notify): ready once `start` returned, i.e. the database is open and
    // the broker (if embedded) and HTTP listeners accept connections. No watchdog: head office
    // has no single loop whose stall would stand for the whole service.
    let notifier = notifier_from_env();
    if let Some(n) = &notifier {
        match n.ready(&format!("HTTP on {}", office.http_addr())) {
            Ok(()) => tracing::info!("told systemd: ready"),
            Err(e) => tracing::warn!(error = %e, "READY=1 not sent"),
        }
    }
    let signals = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received, stopping");
        if let Some(n) = &notifier
            && let Err(e) = n.stopping()
        {
            tracing::debug!(error = %e, "STOPPING=1 not sent");
        }
        signals.cancel();
    });
    let wait = office.wait();
    tokio::pin!(wait);
    tokio::select! {
        res = &mut wait => Ok(res?),
        _ = async { cancel.cancelled().await; tokio::time::sleep(SHUTDOWN_DEADLINE).await } => {
            anyhow::bail!("shutdown took longer than {SHUTDOWN_DEADLINE:?}")
        }
    }
}

/// systemd's notification socket, if it gave one; a malformed one is logged and ignored.
fn notifier_from_env() -> Option<instore_sdnotify::Notifier> {
    instore_sdnotify::Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "NOTIFY_SOCKET unusable: systemd will not hear from head office");
        None
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Head office's HTTP base as seen from this machine.
fn base_url(cfg: &HqConfig) -> String {
    let mut addr = cfg.http.listen;
    // A server listening on every interface is reached on loopback from here.
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

async fn import_purchases(cfg: HqConfig, file: PathBuf) -> anyhow::Result<()> {
    let report =
        instore_sync::client::import_purchases(&base_url(&cfg), &cfg.api.token, &file).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn import_members(cfg: HqConfig, file: PathBuf) -> anyhow::Result<()> {
    let body = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let url = format!("{}/api/members", base_url(&cfg));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&cfg.api.token)
        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the response")?;
    if !status.is_success() {
        anyhow::bail!("POST {url}: HTTP {status}: {text}");
    }
    println!("{text}");
    Ok(())
}
