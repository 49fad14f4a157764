use instore_protocol::{campaign::Campaign, member::LastPurchase};

use super::{
    calendar::{days_from_civil, parse_date},
    *,
};

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
        last_visit: None,
        consent: Default::default(),
        ..Default::default()
    }
}

/// Unix ms of a local (UTC) date and time.
fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> u64 {
    (days_from_civil(y, mo, d) * 86_400_000 + (h * 60 + mi) * 60_000) as u64
}

fn occ<'a>(what: Happening, m: &'a Member, zone: &'a str, at_ms: u64) -> Occasion<'a> {
    Occasion {
        what,
        member: m,
        zone,
        visit_id: "v1",
        at_ms,
    }
}

fn fired(r: &mut Rules, what: Happening, m: &Member, zone: &str, at_ms: u64) -> Option<String> {
    let v = r.react(&occ(what, m, zone, at_ms));
    v.alert
        .map(|a| a.rule)
        .or_else(|| v.actions.first().map(|a| format!("action:{}", a.kind())))
}

fn fixed_zone(min: i32) -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(min * 60).unwrap())
}

/// Unix ms of a Berlin wall-clock time, from the tz database: the tests name their zone and
/// never read the machine's.
fn berlin(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
    jiff::civil::date(y, mo, d)
        .at(h, mi, 0, 0)
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .unwrap()
        .timestamp()
        .as_millisecond() as u64
}

fn in_berlin(r: &mut Rules, quiet_hours: Option<&str>) {
    r.set_settings(ReactSettings {
        zone: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
        quiet_hours: quiet_hours.map(|q| HoursRange::parse(q).unwrap()),
        ..Default::default()
    });
}

fn one(rule: &str) -> Rules {
    Rules::parse(&format!("[[rules]]\nname = \"r\"\n{rule}"), "t").unwrap()
}

#[test]
fn a_gold_member_arriving_gets_one_alert_from_the_highest_priority_rule() {
    let mut r = Rules::parse(RULES, "t").unwrap();
    let m = member("gold", &["linen"]);
    let v = r.react(&occ(Happening::Arrive, &m, "entrance", 0));
    let reaction = v.alert.unwrap();
    assert_eq!(reaction.rule, "vip-arrival");
    assert_eq!(reaction.message, "Ms. Li (gold) is at the entrance");
    assert_eq!(reaction.priority, AlertPriority::High);
    assert!(v.actions.is_empty());
}

#[test]
fn conditions_on_tier_tags_and_trigger_are_honoured() {
    let mut r = Rules::parse(RULES, "t").unwrap();
    let (bronze, gold) = (member("bronze", &[]), member("gold", &[]));
    assert_eq!(fired(&mut r, Happening::Arrive, &bronze, "e", 0), None);
    assert_eq!(fired(&mut r, Happening::Depart, &gold, "e", 0), None);
    let linen = member("bronze", &["linen"]);
    let v = r.react(&occ(Happening::Arrive, &linen, "till", 0));
    assert_eq!(v.alert.unwrap().message, "Ms. Li likes linen");
}

#[test]
fn each_trigger_fires_only_on_its_own_happening() {
    let m = member("gold", &[]);
    for (on, what) in [
        ("arrive", Happening::Arrive),
        ("depart", Happening::Depart),
        ("qr_scan", Happening::QrScan),
    ] {
        let mut r = one(&format!("on = \"{on}\"\nmessage = \"hi\"\n"));
        for other in [
            Happening::Arrive,
            Happening::Depart,
            Happening::QrScan,
            Happening::Scheduled,
            Happening::Dwell { dwell_s: 9999 },
        ] {
            let got = fired(&mut r, other, &m, "e", 0);
            assert_eq!(got.is_some(), other == what, "{on} on {other:?}");
        }
    }
}

#[test]
fn a_dwell_rule_fires_once_per_visit_when_its_duration_is_reached() {
    let mut r = one(
        "on = \"dwell\"\ndwell_s = 300\nzones = [\"fitting-rooms\"]\nmessage = \"m\"\ncooldown_s = 0\n",
    );
    let m = member("gold", &[]);
    let dwell = |s| Happening::Dwell { dwell_s: s };
    assert_eq!(fired(&mut r, dwell(120), &m, "fitting-rooms", 1), None);
    assert_eq!(fired(&mut r, dwell(300), &m, "entrance", 2), None, "zone");
    assert!(fired(&mut r, dwell(300), &m, "fitting-rooms", 3).is_some());
    assert_eq!(
        fired(&mut r, dwell(900), &m, "fitting-rooms", 4),
        None,
        "once per visit, even with no cooldown"
    );
    // The visit ends; the next visit may fire again.
    assert_eq!(
        fired(&mut r, Happening::Depart, &m, "fitting-rooms", 5),
        None
    );
    assert!(fired(&mut r, dwell(600), &m, "fitting-rooms", 6).is_some());
    assert_eq!(r.dwell_thresholds(), [300]);
    assert_eq!(r.unreachable_dwell_rules(&[60, 600]), Vec::<&str>::new());
    assert_eq!(r.unreachable_dwell_rules(&[60, 120]), ["r"]);
}

#[test]
fn first_visit_today_fires_on_the_first_arrival_of_each_local_day() {
    let mut r = one("on = \"first_visit_today\"\nmessage = \"welcome\"\ncooldown_s = 0\n");
    r.set_settings(ReactSettings {
        zone: fixed_zone(120),
        ..Default::default()
    });
    let m = member("silver", &[]);
    let morning = at(2026, 11, 23, 8, 0);
    assert!(fired(&mut r, Happening::Arrive, &m, "e", morning).is_some());
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", morning + 3_600_000),
        None
    );
    // 21:59 UTC is 23:59 local: still today. 22:01 UTC is tomorrow, local.
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 21, 59)),
        None
    );
    assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 22, 1)).is_some());
    assert_eq!(
        fired(&mut r, Happening::Depart, &m, "e", at(2026, 11, 23, 22, 2)),
        None
    );
}

#[test]
fn birthday_week_fires_on_arrival_or_on_the_schedule_within_the_window() {
    let mut r = one("on = \"birthday_week\"\nmessage = \"happy birthday\"\ncooldown_s = 86400\n");
    let mut m = member("silver", &[]);
    m.birthday = Some("11-26".into());
    assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 10, 0)).is_some());
    let mut r = one("on = \"birthday_week\"\nmessage = \"happy birthday\"\n");
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 19, 10, 0)),
        None
    );
    assert!(
        fired(
            &mut r,
            Happening::Scheduled,
            &m,
            "e",
            at(2026, 11, 29, 10, 0)
        )
        .is_some()
    );
    m.birthday = None;
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 26, 10, 0)),
        None
    );
    assert!(r.planned_due(0));
    assert!(!r.planned_due(PLANNED_EVERY_MS - 1));
    assert!(r.planned_due(PLANNED_EVERY_MS));
}

#[test]
fn overdue_fires_when_the_last_purchase_is_old_enough() {
    let mut r = one("on = \"overdue\"\noverdue_days = 60\nmessage = \"long time no see\"\n");
    let mut m = member("gold", &[]);
    m.last_purchase = Some(LastPurchase {
        date: "2026-09-24".into(),
        summary: "linen shirt".into(),
    });
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 22, 10, 0)),
        None
    );
    assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 10, 0)).is_some());
    m.last_purchase = None;
    m.member_id = "M2".into();
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 10, 0)),
        None
    );
}

#[test]
fn overdue_counts_from_the_last_visit_when_the_record_has_one() {
    let mut r = one("on = \"overdue\"\noverdue_days = 60\nmessage = \"m\"\ncooldown_s = 0\n");
    let mut m = member("gold", &[]);
    // Bought long ago but came in last month: not overdue.
    m.last_purchase = Some(LastPurchase {
        date: "2026-01-10".into(),
        summary: "coat".into(),
    });
    m.last_visit = Some("2026-10-30".into());
    let day = at(2026, 11, 23, 10, 0);
    assert_eq!(fired(&mut r, Happening::Scheduled, &m, "e", day), None);
    // Visited long ago, bought recently elsewhere (online): the visit decides.
    m.last_purchase = Some(LastPurchase {
        date: "2026-11-20".into(),
        summary: "scarf".into(),
    });
    m.last_visit = Some("2026-09-24".into());
    assert!(fired(&mut r, Happening::Scheduled, &m, "e", day).is_some());
    // No visit recorded: the purchase date stands in.
    m.last_visit = None;
    m.member_id = "M2".into();
    assert_eq!(fired(&mut r, Happening::Scheduled, &m, "e", day), None);
}

#[test]
fn overdue_counts_days_past_head_offices_overdue_after_when_the_record_has_it() {
    let mut r = one("on = \"overdue\"\noverdue_days = 3\nmessage = \"m\"\ncooldown_s = 0\n");
    let mut m = member("gold", &[]);
    // Last visit long ago, but head office expects them only later: not overdue yet.
    m.last_visit = Some("2026-01-01".into());
    m.overdue_after = Some("2026-11-21".into());
    assert_eq!(
        fired(
            &mut r,
            Happening::Scheduled,
            &m,
            "e",
            at(2026, 11, 23, 10, 0)
        ),
        None
    );
    let v = r.react(&occ(Happening::Scheduled, &m, "e", at(2026, 11, 24, 10, 0)));
    let alert = v.alert.expect("three days past overdue_after");
    assert_eq!(
        alert.overdue_days,
        Some(3),
        "the clerk card says overdue 3 days"
    );
    // overdue_days = 0 still needs the date to be past.
    let mut r = one("on = \"overdue\"\noverdue_days = 0\nmessage = \"m\"\ncooldown_s = 0\n");
    m.member_id = "M2".into();
    assert_eq!(
        fired(
            &mut r,
            Happening::Scheduled,
            &m,
            "e",
            at(2026, 11, 21, 10, 0)
        ),
        None
    );
    assert!(
        fired(
            &mut r,
            Happening::Scheduled,
            &m,
            "e",
            at(2026, 11, 22, 10, 0)
        )
        .is_some()
    );
    assert_eq!(
        days_past_overdue_after(&m, parse_date("2026-11-01").unwrap()),
        Some(0)
    );
}

#[test]
fn the_schedule_leaves_alone_members_who_already_got_a_reaction_this_visit() {
    let rules = "[[rules]]\nname = \"hello\"\non = \"arrive\"\nmessage = \"hi\"\npriority = \"high\"\n\
                 [[rules]]\nname = \"bday\"\non = \"birthday_week\"\nmessage = \"bday\"\n";
    let mut r = Rules::parse(rules, "t").unwrap();
    let mut m = member("gold", &[]);
    m.birthday = Some("11-23".into());
    let t = at(2026, 11, 23, 10, 0);
    assert_eq!(
        fired(&mut r, Happening::Arrive, &m, "e", t).as_deref(),
        Some("hello")
    );
    assert_eq!(
        fired(&mut r, Happening::Scheduled, &m, "e", t + 60_000),
        None
    );
    // Next visit (after a depart), the scheduled check may speak.
    fired(&mut r, Happening::Depart, &m, "e", t + 120_000);
    assert_eq!(
        fired(&mut r, Happening::Scheduled, &m, "e", t + 180_000).as_deref(),
        Some("bday")
    );
}

/// A condition, a change that satisfies it, and one that does not.
type Case = (&'static str, fn(&mut Member), fn(&mut Member));

#[test]
fn conditions_on_stage_tags_groups_consent_hours_and_zone_are_honoured() {
    let cases: &[Case] = &[
        (
            "stages = [\"stick\"]",
            |m| m.stage = Some("stick".into()),
            |m| m.stage = None,
        ),
        (
            "tags_all = [\"a\", \"b\"]",
            |m| m.tags = vec!["a".into(), "b".into(), "c".into()],
            |m| m.tags = vec!["a".into()],
        ),
        (
            "tags_none = [\"staff\"]",
            |m| m.tags = vec![],
            |m| m.tags = vec!["staff".into()],
        ),
        (
            "groups = [\"vip-club\"]",
            |m| m.groups = vec!["vip-club".into()],
            |m| m.groups = vec!["other".into()],
        ),
        (
            "consent = \"marketing\"",
            |m| m.consent.marketing = true,
            // The old tag convention no longer stands in for the record's flag.
            |m| {
                m.consent.marketing = false;
                m.tags = vec!["consent:marketing".into()];
            },
        ),
    ];
    for (cond, yes, no) in cases {
        let mut r = one(&format!(
            "on = \"arrive\"\n{cond}\nmessage = \"m\"\ncooldown_s = 0\n"
        ));
        let mut m = member("gold", &[]);
        yes(&mut m);
        assert!(
            fired(&mut r, Happening::Arrive, &m, "e", 0).is_some(),
            "{cond} yes"
        );
        no(&mut m);
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", 0),
            None,
            "{cond} no"
        );
    }
    let mut r = one(
        "on = \"arrive\"\nconsent = \"presence\"\nhours = \"10:00-18:00\"\nzones = [\"till\"]\nmessage = \"m\"\ncooldown_s = 0\n",
    );
    let m = member("gold", &[]);
    assert!(
        fired(
            &mut r,
            Happening::Arrive,
            &m,
            "till",
            at(2026, 11, 23, 10, 0)
        )
        .is_some()
    );
    assert_eq!(
        fired(
            &mut r,
            Happening::Arrive,
            &m,
            "till",
            at(2026, 11, 23, 18, 0)
        ),
        None
    );
    assert_eq!(
        fired(
            &mut r,
            Happening::Arrive,
            &m,
            "door",
            at(2026, 11, 23, 12, 0)
        ),
        None
    );
    // Hours are local: at UTC-5, 16:00 UTC is 11:00.
    r.set_settings(ReactSettings {
        zone: fixed_zone(-300),
        ..Default::default()
    });
    assert!(
        fired(
            &mut r,
            Happening::Arrive,
            &m,
            "till",
            at(2026, 11, 23, 20, 0)
        )
        .is_some()
    );
}

#[test]
fn rule_hours_follow_berlin_local_time_on_both_sides_of_each_dst_change() {
    let mut r = one("on = \"arrive\"\nhours = \"09:00-18:00\"\nmessage = \"m\"\n");
    in_berlin(&mut r, None);
    // 2026-03-29: CET (UTC+1) → CEST (UTC+2). 2026-10-25: back to CET. A fixed offset would
    // be an hour off on one side of each change: 09:30 CEST is 08:30 at UTC+1.
    let mut n = 0;
    let mut arrive = |r: &mut Rules, at_ms: u64| {
        n += 1;
        let mut m = member("gold", &[]);
        m.member_id = format!("M{n}");
        fired(r, Happening::Arrive, &m, "e", at_ms)
    };
    for (mo, d) in [(3, 28), (3, 30), (10, 24), (10, 26)] {
        assert!(
            arrive(&mut r, berlin(2026, mo, d, 9, 30)).is_some(),
            "09:30 on {mo}-{d}"
        );
        assert!(
            arrive(&mut r, berlin(2026, mo, d, 17, 59)).is_some(),
            "17:59 on {mo}-{d}"
        );
        assert_eq!(arrive(&mut r, berlin(2026, mo, d, 8, 59)), None, "{mo}-{d}");
        assert_eq!(arrive(&mut r, berlin(2026, mo, d, 18, 0)), None, "{mo}-{d}");
    }
}

#[test]
fn quiet_hours_follow_berlin_local_time_across_the_dst_changes() {
    let mut r = one("on = \"arrive\"\nmessage = \"m\"\ncooldown_s = 0\n");
    in_berlin(&mut r, Some("22:00-07:00"));
    let m = member("gold", &[]);
    let quiet = |r: &mut Rules, at_ms: u64| {
        let v = r.react(&occ(Happening::Arrive, &m, "e", at_ms));
        assert_eq!(v.alert.is_none(), v.held.quiet_hours == 1);
        v.held.quiet_hours == 1
    };
    for (mo, d) in [(3, 28), (3, 30), (10, 24), (10, 26)] {
        assert!(
            quiet(&mut r, berlin(2026, mo, d, 6, 59)),
            "06:59 on {mo}-{d}"
        );
        assert!(
            !quiet(&mut r, berlin(2026, mo, d, 7, 0)),
            "07:00 on {mo}-{d}"
        );
        assert!(
            !quiet(&mut r, berlin(2026, mo, d, 21, 59)),
            "21:59 on {mo}-{d}"
        );
        assert!(
            quiet(&mut r, berlin(2026, mo, d, 22, 0)),
            "22:00 on {mo}-{d}"
        );
    }
    // The nights of the changes themselves: 03:30 CEST (01:30 UTC) on 29 March, and the
    // repeated 02:30 hour on 25 October (00:30 and 01:30 UTC), are all quiet; 07:00 is not.
    let spring = at(2026, 3, 29, 1, 30);
    assert!(quiet(&mut r, spring));
    assert!(!quiet(&mut r, berlin(2026, 3, 29, 7, 0)));
    assert!(quiet(&mut r, at(2026, 10, 25, 0, 30)));
    assert!(quiet(&mut r, at(2026, 10, 25, 1, 30)));
    assert!(quiet(&mut r, berlin(2026, 10, 25, 6, 59)));
    assert!(!quiet(&mut r, berlin(2026, 10, 25, 7, 0)));
}

#[test]
fn first_visit_today_resets_at_berlin_midnight_in_summer_and_winter_time() {
    let mut r = one("on = \"first_visit_today\"\nmessage = \"welcome\"\ncooldown_s = 0\n");
    in_berlin(&mut r, None);
    let m = member("silver", &[]);
    // Midnights either side of the autumn change (UTC+2, then UTC+1) and the spring change.
    // A fixed offset would put one of each pair an hour early or late.
    for (mo, d, next) in [(10, 24, 25), (10, 25, 26), (3, 28, 29), (3, 29, 30)] {
        fired(
            &mut r,
            Happening::Arrive,
            &m,
            "e",
            berlin(2026, mo, d, 22, 30),
        );
        assert_eq!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "e",
                berlin(2026, mo, d, 23, 59)
            ),
            None,
            "again before midnight on {mo}-{d}"
        );
        assert!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "e",
                berlin(2026, mo, next, 0, 1)
            )
            .is_some(),
            "first after midnight into {mo}-{next}"
        );
        assert_eq!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "e",
                berlin(2026, mo, next, 8, 0)
            ),
            None,
            "again in the morning of {mo}-{next}"
        );
    }
}

#[test]
fn zone_settings_name_the_key_at_fault() {
    let cfg = |tz: Option<&str>, off: Option<i32>| crate::config::ReactConfig {
        timezone: tz.map(str::to_string),
        timezone_offset_min: off,
        ..Default::default()
    };
    let zone = |c| ReactSettings::from_config(&c).map(|s| s.zone);
    assert_eq!(
        zone(cfg(Some("America/New_York"), None))
            .unwrap()
            .iana_name(),
        Some("America/New_York")
    );
    assert_eq!(zone(cfg(None, Some(-300))).unwrap(), fixed_zone(-300));
    let err = zone(cfg(Some("Mars/Olympus_Mons"), None)).unwrap_err();
    assert!(
        err.key == "timezone" && err.reason.contains("Mars/Olympus_Mons"),
        "{err}"
    );
    assert_eq!(
        zone(cfg(None, Some(900))).unwrap_err().key,
        "timezone_offset_min"
    );
    assert_eq!(
        zone(cfg(Some("UTC"), Some(0))).unwrap_err().key,
        "timezone_offset_min"
    );
}

#[test]
fn the_cooldown_holds_back_a_repeat_then_lets_it_through() {
    let mut r = Rules::parse(RULES, "t").unwrap();
    let m = member("gold", &[]);
    assert!(fired(&mut r, Happening::Arrive, &m, "e", 0).is_some());
    let v = r.react(&occ(Happening::Arrive, &m, "e", 599_999));
    assert_eq!((v.alert, v.held.cooldown), (None, 1));
    assert!(fired(&mut r, Happening::Arrive, &m, "e", 600_000).is_some());
}

#[test]
fn quiet_hours_withhold_clerk_alerts_but_not_webhooks() {
    let rules = "[[rules]]\nname = \"a\"\non = \"arrive\"\nmessage = \"m\"\ncooldown_s = 0\n\
                 [[rules]]\nname = \"crm\"\non = \"depart\"\nmessage = \"m\"\nwebhook = { url = \"http://127.0.0.1:9/h\" }\n";
    let mut r = Rules::parse(rules, "t").unwrap();
    r.set_settings(ReactSettings {
        quiet_hours: Some(HoursRange::parse("22:00-07:00").unwrap()),
        ..Default::default()
    });
    let m = member("gold", &[]);
    let v = r.react(&occ(Happening::Arrive, &m, "e", at(2026, 11, 23, 6, 59)));
    assert_eq!((v.alert, v.held.quiet_hours), (None, 1));
    assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 7, 0)).is_some());
    let v = r.react(&occ(Happening::Depart, &m, "e", at(2026, 11, 23, 23, 0)));
    assert_eq!(v.alert, None);
    assert_eq!(v.actions.len(), 1);
    assert_eq!(v.held.quiet_hours, 1);
}

#[test]
fn the_store_rate_limit_withholds_alerts_beyond_the_bucket() {
    let mut r = one("on = \"arrive\"\nmessage = \"m\"\n");
    r.set_settings(ReactSettings {
        alerts_per_minute: 2,
        alert_burst: 2,
        ..Default::default()
    });
    let mut got = Vec::new();
    for i in 0..4 {
        let mut m = member("gold", &[]);
        m.member_id = format!("M{i}");
        let v = r.react(&occ(Happening::Arrive, &m, "e", 1000));
        got.push((v.alert.is_some(), v.held.rate_limit));
    }
    assert_eq!(got, [(true, 0), (true, 0), (false, 1), (false, 1)]);
    let mut m = member("gold", &[]);
    m.member_id = "M9".into();
    assert!(fired(&mut r, Happening::Arrive, &m, "e", 31_000).is_some());
}

#[test]
fn actions_carry_templates_and_one_idempotency_key() {
    let mut r = one(
        "on = \"qr_scan\"\nmqtt = { topic = \"instore/s1/greet/{zone}\", payload = \"{member_id}@{zone}\" }\n\
         webhook = { url = \"https://crm.example/hook\", retries = 2 }\n",
    );
    let m = member("gold", &[]);
    let v = r.react(&occ(Happening::QrScan, &m, "till", 5));
    assert_eq!(v.alert, None, "no message: no clerk alert");
    let [Action::Mqtt { topic, payload, .. }, Action::Webhook(w)] = &v.actions[..] else {
        panic!("{:?}", v.actions)
    };
    assert_eq!(topic, "instore/s1/greet/till");
    assert_eq!(payload, b"M1@till");
    let body: serde_json::Value = serde_json::from_slice(&w.body).unwrap();
    assert_eq!(body["id"], w.key.as_str());
    assert_eq!(body["trigger"], "qr_scan");
    assert_eq!(body["zone"], "till");
    assert_eq!((w.retries, w.timeout_ms), (2, 5000));
}

#[test]
fn a_holdout_keeps_the_same_members_from_every_reaction_and_says_so() {
    let rules = "[[rules]]\nname = \"vip\"\non = \"arrive\"\nmessage = \"m\"\nholdout = 0.3\n\
                 webhook = { url = \"https://crm.example/hook\" }\ncooldown_s = 600\n\
                 [[rules]]\nname = \"fallback\"\non = \"arrive\"\nmessage = \"f\"\npriority = \"low\"\n";
    let mut r = Rules::parse(rules, "t").unwrap();
    let mut held = 0;
    for i in 0..2000 {
        let m = Member {
            member_id: format!("M{i:05}"),
            ..member("gold", &[])
        };
        let expected = holdout::held_out("vip", &m.member_id, 0.3);
        let v = r.react(&occ(Happening::Arrive, &m, "e", 1000));
        if expected {
            held += 1;
            assert_eq!(
                v.held_out.as_ref().map(|h| h.rule.as_str()),
                Some("vip"),
                "{}",
                m.member_id
            );
            // No alert, no webhook, and the lower rule does not step in.
            assert!(v.alert.is_none() && v.actions.is_empty(), "{v:?}");
        } else {
            assert_eq!(v.held_out, None);
            assert_eq!(v.alert.map(|a| a.rule).as_deref(), Some("vip"));
            assert_eq!(v.actions.len(), 1);
        }
        // Held out or not, the rule now cools down for the member as it would have.
        let again = r.react(&occ(Happening::Arrive, &m, "e", 2000));
        assert_eq!(again.held_out, None);
        assert_eq!(again.held.cooldown, 1);
    }
    // The share itself is the protocol's to bound (protocol::holdout's tests); here the rule
    // holds out roughly that share, not none or all.
    assert!((450..750).contains(&held), "{held} of 2000 held out at 0.3");
}

#[test]
fn a_holdout_is_no_occasion_in_quiet_hours_and_a_bad_share_is_refused() {
    let mut r = one("on = \"arrive\"\nmessage = \"m\"\nholdout = 0.5\n");
    r.set_settings(ReactSettings {
        quiet_hours: Some(HoursRange::parse("22:00-07:00").unwrap()),
        ..Default::default()
    });
    let held_member = (0..100)
        .map(|i| Member {
            member_id: format!("M{i}"),
            ..member("gold", &[])
        })
        .find(|m| holdout::held_out("r", &m.member_id, 0.5))
        .unwrap();
    let v = r.react(&occ(
        Happening::Arrive,
        &held_member,
        "e",
        at(2026, 11, 23, 23, 0),
    ));
    assert_eq!((v.held_out, v.held.quiet_hours), (None, 1));
    let v = r.react(&occ(
        Happening::Arrive,
        &held_member,
        "e",
        at(2026, 11, 24, 10, 0),
    ));
    assert_eq!(v.held_out.as_ref().map(|h| h.rule.as_str()), Some("r"));
    for (body, why) in [
        ("holdout = 0.8\nmessage = \"m\"", "between 0 and 0.5"),
        ("holdout = -0.1\nmessage = \"m\"", "between 0 and 0.5"),
        (
            "holdout = 0.1\nwebhook = { url = \"https://x.example/h\" }",
            "needs a message",
        ),
    ] {
        let err = Rules::parse(
            &format!("[[rules]]\nname = \"x\"\non = \"arrive\"\n{body}\n"),
            "r",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(why), "{body}: {err}");
    }
}

#[test]
fn a_rule_suggests_one_action_for_the_member_and_needs_a_message_to_show_it_on() {
    let mut r = one(
        "on = \"arrive\"\nmessage = \"m\"\nsuggest = \"Offer {display_name} the {tier} preview\"\n",
    );
    let m = member("gold", &[]);
    let v = r.react(&occ(Happening::Arrive, &m, "e", 0));
    assert_eq!(
        v.alert.unwrap().suggestion.as_deref(),
        Some("Offer Ms. Li the gold preview")
    );
    let mut plain = one("on = \"arrive\"\nmessage = \"m\"\n");
    let v = plain.react(&occ(Happening::Arrive, &m, "e", 0));
    assert_eq!(v.alert.unwrap().suggestion, None);
    for (body, why) in [
        (
            "suggest = \"s\"\nwebhook = { url = \"https://x.example/h\" }",
            "needs a message",
        ),
        ("message = \"m\"\nsuggest = \"{nickname}\"", "nickname"),
    ] {
        let err = Rules::parse(
            &format!("[[rules]]\nname = \"x\"\non = \"arrive\"\n{body}\n"),
            "r",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(why), "{body}: {err}");
    }
}

fn campaign(id: &str, version: u64, rules: &str) -> Campaign {
    Campaign {
        id: id.into(),
        version,
        scope: "chain".into(),
        rules: rules.into(),
    }
}

#[test]
fn campaigns_join_the_store_rules_by_priority_and_a_local_rule_of_the_same_name_wins() {
    let local = "[[rules]]\nname = \"vip\"\non = \"arrive\"\ntiers = [\"gold\"]\npriority = \"high\"\n\
                 message = \"local vip\"\n\n[[rules]]\nname = \"hello\"\non = \"arrive\"\n\
                 message = \"local hello\"\n";
    let autumn = campaign(
        "autumn",
        3,
        "[[rules]]\nname = \"vip\"\non = \"arrive\"\npriority = \"high\"\nmessage = \"campaign vip\"\n\n\
         [[rules]]\nname = \"silver-push\"\non = \"arrive\"\ntiers = [\"silver\"]\npriority = \"high\"\n\
         message = \"campaign silver\"\n",
    );
    let (mut r, skipped) =
        Rules::build(Some((local, "rules.toml")), std::slice::from_ref(&autumn)).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(r.len(), 3, "vip once: the store's own");
    let gold = member("gold", &[]);
    let a = r
        .react(&occ(Happening::Arrive, &gold, "e", 0))
        .alert
        .unwrap();
    assert_eq!((a.message.as_str(), a.campaign), ("local vip", None));
    let silver = Member {
        member_id: "M2".into(),
        ..member("silver", &[])
    };
    let a = r
        .react(&occ(Happening::Arrive, &silver, "e", 0))
        .alert
        .unwrap();
    assert_eq!(
        a.message, "campaign silver",
        "high beats the local normal rule"
    );
    assert_eq!(a.campaign.as_deref(), Some("autumn@3"));
    // Campaigns alone, with no rules file; a campaign this gateway cannot run is left out and
    // named, the others still run.
    let broken = campaign("broken", 1, "[[rules]]\nname = \"x\"\non = \"teleport\"\n");
    let (mut r, skipped) = Rules::build(None, &[broken, autumn]).unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("campaign broken@1"), "{skipped:?}");
    let a = r
        .react(&occ(Happening::Arrive, &gold, "e", 0))
        .alert
        .unwrap();
    assert_eq!(a.campaign.as_deref(), Some("autumn@3"));
    // A bad store file is still an error: the caller keeps what runs.
    assert!(Rules::build(Some(("[[rules]]\nname = 1\n", "rules.toml")), &[]).is_err());
}

#[test]
fn a_reload_keeps_cooldowns() {
    let mut r = Rules::parse(RULES, "t").unwrap();
    let m = member("gold", &[]);
    assert!(fired(&mut r, Happening::Arrive, &m, "e", 0).is_some());
    r.replace(Rules::parse(RULES, "t").unwrap());
    assert!(fired(&mut r, Happening::Arrive, &m, "e", 1000).is_none());
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
    for (body, why) in [
        ("on = \"dwell\"\nmessage = \"m\"", "needs dwell_s"),
        (
            "on = \"arrive\"\ndwell_s = 5\nmessage = \"m\"",
            "only applies",
        ),
        ("on = \"overdue\"\nmessage = \"m\"", "overdue_days"),
        (
            "on = \"arrive\"\nconsent = \"newsletter\"\nmessage = \"m\"",
            "unknown consent",
        ),
        ("on = \"arrive\"", "needs a message"),
        (
            "on = \"arrive\"\nhours = \"9-5\"\nmessage = \"m\"",
            "time range",
        ),
        ("on = \"arrive\"\nmqtt = { topic = \"a/+/b\" }", "wildcards"),
        ("on = \"arrive\"\nwebhook = { url = \"ftp://x\" }", "http"),
    ] {
        let err = Rules::parse(&format!("\n[[rules]]\nname = \"x\"\n{body}\n"), "r")
            .unwrap_err()
            .to_string();
        assert!(err.contains(why) && err.contains("line 3"), "{body}: {err}");
    }
}

#[test]
fn the_shipped_rules_alert_on_platinum_and_gold_arrivals() {
    let mut r = Rules::parse(include_str!("../../examples/rules.toml"), "rules.toml").unwrap();
    for (tier, alerts) in [("platinum", true), ("gold", true), ("silver", false)] {
        let m = Member {
            member_id: tier.into(),
            ..member(tier, &[])
        };
        let got = r.react(&occ(Happening::Arrive, &m, "entrance", 0)).alert;
        assert_eq!(got.is_some(), alerts, "{tier}");
    }
}

#[test]
fn the_demo_rules_parse() {
    let r = Rules::parse(include_str!("../../../demo/demo-rules.toml"), "demo").unwrap();
    assert!(!r.is_empty());
}

proptest::proptest! {
    /// Over any sequence of arrivals of a few members, no rule reacts to a member twice within
    /// its cooldown, and clerk alerts never exceed the bucket: at most
    /// burst + per_minute × window / 1 min in any window.
    #[test]
    fn cooldowns_and_the_rate_limit_are_never_exceeded(
        steps in proptest::collection::vec((0u64..20_000, 0u8..6, proptest::bool::ANY), 1..300),
        per_minute in 1u32..20,
        burst in 1u32..5,
    ) {
        let mut r = Rules::parse(RULES, "t").unwrap();
        r.set_settings(ReactSettings { alerts_per_minute: per_minute, alert_burst: burst, ..Default::default() });
        let mut now = 0;
        let mut alerts: Vec<u64> = Vec::new();
        let mut by_rule_member: HashMap<(String, String), Vec<u64>> = HashMap::new();
        for (gap, who, linen) in steps {
            now += gap;
            let mut m = member(if who % 2 == 0 { "gold" } else { "bronze" }, if linen { &["linen"] } else { &[] });
            m.member_id = format!("M{who}");
            if let Some(a) = r.react(&occ(Happening::Arrive, &m, "e", now)).alert {
                alerts.push(now);
                by_rule_member.entry((a.rule, m.member_id)).or_default().push(now);
            }
        }
        for times in by_rule_member.values() {
            for w in times.windows(2) {
                proptest::prop_assert!(w[1] - w[0] >= 600_000);
            }
        }
        for (i, &start) in alerts.iter().enumerate() {
            for (j, &end) in alerts.iter().enumerate().skip(i) {
                let allowed = u64::from(burst) + u64::from(per_minute) * (end - start) / 60_000;
                proptest::prop_assert!((j - i + 1) as u64 <= allowed, "{} alerts in {} ms", j - i + 1, end - start);
            }
        }
    }
}
