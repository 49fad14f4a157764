//! Head office against a real external broker: Debian's Mosquitto, started by the test on a free
//! port and killed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{ADMIN, FakeGateway, Hq, free_port, ranges};
use instore_protocol::{MembersNotice, topics};
use instore_sync::BrokerConfig;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Kills the broker even when the test panics.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_mosquitto() -> Mosquitto {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's mosquitto must be installed at /usr/sbin/mosquitto");
    let m = Mosquitto {
        child,
        port,
        _dir: dir,
    };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m
}

#[tokio::test]
async fn head_office_ingests_and_acknowledges_through_mosquitto() {
    let mosquitto = start_mosquitto().await;
    let hq = Hq::start(BrokerConfig {
        listen: None,
        url: Some(format!("mqtt://127.0.0.1:{}", mosquitto.port)),
        client_id: "instore-sync".into(),
        share_group: None,
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
