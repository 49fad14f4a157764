//! The real head office in-process for the uplink tests, and helpers to read it over HTTP.

use std::{net::SocketAddr, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{http::get_json, net::free_port};

pub const GATEWAY: &str = "gw-1";
pub const ADMIN: &str = "admin-token-for-tests";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct HeadOffice {
    pub http: SocketAddr,
    pub mqtt: String,
    pub cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl HeadOffice {
    /// Head office with its embedded broker.
    pub async fn start() -> HeadOffice {
        Self::start_with(instore_sync::BrokerConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
            url: None,
            client_id: "instore-sync".into(),
            share_group: None,
        })
        .await
    }

    pub async fn start_with(broker: instore_sync::BrokerConfig) -> HeadOffice {
        let dir = tempfile::tempdir().unwrap();
        let cfg = instore_sync::HqConfig {
            data_dir: dir.path().to_path_buf(),
            http: instore_sync::HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            },
            api: instore_sync::ApiConfig {
                token: ADMIN.into(),
            },
            auth: instore_sync::AuthConfig {
                gateway_secret: Some("gateway-secret-for-tests-0123".into()),
            },
            broker,
            database: Default::default(),
            compute: Default::default(),
            membership: Default::default(),
        };
        let cancel = CancellationToken::new();
        let office = instore_sync::start(cfg, cancel.clone()).await.unwrap();
        let hq = HeadOffice {
            http: office.http_addr(),
            mqtt: office.mqtt_url(),
            cancel,
            _dir: dir,
        };
        tokio::spawn(office.wait());
        hq.wait_for("/healthz", |v| v["broker_connected"] == true)
            .await;
        hq
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        get_json(&format!("http://{}{path}", self.http), ADMIN).await
    }

    pub async fn wait_for(&self, path: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.get(path).await;
            if ok(&v) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every stored event of `gateway` as (seq, the test's event number).
    pub async fn events_of(&self, gateway: &str) -> Vec<(u64, u64)> {
        let v = self
            .get(&format!(
                "/api/events?gateway={gateway}&after_seq=0&limit=1000"
            ))
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["body"]["unique_devices"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl HeadOffice {
    /// Every stored event of [`GATEWAY`].
    pub async fn events(&self) -> Vec<(u64, u64)> {
        self.events_of(GATEWAY).await
    }
}
