//! The store-wide alert rate limit: a token bucket in integer arithmetic, so that "at most
//! `burst + per_minute × window / 1 min` alerts in any window" holds exactly (the property test
//! checks it).

const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: u64,
    /// Capacity in tokens.
    burst: u64,
    /// Tokens × 60 000, so refill by `per_minute` per millisecond stays an integer.
    level: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// `per_minute = 0` means unlimited.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let burst = u64::from(burst.max(1));
        Self {
            per_minute: u64::from(per_minute),
            burst,
            level: burst * MINUTE_MS,
            last_ms: 0,
        }
    }

    pub fn unlimited(&self) -> bool {
        self.per_minute == 0
    }

    /// Takes a token if one is available at `now_ms` (monotonic; earlier times are treated as
    /// `last`).
    pub fn take(&mut self, now_ms: u64) -> bool {
        if self.unlimited() {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.per_minute))
            .min(self.burst * MINUTE_MS);
        if self.level >= MINUTE_MS {
            self.level -= MINUTE_MS;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_refills_at_the_rate() {
        let mut b = TokenBucket::new(6, 3);
        assert!((0..3).all(|_| b.take(0)));
        assert!(!b.take(0));
        assert!(!b.take(9_999));
        assert!(b.take(10_000), "one token per 10 s at 6/min");
        assert!(!b.take(10_001));
    }

    #[test]
    fn zero_per_minute_is_unlimited() {
        let mut b = TokenBucket::new(0, 0);
        assert!((0..10_000).all(|_| b.take(0)));
    }
}
