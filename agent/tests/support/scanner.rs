//! Member devices and QR scanners for the tests: a device key registered at head office, and a
//! code sent to one of the agent's TCP scanner sources as a scanner would.

use instore_protocol::member_code::DeviceSigner;
use tokio::io::AsyncWriteExt;

use super::hq::{ADMIN, Hq};

/// Registers `device`'s public key for `member` at head office.
pub async fn register(hq: &Hq, member: &str, device: &DeviceSigner) -> reqwest::StatusCode {
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

/// One line to the scanner source listening on `port`.
pub async fn scan(port: u16, code: &str) {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(format!("{code}\r\n").as_bytes())
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
}
