#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real agent under a stand-in for systemd: a unix datagram socket passed as
//! `NOTIFY_SOCKET`, with `WATCHDOG_USEC` set as systemd sets it for `WatchdogSec=`. READY=1 comes
//! only once the HTTP listener answers, carries a status line with the unit's figures, keep-alives
//! follow at half the watchdog interval, and SIGTERM says STOPPING=1. An agent that cannot start
//! never says READY. (That keep-alives stop when the engine wedges is tested on the notifier task
//! itself, `service.rs`, with a heartbeat the test stops.)

mod support;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use support::{
    http::{get, metric},
    net::free_port,
    process::{AgentProcess, import_members, run_command, write_agent_config, write_sim_members},
};

const TOKEN: &str = "notify-admin-token";
const MEMBERS: u32 = 25;
/// systemd's WatchdogSec=1s: keep-alives every 500 ms.
const WATCHDOG_USEC: &str = "1000000";

fn notify_socket(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (sock, path)
}

/// The next datagram, or None after `within`.
fn next_message(sock: &UnixDatagram, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

fn sim_config(dir: &Path, port: u16) -> std::path::PathBuf {
    write_agent_config(
        dir,
        port,
        TOKEN,
        &format!(
            r#"[[sources]]
kind = "sim"
zone = "entrance"
seed = 3
shoppers_per_minute = 120.0
member_share = 0.9
population = {MEMBERS}
mean_dwell_s = 600.0

[sync]
enabled = false
"#
        ),
    )
}

#[tokio::test]
async fn systemd_hears_ready_once_http_answers_then_status_keepalives_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = sim_config(dir.path(), port);
    import_members(&cfg, &write_sim_members(dir.path(), MEMBERS));
    let (sock, sock_path) = notify_socket(dir.path());

    let log_path = dir.path().join("agent.log");
    let mut run = run_command(&cfg, "info");
    run.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let agent = AgentProcess::spawn(run);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let ready = next_message(&sock, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no notification within 60 s: {}", log()));
    assert!(ready.starts_with("READY=1\n"), "first message: {ready:?}");
    // READY means the listener is bound: the very first request answers, no retry.
    let base = format!("http://127.0.0.1:{port}");
    let health = get(&format!("{base}/healthz"), None)
        .await
        .expect("/healthz unreachable right after READY=1");
    assert_eq!(health.status(), 200);
    // The status line's figures are the agent's own (the sim population includes members
    // without presence consent, who are never cached).
    let cached = metric(&base, "instore_agent_members_cached").await.unwrap();
    assert!(cached > 0.0);
    assert!(
        ready.contains(&format!("STATUS={cached} members cached, "))
            && ready.contains("; outbox ")
            && ready.ends_with("; broker standalone (sync off)"),
        "{ready:?}"
    );

    // Three seconds of WatchdogSec=1s: keep-alives every ~500 ms, and the status line.
    let mut keepalives = 0;
    let mut statuses = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match next_message(&sock, Duration::from_millis(300)).as_deref() {
            Some("WATCHDOG=1") => keepalives += 1,
            Some(m) if m.starts_with("STATUS=") => statuses.push(m.to_string()),
            Some(m) => panic!("unexpected notification {m:?}"),
            None => {}
        }
    }
    assert!(
        (4..=8).contains(&keepalives),
        "{keepalives} keep-alives in 3 s at a 500 ms period: {}",
        log()
    );
    assert!(
        statuses.iter().any(|s| s.contains("members cached")
            && s.contains("present")
            && s.contains("outbox")
            && s.contains("broker")),
        "{statuses:?}"
    );

    agent.stop();
    let mut rest = Vec::new();
    while let Some(m) = next_message(&sock, Duration::from_millis(300)) {
        rest.push(m);
    }
    assert!(
        rest.iter().any(|m| m.starts_with("STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {rest:?}"
    );
}

#[tokio::test]
async fn an_agent_that_cannot_bind_its_http_port_never_says_ready() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = sim_config(dir.path(), port);
    let (sock, sock_path) = notify_socket(dir.path());

    let mut run = run_command(&cfg, "info");
    run.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = run.output().unwrap();
    assert!(!out.status.success(), "started on a taken port: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("binding the HTTP listener"),
        "{out:?}"
    );
    assert_eq!(next_message(&sock, Duration::from_millis(500)), None);
    drop(taken);
}
