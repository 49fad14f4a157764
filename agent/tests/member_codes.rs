#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signed member codes end to end: the real head office (in-process) registers a device key,
//! the real agent (in-process) gets it through its store's change stream, and codes the device
//! signs, sent to the agent's QR scanners over TCP, identify the member once and raise the
//! `qr_scan` alert; a second read on the same scanner is a duplicate, the same code elsewhere a
//! replay, and tampered, unregistered, revoked and legacy codes are refused with their reasons.
//! And the member's side in Debian's chromium: the "my card" page head office serves enrols
//! with a single-use link, makes its key in the browser, shows a code that decodes (as a QR
//! code) to one the gateway accepts even from a phone whose clock is ten minutes slow, and keeps
//! working with head office gone.

mod support;

use std::{path::Path, time::Duration};

use instore_protocol::member_code::{Algorithm, DeviceSigner};
use support::{
    browser::{browser, js, shot, wait_js},
    hq::{ADMIN, Hq, SECRET, agent_synced_to, embedded},
    net::free_port,
    scanner::{register, scan},
    wait::{eventually, eventually_some},
};

const WAIT: Duration = Duration::from_secs(60);

async fn agent(dir: &Path, hq: &Hq, till: u16, fitting: u16) -> instore_agent::runtime::Agent {
    std::fs::write(
        dir.join("rules.toml"),
        "[[rules]]\nname = \"greet-at-till\"\non = \"qr_scan\"\npriority = \"normal\"\n\
         message = \"{display_name} at the {zone}\"\ncooldown_s = 0\n",
    )
    .unwrap();
    let tables = format!(
        r#"[[sources]]
kind = "qr"
zone = "till"
listen = "127.0.0.1:{till}"
[[sources]]
kind = "qr"
zone = "fitting"
listen = "127.0.0.1:{fitting}"
[react]
rules = "rules.toml"
[member_codes]
legacy = false
"#
    );
    agent_synced_to(dir, hq, &tables).await
}

/// Member codes counted by kind and result.
fn codes(m: &instore_agent::metrics::Metrics, kind: &'static str, result: &'static str) -> u64 {
    m.member_codes
        .get_or_create(&vec![("kind", kind), ("result", result)])
        .get()
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
    let codes = |kind, result| codes(&m, kind, result);
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
    // Head office hears of the use by key id and step, never the code itself.
    let code_id = format!(
        "{}:{}",
        hex::encode(phone.key_id()),
        instore_protocol::member_code::step_of_ms(now)
    );
    eventually("the qr_scanned event at head office", WAIT, || async {
        let events = hq.get_json("/api/events?gateway=gw-1").await;
        let text = events.to_string();
        text.contains(&code_id) && !text.contains("ISQ2")
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
        refused("revoked_key") == 1
    })
    .await;
    assert_eq!(codes("signed", "identified"), 2, "nobody identified since");
    assert_eq!(m.alerts_raised.get(), 2);
    agent.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}

/// The page's QR modules (`data-modules`, row by row) as rqrr reads a grid.
struct Modules {
    size: usize,
    bits: Vec<bool>,
}

impl rqrr::BitGrid for Modules {
    fn size(&self) -> usize {
        self.size
    }
    fn bit(&self, y: usize, x: usize) -> bool {
        self.bits[y * self.size + x]
    }
}

/// The page's current code, checked to be what its QR code says.
async fn page_code(client: &fantoccini::Client) -> String {
    let v = wait_js(
        client,
        "a code on the card",
        "const q = document.getElementById('qr'); \
         return q.dataset.code ? [q.dataset.code, q.dataset.size, q.dataset.modules] : null;",
    )
    .await;
    let code = v[0].as_str().unwrap().to_string();
    let size: usize = v[1].as_str().unwrap().parse().unwrap();
    let bits: Vec<bool> = v[2].as_str().unwrap().bytes().map(|b| b == b'1').collect();
    assert_eq!(bits.len(), size * size);
    let (meta, text) = rqrr::Grid::new(Modules { size, bits }).decode().unwrap();
    assert_eq!(text, code, "the QR code says what the page says");
    assert!(meta.version.0 <= 5, "QR version {} > 5", meta.version.0);
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_my_card_page_enrols_once_shows_a_code_the_gateway_accepts_and_works_offline() {
    let hq = Hq::start(embedded()).await;
    hq.post_json(
        "/api/members",
        r#"{"member_id":"M1","display_name":"Ms. Li","tier":"gold","consent":{"presence":true}}"#,
    )
    .await;
    let link = reqwest::Client::new()
        .post(hq.url("/api/members/M1/card-links"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(link.status(), 201);
    let link: serde_json::Value = link.json().await.unwrap();
    let code = link["code"].as_str().unwrap().to_string();
    let (till, fitting) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &hq, till, fitting).await;
    let m = agent.metrics.clone();
    eventually("the member at the gateway", WAIT, || async {
        m.members_cached.get() == 1
    })
    .await;

    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;
    // Without a link the page says where to get one.
    client
        .goto(&format!("http://{}/card/", hq.http))
        .await
        .unwrap();
    wait_js(
        &client,
        "the no-link message",
        "return document.getElementById('status').textContent.includes('Ask at the till');",
    )
    .await;
    // Then the link, on a phone whose clock is ten minutes slow: its codes would all be stale
    // unless the page takes head office's time from the Date header.
    let path = link["path"].as_str().unwrap();
    js(
        &client,
        &format!(
            "const real = Date.now.bind(Date); Date.now = () => real() - 600000; \
             history.replaceState(null, '', '{path}'); main(); return true;"
        ),
    )
    .await;
    let first = page_code(&client).await;
    wait_js(
        &client,
        "the card's name",
        "return document.getElementById('name').textContent === 'Ms. Li';",
    )
    .await;
    let shown = js(&client, "return document.body.innerText;").await;
    assert!(
        !shown.to_string().contains("M1"),
        "no member id on the card: {shown}"
    );
    assert!(
        !js(&client, "return location.href;")
            .await
            .to_string()
            .contains("enrol="),
        "the spent code is out of the address bar"
    );
    let private = js(
        &client,
        "return new Promise(r => indexedDB.open('instore-card').onsuccess = e => \
           e.target.result.transaction('device').objectStore('device').get('me').onsuccess = \
           g => r(g.target.result.keys.privateKey.extractable));",
    )
    .await;
    assert_eq!(
        private,
        serde_json::json!(false),
        "the private key cannot leave the browser"
    );
    shot(&client, "member-card").await;

    // The link was single-use.
    let again = reqwest::Client::new()
        .post(hq.url("/api/card/enrol"))
        .json(&serde_json::json!({"code": code, "alg": "ES256", "public_key": "04".to_string() + &"11".repeat(64)}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);

    // The code from the page, at the till: once the key has reached the gateway, Ms. Li is
    // identified and greeted (until then the gateway refuses it as unknown_key, unspent).
    let signed = m.member_codes.clone();
    eventually("the card's code identifying Ms. Li", WAIT, || {
        let client = client.clone();
        let signed = signed.clone();
        async move {
            let code = page_code(&client).await;
            scan(till, &code).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            signed
                .get_or_create(&vec![("kind", "signed"), ("result", "identified")])
                .get()
                == 1
        }
    })
    .await;
    eventually("the qr_scan alert", WAIT, || async {
        m.alerts_raised.get() == 1
    })
    .await;
    assert!(first.starts_with("ISQ2:"));

    // Head office gone: the page reloads from its service worker and still signs codes.
    wait_js(
        &client,
        "the service worker in control",
        "return !!navigator.serviceWorker.controller;",
    )
    .await;
    hq.stop().await;
    client.refresh().await.unwrap();
    let offline = page_code(&client).await;
    assert!(offline.starts_with("ISQ2:"));
    wait_js(
        &client,
        "the card's name, offline",
        "return document.getElementById('name').textContent === 'Ms. Li';",
    )
    .await;
    shot(&client, "member-card-offline").await;
    client.close().await.unwrap();
    agent.shutdown(Duration::from_secs(5)).await;
}

/// Every 64-hex-digit run in `text`, as 32 bytes (aligned chunks of longer runs too).
fn hex_secrets(text: &[u8], out: &mut std::collections::BTreeSet<[u8; 32]>) {
    for run in text.split(|b| !b.is_ascii_hexdigit()) {
        for chunk in run.chunks_exact(64) {
            if let Ok(bytes) = hex::decode(chunk) {
                out.insert(bytes.try_into().unwrap());
            }
        }
    }
}

/// Every secret-looking value a thief finds in a gateway's files: 32-byte blobs (and aligned
/// 32-byte pieces of longer ones) and 64-hex-digit strings in any SQLite table, and hex strings
/// in every other file, the config included.
fn gateway_secrets(data_dir: &Path, config: &Path) -> std::collections::BTreeSet<[u8; 32]> {
    let mut out = std::collections::BTreeSet::new();
    hex_secrets(&std::fs::read(config).unwrap(), &mut out);
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            hex_secrets(&bytes, &mut out);
            if !bytes.starts_with(b"SQLite format 3\0") {
                continue;
            }
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for table in tables {
                let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
                let columns = stmt.column_count();
                let mut rows = stmt.query([]).unwrap();
                while let Some(row) = rows.next().unwrap() {
                    for i in 0..columns {
                        match row.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Blob(b) => {
                                for chunk in b.chunks_exact(32) {
                                    out.insert(chunk.try_into().unwrap());
                                }
                            }
                            rusqlite::types::ValueRef::Text(t) => hex_secrets(t, &mut out),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_secret_on_a_gateway_makes_a_member_code_it_accepts() {
    let hq = Hq::start(embedded()).await;
    // A member with every kind of key a gateway gets: a rotating secret (day keys at the
    // gateway), an IRK, and a registered device.
    hq.post_json(
        "/api/members",
        format!(
            r#"{{"member_id":"M1","display_name":"Ms. Li","tier":"gold","consent":{{"presence":true}},
            "identifiers":[{{"kind":"rotating_secret","secret":"{}"}},{{"kind":"irk","irk":"{}"}}]}}"#,
            "17".repeat(32),
            "2a".repeat(16)
        )
        .replace('\n', ""),
    )
    .await;
    let phone = DeviceSigner::generate(Algorithm::Es256).unwrap();
    assert_eq!(register(&hq, "M1", &phone).await, 201);
    let (till, fitting) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &hq, till, fitting).await;
    let m = agent.metrics.clone();
    let codes = |kind, result| codes(&m, kind, result);
    eventually("the member at the gateway", WAIT, || async {
        m.members_cached.get() == 1
    })
    .await;
    // The real phone gets in: the gateway holds the key and the day keys now.
    let now = instore_agent::now_ms();
    eventually("the phone's code accepted", WAIT, || {
        let code = phone.code_at(instore_agent::now_ms()).unwrap();
        async move {
            scan(till, &code).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            codes("signed", "identified") == 1
        }
    })
    .await;

    // What the thief must find: the gateway's token and the member's day keys (their own
    // changes, which must follow the member's latest record: the device registration upserted
    // the member again after the keys were first issued).
    let token = instore_protocol::token::gateway_token(SECRET.as_bytes(), "s1", "gw-1").unwrap();
    let mut expected: Vec<[u8; 32]> = vec![hex::decode(token).unwrap().try_into().unwrap()];
    for day in instore_protocol::rotating::shipped_days(now) {
        expected.push(instore_protocol::rotating::day_key(&[0x17; 32], day));
    }
    let secrets = eventually_some("the day keys on the gateway's disk", WAIT, || {
        let found = gateway_secrets(&dir.path().join("data"), &dir.path().join("agent.toml"));
        let all = expected.iter().all(|e| found.contains(e));
        async move { all.then_some(found) }
    })
    .await;
    let step = instore_protocol::member_code::step_of_ms(now) + 1;
    let mut signed = 0u64;
    let mut legacy = 0u64;
    for secret in &secrets {
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            // Not every 32 bytes are a P-256 scalar.
            let Ok(forger) = DeviceSigner::from_secret_bytes(alg, secret) else {
                continue;
            };
            for code in [
                forger.forge(&phone.key_id(), step).unwrap(),
                forger.code_at(now).unwrap(),
            ] {
                scan(till, &code).await;
                signed += 1;
            }
        }
        scan(till, &instore_protocol::qr::sign("M1", secret, now)).await;
        legacy += 1;
    }
    eventually("every forgery refused", WAIT, || async {
        codes("signed", "refused") == signed && codes("legacy", "refused") == legacy
    })
    .await;
    assert_eq!(
        codes("signed", "identified"),
        1,
        "no forgery identified anyone"
    );
    assert_eq!(m.alerts_raised.get(), 1);
    eprintln!(
        "{} secrets from the gateway's files: {signed} signed and {legacy} HMAC forgeries refused",
        secrets.len()
    );
    agent.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}
