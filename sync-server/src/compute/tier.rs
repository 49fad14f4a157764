//! Tier from pyramid level, with a qualification period for upgrades and a grace period for
//! downgrades.
//!
//! In: the member's previous [`TierState`] (or none), today's level, today's date and the tier
//! config. Out: the next [`TierState`]. It keeps no clock and no history beyond the state it is
//! given; the caller stores the state and passes it back next time (on every recompute, at least
//! daily, so that periods are measured between observations).
//!
//! # The rule
//! Tiers form a ladder (default `platinum > gold > silver > bronze > member`); the level *gives*
//! a tier by the configured names (`top15` and `top20` both give `bronze`).
//! - **Upgrade**: while the level gives a tier above the member's, a qualifying run is kept: its
//!   start and the lowest tier the level gave on every observation since. The member is upgraded
//!   to that tier once the run is `qualification_days` old (0 = at once). If the level climbed
//!   higher during the run, a new run toward the higher tier starts on the day of the upgrade.
//!   Any observation at or below the member's tier ends the run.
//! - **Downgrade**: from the first observation on which the level gives a tier below the member's,
//!   the member keeps the tier until that is `downgrade_grace_days` ago; then the tier falls to
//!   what the level gives that day. An observation at or above the member's tier ends the grace.
//! - **No previous state**: the member starts at the bottom tier today, so a new member's first
//!   upgrade qualifies like any other (at once by default). The caller may seed the state from an
//!   imported tier with [`TierState::new`].
//! - **A previous tier the config no longer names**: the level's tier at once (nothing to keep).
//! - A date before the state's dates (a clock set back) counts as zero days passed.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{config::TierConfig, days, pyramid::Level};

/// What the tier computation must remember between runs. Field names are those the API may
/// flatten into the member's computed fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierState {
    /// The tier the stores see.
    pub tier: String,
    /// When the member got this tier.
    pub tier_since: Date,
    /// An upgrade in qualification, if any.
    pub tier_qualifying: Option<TierRun>,
    /// First observation of a level below the tier, while the grace period runs.
    pub tier_below_since: Option<Date>,
}

/// A qualifying run toward a higher tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRun {
    /// The lowest tier the level gave on every observation of the run.
    pub tier: String,
    /// The run's first observation.
    pub since: Date,
}

impl TierState {
    /// A settled tier (nothing qualifying, no grace running), e.g. from a member import.
    pub fn new(tier: impl Into<String>, since: Date) -> Self {
        Self {
            tier: tier.into(),
            tier_since: since,
            tier_qualifying: None,
            tier_below_since: None,
        }
    }
}

/// The tier state after observing `level` on `today`.
pub fn next_tier(
    prev: Option<&TierState>,
    level: Level,
    today: Date,
    cfg: &TierConfig,
) -> TierState {
    let ladder = cfg.names.ladder();
    let name = |rank: usize| ladder.get(rank).copied().unwrap_or_default().to_string();
    let rank = |tier: &str| ladder.iter().position(|t| *t == tier);
    let bottom = ladder.len().saturating_sub(1);
    let target = rank(cfg.names.of(level)).unwrap_or(bottom);
    let elapsed = |since: Date| days::between(since, today).max(0);

    let (current, since, qualifying, below_since) = match prev {
        None => (bottom, today, None, None),
        Some(prev) => match rank(&prev.tier) {
            Some(rank) => (
                rank,
                prev.tier_since,
                prev.tier_qualifying.as_ref(),
                prev.tier_below_since,
            ),
            None => return TierState::new(name(target), today),
        },
    };

    if target < current {
        // The level gives a better tier: qualify (ranks: smaller is better).
        let run = qualifying
            .and_then(|run| Some((rank(&run.tier)?, run.since)))
            .filter(|&(rank, _)| rank < current);
        let (run_rank, run_since) = match run {
            Some((rank, since)) => (rank.max(target), since),
            None => (target, today),
        };
        if elapsed(run_since) >= i64::from(cfg.qualification_days) {
            TierState {
                tier: name(run_rank),
                tier_since: today,
                tier_qualifying: (target < run_rank).then(|| TierRun {
                    tier: name(target),
                    since: today,
                }),
                tier_below_since: None,
            }
        } else {
            TierState {
                tier: name(current),
                tier_since: since,
                tier_qualifying: Some(TierRun {
                    tier: name(run_rank),
                    since: run_since,
                }),
                tier_below_since: None,
            }
        }
    } else if target == current {
        TierState::new(name(current), since)
    } else {
        let below_since = below_since.unwrap_or(today);
        if elapsed(below_since) >= i64::from(cfg.downgrade_grace_days) {
            TierState::new(name(target), today)
        } else {
            TierState {
                tier: name(current),
                tier_since: since,
                tier_qualifying: None,
                tier_below_since: Some(below_since),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::compute::config::TierNames;
    use Level::*;

    fn day(n: i64) -> Date {
        days::date(days::number(jiff::civil::date(2026, 1, 1)) + n).unwrap()
    }

    fn cfg(qualification_days: u32, downgrade_grace_days: u32) -> TierConfig {
        TierConfig {
            qualification_days,
            downgrade_grace_days,
            names: TierNames::default(),
        }
    }

    /// Runs a timeline of (day, level) observations and returns the tier after each.
    fn timeline(cfg: &TierConfig, steps: &[(i64, Level)]) -> Vec<(i64, String)> {
        let mut state: Option<TierState> = None;
        steps
            .iter()
            .map(|&(n, level)| {
                let next = next_tier(state.as_ref(), level, day(n), cfg);
                let tier = next.tier.clone();
                state = Some(next);
                (n, tier)
            })
            .collect()
    }

    fn tiers(out: &[(i64, String)]) -> Vec<&str> {
        out.iter().map(|(_, t)| t.as_str()).collect()
    }

    #[test]
    fn with_the_defaults_an_upgrade_is_immediate_and_a_downgrade_waits_90_days() {
        let out = timeline(
            &cfg(0, 90),
            &[
                (0, Top5),    // new member, gold at once
                (10, Top2),   // platinum at once
                (20, Top10),  // below: grace starts
                (50, Top2),   // back: grace over
                (60, Top10),  // below again: grace from day 60
                (149, Top10), // 89 days: still platinum
                (150, Top15), // 90 days: falls to what the level gives now
            ],
        );
        assert_eq!(
            tiers(&out),
            [
                "gold", "platinum", "platinum", "platinum", "platinum", "platinum", "bronze"
            ]
        );
    }

    #[test]
    fn the_grace_period_is_measured_from_the_first_observation_below() {
        let c = cfg(0, 90);
        let s = next_tier(None, Top2, day(0), &c);
        let s = next_tier(Some(&s), Top20, day(5), &c);
        assert_eq!(s.tier_below_since, Some(day(5)));
        let s = next_tier(Some(&s), Top5, day(40), &c);
        // Still below platinum: the grace keeps its start.
        assert_eq!(s.tier_below_since, Some(day(5)));
        assert_eq!(s.tier, "platinum");
        let s = next_tier(Some(&s), Top5, day(95), &c);
        assert_eq!((s.tier.as_str(), s.tier_since), ("gold", day(95)));
        assert_eq!(s.tier_below_since, None);
    }

    #[test]
    fn a_qualification_period_delays_an_upgrade_until_the_level_held_for_it() {
        let out = timeline(&cfg(14, 0), &[(0, Top5), (7, Top5), (13, Top5), (14, Top5)]);
        assert_eq!(tiers(&out), ["member", "member", "member", "gold"]);
    }

    #[test]
    fn a_dip_during_qualification_restarts_the_run() {
        let out = timeline(
            &cfg(14, 0),
            &[(0, Top5), (10, Rest), (11, Top5), (24, Top5), (25, Top5)],
        );
        assert_eq!(
            tiers(&out),
            ["member", "member", "member", "member", "gold"]
        );
    }

    #[test]
    fn a_run_that_climbs_upgrades_to_the_lowest_tier_held_then_qualifies_again() {
        let c = cfg(14, 0);
        let out = timeline(
            &c,
            &[(0, Top5), (5, Top2), (14, Top2), (27, Top2), (28, Top2)],
        );
        assert_eq!(
            tiers(&out),
            ["member", "member", "gold", "gold", "platinum"]
        );
        // The run toward platinum started the day gold was granted.
        let s = next_tier(None, Top5, day(0), &c);
        let s = next_tier(Some(&s), Top2, day(14), &c);
        assert_eq!(
            s.tier_qualifying,
            Some(TierRun {
                tier: "platinum".into(),
                since: day(14)
            })
        );
    }

    #[test]
    fn levels_that_share_a_tier_do_not_start_a_grace_period() {
        let c = cfg(0, 90);
        let s = next_tier(None, Top15, day(0), &c);
        let s = next_tier(Some(&s), Top20, day(1), &c);
        assert_eq!(s, TierState::new("bronze", day(0)));
    }

    #[test]
    fn zero_grace_downgrades_at_once() {
        let out = timeline(&cfg(0, 0), &[(0, Top2), (1, Rest)]);
        assert_eq!(tiers(&out), ["platinum", "member"]);
    }

    #[test]
    fn an_imported_tier_is_kept_through_grace() {
        let c = cfg(0, 90);
        let imported = TierState::new("gold", day(0));
        let s = next_tier(Some(&imported), Rest, day(1), &c);
        assert_eq!(s.tier, "gold");
        assert_eq!(s.tier_below_since, Some(day(1)));
    }

    #[test]
    fn a_tier_the_config_no_longer_names_is_replaced_by_the_level_tier_at_once() {
        let c = cfg(30, 90);
        let s = next_tier(Some(&TierState::new("diamond", day(0))), Top10, day(3), &c);
        assert_eq!(s, TierState::new("silver", day(3)));
    }

    #[test]
    fn a_clock_set_back_passes_no_time() {
        let c = cfg(0, 90);
        let s = next_tier(None, Top2, day(100), &c);
        let s = next_tier(Some(&s), Rest, day(100), &c);
        let s = next_tier(Some(&s), Rest, day(0), &c);
        assert_eq!(s.tier, "platinum");
    }
}
