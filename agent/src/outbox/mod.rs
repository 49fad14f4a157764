//! The durable outbox: every event the gateway produces is numbered and on disk here before
//! anything else acts on it.
//!
//! In: [`NewEvent`]s from the engine and other producers ([`Outbox::append`]); acknowledgements
//! and head office's high-water mark from the uplink ([`Outbox::acknowledge`]). Out: the committed
//! [`Event`]s with their sequence numbers (returned by `append`), the unacknowledged events in
//! sequence order for the uplink ([`Outbox::pending`]), and a wake-up for every commit
//! ([`Outbox::appended`]). It must not send anything, interpret events, or delete an event head
//! office has not acknowledged.
//!
//! # Shape
//! One thread owns the SQLite connection (`data_dir/outbox.db`) and is fed by a bounded channel of
//! commands with oneshot replies; [`Outbox`] is a cheap, cloneable handle. The thread *group
//! commits*: it takes every command queued while it was busy and writes all the appends among them
//! in one transaction, so a burst of events costs one fsync instead of one each
//! (`outbox_commits` counts the transactions). Command order is kept: an acknowledgement or a
//! high-water mark queued between two appends takes effect between them.
//!
//! # Durability on an SD card
//! WAL with `synchronous=FULL`: every commit fsyncs the WAL before `append` returns, so an event
//! the engine has acted on (a clerk was alerted) survives a pulled power cord. `NORMAL` would
//! save that fsync but may lose the last commits on power loss — acceptable for a cache, not for
//! the record head office counts visits from. On an SD card an fsync costs milliseconds and wears
//! the card, which is why group commit matters more than per-event speed. Cheap cards also lie
//! about flushes and can come back from a power cut with an *older* database; see below.
//!
//! # Sequence numbers
//! Contiguous from 1 per gateway, assigned in the transaction that stores the event, never
//! reused. A new number is always greater than both the last number this database issued
//! (`meta.next_seq`) and the highest number head office has acknowledged (`meta.hq_high_water`).
//!
//! A database rolled back by a lying card has forgotten numbers head office already holds, and
//! the events it writes after the restart would reuse them. So every opening of the database is a
//! *boot* with a random id, and every row records the boot that wrote it. Before the uplink sends
//! anything on a connection it asks head office (a [`Hello`](instore_protocol::Hello) naming the
//! current boot and every other boot with rows here) and gets back each boot's *floor*: head
//! office's high-water mark when it first heard of that boot. An event is only ever sent after
//! its boot was named in such a hello, so a row numbered at or below its boot's floor was never
//! sent: if head office holds that number, it is another event. [`Outbox::reconcile`] renumbers
//! those rows, and every row after the first of them (to keep the order), above the high-water
//! mark in one transaction, before the uplink sends anything. Rows below that point (events from
//! earlier boots that head office may already hold) keep their numbers and are de-duplicated
//! there. Residual: a rollback that also undoes a renumbering makes those events arrive twice,
//! under two numbers (counted twice, never lost).
//!
//! # Byte quota and shedding
//! Offline for days, the outbox stops at `[outbox] max_bytes` (body bytes plus
//! [`ROW_OVERHEAD`] per event). A commit that takes it over the quota is followed by a shed: the
//! oldest events of the lowest [`ShedClass`](instore_protocol::ShedClass) go first (health, then
//! footfall, then presence/identification/alerts), until the outbox is [`SHED_HEADROOM`] below
//! the quota; an [`EventsShed`](instore_protocol::EventBody::EventsShed) event naming the range,
//! count and kinds is written in the same transaction. `EventsShed` events are never shed. What
//! remains keeps its numbers and order.

mod writer;

use std::{path::Path, sync::Arc};

use instore_protocol::{BootFloor, Event, EventBody, SeqRange};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;

/// Largest encoded event body the outbox accepts. Far above any real event; it guarantees that
/// one event always fits in an MQTT batch, so an oversized event cannot wedge the uplink.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Bytes counted per stored event on top of its JSON body: the row header, the sequence number
/// and the shed index entry, roughly. Keeps the quota honest for small events.
pub const ROW_OVERHEAD: u64 = 48;

/// Default `[outbox] max_bytes`: see `agent/examples/agent.toml` for the arithmetic (a busy
/// store writes ~30 MB a day; this holds about 17 days).
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// A shed frees this share of the quota below it (1/50 = 2 %), so an outbox at its quota sheds
/// in occasional steps, not on every commit.
pub const SHED_HEADROOM: u64 = 50;

/// Commands queued for the writer thread, at most. Appenders wait (asynchronously) beyond this,
/// which is the back-pressure a stuck disk should exert.
const QUEUE: usize = 1024;

/// An event before the outbox has numbered it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Wall-clock time at the gateway, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub body: EventBody,
}

/// Why an outbox operation failed. Cloneable because one failed group commit answers every
/// append in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Sqlite {
        path: Arc<str>,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("outbox: event of {size} bytes exceeds the limit of {MAX_EVENT_BYTES}")]
    TooLarge { size: usize },
    #[error("outbox: cannot encode event: {0}")]
    Encode(Arc<serde_json::Error>),
    #[error("outbox {path}: stored {key} is out of range")]
    Corrupt { path: Arc<str>, key: &'static str },
    #[error("outbox: high-water mark {0} is out of range")]
    HighWaterOutOfRange(u64),
    #[error("outbox: cannot start the writer thread: {0}")]
    Thread(Arc<std::io::Error>),
    #[error("outbox is closed")]
    Closed,
}

/// Tunables of the outbox (`[outbox]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxOptions {
    /// Quota on stored events (body bytes plus [`ROW_OVERHEAD`] each); over it, events are shed.
    pub max_bytes: u64,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What the uplink names in its hello: this boot and the other boots with rows here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boots {
    pub current: u64,
    pub others: Vec<u64>,
}

/// Counts the uplink and `/metrics` may want in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events not yet acknowledged by head office.
    pub depth: u64,
    /// Bytes counted against the quota.
    pub bytes: u64,
    /// The last sequence number this database issued (0: none yet).
    pub last_seq: u64,
    /// Head office's acknowledged high-water mark, as last heard.
    pub high_water: u64,
}

enum Command {
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Event>, OutboxError>>,
    },
    Pending {
        after_seq: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Event>, OutboxError>>,
    },
    Acknowledge {
        ranges: Vec<SeqRange>,
        high_water: u64,
        reply: oneshot::Sender<Result<u64, OutboxError>>,
    },
    Stats {
        reply: oneshot::Sender<Result<OutboxStats, OutboxError>>,
    },
    Boots {
        reply: oneshot::Sender<Result<Boots, OutboxError>>,
    },
    Reconcile {
        high_water: u64,
        floors: Vec<BootFloor>,
        reply: oneshot::Sender<Result<u64, OutboxError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on the outbox. Clones share the one writer thread; the thread finishes queued work
/// and exits when the last handle is dropped or [`Outbox::close`] is called.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Command>,
    appended: watch::Receiver<u64>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("last_seq", &*self.appended.borrow())
            .finish()
    }
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path` with default options and starts its
    /// writer thread. Every opening is a new boot.
    pub fn open(path: &Path, metrics: Metrics) -> Result<Outbox, OutboxError> {
        Self::open_with(path, OutboxOptions::default(), metrics)
    }

    /// [`Outbox::open`] with explicit options.
    pub fn open_with(
        path: &Path,
        options: OutboxOptions,
        metrics: Metrics,
    ) -> Result<Outbox, OutboxError> {
        let writer = writer::Writer::open(path, options, metrics)?;
        let (appended_tx, appended) = watch::channel(writer.last_seq());
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run(rx, appended_tx))
            .map_err(|e| OutboxError::Thread(Arc::new(e)))?;
        Ok(Outbox { tx, appended })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Command,
    ) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Numbers and stores `events` in one transaction (possibly shared with other appends queued
    /// at the same moment); returns them with their sequence numbers, in order, once durable.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, OutboxError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply| Command::Append { events, reply }).await
    }

    /// Unacknowledged events with a sequence number above `after_seq`, lowest first, at most
    /// `limit`. A stored row that no longer decodes (a downgrade, a damaged file) is moved to the
    /// `quarantine` table and logged rather than blocking the uplink forever.
    pub async fn pending(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, OutboxError> {
        self.call(|reply| Command::Pending {
            after_seq,
            limit,
            reply,
        })
        .await
    }

    /// Deletes the events in `ranges` (head office has committed them) and raises the stored
    /// high-water mark to `high_water` if it is higher. Returns how many events were deleted;
    /// ranges naming events already gone are fine (a repeated ack).
    pub async fn acknowledge(
        &self,
        ranges: Vec<SeqRange>,
        high_water: u64,
    ) -> Result<u64, OutboxError> {
        self.call(|reply| Command::Acknowledge {
            ranges,
            high_water,
            reply,
        })
        .await
    }

    /// Raises the stored high-water mark: no sequence number at or below it is issued again.
    pub async fn set_high_water(&self, high_water: u64) -> Result<(), OutboxError> {
        self.acknowledge(Vec::new(), high_water).await.map(|_| ())
    }

    /// Events not yet acknowledged by head office.
    pub async fn depth(&self) -> Result<u64, OutboxError> {
        Ok(self.stats().await?.depth)
    }

    /// The last sequence number issued (0: none yet).
    pub async fn last_seq(&self) -> Result<u64, OutboxError> {
        Ok(self.stats().await?.last_seq)
    }

    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// This boot's id and the other boots that still have events here (at most
    /// [`instore_protocol::MAX_HELLO_BOOTS`] of them, oldest first; rows of unnamed boots keep
    /// their numbers).
    pub async fn boots(&self) -> Result<Boots, OutboxError> {
        self.call(|reply| Command::Boots { reply }).await
    }

    /// Applies head office's answer to a hello: every event numbered at or below its boot's
    /// floor, and every event after the first such, is renumbered above `high_water` (and above
    /// every number issued here), keeping their order, and the stored high-water mark is raised.
    /// One transaction. Returns how many events were renumbered.
    pub async fn reconcile(
        &self,
        high_water: u64,
        floors: Vec<BootFloor>,
    ) -> Result<u64, OutboxError> {
        self.call(|reply| Command::Reconcile {
            high_water,
            floors,
            reply,
        })
        .await
    }

    /// The last committed sequence number; changes after every commit. The uplink waits on it
    /// for new events instead of polling the database.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.clone()
    }

    /// Finishes the work queued by every handle, closes the database and stops the thread.
    /// Later calls on any handle fail with [`OutboxError::Closed`].
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests;
