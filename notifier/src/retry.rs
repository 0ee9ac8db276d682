//! When to try a failed send again: exponential backoff with jitter, and when to stop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[delivery]` in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts before a notice becomes a dead letter.
    pub max_attempts: u32,
    /// Seconds before the second attempt; each further wait doubles.
    pub backoff_secs: u64,
    /// The longest wait between attempts, in seconds.
    pub backoff_max_secs: u64,
    /// How long a worker's claim on the notices it is sending lasts, in seconds. A worker that
    /// dies mid-send leaves claims that run out after this long; then another worker sends
    /// those notices again, under the same key. Longer than a round of sending takes.
    pub lease_secs: u64,
}

impl Default for RetryPolicy {
    /// Eight attempts over about four hours: an SMTP server's restart or a gateway's bad
    /// afternoon is ridden out; a notice that cannot go is in front of a person the same day.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            backoff_secs: 30,
            backoff_max_secs: 3600,
            lease_secs: 900,
        }
    }
}

impl RetryPolicy {
    /// How long to wait after failed attempt number `attempt` (1 for the first), or `None`
    /// when the attempts are used up. `jitter` in `[0, 1)` spreads the retries of many
    /// notices that failed together ("equal jitter": between half and all of the backoff).
    pub fn next(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .backoff_secs
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_secs)
            .max(1);
        let jitter = jitter.clamp(0.0, 1.0);
        Some(Duration::from_secs_f64(full as f64 * (0.5 + jitter / 2.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let p = RetryPolicy::default();
        let top = |a| p.next(a, 1.0).map(|d| d.as_secs());
        assert_eq!((top(1), top(2), top(3)), (Some(30), Some(60), Some(120)));
        assert_eq!(top(7), Some(1920));
        assert_eq!(
            p.next(7, 0.0).map(|d| d.as_secs()),
            Some(960),
            "half at the least"
        );
        assert_eq!(top(8), None, "eight attempts, then a dead letter");
        let capped = RetryPolicy {
            max_attempts: 20,
            ..p
        };
        assert_eq!(capped.next(15, 1.0).map(|d| d.as_secs()), Some(3600));
    }
}
