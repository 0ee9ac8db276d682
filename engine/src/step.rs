//! The step function: one input in, the effects out. No I/O, no clock.
//!
//! [`start`] enrols a family; [`step`] applies an event or a fired timer to an instance. Both
//! return [`Effects`]: the instance as it is afterwards, the timers to arm and to cancel, the
//! notices to send, the enrolments into other pathways and one history entry. The caller (the
//! worker) makes all of it durable in one transaction; if it cannot, nothing happened.
//!
//! Timers belong to the state entry that armed them and are cancelled when the state is left,
//! so a timer of a left state never fires; appointment reminders belong to the instance and
//! are cancelled when it ends.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::calendar::{CalendarEntry, When};
use crate::check::CheckedPathway;
use crate::decode::parse_time_of_day;
use crate::pathway::{Action, Activity, DEFAULT_TIME_OF_DAY, Pathway, appointment_events};
use crate::time::{self, TimeError};

/// Whether an instance is still moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In a non-terminal state.
    Active,
    /// In a terminal state: nothing more happens.
    Finished,
}

/// One family's instance of a pathway, as the step function sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The current state.
    pub state: String,
    /// The role responsible for the family now.
    pub owner: Option<String>,
    /// The family's fields.
    pub fields: Map<String, Value>,
    /// Active or finished.
    pub status: Status,
    /// When the current state was entered.
    pub entered_at: Timestamp,
    /// Steps applied so far; the step that made this instance had this number.
    pub seq: u64,
    /// The step number at which the current state was entered; timer keys carry it, so a
    /// timer of an earlier visit to the same state can never be mistaken for a current one.
    pub entered_seq: u64,
    /// Pending timers.
    pub timers: Vec<ArmedTimer>,
    /// Activities of the current state not yet recorded as done.
    pub open_activities: Vec<String>,
    /// Booked appointments, by id.
    pub appointments: BTreeMap<String, Appointment>,
    /// Handoffs and activities of the current state whose deadline passed with nothing
    /// recorded: escalated, and still waited on until the acknowledgement or the contact comes
    /// late, or the family leaves the state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overdue: Vec<Overdue>,
    /// When the family was enrolled: activity windows that closed before it do not apply, and
    /// the horizon counts from it. Absent on instances stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<Timestamp>,
}

/// A handoff or an activity whose deadline passed: somebody is waited on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overdue {
    /// A handoff's acknowledgement or an activity's contact.
    pub kind: OverdueKind,
    /// The activity's name, or the event that acknowledges the handoff.
    pub name: String,
    /// Who was to act.
    pub role: String,
    /// Who was told when the deadline passed.
    pub escalated_to: String,
    /// The deadline.
    pub since: Timestamp,
}

/// What an [`Overdue`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverdueKind {
    /// The receiver's acknowledgement of a handoff.
    Handoff,
    /// An expected contact.
    Activity,
}

impl Instance {
    /// The oldest deadline that passed with nothing recorded, if any.
    pub fn overdue_since(&self) -> Option<Timestamp> {
        self.overdue.iter().map(|o| o.since).min()
    }
}

/// A booked appointment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appointment {
    /// When.
    pub at: Timestamp,
    /// When it ends, if the booking system said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<Timestamp>,
    /// Where, if the booking system said.
    pub place: Option<String>,
    /// How many times it moved: its calendar entry's sequence.
    #[serde(default)]
    pub sequence: u32,
}

/// A pending timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedTimer {
    /// Unique within the instance; the input that fires it names it.
    pub key: String,
    /// When it is due.
    pub due: Timestamp,
    /// What it is for.
    pub purpose: Purpose,
}

/// What a timer is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Purpose {
    /// The state's timer number `index`.
    State {
        /// Index into the state's `timers`.
        index: usize,
    },
    /// A handoff's acknowledgement deadline.
    HandoffDeadline {
        /// The role that was to acknowledge.
        to: String,
        /// The event that acknowledges.
        ack_on: String,
        /// Who is told when it passes.
        escalate_to: String,
        /// The escalation's template.
        template: String,
    },
    /// The reminder before an activity's window opens.
    ActivityReminder {
        /// The activity's name.
        activity: String,
    },
    /// The activity's window closed.
    ActivityOverdue {
        /// The activity's name.
        activity: String,
    },
    /// A reminder before an appointment.
    AppointmentReminder {
        /// The appointment's id.
        appointment: String,
        /// Index into the policy's `reminders`.
        index: usize,
    },
    /// The pathway's horizon: the family's time on it is up.
    Horizon,
}

/// The key of the horizon timer: one per instance, armed at enrolment.
pub const HORIZON_KEY: &str = "horizon";

/// What happens to an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Input {
    /// An event reported by a professional's system.
    Event {
        /// The event's name.
        name: String,
        /// Its payload (an object, or null for none).
        payload: Value,
    },
    /// A pending timer came due.
    Timer {
        /// The timer's key.
        key: String,
    },
}

/// A notice to send: rendered by the caller from the template and data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Unique within the instance, stable across retries: the deduplication key.
    pub key: String,
    /// The recipient role.
    pub to: String,
    /// The template's name.
    pub template: String,
    /// The template's data, except `recipient` and `instance`, which the caller adds. Sensitive
    /// fields are left out.
    pub data: Value,
    /// After this moment the notice is stale and must not be sent: an appointment reminder
    /// expires when the appointment starts, an activity reminder when its window closes, a
    /// `notify` with `expires_after` that long after it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// What the notice is about, when something later can make it stale: `appointment:ID`.
    /// A step that cancels or moves the appointment withdraws the notices of that topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// An entry for the recipient's calendar, sent with the notice by email: the appointment
    /// a reminder is about, the window an activity is due in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<CalendarEntry>,
}

/// Something the owner of an instance must be told by carepath itself, since no template of
/// the pathway covers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Alert {
    /// A timer could not be armed (a date out of range, a schedule that never fires again):
    /// the step went on without it, so nothing will move the family on by that timer.
    TimerNotArmed {
        /// What could not be armed and why, in words.
        what: String,
    },
    /// The horizon passed and the pathway declares no `on_horizon`: the instance was closed
    /// where it was.
    HorizonClosed {
        /// The horizon, as written.
        horizon: String,
        /// The state the family was in.
        state: String,
    },
    /// A life event of the family ([`crate::pathway::EventDecl::life_event`]) was reported on
    /// another pathway, and this one does not take it: it was put on hold, and its queued
    /// family notices skipped. Made by the runtime, not by a step.
    LifeEvent {
        /// The event's name.
        event: String,
        /// The pathways that took it.
        on: String,
    },
}

/// Notices not yet sent that a step makes stale: those of `topic` are not to be sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Withdrawal {
    /// The notices' topic ([`Notice::topic`]).
    pub topic: String,
    /// Why, for the notice's provenance.
    pub reason: String,
}

/// The topic of an appointment's reminders.
pub fn appointment_topic(id: &str) -> String {
    format!("appointment:{id}")
}

/// A referral into another pathway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The other pathway's id.
    pub pathway: String,
    /// The fields copied over, and those the referral sets to a literal.
    pub fields: Map<String, Value>,
    /// Who plays the other pathway's roles (its role → a role here); empty: the roles of the
    /// same name. Resolve with [`crate::pathway::enrolled_roles`].
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub roles: IndexMap<String, String>,
}

/// Why the step happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Cause {
    /// The family was enrolled.
    Enrolled,
    /// An event.
    Event {
        /// Its name.
        name: String,
    },
    /// A timer.
    Timer {
        /// Its key.
        key: String,
        /// What it was for.
        purpose: Purpose,
        /// A state timer's declared `name`, for people reading the history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// An operator acted on the instance itself, outside the pathway: it was cancelled.
    Operator {
        /// What was done (`cancel`).
        action: String,
        /// Who did it: a token's name, or `cli USER`.
        by: String,
    },
}

/// One line of an instance's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The step's number.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// The state before (none at enrolment).
    pub from: Option<String>,
    /// The state after.
    pub to: String,
    /// Why.
    pub cause: Cause,
    /// What else happened, in words: fields set, timers moved, handoffs acknowledged.
    pub notes: Vec<String>,
}

/// Everything one step changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    /// The instance afterwards (its `timers` already reflect `armed` and `cancelled`).
    pub instance: Instance,
    /// Timers to arm.
    pub armed: Vec<ArmedTimer>,
    /// Keys of timers to cancel, the fired one included. Apply before arming.
    pub cancelled: Vec<String>,
    /// Notices to send.
    pub notices: Vec<Notice>,
    /// Referrals into other pathways.
    pub enrolments: Vec<Enrolment>,
    /// Notices of earlier steps, not yet sent, that this step made stale.
    pub withdrawn: Vec<Withdrawal>,
    /// What the instance's owner must hear of from carepath itself, not from a pathway
    /// template: a timer this step could not arm, the horizon closing the instance.
    pub alerts: Vec<Alert>,
    /// The history entry.
    pub history: History,
}

impl Effects {
    /// The earliest pending timer afterwards: when the caller must call again.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.instance.timers.iter().map(|t| t.due).min()
    }
}

/// Why an input was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The instance is in a terminal state.
    #[error("the instance has finished (in state \"{state}\"): it takes no more events")]
    Finished {
        /// The terminal state.
        state: String,
    },
    /// The pathway declares no such event.
    #[error("unknown event \"{event}\": the pathway declares {}", known.join(", "))]
    UnknownEvent {
        /// The event.
        event: String,
        /// The declared events.
        known: Vec<String>,
    },
    /// The event is declared but not allowed in the current state.
    #[error("event \"{event}\" is not allowed in state \"{state}\" (allowed here: {})", if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") })]
    NotAllowed {
        /// The event.
        event: String,
        /// The current state.
        state: String,
        /// What the state takes.
        allowed: Vec<String>,
    },
    /// The payload does not fit the event's declaration.
    #[error("payload of event \"{event}\" at {pointer}: {reason}")]
    Payload {
        /// The event.
        event: String,
        /// JSON pointer into the payload.
        pointer: String,
        /// What is wrong.
        reason: String,
    },
    /// Every transition on the event has a guard, and none holds.
    #[error("event \"{event}\" in state \"{state}\": no guard holds ({})", guards.join("; "))]
    GuardFalse {
        /// The event.
        event: String,
        /// The current state.
        state: String,
        /// The guards that were tried.
        guards: Vec<String>,
    },
    /// The timer is not pending (its state was left, or it fired already).
    #[error("timer \"{key}\" is not pending")]
    StaleTimer {
        /// The timer's key.
        key: String,
    },
    /// A field's value is missing, unknown or of the wrong type.
    #[error("field \"{field}\": {reason}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An expression failed while evaluating.
    #[error("expression {text:?}: {reason}")]
    Expression {
        /// The expression.
        text: String,
        /// What went wrong.
        reason: String,
    },
    /// Date arithmetic failed.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// The instance names a state the pathway does not have (a corrupt instance).
    #[error("the instance is in state \"{0}\", which the pathway does not declare")]
    UnknownState(String),
}

impl StepError {
    /// A stable kebab-case code for the refusal, for records and API problem documents.
    pub fn code(&self) -> &'static str {
        match self {
            StepError::Finished { .. } => "instance-finished",
            StepError::UnknownEvent { .. } => "unknown-event",
            StepError::NotAllowed { .. } => "event-not-allowed",
            StepError::Payload { .. } => "bad-payload",
            StepError::GuardFalse { .. } => "guard-false",
            StepError::StaleTimer { .. } => "stale-timer",
            StepError::Field { .. } => "bad-field",
            StepError::Expression { .. } => "expression-failed",
            StepError::Time(_) => "time-out-of-range",
            StepError::UnknownState(_) => "unknown-state",
        }
    }
}

/// Enrols a family: checks the fields and enters the initial state.
pub fn start(
    p: &CheckedPathway,
    fields: Map<String, Value>,
    now: Timestamp,
) -> Result<Effects, StepError> {
    let decl = &p.pathway;
    for (name, value) in &fields {
        let Some(f) = decl.fields.get(name) else {
            return Err(StepError::Field {
                field: name.clone(),
                reason: format!(
                    "the pathway declares no such field (declared: {})",
                    decl.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        if !value.is_null() {
            f.check_value(value).map_err(|reason| StepError::Field {
                field: name.clone(),
                reason,
            })?;
        }
    }
    let tz = time::zone(&decl.time_zone)?;
    for (name, f) in &decl.fields {
        if f.required && fields.get(name).is_none_or(Value::is_null) {
            return Err(StepError::Field {
                field: name.clone(),
                reason: "required at enrolment".into(),
            });
        }
        // A date that timers count from must fall within what the pathway declares, or its
        // timers would fire after the horizon (a due date typed with the wrong year).
        if let (Some(within), Some(date)) = (
            &f.within,
            fields
                .get(name)
                .and_then(Value::as_str)
                .and_then(|d| d.parse::<Date>().ok()),
        ) {
            let today = tz.to_datetime(now).date();
            let latest = today
                .checked_add(within.span())
                .map_err(|e| TimeError::Range(e.to_string()))?;
            if date > latest {
                let given = if f.sensitive {
                    "the date given".to_string()
                } else {
                    date.to_string()
                };
                return Err(StepError::Field {
                    field: name.clone(),
                    reason: format!(
                        "{given} is more than {within} after enrolment (at the latest {latest}): check the date"
                    ),
                });
            }
        }
    }
    let instance = Instance {
        state: decl.initial.clone(),
        owner: None,
        fields,
        status: Status::Active,
        entered_at: now,
        seq: 0,
        entered_seq: 0,
        timers: Vec::new(),
        open_activities: Vec::new(),
        appointments: BTreeMap::new(),
        overdue: Vec::new(),
        enrolled_at: Some(now),
    };
    let mut s = Stepper::new(p, instance, now)?;
    let horizon = time::after(now, decl.horizon.span(), &s.tz)?;
    s.arm(HORIZON_KEY.into(), horizon, Purpose::Horizon);
    s.enter(&decl.initial, &Value::Null)?;
    Ok(s.finish(None, Cause::Enrolled))
}

/// Applies one input to an instance.
pub fn step(
    p: &CheckedPathway,
    instance: &Instance,
    input: &Input,
    now: Timestamp,
) -> Result<Effects, StepError> {
    if instance.status == Status::Finished {
        return Err(StepError::Finished {
            state: instance.state.clone(),
        });
    }
    if !p.pathway.states.contains_key(&instance.state) {
        return Err(StepError::UnknownState(instance.state.clone()));
    }
    let from = instance.state.clone();
    let mut s = Stepper::new(p, instance.clone(), now)?;
    s.instance.seq += 1;
    let cause = match input {
        Input::Event { name, payload } => {
            s.event(name, payload)?;
            Cause::Event { name: name.clone() }
        }
        Input::Timer { key } => {
            let purpose = s.timer(key)?;
            let name = match &purpose {
                Purpose::State { index } => p
                    .pathway
                    .states
                    .get(&from)
                    .and_then(|st| st.timers.get(*index))
                    .and_then(|t| t.name.clone()),
                _ => None,
            };
            Cause::Timer {
                key: key.clone(),
                purpose,
                name,
            }
        }
    };
    Ok(s.finish(Some(from), cause))
}

/// A running instance moved onto another version of its pathway.
#[derive(Clone, Debug, PartialEq)]
pub struct Migrated {
    /// The step: the instance on the new version, timers armed and cancelled, its history
    /// line. It sends nothing.
    pub effects: Effects,
    /// Timers the new version would have armed that are due by now: they fired under the old
    /// version, or their moment passed. They are not armed, so nothing fires twice.
    pub left_out: Vec<ArmedTimer>,
}

/// Moves `instance`, of another version of `p`'s pathway, into state `to` of `p`: as if the
/// family had entered `to` when it entered the state it is in. The state's timers and
/// activities are armed by `p`'s rules from that entry (an anchored window from its date, a
/// schedule from `now`), without running the state's `enter` actions, so nothing is sent for
/// the past; those due by `now` are left out. Activities in `done` stay done. Appointment
/// reminders and the horizon stay as they were. `note` goes into the history line.
pub fn migrate(
    p: &CheckedPathway,
    instance: &Instance,
    to: &str,
    done: &[String],
    now: Timestamp,
    by: &str,
    note: String,
) -> Result<Migrated, StepError> {
    if instance.status == Status::Finished {
        return Err(StepError::Finished {
            state: instance.state.clone(),
        });
    }
    let Some(state) = p.pathway.states.get(to) else {
        return Err(StepError::UnknownState(to.into()));
    };
    let from = instance.state.clone();
    let mut s = Stepper::new(p, instance.clone(), instance.entered_at)?;
    s.instance.seq += 1;
    let prefix = s.state_prefix();
    s.cancel_where(|t| !t.key.starts_with(&prefix));
    s.instance.open_activities.clear();
    s.instance.overdue.clear();
    s.instance.state = to.to_string();
    if let Some(owner) = &state.owner {
        s.instance.owner = Some(owner.clone());
    }
    if state.terminal {
        s.instance.status = Status::Finished;
        s.cancel_where(|_| false);
    } else {
        s.arm_state(to, now);
        for a in &state.activities {
            if done.contains(&a.name) {
                continue;
            }
            s.instance.open_activities.push(a.name.clone());
            if let Err(e) = s.arm_activity(a) {
                s.problem(format!("activity {} of state \"{to}\"", a.name), &e);
            }
        }
    }
    // What the new rules put before now belongs to the past.
    let left_out: Vec<ArmedTimer> = s.armed.iter().filter(|t| t.due <= now).cloned().collect();
    s.armed.retain(|t| t.due > now);
    s.instance
        .timers
        .retain(|t| !left_out.iter().any(|l| l.key == t.key));
    s.now = now;
    s.notes.push(note);
    let effects = s.finish(
        Some(from),
        Cause::Operator {
            action: "migrate".into(),
            by: by.into(),
        },
    );
    Ok(Migrated { effects, left_out })
}

struct Stepper<'p> {
    p: &'p CheckedPathway,
    decl: &'p Pathway,
    instance: Instance,
    now: Timestamp,
    tz: jiff::tz::TimeZone,
    armed: Vec<ArmedTimer>,
    cancelled: Vec<String>,
    notices: Vec<Notice>,
    enrolments: Vec<Enrolment>,
    withdrawn: Vec<Withdrawal>,
    alerts: Vec<Alert>,
    notes: Vec<String>,
    /// The owner before the state being entered set its own.
    owner_before: Option<String>,
}

impl<'p> Stepper<'p> {
    fn new(p: &'p CheckedPathway, instance: Instance, now: Timestamp) -> Result<Self, StepError> {
        let tz = time::zone(&p.pathway.time_zone)?;
        Ok(Stepper {
            owner_before: instance.owner.clone(),
            p,
            decl: &p.pathway,
            instance,
            now,
            tz,
            armed: Vec::new(),
            cancelled: Vec::new(),
            notices: Vec::new(),
            enrolments: Vec::new(),
            withdrawn: Vec::new(),
            alerts: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn finish(mut self, from: Option<String>, cause: Cause) -> Effects {
        self.armed.retain(|t| !self.cancelled.contains(&t.key));
        self.instance
            .timers
            .sort_by(|a, b| a.due.cmp(&b.due).then_with(|| a.key.cmp(&b.key)));
        let history = History {
            seq: self.instance.seq,
            at: self.now,
            from,
            to: self.instance.state.clone(),
            cause,
            notes: self.notes,
        };
        Effects {
            instance: self.instance,
            armed: self.armed,
            cancelled: self.cancelled,
            notices: self.notices,
            enrolments: self.enrolments,
            withdrawn: self.withdrawn,
            alerts: self.alerts,
            history,
        }
    }

    fn arm(&mut self, key: String, due: Timestamp, purpose: Purpose) {
        let timer = ArmedTimer { key, due, purpose };
        self.instance.timers.push(timer.clone());
        self.armed.push(timer);
    }

    fn cancel_where(&mut self, keep: impl Fn(&ArmedTimer) -> bool) {
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.instance.timers)
            .into_iter()
            .partition(|t| keep(t));
        self.instance.timers = kept;
        for t in gone {
            self.armed.retain(|a| a.key != t.key);
            self.cancelled.push(t.key);
        }
    }

    fn state_prefix(&self) -> String {
        format!("s{}:", self.instance.entered_seq)
    }

    fn notice(&mut self, to: &str, template: &str, extra: Option<(&str, Value)>) {
        self.notice_until(to, template, extra, About::default());
    }

    /// A notice with what it is about: when it goes stale, its topic, its calendar entry.
    fn notice_until(
        &mut self,
        to: &str,
        template: &str,
        extra: Option<(&str, Value)>,
        about: About,
    ) {
        let state = &self.decl.states[&self.instance.state];
        // Every declared field that is not sensitive, `null` while unset: a template's
        // `{{#if fields.x}}` then renders in strict mode whether or not `x` is set.
        let fields: Map<String, Value> = self
            .decl
            .fields
            .iter()
            .filter(|(_, f)| !f.sensitive)
            .map(|(k, _)| {
                (
                    k.clone(),
                    self.instance.fields.get(k).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        let mut data = json!({
            "fields": fields,
            "constants": self.decl.constants,
            "pathway": {"id": self.decl.id, "title": self.decl.title},
            "state": {"name": self.instance.state, "title": state.title.clone().unwrap_or_else(|| self.instance.state.clone())},
        });
        if let (Some((k, v)), Some(obj)) = (extra, data.as_object_mut()) {
            obj.insert(k.to_string(), v);
        }
        let key = format!("{}:{}", self.instance.seq, self.notices.len());
        self.notices.push(Notice {
            key,
            to: to.to_string(),
            template: template.to_string(),
            data,
            expires_at: about.expires_at,
            topic: about.topic,
            calendar: about.calendar,
        });
    }

    fn local(&self, t: Timestamp) -> String {
        t.to_zoned_datetime(self.tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    fn event(&mut self, name: &str, payload: &Value) -> Result<(), StepError> {
        let Some(decl) = self.decl.event(name) else {
            let mut known: Vec<String> = self.decl.events.keys().cloned().collect();
            if self.decl.appointments.is_some() {
                known.extend(
                    [
                        appointment_events::BOOKED,
                        appointment_events::MOVED,
                        appointment_events::CANCELLED,
                    ]
                    .map(String::from),
                );
            }
            return Err(StepError::UnknownEvent {
                event: name.into(),
                known,
            });
        };
        let payload = check_payload(name, &decl.payload, payload)?;
        let state = &self.decl.states[&self.instance.state];
        let mut consumed = false;

        if self.decl.appointments.is_some()
            && [
                appointment_events::BOOKED,
                appointment_events::MOVED,
                appointment_events::CANCELLED,
            ]
            .contains(&name)
        {
            self.appointment(name, &payload)?;
            consumed = true;
        }
        // A handoff acknowledged in time: its deadline is cancelled.
        let acked: Vec<String> = self
            .instance
            .timers
            .iter()
            .filter(
                |t| matches!(&t.purpose, Purpose::HandoffDeadline { ack_on, .. } if ack_on == name),
            )
            .map(|t| t.key.clone())
            .collect();
        if !acked.is_empty() {
            self.cancel_where(|t| !acked.contains(&t.key));
            self.notes.push(format!("handoff acknowledged by {name}"));
            consumed = true;
        }
        // A handoff acknowledged after its escalation: late, but nobody is waited on now.
        let late = self.instance.overdue.len();
        self.instance
            .overdue
            .retain(|o| !(o.kind == OverdueKind::Handoff && o.name == name));
        if self.instance.overdue.len() != late {
            self.notes
                .push(format!("handoff acknowledged late by {name}"));
            consumed = true;
        }
        // An activity recorded as done: its reminder and escalation are cancelled.
        let done: Vec<String> = state
            .activities
            .iter()
            .filter(|a| a.done_on == name && self.instance.open_activities.contains(&a.name))
            .map(|a| a.name.clone())
            .collect();
        for a in &done {
            self.instance.open_activities.retain(|x| x != a);
            self.instance
                .overdue
                .retain(|o| !(o.kind == OverdueKind::Activity && &o.name == a));
            self.cancel_where(|t| !matches!(&t.purpose, Purpose::ActivityReminder { activity } | Purpose::ActivityOverdue { activity } if activity == a));
            self.notes.push(format!("activity {a} done"));
            consumed = true;
        }

        let candidates: Vec<_> = state.on.iter().filter(|t| t.event == name).collect();
        let mut tried = Vec::new();
        for t in &candidates {
            if let Some(g) = &t.guard {
                let holds = self.eval(g, &payload)?;
                if holds != Value::Bool(true) {
                    tried.push(g.clone());
                    continue;
                }
            }
            self.actions(&t.actions, &payload)?;
            if let Some(to) = &t.to {
                self.transition(to, &payload)?;
            }
            return Ok(());
        }
        if consumed {
            return Ok(());
        }
        if candidates.is_empty() {
            let mut allowed: Vec<String> = state.on.iter().map(|t| t.event.clone()).collect();
            allowed.extend(
                state
                    .activities
                    .iter()
                    .filter(|a| self.instance.open_activities.contains(&a.name))
                    .map(|a| a.done_on.clone()),
            );
            allowed.dedup();
            return Err(StepError::NotAllowed {
                event: name.into(),
                state: self.instance.state.clone(),
                allowed,
            });
        }
        Err(StepError::GuardFalse {
            event: name.into(),
            state: self.instance.state.clone(),
            guards: tried,
        })
    }

    fn appointment(&mut self, name: &str, payload: &Value) -> Result<(), StepError> {
        let Some(policy) = self.decl.appointments.clone() else {
            return Ok(());
        };
        let id = payload["appointment_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let prefix = format!("appt:{id}:");
        self.cancel_where(|t| !t.key.starts_with(&prefix));
        let old = self.instance.appointments.get(&id).cloned();
        if let Some(old) = &old {
            let what = if name == appointment_events::CANCELLED {
                "cancelled".to_string()
            } else {
                format!("moved from {}", self.local(old.at))
            };
            self.withdrawn.push(Withdrawal {
                topic: appointment_topic(&id),
                reason: format!(
                    "not sent: appointment {id} was {what} at {} before the reminder went out",
                    self.local(self.now)
                ),
            });
        }
        if name == appointment_events::CANCELLED {
            self.instance.appointments.remove(&id);
            self.notes.push(format!("appointment {id} cancelled"));
            if let (Some(old), Some(template)) = (old, &policy.cancel_template) {
                // Takes the appointment out of the calendar the reminders put it in; stale
                // once the appointment's time has passed.
                let data = json!({"at": self.local(old.at), "place": old.place});
                let about = About {
                    expires_at: Some(old.at),
                    topic: None,
                    calendar: Some(appointment_entry(
                        &id,
                        &Appointment {
                            sequence: old.sequence + 1,
                            ..old.clone()
                        },
                        true,
                    )),
                };
                self.notice_until(&policy.to, template, Some(("appointment", data)), about);
            }
            return Ok(());
        }
        let at: Timestamp = payload["at"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StepError::Payload {
                event: name.into(),
                pointer: "/at".into(),
                reason: "expected a date and time with offset".into(),
            })?;
        let ends = match payload.get("ends").and_then(Value::as_str) {
            None => None,
            Some(text) => match text.parse::<Timestamp>() {
                Ok(ends) if ends > at => Some(ends),
                Ok(ends) if ends == at => None,
                _ => {
                    return Err(StepError::Payload {
                        event: name.into(),
                        pointer: "/ends".into(),
                        reason: "expected a date and time with offset, not before \"at\"".into(),
                    });
                }
            },
        };
        let place = payload
            .get("place")
            .and_then(Value::as_str)
            .map(String::from);
        // A move is a new version of the same calendar entry.
        let sequence = old.as_ref().map_or(0, |o| o.sequence + 1);
        self.instance.appointments.insert(
            id.clone(),
            Appointment {
                at,
                ends,
                place,
                sequence,
            },
        );
        for (i, r) in policy.reminders.iter().enumerate() {
            let due = time::after(at, r.before.span().negate(), &self.tz)?;
            if due > self.now {
                self.arm(
                    format!("{prefix}{i}:{}", self.instance.seq),
                    due,
                    Purpose::AppointmentReminder {
                        appointment: id.clone(),
                        index: i,
                    },
                );
            }
        }
        self.notes
            .push(format!("appointment {id} at {}", self.local(at)));
        Ok(())
    }

    fn timer(&mut self, key: &str) -> Result<Purpose, StepError> {
        let Some(timer) = self.instance.timers.iter().find(|t| t.key == key).cloned() else {
            return Err(StepError::StaleTimer { key: key.into() });
        };
        self.cancel_where(|t| t.key != key);
        let state = &self.decl.states[&self.instance.state];
        match &timer.purpose {
            Purpose::State { index } => {
                let Some(t) = state.timers.get(*index) else {
                    return Err(StepError::StaleTimer { key: key.into() });
                };
                self.actions(&t.actions, &Value::Null)?;
                match &t.to {
                    Some(to) => self.transition(to, &Value::Null)?,
                    None => {
                        if let Some(cron) = &t.every {
                            match time::next_cron(cron, self.now.max(timer.due), &self.tz) {
                                Ok(next) => self.arm(
                                    format!(
                                        "{}t{index}:{}",
                                        self.state_prefix(),
                                        self.instance.seq
                                    ),
                                    next,
                                    Purpose::State { index: *index },
                                ),
                                Err(e) => {
                                    let what =
                                        t.name.clone().unwrap_or_else(|| format!("timer {index}"));
                                    self.problem(format!("{what} (every {cron})"), &e.into());
                                }
                            }
                        }
                    }
                }
            }
            Purpose::HandoffDeadline {
                to,
                ack_on,
                escalate_to,
                template,
            } => {
                self.notes.push(format!(
                    "handoff to {to} not acknowledged in time: escalated to {escalate_to}"
                ));
                self.instance.overdue.push(Overdue {
                    kind: OverdueKind::Handoff,
                    name: ack_on.clone(),
                    role: to.clone(),
                    escalated_to: escalate_to.clone(),
                    since: timer.due,
                });
                let data = json!({"from": self.instance.owner, "to": to, "deadline": self.local(timer.due)});
                self.notice(escalate_to, template, Some(("handoff", data)));
            }
            Purpose::ActivityReminder { activity } | Purpose::ActivityOverdue { activity } => {
                let Some(a) = state
                    .activities
                    .iter()
                    .find(|a| &a.name == activity)
                    .cloned()
                else {
                    return Err(StepError::StaleTimer { key: key.into() });
                };
                let w = self.window(&a)?;
                let to = w.escalates;
                let data = json!({
                    "name": a.name,
                    "title": a.title.clone().unwrap_or_else(|| a.name.clone()),
                    "due_from": w.opens.map(|t| self.local(t)),
                    "due_to": w.closes.map(|t| self.local(t)),
                });
                if matches!(timer.purpose, Purpose::ActivityReminder { .. }) {
                    if let Some(t) = &a.reminder_template {
                        // A reminder after the window closed would be stale: the escalation
                        // has gone by then.
                        let about = About {
                            expires_at: to,
                            topic: None,
                            calendar: self.window_entry(&a, &w),
                        };
                        self.notice_until(&a.role, t, Some(("activity", data)), about);
                    }
                } else {
                    self.notes.push(format!(
                        "activity {} overdue: escalated to {}",
                        a.name, a.escalate_to
                    ));
                    self.instance.overdue.push(Overdue {
                        kind: OverdueKind::Activity,
                        name: a.name.clone(),
                        role: a.role.clone(),
                        escalated_to: a.escalate_to.clone(),
                        since: timer.due,
                    });
                    self.notice(
                        &a.escalate_to,
                        &a.escalation_template,
                        Some(("activity", data)),
                    );
                }
            }
            Purpose::Horizon => self.horizon()?,
            Purpose::AppointmentReminder { appointment, index } => {
                if let (Some(policy), Some(appt)) = (
                    &self.decl.appointments,
                    self.instance.appointments.get(appointment),
                ) {
                    let r = &policy.reminders[*index];
                    let data = json!({"at": self.local(appt.at), "place": appt.place});
                    let (to, template) = (policy.to.clone(), r.template.clone());
                    let about = About {
                        // Never after the appointment it announces.
                        expires_at: Some(appt.at),
                        topic: Some(appointment_topic(appointment)),
                        calendar: Some(appointment_entry(appointment, appt, false)),
                    };
                    self.notice_until(&to, &template, Some(("appointment", data)), about);
                }
            }
        }
        Ok(timer.purpose)
    }

    /// The horizon passed with the family still on the pathway: `on_horizon` moves it to its
    /// terminal state, or it is closed where it is.
    fn horizon(&mut self) -> Result<(), StepError> {
        let horizon = &self.decl.horizon;
        match &self.decl.on_horizon {
            Some(stop) => {
                self.notes.push(format!(
                    "horizon {horizon} reached: moved to \"{}\"",
                    stop.to
                ));
                self.actions(&stop.actions, &Value::Null)?;
                self.transition(&stop.to, &Value::Null)?;
            }
            None => {
                self.notes.push(format!(
                    "horizon {horizon} reached in \"{}\": the pathway was closed",
                    self.instance.state
                ));
                self.alerts.push(Alert::HorizonClosed {
                    horizon: horizon.to_string(),
                    state: self.instance.state.clone(),
                });
                self.instance.status = Status::Finished;
                self.cancel_where(|_| false);
                self.instance.open_activities.clear();
                self.instance.overdue.clear();
            }
        }
        Ok(())
    }

    fn eval(&self, text: &str, payload: &Value) -> Result<Value, StepError> {
        let e = self
            .p
            .expression(text)
            .ok_or_else(|| StepError::Expression {
                text: text.into(),
                reason: "not compiled: the pathway was not checked".into(),
            })?;
        e.eval(&self.instance.fields, payload)
            .map_err(|reason| StepError::Expression {
                text: text.into(),
                reason,
            })
    }

    fn actions(&mut self, actions: &[Action], payload: &Value) -> Result<(), StepError> {
        for a in actions {
            match a {
                Action::Notify(n) => {
                    let expires_at = match &n.expires_after {
                        Some(d) => Some(time::after(self.now, d.span(), &self.tz)?),
                        None => None,
                    };
                    let about = About {
                        expires_at,
                        ..About::default()
                    };
                    self.notice_until(&n.to, &n.template, None, about);
                }
                Action::Handoff(h) => {
                    self.instance.owner = Some(h.to.clone());
                    let from = self.owner_before.clone();
                    let deadline = match &h.ack_within {
                        Some(d) => Some(time::after(self.now, d.span(), &self.tz)?),
                        None => None,
                    };
                    let data = json!({"from": from, "to": h.to, "deadline": deadline.map(|t| self.local(t))});
                    self.notice(&h.to, &h.template, Some(("handoff", data)));
                    if let (Some(due), Some(ack_on), Some(escalate_to), Some(template)) =
                        (deadline, &h.ack_on, &h.escalate_to, &h.escalation_template)
                    {
                        let key = format!(
                            "{}h{}:{}",
                            self.state_prefix(),
                            self.instance.seq,
                            self.armed.len()
                        );
                        self.arm(
                            key,
                            due,
                            Purpose::HandoffDeadline {
                                to: h.to.clone(),
                                ack_on: ack_on.clone(),
                                escalate_to: escalate_to.clone(),
                                template: template.clone(),
                            },
                        );
                    }
                    self.notes.push(format!(
                        "handed off from {} to {}",
                        from.as_deref().unwrap_or("nobody"),
                        h.to
                    ));
                }
                Action::Enroll(e) => {
                    let fields = e
                        .fields
                        .iter()
                        .filter_map(|f| self.instance.fields.get(f).map(|v| (f.clone(), v.clone())))
                        .chain(e.values.iter().map(|(f, v)| (f.clone(), v.clone())))
                        .collect();
                    self.notes.push(format!("referred to {}", e.pathway));
                    self.enrolments.push(Enrolment {
                        pathway: e.pathway.clone(),
                        fields,
                        roles: e.roles.clone(),
                    });
                }
                Action::Set(s) => {
                    let value = match (&s.value, &s.expr) {
                        (Some(v), _) => v.clone(),
                        (None, Some(x)) => self.eval(x, payload)?,
                        (None, None) => Value::Null,
                    };
                    let field = &self.decl.fields[&s.field];
                    if !value.is_null() {
                        field
                            .check_value(&value)
                            .map_err(|reason| StepError::Field {
                                field: s.field.clone(),
                                reason,
                            })?;
                    }
                    let old = self.instance.fields.insert(s.field.clone(), value.clone());
                    if old.as_ref() != Some(&value) {
                        let was_unset = old.is_none_or(|v| v.is_null());
                        if field.sensitive {
                            self.notes.push(format!("{} set", s.field));
                        } else {
                            self.notes.push(format!("{} set to {value}", s.field));
                        }
                        self.reanchor(&s.field, was_unset)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A date field changed: every pending timer that counts from it is computed again, and a
    /// timer that was waiting for the date (it was unset) is armed. A timer that already fired
    /// stays fired.
    fn reanchor(&mut self, field: &str, was_unset: bool) -> Result<(), StepError> {
        let state = &self.decl.states[&self.instance.state];
        let prefix = self.state_prefix();
        for (index, t) in state.timers.iter().enumerate() {
            let Some(at) = t.at.as_ref().filter(|at| at.anchor == field) else {
                continue;
            };
            let purpose = Purpose::State { index };
            let old = self
                .instance
                .timers
                .iter()
                .find(|x| x.purpose == purpose)
                .map(|x| x.due);
            if old.is_none() && !was_unset {
                continue;
            }
            self.cancel_where(|x| x.purpose != purpose);
            let name = t.name.clone().unwrap_or_else(|| format!("timer {index}"));
            match (self.at_due(at)?, old) {
                (Some(due), old) => {
                    self.notes.push(match old {
                        Some(o) => {
                            format!("{name} moved from {} to {}", self.local(o), self.local(due))
                        }
                        None => format!("{name} armed for {}", self.local(due)),
                    });
                    self.arm(
                        format!("{prefix}t{index}:{}", self.instance.seq),
                        due,
                        purpose,
                    );
                }
                (None, Some(_)) => self
                    .notes
                    .push(format!("{name} cancelled: {field} was cleared")),
                (None, None) => {}
            }
        }
        let activities: Vec<Activity> = state
            .activities
            .iter()
            .filter(|a| {
                a.window.anchor.as_deref() == Some(field)
                    && self.instance.open_activities.contains(&a.name)
            })
            .cloned()
            .collect();
        for a in activities {
            let mine = |t: &ArmedTimer| matches!(&t.purpose, Purpose::ActivityReminder { activity } | Purpose::ActivityOverdue { activity } if *activity == a.name);
            self.cancel_where(|t| !mine(t));
            self.arm_activity(&a)?;
            if let Some(to) = self.window(&a)?.escalates {
                self.notes.push(format!(
                    "activity {} now escalates at {}",
                    a.name,
                    self.local(to)
                ));
            }
        }
        Ok(())
    }

    fn anchor_date(&self, field: &str) -> Option<Date> {
        self.instance.fields.get(field)?.as_str()?.parse().ok()
    }

    fn at_due(&self, at: &crate::pathway::At) -> Result<Option<Timestamp>, StepError> {
        let Some(date) = self.anchor_date(&at.anchor) else {
            return Ok(None);
        };
        let tod = time_of_day(at.time.as_deref().unwrap_or(DEFAULT_TIME_OF_DAY))?;
        let due = time::at(date, at.offset.span(), tod, &self.tz)?;
        Ok(Some(due.max(self.now)))
    }

    /// When an activity's window opens, when it closes, and when it escalates.
    /// The calendar entry of an activity's window: whole days when it is anchored to a date,
    /// else the span from the state's entry. One entry per stay in the state.
    fn window_entry(&self, a: &Activity, w: &WindowTimes) -> Option<CalendarEntry> {
        let (opens, closes) = (w.opens?, w.closes?);
        let when = match a.window.anchor {
            Some(_) => When::Days {
                first: opens.to_zoned_datetime(self.tz.clone()).date(),
                last: closes.to_zoned_datetime(self.tz.clone()).date(),
            },
            None => When::Moment {
                start: opens,
                end: Some(closes),
            },
        };
        Some(CalendarEntry {
            uid: format!(
                "activity:{}:{}",
                a.name,
                self.state_prefix().trim_end_matches(':')
            ),
            sequence: 0,
            cancelled: false,
            when,
            location: None,
        })
    }

    fn window(&self, a: &Activity) -> Result<WindowTimes, StepError> {
        match &a.window.anchor {
            None => {
                let closes = time::after(self.instance.entered_at, a.window.to.span(), &self.tz)?;
                Ok(WindowTimes {
                    opens: Some(time::after(
                        self.instance.entered_at,
                        a.window.from.span(),
                        &self.tz,
                    )?),
                    closes: Some(closes),
                    escalates: Some(closes),
                })
            }
            Some(anchor) => {
                let Some(date) = self.anchor_date(anchor) else {
                    return Ok(WindowTimes::default());
                };
                let tod = time_of_day(DEFAULT_TIME_OF_DAY)?;
                let opens = time::at(date, a.window.from.span(), tod, &self.tz)?;
                let closes = time::at(date, a.window.to.span(), tod, &self.tz)?;
                // The window includes its last day: it escalates the morning after, at the
                // same wall-clock time. The day is added after the window's own calendar
                // units, so `P2M` and `-P18W2D` alike escalate the day after their last day.
                let escalates = time::after(closes, jiff::Span::new().days(1), &self.tz)?;
                Ok(WindowTimes {
                    opens: Some(opens),
                    closes: Some(closes),
                    escalates: Some(escalates),
                })
            }
        }
    }

    fn arm_activity(&mut self, a: &Activity) -> Result<(), StepError> {
        let WindowTimes {
            opens: from,
            escalates: to,
            ..
        } = self.window(a)?;
        // A family enrolled after the window closed did not miss it: it does not apply.
        if let (Some(to), Some(enrolled)) = (to, self.instance.enrolled_at)
            && to <= enrolled
        {
            self.instance.open_activities.retain(|x| *x != a.name);
            self.notes.push(format!(
                "activity {} not applicable (enrolled later): its window closed before enrolment, at {}",
                a.name,
                self.local(to)
            ));
            return Ok(());
        }
        let prefix = self.state_prefix();
        if let (Some(before), Some(from)) = (&a.remind_before, from) {
            let due = time::after(from, before.span().negate(), &self.tz)?;
            if to.is_none_or(|to| self.now < to) {
                self.arm(
                    format!("{prefix}a:{}:remind:{}", a.name, self.instance.seq),
                    due.max(self.now),
                    Purpose::ActivityReminder {
                        activity: a.name.clone(),
                    },
                );
            }
        }
        if let Some(to) = to {
            self.arm(
                format!("{prefix}a:{}:overdue:{}", a.name, self.instance.seq),
                to.max(self.now),
                Purpose::ActivityOverdue {
                    activity: a.name.clone(),
                },
            );
        }
        Ok(())
    }

    fn transition(&mut self, to: &str, payload: &Value) -> Result<(), StepError> {
        // Leave: the state's timers, handoff deadlines and activities go with it.
        let prefix = self.state_prefix();
        self.cancel_where(|t| !t.key.starts_with(&prefix));
        self.instance.open_activities.clear();
        self.instance.overdue.clear();
        self.enter(to, payload)
    }

    fn enter(&mut self, name: &str, payload: &Value) -> Result<(), StepError> {
        let Some(state) = self.decl.states.get(name) else {
            return Err(StepError::UnknownState(name.into()));
        };
        self.instance.state = name.to_string();
        self.instance.entered_at = self.now;
        self.instance.entered_seq = self.instance.seq;
        // A handoff on entry passes the family on from whoever had it before the state.
        self.owner_before = self.instance.owner.clone();
        if let Some(owner) = &state.owner {
            self.instance.owner = Some(owner.clone());
        }
        self.actions(&state.enter, payload)?;
        if state.terminal {
            self.instance.status = Status::Finished;
            self.cancel_where(|_| false);
            self.instance.open_activities.clear();
            return Ok(());
        }
        self.arm_state(name, self.now);
        for a in &state.activities {
            self.instance.open_activities.push(a.name.clone());
            if let Err(e) = self.arm_activity(a) {
                self.problem(format!("activity {} of state \"{name}\"", a.name), &e);
            }
        }
        Ok(())
    }

    /// Arms the timers of state `name` as on entering it: `after` from the entry, `at` from
    /// its anchor, `every` from `cron_from`.
    fn arm_state(&mut self, name: &str, cron_from: Timestamp) {
        let Some(state) = self.decl.states.get(name) else {
            return;
        };
        let prefix = self.state_prefix();
        for (index, t) in state.timers.iter().enumerate() {
            let due = if let Some(after) = &t.after {
                time::after(self.now, after.span(), &self.tz)
                    .map(Some)
                    .map_err(StepError::from)
            } else if let Some(at) = &t.at {
                self.at_due(at)
            } else if let Some(cron) = &t.every {
                time::next_cron(cron, cron_from, &self.tz)
                    .map(Some)
                    .map_err(StepError::from)
            } else {
                Ok(None)
            };
            let timer_name = || t.name.clone().unwrap_or_else(|| format!("timer {index}"));
            match due {
                Ok(Some(due)) => self.arm(
                    format!("{prefix}t{index}:{}", self.instance.seq),
                    due,
                    Purpose::State { index },
                ),
                Ok(None) => {
                    if let Some(at) = &t.at {
                        self.notes
                            .push(format!("{} waits for {}", timer_name(), at.anchor));
                    }
                }
                Err(e) => self.problem(format!("{} of state \"{name}\"", timer_name()), &e),
            }
        }
    }

    /// A timer that cannot be armed is never silent: the step goes on without it, its
    /// history says so, and the caller tells the owner.
    fn problem(&mut self, what: String, e: &StepError) {
        let text = format!("{what} could not be armed: {e}");
        self.notes.push(text.clone());
        self.alerts.push(Alert::TimerNotArmed { what: text });
    }
}

/// The moments of an activity's window; all `None` while its anchor date is unset.
#[derive(Default)]
struct WindowTimes {
    /// The window opens.
    opens: Option<Timestamp>,
    /// Its last moment as shown to people: for a date anchor, its last day at the time of day.
    closes: Option<Timestamp>,
    /// When it escalates if not done: for a date anchor, the morning after its last day.
    escalates: Option<Timestamp>,
}

/// What a notice is about beyond its template and data.
#[derive(Default)]
struct About {
    /// After this the notice is stale and not sent.
    expires_at: Option<Timestamp>,
    /// A later step withdraws the notice's by this topic.
    topic: Option<String>,
    /// The calendar entry it carries.
    calendar: Option<CalendarEntry>,
}

/// An appointment's calendar entry: its topic is its uid, so every reminder and the
/// cancellation speak of the same entry.
fn appointment_entry(id: &str, a: &Appointment, cancelled: bool) -> CalendarEntry {
    CalendarEntry {
        uid: appointment_topic(id),
        sequence: a.sequence,
        cancelled,
        when: When::Moment {
            start: a.at,
            end: a.ends,
        },
        location: a.place.clone(),
    }
}

/// A checked `HH:MM`; the checker refuses any other, so an error here is a corrupt pathway.
fn time_of_day(text: &str) -> Result<(i8, i8), StepError> {
    parse_time_of_day(text).ok_or_else(|| {
        StepError::Time(TimeError::Range(format!(
            "invalid time of day {text:?}: expected HH:MM"
        )))
    })
}

/// Checks a payload against the event's declared members; returns it as an object.
fn check_payload(
    event: &str,
    decl: &indexmap::IndexMap<String, crate::pathway::Field>,
    payload: &Value,
) -> Result<Value, StepError> {
    let err = |pointer: String, reason: String| StepError::Payload {
        event: event.into(),
        pointer,
        reason,
    };
    let obj = match payload {
        Value::Null => Map::new(),
        Value::Object(o) => o.clone(),
        other => {
            return Err(err(
                String::new(),
                format!("expected an object, found {}", crate::privacy::shown(other)),
            ));
        }
    };
    for (k, v) in &obj {
        let Some(f) = decl.get(k) else {
            let known: Vec<_> = decl.keys().cloned().collect();
            return Err(err(
                format!("/{}", crate::json::escape_pointer(k)),
                format!(
                    "unknown member (declared: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if !v.is_null() {
            f.check_value(v)
                .map_err(|reason| err(format!("/{}", crate::json::escape_pointer(k)), reason))?;
        }
    }
    for (k, f) in decl {
        if f.required && obj.get(k).is_none_or(Value::is_null) {
            return Err(err(
                format!("/{}", crate::json::escape_pointer(k)),
                "required member is missing".into(),
            ));
        }
    }
    Ok(Value::Object(obj))
}
