//! ISO 8601 durations, calendar-correct: `P1M` is a month, not 30 days.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use jiff::{Span, SpanRelativeTo, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ISO 8601 duration as written (`P27M`, `P4D`, `-P2W`, `PT2H30M`), kept with its text so it
/// is shown back to the coordinator exactly as they wrote it.
#[derive(Clone, Debug)]
pub struct IsoDuration {
    text: String,
    span: Span,
}

impl IsoDuration {
    /// The duration as calendar units.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the duration is zero or negative: a timer on it fires at once.
    pub fn is_zero_or_negative(&self) -> bool {
        self.span.signum() <= 0
    }

    /// An upper bound in whole days, counting a month as 31 days and a year as 366, for the
    /// checks that compare durations without a calendar (the horizon check).
    pub fn upper_days(&self) -> i64 {
        upper_days(self.span)
    }
}

/// See [`IsoDuration::upper_days`].
pub fn upper_days(span: Span) -> i64 {
    let whole = i64::from(span.get_years()) * 366
        + i64::from(span.get_months()) * 31
        + i64::from(span.get_weeks()) * 7
        + i64::from(span.get_days());
    let time = i64::from(span.get_hours()) * 3600 + span.get_minutes() * 60 + span.get_seconds();
    let extra = if time > 0 {
        (time + 86_399) / 86_400
    } else {
        time / 86_400
    };
    whole + extra
}

impl PartialEq for IsoDuration {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    text: String,
    reason: String,
}

impl FromStr for IsoDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DurationError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let body = text.strip_prefix(['-', '+']).unwrap_or(text);
        if !body.starts_with('P') {
            return Err(err(
                "expected ISO 8601 such as P4D, P6M, PT2H or -P2W (upper-case 'P' first)",
            ));
        }
        if body.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(err(
                "designators are upper-case: Y, M, W, D, then T and H, M, S",
            ));
        }
        if body.contains(['.', ',']) {
            return Err(err(
                "fractions are not allowed: use a smaller unit (PT90M, not PT1.5H)",
            ));
        }
        let span: Span = text.parse().map_err(|e: jiff::Error| {
            let detail = e.to_string();
            err(&format!(
                "expected one of Y, M, W, D, then T and H, M, S ({detail})"
            ))
        })?;
        Ok(IsoDuration {
            text: text.to_string(),
            span,
        })
    }
}

impl Serialize for IsoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for IsoDuration {
    fn schema_name() -> Cow<'static, str> {
        "IsoDuration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An ISO 8601 duration, calendar-correct: P4D, P6M, P1Y2M, PT2H, -P2W.",
            "pattern": "^[-+]?P(?!$)(\\d+Y)?(\\d+M)?(\\d+W)?(\\d+D)?(T(?=\\d)(\\d+H)?(\\d+M)?(\\d+S)?)?$"
        })
    }
}

/// Compares two spans by their length from a fixed reference day, so months and days can be
/// ordered (used to sort timers and windows when no instance date is at hand).
pub fn approx_cmp(a: Span, b: Span) -> std::cmp::Ordering {
    let reference = jiff::civil::date(2026, 1, 1);
    let total = |s: Span| {
        s.total((Unit::Hour, SpanRelativeTo::from(reference)))
            .unwrap_or(0.0)
    };
    total(a).total_cmp(&total(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_iso_durations() {
        for ok in [
            "P27M",
            "P4D",
            "-P2W",
            "PT2H30M",
            "P1Y2M3W4DT5H6M7S",
            "+P1D",
            "P0D",
        ] {
            assert!(ok.parse::<IsoDuration>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        let e = "4 days".parse::<IsoDuration>().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid duration \"4 days\": expected ISO 8601"),
            "{e}"
        );
        let e = "p4d".parse::<IsoDuration>().unwrap_err().to_string();
        assert!(e.contains("upper-case"), "{e}");
        assert!("P1Q".parse::<IsoDuration>().is_err());
        assert!("PT1.5H".parse::<IsoDuration>().is_err());
        assert!("P".parse::<IsoDuration>().is_err());
    }

    #[test]
    fn upper_bound_in_days() {
        let d = |s: &str| s.parse::<IsoDuration>().unwrap().upper_days();
        assert_eq!(d("P27M"), 27 * 31);
        assert_eq!(d("P1Y1W"), 373);
        assert_eq!(d("PT1H"), 1);
        assert_eq!(d("-P2W"), -14);
        assert!("P0D".parse::<IsoDuration>().unwrap().is_zero_or_negative());
    }
}
