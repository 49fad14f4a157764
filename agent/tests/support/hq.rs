//! The real head office in-process for the uplink tests (`instore_testkit::hq`), and what the
//! agent's tests read from it.

use std::time::Duration;

pub use instore_testkit::hq::{ADMIN, Hq, SECRET, embedded};

pub const GATEWAY: &str = "gw-1";
pub const WAIT: Duration = Duration::from_secs(20);

/// Every stored event of `gateway` as (seq, the test's event number).
pub async fn events_of(hq: &Hq, gateway: &str) -> Vec<(u64, u64)> {
    let v = hq
        .get_json(&format!(
            "/api/events?gateway={gateway}&after_seq=0&limit=1000"
        ))
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["body"]["unique_devices"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The agent in-process as gateway `gw-1` of store `s1`, synced to `hq` (member changes every
/// second, its token for head office's broker), with `tables` (sources, rules, …) in its config.
pub async fn agent_synced_to(
    dir: &std::path::Path,
    hq: &Hq,
    tables: &str,
) -> instore_agent::runtime::Agent {
    agent_polling(dir, hq, tables, 1).await
}

/// [`agent_synced_to`], asking for member changes only every `poll_s` unless a notice says
/// there is something (a test of the notices sets it long).
pub async fn agent_polling(
    dir: &std::path::Path,
    hq: &Hq,
    tables: &str,
    poll_s: u64,
) -> instore_agent::runtime::Agent {
    gateway_of_s1(dir, hq, GATEWAY, tables, poll_s).await
}

/// Gateway `gateway` of store `s1` in-process, synced to `hq`: [`agent_polling`] for a store
/// with several gateways.
pub async fn gateway_of_s1(
    dir: &std::path::Path,
    hq: &Hq,
    gateway: &str,
    tables: &str,
    poll_s: u64,
) -> instore_agent::runtime::Agent {
    gateway_listening(dir, hq, gateway, "127.0.0.1:0", tables, poll_s).await
}

/// [`gateway_of_s1`] with its HTTP server on `listen` (a port its peers were told).
pub async fn gateway_listening(
    dir: &std::path::Path,
    hq: &Hq,
    gateway: &str,
    listen: &str,
    tables: &str,
    poll_s: u64,
) -> instore_agent::runtime::Agent {
    let token = instore_protocol::token::gateway_token(SECRET.as_bytes(), "s1", gateway).unwrap();
    let text = format!(
        "store_id = \"s1\"\ngateway_id = \"{gateway}\"\ndata_dir = \"data\"\n[http]\n\
         listen = \"{listen}\"\n{tables}\n[sync]\nenabled = true\nbroker = \"{}\"\n\
         hq_url = \"http://{}\"\ntoken = \"{token}\"\nchanges_poll_s = {poll_s}\n\
         batch_max_age_ms = 50\n",
        hq.mqtt_url(),
        hq.http
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    let cfg = instore_agent::config::AgentConfig::load(&dir.join("agent.toml")).unwrap();
    instore_agent::runtime::start(cfg).await.unwrap()
}
