//! The registry's tables: `gateway_registry` (one row per registered gateway) and
//! `enrolment_codes` (one-time codes, by their SHA-256 only).

use sha2::{Digest, Sha256};

use super::Entry;
use crate::{
    params,
    store::{
        StoreError,
        db::{Db, Row, Sql},
    },
};

const SELECT_ALL: Sql = Sql::same(
    "SELECT gateway_id, store_id, generation, enrolled_ms, revoked_ms FROM gateway_registry
    ORDER BY gateway_id",
);
const SELECT_ONE: Sql = Sql::same(
    "SELECT gateway_id, store_id, generation, enrolled_ms, revoked_ms FROM gateway_registry
    WHERE gateway_id = ?1",
);
const INSERT_CODE: Sql = Sql::same(
    "INSERT INTO enrolment_codes (code_hash, gateway_id, store_id, expires_ms)
    VALUES (?1, ?2, ?3, ?4)",
);
const PRUNE_CODES: Sql = Sql::same("DELETE FROM enrolment_codes WHERE expires_ms <= ?1");
const TAKE_CODE: Sql = Sql::same(
    "DELETE FROM enrolment_codes WHERE code_hash = ?1 AND expires_ms > ?2
    RETURNING gateway_id, store_id",
);
/// Enrols, or enrols again: the next generation, the code's store, not revoked.
const UPSERT_ENROLLED: Sql = Sql::same(
    "INSERT INTO gateway_registry (gateway_id, store_id, generation, enrolled_ms, revoked_ms)
    VALUES (?1, ?2, 1, ?3, NULL)
    ON CONFLICT (gateway_id) DO UPDATE SET store_id = excluded.store_id,
        generation = gateway_registry.generation + 1, enrolled_ms = excluded.enrolled_ms,
        revoked_ms = NULL",
);
const REVOKE: Sql = Sql::same(
    "UPDATE gateway_registry SET revoked_ms = ?2 WHERE gateway_id = ?1 AND revoked_ms IS NULL",
);
/// A legacy gateway (no row) revoked: its row, at generation 0, in the store it was seen in.
const INSERT_REVOKED_LEGACY: Sql = Sql::same(
    "INSERT INTO gateway_registry (gateway_id, store_id, generation, enrolled_ms, revoked_ms)
    SELECT id, store, 0, 0, ?2 FROM gateways WHERE id = ?1
    ON CONFLICT (gateway_id) DO NOTHING",
);
const ROTATE: Sql = Sql::same(
    "UPDATE gateway_registry SET generation = generation + 1
    WHERE gateway_id = ?1 AND revoked_ms IS NULL",
);

fn entry(r: &Row) -> Result<Entry, StoreError> {
    Ok(Entry {
        gateway_id: r.string(0)?,
        store_id: r.string(1)?,
        generation: u32::try_from(r.i64(2)?)
            .map_err(|_| StoreError::Corrupt("registry generation out of range".into()))?,
        enrolled_ms: r.i64(3)?,
        revoked_ms: r.opt_i64(4)?,
    })
}

/// The key a code is kept under: a code is shown once and never stored.
pub fn code_hash(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

pub fn load_all(db: &mut Db) -> Result<Vec<Entry>, StoreError> {
    let mut tx = db.read_transaction()?;
    let rows = tx.query(&SELECT_ALL, params![])?;
    tx.commit()?;
    rows.iter().map(entry).collect()
}

const SELECT_SEEN: Sql = Sql::same("SELECT id, store FROM gateways");

/// Every gateway head office has heard from, with its store: how the embedded broker knows
/// which store a gateway enrolled before the registry belongs to.
pub fn seen_gateways(db: &mut Db) -> Result<Vec<(String, String)>, StoreError> {
    let mut tx = db.read_transaction()?;
    let rows = tx.query(&SELECT_SEEN, params![])?;
    tx.commit()?;
    rows.iter()
        .map(|r| Ok((r.string(0)?, r.string(1)?)))
        .collect()
}

pub fn one(db: &mut Db, gateway_id: &str) -> Result<Option<Entry>, StoreError> {
    let mut tx = db.read_transaction()?;
    let row = tx.query_opt(&SELECT_ONE, params![gateway_id])?;
    tx.commit()?;
    row.as_ref().map(entry).transpose()
}

/// Stores a one-time code for `gateway_id` of `store_id`, valid until `expires_ms`.
pub fn create_code(
    db: &mut Db,
    code: &str,
    store_id: &str,
    gateway_id: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<(), StoreError> {
    let mut tx = db.transaction()?;
    tx.execute(&PRUNE_CODES, params![now_ms])?;
    tx.execute(
        &INSERT_CODE,
        params![code_hash(code), gateway_id, store_id, expires_ms],
    )?;
    tx.commit()
}

/// Spends `code`: enrols its gateway (again) and returns the row, or `None` for a code that is
/// unknown, used or expired.
pub fn redeem(db: &mut Db, code: &str, now_ms: i64) -> Result<Option<Entry>, StoreError> {
    let mut tx = db.transaction()?;
    let Some(r) = tx.query_opt(&TAKE_CODE, params![code_hash(code), now_ms])? else {
        tx.commit()?;
        return Ok(None);
    };
    let (gateway_id, store_id) = (r.string(0)?, r.string(1)?);
    tx.execute(&UPSERT_ENROLLED, params![&gateway_id, &store_id, now_ms])?;
    let row = tx.query_opt(&SELECT_ONE, params![&gateway_id])?;
    tx.commit()?;
    row.as_ref().map(entry).transpose()
}

/// Revokes a gateway, registered or seen before the registry. `None` if head office never
/// heard of it.
pub fn revoke(db: &mut Db, gateway_id: &str, now_ms: i64) -> Result<Option<Entry>, StoreError> {
    let mut tx = db.transaction()?;
    if tx.execute(&REVOKE, params![gateway_id, now_ms])? == 0 {
        tx.execute(&INSERT_REVOKED_LEGACY, params![gateway_id, now_ms])?;
    }
    let row = tx.query_opt(&SELECT_ONE, params![gateway_id])?;
    tx.commit()?;
    row.as_ref().map(entry).transpose()
}

/// Moves a registered, unrevoked gateway to its next generation. `None` if there is none such.
pub fn rotate(db: &mut Db, gateway_id: &str) -> Result<Option<Entry>, StoreError> {
    let mut tx = db.transaction()?;
    let n = tx.execute(&ROTATE, params![gateway_id])?;
    let row = if n == 1 {
        tx.query_opt(&SELECT_ONE, params![gateway_id])?
    } else {
        None
    };
    tx.commit()?;
    row.as_ref().map(entry).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    #[test]
    fn a_code_enrols_once_then_again_at_the_next_generation_and_revocation_sticks() {
        each_backend(|db| {
            create_code(db, "ABCD-EFGH-JKLM", "s1", "g1", 0, 1_000).unwrap();
            assert_eq!(redeem(db, "abcdefghjklm", 2_000).unwrap(), None, "expired");
            create_code(db, "ABCD-EFGH-JKLN", "s1", "g1", 0, 10_000).unwrap();
            let e = redeem(db, "abcd efgh jkln", 2_000).unwrap().unwrap();
            assert_eq!((e.store_id.as_str(), e.generation), ("s1", 1));
            assert_eq!(
                redeem(db, "ABCD-EFGH-JKLN", 2_000).unwrap(),
                None,
                "single-use"
            );
            // Enrolled again (a replaced gateway), for another store: the next generation.
            create_code(db, "NEXT-CODE-0001", "s2", "g1", 0, 10_000).unwrap();
            let e = redeem(db, "NEXT-CODE-0001", 3_000).unwrap().unwrap();
            assert_eq!((e.store_id.as_str(), e.generation), ("s2", 2));
            assert_eq!(rotate(db, "g1").unwrap().unwrap().generation, 3);
            let r = revoke(db, "g1", 4_000).unwrap().unwrap();
            assert_eq!(r.revoked_ms, Some(4_000));
            assert_eq!(
                rotate(db, "g1").unwrap(),
                None,
                "a revoked gateway does not rotate"
            );
            assert_eq!(revoke(db, "nobody", 4_000).unwrap(), None);
            assert_eq!(load_all(db).unwrap().len(), 1);
        });
    }

    #[test]
    fn a_gateway_from_before_the_registry_can_be_revoked() {
        each_backend(|db| {
            db.execute(
                &Sql::same("INSERT INTO gateways (id, store) VALUES ('old', 's7')"),
                params![],
            )
            .unwrap();
            let e = revoke(db, "old", 5).unwrap().unwrap();
            assert_eq!(
                (e.store_id.as_str(), e.generation, e.revoked_ms),
                ("s7", 0, Some(5))
            );
        });
    }
}
