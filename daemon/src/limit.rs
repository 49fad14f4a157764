//! A fixed one-minute window of failures: how both daemons slow down guessing (tablet pairing
//! codes at the gateway, enrolment codes at head office). Times are the caller's milliseconds,
//! so tests need no clock.

const WINDOW_MS: i64 = 60_000;

/// Failures counted in the current one-minute window.
#[derive(Debug, Default, Clone)]
pub struct Window {
    start_ms: i64,
    failures: u32,
}

impl Window {
    fn roll(&mut self, now_ms: i64) {
        if now_ms - self.start_ms >= WINDOW_MS {
            self.start_ms = now_ms;
            self.failures = 0;
        }
    }

    /// Whether `max` failures have been counted in the window that holds `now_ms`.
    pub fn limited(&mut self, now_ms: i64, max: u32) -> bool {
        self.roll(now_ms);
        self.failures >= max
    }

    pub fn fail(&mut self, now_ms: i64) {
        self.roll(now_ms);
        self.failures = self.failures.saturating_add(1);
    }

    /// Whether the window is still the one that holds `now_ms` (a stale one can be forgotten).
    pub fn current(&self, now_ms: i64) -> bool {
        now_ms - self.start_ms < WINDOW_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_opens_again_after_a_minute() {
        let mut w = Window::default();
        for _ in 0..10 {
            w.fail(1_000);
        }
        assert!(w.limited(30_000, 10));
        assert!(!w.limited(30_000, 11));
        // The window began at 0, the first roll: it holds times up to 59,999.
        assert!(w.current(59_999));
        assert!(!w.current(60_000));
        assert!(!w.limited(61_001, 10));
    }
}
