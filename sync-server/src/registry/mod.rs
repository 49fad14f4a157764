//! The gateway registry: which gateway belongs to which store, with which credentials, and
//! which are revoked.
//!
//! In: enrolment codes head office issues (`POST /api/gateways/enrolments`, admin), their
//! redemption by a gateway being set up (`POST /api/enrol`), revocations and rotations (admin);
//! the `gateway_registry` table. Out: the one answer every credential check asks —
//! [`Registry::status`] — for HTTP (a gateway's bearer token) and MQTT (the key its sealed
//! messages must verify under, [`crate::ingest::decode::MessageAuth`]).
//!
//! Credentials are derived, not stored: a gateway's token is an HMAC of head office's secret over
//! its store, id and registry generation ([`instore_protocol::token::gateway_token_at`]). Why
//! not random tokens stored hashed: head office must hold each gateway's MQTT key to check and
//! seal messages, so a stored hash would not do, and deriving keeps the database free of
//! per-gateway secrets (a leaked backup reveals no credential); the price is that the secret
//! is head office's alone to keep. Client certificates would need a CA on every broker in use,
//! and message seals on brokers without one. The store is bound at enrolment: the code names
//! it, and the token only verifies for it. A technician holds a one-time code for one gateway,
//! never the secret.
//!
//! Gateways enrolled before the registry (generation 0, by `instore-provision gateway` with the
//! secret) have no row and keep working; revoking one gives it a row. A row's generation rises
//! with every enrolment of the same gateway and every rotation, voiding the previous token at
//! once. With several instances, each re-reads the table every [`REFRESH_EVERY`].

pub mod db;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use instore_protocol::auth::MessageKey;
use serde::Serialize;

/// How often an instance re-reads the registry (a revocation at another instance takes effect
/// here within this).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// One registered gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub gateway_id: String,
    pub store_id: String,
    pub generation: u32,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// What the registry says of a gateway presenting itself for a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not registered: enrolled before the registry, generation 0.
    Legacy(String),
    /// Registered and not revoked: its current token.
    Active(String),
    Revoked,
    /// Registered for another store.
    WrongStore,
    /// Ids no token can be minted for.
    Invalid,
}

impl Status {
    pub fn token(&self) -> Option<&str> {
        match self {
            Status::Legacy(t) | Status::Active(t) => Some(t),
            _ => None,
        }
    }
}

/// What the registry says of a broker login (user name = gateway id, password = its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The current token of this gateway of this store.
    Gateway { store_id: String },
    /// Refused, with the reason counted by the broker.
    Refused(&'static str),
    /// An unregistered gateway whose store this instance has not learnt: only a search over
    /// every known store ([`Registry::login_by_search`]) can tell.
    StoreUnknown,
}

/// The registry as this instance knows it, shared by every handler and ingest.
#[derive(Clone)]
pub struct Registry {
    secret: Arc<[u8]>,
    entries: Arc<RwLock<HashMap<String, Entry>>>,
    /// Stores of gateways without a row (enrolled with the secret), as learnt from the
    /// `gateways` table and from tokens that verified over HTTP: a broker login names only the
    /// gateway, and its token is bound to a store.
    legacy_stores: Arc<RwLock<HashMap<String, String>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: Arc::from(secret),
            entries: Arc::default(),
            legacy_stores: Arc::default(),
        }
    }

    /// Records that `gateway_id` speaks for `store_id` (a gateway seen, or a token verified).
    pub fn learn(&self, gateway_id: &str, store_id: &str) {
        let known = |map: &HashMap<String, String>| {
            map.get(gateway_id).map(String::as_str) == Some(store_id)
        };
        // Every HTTP request of such a gateway verifies its token: a read lock when nothing is new.
        if known(&self.legacy_stores.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let mut map = self
            .legacy_stores
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if !known(&map) {
            map.insert(gateway_id.to_string(), store_id.to_string());
        }
    }

    /// Checks a broker login against what this instance knows, without searching.
    pub fn login(&self, gateway_id: &str, password: &str) -> Login {
        let store_id = match self.entry(gateway_id) {
            Some(e) if e.revoked_ms.is_some() => return Login::Refused("revoked"),
            Some(e) => e.store_id,
            None => {
                let learnt = self
                    .legacy_stores
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(gateway_id)
                    .cloned();
                match learnt {
                    Some(s) => s,
                    None => return Login::StoreUnknown,
                }
            }
        };
        if self.verify(&store_id, gateway_id, password) {
            Login::Gateway { store_id }
        } else {
            Login::Refused("bad_password")
        }
    }

    /// An unregistered gateway's login tried against every store this instance knows: one HMAC
    /// per store, so the caller limits how often it runs.
    pub fn login_by_search(&self, gateway_id: &str, password: &str) -> Login {
        if self.is_registered(gateway_id) {
            return self.login(gateway_id, password);
        }
        let mut stores: Vec<String> = self
            .legacy_stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        stores.extend(self.read().values().map(|e| e.store_id.clone()));
        stores.sort_unstable();
        stores.dedup();
        for store_id in stores {
            if self.verify(&store_id, gateway_id, password) {
                return Login::Gateway { store_id };
            }
        }
        Login::Refused("unknown_gateway")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what this instance knows with the table's rows.
    pub fn replace_all(&self, entries: Vec<Entry>) {
        *self.write() = entries
            .into_iter()
            .map(|e| (e.gateway_id.clone(), e))
            .collect();
    }

    /// Records a row just committed.
    pub fn put(&self, entry: Entry) {
        self.write().insert(entry.gateway_id.clone(), entry);
    }

    pub fn entry(&self, gateway_id: &str) -> Option<Entry> {
        self.read().get(gateway_id).cloned()
    }

    pub fn is_registered(&self, gateway_id: &str) -> bool {
        self.read().contains_key(gateway_id)
    }

    pub fn status(&self, store_id: &str, gateway_id: &str) -> Status {
        let entry = self.entry(gateway_id);
        let generation = match &entry {
            Some(e) if e.revoked_ms.is_some() => return Status::Revoked,
            Some(e) if e.store_id != store_id => return Status::WrongStore,
            Some(e) => e.generation,
            None => 0,
        };
        match instore_protocol::token::gateway_token_at(
            &self.secret,
            store_id,
            gateway_id,
            generation,
        ) {
            Some(t) if entry.is_some() => Status::Active(t),
            Some(t) => Status::Legacy(t),
            None => Status::Invalid,
        }
    }

    /// The token a registered gateway would hold at `generation`.
    pub fn token_at(&self, store_id: &str, gateway_id: &str, generation: u32) -> Option<String> {
        instore_protocol::token::gateway_token_at(&self.secret, store_id, gateway_id, generation)
    }

    /// Whether `presented` is the current token of `gateway_id` in `store_id` (constant time).
    pub fn verify(&self, store_id: &str, gateway_id: &str, presented: &str) -> bool {
        let status = self.status(store_id, gateway_id);
        let ok = status.token().is_some_and(|t| {
            crate::http::auth::constant_time_eq(t.as_bytes(), presented.as_bytes())
        });
        if ok && matches!(status, Status::Legacy(_)) {
            self.learn(gateway_id, store_id);
        }
        ok
    }

    /// The key of the gateway's sealed messages and of head office's acks to it, if it may speak.
    pub fn gateway_key(&self, store_id: &str, gateway_id: &str) -> Option<MessageKey> {
        self.status(store_id, gateway_id)
            .token()
            .map(MessageKey::for_gateway)
    }

    /// The key of head office's notices to `store_id`.
    pub fn store_key(&self, store_id: &str) -> MessageKey {
        MessageKey::for_store(&self.secret, store_id)
    }
}

/// Re-reads the registry every [`REFRESH_EVERY`] until `cancel`, so that what another instance
/// changed applies here too.
pub async fn follow(
    store: crate::store::Store,
    registry: Registry,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(REFRESH_EVERY) => {}
        }
        match store.call(db::load_all).await {
            Ok(entries) => registry.replace_all(entries),
            Err(crate::store::StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "cannot re-read the gateway registry; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gw: &str, store: &str, generation: u32, revoked: bool) -> Entry {
        Entry {
            gateway_id: gw.into(),
            store_id: store.into(),
            generation,
            enrolled_ms: 1,
            revoked_ms: revoked.then_some(2),
        }
    }

    #[test]
    fn a_gateway_is_legacy_until_registered_then_held_to_its_generation_store_and_revocation() {
        let r = Registry::new(b"0123456789abcdef");
        let g0 = instore_protocol::token::gateway_token(b"0123456789abcdef", "s1", "g1").unwrap();
        assert_eq!(r.status("s1", "g1"), Status::Legacy(g0.clone()));
        assert!(r.verify("s1", "g1", &g0));
        r.put(entry("g1", "s1", 2, false));
        assert!(
            !r.verify("s1", "g1", &g0),
            "the old generation's token is void"
        );
        let g2 = r.token_at("s1", "g1", 2).unwrap();
        assert!(r.verify("s1", "g1", &g2));
        assert_eq!(r.status("s2", "g1"), Status::WrongStore);
        assert!(r.gateway_key("s2", "g1").is_none());
        r.put(entry("g1", "s1", 2, true));
        assert_eq!(r.status("s1", "g1"), Status::Revoked);
        assert!(!r.verify("s1", "g1", &g2));
        assert!(r.gateway_key("s1", "g1").is_none());
        assert_eq!(r.status("s/1", "g9"), Status::Invalid);
    }

    #[test]
    fn a_broker_login_finds_the_store_of_a_legacy_gateway_and_refuses_revoked_and_wrong_tokens() {
        let secret = b"0123456789abcdef";
        let r = Registry::new(secret);
        let t = |s, g| instore_protocol::token::gateway_token(secret, s, g).unwrap();
        assert_eq!(r.login("g1", &t("s1", "g1")), Login::StoreUnknown);
        // Nothing known yet: no store to search.
        assert_eq!(
            r.login_by_search("g1", &t("s1", "g1")),
            Login::Refused("unknown_gateway")
        );
        r.learn("g0", "s1");
        let found = Login::Gateway {
            store_id: "s1".into(),
        };
        assert_eq!(r.login_by_search("g1", &t("s1", "g1")), found);
        // The search taught the registry g1's store: the next login needs no search.
        assert_eq!(r.login("g1", &t("s1", "g1")), found);
        assert_eq!(
            r.login("g1", &t("s2", "g1")),
            Login::Refused("bad_password")
        );
        assert_eq!(r.login("g1", "nope"), Login::Refused("bad_password"));
        r.put(entry("g1", "s1", 1, true));
        assert_eq!(r.login("g1", &t("s1", "g1")), Login::Refused("revoked"));
        r.put(entry("g2", "s3", 1, false));
        let g2 = r.token_at("s3", "g2", 1).unwrap();
        assert_eq!(
            r.login("g2", &g2),
            Login::Gateway {
                store_id: "s3".into()
            }
        );
        assert_eq!(
            r.login("g2", &t("s3", "g2")),
            Login::Refused("bad_password")
        );
    }
}
