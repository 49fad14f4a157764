//! The command line's side of pairing: `pair-tablet`, `tablets list` and `tablets revoke` ask the
//! running agent over its admin API on loopback, so a new pairing or a revocation takes effect in
//! the daemon at once (it holds the tokens in memory).

use std::{net::SocketAddr, time::Duration};

use super::{IssuedCode, TabletInfo};
use crate::config::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("[http] admin_token is empty: the admin API (and so pairing) is disabled")]
    NoAdminToken,
    #[error("cannot reach the agent at {url} (is it running?): {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the agent answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("unexpected answer from the agent: {0}")]
    Decode(#[source] reqwest::Error),
}

/// Talks to one running agent's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// For the agent configured by `cfg`: its listen port on loopback when it listens on every
    /// interface, else its listen address.
    pub fn for_config(cfg: &AgentConfig) -> Result<Self, ClientError> {
        if cfg.http.admin_token.is_empty() {
            return Err(ClientError::NoAdminToken);
        }
        let mut addr: SocketAddr = cfg.http.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Self::new(&format!("http://{addr}"), &cfg.http.admin_token))
    }

    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(ClientError::Refused { status, body })
    }

    /// A one-time pairing code for a tablet to be called `label`.
    pub async fn pair(&self, label: &str, ttl: Duration) -> Result<IssuedCode, ClientError> {
        let body = serde_json::json!({"label": label, "ttl_s": ttl.as_secs()});
        self.send(
            self.http
                .post(format!("{}/api/admin/pairings", self.base))
                .json(&body),
        )
        .await?
        .json()
        .await
        .map_err(ClientError::Decode)
    }

    pub async fn list(&self) -> Result<Vec<TabletInfo>, ClientError> {
        self.send(self.http.get(format!("{}/api/admin/tablets", self.base)))
            .await?
            .json()
            .await
            .map_err(ClientError::Decode)
    }

    /// Returns false if the agent knew no such tablet.
    pub async fn revoke(&self, id: &str) -> Result<bool, ClientError> {
        let url = format!("{}/api/admin/tablets/{id}", self.base);
        match self.send(self.http.delete(url)).await {
            Ok(_) => Ok(true),
            Err(ClientError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
