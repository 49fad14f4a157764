//! `instore-bench instructions`: per-advert and per-event instruction counts, which repeat to
//! within a few instructions on a machine whose wall times vary run to run (valgrind's
//! callgrind counts what the CPU executes, not how long it takes).
//!
//! The bench runs itself under callgrind, collecting only inside the functions the figure is
//! about (`--toggle-collect`): the engine's `Core::on_sighting` and `Core::on_tick` for the hot
//! path; ingest's payload decoding and its store transaction for head office. Each runs twice,
//! with N and 2N adverts or events, and the figure is the difference over N: the steady cost of
//! one more, without the warm-up (first record reads, first RPA resolutions, prepared
//! statements) that the first N also pay and that is printed beside it.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

#[derive(Debug, Clone, clap::Args)]
pub struct InstructionsArgs {
    /// Members in the hot path's cache (callgrind is ~50x slower than the CPU: keep it small).
    #[arg(long, default_value_t = 10_000)]
    pub members: u32,
    /// Adverts of the shorter hot-path run.
    #[arg(long, default_value_t = 20_000)]
    pub adverts: u64,
    /// Events of the shorter head-office ingest run.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
}

const VALGRIND: &str = "valgrind";

pub fn run(args: InstructionsArgs) -> anyhow::Result<()> {
    let probe = Command::new(VALGRIND).arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        bail!("instructions needs valgrind on PATH (apt install valgrind)");
    }
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let members = args.members.to_string();
    let (a, b) = at_n_and_2n(
        &exe,
        dir.path(),
        &[
            "hot-path",
            "--members",
            &members,
            "--adverts",
            N,
            "--present",
            "200",
        ],
        &[
            "instore_agent::engine::core::Core::on_sighting",
            "instore_agent::engine::core::Core::on_tick",
        ],
        args.adverts,
    )?;
    let (c, d) = at_n_and_2n(
        &exe,
        dir.path(),
        &[
            "uplink",
            "--ingest-events",
            N,
            "--drain-events",
            "0",
            "--steady-s",
            "0",
        ],
        &[
            "instore_sync::store::ingest::ingest",
            "instore_sync::ingest::decode::decode",
        ],
        args.events,
    )?;
    let per_advert = b.saturating_sub(a) as f64 / args.adverts as f64;
    let per_event = d.saturating_sub(c) as f64 / args.events as f64;
    println!("instructions (callgrind, {}):", std::env::consts::ARCH);
    println!(
        "  hot path      {per_advert:>8.0} per advert (steady; the first {} average {:.0}), {} members",
        args.adverts,
        a as f64 / args.adverts as f64,
        args.members
    );
    println!(
        "  ingest        {per_event:>8.0} per event (steady; the first {} average {:.0}), SQLite, arrivals in batches of 500",
        args.events,
        c as f64 / args.events as f64
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "instructions", "arch": std::env::consts::ARCH,
            "members": args.members,
            "hot_path": {"adverts": args.adverts, "instructions": [a, b],
                "per_advert": per_advert.round()},
            "ingest": {"events": args.events, "instructions": [c, d],
                "per_event": per_event.round()},
        })
    );
    Ok(())
}

/// Where [`at_n_and_2n`] puts the run's length in its arguments.
const N: &str = "{n}";

/// [`count`] with [`N`] in `args` replaced by `n`, then by `2n`.
fn at_n_and_2n(
    exe: &Path,
    dir: &Path,
    args: &[&str],
    toggles: &[&str],
    n: u64,
) -> anyhow::Result<(u64, u64)> {
    let run = |n: u64| {
        let n = n.to_string();
        let args: Vec<&str> = args
            .iter()
            .map(|&a| if a == N { n.as_str() } else { a })
            .collect();
        count(exe, dir, &args, toggles)
    };
    Ok((run(n)?, run(2 * n)?))
}

/// Instructions executed inside `toggles` by `exe args` under callgrind.
fn count(exe: &Path, dir: &Path, args: &[&str], toggles: &[&str]) -> anyhow::Result<u64> {
    let out = dir.join("callgrind.out");
    let mut cmd = Command::new(VALGRIND);
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    for t in toggles {
        cmd.arg(format!("--toggle-collect={t}"));
    }
    let run = cmd
        .arg(exe)
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} under callgrind"))?;
    if !run.status.success() {
        bail!(
            "{args:?} under callgrind failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let text = std::fs::read_to_string(&out)?;
    let n = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .context("no summary line in callgrind's output")?
        .trim()
        .parse::<u64>()?;
    if n == 0 {
        bail!("callgrind counted nothing inside {toggles:?}: were the functions renamed?");
    }
    Ok(n)
}
