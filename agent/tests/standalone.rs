#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The agent with no head office: `members import`, then `run` with `[sync] enabled = false` and
//! a simulated crowd; `GET /api/presence` lists the members in the store. Real processes, real
//! SQLite files, real HTTP.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use instore_agent::sources::sim;
use support::{
    http::get,
    net::free_port,
    process::{AgentProcess, import_members, run_command, write_agent_config, write_sim_members},
};

const TOKEN: &str = "standalone-admin-token";
const POPULATION: u32 = 200;

fn write_config(dir: &Path, port: u16) -> PathBuf {
    write_agent_config(
        dir,
        port,
        TOKEN,
        &format!(
            r#"[[sources]]
kind = "sim"
zone = "fitting-rooms"
seed = 5
shoppers_per_minute = 300.0
member_share = 0.9
population = {POPULATION}
mean_dwell_s = 600.0

[sync]
enabled = false
"#
        ),
    )
}

#[tokio::test]
async fn members_imported_locally_show_up_in_presence_without_head_office() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let members = write_sim_members(dir.path(), POPULATION);

    let import = import_members(&cfg, &members);
    let report: serde_json::Value = serde_json::from_slice(&import.stdout).unwrap();
    assert_eq!(report["imported"], u64::from(POPULATION), "{report}");

    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut run = run_command(&cfg, "info");
    run.stdout(Stdio::null()).stderr(log);
    let mut agent = AgentProcess::spawn(run);
    let base = format!("http://127.0.0.1:{port}");
    let started = instore_agent::now_ms();

    let mut present = Vec::new();
    for _ in 0..300 {
        if let Some(r) = get(&format!("{base}/api/presence"), Some(TOKEN)).await
            && r.status() == 200
        {
            present = r.json::<Vec<serde_json::Value>>().await.unwrap();
            if present.len() >= 2 {
                break;
            }
        }
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "agent exited: {}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        present.len() >= 2,
        "members never showed up as present: {present:?}\n{}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap()
    );

    let pop = sim::population(POPULATION);
    for p in &present {
        let id = p["member_id"].as_str().expect("member_id");
        let record = pop
            .iter()
            .find(|m| m.member_id == id)
            .expect("a member from the import");
        assert!(record.consent.presence, "{id} opted out but is listed");
        assert_eq!(p["zone"], "fitting-rooms", "{p}");
        let since = p["since"].as_i64().expect("since, Unix ms");
        assert!(
            since >= started - 5_000 && since <= instore_agent::now_ms(),
            "{since}"
        );
        let rssi = p["last_rssi"].as_i64().expect("last_rssi");
        assert!((-100..=-30).contains(&rssi), "{rssi}");
    }

    let unauthorized = get(&format!("{base}/api/presence"), None).await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let wrong = get(&format!("{base}/api/presence"), Some("nope"))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    agent.stop();
    assert!(
        dir.path().join("data").join("outbox.db").exists(),
        "events were kept locally for a later uplink"
    );
}
