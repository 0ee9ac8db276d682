//! Calendar entries: what a notice asks its recipient to put in their calendar.
//!
//! An appointment reminder carries the appointment; an activity reminder carries the window
//! in which the activity is due. The engine says what the entry is and which entry it is: a
//! [`CalendarEntry::uid`] stable for the thing it describes, and a
//! [`CalendarEntry::sequence`] that grows each time the thing moves, so a calendar replaces
//! the entry it holds instead of adding a second one. How it is written (RFC 5545) is the
//! notifier's business.

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

/// One entry for the recipient's calendar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarEntry {
    /// Stable for the thing it describes within its instance: `appointment:ID`, or
    /// `activity:NAME:sN` for one stay in a state. The worker makes it global.
    pub uid: String,
    /// 0 for the first version of the entry; one more each time the thing moves or is
    /// cancelled.
    pub sequence: u32,
    /// The thing was cancelled: calendars remove the entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    /// When.
    pub when: When,
    /// Where, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// When a calendar entry takes place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum When {
    /// From a moment, to another when known (an appointment whose booking says when it ends).
    Moment {
        /// It begins.
        start: Timestamp,
        /// It ends; absent, it is a point in time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end: Option<Timestamp>,
    },
    /// Whole days in the pathway's time zone, both included: a visit due 4–7 days after the
    /// birth.
    Days {
        /// The first day.
        first: Date,
        /// The last day.
        last: Date,
    },
}
