//! The pyramid: members ranked by trailing-12-month spend into `top2`, `top5`, `top10`, `top15`,
//! `top20` and `rest`.
//!
//! In: every member's 12-month spend (minor units, net of returns, so possibly negative) and the
//! cut points. Out: [`PyramidThresholds`] and a [`Level`] per member. It must not look at anything
//! but spend, and it must give the same level in a full pass and when one member is levelled alone
//! against the last pass's thresholds.
//!
//! # The rule
//! With `n` members (all members passed in, zero-spenders included) and the cumulative cut share
//! `s` of a band (`top5`: 0.05), the band and those above it hold at most `c = ceil(s · n)`
//! members. Sort spends from the highest down, `x(1) >= x(2) >= … >= x(n)`. A member is in that
//! band or better when their spend is **strictly above** `max(x(c + 1), 0)` (`0` when `c >= n`).
//! So:
//! - with distinct spends, exactly the top `c` ranks are in (1,000 members → 20/30/50/50/50/800);
//! - **ties at a boundary all fall to the lower band**: a band never holds more than its share
//!   ("top 2%" is a promise about a cost), and members who spent the same always share a level,
//!   whatever their ids or the order they were passed in;
//! - a member with spend `<= 0` is always `rest`.
//!
//! Between full passes, [`PyramidThresholds::level`] levels a member whose spend changed against
//! the stored thresholds (a band may then briefly hold a member more than its share, until the
//! next scheduled pass refreshes the thresholds).

use serde::{Deserialize, Serialize};

use super::config::PyramidCuts;

/// A pyramid band, best first. `Ord` follows that order: `Top2 < Top5 < … < Rest`, so
/// "better" compares as *smaller*; prefer [`Level::is_at_or_above`] in rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Top2,
    Top5,
    Top10,
    Top15,
    Top20,
    Rest,
}

impl Level {
    /// Every level, best first.
    pub const ALL: [Level; 6] = [
        Level::Top2,
        Level::Top5,
        Level::Top10,
        Level::Top15,
        Level::Top20,
        Level::Rest,
    ];

    /// The name used in the API and config (`top2` … `rest`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Top2 => "top2",
            Level::Top5 => "top5",
            Level::Top10 => "top10",
            Level::Top15 => "top15",
            Level::Top20 => "top20",
            Level::Rest => "rest",
        }
    }

    /// The level named `name` (`top2` … `rest`).
    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// True when `self` is the same band as `other` or a better one.
    pub fn is_at_or_above(self, other: Level) -> bool {
        self <= other
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a full pass: what a member must spend to reach each band.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PyramidThresholds {
    /// Members the pass ranked (`n`).
    pub members: u64,
    /// For `top2`, `top5`, `top10`, `top15`, `top20`: a member whose 12-month spend is strictly
    /// greater than this (minor units, never negative) is in that band or a better one.
    pub above_minor: [i64; 5],
}

impl PyramidThresholds {
    /// Thresholds of an empty member base: every member with positive spend is `top2`.
    pub fn empty() -> Self {
        Self {
            members: 0,
            above_minor: [0; 5],
        }
    }

    /// The level of a member with this 12-month spend (the same rule as the full pass).
    pub fn level(&self, spend_minor: i64) -> Level {
        // Thresholds are non-increasing down the bands, so the first band cleared is the best.
        Level::ALL
            .into_iter()
            .zip(self.above_minor)
            .find(|&(_, above)| spend_minor > above)
            .map_or(Level::Rest, |(level, _)| level)
    }

    /// The lowest spend that reaches `level` (minor units), `None` for `rest`.
    pub fn minimum_spend(&self, level: Level) -> Option<i64> {
        let i = Level::ALL.iter().position(|l| *l == level)?;
        self.above_minor.get(i).map(|above| above.saturating_add(1))
    }
}

/// How many members a cumulative share admits out of `n`: `ceil(share · n)`, computed in whole
/// parts per million so that 0.07 · 100 is 7 and not 7.000000000000001 → 8.
pub fn band_capacity(share: f64, n: u64) -> u64 {
    let ppm = (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u128;
    let admitted = (ppm * u128::from(n)).div_ceil(1_000_000);
    u64::try_from(admitted).unwrap_or(u64::MAX).min(n)
}

/// The thresholds of a full pass over every member's 12-month spend.
pub fn thresholds(spends: &[i64], cuts: &PyramidCuts) -> PyramidThresholds {
    let mut sorted = spends.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let n = sorted.len() as u64;
    let mut above_minor = [0_i64; 5];
    for (above, share) in above_minor.iter_mut().zip(cuts.shares()) {
        let capacity = band_capacity(share, n);
        // x(c + 1) is sorted[c]; when the band admits everyone, only "spend > 0" remains.
        *above = usize::try_from(capacity)
            .ok()
            .and_then(|c| sorted.get(c))
            .map_or(0, |&first_out| first_out.max(0));
    }
    PyramidThresholds {
        members: n,
        above_minor,
    }
}

/// A full pass: the thresholds and every member's level, in input order.
pub fn level_all(spends: &[i64], cuts: &PyramidCuts) -> (PyramidThresholds, Vec<Level>) {
    let thresholds = thresholds(spends, cuts);
    let levels = spends.iter().map(|&s| thresholds.level(s)).collect();
    (thresholds, levels)
}

/// One row of `GET /api/pyramid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PyramidRow {
    pub level: Level,
    pub members: u64,
    /// Sum of the members' 12-month spend (minor units).
    pub spend_12m_minor: i64,
}

/// Members and spend per level, one row per level (best first, empty levels included), from
/// `(level, spend_12m_minor)` pairs.
pub fn summary(members: impl IntoIterator<Item = (Level, i64)>) -> Vec<PyramidRow> {
    let mut rows: Vec<PyramidRow> = Level::ALL
        .into_iter()
        .map(|level| PyramidRow {
            level,
            members: 0,
            spend_12m_minor: 0,
        })
        .collect();
    for (level, spend) in members {
        if let Some(row) = rows.iter_mut().find(|r| r.level == level) {
            row.members += 1;
            row.spend_12m_minor = row.spend_12m_minor.saturating_add(spend);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn counts(levels: &[Level]) -> [usize; 6] {
        let mut out = [0; 6];
        for level in levels {
            out[Level::ALL.iter().position(|l| l == level).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn a_thousand_distinct_spends_split_20_30_50_50_50_800() {
        let spends: Vec<i64> = (1..=1000).map(|i| i * 100).collect();
        let (t, levels) = level_all(&spends, &PyramidCuts::default());
        assert_eq!(counts(&levels), [20, 30, 50, 50, 50, 800]);
        // The top 20 ranks are the 20 highest spends.
        assert!(levels[980..].iter().all(|l| *l == Level::Top2));
        assert_eq!(levels[979], Level::Top5);
        assert_eq!(t.above_minor[0], 98_000);
        assert_eq!(t.minimum_spend(Level::Top2), Some(98_001));
        assert_eq!(t.minimum_spend(Level::Rest), None);
    }

    #[test]
    fn the_input_order_does_not_change_any_level() {
        let mut spends: Vec<i64> = (1..=1000).map(|i| (i * 7919) % 1000 * 10 + 1).collect();
        let (_, a) = level_all(&spends, &PyramidCuts::default());
        let before: Vec<(i64, Level)> = spends.iter().copied().zip(a).collect();
        spends.reverse();
        let (_, b) = level_all(&spends, &PyramidCuts::default());
        for (spend, level) in spends.iter().zip(b) {
            assert!(before.contains(&(*spend, level)));
        }
    }

    #[test]
    fn ties_at_a_boundary_all_fall_to_the_lower_band() {
        // Ranks 20 and 21 spend the same: neither is top2 (it keeps 19), both are top5, and
        // top5's cumulative 50 is unchanged, so it holds 31.
        let mut spends: Vec<i64> = (1..=1000).map(|i| i * 100).collect();
        spends[980] = spends[979]; // rank 20 (index 980) now ties rank 21 (index 979)
        let (_, levels) = level_all(&spends, &PyramidCuts::default());
        assert_eq!(levels[980], Level::Top5);
        assert_eq!(levels[979], Level::Top5);
        assert_eq!(counts(&levels), [19, 31, 50, 50, 50, 800]);
    }

    #[test]
    fn a_tie_group_straddling_a_whole_band_skips_it() {
        // n = 100: top2 holds 2, top5 3 more. Ranks 2..=6 tie, so they cannot fit in top5
        // (cumulative 5) and all land in top10.
        let mut spends = vec![1_i64; 94];
        spends.extend([500, 500, 500, 500, 500, 1000]);
        let (_, levels) = level_all(&spends, &PyramidCuts::default());
        assert_eq!(counts(&levels), [1, 0, 5, 0, 0, 94]);
    }

    #[test]
    fn everyone_spending_the_same_is_rest() {
        let spends = vec![5_000_i64; 50];
        let (_, levels) = level_all(&spends, &PyramidCuts::default());
        assert_eq!(counts(&levels), [0, 0, 0, 0, 0, 50]);
    }

    #[test]
    fn zero_spenders_count_in_n_but_are_never_above_rest() {
        // 900 members without purchases, 100 with distinct spends: n = 1000, so top2 is 20 ranks,
        // top5 30, top10 the remaining 50 spenders; nobody is left for top15 and top20.
        let mut spends = vec![0_i64; 900];
        spends.extend((1..=100).map(|i| i * 10));
        let (t, levels) = level_all(&spends, &PyramidCuts::default());
        assert_eq!(counts(&levels), [20, 30, 50, 0, 0, 900]);
        assert_eq!(t.above_minor[3], 0);
        assert_eq!(t.level(0), Level::Rest);
    }

    #[test]
    fn a_negative_spend_is_rest_even_in_a_tiny_base() {
        let (_, levels) = level_all(&[-500, 0, 300], &PyramidCuts::default());
        // n = 3: ceil(0.02 · 3) = 1, so the single positive spender is top2.
        assert_eq!(levels, [Level::Rest, Level::Rest, Level::Top2]);
    }

    #[test]
    fn capacities_are_exact_in_parts_per_million() {
        assert_eq!(band_capacity(0.07, 100), 7);
        assert_eq!(band_capacity(0.02, 1000), 20);
        assert_eq!(band_capacity(0.02, 1001), 21);
        assert_eq!(band_capacity(0.02, 0), 0);
        assert_eq!(band_capacity(1.0, 10), 10);
        assert_eq!(band_capacity(0.1, u64::MAX), u64::MAX / 10 + 1);
    }

    #[test]
    fn a_member_levelled_alone_gets_the_full_pass_level() {
        let spends: Vec<i64> = (0..500).map(|i| (i * 37) % 211 * 25 - 100).collect();
        let (t, levels) = level_all(&spends, &PyramidCuts::default());
        for (spend, level) in spends.iter().zip(levels) {
            assert_eq!(t.level(*spend), level);
        }
        // A purchase lifts a rest member over the top2 threshold before the next pass.
        assert_eq!(t.level(t.above_minor[0] + 1), Level::Top2);
    }

    #[test]
    fn an_empty_base_has_zero_thresholds() {
        let t = thresholds(&[], &PyramidCuts::default());
        assert_eq!(t, PyramidThresholds::empty());
        assert_eq!(t.level(1), Level::Top2);
    }

    #[test]
    fn the_summary_has_one_row_per_level() {
        let rows = summary([(Level::Top2, 900), (Level::Rest, 10), (Level::Top2, 800)]);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].members, 2);
        assert_eq!(rows[0].spend_12m_minor, 1700);
        assert_eq!(rows[5].members, 1);
        assert_eq!(rows[1].members, 0);
    }
}
