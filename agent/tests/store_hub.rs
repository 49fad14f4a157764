#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Two gateways of one store, in-process against the real head office: the hub (entrance)
//! and a receiver (fitting rooms) both hear one member. The receiver forwards over HTTP on
//! loopback, sealed with the store's LAN key; the hub alone identifies: one visit at head
//! office, one alert on the stream of each tablet paired with the hub, and the member's zone
//! follows the louder receiver. A forged or replayed batch changes nothing.

mod support;

use std::{path::Path, time::Duration};

use instore_agent::{
    relay::wire::{self, SightingBatch, WireSighting},
    sources::record::AdvertRecord,
};
use instore_protocol::auth::MessageKey;
use support::{
    beacon::{ibeacon, keep_hearing, member_json},
    hq::{Hq, embedded, gateway_of_s1},
    http::{issue_pairing, pairing_code, redeem_pairing},
    sse::SseReader,
    wait::eventually,
};

const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "store-one-lan-secret";
const ADMIN: &str = "hub-admin";
const M1_MINOR: u16 = 2;

async fn events(hq: &Hq, gateway: &str, kind: &str) -> Vec<serde_json::Value> {
    let v = hq
        .get_json(&format!("/api/events?gateway={gateway}&limit=1000"))
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

async fn tablet_stream(base: &str, label: &str) -> SseReader {
    let code = pairing_code(&issue_pairing(base, ADMIN, label).await);
    let paired: serde_json::Value = redeem_pairing(base, &code).await.json().await.unwrap();
    let token = paired["token"].as_str().unwrap();
    let resp = reqwest::get(format!("{base}/api/alerts/stream?token={token}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    SseReader::new(resp)
}

fn write_rules(dir: &Path) {
    std::fs::write(
        dir.join("rules.toml"),
        "[[rules]]\nname = \"greet\"\non = \"arrive\"\nmessage = \"Welcome {display_name}\"\ncooldown_s = 3600\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_and_a_receiver_make_one_visit_one_alert_per_tablet_and_follow_the_louder_zone() {
    let hq = Hq::start(embedded()).await;
    hq.post_json("/api/members", member_json("M1", "Ms. M1", M1_MINOR))
        .await;
    hq.post_json("/api/members", member_json("M2", "Ms. M2", 3))
        .await;

    let hub_dir = tempfile::tempdir().unwrap();
    write_rules(hub_dir.path());
    let hub = gateway_of_s1(
        hub_dir.path(),
        &hq,
        "gw-1",
        &format!(
            "admin_token = \"{ADMIN}\"\n[hub]\nkey = \"{KEY}\"\n[react]\nrules = \"rules.toml\"\n\
             [presence]\nzone_switch_s = 1\n"
        ),
        1,
    )
    .await;
    let hub_base = format!("http://{}", hub.http_addr);
    let receiver_dir = tempfile::tempdir().unwrap();
    let receiver = gateway_of_s1(
        receiver_dir.path(),
        &hq,
        "gw-2",
        &format!("[hub]\nrole = \"receiver\"\nkey = \"{KEY}\"\npeers = [\"{hub_base}\"]\n"),
        1,
    )
    .await;
    let (hm, rm) = (hub.metrics.clone(), receiver.metrics.clone());
    eventually("both members at the hub", WAIT, || async {
        hm.members_cached.get() == 2
    })
    .await;
    assert_eq!(hm.relay_acting.get(), 1, "a hub acts from the start");
    assert_eq!(rm.relay_acting.get(), 0, "a receiver never acts");

    let mut till = tablet_stream(&hub_base, "till").await;
    let mut fitting = tablet_stream(&hub_base, "fitting rooms").await;

    // Both gateways hear M1, the receiver (fitting rooms) louder.
    let feeding = [
        keep_hearing(&hub, "entrance", M1_MINOR, -75),
        keep_hearing(&receiver, "fitting-rooms", M1_MINOR, -55),
    ];

    // One alert, on each tablet's stream.
    for stream in [&mut till, &mut fitting] {
        let (_, alert) = stream.next_alert().await;
        assert_eq!(alert["member"]["member_id"], "M1", "{alert}");
        assert_eq!(alert["message"], "Welcome Ms. M1");
    }
    // The zone follows the louder receiver, the receiver's fitting rooms.
    let hqr = &hq;
    eventually("M1 in the fitting rooms at the hub", WAIT, || async {
        let arrived_there = events(hqr, "gw-1", "arrive")
            .await
            .iter()
            .any(|e| e["body"]["zone"] == "fitting-rooms");
        let moved_there = events(hqr, "gw-1", "zone_change")
            .await
            .iter()
            .any(|e| e["body"]["to"] == "fitting-rooms");
        arrived_there || moved_there
    })
    .await;
    assert!(
        rm.relay_batches
            .get_or_create(&vec![("result", "accepted")])
            .get()
            > 0
    );
    assert!(hm.relay_received.get() > 0);

    // One member, one visit: one arrival, at the hub; the receiver raised nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrivals = events(&hq, "gw-1", "arrive").await;
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    assert!(events(&hq, "gw-2", "arrive").await.is_empty());
    assert!(events(&hq, "gw-2", "alert_raised").await.is_empty());
    assert_eq!(events(&hq, "gw-1", "alert_raised").await.len(), 1);
    let stores = hq.get_json("/api/dashboard/stores").await;
    let s1 = &stores["stores"][0];
    assert_eq!(s1["store_id"], "s1", "{stores}");
    assert_eq!(s1["visits_today"], 1, "{stores}");
    assert_eq!(s1["present"], 1, "{stores}");
    assert_eq!(s1["alerts_raised"], 1, "{stores}");
    assert_eq!(
        receiver.metrics.members_cached.get(),
        0,
        "a receiver holds no member data"
    );

    // A batch sealed under another key, carrying M2, is refused; so is a replay of a good one.
    let now = wire::wall_ms();
    let forged = |key: &MessageKey, seq| {
        wire::seal(
            key,
            wire::SIGHTINGS_ROUTE,
            &SightingBatch {
                v: wire::VERSION,
                store_id: "s1".into(),
                gateway_id: "intruder".into(),
                boot: "b".into(),
                seq,
                sent_ms: now,
                mono_ms: 1_000,
                sightings: vec![WireSighting {
                    zone: "till".into(),
                    advert: AdvertRecord::from_advert(1_000, &ibeacon(3, -40)),
                }],
            },
        )
    };
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(format!("{hub_base}/api/relay/sightings"))
            .body(body)
            .send()
    };
    let wrong = MessageKey::for_store_lan("not the store's secret", "s1");
    assert_eq!(post(forged(&wrong, 1)).await.unwrap().status(), 401);
    let right = MessageKey::for_store_lan(KEY, "s1");
    let good = forged(&right, 1);
    assert_eq!(post(good.clone()).await.unwrap().status(), 200);
    assert_eq!(
        post(good).await.unwrap().status(),
        409,
        "a replay is refused"
    );
    assert_eq!(
        hm.relay_refused
            .get_or_create(&vec![("reason", "bad_seal")])
            .get(),
        1
    );
    feeding.iter().for_each(|f| f.abort());
    // The good batch is one sighting of M2: not enough for an arrival; the forged one added none.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !events(&hq, "gw-1", "arrive")
            .await
            .iter()
            .any(|e| e["body"]["member_id"] == "M2")
    );

    receiver.shutdown(Duration::from_secs(5)).await;
    hub.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}
