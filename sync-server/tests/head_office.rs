//! Head office as a whole, in-process: embedded broker, temp SQLite, a fake gateway over MQTT,
//! and the HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, FakeGateway, Hq, SECRET, embedded, metric, ranges};
use instore_protocol::{MemberSnapshot, MembersNotice, topics};

const MEMBERS: &str = concat!(
    r#"{"member_id":"M1001","display_name":"Ms. Li","tier":"platinum","stage":"value","tags":["linen"],"consent":{"presence":true},"identifiers":[{"kind":"ibeacon","uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":2}]}"#,
    "\n",
    r#"{"member_id":"M1002","display_name":"Mr. Broken","tier":"gold","identifiers":[{"kind":"mac","address":"zz"}]}"#,
    "\n",
    r#"{"member_id":"M1003","display_name":"Mx. Ok","tier":"gold"}"#,
    "\n",
);

#[tokio::test]
async fn a_batch_is_stored_once_and_acknowledged_after_commit_with_its_ranges() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.send(&[1, 2, 3, 5]).await;
    let ack = gw.next_ack().await;
    assert_eq!(ack.gateway_id, "gw-1");
    assert_eq!(ranges(&ack), [(1, 3), (5, 5)]);
    assert_eq!(ack.high_water, 5);
    // The ack promises a commit: the events are readable the moment it arrives.
    let events = hq
        .get_json("/api/events?gateway=gw-1&after_seq=0&limit=10")
        .await;
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 5]);
    assert_eq!(events[0]["type"], "arrive");
    assert_eq!(events[0]["body"]["member_id"], "M1");
    let after = hq.get_json("/api/events?gateway=gw-1&after_seq=3").await;
    assert_eq!(after.as_array().unwrap().len(), 1);
    hq.stop().await;
}

#[tokio::test]
async fn a_resent_batch_is_counted_as_duplicates_and_still_acknowledged() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.send(&[1, 2, 3]).await;
    gw.next_ack().await;
    gw.send(&[1, 2, 3]).await;
    let again = gw.next_ack().await;
    assert_eq!(ranges(&again), [(1, 3)], "duplicates are acknowledged too");
    assert_eq!(again.high_water, 3);
    // An older resend does not lower the high-water mark.
    gw.send(&[4]).await;
    gw.next_ack().await;
    gw.send(&[2]).await;
    assert_eq!(gw.next_ack().await.high_water, 4);

    let gws = hq.get_json("/api/gateways").await;
    assert_eq!(gws[0]["events_received"], 4);
    assert_eq!(gws[0]["duplicates_dropped"], 4);
    let events = hq.get_json("/api/events?gateway=gw-1&limit=100").await;
    assert_eq!(
        events.as_array().unwrap().len(),
        4,
        "each event stored once"
    );
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_duplicates_dropped_total"), 4.0);
    assert_eq!(metric(&m, "instore_sync_events_received_total"), 4.0);
    assert_eq!(metric(&m, "instore_sync_acks_sent_total"), 4.0);
    hq.stop().await;
}

#[tokio::test]
async fn a_batch_numbered_far_beyond_the_gateways_last_does_not_move_its_mark() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.send(&[1, 2]).await;
    assert_eq!(gw.next_ack().await.high_water, 2);
    // Reproduced: a batch numbered near 2^62 made head office relay that mark in every ack, and
    // a gateway taking it could not number events any more.
    gw.send(&[3, 1 << 61]).await;
    let ack = gw.next_ack().await;
    assert_eq!(
        ranges(&ack),
        [(3, 3)],
        "the refused event is not acknowledged"
    );
    assert_eq!(ack.high_water, 3);
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_seq_jumps_refused_total"), 1.0);
    let gws = hq.get_json("/api/gateways").await;
    assert_eq!(gws[0]["last_seq"], 3);
    assert_eq!(gws[0]["events_received"], 3);
    hq.stop().await;
}

#[tokio::test]
async fn truncated_oversized_and_mismatched_payloads_are_counted_and_ingest_carries_on() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.send(&[1]).await;
    gw.next_ack().await;

    let good = serde_json::to_vec(&gw.batch(&[2])).unwrap();
    gw.publish_raw(good[..good.len() / 2].to_vec()).await;
    let mut foreign = gw.batch(&[2]);
    foreign.gateway_id = "gw-other".into();
    gw.publish_raw(serde_json::to_vec(&foreign).unwrap()).await;
    gw.publish_raw(vec![b' '; instore_protocol::MAX_PAYLOAD_BYTES + 1])
        .await;
    gw.send(&[2]).await;

    let ack = gw.next_ack().await;
    assert_eq!(
        ranges(&ack),
        [(2, 2)],
        "the good batch after the bad ones is ingested"
    );
    let m = hq.metrics().await;
    assert_eq!(
        metric(&m, "instore_sync_bad_payloads_total{reason=\"malformed\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "instore_sync_bad_payloads_total{reason=\"gateway_mismatch\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "instore_sync_bad_payloads_total{reason=\"too_large\"}"),
        1.0
    );
    let gws = hq.get_json("/api/gateways").await;
    assert_eq!(
        gws.as_array().unwrap().len(),
        1,
        "the mismatched gateway id is not created"
    );
    assert_eq!(gws[0]["bad_payloads"], 3);
    assert_eq!(gws[0]["events_received"], 2);
    hq.stop().await;
}

#[tokio::test]
async fn the_gateway_list_shows_store_status_last_seq_and_gaps() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-7", "store-3").await;
    gw.status(true).await;
    gw.send(&[1, 2, 5, 6, 9]).await;
    gw.next_ack().await;
    // Status and events travel on different topics: their relative order is not promised.
    let gws = hq
        .wait_for(|v| v[0]["online"] == true, "/api/gateways")
        .await;
    let g = &gws[0];
    assert_eq!(g["id"], "gw-7");
    assert_eq!(g["store"], "store-3");
    assert_eq!(g["online"], true);
    assert_eq!(g["last_seq"], 9);
    assert_eq!(g["events_received"], 5);
    assert_eq!(g["duplicates_dropped"], 0);
    assert_eq!(
        g["gaps"],
        serde_json::json!([{"first": 3, "last": 4}, {"first": 7, "last": 8}])
    );

    gw.status(false).await;
    hq.wait_for(|v| v[0]["online"] == false, "/api/gateways")
        .await;
    hq.stop().await;
}

#[tokio::test]
async fn the_api_refuses_missing_tokens_with_401_and_bad_requests_with_400() {
    let hq = Hq::start(embedded()).await;
    let client = reqwest::Client::new();
    let r = client.get(hq.url("/api/gateways")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
    let r = client
        .get(hq.url("/api/gateways"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = hq.get("/api/events?after_seq=x").await;
    assert_eq!(r.status(), 400);
    let r = hq.get("/api/events?gateway=a/b").await;
    assert_eq!(r.status(), 400);
    // A line that is not text is skipped with its reason, like any other bad line.
    let r = client
        .post(hq.url("/api/members"))
        .bearer_auth(ADMIN)
        .body(vec![0xff, 0xfe, b'\n'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["imported"], 0);
    assert!(
        body["skipped"][0]["error"]
            .as_str()
            .unwrap()
            .contains("UTF-8")
    );
    let r = client
        .post(hq.url("/api/members"))
        .body(MEMBERS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    hq.stop().await;
}

/// Sends a request head announcing a 1 GiB body and only a few bytes of it: the answer must come
/// at once, from the head alone.
async fn answer_to_a_huge_announced_body(hq: &Hq, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = hq
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/x-ndjson\r\n\
         Content-Length: 1073741824\r\n\r\n{{\"member_id\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buf))
        .await
        .expect("no answer while the body was still to come")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn an_unauthenticated_import_is_refused_before_its_body_is_read() {
    let hq = Hq::start(embedded()).await;
    for path in ["/api/members", "/api/purchases"] {
        for token in [None, Some("wrong")] {
            let answer = answer_to_a_huge_announced_body(&hq, path, token).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        }
    }
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_http_unauthorized_total"), 4.0);
    hq.stop().await;
}

#[tokio::test]
async fn a_streamed_member_import_keeps_identifier_clashes_across_batches_and_caps_its_listing() {
    let hq = Hq::start(embedded()).await;
    let mac = |i: u32| {
        format!(
            "C0:00:00:{:02X}:{:02X}:{:02X}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        )
    };
    let member = |id: &str, i: u32| {
        format!(
            r#"{{"member_id":"{id}","display_name":"N","tier":"gold","consent":{{"presence":true}},"identifiers":[{{"kind":"mac","address":"{}"}}]}}"#,
            mac(i)
        )
    };
    let mut lines: Vec<String> = (0..2_500).map(|i| member(&format!("M{i}"), i)).collect();
    // Line 2,501 claims M0's address: M0 came in the first batch, this line in the second.
    lines.push(member("X1", 0));
    lines.extend((0..1_005).map(|i| format!("not json {i}")));
    lines.push(member("M-last", 9_999));
    let text = lines.join("\n");
    // Sent in small pieces, so lines straddle the chunks as they would over a slow link.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = text
        .as_bytes()
        .chunks(7_001)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = reqwest::Client::new()
        .post(hq.url("/api/members"))
        .bearer_auth(ADMIN)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["imported"], 2_501);
    assert_eq!(report["skipped_total"], 1_006);
    let listed = report["skipped"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        1_000,
        "the listing is capped, the count is not"
    );
    assert_eq!(listed[0]["line"], 2_501);
    assert!(
        listed[0]["error"].as_str().unwrap().contains("M0"),
        "{}",
        listed[0]
    );
    assert_eq!(listed[1]["line"], 2_502);
    let last = hq.get_json("/api/members/M-last").await;
    assert_eq!(last["member_id"], "M-last");
    assert_eq!(hq.get("/api/members/X1").await.status(), 404);
    hq.stop().await;
}

#[tokio::test]
async fn a_member_import_reports_bad_lines_and_the_snapshot_serves_the_rest() {
    let hq = Hq::start(embedded()).await;
    let client = reqwest::Client::new();
    let report: serde_json::Value = client
        .post(hq.url("/api/members"))
        .bearer_auth(ADMIN)
        .body(MEMBERS)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["imported"], 2);
    assert_eq!(report["version"], 1);
    assert_eq!(report["skipped"][0]["line"], 2);
    assert!(
        report["skipped"][0]["error"]
            .as_str()
            .unwrap()
            .contains("identifier 0")
    );
    // The compute stage places imported members at the stores within a second or so.
    hq.wait_for(
        |v| v["members"].as_array().is_some_and(|m| !m.is_empty()),
        "/api/stores/store-1/members/snapshot",
    )
    .await;

    let token =
        instore_protocol::token::gateway_token(SECRET.as_bytes(), "store-1", "gw-1").unwrap();
    let path = hq.url("/api/stores/store-1/members/snapshot");
    let r = client
        .get(&path)
        .bearer_auth(&token)
        .header("X-Instore-Gateway", "gw-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let snap: MemberSnapshot = r.json().await.unwrap();
    assert_eq!(snap.store_id, "store-1");
    assert_eq!(snap.version, 1);
    let ids: Vec<_> = snap.members.iter().map(|m| m.member_id.as_str()).collect();
    // M1003 has no presence consent: it never leaves head office.
    assert_eq!(ids, ["M1001"]);

    // A token of another store's gateway, or a forged one, opens nothing.
    let other =
        instore_protocol::token::gateway_token(SECRET.as_bytes(), "store-2", "gw-1").unwrap();
    for t in [other.as_str(), "00ff"] {
        let r = client
            .get(&path)
            .bearer_auth(t)
            .header("X-Instore-Gateway", "gw-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // The admin token reads any store.
    assert_eq!(
        hq.get("/api/stores/store-9/members/snapshot")
            .await
            .status(),
        200
    );
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_members "), 2.0);
    hq.stop().await;
}

#[tokio::test]
async fn an_import_leaves_a_retained_members_notice_for_known_and_newly_seen_stores() {
    let hq = Hq::start(embedded()).await;
    let gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.status(true).await;
    hq.wait_for(
        |v| v.as_array().is_some_and(|a| a.len() == 1),
        "/api/gateways",
    )
    .await;
    let r = reqwest::Client::new()
        .post(hq.url("/api/members"))
        .bearer_auth(ADMIN)
        .body(MEMBERS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A gateway connecting later still learns the version: the notice is retained.
    let topic = topics::members("store-1");
    let mut late = FakeGateway::connect_with(
        &hq.mqtt_host,
        hq.mqtt_port,
        "gw-2",
        "store-1",
        std::slice::from_ref(&topic),
    )
    .await;
    let p = late.next_on(&topic).await;
    let notice: MembersNotice = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!((notice.store_id.as_str(), notice.version), ("store-1", 1));

    // A store first seen after the import is told when its first gateway shows up.
    let topic2 = topics::members("store-2");
    let mut newcomer = FakeGateway::connect_with(
        &hq.mqtt_host,
        hq.mqtt_port,
        "gw-3",
        "store-2",
        std::slice::from_ref(&topic2),
    )
    .await;
    newcomer.status(true).await;
    let p = newcomer.next_on(&topic2).await;
    let notice: MembersNotice = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!((notice.store_id.as_str(), notice.version), ("store-2", 1));
    hq.stop().await;
}

#[tokio::test]
async fn health_and_metrics_answer_without_a_token() {
    let hq = Hq::start(embedded()).await;
    let h: serde_json::Value = reqwest::get(hq.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["broker"], "embedded");
    assert_eq!(h["broker_connected"], true);
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_mqtt_connected"), 1.0);
    assert!(m.contains("instore_sync_ingest_commits_total"));
    let page = reqwest::get(hq.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/api/gateways"));
    hq.stop().await;
}

#[tokio::test]
async fn events_survive_a_restart_on_the_same_data_dir() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.send(&[1, 2]).await;
    gw.next_ack().await;
    let dir = hq.dir.path().to_path_buf();
    let Hq {
        cancel,
        done,
        dir: keep,
        ..
    } = hq;
    cancel.cancel();
    done.await.unwrap().unwrap();

    let cfg = common::config(&dir, embedded());
    let cancel = tokio_util::sync::CancellationToken::new();
    let office = instore_sync::start(cfg, cancel.clone()).await.unwrap();
    let url = format!("http://{}/api/gateways", office.http_addr());
    let done = tokio::spawn(office.wait());
    let gws: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gws[0]["last_seq"], 2);
    assert_eq!(gws[0]["events_received"], 2);
    cancel.cancel();
    done.await.unwrap().unwrap();
    drop(keep);
}

fn footfall(seq: u64) -> instore_protocol::Event {
    instore_protocol::Event {
        seq,
        at_ms: 1_700_000_000_000,
        body: instore_protocol::EventBody::Footfall {
            interval_s: 60,
            unique_devices: seq,
        },
    }
}

#[tokio::test]
async fn a_hello_is_answered_with_each_boots_floor_fixed_at_first_mention() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.hello(111, &[]).await;
    let ack = gw.next_ack().await;
    assert!(ack.ranges.is_empty(), "a hello carries no events");
    assert_eq!(ack.high_water, 0);
    let welcome = ack.hello.expect("a hello is answered with a welcome");
    assert_eq!(welcome.boot, 111);
    assert_eq!(
        welcome.floors,
        [instore_protocol::BootFloor {
            boot: 111,
            floor: 0
        }]
    );
    gw.send(&[1, 2, 3]).await;
    gw.next_ack().await;
    // The next boot names the old one: its floor stays 0, the new one's is the mark now.
    gw.hello(222, &[111]).await;
    let ack = gw.next_ack().await;
    assert_eq!(ack.high_water, 3);
    let floors: Vec<(u64, u64)> = ack
        .hello
        .unwrap()
        .floors
        .iter()
        .map(|f| (f.boot, f.floor))
        .collect();
    assert_eq!(floors, [(222, 3), (111, 0)]);
    gw.send(&[4]).await;
    gw.next_ack().await;
    gw.hello(222, &[]).await;
    let again = gw.next_ack().await.hello.unwrap();
    assert_eq!(again.floors[0].floor, 3, "a floor never moves");
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_hellos_total"), 3.0);
    hq.stop().await;
}

#[tokio::test]
async fn shed_ranges_are_listed_and_the_numbers_they_explain_are_not_gaps() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    // 3..=6 were shed (4 events); 9 is simply missing; 12 names a shed of 2 inside 10..=11 but
    // only one of them is missing, so that range explains it too.
    let shed = |seq, first_seq, last_seq, count| instore_protocol::Event {
        seq,
        at_ms: 1_700_000_000_000,
        body: instore_protocol::EventBody::EventsShed {
            first_seq,
            last_seq,
            count,
            kinds: vec!["footfall".into(), "scanner".into()],
        },
    };
    gw.send_events(vec![
        footfall(1),
        footfall(2),
        footfall(7),
        shed(8, 3, 6, 4),
        footfall(10),
        shed(12, 10, 11, 2),
        footfall(13),
    ])
    .await;
    gw.next_ack().await;
    let gws = hq.get_json("/api/gateways").await;
    let gaps: Vec<(u64, u64)> = gws[0]["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["first"].as_u64().unwrap(), g["last"].as_u64().unwrap()))
        .collect();
    assert_eq!(gaps, [(9, 9)], "{gws}");
    assert_eq!(gws[0]["shed"][0]["first"], 3);
    assert_eq!(gws[0]["shed"][0]["last"], 6);
    assert_eq!(gws[0]["shed"][0]["count"], 4);
    assert_eq!(gws[0]["shed"][0]["kinds"][1], "scanner");
    assert_eq!(gws[0]["shed"].as_array().unwrap().len(), 2);
    // A shed report that explains fewer numbers than are missing explains none of them.
    gw.send_events(vec![shed(14, 20, 25, 1), footfall(26)])
        .await;
    gw.next_ack().await;
    let gws = hq.get_json("/api/gateways").await;
    let gaps: Vec<(u64, u64)> = gws[0]["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["first"].as_u64().unwrap(), g["last"].as_u64().unwrap()))
        .collect();
    assert_eq!(gaps, [(9, 9), (15, 25)]);
    let m = hq.metrics().await;
    assert_eq!(metric(&m, "instore_sync_events_shed "), 7.0);
    // The gauge is the cheap figure from counters: 26 numbered - 9 held - 7 reported shed.
    assert_eq!(metric(&m, "instore_sync_events_missing "), 10.0);
    hq.stop().await;
}

#[tokio::test]
async fn a_commit_that_fails_releases_its_message_and_ingest_carries_on_without_a_reconnect() {
    let hq = Hq::start(embedded()).await;
    let mut gw = FakeGateway::connect(&hq, "gw-1", "store-1").await;
    gw.send(&[1]).await;
    gw.next_ack().await;
    // A fault only this event triggers, injected from a second connection.
    let db = rusqlite::Connection::open(hq.dir.path().join("hq.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER injected BEFORE INSERT ON events WHEN NEW.seq = 3
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    )
    .unwrap();
    // One publish each, so they may share a commit group: the good one must still get through.
    gw.send(&[3]).await;
    gw.send(&[2]).await;
    let ack = gw.next_ack().await;
    assert_eq!(
        ranges(&ack),
        [(2, 2)],
        "the failing batch is not acknowledged"
    );
    gw.send(&[4]).await;
    assert_eq!(
        ranges(&gw.next_ack().await),
        [(4, 4)],
        "ingest did not stall"
    );
    // The fault clears; the gateway's re-send (same connection) is stored.
    db.execute_batch("DROP TRIGGER injected").unwrap();
    gw.send(&[3]).await;
    assert_eq!(ranges(&gw.next_ack().await), [(3, 3)]);
    let gws = hq.get_json("/api/gateways").await;
    assert_eq!(gws[0]["events_received"], 4);
    assert_eq!(gws[0]["gaps"].as_array().unwrap().len(), 0);
    let m = hq.metrics().await;
    assert!(metric(&m, "instore_sync_ingest_commit_failures_total") >= 3.0);
    assert_eq!(metric(&m, "instore_sync_ingest_abandoned_total"), 1.0);
    hq.stop().await;
}
