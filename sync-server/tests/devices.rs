//! Member device keys at head office, over HTTP on both backends: a registered public key
//! reaches the member's stores as a `device_key` identifier (and nothing else about the device
//! does), a revoked one leaves them, an import cannot smuggle one in, and bad or foreign keys are
//! refused with their reasons.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, Hq, WAIT, both_backends, changes, embedded};
use instore_protocol::{Identifier, changes::ChangeOp};
use instore_testkit::wait::eventually_some;

// The test vectors of protocol/src/member_code.rs (Python `cryptography`).
const ES256: &str = "04f51b66ce01e5a7fffef999ae5affbadf12d994871806a01d0da3c1f04d5643ea3429a5063750016d6ad08c8fc06cd68c7fa668a99ca345a8bb503ab95f9ff1a3";
const ES256_KEY_ID: &str = "7ef1a8c12a87d60b";
const ED25519: &str = "745f59045d233c8743a6e9d08d65765cf39cbf57ce6365b65b8500aafff85661";

fn member(id: &str, extra: &str) -> String {
    format!(
        r#"{{"member_id":"{id}","display_name":"Ms. {id}","tier":"gold","consent":{{"presence":true}}{extra}}}"#
    )
}

async fn send(
    hq: &Hq,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, hq.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// The device keys of `member` in the store's latest upsert of them after `since`.
async fn store_keys(hq: &Hq, member: &str, since: &str) -> Option<(Vec<Identifier>, String)> {
    let c = changes(hq, "s1", since).await;
    let chain = c.channels.into_iter().find(|c| c.channel == "chain")?;
    let to = chain.to;
    chain.changes.into_iter().rev().find_map(|c| match c.op {
        ChangeOp::Upsert { member: m, .. } if m.member_id == member => Some((
            m.identifiers
                .into_iter()
                .filter(|i| matches!(i, Identifier::DeviceKey { .. }))
                .collect(),
            format!("chain={to}"),
        )),
        _ => None,
    })
}

both_backends!(
    a_registered_device_key_reaches_the_stores_and_a_revoked_one_leaves_them,
    |backend| async move {
        let hq = Hq::start_with(embedded(), backend, |_| {}).await;
        // An import that carries a device key of its own: ignored, only registration counts.
        let smuggled = format!(
            r#","identifiers":[{{"kind":"device_key","alg":"Ed25519","public_key":"{ED25519}"}}]"#
        );
        hq.post_json(
            "/api/members",
            format!("{}\n{}", member("M1", &smuggled), member("M2", "")),
        )
        .await;
        let (keys, mut cursor) = eventually_some("M1 at the store", WAIT, || async {
            store_keys(&hq, "M1", "").await
        })
        .await;
        assert_eq!(keys, vec![], "an imported device key never reaches a store");

        let path = "/api/members/M1/devices";
        let reg = serde_json::json!({"alg": "ES256", "public_key": ES256});
        let (s, _) = send(&hq, reqwest::Method::POST, path, "wrong", Some(reg.clone())).await;
        assert_eq!(s, 401);
        let (s, body) = send(&hq, reqwest::Method::POST, path, ADMIN, Some(reg.clone())).await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["key_id"], ES256_KEY_ID);
        assert_eq!(body["alg"], "ES256");
        // Again: the same answer, nothing new.
        let (s, again) = send(&hq, reqwest::Method::POST, path, ADMIN, Some(reg.clone())).await;
        assert_eq!((s, &again["key_id"]), (200, &body["key_id"]));

        let (keys, next) = eventually_some("the key at the store", WAIT, || async {
            store_keys(&hq, "M1", &cursor)
                .await
                .filter(|(k, _)| !k.is_empty())
        })
        .await;
        assert_eq!(
            keys,
            vec![Identifier::DeviceKey {
                alg: "ES256".into(),
                public_key: ES256.into(),
                revoked: false,
            }]
        );
        cursor = next;

        // Refusals, each with its reason.
        for (member_path, body, status, says) in [
            (
                path,
                serde_json::json!({"alg": "RS256", "public_key": ES256}),
                400,
                "alg",
            ),
            (
                path,
                serde_json::json!({"alg": "ES256", "public_key": ED25519}),
                400,
                "bytes",
            ),
            (
                path,
                serde_json::json!({"alg": "ES256", "public_key": "zz"}),
                400,
                "hex",
            ),
            (
                path,
                serde_json::json!({"public_key": ES256}),
                400,
                "expected",
            ),
            (
                "/api/members/M2/devices",
                reg.clone(),
                409,
                "another member",
            ),
            ("/api/members/M9/devices", reg.clone(), 404, "M9"),
        ] {
            let (s, b) = send(&hq, reqwest::Method::POST, member_path, ADMIN, Some(body)).await;
            assert_eq!(s, status, "{member_path}: {b}");
            assert!(b["error"].as_str().unwrap().contains(says), "{b}");
        }

        let (s, list) = send(&hq, reqwest::Method::GET, path, ADMIN, None).await;
        assert_eq!(s, 200);
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert!(
            !list.to_string().contains(ES256),
            "the list shows no key: {list}"
        );

        let revoke = format!("{path}/{ES256_KEY_ID}");
        let (s, _) = send(&hq, reqwest::Method::DELETE, &revoke, ADMIN, None).await;
        assert_eq!(s, 204);
        // The store keeps the key marked revoked, so its codes are refused for that reason.
        let (keys, _) = eventually_some("the key revoked at the store", WAIT, || async {
            store_keys(&hq, "M1", &cursor).await.filter(|(k, _)| {
                k.iter()
                    .any(|i| matches!(i, Identifier::DeviceKey { revoked: true, .. }))
            })
        })
        .await;
        assert_eq!(keys.len(), 1, "{keys:?}");
        let (s, _) = send(&hq, reqwest::Method::DELETE, &revoke, ADMIN, None).await;
        assert_eq!(s, 204, "revoking twice changes nothing");
        let (s, b) = send(&hq, reqwest::Method::POST, path, ADMIN, Some(reg)).await;
        assert_eq!(s, 409, "a revoked key cannot come back: {b}");
        let (s, _) = send(
            &hq,
            reqwest::Method::DELETE,
            "/api/members/M1/devices/00",
            ADMIN,
            None,
        )
        .await;
        assert_eq!(s, 404);

        // Erasure takes the member's keys with them.
        let ed = serde_json::json!({"alg": "Ed25519", "public_key": ED25519});
        let (s, _) = send(&hq, reqwest::Method::POST, path, ADMIN, Some(ed)).await;
        assert_eq!(s, 201);
        let (s, _) = send(&hq, reqwest::Method::DELETE, "/api/members/M1", ADMIN, None).await;
        assert_eq!(s, 200);
        let (s, list) = send(&hq, reqwest::Method::GET, path, ADMIN, None).await;
        assert_eq!((s, list), (200, serde_json::json!([])));
        hq.stop().await;
    }
);

#[tokio::test]
async fn card_links_are_admin_only_single_use_and_limited_and_the_face_needs_a_live_code() {
    use instore_protocol::member_code::{Algorithm, DeviceSigner};
    let hq = Hq::start(embedded()).await;
    hq.post_json("/api/members", member("M1", "")).await;
    let (s, _) = send(
        &hq,
        reqwest::Method::POST,
        "/api/members/M1/card-links",
        "wrong",
        None,
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = send(
        &hq,
        reqwest::Method::POST,
        "/api/members/M9/card-links",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, link) = send(
        &hq,
        reqwest::Method::POST,
        "/api/members/M1/card-links",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 201, "{link}");
    let code = link["code"].as_str().unwrap();
    assert_eq!(link["path"], format!("/card/#enrol={code}"));

    let phone = DeviceSigner::generate(Algorithm::Es256).unwrap();
    let enrol = |code: &str, key: String| serde_json::json!({"code": code, "alg": "ES256", "public_key": key});
    let key = hex::encode(phone.public_key());
    // A bad key does not spend the link.
    let (s, b) = send(
        &hq,
        reqwest::Method::POST,
        "/api/card/enrol",
        "",
        Some(enrol(code, "04".into())),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = send(
        &hq,
        reqwest::Method::POST,
        "/api/card/enrol",
        "",
        Some(enrol(code, key.clone())),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["card"]["display_name"], "Ms. M1");
    assert_eq!(b["key_id"], hex::encode(phone.key_id()));
    let (s, _) = send(
        &hq,
        reqwest::Method::POST,
        "/api/card/enrol",
        "",
        Some(enrol(code, key.clone())),
    )
    .await;
    assert_eq!(s, 400, "the link is spent");

    // The face: only for a current code of a registered device.
    let now = instore_sync::now_ms();
    let face = |code: String| serde_json::json!({ "code": code });
    let (s, b) = send(
        &hq,
        reqwest::Method::POST,
        "/api/card/face",
        "",
        Some(face(phone.code_at(now).unwrap())),
    )
    .await;
    assert_eq!(
        (s, &b["card"]["display_name"]),
        (200, &serde_json::json!("Ms. M1")),
        "{b}"
    );
    let (s, _) = send(
        &hq,
        reqwest::Method::POST,
        "/api/card/face",
        "",
        Some(face(phone.code_at(now - 600_000).unwrap())),
    )
    .await;
    assert_eq!(s, 403, "an old code");
    let stranger = DeviceSigner::generate(Algorithm::Es256).unwrap();
    let (s, b) = send(
        &hq,
        reqwest::Method::POST,
        "/api/card/face",
        "",
        Some(face(stranger.code_at(now).unwrap())),
    )
    .await;
    assert_eq!(s, 403, "{b}");

    // Guessing links: refused, then limited for everyone.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let (s, _) = send(
            &hq,
            reqwest::Method::POST,
            "/api/card/enrol",
            "",
            Some(enrol(&format!("GUESS{i}"), key.clone())),
        )
        .await;
        statuses.push(s);
    }
    // 30 wrong codes a minute in all, the spent one above included.
    assert_eq!(statuses.iter().filter(|s| **s == 400).count(), 29);
    assert_eq!(statuses.last(), Some(&429));
    // The page itself, and its offline parts.
    for (path, kind) in [
        ("/card/", "text/html"),
        ("/card/qrcode.js", "text/javascript"),
        ("/card/sw.js", "text/javascript"),
        ("/card/manifest.webmanifest", "application/manifest+json"),
    ] {
        let r = reqwest::get(hq.url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }
    hq.stop().await;
}

#[tokio::test]
async fn a_member_code_used_at_a_second_store_is_flagged_and_counted() {
    use common::{FakeGateway, metric};
    use instore_protocol::{Event, EventBody};
    let hq = Hq::start(embedded()).await;
    hq.post_json("/api/members", member("M1", "")).await;
    let scanned = |seq: u64, code: &str| Event {
        seq,
        at_ms: instore_sync::now_ms(),
        body: EventBody::QrScanned {
            member_id: "M1".into(),
            zone: "till".into(),
            code: Some(code.into()),
        },
    };
    let code = format!("{ES256_KEY_ID}:59000000");
    let mut a = FakeGateway::connect(&hq, "gw-a", "s1").await;
    let mut a2 = FakeGateway::connect(&hq, "gw-a2", "s1").await;
    let mut b = FakeGateway::connect(&hq, "gw-b", "s2").await;
    a.send_events(vec![scanned(1, &code)]).await;
    a.next_ack().await;
    // Another gateway of the same store: one store, one use.
    a2.send_events(vec![scanned(1, &code), scanned(2, "not-a-code-id")])
        .await;
    a2.next_ack().await;
    b.send_events(vec![scanned(1, &code)]).await;
    b.next_ack().await;
    let flags = hq.get_json("/api/member-codes/flags").await;
    assert_eq!(flags.as_array().unwrap().len(), 1, "{flags}");
    assert_eq!(flags[0]["key_id"], ES256_KEY_ID);
    assert_eq!(flags[0]["step"], 59_000_000);
    assert_eq!(flags[0]["first_store"], "s1");
    assert_eq!(flags[0]["store_id"], "s2");
    assert_eq!(flags[0]["gateway_id"], "gw-b");
    let m = hq.metrics().await;
    assert_eq!(
        metric(&m, "instore_sync_member_codes_cross_store_total"),
        1.0
    );
    let (s, _) = send(
        &hq,
        reqwest::Method::GET,
        "/api/member-codes/flags",
        "wrong",
        None,
    )
    .await;
    assert_eq!(s, 401);
    hq.stop().await;
}
