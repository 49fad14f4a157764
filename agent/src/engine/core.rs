use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use instore_protocol::EventBody;

use crate::{
    alerts::{Alert, MemberCard},
    cache::{Member, MemberIndex},
    identify::{Identification, identify},
    metrics::Metrics,
    presence::{Presence, PresenceChange, PresentMember},
    react::{Rules, Trigger},
    sources::Sighting,
};

/// What the core asks the shell to do. Times are the agent's monotonic milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Event {
        at_ms: u64,
        body: EventBody,
    },
    /// An alert and its `alert_raised` event: the alert goes to the clerks only after the event
    /// is committed.
    Alert {
        at_ms: u64,
        body: EventBody,
        alert: Box<Alert>,
    },
}

const FOOTFALL_INTERVAL_MS: u64 = 60_000;
const SALT_LIFETIME_MS: u64 = 24 * 3_600_000;
/// Distinct strangers remembered per interval; past this they are still counted, not stored.
const FOOTFALL_CAP: usize = 50_000;

/// Anonymous footfall: distinct non-member devices per minute, remembered only as keyed hashes
/// whose key lives in memory and is replaced daily, so no address can be recovered or linked
/// across days.
#[derive(Debug)]
struct Footfall {
    key: RandomState,
    key_since_ms: u64,
    interval_start_ms: u64,
    seen: HashSet<u64>,
    overflow: u64,
}

impl Footfall {
    fn new(now_ms: u64) -> Self {
        Self {
            key: RandomState::new(),
            key_since_ms: now_ms,
            interval_start_ms: now_ms,
            seen: HashSet::new(),
            overflow: 0,
        }
    }

    fn observe(&mut self, address: &[u8; 6]) {
        let h = self.key.hash_one(address);
        if self.seen.len() < FOOTFALL_CAP {
            self.seen.insert(h);
        } else if !self.seen.contains(&h) {
            self.overflow += 1;
        }
    }

    fn tick(&mut self, now_ms: u64) -> Option<EventBody> {
        if now_ms.saturating_sub(self.interval_start_ms) < FOOTFALL_INTERVAL_MS {
            return None;
        }
        let unique = self.seen.len() as u64 + self.overflow;
        self.seen.clear();
        self.overflow = 0;
        self.interval_start_ms = now_ms;
        if now_ms.saturating_sub(self.key_since_ms) >= SALT_LIFETIME_MS {
            self.key = RandomState::new();
            self.key_since_ms = now_ms;
        }
        (unique > 0).then_some(EventBody::Footfall {
            interval_s: FOOTFALL_INTERVAL_MS / 1000,
            unique_devices: unique,
        })
    }
}

/// Identify → presence → react, as one piece of state with no I/O.
#[derive(Debug)]
pub struct Core {
    index: Arc<MemberIndex>,
    presence: Presence,
    rules: Rules,
    metrics: Metrics,
    footfall: Footfall,
    presence_changed: bool,
}

impl Core {
    pub fn new(
        index: Arc<MemberIndex>,
        presence: Presence,
        rules: Rules,
        metrics: Metrics,
    ) -> Self {
        metrics.members_cached.set(index.len() as i64);
        Self {
            index,
            presence,
            rules,
            metrics,
            footfall: Footfall::new(0),
            presence_changed: true,
        }
    }

    pub fn on_sighting(&mut self, s: &Sighting, out: &mut Vec<Output>) {
        match identify(&s.advert, &self.index) {
            Identification::Member(member) => {
                self.metrics.identified.inc();
                if let Some(change) =
                    self.presence
                        .observe(&member, &s.zone, s.advert.rssi, s.at_ms)
                {
                    self.apply(change, out);
                }
            }
            Identification::Stranger => {
                self.metrics.strangers.inc();
                self.footfall.observe(&s.advert.address);
            }
        }
    }

    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        for change in self.presence.tick(now_ms) {
            self.apply(change, out);
        }
        if let Some(body) = self.footfall.tick(now_ms) {
            out.push(Output::Event {
                at_ms: now_ms,
                body,
            });
        }
        self.rules.prune(now_ms);
    }

    /// Swaps in a new member set; members no longer in it (consent withdrawn, removed) stop being
    /// tracked at once.
    pub fn set_members(&mut self, index: Arc<MemberIndex>, now_ms: u64, out: &mut Vec<Output>) {
        self.index = index;
        let index = self.index.clone();
        for change in self
            .presence
            .forget_unless(|id| index.member(id).is_some(), now_ms)
        {
            self.apply(change, out);
        }
    }

    pub fn replace_rules(&mut self, rules: Rules) {
        self.rules.replace(rules);
    }

    /// Whether the set of present members changed since the last call.
    pub fn take_presence_changed(&mut self) -> bool {
        std::mem::take(&mut self.presence_changed)
    }

    pub fn present(&self, wall: impl Fn(u64) -> i64) -> Vec<PresentMember> {
        self.presence.present(wall)
    }

    fn apply(&mut self, change: PresenceChange, out: &mut Vec<Output>) {
        self.presence_changed = true;
        let (trigger, member, zone, at_ms, body) = match change {
            PresenceChange::Arrive {
                member,
                zone,
                visit_id,
                at_ms,
            } => {
                let body = EventBody::Arrive {
                    member_id: member.member_id.clone(),
                    zone: zone.to_string(),
                    visit_id,
                };
                (Trigger::Arrive, member, zone, at_ms, body)
            }
            PresenceChange::Depart {
                member,
                zone,
                visit_id,
                at_ms,
                dwell_ms,
            } => {
                let body = EventBody::Depart {
                    member_id: member.member_id.clone(),
                    zone: zone.to_string(),
                    visit_id,
                    dwell_s: dwell_ms / 1000,
                };
                (Trigger::Depart, member, zone, at_ms, body)
            }
        };
        self.metrics
            .presence_events
            .get_or_create(&vec![("kind", body.kind())])
            .inc();
        out.push(Output::Event { at_ms, body });
        let (reaction, suppressed) = self.rules.react(trigger, &member, &zone, at_ms);
        self.metrics.alerts_suppressed.inc_by(u64::from(suppressed));
        if let Some(r) = reaction {
            out.push(alert_output(&member, &zone, at_ms, r));
        }
    }
}

fn alert_output(member: &Member, zone: &str, at_ms: u64, r: crate::react::Reaction) -> Output {
    let id = uuid::Uuid::new_v4().to_string();
    let body = EventBody::AlertRaised {
        alert_id: id.clone(),
        rule: r.rule.clone(),
        member_id: member.member_id.clone(),
        priority: r.priority,
        message: r.message.clone(),
    };
    let alert = Alert {
        id,
        seq: 0,
        raised_at_ms: 0,
        rule: r.rule,
        priority: r.priority,
        message: r.message,
        zone: zone.to_string(),
        member: MemberCard {
            member_id: member.member_id.clone(),
            display_name: member.display_name.clone(),
            tier: member.tier.clone(),
            stage: member.stage.clone(),
            tags: member.tags.clone(),
            last_purchase: member.last_purchase.clone(),
        },
    };
    Output::Alert {
        at_ms,
        body,
        alert: Box::new(alert),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        presence::PresenceParams,
        sources::{
            AddressType, Advert,
            sim::{self, SIM_UUID},
        },
    };

    fn core() -> Core {
        let members = sim::population(40);
        let index = Arc::new(MemberIndex::build(1, &members));
        let presence = Presence::new(
            PresenceParams {
                arrive_sightings: 2,
                arrive_window_ms: 10_000,
                depart_after_ms: 60_000,
                min_rssi: -90,
            },
            "gw-boot".into(),
        );
        let rules = Rules::parse(include_str!("../../examples/rules.toml"), "rules").unwrap();
        Core::new(index, presence, rules, Metrics::default())
    }

    fn member_sighting(minor: u16, at_ms: u64) -> Sighting {
        Sighting {
            zone: Arc::from("entrance"),
            at_ms,
            advert: Advert {
                address: [0xdb, 0, 0, 0, 0, minor as u8],
                address_type: AddressType::Random,
                rssi: -60,
                manufacturer_data: vec![(0x004c, sim::ibeacon_payload(&SIM_UUID, 100, minor, -59))],
                service_data: vec![],
            },
        }
    }

    fn stranger(n: u8, at_ms: u64) -> Sighting {
        Sighting {
            zone: Arc::from("entrance"),
            at_ms,
            advert: Advert {
                address: [0x40, 1, 2, 3, 4, n],
                address_type: AddressType::Random,
                rssi: -60,
                manufacturer_data: vec![(0x004c, vec![0x10, 0x05, 1])],
                service_data: vec![],
            },
        }
    }

    fn kinds(out: &[Output]) -> Vec<&'static str> {
        out.iter()
            .map(|o| match o {
                Output::Event { body, .. } | Output::Alert { body, .. } => body.kind(),
            })
            .collect()
    }

    /// The first platinum or gold member of the simulated population.
    fn vip_minor() -> u16 {
        let pop = sim::population(40);
        let i = pop
            .iter()
            .position(|m| (m.tier == "platinum" || m.tier == "gold") && m.consent.presence)
            .expect("the population has a VIP");
        (i + 1) as u16
    }

    #[test]
    fn a_vip_walking_in_and_out_gives_arrive_alert_then_depart() {
        let mut c = core();
        let mut out = Vec::new();
        let minor = vip_minor();
        c.on_sighting(&member_sighting(minor, 0), &mut out);
        c.on_sighting(&member_sighting(minor, 1000), &mut out);
        assert_eq!(kinds(&out), ["arrive", "alert_raised"]);
        let Output::Alert { alert, .. } = &out[1] else {
            panic!()
        };
        assert_eq!(alert.member.member_id, format!("M{minor:06}"));
        assert!(c.take_presence_changed());
        assert_eq!(c.present(|ms| ms as i64).len(), 1);
        out.clear();
        c.on_tick(61_000, &mut out);
        assert_eq!(kinds(&out), ["depart"]);
        assert!(c.present(|ms| ms as i64).is_empty());
    }

    #[test]
    fn strangers_are_only_counted_as_anonymous_footfall() {
        let mut c = core();
        let mut out = Vec::new();
        for i in 0..30 {
            c.on_sighting(&stranger(i % 10, u64::from(i) * 100), &mut out);
        }
        assert!(out.is_empty());
        c.on_tick(60_000, &mut out);
        assert_eq!(
            out,
            [Output::Event {
                at_ms: 60_000,
                body: EventBody::Footfall {
                    interval_s: 60,
                    unique_devices: 10
                }
            }]
        );
    }

    #[test]
    fn a_member_removed_from_the_cache_departs_at_once() {
        let mut c = core();
        let mut out = Vec::new();
        let minor = vip_minor();
        c.on_sighting(&member_sighting(minor, 0), &mut out);
        c.on_sighting(&member_sighting(minor, 1), &mut out);
        out.clear();
        c.set_members(Arc::new(MemberIndex::default()), 5000, &mut out);
        assert_eq!(kinds(&out), ["depart"]);
    }
}
