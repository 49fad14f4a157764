#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The agent with no head office: `members import`, then `run` with `[sync] enabled = false` and
//! a simulated crowd; `GET /api/presence` lists the members in the store. Real processes, real
//! SQLite files, real HTTP.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use instore_agent::sources::sim;

const TOKEN: &str = "standalone-admin-token";
const POPULATION: u32 = 200;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the agent if the test fails before stopping it.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"store_id = "store-1"
gateway_id = "gw-1"
data_dir = "data"

[http]
listen = "127.0.0.1:{port}"
admin_token = "{TOKEN}"

[[sources]]
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
    .unwrap();
    cfg
}

fn write_members(dir: &Path) -> PathBuf {
    let path = dir.join("members.ndjson");
    let text: String = sim::population(POPULATION)
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

async fn get(url: &str, token: Option<&str>) -> Option<reqwest::Response> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.ok()
}

#[tokio::test]
async fn members_imported_locally_show_up_in_presence_without_head_office() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let members = write_members(dir.path());
    let exe = env!("CARGO_BIN_EXE_instore-agent");

    let import = Command::new(exe)
        .args(["members", "import"])
        .arg(&members)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");
    let report: serde_json::Value = serde_json::from_slice(&import.stdout).unwrap();
    assert_eq!(report["imported"], u64::from(POPULATION), "{report}");

    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Agent(
        Command::new(exe)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
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

    let pid = agent.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        dir.path().join("data").join("outbox.db").exists(),
        "events were kept locally for a later uplink"
    );
}
