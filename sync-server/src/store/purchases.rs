//! Purchases: stored once by `purchase_id`, folded into each member's day and category totals
//! (what the compute stage reads), and the member marked for recomputation.
//!
//! In: checked [`PurchaseRecord`]s with their times, in the caller's transaction. Out: rows in
//! `purchases`, `member_days` (spend and purchase count per UTC day), `member_categories` (net
//! spend per month and category), `members.has_purchases`/`dirty`, and the member who referred a
//! first-time buyer marked too (their `refer` stage may follow).

use instore_protocol::purchase::PurchaseRecord;

use super::{StoreError, db::Sql, db::Tx};
use crate::params;

const INSERT_PURCHASE: Sql = Sql::same(
    "INSERT INTO purchases (purchase_id, member_id, store_id, at_ms, day, amount_minor, currency,
        items_json, imported_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT DO NOTHING",
);
const ADD_DAY: Sql = Sql::same(
    "INSERT INTO member_days (member_id, day, spend, purchases) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT(member_id, day) DO UPDATE SET spend = member_days.spend + excluded.spend,
        purchases = member_days.purchases + excluded.purchases",
);
const ADD_CATEGORY: Sql = Sql::same(
    "INSERT INTO member_categories (member_id, month, category, amount) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT(member_id, month, category) DO UPDATE SET
        amount = member_categories.amount + excluded.amount",
);
const SELECT_BUYER: Sql =
    Sql::same("SELECT has_purchases, referred_by FROM members WHERE member_id = ?1");
const MARK_BUYER: Sql =
    Sql::same("UPDATE members SET has_purchases = 1, dirty = dirty + 1 WHERE member_id = ?1");
const MARK_DIRTY: Sql = Sql::same("UPDATE members SET dirty = dirty + 1 WHERE member_id = ?1");

/// What storing one purchase did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// Already held under this `purchase_id`: nothing changed.
    Duplicate,
    /// Stored, but head office holds no member of that id (yet): it counts once they are
    /// imported (their totals are already kept).
    NewUnknownMember,
}

/// The UTC day number of a Unix-millisecond time.
pub fn day_of(at_ms: i64) -> i64 {
    at_ms.div_euclid(86_400_000)
}

/// Months since January 1970 of a day number (the category totals' bucket).
pub fn month_of_day(day: i64) -> i64 {
    let (y, m, _) = civil_from_days(day);
    y * 12 + (m - 1) - 1970 * 12
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Stores one checked purchase (`at_ms` from [`PurchaseRecord::validate`]).
pub fn insert(
    tx: &mut Tx<'_>,
    p: &PurchaseRecord,
    at_ms: i64,
    now_ms: i64,
) -> Result<Stored, StoreError> {
    let items = serde_json::to_string(&p.items)
        .map_err(|e| StoreError::Corrupt(format!("purchase {}: {e}", p.purchase_id)))?;
    let day = day_of(at_ms);
    let n = tx.execute(
        &INSERT_PURCHASE,
        params![
            &p.purchase_id,
            &p.member_id,
            &p.store_id,
            at_ms,
            day,
            p.amount_minor,
            &p.currency,
            items,
            now_ms
        ],
    )?;
    if n == 0 {
        return Ok(Stored::Duplicate);
    }
    // A return alone is spend, not a purchase.
    let sale = i64::from(p.amount_minor > 0);
    tx.execute(&ADD_DAY, params![&p.member_id, day, p.amount_minor, sale])?;
    let month = month_of_day(day);
    if p.items.is_empty() {
        tx.execute(
            &ADD_CATEGORY,
            params![&p.member_id, month, "uncategorised", p.amount_minor],
        )?;
    }
    for item in &p.items {
        let category = item.category.as_deref().unwrap_or("uncategorised");
        tx.execute(
            &ADD_CATEGORY,
            params![&p.member_id, month, category, item.amount_minor],
        )?;
    }
    let Some(buyer) = tx.query_opt(&SELECT_BUYER, params![&p.member_id])? else {
        return Ok(Stored::NewUnknownMember);
    };
    let first = !buyer.bool(0)?;
    tx.execute(&MARK_BUYER, params![&p.member_id])?;
    if first && let Some(referrer) = buyer.opt_string(1)? {
        tx.execute(&MARK_DIRTY, params![referrer])?;
    }
    Ok(Stored::New)
}

#[cfg(test)]
mod tests {
    use instore_protocol::purchase::parse_line;

    use super::*;
    use crate::store::{members, testing::each_backend};

    fn purchase(
        id: &str,
        member: &str,
        at: &str,
        amount: i64,
        items: &str,
    ) -> (PurchaseRecord, i64) {
        parse_line(&format!(
            r#"{{"purchase_id":"{id}","member_id":"{member}","store_id":"s1","at":"{at}","amount_minor":{amount},"currency":"EUR","items":{items}}}"#
        ))
        .unwrap()
    }

    const DAYS: Sql = Sql::same(
        "SELECT day, spend, purchases FROM member_days WHERE member_id = ?1 ORDER BY day",
    );
    const CATS: Sql = Sql::same(
        "SELECT category, amount FROM member_categories WHERE member_id = ?1 ORDER BY category",
    );
    const DIRTY: Sql = Sql::same("SELECT dirty, has_purchases FROM members WHERE member_id = ?1");

    #[test]
    fn a_purchase_is_stored_once_and_folded_into_day_and_category_totals() {
        each_backend(|db| {
            let m: instore_protocol::MemberRecord =
                serde_json::from_str(r#"{"member_id":"M1","display_name":"N","tier":"member"}"#)
                    .unwrap();
            members::import(db, &[m]).unwrap();
            let items = r#"[{"category":"linen","amount_minor":900},{"category":"shoes","amount_minor":100}]"#;
            let (p, at) = purchase("P1", "M1", "2026-11-02T15:04:00Z", 1000, items);
            let (r, at_r) = purchase(
                "P2",
                "M1",
                "2026-11-02T18:00:00+01:00",
                -100,
                r#"[{"category":"shoes","qty":-1,"amount_minor":-100}]"#,
            );
            let mut tx = db.transaction().unwrap();
            let dirty_before = tx.query_one(&DIRTY, params!["M1"]).unwrap().i64(0).unwrap();
            assert_eq!(insert(&mut tx, &p, at, 1).unwrap(), Stored::New);
            assert_eq!(insert(&mut tx, &p, at, 2).unwrap(), Stored::Duplicate);
            assert_eq!(insert(&mut tx, &r, at_r, 3).unwrap(), Stored::New);
            let days = tx.query(&DAYS, params!["M1"]).unwrap();
            assert_eq!(days.len(), 1);
            assert_eq!(days[0].i64(0).unwrap(), day_of(at));
            assert_eq!((days[0].i64(1).unwrap(), days[0].i64(2).unwrap()), (900, 1));
            let cats: Vec<(String, i64)> = tx
                .query(&CATS, params!["M1"])
                .unwrap()
                .iter()
                .map(|r| (r.string(0).unwrap(), r.i64(1).unwrap()))
                .collect();
            assert_eq!(cats, [("linen".to_string(), 900), ("shoes".to_string(), 0)]);
            let d = tx.query_one(&DIRTY, params!["M1"]).unwrap();
            assert_eq!(
                (d.i64(0).unwrap() - dirty_before, d.i64(1).unwrap()),
                (2, 1)
            );
            let (u, at_u) = purchase("P3", "M404", "2026-11-02T15:04:00Z", 5, "[]");
            assert_eq!(
                insert(&mut tx, &u, at_u, 4).unwrap(),
                Stored::NewUnknownMember
            );
            tx.commit().unwrap();
        });
    }

    #[test]
    fn months_count_from_january_1970() {
        assert_eq!(month_of_day(0), 0);
        assert_eq!(month_of_day(31), 1);
        // 2026-11-02
        assert_eq!(month_of_day(day_of(1_793_631_840_000)), 56 * 12 + 10);
    }
}
