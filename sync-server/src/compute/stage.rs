//! The lifecycle stage of a member (CIDR's acquire → activate → stick → value → refer, plus
//! lapsed).
//!
//! In: a member's [`StageFacts`] (counts in the window, recency, level, referrals, P(alive)) and
//! the stage rules. Out: one [`Stage`]. It must not look at dates or the clock itself: recency
//! arrives as a number of days.
//!
//! # Rules, in order of precedence (the first that holds wins)
//! | # | stage      | when |
//! |---|------------|------|
//! | 1 | `acquire`  | the member has never purchased (store visits alone do not activate) |
//! | 2 | `lapsed`   | no activity (purchase or visit) for `lapse_days` or more, or P(alive) < `lapse_p_alive` (only with a model) |
//! | 3 | `refer`    | *sticks* and has at least `refer_min_referrals` referred members who purchased |
//! | 4 | `value`    | *sticks* and the level is `value_min_level` or better |
//! | 5 | `stick`    | *sticks*: `purchases_12m >= stick_min_purchases`, or `purchases_12m >= 1` and `visits_12m >= stick_min_visits` (when that is > 0) |
//! | 6 | `activate` | has purchased, does not stick (yet, or any more) |
//!
//! BG/NBD's P(alive) is 1 for a member with a single activity day (the model learns of dropout
//! only from silence after repeats), so one-time buyers lapse by `lapse_days` alone.
//!
//! Why this order: acquire first because nothing else is defined without a purchase; lapsed
//! before the rest because a once-valuable member who stopped coming is a win-back case, not a
//! VIP to greet; refer above value because a referrer who is also high-value is the rarer and
//! more useful thing to know (value is one rule further down, not lost: the level says it).

use serde::{Deserialize, Serialize};

use super::{config::StageConfig, pyramid::Level};

/// A lifecycle stage, as the API and member import spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Acquire,
    Activate,
    Stick,
    Value,
    Refer,
    Lapsed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Acquire => "acquire",
            Stage::Activate => "activate",
            Stage::Stick => "stick",
            Stage::Value => "value",
            Stage::Refer => "refer",
            Stage::Lapsed => "lapsed",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the stage rules look at.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFacts {
    /// Purchases over the member's whole history.
    pub purchases_ever: u64,
    /// Purchases in the trailing window.
    pub purchases_12m: u64,
    /// Store visits in the trailing window.
    pub visits_12m: u64,
    /// Days since the last activity; `None` without any.
    pub recency_days: Option<i64>,
    pub level: Level,
    /// Members this member referred who have made at least one purchase.
    pub purchasing_referrals: u32,
    /// BG/NBD P(alive), when a model is available.
    pub p_alive: Option<f64>,
}

/// The stage by the rules in the module doc.
pub fn stage(f: &StageFacts, cfg: &StageConfig) -> Stage {
    if f.purchases_ever == 0 {
        return Stage::Acquire;
    }
    let silent = f
        .recency_days
        .is_none_or(|days| days >= i64::from(cfg.lapse_days));
    let unlikely_alive = f.p_alive.is_some_and(|p| p < cfg.lapse_p_alive);
    if silent || unlikely_alive {
        return Stage::Lapsed;
    }
    let sticks = f.purchases_12m >= u64::from(cfg.stick_min_purchases)
        || (f.purchases_12m >= 1
            && cfg.stick_min_visits > 0
            && f.visits_12m >= u64::from(cfg.stick_min_visits));
    if !sticks {
        return Stage::Activate;
    }
    if f.purchasing_referrals >= cfg.refer_min_referrals {
        Stage::Refer
    } else if f.level.is_at_or_above(cfg.value_min_level) {
        Stage::Value
    } else {
        Stage::Stick
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A sticking top-20 member seen yesterday, no referrals, no model.
    fn base() -> StageFacts {
        StageFacts {
            purchases_ever: 5,
            purchases_12m: 3,
            visits_12m: 6,
            recency_days: Some(1),
            level: Level::Top10,
            purchasing_referrals: 0,
            p_alive: None,
        }
    }

    #[test]
    fn each_rule_gives_its_stage() {
        let cfg = StageConfig::default();
        let cases: Vec<(&str, StageFacts, Stage)> = vec![
            (
                "never purchased, even with visits",
                StageFacts {
                    purchases_ever: 0,
                    purchases_12m: 0,
                    visits_12m: 9,
                    ..base()
                },
                Stage::Acquire,
            ),
            (
                "a first purchase",
                StageFacts {
                    purchases_ever: 1,
                    purchases_12m: 1,
                    visits_12m: 1,
                    level: Level::Rest,
                    ..base()
                },
                Stage::Activate,
            ),
            (
                "a repeat purchase",
                StageFacts {
                    purchases_12m: 2,
                    level: Level::Rest,
                    ..base()
                },
                Stage::Stick,
            ),
            (
                "one purchase and four visits",
                StageFacts {
                    purchases_12m: 1,
                    visits_12m: 4,
                    level: Level::Rest,
                    ..base()
                },
                Stage::Stick,
            ),
            (
                "one purchase and three visits",
                StageFacts {
                    purchases_12m: 1,
                    visits_12m: 3,
                    level: Level::Rest,
                    ..base()
                },
                Stage::Activate,
            ),
            ("sticking in the top 20%", base(), Stage::Value),
            (
                "sticking just outside the top 20%",
                StageFacts {
                    level: Level::Rest,
                    ..base()
                },
                Stage::Stick,
            ),
            (
                "a value member who referred a buyer",
                StageFacts {
                    purchasing_referrals: 1,
                    ..base()
                },
                Stage::Refer,
            ),
            (
                "a sticking rest member who referred a buyer",
                StageFacts {
                    purchasing_referrals: 2,
                    level: Level::Rest,
                    ..base()
                },
                Stage::Refer,
            ),
            (
                "a referrer who does not stick",
                StageFacts {
                    purchases_12m: 1,
                    visits_12m: 0,
                    purchasing_referrals: 3,
                    ..base()
                },
                Stage::Activate,
            ),
            (
                "a year of silence",
                StageFacts {
                    recency_days: Some(365),
                    ..base()
                },
                Stage::Lapsed,
            ),
            (
                "364 days of silence",
                StageFacts {
                    recency_days: Some(364),
                    ..base()
                },
                Stage::Value,
            ),
            (
                "the model says gone",
                StageFacts {
                    p_alive: Some(0.05),
                    ..base()
                },
                Stage::Lapsed,
            ),
            (
                "the model says probably here",
                StageFacts {
                    p_alive: Some(0.5),
                    ..base()
                },
                Stage::Value,
            ),
            (
                "an old buyer who still visits but bought nothing this year",
                StageFacts {
                    purchases_12m: 0,
                    visits_12m: 5,
                    recency_days: Some(20),
                    ..base()
                },
                Stage::Activate,
            ),
        ];
        for (what, facts, want) in cases {
            assert_eq!(stage(&facts, &cfg), want, "{what}");
        }
    }

    #[test]
    fn lapsed_takes_precedence_over_refer_and_value() {
        let facts = StageFacts {
            recency_days: Some(400),
            purchasing_referrals: 4,
            level: Level::Top2,
            ..base()
        };
        assert_eq!(stage(&facts, &StageConfig::default()), Stage::Lapsed);
    }

    #[test]
    fn a_zero_visit_threshold_turns_the_visit_path_off() {
        let cfg = StageConfig {
            stick_min_visits: 0,
            ..StageConfig::default()
        };
        let facts = StageFacts {
            purchases_12m: 1,
            visits_12m: 50,
            ..base()
        };
        assert_eq!(stage(&facts, &cfg), Stage::Activate);
    }

    #[test]
    fn stages_serialize_as_the_api_spells_them() {
        assert_eq!(serde_json::to_string(&Stage::Refer).unwrap(), r#""refer""#);
        assert_eq!(Stage::Lapsed.to_string(), "lapsed");
    }
}
