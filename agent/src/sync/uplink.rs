//! The uplink: outbox → event batches on MQTT, acknowledgements → outbox deletions.
//!
//! The outbox is the retransmission buffer. The uplink remembers only which batches it published
//! in the current connection epoch and which head office has not yet acknowledged; on a new
//! epoch (any reconnect) or when the oldest batch has waited [`ACK_TIMEOUT`] for its ack, it
//! forgets that and starts again from the lowest unacknowledged event. Head office de-duplicates
//! on (gateway, seq), so a re-send costs bandwidth, never correctness.
//!
//! Every epoch starts with a hello (an event-less batch naming the outbox's boots) and sends
//! nothing else until head office's answer has been applied with [`Outbox::reconcile`]: that is
//! what keeps a rolled-back outbox from sending an event under a number head office already holds
//! for another (see the outbox docs). The hello is repeated every [`ACK_TIMEOUT`] until answered.
//!
//! The backlog drains in sequence order with up to `max_inflight_batches` full batches in flight;
//! live events are appended behind it and go out in their turn (order is what head office counts
//! visits by). Live events are never starved of *storage*: the outbox thread serves appends
//! between the uplink's bounded reads, so a drain never blocks the engine.

use std::{collections::VecDeque, time::Duration};

use instore_protocol::{
    Ack, Event, EventBatch, Hello, MAX_PAYLOAD_BYTES, SCHEMA_VERSION, SeqRange,
};
use rumqttc::{AsyncClient, ClientError, QoS};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Link;
use crate::{
    config::SyncConfig,
    metrics::Metrics,
    outbox::{Outbox, OutboxError},
};

/// A batch unacknowledged this long (while connected) is presumed lost with everything after it.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying after the outbox or the client failed.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// How often the outbox gauges (depth, oldest age) are refreshed when nothing else happens.
const GAUGE_TICK: Duration = Duration::from_secs(5);
/// Batches stay strictly below the protocol's payload limit.
const MAX_BATCH_BYTES: usize = MAX_PAYLOAD_BYTES - 1 - instore_protocol::auth::SEAL_OVERHEAD;

#[derive(Debug, thiserror::Error)]
enum UplinkError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot encode a batch: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("mqtt client: {0}")]
    Client(#[from] ClientError),
    #[error("cancelled")]
    Cancelled,
}

pub(super) struct Uplink {
    client: AsyncClient,
    topic: String,
    /// Seals every batch (and hello) under this gateway's key.
    sealer: super::Sealer,
    gateway_id: String,
    store_id: String,
    outbox: Outbox,
    metrics: Metrics,
    batch_max_events: usize,
    batch_max_age: Duration,
    max_inflight: usize,
    inflight: Inflight,
    /// Highest sequence number published in this epoch; the next batch starts above it.
    sent_upto: u64,
    /// Highest sequence number this process has published, in any epoch: an ack beyond it names
    /// events head office cannot hold from us, and those are not deleted.
    ever_sent: u64,
    /// The outbox's boot, named in hellos; head office's answer must name it too.
    boot: u64,
    /// Head office answered this epoch's hello and the outbox is reconciled: batches may go.
    welcomed: bool,
    /// When the last unanswered hello went out.
    hello_sent: Option<Instant>,
}

impl Uplink {
    pub(super) fn new(
        client: AsyncClient,
        sealer: super::Sealer,
        gateway_id: String,
        store_id: String,
        cfg: &SyncConfig,
        outbox: Outbox,
        metrics: Metrics,
    ) -> Self {
        Uplink {
            client,
            sealer,
            topic: instore_protocol::topics::events(&gateway_id),
            gateway_id,
            store_id,
            outbox,
            metrics,
            batch_max_events: cfg.batch_max_events.max(1),
            batch_max_age: Duration::from_millis(cfg.batch_max_age_ms),
            max_inflight: cfg.max_inflight_batches.max(1),
            inflight: Inflight::default(),
            sent_upto: 0,
            ever_sent: 0,
            boot: 0,
            welcomed: false,
            hello_sent: None,
        }
    }

    /// Forget what was sent: the next fill starts from the lowest unacknowledged event.
    fn restart(&mut self) {
        self.inflight.clear();
        self.sent_upto = 0;
        self.metrics.batches_inflight.set(0);
    }

    /// The outbox's depth as its last gauge refresh saw it, for head office's dashboard.
    fn outbox_depth(&self) -> Option<u64> {
        u64::try_from(self.metrics.outbox_depth.get()).ok()
    }

    /// Asks head office for its high-water mark and the floors of this outbox's boots.
    async fn send_hello(&mut self, cancel: &CancellationToken) -> Result<(), UplinkError> {
        let boots = self.outbox.boots().await?;
        self.boot = boots.current;
        let batch = EventBatch {
            v: SCHEMA_VERSION,
            gateway_id: self.gateway_id.clone(),
            store_id: self.store_id.clone(),
            hello: Some(Hello {
                boot: boots.current,
                boots: boots.others,
            }),
            outbox: self.outbox_depth(),
            events: Vec::new(),
        };
        let payload = self.sealer.seal(&self.topic, serde_json::to_vec(&batch)?);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(UplinkError::Cancelled),
            r = self.client.publish(self.topic.clone(), QoS::AtLeastOnce, false, payload) => r?,
        }
        self.hello_sent = Some(Instant::now());
        debug!(boot = self.boot, "sync: hello sent");
        Ok(())
    }

    pub(super) async fn run(
        mut self,
        mut link: watch::Receiver<Link>,
        mut acks: mpsc::Receiver<Ack>,
        cancel: CancellationToken,
    ) {
        let mut appended = self.outbox.appended();
        let mut epoch = 0;
        // Set while a partial batch waits for company (or after an error): until then only a
        // commit that could fill a batch, or the deadline, makes the uplink read the outbox
        // again, so a trickle of single events does not cost a read each.
        let mut hold_until: Option<Instant> = None;
        let mut gauges = tokio::time::interval(GAUGE_TICK);
        gauges.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let now = *link.borrow_and_update();
            if now.connected && now.epoch != epoch {
                epoch = now.epoch;
                if self.sent_upto > 0 {
                    info!(
                        unacknowledged_batches = self.inflight.len(),
                        "sync: reconnected; re-sending everything unacknowledged"
                    );
                }
                self.restart();
                self.welcomed = false;
                self.hello_sent = None;
                hold_until = None;
            }
            let hello_due = self
                .hello_sent
                .is_none_or(|t| Instant::now() >= t + ACK_TIMEOUT);
            if now.connected && !self.welcomed && hello_due {
                match self.send_hello(&cancel).await {
                    Ok(()) => {}
                    Err(UplinkError::Cancelled) => break,
                    Err(e) => {
                        warn!(error = %e, "sync: could not send the hello; retrying");
                        self.hello_sent = Some(Instant::now() - ACK_TIMEOUT + RETRY_AFTER_ERROR);
                    }
                }
            }
            let hello_deadline = self
                .hello_sent
                .filter(|_| now.connected && !self.welcomed)
                .map(|t| t + ACK_TIMEOUT);
            let could_fill = appended.borrow_and_update().saturating_sub(self.sent_upto)
                >= self.batch_max_events as u64;
            let due = hold_until.is_none_or(|h| could_fill || Instant::now() >= h);
            if now.connected && self.welcomed && due {
                match self.fill(&cancel).await {
                    Ok(hold) => hold_until = hold,
                    Err(UplinkError::Cancelled) => break,
                    Err(e) => {
                        warn!(error = %e, "sync: uplink failed; retrying");
                        hold_until = Some(Instant::now() + RETRY_AFTER_ERROR);
                    }
                }
            }
            let ack_deadline = self
                .inflight
                .oldest_sent()
                .filter(|_| now.connected)
                .map(|t| t + ACK_TIMEOUT);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(ack) = acks.recv() => {
                    if self.on_ack(ack).await {
                        hold_until = None;
                    }
                }
                () = sleep_until(hello_deadline), if hello_deadline.is_some() => {
                    warn!("sync: no answer to the hello from head office in time; asking again");
                }
                changed = link.changed() => if changed.is_err() { break },
                changed = appended.changed() => if changed.is_err() {
                    info!("sync: outbox closed; uplink stopping");
                    break;
                },
                // Armed only while connected: a past deadline would otherwise spin the loop.
                () = sleep_until(hold_until),
                    if now.connected && self.welcomed && hold_until.is_some() => {}
                () = sleep_until(ack_deadline), if ack_deadline.is_some() => {
                    warn!(
                        unacknowledged_batches = self.inflight.len(),
                        "sync: no ack from head office in time; re-sending"
                    );
                    self.restart();
                    hold_until = None;
                }
                _ = gauges.tick() => {
                    // A stats call makes the outbox thread refresh its gauges (oldest age moves
                    // even when nothing is written).
                    let _ = self.outbox.stats().await;
                }
            }
        }
        debug!("sync: uplink stopped");
    }

    /// Publishes batches until the window is full or the outbox has nothing more to send now.
    /// Returns when to look again if a partial batch is being held for company.
    async fn fill(&mut self, cancel: &CancellationToken) -> Result<Option<Instant>, UplinkError> {
        while self.inflight.len() < self.max_inflight {
            let events = self
                .outbox
                .pending(self.sent_upto, self.batch_max_events)
                .await?;
            let Some(first) = events.first() else {
                return Ok(None);
            };
            // Decide on holding before encoding: a held batch is read again, so encoding it
            // now would be wasted work.
            if events.len() < self.batch_max_events {
                // Event time is wall-clock; clamp so a clock step cannot hold a batch for long.
                let max_age = i64::try_from(self.batch_max_age.as_millis()).unwrap_or(i64::MAX);
                let age = crate::now_ms().saturating_sub(first.at_ms).max(0);
                if age < max_age {
                    let wait = u64::try_from(max_age - age).unwrap_or(0);
                    return Ok(Some(Instant::now() + Duration::from_millis(wait)));
                }
            }
            let (payload, taken) = encode_batch(
                &self.gateway_id,
                &self.store_id,
                self.outbox_depth(),
                &events,
                MAX_BATCH_BYTES,
            )?;
            let seqs: Vec<u64> = events[..taken].iter().map(|e| e.seq).collect();
            let payload = self.sealer.seal(&self.topic, payload);
            let bytes = payload.len();
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(UplinkError::Cancelled),
                r = self.client.publish(self.topic.clone(), QoS::AtLeastOnce, false, payload) => r?,
            }
            let (first_seq, last_seq) = (seqs[0], seqs[seqs.len() - 1]);
            self.sent_upto = last_seq;
            self.ever_sent = self.ever_sent.max(last_seq);
            self.inflight.push(seqs, Instant::now());
            self.metrics
                .batches_inflight
                .set(self.inflight.len() as i64);
            self.metrics.batches_sent.inc();
            self.metrics.events_sent.inc_by(taken as u64);
            debug!(
                first = first_seq,
                last = last_seq,
                events = taken,
                bytes,
                "sync: batch published"
            );
        }
        Ok(None)
    }

    /// Applies an ack; returns true when it was the answer to this epoch's hello (the uplink
    /// may start sending).
    async fn on_ack(&mut self, ack: Ack) -> bool {
        let mut welcomed_now = false;
        if let Some(welcome) = ack
            .hello
            .as_ref()
            .filter(|w| w.boot == self.boot && !self.welcomed)
        {
            match self
                .outbox
                .reconcile(ack.high_water, welcome.floors.clone())
                .await
            {
                Ok(renumbered) => {
                    info!(
                        high_water = ack.high_water,
                        renumbered, "sync: head office answered the hello; sending"
                    );
                    self.welcomed = true;
                    self.hello_sent = None;
                    welcomed_now = true;
                }
                Err(OutboxError::HighWaterOutOfRange(high_water)) => {
                    self.refused("high_water");
                    warn!(
                        high_water,
                        "sync: ignoring a hello answer with a mark too far ahead to keep numbering"
                    );
                    return false;
                }
                Err(e) => {
                    // Not welcomed: the hello is repeated and its answer applied then.
                    error!(error = %e, "sync: could not apply head office's hello answer");
                    return false;
                }
            }
        }
        let (ranges, unsent) = clip_to_sent(&ack.ranges, self.ever_sent);
        if unsent > 0 {
            self.refused("unsent");
            // The MQTT session outlives the process: right after a start, acks of the previous
            // run's batches are expected. Beyond what a running uplink sent, an ack is forged
            // or confused. Either way the events stay and are sent (again).
            if self.ever_sent == 0 {
                info!(
                    unsent,
                    "sync: an ack from before this start names events not sent yet; keeping them"
                );
            } else {
                warn!(
                    unsent,
                    sent_upto = self.ever_sent,
                    "sync: an ack names events this gateway has not sent; keeping them"
                );
            }
        }
        match self
            .outbox
            .acknowledge(ranges.clone(), ack.high_water)
            .await
        {
            Ok(deleted) => {
                self.metrics.events_acked.inc_by(deleted);
                debug!(
                    deleted,
                    high_water = ack.high_water,
                    "sync: head office acknowledged events"
                );
            }
            Err(OutboxError::HighWaterOutOfRange(high_water)) => {
                self.refused("high_water");
                warn!(
                    high_water,
                    "sync: ignoring an ack with a high-water mark too far ahead to keep numbering"
                );
                return welcomed_now;
            }
            Err(e) => {
                // Not deleted, so re-sent later: nothing is lost.
                error!(error = %e, "sync: could not record an ack");
                return welcomed_now;
            }
        }
        self.inflight.acknowledge(&ranges);
        self.metrics
            .batches_inflight
            .set(self.inflight.len() as i64);
        welcomed_now
    }

    fn refused(&self, reason: &'static str) {
        self.metrics
            .acks_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}

/// `ranges` cut to the numbers at or below `sent`, and how many numbers were cut off (saturating:
/// a forged range may span the whole number space). Inverted ranges are dropped.
fn clip_to_sent(ranges: &[SeqRange], sent: u64) -> (Vec<SeqRange>, u64) {
    let mut kept = Vec::with_capacity(ranges.len());
    let mut cut = 0u64;
    for r in ranges.iter().filter(|r| r.first <= r.last) {
        if r.first > sent {
            cut = cut.saturating_add((r.last - r.first).saturating_add(1));
        } else if r.last > sent {
            cut = cut.saturating_add(r.last - sent);
            kept.push(SeqRange {
                first: r.first,
                last: sent,
            });
        } else {
            kept.push(*r);
        }
    }
    (kept, cut)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Encodes the longest prefix of `events` (at least one) whose batch stays within `max_bytes`;
/// returns the payload and how many events it holds.
pub(super) fn encode_batch(
    gateway_id: &str,
    store_id: &str,
    outbox: Option<u64>,
    events: &[Event],
    max_bytes: usize,
) -> Result<(Vec<u8>, usize), serde_json::Error> {
    let mut batch = EventBatch {
        v: SCHEMA_VERSION,
        gateway_id: gateway_id.to_string(),
        store_id: store_id.to_string(),
        hello: None,
        outbox,
        events: Vec::new(),
    };
    let mut out = serde_json::to_vec(&batch)?;
    // `events` is the struct's last field, so the envelope ends in `[]}` and each event is
    // spliced in before `]}`: one serialisation per event, and the size is known exactly.
    if !out.ends_with(b"[]}") {
        batch.events = events.to_vec();
        return Ok((serde_json::to_vec(&batch)?, events.len()));
    }
    let tail = out.split_off(out.len() - 2);
    let mut taken = 0;
    for e in events {
        let encoded = serde_json::to_vec(e)?;
        let comma = usize::from(taken > 0);
        if taken > 0 && out.len() + comma + encoded.len() + tail.len() > max_bytes {
            break;
        }
        if comma == 1 {
            out.push(b',');
        }
        out.extend_from_slice(&encoded);
        taken += 1;
    }
    out.extend_from_slice(&tail);
    Ok((out, taken))
}

/// Batches published in this epoch and not yet acknowledged by head office, oldest first.
#[derive(Debug, Default)]
struct Inflight {
    batches: VecDeque<SentBatch>,
}

#[derive(Debug)]
struct SentBatch {
    seqs: Vec<u64>,
    at: Instant,
}

impl Inflight {
    fn len(&self) -> usize {
        self.batches.len()
    }

    fn clear(&mut self) {
        self.batches.clear();
    }

    fn push(&mut self, seqs: Vec<u64>, at: Instant) {
        self.batches.push_back(SentBatch { seqs, at });
    }

    fn oldest_sent(&self) -> Option<Instant> {
        self.batches.front().map(|b| b.at)
    }

    /// Head office may acknowledge a batch in pieces and out of order: a batch leaves the window
    /// once every one of its events is covered.
    fn acknowledge(&mut self, ranges: &[SeqRange]) {
        for b in &mut self.batches {
            b.seqs
                .retain(|s| !ranges.iter().any(|r| r.first <= *s && *s <= r.last));
        }
        self.batches.retain(|b| !b.seqs.is_empty());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use instore_protocol::EventBody;

    use super::*;

    fn r(first: u64, last: u64) -> SeqRange {
        SeqRange { first, last }
    }

    #[test]
    fn an_ack_is_cut_to_what_was_sent() {
        assert_eq!(
            clip_to_sent(&[r(1, 3), r(5, 9), r(11, 12)], 7),
            (vec![r(1, 3), r(5, 7)], 4)
        );
        assert_eq!(clip_to_sent(&[r(1, 3)], 3), (vec![r(1, 3)], 0));
        // Nothing sent yet (a fresh process): nothing may be deleted.
        assert_eq!(clip_to_sent(&[r(1, 3)], 0), (vec![], 3));
        assert_eq!(
            clip_to_sent(&[r(0, u64::MAX)], 0),
            (vec![r(0, 0)], u64::MAX)
        );
        assert_eq!(clip_to_sent(&[r(1, u64::MAX)], 0), (vec![], u64::MAX));
        assert_eq!(clip_to_sent(&[r(5, 2)], 10), (vec![], 0));
    }

    fn event(seq: u64, message_len: usize) -> Event {
        Event {
            seq,
            at_ms: 1_700_000_000_000,
            body: EventBody::AlertRaised {
                alert_id: format!("a{seq}"),
                rule: "vip".into(),
                member_id: "M1".into(),
                priority: instore_protocol::AlertPriority::High,
                message: "x".repeat(message_len),
                campaign: None,
            },
        }
    }

    #[test]
    fn a_spliced_batch_is_exactly_what_serde_would_write() {
        let events: Vec<Event> = (1..=3).map(|s| event(s, 10)).collect();
        let (payload, taken) = encode_batch("gw-1", "s-1", Some(3), &events, usize::MAX).unwrap();
        assert_eq!(taken, 3);
        let expected = serde_json::to_vec(&EventBatch {
            v: SCHEMA_VERSION,
            gateway_id: "gw-1".into(),
            store_id: "s-1".into(),
            hello: None,
            outbox: Some(3),
            events: events.clone(),
        })
        .unwrap();
        assert_eq!(payload, expected);
        let decoded = EventBatch::decode(&payload).unwrap();
        assert_eq!((decoded.events, decoded.outbox), (events, Some(3)));
    }

    #[test]
    fn batches_are_cut_to_stay_under_the_byte_limit() {
        let events: Vec<Event> = (1..=50).map(|s| event(s, 10_000)).collect();
        let (payload, taken) =
            encode_batch("gw-1", "s-1", Some(3), &events, MAX_BATCH_BYTES).unwrap();
        assert!(payload.len() <= MAX_BATCH_BYTES);
        assert!(taken > 1 && taken < 50, "{taken}");
        let decoded = EventBatch::decode(&payload).unwrap();
        assert_eq!(decoded.events.len(), taken);
        // One event always goes, even over the limit, so the uplink always makes progress.
        let (_, one) = encode_batch("gw-1", "s-1", Some(3), &events, 10).unwrap();
        assert_eq!(one, 1);
    }

    #[test]
    fn a_batch_leaves_the_window_only_when_all_its_events_are_acknowledged() {
        let mut w = Inflight::default();
        let t = Instant::now();
        w.push(vec![1, 2, 3], t);
        w.push(vec![4, 5], t);
        w.acknowledge(&[
            SeqRange { first: 1, last: 2 },
            SeqRange { first: 4, last: 5 },
        ]);
        assert_eq!(w.len(), 1, "batch 1-3 still waits for 3");
        w.acknowledge(&[SeqRange { first: 3, last: 3 }]);
        assert_eq!(w.len(), 0);
    }
}
