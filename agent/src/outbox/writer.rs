//! The outbox's writer thread: the only code that touches `outbox.db`.
//!
//! It keeps the few numbers every command needs (next sequence number, high-water mark, depth,
//! oldest event) in memory, loaded once at open and updated only after a commit succeeds, so the
//! memory never runs ahead of the disk.

use std::{path::Path, sync::Arc, time::Duration};

use instore_protocol::{Event, EventBody, SeqRange};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::{Command, MAX_EVENT_BYTES, NewEvent, OutboxError, OutboxStats};
use crate::metrics::Metrics;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS quarantine (
        seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL);
";
const INSERT: &str = "INSERT INTO outbox (seq, at_ms, body) VALUES (?1, ?2, ?3)";
const SELECT_PENDING: &str =
    "SELECT seq, at_ms, body FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2";
const DELETE_RANGE: &str = "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2";
const QUARANTINE: &str = "INSERT OR REPLACE INTO quarantine (seq, at_ms, body, reason)
    SELECT seq, at_ms, body, ?2 FROM outbox WHERE seq = ?1";
const DELETE_ONE: &str = "DELETE FROM outbox WHERE seq = ?1";
const GET_META: &str = "SELECT value FROM meta WHERE key = ?1";
const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value";
const COUNT: &str = "SELECT COUNT(*) FROM outbox";
const MAX_SEQ: &str = "SELECT MAX(seq) FROM outbox";
const OLDEST: &str = "SELECT at_ms FROM outbox ORDER BY seq LIMIT 1";

const META_NEXT_SEQ: &str = "next_seq";
const META_HIGH_WATER: &str = "hq_high_water";

/// Sequence numbers live in SQLite's signed 64-bit integers. A high-water mark above this (a
/// buggy or hostile ack) is refused rather than allowed to exhaust the number space.
const SEQ_LIMIT: u64 = 1 << 62;

/// Commands taken from the queue per round, at most: bounds one group commit's size.
const DRAIN_MAX: usize = 512;

type AppendReply = oneshot::Sender<Result<Vec<Event>, OutboxError>>;

pub(super) struct Writer {
    conn: Connection,
    path: Arc<str>,
    metrics: Metrics,
    /// The next number this database would issue on its own (`meta.next_seq`).
    next_seq: u64,
    /// Head office's acknowledged high-water mark (`meta.hq_high_water`).
    high_water: u64,
    depth: u64,
    oldest_at_ms: Option<i64>,
}

fn sql(path: &Arc<str>) -> impl Fn(rusqlite::Error) -> OutboxError + '_ {
    move |source| OutboxError::Sqlite {
        path: path.clone(),
        source: Arc::new(source),
    }
}

fn to_u64(value: i64, path: &Arc<str>, key: &'static str) -> Result<u64, OutboxError> {
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= SEQ_LIMIT)
        .ok_or_else(|| OutboxError::Corrupt {
            path: path.clone(),
            key,
        })
}

/// Seqs are at most `SEQ_LIMIT`, so this never saturates for a real one; ranges from the wire may.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Writer {
    pub(super) fn open(path: &Path, metrics: Metrics) -> Result<Writer, OutboxError> {
        let path_str: Arc<str> = Arc::from(path.display().to_string());
        let err = sql(&path_str);
        let conn = Connection::open(path).map_err(&err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(&err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(&err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            warn!(path = %path_str, mode, "outbox: the file system refused WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(&err)?;
        conn.execute_batch(SCHEMA).map_err(&err)?;

        let meta = |key: &'static str| -> Result<u64, OutboxError> {
            let v: Option<i64> = conn
                .query_row(GET_META, [key], |r| r.get(0))
                .optional()
                .map_err(&err)?;
            v.map_or(Ok(0), |v| to_u64(v, &path_str, key))
        };
        let stored_next = meta(META_NEXT_SEQ)?;
        let high_water = meta(META_HIGH_WATER)?;
        let max_seq: Option<i64> = conn.query_row(MAX_SEQ, [], |r| r.get(0)).map_err(&err)?;
        let max_seq = max_seq.map_or(Ok(0), |v| to_u64(v, &path_str, "outbox.seq"))?;
        let depth: i64 = conn.query_row(COUNT, [], |r| r.get(0)).map_err(&err)?;
        let oldest_at_ms: Option<i64> = conn
            .query_row(OLDEST, [], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        drop(err);

        let writer = Writer {
            conn,
            path: path_str,
            metrics,
            // The stored counter can lag the table only if the file was edited by hand; trust
            // whichever is higher.
            next_seq: stored_next.max(max_seq + 1).max(1),
            high_water,
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_at_ms,
        };
        info!(
            path = %writer.path,
            depth = writer.depth,
            last_seq = writer.last_seq(),
            high_water,
            "outbox opened"
        );
        writer.update_gauges();
        Ok(writer)
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The number the next event gets: above everything issued here and everything head office
    /// has acknowledged.
    fn next_issue(&self) -> u64 {
        self.next_seq.max(self.high_water + 1)
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>, appended: watch::Sender<u64>) {
        let mut closers = Vec::new();
        let mut queue = Vec::with_capacity(DRAIN_MAX);
        let mut appends: Vec<(Vec<NewEvent>, AppendReply)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            queue.push(first);
            while queue.len() < DRAIN_MAX {
                match rx.try_recv() {
                    Ok(cmd) => queue.push(cmd),
                    Err(_) => break,
                }
            }
            for cmd in queue.drain(..) {
                match cmd {
                    Command::Append { events, reply } => appends.push((events, reply)),
                    other => {
                        // Keep command order: appends queued before this command commit first.
                        self.commit_appends(&mut appends, &appended);
                        self.handle(other, &mut rx, &mut closers);
                    }
                }
            }
            self.commit_appends(&mut appends, &appended);
            self.update_gauges();
        }
        let Writer { conn, path, .. } = self;
        if let Err((_, e)) = conn.close() {
            warn!(path = %path, error = %e, "outbox: closing the database failed");
        }
        for reply in closers {
            let _ = reply.send(());
        }
    }

    fn handle(
        &mut self,
        cmd: Command,
        rx: &mut mpsc::Receiver<Command>,
        closers: &mut Vec<oneshot::Sender<()>>,
    ) {
        match cmd {
            Command::Append { events, reply } => {
                // Not reached (the run loop groups appends), but correct if it were.
                let mut one = vec![(events, reply)];
                let (tx, _) = watch::channel(0);
                self.commit_appends(&mut one, &tx);
            }
            Command::Pending {
                after_seq,
                limit,
                reply,
            } => {
                let _ = reply.send(self.pending(after_seq, limit));
            }
            Command::Acknowledge {
                ranges,
                high_water,
                reply,
            } => {
                let _ = reply.send(self.acknowledge(&ranges, high_water));
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(OutboxStats {
                    depth: self.depth,
                    last_seq: self.last_seq(),
                    high_water: self.high_water,
                }));
            }
            Command::Close { reply } => {
                // Refuse new commands but finish those already queued; the loop ends when the
                // queue is empty.
                rx.close();
                closers.push(reply);
            }
        }
    }

    /// Writes every queued append in one transaction and answers each caller.
    fn commit_appends(
        &mut self,
        group: &mut Vec<(Vec<NewEvent>, AppendReply)>,
        appended: &watch::Sender<u64>,
    ) {
        if group.is_empty() {
            return;
        }
        // Encode outside the transaction: an unencodable event fails its own append only.
        let mut encoded = Vec::with_capacity(group.len());
        for (events, reply) in group.drain(..) {
            match encode(&events) {
                Ok(bodies) => encoded.push((events, bodies, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if encoded.is_empty() {
            return;
        }
        let first = self.next_issue();
        match self.insert(first, &encoded) {
            Ok(next) => {
                let count = next - first;
                self.next_seq = next;
                self.depth += count;
                if self.oldest_at_ms.is_none() {
                    self.oldest_at_ms = encoded
                        .first()
                        .and_then(|(events, _, _)| events.first())
                        .map(|e| e.at_ms);
                }
                self.metrics.outbox_commits.inc();
                self.metrics.outbox_appended.inc_by(count);
                let mut seq = first;
                for (events, _, reply) in encoded {
                    let out = events
                        .into_iter()
                        .map(|e| {
                            let event = Event {
                                seq,
                                at_ms: e.at_ms,
                                body: e.body,
                            };
                            seq += 1;
                            event
                        })
                        .collect();
                    let _ = reply.send(Ok(out));
                }
                appended.send_replace(next - 1);
            }
            Err(e) => {
                error!(path = %self.path, error = %e, "outbox: writing events failed");
                for (_, _, reply) in encoded {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Inserts the group from `first` on; returns the next free number. Nothing in memory
    /// changes here: the caller updates it only once the commit succeeded.
    fn insert(
        &mut self,
        first: u64,
        group: &[(Vec<NewEvent>, Vec<String>, AppendReply)],
    ) -> Result<u64, OutboxError> {
        let err = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut seq = first;
        {
            let mut stmt = tx.prepare_cached(INSERT).map_err(&err)?;
            for (events, bodies, _) in group {
                for (event, body) in events.iter().zip(bodies) {
                    stmt.execute(params![to_i64(seq), event.at_ms, body])
                        .map_err(&err)?;
                    seq += 1;
                }
            }
        }
        tx.execute(SET_META, params![META_NEXT_SEQ, to_i64(seq)])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(seq)
    }

    fn pending(&mut self, after_seq: u64, limit: usize) -> Result<Vec<Event>, OutboxError> {
        let err = sql(&self.path);
        let rows: Vec<(i64, i64, String)> = {
            let mut stmt = self.conn.prepare_cached(SELECT_PENDING).map_err(&err)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            stmt.query_map(params![to_i64(after_seq), limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?
        };
        drop(err);
        let mut out = Vec::with_capacity(rows.len());
        let mut broken = Vec::new();
        for (seq, at_ms, body) in rows {
            let seq_u = to_u64(seq, &self.path, "outbox.seq")?;
            match serde_json::from_str::<EventBody>(&body) {
                Ok(body) => out.push(Event {
                    seq: seq_u,
                    at_ms,
                    body,
                }),
                Err(e) => broken.push((seq, e.to_string())),
            }
        }
        if !broken.is_empty() {
            self.quarantine(&broken)?;
        }
        Ok(out)
    }

    /// Moves rows that no longer decode out of the way, keeping them for an operator.
    fn quarantine(&mut self, rows: &[(i64, String)]) -> Result<(), OutboxError> {
        let err = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut moved = 0u64;
        for (seq, reason) in rows {
            tx.execute(QUARANTINE, params![seq, reason]).map_err(&err)?;
            moved += tx.execute(DELETE_ONE, params![seq]).map_err(&err)? as u64;
        }
        tx.commit().map_err(&err)?;
        drop(err);
        self.metrics.outbox_commits.inc();
        self.depth = self.depth.saturating_sub(moved);
        self.refresh_oldest()?;
        for (seq, reason) in rows {
            error!(
                path = %self.path,
                seq,
                reason = %reason,
                "outbox: an event no longer decodes; moved to the quarantine table, not sent"
            );
        }
        Ok(())
    }

    fn acknowledge(&mut self, ranges: &[SeqRange], high_water: u64) -> Result<u64, OutboxError> {
        if high_water > SEQ_LIMIT {
            return Err(OutboxError::HighWaterOutOfRange(high_water));
        }
        let raise = high_water > self.high_water;
        if ranges.is_empty() && !raise {
            return Ok(0);
        }
        let err = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut deleted = 0u64;
        {
            let mut stmt = tx.prepare_cached(DELETE_RANGE).map_err(&err)?;
            for r in ranges.iter().filter(|r| r.first <= r.last) {
                deleted += stmt
                    .execute(params![to_i64(r.first), to_i64(r.last)])
                    .map_err(&err)? as u64;
            }
        }
        if raise {
            tx.execute(SET_META, params![META_HIGH_WATER, to_i64(high_water)])
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        drop(err);
        self.metrics.outbox_commits.inc();
        if raise {
            if high_water >= self.next_seq {
                // Head office holds numbers this file never issued: the file was restored or
                // rolled back by the card. New events continue above head office's mark.
                warn!(
                    path = %self.path,
                    high_water,
                    local_last_seq = self.last_seq(),
                    "outbox: head office is ahead of this database (rolled back?); skipping ahead"
                );
            }
            self.high_water = high_water;
        }
        if deleted > 0 {
            self.depth = self.depth.saturating_sub(deleted);
            self.refresh_oldest()?;
        }
        Ok(deleted)
    }

    fn refresh_oldest(&mut self) -> Result<(), OutboxError> {
        self.oldest_at_ms = self
            .conn
            .query_row(OLDEST, [], |r| r.get(0))
            .optional()
            .map_err(sql(&self.path))?;
        Ok(())
    }

    fn update_gauges(&self) {
        self.metrics
            .outbox_depth
            .set(i64::try_from(self.depth).unwrap_or(i64::MAX));
        let age_s = self
            .oldest_at_ms
            .map_or(0, |t| (crate::now_ms().saturating_sub(t) / 1000).max(0));
        self.metrics.outbox_oldest_age_seconds.set(age_s);
    }
}

fn encode(events: &[NewEvent]) -> Result<Vec<String>, OutboxError> {
    events
        .iter()
        .map(|e| {
            let body =
                serde_json::to_string(&e.body).map_err(|e| OutboxError::Encode(Arc::new(e)))?;
            if body.len() > MAX_EVENT_BYTES {
                return Err(OutboxError::TooLarge { size: body.len() });
            }
            Ok(body)
        })
        .collect()
}
