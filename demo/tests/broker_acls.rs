//! Production broker files from `instore-provision mosquitto` on Debian's Mosquitto: head office
//! (with its own credentials) and a real agent (its id and token) work through it end to end,
//! and the ACLs hold: anonymous clients are refused, a gateway cannot write another gateway's
//! events, nor read another gateway's acks or another store's notices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A connected client of `port` as `user`; `None` if the broker refused the connection.
async fn client(
    port: u16,
    user: Option<(&str, &str)>,
) -> Option<(AsyncClient, rumqttc::EventLoop)> {
    let mut opts = MqttOptions::new(format!("acl-test-{}", free_port()), "127.0.0.1", port);
    if let Some((u, p)) = user {
        opts.set_credentials(u, p);
    }
    let (c, mut ev) = AsyncClient::new(opts, 16);
    loop {
        match tokio::time::timeout(WAIT, ev.poll())
            .await
            .expect("broker silent")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Some((c, ev)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Subscribes to `filter` and returns whether the broker granted it.
async fn granted(c: &AsyncClient, ev: &mut rumqttc::EventLoop, filter: &str) -> bool {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(a)) = tokio::time::timeout(WAIT, ev.poll())
            .await
            .unwrap()
            .unwrap()
        {
            return !matches!(a.return_codes[0], SubscribeReasonCode::Failure);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_acls_carry_a_store_and_stop_gateways_from_crossing_over() {
    let dir = tempfile::tempdir().unwrap();
    // Head office's secret as the harness configures it, for the tool to mint the passwords.
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    std::fs::write(
        dir.path().join("gateways.csv"),
        "# store,gateway\nstore-a,gw-a\nstore-b,gw-b\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin("instore-provision"))
        .args([
            "mosquitto",
            "--gateways",
            "gateways.csv",
            "--secret-file",
            "secret",
            "--out-dir",
            "mq",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = std::fs::read_to_string(dir.path().join("mq/instore.conf")).unwrap();
    let hq_password = std::fs::read_to_string(dir.path().join("mq/hq_password")).unwrap();
    let mosquitto = Mosquitto::start_with(dir.path(), &conf).await;

    let hq = start_hq_configured(
        dir.path(),
        Some(&mosquitto.url()),
        &format!("username = \"instore-sync\"\npassword = \"{hq_password}\"\n"),
    )
    .await;
    assert_eq!(hq.secret, secret);
    hq.import_members(population_ndjson(30)).await;
    let agent_dir = dir.path().join("store");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let setup = AgentSetup::new("store-a", "gw-a", free_port());
    let cfg = setup.write(&agent_dir, &hq, ALERT_ON_EVERY_ARRIVAL, "agent.toml");
    let _agent = Proc::spawn(
        &bin("instore-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        agent_dir.join("agent.log"),
    );
    // Through the ACLs: events up, acks down, notices and changes down.
    eventually("gw-a's events at head office", WAIT, || async {
        hq.gateway("gw-a")
            .await
            .filter(|g| g["last_seq"].as_u64() > Some(5) && g["sealed"] == true)
    })
    .await;
    let agent_metrics = format!("http://127.0.0.1:{}/metrics", setup.http_port);
    eventually(
        "acks back at the agent and members placed",
        WAIT,
        || async {
            let m = scrape(&agent_metrics).await;
            (metric(&m, "instore_agent_events_acked_total") > 0.0
                && metric(&m, "instore_agent_members_cached") > 0.0)
                .then_some(())
        },
    )
    .await;

    // Anonymous, or with a wrong password: refused.
    assert!(client(mosquitto.port, None).await.is_none());
    assert!(
        client(mosquitto.port, Some(("gw-b", "not-its-token")))
            .await
            .is_none()
    );
    // gw-b with its own token: its own topics only.
    let token_b =
        instore_protocol::token::gateway_token(secret.as_bytes(), "store-b", "gw-b").unwrap();
    let (b, mut b_ev) = client(mosquitto.port, Some(("gw-b", &token_b)))
        .await
        .unwrap();
    // A spy with head office's identity sees what reaches head office, and speaks as it.
    let (spy, mut spy_ev) = client(mosquitto.port, Some(("instore-sync", hq_password.trim())))
        .await
        .unwrap();
    assert!(granted(&spy, &mut spy_ev, instore_protocol::topics::ALL_EVENTS).await);

    // Reading: Mosquitto grants any subscription under 3.1.1 but delivers only what the ACL
    // lets the user read. gw-b asks for gw-a's acks, store-a's notices and everything.
    for filter in [
        instore_protocol::topics::ack("gw-a"),
        instore_protocol::topics::members("store-a"),
        "#".to_string(),
        instore_protocol::topics::ack("gw-b"),
    ] {
        granted(&b, &mut b_ev, &filter).await;
    }
    for (topic, text) in [
        (instore_protocol::topics::ack("gw-a"), "for gw-a"),
        (instore_protocol::topics::members("store-a"), "for store-a"),
        (instore_protocol::topics::ack("gw-b"), "for gw-b"),
    ] {
        spy.publish(topic, QoS::AtLeastOnce, false, text)
            .await
            .unwrap();
    }
    let spy_task = tokio::spawn(async move {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = spy_ev.poll().await {
                let _ = p;
            }
        }
    });
    let mut read_by_b: Vec<(String, String)> = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = b_ev.poll().await {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                let done = text == "for gw-b";
                read_by_b.push((p.topic.clone(), text));
                if done {
                    return;
                }
            }
        }
    })
    .await
    .expect("gw-b reads its own acks");
    // What the broker delivers to one subscriber it delivers in order: had any of the others
    // been allowed, it would have come first. Nothing of store-a either (its retained notice).
    assert_eq!(read_by_b.len(), 1, "{read_by_b:?}");
    spy_task.abort();

    // Writing: gw-b publishes on gw-a's events topic, then on its own; head office's identity
    // receives only its own.
    let (spy, mut spy_ev) = client(mosquitto.port, Some(("instore-sync", hq_password.trim())))
        .await
        .unwrap();
    assert!(granted(&spy, &mut spy_ev, instore_protocol::topics::ALL_EVENTS).await);
    let forged = instore_protocol::topics::events("gw-a");
    let own = instore_protocol::topics::events("gw-b");
    b.publish(&forged, QoS::AtLeastOnce, false, "forged by gw-b")
        .await
        .unwrap();
    b.publish(&own, QoS::AtLeastOnce, false, "gw-b's own")
        .await
        .unwrap();
    tokio::spawn(async move { while b_ev.poll().await.is_ok() {} });
    let mut payloads: Vec<String> = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = spy_ev.poll().await {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                let own = text == "gw-b's own";
                payloads.push(text);
                if own {
                    return;
                }
            }
        }
    })
    .await
    .expect("gw-b's own event reaches head office's identity");
    assert!(
        !payloads.iter().any(|t| t == "forged by gw-b"),
        "a gateway wrote another's events"
    );
    drop(hq);
}
