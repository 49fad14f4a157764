//! HTTP to a running agent or head office: bearer-token requests and `/metrics` values.

use serde_json::Value;

/// A GET with an optional bearer token; None when the server could not be reached.
pub async fn get(url: &str, token: Option<&str>) -> Option<reqwest::Response> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.ok()
}

/// A GET with a bearer token whose JSON body the test needs (any failure fails the test).
pub async fn get_json(url: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An unlabelled metric's value in Prometheus text `text`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An unlabelled metric's value from `{base}/metrics`; None when unreachable or absent.
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_value(&text, name)
}

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
