//! Presence: turns a member's identified sightings into arrive / zone change / dwell / depart.
//!
//! In: (member, zone, RSSI, time) per identified advert, and clock ticks. Out: [`PresenceChange`]s,
//! emitted on change, never per advert. Pure: time comes in as milliseconds of the agent's
//! monotonic clock, so a silent member departs on time on a tick even when nothing else is heard,
//! and tests run a timeline without waiting. Only consenting members reach this module (the
//! member index holds no one else); strangers never do.
//!
//! Per member and zone the RSSI is smoothed ([`filter::RssiFilter`]: median of three, then an
//! exponential moving average with a time-based weight). Then:
//! - **arrive**: `arrive_sightings` sightings whose smoothed RSSI is at least `enter_rssi`, within
//!   `arrive_window`. One stray advert from the pavement is not a visit.
//! - **depart**: no advert at all for `depart_after` (absence), or the best zone's smoothed RSSI
//!   below `exit_rssi` for `exit_after` (walked out of range while still advertising).
//!   `exit_rssi < enter_rssi`: a member standing at the edge of range hovers between the two
//!   without flapping.
//! - **zone**: the zone whose adapters hear the member loudest (smoothed). Switching needs the
//!   new zone `zone_margin_db` louder for `zone_switch` without a break, or the current zone to
//!   fall silent for `arrive_window`. A zone change is emitted at the moment it is decided.
//! - **dwell**: one event per configured duration reached in a zone per visit, counting all the
//!   time the visit spent in that zone, up to the member's latest sighting (never beyond the
//!   evidence that they were there).
//! - A **visit** is one session from arrive to depart; the depart carries the zones it passed
//!   through, in order of first entry.
//!
//! Memory: a track exists per member heard recently; a candidate that never arrives is forgotten
//! `arrive_window` after its last sighting, a zone signal not heard for `arrive_window` is dropped.

pub mod filter;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use self::filter::RssiFilter;
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

/// Readings above this are not RSSI (HCI reports 127 for "not available").
const MAX_VALID_RSSI: i16 = 20;
/// Most sightings `arrive_sightings` may ask for (bounds the per-candidate memory).
pub const MAX_ARRIVE_SIGHTINGS: u32 = 64;

#[derive(Debug, Clone)]
pub struct PresenceParams {
    pub arrive_sightings: u32,
    pub arrive_window_ms: u64,
    pub depart_after_ms: u64,
    /// Adverts weaker than this are not heard at all.
    pub min_rssi: i16,
    pub enter_rssi: i16,
    pub exit_rssi: i16,
    pub exit_after_ms: u64,
    /// Time constant of the RSSI average.
    pub smoothing_ms: u64,
    pub zone_margin_db: f32,
    pub zone_switch_ms: u64,
    /// Ascending durations at which a dwell event fires, per zone per visit.
    pub dwell_ms: Arc<[u64]>,
}

impl From<&PresenceConfig> for PresenceParams {
    fn from(c: &PresenceConfig) -> Self {
        let mut dwell: Vec<u64> = c.dwell_s.iter().map(|s| s * 1000).collect();
        dwell.sort_unstable();
        dwell.dedup();
        Self {
            arrive_sightings: c.arrive_sightings.clamp(1, MAX_ARRIVE_SIGHTINGS),
            arrive_window_ms: c.arrive_window_s * 1000,
            depart_after_ms: c.depart_after_s * 1000,
            min_rssi: c.min_rssi,
            enter_rssi: c.enter_rssi,
            exit_rssi: c.exit_rssi,
            exit_after_ms: c.exit_after_s * 1000,
            smoothing_ms: (c.smoothing_s * 1000.0) as u64,
            zone_margin_db: c.zone_margin_db as f32,
            zone_switch_ms: c.zone_switch_s * 1000,
            dwell_ms: dwell.into(),
        }
    }
}

impl Default for PresenceParams {
    fn default() -> Self {
        Self::from(&PresenceConfig::default())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PresenceChange {
    Arrive {
        member: Arc<Member>,
        zone: Arc<str>,
        visit_id: String,
        /// First qualifying sighting of the visit.
        at_ms: u64,
    },
    ZoneChange {
        member: Arc<Member>,
        visit_id: String,
        from: Arc<str>,
        to: Arc<str>,
        at_ms: u64,
    },
    Dwell {
        member: Arc<Member>,
        zone: Arc<str>,
        visit_id: String,
        /// The configured duration reached.
        dwell_ms: u64,
        /// When it was reached.
        at_ms: u64,
    },
    Depart {
        member: Arc<Member>,
        /// The zone the member was last in.
        zone: Arc<str>,
        visit_id: String,
        /// Last evidence of presence: the last sighting, or when the signal fell below exit.
        at_ms: u64,
        dwell_ms: u64,
        /// Zones of the visit in order of first entry.
        zones: Vec<Arc<str>>,
    },
}

/// One zone's view of a member.
#[derive(Debug)]
struct ZoneSignal {
    zone: Arc<str>,
    filter: RssiFilter,
    last_heard_ms: u64,
}

/// Time a visit spent in one zone.
#[derive(Debug)]
struct ZoneTime {
    zone: Arc<str>,
    /// Closed stays only; the open stay is `now - zone_since`.
    spent_ms: u64,
    /// How many of the dwell thresholds have fired for this zone.
    dwell_fired: usize,
}

#[derive(Debug)]
struct Visit {
    id: String,
    since_ms: u64,
    zone: Arc<str>,
    zone_since_ms: u64,
    /// A louder zone and since when it has been louder by the margin.
    challenger: Option<(Arc<str>, u64)>,
    /// Since when the best smoothed RSSI has been below `exit_rssi`.
    weak_since_ms: Option<u64>,
    zones: Vec<ZoneTime>,
}

impl Visit {
    fn zone_time(&mut self, zone: &Arc<str>) -> &mut ZoneTime {
        let i = match self.zones.iter().position(|z| z.zone == *zone) {
            Some(i) => i,
            None => {
                self.zones.push(ZoneTime {
                    zone: zone.clone(),
                    spent_ms: 0,
                    dwell_fired: 0,
                });
                self.zones.len() - 1
            }
        };
        &mut self.zones[i]
    }
}

#[derive(Debug)]
enum State {
    /// Times of recent sightings at or above `enter_rssi`, oldest first (at most
    /// `arrive_sightings`).
    Candidate {
        strong: VecDeque<u64>,
    },
    Present(Box<Visit>),
}

#[derive(Debug)]
struct Track {
    member: Arc<Member>,
    /// Usually one to three zones: a Vec beats a map.
    signals: Vec<ZoneSignal>,
    last_heard_ms: u64,
    last_rssi: i16,
    state: State,
}

impl Track {
    /// The loudest zone heard within `horizon_ms` of `now_ms`.
    fn best_zone(&self, now_ms: u64, horizon_ms: u64) -> Option<(&Arc<str>, f32)> {
        self.signals
            .iter()
            .filter(|s| now_ms.saturating_sub(s.last_heard_ms) <= horizon_ms)
            .map(|s| (&s.zone, s.filter.value()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn signal(&self, zone: &str, now_ms: u64, horizon_ms: u64) -> Option<f32> {
        self.signals
            .iter()
            .find(|s| &*s.zone == zone && now_ms.saturating_sub(s.last_heard_ms) <= horizon_ms)
            .map(|s| s.filter.value())
    }
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

    /// Records a sighting; appends the changes it completes (an arrival, a zone change, a dwell).
    pub fn observe(
        &mut self,
        member: &Arc<Member>,
        zone: &Arc<str>,
        rssi: i16,
        now_ms: u64,
        out: &mut Vec<PresenceChange>,
    ) {
        if rssi < self.params.min_rssi || rssi > MAX_VALID_RSSI {
            return;
        }
        let p = &self.params;
        let track = self
            .tracks
            .entry(member.member_id.clone())
            .or_insert_with(|| Track {
                member: member.clone(),
                signals: Vec::with_capacity(1),
                last_heard_ms: now_ms,
                last_rssi: rssi,
                state: State::Candidate {
                    strong: VecDeque::new(),
                },
            });
        // A member record replaced by a newer member set: cards show the current one.
        if !Arc::ptr_eq(&track.member, member) {
            track.member = member.clone();
        }
        let smoothed = match track.signals.iter_mut().find(|s| s.zone == *zone) {
            Some(s) => {
                s.last_heard_ms = s.last_heard_ms.max(now_ms);
                s.filter.update(rssi, now_ms, p.smoothing_ms)
            }
            None => {
                track.signals.push(ZoneSignal {
                    zone: zone.clone(),
                    filter: RssiFilter::new(rssi, now_ms),
                    last_heard_ms: now_ms,
                });
                f32::from(rssi)
            }
        };
        track.last_heard_ms = track.last_heard_ms.max(now_ms);
        track.last_rssi = rssi;
        let best = track
            .best_zone(now_ms, p.arrive_window_ms)
            .map(|(z, v)| (z.clone(), v));

        match &mut track.state {
            State::Candidate { strong } => {
                if smoothed < f32::from(p.enter_rssi) {
                    return;
                }
                strong.push_back(now_ms);
                while strong
                    .front()
                    .is_some_and(|t| now_ms.saturating_sub(*t) > p.arrive_window_ms)
                    || strong.len() > p.arrive_sightings as usize
                {
                    strong.pop_front();
                }
                if strong.len() < p.arrive_sightings as usize {
                    return;
                }
                let since_ms = strong.front().copied().unwrap_or(now_ms);
                let zone = best.map_or_else(|| zone.clone(), |(z, _)| z);
                self.visits += 1;
                let visit_id = format!("{}-{}", self.visit_prefix, self.visits);
                let mut visit = Visit {
                    id: visit_id.clone(),
                    since_ms,
                    zone: zone.clone(),
                    zone_since_ms: since_ms,
                    challenger: None,
                    weak_since_ms: None,
                    zones: Vec::new(),
                };
                visit.zone_time(&zone);
                track.state = State::Present(Box::new(visit));
                out.push(PresenceChange::Arrive {
                    member: track.member.clone(),
                    zone,
                    visit_id,
                    at_ms: since_ms,
                });
                Self::dwell(p, track, out);
            }
            State::Present(visit) => {
                if best.is_some_and(|(_, b)| b < f32::from(p.exit_rssi)) {
                    visit.weak_since_ms.get_or_insert(now_ms);
                } else {
                    visit.weak_since_ms = None;
                }
                Self::switch_zone(p, track, now_ms, out);
                Self::dwell(p, track, out);
            }
        }
    }

    /// Moves a present member to a louder zone once it has been louder for long enough, or at once
    /// when their current zone no longer hears them.
    fn switch_zone(
        p: &PresenceParams,
        track: &mut Track,
        now_ms: u64,
        out: &mut Vec<PresenceChange>,
    ) {
        let horizon = p.arrive_window_ms;
        let Some((best, best_rssi)) = track
            .best_zone(now_ms, horizon)
            .map(|(z, v)| (z.clone(), v))
        else {
            return;
        };
        let State::Present(visit) = &track.state else {
            return;
        };
        if best == visit.zone {
            if let State::Present(visit) = &mut track.state {
                visit.challenger = None;
            }
            return;
        }
        let current = track.signal(&visit.zone, now_ms, horizon);
        let State::Present(visit) = &mut track.state else {
            return;
        };
        let switch = match current {
            None => true,
            Some(cur) if best_rssi >= cur + p.zone_margin_db => {
                let since = match &visit.challenger {
                    Some((z, since)) if *z == best => *since,
                    _ => {
                        visit.challenger = Some((best.clone(), now_ms));
                        now_ms
                    }
                };
                now_ms.saturating_sub(since) >= p.zone_switch_ms
            }
            Some(_) => {
                visit.challenger = None;
                false
            }
        };
        if !switch {
            return;
        }
        let at_ms = now_ms.max(visit.zone_since_ms);
        let stay = at_ms - visit.zone_since_ms;
        let from = visit.zone.clone();
        visit.zone_time(&from).spent_ms += stay;
        visit.zone = best.clone();
        visit.zone_since_ms = at_ms;
        visit.challenger = None;
        visit.zone_time(&best);
        out.push(PresenceChange::ZoneChange {
            member: track.member.clone(),
            visit_id: visit.id.clone(),
            from,
            to: best,
            at_ms,
        });
    }

    /// Fires the dwell durations the current zone has reached by its latest sighting of the
    /// member (evidence from another zone does not prove a stay in this one).
    fn dwell(p: &PresenceParams, track: &mut Track, out: &mut Vec<PresenceChange>) {
        let State::Present(visit) = &mut track.state else {
            return;
        };
        let heard_here = track
            .signals
            .iter()
            .find(|s| s.zone == visit.zone)
            .map_or(visit.zone_since_ms, |s| s.last_heard_ms);
        let open = heard_here.saturating_sub(visit.zone_since_ms);
        let zone_since = visit.zone_since_ms;
        let zone = visit.zone.clone();
        let id = visit.id.clone();
        let zt = visit.zone_time(&zone);
        while let Some(&threshold) = p.dwell_ms.get(zt.dwell_fired) {
            if zt.spent_ms + open < threshold {
                break;
            }
            zt.dwell_fired += 1;
            out.push(PresenceChange::Dwell {
                member: track.member.clone(),
                zone: zone.clone(),
                visit_id: id.clone(),
                dwell_ms: threshold,
                at_ms: zone_since + threshold.saturating_sub(zt.spent_ms),
            });
        }
    }

    /// Advances time: members silent for `depart_after`, or weak for `exit_after`, depart; a
    /// present member whose zone fell silent moves to the zone still hearing them; stale
    /// candidates and zone signals are forgotten.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PresenceChange> {
        let p = &self.params;
        let mut out = Vec::new();
        self.tracks.retain(|_, t| {
            let silent = now_ms.saturating_sub(t.last_heard_ms);
            t.signals
                .retain(|s| now_ms.saturating_sub(s.last_heard_ms) <= p.arrive_window_ms);
            let depart_at = match &t.state {
                State::Candidate { .. } => return silent <= p.arrive_window_ms,
                State::Present(visit) => {
                    if silent >= p.depart_after_ms {
                        Some(t.last_heard_ms)
                    } else {
                        visit
                            .weak_since_ms
                            .filter(|w| now_ms.saturating_sub(*w) >= p.exit_after_ms)
                    }
                }
            };
            let Some(at_ms) = depart_at else {
                Self::switch_zone(p, t, now_ms, &mut out);
                return true;
            };
            let absent = silent >= p.depart_after_ms;
            let state = std::mem::replace(
                &mut t.state,
                State::Candidate {
                    strong: VecDeque::new(),
                },
            );
            if let State::Present(visit) = state {
                out.push(Self::depart(&t.member, *visit, at_ms));
            }
            // Still advertising, only too weak: keep the filters, so coming back needs the
            // signal to climb over `enter_rssi` again.
            !absent
        });
        out
    }

    fn depart(member: &Arc<Member>, visit: Visit, at_ms: u64) -> PresenceChange {
        let at_ms = at_ms.max(visit.since_ms);
        PresenceChange::Depart {
            member: member.clone(),
            zone: visit.zone,
            visit_id: visit.id,
            at_ms,
            dwell_ms: at_ms - visit.since_ms,
            zones: visit.zones.into_iter().map(|z| z.zone).collect(),
        }
    }

    /// Ends tracking of members `keep` refuses (consent withdrawn, removed from the cache): a
    /// present one departs now, a candidate is forgotten.
    pub fn forget_unless(
        &mut self,
        keep: impl Fn(&Member) -> bool,
        now_ms: u64,
    ) -> Vec<PresenceChange> {
        let mut out = Vec::new();
        self.tracks.retain(|_, t| {
            if keep(&t.member) {
                return true;
            }
            let state = std::mem::replace(
                &mut t.state,
                State::Candidate {
                    strong: VecDeque::new(),
                },
            );
            if let State::Present(visit) = state {
                out.push(Self::depart(&t.member, *visit, now_ms));
            }
            false
        });
        out
    }

    /// The records and zones of the members present now (the planned triggers' occasions).
    pub fn present_members(&self) -> Vec<(Arc<Member>, Arc<str>)> {
        self.tracks
            .values()
            .filter_map(|t| match &t.state {
                State::Present(visit) => Some((t.member.clone(), visit.zone.clone())),
                State::Candidate { .. } => None,
            })
            .collect()
    }

    /// Members present now; `wall` converts the monotonic clock to Unix milliseconds.
    pub fn present(&self, wall: impl Fn(u64) -> i64) -> Vec<PresentMember> {
        let mut v: Vec<PresentMember> = self
            .tracks
            .values()
            .filter_map(|t| match &t.state {
                State::Present(visit) => Some(PresentMember {
                    member_id: t.member.member_id.clone(),
                    display_name: t.member.display_name.clone(),
                    tier: t.member.tier.clone(),
                    zone: visit.zone.to_string(),
                    since: wall(visit.since_ms),
                    last_seen: wall(t.last_heard_ms),
                    last_rssi: t.last_rssi,
                }),
                State::Candidate { .. } => None,
            })
            .collect();
        v.sort_by(|a, b| a.since.cmp(&b.since).then(a.member_id.cmp(&b.member_id)));
        v
    }

    /// Members present now.
    pub fn present_count(&self) -> usize {
        self.tracks
            .values()
            .filter(|t| matches!(t.state, State::Present(_)))
            .count()
    }

    /// Members tracked (present or candidate): bounded by the members actually nearby.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests;
