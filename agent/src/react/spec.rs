//! A checked rule spec ([`instore_protocol::rules`]: the TOML shape and every check, shared with
//! head office's campaigns) turned into the [`Rule`] the evaluation uses: templates and hours
//! parsed once.

use instore_protocol::{
    AlertPriority,
    rules::{RuleSpec, WebhookSpec},
};

use super::{Trigger, calendar::HoursRange, template::Template};

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
    /// `id@version` of the head-office campaign the rule came from; `None`: the store's file.
    pub(super) campaign: Option<String>,
}

pub(super) fn build_rule(spec: RuleSpec, campaign: Option<String>) -> Result<Rule, String> {
    // Checked by `rules::parse_rules` already; what can still fail is only re-parsing.
    let on = spec.on;
    let hours = spec.hours.as_deref().map(HoursRange::parse).transpose()?;
    let message = spec.message.as_deref().map(Template::parse).transpose()?;
    let suggest = spec.suggest.as_deref().map(Template::parse).transpose()?;
    let mqtt = match spec.mqtt {
        Some(m) => Some(MqttAction {
            topic: Template::parse(&m.topic)?,
            payload: m.payload.as_deref().map(Template::parse).transpose()?,
        }),
        None => None,
    };
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
        campaign,
    })
}
