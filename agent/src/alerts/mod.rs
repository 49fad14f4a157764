//! Clerk alerts: the hub every alert passes through on its way to the tablets, and its life after
//! it was raised.
//!
//! In: alerts from the engine, after their `alert_raised` event is committed to the outbox; clerk
//! actions (take, outcome, dismiss) from the web and expiries from [`lifecycle::run_expiry`]. Out: a
//! bounded ring of *updates* — each one an alert as it stands after a step, numbered — for
//! `GET /api/alerts` and SSE catch-up by `Last-Event-ID`, and a broadcast of the same updates to
//! live SSE clients. A slow client lags and catches up from the ring; it never blocks the engine.
//!
//! A step is decided here under the hub's lock ([`AlertHub::begin`] reserves it, so a second
//! tablet taking the same alert is refused at once), written to the outbox by [`Lifecycle`], and
//! only then applied and broadcast ([`AlertHub::commit`]): no tablet sees a step head office will
//! never hear of.

pub mod lifecycle;
pub mod store;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use instore_protocol::{AlertOutcomeKind, AlertPriority, Event, EventBody, member::LastPurchase};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use tokio::sync::broadcast;

pub use lifecycle::{Actor, Lifecycle, LifecycleError};
pub use store::{AlertStore, AlertStoreError};

/// What a clerk's tablet shows about the member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberCard {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub stage: Option<String>,
    pub tags: Vec<String>,
    pub last_purchase: Option<LastPurchase>,
    /// Head office's pyramid band (`top2` … `rest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visits_12m: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_visit: Option<String>,
    /// "Expected back" date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_next_visit: Option<String>,
    /// Days overdue (past head office's `overdue_after`) on the day of the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_days: Option<i64>,
    /// The one action the rule suggests for this member (its `suggest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// An alert as raised: immutable once published.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Globally unique (UUID), the same id as in the `alert_raised` event.
    pub id: String,
    /// Position of the raise in this hub; 0 until published.
    pub seq: u64,
    pub raised_at_ms: i64,
    pub rule: String,
    /// `id@version` of the head-office campaign whose rule raised it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    pub priority: AlertPriority,
    pub message: String,
    pub zone: String,
    pub member: MemberCard,
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Raised; nobody has taken it yet.
    #[default]
    Open,
    /// A clerk is on it.
    Taken,
    /// A clerk recorded an outcome.
    Closed,
    Dismissed,
    /// Nobody took or closed it in time.
    Expired,
}

/// The changing part of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct AlertState {
    pub status: Status,
    /// Label of the tablet that took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_by: Option<String>,
    /// Who took it, by identity (tablet id), to let the same tablet close it. Not shown.
    #[serde(skip)]
    pub taken_by_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AlertOutcomeKind>,
    /// Label of who closed or dismissed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// Wall-clock time of the last step (the raise, at first).
    pub updated_at_ms: i64,
}

/// A step in an alert's life after it was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Take,
    Outcome(AlertOutcomeKind),
    Dismiss,
    Expire,
}

/// What an update announces; the SSE event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    Raised,
    Taken,
    Outcome,
    Dismissed,
    Expired,
}

impl UpdateKind {
    /// The SSE `event:` name. A raise stays `alert`, as before lifecycle steps existed.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Raised => "alert",
            UpdateKind::Taken => "alert_taken",
            UpdateKind::Outcome => "alert_outcome",
            UpdateKind::Dismissed => "alert_dismissed",
            UpdateKind::Expired => "alert_expired",
        }
    }
}

/// One numbered change: the alert as it stands after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Position in this hub's update sequence; the SSE event id (with the hub's epoch).
    pub seq: u64,
    pub kind: UpdateKind,
    pub alert: Arc<Alert>,
    pub state: AlertState,
    /// The hub's epoch, so an id from another agent process is recognised as such.
    pub epoch: Arc<str>,
}

impl Update {
    /// `epoch-seq`: what a client sends back as `Last-Event-ID`.
    pub fn event_id(&self) -> String {
        format!("{}-{}", self.epoch, self.seq)
    }
}

impl Serialize for Update {
    /// The alert's fields, its state, and `event_id`, flat: one object a tablet upserts by `id`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = &self.alert;
        let st = &self.state;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &a.id)?;
        m.serialize_entry("seq", &self.seq)?;
        m.serialize_entry("event_id", &self.event_id())?;
        m.serialize_entry("raised_at_ms", &a.raised_at_ms)?;
        m.serialize_entry("rule", &a.rule)?;
        m.serialize_entry("priority", &a.priority)?;
        m.serialize_entry("message", &a.message)?;
        m.serialize_entry("zone", &a.zone)?;
        m.serialize_entry("member", &a.member)?;
        m.serialize_entry("status", &st.status)?;
        if let Some(by) = &st.taken_by {
            m.serialize_entry("taken_by", by)?;
        }
        if let Some(o) = &st.outcome {
            m.serialize_entry("outcome", o)?;
        }
        if let Some(by) = &st.closed_by {
            m.serialize_entry("closed_by", by)?;
        }
        m.serialize_entry("updated_at_ms", &st.updated_at_ms)?;
        m.end()
    }
}

/// Why a step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("no such alert (or too old to act on)")]
    NotFound,
    #[error("the alert is {status:?}{}", by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default())]
    Conflict { status: Status, by: Option<String> },
    #[error("another step on this alert is being recorded")]
    Busy,
}

/// A step reserved by [`AlertHub::begin`], to be committed or aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub alert_id: String,
    pub rule: String,
    pub action: Action,
    /// Label recorded in the event.
    pub by: String,
    pub by_id: String,
}

impl Pending {
    /// The outbox event recording this step.
    pub fn event_body(&self) -> EventBody {
        let alert_id = self.alert_id.clone();
        let rule = self.rule.clone();
        let by = self.by.clone();
        match self.action {
            Action::Take => EventBody::AlertTaken { alert_id, rule, by },
            Action::Outcome(outcome) => EventBody::AlertOutcome {
                alert_id,
                rule,
                outcome,
                by,
            },
            Action::Dismiss => EventBody::AlertDismissed { alert_id, rule, by },
            Action::Expire => EventBody::AlertExpired { alert_id, rule },
        }
    }
}

struct Entry {
    alert: Arc<Alert>,
    state: AlertState,
    /// A step is between `begin` and `commit`/`abort`.
    pending: bool,
}

struct Inner {
    next_seq: u64,
    updates: VecDeque<Arc<Update>>,
    /// Recent alerts by raise order, with their current state.
    order: VecDeque<String>,
    entries: HashMap<String, Entry>,
}

/// Cloneable handle to the hub.
#[derive(Clone)]
pub struct AlertHub {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<Update>>,
    capacity: usize,
    epoch: Arc<str>,
    /// Where alert state survives a restart; None in tests and benchmarks that need no disk.
    store: Option<(Arc<AlertStore>, Counter)>,
}

impl std::fmt::Debug for AlertHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertHub")
            .field("capacity", &self.capacity)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// Updates kept per alert remembered: a raise plus a few steps each.
const UPDATES_PER_ALERT: usize = 4;

impl AlertHub {
    /// A hub that remembers the last `capacity` alerts (and their recent updates).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                next_seq: 1,
                updates: VecDeque::with_capacity(capacity * UPDATES_PER_ALERT),
                order: VecDeque::with_capacity(capacity),
                entries: HashMap::with_capacity(capacity),
            })),
            tx,
            capacity,
            // Random per process: sequence numbers restart at 1 when the agent does.
            epoch: Arc::from(format!("{:08x}", rand::random::<u32>())),
            store: None,
        }
    }

    /// A hub that writes every raise and step to `store` once applied (a failed write is logged
    /// and counted in `errors`; the tablets and the outbox already have the step).
    pub fn with_store(capacity: usize, store: AlertStore, errors: Counter) -> Self {
        let mut hub = Self::new(capacity);
        hub.store = Some((Arc::new(store), errors));
        hub
    }

    /// Called under the hub's lock, so an alert's rows are written in the order its steps were
    /// applied.
    fn persist(&self, alert: &Alert, state: &AlertState) {
        if let Some((store, errors)) = &self.store
            && let Err(e) = store.save(alert, state)
        {
            errors.inc();
            tracing::error!(error = %e, alert = %alert.id, "alert state not saved");
        }
    }

    /// Takes alerts loaded from the store (oldest raise first) as they stand: numbered and in
    /// the ring, so `GET /api/alerts`, SSE catch-up and clerk steps work on them. Alerts the hub
    /// already knows are skipped. Nothing is broadcast or written back.
    pub fn restore(&self, rows: Vec<(Alert, AlertState)>) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for (mut alert, state) in rows {
            if inner.entries.contains_key(&alert.id) {
                continue;
            }
            alert.seq = inner.next_seq;
            let alert = Arc::new(alert);
            self.remember(&mut inner, alert.clone(), state.clone());
            let kind = match state.status {
                Status::Open => UpdateKind::Raised,
                Status::Taken => UpdateKind::Taken,
                Status::Closed => UpdateKind::Outcome,
                Status::Dismissed => UpdateKind::Dismissed,
                Status::Expired => UpdateKind::Expired,
            };
            self.push(&mut inner, kind, alert, state);
            n += 1;
        }
        n
    }

    /// Applies an alert event found in the outbox at start, in case the agent stopped between
    /// committing it and saving the state (see [`restore`]). Idempotent: a raise the hub knows,
    /// or a step its alert is already past, changes nothing. Returns whether it changed anything.
    pub fn replay(&self, event: &Event) -> bool {
        let mut inner = self.lock();
        let (id, action, by) = match &event.body {
            EventBody::AlertRaised {
                alert_id,
                rule,
                member_id,
                priority,
                message,
                campaign,
            } => {
                if inner.entries.contains_key(alert_id) {
                    return false;
                }
                // The event has no card: the tablet shows the member id until the alert ends.
                let alert = Arc::new(Alert {
                    id: alert_id.clone(),
                    seq: inner.next_seq,
                    raised_at_ms: event.at_ms,
                    rule: rule.clone(),
                    campaign: campaign.clone(),
                    priority: *priority,
                    message: message.clone(),
                    zone: String::new(),
                    member: MemberCard {
                        member_id: member_id.clone(),
                        display_name: member_id.clone(),
                        tier: String::new(),
                        stage: None,
                        tags: Vec::new(),
                        last_purchase: None,
                        ..Default::default()
                    },
                });
                let state = AlertState {
                    updated_at_ms: event.at_ms,
                    ..AlertState::default()
                };
                self.remember(&mut inner, alert.clone(), state.clone());
                self.persist(&alert, &state);
                self.push(&mut inner, UpdateKind::Raised, alert, state);
                return true;
            }
            EventBody::AlertTaken { alert_id, by, .. } => (alert_id, Action::Take, Some(by)),
            EventBody::AlertOutcome {
                alert_id,
                outcome,
                by,
                ..
            } => (alert_id, Action::Outcome(*outcome), Some(by)),
            EventBody::AlertDismissed { alert_id, by, .. } => (alert_id, Action::Dismiss, Some(by)),
            EventBody::AlertExpired { alert_id, .. } => (alert_id, Action::Expire, None),
            _ => return false,
        };
        let Some(entry) = inner.entries.get(id.as_str()) else {
            return false;
        };
        let applies = matches!(
            (action, entry.state.status),
            (_, Status::Open) | (Action::Outcome(_) | Action::Dismiss, Status::Taken)
        );
        if !applies {
            return false;
        }
        let step = Pending {
            alert_id: id.clone(),
            rule: entry.alert.rule.clone(),
            action,
            by: by.cloned().unwrap_or_else(|| "system".into()),
            // Not in the event: only an admin can close an alert taken this way.
            by_id: String::new(),
        };
        drop(inner);
        self.commit(&step, event.at_ms).is_some()
    }

    fn remember(&self, inner: &mut Inner, alert: Arc<Alert>, state: AlertState) {
        if inner.order.len() == self.capacity
            && let Some(old) = inner.order.pop_front()
        {
            inner.entries.remove(&old);
        }
        inner.order.push_back(alert.id.clone());
        inner.entries.insert(
            alert.id.clone(),
            Entry {
                alert,
                state,
                pending: false,
            },
        );
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this short lock cannot leave the ring inconsistent; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the update, remembers it and sends it to live subscribers. Called under the lock
    /// so that a subscriber's catch-up (`subscribe_since`) and the live stream neither miss nor
    /// repeat an update.
    fn push(
        &self,
        inner: &mut Inner,
        kind: UpdateKind,
        alert: Arc<Alert>,
        state: AlertState,
    ) -> Arc<Update> {
        let update = Arc::new(Update {
            seq: inner.next_seq,
            kind,
            alert,
            state,
            epoch: self.epoch.clone(),
        });
        inner.next_seq += 1;
        if inner.updates.len() == self.capacity * UPDATES_PER_ALERT {
            inner.updates.pop_front();
        }
        inner.updates.push_back(update.clone());
        let _ = self.tx.send(update.clone());
        update
    }

    /// Numbers a raised alert, remembers it and sends it to live subscribers.
    pub fn publish(&self, mut alert: Alert) -> Arc<Update> {
        if alert.raised_at_ms == 0 {
            // Not stamped by the producer: the moment it reaches the clerks is close enough.
            alert.raised_at_ms = crate::now_ms();
        }
        let mut inner = self.lock();
        alert.seq = inner.next_seq;
        let state = AlertState {
            updated_at_ms: alert.raised_at_ms,
            ..AlertState::default()
        };
        let alert = Arc::new(alert);
        self.remember(&mut inner, alert.clone(), state.clone());
        // Tablets first (latency), then the disk, both under the lock.
        let update = self.push(&mut inner, UpdateKind::Raised, alert.clone(), state.clone());
        self.persist(&alert, &state);
        update
    }

    /// The most recent alerts as they stand now, oldest raise first. Each carries the sequence
    /// number of its latest update.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Update>> {
        let inner = self.lock();
        let skip = inner.order.len().saturating_sub(limit);
        let latest: HashMap<&str, &Arc<Update>> = inner
            .updates
            .iter()
            .map(|u| (u.alert.id.as_str(), u))
            .collect();
        inner
            .order
            .iter()
            .skip(skip)
            .filter_map(|id| {
                let entry = inner.entries.get(id)?;
                Some(match latest.get(id.as_str()) {
                    Some(u) => (*u).clone(),
                    // Its updates fell out of the ring (many steps since): rebuild the view.
                    None => Arc::new(Update {
                        seq: entry.alert.seq,
                        kind: UpdateKind::Raised,
                        alert: entry.alert.clone(),
                        state: entry.state.clone(),
                        epoch: self.epoch.clone(),
                    }),
                })
            })
            .collect()
    }

    /// The newest update's sequence number (0: none yet).
    pub fn newest_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Updates after `seq` still in the ring, plus a live receiver for everything later, taken
    /// atomically.
    pub fn subscribe_since(
        &self,
        seq: u64,
    ) -> (Vec<Arc<Update>>, broadcast::Receiver<Arc<Update>>) {
        let inner = self.lock();
        let missed = inner
            .updates
            .iter()
            .filter(|u| u.seq > seq)
            .cloned()
            .collect();
        (missed, self.tx.subscribe())
    }

    /// Open alerts raised at or before `cutoff_ms` and not being acted on.
    pub fn stale(&self, cutoff_ms: i64) -> Vec<String> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|id| inner.entries.get(id))
            .filter(|e| {
                !e.pending && e.state.status == Status::Open && e.alert.raised_at_ms <= cutoff_ms
            })
            .map(|e| e.alert.id.clone())
            .collect()
    }

    /// Decides whether `action` by `actor` may happen to alert `id` now and reserves it: until
    /// [`commit`](Self::commit) or [`abort`](Self::abort), every other step on it is refused.
    pub fn begin(&self, id: &str, action: Action, actor: &Actor) -> Result<Pending, StepError> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(id).ok_or(StepError::NotFound)?;
        if entry.pending {
            return Err(StepError::Busy);
        }
        let st = &entry.state;
        let conflict = || StepError::Conflict {
            status: st.status,
            by: st.taken_by.clone().or_else(|| st.closed_by.clone()),
        };
        let allowed = match (action, st.status) {
            (Action::Take | Action::Expire, Status::Open) => true,
            (Action::Outcome(_) | Action::Dismiss, Status::Open) => true,
            // Whoever took it closes it; the manager (admin) may close anyone's.
            (Action::Outcome(_) | Action::Dismiss, Status::Taken) => {
                actor.admin || st.taken_by_id.as_deref() == Some(actor.id.as_str())
            }
            _ => false,
        };
        if !allowed {
            return Err(conflict());
        }
        entry.pending = true;
        Ok(Pending {
            alert_id: id.to_owned(),
            rule: entry.alert.rule.clone(),
            action,
            by: actor.label.clone(),
            by_id: actor.id.clone(),
        })
    }

    /// Applies a reserved step (its event is committed) and broadcasts it.
    pub fn commit(&self, step: &Pending, at_ms: i64) -> Option<Arc<Update>> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(&step.alert_id)?;
        entry.pending = false;
        let st = &mut entry.state;
        st.updated_at_ms = at_ms;
        let kind = match step.action {
            Action::Take => {
                st.status = Status::Taken;
                st.taken_by = Some(step.by.clone());
                st.taken_by_id = Some(step.by_id.clone());
                UpdateKind::Taken
            }
            Action::Outcome(outcome) => {
                st.status = Status::Closed;
                st.outcome = Some(outcome);
                st.closed_by = Some(step.by.clone());
                UpdateKind::Outcome
            }
            Action::Dismiss => {
                st.status = Status::Dismissed;
                st.closed_by = Some(step.by.clone());
                UpdateKind::Dismissed
            }
            Action::Expire => {
                st.status = Status::Expired;
                UpdateKind::Expired
            }
        };
        let (alert, state) = (entry.alert.clone(), entry.state.clone());
        let update = self.push(&mut inner, kind, alert.clone(), state.clone());
        self.persist(&alert, &state);
        Some(update)
    }

    /// Releases a reserved step whose event could not be committed.
    pub fn abort(&self, step: &Pending) {
        if let Some(entry) = self.lock().entries.get_mut(&step.alert_id) {
            entry.pending = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn alert(id: &str) -> Alert {
        Alert {
            id: id.into(),
            seq: 0,
            raised_at_ms: 0,
            rule: "r".into(),
            campaign: None,
            priority: AlertPriority::High,
            message: "m".into(),
            zone: "entrance".into(),
            member: MemberCard {
                member_id: "M".into(),
                display_name: "N".into(),
                tier: "gold".into(),
                stage: None,
                tags: vec![],
                last_purchase: None,
                ..Default::default()
            },
        }
    }

    fn tablet(id: &str) -> Actor {
        Actor {
            id: id.into(),
            label: format!("label {id}"),
            admin: false,
        }
    }

    #[test]
    fn alerts_are_numbered_and_the_ring_keeps_the_newest() {
        let hub = AlertHub::new(2);
        for id in ["a", "b", "c"] {
            hub.publish(alert(id));
        }
        let recent: Vec<_> = hub
            .recent(10)
            .iter()
            .map(|a| (a.alert.id.clone(), a.seq))
            .collect();
        assert_eq!(recent, [("b".into(), 2), ("c".into(), 3)]);
    }

    #[tokio::test]
    async fn a_reconnecting_client_gets_what_it_missed_then_live_alerts() {
        let hub = AlertHub::new(10);
        hub.publish(alert("a"));
        hub.publish(alert("b"));
        let (missed, mut live) = hub.subscribe_since(1);
        assert_eq!(
            missed
                .iter()
                .map(|a| a.alert.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        hub.publish(alert("c"));
        assert_eq!(live.recv().await.unwrap().alert.id, "c");
    }

    #[test]
    fn a_taken_alert_cannot_be_taken_again_or_closed_by_another_tablet() {
        let hub = AlertHub::new(4);
        hub.publish(alert("a"));
        let step = hub.begin("a", Action::Take, &tablet("t1")).unwrap();
        // While the first take is being recorded, a second is refused without waiting.
        assert_eq!(
            hub.begin("a", Action::Take, &tablet("t2")),
            Err(StepError::Busy)
        );
        let update = hub.commit(&step, 5).unwrap();
        assert_eq!(update.kind, UpdateKind::Taken);
        assert_eq!(update.state.taken_by.as_deref(), Some("label t1"));
        assert!(matches!(
            hub.begin("a", Action::Take, &tablet("t1")),
            Err(StepError::Conflict {
                status: Status::Taken,
                ..
            })
        ));
        assert!(matches!(
            hub.begin("a", Action::Dismiss, &tablet("t2")),
            Err(StepError::Conflict { .. })
        ));
        let close = hub
            .begin(
                "a",
                Action::Outcome(AlertOutcomeKind::Purchased),
                &tablet("t1"),
            )
            .unwrap();
        let update = hub.commit(&close, 6).unwrap();
        assert_eq!(update.state.status, Status::Closed);
        assert!(hub.begin("a", Action::Expire, &tablet("sys")).is_err());
    }

    #[test]
    fn an_aborted_step_leaves_the_alert_open() {
        let hub = AlertHub::new(4);
        hub.publish(alert("a"));
        let step = hub.begin("a", Action::Take, &tablet("t1")).unwrap();
        hub.abort(&step);
        assert!(hub.begin("a", Action::Take, &tablet("t2")).is_ok());
        assert_eq!(
            hub.begin("zz", Action::Take, &tablet("t2")),
            Err(StepError::NotFound)
        );
    }

    #[test]
    fn only_open_alerts_older_than_the_cutoff_are_stale() {
        let hub = AlertHub::new(4);
        let mut old = alert("old");
        old.raised_at_ms = 100;
        hub.publish(old);
        let mut taken = alert("taken");
        taken.raised_at_ms = 100;
        hub.publish(taken);
        let mut new = alert("new");
        new.raised_at_ms = 900;
        hub.publish(new);
        let step = hub.begin("taken", Action::Take, &tablet("t1")).unwrap();
        hub.commit(&step, 200);
        assert_eq!(hub.stale(500), ["old"]);
    }

    #[test]
    fn recent_shows_each_alert_once_in_its_latest_state() {
        let hub = AlertHub::new(4);
        hub.publish(alert("a"));
        hub.publish(alert("b"));
        let step = hub.begin("a", Action::Take, &tablet("t1")).unwrap();
        hub.commit(&step, 1);
        let recent = hub.recent(10);
        let view: Vec<_> = recent
            .iter()
            .map(|u| (u.alert.id.as_str(), u.state.status, u.seq))
            .collect();
        assert_eq!(view, [("a", Status::Taken, 3), ("b", Status::Open, 2)]);
        let json = serde_json::to_value(&*recent[0]).unwrap();
        assert_eq!(json["status"], "taken");
        assert_eq!(json["taken_by"], "label t1");
        assert_eq!(json["event_id"], format!("{}-3", hub.epoch()));
        assert!(json.get("taken_by_id").is_none());
    }
}
