//! Forgery on the broker, from the outside: a real `instore-agent` and `instore-sync`, the
//! embedded broker or Debian's Mosquitto without ACLs, and an attacker client publishing on the
//! gateway's and head office's topics. Every forged message is refused and counted, and
//! nothing changes: no forged event stored, the gateway not moved to another store, no event
//! deleted from the gateway's outbox by a forged ack, member sync not stopped by a forged
//! notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use instore_protocol::{
    Event, EventBatch, EventBody, GatewayStatus, SCHEMA_VERSION,
    auth::{MessageKey, seal},
    topics,
};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const STORE: &str = "store-f";
const GATEWAY: &str = "gw-f";

fn forged_batch(store: &str) -> Vec<u8> {
    serde_json::to_vec(&EventBatch {
        v: SCHEMA_VERSION,
        gateway_id: GATEWAY.into(),
        store_id: store.into(),
        hello: None,
        outbox: None,
        events: (1..=20)
            .map(|s| Event {
                seq: 1_000_000 + s,
                at_ms: 1,
                body: EventBody::GatewayStarted {
                    version: "forged".into(),
                },
            })
            .collect(),
    })
    .unwrap()
}

async fn forgery_changes_nothing(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = match kind {
        BrokerKind::Embedded => None,
        BrokerKind::Mosquitto => Some(Mosquitto::start(dir.path()).await),
    };
    let url = mosquitto.as_ref().map(Mosquitto::url);
    let hq = start_hq_with(dir.path(), url.as_deref()).await;
    hq.import_members(population_ndjson(50)).await;
    let agent_dir = dir.path().join("store");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let setup = AgentSetup::new(STORE, GATEWAY, free_port());
    let cfg = setup.write(&agent_dir, &hq, ALERT_ON_EVERY_ARRIVAL, "agent.toml");
    let _agent = Proc::spawn(
        &bin("instore-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        agent_dir.join("agent.log"),
    );
    let agent = format!("http://127.0.0.1:{}", setup.http_port);
    let agent_metric = |series: String| {
        let agent = agent.clone();
        async move { metric(&scrape(&format!("{agent}/metrics")).await, &series) }
    };
    // The agent seals from its first message, and head office holds it to that.
    eventually(
        "the gateway sealing, with events at head office",
        WAIT,
        || async {
            hq.gateway(GATEWAY)
                .await
                .filter(|g| g["sealed"] == true && g["last_seq"].as_u64() > Some(0))
        },
    )
    .await;
    // Head office places only the members who consented to presence.
    let consenting = |n: u32| {
        instore_agent::sources::sim::population(n)
            .iter()
            .filter(|m| m.consent.presence)
            .count() as f64
    };
    eventually("the agent holding the consenting members", WAIT, || async {
        (agent_metric("instore_agent_members_cached".into()).await == consenting(50)).then_some(())
    })
    .await;
    let bad = |m: &str, reason: &str| {
        metric(
            m,
            &format!("instore_sync_bad_payloads_total{{reason=\"{reason}\"}}"),
        )
    };
    let m0 = hq.metrics().await;

    // The embedded broker lets in only gateways with their token and head office: not an
    // anonymous client, not a wrong password, not a real token under another gateway's client
    // id (a session takeover). Mosquitto here runs without authentication.
    if kind == BrokerKind::Embedded {
        let gw_token =
            instore_protocol::token::gateway_token(hq.secret.as_bytes(), STORE, GATEWAY).unwrap();
        assert!(!broker_accepts(&hq.mqtt, "anonymous-probe", None).await);
        assert!(!broker_accepts(&hq.mqtt, GATEWAY, Some((GATEWAY, "0000"))).await);
        assert!(!broker_accepts(&hq.mqtt, "gw-n", Some((GATEWAY, &gw_token))).await);
        let hq_name = "instore-sync";
        assert!(!broker_accepts(&hq.mqtt, hq_name, Some((hq_name, "guess"))).await);
        let m = hq.metrics().await;
        let refused = |reason: &str| {
            metric(
                &m,
                &format!("instore_sync_mqtt_logins_refused_total{{reason=\"{reason}\"}}"),
            )
        };
        assert!(refused("bad_password") >= 1.0, "{m}");
        assert!(refused("client_id") >= 1.0, "{m}");
        assert!(refused("unknown_gateway") >= 1.0, "{m}");
        // The real agent stayed connected through all that: its events still arrive.
        let before = hq.gateway(GATEWAY).await.unwrap()["last_seq"].as_u64();
        eventually("the agent still delivering", WAIT, || async {
            hq.gateway(GATEWAY)
                .await
                .filter(|g| g["last_seq"].as_u64() > before)
        })
        .await;
    }

    // Logged in as another gateway of the store (a stolen neighbour), as this gateway: a plain
    // batch, and one sealed under the neighbour's own key; a plain status moving the gateway to
    // another store.
    let neighbour = instore_protocol::token::gateway_token(hq.secret.as_bytes(), STORE, "gw-n")
        .map(|t| MessageKey::for_gateway(&t))
        .unwrap();
    let events_topic = topics::events(GATEWAY);
    publish_raw(
        &hq,
        ("gw-n", STORE),
        false,
        &events_topic,
        vec![
            forged_batch(STORE),
            seal(&neighbour, &events_topic, &forged_batch(STORE)).unwrap(),
        ],
    )
    .await;
    let moved = serde_json::to_vec(&GatewayStatus {
        v: SCHEMA_VERSION,
        gateway_id: GATEWAY.into(),
        store_id: "store-x".into(),
        online: false,
    })
    .unwrap();
    publish_raw(
        &hq,
        ("gw-n", STORE),
        true,
        &topics::status(GATEWAY),
        vec![moved],
    )
    .await;
    eventually("the forgeries counted at head office", WAIT, || async {
        let m = hq.metrics().await;
        (bad(&m, "unsigned") >= bad(&m0, "unsigned") + 2.0
            && bad(&m, "bad_mac") > bad(&m0, "bad_mac"))
        .then_some(())
    })
    .await;
    let g = hq.gateway(GATEWAY).await.unwrap();
    assert_eq!(g["store"], STORE, "{g}");
    assert_eq!(g["online"], true, "{g}");
    assert!(g["last_seq"].as_u64().unwrap() < 1_000_000, "{g}");

    // As head office: an ack of every number, plain and under the neighbour's key; a retained
    // notice of a version no real one reaches.
    let ack_topic = topics::ack(GATEWAY);
    let ack = serde_json::json!({"v": 1, "gateway_id": GATEWAY,
        "ranges": [{"first": 1, "last": 999_999}], "high_water": 10})
    .to_string()
    .into_bytes();
    publish_raw(
        &hq,
        ("gw-n", STORE),
        false,
        &ack_topic,
        vec![ack.clone(), seal(&neighbour, &ack_topic, &ack).unwrap()],
    )
    .await;
    let notice = serde_json::json!({"v": 1, "store_id": STORE, "version": u64::MAX})
        .to_string()
        .into_bytes();
    publish_raw(
        &hq,
        ("gw-n", STORE),
        true,
        &topics::members(STORE),
        vec![notice],
    )
    .await;
    let refused = |kind: &str, reason: &str| {
        format!("instore_agent_mqtt_auth_refused_total{{kind=\"{kind}\",reason=\"{reason}\"}}")
    };
    eventually(
        "the forged acks and notice refused by the agent",
        WAIT,
        || async {
            (agent_metric(refused("ack", "unsigned")).await >= 1.0
                && agent_metric(refused("ack", "bad_mac")).await >= 1.0
                && agent_metric(refused("notice", "unsigned")).await >= 1.0)
                .then_some(())
        },
    )
    .await;

    // Member sync goes on: a member imported now reaches the gateway.
    hq.import_members(population_ndjson(51)).await;
    assert_eq!(consenting(51), consenting(50) + 1.0);
    eventually("the 51st member at the gateway", WAIT, || async {
        (agent_metric("instore_agent_members_cached".into()).await == consenting(51)).then_some(())
    })
    .await;
    // And no event was lost to a forged ack: every one the agent wrote so far reaches head
    // office, without a gap.
    let written = agent_metric("instore_agent_outbox_appended_total".into()).await as u64;
    let g = eventually("everything written so far at head office", WAIT, || async {
        hq.gateway(GATEWAY)
            .await
            .filter(|g| g["events_received"].as_u64() >= Some(written))
    })
    .await;
    assert_eq!(g["gaps"], serde_json::json!([]), "{g}");
    assert!(g["last_seq"].as_u64().unwrap() < 1_000_000, "{g}");
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_forged_messages_are_refused_and_change_nothing() {
    forgery_changes_nothing(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_without_acls_forged_messages_are_refused_and_change_nothing() {
    forgery_changes_nothing(BrokerKind::Mosquitto).await;
}
