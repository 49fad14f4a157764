//! Head office computes the Data: purchases and visits in, pyramid, tiers, stages, overdue out,
//! and every change reaching the stores that hold the member through their change streams —
//! on SQLite and on PostgreSQL, with the real head office over HTTP and MQTT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;

use common::{ADMIN, FakeGateway, Hq, WAIT, both_backends, changes, embedded, gateway_token};
use instore_protocol::{
    Event, EventBody,
    changes::{ChangeOp, RemoveReason, SnapshotHeader, SnapshotLine},
};
use sha2::{Digest, Sha256};

fn member(id: &str, home: Option<&str>, consent: bool) -> String {
    let home = home.map_or(String::new(), |h| format!(r#","home_store":"{h}""#));
    format!(
        r#"{{"member_id":"{id}","display_name":"N {id}","tier":"member","consent":{{"presence":{consent}}}{home}}}"#
    )
}

fn purchase(id: &str, member: &str, amount: i64, at: &str) -> String {
    format!(
        r#"{{"purchase_id":"{id}","member_id":"{member}","store_id":"s1","at":"{at}","amount_minor":{amount},"currency":"EUR","items":[{{"sku":"S","category":"linen","qty":1,"amount_minor":{amount}}}]}}"#
    )
}

/// A time this morning (UTC), so purchases fall in the trailing window whatever the date.
fn today_at(hour: u32) -> String {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    format!("{}T{:02}:00:00Z", now.date(), hour.min(now.hour() as u32))
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn quick(cfg: &mut instore_sync::HqConfig) {
    // Rank the base again as soon as buyers appear (the default waits a minute between passes).
    cfg.compute.rerank_min_interval_s = 0;
    cfg.compute.currency = Some("EUR".into());
}

both_backends!(
    purchases_are_imported_once_and_bad_lines_named,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, quick).await;
        hq.post_json("/api/members", format!("{}\n", member("M1", None, true)))
            .await;
        let at = today_at(9);
        let body = [
            purchase("P1", "M1", 1000, &at),
            purchase("P1", "M1", 1000, &at),
            "{not json".to_string(),
            purchase("P2", "M99", 50, &at),
            purchase("P3", "M1", 70, &at).replace("EUR", "USD"),
            purchase("P4", "M1", -300, &at),
        ]
        .join("\n");
        let r = hq.post_json("/api/purchases", body).await;
        assert_eq!(r["imported"], 3, "{r}");
        assert_eq!(r["duplicates"], 1, "{r}");
        assert_eq!(r["unknown_members"], 1, "{r}");
        assert_eq!(r["skipped_total"], 2, "{r}");
        assert_eq!(r["skipped"][0]["line"], 3);
        assert_eq!(r["skipped"][1]["line"], 5);
        assert!(r["skipped"][1]["error"].as_str().unwrap().contains("USD"));
        // Sent again: nothing new.
        let again = hq
            .post_json("/api/purchases", purchase("P1", "M1", 1000, &at))
            .await;
        assert_eq!(
            (again["imported"].as_u64(), again["duplicates"].as_u64()),
            (Some(0), Some(1))
        );
        // The return nets against the sale.
        let m = eventually("M1's spend", async || {
            let m = hq.get_json("/api/members/M1").await;
            (m["spend_12m_minor"] == 700).then_some(m)
        })
        .await;
        assert_eq!(m["purchases_12m"], 1);
        assert_eq!(m["groups"], serde_json::json!(["linen"]));
        // Without the token nothing is read.
        let r = reqwest::Client::new()
            .post(hq.url("/api/purchases"))
            .body(purchase("P9", "M1", 1, &at))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        hq.stop().await;
    }
);

both_backends!(
    spend_ranks_the_pyramid_and_a_new_platinum_moves_to_every_store,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, quick).await;
        let members: Vec<String> = (0..100)
            .map(|i| member(&format!("M{i:02}"), Some("s1"), true))
            .collect();
        hq.post_json("/api/members", members.join("\n")).await;
        // Placed at their home store first, as plain members.
        let first = eventually("the home store's members", async || {
            let c = changes(&hq, "s1", "").await;
            let s1 = c.channels.iter().find(|c| c.channel == "store:s1")?.clone();
            (s1.head >= 100).then_some(s1)
        })
        .await;
        assert!(
            first.changes.iter().all(
                |c| matches!(&c.op, ChangeOp::Upsert { member, .. } if member.tier == "member")
            )
        );
        let s1_version = first.to;
        // Asked for zstd, the same answer comes compressed, much smaller.
        let plain = reqwest::Client::new()
            .get(hq.url("/api/stores/s1/changes?since="))
            .bearer_auth(gateway_token("s1", "gw-1"))
            .header("X-Instore-Gateway", "gw-1")
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 200);
        assert!(plain.headers().get("content-encoding").is_none());
        let plain = plain.bytes().await.unwrap();
        let packed = reqwest::Client::new()
            .get(hq.url("/api/stores/s1/changes?since="))
            .bearer_auth(gateway_token("s1", "gw-1"))
            .header("X-Instore-Gateway", "gw-1")
            .header("Accept-Encoding", "gzip, zstd;q=0.9")
            .send()
            .await
            .unwrap();
        assert_eq!(packed.headers()["content-encoding"], "zstd");
        let packed = packed.bytes().await.unwrap();
        let unpacked = zstd::decode_all(&packed[..]).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&unpacked).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(a, b);
        assert!(
            packed.len() * 4 < plain.len(),
            "{} bytes compressed of {}",
            packed.len(),
            plain.len()
        );

        // Fifty buyers with distinct spends: 1..50 × 1,000 cents.
        let at = today_at(10);
        let body: Vec<String> = (0..50)
            .map(|i| purchase(&format!("P{i}"), &format!("M{i:02}"), (i + 1) * 1_000, &at))
            .collect();
        hq.post_json("/api/purchases", body.join("\n")).await;

        // n = 100 members: top2 = 2, top5 = 3 more, then 5, 5, 5, and the rest (non-buyers too).
        let pyramid = eventually("the pyramid of 100", async || {
            let p = hq.get_json("/api/pyramid").await;
            (p[0]["members"] == 2 && p[5]["members"] == 80).then_some(p)
        })
        .await;
        let counts: Vec<u64> = pyramid
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["members"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [2, 3, 5, 5, 5, 80]);
        assert_eq!(pyramid[0]["level"], "top2");
        assert_eq!(pyramid[0]["spend_12m_minor"], 50_000 + 49_000);

        let top = hq.get_json("/api/members/M49").await;
        assert_eq!(
            (top["level"].as_str(), top["tier"].as_str()),
            (Some("top2"), Some("platinum"))
        );
        assert_eq!(top["stage"], "activate");
        assert_eq!(top["visits_12m"], 0);
        let low = hq.get_json("/api/members/M00").await;
        assert_eq!(
            (low["level"].as_str(), low["tier"].as_str()),
            (Some("rest"), Some("member"))
        );

        // Platinum is held chain-wide: M49 leaves the home store's channel and joins the chain's,
        // with the computed tier and level.
        let (chain, s1) = eventually("M49 in the chain channel", async || {
            let c = changes(&hq, "s1", &format!("store:s1={s1_version}")).await;
            let chain = c.channels.iter().find(|c| c.channel == "chain")?.clone();
            let s1 = c.channels.iter().find(|c| c.channel == "store:s1")?.clone();
            chain
            .changes
            .iter()
            .any(|c| matches!(&c.op, ChangeOp::Upsert { member, .. } if member.member_id == "M49"))
            .then_some((chain, s1))
        })
        .await;
        let m49 = chain
            .changes
            .iter()
            .find_map(|c| match &c.op {
                ChangeOp::Upsert { member, .. } if member.member_id == "M49" => {
                    Some(member.clone())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            (m49.tier.as_str(), m49.level.as_deref()),
            ("platinum", Some("top2"))
        );
        assert_eq!(m49.groups, ["linen"]);
        assert!(
            m49.home_store.is_none(),
            "head-office-only fields stay home"
        );
        assert!(s1.changes.iter().any(|c| matches!(&c.op,
        ChangeOp::Remove { member_id, reason: RemoveReason::LeftChannel, .. } if member_id == "M49")));
        // A store in another town holds M49 now too (chain), but none of s1's plain members.
        let s2 = changes(&hq, "s2", "").await;
        assert!(
            s2.channels
                .iter()
                .find(|c| c.channel == "store:s2")
                .unwrap()
                .changes
                .is_empty()
        );
        hq.stop().await;
    }
);

both_backends!(
    a_gateway_far_behind_takes_a_snapshot_and_resumes_from_its_version,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, |cfg| {
            quick(cfg);
            cfg.membership.snapshot_after_changes = 5;
        })
        .await;
        let members: Vec<String> = (0..20)
            .map(|i| member(&format!("M{i:02}"), None, true))
            .collect();
        hq.post_json("/api/members", members.join("\n")).await;
        let snap = eventually("a chain snapshot of 20", async || {
            let c = changes(&hq, "s1", "").await;
            let chain = c.channels.into_iter().find(|c| c.channel == "chain")?;
            chain.snapshot.filter(|s| s.members == 20)
        })
        .await;
        let client = reqwest::Client::new();
        let auth = |r: reqwest::RequestBuilder| {
            r.bearer_auth(gateway_token("s1", "gw-1"))
                .header("X-Instore-Gateway", "gw-1")
        };
        let whole = auth(client.get(hq.url(&snap.path))).send().await.unwrap();
        assert_eq!(whole.status(), 200);
        let etag = whole.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", snap.sha256));
        let bytes = whole.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, snap.bytes);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), snap.sha256);
        let mut text = String::new();
        zstd::Decoder::new(&bytes[..])
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let mut lines = text.lines();
        let header: SnapshotHeader = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(
            (header.channel.as_str(), header.version, header.members),
            ("chain", snap.version, 20)
        );
        let members: Vec<SnapshotLine> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(members.len(), 20);
        assert!(members.iter().all(|m| m.member.consent.presence));

        // A cut download resumes from where it stopped, while the file is the same one.
        let tail = auth(client.get(hq.url(&snap.path)))
            .header("Range", "bytes=10-")
            .header("If-Range", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(tail.status(), 206);
        assert_eq!(
            tail.headers()["content-range"].to_str().unwrap(),
            format!("bytes 10-{}/{}", snap.bytes - 1, snap.bytes)
        );
        assert_eq!(tail.bytes().await.unwrap(), bytes.slice(10..));
        // A different file: the whole of it again.
        let other = auth(client.get(hq.url(&snap.path)))
            .header("Range", "bytes=10-")
            .header("If-Range", "\"elsewhere\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200);

        // After the snapshot, the stream carries on from its version.
        let next = changes(&hq, "s1", &format!("chain={}", snap.version)).await;
        let chain = next.channels.iter().find(|c| c.channel == "chain").unwrap();
        assert!(chain.snapshot.is_none());
        assert_eq!(chain.from, snap.version);

        // Scope: another store's gateway, or a channel the store does not subscribe to.
        let foreign = client
            .get(hq.url(&snap.path))
            .bearer_auth(gateway_token("s2", "gw-9"))
            .header("X-Instore-Gateway", "gw-9")
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), 401);
        let wrong = auth(client.get(hq.url("/api/stores/s1/channels/store:s2/snapshots/1")))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 404);
        let bad = auth(client.get(hq.url("/api/stores/s1/changes?since=nope=1")))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        hq.stop().await;
    }
);

both_backends!(
    an_opted_out_members_events_keep_their_number_but_nothing_else,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, quick).await;
        hq.post_json(
            "/api/members",
            format!(
                "{}\n{}",
                member("M1", Some("s1"), true),
                member("M2", Some("s1"), false)
            ),
        )
        .await;
        let mut gw = FakeGateway::connect(&hq, "gw-1", "s1").await;
        let now = instore_sync::now_ms();
        let ev = |seq: u64, body: EventBody| Event {
            seq,
            at_ms: now,
            body,
        };
        gw.send_events(vec![
            ev(
                1,
                EventBody::Arrive {
                    member_id: "M1".into(),
                    zone: "entrance".into(),
                    visit_id: "v1".into(),
                },
            ),
            ev(
                2,
                EventBody::Arrive {
                    member_id: "M2".into(),
                    zone: "entrance".into(),
                    visit_id: "v2".into(),
                },
            ),
            ev(
                3,
                EventBody::Depart {
                    member_id: "M1".into(),
                    zone: "till".into(),
                    visit_id: "v1".into(),
                    dwell_s: 300,
                    zones: vec!["entrance".into(), "till".into()],
                },
            ),
        ])
        .await;
        gw.next_ack().await;
        let events = hq.get_json("/api/events?gateway=gw-1").await;
        let kinds: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["arrive", "redacted_no_consent", "depart"]);
        assert_eq!(events[1]["body"], serde_json::json!({}));
        let gws = hq.get_json("/api/gateways").await;
        assert_eq!(gws[0]["gaps"], serde_json::json!([]));
        let m1 = eventually("M1's visit", async || {
            let m = hq.get_json("/api/members/M1").await;
            (m["visits_12m"] == 1).then_some(m)
        })
        .await;
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string();
        assert_eq!(m1["last_visit"], today);
        let m2 = hq.get_json("/api/members/M2").await;
        assert_eq!(m2["visits_12m"], 0);
        assert!(
            hq.metrics()
                .await
                .contains("instore_sync_events_received_total 3")
        );
        hq.stop().await;
    }
);

both_backends!(
    a_member_withdrawing_consent_is_removed_from_every_store,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, quick).await;
        hq.post_json("/api/members", member("M1", None, true)).await;
        let placed = eventually("M1 in the chain", async || {
            let c = changes(&hq, "s1", "").await;
            let chain = c.channels.into_iter().find(|c| c.channel == "chain")?;
            (chain.head >= 1).then_some(chain.to)
        })
        .await;
        hq.post_json("/api/members", member("M1", None, false))
            .await;
        let removed = eventually("M1's removal", async || {
            let c = changes(&hq, "s1", &format!("chain={placed}")).await;
            let chain = c.channels.into_iter().find(|c| c.channel == "chain")?;
            chain
                .changes
                .into_iter()
                .find(|c| matches!(c.op, ChangeOp::Remove { .. }))
        })
        .await;
        assert!(matches!(
            removed.op,
            ChangeOp::Remove {
                reason: RemoveReason::ConsentWithdrawn,
                ..
            }
        ));
        // A gateway starting from scratch never sees M1's record.
        let fresh = changes(&hq, "s1", "").await;
        let chain = fresh
            .channels
            .iter()
            .find(|c| c.channel == "chain")
            .unwrap();
        assert!(
            !chain
                .changes
                .iter()
                .any(|c| matches!(c.op, ChangeOp::Upsert { .. }))
        );
        let legacy = hq.get_json("/api/stores/s1/members/snapshot").await;
        assert_eq!(legacy["members"], serde_json::json!([]));
        hq.stop().await;
    }
);

both_backends!(
    a_member_the_store_does_not_hold_is_found_by_a_valid_code,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, |cfg| {
            quick(cfg);
            cfg.membership.unassigned = instore_sync::fanout::policy::Unassigned::None;
        })
        .await;
        let secret = [7u8; 32];
        let line = format!(
            r#"{{"member_id":"M1","display_name":"Ms. Li","tier":"member","home_store":"s2","consent":{{"presence":true}},"identifiers":[{{"kind":"rotating_secret","secret":"{}"}}]}}"#,
            hex::encode(secret)
        );
        hq.post_json(
            "/api/members",
            format!("{line}\n{}", member("M2", Some("s2"), true)),
        )
        .await;
        let now = instore_sync::now_ms();
        let day = instore_protocol::rotating::day_of_ms(now);
        let code = instore_protocol::qr::sign(
            "M1",
            &instore_protocol::rotating::day_key(&secret, day),
            now,
        );
        let client = reqwest::Client::new();
        let lookup = async |store: &str, gw: &str, code: &str| {
            client
                .post(hq.url(&format!("/api/stores/{store}/members/lookup")))
                .bearer_auth(gateway_token(store, gw))
                .header("X-Instore-Gateway", gw)
                .json(&serde_json::json!({ "code": code }))
                .send()
                .await
                .unwrap()
        };
        let found = eventually("the member placed", async || {
            let r = lookup("s1", "gw-1", &code).await;
            (r.status() == 200).then_some(r)
        })
        .await;
        let found: instore_protocol::changes::LookupResponse = found.json().await.unwrap();
        assert_eq!(found.member.member_id, "M1");
        assert!(found.member.identifiers.is_empty(), "no secret travels");
        assert_eq!(found.keys.len(), 2, "today's and tomorrow's day keys");
        // Tampered, for a member without keys, or from another store's gateway for this store.
        // A different last character (a fixed '0' would be no change one time in a few dozen).
        let last = if code.ends_with('0') { '1' } else { '0' };
        let tampered = format!("{}{last}", &code[..code.len() - 1]);
        assert_eq!(lookup("s1", "gw-1", &tampered).await.status(), 404);
        let m2 = instore_protocol::qr::sign("M2", &[0u8; 32], now);
        assert_eq!(lookup("s1", "gw-1", &m2).await.status(), 404);
        let r = client
            .post(hq.url("/api/stores/s1/members/lookup"))
            .bearer_auth(gateway_token("s2", "gw-2"))
            .header("X-Instore-Gateway", "gw-2")
            .json(&serde_json::json!({ "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // s1 itself holds neither member.
        let c = changes(&hq, "s1", "").await;
        assert!(c.channels.iter().all(|c| c.changes.is_empty()));
        let m = hq.metrics().await;
        assert!(
            m.contains(r#"instore_sync_member_lookups_total{result="found"} 1"#),
            "{m}"
        );
        let _ = ADMIN;
        hq.stop().await;
    }
);
