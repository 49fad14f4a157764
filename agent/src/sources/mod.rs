//! Sources: where sightings come from (simulated crowd now; BLE adapters, replay files and QR
//! scanners slot in beside it).
//!
//! Out: [`Sighting`]s on a bounded channel to the engine. A source never blocks on a full channel:
//! it drops the sighting and counts it (`adverts_dropped`), because a stale advert is worth less
//! than a live one and the radio will repeat it within a second anyway.

pub mod sim;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{SourceConfig, SourceKind},
    metrics::Metrics,
};

/// How a BLE address is to be read (Bluetooth Core, Vol 6, Part B, 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    Public,
    Random,
}

/// One advertisement as a scanner reported it. Byte fields are exactly as on air.
#[derive(Debug, Clone, PartialEq)]
pub struct Advert {
    /// Most significant byte first, as written `C0:11:22:33:44:55`.
    pub address: [u8; 6],
    pub address_type: AddressType,
    pub rssi: i16,
    /// (company id, data after the company id).
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    /// (16-bit service UUID, data).
    pub service_data: Vec<(u16, Vec<u8>)>,
}

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
}

/// Starts one task per configured source.
pub fn spawn_all(
    sources: &[SourceConfig],
    clock: crate::engine::Clock,
    tx: mpsc::Sender<Sighting>,
    metrics: &Metrics,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    for (i, cfg) in sources.iter().enumerate() {
        match cfg.kind {
            SourceKind::Sim => {
                let crowd = sim::Crowd::new(sim::CrowdConfig::from_source(cfg, i as u64));
                tracker.spawn(sim::run(
                    crowd,
                    Arc::from(cfg.zone.as_str()),
                    clock.clone(),
                    tx.clone(),
                    metrics.clone(),
                    cancel.clone(),
                ));
            }
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
