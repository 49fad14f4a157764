//! HTTP to a running agent: what every crate's tests use (`instore_testkit::http`), and the
//! pairing requests a clerk tablet makes.

use serde_json::Value;

pub use instore_testkit::http::{get, get_json, metric, metric_value};

/// Asks the agent's admin API for a one-time pairing code (as `pair-tablet` does); returns the
/// pairing URL it printed.
pub async fn issue_pairing(base: &str, admin_token: &str, label: &str) -> String {
    let issued: Value = reqwest::Client::new()
        .post(format!("{base}/api/admin/pairings"))
        .bearer_auth(admin_token)
        .json(&serde_json::json!({"label": label, "ttl_s": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    issued["url"].as_str().unwrap().to_owned()
}

/// The code in a pairing URL.
pub fn pairing_code(url: &str) -> String {
    url.rsplit_once("code=").unwrap().1.to_owned()
}

/// Redeems a pairing code, as the pairing page does; the raw response, for the test to check.
pub async fn redeem_pairing(base: &str, code: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/pair"))
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await
        .unwrap()
}
