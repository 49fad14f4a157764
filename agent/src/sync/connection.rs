//! The MQTT connection task: the only owner of rumqttc's `EventLoop`.
//!
//! It polls the event loop and nothing else may slow it down: everything it hands on goes through
//! a watch (connection state, member-notice version) or a `try_send` (acks; a full queue drops
//! the ack, which the uplink's ack timeout turns into a harmless re-send). Payloads are decoded
//! here so that a malformed one is counted once, at the edge.

use std::time::Duration;

use instore_protocol::{
    Ack, MembersNotice, SCHEMA_VERSION,
    auth::{self, MessageKey, Opened},
    topics,
};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backoff, Link, Sealer, downlink::Notice};
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
    /// This gateway's key: acks are checked with it.
    pub sealer: Sealer,
    /// Head office has sealed an ack: from then on a plain one is a forgery and refused.
    pub hq_seals: bool,
    /// The store's notice key, once the downlink has it.
    pub notice_key: watch::Receiver<Option<MessageKey>>,
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

    fn refuse(&self, what: &'static str, reason: &'static str, bytes: usize) {
        self.metrics
            .mqtt_auth_refused
            .get_or_create(&vec![("kind", what), ("reason", reason)])
            .inc();
        warn!(
            what,
            reason, bytes, "sync: refused a message that is not head office's"
        );
    }

    /// Whether an ack may be taken as head office's. Sealed ones must verify; plain ones are
    /// taken from a head office that never sealed (an older release) and refused once it has.
    fn admit_ack(&mut self, opened: &Opened<'_>, topic: &str, bytes: usize) -> bool {
        match (opened.is_sealed(), self.sealer.key()) {
            (true, Some(key)) if !opened.verify(key, topic) => {
                self.refuse("ack", "bad_mac", bytes);
                false
            }
            (true, Some(_)) => {
                if !self.hq_seals {
                    info!("sync: head office seals its acks; plain ones are refused from now on");
                    self.hq_seals = true;
                }
                true
            }
            // No token, so no key to check with: as before sealing existed.
            (true, None) => true,
            (false, _) if self.hq_seals => {
                self.refuse("ack", "unsigned", bytes);
                false
            }
            (false, _) => true,
        }
    }

    /// Whether a notice may be taken as head office's: sealed under the store's notice key
    /// once that is known; plain only from a head office that hands out no key.
    fn admit_notice(&self, opened: &Opened<'_>, topic: &str, bytes: usize) -> bool {
        let key = self.notice_key.borrow().clone();
        match (opened.is_sealed(), key) {
            (true, Some(key)) if !opened.verify(&key, topic) => {
                self.refuse("notice", "bad_mac", bytes);
                false
            }
            (true, Some(_)) => true,
            (true, None) => {
                // Cannot be checked yet; the downlink's first pull (at start) catches up anyway.
                debug!("sync: members notice before its key is known; ignored");
                false
            }
            (false, Some(_)) => {
                self.refuse("notice", "unsigned", bytes);
                false
            }
            (false, None) => true,
        }
    }

    fn route(&mut self, p: &Publish, ack_topic: &str, members_topic: &str) {
        let opened = match auth::open(&p.payload) {
            Ok(o) => o,
            Err(_) => {
                let what = if p.topic == ack_topic {
                    "ack"
                } else {
                    "notice"
                };
                self.refuse(what, "bad_mac", p.payload.len());
                return;
            }
        };
        if p.topic == ack_topic {
            if !self.admit_ack(&opened, &p.topic, p.payload.len()) {
                return;
            }
            match Ack::decode(opened.message()) {
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
            if !self.admit_notice(&opened, &p.topic, p.payload.len()) {
                return;
            }
            match instore_protocol::decode::<MembersNotice>(opened.message()) {
                Ok(n) if n.v <= SCHEMA_VERSION && n.store_id == self.store_id => {
                    debug!(version = n.version, "sync: members notice");
                    // Retained, so every reconnect brings it again: only a change wakes the downlink.
                    self.notices.send_if_modified(|v| {
                        let changed = n.version != v.version
                            || n.heads != v.heads
                            || n.campaigns != v.campaigns;
                        if changed {
                            *v = Notice {
                                version: n.version,
                                heads: n.heads,
                                campaigns: n.campaigns,
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
