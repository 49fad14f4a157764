#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Remote receivers (`kind = "mqtt"`) against Debian's Mosquitto as the store-LAN broker, with
//! reports in Theengs Gateway's `BTtoMQTT` format (advertisement data publishing on) as a test
//! client publishes them, and the real head office and agent in-process: a member's beacon heard
//! by the entrance receiver makes them present at the entrance; the fitting-room receiver,
//! calibrated louder, takes them over with the usual hysteresis; garbage is counted and
//! skipped; a receiver that goes quiet is reported stalled, then recovered.
//!
//! These are messages in Theengs Gateway's documented format, as its `ble_gateway.py` builds
//! them (`manufacturerdata` = company id little-endian + data), so every case can be driven;
//! `theengs_gateway.rs` runs the real Theengs Gateway on the BlueZ stand-in.

mod support;

use std::{path::Path, time::Duration};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use support::{
    hq::{Hq, agent_synced_to, embedded},
    net::free_port,
    wait::eventually,
};

const WAIT: Duration = Duration::from_secs(60);
const BEACON: &str = "4c000215f7826da64fa24e988024bc5b71e0893e00010002c5";

fn report(rssi: i32) -> String {
    format!(
        r#"{{"name":"","id":"C0:FF:EE:00:00:01","rssi":{rssi},"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","mfid":"4c00","uuid":"f7826da64fa24e988024bc5b71e0893e","major":1,"minor":2,"txpower":-59,"manufacturerdata":"{BEACON}"}}"#
    )
}

async fn agent(dir: &Path, hq: &Hq, broker: &str) -> instore_agent::runtime::Agent {
    let tables = format!(
        r#"[[sources]]
kind = "mqtt"
broker = "{broker}"
zone = "floor"
watchdog_s = 3
[[sources.receivers]]
id = "entrance-esp"
zone = "entrance"
[[sources.receivers]]
id = "fitting-esp"
zone = "fitting-rooms"
rssi_offset = 10
[presence]
zone_switch_s = 1
"#
    );
    agent_synced_to(dir, hq, &tables).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_heard_by_remote_receivers_is_present_in_their_zones() {
    let broker_dir = tempfile::tempdir().unwrap();
    let lan = instore_testkit::mosquitto::Mosquitto::start(broker_dir.path()).await;
    let hq = Hq::start(embedded()).await;
    hq.post_json(
        "/api/members",
        r#"{"member_id":"M1","display_name":"Ms. Li","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"ibeacon","uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":2}]}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &hq, &lan.url()).await;
    let m = agent.metrics.clone();
    eventually("the member at the gateway", WAIT, || async {
        m.members_cached.get() == 1
    })
    .await;

    let mut opts = MqttOptions::new(format!("receiver-{}", free_port()), "127.0.0.1", lan.port);
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (receivers, mut ev) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let publish = |receiver: &'static str, payload: String| {
        let c = receivers.clone();
        async move {
            c.publish(
                format!("home/{receiver}/BTtoMQTT/C0FFEE000001"),
                QoS::AtMostOnce,
                false,
                payload,
            )
            .await
            .unwrap();
        }
    };
    let hqr = &hq;
    let events = |kind: &'static str| async move {
        let v = hqr.get_json("/api/events?gateway=gw-1&limit=1000").await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };

    // The entrance hears the member: present at the entrance.
    eventually("arrival at the entrance", WAIT, || async {
        publish("entrance-esp", report(-60)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        events("arrive")
            .await
            .iter()
            .any(|e| e["body"]["zone"] == "entrance")
    })
    .await;
    assert_eq!(m.members_present.get(), 1);

    // Both hear them; the fitting room's receiver reads -66 dBm, calibrated +10: 16 dB above
    // the entrance's -72, past the zone margin: the member moves to the fitting rooms.
    eventually("a zone change to the fitting rooms", WAIT, || async {
        publish("entrance-esp", report(-72)).await;
        publish("fitting-esp", report(-66)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        events("zone_change")
            .await
            .iter()
            .any(|e| e["body"]["to"] == "fitting-rooms" || e["body"]["zone"] == "fitting-rooms")
    })
    .await;
    assert_eq!(events("arrive").await.len(), 1, "one member, one visit");

    // Garbage: counted by reason, skipped, the member still there.
    let refused = |reason: &'static str| {
        m.remote_reports_refused
            .get_or_create(&vec![("reason", reason)])
            .get()
    };
    publish("entrance-esp", "not json".into()).await;
    publish(
        "entrance-esp",
        format!("{{\"pad\":\"{}\"}}", "x".repeat(2500)),
    )
    .await;
    publish("entrance-esp", r#"{"id":"nope","rssi":-50}"#.into()).await;
    eventually("the garbage counted", WAIT, || async {
        refused("json") == 1 && refused("too_large") == 1 && refused("address") == 1
    })
    .await;
    assert_eq!(m.members_present.get(), 1);

    // The entrance goes quiet past its watchdog: stalled; then heard again: recovered.
    let scanner = |state: &'static str| async move {
        events("scanner")
            .await
            .iter()
            .any(|e| e["body"]["adapter"] == "mqtt:entrance-esp" && e["body"]["state"] == state)
    };
    eventually("the quiet entrance receiver reported", WAIT, || async {
        publish("fitting-esp", report(-70)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        m.remote_receivers_silent.get() >= 1 && scanner("stalled").await
    })
    .await;
    eventually("the entrance receiver back", WAIT, || async {
        publish("entrance-esp", report(-60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        scanner("recovered").await
    })
    .await;
    assert!(m.remote_reports.get() > 5);
    agent.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}
