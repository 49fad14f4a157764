//! Member devices: the public keys that sign a member's codes ([`instore_protocol::member_code`]).
//!
//! In: registrations and revocations (`POST /api/members/{id}/devices`,
//! `DELETE /api/members/{id}/devices/{key_id}`, admin), the `member_devices` table. Out: each
//! member's unrevoked keys, which [`crate::fanout::place`] adds to the record the stores hold as
//! `device_key` identifiers, so a gateway verifies codes offline. Only public keys are stored:
//! nothing here, or at a gateway, can make a code. A key id belongs to one member for good; a
//! revoked key stays on file (so it cannot be registered again) and goes to the stores marked
//! `revoked` with the next placement, so its codes are refused for that reason. Keys an import
//! carries are ignored ([`crate::fanout::gateway_form`]).

use instore_protocol::{Identifier, member::device_key, member_code};
use serde::Serialize;

pub mod card;
pub mod uses;

use crate::{
    fanout::{self, FanoutSettings},
    params,
    store::{
        StoreError,
        channels::Touched,
        db::{Db, Sql, Tx},
    },
};

/// Keys one member may have registered (phones replaced, several devices), revoked ones included.
pub const MAX_KEYS_PER_MEMBER: usize = 20;

const SELECT_FOR_STORES: Sql = Sql::same(
    "SELECT alg, public_key, revoked_ms FROM member_devices WHERE member_id = ?1
    ORDER BY key_id",
);
const SELECT_ALL: Sql = Sql::same(
    "SELECT key_id, alg, registered_ms, revoked_ms FROM member_devices WHERE member_id = ?1
    ORDER BY registered_ms, key_id",
);
const SELECT_KEY: Sql = Sql::same(
    "SELECT member_id, alg, registered_ms, revoked_ms FROM member_devices WHERE key_id = ?1",
);
const SELECT_ACTIVE_KEY: Sql = Sql::same(
    "SELECT member_id, alg, public_key FROM member_devices WHERE key_id = ?1
    AND revoked_ms IS NULL",
);
const MEMBER_EXISTS: Sql = Sql::same("SELECT 1 FROM members WHERE member_id = ?1");
const INSERT: Sql = Sql::same(
    "INSERT INTO member_devices (key_id, member_id, alg, public_key, registered_ms)
    VALUES (?1, ?2, ?3, ?4, ?5)",
);
const REVOKE: Sql = Sql::same(
    "UPDATE member_devices SET revoked_ms = ?3 WHERE key_id = ?1 AND member_id = ?2
    AND revoked_ms IS NULL",
);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no member {0:?} at head office")]
    NoMember(String),
    #[error("{0}")]
    BadKey(String),
    #[error("this key is registered to another member")]
    TakenKey,
    #[error("this key was revoked; a revoked key cannot be registered again")]
    RevokedKey,
    #[error("member already has {MAX_KEYS_PER_MEMBER} device keys; revoke one first")]
    TooMany,
    #[error("no such device key for this member")]
    NoKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One registered key, as the API shows it (never the key itself: it is public, but a list of
/// keys is nobody's business but head office's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub key_id: String,
    pub alg: String,
    pub registered_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// The member's keys as the identifiers stores get, revoked ones marked.
pub fn store_keys(tx: &mut Tx<'_>, member_id: &str) -> Result<Vec<Identifier>, StoreError> {
    tx.query(&SELECT_FOR_STORES, params![member_id])?
        .into_iter()
        .map(|r| {
            Ok(Identifier::DeviceKey {
                alg: r.string(0)?,
                public_key: r.string(1)?,
                revoked: r.opt_i64(2)?.is_some(),
            })
        })
        .collect()
}

pub fn list(db: &mut Db, member_id: &str) -> Result<Vec<Device>, StoreError> {
    let mut tx = db.read_transaction()?;
    let rows = tx.query(&SELECT_ALL, params![member_id])?;
    tx.commit()?;
    rows.into_iter()
        .map(|r| {
            Ok(Device {
                key_id: r.string(0)?,
                alg: r.string(1)?,
                registered_ms: r.i64(2)?,
                revoked_ms: r.opt_i64(3)?,
            })
        })
        .collect()
}

/// Registers `public_key` (raw, hex) for `member_id` and places the member, so the stores
/// get the key; registering the same key again for the same member is a no-op that answers
/// the same. Returns the device, whether it is new, and the heads touched.
pub fn register(
    db: &mut Db,
    member_id: &str,
    alg: &str,
    public_key: &str,
    settings: &FanoutSettings,
    now_ms: i64,
) -> Result<(Device, bool, Touched), DeviceError> {
    let mut tx = db.transaction()?;
    let mut touched = Touched::default();
    let (device, created) = register_in(
        &mut tx,
        member_id,
        alg,
        public_key,
        settings,
        now_ms,
        &mut touched,
    )?;
    tx.commit()?;
    Ok((device, created, touched))
}

/// [`register`] in the caller's transaction.
pub fn register_in(
    tx: &mut Tx<'_>,
    member_id: &str,
    alg: &str,
    public_key: &str,
    settings: &FanoutSettings,
    now_ms: i64,
    touched: &mut Touched,
) -> Result<(Device, bool), DeviceError> {
    let public_key = public_key.trim().to_ascii_lowercase();
    let (alg, raw) = device_key(alg, &public_key).map_err(DeviceError::BadKey)?;
    let key_id = hex::encode(member_code::key_id(&raw));
    if tx.query_opt(&MEMBER_EXISTS, params![member_id])?.is_none() {
        return Err(DeviceError::NoMember(member_id.to_string()));
    }
    if let Some(r) = tx.query_opt(&SELECT_KEY, params![&key_id])? {
        if r.str(0)? != member_id {
            return Err(DeviceError::TakenKey);
        }
        if r.opt_i64(3)?.is_some() {
            return Err(DeviceError::RevokedKey);
        }
        let device = Device {
            key_id,
            alg: r.string(1)?,
            registered_ms: r.i64(2)?,
            revoked_ms: None,
        };
        return Ok((device, false));
    }
    if tx.query(&SELECT_ALL, params![member_id])?.len() >= MAX_KEYS_PER_MEMBER {
        return Err(DeviceError::TooMany);
    }
    tx.execute(
        &INSERT,
        params![&key_id, member_id, alg.as_str(), &public_key, now_ms],
    )?;
    fanout::place(tx, member_id, settings, false, now_ms, touched)?;
    Ok((
        Device {
            key_id,
            alg: alg.as_str().to_string(),
            registered_ms: now_ms,
            revoked_ms: None,
        },
        true,
    ))
}

/// The registered, unrevoked key with id `key_id` (hex): its member, algorithm and raw key.
pub fn active_key(
    db: &mut Db,
    key_id: &str,
) -> Result<Option<(String, member_code::Algorithm, Vec<u8>)>, StoreError> {
    let mut tx = db.read_transaction()?;
    let row = tx.query_opt(&SELECT_ACTIVE_KEY, params![key_id])?;
    tx.commit()?;
    let Some(r) = row else { return Ok(None) };
    let member_id = r.string(0)?;
    Ok(device_key(r.str(1)?, r.str(2)?)
        .ok()
        .map(|(alg, raw)| (member_id, alg, raw)))
}

/// Revokes a key of `member_id` and places the member, so the stores drop it.
pub fn revoke(
    db: &mut Db,
    member_id: &str,
    key_id: &str,
    settings: &FanoutSettings,
    now_ms: i64,
) -> Result<Touched, DeviceError> {
    let key_id = key_id.to_ascii_lowercase();
    let mut tx = db.transaction()?;
    let mut touched = Touched::default();
    match tx.query_opt(&SELECT_KEY, params![&key_id])? {
        Some(r) if r.str(0)? == member_id => {
            if tx.execute(&REVOKE, params![&key_id, member_id, now_ms])? > 0 {
                fanout::place(&mut tx, member_id, settings, false, now_ms, &mut touched)?;
            }
        }
        _ => return Err(DeviceError::NoKey),
    }
    tx.commit()?;
    Ok(touched)
}
