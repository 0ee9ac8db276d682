//! The pathway language: what a coordinator declares in `pathway.json`.
//!
//! These types are the one description of the language. The JSON Schema in
//! `docs/pathway.schema.json` is generated from them (`carepath schema`); the decoder in
//! [`crate::decode`] reads a file into them with every problem located; `serde` reads and writes
//! them for storage. `docs/pathway-language.md` is the reference a coordinator reads.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::IsoDuration;

/// The time zone a pathway's dates and times are read in unless it says otherwise.
pub const DEFAULT_TIME_ZONE: &str = "Europe/Copenhagen";
/// The language a pathway's templates must exist in unless it says otherwise.
pub const DEFAULT_LANGUAGE: &str = "da";
/// The local time at which date-anchored timers fire unless they say otherwise.
pub const DEFAULT_TIME_OF_DAY: &str = "09:00";

/// The event names the appointment policy declares by itself.
pub mod appointment_events {
    /// A professional's system booked an appointment: payload `appointment_id`, `at`, and
    /// optionally `ends` and `place`.
    pub const BOOKED: &str = "appointment_booked";
    /// An appointment was moved: payload `appointment_id`, `at`, and optionally `ends` and
    /// `place`.
    pub const MOVED: &str = "appointment_moved";
    /// An appointment was cancelled: payload `appointment_id`.
    pub const CANCELLED: &str = "appointment_cancelled";
}

/// A care pathway: the state graph one family's instance moves through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "carepath pathway")]
pub struct Pathway {
    /// The JSON Schema this file follows, for editors; ignored by carepath.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Stable identifier, lowercase with dashes (`standard-track`); other pathways enrol into it
    /// by this name.
    #[schemars(regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$"), length(max = 64))]
    pub id: String,
    /// Version number. A pathway version is immutable once loaded: change the number to change
    /// the pathway.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// Human title.
    pub title: String,
    /// What the pathway is for; also where warnings that are kept on purpose are explained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// IANA time zone for every date and time of the pathway.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The language every template must exist in (ISO 639-1).
    #[serde(default = "default_language")]
    pub default_language: String,
    /// The longest a family may stay on the pathway, as an ISO 8601 duration (`P27M`). The
    /// checker refuses a pathway whose timers alone can keep a family longer, and at run time
    /// the horizon is a hard stop: an instance still active when it passes is moved to
    /// `on_horizon`'s state, or closed.
    pub horizon: IsoDuration,
    /// What happens to a family still on the pathway when its horizon passes: actions (tell
    /// the owner) and a terminal state. Without it the instance is closed where it is, with a
    /// line in its history and a warning in the worker's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_horizon: Option<HorizonStop>,
    /// How long a family's personal data is kept after its instance finished (`P5Y`): then
    /// the worker erases it (fields, contacts, payloads, notice texts and addresses, reasons),
    /// keeping de-identified rows for statistics. Without it, data is kept until erased on
    /// request (`carepath erase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<IsoDuration>,
    /// Values that templates may use as `constants.NAME` (a rebooking phone number, an address).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub constants: IndexMap<String, String>,
    /// Who takes part, by role name.
    pub roles: IndexMap<String, Role>,
    /// The family's data the pathway uses, by field name.
    #[serde(default)]
    pub fields: IndexMap<String, Field>,
    /// The events professionals' systems may report, by name.
    #[serde(default)]
    pub events: IndexMap<String, EventDecl>,
    /// Reminders to the family before booked appointments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointments: Option<AppointmentPolicy>,
    /// The pathway as an offer in the catalogue (`carepath catalogue`): who runs it, who it is
    /// for, how a family gets there and how long it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Offer>,
    /// The state a new instance starts in.
    pub initial: String,
    /// The states, by name.
    pub states: IndexMap<String, State>,
}

/// The hard stop at a pathway's horizon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HorizonStop {
    /// The terminal state the family is moved to.
    pub to: String,
    /// Actions run first (a `notify` to the owner, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

fn default_time_zone() -> String {
    DEFAULT_TIME_ZONE.to_string()
}

fn default_language() -> String {
    DEFAULT_LANGUAGE.to_string()
}

/// A pathway as the catalogue of offers presents it to professionals and volunteers. Plain
/// text, in the pathway's default language; never a family's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Who runs it (`Dansk Røde Kors`, `Rødovre Kommune, Familiehuset`).
    pub organisation: String,
    /// The sector it belongs to.
    pub sector: Sector,
    /// Who it is for.
    #[serde(rename = "for")]
    pub audience: String,
    /// How a family is referred, or refers itself.
    pub referral: String,
    /// How long it lasts.
    pub duration: String,
    /// What it offers, in a sentence or two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// A participant in the pathway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// The sector the role belongs to.
    pub sector: Sector,
    /// Human title (`Sundhedsplejerske`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The channels notices to this role go by. Default: `["sms"]` for the family sector,
    /// `["email"]` for the others. A template must exist for every channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<Channel>>,
}

impl Role {
    /// The channels notices to this role go by, with the sector's default filled in.
    pub fn channels(&self) -> Vec<Channel> {
        match &self.channels {
            Some(c) => c.clone(),
            None if self.sector == Sector::Family => vec![Channel::Sms],
            None => vec![Channel::Email],
        }
    }
}

/// The sectors a family moves between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sector {
    /// The region: GP, midwife, hospital.
    Region,
    /// The municipality: health visitors, family house, social services.
    Municipality,
    /// Civil society: Red Cross, Mødrehjælpen.
    CivilSociety,
    /// The family itself.
    Family,
}

impl Sector {
    /// The snake_case name, as written in pathway files.
    pub fn as_str(self) -> &'static str {
        match self {
            Sector::Region => "region",
            Sector::Municipality => "municipality",
            Sector::CivilSociety => "civil_society",
            Sector::Family => "family",
        }
    }
}

/// A delivery channel.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Email, with a subject line.
    Email,
    /// SMS: short, and never anything sensitive.
    Sms,
}

impl Channel {
    /// The name used in template file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

/// A typed field of the family's data, or of an event's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The type of the value.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Must be given at enrolment (or in the event's payload).
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// Personal or health data: never allowed in a template, never logged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sensitive: bool,
    /// For `enum`: the allowed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// For a `date` that timers count from: at the latest how long after enrolment the date
    /// falls (a due date set at the first GP exam: `P9M`). Used by the horizon check; without
    /// it the date counts as the enrolment day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<IsoDuration>,
    /// What the field holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Field {
    /// Whether `value` fits this field's type, and if not, why.
    pub fn check_value(&self, value: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value as V;
        let ok = match (self.ty, value) {
            (FieldType::Date, V::String(s)) => s.parse::<jiff::civil::Date>().is_ok(),
            (FieldType::Datetime, V::String(s)) => s.parse::<jiff::Timestamp>().is_ok(),
            (FieldType::Text, V::String(_)) => true,
            (FieldType::Int, V::Number(n)) => n.is_i64(),
            (FieldType::Bool, V::Bool(_)) => true,
            (FieldType::Enum, V::String(s)) => self.values.as_ref().is_some_and(|v| v.contains(s)),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        // A sensitive value is never echoed, nor one that looks like a CPR number: reasons
        // are recorded, shown and logged.
        let value = if self.sensitive {
            "a value that is not shown, since the field is sensitive".to_string()
        } else {
            crate::privacy::shown(value)
        };
        Err(match self.ty {
            FieldType::Date => format!("expected a date such as \"2026-03-01\", found {value}"),
            FieldType::Datetime => format!(
                "expected a date and time with offset such as \"2026-03-01T10:00:00+01:00\", found {value}"
            ),
            FieldType::Text => format!("expected text, found {value}"),
            FieldType::Int => format!("expected a whole number, found {value}"),
            FieldType::Bool => format!("expected true or false, found {value}"),
            FieldType::Enum => format!(
                "expected one of {}, found {value}",
                self.values.as_deref().unwrap_or_default().join(", ")
            ),
        })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The types a field can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A calendar date, `2026-03-01`.
    Date,
    /// An instant with offset, `2026-03-01T10:00:00+01:00`.
    Datetime,
    /// Text.
    Text,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// One of `values`.
    Enum,
}

impl FieldType {
    /// The snake_case name, as written in pathway files.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Text => "text",
            FieldType::Int => "int",
            FieldType::Bool => "bool",
            FieldType::Enum => "enum",
        }
    }
}

/// An event that professionals' systems may report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventDecl {
    /// The payload's members, by name; any other member is refused.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub payload: IndexMap<String, Field>,
    /// What the event means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The event is a change in the family's life (the pregnancy ended, the family moved away)
    /// rather than in this pathway: reported once for the family, it also stops every other
    /// pathway the family is on that does not take it — their queued notices are skipped, the
    /// pathway is put on hold, and its owner is told.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub life_event: bool,
}

/// Reminders to the family before appointments that professionals' systems book.
///
/// Declaring it declares the events `appointment_booked`, `appointment_moved` (payload
/// `appointment_id`, `at`, optional `ends` and `place`) and `appointment_cancelled` (payload
/// `appointment_id`), accepted in every non-terminal state.
///
/// A reminder sent by email carries the appointment as a calendar entry, the same entry on
/// every reminder; a move replaces it in the recipient's calendar, and `cancel_template`
/// removes it when the appointment is cancelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentPolicy {
    /// The role the reminders go to (usually `family`).
    pub to: String,
    /// One reminder per entry, at `before` ahead of the appointment.
    pub reminders: Vec<Reminder>,
    /// The places the booking systems send are neutral addresses ("Hvidovre Hospital,
    /// indgang 3"), never the name of a service that signals vulnerability
    /// ("Familieambulatoriet"): only then may an SMS show `appointment.place`, since the place
    /// is free text from another system.
    #[serde(default, skip_serializing_if = "is_false")]
    pub neutral_place: bool,
    /// The template of the message sent when a booked appointment is cancelled; it may use
    /// `appointment.at` and `appointment.place`. By email it carries the calendar entry's
    /// cancellation, so the appointment leaves the recipient's calendar. Without it a
    /// cancellation only withdraws the reminders not yet sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_template: Option<String>,
}

/// One reminder before an appointment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reminder {
    /// How long before the appointment (`P1D`, `PT2H`).
    pub before: IsoDuration,
    /// The template; it may use `appointment.at` and `appointment.place`.
    pub template: String,
}

/// A state of the pathway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Human title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What happens here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The role responsible for the family while it is here. Required for a non-terminal state
    /// unless an `enter` handoff names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// An end of the pathway: no transitions, timers or activities.
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminal: bool,
    /// Actions run on entering the state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enter: Vec<Action>,
    /// Transitions on events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<Transition>,
    /// Timers armed on entering the state and cancelled on leaving it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Timer>,
    /// Expected contacts, with a window, a reminder and an escalation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activities: Vec<Activity>,
}

/// A transition on an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// The event's name (declared under `events`).
    pub event: String,
    /// A CEL expression over `fields` and `payload`; the transition is taken only if it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// The next state; without it the instance stays (and the actions run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Actions run before entering the next state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// A timer of a state: exactly one of `after`, `at` and `every`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timer {
    /// A name for timelines and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Fires this long after the state was entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<IsoDuration>,
    /// Fires at an offset from a date field; at once if that moment has passed on entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<At>,
    /// Fires on a cron schedule (`min hour day month weekday`, in the pathway's time zone) for
    /// as long as the instance is in the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The next state; without it the instance stays (and the actions run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Actions run when the timer fires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// A moment relative to a date field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct At {
    /// A `date` field (`due_date`, `birth_date`).
    pub anchor: String,
    /// Calendar offset from the date, possibly negative (`-P2W`, `P4D`).
    pub offset: IsoDuration,
    /// Local time of day, `HH:MM`; default 09:00.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// An expected contact: a window in which it is due, a reminder before it opens and an
/// escalation if it is not done when the window closes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    /// Name, unique in the state.
    pub name: String,
    /// Human title, usable in templates as `activity.title`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Who is to make the contact.
    pub role: String,
    /// When it is due.
    pub window: Window,
    /// How long before the window opens to remind `role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_before: Option<IsoDuration>,
    /// The reminder's template (required with `remind_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reminder_template: Option<String>,
    /// Who is told when the window closes and the contact was not recorded.
    pub escalate_to: String,
    /// The escalation's template.
    pub escalation_template: String,
    /// The event that records the contact and closes the activity.
    pub done_on: String,
}

/// When an activity is due: from `from` to `to` after the anchor (a date field) or, without
/// one, after entering the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// A `date` field; without it the window counts from entering the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// The window opens this long after the anchor.
    pub from: IsoDuration,
    /// The window closes this long after the anchor (for a date anchor: at the end of that day).
    pub to: IsoDuration,
}

/// Something that happens on entering a state, on a transition or when a timer fires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Send a notice to a role.
    Notify(Notify),
    /// Pass ownership of the family to a role, who must acknowledge in time.
    Handoff(Handoff),
    /// Start the family on another pathway: a cross-sector referral.
    Enroll(Enroll),
    /// Set a field.
    Set(Set),
}

/// Send a notice to a role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The recipient role.
    pub to: String,
    /// The template's name (files `templates/NAME.LANG.CHANNEL.hbs`).
    pub template: String,
    /// The notice is stale this long after it was made: it is never sent later (status
    /// `expired`), for a family reminder that means nothing once a day has passed, say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<IsoDuration>,
}

/// Pass ownership of the family to a role, with a notice and an acknowledgement deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// The role that receives the family and becomes its owner.
    pub to: String,
    /// The handoff notice's template; it may use `handoff.from`, `handoff.to` and
    /// `handoff.deadline`.
    pub template: String,
    /// The event by which the receiver acknowledges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_on: Option<String>,
    /// How long the receiver has to acknowledge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_within: Option<IsoDuration>,
    /// Who is told when the deadline passes unacknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<String>,
    /// The escalation's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_template: Option<String>,
}

/// Start the family on another pathway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    /// The other pathway's `id`.
    pub pathway: String,
    /// Fields copied to the new instance (declared in both pathways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Fields of the other pathway set to a literal (`{"referral": "midwife"}`): what the
    /// referral itself says about the family, which this pathway keeps in no field.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub values: IndexMap<String, serde_json::Value>,
    /// Who plays the other pathway's roles: its role → the role here whose contact it gets
    /// (`{"referrer": "health_visitor"}`). Without it, each contact goes to the role of the
    /// same name; with it, only the roles named here get one.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub roles: IndexMap<String, String>,
}

/// Which contact each of another pathway's roles gets on enrolment, as (its role, the role
/// here): the `roles` of an `enroll` when given, else every role of the same name that `has`
/// here. The checker and the runtime both ask this, so what is checked is what is copied.
pub fn enrolled_roles(
    explicit: &IndexMap<String, String>,
    theirs: &IndexMap<String, Role>,
    has: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    if explicit.is_empty() {
        theirs
            .keys()
            .filter(|r| has(r))
            .map(|r| (r.clone(), r.clone()))
            .collect()
    } else {
        explicit
            .iter()
            .map(|(t, m)| (t.clone(), m.clone()))
            .collect()
    }
}

/// Set a field to a literal `value` or to the result of a CEL `expr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Set {
    /// The field.
    pub field: String,
    /// A literal of the field's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// A CEL expression over `fields` and `payload` (`fields.conversations + 1`,
    /// `payload.birth_date`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
}

impl Action {
    /// The template names this action may send, with the role each goes to.
    pub fn notices(&self) -> Vec<(&str, &str)> {
        match self {
            Action::Notify(n) => vec![(n.to.as_str(), n.template.as_str())],
            Action::Handoff(h) => {
                let mut v = vec![(h.to.as_str(), h.template.as_str())];
                if let (Some(to), Some(t)) = (&h.escalate_to, &h.escalation_template) {
                    v.push((to.as_str(), t.as_str()));
                }
                v
            }
            Action::Enroll(_) | Action::Set(_) => vec![],
        }
    }
}

impl Pathway {
    /// Every event the pathway accepts, with its payload: the declared ones and, with an
    /// appointment policy, the three appointment events.
    pub fn event(&self, name: &str) -> Option<EventDecl> {
        if let Some(e) = self.events.get(name) {
            return Some(e.clone());
        }
        self.appointments.as_ref()?;
        let field = |ty, required| Field {
            ty,
            required,
            sensitive: false,
            values: None,
            within: None,
            description: None,
        };
        let mut payload = IndexMap::new();
        payload.insert("appointment_id".to_string(), field(FieldType::Text, true));
        match name {
            appointment_events::BOOKED | appointment_events::MOVED => {
                payload.insert("at".to_string(), field(FieldType::Datetime, true));
                payload.insert("ends".to_string(), field(FieldType::Datetime, false));
                payload.insert("place".to_string(), field(FieldType::Text, false));
            }
            appointment_events::CANCELLED => {}
            _ => return None,
        }
        Some(EventDecl {
            payload,
            description: None,
            life_event: false,
        })
    }

    /// Every action of the pathway with its JSON pointer: each state's `enter`, transitions'
    /// and timers' actions, then `on_horizon`'s, in declaration order.
    pub fn action_sites(&self) -> Vec<(String, &Action)> {
        let mut sites: Vec<(String, &Action)> = Vec::new();
        fn add<'a>(sites: &mut Vec<(String, &'a Action)>, base: String, actions: &'a [Action]) {
            for (i, a) in actions.iter().enumerate() {
                sites.push((format!("{base}/{i}"), a));
            }
        }
        for (name, state) in &self.states {
            let base = format!("/states/{}", crate::json::escape_pointer(name));
            add(&mut sites, format!("{base}/enter"), &state.enter);
            for (j, t) in state.on.iter().enumerate() {
                add(&mut sites, format!("{base}/on/{j}/actions"), &t.actions);
            }
            for (j, t) in state.timers.iter().enumerate() {
                add(&mut sites, format!("{base}/timers/{j}/actions"), &t.actions);
            }
        }
        if let Some(stop) = &self.on_horizon {
            add(&mut sites, "/on_horizon/actions".into(), &stop.actions);
        }
        sites
    }

    /// Whether `state` is declared and terminal.
    pub fn is_terminal(&self, state: &str) -> bool {
        self.states.get(state).is_some_and(|s| s.terminal)
    }
}
