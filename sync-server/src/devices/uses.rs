//! Member codes used at more than one store: a gateway accepts a code once per store, so only
//! head office can see the same code taken at two (a screenshot sent to a friend, a relay).
//!
//! In: the `code` (`key_id:step`) of each `qr_scanned` event ingest stores. Out:
//! `member_code_uses` (the first store to use each code, kept [`KEEP_MS`], past any code's
//! life) and `member_code_flags` (every later use at another store), listed at
//! `GET /api/member-codes/flags`. The code itself, a credential while it lives, never reaches
//! head office: only its key id and step.

use serde::Serialize;

use crate::{
    params,
    store::{
        StoreError,
        db::{Db, Sql, Tx},
    },
};

/// A code's first use is remembered this long (a code lives about 90 s).
pub const KEEP_MS: i64 = 15 * 60 * 1000;
/// Flags listed at most.
pub const MAX_LISTED: i64 = 500;

const INSERT_USE: Sql = Sql::same(
    "INSERT INTO member_code_uses (code, store_id, at_ms) VALUES (?1, ?2, ?3)
    ON CONFLICT (code) DO NOTHING",
);
const FIRST_STORE: Sql = Sql::same("SELECT store_id FROM member_code_uses WHERE code = ?1");
const PRUNE: Sql = Sql::same("DELETE FROM member_code_uses WHERE at_ms < ?1");
const INSERT_FLAG: Sql = Sql::same(
    "INSERT INTO member_code_flags (code, first_store, store_id, gateway_id, at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5)",
);
const LIST: Sql = Sql::same(
    "SELECT code, first_store, store_id, gateway_id, at_ms FROM member_code_flags
    ORDER BY at_ms DESC LIMIT ?1",
);

/// Records a use of `code` at `store_id`; true when another store used it first (flagged).
pub fn record(
    tx: &mut Tx<'_>,
    code: &str,
    store_id: &str,
    gateway_id: &str,
    at_ms: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    tx.execute(&PRUNE, params![now_ms - KEEP_MS])?;
    if tx.execute(&INSERT_USE, params![code, store_id, at_ms])? > 0 {
        return Ok(false);
    }
    let first = tx
        .query_opt(&FIRST_STORE, params![code])?
        .map(|r| r.string(0))
        .transpose()?
        .unwrap_or_default();
    if first == store_id {
        return Ok(false);
    }
    tx.execute(
        &INSERT_FLAG,
        params![code, &first, store_id, gateway_id, at_ms],
    )?;
    Ok(true)
}

/// One code seen at a second store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    /// The device's key id (`GET /api/members/{id}/devices` names its member).
    pub key_id: String,
    pub step: u64,
    pub first_store: String,
    pub store_id: String,
    pub gateway_id: String,
    pub at_ms: i64,
}

/// The latest flags, newest first.
pub fn list(db: &mut Db) -> Result<Vec<Flag>, StoreError> {
    let mut tx = db.read_transaction()?;
    let rows = tx.query(&LIST, params![MAX_LISTED])?;
    tx.commit()?;
    rows.into_iter()
        .map(|r| {
            let code = r.string(0)?;
            let (key_id, step) = code.split_once(':').unwrap_or((code.as_str(), "0"));
            Ok(Flag {
                key_id: key_id.to_string(),
                step: step.parse().unwrap_or(0),
                first_store: r.string(1)?,
                store_id: r.string(2)?,
                gateway_id: r.string(3)?,
                at_ms: r.i64(4)?,
            })
        })
        .collect()
}
