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
//!
//! `--qemu aarch64,armv7` adds the hot path on the gateway architectures: the bench cross-built
//! in release (`bench/qemu/setup`) runs under qemu-user with `bench/qemu/insn.c`, a plugin that
//! counts guest instructions between the two marks `hot_path` sets around its loop
//! (`marker.rs`). That region is the loop itself (the same `on_sighting`/`on_tick` calls plus
//! the loop's own few instructions per advert), so its figure is comparable to the host's
//! callgrind figure but not identical in definition; it is per architecture, not per Pi: a
//! Cortex-A53 and an A72 run the same instructions at different speeds.

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
    /// Gateway architectures to count the hot path on under qemu-user as well (cross-builds the
    /// bench for each: minutes the first time).
    #[arg(long, value_delimiter = ',')]
    pub qemu: Vec<GatewayArch>,
    /// Only the --qemu counts, not the host's callgrind ones.
    #[arg(long)]
    pub no_host: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GatewayArch {
    Aarch64,
    Armv7,
}

impl GatewayArch {
    /// As scripts/lib.sh's `cross_vars` names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aarch64 => "aarch64",
            Self::Armv7 => "armv7",
        }
    }

    pub fn triple(self) -> &'static str {
        match self {
            Self::Aarch64 => "aarch64-unknown-linux-gnu",
            Self::Armv7 => "armv7-unknown-linux-gnueabihf",
        }
    }
}

const VALGRIND: &str = "valgrind";

pub fn run(args: InstructionsArgs) -> anyhow::Result<()> {
    let mut gateways = Vec::new();
    for &arch in &args.qemu {
        let (a, b) = under_qemu(arch, &args)?;
        let per_advert = b.saturating_sub(a) as f64 / args.adverts as f64;
        println!(
            "instructions (qemu-user, {}): hot path {per_advert:>8.0} per advert (steady; the first {} average {:.0}), {} members",
            arch.name(),
            args.adverts,
            a as f64 / args.adverts as f64,
            args.members
        );
        gateways.push(serde_json::json!({
            "arch": arch.name(), "members": args.members, "adverts": args.adverts,
            "instructions": [a, b], "per_advert": per_advert.round(),
        }));
    }
    if !gateways.is_empty() {
        println!(
            "{}",
            serde_json::json!({"bench": "instructions_qemu", "hot_path": gateways})
        );
    }
    if args.no_host {
        return Ok(());
    }
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

/// The hot path's marked region at N and 2N adverts, on `arch` under qemu-user.
fn under_qemu(arch: GatewayArch, args: &InstructionsArgs) -> anyhow::Result<(u64, u64)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new(root.join("qemu/setup"))
        .arg(arch.name())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running bench/qemu/setup")?;
    if !setup.status.success() {
        bail!("bench/qemu/setup {} failed ({})", arch.name(), setup.status);
    }
    let said = String::from_utf8_lossy(&setup.stdout);
    let get = |key: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .with_context(|| format!("bench/qemu/setup printed no {key}="))
    };
    let (qemu, sysroot, plugin, bin) = (get("qemu")?, get("sysroot")?, get("plugin")?, get("bin")?);
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("insn.txt");
    let members = args.members.to_string();
    let run = |n: u64| -> anyhow::Result<u64> {
        let status = Command::new(&qemu)
            .arg("-L")
            .arg(&sysroot)
            .arg("-plugin")
            .arg(format!("{plugin},outfile={}", out.display()))
            .arg(&bin)
            .args(["hot-path", "--members", &members, "--present", "200"])
            .arg("--adverts")
            .arg(n.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running the {} bench under {qemu}", arch.name()))?;
        if !status.success() {
            bail!(
                "the {} hot path under {qemu} failed ({status})",
                arch.name()
            );
        }
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("the plugin wrote no {}", out.display()))?;
        parse_plugin(&text)
    };
    Ok((run(args.adverts)?, run(2 * args.adverts)?))
}

/// The plugin's "marked <n> total <n> marks <n>": the marked count, when exactly one region was.
fn parse_plugin(text: &str) -> anyhow::Result<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let field = |name: &str| -> anyhow::Result<u64> {
        let at = words
            .iter()
            .position(|w| *w == name)
            .with_context(|| format!("no {name} in the plugin's output {text:?}"))?;
        let value = words
            .get(at + 1)
            .with_context(|| format!("{name} without a value in {text:?}"))?;
        value
            .parse()
            .with_context(|| format!("{name} {value:?} is not a count"))
    };
    match field("marks")? {
        1 => Ok(field("marked")?),
        0 => bail!("the plugin saw no marked region: is the bench built with marker.rs?"),
        n => bail!("the plugin saw {n} marked regions where the hot path has one"),
    }
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

#[cfg(test)]
mod tests {
    use super::parse_plugin;

    #[test]
    fn the_plugin_line_gives_the_marked_count_of_one_region_only() {
        assert_eq!(
            parse_plugin("marked 6000031 total 6087807 marks 1\n").ok(),
            Some(6_000_031)
        );
        assert!(parse_plugin("marked 0 total 6087807 marks 0\n").is_err());
        assert!(parse_plugin("marked 5 total 9 marks 2\n").is_err());
        assert!(parse_plugin("total 9 marks 1").is_err());
        assert!(parse_plugin("marked x total 9 marks 1").is_err());
    }
}
