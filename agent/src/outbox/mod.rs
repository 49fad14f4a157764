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
//! (`meta.next_seq`) and the highest number head office has acknowledged (`meta.hq_high_water`,
//! learned from every ack): a database rolled back by a lying card therefore never reissues a
//! number head office already holds for a different event — once it has heard from head office.
//! Events appended after such a rollback but before the first ack may still collide; head office
//! would drop them as duplicates (a documented gap, see the sync module).

mod writer;

use std::{path::Path, sync::Arc};

use instore_protocol::{Event, EventBody, SeqRange};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;

/// Largest encoded event body the outbox accepts. Far above any real event; it guarantees that
/// one event always fits in an MQTT batch, so an oversized event cannot wedge the uplink.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

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

/// Counts the uplink and `/metrics` may want in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events not yet acknowledged by head office.
    pub depth: u64,
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

impl Outbox {
    /// Opens (creating if needed) the outbox at `path` and starts its writer thread.
    pub fn open(path: &Path, metrics: Metrics) -> Result<Outbox, OutboxError> {
        let writer = writer::Writer::open(path, metrics)?;
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
