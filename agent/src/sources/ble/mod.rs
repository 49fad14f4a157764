//! BLE source: one BlueZ adapter (`kind = "ble"`, `adapter = "hci0"`), one task per adapter.
//!
//! btleplug finds the adapter and starts discovery (its filter sets `DuplicateData: true`, so
//! BlueZ keeps reporting RSSI for devices it has already seen). The adverts themselves are taken
//! straight from BlueZ's signals on a connection of our own: `InterfacesAdded` (a new device: its
//! first advert, every property in the body) and `PropertiesChanged` on `org.bluez.Device1` under
//! the adapter's path, decoded from the message bodies with no round trip. btleplug's own event
//! path costs one D-Bus round trip per event and levels off near 1,300 adverts/s; see
//! ARCHITECTURE.md and BENCHMARKS.md.
//!
//! In: D-Bus signals (system bus; `DBUS_SYSTEM_BUS_ADDRESS` is honoured). Out: [`Sighting`]s to
//! the engine (latest wins per device when the channel is full, counted), `Scanner` events to the
//! outbox on state changes, metrics. Recovery: adapter removed, `org.bluez` changing owner, the
//! D-Bus connection ending or no advert within `watchdog_s` all re-open the session (btleplug
//! manager, our connection, discovery) with jittered exponential backoff, counted.
//!
//! Privacy: addresses are logged only at debug, and then as a keyed hash (key random per process).

pub mod signals;
pub mod table;

use std::{sync::Arc, time::Duration};

use btleplug::api::{Central, Manager as _, ScanFilter};
use dbus::{
    channel::MatchingReceiver,
    message::{MatchRule, MessageType},
    nonblock::{Proxy, SyncConnection},
};
use instore_protocol::{EventBody, ScannerState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::{
    signals::{ManagedDevices, Signal},
    table::{Applied, DeviceTable},
};
use super::Sighting;
use crate::{
    config::SourceConfig,
    engine::Clock,
    metrics::Metrics,
    outbox::{NewEvent, Outbox},
};

/// Decoded signals waiting for the source task. Past this the D-Bus callback drops (counted):
/// the queue must not grow without bound if the task stalls.
const SIGNAL_QUEUE: usize = 8192;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often pending (coalesced) adverts are retried while the engine is behind.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error(
        "BLE adapter {adapter:?} not found (BlueZ has: {present}); check `adapter` in the config, \
         `bluetoothctl list` and that the adapter is powered"
    )]
    NoAdapter { adapter: String, present: String },
    #[error("BLE adapter {adapter:?}: cannot reach BlueZ over D-Bus: {message}")]
    Bus { adapter: String, message: String },
    #[error("BLE adapter {adapter:?}: {message}")]
    Scan { adapter: String, message: String },
}

/// A BLE source's settings, from its `[[sources]]` table.
#[derive(Debug, Clone)]
pub struct BleConfig {
    pub adapter: String,
    pub zone: Arc<str>,
    /// Added to every RSSI (dB) before the engine sees it: per-adapter calibration.
    pub rssi_offset: i16,
    /// Restart scanning when no advert arrived for this long.
    pub watchdog: Duration,
    /// Forget a device silent for this long.
    pub device_ttl: Duration,
    /// Most devices remembered per adapter.
    pub max_devices: usize,
}

impl BleConfig {
    pub fn from_source(cfg: &SourceConfig) -> Self {
        Self {
            adapter: cfg.adapter.clone().unwrap_or_default(),
            zone: Arc::from(cfg.zone.as_str()),
            rssi_offset: cfg.rssi_offset,
            watchdog: Duration::from_secs(cfg.watchdog_s),
            device_ttl: Duration::from_secs(cfg.device_ttl_s),
            max_devices: cfg.max_devices,
        }
    }

    fn path(&self) -> String {
        format!("/org/bluez/{}", self.adapter)
    }
}

/// What the source talks to.
#[derive(Clone)]
pub struct BleIo {
    pub clock: Clock,
    pub tx: mpsc::Sender<Sighting>,
    pub metrics: Metrics,
    /// Where `Scanner` state events go (None: metrics and logs only, e.g. in benchmarks).
    pub outbox: Option<Outbox>,
}

/// One open scanning session: btleplug's manager and adapter, and our signal connection.
struct Session {
    adapter: btleplug::platform::Adapter,
    _manager: btleplug::platform::Manager,
    _conn: Arc<SyncConnection>,
    /// Ends when our D-Bus connection is lost.
    resource: tokio::task::JoinHandle<()>,
    signals: mpsc::Receiver<Signal>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // The connection's I/O task holds the connection alive: stop it with the session.
        self.resource.abort();
    }
}

/// Opens a session and fails with a clear error if the adapter is not there: called once before
/// the agent starts, so a wrong adapter name stops startup instead of retrying forever.
pub async fn start(
    cfg: BleConfig,
    io: BleIo,
    cancel: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, BleError> {
    let mut table = DeviceTable::new(cfg.max_devices, cfg.device_ttl.as_millis() as u64);
    let session = Session::open(&cfg, &io, &mut table).await?;
    tracing::info!(adapter = %cfg.adapter, zone = %cfg.zone, rssi_offset = cfg.rssi_offset, "BLE scanning");
    Ok(run(cfg, io, table, session, cancel))
}

impl Session {
    async fn open(cfg: &BleConfig, io: &BleIo, table: &mut DeviceTable) -> Result<Self, BleError> {
        let bus = |e: &dyn std::fmt::Display| BleError::Bus {
            adapter: cfg.adapter.clone(),
            message: e.to_string(),
        };
        let manager = btleplug::platform::Manager::new()
            .await
            .map_err(|e| bus(&e))?;
        let mut present = Vec::new();
        let mut found = None;
        for a in manager.adapters().await.map_err(|e| bus(&e))? {
            // "hci0 (usb:v1D6Bp0246d0540)"
            let info = a.adapter_info().await.map_err(|e| bus(&e))?;
            let name = info.split_whitespace().next().unwrap_or("").to_string();
            if name == cfg.adapter {
                found = Some(a);
                break;
            }
            present.push(name);
        }
        let Some(adapter) = found else {
            return Err(BleError::NoAdapter {
                adapter: cfg.adapter.clone(),
                present: if present.is_empty() {
                    "no adapters".into()
                } else {
                    present.join(", ")
                },
            });
        };

        // Our own connection for the advert signals: btleplug's dispatch would turn each into a
        // round trip.
        let (resource, conn) = dbus_tokio::connection::new_system_sync().map_err(|e| bus(&e))?;
        let resource = tokio::spawn(async move {
            let err = resource.await;
            tracing::debug!(error = %err, "BLE D-Bus connection ended");
        });
        let (sig_tx, signals) = mpsc::channel(SIGNAL_QUEUE);
        let prefix = cfg.path();
        let metrics = io.metrics.clone();
        conn.start_receive(
            MatchRule::new().with_type(MessageType::Signal),
            Box::new(move |msg, _| {
                match signals::decode(&msg) {
                    Ok(Some(sig)) if concerns(&sig, &prefix) => {
                        if let Err(mpsc::error::TrySendError::Full(_)) = sig_tx.try_send(sig) {
                            metrics.ble_signals_overflow.inc();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.ble_signals_malformed.inc();
                        tracing::debug!(error = %e, "malformed BlueZ signal skipped");
                    }
                }
                true
            }),
        );
        let path = cfg.path();
        let rules = [
            format!(
                "type='signal',sender='org.bluez',interface='org.freedesktop.DBus.ObjectManager',member='InterfacesAdded',arg0path='{path}/'"
            ),
            // Any adapter's path: an adapter's own removal is not under its path.
            "type='signal',sender='org.bluez',interface='org.freedesktop.DBus.ObjectManager',member='InterfacesRemoved',arg0path='/org/bluez/'".to_string(),
            format!(
                "type='signal',sender='org.bluez',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='{path}'"
            ),
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.bluez'".to_string(),
        ];
        for rule in &rules {
            conn.add_match_no_cb(rule).await.map_err(|e| bus(&e))?;
        }

        // What BlueZ already knows, so an RSSI-only update of an old device is a whole advert.
        let proxy = Proxy::new("org.bluez", "/", Duration::from_secs(5), conn.clone());
        let devices: ManagedDevices = proxy
            .method_call(
                "org.freedesktop.DBus.ObjectManager",
                "GetManagedObjects",
                (),
            )
            .await
            .map_err(|e| bus(&e))?;
        let now = io.clock.now_ms();
        let child = format!("{path}/");
        for (p, props) in devices.0 {
            if p.starts_with(&child) {
                table.seed(&p, props, now);
            }
        }

        adapter
            .start_scan(ScanFilter::default())
            .await
            .map_err(|e| BleError::Scan {
                adapter: cfg.adapter.clone(),
                message: format!("starting discovery: {e}"),
            })?;
        Ok(Self {
            adapter,
            _manager: manager,
            _conn: conn,
            resource,
            signals,
        })
    }
}

/// Whether a signal concerns this adapter (the bus-side rules are advisory: filter again).
fn concerns(sig: &Signal, adapter_path: &str) -> bool {
    let child = |p: &str| {
        p.strip_prefix(adapter_path)
            .is_some_and(|rest| rest.starts_with('/'))
    };
    match sig {
        Signal::DeviceAdded { path, .. }
        | Signal::DeviceChanged { path, .. }
        | Signal::DeviceRemoved { path } => child(path),
        Signal::AdapterRemoved { path }
        | Signal::AdapterAdded { path }
        | Signal::AdapterChanged { path, .. } => path == adapter_path,
        Signal::BluezOwner { .. } => true,
    }
}

/// Why a session was closed.
enum Lost {
    Stopped,
    Gone(&'static str),
    Stalled,
}

struct Source {
    cfg: BleConfig,
    io: BleIo,
    table: DeviceTable,
    last_advert_ms: u64,
    state: ScannerState,
    key: [u8; 16],
}

async fn run(
    cfg: BleConfig,
    io: BleIo,
    table: DeviceTable,
    session: Session,
    cancel: CancellationToken,
) {
    let mut src = Source {
        last_advert_ms: io.clock.now_ms(),
        cfg,
        io,
        table,
        state: ScannerState::Scanning,
        key: rand::random(),
    };
    src.event(ScannerState::Scanning, "scanning started").await;
    let mut session = Some(session);
    let mut backoff = BACKOFF_MIN;
    loop {
        let lost = match session.as_mut() {
            Some(s) => src.serve(s, &cancel).await,
            None => {
                let wait = jitter(backoff);
                tokio::select! {
                    _ = cancel.cancelled() => Lost::Stopped,
                    _ = tokio::time::sleep(wait) => {
                        src.io.metrics.ble_reconnects.inc();
                        match Session::open(&src.cfg, &src.io, &mut src.table).await {
                            Ok(s) => {
                                tracing::info!(adapter = %src.cfg.adapter, "BLE scanning resumed");
                                session = Some(s);
                                backoff = BACKOFF_MIN;
                                src.last_advert_ms = src.io.clock.now_ms();
                                if src.state == ScannerState::Lost {
                                    src.event(ScannerState::Recovered, "scanning resumed").await;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(adapter = %src.cfg.adapter, error = %e, retry_in = ?backoff, "BLE session could not be re-opened");
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                        }
                        continue;
                    }
                }
            }
        };
        match lost {
            Lost::Stopped => break,
            Lost::Gone(why) => {
                tracing::warn!(adapter = %src.cfg.adapter, reason = why, "BLE adapter lost; reconnecting");
                session = None;
                src.table.clear();
                src.io.metrics.ble_devices.set(0);
                src.event(ScannerState::Lost, why).await;
            }
            Lost::Stalled => {
                src.io.metrics.ble_watchdog_restarts.inc();
                tracing::warn!(adapter = %src.cfg.adapter, silent = ?src.cfg.watchdog, "no BLE advert within the watchdog period; restarting scanning");
                if let Some(s) = session.take() {
                    // Best effort: the adapter may be in a bad state.
                    let _ = s.adapter.stop_scan().await;
                }
                if src.state != ScannerState::Stalled {
                    src.event(
                        ScannerState::Stalled,
                        "no advert within the watchdog period",
                    )
                    .await;
                }
                src.last_advert_ms = src.io.clock.now_ms();
            }
        }
    }
    if let Some(s) = session {
        let _ = s.adapter.stop_scan().await;
    }
    tracing::debug!(adapter = %src.cfg.adapter, "BLE source stopped");
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

impl Source {
    /// Serves one session until it is lost or the agent stops.
    async fn serve(&mut self, s: &mut Session, cancel: &CancellationToken) -> Lost {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut house = tokio::time::interval(Duration::from_secs(1));
        house.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(256);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Lost::Stopped,
                _ = &mut s.resource => return Lost::Gone("D-Bus connection lost"),
                n = s.signals.recv_many(&mut buf, 256) => {
                    if n == 0 {
                        return Lost::Gone("D-Bus connection lost");
                    }
                    for sig in buf.drain(..) {
                        if let Some(lost) = self.on_signal(sig) {
                            return lost;
                        }
                    }
                    if !self.flush() {
                        return Lost::Stopped;
                    }
                }
                _ = flush.tick(), if self.table.has_pending() => {
                    if !self.flush() {
                        return Lost::Stopped;
                    }
                }
                _ = house.tick() => {
                    let now = self.io.clock.now_ms();
                    self.table.expire(now);
                    self.io.metrics.ble_devices.set(self.table.len() as i64);
                    if now.saturating_sub(self.last_advert_ms) > self.cfg.watchdog.as_millis() as u64 {
                        return Lost::Stalled;
                    }
                }
            }
        }
    }

    fn on_signal(&mut self, sig: Signal) -> Option<Lost> {
        let now = self.io.clock.now_ms();
        match sig {
            Signal::DeviceAdded { path, props } | Signal::DeviceChanged { path, props } => {
                let evicted = self.table.evicted;
                let applied = self.table.apply(&path, props, now);
                if self.table.evicted != evicted {
                    self.io
                        .metrics
                        .ble_devices_evicted
                        .inc_by(self.table.evicted - evicted);
                }
                if applied == Applied::Advert {
                    self.last_advert_ms = now;
                    if self.state == ScannerState::Stalled {
                        self.state = ScannerState::Recovered;
                        let ev = self.scanner_event(ScannerState::Recovered, "adverts again");
                        self.spawn_event(ev);
                    }
                    self.deliver(&path);
                }
                None
            }
            Signal::DeviceRemoved { path } => {
                self.table.remove(&path);
                None
            }
            Signal::AdapterRemoved { .. } => Some(Lost::Gone("adapter removed")),
            Signal::AdapterChanged {
                powered: Some(false),
                ..
            } => Some(Lost::Gone("adapter powered off")),
            // Someone stopped all discovery (or the adapter reset): restart ours.
            Signal::AdapterChanged {
                discovering: Some(false),
                ..
            } => Some(Lost::Stalled),
            Signal::AdapterChanged { .. } | Signal::AdapterAdded { .. } => None,
            Signal::BluezOwner { has_owner: false } => Some(Lost::Gone("bluetoothd stopped")),
            // A new bluetoothd knows nothing of our discovery session.
            Signal::BluezOwner { has_owner: true } => Some(Lost::Gone("bluetoothd restarted")),
        }
    }

    /// Offers a device's advert to the engine; when the engine is behind, the device waits in
    /// the pending queue and newer adverts replace its waiting one.
    fn deliver(&mut self, path: &str) {
        self.io.metrics.adverts.inc();
        if self.table.has_pending() {
            if !self.table.mark_pending(path) {
                self.io.metrics.ble_adverts_coalesced.inc();
            }
            return;
        }
        let Some((advert, at_ms)) = self.table.advert(path, self.cfg.rssi_offset) else {
            return;
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(adapter = %self.cfg.adapter, device = %self.tag(&advert.address), rssi = advert.rssi, "advert");
        }
        let s = Sighting {
            zone: self.cfg.zone.clone(),
            at_ms,
            advert,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.io.tx.try_send(s) {
            self.table.mark_pending(path);
        }
    }

    /// Sends waiting adverts while the engine has room. False when the engine is gone.
    fn flush(&mut self) -> bool {
        while let Some(path) = self.table.front_pending() {
            let path = path.to_string();
            let Some((advert, at_ms)) = self.table.advert(&path, self.cfg.rssi_offset) else {
                self.table.pop_pending();
                continue;
            };
            let s = Sighting {
                zone: self.cfg.zone.clone(),
                at_ms,
                advert,
            };
            match self.io.tx.try_send(s) {
                Ok(()) => self.table.pop_pending(),
                Err(mpsc::error::TrySendError::Full(_)) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// A short keyed hash of an address: lets debug logs follow a device without writing its
    /// address; the key is random per process, so logs of two runs cannot be joined.
    fn tag(&self, address: &[u8; 6]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(address);
        hex::encode(&h.finalize()[..4])
    }

    fn scanner_event(&mut self, state: ScannerState, detail: &str) -> NewEvent {
        self.state = state;
        NewEvent {
            at_ms: crate::now_ms(),
            body: EventBody::Scanner {
                adapter: self.cfg.adapter.clone(),
                state,
                detail: detail.to_string(),
            },
        }
    }

    fn spawn_event(&self, ev: NewEvent) {
        if let Some(outbox) = self.io.outbox.clone() {
            tokio::spawn(async move {
                if let Err(e) = outbox.append(vec![ev]).await {
                    tracing::warn!(error = %e, "scanner event not recorded");
                }
            });
        }
    }

    async fn event(&mut self, state: ScannerState, detail: &str) {
        let ev = self.scanner_event(state, detail);
        tracing::info!(adapter = %self.cfg.adapter, state = ?state, detail, "BLE scanner state");
        if let Some(outbox) = &self.io.outbox
            && let Err(e) = outbox.append(vec![ev]).await
        {
            tracing::warn!(error = %e, "scanner event not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::AddressType;
    use signals::DeviceProps;

    fn source(queue: usize) -> (Source, mpsc::Receiver<Sighting>) {
        let (tx, rx) = mpsc::channel(queue);
        let (metrics, _) = Metrics::new();
        let cfg = BleConfig {
            adapter: "hci0".into(),
            zone: Arc::from("entrance"),
            rssi_offset: 3,
            watchdog: Duration::from_secs(60),
            device_ttl: Duration::from_secs(300),
            max_devices: 1000,
        };
        let src = Source {
            table: DeviceTable::new(cfg.max_devices, 300_000),
            cfg,
            io: BleIo {
                clock: Clock::new(),
                tx,
                metrics,
                outbox: None,
            },
            last_advert_ms: 0,
            state: ScannerState::Scanning,
            key: [7; 16],
        };
        (src, rx)
    }

    fn added(i: u8, rssi: i16) -> Signal {
        Signal::DeviceAdded {
            path: format!("/org/bluez/hci0/dev_C0_00_00_00_00_{i:02X}"),
            props: DeviceProps {
                address: Some([0xc0, 0, 0, 0, 0, i]),
                address_type: Some(AddressType::Random),
                rssi: Some(rssi),
                ..DeviceProps::default()
            },
        }
    }

    fn changed(i: u8, rssi: i16) -> Signal {
        Signal::DeviceChanged {
            path: format!("/org/bluez/hci0/dev_C0_00_00_00_00_{i:02X}"),
            props: DeviceProps {
                rssi: Some(rssi),
                ..DeviceProps::default()
            },
        }
    }

    #[tokio::test]
    async fn a_full_engine_queue_coalesces_per_device_and_the_latest_advert_wins() {
        let (mut src, mut rx) = source(1);
        for s in [
            added(1, -50),
            added(2, -60),
            added(3, -70),
            changed(2, -65),
            changed(2, -66),
        ] {
            assert!(src.on_signal(s).is_none());
        }
        let m = &src.io.metrics;
        assert_eq!(m.adverts.get(), 5);
        // Device 2's second and third adverts replaced its waiting one.
        assert_eq!(m.ble_adverts_coalesced.get(), 2);
        let mut got = vec![rx.recv().await.unwrap()];
        while src.table.has_pending() {
            assert!(src.flush());
            got.push(rx.recv().await.unwrap());
        }
        let seen: Vec<(u8, i16)> = got
            .iter()
            .map(|s| (s.advert.address[5], s.advert.rssi))
            .collect();
        // Offset +3 applied; device 2 delivered once, with its latest RSSI.
        assert_eq!(seen, vec![(1, -47), (2, -63), (3, -67)]);
    }

    #[tokio::test]
    async fn losing_the_adapter_or_bluetoothd_ends_the_session() {
        let (mut src, _rx) = source(8);
        let gone = |l: Option<Lost>| matches!(l, Some(Lost::Gone(_)));
        assert!(gone(src.on_signal(Signal::AdapterRemoved {
            path: "/org/bluez/hci0".into()
        })));
        assert!(gone(src.on_signal(Signal::BluezOwner { has_owner: false })));
        assert!(gone(src.on_signal(Signal::BluezOwner { has_owner: true })));
        assert!(matches!(
            src.on_signal(Signal::AdapterChanged {
                path: "/org/bluez/hci0".into(),
                discovering: Some(false),
                powered: None
            }),
            Some(Lost::Stalled)
        ));
        assert!(concerns(
            &Signal::DeviceRemoved {
                path: "/org/bluez/hci0/dev_1".into()
            },
            "/org/bluez/hci0"
        ));
        assert!(!concerns(
            &Signal::DeviceRemoved {
                path: "/org/bluez/hci01/dev_1".into()
            },
            "/org/bluez/hci0"
        ));
    }
}
