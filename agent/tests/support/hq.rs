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
