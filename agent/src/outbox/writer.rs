//! The outbox's writer thread: the only code that touches `outbox.db`.
//!
//! It keeps the few numbers every command needs (next sequence number, high-water mark, depth,
//! bytes, oldest event) in memory, loaded once at open and updated only after a commit succeeds,
//! so the memory never runs ahead of the disk.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use instore_protocol::{
    BootFloor, Event, EventBody, MAX_HELLO_BOOTS, MAX_SEQ_JUMP, SEQ_LIMIT, SeqRange, ShedClass,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::{
    Boots, Command, MAX_EVENT_BYTES, NewEvent, OutboxError, OutboxOptions, OutboxStats,
    ROW_OVERHEAD, SHED_HEADROOM,
};
use crate::metrics::Metrics;

/// `class` is the event's [`ShedClass`] (0 health, 1 footfall, 2 presence) or [`NEVER_SHED`];
/// `boot` the boot that wrote the row (0: written before boots existed; never renumbered).
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, body TEXT NOT NULL,
        boot INTEGER NOT NULL DEFAULT 0, class INTEGER NOT NULL DEFAULT 2);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS quarantine (
        seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL);
";
/// Outboxes created before boots and shed classes gain the columns (existing rows: boot 0,
/// class presence — kept, and shed last).
const HAS_COLUMN: &str = "SELECT COUNT(*) FROM pragma_table_info('outbox') WHERE name = ?1";
const ADD_BOOT: &str = "ALTER TABLE outbox ADD COLUMN boot INTEGER NOT NULL DEFAULT 0";
const ADD_CLASS: &str = "ALTER TABLE outbox ADD COLUMN class INTEGER NOT NULL DEFAULT 2";
const SHED_INDEX: &str = "CREATE INDEX IF NOT EXISTS outbox_by_class ON outbox (class, seq)";
const INSERT: &str =
    "INSERT INTO outbox (seq, at_ms, body, boot, class) VALUES (?1, ?2, ?3, ?4, ?5)";
const SELECT_PENDING: &str =
    "SELECT seq, at_ms, body FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2";
const DELETE_RANGE: &str = "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2";
const BYTES_RANGE: &str =
    "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM outbox WHERE seq BETWEEN ?1 AND ?2";
const QUARANTINE: &str = "INSERT OR REPLACE INTO quarantine (seq, at_ms, body, reason)
    SELECT seq, at_ms, body, ?2 FROM outbox WHERE seq = ?1";
const DELETE_ONE: &str = "DELETE FROM outbox WHERE seq = ?1";
const BYTES_ONE: &str = "SELECT length(body) FROM outbox WHERE seq = ?1";
const GET_META: &str = "SELECT value FROM meta WHERE key = ?1";
const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value";
const COUNT_BYTES: &str = "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM outbox";
const MAX_SEQ: &str = "SELECT MAX(seq) FROM outbox";
const OLDEST: &str = "SELECT at_ms FROM outbox ORDER BY seq LIMIT 1";
/// Other boots with rows, oldest rows first (a boot's first row tells its age).
const OTHER_BOOTS: &str = "SELECT boot FROM outbox WHERE boot != 0 AND boot != ?1
    GROUP BY boot ORDER BY MIN(seq) LIMIT ?2";
const BOOT_AT_OR_BELOW: &str = "SELECT seq FROM outbox WHERE boot = ?1 AND seq <= ?2 ORDER BY seq";
const SEQS_FROM: &str = "SELECT seq FROM outbox WHERE seq >= ?1 ORDER BY seq";
const RENUMBER: &str = "UPDATE outbox SET seq = ?2 WHERE seq = ?1";
/// The oldest sheddable events of one class, with their size and kind.
const SHED_CANDIDATES: &str = "SELECT seq, length(body), json_extract(body, '$.type')
    FROM outbox WHERE class = ?1 ORDER BY seq LIMIT ?2";

const META_NEXT_SEQ: &str = "next_seq";
const META_HIGH_WATER: &str = "hq_high_water";

/// `class` of rows that are never shed (`EventsShed`: how shedding stays visible).
const NEVER_SHED: i64 = 3;
/// Shed candidates read per query.
const SHED_CHUNK: i64 = 4096;

/// Commands taken from the queue per round, at most: bounds one group commit's size.
const DRAIN_MAX: usize = 512;

type AppendReply = oneshot::Sender<Result<Vec<Event>, OutboxError>>;

pub(super) struct Writer {
    conn: Connection,
    path: Arc<str>,
    metrics: Metrics,
    options: OutboxOptions,
    /// This opening's random id, recorded in every row it writes.
    boot: u64,
    /// Quota bytes held (body bytes plus [`ROW_OVERHEAD`] per row).
    bytes: u64,
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
    pub(super) fn open(
        path: &Path,
        options: OutboxOptions,
        metrics: Metrics,
    ) -> Result<Writer, OutboxError> {
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
        for (column, add) in [("boot", ADD_BOOT), ("class", ADD_CLASS)] {
            let has: i64 = conn
                .query_row(HAS_COLUMN, [column], |r| r.get(0))
                .map_err(&err)?;
            if has == 0 {
                conn.execute_batch(add).map_err(&err)?;
            }
        }
        conn.execute_batch(SHED_INDEX).map_err(&err)?;

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
        let (depth, body_bytes): (i64, i64) = conn
            .query_row(COUNT_BYTES, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?;
        let depth = u64::try_from(depth).unwrap_or(0);
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
            depth,
            oldest_at_ms,
            options,
            // Random, not a counter: a rolled-back database would hand out a counter's values
            // again, and head office must never confuse two boots.
            boot: (rand::random::<u64>() >> 2).max(1),
            bytes: u64::try_from(body_bytes).unwrap_or(0) + depth * ROW_OVERHEAD,
        };
        info!(
            path = %writer.path,
            boot = writer.boot,
            depth = writer.depth,
            bytes = writer.bytes,
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

    /// Whether head office's mark (or a boot's floor) is one this outbox may take: at most
    /// [`MAX_SEQ_JUMP`] beyond the numbers it issues (a rolled-back file catches up by the events
    /// it lost, never by billions), and leaving that much room below [`SEQ_LIMIT`]. A forged or
    /// corrupt ack beyond either would push the numbering to where it could not go on.
    fn takes_mark(&self, mark: u64) -> bool {
        mark <= SEQ_LIMIT - MAX_SEQ_JUMP && mark <= self.next_issue().saturating_add(MAX_SEQ_JUMP)
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
                        self.handle(other, &mut rx, &mut closers, &appended);
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
        appended: &watch::Sender<u64>,
    ) {
        match cmd {
            Command::Append { events, reply } => {
                // Not reached (the run loop groups appends), but correct if it were.
                let mut one = vec![(events, reply)];
                self.commit_appends(&mut one, appended);
            }
            Command::Boots { reply } => {
                let _ = reply.send(self.boots());
            }
            Command::Reconcile {
                high_water,
                floors,
                reply,
            } => {
                let result = self.reconcile(high_water, &floors);
                if matches!(result, Ok(n) if n > 0) {
                    appended.send_replace(self.last_seq());
                }
                let _ = reply.send(result);
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
                    bytes: self.bytes,
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
            Ok((next, added_bytes)) => {
                let count = next - first;
                self.next_seq = next;
                self.depth += count;
                self.bytes += added_bytes;
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
                // On failure the events are safe; the quota is exceeded until the next try.
                if self.bytes > self.options.max_bytes
                    && let Err(e) = self.shed()
                {
                    error!(path = %self.path, error = %e, "outbox: shedding failed");
                }
                appended.send_replace(self.last_seq());
            }
            Err(e) => {
                error!(path = %self.path, error = %e, "outbox: writing events failed");
                for (_, _, reply) in encoded {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Inserts the group from `first` on; returns the next free number and the quota bytes
    /// added. Nothing in memory changes here: the caller updates it once the commit succeeded.
    fn insert(
        &mut self,
        first: u64,
        group: &[(Vec<NewEvent>, Vec<String>, AppendReply)],
    ) -> Result<(u64, u64), OutboxError> {
        let err = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut seq = first;
        let mut bytes = 0u64;
        {
            let mut stmt = tx.prepare_cached(INSERT).map_err(&err)?;
            for (events, bodies, _) in group {
                for (event, body) in events.iter().zip(bodies) {
                    stmt.execute(params![
                        to_i64(seq),
                        event.at_ms,
                        body,
                        to_i64(self.boot),
                        class_of(&event.body)
                    ])
                    .map_err(&err)?;
                    seq += 1;
                    bytes += body.len() as u64 + ROW_OVERHEAD;
                }
            }
        }
        tx.execute(SET_META, params![META_NEXT_SEQ, to_i64(seq)])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok((seq, bytes))
    }

    /// Deletes the oldest events of the lowest shed class until the outbox is
    /// [`SHED_HEADROOM`] below its quota and records what went as one `EventsShed` event, all in
    /// one transaction.
    fn shed(&mut self) -> Result<(), OutboxError> {
        let target = self
            .options
            .max_bytes
            .saturating_sub(self.options.max_bytes / SHED_HEADROOM);
        let need = self.bytes.saturating_sub(target);
        let (seq, boot) = (self.next_issue(), self.boot);
        let err = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut freed = 0u64;
        let mut victims: Vec<i64> = Vec::new();
        let mut kinds = BTreeSet::new();
        'classes: for class in [ShedClass::Health, ShedClass::Footfall, ShedClass::Presence] {
            let mut stmt = tx.prepare_cached(SHED_CANDIDATES).map_err(&err)?;
            let mut rows = stmt
                .query(params![class as i64, SHED_CHUNK])
                .map_err(&err)?;
            // One chunk per class at most: a shed that needs more continues on the next commit.
            while let Some(row) = rows.next().map_err(&err)? {
                let seq: i64 = row.get(0).map_err(&err)?;
                let len: i64 = row.get(1).map_err(&err)?;
                let kind: Option<String> = row.get(2).map_err(&err)?;
                victims.push(seq);
                kinds.insert(kind.unwrap_or_else(|| "unknown".into()));
                freed += u64::try_from(len).unwrap_or(0) + ROW_OVERHEAD;
                if freed >= need {
                    break 'classes;
                }
            }
        }
        if victims.is_empty() {
            // Only never-shed events remain: nothing to give up.
            return Ok(());
        }
        {
            let mut delete = tx.prepare_cached(DELETE_ONE).map_err(&err)?;
            for seq in &victims {
                delete.execute(params![seq]).map_err(&err)?;
            }
        }
        let first_seq = victims.iter().copied().min().unwrap_or(0).max(0) as u64;
        let last_seq = victims.iter().copied().max().unwrap_or(0).max(0) as u64;
        let count = victims.len() as u64;
        let shed_event = EventBody::EventsShed {
            first_seq,
            last_seq,
            count,
            kinds: kinds.into_iter().collect(),
        };
        let body =
            serde_json::to_string(&shed_event).map_err(|e| OutboxError::Encode(Arc::new(e)))?;
        let now = crate::now_ms();
        tx.execute(
            INSERT,
            params![to_i64(seq), now, body, to_i64(boot), NEVER_SHED],
        )
        .map_err(&err)?;
        tx.execute(SET_META, params![META_NEXT_SEQ, to_i64(seq + 1)])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        drop(err);
        self.metrics.outbox_commits.inc();
        self.metrics.outbox_appended.inc();
        self.metrics.outbox_shed_events.inc_by(count);
        self.metrics.outbox_shed_ranges.inc();
        self.next_seq = seq + 1;
        self.depth = self.depth - count + 1;
        self.bytes = self.bytes.saturating_sub(freed) + body.len() as u64 + ROW_OVERHEAD;
        if self.oldest_at_ms.is_none() {
            self.oldest_at_ms = Some(now);
        }
        self.refresh_oldest()?;
        warn!(
            path = %self.path,
            first_seq,
            last_seq,
            count,
            bytes = self.bytes,
            quota = self.options.max_bytes,
            "outbox: over its byte quota; shed the oldest low-value events (reported to head office)"
        );
        Ok(())
    }

    fn boots(&self) -> Result<Boots, OutboxError> {
        let err = sql(&self.path);
        let mut stmt = self.conn.prepare_cached(OTHER_BOOTS).map_err(&err)?;
        let others = stmt
            .query_map(params![to_i64(self.boot), MAX_HELLO_BOOTS as i64], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(&err)?
            .map(|r| r.map(|b| b.max(0) as u64))
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(Boots {
            current: self.boot,
            others,
        })
    }

    fn reconcile(&mut self, high_water: u64, floors: &[BootFloor]) -> Result<u64, OutboxError> {
        if !self.takes_mark(high_water) || floors.iter().any(|f| !self.takes_mark(f.floor)) {
            return Err(OutboxError::HighWaterOutOfRange(high_water));
        }
        let err = sql(&self.path);
        let mut victims: Vec<i64> = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(BOOT_AT_OR_BELOW).map_err(&err)?;
            for f in floors.iter().filter(|f| f.boot != 0 && f.floor > 0) {
                let rows = stmt
                    .query_map(params![to_i64(f.boot), to_i64(f.floor)], |r| r.get(0))
                    .map_err(&err)?;
                for seq in rows {
                    victims.push(seq.map_err(&err)?);
                }
            }
        }
        if victims.is_empty() {
            drop(err);
            self.acknowledge(&[], high_water)?;
            return Ok(0);
        }
        // Everything after the first victim moves with it, so the order of events is kept.
        // Those later rows were not sent either: a row is sent only after a welcome that would
        // already have moved the victim below it.
        let lowest = victims.iter().copied().min().unwrap_or(0);
        victims = {
            let mut stmt = self.conn.prepare_cached(SEQS_FROM).map_err(&err)?;
            stmt.query_map(params![lowest], |r| r.get(0))
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?
        };
        drop(err);
        let hw = high_water.max(self.high_water);
        // Straight above head office's mark: the rows kept are all below the first victim (which
        // is at most its floor, at most the mark), and the numbers the moved rows held were never
        // sent, so the sequence stays contiguous.
        let first = hw + 1;
        let err = sql(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut seq = first;
        {
            let mut stmt = tx.prepare_cached(RENUMBER).map_err(&err)?;
            // Old and new ranges may overlap: park every row on its negative first.
            for old in &victims {
                stmt.execute(params![old, -old]).map_err(&err)?;
            }
            for old in &victims {
                stmt.execute(params![-old, to_i64(seq)]).map_err(&err)?;
                seq += 1;
            }
        }
        tx.execute(SET_META, params![META_NEXT_SEQ, to_i64(seq)])
            .map_err(&err)?;
        tx.execute(SET_META, params![META_HIGH_WATER, to_i64(hw)])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        drop(err);
        self.metrics.outbox_commits.inc();
        let moved = victims.len() as u64;
        self.metrics.outbox_renumbered.inc_by(moved);
        warn!(
            path = %self.path,
            renumbered = moved,
            from = victims[0],
            to_first = first,
            high_water = hw,
            "outbox: head office holds numbers this database issued again after a rollback; \
             renumbered the unsent events above them"
        );
        self.next_seq = seq;
        self.high_water = hw;
        self.refresh_oldest()?;
        Ok(moved)
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
        let mut bytes = 0u64;
        for (seq, reason) in rows {
            let len: Option<i64> = tx
                .query_row(BYTES_ONE, params![seq], |r| r.get(0))
                .optional()
                .map_err(&err)?;
            tx.execute(QUARANTINE, params![seq, reason]).map_err(&err)?;
            let n = tx.execute(DELETE_ONE, params![seq]).map_err(&err)? as u64;
            moved += n;
            if n > 0 {
                bytes += len.map_or(0, |l| l.max(0) as u64) + ROW_OVERHEAD;
            }
        }
        tx.commit().map_err(&err)?;
        drop(err);
        self.metrics.outbox_commits.inc();
        self.depth = self.depth.saturating_sub(moved);
        self.bytes = self.bytes.saturating_sub(bytes);
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
        if !self.takes_mark(high_water) {
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
        let mut bytes = 0u64;
        {
            let mut size = tx.prepare_cached(BYTES_RANGE).map_err(&err)?;
            let mut stmt = tx.prepare_cached(DELETE_RANGE).map_err(&err)?;
            for r in ranges.iter().filter(|r| r.first <= r.last) {
                let range = params![to_i64(r.first), to_i64(r.last)];
                let (n, b): (i64, i64) = size
                    .query_row(range, |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(&err)?;
                bytes += b.max(0) as u64 + n.max(0) as u64 * ROW_OVERHEAD;
                deleted += stmt.execute(range).map_err(&err)? as u64;
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
            self.bytes = self.bytes.saturating_sub(bytes);
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
        self.metrics
            .outbox_bytes
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        self.metrics
            .outbox_quota_bytes
            .set(i64::try_from(self.options.max_bytes).unwrap_or(i64::MAX));
        let age_s = self
            .oldest_at_ms
            .map_or(0, |t| (crate::now_ms().saturating_sub(t) / 1000).max(0));
        self.metrics.outbox_oldest_age_seconds.set(age_s);
    }
}

/// The stored `class` of an event: its shed class, or [`NEVER_SHED`].
fn class_of(body: &EventBody) -> i64 {
    match body {
        EventBody::EventsShed { .. } => NEVER_SHED,
        other => other.shed_class() as i64,
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
