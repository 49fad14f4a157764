//! RSSI smoothing: a median of the last three readings fed into an exponential moving average
//! whose weight depends on the time since the previous reading.
//!
//! Why this filter:
//! - BLE RSSI is noisy in two ways: a steady jitter of a few dB, and single readings 10–20 dB off
//!   (a body between phone and antenna, a reflection, an advert heard on a worse channel). The
//!   median of three throws the lone outlier away before it reaches the average; a plain average
//!   would let it drag the value across a threshold.
//! - Adverts arrive irregularly (phones throttle in the background, 15 % or more are lost, iBeacons
//!   send at 10 Hz while phones send at 1 Hz). A fixed-alpha average would smooth a 10 Hz beacon
//!   ten times more slowly in readings but ten times faster in time than a 1 Hz phone. With
//!   `alpha = 1 - exp(-dt / tau)` every device is smoothed over the same time constant `tau`,
//!   and a reading after a long gap counts for almost everything, as it should.
//! - A Kalman filter with a constant-position model reduces to this average with an adaptive gain;
//!   nothing here models velocity, so the extra state would buy nothing.

/// Readings closer together than this still move the average a little (two adapters in one
/// zone may report the same advert in the same millisecond).
const MIN_DT_MS: u64 = 100;

#[derive(Debug, Clone)]
pub struct RssiFilter {
    recent: [i16; 3],
    len: usize,
    next: usize,
    value: f32,
    last_ms: u64,
}

impl RssiFilter {
    /// A filter whose first value is the first reading.
    pub fn new(rssi: i16, at_ms: u64) -> Self {
        Self {
            recent: [rssi; 3],
            len: 1,
            next: 1,
            value: f32::from(rssi),
            last_ms: at_ms,
        }
    }

    /// The smoothed RSSI, dBm.
    pub fn value(&self) -> f32 {
        self.value
    }

    /// Adds a reading taken at `at_ms`; `tau_ms` is the time constant. Returns the new value.
    pub fn update(&mut self, rssi: i16, at_ms: u64, tau_ms: u64) -> f32 {
        let dt = at_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(at_ms);
        // Readings from long ago say nothing about the outlier-ness of this one.
        if dt > tau_ms.saturating_mul(3) {
            self.len = 0;
            self.next = 0;
        }
        self.recent[self.next] = rssi;
        self.next = (self.next + 1) % 3;
        self.len = (self.len + 1).min(3);
        let m = self.median();
        let alpha = if tau_ms == 0 {
            1.0
        } else {
            1.0 - (-(dt.max(MIN_DT_MS) as f64) / tau_ms as f64).exp()
        };
        self.value += (alpha as f32) * (m - self.value);
        self.value
    }

    fn median(&self) -> f32 {
        let r = &self.recent;
        match self.len {
            0 | 1 => f32::from(r[(self.next + 2) % 3]),
            2 => (f32::from(r[0]) + f32::from(r[1])) / 2.0,
            _ => {
                let (a, b, c) = (r[0], r[1], r[2]);
                f32::from(a.max(b).min(a.min(b).max(c)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_outlier_does_not_move_the_value() {
        let mut f = RssiFilter::new(-60, 0);
        for t in 1..10 {
            f.update(-60, t * 1000, 5000);
        }
        let v = f.update(-95, 10_000, 5000);
        assert!((v - -60.0).abs() < 0.01, "{v}");
        let v = f.update(-60, 11_000, 5000);
        assert!((v - -60.0).abs() < 0.01, "{v}");
    }

    #[test]
    fn a_real_change_is_followed_within_a_few_time_constants() {
        let mut f = RssiFilter::new(-60, 0);
        let mut v = 0.0;
        for t in 1..=15 {
            v = f.update(-80, t * 1000, 5000);
        }
        assert!(v < -77.0 && v > -80.5, "{v}");
    }

    #[test]
    fn the_weight_of_a_reading_depends_on_time_not_on_the_advert_rate() {
        // 10 Hz and 1 Hz devices stepping from -60 to -70 for two seconds end close together.
        let mut fast = RssiFilter::new(-60, 0);
        let mut slow = RssiFilter::new(-60, 0);
        for t in 1..=20 {
            fast.update(-70, t * 100, 5000);
        }
        for t in 1..=2 {
            slow.update(-70, t * 1000, 5000);
        }
        assert!(
            (fast.value() - slow.value()).abs() < 1.0,
            "{} vs {}",
            fast.value(),
            slow.value()
        );
    }

    #[test]
    fn after_a_long_gap_the_new_reading_dominates() {
        let mut f = RssiFilter::new(-60, 0);
        let v = f.update(-80, 120_000, 5000);
        assert!((v - -80.0).abs() < 0.01, "{v}");
    }
}
