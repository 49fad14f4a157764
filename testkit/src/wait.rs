//! Polling until something holds, failing the test with what was awaited after a limit.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// Polls the async `check` until it returns true; panics with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the async `f` until it returns Some, and returns that; panics with `what` after
/// `within`. Slower polling than [`eventually`]: its callers ask whole processes over HTTP.
pub async fn eventually_some<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `f` (cheap, not async) from async code until it returns true; panics after `within`.
pub async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    eventually(what, within, || std::future::ready(f())).await;
}

/// Polls `f` on a plain thread until it returns true; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
