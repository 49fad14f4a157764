#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Strangers leave no trace: the real agent, logging at debug, hears a simulated crowd of
//! strangers' phones; afterwards no stranger's address is found in any file it wrote (SQLite
//! databases with their -wal and -shm files, anything else under its folder) nor in its stdout or
//! stderr, in any form: raw bytes in either byte order, hex with or without separators in either
//! case, or as a list of decimal bytes. Opted-out members' phones count as strangers and their
//! member ids appear in no event.
//!
//! The sim source is deterministic: the test rebuilds the crowd from the same seed to learn the
//! addresses it must look for. A member's MAC from the import is the positive control: it is in
//! the member cache on purpose, and the same scanner must find it.

mod support;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use instore_agent::sources::sim::{self, Crowd, CrowdConfig};
use support::{
    http::metric,
    net::free_port,
    process::{AgentProcess, cli_output, run_command, sim_members_ndjson, write_agent_config},
};

const TOKEN: &str = "privacy-admin-token";
const POPULATION: u32 = 200;
const SEED: u64 = 42;
const SHOPPERS_PER_MINUTE: f64 = 1200.0;
const MEMBER_SHARE: f64 = 0.3;
const MEAN_DWELL_S: f64 = 30.0;
/// A consenting member identified by a public address: in the member cache by design.
const CONTROL_MAC: [u8; 6] = [0xc0, 0x11, 0x22, 0x33, 0x44, 0x55];

fn setup(dir: &Path, port: u16) -> (PathBuf, PathBuf) {
    let cfg = write_agent_config(
        dir,
        port,
        TOKEN,
        &format!(
            r#"[[sources]]
kind = "sim"
zone = "entrance"
seed = {SEED}
shoppers_per_minute = {SHOPPERS_PER_MINUTE:.1}
member_share = {MEMBER_SHARE}
population = {POPULATION}
mean_dwell_s = {MEAN_DWELL_S:.1}

[sync]
enabled = false
"#
        ),
    );
    let members = dir.join("members.ndjson");
    let mut text = sim_members_ndjson(POPULATION);
    text.push_str(
        r#"{"member_id":"CONTROL","display_name":"Control","tier":"member","consent":{"presence":true},"identifiers":[{"kind":"mac","address":"C0:11:22:33:44:55"}]}"#,
    );
    text.push('\n');
    std::fs::write(&members, text).unwrap();
    (cfg, members)
}

/// Addresses a stranger's phone (or an opted-out member's) used while the crowd ran for `ms`.
fn forbidden_addresses(ms: u64) -> (HashSet<[u8; 6]>, usize) {
    // `CrowdConfig::from_source` salts the seed with the source's index, 0 here: unchanged.
    let mut crowd = Crowd::new(CrowdConfig {
        seed: SEED,
        shoppers_per_minute: SHOPPERS_PER_MINUTE,
        member_share: MEMBER_SHARE,
        population: POPULATION,
        mean_dwell_s: MEAN_DWELL_S,
        receivers: 1,
        zone_gap_db: 15.0,
    });
    let opted_out: HashSet<u16> = sim::population(POPULATION)
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.consent.presence)
        .map(|(i, _)| (i + 1) as u16)
        .collect();
    let mut adverts = Vec::new();
    let mut t = 0;
    while t <= ms {
        crowd.advance(t, &mut adverts);
        t += 100;
    }
    let mut out = HashSet::new();
    let mut opted_out_adverts = 0;
    for (_, a) in &adverts {
        let data = &a.manufacturer_data[0].1;
        if !data.starts_with(&[0x02, 0x15]) {
            out.insert(a.address);
        } else if opted_out.contains(&u16::from_be_bytes([data[20], data[21]])) {
            opted_out_adverts += 1;
            out.insert(a.address);
        }
    }
    (out, opted_out_adverts)
}

/// Finds every way an address may have been written down.
struct Scanner {
    raw: HashSet<[u8; 6]>,
    hex: HashSet<String>,
    decimal: HashSet<[u8; 6]>,
}

impl Scanner {
    fn new(addresses: &HashSet<[u8; 6]>) -> Self {
        let mut raw = HashSet::new();
        let mut hex = HashSet::new();
        for a in addresses {
            let mut r = *a;
            r.reverse();
            for bytes in [*a, r] {
                raw.insert(bytes);
                hex.insert(hex::encode(bytes));
            }
        }
        Self {
            decimal: raw.clone(),
            raw,
            hex,
        }
    }

    /// Every form found in `data`.
    fn find(&self, data: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        for w in data.windows(6) {
            let k: [u8; 6] = w.try_into().unwrap();
            if self.raw.contains(&k) {
                found.push(format!("raw bytes {}", hex::encode(k)));
            }
        }
        // Hex in either case, with any of `:-_ ` or nothing between the digits: strip separators
        // from each run of hex-ish characters and look at every 12 digits in a row.
        let mut run = Vec::new();
        for &b in data.iter().chain(std::iter::once(&b'\n')) {
            if b.is_ascii_hexdigit() {
                run.push(b.to_ascii_lowercase());
                continue;
            }
            if matches!(b, b':' | b'-' | b'_' | b' ') {
                continue;
            }
            for w in run.windows(12) {
                let s = std::str::from_utf8(w).unwrap();
                if self.hex.contains(s) {
                    found.push(format!("hex {s}"));
                }
            }
            run.clear();
        }
        // Lists of decimal bytes: `[64, 1, 2, 3, 4, 5]` (Debug) or `[64,1,2,3,4,5]` (JSON).
        let mut nums: Vec<u32> = Vec::new();
        let mut cur: Option<u32> = None;
        for &b in data.iter().chain(std::iter::once(&b'\n')) {
            if b.is_ascii_digit() {
                cur = Some(
                    cur.unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(u32::from(b - b'0')),
                );
                continue;
            }
            if let Some(n) = cur.take() {
                nums.push(n);
            }
            if matches!(b, b',' | b' ') {
                continue;
            }
            for w in nums.windows(6) {
                if w.iter().all(|n| *n < 256) {
                    let k: [u8; 6] = std::array::from_fn(|i| w[i] as u8);
                    if self.decimal.contains(&k) {
                        found.push(format!("decimal {w:?}"));
                    }
                }
            }
            nums.clear();
        }
        found
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn no_strangers_address_reaches_disk_or_logs_even_at_debug() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (cfg, members) = setup(dir.path(), port);
    cli_output(
        &cfg,
        &["members", "import", members.to_str().unwrap()],
        Some("debug"),
    );

    let stdout_path = dir.path().join("stdout.log");
    let stderr_path = dir.path().join("stderr.log");
    let started = std::time::Instant::now();
    let mut run = run_command(&cfg, "debug");
    run.stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut agent = AgentProcess::spawn(run);
    let base = format!("http://127.0.0.1:{port}");
    // Run until a few hundred strangers' adverts have gone through the engine and members have
    // arrived (so events were written), whatever the machine's speed.
    let mut heard = 0.0;
    let mut arrived = 0.0;
    for _ in 0..300 {
        assert!(agent.0.try_wait().unwrap().is_none(), "agent exited early");
        heard = metric(&base, "instore_agent_strangers_total")
            .await
            .unwrap_or(0.0);
        arrived = metric(&base, "instore_agent_members_present")
            .await
            .unwrap_or(0.0);
        if heard >= 500.0 && arrived >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        heard >= 500.0 && arrived >= 1.0,
        "strangers {heard}, present {arrived}"
    );
    agent.stop();
    let ran_ms = started.elapsed().as_millis() as u64;

    let (forbidden, opted_out_adverts) = forbidden_addresses(ran_ms + 5_000);
    assert!(
        forbidden.len() > 100,
        "the crowd had strangers: {}",
        forbidden.len()
    );
    let scanner = Scanner::new(&forbidden);
    let control = Scanner::new(&HashSet::from([CONTROL_MAC]));

    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "outbox.db"), "{names:?}");
    assert!(names.iter().any(|n| n == "members.db"), "{names:?}");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(stderr.contains("DEBUG"), "debug logging was on");

    let mut leaks = Vec::new();
    let mut control_found = false;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        for form in scanner.find(&data) {
            leaks.push(format!("{}: {form}", f.display()));
        }
        if f.starts_with(dir.path().join("data")) {
            control_found |= !control.find(&data).is_empty();
        }
    }
    assert!(
        control_found,
        "the scanner finds an address the agent did write (the member cache's MAC)"
    );
    assert!(
        leaks.is_empty(),
        "strangers' addresses written down ({} of {} addresses): {:?}",
        leaks.len(),
        forbidden.len(),
        &leaks[..leaks.len().min(10)]
    );

    // Opted-out members' ids appear in no event or log line (the cache holds them, by design).
    let opted_out_ids: Vec<String> = sim::population(POPULATION)
        .iter()
        .filter(|m| !m.consent.presence)
        .map(|m| m.member_id.clone())
        .collect();
    for f in files.iter().filter(|f| {
        let n = f.file_name().unwrap().to_string_lossy();
        n.starts_with("outbox") || n.ends_with(".log")
    }) {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        for id in &opted_out_ids {
            assert!(
                !text.contains(&format!("\"{id}\"")) && !text.contains(&format!("={id}")),
                "opted-out {id} in {} ({opted_out_adverts} of their adverts were sent)",
                f.display()
            );
        }
    }
}
