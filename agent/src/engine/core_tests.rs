//! The engine's functional core as tables: timelines of sightings and scans in, outputs out.

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
    let index = Members::in_memory(1, &members);
    let presence = Presence::new(
        PresenceParams {
            arrive_sightings: 2,
            arrive_window_ms: 10_000,
            depart_after_ms: 60_000,
            min_rssi: -90,
            ..PresenceParams::default()
        },
        "gw-boot".into(),
    );
    let rules = Rules::parse(include_str!("../../examples/rules.toml"), "rules").unwrap();
    Core::new(index, presence, rules, Metrics::default())
}

#[test]
fn the_tick_swaps_in_window_tables_built_elsewhere_and_then_a_rotating_id_resolves() {
    use instore_protocol::rotating::{day_key, frame, shipped_days, window_of_ms};
    let secret = [9u8; 32];
    let now = crate::now_ms();
    let keys: Vec<String> = shipped_days(now)
        .map(|d| {
            format!(
                r#"{{"kind":"rotating_day_key","day":{d},"key":"{}"}}"#,
                hex::encode(day_key(&secret, d))
            )
        })
        .collect();
    let (records, _) = instore_protocol::parse_ndjson(&format!(
        r#"{{"member_id":"R","display_name":"r","tier":"gold","consent":{{"presence":true}},"identifiers":[{}]}}"#,
        keys.join(",")
    ));
    let metrics = Metrics::default();
    let rules = Rules::parse("", "rules").unwrap();
    let presence = Presence::new(PresenceParams::default(), "gw-boot".into());
    let index = Members::in_memory(1, &records);
    let mut c = Core::new(index, presence, rules, metrics.clone());
    let w = window_of_ms(now);
    let day = instore_protocol::rotating::day_of_window(w);
    let sighting = Sighting {
        zone: Arc::from("entrance"),
        at_ms: 0,
        advert: Advert {
            address: [0x20, 0, 0, 0, 0, 1],
            address_type: AddressType::Random,
            rssi: -60,
            manufacturer_data: vec![(0x004c, frame(&day_key(&secret, day), w, -59).to_vec())],
            service_data: vec![],
        },
    };
    let mut out = Vec::new();
    // Before any tick: no table, and the sighting does not build one.
    c.on_sighting(&sighting, &mut out);
    assert_eq!(
        (metrics.identified.get(), metrics.id_table_builds.get()),
        (0, 0)
    );
    c.on_tick(0, &mut out);
    c.prepare_id_tables_and_wait(0);
    c.on_sighting(&sighting, &mut out);
    assert_eq!(metrics.identified.get(), 1);
    assert_eq!(metrics.id_table_builds.get(), 4, "w-1..=w+2");
    assert_eq!(metrics.id_table_inline_builds.get(), 0);
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
        .filter_map(|o| match o {
            Output::Event { body, .. } | Output::Alert { body, .. } => Some(body.kind()),
            Output::Action(_) | Output::Lookup(_) => None,
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
fn the_alert_card_carries_head_offices_visit_figures_and_says_expected_back_until_overdue() {
    let minor = vip_minor();
    let mut members = sim::population(40);
    let m = &mut members[usize::from(minor) - 1];
    m.level = Some("top2".into());
    m.visits_12m = Some(11);
    m.expected_next_visit = Some("2999-01-01".into());
    m.overdue_after = Some("2999-01-08".into());
    let presence = Presence::new(
        PresenceParams {
            arrive_sightings: 2,
            ..PresenceParams::default()
        },
        "gw".into(),
    );
    let rules = Rules::parse(include_str!("../../examples/rules.toml"), "r").unwrap();
    let mut c = Core::new(
        Members::in_memory(1, &members),
        presence,
        rules,
        Metrics::default(),
    );
    let mut out = Vec::new();
    c.on_sighting(&member_sighting(minor, 0), &mut out);
    c.on_sighting(&member_sighting(minor, 1000), &mut out);
    let card = out
        .iter()
        .find_map(|o| match o {
            Output::Alert { alert, .. } => Some(alert.member.clone()),
            _ => None,
        })
        .expect("an arrival alert");
    assert_eq!(card.level.as_deref(), Some("top2"));
    assert_eq!(card.visits_12m, Some(11));
    assert!(card.last_visit.is_some());
    assert_eq!(card.expected_next_visit.as_deref(), Some("2999-01-01"));
    assert_eq!(
        card.overdue_days, None,
        "not overdue: the card says expected back"
    );
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
    c.set_members(Members::in_memory(2, &[]), 5000, &mut out);
    assert_eq!(kinds(&out), ["depart"]);
}

#[test]
fn an_opted_out_member_is_never_tracked_only_counted_anonymously() {
    let mut c = core();
    let pop = sim::population(40);
    let i = pop
        .iter()
        .position(|m| !m.consent.presence)
        .expect("the population has an opted-out member");
    let minor = (i + 1) as u16;
    let mut out = Vec::new();
    for t in 0..=120 {
        c.on_sighting(&member_sighting(minor, t * 1000), &mut out);
        c.on_tick(t * 1000, &mut out);
    }
    assert!(c.present(|ms| ms as i64).is_empty());
    assert_eq!(c.presence.tracked(), 0);
    assert_eq!(
        kinds(&out),
        ["footfall"; 2],
        "the opted-out phone is only footfall"
    );
}

#[test]
fn the_footfall_key_is_kept_within_a_day_and_replaced_after_it() {
    let mut f = Footfall::new(0);
    let a = [0x40, 1, 2, 3, 4, 5];
    let first = f.digest(&a);
    let mut t = 0;
    while t < SALT_LIFETIME_MS - FOOTFALL_INTERVAL_MS {
        t += FOOTFALL_INTERVAL_MS;
        f.observe(&a);
        assert_eq!(
            f.tick(t),
            Some(EventBody::Footfall {
                interval_s: 60,
                unique_devices: 1
            })
        );
        assert_eq!(f.digest(&a), first, "same key within the day (t = {t})");
    }
    t += FOOTFALL_INTERVAL_MS;
    f.observe(&a);
    assert!(f.tick(t).is_some());
    let second = f.digest(&a);
    assert_ne!(second, first, "a new key after a day");
    let other = [0x40, 9, 9, 9, 9, 9];
    f.observe(&a);
    f.observe(&other);
    f.observe(&a);
    assert_eq!(
        f.tick(t + FOOTFALL_INTERVAL_MS),
        Some(EventBody::Footfall {
            interval_s: 60,
            unique_devices: 2
        }),
        "counting goes on across the rotation"
    );
}

#[test]
fn a_dwell_becomes_an_event_and_the_depart_lists_the_zones() {
    let mut c = core();
    let mut out = Vec::new();
    let minor = vip_minor();
    for t in 0..=70 {
        c.on_sighting(&member_sighting(minor, t * 1000), &mut out);
        c.on_tick(t * 1000, &mut out);
    }
    c.on_tick(200_000, &mut out);
    let events: Vec<&EventBody> = out
        .iter()
        .filter_map(|o| match o {
            Output::Event { body, .. } => Some(body),
            _ => None,
        })
        .collect();
    assert!(
        events.iter().any(|b| matches!(
            b,
            EventBody::Dwell { dwell_s: 60, zone, .. } if zone == "entrance"
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|b| matches!(
            b,
            EventBody::Depart { zones, dwell_s: 70, .. } if zones == &["entrance"]
        )),
        "{events:?}"
    );
}

#[test]
fn a_present_member_gets_a_planned_birthday_alert_from_the_schedule_once() {
    let minor = vip_minor();
    let mut members = sim::population(40);
    members[usize::from(minor) - 1].birthday = Some("01-01".into());
    let index = Members::in_memory(1, &members);
    let presence = Presence::new(PresenceParams::default(), "gw".into());
    // Monotonic 0 is 1970-01-01 00:00 here: not yet 00:05 on arrival, so only the
    // schedule can fire the rule.
    let rules = Rules::parse(
        "[[rules]]\nname = \"bday\"\non = \"birthday_week\"\nhours = \"00:05-23:00\"\nmessage = \"m\"\n",
        "r",
    )
    .unwrap();
    let metrics = Metrics::default();
    let mut c = Core::new(index, presence, rules, metrics.clone());
    let mut out = Vec::new();
    for t in (0..=400_000).step_by(20_000) {
        c.on_sighting(&member_sighting(minor, t), &mut out);
        c.on_sighting(&member_sighting(minor, t + 1000), &mut out);
        c.on_tick(t + 1500, &mut out);
    }
    let alerts: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Alert { at_ms, .. } => Some(*at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{:?}", kinds(&out));
    assert!(alerts[0] >= 300_000, "only once it is 00:05: {alerts:?}");
}

#[test]
fn a_bad_qr_code_is_counted_by_error_and_raises_nothing() {
    let metrics = Metrics::default();
    let mut c = Core::new(
        Members::in_memory(1, &sim::population(10)),
        Presence::new(PresenceParams::default(), "gw".into()),
        Rules::parse(include_str!("../../examples/rules.toml"), "r").unwrap(),
        metrics.clone(),
    );
    let mut out = Vec::new();
    c.on_qr("till", "https://example.com/not-ours", 5, 5, &mut out);
    assert!(out.is_empty());
    let n = metrics
        .qr_rejected
        .get_or_create(&vec![("error", "format".to_string())])
        .get();
    assert_eq!(n, 1);
}
