//! Capacity: what the active families' pathways will ask of each role in the coming weeks.
//!
//! Each active family that is not on hold is stepped forward in memory by the engine itself,
//! on virtual time: its earliest timer fires, then the next, until the horizon of the
//! forecast. Every notice those steps send is counted against its recipient role, in the
//! local week it goes out. Nothing is written: the instances are copies.
//!
//! What is forecast is what the pathways' own clocks bring — handoffs' deadlines, activity
//! reminders and escalations, appointment reminders, the volunteers' visits, the horizon —
//! if nobody reports anything more. Events that professionals will report cannot be known
//! ahead; a family whose contact is recorded in time sends no escalation, so the escalations
//! counted are an upper bound.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Serialize;

use carepath_engine::step::Status;
use carepath_engine::{Input, step};

use crate::catalog::Catalog;
use crate::store::InstanceRow;

/// At most this many steps per family: a cron timer with a short period cannot run away.
const STEPS_PER_FAMILY: usize = 1000;

/// The weeks asked for reach past the end of the calendar.
#[derive(Debug, thiserror::Error)]
#[error("a forecast of {weeks} weeks from {from} reaches past the calendar's end")]
pub struct ForecastError {
    /// The weeks asked for.
    pub weeks: usize,
    /// From when.
    pub from: Timestamp,
}

/// Notices per role per local week, from this week on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Forecast {
    /// The Monday of each week, in the time zone given.
    pub weeks: Vec<Date>,
    /// Role → notices in each week (as many as `weeks`).
    pub roles: BTreeMap<String, Vec<u32>>,
    /// The families stepped forward.
    pub families: usize,
    /// Families left out: on hold (their clocks wait).
    pub held: usize,
    /// Families whose step failed, with the reason: counted up to the failure.
    pub failed: Vec<(i64, String)>,
    /// The moment it starts from.
    pub from: Timestamp,
}

impl Forecast {
    /// The notices of every role in week `i`.
    pub fn week_total(&self, i: usize) -> u32 {
        self.roles.values().map(|v| v[i]).sum()
    }

    /// Several forecasts of the same `span` (of several pathways) as one.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Forecast>, span: &Span) -> Forecast {
        let mut out = Forecast {
            roles: BTreeMap::new(),
            families: 0,
            held: 0,
            failed: Vec::new(),
            from: span.from,
            weeks: span.weeks.clone(),
        };
        for p in parts {
            out.families += p.families;
            out.held += p.held;
            out.failed.extend(p.failed.iter().cloned());
            for (role, counts) in &p.roles {
                let sum = out
                    .roles
                    .entry(role.clone())
                    .or_insert_with(|| vec![0; counts.len()]);
                for (s, n) in sum.iter_mut().zip(counts) {
                    *s += n;
                }
            }
        }
        out
    }
}

/// The weeks a forecast covers: from the local Monday of `from`'s week, `weeks` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The moment it starts from.
    pub from: Timestamp,
    /// Each week's Monday.
    pub weeks: Vec<Date>,
    /// The Monday after the last week, at midnight: where the forecast stops.
    pub end: Timestamp,
    tz: TimeZone,
}

impl Span {
    /// `weeks` local weeks from the week of `from`, in `tz`.
    pub fn new(from: Timestamp, weeks: usize, tz: &TimeZone) -> Result<Span, ForecastError> {
        let past_the_end = || ForecastError { weeks, from };
        let first = monday(from, tz);
        let list = (0..weeks)
            .map(|i| first.checked_add((7 * i as i64).days()))
            .collect::<Result<Vec<Date>, _>>()
            .map_err(|_| past_the_end())?;
        let end = first
            .checked_add((7 * weeks as i64).days())
            .and_then(|d| d.to_zoned_datetime(tz.clone()))
            .map_err(|_| past_the_end())?
            .timestamp();
        Ok(Span {
            from,
            weeks: list,
            end,
            tz: tz.clone(),
        })
    }

    /// The week `t` falls in, counted from the first.
    fn week(&self, t: Timestamp) -> Option<usize> {
        let first = *self.weeks.first()?;
        usize::try_from((monday(t, &self.tz) - first).get_days() / 7).ok()
    }
}

/// The forecast of each pathway's families apart, so that one computation serves viewers
/// limited to some pathways and viewers of all.
pub fn by_pathway(
    catalog: &Catalog,
    rows: &[InstanceRow],
    span: &Span,
) -> BTreeMap<String, Forecast> {
    let mut groups: BTreeMap<&str, Vec<&InstanceRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(r.pathway.as_str()).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(p, rows)| (p.to_string(), forecast(catalog, rows, span)))
        .collect()
}

/// The Monday of the week `t` falls in, locally.
fn monday(t: Timestamp, tz: &TimeZone) -> Date {
    let d = t.to_zoned_datetime(tz.clone()).date();
    d.saturating_sub(i64::from(d.weekday().to_monday_zero_offset()).days())
}

/// Steps `rows` forward from the span's start to its end and counts their notices by role and
/// week. Instances on versions the catalogue lacks are counted as failed.
pub fn forecast<'a>(
    catalog: &Catalog,
    rows: impl IntoIterator<Item = &'a InstanceRow>,
    span: &Span,
) -> Forecast {
    let weeks = span.weeks.len();
    let mut out = Forecast::sum([], span);
    for row in rows {
        if row.instance.status != Status::Active {
            continue;
        }
        if row.held_since.is_some() {
            out.held += 1;
            continue;
        }
        let Some(version) = catalog.version(row.pathway_version_id) else {
            out.failed
                .push((row.id, "its pathway version is not loaded".into()));
            continue;
        };
        out.families += 1;
        let mut instance = row.instance.clone();
        for _ in 0..STEPS_PER_FAMILY {
            let Some(next) = instance
                .timers
                .iter()
                .min_by_key(|t| (t.due, t.key.clone()))
            else {
                break;
            };
            if next.due >= span.end {
                break;
            }
            // A timer already due fires now: the worker would take it at once.
            let at = next.due.max(span.from);
            let input = Input::Timer {
                key: next.key.clone(),
            };
            match step(&version.checked, &instance, &input, at) {
                Ok(effects) => {
                    if let Some(week) = span.week(at).filter(|w| *w < weeks) {
                        for n in &effects.notices {
                            out.roles
                                .entry(n.to.clone())
                                .or_insert_with(|| vec![0; weeks])[week] += 1;
                        }
                    }
                    instance = effects.instance;
                    if instance.status != Status::Active {
                        break;
                    }
                }
                Err(e) => {
                    out.failed.push((row.id, e.to_string()));
                    break;
                }
            }
        }
    }
    out
}
