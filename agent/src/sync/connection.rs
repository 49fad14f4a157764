//! The MQTT connection task: the only owner of rumqttc's `EventLoop`.
//!
//! It polls the event loop and nothing else may slow it down: everything it hands on goes through
//! a watch (connection state, member-notice version) or a `try_send` (acks; a full queue drops
//! the ack, which the uplink's ack timeout turns into a harmless re-send). Payloads are decoded
//! here so that a malformed one is counted once, at the edge.

use std::time::Duration;

use instore_protocol::{Ack, MembersNotice, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backoff, Link, downlink::Notice};
use crate::metrics::Metrics;

/// How long shutdown may take to say goodbye to the broker.
const GOODBYE: Duration = Duration::from_secs(2);

pub(super) struct Connection {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub gateway_id: String,
    pub store_id: String,
    pub online: Vec<u8>,
    pub offline: Vec<u8>,
    pub backoff: Backoff,
    pub link: watch::Sender<Link>,
    pub acks: mpsc::Sender<Ack>,
    pub notices: watch::Sender<Notice>,
    pub metrics: Metrics,
}

impl Connection {
    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let ack_topic = topics::ack(&self.gateway_id);
        let members_topic = topics::members(&self.store_id);
        let status_topic = topics::status(&self.gateway_id);
        let mut connected = false;
        loop {
            let polled = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    self.backoff.reset();
                    self.metrics.mqtt_connected.set(1);
                    info!(
                        session_present = ack.session_present,
                        "sync: connected to the broker"
                    );
                    // try_*: this task must never wait on the request queue it alone drains.
                    // The queue is empty right after a connect, so these cannot fail for room.
                    let requests = [
                        self.client.try_publish(
                            status_topic.clone(),
                            QoS::AtLeastOnce,
                            true,
                            self.online.clone(),
                        ),
                        self.client
                            .try_subscribe(ack_topic.clone(), QoS::AtLeastOnce),
                        self.client
                            .try_subscribe(members_topic.clone(), QoS::AtLeastOnce),
                    ];
                    for r in requests {
                        if let Err(e) = r {
                            warn!(error = %e, "sync: could not queue status or subscription");
                        }
                    }
                    self.link.send_modify(|l| {
                        l.connected = true;
                        l.epoch += 1;
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.route(&p, &ack_topic, &members_topic);
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.mqtt_connect_failures.inc();
                    if connected {
                        warn!(error = %e, "sync: lost the broker; reconnecting");
                    } else {
                        debug!(error = %e, "sync: broker connection attempt failed");
                    }
                    connected = false;
                    self.metrics.mqtt_connected.set(0);
                    self.link.send_modify(|l| l.connected = false);
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    self.metrics.mqtt_reconnects.inc();
                }
            }
        }
        self.link.send_modify(|l| l.connected = false);
        if connected {
            self.goodbye(&status_topic).await;
        }
        self.metrics.mqtt_connected.set(0);
        debug!("sync: connection task stopped");
    }

    /// Publishes `online:false` (retained) and disconnects cleanly, which also tells the broker
    /// not to publish the last will; bounded by [`GOODBYE`].
    async fn goodbye(&mut self, status_topic: &str) {
        let queued = self
            .client
            .try_publish(status_topic, QoS::AtLeastOnce, true, self.offline.clone())
            .and_then(|()| self.client.try_disconnect());
        if let Err(e) = queued {
            // The will (also offline, retained) covers us when the socket drops.
            warn!(error = %e, "sync: could not queue the offline status");
            return;
        }
        let drained = tokio::time::timeout(GOODBYE, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        match drained {
            Ok(true) => info!("sync: disconnected from the broker"),
            _ => warn!("sync: broker did not take the goodbye in time; the last will covers it"),
        }
    }

    fn route(&self, p: &Publish, ack_topic: &str, members_topic: &str) {
        if p.topic == ack_topic {
            match Ack::decode(&p.payload) {
                Ok(ack) if ack.gateway_id == self.gateway_id => {
                    if self.acks.try_send(ack).is_err() {
                        // The uplink is behind; its ack timeout re-sends, head office de-dups.
                        warn!("sync: ack queue full; dropping an ack");
                    }
                }
                Ok(ack) => {
                    self.metrics.mqtt_bad_payloads.inc();
                    warn!(for_gateway = %ack.gateway_id, "sync: ignoring an ack for another gateway");
                }
                Err(e) => {
                    self.metrics.mqtt_bad_payloads.inc();
                    warn!(error = %e, bytes = p.payload.len(), "sync: ignoring a malformed ack");
                }
            }
        } else if p.topic == members_topic {
            match instore_protocol::decode::<MembersNotice>(&p.payload) {
                Ok(n) if n.v <= SCHEMA_VERSION && n.store_id == self.store_id => {
                    debug!(version = n.version, "sync: members notice");
                    // Retained, so every reconnect brings it again: only a change wakes the downlink.
                    self.notices.send_if_modified(|v| {
                        let changed = n.version != v.version || n.heads != v.heads;
                        if changed {
                            *v = Notice {
                                version: n.version,
                                heads: n.heads,
                            };
                        }
                        changed
                    });
                }
                Ok(n) => {
                    self.metrics.mqtt_bad_payloads.inc();
                    warn!(v = n.v, for_store = %n.store_id, "sync: ignoring an unusable members notice");
                }
                Err(e) => {
                    self.metrics.mqtt_bad_payloads.inc();
                    warn!(error = %e, bytes = p.payload.len(), "sync: ignoring a malformed members notice");
                }
            }
        } else {
            debug!(topic = %p.topic, "sync: ignoring a message on an unexpected topic");
        }
    }
}
