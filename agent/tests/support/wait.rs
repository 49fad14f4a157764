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
