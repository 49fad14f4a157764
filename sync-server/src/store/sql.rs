//! Every SQL statement head office runs, named, for both backends (see [`super::db`] for the
//! portable habits they follow). The schema lives in [`super::schema`]; nothing else in the
//! crate writes SQL text.

use super::{bulk::Rows, db::Sql};

// --- ingest ---------------------------------------------------------------------------------

/// Many events at once; returns the sequence numbers stored for the first time.
pub static INSERT_EVENTS: Rows = Rows {
    head: "INSERT INTO events
    (gateway_id, seq, store_id, at_ms, type, body_json, received_at_ms) VALUES",
    width: 7,
    tail: "ON CONFLICT DO NOTHING RETURNING seq",
};

/// Which of the named members head office holds without presence consent.
pub static SELECT_OPTED_OUT: Rows = Rows {
    head: "SELECT member_id FROM members WHERE presence = 0 AND member_id IN (VALUES",
    width: 1,
    tail: ")",
};

/// Which of the named members (by the SHA-256 of their id) head office erased.
pub static SELECT_ERASED: Rows = Rows {
    head: "SELECT member_hash FROM erased_members WHERE member_hash IN (VALUES",
    width: 1,
    tail: ")",
};

/// Which of the named members head office holds (an erased member imported again is back).
pub static SELECT_HELD: Rows = Rows {
    head: "SELECT member_id FROM members WHERE member_id IN (VALUES",
    width: 1,
    tail: ")",
};

/// Creates the gateway on first sight; afterwards only its store and last-seen time move, and
/// `signs` once it sends a sealed message (`?4` = 1). A plain message (`?4` = 0) from a gateway
/// that has sealed before moves nothing, and the returned `signs` = 1 tells the caller to refuse
/// it: one round trip decides and records.
pub const UPSERT_GATEWAY_SEEN: Sql = Sql::same(
    "INSERT INTO gateways (id, store, last_seen_ms, signs)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT(id) DO UPDATE SET
        store = CASE WHEN gateways.signs = 1 AND excluded.signs = 0
            THEN gateways.store ELSE excluded.store END,
        last_seen_ms = CASE WHEN gateways.signs = 1 AND excluded.signs = 0
            THEN gateways.last_seen_ms
            WHEN excluded.last_seen_ms > gateways.last_seen_ms
            THEN excluded.last_seen_ms ELSE gateways.last_seen_ms END,
        signs = CASE WHEN excluded.signs = 1 THEN 1 ELSE gateways.signs END
    RETURNING signs",
);

/// [`UPSERT_GATEWAY_SEEN`] for a batch: also the gateway's `last_seq` before the batch, in the
/// same round trip, to bound how far the batch's numbers may jump.
pub const UPSERT_GATEWAY_SEEN_LAST_SEQ: Sql = Sql::same(
    "INSERT INTO gateways (id, store, last_seen_ms, signs)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT(id) DO UPDATE SET
        store = CASE WHEN gateways.signs = 1 AND excluded.signs = 0
            THEN gateways.store ELSE excluded.store END,
        last_seen_ms = CASE WHEN gateways.signs = 1 AND excluded.signs = 0
            THEN gateways.last_seen_ms
            WHEN excluded.last_seen_ms > gateways.last_seen_ms
            THEN excluded.last_seen_ms ELSE gateways.last_seen_ms END,
        signs = CASE WHEN excluded.signs = 1 THEN 1 ELSE gateways.signs END
    RETURNING signs, last_seq",
);

/// Counters of one batch: `last_seq` only ever rises (it is the acks' high-water mark), and
/// comes back; the outbox depth the batch reports (`?5`, NULL: not reported) replaces the last.
pub const ADD_BATCH_COUNTS: Sql = Sql::same(
    "UPDATE gateways SET
    last_seq = CASE WHEN ?2 > last_seq THEN ?2 ELSE last_seq END,
    events_received = events_received + ?3,
    duplicates_dropped = duplicates_dropped + ?4,
    outbox_depth = COALESCE(?5, outbox_depth)
    WHERE id = ?1
    RETURNING last_seq",
);

pub const SET_GATEWAY_ONLINE: Sql = Sql::same("UPDATE gateways SET online = ?2 WHERE id = ?1");

pub const ADD_BAD_PAYLOAD: Sql =
    Sql::same("UPDATE gateways SET bad_payloads = bad_payloads + 1 WHERE id = ?1");

/// Records a boot on first mention with the gateway's current mark as its floor.
pub const INSERT_BOOT: Sql = Sql::same(
    "INSERT INTO gateway_boots (gateway_id, boot, floor, first_seen_ms)
    SELECT ?1, ?2, last_seq, ?3 FROM gateways WHERE id = ?1
    ON CONFLICT DO NOTHING",
);

pub const SELECT_BOOT_FLOOR: Sql =
    Sql::same("SELECT floor FROM gateway_boots WHERE gateway_id = ?1 AND boot = ?2");

pub const INSERT_SHED_RANGE: Sql = Sql::same(
    "INSERT INTO shed_ranges
    (gateway_id, report_seq, first_seq, last_seq, count, kinds_json)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT DO NOTHING",
);

// --- queries --------------------------------------------------------------------------------

pub const SELECT_GATEWAYS: Sql = Sql::same(
    "SELECT id, store, online, last_seq, events_received,
    duplicates_dropped, bad_payloads, last_seen_ms, retained_from, signs FROM gateways ORDER BY id",
);

/// Missing sequence numbers below the highest stored one, as inclusive ranges, above `?2`
/// (what retention deleted). `LAG` defaulting to `?2` makes a batch that never arrived at the
/// start (seq 1.., or just above the retained mark) count as a gap too.
pub const SELECT_GAPS: Sql = Sql::same(
    "SELECT prev + 1, seq - 1 FROM (
        SELECT seq, LAG(seq, 1, CAST(?2 AS BIGINT)) OVER (ORDER BY seq) AS prev
        FROM events WHERE gateway_id = ?1 AND seq > ?2
    ) AS numbered WHERE seq > prev + 1 ORDER BY seq",
);

pub const SELECT_SHED_RANGES: Sql = Sql::same(
    "SELECT first_seq, last_seq, count, kinds_json
    FROM shed_ranges WHERE gateway_id = ?1 ORDER BY first_seq",
);

/// Events missing (below the last one) inside `[?2, ?3]`: the range's span minus what is stored.
pub const COUNT_STORED_IN_RANGE: Sql =
    Sql::same("SELECT COUNT(*) FROM events WHERE gateway_id = ?1 AND seq BETWEEN ?2 AND ?3");

pub const SELECT_EVENTS_AFTER: Sql = Sql::same(
    "SELECT gateway_id, seq, store_id, at_ms, type, body_json,
    received_at_ms FROM events WHERE gateway_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
);

pub const SELECT_STORES: Sql = Sql::same("SELECT DISTINCT store FROM gateways ORDER BY store");

pub const SUM_SEQ_AND_RECEIVED: Sql = Sql::same(
    "SELECT CAST(COALESCE(SUM(last_seq), 0) AS BIGINT),
        CAST(COALESCE(SUM(events_received), 0) AS BIGINT) FROM gateways",
);
pub const SUM_SHED: Sql =
    Sql::same("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM shed_ranges");

pub const COUNT_GATEWAYS: Sql =
    Sql::same("SELECT COUNT(*), CAST(COALESCE(SUM(online), 0) AS BIGINT) FROM gateways");

/// Alert lifecycle events grouped by rule, optionally for one store (`?1` NULL: all stores).
/// Each count is of distinct alerts, so a step a gateway sent twice counts once.
pub const SELECT_RULES_REPORT: Sql = Sql::per_backend(
    "SELECT json_extract(body_json, '$.rule') AS rule,
    COUNT(DISTINCT CASE WHEN type = 'alert_raised' THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_taken' THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND json_extract(body_json, '$.outcome') = 'purchased'
        THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND json_extract(body_json, '$.outcome') = 'no_sale'
        THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND json_extract(body_json, '$.outcome') = 'not_found'
        THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_dismissed' THEN json_extract(body_json, '$.alert_id') END),
    COUNT(DISTINCT CASE WHEN type = 'alert_expired' THEN json_extract(body_json, '$.alert_id') END)
    FROM events
    WHERE type IN ('alert_raised', 'alert_taken', 'alert_outcome', 'alert_dismissed', 'alert_expired')
      AND (?1 IS NULL OR store_id = ?1)
    GROUP BY rule
    HAVING rule IS NOT NULL
    ORDER BY rule",
    "SELECT body::jsonb ->> 'rule' AS rule,
    COUNT(DISTINCT CASE WHEN type = 'alert_raised' THEN body::jsonb ->> 'alert_id' END),
    COUNT(DISTINCT CASE WHEN type = 'alert_taken' THEN body::jsonb ->> 'alert_id' END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND body::jsonb ->> 'outcome' = 'purchased' THEN body::jsonb ->> 'alert_id' END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND body::jsonb ->> 'outcome' = 'no_sale' THEN body::jsonb ->> 'alert_id' END),
    COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
        AND body::jsonb ->> 'outcome' = 'not_found' THEN body::jsonb ->> 'alert_id' END),
    COUNT(DISTINCT CASE WHEN type = 'alert_dismissed' THEN body::jsonb ->> 'alert_id' END),
    COUNT(DISTINCT CASE WHEN type = 'alert_expired' THEN body::jsonb ->> 'alert_id' END)
    FROM (SELECT type, body_json AS body FROM events
        WHERE type IN ('alert_raised', 'alert_taken', 'alert_outcome', 'alert_dismissed',
            'alert_expired')
          AND (CAST(?1 AS TEXT) IS NULL OR store_id = ?1)
          AND body_json::jsonb ->> 'rule' IS NOT NULL) AS lifecycle
    GROUP BY rule
    ORDER BY rule",
);

/// Per store, rule and group (0 alerted, 1 held out): occasions, how many were followed by a
/// purchase of the member within `?2` ms (at any store: a greeted member may pay at the next
/// one), and those purchases' revenue. `?1` NULL: all stores. Occasions are `alert_raised` and
/// `held_out` events, each stored once per (gateway, seq).
pub const SELECT_HOLDOUT_GROUPS: Sql = Sql::per_backend(
    "SELECT store_id, rule, held, COUNT(*),
        CAST(COALESCE(SUM(CASE WHEN revenue IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT),
        CAST(COALESCE(SUM(revenue), 0) AS BIGINT)
    FROM (SELECT e.store_id AS store_id, json_extract(e.body_json, '$.rule') AS rule,
            CASE WHEN e.type = 'held_out' THEN 1 ELSE 0 END AS held,
            (SELECT SUM(p.amount_minor) FROM purchases p
                WHERE p.member_id = json_extract(e.body_json, '$.member_id')
                  AND p.at_ms >= e.at_ms AND p.at_ms < e.at_ms + ?2) AS revenue
        FROM events e
        WHERE e.type IN ('alert_raised', 'held_out') AND (?1 IS NULL OR e.store_id = ?1))
    WHERE rule IS NOT NULL
    GROUP BY store_id, rule, held
    ORDER BY rule, store_id, held",
    "SELECT store_id, rule, held, COUNT(*),
        CAST(COALESCE(SUM(CASE WHEN revenue IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT),
        CAST(COALESCE(SUM(revenue), 0) AS BIGINT)
    FROM (SELECT e.store_id AS store_id, e.body_json::jsonb ->> 'rule' AS rule,
            CASE WHEN e.type = 'held_out' THEN 1 ELSE 0 END AS held,
            (SELECT SUM(p.amount_minor) FROM purchases p
                WHERE p.member_id = e.body_json::jsonb ->> 'member_id'
                  AND p.at_ms >= e.at_ms AND p.at_ms < e.at_ms + CAST(?2 AS BIGINT)) AS revenue
        FROM events e
        WHERE e.type IN ('alert_raised', 'held_out')
          AND (CAST(?1 AS TEXT) IS NULL OR e.store_id = ?1)) AS occasions
    WHERE rule IS NOT NULL
    GROUP BY store_id, rule, held
    ORDER BY rule, store_id, held",
);

/// Distinct alerts taken, per store and rule (`?1` NULL: all stores).
pub const SELECT_TAKEN_BY_STORE: Sql = Sql::per_backend(
    "SELECT store_id, json_extract(body_json, '$.rule') AS rule,
        COUNT(DISTINCT json_extract(body_json, '$.alert_id'))
    FROM events WHERE type = 'alert_taken' AND (?1 IS NULL OR store_id = ?1)
    GROUP BY store_id, rule HAVING rule IS NOT NULL",
    "SELECT store_id, body_json::jsonb ->> 'rule' AS rule,
        COUNT(DISTINCT body_json::jsonb ->> 'alert_id')
    FROM events WHERE type = 'alert_taken' AND (CAST(?1 AS TEXT) IS NULL OR store_id = ?1)
    GROUP BY store_id, body_json::jsonb ->> 'rule'
    HAVING body_json::jsonb ->> 'rule' IS NOT NULL",
);

// --- members --------------------------------------------------------------------------------

pub const SELECT_META: Sql = Sql::same("SELECT value FROM meta WHERE key = ?1");
pub const UPSERT_META: Sql = Sql::same(
    "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value",
);
/// `meta` key of the member-set version.
pub const META_MEMBERS_VERSION: &str = "members_version";

/// An imported record: `dirty` counts up so a recomputation in flight cannot clear it.
pub const UPSERT_MEMBER: Sql = Sql::same(
    "INSERT INTO members (member_id, record_json, version, presence, tier, stage, has_keys,
        referred_by, home_store, dirty)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1)
    ON CONFLICT(member_id) DO UPDATE SET record_json = excluded.record_json,
        version = excluded.version, presence = excluded.presence, has_keys = excluded.has_keys,
        referred_by = excluded.referred_by, home_store = excluded.home_store,
        dirty = members.dirty + 1",
);

pub const SELECT_MEMBERS: Sql = Sql::same("SELECT record_json FROM members ORDER BY member_id");
pub const COUNT_MEMBERS: Sql = Sql::same("SELECT COUNT(*) FROM members");
