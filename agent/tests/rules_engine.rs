#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rules and QR scans through a whole running agent (`runtime::start`): scanners connect over TCP,
//! their codes reach the engine and fire `qr_scan` rules; the rules file is reloaded when it
//! changes on disk, and a broken file keeps the rules in force.

mod support;

use std::{path::Path, time::Duration};

use instore_agent::{config::AgentConfig, runtime};
use instore_protocol::{
    parse_ndjson,
    qr::sign,
    rotating::{day_key, day_of_ms, shipped_days},
};
use support::{net::free_port, wait::until};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// How long a scan's effect or a reload may take to show.
const WAIT: Duration = Duration::from_secs(15);

/// Each member's own secret (head office derives their day keys from it).
fn secret(member: &str) -> [u8; 32] {
    [member.len() as u8 + member.as_bytes()[member.len() - 1]; 32]
}

const RULES_V1: &str = r#"
[[rules]]
name = "vip-arrival"
on = "arrive"
tiers = ["gold"]
message = "{display_name} is here"
"#;

const RULES_V2: &str = r#"
[[rules]]
name = "vip-arrival"
on = "arrive"
tiers = ["gold"]
message = "{display_name} is here"

[[rules]]
name = "till-scan"
on = "qr_scan"
zones = ["till"]
message = "{display_name} scanned in at the {zone}"
cooldown_s = 0
"#;

/// Two consenting gold members with QR day keys around now.
fn members() -> Vec<instore_protocol::MemberRecord> {
    let text = ["M1", "M2"]
        .map(|id| {
            let keys: Vec<String> = shipped_days(instore_agent::now_ms())
                .map(|d| {
                    format!(
                        r#"{{"kind":"rotating_day_key","day":{d},"key":"{}"}}"#,
                        hex::encode(day_key(&secret(id), d))
                    )
                })
                .collect();
            format!(
                r#"{{"member_id":"{id}","display_name":"{id}","tier":"gold","consent":{{"presence":true}},"identifiers":[{}]}}"#,
                keys.join(",")
            )
        })
        .join("\n");
    let (records, errors) = parse_ndjson(&text);
    assert!(errors.is_empty(), "{errors:?}");
    records
}

fn code(member: &str) -> String {
    let now = instore_agent::now_ms();
    sign(member, &day_key(&secret(member), day_of_ms(now)), now)
}

fn config(dir: &Path, qr_port: u16) -> AgentConfig {
    let text = format!(
        r#"store_id = "s1"
gateway_id = "g1"
data_dir = "data"
[http]
listen = "127.0.0.1:0"
[[sources]]
kind = "qr"
zone = "till"
listen = "127.0.0.1:{qr_port}"
[react]
rules = "rules.toml"
"#
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    AgentConfig::load(&dir.join("agent.toml")).unwrap()
}

/// Replaces the rules file the way editors do: write aside, then rename over.
fn save_rules(dir: &Path, text: &str) {
    let tmp = dir.join(".rules.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("rules.toml")).unwrap();
}

/// The whole agent on a temp dir with `rules`, a QR scanner port and the two members loaded.
async fn start_agent(rules: &str) -> (tempfile::TempDir, u16, runtime::Agent) {
    let dir = tempfile::tempdir().unwrap();
    save_rules(dir.path(), rules);
    let port = free_port();
    let agent = runtime::start(config(dir.path(), port)).await.unwrap();
    agent.set_members(&members()).await.unwrap();
    (dir, port, agent)
}

async fn scan(conn: &mut TcpStream, line: &str) {
    conn.write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_codes_over_tcp_reach_the_engine_and_fire_qr_rules() {
    let (_dir, port, agent) = start_agent(RULES_V2).await;
    let m = agent.metrics.clone();

    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    scan(&mut conn, "not-a-member-code").await;

    until("the bad code to be counted", WAIT, || {
        m.qr_rejected
            .get_or_create(&vec![("error", "format".to_string())])
            .get()
            == 1
    })
    .await;
    assert_eq!(m.alerts_raised.get(), 0);

    scan(&mut conn, &code("M1")).await;
    until("the alert", WAIT, || m.alerts_raised.get() == 1).await;
    // A second scanner, in another connection, at the same time.
    let mut other = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    scan(&mut other, &code("M2")).await;
    until("the second alert", WAIT, || m.alerts_raised.get() == 2).await;
    assert_eq!(m.qr_scans.get(), 3);
    let recent = agent.alerts.recent(10);
    assert_eq!(recent.len(), 2);
    assert!(agent.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rules_file_is_reloaded_and_a_bad_one_keeps_the_old_rules() {
    let (dir, port, agent) = start_agent(RULES_V1).await;
    let m = agent.metrics.clone();
    assert_eq!(m.rules_loaded.get(), 1);

    // Without a qr_scan rule a scan raises nothing.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    scan(&mut conn, &code("M1")).await;
    until("the scan to be identified", WAIT, || {
        m.identified.get() == 1
    })
    .await;
    assert_eq!(m.alerts_raised.get(), 0);

    save_rules(dir.path(), RULES_V2);
    until("the reload", WAIT, || m.rules_reloads.get() == 1).await;
    assert_eq!(m.rules_loaded.get(), 2);
    scan(&mut conn, &code("M1")).await;
    until("the new rule's alert", WAIT, || m.alerts_raised.get() == 1).await;

    // A typo: refused, counted, and the two rules stay in force.
    save_rules(
        dir.path(),
        &RULES_V2.replace("{display_name} scanned", "{nickname} scanned"),
    );
    until("the refused reload", WAIT, || {
        m.rules_reload_failures.get() == 1
    })
    .await;
    assert_eq!((m.rules_loaded.get(), m.rules_reloads.get()), (2, 1));
    scan(&mut conn, &code("M2")).await;
    until("an alert under the kept rules", WAIT, || {
        m.alerts_raised.get() == 2
    })
    .await;
    assert!(agent.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_written_to_a_fifo_reach_the_engine_and_a_new_writer_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    save_rules(dir.path(), RULES_V2);
    let fifo = dir.path().join("scanner");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let text = r#"store_id = "s1"
gateway_id = "g1"
data_dir = "data"
[http]
listen = "127.0.0.1:0"
[[sources]]
kind = "qr"
zone = "till"
path = "scanner"
[react]
rules = "rules.toml"
"#;
    std::fs::write(dir.path().join("agent.toml"), text).unwrap();
    let agent = runtime::start(AgentConfig::load(&dir.path().join("agent.toml")).unwrap())
        .await
        .unwrap();
    agent.set_members(&members()).await.unwrap();
    let m = agent.metrics.clone();

    // One writer, then it goes away (a scanner unplugged), then another.
    for (who, alerts) in [("M1", 1), ("M2", 2)] {
        let (fifo, line) = (fifo.clone(), code(who));
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            writeln!(w, "{line}").unwrap();
        })
        .await
        .unwrap();
        until("the scan's alert", WAIT, || m.alerts_raised.get() == alerts).await;
    }
    assert_eq!(m.qr_scans.get(), 2);
    assert!(agent.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_beyond_the_connection_limit_are_turned_away_and_the_others_keep_working() {
    use tokio::io::AsyncReadExt;
    let (_dir, port, agent) = start_agent(RULES_V2).await;
    let mut conns = Vec::new();
    for _ in 0..instore_agent::sources::qr::MAX_CONNECTIONS {
        conns.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // Each of those is accepted before the next; one more is closed at once.
    scan(&mut conns[0], &code("M1")).await;
    let m = agent.metrics.clone();
    until("the first scanner's alert", WAIT, || {
        m.alerts_raised.get() == 1
    })
    .await;
    let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("the extra connection is closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let last = conns.len() - 1;
    scan(&mut conns[last], &code("M2")).await;
    until("the last admitted scanner's alert", WAIT, || {
        m.alerts_raised.get() == 2
    })
    .await;
    assert!(agent.shutdown(Duration::from_secs(10)).await);
}
