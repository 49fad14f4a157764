//! The rules file: its TOML shape, and the checks that turn a rule's spec into a [`Rule`] the
//! evaluation can trust (triggers and their keys, templates, hours, consents, webhook URLs). A
//! bad rule is refused here with its name and line, so it never reaches an occasion.

use instore_protocol::AlertPriority;
use serde::Deserialize;

use super::{Trigger, actions, calendar::HoursRange, template::Template};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RulesFile {
    #[serde(default)]
    pub(super) rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    pub(super) name: String,
    pub(super) on: Trigger,
    /// Member tier must be one of these (empty: any).
    #[serde(default)]
    pub(super) tiers: Vec<String>,
    /// Lifecycle stage must be one of these (empty: any).
    #[serde(default)]
    pub(super) stages: Vec<String>,
    /// Member must carry at least one of these tags (empty: any).
    #[serde(default)]
    pub(super) tags_any: Vec<String>,
    /// Member must carry all of these tags.
    #[serde(default)]
    pub(super) tags_all: Vec<String>,
    /// Member must carry none of these tags.
    #[serde(default)]
    pub(super) tags_none: Vec<String>,
    /// Member must belong to at least one of these groups (empty: any).
    #[serde(default)]
    pub(super) groups: Vec<String>,
    /// A consent the member must have given ("presence" always holds for a tracked member).
    #[serde(default)]
    pub(super) consent: Option<String>,
    /// Local time of day, `"10:00-18:00"` (may wrap midnight).
    #[serde(default)]
    pub(super) hours: Option<String>,
    /// Zone must be one of these (empty: any).
    #[serde(default)]
    pub(super) zones: Vec<String>,
    /// `on = "dwell"`: seconds in the zone.
    #[serde(default)]
    pub(super) dwell_s: Option<u64>,
    /// `on = "overdue"`: days past head office's `overdue_after` date (at least 1) when the
    /// record has one; else days since the last visit (or, for a record without one, the last
    /// purchase).
    #[serde(default)]
    pub(super) overdue_days: Option<u32>,
    /// `on = "birthday_week"`: days either side of the birthday (default 3: a week).
    #[serde(default)]
    pub(super) birthday_days: Option<u32>,
    #[serde(default = "default_priority")]
    pub(super) priority: AlertPriority,
    /// The clerk alert's text; without it the rule raises no clerk alert (actions only).
    #[serde(default)]
    pub(super) message: Option<String>,
    /// The one thing the clerk is suggested to do for this member (template, shown on the
    /// alert's member card), e.g. "Offer {display_name} the autumn preview".
    #[serde(default)]
    pub(super) suggest: Option<String>,
    #[serde(default)]
    pub(super) mqtt: Option<MqttSpec>,
    #[serde(default)]
    pub(super) webhook: Option<WebhookSpec>,
    /// The same rule reacts to the same member at most once per cooldown.
    #[serde(default = "default_cooldown_s")]
    pub(super) cooldown_s: u64,
    /// Share of members (0 to 0.5) kept as this rule's control group: they get no alert and no
    /// action, a `held_out` event goes to head office instead, which measures the uplift.
    /// Which members is fixed by rule name and member id ([`instore_protocol::holdout`]).
    #[serde(default)]
    pub(super) holdout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MqttSpec {
    /// Template, e.g. `"instore/store-001/greet/{zone}"`.
    pub(super) topic: String,
    /// Template; default: the reaction as JSON (as the webhook body).
    #[serde(default)]
    pub(super) payload: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookSpec {
    pub(super) url: String,
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub(super) retries: u32,
    #[serde(default = "default_backoff_ms")]
    pub(super) backoff_ms: u64,
}

pub(super) fn default_priority() -> AlertPriority {
    AlertPriority::Normal
}
pub(super) fn default_cooldown_s() -> u64 {
    3600
}
pub(super) fn default_timeout_ms() -> u64 {
    5000
}
pub(super) fn default_retries() -> u32 {
    4
}
pub(super) fn default_backoff_ms() -> u64 {
    500
}

#[derive(Debug)]
pub(super) struct MqttAction {
    pub(super) topic: Template,
    pub(super) payload: Option<Template>,
}

#[derive(Debug)]
pub(super) struct Rule {
    pub(super) name: String,
    pub(super) on: Trigger,
    pub(super) tiers: Vec<String>,
    pub(super) stages: Vec<String>,
    pub(super) tags_any: Vec<String>,
    pub(super) tags_all: Vec<String>,
    pub(super) tags_none: Vec<String>,
    pub(super) groups: Vec<String>,
    pub(super) consent: Option<String>,
    pub(super) hours: Option<HoursRange>,
    pub(super) zones: Vec<String>,
    pub(super) dwell_s: u64,
    pub(super) overdue_days: i64,
    pub(super) birthday_days: u32,
    pub(super) priority: AlertPriority,
    pub(super) message: Option<Template>,
    pub(super) suggest: Option<Template>,
    pub(super) mqtt: Option<MqttAction>,
    pub(super) webhook: Option<WebhookSpec>,
    pub(super) cooldown_ms: u64,
    /// 0: nobody held out.
    pub(super) holdout: f64,
}

/// Presence consent is implied (members without it are never indexed); marketing consent is the
/// record's flag. Rule loading refuses any other name, so no consent is ever assumed.
pub(super) const CONSENTS: [&str; 2] = ["presence", "marketing"];

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

pub(super) fn build_rule(spec: RuleSpec) -> Result<Rule, String> {
    let on = spec.on;
    let only_for = |set: bool, key: &str, trigger: Trigger| {
        if set && on != trigger {
            Err(format!(
                "{key} only applies to on = \"{}\"",
                trigger.as_str()
            ))
        } else {
            Ok(())
        }
    };
    only_for(spec.dwell_s.is_some(), "dwell_s", Trigger::Dwell)?;
    only_for(
        spec.overdue_days.is_some(),
        "overdue_days",
        Trigger::Overdue,
    )?;
    only_for(
        spec.birthday_days.is_some(),
        "birthday_days",
        Trigger::BirthdayWeek,
    )?;
    if on == Trigger::Dwell && spec.dwell_s.is_none() {
        return Err("a dwell rule needs dwell_s (seconds in the zone)".into());
    }
    if on == Trigger::Overdue && spec.overdue_days.is_none() {
        return Err("an overdue rule needs overdue_days".into());
    }
    if spec.message.is_none() && spec.mqtt.is_none() && spec.webhook.is_none() {
        return Err("a rule needs a message (clerk alert), mqtt or webhook".into());
    }
    if spec.birthday_days.is_some_and(|d| d > 183) {
        return Err("birthday_days must be at most 183".into());
    }
    if let Some(c) = spec.consent.as_deref()
        && !CONSENTS.contains(&c)
    {
        return Err(format!(
            "unknown consent {c:?} (the member record has \"presence\" and \"marketing\")"
        ));
    }
    if let Some(share) = spec.holdout {
        instore_protocol::holdout::check_share(share)?;
        if spec.message.is_none() {
            return Err(
                "holdout measures clerk alerts against a control group: the rule needs a message"
                    .into(),
            );
        }
    }
    let hours = spec.hours.as_deref().map(HoursRange::parse).transpose()?;
    let message = spec.message.as_deref().map(Template::parse).transpose()?;
    if spec.suggest.is_some() && message.is_none() {
        return Err("suggest is shown on the clerk alert: the rule needs a message".into());
    }
    let suggest = spec.suggest.as_deref().map(Template::parse).transpose()?;
    let mqtt = match spec.mqtt {
        Some(m) => {
            if m.topic.is_empty() || m.topic.contains(['+', '#']) {
                return Err(format!(
                    "mqtt topic {:?} must be non-empty with no + or # wildcards",
                    m.topic
                ));
            }
            Some(MqttAction {
                topic: Template::parse(&m.topic)?,
                payload: m.payload.as_deref().map(Template::parse).transpose()?,
            })
        }
        None => None,
    };
    if let Some(w) = &spec.webhook {
        actions::check_webhook_url(&w.url)?;
        if w.timeout_ms == 0 || w.retries > 20 {
            return Err("webhook timeout_ms must be above 0 and retries at most 20".into());
        }
    }
    Ok(Rule {
        name: spec.name,
        on,
        tiers: spec.tiers,
        stages: spec.stages,
        tags_any: spec.tags_any,
        tags_all: spec.tags_all,
        tags_none: spec.tags_none,
        groups: spec.groups,
        consent: spec.consent,
        hours,
        zones: spec.zones,
        dwell_s: spec.dwell_s.unwrap_or(0),
        overdue_days: i64::from(spec.overdue_days.unwrap_or(0)),
        birthday_days: spec.birthday_days.unwrap_or(3),
        priority: spec.priority,
        message,
        suggest,
        mqtt,
        webhook: spec.webhook,
        cooldown_ms: spec.cooldown_s.saturating_mul(1000),
        holdout: spec.holdout.unwrap_or(0.0),
    })
}
