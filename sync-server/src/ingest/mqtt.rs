//! Head office's MQTT session: options, the event-loop task, subscriptions and reconnects.
//!
//! The event loop runs in its own task and only forwards: incoming publishes go to the ingest
//! task over a bounded channel, and nothing here waits on the database. Acks are manual, so the
//! broker redelivers whatever head office had not committed when it stopped or lost the session.

use std::time::Duration;

use instore_protocol::topics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{broker::MAX_PACKET_BYTES, fanout::notifier::NoticeInput, metrics::Metrics};

const KEEP_ALIVE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Requests (publishes, acks, subscriptions) queued for the event loop.
const REQUEST_CAPACITY: usize = 1024;

/// Builds the client and its event loop at `host:port`: a persistent session for a lone head
/// office (the broker queues batches for it while it is away), a clean one for an instance of a
/// share group. A shared subscription's persistent session keeps receiving its share while the
/// instance is down (EMQX documents this, and advises clean sessions for shared subscribers), so
/// batches would wait for a dead instance instead of going to a live one; with a clean session
/// the broker sends everything to the instances that are up, and what a dead instance had in
/// flight comes again from the gateways' outboxes.
pub fn connect(client_id: &str, host: &str, port: u16, shared: bool) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(shared)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    AsyncClient::new(opts, REQUEST_CAPACITY)
}

/// The filters head office subscribes to: the gateway topics, or with a share group the same
/// topics as `$share/<group>/...`, so that the broker hands each message to one instance of the
/// group. Messages arrive on their plain topic either way.
pub fn subscriptions(share_group: Option<&str>) -> Vec<String> {
    [topics::ALL_EVENTS, topics::ALL_STATUS]
        .into_iter()
        .map(|t| match share_group {
            Some(g) => format!("$share/{g}/{t}"),
            None => t.to_string(),
        })
        .collect()
}

/// Everything the event-loop task needs.
#[derive(Debug)]
pub struct EventLoopTask {
    pub client: AsyncClient,
    /// From [`subscriptions`].
    pub subscriptions: Vec<String>,
    pub metrics: Metrics,
    /// Where publishes go; dropped on `cancel` so the ingest task drains and ends.
    pub publishes: mpsc::Sender<Publish>,
    pub notices: mpsc::Sender<NoticeInput>,
    /// Stop forwarding new publishes (shutdown has begun).
    pub cancel: CancellationToken,
    /// Stop polling altogether (acks of in-flight commits are out, or the grace time is over).
    pub stop: CancellationToken,
}

impl EventLoopTask {
    pub async fn run(self, mut eventloop: EventLoop) {
        let EventLoopTask {
            client,
            subscriptions,
            metrics,
            publishes,
            notices,
            cancel,
            stop,
        } = self;
        let mut publishes = Some(publishes);
        let mut backoff = BACKOFF_MIN;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                _ = cancel.cancelled(), if publishes.is_some() => {
                    publishes = None;
                    continue;
                }
                ev = eventloop.poll() => ev,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to the broker"
                    );
                    // Subscriptions live in the session, but a broker that lost it (restart
                    // without persistence) needs them again; subscribing twice is harmless.
                    let subs = subscriptions
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::error!(error = %e, "cannot queue the subscriptions");
                    }
                    if !ack.session_present {
                        // Retained notices may be gone with the session: send them again.
                        let _ = notices.try_send(NoticeInput::BrokerSessionFresh);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    // Connected *and* subscribed: only now is ingest really live (`/healthz`).
                    metrics.mqtt_connected.set(1);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Bounded: when ingest is behind, this waits, and the broker's inflight
                    // window holds further messages back. Once shutting down (`None`) a publish
                    // is not acknowledged, so the broker redelivers it later.
                    if let Some(tx) = &publishes
                        && tx.send(p).await.is_err()
                    {
                        publishes = None;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::info!("disconnected from the broker");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    if metrics.mqtt_connected.get() == 1 {
                        metrics.mqtt_reconnects.inc();
                    }
                    metrics.mqtt_connected.set(0);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        metrics.mqtt_connected.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_group_prefixes_every_gateway_topic() {
        assert_eq!(
            subscriptions(None),
            [
                topics::ALL_EVENTS.to_string(),
                topics::ALL_STATUS.to_string()
            ]
        );
        let shared = subscriptions(Some("hq"));
        assert_eq!(shared[0], format!("$share/hq/{}", topics::ALL_EVENTS));
        assert_eq!(shared[1], format!("$share/hq/{}", topics::ALL_STATUS));
    }
}
