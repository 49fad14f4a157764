//! Campaigns: reaction rules authored at head office for the whole chain, a store group or one
//! store, checked there with [`crate::rules::parse_rules`] (the gateway's own checks) and
//! versioned. A gateway learns its store's campaigns from its change stream: it sends the tag of
//! the set it holds (`&campaigns=TAG` on `GET /api/stores/{store}/changes`) and head office adds
//! the whole set to the response when it differs ([`crate::changes::ChangesResponse::campaigns`]).
//!
//! Precedence at the gateway: a rule of the store's own rules file replaces a campaign rule of
//! the same name (the store's word is last); otherwise all rules compete by priority as one set,
//! local rules first on equal priority, then campaigns by id. Every alert a campaign rule raises
//! names `id@version`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::topics::valid_id;

/// Largest campaign (its rules TOML), bytes.
pub const MAX_CAMPAIGN_BYTES: usize = 64 * 1024;
/// Most live campaigns one store takes; head office refuses a campaign that would exceed it.
pub const MAX_CAMPAIGNS_PER_STORE: usize = 64;

/// One version of a campaign, as head office delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: String,
    pub version: u64,
    /// `chain`, `group:<id>` or `store:<id>`: the channels of the fan-out.
    pub scope: String,
    /// A rules file (TOML, `[[rules]]` tables), already checked at head office.
    pub rules: String,
}

impl Campaign {
    /// `id@version`, as alerts name it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.id, self.version)
    }
}

/// Every live campaign of one store, and the tag that names exactly this set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignSet {
    pub tag: String,
    pub campaigns: Vec<Campaign>,
}

impl CampaignSet {
    /// The set of `campaigns`, sorted by id, with its tag.
    pub fn new(mut campaigns: Vec<Campaign>) -> Self {
        campaigns.sort_by(|a, b| a.id.cmp(&b.id));
        let mut h = Sha256::new();
        for c in &campaigns {
            h.update(c.label().as_bytes());
            h.update(b"\n");
        }
        let d = h.finalize();
        Self {
            tag: hex::encode(&d[..12]),
            campaigns,
        }
    }
}

/// A campaign id: 1-64 characters of `A-Z a-z 0-9 _ -` (it is part of every alert's label).
pub fn check_id(id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "campaign id {id:?} is not 1-64 characters of A-Z a-z 0-9 _ -"
        ))
    }
}

/// `chain`, `group:<id>` or `store:<id>`.
pub fn check_scope(scope: &str) -> Result<(), String> {
    let ok = scope == crate::changes::CHAIN_CHANNEL
        || scope
            .strip_prefix("group:")
            .or_else(|| scope.strip_prefix("store:"))
            .is_some_and(valid_id);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "scope {scope:?} must be \"chain\", \"group:<id>\" or \"store:<id>\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, version: u64) -> Campaign {
        Campaign {
            id: id.into(),
            version,
            scope: "chain".into(),
            rules: String::new(),
        }
    }

    #[test]
    fn the_tag_names_the_set_whatever_its_order_and_changes_with_any_version() {
        let a = CampaignSet::new(vec![c("b", 1), c("a", 2)]);
        let b = CampaignSet::new(vec![c("a", 2), c("b", 1)]);
        assert_eq!(a.tag, b.tag);
        assert_eq!(a.campaigns[0].id, "a");
        assert_ne!(a.tag, CampaignSet::new(vec![c("a", 3), c("b", 1)]).tag);
        assert_ne!(a.tag, CampaignSet::new(vec![c("a", 2)]).tag);
        assert_eq!(a.tag.len(), 24);
        assert_eq!(c("autumn", 3).label(), "autumn@3");
    }

    #[test]
    fn scopes_and_ids_are_checked() {
        for ok in ["chain", "group:north", "store:store-001"] {
            assert!(check_scope(ok).is_ok(), "{ok}");
        }
        for bad in ["", "all", "group:", "store:a/b", "group:x y"] {
            assert!(check_scope(bad).is_err(), "{bad}");
        }
        assert!(check_id("autumn-vip").is_ok());
        assert!(check_id("a@b").is_err() && check_id("").is_err());
    }
}
