//! Per-window tables of rotating member IDs and Eddystone EIDs, built off the engine task.
//!
//! The schemes are specified in [`instore_protocol::rotating`] and
//! [`instore_protocol::eddystone_eid`]. For a 15-minute window a [`WindowTable`] maps every ID a
//! member may advertise in it (one HMAC per member with a day key; the EIDs of every rotation
//! quantum overlapping the window, one AES block each, per member with a temporary key) to the
//! member's slot, so resolving an advert is one lookup however many members there are.
//!
//! In: the engine asks [`TableBuilder::request`] for a window, naming where the short-lived keys
//! are read from ([`WindowKeys`]: `members.db`, not memory). A dedicated thread (`id-tables`)
//! reads the keys of the window's day and epochs, builds it and leaves it in a mutex-guarded
//! hand-over slot;
//! out: the engine's next tick [`TableBuilder::take_ready`]s it and swaps it in. The engine keeps
//! windows w-1..=w+2, so the table for the next window is ready a whole window before it is
//! needed; lookups use w-1..=w+1 (±15 min of clock skew). A table that is late leaves the
//! previous ones working. A change batch that touched keys makes the held tables stale
//! ([`MemberIndex::keys_version`]): they keep answering (slots no longer live are refused by the
//! caller) until their rebuilt successors arrive. The thread ends when its [`TableBuilder`] is
//! dropped.
//!
//! A table is two sorted arrays (8-byte ID prefix, 4-byte slot): 12 bytes per ID, a binary
//! search per lookup, where a hash map took ~28.

use std::{
    sync::{Arc, Condvar, Mutex, mpsc},
    thread::ThreadId,
    time::{Duration, Instant},
};

use instore_protocol::{
    eddystone_eid::{self, Eid, MAX_EXPONENT},
    rotating::{RotatingId, WINDOW_SECS, day_of_window, rotating_id},
};

use crate::{
    cache::{MemberIndex, Slot, WindowKeys},
    metrics::Metrics,
};

/// IDs are uniformly random HMAC outputs, so their first 8 bytes key the table without losing
/// anything that matters: an accidental match among `3n` entries needs ~2^64/3n tries, and forging
/// a member's ID needs their day key either way.
fn short(id: &RotatingId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_be_bytes(b)
}

/// IDs → slots as two sorted arrays.
#[derive(Debug, Default)]
struct Sorted {
    ids: Vec<u64>,
    slots: Vec<Slot>,
}

impl Sorted {
    fn from(mut pairs: Vec<(u64, Slot)>) -> Self {
        pairs.sort_unstable_by_key(|p| p.0);
        pairs.dedup_by_key(|p| p.0);
        let (ids, slots) = pairs.into_iter().unzip();
        Self { ids, slots }
    }

    #[inline]
    fn get(&self, id: u64) -> Option<Slot> {
        self.ids.binary_search(&id).ok().map(|i| self.slots[i])
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// What a window table is built from: which index and which state of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOrigin {
    /// [`MemberIndex::build_id`].
    pub build_id: u64,
    /// [`MemberIndex::keys_version`] when it was requested.
    pub keys_version: u64,
}

impl TableOrigin {
    pub fn of(index: &MemberIndex) -> Self {
        Self {
            build_id: index.build_id(),
            keys_version: index.keys_version(),
        }
    }
}

/// The IDs of one window.
#[derive(Debug)]
pub struct WindowTable {
    pub window: u32,
    pub origin: TableOrigin,
    rotating: Sorted,
    eid: Sorted,
    /// Which thread built it: the engine's tests check that it was not the engine's.
    pub built_on: ThreadId,
    pub build_time: Duration,
}

impl WindowTable {
    /// Builds the table of `window` (CPU-bound and reads keys: call it off the engine task). A
    /// key source that fails gives an empty table (logged): the next change of keys retries.
    pub fn build(keys: &dyn WindowKeys, origin: TableOrigin, window: u32) -> Self {
        let started = Instant::now();
        let day = day_of_window(window);
        let mut rotating = Vec::new();
        if let Err(e) = keys.day_keys(day, &mut |slot, key| {
            rotating.push((short(&rotating_id(key, window)), slot));
        }) {
            tracing::warn!(error = %e, window, "reading day keys for a window table failed");
        }
        let mut eid = Vec::new();
        let start = (u64::from(window) * WINDOW_SECS as u64).min(u64::from(u32::MAX)) as u32;
        let end = start.saturating_add(WINDOW_SECS as u32 - 1);
        for epoch in eddystone_eid::epoch_of(start)..=eddystone_eid::epoch_of(end) {
            let epoch_start = u32::from(epoch) << 16;
            let epoch_end = epoch_start | 0xffff;
            let read = keys.eid_keys(epoch, &mut |slot, exponent, key| {
                let k = exponent.min(MAX_EXPONENT);
                // Every quantum overlapping the window, within this epoch (quanta never straddle
                // epochs: 2^k divides 2^16).
                let mut q = (start.max(epoch_start) >> k) << k;
                let last = end.min(epoch_end);
                let cipher = eddystone_eid::EidCipher::new(key);
                loop {
                    let id = cipher.eid(k, q);
                    eid.push((u64::from_be_bytes(id), slot));
                    match q.checked_add(1 << k) {
                        Some(next) if next <= last => q = next,
                        _ => break,
                    }
                }
            });
            if let Err(e) = read {
                tracing::warn!(error = %e, epoch, "reading EID keys for a window table failed");
            }
        }
        Self {
            window,
            origin,
            rotating: Sorted::from(rotating),
            eid: Sorted::from(eid),
            built_on: std::thread::current().id(),
            build_time: started.elapsed(),
        }
    }

    /// The member advertising rotating ID `id` in this window.
    #[inline]
    pub fn rotating(&self, id: &RotatingId) -> Option<Slot> {
        self.rotating.get(short(id))
    }

    /// The member whose beacon sends `eid` in this window.
    #[inline]
    pub fn eid(&self, eid: &Eid) -> Option<Slot> {
        self.eid.get(u64::from_be_bytes(*eid))
    }

    /// IDs in the table (rotating IDs + EIDs).
    pub fn len(&self) -> usize {
        self.rotating.len() + self.eid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.len() * 12
    }
}

type Job = (Arc<dyn WindowKeys>, TableOrigin, u32);

/// Builds requested per-window tables on a thread of its own.
#[derive(Debug)]
pub struct TableBuilder {
    jobs: Option<mpsc::SyncSender<Job>>,
    done: Arc<(Mutex<Vec<WindowTable>>, Condvar)>,
    spawn_failed: bool,
    metrics: Metrics,
}

/// Requests in flight: four windows per index, and one more index's worth while a swap settles.
const JOBS_CAPACITY: usize = 8;

/// What [`TableBuilder::request`] did.
#[derive(Debug)]
pub enum Requested {
    /// Queued; the table will come out of [`TableBuilder::take_ready`].
    Queued,
    /// The queue is full: ask again on the next tick.
    Busy,
    /// No builder thread could be started: built here, on the caller's thread (counted in
    /// `id_table_inline_builds`).
    BuiltInline(WindowTable),
}

impl TableBuilder {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            jobs: None,
            done: Arc::new((Mutex::new(Vec::new()), Condvar::new())),
            spawn_failed: false,
            metrics: metrics.clone(),
        }
    }

    fn spawn(&mut self) -> Option<&mpsc::SyncSender<Job>> {
        if self.jobs.is_none() && !self.spawn_failed {
            let (tx, rx) = mpsc::sync_channel::<Job>(JOBS_CAPACITY);
            let done = self.done.clone();
            let metrics = self.metrics.clone();
            let spawned = std::thread::Builder::new()
                .name("id-tables".into())
                .spawn(move || {
                    // Ends when the builder (the engine's identify state) is dropped.
                    while let Ok((keys, origin, window)) = rx.recv() {
                        let table = WindowTable::build(&*keys, origin, window);
                        drop(keys);
                        metrics.id_table_builds.inc();
                        metrics
                            .id_table_build_us
                            .inc_by(table.build_time.as_micros() as u64);
                        let (lock, cv) = &*done;
                        if let Ok(mut ready) = lock.lock() {
                            ready.push(table);
                        }
                        cv.notify_all();
                    }
                });
            match spawned {
                Ok(_) => self.jobs = Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the ID-table thread; building tables inline");
                    self.spawn_failed = true;
                }
            }
        }
        self.jobs.as_ref()
    }

    /// Asks for the table of `window`, from `keys`, for the index state `origin`.
    pub fn request(
        &mut self,
        keys: &Arc<dyn WindowKeys>,
        origin: TableOrigin,
        window: u32,
    ) -> Requested {
        match self.spawn() {
            Some(jobs) => match jobs.try_send((keys.clone(), origin, window)) {
                Ok(()) => Requested::Queued,
                Err(mpsc::TrySendError::Full(_)) => Requested::Busy,
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    // The thread died (a panic while building): start another next time.
                    self.jobs = None;
                    Requested::Busy
                }
            },
            None => {
                let table = WindowTable::build(&**keys, origin, window);
                self.metrics.id_table_builds.inc();
                self.metrics.id_table_inline_builds.inc();
                self.metrics
                    .id_table_build_us
                    .inc_by(table.build_time.as_micros() as u64);
                Requested::BuiltInline(table)
            }
        }
    }

    /// Tables finished since the last call (never blocks on a build: the lock is held only to
    /// move the finished tables out).
    pub fn take_ready(&self) -> Vec<WindowTable> {
        match self.done.0.lock() {
            Ok(mut ready) => std::mem::take(&mut *ready),
            Err(_) => Vec::new(),
        }
    }

    /// Waits up to `timeout` for a table to finish (tests and benchmarks; never the engine).
    pub fn wait_ready(&self, timeout: Duration) {
        let (lock, cv) = &*self.done;
        if let Ok(ready) = lock.lock()
            && ready.is_empty()
        {
            let _ = cv.wait_timeout(ready, timeout);
        }
    }
}

/// The tables the engine holds: at most windows w-1..=w+2 of one index.
#[derive(Debug, Default)]
pub struct WindowTables {
    tables: Vec<Arc<WindowTable>>,
    /// Window lookups are answered for (set by the tick).
    current: Option<u32>,
    /// Windows requested and not yet back, with the keys version asked for.
    pending: Vec<(u32, u64)>,
}

impl WindowTables {
    fn wanted(window: u32) -> std::ops::RangeInclusive<u32> {
        window.saturating_sub(1)..=window.saturating_add(2)
    }

    /// Swaps in finished tables of `index` and requests the missing or stale windows around
    /// `window`. Returns whether the current window's table was missing (late).
    pub fn prepare(
        &mut self,
        builder: &mut TableBuilder,
        index: &MemberIndex,
        keys: &Arc<dyn WindowKeys>,
        window: u32,
    ) -> bool {
        let wanted = Self::wanted(window);
        let origin = TableOrigin::of(index);
        for t in builder.take_ready() {
            self.pending
                .retain(|(w, v)| !(*w == t.window && *v == t.origin.keys_version));
            let newer = self
                .tables
                .iter()
                .find(|h| h.window == t.window)
                .is_none_or(|h| h.origin.keys_version <= t.origin.keys_version);
            if t.origin.build_id == origin.build_id && wanted.contains(&t.window) && newer {
                self.insert(t);
            }
        }
        self.tables.retain(|t| wanted.contains(&t.window));
        self.pending.retain(|(w, _)| wanted.contains(w));
        for w in wanted {
            let fresh = self
                .tables
                .iter()
                .any(|t| t.window == w && t.origin.keys_version == origin.keys_version);
            if fresh || self.pending.contains(&(w, origin.keys_version)) {
                continue;
            }
            match builder.request(keys, origin, w) {
                Requested::Queued => self.pending.push((w, origin.keys_version)),
                Requested::Busy => break,
                Requested::BuiltInline(t) => self.insert(t),
            }
        }
        let late = self.current.is_some_and(|c| c != window) && !self.has(window);
        self.current = Some(window);
        late
    }

    fn insert(&mut self, t: WindowTable) {
        self.tables.retain(|have| have.window != t.window);
        self.tables.push(Arc::new(t));
    }

    fn has(&self, window: u32) -> bool {
        self.tables.iter().any(|t| t.window == window)
    }

    /// Whether requested tables are still being built.
    pub fn pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The first answer among the tables of w-1..=w+1.
    #[inline]
    pub fn find(&self, f: impl Fn(&WindowTable) -> Option<Slot>) -> Option<Slot> {
        let w = self.current?;
        let usable = w.saturating_sub(1)..=w.saturating_add(1);
        self.tables
            .iter()
            .filter(|t| usable.contains(&t.window))
            .find_map(|t| f(t))
    }

    /// Windows currently held.
    pub fn windows(&self) -> Vec<u32> {
        let mut w: Vec<u32> = self.tables.iter().map(|t| t.window).collect();
        w.sort_unstable();
        w
    }

    /// The threads that built the tables held.
    pub fn built_on(&self) -> Vec<ThreadId> {
        self.tables.iter().map(|t| t.built_on).collect()
    }

    pub fn clear(&mut self) {
        self.tables.clear();
        self.pending.clear();
        self.current = None;
    }
}
