//! Ingest: event batches and gateway status from MQTT into SQLite, then acks back.
//!
//! In: publishes on [`instore_protocol::topics::ALL_EVENTS`] and
//! [`instore_protocol::topics::ALL_STATUS`], from the event-loop task ([`mqtt`]). Out: rows in
//! `events`/`gateways`, an [`instore_protocol::Ack`] per batch on `topics::ack(gateway)`, and
//! "store seen" inputs for the members notifier.
//!
//! Invariant: an ack is published only after the transaction holding its events has committed,
//! and the MQTT message is acknowledged to the broker only after that, so a crash at any point
//! leads to redelivery (and de-duplication), never to loss. A commit that keeps failing does not
//! stall ingest: after a few retries the message is acknowledged to the broker *without* an ack
//! to the gateway, which still holds the events and re-sends them after its ack timeout. (Leaving
//! it unacknowledged would fill the broker's inflight window and stop ingest until a reconnect.)
//! A batch carrying a hello is answered with the boots' floors (see `store::ingest`). A bad payload is counted, logged
//! without its contents and acknowledged (redelivering it would not make it better); ingest
//! carries on.

pub mod decode;
pub mod members;
pub mod mqtt;
pub mod purchases;
pub mod visits;

use std::collections::BTreeSet;

use instore_protocol::{Ack, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;

use crate::{
    fanout::notifier::NoticeInput,
    metrics::Metrics,
    now_ms,
    store::{IngestItem, ItemOutcome, Store, StoreError, ingest::ingest},
};
use decode::{BadReason, Decoded, contiguous_ranges};

/// Most messages committed in one transaction: amortises the fsync under load, while a lone
/// batch is committed at once.
const MAX_GROUP: usize = 64;
/// Tries per commit, and the pause before the first retry (doubling): a locked or briefly full
/// disk gets ~350 ms before the messages are released for the gateways to re-send.
const COMMIT_ATTEMPTS: u32 = 3;
const COMMIT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);

/// The ingest task's dependencies.
#[derive(Debug)]
pub struct Ingest {
    pub store: Store,
    pub client: AsyncClient,
    pub metrics: Metrics,
    pub notices: mpsc::Sender<NoticeInput>,
    /// Checks seals on what gateways send and seals the acks.
    pub auth: decode::MessageAuth,
}

impl Ingest {
    /// Runs until the publish channel closes (the event loop stopped forwarding), finishing the
    /// group in hand first.
    pub async fn run(self, mut publishes: mpsc::Receiver<Publish>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = publishes.recv().await {
            group.push(first);
            while group.len() < MAX_GROUP {
                match publishes.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            self.handle_group(std::mem::take(&mut group)).await;
        }
        tracing::debug!("ingest stopped");
    }

    async fn handle_group(&self, group: Vec<Publish>) {
        let decoded: Vec<Decoded> = group
            .iter()
            .map(|p| decode::decode(&p.topic, &p.payload, &self.auth))
            .collect();
        let mut items = Vec::with_capacity(decoded.len());
        let mut stores = BTreeSet::new();
        for (d, p) in decoded.iter().zip(&group) {
            match d {
                Decoded::Batch(b) => {
                    stores.insert(b.store_id.clone());
                    items.push(IngestItem::Batch(b.clone()));
                }
                Decoded::Status(s, signed) => {
                    stores.insert(s.store_id.clone());
                    items.push(IngestItem::Status {
                        gateway_id: s.gateway_id.clone(),
                        store_id: s.store_id.clone(),
                        online: s.online,
                        signed: *signed,
                    });
                }
                Decoded::Bad {
                    gateway_id,
                    reason,
                    detail,
                } => {
                    bad_payload(
                        &self.metrics,
                        gateway_id.as_deref(),
                        *reason,
                        detail,
                        p.payload.len(),
                    );
                    if let Some(gw) = gateway_id {
                        items.push(IngestItem::Bad {
                            gateway_id: gw.clone(),
                        });
                    }
                }
            }
        }

        let outcomes = self.commit(&items).await;
        for (item, outcome) in items.iter().zip(&outcomes) {
            match (item, outcome) {
                (IngestItem::Batch(b), Some(ItemOutcome::Batch(o))) => {
                    self.metrics.batches.inc();
                    self.metrics.events_received.inc_by(o.inserted);
                    self.metrics.duplicates_dropped.inc_by(o.duplicates);
                    if b.unreadable > 0 {
                        self.metrics.events_unreadable.inc_by(b.unreadable);
                        tracing::warn!(
                            gateway = %b.gateway_id,
                            events = b.unreadable,
                            "stored events this head office cannot read (a newer gateway?) as \
                             sent, type \"unreadable\""
                        );
                    }
                    if o.welcome.is_some() {
                        self.metrics.hellos.inc();
                    }
                    self.metrics.events_redacted.inc_by(o.redacted);
                    if o.codes_cross_store > 0 {
                        self.metrics
                            .member_codes_cross_store
                            .inc_by(o.codes_cross_store);
                        tracing::warn!(
                            store = %b.store_id,
                            gateway = %b.gateway_id,
                            codes = o.codes_cross_store,
                            "a member code was used at this store after another store had \
                             taken it (a copied code?): see GET /api/member-codes/flags"
                        );
                    }
                    if o.refused > 0 {
                        self.metrics.seq_jumps_refused.inc_by(o.refused);
                        tracing::warn!(
                            gateway = %b.gateway_id,
                            refused = o.refused,
                            above = o.seq_bound,
                            "ingest: events numbered too far beyond the gateway's last were not \
                             stored (forged or corrupt batch)"
                        );
                    }
                    tracing::debug!(
                        gateway = %b.gateway_id,
                        events = b.events.len(),
                        inserted = o.inserted,
                        duplicates = o.duplicates,
                        high_water = o.high_water,
                        "batch committed"
                    );
                    let ack = Ack {
                        v: SCHEMA_VERSION,
                        gateway_id: b.gateway_id.clone(),
                        ranges: contiguous_ranges(
                            b.events
                                .iter()
                                .filter(|e| e.seq <= o.seq_bound)
                                .map(|e| e.seq.max(0) as u64),
                        ),
                        high_water: o.high_water,
                        hello: o.welcome.clone(),
                    };
                    self.publish_ack(&ack, &b.store_id).await;
                }
                (item, Some(ItemOutcome::Unsigned)) => bad_payload(
                    &self.metrics,
                    Some(item.gateway_id()),
                    BadReason::Unsigned,
                    "plain message from a gateway that seals its messages",
                    0,
                ),
                (
                    IngestItem::Status {
                        gateway_id, online, ..
                    },
                    Some(_),
                ) => {
                    self.metrics.status_messages.inc();
                    tracing::info!(gateway = %gateway_id, online, "gateway status");
                }
                (item, None) => {
                    // Released to the broker unstored and unacknowledged: a batch or hello comes
                    // again from the gateway's outbox after its ack timeout; a status with the
                    // gateway's next connection.
                    self.metrics.ingest_abandoned.inc();
                    tracing::error!(
                        gateway = item.gateway_id(),
                        "ingest: could not store a message; released it for the gateway to resend"
                    );
                }
                _ => {}
            }
        }
        for store in stores {
            // Best effort: a full queue only delays the notice to this store's next message.
            let _ = self.notices.try_send(NoticeInput::StoreSeen(store));
        }
        for p in &group {
            if let Err(e) = self.client.ack(p).await {
                tracing::warn!(error = %e, "cannot acknowledge a message to the broker");
            }
        }
    }

    /// Commits `items` in one transaction, retrying a failed commit a few times; if the group
    /// still fails, commits each item on its own so one that cannot be stored does not hold up
    /// the rest. `None` marks an item that could not be stored. Bounded: ingest never stalls on
    /// a database error, it carries on with the next messages.
    async fn commit(&self, items: &[IngestItem]) -> Vec<Option<ItemOutcome>> {
        if items.is_empty() {
            return Vec::new();
        }
        if let Some(all) = self.commit_with_retries(items.to_vec()).await {
            return all.into_iter().map(Some).collect();
        }
        if items.len() == 1 {
            return vec![None];
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let one = self.commit_with_retries(vec![item.clone()]).await;
            out.push(one.and_then(|mut o| o.pop()));
        }
        out
    }

    async fn commit_with_retries(&self, items: Vec<IngestItem>) -> Option<Vec<ItemOutcome>> {
        let mut delay = COMMIT_RETRY_FIRST;
        for attempt in 1..=COMMIT_ATTEMPTS {
            let now = now_ms();
            let batch = items.clone();
            match self.store.call(move |c| ingest(c, &batch, now)).await {
                Ok(o) => {
                    self.metrics.ingest_commits.inc();
                    return Some(o);
                }
                Err(e) => {
                    self.metrics.ingest_commit_failures.inc();
                    tracing::error!(error = %e, items = items.len(), attempt, "ingest commit failed");
                    if matches!(e, StoreError::Closed) {
                        return None;
                    }
                    if attempt < COMMIT_ATTEMPTS {
                        self.metrics.ingest_retries.inc();
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
        None
    }

    /// Publishes `ack`, sealed under the key of its gateway of `store_id`.
    async fn publish_ack(&self, ack: &Ack, store_id: &str) {
        let topic = topics::ack(&ack.gateway_id);
        let sealed = serde_json::to_vec(ack)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                let key = self
                    .auth
                    .gateway_key(store_id, &ack.gateway_id)
                    .ok_or_else(|| "no key for these ids".to_string())?;
                instore_protocol::auth::seal(&key, &topic, &json).map_err(|e| e.to_string())
            });
        let payload = match sealed {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an ack");
                return;
            }
        };
        match self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            Ok(()) => {
                self.metrics.acks_sent.inc();
            }
            Err(e) => {
                tracing::warn!(gateway = %ack.gateway_id, error = %e, "cannot publish an ack")
            }
        }
    }
}

/// Logs and counts one refused payload: the only place that does either.
fn bad_payload(
    metrics: &Metrics,
    gateway: Option<&str>,
    reason: BadReason,
    detail: &str,
    bytes: usize,
) {
    metrics
        .bad_payloads
        .get_or_create(&vec![("reason", reason.label())])
        .inc();
    tracing::warn!(
        gateway = gateway.unwrap_or("-"),
        reason = reason.label(),
        detail,
        bytes,
        "refused a payload"
    );
}
