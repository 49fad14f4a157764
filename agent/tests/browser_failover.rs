#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A clerk tablet (Debian's chromium, headless) in a store with a hub and a standby, both
//! in-process on two loopback addresses (two hosts, so each pairing keeps its own cookie):
//! paired with both, the tablet opened at the standby moves to the hub, which acts; when the
//! hub goes away, the standby takes over and the page moves there by itself, and an alert the
//! standby raises appears on it.

mod support;

use std::{path::Path, time::Duration};

use fantoccini::Client;
use serde_json::Value;
use support::{
    beacon::{keep_hearing, member_json},
    browser::{browser, shot},
    http::issue_pairing,
    net::free_port,
};

const ADMIN: &str = "failover-browser-admin";
const KEY: &str = "store-one-lan-secret";
const WAIT: Duration = Duration::from_secs(45);

async fn gateway(
    dir: &Path,
    gateway: &str,
    listen: &str,
    hub: &str,
) -> instore_agent::runtime::Agent {
    std::fs::write(
        dir.join("rules.toml"),
        "[[rules]]\nname = \"greet\"\non = \"arrive\"\nmessage = \"Welcome {display_name}\"\n",
    )
    .unwrap();
    let text = format!(
        "store_id = \"s1\"\ngateway_id = \"{gateway}\"\ndata_dir = \"data\"\n\
         [http]\nlisten = \"{listen}\"\nadmin_token = \"{ADMIN}\"\n\
         [react]\nrules = \"rules.toml\"\n[hub]\nkey = \"{KEY}\"\n{hub}"
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    let cfg = instore_agent::config::AgentConfig::load(&dir.join("agent.toml")).unwrap();
    let agent = instore_agent::runtime::start(cfg).await.unwrap();
    let member: instore_protocol::MemberRecord =
        serde_json::from_str(&member_json("M1", "Ms. Li", 2)).unwrap();
    agent.set_members(&[member]).await.unwrap();
    agent
}

/// Runs `script` until it returns true; navigation in between (the page moving) is no error.
async fn until(client: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Value::Bool(true)) = client.execute(script, vec![]).await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let url = client.current_url().await.map(|u| u.to_string());
            shot(
                client,
                &format!("failover-timeout-{}", what.replace(' ', "-")),
            )
            .await;
            panic!("timed out: {what} (at {url:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn on(base: &str) -> String {
    format!(
        "return location.origin === {:?} && !document.getElementById('main').hidden \
         && document.getElementById('unpaired').hidden;",
        base
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_moves_to_the_standby_when_the_hub_goes_and_shows_its_alerts() {
    let (hub_port, standby_port) = (free_port(), free_port());
    let hub_base = format!("http://127.0.0.1:{hub_port}");
    let standby_base = format!("http://127.0.0.2:{standby_port}");
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = gateway(
        hub_dir.path(),
        "gw-1",
        &format!("127.0.0.1:{hub_port}"),
        &format!("peers = [\"{standby_base}\"]\n"),
    )
    .await;
    let standby_dir = tempfile::tempdir().unwrap();
    let standby = gateway(
        standby_dir.path(),
        "gw-2",
        &format!("127.0.0.2:{standby_port}"),
        &format!("role = \"standby\"\npeers = [\"{hub_base}\"]\ntakeover_after_s = 2\n"),
    )
    .await;
    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;

    // Paired with the hub, then with the standby: the standby's page moves to the hub.
    client
        .goto(&issue_pairing(&hub_base, ADMIN, "till").await)
        .await
        .unwrap();
    until(&client, "the hub's clerk page", &on(&hub_base)).await;
    client
        .goto(&issue_pairing(&standby_base, ADMIN, "till").await)
        .await
        .unwrap();
    until(&client, "back at the hub, which acts", &on(&hub_base)).await;
    shot(&client, "failover-1-at-hub").await;

    // The hub goes away; the standby takes over and the page follows.
    hub.shutdown(Duration::from_secs(5)).await;
    until(&client, "moved to the standby", &on(&standby_base)).await;
    assert_eq!(standby.metrics.relay_acting.get(), 1);

    // The standby hears the member: its alert shows on the page.
    let feeding = keep_hearing(&standby, "entrance", 2, -60);
    until(
        &client,
        "the standby's alert on the page",
        "return document.getElementById('alerts').textContent.includes('Welcome Ms. Li');",
    )
    .await;
    shot(&client, "failover-2-at-standby").await;
    feeding.abort();
    client.close().await.unwrap();
    standby.shutdown(Duration::from_secs(5)).await;
}
