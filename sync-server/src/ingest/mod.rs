//! Ingest: event batches and gateway status from MQTT into SQLite, then acks back.
//!
//! In: publishes on [`instore_protocol::topics::ALL_EVENTS`] and
//! [`instore_protocol::topics::ALL_STATUS`], from the event-loop task ([`mqtt`]). Out: rows in
//! `events`/`gateways`, an [`instore_protocol::Ack`] per batch on `topics::ack(gateway)`, and
//! "store seen" inputs for the members notifier.
//!
//! Invariant: an ack is published only after the transaction holding its events has committed,
//! and the MQTT message is acknowledged to the broker only after that, so a crash at any point
//! leads to redelivery (and de-duplication), never to loss. A bad payload is counted, logged
//! without its contents and acknowledged (redelivering it would not make it better); ingest
//! carries on.

pub mod decode;
pub mod mqtt;

use std::collections::BTreeSet;

use instore_protocol::{Ack, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;

use crate::{
    members::notifier::NoticeInput,
    metrics::Metrics,
    now_ms,
    store::{IngestItem, ItemOutcome, Store, ingest::ingest},
};
use decode::{BadReason, Decoded, contiguous_ranges};

/// Most messages committed in one transaction: amortises the fsync under load, while a lone
/// batch is committed at once.
const MAX_GROUP: usize = 64;

/// The ingest task's dependencies.
#[derive(Debug)]
pub struct Ingest {
    pub store: Store,
    pub client: AsyncClient,
    pub metrics: Metrics,
    pub notices: mpsc::Sender<NoticeInput>,
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
            .map(|p| decode::decode(&p.topic, &p.payload))
            .collect();
        let mut items = Vec::with_capacity(decoded.len());
        let mut stores = BTreeSet::new();
        for (d, p) in decoded.iter().zip(&group) {
            match d {
                Decoded::Batch(b) => {
                    stores.insert(b.store_id.clone());
                    items.push(IngestItem::Batch(b.clone()));
                }
                Decoded::Status(s) => {
                    stores.insert(s.store_id.clone());
                    items.push(IngestItem::Status {
                        gateway_id: s.gateway_id.clone(),
                        store_id: s.store_id.clone(),
                        online: s.online,
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

        let now = now_ms();
        let commit_items = items.clone();
        let outcomes = match self
            .store
            .call(move |c| ingest(c, &commit_items, now))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                // Not acknowledged to the broker either: the session redelivers these later.
                self.metrics.ingest_commit_failures.inc();
                tracing::error!(error = %e, messages = group.len(), "ingest commit failed");
                return;
            }
        };
        self.metrics.ingest_commits.inc();

        for (item, outcome) in items.iter().zip(&outcomes) {
            match (item, outcome) {
                (IngestItem::Batch(b), ItemOutcome::Batch(o)) => {
                    self.metrics.batches.inc();
                    self.metrics.events_received.inc_by(o.inserted);
                    self.metrics.duplicates_dropped.inc_by(o.duplicates);
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
                        ranges: contiguous_ranges(b.events.iter().map(|e| e.seq.max(0) as u64)),
                        high_water: o.high_water,
                    };
                    self.publish_ack(&ack).await;
                }
                (
                    IngestItem::Status {
                        gateway_id, online, ..
                    },
                    _,
                ) => {
                    self.metrics.status_messages.inc();
                    tracing::info!(gateway = %gateway_id, online, "gateway status");
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

    async fn publish_ack(&self, ack: &Ack) {
        let payload = match serde_json::to_vec(ack) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an ack");
                return;
            }
        };
        match self
            .client
            .publish(
                topics::ack(&ack.gateway_id),
                QoS::AtLeastOnce,
                false,
                payload,
            )
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
