//! Who may connect to the embedded broker: head office itself, and gateways with their current
//! token (user name = gateway id, password = token, as they already log in to Mosquitto or
//! EMQX). Anonymous clients are refused by rumqttd before this runs.
//!
//! In: the CONNECT's client id, user name and password, from rumqttd's connection task. Out:
//! accept or refuse, each refusal counted by reason (`mqtt_logins_refused{reason}`). rumqttd has
//! no topic ACLs, so what a logged-in gateway may publish is held by the message seals
//! ([`instore_protocol::auth`]): a gateway that names another in a message, or another store,
//! is refused at ingest. A gateway's client id must be its id, or its id then `:` and anything
//! (tools that watch its acks), so one gateway cannot take over another's session.
//!
//! A gateway enrolled before the registry has a token bound to a store its login does not name:
//! its store is learnt from the gateways table and from its HTTP requests; a client id
//! `gateway:store[:anything]` names it (tools, tests); failing all three, the login is tried
//! against every known store, at most [`SEARCHES_PER_MINUTE`] times a minute.

use std::sync::{Arc, Mutex};

use instore_daemon::limit::Window;
use instore_protocol::topics::valid_id;
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    http::auth::constant_time_eq,
    metrics::ReasonLabel,
    registry::{Login, Registry},
};

/// Logins of gateways with an unknown store that may search every store, per minute.
pub const SEARCHES_PER_MINUTE: u32 = 60;

/// The embedded broker's login check, shared with rumqttd's connection tasks.
#[derive(Clone)]
pub struct Logins {
    registry: Registry,
    hq_user: Arc<str>,
    hq_password: Arc<str>,
    searches: Arc<Mutex<Window>>,
    refused: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins")
            .field("hq_user", &self.hq_user)
            .finish_non_exhaustive()
    }
}

impl Logins {
    pub fn new(
        registry: Registry,
        hq_user: &str,
        hq_password: &str,
        refused: Family<ReasonLabel, Counter>,
    ) -> Self {
        Self {
            registry,
            hq_user: Arc::from(hq_user),
            hq_password: Arc::from(hq_password),
            searches: Arc::default(),
            refused,
        }
    }

    /// Whether this CONNECT may proceed; `now_ms` is the caller's clock (tests pass their own).
    pub fn check(&self, client_id: &str, user: &str, password: &str, now_ms: i64) -> bool {
        match self.verdict(client_id, user, password, now_ms) {
            Ok(()) => true,
            Err(reason) => {
                self.refused.get_or_create(&vec![("reason", reason)]).inc();
                // The user name is a gateway id (not personal data); never the password.
                tracing::warn!(user, client_id, reason, "embedded broker refused a login");
                false
            }
        }
    }

    fn verdict(
        &self,
        client_id: &str,
        user: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<(), &'static str> {
        if constant_time_eq(user.as_bytes(), self.hq_user.as_bytes())
            && constant_time_eq(password.as_bytes(), self.hq_password.as_bytes())
        {
            return Ok(());
        }
        if !valid_id(user) {
            return Err("unknown_gateway");
        }
        let suffix = match client_id.strip_prefix(user) {
            Some("") => None,
            Some(rest) if rest.starts_with(':') => Some(&rest[1..]),
            _ => return Err("client_id"),
        };
        let hint = suffix
            .and_then(|s| s.split(':').next())
            .filter(|s| valid_id(s));
        let login = match self.registry.login(user, password) {
            Login::StoreUnknown if hint.is_some() => {
                match hint.filter(|store| self.registry.verify(store, user, password)) {
                    Some(store) => Login::Gateway {
                        store_id: store.to_string(),
                    },
                    None => Login::Refused("bad_password"),
                }
            }
            Login::StoreUnknown => {
                {
                    let mut window = self.searches.lock().unwrap_or_else(|p| p.into_inner());
                    if window.limited(now_ms, SEARCHES_PER_MINUTE) {
                        return Err("rate_limited");
                    }
                    window.fail(now_ms);
                }
                self.registry.login_by_search(user, password)
            }
            other => other,
        };
        match login {
            Login::Gateway { .. } => Ok(()),
            Login::Refused(reason) => Err(reason),
            Login::StoreUnknown => Err("unknown_gateway"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef";

    fn logins() -> (Logins, Family<ReasonLabel, Counter>) {
        let refused = Family::<ReasonLabel, Counter>::default();
        let registry = Registry::new(SECRET);
        registry.learn("g1", "s1");
        (
            Logins::new(registry, "instore-sync", "hq-pw", refused.clone()),
            refused,
        )
    }

    fn count(f: &Family<ReasonLabel, Counter>, reason: &'static str) -> u64 {
        f.get_or_create(&vec![("reason", reason)]).get()
    }

    #[test]
    fn head_office_and_a_gateway_with_its_token_log_in_and_nobody_else() {
        let (l, refused) = logins();
        let t1 = instore_protocol::token::gateway_token(SECRET, "s1", "g1").unwrap();
        assert!(l.check("instore-sync", "instore-sync", "hq-pw", 0));
        assert!(!l.check("instore-sync", "instore-sync", "hq-p", 0));
        assert!(l.check("g1", "g1", &t1, 0));
        assert!(l.check("g1:acks", "g1", &t1, 0));
        assert!(!l.check("g1", "g1", "0000", 0));
        assert_eq!(count(&refused, "bad_password"), 1);
        // The near miss on head office's login was tried as a gateway of that name.
        assert_eq!(count(&refused, "unknown_gateway"), 1);
        // Another gateway's session, or a session whose id merely starts with g1.
        assert!(!l.check("g2", "g1", &t1, 0));
        assert!(!l.check("g10", "g1", &t1, 0));
        assert_eq!(count(&refused, "client_id"), 2);
        assert!(!l.check("x", "a/b", "t", 0));
        assert_eq!(count(&refused, "unknown_gateway"), 2);
    }

    #[test]
    fn an_unknown_gateway_is_searched_for_a_limited_number_of_times_a_minute() {
        let (l, refused) = logins();
        let t9 = instore_protocol::token::gateway_token(SECRET, "s1", "g9").unwrap();
        for _ in 0..SEARCHES_PER_MINUTE {
            assert!(!l.check("g8", "g8", "guess", 1_000));
        }
        assert_eq!(
            count(&refused, "unknown_gateway"),
            u64::from(SEARCHES_PER_MINUTE)
        );
        // Even the right token waits for the next window once guessing used up the searches.
        assert!(!l.check("g9", "g9", &t9, 2_000));
        assert_eq!(count(&refused, "rate_limited"), 1);
        assert!(l.check("g9", "g9", &t9, 61_000));
        // Found once, g9's store is known: no search, so no limit.
        for _ in 0..SEARCHES_PER_MINUTE {
            assert!(!l.check("g7", "g7", "guess", 62_000));
        }
        assert!(l.check("g9", "g9", &t9, 62_000));
        // A store named in the client id needs no search, even while searches are used up.
        let t5 = instore_protocol::token::gateway_token(SECRET, "s5", "g5").unwrap();
        assert!(!l.check("g5:s4:x", "g5", &t5, 62_000));
        assert!(l.check("g5:s5:x", "g5", &t5, 62_000));
        assert!(l.check("g5", "g5", &t5, 62_000), "and g5's store is learnt");
    }
}
