//! The whole-set snapshot of `GET /api/stores/{store}/members/snapshot`, for gateways that
//! predate channels: the union of the store's channels, short-lived keys folded into each
//! member's identifiers, at a version equal to the sum of the channels' heads (what their
//! notices carry). Buffered whole, as those gateways read it; new gateways use the change
//! streams and channel snapshots instead. Deprecated: to be removed once the fleet has moved.

use std::collections::BTreeMap;

use instore_protocol::{MemberRecord, MemberSnapshot, SCHEMA_VERSION};

use super::gateway_form;
use crate::{
    params,
    store::{Db, StoreError, channels, db::Sql},
};

const SELECT_STORE_MEMBERS: Sql = Sql::same(
    "SELECT m.member_id, m.gateway_json, m.record_json, m.has_keys
    FROM member_channels mc JOIN members m ON m.member_id = mc.member_id
    WHERE mc.channel = ?1 AND m.gateway_json IS NOT NULL",
);

/// The store's whole member set now.
pub fn snapshot(
    db: &mut Db,
    store_id: &str,
    subscriptions: &[String],
    now_ms: i64,
) -> Result<MemberSnapshot, StoreError> {
    let mut tx = db.read_transaction()?;
    let mut version = 0u64;
    let mut members: BTreeMap<String, MemberRecord> = BTreeMap::new();
    for channel in subscriptions {
        version += channels::head_and_floor(&mut tx, channel)?.0;
        for r in tx.query(&SELECT_STORE_MEMBERS, params![channel])? {
            let id = r.string(0)?;
            if members.contains_key(&id) {
                continue;
            }
            let mut m: MemberRecord = serde_json::from_str(r.str(1)?)
                .map_err(|e| StoreError::Corrupt(format!("member {id}: {e}")))?;
            if r.bool(3)? {
                let record: MemberRecord = serde_json::from_str(r.str(2)?)
                    .map_err(|e| StoreError::Corrupt(format!("member {id}: {e}")))?;
                m.identifiers
                    .extend(gateway_form::short_lived_keys(&record, now_ms).0);
            }
            members.insert(id, m);
        }
    }
    tx.commit()?;
    Ok(MemberSnapshot {
        v: SCHEMA_VERSION,
        store_id: store_id.to_string(),
        version,
        members: members.into_values().collect(),
    })
}
