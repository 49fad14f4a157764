//! The schema, as versioned migrations per backend. Migration `i` takes the schema from version
//! `i` to `i + 1`; both backends have the same number of steps so a version means the same tables
//! on either. SQLite keeps its version in `PRAGMA user_version` (as it always has); PostgreSQL
//! in `schema_version`, migrated under an advisory lock so that several head-office instances
//! starting at once migrate once.

use super::{
    StoreError,
    db::{Backend, Db},
};

/// The schema version after every migration.
pub const SCHEMA_VERSION: i64 = SQLITE.len() as i64;

/// Run once per SQLite connection. WAL lets readers proceed during a commit; `synchronous = FULL`
/// because an ack promises the gateway its events are durable and it deletes them on that word.
pub const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;
PRAGMA busy_timeout = 10000;";

/// Serialises migrations across instances: `pg_advisory_xact_lock` on this key.
const PG_MIGRATION_LOCK: i64 = 0x696e_7374_6f72_6501;

/// Every campaign version kept; `retired` marks a withdrawal.
const MIGRATION_10: &str = "
CREATE TABLE campaigns (
    id         TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    scope      TEXT   NOT NULL,
    rules      TEXT   NOT NULL,
    retired    BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id, version)
);
ALTER TABLE gateways ADD COLUMN outbox_depth BIGINT;
";

const SQLITE: &[&str] = &[
    // 1: events, gateways, members, meta.
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
    // 2: boots' floors and shed ranges.
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
    // 3: head office computes the Data (purchases, visits, computed fields) and fans member
    // changes out per channel.
    "
ALTER TABLE members ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN presence INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN has_keys INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN level TEXT NOT NULL DEFAULT 'rest';
ALTER TABLE members ADD COLUMN tier TEXT NOT NULL DEFAULT '';
ALTER TABLE members ADD COLUMN stage TEXT;
ALTER TABLE members ADD COLUMN spend_12m INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN computed_json TEXT;
ALTER TABLE members ADD COLUMN gateway_json TEXT;
ALTER TABLE members ADD COLUMN keys_hash TEXT;
ALTER TABLE members ADD COLUMN referred_by TEXT;
ALTER TABLE members ADD COLUMN home_store TEXT;
ALTER TABLE members ADD COLUMN has_purchases INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN dirty INTEGER NOT NULL DEFAULT 1;
UPDATE members SET
    presence = CASE WHEN json_extract(record_json, '$.consent.presence') THEN 1 ELSE 0 END,
    tier = json_extract(record_json, '$.tier'),
    referred_by = json_extract(record_json, '$.referred_by'),
    home_store = json_extract(record_json, '$.home_store'),
    stage = json_extract(record_json, '$.stage'),
    has_keys = CASE WHEN record_json LIKE '%\"kind\":\"rotating_secret\"%'
        OR record_json LIKE '%\"kind\":\"eddystone_eid_identity\"%' THEN 1 ELSE 0 END;
CREATE INDEX members_dirty ON members(dirty) WHERE dirty > 0;
CREATE INDEX members_referred_by ON members(referred_by) WHERE referred_by IS NOT NULL;
CREATE INDEX members_keys ON members(has_keys) WHERE has_keys = 1;
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE purchases (
    purchase_id    TEXT PRIMARY KEY,
    member_id      TEXT    NOT NULL,
    store_id       TEXT    NOT NULL,
    at_ms          INTEGER NOT NULL,
    day            INTEGER NOT NULL,
    amount_minor   INTEGER NOT NULL,
    currency       TEXT    NOT NULL,
    items_json     TEXT    NOT NULL,
    imported_at_ms INTEGER NOT NULL
);
CREATE INDEX purchases_by_member ON purchases(member_id, at_ms);
CREATE TABLE member_days (
    member_id TEXT    NOT NULL,
    day       INTEGER NOT NULL,
    spend     INTEGER NOT NULL DEFAULT 0,
    purchases INTEGER NOT NULL DEFAULT 0,
    visits    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (member_id, day)
) WITHOUT ROWID;
CREATE TABLE member_categories (
    member_id TEXT    NOT NULL,
    month     INTEGER NOT NULL,
    category  TEXT    NOT NULL,
    amount    INTEGER NOT NULL,
    PRIMARY KEY (member_id, month, category)
) WITHOUT ROWID;
CREATE TABLE visits (
    store_id    TEXT    NOT NULL,
    visit_id    TEXT    NOT NULL,
    gateway_id  TEXT    NOT NULL,
    member_id   TEXT    NOT NULL,
    arrived_ms  INTEGER NOT NULL,
    departed_ms INTEGER,
    dwell_s     INTEGER,
    zones_json  TEXT    NOT NULL DEFAULT '[]',
    alerts      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, visit_id)
);
CREATE INDEX visits_by_member ON visits(member_id, arrived_ms);
CREATE INDEX visits_by_store ON visits(store_id, arrived_ms);
CREATE TABLE member_stores (
    member_id TEXT    NOT NULL,
    store_id  TEXT    NOT NULL,
    last_day  INTEGER NOT NULL,
    PRIMARY KEY (member_id, store_id)
) WITHOUT ROWID;
CREATE TABLE member_transitions (
    member_id TEXT    NOT NULL,
    day       INTEGER NOT NULL,
    field     TEXT    NOT NULL,
    from_value TEXT,
    to_value  TEXT    NOT NULL
);
CREATE INDEX member_transitions_by_day ON member_transitions(day, field);
CREATE TABLE channels (
    name  TEXT PRIMARY KEY,
    head  INTEGER NOT NULL DEFAULT 0,
    floor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE channel_changes (
    channel    TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    member_id  TEXT    NOT NULL,
    op         TEXT    NOT NULL,
    rev        INTEGER NOT NULL,
    reason     TEXT,
    at_ms      INTEGER NOT NULL,
    expires_ms INTEGER,
    PRIMARY KEY (channel, version)
) WITHOUT ROWID;
CREATE INDEX channel_changes_by_age ON channel_changes(at_ms);
CREATE TABLE member_channels (
    member_id TEXT NOT NULL,
    channel   TEXT NOT NULL,
    PRIMARY KEY (member_id, channel)
) WITHOUT ROWID;
CREATE INDEX member_channels_by_channel ON member_channels(channel, member_id);
",
    // 4: leases, so that work which must run once runs on one head-office instance.
    "
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL
);
",
    // 5: erased members, by the SHA-256 of their id only, so that events a gateway sends after
    // the erasure are stored without their content; what retention deleted, per gateway; which
    // gateways seal their messages.
    "
CREATE TABLE erased_members (
    member_hash  TEXT   PRIMARY KEY,
    erased_at_ms BIGINT NOT NULL
);
-- Events numbered up to this were deleted by retention: no gaps below it.
ALTER TABLE gateways ADD COLUMN retained_from INTEGER NOT NULL DEFAULT 0;
-- 1 once the gateway has sent a sealed message: from then on its plain ones are refused.
ALTER TABLE gateways ADD COLUMN signs INTEGER NOT NULL DEFAULT 0;
",
    // 6: the gateway registry (see `registry/`) and one-time enrolment codes, by hash.
    "
CREATE TABLE gateway_registry (
    gateway_id  TEXT PRIMARY KEY,
    store_id    TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE enrolment_codes (
    code_hash  TEXT PRIMARY KEY,
    gateway_id TEXT    NOT NULL,
    store_id   TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
);
",
    // 7: member devices' public keys for signed member codes (see `devices/`).
    "
CREATE TABLE member_devices (
    key_id        TEXT PRIMARY KEY,
    member_id     TEXT    NOT NULL,
    alg           TEXT    NOT NULL,
    public_key    TEXT    NOT NULL,
    registered_ms INTEGER NOT NULL,
    revoked_ms    INTEGER
);
CREATE INDEX member_devices_by_member ON member_devices(member_id);
",
    // 8: single-use "my card" links (see `devices/card.rs`), by hash.
    "
CREATE TABLE card_links (
    code_hash  TEXT PRIMARY KEY,
    member_id  TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
);
",
    // 9: member codes seen at two stores (see `devices/uses.rs`).
    "
CREATE TABLE member_code_uses (
    code     TEXT PRIMARY KEY,
    store_id TEXT    NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX member_code_uses_by_time ON member_code_uses(at_ms);
CREATE TABLE member_code_flags (
    code        TEXT    NOT NULL,
    first_store TEXT    NOT NULL,
    store_id    TEXT    NOT NULL,
    gateway_id  TEXT    NOT NULL,
    at_ms       INTEGER NOT NULL
);
CREATE INDEX member_code_flags_by_time ON member_code_flags(at_ms);
",
    // 10: campaigns (see `campaigns/`), and the outbox depth gateways report with their
    // batches; the same SQL on both backends.
    MIGRATION_10,
];

const POSTGRES: &[&str] = &[
    "
CREATE TABLE events (
    gateway_id     TEXT   NOT NULL,
    seq            BIGINT NOT NULL,
    store_id       TEXT   NOT NULL,
    at_ms          BIGINT NOT NULL,
    type           TEXT   NOT NULL,
    body_json      TEXT   NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
CREATE TABLE gateways (
    id                 TEXT PRIMARY KEY,
    store              TEXT   NOT NULL,
    online             BIGINT NOT NULL DEFAULT 0,
    last_seq           BIGINT NOT NULL DEFAULT 0,
    events_received    BIGINT NOT NULL DEFAULT 0,
    duplicates_dropped BIGINT NOT NULL DEFAULT 0,
    bad_payloads       BIGINT NOT NULL DEFAULT 0,
    last_seen_ms       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX gateways_by_store ON gateways(store);
CREATE TABLE members (
    member_id   TEXT PRIMARY KEY,
    record_json TEXT   NOT NULL,
    version     BIGINT NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
",
    "
CREATE TABLE gateway_boots (
    gateway_id    TEXT   NOT NULL,
    boot          BIGINT NOT NULL,
    floor         BIGINT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, boot)
);
CREATE TABLE shed_ranges (
    gateway_id  TEXT   NOT NULL,
    report_seq  BIGINT NOT NULL,
    first_seq   BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL,
    count       BIGINT NOT NULL,
    kinds_json  TEXT   NOT NULL,
    PRIMARY KEY (gateway_id, report_seq)
);
",
    "
ALTER TABLE members ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN presence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN has_keys BIGINT NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN level TEXT NOT NULL DEFAULT 'rest';
ALTER TABLE members ADD COLUMN tier TEXT NOT NULL DEFAULT '';
ALTER TABLE members ADD COLUMN stage TEXT;
ALTER TABLE members ADD COLUMN spend_12m BIGINT NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN computed_json TEXT;
ALTER TABLE members ADD COLUMN gateway_json TEXT;
ALTER TABLE members ADD COLUMN keys_hash TEXT;
ALTER TABLE members ADD COLUMN referred_by TEXT;
ALTER TABLE members ADD COLUMN home_store TEXT;
ALTER TABLE members ADD COLUMN has_purchases BIGINT NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN dirty BIGINT NOT NULL DEFAULT 1;
UPDATE members SET
    presence = CASE WHEN (record_json::jsonb -> 'consent' ->> 'presence') = 'true' THEN 1 ELSE 0 END,
    tier = record_json::jsonb ->> 'tier',
    referred_by = record_json::jsonb ->> 'referred_by',
    home_store = record_json::jsonb ->> 'home_store',
    stage = record_json::jsonb ->> 'stage',
    has_keys = CASE WHEN record_json LIKE '%\"kind\":\"rotating_secret\"%'
        OR record_json LIKE '%\"kind\":\"eddystone_eid_identity\"%' THEN 1 ELSE 0 END;
CREATE INDEX members_dirty ON members(dirty) WHERE dirty > 0;
CREATE INDEX members_referred_by ON members(referred_by) WHERE referred_by IS NOT NULL;
CREATE INDEX members_keys ON members(has_keys) WHERE has_keys = 1;
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE purchases (
    purchase_id    TEXT PRIMARY KEY,
    member_id      TEXT   NOT NULL,
    store_id       TEXT   NOT NULL,
    at_ms          BIGINT NOT NULL,
    day            BIGINT NOT NULL,
    amount_minor   BIGINT NOT NULL,
    currency       TEXT   NOT NULL,
    items_json     TEXT   NOT NULL,
    imported_at_ms BIGINT NOT NULL
);
CREATE INDEX purchases_by_member ON purchases(member_id, at_ms);
CREATE TABLE member_days (
    member_id TEXT   NOT NULL,
    day       BIGINT NOT NULL,
    spend     BIGINT NOT NULL DEFAULT 0,
    purchases BIGINT NOT NULL DEFAULT 0,
    visits    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (member_id, day)
);
CREATE TABLE member_categories (
    member_id TEXT   NOT NULL,
    month     BIGINT NOT NULL,
    category  TEXT   NOT NULL,
    amount    BIGINT NOT NULL,
    PRIMARY KEY (member_id, month, category)
);
CREATE TABLE visits (
    store_id    TEXT   NOT NULL,
    visit_id    TEXT   NOT NULL,
    gateway_id  TEXT   NOT NULL,
    member_id   TEXT   NOT NULL,
    arrived_ms  BIGINT NOT NULL,
    departed_ms BIGINT,
    dwell_s     BIGINT,
    zones_json  TEXT   NOT NULL DEFAULT '[]',
    alerts      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, visit_id)
);
CREATE INDEX visits_by_member ON visits(member_id, arrived_ms);
CREATE INDEX visits_by_store ON visits(store_id, arrived_ms);
CREATE TABLE member_stores (
    member_id TEXT   NOT NULL,
    store_id  TEXT   NOT NULL,
    last_day  BIGINT NOT NULL,
    PRIMARY KEY (member_id, store_id)
);
CREATE TABLE member_transitions (
    member_id  TEXT   NOT NULL,
    day        BIGINT NOT NULL,
    field      TEXT   NOT NULL,
    from_value TEXT,
    to_value   TEXT   NOT NULL
);
CREATE INDEX member_transitions_by_day ON member_transitions(day, field);
CREATE TABLE channels (
    name  TEXT PRIMARY KEY,
    head  BIGINT NOT NULL DEFAULT 0,
    floor BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE channel_changes (
    channel    TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    member_id  TEXT   NOT NULL,
    op         TEXT   NOT NULL,
    rev        BIGINT NOT NULL,
    reason     TEXT,
    at_ms      BIGINT NOT NULL,
    expires_ms BIGINT,
    PRIMARY KEY (channel, version)
);
CREATE INDEX channel_changes_by_age ON channel_changes(at_ms);
CREATE TABLE member_channels (
    member_id TEXT NOT NULL,
    channel   TEXT NOT NULL,
    PRIMARY KEY (member_id, channel)
);
CREATE INDEX member_channels_by_channel ON member_channels(channel, member_id);
",
    // 4: leases, so that work which must run once runs on one head-office instance.
    "
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL
);
",
    // 5: erased members, by the SHA-256 of their id only, so that events a gateway sends after
    // the erasure are stored without their content; what retention deleted, per gateway; which
    // gateways seal their messages.
    "
CREATE TABLE erased_members (
    member_hash  TEXT   PRIMARY KEY,
    erased_at_ms BIGINT NOT NULL
);
ALTER TABLE gateways ADD COLUMN retained_from BIGINT NOT NULL DEFAULT 0;
ALTER TABLE gateways ADD COLUMN signs BIGINT NOT NULL DEFAULT 0;
",
    // 6: the gateway registry (see `registry/`) and one-time enrolment codes, by hash.
    "
CREATE TABLE gateway_registry (
    gateway_id  TEXT PRIMARY KEY,
    store_id    TEXT    NOT NULL,
    generation  BIGINT NOT NULL,
    enrolled_ms BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE TABLE enrolment_codes (
    code_hash  TEXT PRIMARY KEY,
    gateway_id TEXT    NOT NULL,
    store_id   TEXT    NOT NULL,
    expires_ms BIGINT NOT NULL
);
",
    // 7: member devices' public keys for signed member codes (see `devices/`).
    "
CREATE TABLE member_devices (
    key_id        TEXT PRIMARY KEY,
    member_id     TEXT   NOT NULL,
    alg           TEXT   NOT NULL,
    public_key    TEXT   NOT NULL,
    registered_ms BIGINT NOT NULL,
    revoked_ms    BIGINT
);
CREATE INDEX member_devices_by_member ON member_devices(member_id);
",
    // 8: single-use "my card" links (see `devices/card.rs`), by hash.
    "
CREATE TABLE card_links (
    code_hash  TEXT PRIMARY KEY,
    member_id  TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL
);
",
    // 9: member codes seen at two stores (see `devices/uses.rs`).
    "
CREATE TABLE member_code_uses (
    code     TEXT PRIMARY KEY,
    store_id TEXT   NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX member_code_uses_by_time ON member_code_uses(at_ms);
CREATE TABLE member_code_flags (
    code        TEXT   NOT NULL,
    first_store TEXT   NOT NULL,
    store_id    TEXT   NOT NULL,
    gateway_id  TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL
);
CREATE INDEX member_code_flags_by_time ON member_code_flags(at_ms);
",
    // 10: campaigns (see `campaigns/`), and the outbox depth gateways report with their
    // batches; the same SQL on both backends.
    MIGRATION_10,
];

const _: () = assert!(SQLITE.len() == POSTGRES.len());

/// Brings the database to [`SCHEMA_VERSION`]; refuses one that is newer than this build.
pub fn migrate(db: &mut Db) -> Result<(), StoreError> {
    match db.backend() {
        Backend::Sqlite => {
            db.batch(SQLITE_PRAGMAS)?;
            let found = db
                .query_opt(&super::db::Sql::same("PRAGMA user_version"), &[])?
                .map(|r| r.i64(0))
                .transpose()?
                .unwrap_or(0);
            check_not_newer(found)?;
            for (i, step) in SQLITE.iter().enumerate().skip(found.max(0) as usize) {
                // One transaction per step: a failed step leaves the previous version intact.
                let mut tx = db.transaction()?;
                tx.batch(step)?;
                tx.batch(&format!("PRAGMA user_version = {}", i + 1))?;
                tx.commit()?;
            }
            Ok(())
        }
        Backend::Postgres => {
            let mut tx = db.transaction()?;
            // The lock first: two `CREATE TABLE IF NOT EXISTS` at once can both try to create
            // the table and one fails (a unique violation in pg_type), so instances starting
            // together must not race even on that.
            tx.execute(
                &super::db::Sql::same("SELECT pg_advisory_xact_lock(?1)"),
                crate::params![PG_MIGRATION_LOCK],
            )?;
            tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
            let found = tx
                .query_opt(
                    &super::db::Sql::same("SELECT COALESCE(MAX(version), 0) FROM schema_version"),
                    &[],
                )?
                .map(|r| r.i64(0))
                .transpose()?
                .unwrap_or(0);
            check_not_newer(found)?;
            for step in POSTGRES.iter().skip(found.max(0) as usize) {
                tx.batch(step)?;
            }
            tx.execute(&super::db::Sql::same("DELETE FROM schema_version"), &[])?;
            tx.execute(
                &super::db::Sql::same("INSERT INTO schema_version (version) VALUES (?1)"),
                crate::params![SCHEMA_VERSION],
            )?;
            tx.commit()
        }
    }
}

fn check_not_newer(found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several head-office instances starting together on an empty database.
    #[test]
    fn instances_migrating_an_empty_postgres_at_once_all_succeed() {
        let schema = crate::store::testing::PgSchema::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let loc = schema.location();
                std::thread::spawn(move || loc.connect().map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let mut db = schema.location().connect().unwrap();
        let v = db
            .query_opt(
                &super::super::db::Sql::same("SELECT version FROM schema_version"),
                &[],
            )
            .unwrap()
            .unwrap()
            .i64(0)
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }
}
