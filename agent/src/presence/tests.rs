use proptest::prelude::*;

use super::*;

fn member(id: &str) -> Arc<Member> {
    Arc::new(Member {
        member_id: id.into(),
        display_name: "N".into(),
        tier: "gold".into(),
        stage: None,
        tags: vec![],
        groups: vec![],
        birthday: None,
        last_purchase: None,
        last_visit: None,
        consent: Default::default(),
        ..Default::default()
    })
}

/// The shipped defaults: enter -80, exit -88, min -90, 2 sightings in 10 s, absence 60 s, weak
/// 30 s, tau 5 s, zone margin 8 dB for 8 s, dwell 60/300/900 s.
fn params() -> PresenceParams {
    PresenceParams::default()
}

/// A change as the tests compare it, with the tick (or sighting) time it was emitted at.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Arrive { at: u64, zone: String },
    Zone { at: u64, from: String, to: String },
    Dwell { at: u64, zone: String, s: u64 },
    Depart { at: u64, zones: Vec<String> },
}

fn ev(c: PresenceChange) -> Ev {
    match c {
        PresenceChange::Arrive { at_ms, zone, .. } => Ev::Arrive {
            at: at_ms,
            zone: zone.to_string(),
        },
        PresenceChange::ZoneChange {
            at_ms, from, to, ..
        } => Ev::Zone {
            at: at_ms,
            from: from.to_string(),
            to: to.to_string(),
        },
        PresenceChange::Dwell {
            at_ms,
            zone,
            dwell_ms,
            ..
        } => Ev::Dwell {
            at: at_ms,
            zone: zone.to_string(),
            s: dwell_ms / 1000,
        },
        PresenceChange::Depart { at_ms, zones, .. } => Ev::Depart {
            at: at_ms,
            zones: zones.iter().map(|z| z.to_string()).collect(),
        },
    }
}

/// Feeds one member's sightings `(time, zone, rssi)` (sorted by time), ticking every second from
/// 0 to `until_ms`; returns each change with the clock reading at which it was emitted.
fn run_with(
    p: PresenceParams,
    sightings: &[(u64, &str, i16)],
    until_ms: u64,
) -> (Vec<(u64, Ev)>, Presence) {
    let mut presence = Presence::new(p, "t".into());
    let m = member("A");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut next = sightings.iter().peekable();
    for now in (0..=until_ms).step_by(1000) {
        while let Some((t, zone, rssi)) = next.next_if(|(t, _, _)| *t <= now) {
            presence.observe(&m, &Arc::from(*zone), *rssi, *t, &mut buf);
            out.extend(buf.drain(..).map(|c| (*t, ev(c))));
        }
        out.extend(presence.tick(now).into_iter().map(|c| (now, ev(c))));
    }
    (out, presence)
}

fn run(sightings: &[(u64, &str, i16)], until_ms: u64) -> Vec<(u64, Ev)> {
    run_with(params(), sightings, until_ms).0
}

/// One advert a second in `zone` at `rssi` from `from_ms` to `to_ms` (inclusive).
fn steady(
    zone: &'static str,
    rssi: i16,
    from_ms: u64,
    to_ms: u64,
) -> Vec<(u64, &'static str, i16)> {
    (from_ms..=to_ms)
        .step_by(1000)
        .map(|t| (t, zone, rssi))
        .collect()
}

fn arrivals(evs: &[(u64, Ev)]) -> usize {
    evs.iter()
        .filter(|(_, e)| matches!(e, Ev::Arrive { .. }))
        .count()
}
fn departures(evs: &[(u64, Ev)]) -> usize {
    evs.iter()
        .filter(|(_, e)| matches!(e, Ev::Depart { .. }))
        .count()
}
fn zone_changes(evs: &[(u64, Ev)]) -> usize {
    evs.iter()
        .filter(|(_, e)| matches!(e, Ev::Zone { .. }))
        .count()
}

#[test]
fn one_stray_advert_is_not_a_visit() {
    assert_eq!(run(&[(1000, "entrance", -60)], 120_000), []);
}

#[test]
fn two_strong_sightings_make_an_arrival_and_silence_a_departure_on_time() {
    let evs = run(
        &[
            (1000, "entrance", -60),
            (2000, "entrance", -62),
            (30_000, "entrance", -61),
        ],
        200_000,
    );
    assert_eq!(
        evs,
        [
            (
                2000,
                Ev::Arrive {
                    at: 1000,
                    zone: "entrance".into()
                }
            ),
            (
                90_000,
                Ev::Depart {
                    at: 30_000,
                    zones: vec!["entrance".into()]
                }
            )
        ]
    );
}

#[test]
fn the_departure_comes_from_the_clock_not_from_other_traffic() {
    let mut p = Presence::new(params(), "t".into());
    let zone: Arc<str> = Arc::from("z");
    let mut out = Vec::new();
    p.observe(&member("A"), &zone, -60, 0, &mut out);
    p.observe(&member("A"), &zone, -60, 500, &mut out);
    assert_eq!(out.len(), 1, "arrived");
    assert!(p.tick(60_499).is_empty());
    assert_eq!(
        p.tick(60_500).len(),
        1,
        "departs exactly depart_after after the last sighting, with nobody else heard"
    );
}

#[test]
fn adverts_below_the_floor_or_not_rssi_at_all_are_not_heard() {
    assert_eq!(
        run(
            &[(1000, "e", -95), (2000, "e", -95), (3000, "e", 127)],
            10_000
        ),
        []
    );
}

#[test]
fn a_member_heard_only_between_floor_and_enter_never_arrives_and_is_forgotten() {
    let (evs, p) = run_with(params(), &steady("e", -84, 0, 300_000), 300_000);
    assert_eq!(evs, []);
    assert_eq!(p.tracked(), 1, "still heard: still a candidate");
    let (_, p) = run_with(params(), &steady("e", -84, 0, 300_000), 320_000);
    assert_eq!(p.tracked(), 0, "a candidate that never arrived expires");
}

#[test]
fn candidates_that_never_arrive_do_not_accumulate() {
    let mut p = Presence::new(params(), "t".into());
    let zone: Arc<str> = Arc::from("z");
    let mut out = Vec::new();
    for i in 0..10_000u64 {
        p.observe(&member(&format!("M{i}")), &zone, -60, i, &mut out);
    }
    assert_eq!(p.tracked(), 10_000);
    assert!(p.tick(10_000 + params().arrive_window_ms + 1).is_empty());
    assert_eq!(p.tracked(), 0);
    assert!(out.is_empty());
}

#[test]
fn a_lone_outlier_does_not_count_towards_arriving() {
    // Weak member, one loud reflection: the median throws it away.
    let mut s = steady("e", -86, 0, 5000);
    s.push((6000, "e", -50));
    s.extend(steady("e", -86, 7000, 12_000));
    assert_eq!(run(&s, 20_000), []);
}

#[test]
fn a_member_walking_out_of_range_while_advertising_departs_after_exit_after() {
    let mut s = steady("e", -60, 0, 60_000);
    s.extend(steady("e", -89, 61_000, 300_000));
    let evs = run(&s, 300_000);
    assert_eq!(arrivals(&evs), 1);
    let departs: Vec<_> = evs
        .iter()
        .filter_map(|(now, e)| match e {
            Ev::Depart { at, .. } => Some((*now, *at)),
            _ => None,
        })
        .collect();
    assert_eq!(departs.len(), 1, "{evs:?}");
    let (emitted, at) = departs[0];
    // The average needs a while to fall 29 dB to below -88; the departure is dated then.
    assert!((61_000..90_000).contains(&at), "{at}");
    assert!(
        emitted >= at + 30_000 && emitted <= at + 31_000,
        "{emitted} {at}"
    );
}

#[test]
fn zones_switch_only_past_the_margin_and_after_the_minimum_time() {
    // In A at -60 throughout; B at -55 (5 dB louder: inside the 6 dB margin) then -50.
    let mut s = Vec::new();
    for t in (0..=120_000).step_by(1000) {
        s.push((t, "A", -60));
        if t >= 10_000 {
            s.push((t, "B", if t < 60_000 { -55 } else { -50 }));
        }
    }
    let p = PresenceParams {
        zone_margin_db: 6.0,
        zone_switch_ms: 5000,
        ..params()
    };
    let (evs, _) = run_with(p, &s, 120_000);
    let zones: Vec<_> = evs
        .iter()
        .filter_map(|(_, e)| match e {
            Ev::Zone { at, from, to } => Some((*at, from.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(zones.len(), 1, "{evs:?}");
    let (at, from, to) = &zones[0];
    assert_eq!((from.as_str(), to.as_str()), ("A", "B"));
    // B's average passes -54 a second or two after 60 s, then must stay ahead for 5 s.
    assert!((65_000..=70_000).contains(at), "{at}");
}

#[test]
fn a_zone_that_stops_hearing_the_member_hands_over_on_the_clock() {
    let mut s = steady("A", -60, 0, 20_000);
    s.extend(steady("B", -75, 15_000, 60_000));
    let evs = run(&s, 60_000);
    let zone_at: Vec<u64> = evs
        .iter()
        .filter_map(|(now, e)| matches!(e, Ev::Zone { .. }).then_some(*now))
        .collect();
    // A last heard at 20 s; silent for the 10 s arrive window → B takes over on the next tick.
    assert_eq!(zone_at, [31_000], "{evs:?}");
}

#[test]
fn dwell_thresholds_fire_once_each_per_zone_and_count_all_time_in_the_zone() {
    let p = PresenceParams {
        dwell_ms: Arc::from([60_000u64, 300_000]),
        ..params()
    };
    // A for 200 s, B for 80 s, back to A for 190 s, then silence. Equally loud zones hand over
    // when the old one has been silent for the 10 s window: A 0–211 s, B 211–291 s (heard until
    // 280 s: 69 s of evidence), A again from 291 s.
    let mut s = steady("A", -60, 0, 200_000);
    s.extend(steady("B", -60, 201_000, 280_000));
    s.extend(steady("A", -60, 281_000, 470_000));
    let (evs, _) = run_with(p, &s, 600_000);
    let dwells: Vec<(String, u64)> = evs
        .iter()
        .filter_map(|(_, e)| match e {
            Ev::Dwell { zone, s, .. } => Some((zone.clone(), *s)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dwells,
        [
            ("A".to_string(), 60),
            ("B".to_string(), 60),
            ("A".to_string(), 300)
        ],
        "{evs:?}"
    );
    let first = evs
        .iter()
        .find_map(|(_, e)| match e {
            Ev::Dwell { at, .. } => Some(*at),
            _ => None,
        })
        .unwrap();
    assert_eq!(first, 60_000, "dated when the duration was reached");
}

#[test]
fn a_visit_lists_its_zones_in_order_of_first_entry() {
    let mut s = steady("entrance", -60, 0, 30_000);
    s.extend(steady("fitting-rooms", -60, 31_000, 90_000));
    s.extend(steady("entrance", -60, 91_000, 120_000));
    s.extend(steady("till", -60, 121_000, 150_000));
    let evs = run(&s, 300_000);
    assert_eq!(arrivals(&evs), 1);
    assert_eq!(zone_changes(&evs), 3, "{evs:?}");
    let last = evs.last().map(|(_, e)| e.clone());
    assert_eq!(
        last,
        Some(Ev::Depart {
            at: 150_000,
            zones: vec!["entrance".into(), "fitting-rooms".into(), "till".into()]
        })
    );
}

#[test]
fn withdrawn_consent_ends_a_visit_at_once() {
    let mut p = Presence::new(params(), "t".into());
    let zone: Arc<str> = Arc::from("z");
    let mut out = Vec::new();
    p.observe(&member("A"), &zone, -60, 0, &mut out);
    p.observe(&member("A"), &zone, -60, 1, &mut out);
    let gone = p.forget_unless(|_| false, 5000);
    assert!(matches!(
        gone[..],
        [PresenceChange::Depart { dwell_ms: 5000, .. }]
    ));
    assert_eq!(p.tracked(), 0);
}

/// Adverts about once a second (0.8–1.2 s apart), 15 % lost, RSSI `center` ± `noise`.
fn noisy(
    zone: &'static str,
    center: i16,
    from_ms: u64,
    to_ms: u64,
    draws: &[(u16, bool, i8)],
) -> Vec<(u64, &'static str, i16)> {
    let mut t = from_ms;
    let mut out = Vec::new();
    for (gap, lost, noise) in draws.iter().cycle() {
        if t > to_ms {
            break;
        }
        if !lost {
            out.push((t, zone, center + i16::from(*noise)));
        }
        t += u64::from(*gap);
    }
    out
}

fn draws() -> impl Strategy<Value = Vec<(u16, bool, i8)>> {
    proptest::collection::vec(
        (800u16..=1200, proptest::bool::weighted(0.15), -8i8..=8),
        700,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// RSSI = enter threshold ± 8 dB for ten minutes: at most one arrival and no departure while
    /// the member keeps advertising.
    #[test]
    fn no_flapping_around_the_enter_threshold(d in draws()) {
        let s = noisy("e", params().enter_rssi, 0, 600_000, &d);
        let evs = run(&s, 600_000);
        prop_assert!(arrivals(&evs) <= 1, "{:?}", evs);
        prop_assert_eq!(departures(&evs), 0, "{:?}", evs);
    }

    /// A present member drifting to the exit threshold ± 8 dB: at most one departure and never a
    /// second arrival.
    #[test]
    fn no_flapping_around_the_exit_threshold(d in draws()) {
        let mut s = steady("e", -60, 0, 20_000);
        s.extend(noisy("e", params().exit_rssi, 21_000, 600_000, &d));
        let evs = run(&s, 600_000);
        prop_assert_eq!(arrivals(&evs), 1, "{:?}", evs);
        prop_assert!(departures(&evs) <= 1, "{:?}", evs);
    }

    /// Two zones hearing the member equally loudly, each ± 8 dB, for ten minutes: no flapping
    /// between them (a rare run of unlucky readings may move the member once; never back and
    /// forth).
    #[test]
    fn no_zone_flapping_between_equally_loud_zones(a in draws(), b in draws()) {
        let mut s = noisy("A", -65, 0, 600_000, &a);
        s.extend(noisy("B", -65, 0, 600_000, &b));
        s.sort_by_key(|x| x.0);
        let evs = run(&s, 600_000);
        prop_assert_eq!(arrivals(&evs), 1);
        prop_assert!(zone_changes(&evs) <= 1, "{:?}", evs);
    }

    /// Whatever the advert timing, a member who falls silent departs no earlier than the
    /// configured absence and no later than one tick after it, dated at their last sighting.
    #[test]
    fn departure_within_the_configured_absence_plus_one_tick(
        d in draws(), until in 20_000u64..200_000, depart_s in 10u64..120,
    ) {
        let p = PresenceParams { depart_after_ms: depart_s * 1000, ..params() };
        let s = noisy("e", -60, 0, until, &d);
        let last = s.last().map(|x| x.0).unwrap_or(0);
        let (evs, _) = run_with(p, &s, until + 200_000);
        let departs: Vec<_> = evs.iter().filter_map(|(now, e)| match e {
            Ev::Depart { at, .. } => Some((*now, *at)),
            _ => None,
        }).collect();
        if arrivals(&evs) == 1 {
            prop_assert_eq!(departs.len(), 1, "{:?}", evs);
            let (emitted, at) = departs[0];
            prop_assert_eq!(at, last);
            prop_assert!(emitted >= last + depart_s * 1000, "{} {}", emitted, last);
            prop_assert!(emitted <= last + depart_s * 1000 + 1000, "{} {}", emitted, last);
        } else {
            prop_assert_eq!(arrivals(&evs), 0);
        }
    }

    /// Whatever the timeline, arrivals and departures of one member alternate, starting with an
    /// arrival, and everyone has left by the end.
    #[test]
    fn arrivals_and_departures_alternate(gaps in proptest::collection::vec(0u64..90_000, 1..60),
                                         rssis in proptest::collection::vec(-100i16..-40, 60)) {
        let mut t = 0;
        let sightings: Vec<(u64, &str, i16)> =
            gaps.iter().zip(&rssis).map(|(g, r)| { t += g; (t, "e", *r) }).collect();
        let evs = run(&sightings, t + 200_000);
        let kinds: Vec<&str> = evs.iter().filter_map(|(_, e)| match e {
            Ev::Arrive { .. } => Some("arrive"),
            Ev::Depart { .. } => Some("depart"),
            _ => None,
        }).collect();
        for (i, k) in kinds.iter().enumerate() {
            prop_assert_eq!(*k, if i % 2 == 0 { "arrive" } else { "depart" });
        }
        prop_assert!(kinds.len().is_multiple_of(2), "{:?}", kinds);
    }
}
