//! Privacy at head office, with the real head office over HTTP and MQTT on both backends:
//! erasing a member takes them out of every store and strips their identity from what is kept,
//! and events a gateway sends after the erasure are stored without content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, FakeGateway, Hq, WAIT, both_backends, changes, embedded, metric};
use instore_protocol::{
    AlertPriority, Event, EventBody,
    changes::{ChangeOp, RemoveReason},
};
use instore_testkit::wait::eventually_some;

fn member(id: &str) -> String {
    format!(
        r#"{{"member_id":"{id}","display_name":"Ms. {id}","tier":"gold","consent":{{"presence":true}}}}"#
    )
}

fn arrive(seq: u64, member: &str, visit: &str) -> Event {
    Event {
        seq,
        at_ms: instore_sync::now_ms(),
        body: EventBody::Arrive {
            member_id: member.into(),
            zone: "entrance".into(),
            visit_id: visit.into(),
        },
    }
}

async fn erase(hq: &Hq, id: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .delete(hq.url(&format!("/api/members/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

both_backends!(
    an_erased_member_leaves_every_store_and_what_is_kept_no_longer_names_them,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, |_| {}).await;
        hq.post_json(
            "/api/members",
            format!("{}\n{}", member("M1"), member("M2")),
        )
        .await;
        let placed = eventually_some("M1 and M2 at the store", WAIT, || async {
            let c = changes(&hq, "s1", "").await;
            let chain = c.channels.into_iter().find(|c| c.channel == "chain")?;
            (chain.head >= 2).then_some(chain.to)
        })
        .await;
        let mut gw = FakeGateway::connect(&hq, "gw-1", "s1").await;
        let now = instore_sync::now_ms();
        gw.send_events(vec![
            arrive(1, "M1", "v1"),
            Event {
                seq: 2,
                at_ms: now,
                body: EventBody::AlertRaised {
                    alert_id: "a1".into(),
                    rule: "vip".into(),
                    member_id: "M1".into(),
                    priority: AlertPriority::High,
                    message: "Greet Ms. M1".into(),
                    campaign: None,
                },
            },
            arrive(3, "M2", "v2"),
            Event {
                seq: 4,
                at_ms: now,
                body: EventBody::Depart {
                    member_id: "M1".into(),
                    zone: "entrance".into(),
                    visit_id: "v1".into(),
                    dwell_s: 60,
                    zones: vec!["entrance".into()],
                },
            },
        ])
        .await;
        gw.next_ack().await;

        assert_eq!(erase(&hq, "M1", "wrong").await.status(), 401);
        let r = erase(&hq, "M1", ADMIN).await;
        assert_eq!(r.status(), 200);
        let report: serde_json::Value = r.json().await.unwrap();
        assert_eq!(report["had_record"], true);
        assert_eq!(report["already_erased"], false);
        assert_eq!(report["events_anonymised"], 3);
        assert_eq!(report["visits_anonymised"], 1);
        assert!(report["channels"].as_u64().unwrap() >= 1, "{report}");

        // Kept for the counts, without the member: types and times stay, ids and texts go.
        let events = hq.get_json("/api/events?gateway=gw-1").await;
        let text = events.to_string();
        assert!(!text.contains("M1"), "{text}");
        assert_eq!(events[0]["type"], "arrive");
        assert_eq!(events[1]["body"]["rule"], "vip");
        assert_eq!(events[1]["body"]["message"], "");
        assert_eq!(
            events[2]["body"]["member_id"], "M2",
            "another member untouched"
        );
        assert_eq!(hq.get("/api/members/M1").await.status(), 404);
        assert_eq!(hq.get_json("/api/members/M2").await["member_id"], "M2");

        // Every store drops the member, and says why.
        let removal = eventually_some("M1's removal at the store", WAIT, || async {
            let c = changes(&hq, "s1", &format!("chain={placed}")).await;
            let chain = c.channels.into_iter().find(|c| c.channel == "chain")?;
            chain
                .changes
                .into_iter()
                .find(|c| matches!(&c.op, ChangeOp::Remove { member_id, .. } if member_id == "M1"))
        })
        .await;
        assert!(matches!(
            removal.op,
            ChangeOp::Remove {
                reason: RemoveReason::Erased,
                ..
            }
        ));

        // A gateway that has not heard yet: its event is stored without content.
        gw.send_events(vec![arrive(5, "M1", "v3")]).await;
        gw.next_ack().await;
        let late = hq.get_json("/api/events?gateway=gw-1&after_seq=4").await;
        assert_eq!(late[0]["type"], "redacted_no_consent");
        assert_eq!(late[0]["body"], serde_json::json!({}));

        // Erasing again is harmless and says so.
        let again: serde_json::Value = erase(&hq, "M1", ADMIN).await.json().await.unwrap();
        assert_eq!(again["already_erased"], true);
        assert_eq!(again["had_record"], false);
        let m = hq.metrics().await;
        assert_eq!(metric(&m, "instore_sync_members_erased_total"), 2.0);

        // Imported again (the CRM added them back): a new member, whose events count again.
        hq.post_json("/api/members", member("M1")).await;
        gw.send_events(vec![arrive(6, "M1", "v4")]).await;
        gw.next_ack().await;
        let back = hq.get_json("/api/events?gateway=gw-1&after_seq=5").await;
        assert_eq!(back[0]["type"], "arrive");
        assert_eq!(back[0]["body"]["member_id"], "M1");
        hq.stop().await;
    }
);

#[tokio::test]
async fn head_office_deletes_events_past_their_retention_age_and_reports_no_gaps_for_them() {
    const DAY_MS: i64 = 86_400_000;
    let now = instore_sync::now_ms();
    let hq = Hq::start_with(embedded(), common::Backend::Sqlite, |cfg| {
        cfg.privacy.events_days = 30;
        // What an older head office left behind: three events from 40 days ago, one from today.
        let conn = rusqlite::Connection::open(cfg.data_dir.join("hq.sqlite")).unwrap();
        let mut db = instore_sync::store::db::Db::from_sqlite(conn);
        instore_sync::store::schema::migrate(&mut db).unwrap();
        drop(db);
        let conn = rusqlite::Connection::open(cfg.data_dir.join("hq.sqlite")).unwrap();
        conn.execute(
            "INSERT INTO gateways (id, store, last_seq) VALUES ('gw-1', 's1', 4)",
            [],
        )
        .unwrap();
        for (seq, at) in [
            (1, now - 40 * DAY_MS),
            (2, now - 40 * DAY_MS),
            (3, now - 40 * DAY_MS),
            (4, now),
        ] {
            conn.execute(
                "INSERT INTO events VALUES ('gw-1', ?1, 's1', ?2, 'footfall', '{}', ?2)",
                [seq, at],
            )
            .unwrap();
        }
    })
    .await;
    eventually_some("the first sweep, at start", WAIT, || async {
        let m = hq.metrics().await;
        (metric(&m, "instore_sync_events_expired_total") == 3.0).then_some(())
    })
    .await;
    let events = hq.get_json("/api/events?gateway=gw-1").await;
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4]);
    let gws = hq.get_json("/api/gateways").await;
    assert_eq!(gws[0]["retained_from"], 3);
    assert_eq!(gws[0]["gaps"], serde_json::json!([]));
    hq.stop().await;
}
