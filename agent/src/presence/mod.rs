//! Presence: turns a member's identified sightings into arrive / depart.
//!
//! In: (member, zone, RSSI, time) per identified advert, and clock ticks. Out: [`PresenceChange`]s,
//! emitted on change, never per advert. Pure: time comes in as milliseconds of the agent's
//! monotonic clock, so a silent member departs on time on a tick even when nothing else is heard,
//! and tests run a timeline without waiting.
//!
//! A member arrives after `arrive_sightings` sightings within `arrive_window` (one stray advert
//! from the pavement is not a visit) and departs after `depart_after` of silence. A visit is one
//! session from arrive to depart.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use crate::{cache::Member, config::PresenceConfig};

/// A member present now, as `GET /api/presence` lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresentMember {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub zone: String,
    /// Arrival, milliseconds since the Unix epoch.
    pub since: i64,
    pub last_seen: i64,
    pub last_rssi: i16,
}

#[derive(Debug, Clone, Copy)]
pub struct PresenceParams {
    pub arrive_sightings: u32,
    pub arrive_window_ms: u64,
    pub depart_after_ms: u64,
    pub min_rssi: i16,
}

impl From<&PresenceConfig> for PresenceParams {
    fn from(c: &PresenceConfig) -> Self {
        Self {
            arrive_sightings: c.arrive_sightings,
            arrive_window_ms: c.arrive_window_s * 1000,
            depart_after_ms: c.depart_after_s * 1000,
            min_rssi: c.min_rssi,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PresenceChange {
    Arrive {
        member: Arc<Member>,
        zone: Arc<str>,
        visit_id: String,
        /// First sighting of the visit.
        at_ms: u64,
    },
    Depart {
        member: Arc<Member>,
        zone: Arc<str>,
        visit_id: String,
        /// Last sighting of the visit.
        at_ms: u64,
        dwell_ms: u64,
    },
}

#[derive(Debug)]
enum State {
    Candidate { first_ms: u64, count: u32 },
    Present { since_ms: u64, visit_id: String },
}

#[derive(Debug)]
struct Track {
    member: Arc<Member>,
    zone: Arc<str>,
    last_seen_ms: u64,
    last_rssi: i16,
    state: State,
}

#[derive(Debug)]
pub struct Presence {
    params: PresenceParams,
    visit_prefix: String,
    visits: u64,
    tracks: HashMap<String, Track>,
}

impl Presence {
    /// `visit_prefix` makes visit ids unique across restarts (e.g. gateway id + boot id).
    pub fn new(params: PresenceParams, visit_prefix: String) -> Self {
        Self {
            params,
            visit_prefix,
            visits: 0,
            tracks: HashMap::new(),
        }
    }

    /// Records a sighting; returns an arrival when this sighting completes one.
    pub fn observe(
        &mut self,
        member: &Arc<Member>,
        zone: &Arc<str>,
        rssi: i16,
        now_ms: u64,
    ) -> Option<PresenceChange> {
        if rssi < self.params.min_rssi {
            return None;
        }
        let p = self.params;
        let track = self
            .tracks
            .entry(member.member_id.clone())
            .or_insert_with(|| Track {
                member: member.clone(),
                zone: zone.clone(),
                last_seen_ms: now_ms,
                last_rssi: rssi,
                state: State::Candidate {
                    first_ms: now_ms,
                    count: 0,
                },
            });
        track.last_seen_ms = now_ms;
        track.last_rssi = rssi;
        if *track.zone != **zone {
            track.zone = zone.clone();
        }
        match &mut track.state {
            State::Present { .. } => None,
            State::Candidate { first_ms, count } => {
                if now_ms.saturating_sub(*first_ms) > p.arrive_window_ms {
                    *first_ms = now_ms;
                    *count = 0;
                }
                *count += 1;
                if *count < p.arrive_sightings {
                    return None;
                }
                let since_ms = *first_ms;
                self.visits += 1;
                let visit_id = format!("{}-{}", self.visit_prefix, self.visits);
                track.state = State::Present {
                    since_ms,
                    visit_id: visit_id.clone(),
                };
                Some(PresenceChange::Arrive {
                    member: track.member.clone(),
                    zone: track.zone.clone(),
                    visit_id,
                    at_ms: since_ms,
                })
            }
        }
    }

    /// Advances time: members silent for `depart_after` depart; stale candidates are forgotten.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PresenceChange> {
        let p = self.params;
        let mut out = Vec::new();
        self.tracks.retain(|_, t| {
            let silent = now_ms.saturating_sub(t.last_seen_ms);
            match &t.state {
                State::Candidate { .. } => silent <= p.arrive_window_ms,
                State::Present { since_ms, visit_id } => {
                    if silent < p.depart_after_ms {
                        return true;
                    }
                    out.push(PresenceChange::Depart {
                        member: t.member.clone(),
                        zone: t.zone.clone(),
                        visit_id: visit_id.clone(),
                        at_ms: t.last_seen_ms,
                        dwell_ms: t.last_seen_ms.saturating_sub(*since_ms),
                    });
                    false
                }
            }
        });
        out
    }

    /// Ends tracking of members `keep` refuses (consent withdrawn, removed from the cache): a
    /// present one departs now, a candidate is forgotten.
    pub fn forget_unless(
        &mut self,
        keep: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> Vec<PresenceChange> {
        let mut out = Vec::new();
        self.tracks.retain(|id, t| {
            if keep(id) {
                return true;
            }
            if let State::Present { since_ms, visit_id } = &t.state {
                out.push(PresenceChange::Depart {
                    member: t.member.clone(),
                    zone: t.zone.clone(),
                    visit_id: visit_id.clone(),
                    at_ms: now_ms,
                    dwell_ms: now_ms.saturating_sub(*since_ms),
                });
            }
            false
        });
        out
    }

    /// Members present now; `wall` converts the monotonic clock to Unix milliseconds.
    pub fn present(&self, wall: impl Fn(u64) -> i64) -> Vec<PresentMember> {
        let mut v: Vec<PresentMember> = self
            .tracks
            .values()
            .filter_map(|t| match &t.state {
                State::Present { since_ms, .. } => Some(PresentMember {
                    member_id: t.member.member_id.clone(),
                    display_name: t.member.display_name.clone(),
                    tier: t.member.tier.clone(),
                    zone: t.zone.to_string(),
                    since: wall(*since_ms),
                    last_seen: wall(t.last_seen_ms),
                    last_rssi: t.last_rssi,
                }),
                State::Candidate { .. } => None,
            })
            .collect();
        v.sort_by(|a, b| a.since.cmp(&b.since).then(a.member_id.cmp(&b.member_id)));
        v
    }

    /// Members tracked (present or candidate): bounded by the members actually nearby.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests {
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
        })
    }

    fn params() -> PresenceParams {
        PresenceParams {
            arrive_sightings: 2,
            arrive_window_ms: 10_000,
            depart_after_ms: 60_000,
            min_rssi: -90,
        }
    }

    /// Feeds (time, rssi) sightings of one member, ticking every second; returns the changes.
    fn timeline(sightings: &[(u64, i16)], until_ms: u64) -> Vec<(&'static str, u64)> {
        let mut p = Presence::new(params(), "t".into());
        let m = member("A");
        let zone: Arc<str> = Arc::from("entrance");
        let mut out = Vec::new();
        let mut next = sightings.iter().peekable();
        for now in (0..=until_ms).step_by(1000) {
            while let Some((t, rssi)) = next.next_if(|(t, _)| *t <= now) {
                if let Some(c) = p.observe(&m, &zone, *rssi, *t) {
                    out.push(c);
                }
            }
            out.extend(p.tick(now));
        }
        out.into_iter()
            .map(|c| match c {
                PresenceChange::Arrive { at_ms, .. } => ("arrive", at_ms),
                PresenceChange::Depart { at_ms, .. } => ("depart", at_ms),
            })
            .collect()
    }

    #[test]
    fn one_stray_advert_is_not_a_visit() {
        assert_eq!(timeline(&[(1000, -60)], 120_000), []);
    }

    #[test]
    fn two_sightings_make_an_arrival_and_silence_a_departure_on_time() {
        let changes = timeline(&[(1000, -60), (2000, -62), (30_000, -61)], 200_000);
        assert_eq!(changes, [("arrive", 1000), ("depart", 30_000)]);
    }

    #[test]
    fn the_departure_comes_from_the_clock_not_from_other_traffic() {
        let mut p = Presence::new(params(), "t".into());
        let zone: Arc<str> = Arc::from("z");
        p.observe(&member("A"), &zone, -60, 0);
        assert!(p.observe(&member("A"), &zone, -60, 500).is_some());
        assert!(p.tick(60_499).is_empty());
        assert_eq!(
            p.tick(60_500).len(),
            1,
            "departs exactly depart_after after the last sighting"
        );
    }

    #[test]
    fn adverts_too_weak_to_be_inside_are_ignored() {
        assert_eq!(timeline(&[(1000, -95), (2000, -95)], 10_000), []);
    }

    #[test]
    fn withdrawn_consent_ends_a_visit_at_once() {
        let mut p = Presence::new(params(), "t".into());
        let zone: Arc<str> = Arc::from("z");
        p.observe(&member("A"), &zone, -60, 0);
        p.observe(&member("A"), &zone, -60, 1);
        let gone = p.forget_unless(|_| false, 5000);
        assert!(matches!(
            gone[..],
            [PresenceChange::Depart { dwell_ms: 5000, .. }]
        ));
        assert_eq!(p.tracked(), 0);
    }

    proptest! {
        /// Whatever the timeline, arrivals and departures of one member alternate, starting with
        /// an arrival, and every departure comes at least depart_after after the arrival's start.
        #[test]
        fn arrivals_and_departures_alternate(gaps in proptest::collection::vec(0u64..90_000, 1..60),
                                             rssis in proptest::collection::vec(-100i16..-40, 60)) {
            let mut t = 0;
            let sightings: Vec<(u64, i16)> = gaps.iter().zip(&rssis).map(|(g, r)| { t += g; (t, *r) }).collect();
            let changes = timeline(&sightings, t + 120_000);
            for (i, (kind, _)) in changes.iter().enumerate() {
                prop_assert_eq!(*kind, if i % 2 == 0 { "arrive" } else { "depart" });
            }
            prop_assert!(changes.len().is_multiple_of(2), "everyone has left by the end: {:?}", changes);
        }
    }
}
