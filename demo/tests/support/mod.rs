//! Helpers for the end-to-end tests: real binaries as child processes on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The workspace's built binaries (nextest and `cargo test --workspace` build them all).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the workspace's tests",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when dropped; its stderr goes to a log file kept in the
/// test's folder for post-mortems.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info,rumqttd=off")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit; None if still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Head office started as a process with its embedded broker, in `dir`.
pub struct Hq {
    pub proc: Proc,
    pub http: String,
    pub mqtt: String,
    pub token: String,
    pub secret: String,
}

pub async fn start_hq(dir: &Path) -> Hq {
    let http_port = free_port();
    let mqtt_port = free_port();
    let token = "hq-test-token".to_string();
    let secret = "0123456789abcdef0123456789abcdef".to_string();
    let cfg = format!(
        "data_dir = \"hq-data\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[api]\ntoken = \"{token}\"\n\
         [auth]\ngateway_secret = \"{secret}\"\n[broker]\nlisten = \"127.0.0.1:{mqtt_port}\"\n"
    );
    let path = dir.join("hq.toml");
    std::fs::write(&path, cfg).unwrap();
    let proc = Proc::spawn(
        &bin("instore-sync"),
        &["run", "--config", path.to_str().unwrap()],
        dir.join("hq.log"),
    );
    let http = format!("http://127.0.0.1:{http_port}");
    let client = reqwest::Client::new();
    eventually("head office /healthz", Duration::from_secs(30), || {
        let c = client.clone();
        let url = format!("{http}/healthz");
        async move {
            c.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    Hq {
        proc,
        http,
        mqtt: format!("mqtt://127.0.0.1:{mqtt_port}"),
        token,
        secret,
    }
}

impl Hq {
    pub async fn import_members(&self, ndjson: String) -> serde_json::Value {
        reqwest::Client::new()
            .post(format!("{}/api/members", self.http))
            .bearer_auth(&self.token)
            .body(ndjson)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn gateway(&self, id: &str) -> Option<serde_json::Value> {
        let list: Vec<serde_json::Value> = reqwest::Client::new()
            .get(format!("{}/api/gateways", self.http))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list.into_iter().find(|g| g["id"] == id)
    }
}

/// Writes an agent config (sim source, sync to `hq`) into `dir` and returns its path.
pub fn agent_config(
    dir: &Path,
    hq: &Hq,
    store: &str,
    gateway: &str,
    http_port: u16,
    rules: &str,
) -> PathBuf {
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    let token =
        instore_protocol::token::gateway_token(hq.secret.as_bytes(), store, gateway).unwrap();
    let cfg = format!(
        r#"store_id = "{store}"
gateway_id = "{gateway}"
data_dir = "data"
[http]
listen = "127.0.0.1:{http_port}"
admin_token = "admin-test-token"
[[sources]]
kind = "sim"
seed = 42
shoppers_per_minute = 120.0
member_share = 1.0
population = 50
mean_dwell_s = 30.0
[presence]
depart_after_s = 5
[react]
rules = "rules.toml"
[sync]
enabled = true
broker = "{mqtt}"
hq_url = "{http}"
token = "{token}"
batch_max_age_ms = 50
reconnect_min_ms = 100
reconnect_max_ms = 1000
"#,
        mqtt = hq.mqtt,
        http = hq.http,
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The simulated population as NDJSON.
pub fn population_ndjson(n: u32) -> String {
    instore_agent::sources::sim::population(n)
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect()
}

/// Alerts on every consenting member's arrival, whatever the tier.
pub const ALERT_ON_EVERY_ARRIVAL: &str = r#"
[[rules]]
name = "any-arrival"
on = "arrive"
priority = "normal"
message = "{display_name} ({tier}) arrived at the {zone}"
cooldown_s = 3600
"#;
