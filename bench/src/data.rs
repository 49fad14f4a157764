//! Head office's Data: purchase import rows/s, the full recompute over a chain-sized base, and
//! the latency from a purchase to the store's change stream.
//!
//! - **import**: a real head office (in-process, SQLite and/or PostgreSQL), `--import` purchases
//!   of existing members POSTed as NDJSON in requests of 10,000, as `instore-sync purchases
//!   import` sends them; rows/s from the first request to the last answer.
//! - **recompute**: `--members` members and about `--purchases` purchases (1 to 39 per member,
//!   over two years, a category mix) written straight into the tables the computation reads
//!   (`members`, `member_days`, `member_categories`: what `store::purchases::insert` would leave
//!   after that many purchases; generated in SQL, since importing 20,000,000 purchases one by one
//!   would time the import, not the computation). Then two full passes: the first writes and
//!   places every member (a new head office), the second finds nothing changed (a normal night).
//! - **dashboard**: each of the dashboard's views (Pareto, funnel, level moves, overdue, stores)
//!   timed once over the recomputed base, as a person opening the page would wait for it.
//! - **latency**: purchases POSTed one at a time for members of a running head office; time from
//!   the request to the change appearing in the member's channel (`GET /changes`, polled every
//!   10 ms), p50/p95/max.

use std::time::{Duration, Instant};

use anyhow::Context;
use instore_sync::{
    compute::run::{ComputeSettings, full},
    fanout::FanoutSettings,
    store::{Backend, Db, Location, db::Sql, testing::PgSchema},
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Members of the recompute base.
    #[arg(long, default_value_t = 1_000_000)]
    members: u64,
    /// Purchases (approximately) behind the recompute base.
    #[arg(long, default_value_t = 20_000_000)]
    purchases: u64,
    /// Purchases POSTed for the import figure.
    #[arg(long, default_value_t = 200_000)]
    import: u64,
    /// Purchases timed one by one for the latency figure.
    #[arg(long, default_value_t = 100)]
    latency: u64,
    /// `sqlite`, `postgres`, `both`, or `none` (only the offline figure).
    #[arg(long, default_value = "both")]
    backend: String,
    /// Members of the recompute base on PostgreSQL (its first pass is slower: a network round
    /// trip per statement).
    #[arg(long, default_value_t = 100_000)]
    pg_members: u64,
    /// Members of the store for the "back after a month offline" figure (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    offline_members: u64,
    /// Days the gateway is away, each changing 1 % of its members.
    #[arg(long, default_value_t = 30)]
    offline_days: u64,
}

const DAY_MS: i64 = 86_400_000;

fn backends(arg: &str) -> anyhow::Result<Vec<Backend>> {
    Ok(match arg {
        "sqlite" => vec![Backend::Sqlite],
        "postgres" => vec![Backend::Postgres],
        "both" => vec![Backend::Sqlite, Backend::Postgres],
        // Only the offline figure.
        "none" => vec![],
        other => anyhow::bail!("--backend {other}: expected sqlite, postgres or both"),
    })
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    // Head office's own warnings (a failed fit, a failed pass) belong beside the figures.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    println!(
        "data: machine {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for backend in backends(&args.backend)? {
        let members = match backend {
            Backend::Sqlite => args.members,
            Backend::Postgres => args.pg_members.min(args.members),
        };
        let purchases = args.purchases * members / args.members.max(1);
        recompute(backend, members, purchases)?;
        online(backend, args.import, args.latency)?;
    }
    if args.offline_members > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(offline(args.offline_members, args.offline_days))?;
    }
    Ok(())
}

/// A location on `backend` and what keeps it alive.
fn location(backend: Backend, dir: &std::path::Path) -> (Location, Option<PgSchema>) {
    match backend {
        Backend::Sqlite => (Location::Sqlite(dir.join("hq.sqlite")), None),
        Backend::Postgres => {
            let schema = PgSchema::new();
            (schema.location(), Some(schema))
        }
    }
}

/// A deterministic xorshift, so every run generates the same base.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const INSERT_MEMBER: Sql = Sql::same(
    "INSERT INTO members (member_id, record_json, version, presence, tier, has_purchases,
        home_store, dirty) VALUES (?1, ?2, 1, 1, 'member', ?3, ?4, 0)",
);
const INSERT_DAY: Sql = Sql::same(
    "INSERT INTO member_days (member_id, day, spend, purchases, visits) VALUES (?1, ?2, ?3, 1, ?4)
    ON CONFLICT DO NOTHING",
);
const INSERT_CATEGORY: Sql = Sql::same(
    "INSERT INTO member_categories (member_id, month, category, amount) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT DO NOTHING",
);

/// Generates a base the way BG/NBD assumes shoppers behave: each member joins on a day of the
/// last two years, buys at a personal rate (mean gap 7 to ~200 days, a few very frequent) until
/// they drop out (a personal chance after each purchase), spends 5 to 200 EUR a time, and
/// visits without buying now and then. About `purchases / members` purchases each on average
/// (the rate is scaled to reach it). Returns the purchase days written.
fn generate(db: &mut Db, members: u64, purchases: u64, today: i64) -> anyhow::Result<u64> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_member = purchases as f64 / members.max(1) as f64;
    // Unscaled, the process below gives about 5 purchases a member; scale the rates to the ask.
    let speed = (per_member / 5.0).max(0.05);
    let month = instore_sync::store::purchases::month_of_day(today);
    let mut days_written = 0u64;
    let mut tx = db.transaction()?;
    for m in 0..members {
        let id = format!("M{m:07}");
        let home = format!("s{}", m % 1000);
        let joined = today - (rng.unit() * 729.0) as i64;
        let gap = (7.0 + rng.unit().powi(2) * 200.0) / speed;
        let drop = (0.02 + rng.unit() * 0.25) / speed;
        let mut day = joined as f64;
        let mut spend_total = 0i64;
        let mut bought = false;
        loop {
            let d = day as i64;
            if d > today {
                break;
            }
            let spend = 500 + (rng.next() % 19_500) as i64;
            let visits = i64::from(rng.unit() < 0.3);
            days_written +=
                tx.execute(&INSERT_DAY, instore_sync::params![&id, d, spend, visits])?;
            spend_total += spend;
            bought = true;
            if rng.unit() < drop {
                break;
            }
            // Exponential gaps: a Poisson purchase process at the member's rate.
            day += (-gap * (1.0 - rng.unit()).ln()).max(1.0);
        }
        let record = format!(
            r#"{{"member_id":"{id}","display_name":"B","tier":"member","consent":{{"presence":true}},"home_store":"{home}"}}"#
        );
        tx.execute(
            &INSERT_MEMBER,
            instore_sync::params![&id, record, bought, &home],
        )?;
        if bought {
            let linen = spend_total * (30 + (m % 60) as i64) / 100;
            tx.execute(
                &INSERT_CATEGORY,
                instore_sync::params![&id, month, "linen", linen],
            )?;
            tx.execute(
                &INSERT_CATEGORY,
                instore_sync::params![&id, month, "shoes", spend_total - linen],
            )?;
        }
    }
    tx.commit()?;
    Ok(days_written)
}

fn recompute(backend: Backend, members: u64, purchases: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (loc, _schema) = location(backend, dir.path());
    let mut db = loc.connect()?;
    let now = instore_sync::now_ms();
    let today = now.div_euclid(DAY_MS);
    let t = Instant::now();
    let days = generate(&mut db, members, purchases, today).context("generating the base")?;
    println!(
        "data {}: generated {members} members, {days} purchase days (~{purchases} purchases asked) in {:.1} s",
        backend.name(),
        t.elapsed().as_secs_f64()
    );
    let settings = ComputeSettings {
        compute: Default::default(),
        fanout: FanoutSettings::default(),
    };
    let cancel = CancellationToken::new();
    for (label, pass) in [
        ("first full pass (every member written and placed)", 1),
        ("second full pass (nothing changed)", 2),
    ] {
        let t = Instant::now();
        let (stats, touched) = full(&mut db, now, &settings, &cancel)?;
        println!(
            "data {}: {label}: {:.1} s (rank {:.1} s incl. BG/NBD fit {:.2} s, recompute {:.1} s), {} members, {} changed, model {:?}, {} channels touched",
            backend.name(),
            t.elapsed().as_secs_f64(),
            stats.rank_ms as f64 / 1000.0,
            stats.fit_ms as f64 / 1000.0,
            stats.recompute_ms as f64 / 1000.0,
            stats.members,
            stats.changed,
            stats.model,
            touched.len(),
        );
        println!(
            "{}",
            serde_json::json!({"bench": "data_recompute", "backend": backend.name(),
                "members": members, "purchase_days": days, "pass": pass,
                "seconds": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                "rank_s": stats.rank_ms as f64 / 1000.0, "fit_s": stats.fit_ms as f64 / 1000.0,
                "changed": stats.changed})
        );
    }
    dashboard(&mut db, backend, members, now)?;
    // Dropped off any async thread: a PostgreSQL client owns a runtime.
    drop(db);
    Ok(())
}

/// The dashboard's views over the computed base, each timed once (a person opening the page).
fn dashboard(db: &mut Db, backend: Backend, members: u64, now: i64) -> anyhow::Result<()> {
    use instore_sync::dashboard::views;
    let today = now.div_euclid(DAY_MS);
    let mut times = serde_json::Map::new();
    let mut time = |name: &str, f: &mut dyn FnMut(&mut Db) -> anyhow::Result<String>| {
        let t = Instant::now();
        let what = f(db)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "data {}: dashboard {name}: {ms:.0} ms ({what})",
            backend.name()
        );
        times.insert(format!("{name}_ms"), serde_json::json!(ms.round()));
        anyhow::Ok(())
    };
    time("pareto", &mut |db| {
        Ok(format!("{} points", views::pareto(db)?.len()))
    })?;
    time("funnel", &mut |db| {
        let f = views::funnel(db, today)?;
        Ok(format!("{} transitions", f.transitions.len()))
    })?;
    time("level_moves", &mut |db| {
        Ok(format!(
            "{} levels",
            views::level_moves(db, views::month_start(today))?.len()
        ))
    })?;
    time("overdue", &mut |db| {
        Ok(format!(
            "{} overdue",
            views::overdue(db, today, None, None, 100)?.total
        ))
    })?;
    time("stores", &mut |db| {
        Ok(format!("{} stores", views::stores_today(db, now)?.len()))
    })?;
    let mut line = serde_json::json!({"bench": "data_dashboard", "backend": backend.name(),
        "members": members});
    if let Some(o) = line.as_object_mut() {
        o.extend(times);
    }
    println!("{line}");
    Ok(())
}

fn online(backend: Backend, import: u64, latency: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(online_async(backend, import, latency))
}

/// A head office in-process with its data in `dir` (and on PostgreSQL at `database`): its base
/// URL (admin token `bench`), what stops it and what it returns when stopped.
async fn start_hq(
    dir: &std::path::Path,
    database: Option<String>,
) -> anyhow::Result<(
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), instore_sync::Error>>,
)> {
    let port = |l: std::net::TcpListener| l.local_addr().map(|a| a.port());
    let http = port(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let mqtt = port(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let text = format!(
        "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n[api]\ntoken = \"bench\"\n\
         [broker]\nlisten = \"127.0.0.1:{mqtt}\"\n",
        dir.display().to_string()
    );
    let mut cfg = instore_sync::HqConfig::parse(&text, "bench")?;
    cfg.database.url = database;
    let cancel = CancellationToken::new();
    let hq = instore_sync::start(cfg, cancel.clone()).await?;
    let base = format!("http://{}", hq.http_addr());
    Ok((base, cancel, tokio::spawn(hq.wait())))
}

async fn online_async(backend: Backend, import: u64, latency: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(tokio::task::spawn_blocking(PgSchema::new).await?),
    };
    let (base, cancel, done) =
        start_hq(dir.path(), schema.as_ref().map(|s| s.url().to_string())).await?;
    let client = reqwest::Client::new();
    let n_members = 10_000u64;
    let members: Vec<String> = (0..n_members)
        .map(|i| format!(r#"{{"member_id":"L{i:05}","display_name":"B","tier":"member","consent":{{"presence":true}},"home_store":"s1"}}"#))
        .collect();
    client
        .post(format!("{base}/api/members"))
        .bearer_auth("bench")
        .body(members.join("\n"))
        .send()
        .await?
        .error_for_status()?;
    let day = utc_date(instore_sync::now_ms());
    // Import.
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < import {
        let n = (import - sent).min(10_000);
        let body: Vec<String> = (sent..sent + n)
            .map(|i| format!(r#"{{"purchase_id":"I{i}","member_id":"L{:05}","store_id":"s1","at":"{day}T08:00:00Z","amount_minor":{},"currency":"EUR","items":[{{"category":"linen","amount_minor":1}}]}}"#, i % n_members, 100 + i % 900))
            .collect();
        let r: serde_json::Value = client
            .post(format!("{base}/api/purchases"))
            .bearer_auth("bench")
            .body(body.join("\n"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(r["imported"] == n, "import refused rows: {r}");
        sent += n;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "data {}: purchase import over HTTP: {import} rows in {secs:.1} s = {:.0} rows/s",
        backend.name(),
        import as f64 / secs
    );
    println!(
        "{}",
        serde_json::json!({"bench": "data_import", "backend": backend.name(), "rows": import,
            "rows_per_s": (import as f64 / secs).round()})
    );
    // Let the compute stage catch up with the import before timing single purchases.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let token = "bench";
    let fetch = async |cursor: &str| -> anyhow::Result<serde_json::Value> {
        Ok(client
            .get(format!("{base}/api/stores/s1/changes?since={cursor}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?)
    };
    let mut cursor = String::new();
    let mut lat = Vec::new();
    for i in 0..latency {
        let member = format!("L{:05}", (i * 97) % n_members);
        // Catch up with the stream (as a gateway would) before the purchase.
        loop {
            let c = fetch(&cursor).await?;
            cursor = next_cursor(&c);
            if caught_up(&c) {
                break;
            }
        }
        let t = Instant::now();
        let line = format!(
            r#"{{"purchase_id":"T{i}","member_id":"{member}","store_id":"s1","at":"{day}T09:{:02}:00Z","amount_minor":{},"currency":"EUR","items":[{{"category":"shoes{i}","amount_minor":1}}]}}"#,
            i % 60,
            50_000 + i
        );
        client
            .post(format!("{base}/api/purchases"))
            .bearer_auth(token)
            .body(line)
            .send()
            .await?
            .error_for_status()?;
        loop {
            let c = fetch(&cursor).await?;
            cursor = next_cursor(&c);
            let seen = c["channels"].as_array().into_iter().flatten().any(|ch| {
                ch["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["member"]["member_id"] == member.as_str())
            });
            if seen {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "no change for {member} in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    if !lat.is_empty() {
        let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
        println!(
            "data {}: purchase -> store change stream ({} purchases): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
            backend.name(),
            lat.len(),
            q(0.5).as_secs_f64() * 1000.0,
            q(0.95).as_secs_f64() * 1000.0,
            lat[lat.len() - 1].as_secs_f64() * 1000.0
        );
        println!(
            "{}",
            serde_json::json!({"bench": "data_latency", "backend": backend.name(),
                "purchases": lat.len(), "p50_ms": (q(0.5).as_secs_f64() * 1000.0).round(),
                "p95_ms": (q(0.95).as_secs_f64() * 1000.0).round()})
        );
    }
    cancel.cancel();
    done.await??;
    if let Some(s) = schema {
        tokio::task::spawn_blocking(move || drop(s)).await?;
    }
    Ok(())
}

/// A head office of one store's `members` (SQLite, in-process), where 1 % of them change each
/// of `days` days while a gateway is away: the bytes it downloads to catch up, as JSON and as
/// zstd, beside what the channel's snapshot would have cost.
async fn offline(members: u64, days: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (base, cancel, done) = start_hq(dir.path(), None).await?;
    let client = reqwest::Client::new();
    let record = |i: u64, day: u64| {
        format!(
            r#"{{"member_id":"O{i:07}","display_name":"Shopper {i} v{day}","tier":"member","tags":["linen"],"consent":{{"presence":true}},"home_store":"s1","identifiers":[{{"kind":"ibeacon","uuid":"e2c56db5-dffb-48d2-b060-d0f5a71096e0","major":{},"minor":{}}}]}}"#,
            1 + i / 65_536,
            i % 65_536
        )
    };
    let import = async |ids: std::ops::Range<u64>, day: u64| -> anyhow::Result<()> {
        let ids: Vec<u64> = ids.collect();
        for chunk in ids.chunks(10_000) {
            let body: Vec<String> = chunk.iter().map(|&i| record(i, day)).collect();
            client
                .post(format!("{base}/api/members"))
                .bearer_auth("bench")
                .body(body.join("\n"))
                .send()
                .await?
                .error_for_status()?;
        }
        Ok(())
    };
    // Pulls the stream from `cursor` to the head; the bytes as received and the changes seen.
    let pull = async |cursor: &mut String, zstd: bool| -> anyhow::Result<(u64, u64)> {
        let (mut bytes, mut changes) = (0u64, 0u64);
        loop {
            let mut req = client
                .get(format!("{base}/api/stores/s1/changes?since={cursor}"))
                .bearer_auth("bench");
            if zstd {
                req = req.header("Accept-Encoding", "zstd");
            }
            let r = req.send().await?.error_for_status()?;
            let packed = r
                .headers()
                .get("content-encoding")
                .is_some_and(|v| v == "zstd");
            let body = r.bytes().await?;
            bytes += body.len() as u64;
            let json = if packed {
                zstd::decode_all(&body[..])?
            } else {
                body.to_vec()
            };
            let c: serde_json::Value = serde_json::from_slice(&json)?;
            changes += c["channels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|ch| ch["changes"].as_array().map_or(0, Vec::len) as u64)
                .sum::<u64>();
            *cursor = next_cursor(&c);
            if caught_up(&c) {
                return Ok((bytes, changes));
            }
        }
    };
    let t = Instant::now();
    import(0..members, 0).await?;
    // The gateway's first sync: a snapshot of the whole set (it is further behind than
    // `snapshot_after_changes`), then the stream from the snapshot's version.
    // Asked before everyone is placed, head office would build a snapshot of each new head.
    loop {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900),
            "{members} members not placed in 15 min"
        );
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let done: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("instore_sync_members_recomputed_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if done >= members as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (mut gateway, snap_bytes) = loop {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900),
            "{members} members not placed in 15 min"
        );
        let c: serde_json::Value = client
            .get(format!("{base}/api/stores/s1/changes?since="))
            .bearer_auth("bench")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let snap = c["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ch| ch["channel"] == "store:s1")
            .map(|ch| &ch["snapshot"]);
        if let Some(s) = snap.filter(|s| s["members"].as_u64() == Some(members)) {
            let v = s["version"].as_u64().unwrap_or(0);
            break (format!("store:s1={v}"), s["bytes"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    pull(&mut gateway, true).await?;
    println!(
        "data offline: {members} members of one store imported and placed in {:.1} s; their snapshot {:.2} MB",
        t.elapsed().as_secs_f64(),
        snap_bytes as f64 / 1e6
    );
    let away = gateway.clone();
    let per_day = (members / 100).max(1);
    let mut probe = gateway.clone();
    for day in 1..=days {
        let from = (day * per_day * 7) % members;
        let ids = from..(from + per_day).min(members);
        let n = ids.end - ids.start;
        import(ids, day).await?;
        let mut got = 0;
        while got < n {
            got += pull(&mut probe, false).await?.1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (plain, changes) = pull(&mut away.clone(), false).await?;
    let (packed, _) = pull(&mut away.clone(), true).await?;
    println!(
        "data offline: back after {days} days of 1 % changes ({changes} changes of {members} members): \
         {:.2} MB as JSON, {:.2} MB with zstd ({:.0} B/change); a snapshot instead: {:.2} MB",
        plain as f64 / 1e6,
        packed as f64 / 1e6,
        packed as f64 / changes.max(1) as f64,
        snap_bytes as f64 / 1e6
    );
    println!(
        "{}",
        serde_json::json!({"bench": "data_offline", "members": members, "days": days,
            "changes": changes, "json_bytes": plain, "zstd_bytes": packed,
            "snapshot_bytes": snap_bytes})
    );
    cancel.cancel();
    done.await??;
    Ok(())
}

/// `chain=N,store:s1=M,...` from a changes answer: where a gateway would be after applying it.
fn next_cursor(c: &serde_json::Value) -> String {
    c["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ch| {
            Some(format!(
                "{}={}",
                ch["channel"].as_str()?,
                ch["to"].as_u64()?
            ))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether every channel of a changes answer reached its head.
fn caught_up(c: &serde_json::Value) -> bool {
    c["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|ch| ch["to"] == ch["head"])
}

/// `YYYY-MM-DD` of a Unix-millisecond time (UTC).
fn utc_date(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_else(|_| "2026-11-02".to_string())
}
