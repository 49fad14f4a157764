//! Tablet pairing: which clerk tablets may see member data.
//!
//! In: requests for a one-time pairing code (the admin API, used by `instore-agent pair-tablet`),
//! code redemptions from tablets (`POST /api/pair`), revocations (`tablets revoke`). Out: a
//! long-lived random token per tablet — kept only as its SHA-256 in `data_dir/tablets.db` and in
//! memory — and a [`TokenCheck`] the web server asks on every request. Revoking a tablet takes
//! effect at once: its token stops matching and its open alert streams are ended through the
//! tablet's session token.
//!
//! Codes live in memory only (they are short-lived and single-use: an agent restart voids them).
//! Failed redemptions are rate-limited for the whole agent: guessing a 40-bit code at
//! [`MAX_FAILURES_PER_MINUTE`] is hopeless, at the cost that a flood of bad guesses can delay a
//! genuine pairing by a minute.

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

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    web::{Principal, TokenCheck, TokenDigest},
};
use store::{Row, TabletStore};

/// Failed code redemptions allowed per minute, for the whole agent.
pub const MAX_FAILURES_PER_MINUTE: u32 = 10;
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
}

/// A row of `tablets list`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TabletInfo {
    pub id: String,
    pub label: String,
    pub created_ms: i64,
    pub last_seen_ms: Option<i64>,
}

struct Tablet {
    id: String,
    label: String,
    created_ms: i64,
    digest: [u8; 32],
    last_seen_ms: AtomicI64,
    flushed_ms: AtomicI64,
    /// Cancelled on revocation: ends this tablet's open streams.
    session: CancellationToken,
}

struct Code {
    label: String,
    expires_at_ms: i64,
}

/// Failures in a fixed one-minute window.
#[derive(Debug, Default)]
struct Limiter {
    window_start_ms: i64,
    failures: u32,
}

impl Limiter {
    fn roll(&mut self, now_ms: i64) {
        if now_ms - self.window_start_ms >= 60_000 {
            self.window_start_ms = now_ms;
            self.failures = 0;
        }
    }
    fn limited(&mut self, now_ms: i64) -> bool {
        self.roll(now_ms);
        self.failures >= MAX_FAILURES_PER_MINUTE
    }
    fn fail(&mut self, now_ms: i64) {
        self.roll(now_ms);
        self.failures += 1;
    }
}

#[derive(Default)]
struct State {
    by_digest: HashMap<[u8; 32], Arc<Tablet>>,
    by_id: HashMap<String, Arc<Tablet>>,
    codes: HashMap<String, Code>,
    limiter: Limiter,
}

struct Inner {
    store: TabletStore,
    state: Mutex<State>,
    metrics: Metrics,
    url_base: String,
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

impl Tablets {
    /// Loads the paired tablets from `path`. `url_base` is how tablets reach this agent
    /// (`http://192.168.1.20:8080`), for pairing URLs.
    pub fn open(path: &Path, url_base: &str, metrics: Metrics) -> Result<Self, PairingError> {
        let store = TabletStore::open(path)?;
        let mut state = State::default();
        for row in store.valid()? {
            let t = Arc::new(Tablet {
                last_seen_ms: AtomicI64::new(row.last_seen_ms.unwrap_or(0)),
                flushed_ms: AtomicI64::new(row.last_seen_ms.unwrap_or(0)),
                id: row.id,
                label: row.label,
                created_ms: row.created_ms,
                digest: row.digest,
                session: CancellationToken::new(),
            });
            state.by_digest.insert(t.digest, t.clone());
            state.by_id.insert(t.id.clone(), t);
        }
        metrics.tablets_paired.set(state.by_id.len() as i64);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(state),
                metrics,
                url_base: url_base.trim_end_matches('/').to_owned(),
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

    /// Exchanges a code for a token: once, before it expires, unless too many wrong codes came
    /// in the last minute.
    pub async fn redeem(&self, code: &str) -> Result<Paired, PairingError> {
        let now = crate::now_ms();
        let code = normalize_code(code);
        let label = {
            let mut st = self.lock();
            if st.limiter.limited(now) {
                drop(st);
                self.count("rate_limited");
                tracing::warn!("pairing attempt refused: rate limited");
                return Err(PairingError::RateLimited);
            }
            match st.codes.remove(&code) {
                Some(c) if c.expires_at_ms > now => c.label,
                _ => {
                    st.limiter.fail(now);
                    drop(st);
                    self.count("bad_code");
                    tracing::info!("pairing attempt refused: bad code");
                    return Err(PairingError::BadCode);
                }
            }
        };
        let token = hex::encode(rand::random::<[u8; 32]>());
        let digest = *TokenDigest::of(&token).as_bytes();
        let row = Row {
            id: format!("t-{}", hex::encode(rand::random::<[u8; 4]>())),
            label,
            digest,
            created_ms: now,
            last_seen_ms: None,
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
            digest,
            last_seen_ms: AtomicI64::new(now),
            flushed_ms: AtomicI64::new(0),
            session: CancellationToken::new(),
        });
        let mut st = self.lock();
        st.by_digest.insert(digest, tablet.clone());
        st.by_id.insert(tablet.id.clone(), tablet);
        self.inner.metrics.tablets_paired.set(st.by_id.len() as i64);
        drop(st);
        self.count("ok");
        tracing::info!(tablet = %row.id, label = %row.label, "tablet paired");
        Ok(Paired {
            tablet_id: row.id,
            label: row.label,
            token,
        })
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
        if let Some(t) = &removed {
            st.by_digest.remove(&t.digest);
            t.session.cancel();
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
            .map(|t| {
                let seen = t.last_seen_ms.load(Ordering::Relaxed);
                TabletInfo {
                    id: t.id.clone(),
                    label: t.label.clone(),
                    created_ms: t.created_ms,
                    last_seen_ms: (seen > 0).then_some(seen),
                }
            })
            .collect();
        list.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        list
    }

    pub fn label(&self, id: &str) -> Option<String> {
        self.lock().by_id.get(id).map(|t| t.label.clone())
    }

    /// Cancelled when the tablet is revoked; `None` if it is not paired (any more).
    pub fn session(&self, id: &str) -> Option<CancellationToken> {
        self.lock().by_id.get(id).map(|t| t.session.clone())
    }

    /// Writes changed `last_seen` times to disk.
    pub async fn flush_last_seen(&self) {
        let seen: Vec<(String, i64)> = {
            let st = self.lock();
            st.by_id
                .values()
                .filter_map(|t| {
                    let seen = t.last_seen_ms.load(Ordering::Relaxed);
                    (seen > t.flushed_ms.swap(seen, Ordering::Relaxed))
                        .then(|| (t.id.clone(), seen))
                })
                .collect()
        };
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
        let digest = TokenDigest::of(token);
        let st = self.lock();
        let t = st.by_digest.get(digest.as_bytes())?;
        t.last_seen_ms.store(crate::now_ms(), Ordering::Relaxed);
        Some(Principal::Tablet(t.id.clone()))
    }
}

/// Saves `last_seen` times every 30 s and once more on shutdown.
pub async fn run_flush(tablets: Tablets, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => tablets.flush_last_seen().await,
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
        Tablets::open(
            &dir.join("tablets.db"),
            "http://10.0.0.5:8080",
            Metrics::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_code_pairs_once_and_the_token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("till 2", Duration::from_secs(600));
        assert!(issued.url.starts_with("http://10.0.0.5:8080/pair?code="));
        // Typed with a dash and in lower case, it still works.
        let paired = t.redeem(&issued.code.to_lowercase()).await.unwrap();
        assert_eq!(paired.label, "till 2");
        assert!(matches!(
            t.redeem(&issued.code).await,
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
            t.redeem(&issued.code).await,
            Err(PairingError::BadCode)
        ));
    }

    #[tokio::test]
    async fn revoking_ends_the_session_and_the_token_at_once_and_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let t = tablets(dir.path());
        let issued = t.issue_code("x", Duration::from_secs(60));
        let paired = t.redeem(&issued.code).await.unwrap();
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
        let t = Tablets::open(&dir.path().join("t.db"), "http://x", metrics.clone()).unwrap();
        let issued = t.issue_code("x", Duration::from_secs(60));
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            assert!(matches!(
                t.redeem("WRONG").await,
                Err(PairingError::BadCode)
            ));
        }
        assert!(matches!(
            t.redeem(&issued.code).await,
            Err(PairingError::RateLimited)
        ));
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
        assert!(l.limited(30_000));
        assert!(!l.limited(61_001));
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
