//! Sync with head office: the uplink drains the outbox over MQTT, the downlink takes member
//! change streams (and snapshots) over HTTP, lookups ask about scanned members not held here.
//!
//! In: committed events in the [`Outbox`]; from the broker, [`Ack`](instore_protocol::Ack)s on
//! `topics::ack(gateway)` and [`MembersNotice`](instore_protocol::MembersNotice)s on
//! `topics::members(store)`; member changes from `GET {hq_url}/api/stores/{store}/changes?since=`,
//! channel snapshots from the paths those name, lookups from `POST …/members/lookup`.
//! Out: [`EventBatch`](instore_protocol::EventBatch)es (QoS 1) on `topics::events(gateway)`; the
//! retained gateway status (online on every connect, offline on shutdown and as the last will);
//! acknowledged events deleted from the outbox; member changes written to the [`MemberCache`] and
//! sent to the engine as [`Control::Patch`] (or, after a snapshot, [`Control::Members`]).
//!
//! It must not delete an event head office has not acknowledged, block the MQTT event loop, apply
//! half a member set, or log payloads or member data at info.
//!
//! # Tasks
//! - `connection`: owns rumqttc's `EventLoop` and only polls it; reconnects with jittered
//!   exponential backoff; hands connection state, acks and member notices to the others through
//!   channels that never block it (a watch, a `try_send`, a watch).
//! - `uplink`: reads the outbox in sequence order, batches by count, bytes and age, keeps up to
//!   `max_inflight_batches` batches unacknowledged *by head office* (not merely by the broker),
//!   and after any reconnect or an ack timeout re-sends everything unacknowledged from the
//!   lowest number. rumqttc drops its QoS 1 state on a session-less reconnect, so the outbox, not
//!   the client, is the retransmission buffer; head office de-duplicates on (gateway, seq).
//! - `downlink`: on start, on a notice ahead of the cache and on a timer, asks for changes and
//!   applies each response in one transaction, then has the engine patch its index; snapshots
//!   are downloaded resumably (`snapshot`); failures retry with backoff.
//! - `lookup`: one scanned code at a time, bounded by `lookup_timeout_ms`.
//!
//! # Known gap
//! After a database rollback (see the outbox docs), events appended before the first ack arrives
//! may reuse numbers head office already holds and would be dropped there as duplicates.

pub mod campaigns;
mod connection;
mod downlink;
mod lookup;
mod snapshot;
mod uplink;

pub use lookup::LOOKUP_QUEUE;

use std::{sync::Arc, time::Duration};

use instore_protocol::{GatewayStatus, MAX_PAYLOAD_BYTES, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    cache::MemberCache, config::SyncConfig, engine::Control, metrics::Metrics, outbox::Outbox,
};

/// Everything the sync tasks need, handed over by the runtime.
pub struct SyncContext {
    pub store_id: String,
    pub gateway_id: String,
    pub cfg: SyncConfig,
    pub outbox: Outbox,
    pub cache: MemberCache,
    pub engine: mpsc::Sender<Control>,
    pub metrics: Metrics,
    /// Where snapshot files are downloaded to (`data_dir/snapshots`).
    pub snapshot_dir: std::path::PathBuf,
    /// Where the store's campaigns are kept (`data_dir/campaigns.json`), and the tag of the set
    /// the engine runs now.
    pub campaigns_path: std::path::PathBuf,
    pub campaigns_tag: String,
    /// The engine's lookups of scanned members not held here.
    pub lookups: Option<mpsc::Receiver<crate::engine::QrLookup>>,
    /// Whether members (and campaigns) are taken from head office: not on a receiver.
    pub downlink: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("[sync] broker {url:?}: {reason}")]
    BrokerUrl { url: String, reason: String },
    #[error("[sync] broker {url:?}: no usable TLS trust roots on this system ({reason})")]
    TlsRoots { url: String, reason: String },
    #[error("[sync] {key} {path}: {reason}")]
    TlsFile {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("[sync] hq_url {url:?}: {reason}")]
    HqUrl { url: String, reason: String },
    #[error("[sync] cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("[sync] cannot encode the gateway status: {0}")]
    Encode(#[from] serde_json::Error),
}

/// MQTT keepalive: short enough that a dead 4G link is noticed (and the last will published)
/// within a minute, long enough not to matter for data volume.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Room for the MQTT header and topic around the largest payload.
const PACKET_SLACK: usize = 4 * 1024;

/// Connection state published by the connection task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Link {
    connected: bool,
    /// Incremented on every ConnAck: a new epoch means everything unacknowledged must be re-sent.
    epoch: u64,
}

/// Starts the connection, uplink and downlink tasks on `tracker`; they stop on `cancel`.
/// Fails only on configuration that can never work (a bad URL, no TLS roots).
pub fn spawn(
    ctx: SyncContext,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), SyncError> {
    let SyncContext {
        store_id,
        gateway_id,
        cfg,
        outbox,
        cache,
        engine,
        metrics,
        snapshot_dir,
        campaigns_path,
        campaigns_tag,
        lookups,
        downlink,
    } = ctx;
    let sealer = Sealer::for_token(&cfg.token);
    let status_topic = topics::status(&gateway_id);
    let status = |online| {
        serde_json::to_vec(&GatewayStatus {
            v: SCHEMA_VERSION,
            gateway_id: gateway_id.clone(),
            store_id: store_id.clone(),
            online,
        })
        .map(|json| sealer.seal(&status_topic, json))
    };
    let online = status(true)?;
    // The last will too: sealed now, published by the broker whenever the link drops.
    let offline = status(false)?;

    let options = mqtt_options(&cfg, &gateway_id, offline.clone())?;
    // Room for every batch the uplink may have outstanding plus status and subscriptions, so the
    // uplink's publish never waits on a full request queue while connected.
    let (client, eventloop) = AsyncClient::new(options, cfg.max_inflight_batches + 16);
    let http = downlink::http_client()?;

    let (link_tx, link_rx) = watch::channel(Link::default());
    let (acks_tx, acks_rx) = mpsc::channel(256);
    let (notice_tx, notice_rx) = watch::channel(downlink::Notice::default());
    let (notice_key_tx, notice_key_rx) = watch::channel(None);

    let conn = connection::Connection {
        client: client.clone(),
        eventloop,
        gateway_id: gateway_id.clone(),
        store_id: store_id.clone(),
        online,
        offline,
        backoff: Backoff::new(cfg.reconnect_min_ms, cfg.reconnect_max_ms),
        link: link_tx,
        acks: acks_tx,
        notices: notice_tx,
        metrics: metrics.clone(),
        sealer: sealer.clone(),
        hq_seals: false,
        notice_key: notice_key_rx,
    };
    tracker.spawn(conn.run(cancel.clone()));

    let up = uplink::Uplink::new(
        client,
        sealer,
        gateway_id.clone(),
        store_id.clone(),
        &cfg,
        outbox,
        metrics.clone(),
    );
    tracker.spawn(up.run(link_rx, acks_rx, cancel.clone()));

    // Checked now: a bad hq_url is a configuration error, not a retry loop.
    let lookup_url = lookup::Lookups::url(&cfg.hq_url, &store_id)?;
    if let Some(rx) = lookups {
        let l = lookup::Lookups {
            http: http.clone(),
            url: lookup_url,
            token: cfg.token.clone(),
            gateway_id: gateway_id.clone(),
            timeout: Duration::from_millis(cfg.lookup_timeout_ms.max(1)),
            engine: engine.clone(),
        };
        tracker.spawn(l.run(rx, cancel.clone()));
    }
    let down = downlink::Downlink {
        http,
        hq_url: cfg.hq_url.clone(),
        token: cfg.token.clone(),
        gateway_id,
        store_id,
        cache,
        snapshots: snapshot::Snapshots { dir: snapshot_dir },
        engine,
        metrics,
        backoff: Backoff::new(cfg.reconnect_min_ms, cfg.reconnect_max_ms),
        poll: Duration::from_secs(cfg.changes_poll_s),
        notice_key: notice_key_tx,
        campaigns_path,
        campaigns_tag,
        campaigns_seen: 0,
    };
    if downlink {
        tracker.spawn(down.run(notice_rx, cancel));
    }
    Ok(())
}

/// Seals what this gateway publishes under its key ([`instore_protocol::auth`]), and checks
/// head office's acks with the same key. Without a token (a gateway not enrolled) it seals
/// nothing and can check nothing.
#[derive(Debug, Clone)]
pub(crate) struct Sealer(Option<instore_protocol::auth::MessageKey>);

impl Sealer {
    pub(crate) fn for_token(token: &str) -> Self {
        Self((!token.is_empty()).then(|| instore_protocol::auth::MessageKey::for_gateway(token)))
    }

    /// `json` sealed for `topic`, or as it is without a key.
    pub(crate) fn seal(&self, topic: &str, json: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(key) => instore_protocol::auth::seal(key, topic, &json).unwrap_or(json),
            None => json,
        }
    }

    pub(crate) fn key(&self) -> Option<&instore_protocol::auth::MessageKey> {
        self.0.as_ref()
    }
}

fn mqtt_options(
    cfg: &SyncConfig,
    gateway_id: &str,
    will: Vec<u8>,
) -> Result<MqttOptions, SyncError> {
    let bad = |reason: &str| SyncError::BrokerUrl {
        url: cfg.broker.clone(),
        reason: reason.to_string(),
    };
    let url = reqwest::Url::parse(&cfg.broker).map_err(|e| bad(&e.to_string()))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        _ => return Err(bad("scheme must be mqtt:// or mqtts://")),
    };
    let host = url
        .host_str()
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });

    let mut options = MqttOptions::new(gateway_id, host, port);
    options
        .set_keep_alive(KEEPALIVE)
        // The broker keeps our subscriptions (and acks queued for us) across short drops.
        .set_clean_session(false)
        .set_max_packet_size(
            MAX_PAYLOAD_BYTES + PACKET_SLACK,
            MAX_PAYLOAD_BYTES + PACKET_SLACK,
        )
        .set_last_will(LastWill::new(
            topics::status(gateway_id),
            will,
            QoS::AtLeastOnce,
            true,
        ));
    if !cfg.token.is_empty() {
        // Brokers that authenticate gateways by token (Mosquitto with an auth plugin, EMQX) see
        // the gateway id as user name; brokers without authentication ignore it.
        options.set_credentials(gateway_id, cfg.token.clone());
    }
    if tls {
        options.set_transport(Transport::Tls(tls_config(cfg)?));
    } else if cfg.ca_file.is_some() || cfg.client_cert.is_some() {
        return Err(bad("ca_file and client_cert need an mqtts:// broker"));
    }
    Ok(options)
}

/// TLS for `mqtts://` ([`instore_daemon::tls`]): trust roots from `ca_file` or else the
/// operating system; a client certificate when `client_cert` is set.
fn tls_config(cfg: &SyncConfig) -> Result<TlsConfiguration, SyncError> {
    use instore_daemon::tls::{TlsError, TlsFiles, client_config};
    let config = client_config(TlsFiles {
        ca_file: cfg.ca_file.as_deref(),
        client_cert: cfg.client_cert.as_deref(),
        client_key: cfg.client_key.as_deref(),
    })
    .map_err(|e| match e {
        TlsError::File { key, path, reason } => SyncError::TlsFile { key, path, reason },
        TlsError::Roots { reason } => SyncError::TlsRoots {
            url: cfg.broker.clone(),
            reason,
        },
    })?;
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Jittered exponential backoff: each delay is drawn from the upper half of a window that doubles
/// from `min` to `max`, so a fleet of gateways that lost the same broker does not return in step.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    window: Duration,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Self {
        let min = Duration::from_millis(min_ms.max(1));
        let max = Duration::from_millis(max_ms).max(min);
        Backoff {
            min,
            max,
            window: min,
        }
    }

    fn reset(&mut self) {
        self.window = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let half = self.window / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let delay = half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        self.window = (self.window * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let mut b = Backoff::new(100, 1_000);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for d in &delays {
            assert!(*d <= Duration::from_millis(1_000), "{d:?}");
            assert!(*d >= Duration::from_millis(50), "{d:?}");
        }
        assert!(delays[7] >= Duration::from_millis(500), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn broker_urls_are_checked_before_anything_connects() {
        let mut cfg = SyncConfig {
            broker: "tcp://h:1".into(),
            ..SyncConfig::default()
        };
        let will = b"{}".to_vec();
        assert!(matches!(
            mqtt_options(&cfg, "g", will.clone()),
            Err(SyncError::BrokerUrl { .. })
        ));
        cfg.broker = "mqtt://127.0.0.1:1884".into();
        let o = mqtt_options(&cfg, "g", will.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1884));
        assert!(!o.clean_session());
        cfg.broker = "mqtt://[::1]".into();
        let o = mqtt_options(&cfg, "g", will).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.broker_address(), ("::1".to_string(), 1883));
    }
}
