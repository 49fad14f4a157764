//! The gateway registry with the real head office over HTTP and MQTT: a technician's one-time
//! code enrols a gateway (no fleet secret involved), revocation stops it at once on both HTTP
//! and MQTT mid-stream, rotation voids the old token, wrong codes are rate-limited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, FakeGateway, Hq, embedded, gateway_token};
use instore_sync::http::registry::MAX_ENROL_FAILURES_PER_MINUTE;

async fn post(
    hq: &Hq,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(hq.url(path)).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn enrol(hq: &Hq, store: &str, gateway: &str) -> serde_json::Value {
    let issued: serde_json::Value = post(
        hq,
        "/api/gateways/enrolments",
        Some(ADMIN),
        serde_json::json!({"store_id": store, "gateway_id": gateway}),
    )
    .await
    .json()
    .await
    .unwrap();
    let code = issued["code"].as_str().unwrap().to_owned();
    let r = post(hq, "/api/enrol", None, serde_json::json!({ "code": code })).await;
    assert_eq!(r.status(), 200);
    let enrolled: serde_json::Value = r.json().await.unwrap();
    // Single use.
    let again = post(hq, "/api/enrol", None, serde_json::json!({ "code": code })).await;
    assert_eq!(again.status(), 400);
    enrolled
}

#[tokio::test]
async fn a_code_enrols_a_gateway_for_its_store_only_and_rotation_voids_the_old_token() {
    let hq = Hq::start(embedded()).await;
    // Issuing codes is the admin's.
    let r = post(
        &hq,
        "/api/gateways/enrolments",
        Some("wrong"),
        serde_json::json!({"store_id": "s1", "gateway_id": "g1"}),
    )
    .await;
    assert_eq!(r.status(), 401);
    let enrolled = enrol(&hq, "s1", "g1").await;
    assert_eq!(enrolled["store_id"], "s1");
    assert_eq!(enrolled["generation"], 1);
    let token = enrolled["token"].as_str().unwrap().to_owned();
    assert_eq!(hq.pull_status("s1", "g1", &token).await, 200);
    assert_eq!(
        hq.pull_status("s2", "g1", &token).await,
        401,
        "bound to its store"
    );
    // The secret-minted token of before the registry no longer opens anything for g1.
    assert_eq!(
        hq.pull_status("s1", "g1", &gateway_token("s1", "g1")).await,
        401
    );

    let rotated: serde_json::Value = post(
        &hq,
        "/api/gateways/g1/rotate",
        Some(ADMIN),
        serde_json::json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(rotated["generation"], 2);
    let new = rotated["token"].as_str().unwrap();
    assert_eq!(
        hq.pull_status("s1", "g1", &token).await,
        401,
        "the old token is void"
    );
    assert_eq!(hq.pull_status("s1", "g1", new).await, 200);
    let list = hq.get_json("/api/gateways/registry").await;
    assert_eq!(list[0]["gateway_id"], "g1");
    assert!(
        !list.to_string().contains(new),
        "the registry lists no credential"
    );
    hq.stop().await;
}

#[tokio::test]
async fn a_revoked_gateway_is_refused_at_once_on_http_and_mid_stream_on_mqtt() {
    let hq = Hq::start(embedded()).await;
    let token = enrol(&hq, "s1", "g1").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut gw = FakeGateway::connect_enrolled(&hq, "g1", "s1", &token).await;
    gw.send_sealed(&[1, 2, 3], &token).await;
    assert_eq!(gw.next_ack().await.high_water, 3);
    let bad = |m: &str, reason: &str| {
        instore_testkit::http::metric_value(
            m,
            &format!("instore_sync_bad_payloads_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let refused = async |reason: &str| {
        instore_testkit::wait::eventually_some(reason, common::WAIT, || async {
            (bad(&hq.metrics().await, reason) >= 1.0).then_some(())
        })
        .await
    };
    // A registered gateway seals: a plain batch in its name is a forgery.
    gw.send(&[4]).await;
    refused("unsigned").await;

    let r = post(
        &hq,
        "/api/gateways/g1/revoke",
        Some(ADMIN),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hq.pull_status("s1", "g1", &token).await, 401);
    gw.send_sealed(&[5, 6], &token).await;
    refused("revoked").await;
    let events = hq.get_json("/api/events?gateway=g1").await;
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        [1, 2, 3],
        "nothing after the revocation, nothing plain"
    );
    // Still connected (the embedded broker checks logins at CONNECT), but it cannot log in
    // again, and the generation-0 token of before its enrolment does not get it in either.
    let m0 = hq.metrics().await;
    let logins_refused = |m: &str, reason: &str| {
        instore_testkit::http::metric_value(
            m,
            &format!("instore_sync_mqtt_logins_refused_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    for password in [token.clone(), gateway_token("s1", "g1")] {
        let mut opts = rumqttc::MqttOptions::new("g1:s1:again", &hq.mqtt_host, hq.mqtt_port);
        opts.set_credentials("g1", password);
        let (_c, mut ev) = rumqttc::AsyncClient::new(opts, 4);
        let first = tokio::time::timeout(common::WAIT, ev.poll()).await.unwrap();
        assert!(first.is_err(), "{first:?}");
    }
    assert_eq!(
        logins_refused(&hq.metrics().await, "revoked"),
        logins_refused(&m0, "revoked") + 2.0
    );
    // A gateway of before the registry can be revoked too, by the store it was seen in.
    let mut legacy = FakeGateway::connect(&hq, "old", "s1").await;
    legacy.send(&[1]).await;
    legacy.next_ack().await;
    let r = post(
        &hq,
        "/api/gateways/old/revoke",
        Some(ADMIN),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        hq.pull_status("s1", "old", &gateway_token("s1", "old"))
            .await,
        401
    );
    let r = post(
        &hq,
        "/api/gateways/nobody/revoke",
        Some(ADMIN),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status(), 404);
    hq.stop().await;
}

#[tokio::test]
async fn wrong_enrolment_codes_are_rate_limited() {
    let hq = Hq::start(embedded()).await;
    let mut statuses = Vec::new();
    for _ in 0..MAX_ENROL_FAILURES_PER_MINUTE + 2 {
        let r = post(
            &hq,
            "/api/enrol",
            None,
            serde_json::json!({"code": "AAAA-BBBB-CCCC"}),
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    let n = MAX_ENROL_FAILURES_PER_MINUTE as usize;
    assert!(statuses[..n].iter().all(|&s| s == 400), "{statuses:?}");
    assert!(statuses[n..].iter().all(|&s| s == 429), "{statuses:?}");
    let bad = post(&hq, "/api/enrol", None, serde_json::json!({"nope": 1})).await;
    assert_eq!(bad.status(), 400);
    hq.stop().await;
}
