//! When timers fire: calendar arithmetic in the pathway's time zone.
//!
//! Every function takes the moment it counts from; none reads a clock. Durations are added as
//! calendar units in the pathway's zone, so `P1M` from 31 January is the last day of February
//! and `P1D` across the spring daylight-saving change is 23 hours.

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Span, Timestamp};

use crate::cron::Cron;

/// Why a moment could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// The time zone is not known.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// The result falls outside the supported range of dates.
    #[error("date arithmetic out of range: {0}")]
    Range(String),
    /// The cron schedule does not parse, or never fires again.
    #[error("cron schedule {0:?}: {1}")]
    Cron(String, String),
}

/// Looks up an IANA time zone from the bundled database.
pub fn zone(name: &str) -> Result<TimeZone, TimeError> {
    TimeZone::get(name).map_err(|_| TimeError::TimeZone(name.to_string()))
}

/// `span` after `from`, in `tz`.
pub fn after(from: Timestamp, span: Span, tz: &TimeZone) -> Result<Timestamp, TimeError> {
    from.to_zoned_datetime(tz.clone())
        .checked_add(span)
        .map(|z| z.timestamp())
        .map_err(|e| TimeError::Range(e.to_string()))
}

/// The moment `offset` after the date `anchor`, at `time` (hour, minute) local time in `tz`.
/// A local time that does not exist (in the spring gap) is the first valid moment after the
/// gap, and one that occurs twice (in the autumn) is its first occurrence: the same policy as
/// cron schedules ([`crate::cron`]).
pub fn at(
    anchor: Date,
    offset: Span,
    time: (i8, i8),
    tz: &TimeZone,
) -> Result<Timestamp, TimeError> {
    let range = |e: jiff::Error| TimeError::Range(e.to_string());
    let day = anchor.checked_add(calendar_part(offset)).map_err(range)?;
    let start = local(day.at(time.0, time.1, 0, 0), tz)?;
    start
        .to_zoned_datetime(tz.clone())
        .checked_add(clock_part(offset))
        .map(|z| z.timestamp())
        .map_err(range)
}

/// The instant a local date and time names in `tz`: in a spring-forward gap, the first valid
/// moment after the gap (02:30 on the change day is 03:00); in an autumn fold, the first of
/// the two (02:30 summer time).
pub fn local(dt: DateTime, tz: &TimeZone) -> Result<Timestamp, TimeError> {
    let range = |e: jiff::Error| TimeError::Range(e.to_string());
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, the time falls before the change; the change itself
            // is the first valid moment after the gap.
            let before_change = after.to_timestamp(dt).map_err(range)?;
            tz.following(before_change)
                .next()
                .map(|t| t.timestamp())
                .ok_or_else(|| TimeError::Range(format!("no transition after the gap at {dt}")))
        }
        _ => ambiguous.earlier().map_err(range),
    }
}

fn calendar_part(span: Span) -> Span {
    Span::new()
        .years(span.get_years())
        .months(span.get_months())
        .weeks(span.get_weeks())
        .days(span.get_days())
}

fn clock_part(span: Span) -> Span {
    Span::new()
        .hours(span.get_hours())
        .minutes(span.get_minutes())
        .seconds(span.get_seconds())
}

/// The first time strictly after `from` that the cron schedule `text` names, read in `tz`.
pub fn next_cron(text: &str, from: Timestamp, tz: &TimeZone) -> Result<Timestamp, TimeError> {
    let schedule =
        Cron::parse(text).map_err(|e| TimeError::Cron(text.to_string(), e.to_string()))?;
    schedule.next_after(from, tz).ok_or_else(|| {
        TimeError::Cron(
            text.to_string(),
            "never fires again (no matching day in the next eight years)".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cph() -> TimeZone {
        zone("Europe/Copenhagen").unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_month_is_a_month() {
        let from = ts("2027-01-31T09:00:00Z");
        let got = after(from, Span::new().months(1), &cph()).unwrap();
        assert_eq!(got, ts("2027-02-28T09:00:00Z"));
    }

    #[test]
    fn a_day_across_spring_forward_keeps_the_wall_clock() {
        // 2027-03-28 is the spring change in Denmark: that day has 23 hours.
        let from = ts("2027-03-27T09:00:00+01:00");
        let got = after(from, Span::new().days(1), &cph()).unwrap();
        assert_eq!(got, ts("2027-03-28T09:00:00+02:00"));
        assert_eq!(got.as_second() - from.as_second(), 23 * 3600);
    }

    #[test]
    fn at_counts_calendar_days_from_the_anchor_at_local_time() {
        let birth = jiff::civil::date(2027, 10, 28);
        // Four days after a birth in the autumn change week: 1 November, 09:00 winter time.
        let got = at(birth, Span::new().days(4), (9, 0), &cph()).unwrap();
        assert_eq!(got, ts("2027-11-01T09:00:00+01:00"));
        let before = at(birth, Span::new().weeks(-2), (9, 0), &cph()).unwrap();
        assert_eq!(before, ts("2027-10-14T09:00:00+02:00"));
    }

    #[test]
    fn cron_in_local_time_across_dst() {
        // Mondays and Thursdays at 10:00 local: before and after the autumn change.
        let first = next_cron("0 10 * * MON,THU", ts("2027-10-28T12:00:00Z"), &cph()).unwrap();
        assert_eq!(first, ts("2027-11-01T10:00:00+01:00"));
        let summer = next_cron("0 10 * * MON,THU", ts("2027-10-20T00:00:00Z"), &cph()).unwrap();
        assert_eq!(summer, ts("2027-10-21T10:00:00+02:00"));
    }

    #[test]
    fn cron_that_never_fires_is_an_error() {
        let e = next_cron("0 0 30 2 *", ts("2027-01-01T00:00:00Z"), &cph()).unwrap_err();
        assert!(e.to_string().contains("never fires again"), "{e}");
        assert!(next_cron("0 25 * * *", ts("2027-01-01T00:00:00Z"), &cph()).is_err());
    }

    #[test]
    fn at_in_the_spring_gap_is_the_first_moment_after_it() {
        let day = jiff::civil::date(2027, 3, 28);
        let got = at(day, Span::new(), (2, 30), &cph()).unwrap();
        assert_eq!(got, ts("2027-03-28T03:00:00+02:00"));
        let fold = jiff::civil::date(2027, 10, 31);
        let got = at(fold, Span::new(), (2, 30), &cph()).unwrap();
        assert_eq!(got, ts("2027-10-31T02:30:00+02:00"));
    }
}
