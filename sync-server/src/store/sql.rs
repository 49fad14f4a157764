//! Every SQL statement head office runs, named. Schema changes bump [`SCHEMA_VERSION`] and add a
//! step to [`MIGRATIONS`]; nothing else in the crate writes SQL text.

/// `PRAGMA user_version` after all migrations.
pub const SCHEMA_VERSION: i64 = 2;

/// Run once per connection. WAL lets readers proceed during a commit; `synchronous = FULL`
/// because an ack promises the gateway its events are durable and it deletes them on that word.
pub const PRAGMAS: &str = "PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;
PRAGMA busy_timeout = 5000;";

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE events (
    gateway_id     TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    store_id       TEXT    NOT NULL,
    at_ms          INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    body_json      TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
) WITHOUT ROWID;
CREATE TABLE gateways (
    id                 TEXT PRIMARY KEY,
    store              TEXT    NOT NULL,
    online             INTEGER NOT NULL DEFAULT 0,
    last_seq           INTEGER NOT NULL DEFAULT 0,
    events_received    INTEGER NOT NULL DEFAULT 0,
    duplicates_dropped INTEGER NOT NULL DEFAULT 0,
    bad_payloads       INTEGER NOT NULL DEFAULT 0,
    last_seen_ms       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX gateways_by_store ON gateways(store);
CREATE TABLE members (
    member_id   TEXT PRIMARY KEY,
    record_json TEXT    NOT NULL,
    version     INTEGER NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
",
    "
-- Each gateway boot's floor: the gateway's high-water mark when head office first heard of the
-- boot (in a hello). Never updated: the gateway's rollback safety rests on it staying put.
CREATE TABLE gateway_boots (
    gateway_id    TEXT    NOT NULL,
    boot          INTEGER NOT NULL,
    floor         INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, boot)
) WITHOUT ROWID;
-- Ranges a gateway's outbox shed over its byte quota, keyed by the seq of the events_shed event
-- that reported them (so a re-sent report is stored once).
CREATE TABLE shed_ranges (
    gateway_id  TEXT    NOT NULL,
    report_seq  INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    kinds_json  TEXT    NOT NULL,
    PRIMARY KEY (gateway_id, report_seq)
) WITHOUT ROWID;
",
];

// --- ingest ---------------------------------------------------------------------------------

pub const INSERT_EVENT: &str = "INSERT OR IGNORE INTO events
    (gateway_id, seq, store_id, at_ms, type, body_json, received_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Creates the gateway on first sight; afterwards only its store and last-seen time move.
pub const UPSERT_GATEWAY_SEEN: &str = "INSERT INTO gateways (id, store, last_seen_ms)
    VALUES (?1, ?2, ?3)
    ON CONFLICT(id) DO UPDATE SET store = excluded.store,
        last_seen_ms = MAX(gateways.last_seen_ms, excluded.last_seen_ms)";

/// Counters of one batch: `last_seq` only ever rises (it is the acks' high-water mark).
pub const ADD_BATCH_COUNTS: &str = "UPDATE gateways SET
    last_seq = MAX(last_seq, ?2),
    events_received = events_received + ?3,
    duplicates_dropped = duplicates_dropped + ?4
    WHERE id = ?1";

pub const SET_GATEWAY_ONLINE: &str = "UPDATE gateways SET online = ?2 WHERE id = ?1";

pub const ADD_BAD_PAYLOAD: &str =
    "UPDATE gateways SET bad_payloads = bad_payloads + 1 WHERE id = ?1";

pub const SELECT_LAST_SEQ: &str = "SELECT last_seq FROM gateways WHERE id = ?1";

/// Records a boot on first mention with the gateway's current mark as its floor.
pub const INSERT_BOOT: &str = "INSERT OR IGNORE INTO gateway_boots
    (gateway_id, boot, floor, first_seen_ms)
    VALUES (?1, ?2, (SELECT last_seq FROM gateways WHERE id = ?1), ?3)";

pub const SELECT_BOOT_FLOOR: &str =
    "SELECT floor FROM gateway_boots WHERE gateway_id = ?1 AND boot = ?2";

pub const INSERT_SHED_RANGE: &str = "INSERT OR IGNORE INTO shed_ranges
    (gateway_id, report_seq, first_seq, last_seq, count, kinds_json)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

// --- queries --------------------------------------------------------------------------------

pub const SELECT_GATEWAYS: &str = "SELECT id, store, online, last_seq, events_received,
    duplicates_dropped, bad_payloads, last_seen_ms FROM gateways ORDER BY id";

/// Missing sequence numbers below the highest stored one, as inclusive ranges. `LAG` with a
/// default of 0 makes a batch that never arrived at the start (seq 1..) count as a gap too.
pub const SELECT_GAPS: &str = "SELECT prev + 1, seq - 1 FROM (
        SELECT seq, LAG(seq, 1, 0) OVER (ORDER BY seq) AS prev
        FROM events WHERE gateway_id = ?1
    ) WHERE seq > prev + 1 ORDER BY seq LIMIT ?2";

pub const SELECT_SHED_RANGES: &str = "SELECT first_seq, last_seq, count, kinds_json
    FROM shed_ranges WHERE gateway_id = ?1 ORDER BY first_seq";

/// Events missing (below the last one) inside `[?2, ?3]`: the range's span minus what is stored.
pub const COUNT_STORED_IN_RANGE: &str =
    "SELECT COUNT(*) FROM events WHERE gateway_id = ?1 AND seq BETWEEN ?2 AND ?3";

pub const SELECT_EVENTS_AFTER: &str = "SELECT gateway_id, seq, store_id, at_ms, type, body_json,
    received_at_ms FROM events WHERE gateway_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";

pub const SELECT_STORES: &str = "SELECT DISTINCT store FROM gateways ORDER BY store";

pub const SUM_SEQ_AND_RECEIVED: &str =
    "SELECT COALESCE(SUM(last_seq), 0), COALESCE(SUM(events_received), 0) FROM gateways";
pub const SUM_SHED: &str = "SELECT COALESCE(SUM(count), 0) FROM shed_ranges";

pub const COUNT_GATEWAYS: &str = "SELECT COUNT(*), COALESCE(SUM(online), 0) FROM gateways";

// --- members --------------------------------------------------------------------------------

pub const SELECT_META: &str = "SELECT value FROM meta WHERE key = ?1";
pub const UPSERT_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value";
/// `meta` key of the member-set version.
pub const META_MEMBERS_VERSION: &str = "members_version";

pub const UPSERT_MEMBER: &str = "INSERT INTO members (member_id, record_json, version)
    VALUES (?1, ?2, ?3)
    ON CONFLICT(member_id) DO UPDATE SET record_json = excluded.record_json,
        version = excluded.version";

pub const SELECT_MEMBERS: &str = "SELECT record_json FROM members ORDER BY member_id";
pub const COUNT_MEMBERS: &str = "SELECT COUNT(*) FROM members";
