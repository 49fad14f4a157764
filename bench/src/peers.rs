//! `instore-bench peers`: the agent's advert decoders and TheengsDecoder (the decoder behind
//! Theengs Gateway and OpenMQTTGateway, from PyPI in a venv of its own) on the same advert
//! stream, each pinned to the same core, and their ratio.
//!
//! The stream is the hot path's mix (`hot_path::member_advert`/`stranger_advert`: a share of
//! members' iBeacon, Eddystone UID/EID and rotating-ID frames and addresses, the rest strangers'
//! phones), written once as Theengs' own JSON input (`bench/peers/theengs.py`). Our side is the
//! frame decoders only (iBeacon, AltBeacon, Eddystone), no matching: the part of the hot path
//! Theengs also does. The comparison is not like for like, and the output says so: Theengs
//! decodes sensor values and vendor formats from ~150 JSON device definitions it parses on every
//! call, the agent only identity frames.

use std::{io::Write, path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};
use instore_agent::{
    identify::{COMPANY_APPLE, altbeacon, eddystone, ibeacon},
    sources::Advert,
};

use crate::hot_path::{Rng, member_advert, stranger_advert};

#[derive(Debug, Clone, clap::Args)]
pub struct PeersArgs {
    /// Adverts in the stream (TheengsDecoder takes ~1 ms each).
    #[arg(long, default_value_t = 20_000)]
    pub adverts: usize,
    /// Share of adverts sent by members.
    #[arg(long, default_value_t = 0.1)]
    pub member_share: f64,
    /// The core both decoders are pinned to.
    #[arg(long, default_value_t = 1)]
    pub core: usize,
    /// Where the venv with TheengsDecoder lives (made by `bench/peers/setup-theengs`).
    #[arg(long, default_value = "target/peers/venv")]
    pub venv: String,
}

pub fn run(args: PeersArgs) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new(root.join("peers/setup-theengs"))
        .arg(&args.venv)
        .output()
        .context("running bench/peers/setup-theengs")?;
    if !setup.status.success() {
        bail!(
            "bench/peers/setup-theengs failed: {}",
            String::from_utf8_lossy(&setup.stderr).trim()
        );
    }
    let python = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .last()
        .map(str::to_string)
        .context("setup-theengs printed no python path")?;

    let adverts = stream(args.adverts, args.member_share);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("adverts.ndjson");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for a in &adverts {
        serde_json::to_writer(&mut w, &theengs_json(a))?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);

    // Ours first, on the pinned core: the main thread pins itself through taskset.
    let pin = Command::new("taskset")
        .args([
            "-cp",
            &args.core.to_string(),
            &std::process::id().to_string(),
        ])
        .output()
        .context("taskset (util-linux) pins the bench to --core")?;
    if !pin.status.success() {
        bail!(
            "taskset -cp {}: {}",
            args.core,
            String::from_utf8_lossy(&pin.stderr).trim()
        );
    }
    let rounds = 200usize;
    let mut decoded = 0usize;
    let t = Instant::now();
    for _ in 0..rounds {
        for a in &adverts {
            decoded += usize::from(std::hint::black_box(decode(std::hint::black_box(a))));
        }
    }
    let ours_ns = t.elapsed().as_nanos() as f64 / (rounds * adverts.len()) as f64;
    let ours_decoded = decoded / rounds;

    let out = dir.path().join("theengs.json");
    let status = Command::new(&python)
        .arg(root.join("peers/theengs.py"))
        .arg(&input)
        .args(["--core", &args.core.to_string(), "--json"])
        .arg(&out)
        .status()
        .context("running bench/peers/theengs.py")?;
    if !status.success() {
        bail!("bench/peers/theengs.py failed ({status})");
    }
    let theirs: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let theirs_ns = theirs["ns_per_advert"].as_f64().context("ns_per_advert")?;
    let theirs_decoded = theirs["decoded"].as_u64().unwrap_or(0);

    println!(
        "peers: {} adverts ({:.0} % members), both pinned to core {}",
        adverts.len(),
        args.member_share * 100.0,
        args.core
    );
    println!(
        "  instore decoders      {:>12.0} adverts/s  {:>10.0} ns/advert  {} decoded (identity frames)",
        1e9 / ours_ns,
        ours_ns,
        ours_decoded
    );
    println!(
        "  TheengsDecoder {:<6} {:>12.0} adverts/s  {:>10.0} ns/advert  {} decoded (any known device)",
        theirs["version"].as_str().unwrap_or("?"),
        1e9 / theirs_ns,
        theirs_ns,
        theirs_decoded
    );
    println!(
        "  ratio                 {:>12.0}x  (not like for like: Theengs also decodes vendor \
         and sensor formats, from JSON device definitions, but returns nothing for an Eddystone \
         UID or an AltBeacon; the agent decodes identity frames only)",
        theirs_ns / ours_ns
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "peers",
            "adverts": adverts.len(),
            "core": args.core,
            "instore": {"ns_per_advert": ours_ns, "decoded": ours_decoded},
            "theengs": theirs,
            "ratio": theirs_ns / ours_ns,
        })
    );
    Ok(())
}

/// The hot path's advert mix, without the member set (decoding needs none).
fn stream(n: usize, member_share: f64) -> Vec<Advert> {
    let now_ms = instore_agent::now_ms();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let threshold = (member_share.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    (0..n)
        .map(|_| {
            let r = rng.next();
            if r < threshold {
                member_advert((rng.next() % 1_000_000) as u32, r, now_ms)
            } else {
                let device = rng.next() % 5_000;
                stranger_advert(device, rng.next())
            }
        })
        .collect()
}

/// What the agent's identification decodes of an advert's frames, as a yes/no.
fn decode(a: &Advert) -> bool {
    let mut hit = false;
    for (company, d) in &a.manufacturer_data {
        if *company == COMPANY_APPLE {
            hit |= ibeacon::decode(d).is_ok();
        }
        hit |= altbeacon::decode(d).is_ok();
    }
    for (uuid, d) in &a.service_data {
        if *uuid == 0xFEAA {
            hit |= eddystone::decode(d).is_ok();
        }
    }
    hit
}

/// An advert in Theengs' input shape: company id little-endian before the manufacturer data,
/// lower-case hex (it compares hex strings case-sensitively), the 16-bit service UUID as
/// `0xfeaa`. Theengs takes one manufacturer and one service data field per advert, so only the
/// first of each is written (the bench's adverts carry at most one).
fn theengs_json(a: &Advert) -> serde_json::Value {
    let mut j = serde_json::json!({
        "id": a.address.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
        "rssi": a.rssi,
    });
    if let Some((company, d)) = a.manufacturer_data.first() {
        let mut bytes = company.to_le_bytes().to_vec();
        bytes.extend_from_slice(d);
        j["manufacturerdata"] = hex::encode(bytes).into();
    }
    if let Some((uuid, d)) = a.service_data.first() {
        j["servicedatauuid"] = format!("0x{uuid:04x}").into();
        j["servicedata"] = hex::encode(d).into();
    }
    j
}
