//! `[hub]`: which of a store's gateways identifies, and how the others reach it.
//!
//! Absent, a gateway is its store's only hub, as before stores had several gateways.

use serde::Deserialize;

/// What a gateway does for its store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HubRole {
    /// Identifies, runs presence and rules, serves the tablets, owns the store's outbox.
    #[default]
    Hub,
    /// Only hears: forwards its sightings to the store's hub (and standby).
    Receiver,
    /// Forwards like a receiver while the hub answers; acts as the hub while it does not.
    Standby,
}

impl HubRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HubRole::Hub => "hub",
            HubRole::Receiver => "receiver",
            HubRole::Standby => "standby",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    #[serde(default)]
    pub role: HubRole,
    /// The secret the store's gateways share (at least 16 characters): everything they send
    /// each other is sealed under a key derived from it and the store id. A hub without it
    /// takes no forwarded sightings.
    #[serde(default)]
    pub key: String,
    /// Base URLs (`http://10.0.0.2:8080`) of the store's hub and standby, as this gateway
    /// reaches them. A receiver forwards to every one (only the acting hub keeps what it gets);
    /// a standby forwards to and watches the first, the hub; a hub asks each, when it starts,
    /// to hand back, and names them to its tablets.
    #[serde(default)]
    pub peers: Vec<String>,
    /// A standby takes over once the hub has not answered for this long.
    #[serde(default = "default_takeover_after_s")]
    pub takeover_after_s: u64,
    /// How often forwarded sightings leave, in one sealed batch per peer.
    #[serde(default = "default_forward_every_ms")]
    pub forward_every_ms: u64,
    /// Devices waiting per peer at most; a device heard again replaces its waiting advert,
    /// a new device past this is dropped (both counted).
    #[serde(default = "default_forward_max_devices")]
    pub forward_max_devices: usize,
    /// The hub reports a forwarding gateway silent (a `Scanner` event, `relay:<gateway>`)
    /// after this long without a batch; forwarders send one at least every second.
    #[serde(default = "default_peer_silent_s")]
    pub peer_silent_s: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            role: HubRole::Hub,
            key: String::new(),
            peers: Vec::new(),
            takeover_after_s: default_takeover_after_s(),
            forward_every_ms: default_forward_every_ms(),
            forward_max_devices: default_forward_max_devices(),
            peer_silent_s: default_peer_silent_s(),
        }
    }
}

fn default_takeover_after_s() -> u64 {
    15
}
fn default_forward_every_ms() -> u64 {
    100
}
fn default_forward_max_devices() -> usize {
    4096
}
fn default_peer_silent_s() -> u64 {
    10
}

/// Shortest shared key accepted.
pub const MIN_KEY_CHARS: usize = 16;

impl HubConfig {
    /// The first key that is wrong, and why.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let needs_key = self.role != HubRole::Hub || !self.peers.is_empty();
        if (needs_key || !self.key.is_empty()) && self.key.chars().count() < MIN_KEY_CHARS {
            return Err((
                "key",
                format!(
                    "the store's shared secret must be at least {MIN_KEY_CHARS} characters \
                     (a receiver, a standby and a hub with peers need one)"
                ),
            ));
        }
        if self.role != HubRole::Hub && self.peers.is_empty() {
            return Err((
                "peers",
                format!(
                    "a {} needs peers = [\"http://<hub>:8080\", …], where the hub is",
                    self.role.as_str()
                ),
            ));
        }
        if self.peers.len() > 8 {
            return Err(("peers", "at most 8".into()));
        }
        for p in &self.peers {
            let ok = reqwest::Url::parse(p).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(("peers", format!("{p:?} is not an http:// or https:// URL")));
            }
        }
        if !(2..=3600).contains(&self.takeover_after_s) {
            return Err(("takeover_after_s", "must be between 2 and 3600".into()));
        }
        if !(10..=5000).contains(&self.forward_every_ms) {
            return Err(("forward_every_ms", "must be between 10 and 5000".into()));
        }
        if !(16..=1_000_000).contains(&self.forward_max_devices) {
            return Err((
                "forward_max_devices",
                "must be between 16 and 1000000".into(),
            ));
        }
        if !(2..=3600).contains(&self.peer_silent_s) {
            return Err(("peer_silent_s", "must be between 2 and 3600".into()));
        }
        Ok(())
    }
}
