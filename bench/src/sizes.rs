//! `instore-bench sizes [--cross aarch64,armv7]`: the release binaries as the packages ship them
//! (stripped), for the host and, cross-built by scripts/cross-build, for the gateways (the
//! brief's bar: the agent under 12 MB on a gateway).

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::instructions::GatewayArch;

#[derive(Debug, Clone, clap::Args)]
pub struct SizesArgs {
    /// Gateway architectures to cross-build the agent for (and head office on aarch64).
    #[arg(long, value_delimiter = ',')]
    pub cross: Vec<GatewayArch>,
}

const HOST_BINARIES: &[(&str, &str)] = &[
    ("instore-agent", "instore-agent"),
    ("instore-sync", "instore-sync"),
    ("instore-provision", "instore-provision"),
];

pub fn run(args: SizesArgs) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate has no workspace above it")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut build = Command::new("cargo");
    build
        .current_dir(root)
        .args(["build", "--release", "--locked"]);
    for (package, _) in HOST_BINARIES {
        build.args(["-p", package]);
    }
    run_ok(&mut build, "cargo build --release")?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for (_, bin) in HOST_BINARIES {
        let built = target.join("release").join(bin);
        rows.push(measure(
            &built,
            "strip",
            dir.path(),
            std::env::consts::ARCH,
            bin,
        )?);
    }
    for &arch in &args.cross {
        run_ok(
            Command::new("bash").current_dir(root).args([
                "scripts/cross-build",
                arch.name(),
                "--release",
            ]),
            "scripts/cross-build",
        )?;
        let strip = match arch {
            GatewayArch::Aarch64 => "aarch64-linux-gnu-strip",
            GatewayArch::Armv7 => "arm-linux-gnueabihf-strip",
        };
        let built = target.join(arch.triple()).join("release");
        let mut bins = vec!["instore-agent"];
        // scripts/cross-build builds head office for arm64 servers, not for armv7.
        if matches!(arch, GatewayArch::Aarch64) {
            bins.push("instore-sync");
        }
        for bin in bins {
            rows.push(measure(
                &built.join(bin),
                strip,
                dir.path(),
                arch.name(),
                bin,
            )?);
        }
    }
    println!("sizes (release, stripped as packaged):");
    for r in &rows {
        println!(
            "  {:<8} {:<18} {:>6.1} MB stripped ({:.1} MB as built)",
            r["target"].as_str().unwrap_or(""),
            r["binary"].as_str().unwrap_or(""),
            r["stripped_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            r["bytes"].as_f64().unwrap_or(0.0) / 1e6,
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "sizes", "binaries": rows})
    );
    Ok(())
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    // Build output belongs on stderr: stdout carries the figures `all` reads.
    let status = cmd
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn measure(
    built: &Path,
    strip: &str,
    dir: &Path,
    target: &str,
    bin: &str,
) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::metadata(built)
        .with_context(|| format!("no {}", built.display()))?
        .len();
    let stripped = dir.join(format!("{target}-{bin}"));
    run_ok(
        Command::new(strip).arg("-o").arg(&stripped).arg(built),
        strip,
    )?;
    let stripped_bytes = std::fs::metadata(&stripped)?.len();
    Ok(
        serde_json::json!({"target": target, "binary": bin, "bytes": bytes,
        "stripped_bytes": stripped_bytes}),
    )
}
