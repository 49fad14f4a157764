//! Head office's MQTT session: options, the event-loop task, subscriptions and reconnects.
//!
//! The event loop runs in its own task and only forwards: incoming publishes go to the ingest
//! task over a bounded channel, and nothing here waits on the database.
//!
//! The event loop must keep polling while ingest is behind. Ingest's acks and PUBACKs are
//! requests that only a poll sends, and a poll is also what reads the broker's PUBACKs for
//! head office's own QoS 1 acks; rumqttc stops taking requests while 100 of those are
//! unanswered. Had the loop waited for room in the ingest channel, ingest would have waited
//! for room in the request queue and neither would have moved again: seen with 2,000 batches
//! published at once (head office idle, 434 KB unread in its socket). So a publish that finds
//! the channel full waits in a local queue, bounded in practice by the broker's inflight window
//! (head office acknowledges a message only after its commit) and in any case by
//! [`MAX_WAITING`]. Acks are manual, so the
//! broker redelivers whatever head office had not committed when it stopped or lost the session.

use std::{collections::VecDeque, time::Duration};

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
/// Publishes held while the ingest channel is full. Beyond it (only a broker that ignores its
/// own inflight window gets there) the loop waits for ingest, as a last resort against memory.
const MAX_WAITING: usize = 8192;

/// Builds the client and its event loop at `host:port`: a persistent session for a lone head
/// office (the broker queues batches for it while it is away), a clean one for an instance of a
/// share group. A shared subscription's persistent session keeps receiving its share while the
/// instance is down (EMQX documents this, and advises clean sessions for shared subscribers), so
/// batches would wait for a dead instance instead of going to a live one; with a clean session
/// the broker sends everything to the instances that are up, and what a dead instance had in
/// flight comes again from the gateways' outboxes.
/// `credentials`: the user name and password a broker that authenticates clients expects.
/// Where head office's session connects.
pub struct Endpoint<'a> {
    pub client_id: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// `mqtts://`: the TLS configuration.
    pub tls: Option<rumqttc::TlsConfiguration>,
}

pub fn connect(
    endpoint: &Endpoint<'_>,
    shared: bool,
    credentials: Option<(&str, &str)>,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(endpoint.client_id, endpoint.host, endpoint.port);
    if let Some(tls) = &endpoint.tls {
        opts.set_transport(rumqttc::Transport::Tls(tls.clone()));
    }
    opts.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(shared)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
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
        let mut waiting: VecDeque<Publish> = VecDeque::new();
        let mut backoff = BACKOFF_MIN;
        loop {
            // Every event (ingest's own acks going out among them) is a chance to hand on what
            // waits, oldest first.
            if let Some(tx) = &publishes {
                while let Some(p) = waiting.pop_front() {
                    match tx.try_send(p) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(p)) => {
                            waiting.push_front(p);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            publishes = None;
                            break;
                        }
                    }
                }
            }
            if publishes.is_none() {
                // Not acknowledged: the broker or the gateways send them again.
                waiting.clear();
            }
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
                    // Once shutting down (`None`) a publish is not acknowledged, so the broker
                    // redelivers it later.
                    let Some(tx) = &publishes else { continue };
                    let mut closed = false;
                    if !waiting.is_empty() {
                        waiting.push_back(p);
                    } else {
                        match tx.try_send(p) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(p)) => waiting.push_back(p),
                            Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                        }
                    }
                    if waiting.len() >= MAX_WAITING {
                        tracing::warn!(
                            waiting = waiting.len(),
                            "the broker sends more unacknowledged messages than head office \
                             holds: waiting for ingest"
                        );
                        while let Some(p) = waiting.pop_front() {
                            if tx.send(p).await.is_err() {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed {
                        publishes = None;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::info!("disconnected from the broker");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    // Their acks would name packet ids of a session that is gone; the broker
                    // (persistent session) or the gateways (their ack timeout) send them again.
                    waiting.clear();
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
