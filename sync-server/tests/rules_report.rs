#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `GET /api/rules/report`: alert lifecycle events from gateways, counted per rule.

mod common;

use common::{FakeGateway, Hq, both_backends, embedded};
use instore_protocol::{
    AlertOutcomeKind, AlertPriority, Event, EventBatch, EventBody, SCHEMA_VERSION,
};
use instore_sync::compute::uplift::{GroupCounts, uplift};

fn raised(id: &str, rule: &str) -> EventBody {
    EventBody::AlertRaised {
        alert_id: id.into(),
        rule: rule.into(),
        member_id: "M1".into(),
        priority: AlertPriority::High,
        message: "Greet".into(),
        campaign: None,
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
    send_at(gw, first_seq, 1_700_000_000_000, bodies).await;
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
    let counts = |row: &serde_json::Value| {
        let keys = [
            "rule",
            "raised",
            "taken",
            "converted",
            "no_sale",
            "not_found",
            "dismissed",
            "expired",
        ];
        serde_json::Value::Object(
            keys.iter()
                .map(|k| (k.to_string(), row[k].clone()))
                .collect(),
        )
    };
    let rows: Vec<_> = all.as_array().unwrap().iter().map(counts).collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({"rule": "birthday", "raised": 1, "taken": 0, "converted": 0,
                "no_sale": 0, "not_found": 0, "dismissed": 0, "expired": 1}),
            serde_json::json!({"rule": "vip", "raised": 4, "taken": 3, "converted": 2,
                "no_sale": 1, "not_found": 0, "dismissed": 1, "expired": 0}),
        ]
    );
    // No holdout yet: the alerted group alone, no uplift.
    assert_eq!(all[1]["holdout"]["alerted"]["occasions"], 4);
    assert_eq!(all[1]["holdout"]["held_out"]["occasions"], 0);
    assert_eq!(all[1]["holdout"]["taken"], 3);
    assert!(all[1]["holdout"]["uplift"].is_null());
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

fn held_out(rule: &str, member: &str) -> EventBody {
    EventBody::HeldOut {
        rule: rule.into(),
        member_id: member.into(),
        zone: "entrance".into(),
        visit_id: format!("v-{member}"),
        campaign: None,
    }
}

fn raised_for(id: &str, rule: &str, member: &str) -> EventBody {
    EventBody::AlertRaised {
        alert_id: id.into(),
        rule: rule.into(),
        member_id: member.into(),
        priority: AlertPriority::High,
        message: "Greet".into(),
        campaign: None,
    }
}

async fn send_at(gw: &mut FakeGateway, first_seq: u64, at_ms: i64, bodies: Vec<EventBody>) {
    let batch = EventBatch {
        v: SCHEMA_VERSION,
        gateway_id: gw.id.clone(),
        store_id: gw.store.clone(),
        hello: None,
        outbox: None,
        events: bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Event {
                seq: first_seq + i as u64,
                at_ms,
                body,
            })
            .collect(),
    };
    gw.publish_raw(serde_json::to_vec(&batch).unwrap()).await;
    gw.next_ack().await;
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

both_backends!(
    alerted_and_held_out_members_are_compared_on_purchases_within_the_window,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, |cfg| {
            cfg.compute.currency = Some("EUR".into());
        })
        .await;
        let members: String = (0..30)
            .map(|i| {
                format!(
                    r#"{{"member_id":"M{i:02}","display_name":"N","tier":"gold","consent":{{"presence":true}}}}"#
                ) + "\n"
            })
            .collect();
        hq.post_json("/api/members", members).await;
        let day = 86_400_000i64;
        let t = jiff::Timestamp::now().as_millisecond() - 30 * day;
        let m = |i: usize| format!("M{i:02}");
        let mut a = FakeGateway::connect(&hq, "gw-a", "store-a").await;
        let mut b = FakeGateway::connect(&hq, "gw-b", "store-b").await;
        // Store A: M00–M09 alerted, M10–M19 held out; store B: M20–M24 and M25–M29.
        let mut bodies: Vec<_> = (0..10)
            .map(|i| raised_for(&format!("a{i}"), "vip", &m(i)))
            .collect();
        bodies.extend((10..20).map(|i| held_out("vip", &m(i))));
        bodies.push(taken("a0", "vip"));
        send_at(&mut a, 1, t, bodies).await;
        let mut bodies: Vec<_> = (20..25)
            .map(|i| raised_for(&format!("b{i}"), "vip", &m(i)))
            .collect();
        bodies.extend((25..30).map(|i| held_out("vip", &m(i))));
        send_at(&mut b, 1, t, bodies).await;

        let purchase = |id: String, member: String, amount: i64, at_ms: i64| {
            format!(
                r#"{{"purchase_id":"{id}","member_id":"{member}","store_id":"store-a","at":"{}","amount_minor":{amount},"currency":"EUR","items":[]}}"#,
                rfc3339(at_ms)
            )
        };
        let mut lines: Vec<String> = (0..6)
            .map(|i| purchase(format!("PA{i}"), m(i), 1000, t + day))
            .collect();
        // Two purchases by one alerted member: one occasion converted, both counted as revenue.
        lines.push(purchase("PA0b".into(), m(0), 250, t + 2 * day));
        // Ten days after: outside a 7-day window, inside a 14-day one.
        lines.push(purchase("PA6".into(), m(6), 1000, t + 10 * day));
        lines.extend((10..12).map(|i| purchase(format!("PH{i}"), m(i), 500, t + 3 * day)));
        // Before the occasion: not caused by it.
        lines.push(purchase("PH12".into(), m(12), 9000, t - day));
        let r = hq.post_json("/api/purchases", lines.join("\n")).await;
        assert_eq!(r["imported"], 11, "{r}");

        let report = hq.get_json("/api/rules/report").await;
        let vip = &report[0];
        assert_eq!(vip["rule"], "vip");
        let stores = vip["stores"].as_array().unwrap();
        assert_eq!(stores.len(), 2);
        let sa = &stores[0];
        assert_eq!(sa["store_id"], "store-a");
        assert_eq!(sa["window_days"], 7);
        assert_eq!(sa["taken"], 1);
        assert_eq!(sa["alerted"]["occasions"], 10);
        assert_eq!(sa["alerted"]["purchased"], 6);
        assert_eq!(sa["alerted"]["revenue_minor"], 6250);
        assert_eq!(sa["alerted"]["revenue_per_occasion_minor"], 625.0);
        assert_eq!(sa["held_out"]["occasions"], 10);
        assert_eq!(sa["held_out"]["purchased"], 2);
        assert_eq!(sa["held_out"]["revenue_minor"], 1000);
        let want = uplift(
            GroupCounts {
                occasions: 10,
                converted: 6,
                revenue_cents: 6250,
            },
            GroupCounts {
                occasions: 10,
                converted: 2,
                revenue_cents: 1000,
            },
        )
        .unwrap();
        let got = &sa["uplift"];
        assert!(
            (got["uplift"].as_f64().unwrap() - 0.4).abs() < 1e-12,
            "{got}"
        );
        assert_eq!(got["ci_low"].as_f64().unwrap(), want.ci_low);
        assert_eq!(got["ci_high"].as_f64().unwrap(), want.ci_high);
        assert!(want.ci_low < 0.4 && 0.4 < want.ci_high);
        assert_eq!(got["revenue_uplift_cents"].as_f64().unwrap(), 525.0);
        let sb = &stores[1];
        assert_eq!(sb["store_id"], "store-b");
        assert_eq!(
            (
                &sb["alerted"]["occasions"],
                &sb["alerted"]["purchased"],
                &sb["held_out"]["occasions"],
                &sb["held_out"]["purchased"]
            ),
            (&5.into(), &0.into(), &5.into(), &0.into())
        );
        // Both stores pooled.
        let all = &vip["holdout"];
        assert_eq!(all["alerted"]["occasions"], 15);
        assert_eq!(all["alerted"]["purchased"], 6);
        assert_eq!(all["held_out"]["occasions"], 15);
        assert_eq!(all["held_out"]["purchased"], 2);

        let wide = hq.get_json("/api/rules/report?window_days=14").await;
        assert_eq!(wide[0]["stores"][0]["alerted"]["purchased"], 7);
        let one = hq.get_json("/api/rules/report?store=store-b").await;
        assert_eq!(one[0]["stores"].as_array().unwrap().len(), 1);
        assert_eq!(one[0]["holdout"]["alerted"]["occasions"], 5);
        for bad in ["window_days=0", "window_days=91", "window_days=x"] {
            let r = hq.get(&format!("/api/rules/report?{bad}")).await;
            assert_eq!(r.status(), 400, "{bad}");
        }
        hq.stop().await;
    }
);
