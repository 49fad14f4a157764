//! Wiring: opens the database, starts the broker (if embedded), the MQTT session, ingest, the
//! members notifier and HTTP, and stops them in order. No domain logic here.
//!
//! Shutdown, on `cancel`: HTTP stops accepting; the event loop stops forwarding publishes (the
//! ones not yet forwarded stay unacknowledged, so the broker redelivers them); ingest commits and
//! acknowledges the group in hand; the MQTT session disconnects; the database thread drains its
//! queue and closes. Each step is bounded by a grace time, so shutdown ends within seconds.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, broker,
    cluster::{
        self,
        lease::{self, LeaseHandle, LeaseTask},
    },
    compute::run::{ComputeSettings, Runner},
    config::{BrokerEndpoint, DEFAULT_CLIENT_ID, HqConfig},
    fanout::{
        FanoutSettings, keys,
        notifier::{self, Notices},
        snapshots::Snapshots,
    },
    http::{self, AppState},
    ingest::{Ingest, mqtt},
    metrics::MetricsHandle,
    secrets::{self, SecretSource},
    store::{Store, StoreThread},
};

/// Publishes waiting for ingest, at most. Larger than the broker's inflight window (200), so
/// in practice the event loop never waits on it.
const PUBLISH_QUEUE: usize = 1024;
const NOTICE_QUEUE: usize = 1024;
/// How long each shutdown step may take before it is cut short.
const GRACE: Duration = Duration::from_secs(3);
/// With several instances: how often the notifier re-reads the heads other instances moved.
const FOLLOW_DATABASE_EVERY: Duration = Duration::from_secs(5);

/// A running head office. Learn its addresses, then [`HeadOffice::wait`] for it to stop.
#[derive(Debug)]
pub struct HeadOffice {
    http_addr: SocketAddr,
    broker_addr: Option<SocketAddr>,
    mqtt_host: String,
    mqtt_port: u16,
    cancel: CancellationToken,
    stop_mqtt: CancellationToken,
    client: rumqttc::AsyncClient,
    http: JoinHandle<std::io::Result<()>>,
    ingest: JoinHandle<()>,
    eventloop: JoinHandle<()>,
    notifier: JoinHandle<()>,
    compute: JoinHandle<()>,
    /// The once-only work's lease task (`None` for a lone instance).
    lease: Option<JoinHandle<()>>,
    stop_lease: CancellationToken,
    store_thread: StoreThread,
    views_thread: StoreThread,
}

impl HeadOffice {
    /// The bound HTTP address (the chosen port when `[http] listen` had port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The embedded broker's address; `None` with an external broker.
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.broker_addr
    }

    /// The broker gateways should use, as `mqtt://host:port`.
    pub fn mqtt_url(&self) -> String {
        match self.mqtt_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("mqtt://[{ip}]:{}", self.mqtt_port),
            _ => format!("mqtt://{}:{}", self.mqtt_host, self.mqtt_port),
        }
    }

    /// Waits until the caller's token is cancelled (or a part fails), then shuts down in order.
    pub async fn wait(self) -> Result<(), Error> {
        let HeadOffice {
            cancel,
            stop_mqtt,
            client,
            mut http,
            ingest,
            eventloop,
            notifier,
            compute,
            lease,
            stop_lease,
            store_thread,
            views_thread,
            ..
        } = self;
        let mut failure = None;
        let mut http_done = false;
        tokio::select! {
            // Biased: once cancelled, the HTTP server ending is the expected shutdown, not a
            // failure, even when both are ready at once.
            biased;
            _ = cancel.cancelled() => {}
            res = &mut http => {
                http_done = true;
                // The HTTP server only returns early on an I/O failure.
                if !cancel.is_cancelled() || !matches!(res, Ok(Ok(()))) {
                    failure = Some(task_error("http", res));
                }
                cancel.cancel();
            }
        }
        tracing::info!("shutting down");
        if !http_done && tokio::time::timeout(GRACE, &mut http).await.is_err() {
            tracing::warn!("HTTP requests still open after the grace time");
        }
        http.abort();
        if tokio::time::timeout(GRACE, ingest).await.is_err() {
            tracing::warn!("ingest did not finish its commit within the grace time");
        }
        // Acks are queued; a clean disconnect flushes them before the session closes.
        let _ = client.try_disconnect();
        if tokio::time::timeout(GRACE, eventloop).await.is_err() {
            stop_mqtt.cancel();
        }
        stop_mqtt.cancel();
        drop(client);
        if tokio::time::timeout(GRACE, compute).await.is_err() {
            tracing::warn!("a compute pass was still running after the grace time");
        }
        // After compute has stopped, so that another instance never computes alongside it.
        stop_lease.cancel();
        if let Some(lease) = lease {
            let _ = tokio::time::timeout(GRACE * 2, lease).await;
        }
        let _ = tokio::time::timeout(GRACE, notifier).await;
        // Every Store handle is gone with its task: the thread drains its queue and exits.
        let _ = tokio::task::spawn_blocking(move || {
            store_thread.join();
            views_thread.join();
        })
        .await;
        tracing::info!("stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn task_error(
    name: &'static str,
    res: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Error {
    match res {
        Ok(Ok(())) => Error::Stopped(name),
        Ok(Err(e)) => Error::Http(e),
        Err(e) => Error::Task(format!("{name}: {e}")),
    }
}

/// Runs head office until `cancel` is cancelled. See [`start`] to learn bound addresses first.
pub async fn run(cfg: HqConfig, cancel: CancellationToken) -> Result<(), Error> {
    start(cfg, cancel).await?.wait().await
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Starts every part of head office and returns once the broker (if embedded) and HTTP accept
/// connections. The MQTT session connects in the background (see `/healthz`).
pub async fn start(cfg: HqConfig, cancel: CancellationToken) -> Result<HeadOffice, Error> {
    cfg.validate()?;
    // Our own child: a failing part can stop the rest without cancelling the caller's token.
    let cancel = cancel.child_token();
    let endpoint = cfg
        .broker
        .endpoint()
        .map_err(|(key, reason)| Error::Task(format!("broker.{key}: {reason}")))?;

    let (gateway_secret, secret_source) = secrets::gateway_secret(&cfg)?;
    match &secret_source {
        SecretSource::Config => {}
        SecretSource::File(path) => {
            tracing::info!(path = %path.display(), "gateway secret read from data_dir")
        }
        SecretSource::Generated(path) => tracing::info!(
            path = %path.display(),
            "no [auth] gateway_secret in the config: generated one (mode 0600); enrol gateways \
             with `instore-provision gateway --hq-data-dir {}`",
            cfg.data_dir.display()
        ),
    }
    let registry = crate::registry::Registry::new(gateway_secret.as_bytes());
    let message_auth =
        crate::ingest::decode::MessageAuth::new(registry.clone(), cfg.auth.require_sealed);
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| crate::store::StoreError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let location = cfg.database_location();
    // Off the async threads: the PostgreSQL client blocks on a runtime of its own.
    let open = location.clone();
    let (store, store_thread) = tokio::task::spawn_blocking(move || Store::open(&open))
        .await
        .map_err(|e| Error::Task(format!("opening the database: {e}")))??;
    // A second connection on its own thread for the dashboard's reads: at a million members a
    // view takes seconds (BENCHMARKS.md, `data`), which on the one store thread would hold up
    // ingest's commits and the gateways' acks.
    let open = location.clone();
    let (views, views_thread) = tokio::task::spawn_blocking(move || Store::open(&open))
        .await
        .map_err(|e| Error::Task(format!("opening the database: {e}")))??;
    let (heads, known_stores, campaigns) = store.call(notifier::heads_and_stores).await?;
    // Before ingest and HTTP start: a revoked gateway is refused from the first message on.
    registry.replace_all(store.call(crate::registry::db::load_all).await?);
    let fanout = FanoutSettings {
        membership: cfg.membership.clone(),
        tier_source: cfg.compute.tier_source,
    };

    // Gateways heard from before: the stores their broker logins are checked against.
    for (gateway, store_id) in store.call(crate::registry::db::seen_gateways).await? {
        registry.learn(&gateway, &store_id);
    }
    let metrics = MetricsHandle::new();
    let identity = broker::Identity {
        user: cfg
            .broker
            .username
            .clone()
            .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_string()),
        // The embedded broker lives in this process: a password of this run does.
        password: match &cfg.broker.password {
            Some(p) => p.clone(),
            None => secrets::random_hex()?,
        },
    };
    let mut tls = None;
    let (broker_addr, mqtt_host, mqtt_port) = match endpoint {
        BrokerEndpoint::Embedded(addr) => {
            let logins = (!cfg.broker.allow_anonymous).then(|| {
                broker::login::Logins::new(
                    registry.clone(),
                    &identity.user,
                    &identity.password,
                    metrics.metrics.mqtt_logins_refused.clone(),
                )
            });
            let b = broker::start(addr, logins, &identity).await?;
            let a = b.addr();
            // A broker on every interface is reached on loopback from here.
            let ip = if a.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                a.ip()
            };
            (Some(a), ip.to_string(), a.port())
        }
        BrokerEndpoint::External(url) => {
            if url.tls {
                let config = instore_daemon::tls::client_config(instore_daemon::tls::TlsFiles {
                    ca_file: cfg.broker.ca_file.as_deref(),
                    client_cert: cfg.broker.client_cert.as_deref(),
                    client_key: cfg.broker.client_key.as_deref(),
                })
                .map_err(|e| Error::Task(format!("[broker] TLS: {e}")))?;
                tls = Some(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(
                    config,
                )));
            } else if !is_loopback_host(&url.host) {
                tracing::warn!(
                    host = %url.host,
                    "head office's broker link is plaintext (mqtt://) to another machine: gateway \
                     batches and acks cross the network unencrypted; use mqtts://"
                );
            }
            (None, url.host, url.port)
        }
    };

    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|source| Error::HttpBind {
            addr: cfg.http.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(Error::Http)?;

    let client_id = cluster::client_id(&cfg)?;
    let shared = cfg.broker.share_group.is_some();
    // The lease is released only after compute has stopped (see `wait`): its own token.
    let stop_lease = CancellationToken::new();
    let (lease, lease_task) = if shared {
        let (handle, join) = LeaseTask {
            location: location.clone(),
            name: lease::ONCE_ONLY,
            holder: client_id.clone(),
            ttl: lease::TTL,
            renew_every: lease::RENEW_EVERY,
            metrics: metrics.metrics.clone(),
        }
        .spawn(stop_lease.clone());
        (handle, Some(join))
    } else {
        metrics.metrics.lease_held.set(1);
        (LeaseHandle::always(), None)
    };
    // On the embedded broker head office always logs in; on another, as configured.
    let credentials = if broker_addr.is_some() {
        Some((identity.user.as_str(), identity.password.as_str()))
    } else {
        cfg.broker
            .username
            .as_deref()
            .map(|u| (u, cfg.broker.password.as_deref().unwrap_or("")))
    };
    let (client, eventloop) = mqtt::connect(
        &mqtt::Endpoint {
            client_id: &client_id,
            host: &mqtt_host,
            port: mqtt_port,
            tls,
        },
        shared,
        credentials,
    );
    let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
    let (notice_tx, notice_rx) = mpsc::channel(NOTICE_QUEUE);
    let stop_mqtt = CancellationToken::new();

    let eventloop = tokio::spawn(
        mqtt::EventLoopTask {
            client: client.clone(),
            subscriptions: mqtt::subscriptions(cfg.broker.share_group.as_deref()),
            metrics: metrics.metrics.clone(),
            publishes: publish_tx,
            notices: notice_tx.clone(),
            cancel: cancel.clone(),
            stop: stop_mqtt.clone(),
        }
        .run(eventloop),
    );
    let ingest = tokio::spawn(
        Ingest {
            store: store.clone(),
            client: client.clone(),
            metrics: metrics.metrics.clone(),
            notices: notice_tx.clone(),
            auth: message_auth.clone(),
        }
        .run(publish_rx),
    );
    // Stops on `cancel`, dropping its Store handle and notice sender before the waits below.
    tokio::spawn(keys::run(
        store.clone(),
        notice_tx.clone(),
        keys::system_clock(),
        keys::MAX_SLEEP,
        lease.clone(),
        cancel.clone(),
    ));
    tokio::spawn(crate::privacy::retention::run(
        store.clone(),
        cfg.privacy.events_days,
        metrics.metrics.clone(),
        lease.clone(),
        cancel.clone(),
    ));
    if shared {
        tokio::spawn(crate::registry::follow(
            store.clone(),
            registry.clone(),
            cancel.clone(),
        ));
        tokio::spawn(notifier::follow_database(
            store.clone(),
            notice_tx.clone(),
            FOLLOW_DATABASE_EVERY,
            cancel.clone(),
        ));
    }
    let poke = Arc::new(tokio::sync::Notify::new());
    let compute = tokio::spawn(
        Runner {
            location: location.clone(),
            settings: ComputeSettings {
                compute: cfg.compute.clone(),
                fanout: fanout.clone(),
            },
            notices: notice_tx.clone(),
            poke: poke.clone(),
            metrics: metrics.metrics.clone(),
            clock: keys::system_clock(),
            lease,
        }
        .run(cancel.clone()),
    );
    let notifier = tokio::spawn(notifier::run(
        notice_rx,
        Notices::new(cfg.membership.clone(), heads, known_stores).with_campaigns(campaigns),
        client.clone(),
        metrics.metrics.clone(),
        message_auth.clone(),
    ));
    let app = http::router(AppState {
        store,
        views,
        metrics,
        admin_token: Arc::from(cfg.api.token.as_str()),
        viewer_token: cfg.api.viewer_token.as_deref().map(|v| Arc::from(v.trim())),
        registry,
        enrol_limiter: Default::default(),
        card_limiter: Default::default(),
        message_auth,
        notices: notice_tx,
        fanout: Arc::new(fanout),
        compute: Arc::new(cfg.compute.clone()),
        snapshots: Arc::new(Snapshots::new(&cfg.data_dir, location)),
        poke: poke.clone(),
        broker_kind: if broker_addr.is_some() {
            "embedded"
        } else {
            "external"
        },
    });
    let http_cancel = cancel.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_cancel.cancelled_owned())
            .await
    });
    tracing::info!(
        %http_addr,
        mqtt_host,
        mqtt_port,
        client_id,
        share_group = cfg.broker.share_group.as_deref().unwrap_or("-"),
        data_dir = %cfg.data_dir.display(),
        "head office started"
    );

    Ok(HeadOffice {
        http_addr,
        broker_addr,
        mqtt_host,
        mqtt_port,
        cancel,
        stop_mqtt,
        client,
        http,
        ingest,
        eventloop,
        notifier,
        compute,
        lease: lease_task,
        stop_lease,
        store_thread,
        views_thread,
    })
}
