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

/// The value of the sample named exactly `series` (a name, or a name with its labels:
/// `instore_sync_bad_payloads_total{reason="malformed"}`) in Prometheus text `text`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The value of the first metric line starting with `prefix` (a name, or a name with labels:
/// `instore_sync_bad_payloads_total{reason="json"}`); panics when there is none.
pub fn metric_line(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
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

/// GETs a Prometheus text page; empty when the server cannot be reached (a process between a
/// kill and its restart).
pub async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}
