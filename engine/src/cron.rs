//! Cron schedules as coordinators write them: the five fields of crontab(5).
//!
//! `minute hour day-of-month month day-of-week`, read in the pathway's time zone. Day of week
//! counts from Sunday: `0` and `7` are Sunday, `1` is Monday, and the names `SUN`…`SAT` may be
//! used, as may `JAN`…`DEC` for months. Each field is a list of `*`, `N`, `N-M`, `*/S` or
//! `N-M/S`. When both day fields are restricted (neither starts with `*`), a day matches when
//! either matches, as crontab(5) says. `@yearly`, `@monthly`, `@weekly`, `@daily` (`@midnight`)
//! and `@hourly` stand for their usual five fields.
//!
//! Daylight saving: a time that does not exist on the spring-forward day fires once, at the
//! first valid local time after the gap (`30 2 * * *` fires at 03:00 that day); a time that
//! occurs twice on the autumn day fires once, at its first occurrence.
//!
//! ```
//! use carepath_engine::cron::Cron;
//! let tz = jiff::tz::TimeZone::get("Europe/Copenhagen").unwrap();
//! let mondays = Cron::parse("0 9 * * 1").unwrap();
//! let from: jiff::Timestamp = "2027-03-03T12:00:00Z".parse().unwrap(); // a Wednesday
//! let next = mondays.next_after(from, &tz).unwrap();
//! assert_eq!(next.to_string(), "2027-03-08T08:00:00Z"); // Monday 09:00 local
//! ```

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;

/// How far ahead [`Cron::next_after`] looks for a matching day: eight years, so that a
/// schedule on 29 February always finds a leap year.
const SEARCH_DAYS: usize = 8 * 366;

/// A parsed five-field schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether the day-of-month field starts with `*` (it then does not restrict).
    days_star: bool,
    /// Whether the day-of-week field starts with `*`.
    weekdays_star: bool,
}

/// Why a schedule was refused: says which field and what was allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Names count from this number (`SUN` is 0, `JAN` is 1).
    names_from: u32,
    note: &'static str,
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
        note: "",
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
        note: "",
    },
    FieldSpec {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
        note: "",
    },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
        names_from: 1,
        note: " or JAN-DEC",
    },
    FieldSpec {
        name: "day of week",
        min: 0,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
        names_from: 0,
        note: " or SUN-SAT (0 and 7 are Sunday)",
    },
];

impl Cron {
    /// Parses a schedule in the crontab(5) dialect described in the module documentation.
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError(format!(
                    "unknown shorthand {other:?}: use @yearly, @monthly, @weekly, @daily or @hourly, or five fields"
                )));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            let extra = if fields.len() == 6 || fields.len() == 7 {
                ": carepath reads standard crontab schedules, without a seconds or year field"
            } else {
                ""
            };
            return Err(CronError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}{extra}",
                fields.len()
            )));
        }
        let mut sets = [0u64; 5];
        for (i, (field, spec)) in fields.iter().zip(&FIELDS).enumerate() {
            sets[i] = parse_field(field, spec)?;
        }
        // Day of week 7 is Sunday, like 0.
        let mut weekdays = sets[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Cron {
            minutes: sets[0],
            hours: sets[1] as u32,
            days: sets[2] as u32,
            months: sets[3] as u16,
            weekdays: weekdays as u8,
            days_star: fields[2].starts_with('*'),
            weekdays_star: fields[4].starts_with('*'),
        })
    }

    /// Whether the schedule fires on `date` at all.
    pub fn matches_day(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << weekday_number(date.weekday())) != 0;
        match (self.days_star, self.weekdays_star) {
            (false, false) => dom || dow,
            (true, false) => dow,
            (false, true) => dom,
            (true, true) => true,
        }
    }

    /// The first moment strictly after `from` that the schedule names, read in `tz`; `None`
    /// when no day in the next eight years matches (`0 0 30 2 *` never does).
    pub fn next_after(&self, from: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut date = tz.to_datetime(from).date();
        for _ in 0..SEARCH_DAYS {
            if self.matches_day(date) {
                for hour in bits(u64::from(self.hours)) {
                    for minute in bits(self.minutes) {
                        let local = date.at(hour as i8, minute as i8, 0, 0);
                        if let Ok(t) = crate::time::local(local, tz)
                            && t > from
                        {
                            return Some(t);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn weekday_number(w: Weekday) -> u32 {
    w.to_sunday_zero_offset() as u32
}

/// The set bits of `set`, lowest first.
fn bits(set: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |i| set & (1u64 << i) != 0)
}

fn parse_field(field: &str, spec: &FieldSpec) -> Result<u64, CronError> {
    let mut set = 0u64;
    for element in field.split(',') {
        set |= parse_element(element, spec).map_err(|why| {
            CronError(format!(
                "{} {element:?}: {why} (allowed: {}-{}{}, *, lists, ranges and steps such as */15)",
                spec.name, spec.min, spec.max, spec.note
            ))
        })?;
    }
    Ok(set)
}

fn parse_element(element: &str, spec: &FieldSpec) -> Result<u64, String> {
    if element.is_empty() {
        return Err("empty list item".into());
    }
    let (range, step) = match element.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s
                .parse()
                .map_err(|_| format!("step {s:?} is not a whole number"))?;
            if step == 0 || step > spec.max {
                return Err(format!("step {step} is out of range 1-{}", spec.max));
            }
            (r, Some(step))
        }
        None => (element, None),
    };
    let (lo, hi) = if range == "*" {
        (spec.min, spec.max)
    } else if let Some((a, b)) = range.split_once('-') {
        let (a, b) = (value(a, spec)?, value(b, spec)?);
        if a > b {
            return Err(format!("range {a}-{b} runs backwards"));
        }
        (a, b)
    } else {
        let v = value(range, spec)?;
        if step.is_some() {
            return Err("a step goes after * or a range, such as */15 or 8-18/2".into());
        }
        (v, v)
    };
    // `*` in day of week means 0-6: 7 would only repeat Sunday.
    let hi = if range == "*" && spec.max == 7 { 6 } else { hi };
    let mut set = 0u64;
    let mut v = lo;
    while v <= hi {
        set |= 1 << v;
        v += step.unwrap_or(1);
    }
    Ok(set)
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + spec.names_from);
    }
    let v: u32 = text.parse().map_err(|_| {
        if spec.names.is_empty() {
            format!("{text:?} is not a number")
        } else {
            format!("{text:?} is neither a number nor a name")
        }
    })?;
    if v < spec.min || v > spec.max {
        return Err(format!("{v} is out of range"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cph() -> TimeZone {
        TimeZone::get("Europe/Copenhagen").unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(cron: &str, from: &str) -> String {
        let t = Cron::parse(cron)
            .unwrap()
            .next_after(ts(from), &cph())
            .unwrap();
        t.to_zoned_datetime(cph())
            .strftime("%a %Y-%m-%d %H:%M %:z")
            .to_string()
    }

    #[test]
    fn weekdays_count_from_sunday_as_in_crontab() {
        // 2027-03-03 is a Wednesday.
        assert_eq!(
            next("0 9 * * 1", "2027-03-03T12:00:00Z"),
            "Mon 2027-03-08 09:00 +01:00"
        );
        assert_eq!(
            next("0 9 * * 0", "2027-03-03T12:00:00Z"),
            "Sun 2027-03-07 09:00 +01:00"
        );
        assert_eq!(
            next("0 9 * * 7", "2027-03-03T12:00:00Z"),
            "Sun 2027-03-07 09:00 +01:00"
        );
        assert_eq!(
            next("0 9 * * MON", "2027-03-03T12:00:00Z"),
            "Mon 2027-03-08 09:00 +01:00"
        );
        assert_eq!(
            next("0 9 * * sat", "2027-03-03T12:00:00Z"),
            "Sat 2027-03-06 09:00 +01:00"
        );
        // 1-5 is Monday to Friday: from Friday evening, the next is Monday.
        assert_eq!(
            next("0 9 * * 1-5", "2027-03-05T12:00:00Z"),
            "Mon 2027-03-08 09:00 +01:00"
        );
        assert_eq!(
            next("0 9 * * 5-7", "2027-03-06T12:00:00Z"),
            "Sun 2027-03-07 09:00 +01:00"
        );
    }

    #[test]
    fn day_fields_are_either_when_both_are_restricted() {
        // The 1st of the month or any Friday; from Wed 3 March the first is Fri 5 March.
        assert_eq!(
            next("0 9 1 * 5", "2027-03-03T12:00:00Z"),
            "Fri 2027-03-05 09:00 +01:00"
        );
        // With a star in day of week, only the day of month counts.
        assert_eq!(
            next("0 9 1 * *", "2027-03-03T12:00:00Z"),
            "Thu 2027-04-01 09:00 +02:00"
        );
        // */2 in day of week starts with a star, so it does not widen the days of month.
        assert_eq!(
            next("0 9 1 * */2", "2027-03-03T12:00:00Z"),
            "Thu 2027-04-01 09:00 +02:00"
        );
    }

    #[test]
    fn lists_ranges_steps_and_shorthands() {
        assert_eq!(
            next("*/20 8-9 * * *", "2027-03-03T07:30:00Z"),
            "Wed 2027-03-03 08:40 +01:00"
        );
        assert_eq!(
            next("0 8-18/4 * * *", "2027-03-03T11:30:00Z"),
            "Wed 2027-03-03 16:00 +01:00"
        );
        assert_eq!(
            next("0 9 * JAN,jul *", "2027-03-03T12:00:00Z"),
            "Thu 2027-07-01 09:00 +02:00"
        );
        assert_eq!(
            next("@weekly", "2027-03-03T12:00:00Z"),
            "Sun 2027-03-07 00:00 +01:00"
        );
        assert_eq!(
            next("@daily", "2027-03-03T12:00:00Z"),
            "Thu 2027-03-04 00:00 +01:00"
        );
    }

    #[test]
    fn refuses_with_the_field_and_what_is_allowed() {
        let e = |s: &str| Cron::parse(s).unwrap_err().to_string();
        assert_eq!(
            e("0 0 9 * * 1"),
            "expected 5 fields (minute hour day-of-month month day-of-week), found 6: carepath reads standard crontab schedules, without a seconds or year field"
        );
        assert!(e("0 0 9 * * 1 2027").contains("found 7"));
        assert!(e("every tuesday").contains("found 2"));
        assert!(
            e("0 25 * * *").starts_with("hour \"25\": 25 is out of range"),
            "{}",
            e("0 25 * * *")
        );
        assert!(
            e("0 9 * * 8").contains("0 and 7 are Sunday"),
            "{}",
            e("0 9 * * 8")
        );
        assert!(e("0 9 * * FUN").contains("neither a number nor a name"));
        assert!(e("0 9 5-1 * *").contains("runs backwards"));
        assert!(e("*/0 9 * * *").contains("step 0"));
        assert!(e("5/15 9 * * *").contains("a step goes after"));
        assert!(e("0 9 * * 1,,2").contains("empty list item"));
        assert!(e("@reboot").contains("unknown shorthand"));
    }

    #[test]
    fn a_schedule_that_never_fires_has_no_next() {
        let never = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(never.next_after(ts("2027-01-01T00:00:00Z"), &cph()), None);
        let leap = Cron::parse("0 9 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(ts("2027-01-01T00:00:00Z"), &cph()),
            Some(ts("2028-02-29T08:00:00Z"))
        );
    }

    #[test]
    fn spring_gap_fires_once_at_the_first_valid_time_after_it() {
        // 2027-03-28: 02:00 local jumps to 03:00.
        assert_eq!(
            next("30 2 * * *", "2027-03-27T12:00:00Z"),
            "Sun 2027-03-28 03:00 +02:00"
        );
        // Every quarter hour in the gap collapses onto 03:00, once; then 03:15 as usual.
        let c = Cron::parse("*/15 2-3 * * *").unwrap();
        let first = c.next_after(ts("2027-03-28T00:50:00Z"), &cph()).unwrap();
        assert_eq!(first, ts("2027-03-28T03:00:00+02:00"));
        let second = c.next_after(first, &cph()).unwrap();
        assert_eq!(second, ts("2027-03-28T03:15:00+02:00"));
        // And the day after, 02:30 again.
        assert_eq!(
            next("30 2 * * *", "2027-03-28T02:00:00Z"),
            "Mon 2027-03-29 02:30 +02:00"
        );
    }

    #[test]
    fn autumn_fold_fires_once() {
        // 2027-10-31: 03:00 local falls back to 02:00, so 02:30 happens twice.
        let c = Cron::parse("30 2 * * *").unwrap();
        let first = c.next_after(ts("2027-10-30T12:00:00Z"), &cph()).unwrap();
        assert_eq!(first, ts("2027-10-31T02:30:00+02:00"));
        let second = c.next_after(first, &cph()).unwrap();
        assert_eq!(second, ts("2027-11-01T02:30:00+01:00"));
    }
}
