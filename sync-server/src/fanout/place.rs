//! Placing a member after anything about them changed: the record stores hold, the channels the
//! policy gives, and the changes that bring the stores in line — in the caller's transaction,
//! so the change and its cause commit together.
//!
//! In: a member id, the fan-out settings, the time. Out: `members` columns (the tier and stage
//! stores see, the gateway record and its revision), channel changes, the heads touched. Every
//! path that changes a member (import, purchases and visits through the compute stage, consent)
//! ends here, so the stores' view cannot drift from head office's.

use instore_protocol::{
    MemberRecord, changes::RemoveReason, member::LastPurchase, rotating::day_of_ms,
};

use super::{
    gateway_form::{self, Derived},
    policy::{self, MembershipConfig, Placement},
};
use crate::{
    compute::{Computed, config::TierSource},
    params,
    store::{
        StoreError,
        channels::{self, MemberChange, Touched},
        db::{Sql, Tx},
    },
};

/// What placing needs from the config.
#[derive(Debug, Clone, Default)]
pub struct FanoutSettings {
    pub membership: MembershipConfig,
    pub tier_source: TierSource,
}

const SELECT_MEMBER: Sql = Sql::same(
    "SELECT record_json, computed_json, has_purchases, presence, keys_hash FROM members
    WHERE member_id = ?1",
);
const SET_KEYS_HASH: Sql = Sql::same("UPDATE members SET keys_hash = ?2 WHERE member_id = ?1");
const SELECT_VISITED: Sql =
    Sql::same("SELECT store_id, last_day FROM member_stores WHERE member_id = ?1");
const SELECT_LAST_PURCHASE: Sql = Sql::same(
    "SELECT at_ms, items_json FROM purchases WHERE member_id = ?1 AND amount_minor > 0
    ORDER BY at_ms DESC LIMIT 1",
);
const SET_SEEN_TIER: Sql =
    Sql::same("UPDATE members SET tier = ?2, stage = ?3 WHERE member_id = ?1");

/// Places `member_id` (see the module docs). A member head office does not hold is a no-op.
/// When the record's long-term keys differ from those last placed (a new or changed rotating
/// secret or EID identity key), every channel gets a fresh `keys` change; `keys_changed` forces
/// one.
pub fn place(
    tx: &mut Tx<'_>,
    member_id: &str,
    settings: &FanoutSettings,
    keys_changed: bool,
    now_ms: i64,
    touched: &mut Touched,
) -> Result<(), StoreError> {
    let Some(row) = tx.query_opt(&SELECT_MEMBER, params![member_id])? else {
        return Ok(());
    };
    let record: MemberRecord = serde_json::from_str(row.str(0)?)
        .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
    let computed: Option<Computed> = match row.opt_string(1)? {
        Some(json) => Some(
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("member {member_id} computed: {e}")))?,
        ),
        None => None,
    };
    let has_purchases = row.bool(2)?;
    let presence = row.bool(3)? && record.consent.presence;
    let keys_hash = long_term_keys_hash(&record);
    let keys_changed = keys_changed || row.opt_string(4)? != keys_hash;
    if keys_changed {
        tx.execute(&SET_KEYS_HASH, params![member_id, keys_hash])?;
    }
    let visits: Vec<(String, i64)> = tx
        .query(&SELECT_VISITED, params![member_id])?
        .into_iter()
        .map(|r| Ok((r.string(0)?, r.i64(1)?)))
        .collect::<Result<_, StoreError>>()?;
    let last_purchase = match tx.query_opt(&SELECT_LAST_PURCHASE, params![member_id])? {
        Some(r) => last_purchase(r.i64(0)?, r.str(1)?),
        None => None,
    };
    let devices = crate::devices::store_keys(tx, member_id)?;
    let derived = Derived {
        computed: computed.as_ref(),
        has_purchases,
        last_purchase: last_purchase.as_ref(),
        devices: &devices,
    };
    let gateway = gateway_form::gateway_record(&record, &derived, settings.tier_source);
    tx.execute(
        &SET_SEEN_TIER,
        params![member_id, &gateway.tier, gateway.stage.clone()],
    )?;
    let today = i64::from(day_of_ms(now_ms));
    let channels = policy::channels_for(
        &Placement {
            presence,
            tier: &gateway.tier,
            home_store: record.home_store.as_deref(),
            stores: &record.stores,
            visits: &visits,
        },
        today,
        &settings.membership,
    );
    channels::place_member(
        tx,
        &MemberChange {
            member_id,
            gateway: presence.then_some(&gateway),
            channels: &channels,
            removal: RemoveReason::ConsentWithdrawn,
            keys_changed,
            has_keys: gateway_form::has_long_term_keys(&record),
        },
        now_ms,
        touched,
    )
}

/// A digest of the record's long-term keys (`None` without any), to notice when they change
/// without keeping a second copy of a secret.
fn long_term_keys_hash(record: &MemberRecord) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut any = false;
    for id in &record.identifiers {
        if let instore_protocol::Identifier::RotatingSecret { .. }
        | instore_protocol::Identifier::EddystoneEidIdentity { .. } = id
            && let Ok(json) = serde_json::to_vec(id)
        {
            h.update(&json);
            h.update(b"\n");
            any = true;
        }
    }
    any.then(|| hex::encode(h.finalize()))
}

/// "linen, shirts (3 items)" from a purchase's items, dated by its time.
fn last_purchase(at_ms: i64, items_json: &str) -> Option<LastPurchase> {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        category: Option<String>,
        #[serde(default)]
        qty: Option<u32>,
    }
    let items: Vec<Item> = serde_json::from_str(items_json).unwrap_or_default();
    let mut categories: Vec<&str> = Vec::new();
    for c in items.iter().filter_map(|i| i.category.as_deref()) {
        if !categories.contains(&c) {
            categories.push(c);
        }
    }
    let count: u32 = items.iter().map(|i| i.qty.unwrap_or(1)).sum();
    let date = jiff::Timestamp::from_millisecond(at_ms)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let summary = match (categories.is_empty(), count) {
        (true, _) => "purchase".to_string(),
        (false, 1) => categories.join(", "),
        (false, n) => format!("{} ({n} items)", categories.join(", ")),
    };
    Some(LastPurchase { date, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_purchase_summary_names_its_categories_and_item_count() {
        let p = last_purchase(
            1_762_095_840_000,
            r#"[{"sku":"S1","category":"linen","qty":2},{"sku":"S2","category":"shirts"}]"#,
        )
        .unwrap();
        assert_eq!(p.date, "2025-11-02");
        assert_eq!(p.summary, "linen, shirts (3 items)");
        assert_eq!(last_purchase(0, "[]").unwrap().summary, "purchase");
    }
}
