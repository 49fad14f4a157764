#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Central campaigns end to end: the real head office (in-process) refuses a bad campaign with
//! its rule and line and stores a good one; the real agent (in-process, no rules file of its own
//! for the campaign's trigger, polling hourly) is told by its members notice and gets it with the
//! change response it then asks for, keeps it on disk, and a
//! member's scan raises the campaign's alert naming `id@version`, at the gateway and in the
//! `alert_raised` event at head office. A new version replaces it; a local rule of the same name
//! overrides it; a withdrawal removes it; a restart offline still runs what was received. (And
//! the uplink's batches carry the outbox depth the dashboard shows.)

mod support;

use std::{path::Path, time::Duration};

use instore_protocol::member_code::{Algorithm, DeviceSigner};
use support::{
    hq::{ADMIN, Hq, agent_polling, embedded},
    net::free_port,
    scanner::{register, scan},
    wait::eventually,
};

const WAIT: Duration = Duration::from_secs(60);

const CAMPAIGN: &str = "[[rules]]\nname = \"autumn-greet\"\non = \"qr_scan\"\npriority = \"high\"\n\
    message = \"Autumn: greet {display_name}\"\nsuggest = \"Offer the autumn preview\"\ncooldown_s = 0\n";

async fn put(hq: &Hq, id: &str, scope: &str, body: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .put(hq.url(&format!("/api/campaigns/{id}?scope={scope}")))
        .bearer_auth(ADMIN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn agent(dir: &Path, hq: &Hq, till: u16, local_rules: &str) -> instore_agent::runtime::Agent {
    std::fs::write(dir.join("rules.toml"), local_rules).unwrap();
    let tables = format!(
        "[[sources]]\nkind = \"qr\"\nzone = \"till\"\nlisten = \"127.0.0.1:{till}\"\n\
         [react]\nrules = \"rules.toml\"\n[member_codes]\nlegacy = false\n"
    );
    // Member changes asked for once an hour: the campaigns arrive because the members notice
    // says they moved, not because the gateway happened to poll.
    agent_polling(dir, hq, &tables, 3600).await
}

/// The newest alert's (message, campaign) at the gateway.
fn newest(a: &instore_agent::runtime::Agent) -> Option<(String, Option<String>)> {
    a.alerts
        .recent(1)
        .first()
        .map(|u| (u.alert.message.clone(), u.alert.campaign.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_authored_at_head_office_raises_its_alert_on_a_running_gateway() {
    let hq = Hq::start(embedded()).await;
    hq.post_json(
        "/api/members",
        r#"{"member_id":"M1","display_name":"Ms. Li","tier":"gold","consent":{"presence":true}}"#,
    )
    .await;
    let phone = DeviceSigner::generate(Algorithm::Es256).unwrap();
    assert_eq!(register(&hq, "M1", &phone).await, 201);
    // A second device for the last scan, so no code is ever seen twice whatever the clock did.
    let tablet = DeviceSigner::generate(Algorithm::Ed25519).unwrap();
    assert_eq!(register(&hq, "M1", &tablet).await, 201);

    // A bad campaign is refused with its rule and line, and nothing is stored.
    let bad = CAMPAIGN.replace("{display_name}", "{nickname}");
    let (status, body) = put(&hq, "autumn", "chain", &bad).await;
    assert_eq!(status, 400);
    let err = body["error"].as_str().unwrap();
    assert!(
        err.contains("autumn-greet") && err.contains("line 2") && err.contains("nickname"),
        "{err}"
    );
    let (status, _) = put(&hq, "autumn", "everywhere", CAMPAIGN).await;
    assert_eq!(status, 400);
    assert_eq!(hq.get_json("/api/campaigns").await, serde_json::json!([]));

    // The store's own file has nothing for a scan: only the campaign can alert.
    let local = "[[rules]]\nname = \"hello\"\non = \"arrive\"\nmessage = \"hi\"\n";
    let till = free_port();
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), &hq, till, local).await;
    let m = a.metrics.clone();
    eventually("the member at the gateway", WAIT, || async {
        m.members_cached.get() == 1
    })
    .await;
    assert_eq!(m.rules_loaded.get(), 1);

    let (status, body) = put(&hq, "autumn", "chain", CAMPAIGN).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["rules"], serde_json::json!(["autumn-greet"]));
    eventually("the campaign at the gateway", WAIT, || async {
        m.rules_loaded.get() == 2
    })
    .await;
    assert!(dir.path().join("data/campaigns.json").exists());
    let now = instore_agent::now_ms();
    scan(till, &phone.code_at(now).unwrap()).await;
    eventually("the campaign's alert", WAIT, || async {
        m.alerts_raised.get() == 1
    })
    .await;
    assert_eq!(
        newest(&a),
        Some((
            "Autumn: greet Ms. Li".to_string(),
            Some("autumn@1".to_string())
        ))
    );
    eventually(
        "the alert_raised event at head office names the campaign",
        WAIT,
        || async {
            let events = hq.get_json("/api/events?gateway=gw-1").await;
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "alert_raised" && e["body"]["campaign"] == "autumn@1")
        },
    )
    .await;

    // The uplink's batches carry the outbox depth, which the dashboard shows per store.
    eventually(
        "the gateway's outbox depth at head office",
        WAIT,
        || async {
            let stores = hq.get_json("/api/dashboard/stores").await;
            stores["stores"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["store_id"] == "s1" && s["outbox_depth"].is_u64())
        },
    )
    .await;

    // Version 2 replaces version 1 at the gateway.
    let v2 = CAMPAIGN.replace("Autumn: greet", "Autumn v2: greet");
    let (status, body) = put(&hq, "autumn", "chain", &v2).await;
    assert_eq!((status, &body["version"]), (201, &serde_json::json!(2)));
    let sets = m.campaign_sets_received.get();
    eventually("version 2 at the gateway", WAIT, || async {
        m.campaign_sets_received.get() > sets
    })
    .await;
    scan(till, &phone.code_at(now + 30_000).unwrap()).await;
    eventually("version 2's alert", WAIT, || async {
        m.alerts_raised.get() == 2
    })
    .await;
    assert_eq!(
        newest(&a),
        Some((
            "Autumn v2: greet Ms. Li".to_string(),
            Some("autumn@2".to_string())
        ))
    );

    // A restart with head office unreachable still runs the campaign it last received.
    assert!(a.shutdown(Duration::from_secs(10)).await);
    let text = std::fs::read_to_string(dir.path().join("agent.toml"))
        .unwrap()
        .replace(&format!("http://{}", hq.http), "http://127.0.0.1:9");
    std::fs::write(dir.path().join("agent.toml"), text).unwrap();
    let cfg = instore_agent::config::AgentConfig::load(&dir.path().join("agent.toml")).unwrap();
    let offline = instore_agent::runtime::start(cfg).await.unwrap();
    let om = offline.metrics.clone();
    eventually("the file's rule and the kept campaign's", WAIT, || async {
        om.rules_loaded.get() == 2
    })
    .await;
    assert!(offline.shutdown(Duration::from_secs(10)).await);

    // A local rule of the same name wins over the campaign's.
    let overriding = format!(
        "{local}\n[[rules]]\nname = \"autumn-greet\"\non = \"qr_scan\"\nmessage = \"Store's own greeting\"\ncooldown_s = 0\n"
    );
    let a = agent(dir.path(), &hq, till, &overriding).await;
    let m = a.metrics.clone();
    eventually("the rules built", WAIT, || async {
        m.rules_loaded.get() == 2 && m.members_cached.get() == 1
    })
    .await;
    scan(till, &tablet.code_at(instore_agent::now_ms()).unwrap()).await;
    eventually("the store's alert", WAIT, || async {
        m.alerts_raised.get() == 1
    })
    .await;
    assert_eq!(newest(&a), Some(("Store's own greeting".to_string(), None)));

    // Withdrawn at head office: gone from the gateway with the next change response.
    let r = reqwest::Client::new()
        .delete(hq.url("/api/campaigns/autumn"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed = hq.get_json("/api/campaigns").await;
    assert_eq!(listed[0]["retired"], true);
    assert_eq!(listed[0]["version"], 3);
    std::fs::write(dir.path().join("rules.toml"), local).unwrap();
    eventually("only the store's rule left", WAIT, || async {
        m.rules_loaded.get() == 1 && m.campaign_sets_received.get() >= 1
    })
    .await;
    assert!(a.shutdown(Duration::from_secs(10)).await);
    hq.stop().await;
}
