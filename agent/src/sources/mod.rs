//! Sources: where sightings come from — a simulated crowd (`sim`), BlueZ adapters (`ble`, Linux),
//! remote receivers on the store LAN (`remote`, `kind = "mqtt"`), recorded captures (`replay`),
//! and QR scanners (`qr`, which feed the engine's control channel).
//!
//! Out: [`Sighting`]s on a bounded channel to the engine. A live source never blocks on a full
//! channel: `sim` drops the sighting and counts it (`adverts_dropped`), `ble` keeps only each
//! device's latest advert waiting (`ble_adverts_coalesced`), because a stale advert is worth less
//! than a live one and the radio will repeat it within a second anyway. `replay` waits instead:
//! a capture is finite and every advert in it matters. `record` (off by default) tees every
//! sighting to an NDJSON advert log.

#[cfg(target_os = "linux")]
mod advert;
mod advert_log;
pub mod ble;
pub mod btsnoop;
pub mod qr;
pub mod record;
pub mod remote;
pub mod replay;
pub mod silence;
pub mod sim;

use std::sync::Arc;

pub use advert::{AddressType, Advert, parse_address};

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{RecordConfig, SourceConfig, SourceKind},
    metrics::Metrics,
    outbox::Outbox,
};

/// An advert heard in a zone at a moment of the agent's monotonic clock.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub zone: Arc<str>,
    /// Milliseconds of the agent's monotonic clock (see `engine::Clock`).
    pub at_ms: u64,
    pub advert: Advert,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source kind {0:?} is not supported by this build yet")]
    Unsupported(SourceKind),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Ble(#[from] ble::BleError),
    #[error("[record] cannot open {path}: {source}")]
    Record {
        path: String,
        source: std::io::Error,
    },
}

/// Starts one task per configured source (and the recorder, if `[record]` is on). A BLE
/// source's adapter must exist: a wrong name fails here, before the agent runs. `outbox` receives
/// scanner state events.
#[allow(clippy::too_many_arguments)]
pub async fn spawn_all(
    sources: &[SourceConfig],
    record: &RecordConfig,
    clock: crate::engine::Clock,
    tx: mpsc::Sender<Sighting>,
    metrics: &Metrics,
    outbox: Option<&Outbox>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let tx = match &record.path {
        Some(path) if record.write_raw_addresses => {
            record::spawn_recorder(path, tx, metrics.clone(), tracker).map_err(|source| {
                SourceError::Record {
                    path: path.display().to_string(),
                    source,
                }
            })?
        }
        _ => tx,
    };
    for (i, cfg) in sources.iter().enumerate() {
        match cfg.kind {
            SourceKind::Sim => {
                let crowd = sim::Crowd::new(sim::CrowdConfig::from_source(cfg, i as u64));
                // Receivers this gateway does not have are `None`: their adverts are drawn (the
                // crowd stays the same) and left out.
                let zones: Vec<Option<Arc<str>>> = if cfg.zones.is_empty() {
                    vec![Some(Arc::from(cfg.zone.as_str()))]
                } else {
                    cfg.zones
                        .iter()
                        .map(|z| {
                            (cfg.hear_zones.is_empty() || cfg.hear_zones.contains(z))
                                .then(|| Arc::from(z.as_str()))
                        })
                        .collect()
                };
                tracker.spawn(sim::run(
                    crowd,
                    zones,
                    clock.clone(),
                    tx.clone(),
                    metrics.clone(),
                    cancel.clone(),
                ));
            }
            SourceKind::Replay => {
                let Some(path) = cfg.path.clone() else {
                    continue; // refused by config validation
                };
                tracker.spawn(replay::run(
                    path,
                    cfg.speed,
                    Arc::from(cfg.zone.as_str()),
                    clock.clone(),
                    tx.clone(),
                    metrics.clone(),
                    cancel.clone(),
                ));
            }
            #[cfg(target_os = "linux")]
            SourceKind::Ble => {
                let io = ble::BleIo {
                    clock: clock.clone(),
                    tx: tx.clone(),
                    metrics: metrics.clone(),
                    outbox: outbox.cloned(),
                };
                let task = ble::start(ble::BleConfig::from_source(cfg), io, cancel.clone()).await?;
                tracker.spawn(task);
            }
            SourceKind::Mqtt => {
                let Some(src) = remote::RemoteSource::from_source(cfg, i) else {
                    continue; // refused by config validation
                };
                tracker.spawn(remote::run(
                    src,
                    clock.clone(),
                    tx.clone(),
                    metrics.clone(),
                    outbox.cloned(),
                    cancel.clone(),
                ));
            }
            // Scans go to the engine's control channel: started by `qr::spawn_all`.
            SourceKind::Qr => {}
            // Only reachable where BLE is not built.
            #[allow(unreachable_patterns)]
            other => return Err(SourceError::Unsupported(other)),
        }
    }
    Ok(())
}

/// Hands a sighting to the engine without waiting: full channel → dropped and counted.
pub(crate) fn offer(tx: &mpsc::Sender<Sighting>, s: Sighting, metrics: &Metrics) -> bool {
    metrics.adverts.inc();
    match tx.try_send(s) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.adverts_dropped.inc();
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Records a receiver's state change (`Scanner` event) without waiting for the outbox.
pub(crate) fn scanner_event(
    outbox: Option<&Outbox>,
    adapter: &str,
    state: instore_protocol::ScannerState,
    detail: &str,
) {
    let Some(outbox) = outbox.cloned() else {
        return;
    };
    let ev = crate::outbox::NewEvent {
        at_ms: crate::now_ms(),
        body: instore_protocol::EventBody::Scanner {
            adapter: adapter.to_string(),
            state,
            detail: detail.to_string(),
        },
    };
    tokio::spawn(async move {
        if let Err(e) = outbox.append(vec![ev]).await {
            tracing::warn!(error = %e, "receiver state not recorded");
        }
    });
}
