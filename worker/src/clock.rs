//! Clocks. Every component asks a [`Clock`] for the time, so tests, the simulator and the demo
//! run on virtual or accelerated time and nothing ever sleeps to let time pass.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

/// Where the time comes from.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;

    /// How long to wait in real time until this clock reads `at`.
    fn real_wait(&self, at: Timestamp) -> Duration;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn real_wait(&self, at: Timestamp) -> Duration {
        Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct VirtualClock(Mutex<Timestamp>);

impl VirtualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        VirtualClock(Mutex::new(start))
    }

    /// Moves the clock to `at`; it never goes back.
    pub fn advance_to(&self, at: Timestamp) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if at > *now {
            *now = at;
        }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Zero for what is due; for anything later, "not by itself": whoever drives the clock
    /// moves it on, and a worker on a standing clock sleeps until woken.
    fn real_wait(&self, at: Timestamp) -> Duration {
        if at <= self.now() {
            Duration::ZERO
        } else {
            Duration::MAX
        }
    }
}

/// A clock that starts at a chosen moment and runs `factor` times faster than real time: the
/// demo shows months of a pathway in a minute, with the real worker loop.
#[derive(Debug)]
pub struct ScaledClock {
    start: Timestamp,
    real_start: Instant,
    factor: f64,
}

impl ScaledClock {
    /// A clock reading `start` now and running `factor` times faster than real time.
    pub fn new(start: Timestamp, factor: f64) -> Self {
        ScaledClock {
            start,
            real_start: Instant::now(),
            factor: factor.max(1.0),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        let real = self.real_start.elapsed().as_secs_f64();
        let virtual_ =
            SignedDuration::try_from_secs_f64(real * self.factor).unwrap_or(SignedDuration::MAX);
        self.start.checked_add(virtual_).unwrap_or(Timestamp::MAX)
    }

    fn real_wait(&self, at: Timestamp) -> Duration {
        let ahead = at.duration_since(self.now()).as_secs_f64();
        if ahead <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(ahead / self.factor).unwrap_or(Duration::MAX)
    }
}

/// Parses a `--clock` option: `system`, `fixed:TIMESTAMP` (a virtual clock that stands still:
/// everything due by then runs, nothing later), or `scaled:TIMESTAMP:FACTOR`.
pub fn parse(spec: &str) -> Result<std::sync::Arc<dyn Clock>, String> {
    let bad = |why: String| {
        format!(
            "bad clock {spec:?}: {why}; use system, fixed:2027-03-01T09:00:00Z or scaled:2027-03-01T09:00:00Z:3600"
        )
    };
    let time = |s: &str| s.parse::<Timestamp>().map_err(|e| bad(e.to_string()));
    if spec == "system" {
        return Ok(std::sync::Arc::new(SystemClock));
    }
    if let Some(at) = spec.strip_prefix("fixed:") {
        return Ok(std::sync::Arc::new(VirtualClock::new(time(at)?)));
    }
    if let Some(rest) = spec.strip_prefix("scaled:") {
        let (at, factor) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("no factor".into()))?;
        let factor: f64 = factor
            .parse()
            .map_err(|_| bad("factor is not a number".into()))?;
        return Ok(std::sync::Arc::new(ScaledClock::new(time(at)?, factor)));
    }
    Err(bad("unknown kind".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_clock_moves_only_forward_and_waits_only_for_what_is_due() {
        let t0: Timestamp = "2027-03-28T00:00:00Z".parse().expect("time");
        let c = VirtualClock::new(t0);
        c.advance_to(t0 + SignedDuration::from_hours(5));
        c.advance_to(t0);
        assert_eq!(c.now(), t0 + SignedDuration::from_hours(5));
        assert_eq!(c.real_wait(t0), Duration::ZERO);
        assert_eq!(
            c.real_wait(t0 + SignedDuration::from_hours(6)),
            Duration::MAX
        );
    }

    #[test]
    fn a_scaled_clock_waits_the_scaled_time() {
        let t0: Timestamp = "2027-03-28T00:00:00Z".parse().expect("time");
        let c = ScaledClock::new(t0, 3600.0);
        // One virtual hour ahead is at most one real second away.
        let wait = c.real_wait(t0 + SignedDuration::from_hours(1));
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(c.now() >= t0);
    }

    #[test]
    fn clock_options_parse_or_say_what_is_wrong() {
        assert!(parse("system").is_ok());
        assert_eq!(
            parse("fixed:2027-03-01T09:00:00Z").expect("fixed").now(),
            "2027-03-01T09:00:00Z".parse::<Timestamp>().expect("time")
        );
        assert!(parse("scaled:2027-03-01T09:00:00Z:60").is_ok());
        let e = parse("fixed:yesterday").err().expect("error");
        assert!(e.contains("fixed:2027"), "{e}");
    }
}
