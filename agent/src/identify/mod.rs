//! Identify: who, if anyone, sent this advert.
//!
//! In: an [`Advert`], the current [`MemberIndex`] and the agent's monotonic time. Out: the member's
//! slot, or "stranger" (`None`); the engine reads the slot's record. No I/O. Most adverts in a store are strangers' phones — Apple "nearby" and Find
//! My frames, Google Fast Pair, headphones — so each step rejects them before any hashing where it
//! can: by company id and the first two bytes, by service UUID, by address kind, by iBeacon UUID.
//! A stranger's address is never stored or logged; the RPA cache keeps only keyed hashes of it.
//!
//! Order of checks (first match wins):
//! 1. Apple manufacturer data `02 15`: iBeacon. Major [`ROTATING_MAJOR`] → rotating member ID
//!    (one lookup in the tables of windows w-1..=w+1); otherwise a fixed iBeacon identifier.
//! 2. Any company's manufacturer data `BE AC`: AltBeacon, matched like an iBeacon.
//! 3. Service data `0xFEAA`: Eddystone UID (one lookup), EID (one lookup in the window's table,
//!    built from the members' temporary keys); URL and TLM carry no identity.
//! 4. The address: public or static random → member by address; resolvable private → the member
//!    whose IRK resolves it (cached per address); non-resolvable → nobody.
//!
//! The per-window tables are built on a thread of their own ([`rotating::TableBuilder`]) and
//! swapped in by [`Identify::prepare`] on the engine tick; identifying never builds one.

pub mod address;
pub mod altbeacon;
pub mod eddystone;
pub mod ibeacon;
pub mod member_code;
pub mod qr;
pub mod rotating;
pub mod rpa;

use std::sync::Arc;

use instore_protocol::rotating::{ROTATING_MAJOR, window_of_ms};

use crate::{
    cache::{MemberIndex, Slot, WindowKeys},
    metrics::Metrics,
    sources::Advert,
};
use address::AddressKind;

/// Apple's Bluetooth SIG company id, under which iBeacons are sent.
pub const COMPANY_APPLE: u16 = 0x004c;
/// Distinct addresses whose RPA resolution is remembered (per generation; see [`rpa::RpaCache`]).
pub const RPA_CACHE_CAPACITY: usize = 65_536;

/// The identify stage's own state: caches derived from one member index, rebuilt when the index
/// is swapped. Owned by the engine task; no locks.
#[derive(Debug)]
pub struct Identify {
    /// Unix milliseconds at monotonic 0 (rotating IDs follow wall-clock windows).
    wall_anchor_ms: i64,
    index_build: u64,
    irk_version: u64,
    rpa: rpa::RpaCache,
    /// Rotating-ID and EID tables of windows w-1..=w+2.
    tables: rotating::WindowTables,
    builder: rotating::TableBuilder,
    /// AES blocks spent resolving RPAs since start (what an operator would graph against IRKs).
    pub rpa_aes_blocks: u64,
    /// The agent's counters (`rpa_*`); a detached default when none are given.
    metrics: Metrics,
}

impl Default for Identify {
    fn default() -> Self {
        Self::new(crate::now_ms())
    }
}

impl Identify {
    /// `wall_anchor_ms`: the Unix time of monotonic 0 (see `engine::Clock`).
    pub fn new(wall_anchor_ms: i64) -> Self {
        Self {
            wall_anchor_ms,
            index_build: 0,
            irk_version: 0,
            rpa: rpa::RpaCache::new(RPA_CACHE_CAPACITY),
            tables: rotating::WindowTables::default(),
            builder: rotating::TableBuilder::new(&Metrics::default()),
            rpa_aes_blocks: 0,
            metrics: Metrics::default(),
        }
    }

    /// Counts RPA cache hits and resolutions into the agent's metrics.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self.builder = rotating::TableBuilder::new(metrics);
        self
    }

    fn sync_index(&mut self, index: &MemberIndex) {
        if self.index_build != index.build_id() {
            self.index_build = index.build_id();
            self.rpa.clear();
            self.tables.clear();
        }
        // A new IRK can resolve an address remembered as a stranger's. Departed members' slots
        // are refused by the live check instead.
        if self.irk_version != index.irk_version() {
            self.irk_version = index.irk_version();
            self.rpa.clear();
        }
    }

    /// Swaps in the per-window tables built since the last call and asks the builder thread for
    /// those still missing around the window of `at_ms` (the next window's a whole window ahead).
    /// Called from the engine tick; never builds a table itself, so it costs microseconds.
    pub fn prepare(&mut self, index: &MemberIndex, keys: &Arc<dyn WindowKeys>, at_ms: u64) {
        self.sync_index(index);
        if !index.has_window_keys() {
            return;
        }
        let w = window_of_ms(self.wall_anchor_ms.saturating_add(at_ms as i64));
        if self.tables.prepare(&mut self.builder, index, keys, w) {
            self.metrics.id_table_late.inc();
        }
    }

    /// [`Self::prepare`], then waits until every requested table is in (tests and benchmarks:
    /// the engine never waits).
    pub fn prepare_and_wait(
        &mut self,
        index: &MemberIndex,
        keys: &Arc<dyn WindowKeys>,
        at_ms: u64,
    ) {
        self.prepare(index, keys, at_ms);
        // Bounded, so that a builder that died cannot hang a test.
        for _ in 0..600 {
            if !self.tables.pending() {
                break;
            }
            self.builder
                .wait_ready(std::time::Duration::from_millis(50));
            self.prepare(index, keys, at_ms);
        }
    }

    /// The per-window tables held (windows, building threads).
    pub fn tables(&self) -> &rotating::WindowTables {
        &self.tables
    }

    /// The slot of the member who sent `advert`, heard at monotonic `at_ms`; `None`: a stranger.
    /// Answers from tables or caches made before a member left are refused by the live check.
    pub fn identify(&mut self, advert: &Advert, index: &MemberIndex, at_ms: u64) -> Option<Slot> {
        self.sync_index(index);
        self.slot(advert, index, at_ms)
            .filter(|s| index.is_live(*s))
    }

    fn slot(&mut self, advert: &Advert, index: &MemberIndex, at_ms: u64) -> Option<Slot> {
        for (company, data) in &advert.manufacturer_data {
            let found = match (company, data.get(..2)) {
                (&COMPANY_APPLE, Some([0x02, 0x15])) => match ibeacon::decode(data) {
                    Ok(b) if b.major == ROTATING_MAJOR && index.has_day_keys() => {
                        self.tables.find(|t| t.rotating(&b.uuid))
                    }
                    Ok(b) => index.ibeacon(&b.uuid, b.major, b.minor),
                    Err(_) => None,
                },
                (_, Some([0xBE, 0xAC])) => altbeacon::decode(data)
                    .ok()
                    .and_then(|b| index.ibeacon(&b.uuid(), b.major(), b.minor())),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        for (uuid, data) in &advert.service_data {
            if *uuid != eddystone::SERVICE_UUID {
                continue;
            }
            let found = match eddystone::decode(data) {
                Ok(eddystone::Eddystone::Uid {
                    namespace,
                    instance,
                    ..
                }) => index.eddystone_uid(&namespace, &instance),
                Ok(eddystone::Eddystone::Eid { eid, .. }) if index.has_eid_keys() => {
                    self.tables.find(|t| t.eid(&eid))
                }
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        match address::classify(&advert.address, advert.address_type) {
            AddressKind::Public | AddressKind::StaticRandom => index.mac(&advert.address),
            AddressKind::ResolvablePrivate
                if !index.irks().is_empty() && rpa::valid_prand(&advert.address) =>
            {
                if let Some(cached) = self.rpa.get(&advert.address, at_ms) {
                    self.metrics.rpa_cache_hits.inc();
                    return cached;
                }
                let found = rpa::resolve(&advert.address, index.irks());
                let blocks = index.irks().len() as u64;
                self.rpa_aes_blocks += blocks;
                self.metrics.rpa_resolutions.inc();
                self.metrics.rpa_aes_blocks.inc_by(blocks);
                if found.is_some() {
                    self.metrics.rpa_resolved.inc();
                }
                self.rpa.insert(&advert.address, found, at_ms);
                found
            }
            AddressKind::ResolvablePrivate
            | AddressKind::NonResolvablePrivate
            | AddressKind::Reserved => None,
        }
    }
}

#[cfg(test)]
mod tests;
