//! Tablet pairing: which clerk tablets may see member data.
//!
//! In: requests for a one-time pairing code (the admin API, used by `instore-agent pair-tablet`),
//! code redemptions from tablets (`POST /api/pair`), token renewals (`POST /api/tablet/renew`),
//! revocations (`tablets revoke`). Out: a random token per tablet — kept only as its SHA-256 in
//! `data_dir/tablets.db` and in memory — and a [`TokenCheck`] the web server asks on every
//! request. Revoking a tablet takes effect at once: its token stops matching and its open alert
//! streams are ended through the tablet's session token.
//!
//! Tokens expire (`[http] tablet_token_days`, 90 by default). A tablet renews its own token: the
//! renewal hands out a new one and keeps the old one working until the new one is first
//! presented, so a renewal answer lost on the way never locks a tablet out; from that first use
//! on the old token is dead and the new one runs a full lifetime. The clerk page renews once half
//! the lifetime has gone. An expired tablet's streams end within [`FLUSH_EVERY`].
//!
//! Codes live in memory only (they are short-lived and single-use: an agent restart voids them).
//! Failed redemptions are rate-limited per client (an IPv4 address or an IPv6 /64) at
//! [`MAX_FAILURES_PER_MINUTE`], so one misbehaving device cannot lock out the store's other
//! tablets, and for all clients together at [`MAX_FAILURES_PER_MINUTE_ALL`], so many addresses
//! cannot multiply the guesses: at 100 a minute, a 40-bit code outlives its ten minutes with odds
//! of about one in a billion.

pub mod client;
pub mod qr;
pub mod store;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use instore_daemon::limit::Window as Limiter;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    web::{Principal, TokenCheck, TokenDigest},
};
use store::{Row, TabletStore};

/// Failed code redemptions allowed per minute from one client.
pub const MAX_FAILURES_PER_MINUTE: u32 = 10;
/// Failed code redemptions allowed per minute from all clients together.
pub const MAX_FAILURES_PER_MINUTE_ALL: u32 = 100;
/// Clients whose failures are tracked one by one, at most; beyond, a new client's failures count
/// toward the all-clients limit only (the map cannot be grown without bound by spoofed sources).
const MAX_CLIENTS: usize = 4096;
/// A tablet token's lifetime unless `[http] tablet_token_days` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Unredeemed codes kept at most; the oldest is dropped beyond.
const MAX_CODES: usize = 64;
/// Code alphabet: no 0/O, 1/I/L, so a code read aloud or typed survives.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 8;
/// How often `last_seen` is written to disk.
const FLUSH_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("unknown, used or expired pairing code")]
    BadCode,
    #[error("too many wrong pairing codes; try again in a minute")]
    RateLimited,
    #[error("this tablet is not paired (any more)")]
    NotPaired,
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("tablet store task failed: {0}")]
    Task(String),
}

/// A code handed out by [`Tablets::issue_code`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct IssuedCode {
    /// As typed: `ABCD-EFGH`.
    pub code: String,
    /// The pairing URL to open on the tablet (also shown as a QR code).
    pub url: String,
    pub label: String,
    pub expires_at_ms: i64,
}

/// What a tablet receives once paired.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub tablet_id: String,
    pub label: String,
    /// Shown once; only its digest is stored.
    pub token: String,
    pub expires_at_ms: i64,
}

/// What a tablet receives when it renews its token.
#[derive(Debug, Clone, Serialize)]
pub struct Renewed {
    pub tablet_id: String,
    /// Replaces the old token from its first use on.
    pub token: String,
    /// When the new token expires if it is first used now.
    pub expires_at_ms: i64,
}

/// A tablet token's expiry, for the clerk page.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Expiry {
    pub expires_at_ms: i64,
    /// From then on the page should renew.
    pub renew_after_ms: i64,
}

/// A row of `tablets list`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TabletInfo {
    pub id: String,
    pub label: String,
    pub created_ms: i64,
    pub last_seen_ms: Option<i64>,
    #[serde(default)]
    pub expires_ms: i64,
}

struct Tablet {
    id: String,
    label: String,
    created_ms: i64,
    last_seen_ms: AtomicI64,
    flushed_ms: AtomicI64,
    /// Cancelled on revocation: ends this tablet's open streams.
    session: CancellationToken,
}

struct Code {
    label: String,
    expires_at_ms: i64,
}

/// A renewed token's first use, to be saved: tablet id, its digest, the new expiry.
type Switched = (String, [u8; 32], i64);

/// A paired tablet's credentials, changed under the state lock.
struct Entry {
    tablet: Arc<Tablet>,
    digest: [u8; 32],
    /// A renewed token not presented yet.
    next: Option<[u8; 32]>,
    expires_ms: i64,
}

/// Who is guessing, as the rate limit sees it: IPv6 clients by their /64 (one host can pick any
/// address in it), IPv4-mapped addresses as IPv4, and `None` when the peer is unknown.
type ClientKey = Option<IpAddr>;

fn client_key(ip: Option<IpAddr>) -> ClientKey {
    ip.map(|ip| match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    })
}

/// The per-client and all-clients failure windows.
#[derive(Debug, Default)]
struct Limiters {
    all: Limiter,
    clients: HashMap<ClientKey, Limiter>,
}

impl Limiters {
    fn limited(&mut self, client: ClientKey, now_ms: i64) -> bool {
        self.all.limited(now_ms, MAX_FAILURES_PER_MINUTE_ALL)
            || self
                .clients
                .get_mut(&client)
                .is_some_and(|l| l.limited(now_ms, MAX_FAILURES_PER_MINUTE))
    }

    fn fail(&mut self, client: ClientKey, now_ms: i64) {
        self.all.fail(now_ms);
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_CLIENTS {
            self.clients.retain(|_, l| l.current(now_ms));
            if self.clients.len() >= MAX_CLIENTS {
                return;
            }
        }
        self.clients.entry(client).or_default().fail(now_ms);
    }
}

#[derive(Default)]
struct State {
    /// Current and renewed tokens' digests, to tablet ids.
    by_digest: HashMap<[u8; 32], String>,
    by_id: HashMap<String, Entry>,
    codes: HashMap<String, Code>,
    limits: Limiters,
    /// Renewed tokens presented since the last flush.
    switched: Vec<Switched>,
}

struct Inner {
    store: TabletStore,
    state: Mutex<State>,
    metrics: Metrics,
    url_base: String,
    token_ttl_ms: i64,
}

/// Cloneable handle on the paired tablets.
#[derive(Clone)]
pub struct Tablets {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tablets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tablets")
            .field("url_base", &self.inner.url_base)
            .finish_non_exhaustive()
    }
}

fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn new_code() -> String {
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rand::random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Tablets {
    /// Loads the paired tablets from `path`. `url_base` is how tablets reach this agent
    /// (`http://192.168.1.20:8080`), for pairing URLs; tokens live `token_ttl` from pairing or
    /// from their renewal's first use.
    pub fn open(
        path: &Path,
        url_base: &str,
        token_ttl: Duration,
        metrics: Metrics,
    ) -> Result<Self, PairingError> {
        let store = TabletStore::open(path)?;
        let token_ttl_ms = ttl_ms(token_ttl).max(1);
        let now = crate::now_ms();
        let mut rows = store.valid()?;
        if rows.iter().any(|r| r.expires_ms.is_none()) {
            let expires = now.saturating_add(token_ttl_ms);
            let n = store.set_missing_expiry(expires)?;
            tracing::info!(
                tablets = n,
                "tablets paired before token expiry get a full lifetime"
            );
            for r in rows.iter_mut().filter(|r| r.expires_ms.is_none()) {
                r.expires_ms = Some(expires);
            }
        }
        let mut state = State::default();
        for row in rows {
            let expires_ms = row.expires_ms.unwrap_or(now);
            if expires_ms <= now {
                continue;
            }
            let tablet = Arc::new(Tablet {
                last_seen_ms: AtomicI64::new(row.last_seen_ms.unwrap_or(0)),
                flushed_ms: AtomicI64::new(row.last_seen_ms.unwrap_or(0)),
                id: row.id.clone(),
                label: row.label,
                created_ms: row.created_ms,
                session: CancellationToken::new(),
            });
            state.by_digest.insert(row.digest, row.id.clone());
            if let Some(next) = row.next_digest {
                state.by_digest.insert(next, row.id.clone());
            }
            state.by_id.insert(
                row.id,
                Entry {
                    tablet,
                    digest: row.digest,
                    next: row.next_digest,
                    expires_ms,
                },
            );
        }
        metrics.tablets_paired.set(state.by_id.len() as i64);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(state),
                metrics,
                url_base: url_base.trim_end_matches('/').to_owned(),
                token_ttl_ms,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh single-use code for a tablet to be called `label`, valid for `ttl`.
    pub fn issue_code(&self, label: &str, ttl: Duration) -> IssuedCode {
        let now = crate::now_ms();
        let expires_at_ms = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let code = new_code();
        let mut st = self.lock();
        st.codes.retain(|_, c| c.expires_at_ms > now);
        if st.codes.len() >= MAX_CODES
            && let Some(oldest) = st
                .codes
                .iter()
                .min_by_key(|(_, c)| c.expires_at_ms)
                .map(|(k, _)| k.clone())
        {
            st.codes.remove(&oldest);
        }
        st.codes.insert(
            code.clone(),
            Code {
                label: label.to_owned(),
                expires_at_ms,
            },
        );
        drop(st);
        tracing::info!(label, ttl_s = ttl.as_secs(), "pairing code issued");
        IssuedCode {
            code: format!("{}-{}", &code[..4], &code[4..]),
            url: format!("{}/pair?code={code}", self.inner.url_base),
            label: label.to_owned(),
            expires_at_ms,
        }
    }

    fn count(&self, result: &'static str) {
        self.inner
            .metrics
            .pairing_attempts
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    fn count_token(&self, kind: &'static str) {
        self.inner
            .metrics
            .tablet_tokens
            .get_or_create(&vec![("kind", kind)])
            .inc();
    }

    /// Exchanges a code for a token: once, before it expires, unless too many wrong codes came
    /// in the last minute from `client` (the peer's address; `None` when unknown) or from all.
    pub async fn redeem(&self, code: &str, client: Option<IpAddr>) -> Result<Paired, PairingError> {
        let now = crate::now_ms();
        let code = normalize_code(code);
        let client = client_key(client);
        let label = {
            let mut st = self.lock();
            if st.limits.limited(client, now) {
                drop(st);
                self.count("rate_limited");
                tracing::warn!("pairing attempt refused: rate limited");
                return Err(PairingError::RateLimited);
            }
            match st.codes.remove(&code) {
                Some(c) if c.expires_at_ms > now => c.label,
                _ => {
                    st.limits.fail(client, now);
                    drop(st);
                    self.count("bad_code");
                    tracing::info!("pairing attempt refused: bad code");
                    return Err(PairingError::BadCode);
                }
            }
        };
        let token = hex::encode(rand::random::<[u8; 32]>());
        let digest = *TokenDigest::of(&token).as_bytes();
        let expires_ms = now.saturating_add(self.inner.token_ttl_ms);
        let row = Row {
            id: format!("t-{}", hex::encode(rand::random::<[u8; 4]>())),
            label,
            digest,
            created_ms: now,
            last_seen_ms: None,
            expires_ms: Some(expires_ms),
            next_digest: None,
        };
        let store = self.inner.store.clone();
        let insert = row.clone();
        tokio::task::spawn_blocking(move || store.insert(&insert))
            .await
            .map_err(|e| PairingError::Task(e.to_string()))??;
        let tablet = Arc::new(Tablet {
            id: row.id.clone(),
            label: row.label.clone(),
            created_ms: now,
            last_seen_ms: AtomicI64::new(now),
            flushed_ms: AtomicI64::new(0),
            session: CancellationToken::new(),
        });
        let mut st = self.lock();
        st.by_digest.insert(digest, row.id.clone());
        st.by_id.insert(
            row.id.clone(),
            Entry {
                tablet,
                digest,
                next: None,
                expires_ms,
            },
        );
        self.inner.metrics.tablets_paired.set(st.by_id.len() as i64);
        drop(st);
        self.count("ok");
        tracing::info!(tablet = %row.id, label = %row.label, "tablet paired");
        Ok(Paired {
            tablet_id: row.id,
            label: row.label,
            token,
            expires_at_ms: expires_ms,
        })
    }

    /// A new token for tablet `id` (which must be paired and unexpired). The current token keeps
    /// working until the new one is first presented; a second renewal before that replaces the
    /// first one's token.
    pub async fn renew(&self, id: &str) -> Result<Renewed, PairingError> {
        let now = crate::now_ms();
        if self
            .lock()
            .by_id
            .get(id)
            .is_none_or(|e| e.expires_ms <= now)
        {
            return Err(PairingError::NotPaired);
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        let digest = *TokenDigest::of(&token).as_bytes();
        let store = self.inner.store.clone();
        let owned = id.to_owned();
        // On disk before the tablet can hold it: a restart must still know the new token.
        let stored = tokio::task::spawn_blocking(move || store.set_next(&owned, &digest))
            .await
            .map_err(|e| PairingError::Task(e.to_string()))??;
        let mut st = self.lock();
        let State {
            by_digest, by_id, ..
        } = &mut *st;
        let Some(entry) = by_id.get_mut(id).filter(|_| stored) else {
            return Err(PairingError::NotPaired);
        };
        if let Some(previous) = entry.next.replace(digest) {
            by_digest.remove(&previous);
        }
        by_digest.insert(digest, id.to_owned());
        drop(st);
        self.count_token("renewed");
        tracing::info!(tablet = %id, "tablet token renewed");
        Ok(Renewed {
            tablet_id: id.to_owned(),
            token,
            expires_at_ms: now.saturating_add(self.inner.token_ttl_ms),
        })
    }

    /// When tablet `id`'s token expires and when it should be renewed.
    pub fn expiry(&self, id: &str) -> Option<Expiry> {
        let st = self.lock();
        let e = st.by_id.get(id)?;
        Some(Expiry {
            expires_at_ms: e.expires_ms,
            renew_after_ms: e.expires_ms - self.inner.token_ttl_ms / 2,
        })
    }

    /// Forgets tablets whose token expired and ends their streams. Returns how many.
    pub fn expire_due(&self) -> usize {
        let now = crate::now_ms();
        let mut st = self.lock();
        let due: Vec<String> = st
            .by_id
            .iter()
            .filter(|(_, e)| e.expires_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &due {
            if let Some(e) = st.by_id.remove(id) {
                st.by_digest.remove(&e.digest);
                if let Some(next) = e.next {
                    st.by_digest.remove(&next);
                }
                e.tablet.session.cancel();
                tracing::info!(tablet = %id, label = %e.tablet.label, "tablet token expired");
            }
        }
        self.inner.metrics.tablets_paired.set(st.by_id.len() as i64);
        drop(st);
        for _ in &due {
            self.count_token("expired");
        }
        due.len()
    }

    /// Revokes a tablet at once: its token stops matching and its open streams end. Returns
    /// false if no such tablet was paired.
    pub async fn revoke(&self, id: &str) -> Result<bool, PairingError> {
        let store = self.inner.store.clone();
        let owned = id.to_owned();
        let stored = tokio::task::spawn_blocking(move || store.revoke(&owned, crate::now_ms()))
            .await
            .map_err(|e| PairingError::Task(e.to_string()))??;
        let mut st = self.lock();
        let removed = st.by_id.remove(id);
        if let Some(e) = &removed {
            st.by_digest.remove(&e.digest);
            if let Some(next) = e.next {
                st.by_digest.remove(&next);
            }
            e.tablet.session.cancel();
        }
        self.inner.metrics.tablets_paired.set(st.by_id.len() as i64);
        drop(st);
        if stored || removed.is_some() {
            tracing::info!(tablet = %id, "tablet revoked");
        }
        Ok(stored || removed.is_some())
    }

    /// Paired tablets, oldest first.
    pub fn list(&self) -> Vec<TabletInfo> {
        let st = self.lock();
        let mut list: Vec<TabletInfo> = st
            .by_id
            .values()
            .map(|e| {
                let t = &e.tablet;
                let seen = t.last_seen_ms.load(Ordering::Relaxed);
                TabletInfo {
                    id: t.id.clone(),
                    label: t.label.clone(),
                    created_ms: t.created_ms,
                    last_seen_ms: (seen > 0).then_some(seen),
                    expires_ms: e.expires_ms,
                }
            })
            .collect();
        list.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        list
    }

    pub fn label(&self, id: &str) -> Option<String> {
        self.lock().by_id.get(id).map(|e| e.tablet.label.clone())
    }

    /// Cancelled when the tablet is revoked or expires; `None` if it is not paired (any more).
    pub fn session(&self, id: &str) -> Option<CancellationToken> {
        self.lock().by_id.get(id).map(|e| e.tablet.session.clone())
    }

    /// Writes changed `last_seen` times and switched tokens to disk.
    pub async fn flush_last_seen(&self) {
        let (seen, switched): (Vec<(String, i64)>, Vec<Switched>) = {
            let mut st = self.lock();
            let seen = st
                .by_id
                .values()
                .filter_map(|e| {
                    let t = &e.tablet;
                    let seen = t.last_seen_ms.load(Ordering::Relaxed);
                    (seen > t.flushed_ms.swap(seen, Ordering::Relaxed))
                        .then(|| (t.id.clone(), seen))
                })
                .collect();
            (seen, std::mem::take(&mut st.switched))
        };
        if !switched.is_empty() {
            let store = self.inner.store.clone();
            let batch = switched.clone();
            let failed = match tokio::task::spawn_blocking(move || store.switch(&batch)).await {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "switched tablet tokens not saved; retried");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tablet token task failed; retried");
                    true
                }
            };
            if failed {
                // Until saved, a restart would take the old tokens again (the new ones switch
                // again on their next use): harmless, but retried so it does not last.
                self.lock().switched.extend(switched);
            }
        }
        if seen.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.touch(&seen)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "tablet last-seen times not saved"),
            Err(e) => tracing::warn!(error = %e, "tablet last-seen task failed"),
        }
    }
}

impl TokenCheck for Tablets {
    fn check(&self, token: &str) -> Option<Principal> {
        // A map lookup by digest: timing can at most reveal a prefix of a SHA-256 the attacker
        // cannot invert, never of the token.
        let digest = *TokenDigest::of(token).as_bytes();
        let now = crate::now_ms();
        let mut st = self.lock();
        let State {
            by_digest,
            by_id,
            switched,
            ..
        } = &mut *st;
        let id = by_digest.get(&digest)?.clone();
        let entry = by_id.get_mut(&id)?;
        if entry.expires_ms <= now {
            return None;
        }
        if entry.next == Some(digest) {
            // The renewed token's first use: from now on it alone works, for a full lifetime.
            let old = std::mem::replace(&mut entry.digest, digest);
            entry.next = None;
            entry.expires_ms = now.saturating_add(self.inner.token_ttl_ms);
            by_digest.remove(&old);
            switched.push((id.clone(), digest, entry.expires_ms));
            entry.tablet.last_seen_ms.store(now, Ordering::Relaxed);
            drop(st);
            self.count_token("switched");
            tracing::info!(tablet = %id, "tablet switched to its renewed token");
            return Some(Principal::Tablet(id));
        }
        entry.tablet.last_seen_ms.store(now, Ordering::Relaxed);
        Some(Principal::Tablet(id))
    }
}

/// Saves `last_seen` times and switched tokens every 30 s and once more on shutdown, and
/// forgets expired tablets.
pub async fn run_flush(tablets: Tablets, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                tablets.expire_due();
                tablets.flush_last_seen().await;
            }
        }
    }
    tablets.flush_last_seen().await;
}

/// How tablets reach this agent: `public_url` if configured, else the listen address, with an
/// unspecified IP replaced by the address of the interface that routes to the LAN.
pub fn url_base(listen: SocketAddr, public_url: Option<&str>) -> String {
    if let Some(url) = public_url.filter(|u| !u.is_empty()) {
        return url.trim_end_matches('/').to_owned();
    }
    let ip = if listen.ip().is_unspecified() {
        lan_ip().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        listen.ip()
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The local address the kernel would use toward a LAN-ish destination. `connect` on UDP sends
/// nothing; it only picks the route.
fn lan_ip() -> Option<IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tablets(dir: &Path) -> Tablets {
        tablets_ttl(dir, DEFAULT_TOKEN_TTL)
    }

    fn tablets_ttl(dir: &Path, ttl: Duration) -> Tablets {
        Tablets::open(
            &dir.join("tablets.db"),
            "http://10.0.0.5:8080",
            ttl,
            Metrics::default(),
        )
        .unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn a_code_pairs_once_and_the_token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("till 2", Duration::from_secs(600));
        assert!(issued.url.starts_with("http://10.0.0.5:8080/pair?code="));
        // Typed with a dash and in lower case, it still works.
        let paired = t.redeem(&issued.code.to_lowercase(), None).await.unwrap();
        assert_eq!(paired.label, "till 2");
        assert!(matches!(
            t.redeem(&issued.code, None).await,
            Err(PairingError::BadCode)
        ));
        assert_eq!(
            t.check(&paired.token),
            Some(Principal::Tablet(paired.tablet_id.clone()))
        );
        drop(t);
        let again = tablets(dir.path());
        assert_eq!(
            again.check(&paired.token),
            Some(Principal::Tablet(paired.tablet_id.clone()))
        );
        assert_eq!(again.list()[0].label, "till 2");
        // The file holds the digest, never the token.
        let raw = std::fs::read(dir.path().join("tablets.db")).unwrap();
        assert!(!raw.windows(16).any(|w| w == &paired.token.as_bytes()[..16]));
    }

    #[tokio::test]
    async fn an_expired_code_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("x", Duration::ZERO);
        assert!(matches!(
            t.redeem(&issued.code, None).await,
            Err(PairingError::BadCode)
        ));
    }

    #[tokio::test]
    async fn revoking_ends_the_session_and_the_token_at_once_and_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("x", Duration::from_secs(60));
        let paired = t.redeem(&issued.code, None).await.unwrap();
        let session = t.session(&paired.tablet_id).unwrap();
        assert!(t.revoke(&paired.tablet_id).await.unwrap());
        assert!(session.is_cancelled());
        assert_eq!(t.check(&paired.token), None);
        assert!(!t.revoke(&paired.tablet_id).await.unwrap());
        assert_eq!(tablets(dir.path()).check(&paired.token), None);
    }

    #[tokio::test]
    async fn wrong_codes_are_rate_limited_even_before_a_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let t = Tablets::open(
            &dir.path().join("t.db"),
            "http://x",
            DEFAULT_TOKEN_TTL,
            metrics.clone(),
        )
        .unwrap();
        let issued = t.issue_code("x", Duration::from_secs(60));
        let guesser = ip("192.168.1.66");
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            assert!(matches!(
                t.redeem("WRONG", guesser).await,
                Err(PairingError::BadCode)
            ));
        }
        assert!(matches!(
            t.redeem(&issued.code, guesser).await,
            Err(PairingError::RateLimited)
        ));
        // The code was not spent by the refused attempt: another tablet still pairs with it.
        assert!(t.redeem(&issued.code, ip("192.168.1.20")).await.is_ok());
        let bad = metrics
            .pairing_attempts
            .get_or_create(&vec![("result", "bad_code")])
            .get();
        assert_eq!(bad, u64::from(MAX_FAILURES_PER_MINUTE));
    }

    #[test]
    fn the_limiter_opens_again_after_a_minute() {
        let mut l = Limiter::default();
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            l.fail(1_000);
        }
        assert!(l.limited(30_000, MAX_FAILURES_PER_MINUTE));
        assert!(!l.limited(61_001, MAX_FAILURES_PER_MINUTE));
    }

    #[tokio::test]
    async fn one_guessing_client_does_not_lock_out_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        for _ in 0..MAX_FAILURES_PER_MINUTE + 5 {
            let _ = t.redeem("WRONG", ip("10.0.0.66")).await;
        }
        assert!(matches!(
            t.redeem("WRONG", ip("10.0.0.66")).await,
            Err(PairingError::RateLimited)
        ));
        let issued = t.issue_code("till 1", Duration::from_secs(60));
        let paired = t.redeem(&issued.code, ip("10.0.0.21")).await.unwrap();
        assert_eq!(paired.label, "till 1");
    }

    #[tokio::test]
    async fn many_addresses_together_hit_the_all_clients_limit() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        for i in 0..MAX_FAILURES_PER_MINUTE_ALL {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert!(matches!(
                t.redeem("WRONG", Some(addr)).await,
                Err(PairingError::BadCode)
            ));
        }
        let issued = t.issue_code("x", Duration::from_secs(60));
        assert!(matches!(
            t.redeem(&issued.code, ip("10.9.9.9")).await,
            Err(PairingError::RateLimited)
        ));
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(client_key(None), None);
    }

    #[test]
    fn the_client_table_is_bounded_and_makes_room_from_stale_windows() {
        let mut l = Limiters::default();
        for i in 0..MAX_CLIENTS as u32 {
            l.fail(Some(IpAddr::V4(Ipv4Addr::from(i))), 1_000);
        }
        assert_eq!(l.clients.len(), MAX_CLIENTS);
        // Full of current windows: a new client is counted in the total only.
        l.fail(ip("203.0.113.1"), 2_000);
        assert_eq!(l.clients.len(), MAX_CLIENTS);
        assert!(!l.clients.contains_key(&ip("203.0.113.1")));
        // A minute on, the stale windows make room.
        l.fail(ip("203.0.113.1"), 70_000);
        assert_eq!(l.clients.len(), 1);
    }

    #[tokio::test]
    async fn a_renewed_token_replaces_the_old_one_from_its_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("till 3", Duration::from_secs(60));
        let paired = t.redeem(&issued.code, None).await.unwrap();
        let me = Some(Principal::Tablet(paired.tablet_id.clone()));
        let first = t.renew(&paired.tablet_id).await.unwrap();
        // The answer may be lost: a second renewal replaces the first one's token.
        let renewed = t.renew(&paired.tablet_id).await.unwrap();
        assert_ne!(renewed.token, paired.token);
        assert_eq!(t.check(&first.token), None);
        // Until the new token is used, the old one still works.
        assert_eq!(t.check(&paired.token), me);
        assert_eq!(t.check(&renewed.token), me);
        assert_eq!(t.check(&paired.token), None);
        assert_eq!(t.check(&renewed.token), me);
        // Saved by the flush: a restart takes the new token only.
        t.flush_last_seen().await;
        drop(t);
        let again = tablets(dir.path());
        assert_eq!(again.check(&paired.token), None);
        assert_eq!(again.check(&renewed.token), me);
        assert!(matches!(
            again.renew("t-unknown").await,
            Err(PairingError::NotPaired)
        ));
    }

    #[tokio::test]
    async fn a_renewal_survives_a_restart_before_its_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("x", Duration::from_secs(60));
        let paired = t.redeem(&issued.code, None).await.unwrap();
        let renewed = t.renew(&paired.tablet_id).await.unwrap();
        drop(t);
        let again = tablets(dir.path());
        let me = Some(Principal::Tablet(paired.tablet_id.clone()));
        assert_eq!(again.check(&paired.token), me);
        assert_eq!(again.check(&renewed.token), me);
        assert_eq!(again.check(&paired.token), None);
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_its_streams_end_and_a_restart_keeps_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets_ttl(dir.path(), Duration::from_millis(300));
        let issued = t.issue_code("x", Duration::from_secs(60));
        let paired = t.redeem(&issued.code, None).await.unwrap();
        let session = t.session(&paired.tablet_id).unwrap();
        let expiry = t.expiry(&paired.tablet_id).unwrap();
        assert_eq!(expiry.expires_at_ms, paired.expires_at_ms);
        assert_eq!(expiry.renew_after_ms, paired.expires_at_ms - 150);
        assert!(t.check(&paired.token).is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(t.check(&paired.token), None);
        assert!(matches!(
            t.renew(&paired.tablet_id).await,
            Err(PairingError::NotPaired)
        ));
        assert_eq!(t.expire_due(), 1);
        assert!(session.is_cancelled());
        assert!(t.list().is_empty());
        drop(t);
        assert!(tablets(dir.path()).list().is_empty());
    }

    #[tokio::test]
    async fn tablets_paired_before_expiry_existed_get_a_full_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tablets.db");
        let token = "old-token";
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE tablets (id TEXT PRIMARY KEY, label TEXT NOT NULL,
                 token_sha256 BLOB NOT NULL UNIQUE, created_ms INTEGER NOT NULL,
                 last_seen_ms INTEGER, revoked_ms INTEGER);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO tablets VALUES ('t-old', 'till 9', ?1, 1000, NULL, NULL)",
                [&TokenDigest::of(token).as_bytes()[..]],
            )
            .unwrap();
        }
        let before = crate::now_ms();
        let t = tablets(dir.path());
        assert_eq!(t.check(token), Some(Principal::Tablet("t-old".into())));
        let expires = t.expiry("t-old").unwrap().expires_at_ms;
        assert!(expires >= before + ttl_ms(DEFAULT_TOKEN_TTL));
        drop(t);
        // Written down, so the next start does not extend it again.
        let again = tablets(dir.path());
        assert_eq!(again.expiry("t-old").unwrap().expires_at_ms, expires);
    }

    #[test]
    fn the_url_base_prefers_the_configured_public_url() {
        let listen: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            url_base(listen, Some("http://shop.lan/")),
            "http://shop.lan"
        );
        let fixed: SocketAddr = "10.1.2.3:81".parse().unwrap();
        assert_eq!(url_base(fixed, None), "http://10.1.2.3:81");
        assert!(url_base(listen, None).ends_with(":8080"));
    }
}
