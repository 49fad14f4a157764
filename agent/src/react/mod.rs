//! React: decides which presence changes deserve a clerk alert.
//!
//! In: a trigger (arrive, depart) for a member in a zone at a time. Out: at most one [`Reaction`]
//! per trigger — the highest-priority matching rule not in its per-member cooldown — so one
//! arrival never becomes three alerts. Pure: the rules file is parsed by [`Rules::parse`], and
//! time comes in as milliseconds of the agent's monotonic clock.
//!
//! The rules file (`[react] rules` in the agent config) is TOML; see `agent/examples/rules.toml`.

mod template;

use std::collections::HashMap;

use instore_protocol::AlertPriority;
use serde::Deserialize;

use crate::{cache::Member, config::line_of_key};
pub use template::Template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Arrive,
    Depart,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    on: Trigger,
    /// Member tier must be one of these (empty: any).
    #[serde(default)]
    tiers: Vec<String>,
    /// Lifecycle stage must be one of these (empty: any).
    #[serde(default)]
    stages: Vec<String>,
    /// Member must carry at least one of these tags (empty: any).
    #[serde(default)]
    tags_any: Vec<String>,
    /// Zone must be one of these (empty: any).
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default = "default_priority")]
    priority: AlertPriority,
    message: String,
    /// The same rule alerts on the same member at most once per cooldown.
    #[serde(default = "default_cooldown_s")]
    cooldown_s: u64,
}

fn default_priority() -> AlertPriority {
    AlertPriority::Normal
}
fn default_cooldown_s() -> u64 {
    3600
}

#[derive(Debug)]
struct Rule {
    name: String,
    on: Trigger,
    tiers: Vec<String>,
    stages: Vec<String>,
    tags_any: Vec<String>,
    zones: Vec<String>,
    priority: AlertPriority,
    message: Template,
    cooldown_ms: u64,
}

impl Rule {
    fn matches(&self, trigger: Trigger, m: &Member, zone: &str) -> bool {
        let any_or = |set: &[String], v: &str| set.is_empty() || set.iter().any(|s| s == v);
        self.on == trigger
            && any_or(&self.tiers, &m.tier)
            && (self.stages.is_empty()
                || m.stage.as_deref().is_some_and(|s| any_or(&self.stages, s)))
            && (self.tags_any.is_empty() || m.tags.iter().any(|t| self.tags_any.contains(t)))
            && any_or(&self.zones, zone)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: rule {rule:?} (line {line}): {reason}")]
    Invalid {
        path: String,
        rule: String,
        line: usize,
        reason: String,
    },
}

/// What a rule decided: alert the clerks.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaction {
    pub rule: String,
    pub priority: AlertPriority,
    pub message: String,
}

/// The rule set plus its cooldown memory. Reloading keeps the memory (keyed by rule name), so a
/// reload does not re-alert everyone present.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    last_fired: HashMap<(String, String), u64>,
}

impl Rules {
    pub fn load(path: &std::path::Path) -> Result<Self, RulesError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for spec in file.rules {
            let line = text
                .lines()
                .position(|l| l.contains(&format!("\"{}\"", spec.name)))
                .map_or_else(|| line_of_key(text, "name"), |i| i + 1);
            let invalid = |reason: String| RulesError::Invalid {
                path: origin.into(),
                rule: spec.name.clone(),
                line,
                reason,
            };
            if spec.name.trim().is_empty() {
                return Err(invalid("name must not be empty".into()));
            }
            if rules.iter().any(|r: &Rule| r.name == spec.name) {
                return Err(invalid("two rules share this name".into()));
            }
            let message = Template::parse(&spec.message).map_err(invalid)?;
            rules.push(Rule {
                name: spec.name,
                on: spec.on,
                tiers: spec.tiers,
                stages: spec.stages,
                tags_any: spec.tags_any,
                zones: spec.zones,
                priority: spec.priority,
                message,
                cooldown_ms: spec.cooldown_s.saturating_mul(1000),
            });
        }
        // Highest priority first; file order breaks ties.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(Self {
            rules,
            last_fired: HashMap::new(),
        })
    }

    /// Replaces the rules, keeping cooldown memory.
    pub fn replace(&mut self, new: Rules) {
        self.rules = new.rules;
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The reaction to `trigger`, if any. A rule that matches but is cooling down for this member
    /// is skipped (counted by the caller via the `suppressed` flag), and the next rule may fire.
    pub fn react(
        &mut self,
        trigger: Trigger,
        member: &Member,
        zone: &str,
        now_ms: u64,
    ) -> (Option<Reaction>, u32) {
        let mut suppressed = 0;
        for rule in &self.rules {
            if !rule.matches(trigger, member, zone) {
                continue;
            }
            let key = (rule.name.clone(), member.member_id.clone());
            if let Some(&at) = self.last_fired.get(&key)
                && now_ms.saturating_sub(at) < rule.cooldown_ms
            {
                suppressed += 1;
                continue;
            }
            self.last_fired.insert(key, now_ms);
            let reaction = Reaction {
                rule: rule.name.clone(),
                priority: rule.priority,
                message: rule.message.render(member, zone),
            };
            return (Some(reaction), suppressed);
        }
        (None, suppressed)
    }

    /// Forgets cooldowns that have run out, so memory stays bounded by recent visitors.
    pub fn prune(&mut self, now_ms: u64) {
        let longest = self.rules.iter().map(|r| r.cooldown_ms).max().unwrap_or(0);
        self.last_fired
            .retain(|_, at| now_ms.saturating_sub(*at) < longest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[rules]]
name = "vip-arrival"
on = "arrive"
tiers = ["platinum", "gold"]
priority = "high"
message = "{display_name} ({tier}) is at the {zone}"
cooldown_s = 600

[[rules]]
name = "linen-fan"
on = "arrive"
tags_any = ["linen"]
message = "{display_name} likes {tags}"
cooldown_s = 600
"#;

    fn member(tier: &str, tags: &[&str]) -> Member {
        Member {
            member_id: "M1".into(),
            display_name: "Ms. Li".into(),
            tier: tier.into(),
            stage: Some("value".into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            groups: vec![],
            birthday: None,
            last_purchase: None,
        }
    }

    #[test]
    fn a_gold_member_arriving_gets_one_alert_from_the_highest_priority_rule() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let (reaction, _) = r.react(Trigger::Arrive, &member("gold", &["linen"]), "entrance", 0);
        let reaction = reaction.unwrap();
        assert_eq!(reaction.rule, "vip-arrival");
        assert_eq!(reaction.message, "Ms. Li (gold) is at the entrance");
        assert_eq!(reaction.priority, AlertPriority::High);
    }

    #[test]
    fn conditions_on_tier_tags_and_trigger_are_honoured() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        assert_eq!(
            r.react(Trigger::Arrive, &member("bronze", &[]), "entrance", 0)
                .0,
            None
        );
        assert_eq!(
            r.react(Trigger::Depart, &member("gold", &[]), "entrance", 0)
                .0,
            None
        );
        let linen = r
            .react(Trigger::Arrive, &member("bronze", &["linen"]), "till", 0)
            .0
            .unwrap();
        assert_eq!(linen.message, "Ms. Li likes linen");
    }

    #[test]
    fn the_cooldown_holds_back_a_repeat_then_lets_it_through() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let m = member("gold", &[]);
        assert!(r.react(Trigger::Arrive, &m, "e", 0).0.is_some());
        let (again, suppressed) = r.react(Trigger::Arrive, &m, "e", 599_999);
        assert_eq!((again, suppressed), (None, 1));
        assert!(r.react(Trigger::Arrive, &m, "e", 600_000).0.is_some());
    }

    #[test]
    fn a_reload_keeps_cooldowns() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let m = member("gold", &[]);
        assert!(r.react(Trigger::Arrive, &m, "e", 0).0.is_some());
        r.replace(Rules::parse(RULES, "t").unwrap());
        assert!(r.react(Trigger::Arrive, &m, "e", 1000).0.is_none());
    }

    #[test]
    fn a_bad_rules_file_names_the_rule_and_line() {
        let bad = RULES.replace("{display_name} likes", "{nickname} likes");
        let err = Rules::parse(&bad, "rules.toml").unwrap_err().to_string();
        assert!(
            err.contains("linen-fan") && err.contains("line 11") && err.contains("nickname"),
            "{err}"
        );
        let err = Rules::parse(
            "[[rules]]\nname = \"x\"\non = \"teleport\"\nmessage = \"\"\n",
            "r",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn the_shipped_rules_alert_on_platinum_and_gold_arrivals() {
        let mut r = Rules::parse(include_str!("../../examples/rules.toml"), "rules.toml").unwrap();
        for (tier, alerts) in [("platinum", true), ("gold", true), ("silver", false)] {
            let got = r
                .react(
                    Trigger::Arrive,
                    &Member {
                        member_id: tier.into(),
                        ..member(tier, &[])
                    },
                    "entrance",
                    0,
                )
                .0;
            assert_eq!(got.is_some(), alerts, "{tier}");
        }
    }

    proptest::proptest! {
        /// However often a member re-triggers, one rule never fires twice within its cooldown.
        #[test]
        fn cooldowns_are_never_exceeded(times in proptest::collection::vec(0u64..5_000_000, 1..200)) {
            let mut times = times;
            times.sort_unstable();
            let mut r = Rules::parse(RULES, "t").unwrap();
            let m = member("gold", &[]);
            let mut fired = Vec::new();
            for t in times {
                if let (Some(x), _) = r.react(Trigger::Arrive, &m, "e", t)
                    && x.rule == "vip-arrival"
                {
                    fired.push(t);
                }
            }
            for w in fired.windows(2) {
                proptest::prop_assert!(w[1] - w[0] >= 600_000);
            }
        }
    }
}
