//! The agent config a new gateway starts with, as serde structs serialised by the `toml` crate.
//!
//! Key names follow `agent/src/config.rs` (`AgentConfig`, which denies unknown keys); only the keys
//! enrolment decides are written, everything else keeps the agent's defaults.

use anyhow::{Context, Result, bail};
use instore_protocol::topics::valid_id;
use serde::Serialize;

/// Where a packaged agent keeps its state: systemd's `StateDirectory=instore`.
const DATA_DIR: &str = "/var/lib/instore";
/// The clerk page and API listen on the store LAN.
const HTTP_LISTEN: &str = "0.0.0.0:8080";
/// The packaged rules file beside the config.
const RULES_PATH: &str = "/etc/instore/rules.toml";

/// What the technician said about the gateway being enrolled.
#[derive(Debug)]
pub struct GatewayEnrolment {
    pub store_id: String,
    pub gateway_id: String,
    pub broker: String,
    pub hq_url: String,
    pub zone: String,
    pub adapter: String,
}

// Field order is file order: the toml serialiser needs plain keys before tables.
#[derive(Debug, Serialize)]
pub struct AgentToml {
    store_id: String,
    gateway_id: String,
    data_dir: String,
    http: Http,
    sources: Vec<Source>,
    sync: Sync,
    react: React,
    member_codes: MemberCodes,
}

#[derive(Debug, Serialize)]
struct MemberCodes {
    /// A new gateway accepts signed member codes only: HMAC codes can be forged by anyone who
    /// holds a gateway's disk.
    legacy: bool,
}

#[derive(Debug, Serialize)]
struct Http {
    listen: String,
    admin_token: String,
}

#[derive(Debug, Serialize)]
struct Source {
    kind: &'static str,
    adapter: String,
    zone: String,
}

#[derive(Debug, Serialize)]
struct Sync {
    enabled: bool,
    broker: String,
    hq_url: String,
    token: String,
}

#[derive(Debug, Serialize)]
struct React {
    rules: String,
}

impl GatewayEnrolment {
    /// Validates the enrolment and builds the config with the gateway's `token` (minted from
    /// head office's secret, or handed out by head office for an enrolment code).
    pub fn agent_config(&self, token: String, admin_token: String) -> Result<AgentToml> {
        self.check()?;
        Ok(AgentToml {
            store_id: self.store_id.clone(),
            gateway_id: self.gateway_id.clone(),
            data_dir: DATA_DIR.into(),
            http: Http {
                listen: HTTP_LISTEN.into(),
                admin_token,
            },
            sources: vec![Source {
                kind: "ble",
                adapter: self.adapter.clone(),
                zone: self.zone.clone(),
            }],
            sync: Sync {
                enabled: true,
                broker: self.broker.clone(),
                hq_url: self.hq_url.clone(),
                token,
            },
            react: React {
                rules: RULES_PATH.into(),
            },
            member_codes: MemberCodes { legacy: false },
        })
    }

    /// The ids, URLs, zone and adapter are usable.
    pub fn check(&self) -> Result<()> {
        for (what, id) in [("store", &self.store_id), ("gateway", &self.gateway_id)] {
            if !valid_id(id) {
                bail!(
                    "invalid {what} id {id:?}: it must be 1-64 characters of A-Z a-z 0-9 _ - \
                     (ids become parts of MQTT topics and tokens)"
                );
            }
        }
        if !(self.broker.starts_with("mqtt://") || self.broker.starts_with("mqtts://")) {
            bail!(
                "invalid broker {:?}: expected mqtt://host:port or mqtts://host:port",
                self.broker
            );
        }
        if !(self.hq_url.starts_with("http://") || self.hq_url.starts_with("https://")) {
            bail!(
                "invalid head-office URL {:?}: expected http://... or https://...",
                self.hq_url
            );
        }
        if self.zone.trim().is_empty() {
            bail!("the zone must not be empty");
        }
        if self.adapter.trim().is_empty() {
            bail!("the BLE adapter must not be empty (e.g. hci0)");
        }
        Ok(())
    }
}

impl AgentToml {
    /// The file's text: a comment saying what it is, then the serialised config.
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(self).context("serialising the agent config")?;
        Ok(format!(
            "# instore-agent config for gateway {} of store {}, written by instore-provision.\n\
             # It holds this gateway's token and the admin token: keep it mode 0600.\n\
             # Every other key keeps the agent's default (see agent/examples/agent.toml).\n\n{body}",
            self.gateway_id, self.store_id
        ))
    }
}
