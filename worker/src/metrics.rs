//! Metrics for Prometheus: counters this process keeps, and gauges read from the database when
//! `/metrics` is scraped.
//!
//! Counters are per process (Prometheus sums them across processes); the gauges (instances,
//! outbox by status, timers waiting) are the database's, so every process reports the same.
//! No label carries a family's data: pathways, channels, statuses and routes only.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;

use carepath_engine::pathway::Channel;

use crate::store::{Delivery, OutboxRow, ReceiptState, Stats};

/// Upper bounds (seconds) of the timer lateness histogram's buckets.
const LATENESS_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];

/// What this process counted since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    transitions: AtomicU64,
    events_applied: AtomicU64,
    events_rejected: AtomicU64,
    lateness: Mutex<Histogram>,
    /// (channel, result) → count.
    deliveries: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENESS_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Counts steps taken (state transitions, including a state re-entered).
    pub fn transitions(&self, n: usize) {
        self.transitions.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts an event applied (`true`) or rejected.
    pub fn event(&self, applied: bool) {
        let counter = if applied {
            &self.events_applied
        } else {
            &self.events_rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how late a timer fired: from `due` to the commit at `fired`.
    pub fn lateness(&self, due: Timestamp, fired: Timestamp) {
        let seconds = (fired.as_millisecond() - due.as_millisecond()).max(0) as f64 / 1000.0;
        if let Ok(mut h) = self.lateness.lock() {
            for (i, bound) in LATENESS_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    /// Counts what a delivery round did, by channel.
    pub fn deliveries(&self, rows: &[OutboxRow], outcomes: &[Delivery]) {
        let channels: BTreeMap<i64, Option<Channel>> =
            rows.iter().map(|r| (r.id, r.channel)).collect();
        let Ok(mut map) = self.deliveries.lock() else {
            return;
        };
        for o in outcomes {
            let (id, result) = match o {
                Delivery::Sent { id, .. } => (id, "sent"),
                Delivery::Retry { id, .. } => (id, "retry"),
                Delivery::Dead { id, .. } => (id, "dead"),
                Delivery::Held { id, .. } => (id, "held"),
                Delivery::Skipped { id, .. } => (id, "skipped"),
                Delivery::Expired { id, .. } => (id, "expired"),
            };
            let channel = channels
                .get(id)
                .copied()
                .flatten()
                .map_or("none", Channel::as_str);
            *map.entry((channel, result)).or_default() += 1;
        }
    }

    /// Counts an SMS gateway's receipt, by what it says.
    pub fn receipt(&self, state: ReceiptState) {
        let result = match state {
            ReceiptState::Pending => "receipt_pending",
            ReceiptState::Delivered => "receipt_delivered",
            ReceiptState::Failed => "receipt_failed",
            ReceiptState::Expired => "receipt_expired",
        };
        if let Ok(mut map) = self.deliveries.lock() {
            *map.entry(("sms", result)).or_default() += 1;
        }
    }

    /// Counts an HTTP request by its route template (never its path: ids stay out).
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// The Prometheus text exposition of these counters and `stats`, read at `now`.
    pub fn render(&self, stats: &Stats, now: Timestamp) -> String {
        let mut out = String::new();
        push_family(
            &mut out,
            "carepath_transitions_total",
            "counter",
            "Steps taken by this process (events and timers).",
        );
        let _ = writeln!(
            out,
            "carepath_transitions_total {}",
            self.transitions.load(Ordering::Relaxed)
        );

        push_family(
            &mut out,
            "carepath_events_total",
            "counter",
            "Events reported to this process, by outcome.",
        );
        for (outcome, counter) in [
            ("applied", &self.events_applied),
            ("rejected", &self.events_rejected),
        ] {
            let _ = writeln!(
                out,
                "carepath_events_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }

        push_family(
            &mut out,
            "carepath_timer_lateness_seconds",
            "histogram",
            "How late timers fired: from due time to the commit that fired them.",
        );
        if let Ok(h) = self.lateness.lock() {
            for (bound, n) in LATENESS_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "carepath_timer_lateness_seconds_bucket{{le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "carepath_timer_lateness_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 carepath_timer_lateness_seconds_sum {}\n\
                 carepath_timer_lateness_seconds_count {}",
                h.count, h.sum, h.count
            );
        }

        push_family(
            &mut out,
            "carepath_deliveries_total",
            "counter",
            "Delivery attempts and decisions by this process, by channel and result.",
        );
        if let Ok(map) = self.deliveries.lock() {
            for ((channel, result), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "carepath_deliveries_total{{channel=\"{channel}\",result=\"{result}\"}} {n}"
                );
            }
        }

        push_family(
            &mut out,
            "carepath_http_requests_total",
            "counter",
            "HTTP requests answered by this process, by route and status.",
        );
        if let Ok(map) = self.requests.lock() {
            for ((route, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "carepath_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    label(route)
                );
            }
        }

        push_family(
            &mut out,
            "carepath_instances",
            "gauge",
            "Instances in the database, by pathway and status.",
        );
        for (pathway, status, n) in &stats.instances {
            let _ = writeln!(
                out,
                "carepath_instances{{pathway=\"{}\",status=\"{}\"}} {n}",
                label(pathway),
                label(status)
            );
        }
        push_family(
            &mut out,
            "carepath_instances_held",
            "gauge",
            "Instances on hold.",
        );
        let _ = writeln!(out, "carepath_instances_held {}", stats.held);

        push_family(
            &mut out,
            "carepath_outbox_notices",
            "gauge",
            "Outbox notices in the database, by status.",
        );
        for (status, n) in &stats.outbox {
            let _ = writeln!(
                out,
                "carepath_outbox_notices{{status=\"{}\"}} {n}",
                label(status)
            );
        }

        push_family(
            &mut out,
            "carepath_timers_pending",
            "gauge",
            "Timers armed and not yet fired.",
        );
        let _ = writeln!(out, "carepath_timers_pending {}", stats.timers);
        push_family(
            &mut out,
            "carepath_timers_due",
            "gauge",
            "Timers already due that no worker has fired yet (instances on hold excluded).",
        );
        let _ = writeln!(out, "carepath_timers_due {}", stats.timers_due);
        push_family(
            &mut out,
            "carepath_timers_oldest_due_seconds",
            "gauge",
            "How long the earliest of those has been due: the worker's lag now.",
        );
        let lag = stats.oldest_due.map_or(0.0, |d| {
            (now.as_millisecond() - d.as_millisecond()).max(0) as f64 / 1000.0
        });
        let _ = writeln!(out, "carepath_timers_oldest_due_seconds {lag}");
        out
    }
}

fn push_family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value for the text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_lands_in_cumulative_buckets() {
        let m = Metrics::default();
        let due = Timestamp::UNIX_EPOCH;
        m.lateness(due, Timestamp::from_millisecond(20).unwrap_or(due));
        m.lateness(due, Timestamp::from_millisecond(2_000).unwrap_or(due));
        let text = m.render(&Stats::default(), due);
        assert!(text.contains("carepath_timer_lateness_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("carepath_timer_lateness_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("carepath_timer_lateness_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("carepath_timer_lateness_seconds_count 2\n"));
        assert!(text.contains("carepath_timer_lateness_seconds_sum 2.02\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
