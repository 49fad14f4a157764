//! "My card" links: how a member's phone becomes one of their devices.
//!
//! In: `POST /api/members/{id}/card-links` (admin; a till or an email hands the link to the
//! member), then the phone's `POST /api/card/enrol` with the link's code and the public key its
//! browser made. Out: the device registered ([`super::register_in`]) and the code spent, in one
//! transaction: a link works once, and only until it expires. Codes are kept as SHA-256 only.

use sha2::{Digest, Sha256};

use super::{Device, DeviceError, register_in};
use crate::{
    fanout::FanoutSettings,
    params,
    store::{
        StoreError,
        channels::Touched,
        db::{Db, Sql},
    },
};

/// A link lives this long unless asked otherwise, and a month at most.
pub const DEFAULT_TTL_S: u64 = 7 * 86_400;
pub const MAX_TTL_S: u64 = 31 * 86_400;
/// Characters of a link code: 24 of 32 symbols, 120 bits.
const CODE_LEN: usize = 24;
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789a";

const INSERT: Sql =
    Sql::same("INSERT INTO card_links (code_hash, member_id, expires_ms) VALUES (?1, ?2, ?3)");
const PRUNE: Sql = Sql::same("DELETE FROM card_links WHERE expires_ms <= ?1");
const TAKE: Sql = Sql::same(
    "DELETE FROM card_links WHERE code_hash = ?1 AND expires_ms > ?2 RETURNING member_id",
);
const MEMBER: Sql =
    Sql::same("SELECT record_json, computed_json FROM members WHERE member_id = ?1");

/// What the card shows: nothing a passer-by should not see.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CardFace {
    pub display_name: String,
    /// Pyramid level (`top2` … `rest`), once head office has computed one.
    pub level: Option<String>,
}

fn hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.trim().as_bytes()))
}

/// A new single-use code for `member_id`, valid until `expires_ms`.
pub fn create_link(
    db: &mut Db,
    member_id: &str,
    expires_ms: i64,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    let code: String = (0..CODE_LEN)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    let mut tx = db.transaction()?;
    if tx.query_opt(&MEMBER, params![member_id])?.is_none() {
        return Ok(None);
    }
    tx.execute(&PRUNE, params![now_ms])?;
    tx.execute(&INSERT, params![hash(&code), member_id, expires_ms])?;
    tx.commit()?;
    Ok(Some(code))
}

/// The face of `member_id`'s card.
pub fn face(db: &mut Db, member_id: &str) -> Result<Option<CardFace>, StoreError> {
    let mut tx = db.read_transaction()?;
    let row = tx.query_opt(&MEMBER, params![member_id])?;
    tx.commit()?;
    let Some(r) = row else { return Ok(None) };
    face_of(r.str(0)?, r.opt_string(1)?.as_deref(), member_id).map(Some)
}

fn face_of(record: &str, computed: Option<&str>, member_id: &str) -> Result<CardFace, StoreError> {
    let record: instore_protocol::MemberRecord = serde_json::from_str(record)
        .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
    let level = computed
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|v| v["level"].as_str().map(str::to_owned));
    Ok(CardFace {
        display_name: record.display_name,
        level,
    })
}

/// Spends `code` and registers the phone's key for its member; `None` when the code is
/// unknown, spent or expired (nothing changes then).
pub fn redeem(
    db: &mut Db,
    code: &str,
    alg: &str,
    public_key: &str,
    settings: &FanoutSettings,
    now_ms: i64,
) -> Result<Option<(Device, CardFace, Touched)>, DeviceError> {
    let mut tx = db.transaction()?;
    let Some(row) = tx.query_opt(&TAKE, params![hash(code), now_ms])? else {
        return Ok(None);
    };
    let member_id = row.string(0)?;
    let mut touched = Touched::default();
    let (device, _) = register_in(
        &mut tx,
        &member_id,
        alg,
        public_key,
        settings,
        now_ms,
        &mut touched,
    )?;
    let m = tx
        .query_opt(&MEMBER, params![&member_id])?
        .ok_or_else(|| DeviceError::NoMember(member_id.clone()))?;
    let face = face_of(m.str(0)?, m.opt_string(1)?.as_deref(), &member_id)?;
    tx.commit()?;
    Ok(Some((device, face, touched)))
}
