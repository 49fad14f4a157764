//! Talking to head office's registry: issuing an enrolment code (admin), redeeming one (the
//! gateway being set up), listing, revoking and rotating gateways (admin).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Refuses a plaintext URL to another machine: tokens and member data would cross the network
/// readable by anyone on the path. `insecure` allows it (a lab, a VPN the operator trusts).
pub fn check_transport(what: &str, url: &str, insecure: bool) -> Result<()> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("{what} {url:?} is not a URL"))?;
    let plaintext = matches!(parsed.scheme(), "http" | "mqtt");
    if !plaintext || insecure {
        return Ok(());
    }
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "{what} {url:?} is plaintext to another machine: use {} (or pass --insecure)",
            if parsed.scheme() == "http" {
                "https://"
            } else {
                "mqtts://"
            }
        );
    }
    Ok(())
}

/// A blocking call on a runtime of its own: the tool runs one request at a time.
fn request(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let mut req = client.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach head office at {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("head office answered {status}: {why}");
        }
        serde_json::from_str(&text).context("head office's answer is not JSON")
    })
}

fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

pub fn issue_code(hq: &str, admin: &str, store: &str, gateway: &str, ttl_s: u64) -> Result<Value> {
    request(
        reqwest::Method::POST,
        &url(hq, "/api/gateways/enrolments"),
        Some(admin),
        Some(serde_json::json!({"store_id": store, "gateway_id": gateway, "ttl_s": ttl_s})),
    )
}

pub fn redeem(hq: &str, code: &str) -> Result<Value> {
    request(
        reqwest::Method::POST,
        &url(hq, "/api/enrol"),
        None,
        Some(serde_json::json!({ "code": code })),
    )
}

pub fn list(hq: &str, admin: &str) -> Result<Value> {
    request(
        reqwest::Method::GET,
        &url(hq, "/api/gateways/registry"),
        Some(admin),
        None,
    )
}

pub fn revoke(hq: &str, admin: &str, gateway: &str) -> Result<Value> {
    request(
        reqwest::Method::POST,
        &url(hq, &format!("/api/gateways/{gateway}/revoke")),
        Some(admin),
        Some(serde_json::json!({})),
    )
}

pub fn rotate(hq: &str, admin: &str, gateway: &str) -> Result<Value> {
    request(
        reqwest::Method::POST,
        &url(hq, &format!("/api/gateways/{gateway}/rotate")),
        Some(admin),
        Some(serde_json::json!({})),
    )
}

pub fn register_device(
    hq: &str,
    admin: &str,
    member: &str,
    alg: instore_protocol::member_code::Algorithm,
    public_key: &[u8],
) -> Result<Value> {
    request(
        reqwest::Method::POST,
        &url(hq, &format!("/api/members/{member}/devices")),
        Some(admin),
        Some(serde_json::json!({"alg": alg.as_str(), "public_key": hex::encode(public_key)})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_this_machine_unless_insecure() {
        for ok in [
            "https://hq.example",
            "mqtts://hq.example:8883",
            "http://127.0.0.1:8090",
            "mqtt://localhost:1883",
            "http://[::1]:8090",
        ] {
            assert!(check_transport("url", ok, false).is_ok(), "{ok}");
        }
        for bad in ["http://hq.example", "mqtt://10.0.0.5:1883"] {
            let err = check_transport("url", bad, false).unwrap_err().to_string();
            assert!(err.contains("--insecure"), "{err}");
            assert!(check_transport("url", bad, true).is_ok());
        }
        assert!(check_transport("url", "not a url", true).is_err());
    }
}
