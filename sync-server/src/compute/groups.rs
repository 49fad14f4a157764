//! Groups by category preference: the categories that carry a real share of a member's wallet.
//!
//! In: the member's 12-month spend per category (minor units, net of returns) and the minimum
//! share. Out: category names, strongest first. It must not count a category whose net is zero
//! or negative (returned more than bought), neither as a group nor in the wallet.
//!
//! Rule: the wallet is the sum of the positive category nets; a category is a group when its net
//! is at least `min_share` of the wallet (compared in parts per million, exactly). Order: net
//! spend descending, then name ascending, so equal shares list deterministically. A category
//! named twice in the input is summed first.

use serde::{Deserialize, Serialize};

/// A member's net spend in one category over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategorySpend {
    pub category: String,
    /// Minor units, net of returns (may be negative).
    pub spend_minor: i64,
}

/// The member's groups, strongest first.
pub fn groups(spend: &[CategorySpend], min_share: f64) -> Vec<String> {
    let mut nets: Vec<(&str, i128)> = Vec::with_capacity(spend.len());
    for c in spend {
        match nets.iter_mut().find(|(name, _)| *name == c.category) {
            Some((_, net)) => *net += i128::from(c.spend_minor),
            None => nets.push((&c.category, i128::from(c.spend_minor))),
        }
    }
    nets.retain(|(_, net)| *net > 0);
    let wallet: i128 = nets.iter().map(|(_, net)| net).sum();
    let ppm = (min_share.clamp(0.0, 1.0) * 1_000_000.0).round() as i128;
    nets.retain(|(_, net)| net * 1_000_000 >= ppm * wallet);
    nets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    nets.into_iter().map(|(name, _)| name.to_string()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn spend(pairs: &[(&str, i64)]) -> Vec<CategorySpend> {
        pairs
            .iter()
            .map(|(c, s)| CategorySpend {
                category: (*c).into(),
                spend_minor: *s,
            })
            .collect()
    }

    #[test]
    fn categories_at_or_above_the_minimum_share_are_groups_strongest_first() {
        let s = spend(&[
            ("socks", 500),
            ("linen", 6000),
            ("denim", 2500),
            ("hats", 1000),
        ]);
        // Wallet 10,000: linen 60%, denim 25% (exactly the minimum), hats 10%, socks 5%.
        assert_eq!(groups(&s, 0.25), ["linen", "denim"]);
    }

    #[test]
    fn returns_are_netted_and_a_net_negative_category_is_ignored() {
        let s = spend(&[
            ("linen", 3000),
            ("shoes", 9000),
            ("shoes", -9500),
            ("denim", 1000),
        ]);
        // shoes nets to −500: out of the wallet, so linen is 75% and denim 25%.
        assert_eq!(groups(&s, 0.25), ["linen", "denim"]);
    }

    #[test]
    fn equal_shares_are_listed_by_name() {
        let s = spend(&[("wool", 100), ("linen", 100)]);
        assert_eq!(groups(&s, 0.25), ["linen", "wool"]);
    }

    #[test]
    fn a_member_who_returned_everything_has_no_groups() {
        assert!(groups(&spend(&[("linen", -100), ("denim", 0)]), 0.25).is_empty());
        assert!(groups(&[], 0.25).is_empty());
    }

    #[test]
    fn a_minimum_share_of_one_keeps_only_a_single_category_wallet() {
        assert_eq!(groups(&spend(&[("linen", 10)]), 1.0), ["linen"]);
        assert!(groups(&spend(&[("linen", 10), ("denim", 1)]), 1.0).is_empty());
    }
}
