/// The agent's clock: monotonic milliseconds since start (tokio's clock, which tests can pause)
/// and the wall-clock time they correspond to, for event timestamps.
#[derive(Debug, Clone)]
pub struct Clock {
    start: tokio::time::Instant,
    wall_at_start_ms: i64,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            wall_at_start_ms: crate::now_ms(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Unix milliseconds of a monotonic reading.
    pub fn wall_ms(&self, mono_ms: u64) -> i64 {
        self.wall_at_start_ms + mono_ms as i64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
