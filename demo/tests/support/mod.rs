//! Helpers for the end-to-end tests: real binaries as child processes on loopback. What every
//! crate's tests share (ports, waiting, child processes, Mosquitto) is `instore_testkit`'s;
//! head office as a process, agent configs and a TCP proxy that cuts links are the demo's own.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use instore_testkit::{
    http::scrape,
    mosquitto::{MOSQUITTO, Mosquitto},
    net::{free_port, wait_tcp},
    process::{Proc, workspace_bin as bin},
    wait::eventually_some as eventually,
};

/// Which broker head office (and the agents) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// rumqttd inside the head-office process: restarting head office restarts the broker.
    Embedded,
    /// Debian's Mosquitto, a process of its own (see [`Mosquitto`]).
    Mosquitto,
}

/// Head office started as a process in `dir`, with its embedded broker or an external one.
/// Ports and config stay fixed across [`Hq::restart`], like a real server's.
pub struct Hq {
    pub proc: Proc,
    pub http: String,
    pub mqtt: String,
    pub token: String,
    pub secret: String,
    pub cfg: PathBuf,
    pub dir: PathBuf,
}

/// Head office with its embedded broker.
pub async fn start_hq(dir: &Path) -> Hq {
    start_hq_with(dir, None).await
}

/// Head office using the external broker at `broker_url` (`mqtt://host:port`), or its embedded
/// broker when `None`.
pub async fn start_hq_with(dir: &Path, broker_url: Option<&str>) -> Hq {
    start_hq_configured(dir, broker_url, "").await
}

/// Head office as [`start_hq_with`], with `extra` TOML (whole tables) appended to its config.
pub async fn start_hq_configured(dir: &Path, broker_url: Option<&str>, extra: &str) -> Hq {
    let http_port = free_port();
    let token = "hq-test-token".to_string();
    let secret = "0123456789abcdef0123456789abcdef".to_string();
    let (broker, mqtt) = match broker_url {
        Some(url) => (format!("url = \"{url}\""), url.to_string()),
        None => {
            let mqtt_port = free_port();
            (
                format!("listen = \"127.0.0.1:{mqtt_port}\""),
                format!("mqtt://127.0.0.1:{mqtt_port}"),
            )
        }
    };
    let cfg = format!(
        "data_dir = \"hq-data\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[api]\ntoken = \"{token}\"\n\
         [auth]\ngateway_secret = \"{secret}\"\n[broker]\n{broker}\n{extra}\n"
    );
    let path = dir.join("hq.toml");
    std::fs::write(&path, cfg).unwrap();
    let proc = spawn_hq(&path, dir);
    let hq = Hq {
        proc,
        http: format!("http://127.0.0.1:{http_port}"),
        mqtt,
        token,
        secret,
        cfg: path,
        dir: dir.to_path_buf(),
    };
    hq.wait_healthy().await;
    hq
}

fn spawn_hq(cfg: &Path, dir: &Path) -> Proc {
    Proc::spawn(
        &bin("instore-sync"),
        &["run", "--config", cfg.to_str().unwrap()],
        dir.join("hq.log"),
    )
}

impl Hq {
    pub async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        eventually("head office /healthz", Duration::from_secs(30), || {
            let c = client.clone();
            let url = format!("{}/healthz", self.http);
            async move {
                c.get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
    }

    /// Stops head office with `sig` ("KILL" or "TERM") and waits for the process to end.
    pub fn stop(&mut self, sig: &str) {
        self.proc.signal(sig);
        assert!(
            self.proc.wait_exit(Duration::from_secs(20)).is_some(),
            "head office did not stop on SIG{sig}\n{}",
            self.proc.log_text()
        );
    }

    /// Starts the stopped head office again: same config, ports and database.
    pub async fn start_again(&mut self) {
        self.proc = spawn_hq(&self.cfg, &self.dir);
        self.wait_healthy().await;
    }

    /// Head office's Prometheus text.
    pub async fn metrics(&self) -> String {
        scrape(&format!("{}/metrics", self.http)).await
    }

    pub async fn import_members(&self, ndjson: String) -> serde_json::Value {
        self.post("/api/members", ndjson).await
    }

    /// POSTs `body` to `path` with the admin token; the JSON answer (panics on an error status).
    pub async fn post(&self, path: &str, body: String) -> serde_json::Value {
        reqwest::Client::new()
            .post(format!("{}{path}", self.http))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GETs `path` with the admin token; `None` unless it answers 2xx with JSON.
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        reqwest::Client::new()
            .get(format!("{}{path}", self.http))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()
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
    AgentSetup::new(store, gateway, http_port).write(dir, hq, rules, "agent.toml")
}

/// The knobs of an agent config that the tests turn; [`AgentSetup::new`] gives the defaults the
/// end-to-end tests use.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    pub store: String,
    pub gateway: String,
    pub http_port: u16,
    /// Broker URL; head office's broker when `None` (a proxy in front of it otherwise).
    pub broker: Option<String>,
    pub shoppers_per_minute: f64,
    pub population: u32,
    pub mean_dwell_s: f64,
    pub depart_after_s: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl AgentSetup {
    pub fn new(store: &str, gateway: &str, http_port: u16) -> Self {
        Self {
            store: store.into(),
            gateway: gateway.into(),
            http_port,
            broker: None,
            shoppers_per_minute: 120.0,
            population: 50,
            mean_dwell_s: 30.0,
            depart_after_s: 5,
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
        }
    }

    /// Writes the config as `dir/name` (and the rules as `dir/rules.toml`); returns its path.
    pub fn write(&self, dir: &Path, hq: &Hq, rules: &str, name: &str) -> PathBuf {
        std::fs::write(dir.join("rules.toml"), rules).unwrap();
        let token = instore_protocol::token::gateway_token(
            hq.secret.as_bytes(),
            &self.store,
            &self.gateway,
        )
        .unwrap();
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
shoppers_per_minute = {spm:?}
member_share = 1.0
population = {population}
mean_dwell_s = {dwell:?}
[presence]
depart_after_s = {depart}
[react]
rules = "rules.toml"
[sync]
enabled = true
broker = "{mqtt}"
hq_url = "{http}"
token = "{token}"
batch_max_age_ms = 50
reconnect_min_ms = {rmin}
reconnect_max_ms = {rmax}
"#,
            store = self.store,
            gateway = self.gateway,
            http_port = self.http_port,
            spm = self.shoppers_per_minute,
            population = self.population,
            dwell = self.mean_dwell_s,
            depart = self.depart_after_s,
            mqtt = self.broker.as_deref().unwrap_or(&hq.mqtt),
            http = hq.http,
            rmin = self.reconnect_min_ms,
            rmax = self.reconnect_max_ms,
        );
        let path = dir.join(name);
        std::fs::write(&path, cfg).unwrap();
        path
    }
}

/// The value of the sample named exactly `series` in Prometheus text; 0 when absent, as an
/// unused counter family has no samples yet.
pub fn metric(text: &str, series: &str) -> f64 {
    instore_testkit::http::metric_value(text, series).unwrap_or(0.0)
}

/// A TCP proxy the test controls, standing in for the store's internet link: it forwards both
/// ways between its own port and `upstream`; [`TcpProxy::cut`] drops every connection and refuses
/// (accepts and closes at once) new ones until [`TcpProxy::restore`]; [`TcpProxy::blackhole`]
/// silently stops forwarding instead (sockets stay open, nothing passes), the way a dead 4G link
/// looks from both ends.
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    conns: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    accepted: std::sync::atomic::AtomicU64,
    hole: tokio::sync::watch::Sender<bool>,
    /// Sockets held open and unread while blackholed.
    graveyard: std::sync::Mutex<Vec<tokio::net::TcpStream>>,
}

impl TcpProxy {
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(ProxyState {
            cut: Default::default(),
            conns: Default::default(),
            accepted: Default::default(),
            hole: tokio::sync::watch::Sender::new(false),
            graveyard: Default::default(),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    continue;
                };
                st.accepted.fetch_add(1, Ordering::Relaxed);
                if st.cut.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                if *st.hole.borrow() {
                    st.graveyard.lock().unwrap().push(down);
                    continue;
                }
                let conn = st.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let mut hole = conn.hole.subscribe();
                    let swallowed = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => false,
                        _ = hole.wait_for(|h| *h) => true,
                    };
                    if swallowed {
                        conn.graveyard.lock().unwrap().extend([down, up]);
                    }
                });
                let mut conns = st.conns.lock().unwrap();
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        TcpProxy {
            port,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Drops every open connection (both sockets close) and refuses new ones.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.state.conns.lock().unwrap().drain(..) {
            h.abort();
        }
        self.state.graveyard.lock().unwrap().clear();
    }

    /// Stops forwarding without closing anything: both ends see silence, not an error, and new
    /// connections are accepted but never answered.
    pub fn blackhole(&self) {
        self.state.hole.send_replace(true);
    }

    /// Ends a cut or a blackhole; the sockets a blackhole held are closed.
    pub fn restore(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state.hole.send_replace(false);
        self.state.graveyard.lock().unwrap().clear();
    }

    /// Connections accepted so far (including those refused while cut).
    pub fn accepted(&self) -> u64 {
        self.state
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
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

fn host_port(broker: &str) -> (String, u16) {
    let (host, port) = broker
        .strip_prefix("mqtt://")
        .unwrap()
        .rsplit_once(':')
        .unwrap();
    (host.to_string(), port.parse().unwrap())
}

/// Publishes `payloads` on `topic` at QoS 1 (retained if asked) on `hq`'s broker, logged in as
/// gateway `as_gateway.0` of store `as_gateway.1` (its token from head office's secret: a stolen
/// gateway; brokers without authentication ignore the login), and waits until the broker took
/// them all.
pub async fn publish_raw(
    hq: &Hq,
    as_gateway: (&str, &str),
    retain: bool,
    topic: &str,
    payloads: Vec<Vec<u8>>,
) {
    let (host, port) = host_port(&hq.mqtt);
    let (gateway, store) = as_gateway;
    let id = format!("{gateway}:{store}:vandal{}", free_port());
    let mut opts = rumqttc::MqttOptions::new(id, host, port);
    let token =
        instore_protocol::token::gateway_token(hq.secret.as_bytes(), store, gateway).unwrap();
    opts.set_credentials(gateway, token);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
    let n = payloads.len();
    for p in payloads {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, p)
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while acked < n {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                eventloop.poll().await.unwrap()
            {
                acked += 1;
            }
        }
    })
    .await
    .expect("the broker took the payloads");
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// Whether the broker at `broker` answers a CONNECT with this login (`None`: anonymous) with
/// a CONNACK that accepts it; `false` when it refuses or drops the connection.
pub async fn broker_accepts(broker: &str, client_id: &str, login: Option<(&str, &str)>) -> bool {
    let (host, port) = host_port(broker);
    let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 4);
    let first = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
        .await
        .expect("the broker answers within 10 s");
    matches!(
        first,
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(
            rumqttc::ConnAck {
                code: rumqttc::ConnectReturnCode::Success,
                ..
            }
        )))
    )
}
