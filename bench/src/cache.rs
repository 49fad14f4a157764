//! The member cache at a million members: what the gateway's memory and disk cost.
//!
//! `cache [--members N]` prints, with the hot-path member mix (`hot_path::member`):
//! - `members import` (the agent's own streaming import, in a child process): time, peak
//!   resident memory (`VmHWM`);
//! - a channel snapshot of the same members (zstd NDJSON, as head office serves it): bytes,
//!   apply time and peak memory (child process: zstd decoder → `MemberCache::apply_snapshot`);
//! - a delta of 10,000 changes (two responses of 5,000 upserts) applied to the full cache;
//! - the running agent (`runtime::start` on that `members.db`, child process, after its window
//!   tables are built): `VmRSS` and `VmHWM`, then again after a reload (a whole member set
//!   loaded beside the one in use: the peak systemd's `MemoryMax` must hold);
//! - a stranger's advert rejected by the index (ns, no disk), and a matched member's record read
//!   from `members.db` (p50, p99).

use std::{
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use instore_agent::cache::{MemberCache, MemberSource, SqliteMembers};
use instore_protocol::changes::{
    Change, ChangeOp, ChangesResponse, ChannelChanges, SnapshotHeader, SnapshotLine,
};

use crate::hot_path::member;

fn status_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs this binary's hidden `cache-child` with `args`; returns its last stdout line (JSON).
fn child(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).arg("cache-child").args(args).output()?;
    if !out.status.success() {
        bail!(
            "cache-child {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(last)?)
}

/// The hidden child: `import NDJSON DB`, `apply SNAPSHOT DB MEMBERS`, `agent CONFIG SECONDS`.
pub fn child_main(args: &[String]) -> anyhow::Result<()> {
    let t = Instant::now();
    let result = match args.first().map(String::as_str) {
        Some("import") => {
            let f = std::fs::File::open(&args[1])?;
            let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
            let cache = MemberCache::open(Path::new(&args[2]))?;
            let report = cache.import_ndjson(&mut r)?;
            serde_json::json!({"imported": report.imported, "skipped": report.skipped.len()})
        }
        Some("apply") => {
            let f = std::fs::File::open(&args[1])?;
            let mut decoder = zstd::stream::read::Decoder::new(f)?;
            decoder.window_log_max(24)?;
            let mut r = std::io::BufReader::with_capacity(256 * 1024, decoder);
            let cache = MemberCache::open(Path::new(&args[2]))?;
            let members: u64 = args[3].parse()?;
            let stats = cache.apply_snapshot("chain", 1, members, &mut r, |_| {})?;
            serde_json::json!({"applied": stats.applied})
        }
        Some("agent") => {
            let cfg = instore_agent::config::AgentConfig::load(Path::new(&args[1]))?;
            let secs: u64 = args[2].parse()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let agent = instore_agent::runtime::start(cfg).await?;
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let members = agent.metrics.members_cached.get();
                let mut v = serde_json::json!({"members": members,
                    "rss_kib": status_kib("self", "VmRSS:"), "hwm_kib": status_kib("self", "VmHWM:")});
                // A member set swapped in whole (SIGHUP, an applied snapshot) is loaded while the
                // old one still serves: the peak a unit's MemoryMax must hold.
                agent.reload().await;
                tokio::time::sleep(Duration::from_secs(secs / 2)).await;
                v["reload_rss_kib"] = serde_json::json!(status_kib("self", "VmRSS:"));
                v["reload_anon_kib"] = serde_json::json!(status_kib("self", "RssAnon:"));
                v["reload_hwm_kib"] = serde_json::json!(status_kib("self", "VmHWM:"));
                agent.shutdown(Duration::from_secs(5)).await;
                Ok::<_, anyhow::Error>(v)
            })?
        }
        _ => bail!("cache-child import|apply|agent"),
    };
    let mut v = result;
    v["secs"] = serde_json::json!(t.elapsed().as_secs_f64());
    v["hwm_kib"] = v
        .get("hwm_kib")
        .cloned()
        .unwrap_or(serde_json::json!(status_kib("self", "VmHWM:")));
    println!("{v}");
    Ok(())
}

fn write_ndjson(path: &Path, n: u32, now_ms: i64) -> anyhow::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        serde_json::to_writer(&mut w, &member(i, now_ms))?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

fn write_snapshot(path: &Path, n: u32, now_ms: i64) -> anyhow::Result<u64> {
    let f = std::fs::File::create(path)?;
    let mut z = zstd::stream::write::Encoder::new(f, 3)?;
    let header = SnapshotHeader {
        v: 1,
        channel: "chain".into(),
        version: 1,
        members: u64::from(n),
        created_ms: now_ms,
    };
    serde_json::to_writer(&mut z, &header)?;
    z.write_all(b"\n")?;
    for i in 0..n {
        let line = SnapshotLine {
            rev: 1,
            member: member(i, now_ms),
            keys: vec![],
            keys_expire_ms: None,
        };
        serde_json::to_writer(&mut z, &line)?;
        z.write_all(b"\n")?;
    }
    z.finish()?;
    Ok(std::fs::metadata(path)?.len())
}

fn agent_config(dir: &Path, data: &Path) -> anyhow::Result<PathBuf> {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n",
            data.display().to_string()
        ),
    )?;
    Ok(cfg)
}

fn running_agent(dir: &Path, db: &Path, label: &str) -> anyhow::Result<serde_json::Value> {
    let data = dir.join(format!("agent-{label}"));
    std::fs::create_dir_all(&data)?;
    std::fs::copy(db, data.join("members.db"))?;
    let cfg = agent_config(dir, &data)?;
    let v = child(&["agent", cfg.to_str().context("path")?, "20"])?;
    std::fs::remove_dir_all(&data)?;
    Ok(v)
}

pub fn run(members: u32) -> anyhow::Result<()> {
    let now_ms = instore_agent::now_ms();
    let dir = tempfile::tempdir()?;
    let ndjson = dir.path().join("members.ndjson");
    let t = Instant::now();
    write_ndjson(&ndjson, members, now_ms)?;
    let ndjson_mb = std::fs::metadata(&ndjson)?.len() as f64 / 1e6;
    println!(
        "member cache, {members} members (hot-path mix); NDJSON {ndjson_mb:.0} MB written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let db = dir.path().join("members.db");
    let import = child(&[
        "import",
        ndjson.to_str().context("path")?,
        db.to_str().context("path")?,
    ])?;
    std::fs::remove_file(&ndjson)?;
    let db_mb = std::fs::metadata(&db)?.len() as f64 / 1e6;
    println!(
        "  members import      {:.1} s, peak {:.0} MiB resident, members.db {db_mb:.0} MB",
        import["secs"].as_f64().unwrap_or(0.0),
        mib(import["hwm_kib"].as_u64().unwrap_or(0))
    );

    let snap = dir.path().join("chain.zst");
    let snap_bytes = write_snapshot(&snap, members, now_ms)?;
    let snap_db = dir.path().join("snapshot.db");
    let apply = child(&[
        "apply",
        snap.to_str().context("path")?,
        snap_db.to_str().context("path")?,
        &members.to_string(),
    ])?;
    std::fs::remove_file(&snap)?;
    std::fs::remove_file(&snap_db)?;
    let _ = std::fs::remove_file(dir.path().join("snapshot.db-wal"));
    println!(
        "  snapshot            {:.1} MB on the wire (zstd -3), applied in {:.1} s, peak {:.0} MiB resident",
        snap_bytes as f64 / 1e6,
        apply["secs"].as_f64().unwrap_or(0.0),
        mib(apply["hwm_kib"].as_u64().unwrap_or(0))
    );

    // 10,000 changes: upserts of existing members at a new revision, two responses of 5,000.
    let cache = MemberCache::open(&db)?;
    let mut version = 0;
    let t = Instant::now();
    for batch in 0..2u32 {
        let changes: Vec<Change> = (0..5_000u32)
            .map(|k| {
                version += 1;
                let mut m = member((batch * 5_000 + k) * 97 % members.max(1), now_ms);
                m.tags = vec!["changed".into()];
                Change {
                    version,
                    op: ChangeOp::Upsert { rev: 2, member: m },
                }
            })
            .collect();
        let r = ChangesResponse {
            v: 1,
            store_id: "s1".into(),
            campaigns: None,
            channels: vec![ChannelChanges {
                channel: "chain".into(),
                from: version - 5_000,
                to: version,
                head: 10_000,
                snapshot: None,
                changes,
            }],
        };
        cache.apply_response(&r)?;
    }
    let delta_s = t.elapsed().as_secs_f64();
    println!(
        "  delta apply         10,000 changes in {delta_s:.2} s ({:.0} changes/s)",
        10_000.0 / delta_s
    );

    // The index alone: a stranger's address rejected, without disk.
    let index = cache.load_index()?;
    let probes = 10_000_000u64;
    let t = Instant::now();
    let mut hits = 0u64;
    for k in 0..probes {
        let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
        if index.mac(&[0x00, 0x1c, h[0], h[1], h[2], h[3]]).is_some() {
            hits += 1;
        }
    }
    let reject_ns = t.elapsed().as_secs_f64() * 1e9 / probes as f64;
    let t = Instant::now();
    for k in 0..probes {
        let i = (k * 7919 % u64::from(members)) as u32;
        std::hint::black_box(index.mac(&crate::hot_path::public_address_of(i)));
    }
    let lookup_ns = t.elapsed().as_secs_f64() * 1e9 / probes as f64;
    println!(
        "  stranger rejected   {reject_ns:.1} ns (public address, {hits} false matches), member found {lookup_ns:.1} ns; index {:.1} MiB",
        index.heap_bytes() as f64 / 1048576.0
    );
    drop(index);

    // A matched member's record from members.db (the engine's reader, cold slots).
    let mut reader = SqliteMembers::open(&db)?;
    let mut times: Vec<u64> = Vec::with_capacity(20_000);
    for k in 0..20_000u32 {
        let slot = 1 + (k.wrapping_mul(2_654_435_761) % members.max(1));
        let t = Instant::now();
        let m = reader.member(slot)?;
        times.push(t.elapsed().as_nanos() as u64);
        if m.is_none() {
            bail!("slot {slot} not found");
        }
    }
    times.sort_unstable();
    let pct =
        |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)] as f64 / 1000.0;
    println!(
        "  record read         p50 {:.1} us, p99 {:.1} us, max {:.1} us (20,000 random slots)",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    drop(reader);

    let agent = running_agent(dir.path(), &db, "full")?;
    println!(
        "  running agent       {} members: VmRSS {:.0} MiB, VmHWM {:.0} MiB",
        agent["members"],
        mib(agent["rss_kib"].as_u64().unwrap_or(0)),
        mib(agent["hwm_kib"].as_u64().unwrap_or(0))
    );
    println!(
        "  after a reload      VmRSS {:.0} MiB (anonymous {:.0} MiB), VmHWM {:.0} MiB",
        mib(agent["reload_rss_kib"].as_u64().unwrap_or(0)),
        mib(agent["reload_anon_kib"].as_u64().unwrap_or(0)),
        mib(agent["reload_hwm_kib"].as_u64().unwrap_or(0))
    );
    println!(
        "{}",
        serde_json::json!({"bench": "cache", "members": members,
            "import_s": import["secs"], "import_hwm_kib": import["hwm_kib"], "db_mb": db_mb.round(),
            "snapshot_bytes": snap_bytes, "snapshot_apply_s": apply["secs"], "snapshot_hwm_kib": apply["hwm_kib"],
            "delta_10k_s": delta_s, "stranger_reject_ns": reject_ns, "member_lookup_ns": lookup_ns,
            "record_p50_us": pct(0.5), "record_p99_us": pct(0.99),
            "agent_rss_kib": agent["rss_kib"], "agent_hwm_kib": agent["hwm_kib"],
            "agent_reload_hwm_kib": agent["reload_hwm_kib"]})
    );
    Ok(())
}
