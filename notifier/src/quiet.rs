//! Quiet hours: when a family may receive a message.
//!
//! A family's notice that falls outside the allowed hours waits for the next allowed moment;
//! it is never dropped. Professionals' notices are not held. The defaults follow
//! domain.md: weekdays 08–20, weekends 10–18, nothing on Danish public holidays, in
//! Europe/Copenhagen — all configurable.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// The hours a family may be messaged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietHours {
    /// Monday to Friday: from, until (local time).
    pub weekdays: Window,
    /// Saturday and Sunday.
    pub weekends: Window,
    /// No messages on Danish public holidays.
    pub holidays: bool,
    /// The zone the hours are read in (IANA name).
    pub time_zone: String,
}

/// An allowed window within a day, `[from, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Opens at.
    pub from: Time,
    /// Closes at.
    pub until: Time,
}

impl Default for QuietHours {
    fn default() -> Self {
        QuietHours {
            weekdays: Window {
                from: Time::constant(8, 0, 0, 0),
                until: Time::constant(20, 0, 0, 0),
            },
            weekends: Window {
                from: Time::constant(10, 0, 0, 0),
                until: Time::constant(18, 0, 0, 0),
            },
            holidays: true,
            time_zone: "Europe/Copenhagen".into(),
        }
    }
}

/// Why quiet hours could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum QuietHoursError {
    /// The zone is not in the time zone database.
    #[error("quiet hours: unknown time zone {0:?}; use an IANA name such as \"Europe/Copenhagen\"")]
    TimeZone(String),
    /// A window that never opens.
    #[error("quiet hours: the {0} window closes before it opens")]
    Empty(&'static str),
}

impl QuietHours {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<TimeZone, QuietHoursError> {
        if self.weekdays.until <= self.weekdays.from {
            return Err(QuietHoursError::Empty("weekday"));
        }
        if self.weekends.until <= self.weekends.from {
            return Err(QuietHoursError::Empty("weekend"));
        }
        TimeZone::get(&self.time_zone)
            .map_err(|_| QuietHoursError::TimeZone(self.time_zone.clone()))
    }

    /// The first moment at or after `at` when a family may be messaged. Returns `at` itself
    /// when it is inside the allowed hours.
    pub fn next_allowed(&self, at: Timestamp) -> Result<Timestamp, QuietHoursError> {
        let tz = self.validate()?;
        let local = at.to_zoned_datetime(tz.clone());
        let mut day = local.date();
        // A year of closed days cannot happen; the bound only guards against a bad config.
        for _ in 0..366 {
            if let Some(w) = self.window(day) {
                let opens = day.to_datetime(w.from).to_zoned_datetime(tz.clone());
                let closes = day.to_datetime(w.until).to_zoned_datetime(tz.clone());
                if let (Ok(opens), Ok(closes)) = (opens, closes)
                    && at < closes.timestamp()
                {
                    return Ok(at.max(opens.timestamp()));
                }
            }
            day = day.checked_add(1.day()).unwrap_or(day);
        }
        Ok(at)
    }

    /// `at` as local time in the quiet hours' zone, for people (`2027-03-06 10:00 +01:00`).
    pub fn local(&self, at: Timestamp) -> String {
        match TimeZone::get(&self.time_zone) {
            Ok(tz) => at
                .to_zoned_datetime(tz)
                .strftime("%Y-%m-%d %H:%M %:z")
                .to_string(),
            Err(_) => at.to_string(),
        }
    }

    /// The window on `day`, or `None` when the day is closed.
    fn window(&self, day: Date) -> Option<Window> {
        if self.holidays && danish_holiday(day).is_some() {
            return None;
        }
        Some(match day.weekday() {
            Weekday::Saturday | Weekday::Sunday => self.weekends,
            _ => self.weekdays,
        })
    }
}

/// The Danish public holiday on `day`, by name, if it is one.
///
/// The holidays of the Danish calendar law: New Year's Day, Maundy Thursday, Good Friday,
/// Easter Sunday and Monday, Great Prayer Day (until its abolition from 2024), Ascension Day,
/// Whit Sunday and Monday, Christmas Day and Boxing Day. Constitution Day (5 June) and
/// Christmas Eve are customary days off but not public holidays; they are not included.
pub fn danish_holiday(day: Date) -> Option<&'static str> {
    let fixed = match (day.month(), day.day()) {
        (1, 1) => Some("Nytårsdag"),
        (12, 25) => Some("Juledag"),
        (12, 26) => Some("2. juledag"),
        _ => None,
    };
    if fixed.is_some() {
        return fixed;
    }
    let easter = easter_sunday(day.year())?;
    let offset = easter.until(day).ok()?.get_days();
    match offset {
        -3 => Some("Skærtorsdag"),
        -2 => Some("Langfredag"),
        0 => Some("Påskedag"),
        1 => Some("2. påskedag"),
        26 if day.year() < 2024 => Some("Store bededag"),
        39 => Some("Kristi himmelfartsdag"),
        49 => Some("Pinsedag"),
        50 => Some("2. pinsedag"),
        _ => None,
    }
}

/// Easter Sunday in the Gregorian calendar (the anonymous Gregorian algorithm).
fn easter_sunday(year: i16) -> Option<Date> {
    let y = i32::from(year);
    let a = y % 19;
    let b = y / 100;
    let c = y % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    Date::new(year, i8::try_from(month).ok()?, i8::try_from(day).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(local: &str) -> Timestamp {
        format!("{local}[Europe/Copenhagen]")
            .parse::<jiff::ZonedDateTime>()
            .expect("local time")
            .timestamp()
    }

    #[test]
    fn easter_matches_the_calendar() {
        for (year, month, day) in [
            (2024, 3, 31),
            (2025, 4, 20),
            (2026, 4, 5),
            (2027, 3, 28),
            (2038, 4, 25),
        ] {
            assert_eq!(
                easter_sunday(year),
                Date::new(year, month, day).ok(),
                "{year}"
            );
        }
    }

    #[test]
    fn the_danish_holidays_of_2027() {
        let d = |m, d| Date::new(2027, m, d).expect("date");
        assert_eq!(danish_holiday(d(1, 1)), Some("Nytårsdag"));
        assert_eq!(danish_holiday(d(3, 25)), Some("Skærtorsdag"));
        assert_eq!(danish_holiday(d(3, 26)), Some("Langfredag"));
        assert_eq!(danish_holiday(d(3, 29)), Some("2. påskedag"));
        assert_eq!(
            danish_holiday(d(4, 23)),
            None,
            "Store bededag was abolished from 2024"
        );
        assert_eq!(danish_holiday(d(5, 6)), Some("Kristi himmelfartsdag"));
        assert_eq!(danish_holiday(d(5, 17)), Some("2. pinsedag"));
        assert_eq!(
            danish_holiday(d(6, 5)),
            None,
            "Grundlovsdag is not a public holiday"
        );
        assert_eq!(danish_holiday(d(12, 26)), Some("2. juledag"));
        assert_eq!(
            danish_holiday(Date::new(2023, 5, 5).expect("date")),
            Some("Store bededag")
        );
    }

    #[test]
    fn a_family_message_waits_for_the_next_allowed_hour() {
        let q = QuietHours::default();
        // Tuesday 06:30 → 08:00 the same day.
        assert_eq!(
            q.next_allowed(at("2027-03-02T06:30")).ok(),
            Some(at("2027-03-02T08:00"))
        );
        // Inside the window: unchanged.
        assert_eq!(
            q.next_allowed(at("2027-03-02T12:15")).ok(),
            Some(at("2027-03-02T12:15"))
        );
        // Friday 20:00 (the window is half-open) → Saturday 10:00.
        assert_eq!(
            q.next_allowed(at("2027-03-05T20:00")).ok(),
            Some(at("2027-03-06T10:00"))
        );
        // Sunday 18:30 → Monday 08:00.
        assert_eq!(
            q.next_allowed(at("2027-03-07T18:30")).ok(),
            Some(at("2027-03-08T08:00"))
        );
        // Wednesday before Easter 21:00 → past Maundy Thursday, Good Friday, Saturday is open.
        assert_eq!(
            q.next_allowed(at("2027-03-24T21:00")).ok(),
            Some(at("2027-03-27T10:00"))
        );
        // Saturday of Easter 19:00 → Easter Sunday and Monday closed → Tuesday 08:00.
        assert_eq!(
            q.next_allowed(at("2027-03-27T19:00")).ok(),
            Some(at("2027-03-30T08:00"))
        );
    }

    #[test]
    fn quiet_hours_hold_across_daylight_saving() {
        let q = QuietHours::default();
        // The clocks go forward on Sunday 28 March 2027: Sunday is Easter too, Monday 2.
        // påskedag, so Saturday 19:00 waits until Tuesday 08:00 CEST (06:00 UTC).
        let next = q.next_allowed(at("2027-03-27T19:00")).expect("next");
        assert_eq!(
            next,
            "2027-03-30T06:00:00Z".parse::<Timestamp>().expect("utc")
        );
        // Autumn: Sunday 31 October 2027 10:00 CET is 09:00 UTC.
        let next = q.next_allowed(at("2027-10-31T07:00")).expect("next");
        assert_eq!(
            next,
            "2027-10-31T09:00:00Z".parse::<Timestamp>().expect("utc")
        );
    }

    #[test]
    fn holidays_can_be_allowed_and_bad_configs_are_named() {
        let q = QuietHours {
            holidays: false,
            ..QuietHours::default()
        };
        assert_eq!(
            q.next_allowed(at("2027-12-25T09:00")).ok(),
            Some(at("2027-12-25T10:00"))
        );
        let bad = QuietHours {
            time_zone: "Europe/Kobenhavn".into(),
            ..QuietHours::default()
        };
        assert!(bad.next_allowed(at("2027-12-25T09:00")).is_err());
    }
}
