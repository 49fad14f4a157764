//! Clerk alerts: the hub every alert passes through on its way to the tablets.
//!
//! In: alerts from the engine, after their `alert_raised` event is committed to the outbox. Out: a
//! bounded ring of recent alerts (for `GET /api/alerts` and SSE catch-up by `Last-Event-ID`) and a
//! broadcast to live SSE clients. A slow client lags and catches up from the ring; it never blocks
//! the engine.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use instore_protocol::{AlertPriority, member::LastPurchase};
use serde::Serialize;
use tokio::sync::broadcast;

/// What a clerk's tablet shows about the member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberCard {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub stage: Option<String>,
    pub tags: Vec<String>,
    pub last_purchase: Option<LastPurchase>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Globally unique (UUID), the same id as in the `alert_raised` event.
    pub id: String,
    /// Position in this hub, used as the SSE event id; 0 until published.
    pub seq: u64,
    pub raised_at_ms: i64,
    pub rule: String,
    pub priority: AlertPriority,
    pub message: String,
    pub zone: String,
    pub member: MemberCard,
}

struct Inner {
    next_seq: u64,
    recent: VecDeque<Arc<Alert>>,
}

/// Cloneable handle to the hub.
#[derive(Clone)]
pub struct AlertHub {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<Alert>>,
    capacity: usize,
}

impl std::fmt::Debug for AlertHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertHub")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl AlertHub {
    /// A hub that remembers the last `capacity` alerts.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                next_seq: 1,
                recent: VecDeque::with_capacity(capacity),
            })),
            tx,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this short lock cannot leave the ring inconsistent; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the alert, remembers it and sends it to live subscribers.
    pub fn publish(&self, mut alert: Alert) -> Arc<Alert> {
        let mut inner = self.lock();
        alert.seq = inner.next_seq;
        inner.next_seq += 1;
        let alert = Arc::new(alert);
        if inner.recent.len() == self.capacity {
            inner.recent.pop_front();
        }
        inner.recent.push_back(alert.clone());
        // Sent under the lock so that a subscriber's catch-up (`subscribe_since`) and the live
        // stream neither miss nor repeat an alert.
        let _ = self.tx.send(alert.clone());
        alert
    }

    /// The most recent alerts, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Alert>> {
        let inner = self.lock();
        let skip = inner.recent.len().saturating_sub(limit);
        inner.recent.iter().skip(skip).cloned().collect()
    }

    /// Alerts after `seq` still in the ring, plus a live receiver for everything later, taken
    /// atomically.
    pub fn subscribe_since(&self, seq: u64) -> (Vec<Arc<Alert>>, broadcast::Receiver<Arc<Alert>>) {
        let inner = self.lock();
        let missed = inner
            .recent
            .iter()
            .filter(|a| a.seq > seq)
            .cloned()
            .collect();
        (missed, self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str) -> Alert {
        Alert {
            id: id.into(),
            seq: 0,
            raised_at_ms: 0,
            rule: "r".into(),
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
            },
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
            .map(|a| (a.id.clone(), a.seq))
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
            missed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        hub.publish(alert("c"));
        assert_eq!(live.recv().await.unwrap().id, "c");
    }
}
