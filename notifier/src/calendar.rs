//! Calendar parts (RFC 5545) for email notices: an appointment or an activity's window that
//! the recipient can put in their calendar with one click.
//!
//! One `VEVENT` per part, with a `UID` stable for the thing it describes and a `SEQUENCE` that
//! grows when it moves, so a calendar replaces the entry it holds; a cancelled appointment is
//! sent as `METHOD:CANCEL` with `STATUS:CANCELLED` for the same `UID`, which removes it.
//! Entries are published (`METHOD:PUBLISH`), not requests: nobody is asked to reply to a
//! no-reply address. Times are in UTC, which every calendar shows in its own zone; a window of
//! whole days is written as dates, its end the day after its last (RFC 5545 §3.6.1).

use carepath_engine::calendar::{CalendarEntry, When};
use jiff::Timestamp;

/// A calendar entry ready to be written: the entry and what the email says around it.
#[derive(Clone, Debug)]
pub struct Invitation<'a> {
    /// The entry, as the engine made it.
    pub entry: &'a CalendarEntry,
    /// The entry's globally unique id (see [`crate::email::global_id`]).
    pub uid: &'a str,
    /// The title shown in the calendar: the email's subject.
    pub summary: &'a str,
    /// The sender's address, the entry's organizer.
    pub organizer: &'a str,
    /// The recipient's address.
    pub attendee: &'a str,
    /// When the entry was written.
    pub stamp: Timestamp,
}

impl Invitation<'_> {
    /// The iTIP method: `PUBLISH`, or `CANCEL` for a cancelled entry.
    pub fn method(&self) -> &'static str {
        if self.entry.cancelled {
            "CANCEL"
        } else {
            "PUBLISH"
        }
    }

    /// The `text/calendar` text: CRLF line ends, long lines folded at 75 octets.
    pub fn to_ics(&self) -> String {
        let e = self.entry;
        let mut lines: Vec<String> = vec![
            "BEGIN:VCALENDAR".into(),
            "VERSION:2.0".into(),
            format!(
                "PRODID:-//carepath//carepath {}//EN",
                env!("CARGO_PKG_VERSION")
            ),
            "CALSCALE:GREGORIAN".into(),
            format!("METHOD:{}", self.method()),
            "BEGIN:VEVENT".into(),
            format!("UID:{}", text(self.uid)),
            format!("SEQUENCE:{}", e.sequence),
            format!("DTSTAMP:{}", utc(self.stamp)),
        ];
        match &e.when {
            When::Moment { start, end } => {
                lines.push(format!("DTSTART:{}", utc(*start)));
                if let Some(end) = end {
                    lines.push(format!("DTEND:{}", utc(*end)));
                }
                lines.push("TRANSP:OPAQUE".into());
            }
            When::Days { first, last } => {
                lines.push(format!("DTSTART;VALUE=DATE:{}", first.strftime("%Y%m%d")));
                // DTEND of a date is exclusive; a last day the calendar cannot follow stays a
                // one-day entry rather than a wrong span.
                let end = last.tomorrow().unwrap_or(*last);
                lines.push(format!("DTEND;VALUE=DATE:{}", end.strftime("%Y%m%d")));
                // A window to do something in does not make anyone busy.
                lines.push("TRANSP:TRANSPARENT".into());
            }
        }
        lines.push(format!("SUMMARY:{}", text(self.summary)));
        if let Some(place) = &e.location {
            lines.push(format!("LOCATION:{}", text(place)));
        }
        lines.push(format!("ORGANIZER:mailto:{}", self.organizer));
        if e.cancelled {
            lines.push(format!("ATTENDEE:mailto:{}", self.attendee));
            lines.push("STATUS:CANCELLED".into());
        } else {
            lines.push("STATUS:CONFIRMED".into());
        }
        lines.push("END:VEVENT".into());
        lines.push("END:VCALENDAR".into());
        lines.iter().map(|l| fold(l)).collect()
    }
}

/// A moment in UTC as RFC 5545 writes it: `20270310T090000Z`.
fn utc(t: Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// A TEXT value (RFC 5545 §3.3.11): backslash, semicolon, comma and line breaks escaped.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A content line folded at 75 octets without splitting a character (RFC 5545 §3.1), ended
/// by CRLF.
fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 70 * 3 + 2);
    let mut width = 0;
    for c in line.chars() {
        let n = c.len_utf8();
        // The continuation lines begin with a space, which counts.
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += n;
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_fold_at_75_octets_between_characters() {
        let line = format!("SUMMARY:{}", "æ".repeat(60));
        let folded = fold(&line);
        for l in folded.split("\r\n") {
            assert!(l.len() <= 75, "{} octets: {l}", l.len());
        }
        let unfolded = folded.trim_end().replace("\r\n ", "");
        assert_eq!(unfolded, line);
    }

    #[test]
    fn text_values_are_escaped() {
        assert_eq!(
            text("Hvidovre Hospital, indgang 3; stue\\2\nbagved"),
            "Hvidovre Hospital\\, indgang 3\\; stue\\\\2\\nbagved"
        );
    }
}
