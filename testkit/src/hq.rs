//! The real head office in-process: free ports, a temporary data folder, SQLite or a PostgreSQL
//! schema of its own, started and waited for until its MQTT session is up.

use std::{net::SocketAddr, time::Duration};

use instore_sync::{ApiConfig, AuthConfig, BrokerConfig, HqConfig, HttpConfig};
use tokio_util::sync::CancellationToken;

use crate::net::free_port;

/// The admin API token of every test head office.
pub const ADMIN: &str = "test-admin-token";
/// The read-only `[api] viewer_token` of [`config`].
pub const VIEWER: &str = "test-viewer-token-0123";
/// The `[auth] gateway_secret` of every test head office.
pub const SECRET: &str = "test-gateway-secret-0123";
/// How long the helpers wait for head office before failing the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Which database a test head office runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `both_backends!(name, |backend| async { ... })`: two tests, `name::on_sqlite` and
/// `name::on_postgres`, each running the body with its backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn on_sqlite() {
                ($body)($crate::hq::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn on_postgres() {
                ($body)($crate::hq::Backend::Postgres).await
            }
        }
    };
}

/// A head-office config for `dir`: loopback HTTP on a free port, [`ADMIN`], [`VIEWER`],
/// [`SECRET`].
pub fn config(dir: &std::path::Path, broker: BrokerConfig) -> HqConfig {
    HqConfig {
        data_dir: dir.to_path_buf(),
        http: HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
        },
        api: ApiConfig {
            token: ADMIN.into(),
            viewer_token: Some(VIEWER.into()),
        },
        auth: AuthConfig {
            gateway_secret: Some(SECRET.into()),
            require_sealed: false,
        },
        broker,
        database: Default::default(),
        compute: Default::default(),
        membership: Default::default(),
        privacy: Default::default(),
    }
}

/// The embedded broker on a free loopback port.
pub fn embedded() -> BrokerConfig {
    BrokerConfig {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        url: None,
        ..BrokerConfig::default()
    }
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

impl Hq {
    /// Starts head office on SQLite and waits until its MQTT session is subscribed.
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
        let instore_sync::config::MqttUrl { host, port, .. } =
            instore_sync::config::parse_mqtt_url(&url).unwrap();
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

    /// `mqtt://host:port` of the broker head office uses, for a gateway's `[sync] broker`.
    pub fn mqtt_url(&self) -> String {
        format!("mqtt://{}:{}", self.mqtt_host, self.mqtt_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// A GET of `path` with the admin token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
    }

    /// The JSON answer of a GET of `path`, which must succeed.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Polls a JSON endpoint until `ok` holds; its last answer.
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

    /// `/metrics` as text.
    /// The HTTP status of a change pull by `gateway` of `store` presenting `token`: how a test
    /// asks whether head office takes a gateway credential.
    pub async fn pull_status(&self, store: &str, gateway: &str, token: &str) -> u16 {
        reqwest::Client::new()
            .get(self.url(&format!("/api/stores/{store}/changes")))
            .bearer_auth(token)
            .header("X-Instore-Gateway", gateway)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
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

    /// Cancels head office and waits for a clean stop.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.done)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
