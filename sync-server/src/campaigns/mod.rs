//! Central campaigns: reaction rules authored here for the chain, a store group or one store,
//! checked with the gateway's own checks ([`instore_protocol::rules::parse_rules`]) before they
//! are stored, versioned (every version kept; a withdrawal is a new, retired version), and
//! handed to each store's gateways with their change responses ([`live_for`]).
//!
//! A campaign's scope uses the fan-out's channel names (`chain`, `group:<id>`, `store:<id>`), so
//! a store takes the campaigns of the channels it subscribes to.

use instore_protocol::campaign::{
    Campaign, CampaignSet, MAX_CAMPAIGN_BYTES, MAX_CAMPAIGNS_PER_STORE, check_id, check_scope,
};
use serde::Serialize;

use crate::{
    params,
    store::{
        StoreError,
        db::{Db, Sql, Tx},
    },
};

const LATEST: Sql = Sql::same(
    "SELECT c.id, c.version, c.scope, c.rules, c.retired, c.created_ms FROM campaigns c
    WHERE c.version = (SELECT MAX(version) FROM campaigns d WHERE d.id = c.id)
    ORDER BY c.id",
);
const COUNT: Sql = Sql::same("SELECT COUNT(*) FROM campaigns");
const NEXT_VERSION: Sql =
    Sql::same("SELECT COALESCE(MAX(version), 0) + 1 FROM campaigns WHERE id = ?1");
const INSERT: Sql = Sql::same(
    "INSERT INTO campaigns (id, version, scope, rules, retired, created_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
);

/// Why a campaign was refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such campaign")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A campaign's current version, as `GET /api/campaigns` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignRow {
    pub id: String,
    pub version: u64,
    pub scope: String,
    /// The rules' names, in file order.
    pub rules: Vec<String>,
    pub retired: bool,
    pub created_ms: i64,
    /// The rules file as stored.
    pub toml: String,
}

/// Checks `toml` as a gateway would check its rules file; the names of its rules.
pub fn check(id: &str, scope: &str, toml: &str) -> Result<Vec<String>, CampaignError> {
    check_id(id).map_err(CampaignError::Invalid)?;
    check_scope(scope).map_err(CampaignError::Invalid)?;
    if toml.len() > MAX_CAMPAIGN_BYTES {
        return Err(CampaignError::Invalid(format!(
            "a campaign is at most {MAX_CAMPAIGN_BYTES} bytes"
        )));
    }
    let rules = instore_protocol::rules::parse_rules(toml, &format!("campaign {id}"))
        .map_err(|e| CampaignError::Invalid(e.to_string()))?;
    if rules.is_empty() {
        return Err(CampaignError::Invalid(
            "a campaign needs at least one [[rules]] table (DELETE withdraws one)".into(),
        ));
    }
    Ok(rules.into_iter().map(|(r, _)| r.name).collect())
}

/// Every campaign at its current version, rule names left empty: what counting and delivery
/// need, without parsing every campaign's TOML on each gateway's change request.
fn latest(tx: &mut Tx<'_>) -> Result<Vec<CampaignRow>, StoreError> {
    let mut out = Vec::new();
    for r in tx.query(&LATEST, params![])? {
        out.push(CampaignRow {
            id: r.string(0)?,
            version: r.u64(1)?,
            scope: r.string(2)?,
            rules: Vec::new(),
            retired: r.i64(4)? != 0,
            created_ms: r.i64(5)?,
            toml: r.string(3)?,
        });
    }
    Ok(out)
}

fn read_latest(db: &mut Db) -> Result<Vec<CampaignRow>, StoreError> {
    let mut tx = db.read_transaction()?;
    let rows = latest(&mut tx)?;
    tx.commit()?;
    Ok(rows)
}

/// Campaign versions ever stored: it only rises (versions are never deleted), so it is the
/// counter the members notices carry ([`instore_protocol::MembersNotice::campaigns`]).
pub fn counter(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    tx.query_one(&COUNT, params![])?.u64(0)
}

/// The counter, in its own read transaction.
pub fn counter_now(db: &mut Db) -> Result<u64, StoreError> {
    let mut tx = db.read_transaction()?;
    let n = counter(&mut tx)?;
    tx.commit()?;
    Ok(n)
}

/// Every campaign at its current version (retired ones included, marked).
pub fn list(db: &mut Db) -> Result<Vec<CampaignRow>, StoreError> {
    let mut rows = read_latest(db)?;
    for c in &mut rows {
        c.rules = instore_protocol::rules::parse_rules(&c.toml, "stored campaign")
            .map(|rs| rs.into_iter().map(|(r, _)| r.name).collect())
            .unwrap_or_default();
    }
    Ok(rows)
}

/// Stores a new version of `id` (checked by [`check`] first); its version number.
pub fn put(
    db: &mut Db,
    id: &str,
    scope: &str,
    toml: &str,
    now_ms: i64,
) -> Result<u64, CampaignError> {
    check(id, scope, toml)?;
    let mut tx = db.transaction()?;
    // Counted chain-wide, which bounds what any one store can be asked to hold.
    let live = latest(&mut tx)?;
    let others = live.iter().filter(|c| !c.retired && c.id != id).count();
    if others >= MAX_CAMPAIGNS_PER_STORE {
        return Err(CampaignError::Invalid(format!(
            "at most {MAX_CAMPAIGNS_PER_STORE} live campaigns: withdraw one first"
        )));
    }
    let version = next_version(&mut tx, id)?;
    tx.execute(&INSERT, params![id, version, scope, toml, 0i64, now_ms])?;
    tx.commit()?;
    Ok(version as u64)
}

/// Withdraws `id`: a new version, retired, that no store takes. Its version number.
pub fn retire(db: &mut Db, id: &str, now_ms: i64) -> Result<u64, CampaignError> {
    let mut tx = db.transaction()?;
    let live = latest(&mut tx)?;
    let Some(current) = live.into_iter().find(|c| c.id == id && !c.retired) else {
        return Err(CampaignError::NotFound);
    };
    let version = next_version(&mut tx, id)?;
    tx.execute(
        &INSERT,
        params![id, version, current.scope.as_str(), "", 1i64, now_ms],
    )?;
    tx.commit()?;
    Ok(version as u64)
}

fn next_version(tx: &mut Tx<'_>, id: &str) -> Result<i64, StoreError> {
    tx.query_opt(&NEXT_VERSION, params![id])?
        .map(|r| r.i64(0))
        .transpose()
        .map(|v| v.unwrap_or(1))
}

/// The live campaigns of a store subscribed to `channels`, as one set.
pub fn live_for(db: &mut Db, channels: &[String]) -> Result<CampaignSet, StoreError> {
    let live = read_latest(db)?
        .into_iter()
        .filter(|c| !c.retired && channels.contains(&c.scope))
        .map(|c| Campaign {
            id: c.id,
            version: c.version,
            scope: c.scope,
            rules: c.toml,
        })
        .collect();
    Ok(CampaignSet::new(live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    const GOOD: &str =
        "[[rules]]\nname = \"autumn\"\non = \"arrive\"\nmessage = \"Hi {display_name}\"\n";

    #[test]
    fn a_bad_rule_is_refused_with_its_name_and_line_and_nothing_is_stored() {
        each_backend(|db| {
            let bad = "[[rules]]\nname = \"ok\"\non = \"arrive\"\nmessage = \"m\"\n\n\
                       [[rules]]\nname = \"typo\"\non = \"arrive\"\nmessage = \"{nickname}\"\n";
            let err = put(db, "autumn", "chain", bad, 1).unwrap_err().to_string();
            assert!(
                err.contains("\"typo\"") && err.contains("line 7") && err.contains("nickname"),
                "{err}"
            );
            for (id, scope, toml, why) in [
                ("a b", "chain", GOOD, "campaign id"),
                ("a", "everywhere", GOOD, "scope"),
                ("a", "chain", "", "at least one"),
                (
                    "a",
                    "chain",
                    "[[rules]]\nname = \"x\"\non = \"teleport\"\n",
                    "line",
                ),
            ] {
                let err = put(db, id, scope, toml, 1).unwrap_err().to_string();
                assert!(err.contains(why), "{id} {scope}: {err}");
            }
            assert!(list(db).unwrap().is_empty());
        });
    }

    #[test]
    fn versions_rise_a_withdrawal_is_a_version_and_stores_take_their_scopes() {
        each_backend(|db| {
            assert_eq!(put(db, "autumn", "chain", GOOD, 1).unwrap(), 1);
            assert_eq!(put(db, "autumn", "chain", GOOD, 2).unwrap(), 2);
            assert_eq!(put(db, "north", "group:north", GOOD, 3).unwrap(), 1);
            let chain = ["chain".to_string(), "store:s1".to_string()];
            let north = ["chain".to_string(), "group:north".to_string()];
            let a = live_for(db, &chain).unwrap();
            assert_eq!(
                a.campaigns.iter().map(Campaign::label).collect::<Vec<_>>(),
                ["autumn@2"]
            );
            let b = live_for(db, &north).unwrap();
            assert_eq!(b.campaigns.len(), 2);
            assert_ne!(a.tag, b.tag);
            assert_eq!(retire(db, "autumn", 4).unwrap(), 3);
            assert!(matches!(
                retire(db, "autumn", 5),
                Err(CampaignError::NotFound)
            ));
            let after = live_for(db, &chain).unwrap();
            assert!(after.campaigns.is_empty());
            assert_ne!(after.tag, a.tag);
            let rows = list(db).unwrap();
            assert_eq!(rows.len(), 2);
            assert!(rows[0].retired && rows[0].version == 3);
            assert_eq!(rows[1].rules, ["autumn"]);
        });
    }
}
