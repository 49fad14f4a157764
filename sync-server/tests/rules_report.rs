#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `GET /api/rules/report`: alert lifecycle events from gateways, counted per rule.

mod common;

use common::{FakeGateway, Hq, embedded};
use instore_protocol::{
    AlertOutcomeKind, AlertPriority, Event, EventBatch, EventBody, SCHEMA_VERSION,
};

fn raised(id: &str, rule: &str) -> EventBody {
    EventBody::AlertRaised {
        alert_id: id.into(),
        rule: rule.into(),
        member_id: "M1".into(),
        priority: AlertPriority::High,
        message: "Greet".into(),
    }
}

fn taken(id: &str, rule: &str) -> EventBody {
    EventBody::AlertTaken {
        alert_id: id.into(),
        rule: rule.into(),
        by: "till 1".into(),
    }
}

fn outcome(id: &str, rule: &str, outcome: AlertOutcomeKind) -> EventBody {
    EventBody::AlertOutcome {
        alert_id: id.into(),
        rule: rule.into(),
        outcome,
        by: "till 1".into(),
    }
}

async fn send(gw: &mut FakeGateway, first_seq: u64, bodies: Vec<EventBody>) {
    let batch = EventBatch {
        v: SCHEMA_VERSION,
        gateway_id: gw.id.clone(),
        store_id: gw.store.clone(),
        hello: None,
        events: bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Event {
                seq: first_seq + i as u64,
                at_ms: 1_700_000_000_000,
                body,
            })
            .collect(),
    };
    gw.publish_raw(serde_json::to_vec(&batch).unwrap()).await;
    gw.next_ack().await;
}

#[tokio::test]
async fn the_report_counts_raised_taken_converted_dismissed_and_expired_per_rule() {
    let hq = Hq::start(embedded()).await;
    let mut a = FakeGateway::connect(&hq, "gw-a", "store-a").await;
    let mut b = FakeGateway::connect(&hq, "gw-b", "store-b").await;
    use AlertOutcomeKind::*;
    send(
        &mut a,
        1,
        vec![
            raised("a1", "vip"),
            raised("a2", "vip"),
            raised("a3", "vip"),
            raised("a4", "birthday"),
            taken("a1", "vip"),
            outcome("a1", "vip", Purchased),
            taken("a2", "vip"),
            outcome("a2", "vip", NoSale),
            EventBody::AlertDismissed {
                alert_id: "a3".into(),
                rule: "vip".into(),
                by: "till 2".into(),
            },
            EventBody::AlertExpired {
                alert_id: "a4".into(),
                rule: "birthday".into(),
            },
            // Not an alert event: ignored.
            EventBody::GatewayStarted {
                version: "x".into(),
            },
        ],
    )
    .await;
    send(
        &mut b,
        1,
        vec![
            raised("b1", "vip"),
            taken("b1", "vip"),
            outcome("b1", "vip", Purchased),
        ],
    )
    .await;

    let all = hq.get_json("/api/rules/report").await;
    assert_eq!(
        all,
        serde_json::json!([
            {"rule": "birthday", "raised": 1, "taken": 0, "converted": 0, "no_sale": 0,
             "not_found": 0, "dismissed": 0, "expired": 1},
            {"rule": "vip", "raised": 4, "taken": 3, "converted": 2, "no_sale": 1,
             "not_found": 0, "dismissed": 1, "expired": 0},
        ])
    );
    let one = hq.get_json("/api/rules/report?store=store-b").await;
    assert_eq!(one[0]["rule"], "vip");
    assert_eq!(one[0]["raised"], 1);
    assert_eq!(one[0]["converted"], 1);
    assert_eq!(one.as_array().unwrap().len(), 1);

    let refused = reqwest::get(hq.url("/api/rules/report")).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(hq.get("/api/rules/report?store=bad/id").await.status(), 400);
    hq.stop().await;
}
