//! Shared harness: head office in-process and the helpers every crate's tests use
//! (`instore_testkit`), and what only head office's tests need: a fake gateway speaking MQTT
//! with rumqttc.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use instore_protocol::{Ack, Event, EventBatch, EventBody, GatewayStatus, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

pub use instore_testkit::{
    both_backends,
    hq::{ADMIN, Backend, Hq, SECRET, WAIT, config, embedded},
    http::metric_line as metric,
    net::free_port,
};

/// A store gateway as head office sees it: publishes batches and status, receives acks.
pub struct FakeGateway {
    pub id: String,
    pub store: String,
    pub client: AsyncClient,
    pub inbox: mpsc::UnboundedReceiver<rumqttc::Publish>,
}

impl FakeGateway {
    /// Connects and subscribes to `extra` filters plus its ack topic, returning once subscribed.
    pub async fn connect(hq: &Hq, id: &str, store: &str) -> FakeGateway {
        Self::connect_with(&hq.mqtt_host, hq.mqtt_port, id, store, &[]).await
    }

    /// Logged in with `token` (an enrolled gateway's) instead of the generation-0 one.
    pub async fn connect_enrolled(hq: &Hq, id: &str, store: &str, token: &str) -> FakeGateway {
        Self::connect_login(&hq.mqtt_host, hq.mqtt_port, id, store, &[], Some(token)).await
    }

    pub async fn connect_with(
        host: &str,
        port: u16,
        id: &str,
        store: &str,
        extra: &[String],
    ) -> FakeGateway {
        Self::connect_login(host, port, id, store, extra, None).await
    }

    async fn connect_login(
        host: &str,
        port: u16,
        id: &str,
        store: &str,
        extra: &[String],
        token: Option<&str>,
    ) -> FakeGateway {
        // Logged in as the gateway it is (head office's embedded broker refuses anonymous
        // clients); the client id names its store, since nothing else has told head office yet.
        let mut opts = MqttOptions::new(format!("{id}:{store}:fake{}", free_port()), host, port);
        let token = token
            .map(str::to_owned)
            .or_else(|| instore_protocol::token::gateway_token(SECRET.as_bytes(), store, id));
        if let Some(token) = token {
            opts.set_credentials(id, token);
        }
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(400 * 1024, 400 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let mut filters = vec![topics::ack(id)];
        filters.extend(extra.iter().cloned());
        let n = filters.len();
        for f in filters {
            client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        }
        let mut subacks = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        let (tx, inbox) = mpsc::unbounded_channel();
        while subacks < n {
            let ev = tokio::time::timeout_at(deadline, eventloop.poll())
                .await
                .expect("subscribe timed out")
                .expect("fake gateway connection");
            match ev {
                MqttEvent::Incoming(Packet::SubAck(_)) => subacks += 1,
                MqttEvent::Incoming(Packet::Publish(p)) => tx.send(p).unwrap(),
                _ => {}
            }
        }
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        FakeGateway {
            id: id.into(),
            store: store.into(),
            client,
            inbox,
        }
    }

    pub fn batch(&self, seqs: &[u64]) -> EventBatch {
        EventBatch {
            v: SCHEMA_VERSION,
            gateway_id: self.id.clone(),
            store_id: self.store.clone(),
            hello: None,
            outbox: None,
            events: seqs
                .iter()
                .map(|&seq| Event {
                    seq,
                    at_ms: 1_700_000_000_000 + seq as i64,
                    body: EventBody::Arrive {
                        member_id: format!("M{seq}"),
                        zone: "entrance".into(),
                        visit_id: format!("v{seq}"),
                    },
                })
                .collect(),
        }
    }

    /// Sends a batch of `seqs` sealed under `token`'s key, as an agent holding it would.
    pub async fn send_sealed(&self, seqs: &[u64], token: &str) {
        let topic = topics::events(&self.id);
        let json = serde_json::to_vec(&self.batch(seqs)).unwrap();
        let key = instore_protocol::auth::MessageKey::for_gateway(token);
        self.publish_raw(instore_protocol::auth::seal(&key, &topic, &json).unwrap())
            .await;
    }

    pub async fn publish_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(topics::events(&self.id), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    pub async fn send(&self, seqs: &[u64]) {
        self.publish_raw(serde_json::to_vec(&self.batch(seqs)).unwrap())
            .await;
    }

    /// Sends a hello naming `boot` and `others`.
    pub async fn hello(&self, boot: u64, others: &[u64]) {
        let mut b = self.batch(&[]);
        b.hello = Some(instore_protocol::Hello {
            boot,
            boots: others.to_vec(),
        });
        self.publish_raw(serde_json::to_vec(&b).unwrap()).await;
    }

    /// Sends `events` as they are (any bodies, any numbers).
    pub async fn send_events(&self, events: Vec<Event>) {
        let mut b = self.batch(&[]);
        b.events = events;
        self.publish_raw(serde_json::to_vec(&b).unwrap()).await;
    }

    pub async fn status(&self, online: bool) {
        let s = GatewayStatus {
            v: SCHEMA_VERSION,
            gateway_id: self.id.clone(),
            store_id: self.store.clone(),
            online,
        };
        self.client
            .publish(
                topics::status(&self.id),
                QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&s).unwrap(),
            )
            .await
            .unwrap();
    }

    /// The next message on `topic`.
    pub async fn next_on(&mut self, topic: &str) -> rumqttc::Publish {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing on {topic}"))
                .expect("gateway connection closed");
            if p.topic == topic {
                return p;
            }
        }
    }

    pub async fn next_ack(&mut self) -> Ack {
        let p = self.next_on(&topics::ack(&self.id)).await;
        Ack::decode(&p.payload).unwrap()
    }
}

pub fn ranges(ack: &Ack) -> Vec<(u64, u64)> {
    ack.ranges.iter().map(|r| (r.first, r.last)).collect()
}

/// The token of gateway `gw` of `store` under the tests' fleet secret.
pub fn gateway_token(store: &str, gw: &str) -> String {
    instore_protocol::token::gateway_token(SECRET.as_bytes(), store, gw).unwrap()
}

/// `store`'s change stream since `since`, as gateway `gw-1` pulls it.
pub async fn changes(
    hq: &Hq,
    store: &str,
    since: &str,
) -> instore_protocol::changes::ChangesResponse {
    let r = reqwest::Client::new()
        // A cursor's characters (letters, digits, `:`, `=`, `,`, `-`, `_`) need no escaping.
        .get(hq.url(&format!("/api/stores/{store}/changes?since={since}")))
        .bearer_auth(gateway_token(store, "gw-1"))
        .header("X-Instore-Gateway", "gw-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}
