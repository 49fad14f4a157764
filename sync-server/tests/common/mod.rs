//! Shared harness: a head office on free ports with a temp data dir, a fake gateway speaking
//! MQTT with rumqttc, and HTTP helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use instore_protocol::{Ack, Event, EventBatch, EventBody, GatewayStatus, SCHEMA_VERSION, topics};
use instore_sync::{ApiConfig, AuthConfig, BrokerConfig, HqConfig, HttpConfig};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "test-admin-token";
pub const SECRET: &str = "test-gateway-secret-0123";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Hq {
    pub http: SocketAddr,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub cancel: CancellationToken,
    pub done: tokio::task::JoinHandle<Result<(), instore_sync::Error>>,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL schema of a head office on PostgreSQL, dropped with it.
    pub pg: Option<instore_sync::store::testing::PgSchema>,
}

/// Which database a test head office runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `both_backends!(name, |backend| async { ... })`: two tests, `name_on_sqlite` and
/// `name_on_postgres`, each running the body with its backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn on_sqlite() {
                ($body)($crate::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn on_postgres() {
                ($body)($crate::common::Backend::Postgres).await
            }
        }
    };
}

pub fn config(dir: &std::path::Path, broker: BrokerConfig) -> HqConfig {
    HqConfig {
        data_dir: dir.to_path_buf(),
        http: HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
        },
        api: ApiConfig {
            token: ADMIN.into(),
        },
        auth: AuthConfig {
            gateway_secret: Some(SECRET.into()),
        },
        broker,
        database: Default::default(),
        compute: Default::default(),
        membership: Default::default(),
    }
}

pub fn embedded() -> BrokerConfig {
    BrokerConfig {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        url: None,
        client_id: "instore-sync".into(),
        share_group: None,
    }
}

impl Hq {
    /// Starts head office and waits until its MQTT session is subscribed.
    pub async fn start(broker: BrokerConfig) -> Hq {
        Self::start_with(broker, Backend::Sqlite, |_| {}).await
    }

    /// [`Hq::start`] on `backend`, with the config adjusted by `tweak` first.
    pub async fn start_with(
        broker: BrokerConfig,
        backend: Backend,
        tweak: impl FnOnce(&mut HqConfig),
    ) -> Hq {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), broker);
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let schema = instore_sync::store::testing::PgSchema::new();
                cfg.database.url = Some(schema.url().to_string());
                Some(schema)
            }
        };
        tweak(&mut cfg);
        let cancel = CancellationToken::new();
        let office = instore_sync::start(cfg, cancel.clone()).await.unwrap();
        let http = office.http_addr();
        let url = office.mqtt_url();
        let (host, port) = instore_sync::config::parse_mqtt_url(&url).unwrap();
        let done = tokio::spawn(office.wait());
        let hq = Hq {
            http,
            mqtt_host: host,
            mqtt_port: port,
            cancel,
            done,
            dir,
            pg,
        };
        hq.wait_for(|h| h["broker_connected"] == true, "/healthz")
            .await;
        hq
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Polls a JSON endpoint until `ok` holds.
    pub async fn wait_for(
        &self,
        ok: impl Fn(&serde_json::Value) -> bool,
        path: &str,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = reqwest::Client::new()
                .get(self.url(path))
                .bearer_auth(ADMIN)
                .send()
                .await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && ok(&v)
            {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on {path}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// POSTs `body` to `path` with the admin token; the JSON answer.
    pub async fn post_json(&self, path: &str, body: impl Into<reqwest::Body>) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(ADMIN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.done)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// A store gateway as head office sees it: publishes batches and status, receives acks.
pub struct FakeGateway {
    pub id: String,
    pub store: String,
    pub client: AsyncClient,
    pub inbox: mpsc::UnboundedReceiver<rumqttc::Publish>,
}

impl FakeGateway {
    /// Connects and subscribes to `extra` filters plus its ack topic, returning once subscribed.
    pub async fn connect(hq: &Hq, id: &str, store: &str) -> FakeGateway {
        Self::connect_with(&hq.mqtt_host, hq.mqtt_port, id, store, &[]).await
    }

    pub async fn connect_with(
        host: &str,
        port: u16,
        id: &str,
        store: &str,
        extra: &[String],
    ) -> FakeGateway {
        let mut opts = MqttOptions::new(format!("fake-{id}-{}", free_port()), host, port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(400 * 1024, 400 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let mut filters = vec![topics::ack(id)];
        filters.extend(extra.iter().cloned());
        let n = filters.len();
        for f in filters {
            client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        }
        let mut subacks = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        let (tx, inbox) = mpsc::unbounded_channel();
        while subacks < n {
            let ev = tokio::time::timeout_at(deadline, eventloop.poll())
                .await
                .expect("subscribe timed out")
                .expect("fake gateway connection");
            match ev {
                MqttEvent::Incoming(Packet::SubAck(_)) => subacks += 1,
                MqttEvent::Incoming(Packet::Publish(p)) => tx.send(p).unwrap(),
                _ => {}
            }
        }
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        FakeGateway {
            id: id.into(),
            store: store.into(),
            client,
            inbox,
        }
    }

    pub fn batch(&self, seqs: &[u64]) -> EventBatch {
        EventBatch {
            v: SCHEMA_VERSION,
            gateway_id: self.id.clone(),
            store_id: self.store.clone(),
            hello: None,
            events: seqs
                .iter()
                .map(|&seq| Event {
                    seq,
                    at_ms: 1_700_000_000_000 + seq as i64,
                    body: EventBody::Arrive {
                        member_id: format!("M{seq}"),
                        zone: "entrance".into(),
                        visit_id: format!("v{seq}"),
                    },
                })
                .collect(),
        }
    }

    pub async fn publish_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(topics::events(&self.id), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    pub async fn send(&self, seqs: &[u64]) {
        self.publish_raw(serde_json::to_vec(&self.batch(seqs)).unwrap())
            .await;
    }

    /// Sends a hello naming `boot` and `others`.
    pub async fn hello(&self, boot: u64, others: &[u64]) {
        let mut b = self.batch(&[]);
        b.hello = Some(instore_protocol::Hello {
            boot,
            boots: others.to_vec(),
        });
        self.publish_raw(serde_json::to_vec(&b).unwrap()).await;
    }

    /// Sends `events` as they are (any bodies, any numbers).
    pub async fn send_events(&self, events: Vec<Event>) {
        let mut b = self.batch(&[]);
        b.events = events;
        self.publish_raw(serde_json::to_vec(&b).unwrap()).await;
    }

    pub async fn status(&self, online: bool) {
        let s = GatewayStatus {
            v: SCHEMA_VERSION,
            gateway_id: self.id.clone(),
            store_id: self.store.clone(),
            online,
        };
        self.client
            .publish(
                topics::status(&self.id),
                QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&s).unwrap(),
            )
            .await
            .unwrap();
    }

    /// The next message on `topic`.
    pub async fn next_on(&mut self, topic: &str) -> rumqttc::Publish {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing on {topic}"))
                .expect("gateway connection closed");
            if p.topic == topic {
                return p;
            }
        }
    }

    pub async fn next_ack(&mut self) -> Ack {
        let p = self.next_on(&topics::ack(&self.id)).await;
        Ack::decode(&p.payload).unwrap()
    }
}

pub fn ranges(ack: &Ack) -> Vec<(u64, u64)> {
    ack.ranges.iter().map(|r| (r.first, r.last)).collect()
}

/// The value of a metric line starting with `prefix` in Prometheus text.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}
