//! The closed loop: every step of an alert's life after its raise becomes an outbox event before
//! any tablet hears of it.
//!
//! In: clerk actions (from `web/`) and the expiry clock. Out: `alert_taken`, `alert_outcome`,
//! `alert_dismissed` and `alert_expired` events in the outbox, then the hub's broadcast. A step
//! whose event cannot be committed is undone and reported to the caller, never shown.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{Action, AlertHub, Pending, StepError, Update};
use crate::{
    metrics::Metrics,
    outbox::{NewEvent, Outbox, OutboxError},
};

/// Who performs a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Stable identity (tablet id, `admin`, `system`).
    pub id: String,
    /// What other clerks see and the event records.
    pub label: String,
    /// May close an alert someone else took.
    pub admin: bool,
}

impl Actor {
    /// The agent itself (expiry).
    pub fn system() -> Self {
        Self {
            id: "system".into(),
            label: "system".into(),
            admin: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("the step could not be recorded: {0}")]
    Outbox(#[from] OutboxError),
}

/// The hub plus the outbox: performs steps.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    hub: AlertHub,
    outbox: Outbox,
    metrics: Metrics,
}

impl Lifecycle {
    pub fn new(hub: AlertHub, outbox: Outbox, metrics: Metrics) -> Self {
        Self {
            hub,
            outbox,
            metrics,
        }
    }

    pub fn hub(&self) -> &AlertHub {
        &self.hub
    }

    /// Performs `action` on alert `id`: reserved in the hub, committed to the outbox, then
    /// applied and broadcast. Returns the alert as it stands after the step.
    pub async fn apply(
        &self,
        id: &str,
        action: Action,
        actor: &Actor,
    ) -> Result<Arc<Update>, LifecycleError> {
        let step = match self.hub.begin(id, action, actor) {
            Ok(step) => step,
            Err(e) => {
                self.metrics
                    .alert_steps_refused
                    .get_or_create(&vec![("step", step_name(action))])
                    .inc();
                return Err(e.into());
            }
        };
        self.record(step).await
    }

    async fn record(&self, step: Pending) -> Result<Arc<Update>, LifecycleError> {
        let at_ms = crate::now_ms();
        let event = NewEvent {
            at_ms,
            body: step.event_body(),
        };
        if let Err(e) = self.outbox.append(vec![event]).await {
            self.hub.abort(&step);
            tracing::error!(error = %e, alert = %step.alert_id, "alert step not recorded");
            return Err(e.into());
        }
        self.metrics
            .alert_steps
            .get_or_create(&vec![("step", step_name(step.action))])
            .inc();
        // Only a hub that forgot the alert between begin and commit (500 newer alerts in the
        // meantime) returns None; the event is recorded either way.
        self.hub
            .commit(&step, at_ms)
            .ok_or(LifecycleError::Step(StepError::NotFound))
    }

    /// Expires every open alert raised at least `after` ago. Returns how many expired.
    pub async fn expire_due(&self, after: Duration) -> usize {
        let cutoff = crate::now_ms() - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let mut n = 0;
        for id in self.hub.stale(cutoff) {
            // A clerk may have taken it since `stale` looked: then begin refuses and that's right.
            if self
                .apply(&id, Action::Expire, &Actor::system())
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }
}

/// Outbox events looked at, at most, when recovering (the newest ones).
const RECOVER_SCAN: u64 = 20_000;
/// Steps decided concurrently can commit to the outbox out of wall-clock order: events this much
/// older than the newest saved step are still replayed.
const RECOVER_SLACK_MS: i64 = 60_000;

/// Brings the hub back after a restart: `rows` (from the [`AlertStore`](super::AlertStore), oldest
/// first) as they stand, then every alert event still in the outbox that the store may have
/// missed. Returns (alerts loaded, events that changed something).
///
/// Crash-safety: a raise or step is committed to the outbox first and saved to the store right
/// after (the outbox is the record of truth; no tablet sees a step head office will not hear of).
/// A stop between the two leaves the store one step behind the outbox, and that event is still
/// in the outbox at the next start (it can only leave once head office acknowledged it), so it
/// is replayed here; replaying is idempotent, so events the store already has change nothing.
/// Residual: if head office acknowledged the event in the instant between the two writes, the
/// step is lost locally (the alert may then later expire after a take head office has seen).
pub async fn recover(
    hub: &AlertHub,
    rows: Vec<(super::Alert, super::AlertState)>,
    outbox: &Outbox,
) -> Result<(usize, usize), OutboxError> {
    let newest_ms = rows.iter().map(|(_, s)| s.updated_at_ms).max().unwrap_or(0);
    let loaded = hub.restore(rows);
    let since_ms = newest_ms
        .saturating_sub(RECOVER_SLACK_MS)
        .max(crate::now_ms() - super::store::KEEP_CLOSED_MS);
    let mut after = outbox.last_seq().await?.saturating_sub(RECOVER_SCAN);
    let mut replayed = 0;
    loop {
        let page = outbox.pending(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in page.iter().filter(|e| e.at_ms >= since_ms) {
            if hub.replay(event) {
                replayed += 1;
            }
        }
    }
    Ok((loaded, replayed))
}

fn step_name(action: Action) -> &'static str {
    match action {
        Action::Take => "taken",
        Action::Outcome(_) => "outcome",
        Action::Dismiss => "dismissed",
        Action::Expire => "expired",
    }
}

/// Expires stale alerts once a second until `cancel` fires. `after` of zero disables expiry.
pub async fn run_expiry(lifecycle: Lifecycle, after: Duration, cancel: CancellationToken) {
    if after.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                let n = lifecycle.expire_due(after).await;
                if n > 0 {
                    tracing::debug!(expired = n, "alerts expired");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use instore_protocol::{AlertOutcomeKind, EventBody};

    use super::*;
    use crate::alerts::{Status, tests::alert};

    fn tablet(id: &str) -> Actor {
        Actor {
            id: id.into(),
            label: format!("till {id}"),
            admin: false,
        }
    }

    #[tokio::test]
    async fn each_step_is_an_outbox_event_and_a_refused_step_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let outbox = Outbox::open(&dir.path().join("o.db"), metrics.clone()).unwrap();
        let hub = AlertHub::new(8);
        let lc = Lifecycle::new(hub.clone(), outbox.clone(), metrics);
        hub.publish(alert("a"));
        let mut old = alert("b");
        old.raised_at_ms = 1;
        hub.publish(old);

        let taken = lc.apply("a", Action::Take, &tablet("1")).await.unwrap();
        assert_eq!(taken.state.status, Status::Taken);
        assert!(matches!(
            lc.apply("a", Action::Take, &tablet("2")).await,
            Err(LifecycleError::Step(StepError::Conflict { .. }))
        ));
        lc.apply("a", Action::Outcome(AlertOutcomeKind::NoSale), &tablet("1"))
            .await
            .unwrap();
        assert_eq!(lc.expire_due(Duration::from_secs(60)).await, 1);

        let events = outbox.pending(0, 100).await.unwrap();
        let bodies: Vec<_> = events.iter().map(|e| e.body.clone()).collect();
        assert_eq!(
            bodies,
            [
                EventBody::AlertTaken {
                    alert_id: "a".into(),
                    rule: "r".into(),
                    by: "till 1".into()
                },
                EventBody::AlertOutcome {
                    alert_id: "a".into(),
                    rule: "r".into(),
                    outcome: AlertOutcomeKind::NoSale,
                    by: "till 1".into()
                },
                EventBody::AlertExpired {
                    alert_id: "b".into(),
                    rule: "r".into()
                },
            ]
        );
        outbox.close().await;
    }

    fn stored_hub(
        dir: &std::path::Path,
    ) -> (
        AlertHub,
        Vec<(crate::alerts::Alert, crate::alerts::AlertState)>,
    ) {
        let store = crate::alerts::AlertStore::open(&dir.join("alerts.db")).unwrap();
        let rows = store
            .recent(crate::now_ms(), crate::alerts::store::KEEP_CLOSED_MS, 100)
            .unwrap();
        (AlertHub::with_store(100, store, Default::default()), rows)
    }

    #[tokio::test]
    async fn steps_committed_but_not_saved_before_a_crash_are_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db"), Metrics::default()).unwrap();
        let now = crate::now_ms();
        {
            let (hub, rows) = stored_hub(dir.path());
            assert!(rows.is_empty());
            let mut a = alert("a");
            a.raised_at_ms = now;
            hub.publish(a);
        }
        // Committed to the outbox, then the agent died before saving the state.
        outbox
            .append(vec![
                NewEvent {
                    at_ms: now + 1,
                    body: EventBody::AlertTaken {
                        alert_id: "a".into(),
                        rule: "r".into(),
                        by: "till 1".into(),
                    },
                },
                NewEvent {
                    at_ms: now + 2,
                    body: EventBody::AlertRaised {
                        alert_id: "x".into(),
                        rule: "r".into(),
                        member_id: "M7".into(),
                        priority: instore_protocol::AlertPriority::Low,
                        message: "hello".into(),
                        campaign: None,
                    },
                },
                // Already past: an outcome for an unknown alert changes nothing.
                NewEvent {
                    at_ms: now + 3,
                    body: EventBody::AlertDismissed {
                        alert_id: "gone".into(),
                        rule: "r".into(),
                        by: "till 1".into(),
                    },
                },
            ])
            .await
            .unwrap();
        let view = |hub: &AlertHub| {
            hub.recent(10)
                .iter()
                .map(|u| (u.alert.id.clone(), u.state.status, u.state.taken_by.clone()))
                .collect::<Vec<_>>()
        };
        let expected = [
            ("a".to_string(), Status::Taken, Some("till 1".to_string())),
            ("x".to_string(), Status::Open, None),
        ];
        let (hub, rows) = stored_hub(dir.path());
        assert_eq!(recover(&hub, rows, &outbox).await.unwrap(), (1, 2));
        assert_eq!(view(&hub), expected);
        drop(hub);
        // The replay was saved: the next start loads both and replays nothing.
        let (hub, rows) = stored_hub(dir.path());
        assert_eq!(recover(&hub, rows, &outbox).await.unwrap(), (2, 0));
        assert_eq!(view(&hub), expected);
        assert_eq!(hub.recent(10)[1].alert.member.member_id, "M7");
        outbox.close().await;
    }

    #[tokio::test]
    async fn an_alert_expired_after_a_restart_is_not_expired_again_after_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db"), Metrics::default()).unwrap();
        {
            let (hub, _) = stored_hub(dir.path());
            let mut a = alert("a");
            a.raised_at_ms = crate::now_ms() - 120_000;
            hub.publish(a);
        }
        for expected in [1, 0] {
            let (hub, rows) = stored_hub(dir.path());
            recover(&hub, rows, &outbox).await.unwrap();
            let lc = Lifecycle::new(hub, outbox.clone(), Metrics::default());
            assert_eq!(lc.expire_due(Duration::from_secs(60)).await, expected);
        }
        let expired = outbox
            .pending(0, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.body, EventBody::AlertExpired { .. }))
            .count();
        assert_eq!(expired, 1);
        outbox.close().await;
    }
}
