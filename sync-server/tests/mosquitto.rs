//! Head office against a real external broker: Debian's Mosquitto, started by the test on a free
//! port and killed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, FakeGateway, Hq, ranges};
use instore_protocol::{MembersNotice, topics};
use instore_sync::BrokerConfig;
use instore_testkit::mosquitto::Mosquitto;

async fn start_mosquitto() -> Mosquitto {
    start_mosquitto_with("").await
}

/// Mosquitto with `extra` lines of configuration, in a temporary folder of its own.
async fn start_mosquitto_with(extra: &str) -> Mosquitto {
    Mosquitto::temp(extra).await
}

#[tokio::test]
async fn head_office_ingests_and_acknowledges_through_mosquitto() {
    let mosquitto = start_mosquitto().await;
    let hq = Hq::start(BrokerConfig {
        listen: None,
        url: Some(format!("mqtt://127.0.0.1:{}", mosquitto.port)),
        ..BrokerConfig::default()
    })
    .await;
    let h = hq.get_json("/healthz").await;
    assert_eq!(h["broker"], "external");

    let mut gw = FakeGateway::connect(&hq, "gw-m", "store-m").await;
    gw.status(true).await;
    gw.send(&[1, 2, 4]).await;
    let ack = gw.next_ack().await;
    assert_eq!(ranges(&ack), [(1, 2), (4, 4)]);
    assert_eq!(ack.high_water, 4);
    gw.send(&[1, 2, 4]).await;
    gw.next_ack().await;
    // Status and events travel on different topics: their relative order is not promised.
    let gws = hq
        .wait_for(|v| v[0]["online"] == true, "/api/gateways")
        .await;
    assert_eq!(gws[0]["store"], "store-m");
    assert_eq!(gws[0]["online"], true);
    assert_eq!(gws[0]["events_received"], 3);
    assert_eq!(gws[0]["duplicates_dropped"], 3);
    assert_eq!(gws[0]["gaps"], serde_json::json!([{"first": 3, "last": 3}]));

    let r = reqwest::Client::new()
        .post(hq.url("/api/members"))
        .bearer_auth(ADMIN)
        .body(r#"{"member_id":"M1","display_name":"A","tier":"gold","consent":{"presence":true}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let topic = topics::members("store-m");
    let mut late = FakeGateway::connect_with(
        "127.0.0.1",
        mosquitto.port,
        "gw-late",
        "store-m",
        std::slice::from_ref(&topic),
    )
    .await;
    let notice: MembersNotice =
        serde_json::from_slice(&late.next_on(&topic).await.payload).unwrap();
    assert_eq!(notice.version, 1);
    hq.stop().await;
    drop(mosquitto);
}

/// A fleet coming back after an outage sends its backlog at once. Ingest's acks and PUBACKs go
/// out through the MQTT event loop; when the loop waited for room in the ingest channel while
/// ingest waited for room in the loop's request queue, head office stopped for good (seen with
/// 2,000 batches from 40 gateways through a Mosquitto with a wide inflight window: 552 stored,
/// then nothing, with 434 KB unread in head office's socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_two_thousand_batches_is_all_stored_and_acknowledged() {
    let mosquitto =
        start_mosquitto_with("max_inflight_messages 200\nmax_queued_messages 100000\n").await;
    // PostgreSQL and a share group, as where it was seen: commits slower than the burst comes.
    let hq = Hq::start_with(
        BrokerConfig {
            listen: None,
            url: Some(format!("mqtt://127.0.0.1:{}", mosquitto.port)),
            share_group: Some("burst".into()),
            ..BrokerConfig::default()
        },
        common::Backend::Postgres,
        |_| {},
    )
    .await;
    let mut gws = Vec::new();
    for g in 0..40 {
        gws.push(
            FakeGateway::connect_with("127.0.0.1", mosquitto.port, &format!("gw-{g}"), "s", &[])
                .await,
        );
    }
    for round in 0..50u64 {
        let seqs: Vec<u64> = (round * 50 + 1..=round * 50 + 50).collect();
        for gw in &gws {
            gw.send(&seqs).await;
        }
    }
    for gw in &mut gws {
        while gw.next_ack().await.high_water < 2_500 {}
    }
    let gateways = hq.get_json("/api/gateways").await;
    assert_eq!(gateways.as_array().unwrap().len(), 40);
    for g in gateways.as_array().unwrap() {
        assert_eq!(g["events_received"], 2_500, "{g}");
    }
    hq.stop().await;
}
