//! Which stores hold which members: the `[membership]` policy, as channels (see
//! [`instore_protocol::changes`]).
//!
//! In: a member's consent, tier, home store, explicit store list and recent visits; a store id.
//! Out: the channels a member belongs to, and the channels a store subscribes to. Pure: no I/O.
//!
//! # The default, and why
//! - **Home store** (`home_store = true`): a member is held where they belong; if the home store
//!   is in a store group (`[[membership.groups]]`, e.g. a region or a city's stores), by every
//!   store of the group, because members walk into the neighbouring store too.
//! - **Recent visitors** (`visited_days = 90`): a store keeps members who came in the last
//!   quarter, so a regular of a store that is not their home is still greeted there.
//! - **Top tiers chain-wide** (`chain_tiers = ["platinum", "gold"]`, the top 5 % by spend): the
//!   members worth greeting anywhere, on a trip or in a flagship, are held by every store. At a
//!   million members that is 50,000 records, well within a gateway's budget.
//! - **Explicit lists**: a member record's `stores` names further stores.
//! - **Unassigned members** (`unassigned = "chain"`): a member with no home store, no explicit
//!   store and no recent visit is held chain-wide, so a chain that never assigns home stores
//!   keeps working as it did before per-store sets existed. `"none"` keeps them at head office
//!   (recognised only by a QR code, through a lookup).
//! - Members without presence consent belong to no channel: they never leave head office.
//!
//! A member in `chain` needs no other channel (every store subscribes to it), so the set is
//! reduced to `chain` alone: fewer rows, and no removal churn when a member's home store moves.

use std::collections::BTreeSet;

use instore_protocol::{
    changes::{CHAIN_CHANNEL, group_channel, store_channel},
    topics::valid_id,
};
use serde::Deserialize;

/// `[membership]` in head office's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipConfig {
    /// Members are held by their home store (and its groups' stores).
    pub home_store: bool,
    /// Members are held by every store they visited in the last N days; 0 turns it off.
    pub visited_days: u32,
    /// Tiers every store holds.
    pub chain_tiers: Vec<String>,
    /// Members no other rule places: `chain` (every store) or `none` (head office only).
    pub unassigned: Unassigned,
    /// Store groups (regions, cities): a member whose home store is in a group is held by every
    /// store of the group.
    pub groups: Vec<StoreGroup>,
    /// Days of changes kept per channel; a gateway further behind takes a snapshot. At least 35,
    /// so a gateway offline for a month catches up from the stream.
    pub keep_changes_days: u32,
    /// A gateway more than this many changes behind in a channel takes its snapshot instead.
    pub snapshot_after_changes: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            home_store: true,
            visited_days: 90,
            chain_tiers: vec!["platinum".into(), "gold".into()],
            unassigned: Unassigned::Chain,
            groups: Vec::new(),
            keep_changes_days: 35,
            snapshot_after_changes: 50_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unassigned {
    Chain,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreGroup {
    pub name: String,
    pub stores: Vec<String>,
}

impl MembershipConfig {
    /// `(key, reason)` of the first problem, the key relative to `[membership]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.keep_changes_days < 1 {
            return Err(("keep_changes_days".into(), "must be at least 1".into()));
        }
        let mut names = BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_id(&g.name) {
                return Err((
                    format!("groups[{i}].name"),
                    format!("{:?} is not 1-64 characters of A-Z a-z 0-9 _ -", g.name),
                ));
            }
            if !names.insert(g.name.as_str()) {
                return Err((format!("groups[{i}].name"), format!("{:?} twice", g.name)));
            }
            if let Some(bad) = g.stores.iter().find(|s| !valid_id(s)) {
                return Err((
                    format!("groups[{i}].stores"),
                    format!("{bad:?} is not a valid store id"),
                ));
            }
        }
        if let Some(t) = self.chain_tiers.iter().find(|t| t.trim().is_empty()) {
            return Err(("chain_tiers".into(), format!("{t:?}: empty tier name")));
        }
        Ok(())
    }

    /// Every channel `store` subscribes to: its own, its groups', the chain's.
    pub fn subscriptions(&self, store: &str) -> Vec<String> {
        let mut out = vec![store_channel(store)];
        for g in &self.groups {
            if g.stores.iter().any(|s| s == store) {
                out.push(group_channel(&g.name));
            }
        }
        out.push(CHAIN_CHANNEL.to_string());
        out
    }

    /// Whether `store` subscribes to `channel`.
    pub fn subscribes(&self, store: &str, channel: &str) -> bool {
        self.subscriptions(store).iter().any(|c| c == channel)
    }

    /// The stores among `known` that subscribe to `channel`.
    pub fn subscribers<'a>(&self, channel: &str, known: &'a [String]) -> Vec<&'a str> {
        known
            .iter()
            .filter(|s| self.subscribes(s, channel))
            .map(String::as_str)
            .collect()
    }
}

/// What the policy reads of one member.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub presence: bool,
    /// The member's tier as stores see it.
    pub tier: &'a str,
    pub home_store: Option<&'a str>,
    pub stores: &'a [String],
    /// `(store, last visit day)`, day numbers since the Unix epoch.
    pub visits: &'a [(String, i64)],
}

/// The channels the member belongs to on `today` (a day number).
pub fn channels_for(m: &Placement<'_>, today: i64, cfg: &MembershipConfig) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !m.presence {
        return out;
    }
    if cfg.chain_tiers.iter().any(|t| t == m.tier) {
        out.insert(CHAIN_CHANNEL.to_string());
        return out;
    }
    if cfg.home_store
        && let Some(home) = m.home_store
    {
        let groups: Vec<&StoreGroup> = cfg
            .groups
            .iter()
            .filter(|g| g.stores.iter().any(|s| s == home))
            .collect();
        if groups.is_empty() {
            out.insert(store_channel(home));
        } else {
            out.extend(groups.iter().map(|g| group_channel(&g.name)));
        }
    }
    for s in m.stores {
        out.insert(store_channel(s));
    }
    if cfg.visited_days > 0 {
        let since = today - i64::from(cfg.visited_days);
        for (store, day) in m.visits {
            if *day > since && !covered(&out, store, cfg) {
                out.insert(store_channel(store));
            }
        }
    }
    if out.is_empty() && m.home_store.is_none() && cfg.unassigned == Unassigned::Chain {
        out.insert(CHAIN_CHANNEL.to_string());
    }
    out
}

/// Whether a channel already in `set` reaches `store`.
fn covered(set: &BTreeSet<String>, store: &str, cfg: &MembershipConfig) -> bool {
    cfg.subscriptions(store).iter().any(|c| set.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MembershipConfig {
        MembershipConfig {
            groups: vec![StoreGroup {
                name: "north".into(),
                stores: vec!["s1".into(), "s2".into()],
            }],
            ..Default::default()
        }
    }

    fn place<'a>(
        tier: &'a str,
        home: Option<&'a str>,
        visits: &'a [(String, i64)],
    ) -> Placement<'a> {
        Placement {
            presence: true,
            tier,
            home_store: home,
            stores: &[],
            visits,
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_top_tier_member_is_held_chain_wide_and_nowhere_else() {
        let visits = [("s9".to_string(), 100)];
        assert_eq!(
            channels_for(&place("platinum", Some("s3"), &visits), 100, &cfg()),
            set(&["chain"])
        );
    }

    #[test]
    fn a_home_store_in_a_group_places_the_member_in_the_group() {
        assert_eq!(
            channels_for(&place("member", Some("s1"), &[]), 100, &cfg()),
            set(&["group:north"])
        );
        assert_eq!(
            channels_for(&place("member", Some("s3"), &[]), 100, &cfg()),
            set(&["store:s3"])
        );
    }

    #[test]
    fn recent_visits_add_stores_not_already_covered_and_old_ones_expire() {
        let visits = [
            ("s2".to_string(), 95), // covered by group:north
            ("s4".to_string(), 20), // 80 days ago: within 90
            ("s5".to_string(), 10), // 90 days ago: out
        ];
        assert_eq!(
            channels_for(&place("member", Some("s1"), &visits), 100, &cfg()),
            set(&["group:north", "store:s4"])
        );
    }

    #[test]
    fn an_unassigned_member_is_chain_wide_by_default_and_nowhere_with_none() {
        assert_eq!(
            channels_for(&place("member", None, &[]), 100, &cfg()),
            set(&["chain"])
        );
        let none = MembershipConfig {
            unassigned: Unassigned::None,
            ..cfg()
        };
        assert!(channels_for(&place("member", None, &[]), 100, &none).is_empty());
    }

    #[test]
    fn a_member_without_presence_consent_belongs_to_no_channel() {
        let mut p = place("platinum", Some("s1"), &[]);
        p.presence = false;
        assert!(channels_for(&p, 100, &cfg()).is_empty());
    }

    #[test]
    fn explicit_stores_are_added() {
        let stores = ["s7".to_string()];
        let p = Placement {
            stores: &stores,
            ..place("member", Some("s3"), &[])
        };
        assert_eq!(
            channels_for(&p, 100, &cfg()),
            set(&["store:s3", "store:s7"])
        );
    }

    #[test]
    fn a_store_subscribes_to_its_own_channel_its_groups_and_the_chain() {
        let c = cfg();
        assert_eq!(c.subscriptions("s2"), ["store:s2", "group:north", "chain"]);
        assert_eq!(c.subscriptions("s9"), ["store:s9", "chain"]);
        let known = ["s1".to_string(), "s2".to_string(), "s9".to_string()];
        assert_eq!(c.subscribers("group:north", &known), ["s1", "s2"]);
        assert_eq!(c.subscribers("chain", &known).len(), 3);
    }

    #[test]
    fn bad_groups_are_refused_naming_the_key() {
        let mut c = cfg();
        c.groups.push(StoreGroup {
            name: "north".into(),
            stores: vec![],
        });
        assert_eq!(c.validate().unwrap_err().0, "groups[1].name");
        let mut c = cfg();
        c.groups[0].stores.push("a/b".into());
        assert_eq!(c.validate().unwrap_err().0, "groups[0].stores");
    }
}
