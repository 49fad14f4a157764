#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The downlink of member changes against a test head office (`support/test_hq.rs`) with the
//! real `instore-agent` binary: changes reach the cache, a consent withdrawal leaves no trace in
//! any file, and SIGKILL during a snapshot download, a snapshot apply or a delta apply leaves the
//! old member set working and the next start converges. Lookups of scanned members not held run
//! the agent in-process.

mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use instore_agent::cache::MemberCache;
use instore_protocol::{
    Consent, Identifier, MemberRecord,
    changes::{LookupResponse, RemoveReason},
};
use support::{
    http::metric,
    net::free_port,
    process::{AgentProcess, run_command, write_agent_config},
    test_hq::{HQ_TOKEN, TestHq},
    wait::eventually,
};

const STORE_CHANNEL: &str = "store:store-1";
const WAIT: Duration = Duration::from_secs(60);

fn member(i: u32) -> MemberRecord {
    let b = i.to_be_bytes();
    MemberRecord {
        member_id: format!("T{i:07}"),
        display_name: format!("Test member {i}"),
        tier: "gold".into(),
        consent: Consent {
            presence: true,
            marketing: false,
        },
        identifiers: vec![Identifier::Mac {
            address: format!("C0:01:{:02X}:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2], b[3]),
        }],
        ..Default::default()
    }
}

fn agent_config(dir: &Path, hq: &TestHq) -> (PathBuf, String) {
    let port = free_port();
    let cfg = write_agent_config(
        dir,
        port,
        "admin",
        &format!(
            r#"[sync]
enabled = true
broker = "mqtt://127.0.0.1:1"
hq_url = "{}"
token = "{HQ_TOKEN}"
changes_poll_s = 1
reconnect_min_ms = 100
reconnect_max_ms = 500
"#,
            hq.url()
        ),
    );
    (cfg, format!("http://127.0.0.1:{port}"))
}

/// The agent binary, its stderr lines passed to `on_line` on a thread of their own.
fn spawn_agent(cfg: &Path, on_line: impl Fn(&str) + Send + 'static) -> AgentProcess {
    let mut cmd: Command = run_command(cfg, "info,instore_agent=debug");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut p = AgentProcess::spawn(cmd);
    let stderr = p.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            on_line(&line);
        }
    });
    p
}

fn kill9(mut p: AgentProcess) {
    p.0.kill().unwrap();
    p.0.wait().unwrap();
}

async fn members_cached(base: &str) -> Option<f64> {
    metric(base, "instore_agent_members_cached").await
}

async fn wait_cached(base: &str, n: usize) {
    eventually(&format!("{n} members cached"), WAIT, || async {
        members_cached(base).await == Some(n as f64)
    })
    .await;
}

/// What `members.db` holds, read with the agent stopped: member id → rev is not exposed, so ids.
fn held(data: &Path) -> (usize, BTreeMap<String, u64>) {
    let cache = MemberCache::open(&data.join("members.db")).unwrap();
    (cache.load().unwrap().len(), cache.channels().unwrap())
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_cache_and_a_consent_withdrawal_leaves_no_trace_in_any_file() {
    let hq = TestHq::start("store-1").await;
    let irk = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    hq.with(|s| {
        for i in 0..40 {
            s.upsert(STORE_CHANNEL, member(i));
        }
        for i in 40..50 {
            s.upsert("chain", member(i));
        }
        let mut x = member(7_000_001);
        x.member_id = "Mwithdrawn-7f3a".into();
        x.display_name = "Ms. Withdrawn Zed".into();
        x.identifiers = vec![
            Identifier::Mac {
                address: "C0:FF:EE:12:34:56".into(),
            },
            Identifier::Irk { irk: irk.into() },
        ];
        s.upsert(STORE_CHANNEL, x.clone());
        s.upsert("chain", x);
    });
    let dir = tempfile::tempdir().unwrap();
    let (cfg, base) = agent_config(dir.path(), &hq);
    let agent = spawn_agent(&cfg, |_| {});
    wait_cached(&base, 51).await;
    let data = dir.path().join("data");
    let traces: Vec<Vec<u8>> = vec![
        b"Mwithdrawn-7f3a".to_vec(),
        b"Ms. Withdrawn Zed".to_vec(),
        b"C0:FF:EE:12:34:56".to_vec(),
        vec![0xc0, 0xff, 0xee, 0x12, 0x34, 0x56],
        irk.as_bytes().to_vec(),
        hex::decode(irk).unwrap(),
    ];
    assert!(
        !files_containing(&data, &traces[0]).is_empty(),
        "the scan finds the member while held"
    );

    hq.with(|s| s.remove(None, "Mwithdrawn-7f3a", RemoveReason::ConsentWithdrawn));
    wait_cached(&base, 50).await;
    // The withdrawal is applied and the log truncated before the next request: let one pass.
    let n = hq.with(|s| s.requests.len());
    eventually("another changes request", WAIT, || async {
        hq.with(|s| s.requests.len()) > n + 1
    })
    .await;
    for t in &traces {
        let found = files_containing(&data, t);
        assert!(
            found.is_empty(),
            "{:?} still in {found:?}",
            String::from_utf8_lossy(t)
        );
    }
    agent.stop();
    for t in &traces {
        assert!(files_containing(&data, t).is_empty());
    }
    assert_eq!(hq.with(|s| s.bad_auth), 0, "token and gateway header sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_download_killed_midway_resumes_with_a_range_request_while_the_old_members_stay()
{
    let hq = TestHq::start("store-1").await;
    hq.with(|s| {
        for i in 0..20 {
            s.upsert(STORE_CHANNEL, member(i));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (cfg, base) = agent_config(dir.path(), &hq);
    let agent = spawn_agent(&cfg, |_| {});
    wait_cached(&base, 20).await;
    hq.with(|s| {
        for i in 1_000..31_000 {
            s.upsert("chain", member(i));
        }
        s.prune("chain");
        s.throttle = Some(Duration::from_millis(250));
    });
    let total = hq.with(|s| s.pruned["chain"].r.bytes);
    let snapshots = data.join("snapshots");
    let partial = || {
        std::fs::read_dir(&snapshots)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| e.metadata().ok())
            .map_or(0, |m| m.len())
    };
    eventually("a partial snapshot file", WAIT, || async { partial() > 0 }).await;
    assert_eq!(
        members_cached(&base).await,
        Some(20.0),
        "the old members meanwhile"
    );
    kill9(agent);
    let cut_at = partial();
    assert!(cut_at > 0 && cut_at < total, "{cut_at} of {total}");

    hq.with(|s| s.throttle = None);
    let agent = spawn_agent(&cfg, |_| {});
    wait_cached(&base, 30_020).await;
    let ranges: Vec<Option<String>> = hq.with(|s| {
        s.requests
            .iter()
            .filter(|(p, _)| p.starts_with("snapshot"))
            .map(|(_, r)| r.clone())
            .collect()
    });
    let resumed = ranges
        .iter()
        .flatten()
        .filter_map(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<u64>()
                .ok()
        })
        .any(|n| n > 0);
    assert!(resumed, "resumed with Range: {ranges:?}");
    agent.stop();
    assert_eq!(partial(), 0, "the snapshot file is deleted once applied");
    let (n, channels) = held(&data);
    assert_eq!(n, 30_020);
    assert_eq!(channels["chain"], hq.with(|s| s.pruned["chain"].r.version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_apply_killed_midway_leaves_the_old_cache_and_the_next_start_applies_it() {
    let hq = TestHq::start("store-1").await;
    hq.with(|s| {
        for i in 0..20 {
            s.upsert(STORE_CHANNEL, member(i));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (cfg, base) = agent_config(dir.path(), &hq);
    let agent = spawn_agent(&cfg, |_| {});
    wait_cached(&base, 20).await;
    agent.stop();
    hq.with(|s| {
        for i in 1_000..101_000 {
            s.upsert("chain", member(i));
        }
        s.prune("chain");
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let agent = spawn_agent(&cfg, move |line| {
        if line.contains("applying member snapshot") {
            let _ = tx.send(());
        }
    });
    rx.recv_timeout(WAIT).expect("the snapshot apply to start");
    std::thread::sleep(Duration::from_millis(300));
    kill9(agent);
    let (n, channels) = held(&data);
    assert_eq!(n, 20, "the old set, not half a snapshot");
    assert!(!channels.contains_key("chain"));
    let before = hq.with(|s| {
        s.requests
            .iter()
            .filter(|(p, _)| p.starts_with("snapshot"))
            .count()
    });

    let agent = spawn_agent(&cfg, |_| {});
    wait_cached(&base, 100_020).await;
    let after = hq.with(|s| {
        s.requests
            .iter()
            .filter(|(p, _)| p.starts_with("snapshot"))
            .count()
    });
    assert_eq!(
        before, after,
        "the complete file was checked and applied, not fetched again"
    );
    agent.stop();
    assert_eq!(held(&data).0, 100_020);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_apply_killed_midway_leaves_whole_responses_and_the_next_start_converges() {
    let hq = TestHq::start("store-1").await;
    hq.with(|s| {
        s.max_changes = 2_000;
        for i in 0..40_000 {
            s.upsert("chain", member(i));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (cfg, base) = agent_config(dir.path(), &hq);
    let agent = spawn_agent(&cfg, |_| {});
    eventually("some responses applied", WAIT, || async {
        members_cached(&base).await.is_some_and(|n| n >= 4_000.0)
    })
    .await;
    kill9(agent);
    let (n, channels) = held(&data);
    let version = channels.get("chain").copied().unwrap_or(0);
    // One new member per change: the cache is exactly at a response boundary.
    assert_eq!(n as u64, version);
    assert_eq!(version % 2_000, 0, "whole responses only: {version}");
    assert!(version < 40_000, "killed before the end");

    let agent = spawn_agent(&cfg, |_| {});
    wait_cached(&base, 40_000).await;
    agent.stop();
    let (n, channels) = held(&data);
    assert_eq!((n, channels["chain"]), (40_000, 40_000));
    assert_eq!(hq.with(|s| s.truth().len()), 40_000);
}

/// The agent in-process with a QR scanner on a TCP port, synced to `hq`.
async fn agent_with_scanner(
    dir: &Path,
    hq: &TestHq,
    timeout_ms: u64,
) -> (instore_agent::runtime::Agent, u16) {
    let qr = free_port();
    let text = format!(
        r#"store_id = "store-1"
gateway_id = "gw-1"
data_dir = "data"
[http]
listen = "127.0.0.1:0"
[[sources]]
kind = "qr"
zone = "till"
listen = "127.0.0.1:{qr}"
[sync]
enabled = true
broker = "mqtt://127.0.0.1:1"
hq_url = "{}"
token = "{HQ_TOKEN}"
lookup_timeout_ms = {timeout_ms}
"#,
        hq.url()
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    let cfg = instore_agent::config::AgentConfig::load(&dir.join("agent.toml")).unwrap();
    (instore_agent::runtime::start(cfg).await.unwrap(), qr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanned_member_the_store_does_not_hold_is_asked_of_head_office_and_refused_when_it_cannot_answer()
 {
    use instore_protocol::{
        qr::sign,
        rotating::{day_key, day_of_ms, shipped_days},
    };
    use tokio::io::AsyncWriteExt;
    let secret = [0x17u8; 32];
    let now = instore_agent::now_ms();
    let mut visitor = member(9);
    visitor.member_id = "V1".into();
    let keys: Vec<Identifier> = shipped_days(now)
        .map(|day| Identifier::RotatingDayKey {
            day,
            key: hex::encode(day_key(&secret, day)),
        })
        .collect();
    let hq = TestHq::start("store-1").await;
    hq.with(|s| {
        s.lookups.insert(
            "V1".into(),
            LookupResponse {
                rev: 1,
                member: visitor.clone(),
                keys: keys.clone(),
            },
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let (agent, qr) = agent_with_scanner(dir.path(), &hq, 1_000).await;
    let m = agent.metrics.clone();
    let lookups = |r: &'static str| m.qr_lookups.get_or_create(&vec![("result", r)]).get();
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", qr))
        .await
        .unwrap();
    let code = |id: &str, key: &[u8; 32]| sign(id, &day_key(key, day_of_ms(now)), now);

    conn.write_all(format!("{}\r\n", code("V1", &secret)).as_bytes())
        .await
        .unwrap();
    eventually("the lookup to identify the visitor", WAIT, || async {
        lookups("found") == 1
    })
    .await;
    assert_eq!(m.identified.get(), 1);
    // A forged code for the same member: head office's answer alone identifies nobody.
    conn.write_all(format!("{}\r\n", code("V1", &[1; 32])).as_bytes())
        .await
        .unwrap();
    eventually("the forgery refused", WAIT, || async {
        m.qr_rejected
            .get_or_create(&vec![("error", "bad_signature".to_string())])
            .get()
            == 1
    })
    .await;
    // Unknown at head office too.
    conn.write_all(format!("{}\r\n", code("NOBODY", &secret)).as_bytes())
        .await
        .unwrap();
    eventually("not found counted", WAIT, || async {
        lookups("not_found") == 1
    })
    .await;
    // Head office too slow: refused after the timeout, counted.
    hq.with(|s| s.lookup_delay = Some(Duration::from_secs(3)));
    conn.write_all(format!("{}\r\n", code("OTHER", &secret)).as_bytes())
        .await
        .unwrap();
    eventually("the timeout counted", WAIT, || async {
        lookups("timeout") == 1
    })
    .await;
    assert_eq!(m.identified.get(), 1, "nobody else was identified");
    assert_eq!(hq.with(|s| s.bad_auth), 0);
    agent.shutdown(Duration::from_secs(5)).await;
}
