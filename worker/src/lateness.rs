//! How late timers fire: the gap between a timer's due time and the commit that fired it.
//!
//! The worker keeps these in a fixed-size histogram, so a worker that runs for months uses the
//! same memory as one that ran a minute, and a report can give p50/p99 without keeping every
//! sample. Resolution is 10 µs below 1 ms, 100 µs below 100 ms and 10 ms below 10 s; anything
//! later is counted, and the worst case is kept exactly.

use std::time::Duration;

use jiff::Timestamp;

const FINE: u64 = 1_000; // µs: 10 µs buckets below this
const MEDIUM: u64 = 100_000; // µs: 100 µs buckets below this
const COARSE: u64 = 10_000_000; // µs: 10 ms buckets below this
const BUCKETS: usize = (FINE / 10 + (MEDIUM - FINE) / 100 + (COARSE - MEDIUM) / 10_000) as usize;

/// A histogram of lateness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lateness {
    buckets: Vec<u64>,
    over: u64,
    count: u64,
    max: Duration,
}

impl Default for Lateness {
    fn default() -> Self {
        Lateness {
            buckets: vec![0; BUCKETS],
            over: 0,
            count: 0,
            max: Duration::ZERO,
        }
    }
}

impl Lateness {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a timer due at `due` that fired at `fired`. A timer that fired early (which
    /// only a clock stepping backwards can cause) counts as on time.
    pub fn record(&mut self, due: Timestamp, fired: Timestamp) {
        let late = fired.duration_since(due);
        let late = if late.is_negative() {
            Duration::ZERO
        } else {
            late.unsigned_abs()
        };
        self.count += 1;
        self.max = self.max.max(late);
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        let bucket = if us < FINE {
            us / 10
        } else if us < MEDIUM {
            FINE / 10 + (us - FINE) / 100
        } else if us < COARSE {
            FINE / 10 + (MEDIUM - FINE) / 100 + (us - MEDIUM) / 10_000
        } else {
            self.over += 1;
            return;
        };
        self.buckets[bucket as usize] += 1;
    }

    /// Adds another histogram's samples to this one.
    pub fn merge(&mut self, other: &Lateness) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.over += other.over;
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The worst lateness seen.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The lateness below which a fraction `q` (0.0–1.0) of timers fired: the upper edge of
    /// the bucket that holds the quantile, so it never understates. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_edge(i as u64).min(self.max));
            }
        }
        Some(self.max)
    }

    /// A lateness in milliseconds, as reports print it.
    pub fn show(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

fn upper_edge(bucket: u64) -> Duration {
    let fine = FINE / 10;
    let medium = (MEDIUM - FINE) / 100;
    let us = if bucket < fine {
        (bucket + 1) * 10
    } else if bucket < fine + medium {
        FINE + (bucket - fine + 1) * 100
    } else {
        MEDIUM + (bucket - fine - medium + 1) * 10_000
    };
    Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).expect("in range")
    }

    #[test]
    fn quantiles_bound_the_samples_from_above_within_a_bucket() {
        let mut h = Lateness::new();
        // 98 timers 2.05 ms late, one 40 ms, one 3 s.
        for i in 0..98 {
            h.record(
                at(i * 1000),
                at(i * 1000) + SignedDuration::from_micros(2050),
            );
        }
        h.record(at(0), at(40));
        h.record(at(0), at(3000));
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(2100)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_micros(40_100)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(3)));
        assert_eq!(h.max(), Duration::from_secs(3));
    }

    #[test]
    fn early_and_very_late_timers_are_counted() {
        let mut h = Lateness::new();
        h.record(at(1000), at(0));
        h.record(at(0), at(3_600_000));
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(10)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(3600)));
        let mut total = Lateness::new();
        total.merge(&h);
        total.merge(&h);
        assert_eq!(total.count(), 4);
        assert_eq!(Lateness::new().quantile(0.5), None);
    }
}
