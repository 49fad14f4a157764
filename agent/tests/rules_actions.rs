#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Reaction actions against real receivers: a webhook endpoint (axum, in the test) that fails
//! twice before it succeeds, and an embedded MQTT broker (rumqttd) with a subscriber.

mod support;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use instore_agent::{
    cache::Member,
    metrics::Metrics,
    react::{self, ActionSettings, Happening, Occasion, Rules},
};
use rumqttc::{Event, Packet, QoS};
use support::{
    broker::{start_broker, subscribed},
    wait::until,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long a delivery or its count may take to show.
const WAIT: Duration = Duration::from_secs(10);

fn member() -> Member {
    Member {
        member_id: "M1001".into(),
        display_name: "Ms. Li".into(),
        tier: "platinum".into(),
        stage: Some("value".into()),
        tags: vec!["linen".into()],
        groups: vec![],
        birthday: None,
        last_purchase: None,
        last_visit: None,
        consent: Default::default(),
        ..Default::default()
    }
}

/// The actions one arrival of `member()` produces under `rules`.
fn actions_for(rules: &str) -> Vec<react::Action> {
    let mut r = Rules::parse(rules, "test").unwrap();
    let m = member();
    r.react(&Occasion {
        what: Happening::Arrive,
        member: &m,
        zone: "entrance",
        visit_id: "v1",
        at_ms: 0,
    })
    .actions
}

fn count(m: &Metrics, kind: &'static str, result: &'static str) -> u64 {
    m.reaction_actions
        .get_or_create(&vec![("kind", kind), ("result", result)])
        .get()
}

/// The reaction action queue with its own metrics, task tracker and cancellation token.
fn spawn_actions(
    mqtt_broker: Option<String>,
    client_id: &str,
    queue: usize,
) -> (react::ActionQueue, Metrics, TaskTracker, CancellationToken) {
    let metrics = Metrics::default();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let queue = react::actions::spawn(
        ActionSettings {
            mqtt_broker,
            mqtt_client_id: client_id.into(),
            queue,
        },
        metrics.clone(),
        &tracker,
        cancel.clone(),
    )
    .unwrap();
    (queue, metrics, tracker, cancel)
}

/// A receiver that honours idempotency keys, and misbehaves on the first two attempts: the
/// first is refused (503), the second is processed but answered too late for the sender's
/// timeout — the case where only the key prevents a duplicate.
#[derive(Default)]
struct Receiver {
    attempts: Mutex<Vec<String>>,
    processed: Mutex<HashSet<String>>,
    duplicates: Mutex<u32>,
}

async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let n = {
        let mut a = rx.attempts.lock().unwrap();
        a.push(key.clone());
        a.len()
    };
    if n == 1 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["id"], key.as_str(), "the body names its own key");
    if !rx.processed.lock().unwrap().insert(key) {
        *rx.duplicates.lock().unwrap() += 1;
    }
    if n == 2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    StatusCode::OK
}

#[tokio::test]
async fn a_webhook_that_fails_twice_is_retried_and_delivered_once() {
    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let rules = format!(
        "[[rules]]\nname = \"crm\"\non = \"arrive\"\n\
         webhook = {{ url = \"http://{addr}/hook\", timeout_ms = 500, retries = 4, backoff_ms = 50 }}\n"
    );
    let actions = actions_for(&rules);
    assert_eq!(actions.len(), 1);

    let (queue, metrics, tracker, cancel) = spawn_actions(None, "t", 8);
    for a in actions {
        queue.offer(a);
    }
    until("the webhook delivery", WAIT, || {
        count(&metrics, "webhook", "sent") == 1
    })
    .await;

    let attempts = receiver.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3, "503, timeout, success");
    assert!(!attempts[0].is_empty());
    assert!(
        attempts.iter().all(|k| *k == attempts[0]),
        "one idempotency key across retries: {attempts:?}"
    );
    assert_eq!(
        receiver.processed.lock().unwrap().len(),
        1,
        "delivered once"
    );
    assert_eq!(
        *receiver.duplicates.lock().unwrap(),
        1,
        "the retry after the timeout was recognised"
    );
    assert_eq!(count(&metrics, "webhook", "retried"), 2);
    assert_eq!(count(&metrics, "webhook", "failed"), 0);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn a_webhook_refused_for_good_is_not_retried() {
    let app = Router::new().route("/hook", post(|| async { StatusCode::UNPROCESSABLE_ENTITY }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let rules = format!(
        "[[rules]]\nname = \"crm\"\non = \"arrive\"\nwebhook = {{ url = \"http://{addr}/hook\", backoff_ms = 10 }}\n"
    );
    let (queue, metrics, _tracker, cancel) = spawn_actions(None, "t", 8);
    for a in actions_for(&rules) {
        queue.offer(a);
    }
    until("the refusal", WAIT, || {
        count(&metrics, "webhook", "failed") == 1
    })
    .await;
    assert_eq!(count(&metrics, "webhook", "retried"), 0);
    cancel.cancel();
}

#[tokio::test]
async fn an_mqtt_action_is_published_with_qos_1_to_the_rendered_topic() {
    let port = start_broker(65536);
    // Subscribe first, and wait for the broker to confirm.
    let (_sub, mut sub_loop) = subscribed(port, "watcher", "instore/s1/#").await;

    let (queue, metrics, tracker, cancel) =
        spawn_actions(Some(format!("mqtt://127.0.0.1:{port}")), "gw-actions", 8);
    let rules = "[[rules]]\nname = \"greet\"\non = \"arrive\"\nmessage = \"{display_name} is here\"\n\
                 mqtt = { topic = \"instore/s1/greet/{zone}\" }\n";
    for a in actions_for(rules) {
        queue.offer(a);
    }
    let publish = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => break p,
            Ok(_) => {}
            Err(_) => panic!("nothing published"),
        }
    };
    assert_eq!(publish.topic, "instore/s1/greet/entrance");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    let json: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
    assert_eq!(json["rule"], "greet");
    assert_eq!(json["member_id"], "M1001");
    assert_eq!(json["message"], "Ms. Li is here");
    until("the broker's PubAck", WAIT, || {
        count(&metrics, "mqtt", "acked") == 1
    })
    .await;
    assert_eq!(count(&metrics, "mqtt", "sent"), 1);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn an_mqtt_action_without_a_broker_is_counted_as_failed() {
    let (queue, metrics, _tracker, cancel) = spawn_actions(None, "t", 8);
    for a in actions_for("[[rules]]\nname = \"g\"\non = \"arrive\"\nmqtt = { topic = \"a/b\" }\n") {
        queue.offer(a);
    }
    until("the failure count", WAIT, || {
        count(&metrics, "mqtt", "failed") == 1
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn webhooks_stuck_on_a_silent_receiver_do_not_hold_up_mqtt_actions() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let port = start_broker(65536);
    let (_sub, mut sub_loop) = subscribed(port, "watcher2", "after/#").await;
    let (queue, metrics, _tracker, cancel) =
        spawn_actions(Some(format!("mqtt://127.0.0.1:{port}")), "gw-actions-2", 64);
    let hooks = format!(
        "[[rules]]\nname = \"slow\"\non = \"arrive\"\n\
         webhook = {{ url = \"http://{silent_addr}/h\", timeout_ms = 60000, retries = 0 }}\n"
    );
    // More than the webhook concurrency, all hanging.
    for _ in 0..20 {
        for a in actions_for(&hooks) {
            queue.offer(a);
        }
    }
    for a in
        actions_for("[[rules]]\nname = \"g\"\non = \"arrive\"\nmqtt = { topic = \"after/x\" }\n")
    {
        queue.offer(a);
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                assert_eq!(p.topic, "after/x");
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("the MQTT action waited behind the webhooks"),
        }
    }
    let finished = count(&metrics, "webhook", "sent") + count(&metrics, "webhook", "failed");
    assert_eq!(finished, 0, "the webhooks are all still hanging");
    cancel.cancel();
}
