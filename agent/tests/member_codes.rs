#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signed member codes end to end: the real head office (in-process) registers a device key,
//! the real agent (in-process) gets it through its store's change stream, and codes the device
//! signs, sent to the agent's QR scanners over TCP, identify the member once and raise the
//! `qr_scan` alert; a second read on the same scanner is a duplicate, the same code elsewhere a
//! replay, and tampered, unregistered, revoked and legacy codes are refused with their reasons.

mod support;

use std::{path::Path, time::Duration};

use instore_protocol::member_code::{Algorithm, DeviceSigner};
use support::{
    hq::{ADMIN, Hq, SECRET, embedded},
    net::free_port,
    wait::eventually,
};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(60);

async fn agent(dir: &Path, hq: &Hq, till: u16, fitting: u16) -> instore_agent::runtime::Agent {
    let token = instore_protocol::token::gateway_token(SECRET.as_bytes(), "s1", "gw-1").unwrap();
    std::fs::write(
        dir.join("rules.toml"),
        "[[rules]]\nname = \"greet-at-till\"\non = \"qr_scan\"\npriority = \"normal\"\n\
         message = \"{display_name} at the {zone}\"\ncooldown_s = 0\n",
    )
    .unwrap();
    let text = format!(
        r#"store_id = "s1"
gateway_id = "gw-1"
data_dir = "data"
[http]
listen = "127.0.0.1:0"
[[sources]]
kind = "qr"
zone = "till"
listen = "127.0.0.1:{till}"
[[sources]]
kind = "qr"
zone = "fitting"
listen = "127.0.0.1:{fitting}"
[sync]
enabled = true
broker = "{}"
hq_url = "http://{}"
token = "{token}"
changes_poll_s = 1
[react]
rules = "rules.toml"
[member_codes]
legacy = false
"#,
        hq.mqtt_url(),
        hq.http
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    let cfg = instore_agent::config::AgentConfig::load(&dir.join("agent.toml")).unwrap();
    instore_agent::runtime::start(cfg).await.unwrap()
}

async fn register(hq: &Hq, member: &str, device: &DeviceSigner) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(hq.url(&format!("/api/members/{member}/devices")))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({
            "alg": device.alg().as_str(),
            "public_key": hex::encode(device.public_key()),
        }))
        .send()
        .await
        .unwrap()
        .status()
}

async fn scan(port: u16, code: &str) {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(format!("{code}\r\n").as_bytes())
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_device_identifies_its_member_once_per_code_at_a_gateway_that_holds_only_its_public_key()
 {
    let hq = Hq::start(embedded()).await;
    hq.post_json(
        "/api/members",
        r#"{"member_id":"M1","display_name":"Ms. Li","tier":"gold","consent":{"presence":true}}"#,
    )
    .await;
    let phone = DeviceSigner::generate(Algorithm::Es256).unwrap();
    let tablet = DeviceSigner::generate(Algorithm::Ed25519).unwrap();
    assert_eq!(register(&hq, "M1", &phone).await, 201);
    assert_eq!(register(&hq, "M1", &tablet).await, 201);

    let (till, fitting) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &hq, till, fitting).await;
    let m = agent.metrics.clone();
    let codes = |kind: &'static str, result: &'static str| {
        m.member_codes
            .get_or_create(&vec![("kind", kind), ("result", result)])
            .get()
    };
    let refused = |reason: &str| {
        m.qr_rejected
            .get_or_create(&vec![("error", reason.to_string())])
            .get()
    };
    eventually("the member at the gateway", WAIT, || async {
        m.members_cached.get() == 1
    })
    .await;

    let now = instore_agent::now_ms();
    let code = phone.code_at(now).unwrap();
    scan(till, &code).await;
    eventually("the phone's code identifying Ms. Li", WAIT, || async {
        codes("signed", "identified") == 1 && m.alerts_raised.get() == 1
    })
    .await;
    // The scanner reads it twice: nothing happens twice.
    scan(till, &code).await;
    eventually("the duplicate counted", WAIT, || async {
        codes("signed", "duplicate") == 1
    })
    .await;
    // The same code at another scanner: a replay.
    scan(fitting, &code).await;
    eventually("the replay refused", WAIT, || async {
        refused("replayed") == 1
    })
    .await;
    // The member's other device, Ed25519: identified too.
    scan(fitting, &tablet.code_at(now).unwrap()).await;
    eventually("the Ed25519 device's code", WAIT, || async {
        codes("signed", "identified") == 2
    })
    .await;

    // Tampered, from a device nobody registered, a photo of an old code, an HMAC code.
    let mut tampered =
        instore_protocol::member_code::parse(&phone.code_at(now + 30_000).unwrap()).unwrap();
    tampered.signature[5] ^= 1;
    scan(
        till,
        &instore_protocol::member_code::encode(
            &tampered.key_id,
            tampered.step,
            &tampered.signature,
        ),
    )
    .await;
    let stranger = DeviceSigner::generate(Algorithm::Es256).unwrap();
    scan(till, &stranger.code_at(now).unwrap()).await;
    scan(till, &phone.code_at(now - 5 * 60_000).unwrap()).await;
    scan(till, &phone.code_at(now + 5 * 60_000).unwrap()).await;
    let legacy = instore_protocol::qr::sign("M1", &[7; 32], now);
    scan(till, &legacy).await;
    eventually("each refusal with its reason", WAIT, || async {
        refused("bad_signature") == 1
            && refused("unknown_key") == 1
            && refused("expired") == 1
            && refused("future") == 1
            && refused("legacy_code") == 1
    })
    .await;
    assert_eq!(codes("legacy", "refused"), 1);

    // Revoked at head office: the gateway drops the key with the next change, and the phone's
    // fresh codes identify nobody.
    let applied = m.member_changes_applied.get();
    let key_id = hex::encode(phone.key_id());
    let r = reqwest::Client::new()
        .delete(hq.url(&format!("/api/members/M1/devices/{key_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("the revocation applied at the gateway", WAIT, || async {
        m.member_changes_applied.get() > applied
    })
    .await;
    scan(till, &phone.code_at(instore_agent::now_ms()).unwrap()).await;
    eventually("the revoked key refused", WAIT, || async {
        refused("unknown_key") == 2
    })
    .await;
    assert_eq!(codes("signed", "identified"), 2, "nobody identified since");
    assert_eq!(m.alerts_raised.get(), 2);
    agent.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}
