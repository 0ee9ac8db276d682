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
}

/// The Monday of the week `t` falls in, locally.
fn monday(t: Timestamp, tz: &TimeZone) -> Date {
    let d = t.to_zoned_datetime(tz.clone()).date();
    d.saturating_sub(i64::from(d.weekday().to_monday_zero_offset()).days())
}

/// Steps `rows` forward from `now` for `weeks` local weeks (the current one first) and counts
/// their notices by role and week. Instances on versions the catalogue lacks are counted as
/// failed.
pub fn forecast(
    catalog: &Catalog,
    rows: &[InstanceRow],
    now: Timestamp,
    weeks: usize,
    tz: &TimeZone,
) -> Forecast {
    let first = monday(now, tz);
    let week_list: Vec<Date> = (0..weeks)
        .filter_map(|i| first.checked_add((7 * i as i64).days()).ok())
        .collect();
    let end = week_list
        .last()
        .and_then(|d| d.checked_add(7.days()).ok())
        .and_then(|d| d.to_zoned_datetime(tz.clone()).ok())
        .map_or(now, |z| z.timestamp());
    let mut out = Forecast {
        weeks: week_list,
        roles: BTreeMap::new(),
        families: 0,
        held: 0,
        failed: Vec::new(),
        from: now,
    };
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
            if next.due >= end {
                break;
            }
            // A timer already due fires now: the worker would take it at once.
            let at = next.due.max(now);
            let input = Input::Timer {
                key: next.key.clone(),
            };
            match step(&version.checked, &instance, &input, at) {
                Ok(effects) => {
                    let week = (monday(at, tz) - first).get_days() / 7;
                    for n in &effects.notices {
                        let counts = out
                            .roles
                            .entry(n.to.clone())
                            .or_insert_with(|| vec![0; weeks]);
                        if let Some(c) = usize::try_from(week).ok().and_then(|w| counts.get_mut(w))
                        {
                            *c += 1;
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
