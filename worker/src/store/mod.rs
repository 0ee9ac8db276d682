//! Storage: everything the runtime keeps, behind one interface per backend.
//!
//! The runtime never writes SQL. It opens a [`Tx`], reads what a batch needs (due timers, the
//! instances they belong to, earlier events by idempotency key), computes the batch's
//! [`Changes`] with the pure engine, and hands them back to be written in that transaction,
//! set-based: a handful of multi-row statements per batch, not five statements per step.
//!
//! SQLite ([`SqliteStore`]) is the default. A PostgreSQL backend implements the same two traits
//! (claiming with `FOR UPDATE SKIP LOCKED` so several workers share the load) and must pass
//! the same conformance suite (`worker/tests/storage.rs`).

use std::collections::BTreeMap;
use std::future::Future;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use carepath_engine::PathwaySource;
use carepath_engine::calendar::CalendarEntry;
use carepath_engine::pathway::Channel;
use carepath_engine::step::{ArmedTimer, History, Instance};

pub use backend::{Backend, BackendTx};
pub use postgres::PgStore;
pub use rows::content_hash;
pub use sqlite::SqliteStore;

pub mod backend;
pub mod copy;
pub mod postgres;
mod rows;
pub mod seal;
pub mod sqlite;
mod wal;

impl StoreError {
    /// Whether trying again later may succeed: the database was unreachable, busy or full,
    /// not damaged or someone else's.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Database(_) | StoreError::Open { .. } | StoreError::Locked { .. }
        )
    }
}

/// Why storage failed. Each variant is something an operator can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A sealed value without its key, or with another.
    #[error(transparent)]
    Sealed(#[from] seal::SealError),
    /// The database file could not be opened or created.
    #[error("cannot open database {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// The file is not a SQLite database, or is damaged.
    #[error(
        "database {path} is not a carepath database or is damaged ({reason}); restore it from a backup or point --db at another file"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// Another process holds the write lock for longer than the busy timeout.
    #[error(
        "database is locked by another process for longer than {seconds} s; is another carepath writing to it?"
    )]
    Locked {
        /// The busy timeout.
        seconds: u64,
    },
    /// The schema could not be brought up to date.
    #[error("cannot apply database migrations: {0}")]
    Migrate(String),
    /// A command that only uses a database found none, or one carepath did not make, or one
    /// whose schema is older than this carepath: it creates and migrates nothing.
    #[error("{path} is not a carepath database ready for this command: {reason}")]
    NotReady {
        /// The file.
        path: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A pathway's files changed but its version did not.
    #[error(
        "pathway \"{pathway}\" version {version} is already stored with different content; versions are immutable: give the changed pathway a new \"version\""
    )]
    VersionChanged {
        /// The pathway.
        pathway: String,
        /// Its version.
        version: u32,
    },
    /// Another writer moved an instance between this transaction's read and its write.
    #[error("instance {0} was changed concurrently; retry")]
    Conflict(i64),
    /// A stored row does not decode: the database was edited by hand or is damaged.
    #[error("stored {what} does not decode: {reason}")]
    Data {
        /// Which row.
        what: String,
        /// Why.
        reason: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A result of a storage call.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A pathway version as stored: the files exactly as they were loaded.
#[derive(Clone, Debug)]
pub struct StoredPathway {
    /// The row id; instances point at it.
    pub id: i64,
    /// The pathway's id.
    pub pathway: String,
    /// Its version.
    pub version: u32,
    /// SHA-256 of its files.
    pub hash: String,
    /// The files.
    pub source: PathwaySource,
    /// When it was first loaded.
    pub loaded_at: Timestamp,
}

/// What storing a pathway version did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new version, with its row id.
    Added(i64),
    /// The same version with the same content was already there.
    Unchanged(i64),
}

/// A person who receives notices: a professional, or the family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Their name, as a greeting uses it.
    pub name: String,
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Mobile number, with country code (+45…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The language notices are written in (falls back to the pathway's default).
    #[serde(default = "default_language")]
    pub language: String,
    /// The preferred channel, where the role allows several: `email` or `sms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub channel: Option<Channel>,
}

fn default_language() -> String {
    "da".into()
}

/// An organisation's contact that plays a role for every family of a pathway (or of every
/// pathway): the Red Cross coordinator for Rødovre, the health visitors' shared inbox. A role
/// that a family's own contacts leave empty is taken from here when an instance starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// The organisation, as people name it.
    #[schema(example = "Røde Kors Rødovre")]
    pub organisation: String,
    /// The role it plays, as pathways name it.
    #[schema(example = "coordinator")]
    pub role: String,
    /// Only for this pathway; absent for every pathway that has the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    /// Who receives the notices.
    pub contact: Contact,
}

/// A notice that was a dead letter for want of a contact, addressed and queued again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readdress {
    /// The outbox row.
    pub outbox_id: i64,
    /// Its new recipient.
    pub contact: ContactRef,
    /// The channel and address it goes by now.
    pub channel: Channel,
    /// The address on that channel.
    pub address: String,
    /// Why, for its provenance.
    pub reason: String,
}

/// One family on one pathway, as stored.
#[derive(Clone, Debug)]
pub struct InstanceRow {
    /// The row id.
    pub id: i64,
    /// The family's external reference.
    pub reference: String,
    /// The pathway's id.
    pub pathway: String,
    /// The pathway version it runs on.
    pub pathway_version_id: i64,
    /// The engine's view of it.
    pub instance: Instance,
    /// Role → contact id.
    pub roles: BTreeMap<String, i64>,
    /// The instance whose `enroll` action started this one.
    pub parent_id: Option<i64>,
    /// Enrolled at.
    pub created_at: Timestamp,
    /// Last changed at.
    pub updated_at: Timestamp,
    /// Since when the family is on hold: its timers wait and nothing is sent.
    pub held_since: Option<Timestamp>,
}

/// A timer that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTimer {
    /// Its instance.
    pub instance_id: i64,
    /// Its key within the instance.
    pub key: String,
    /// When it was due.
    pub due: Timestamp,
}

/// Whether an event was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It moved the instance.
    Applied,
    /// It did not fit; nothing changed.
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
        }
    }
}

/// A reported event and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The idempotency key.
    pub key: String,
    /// The family's reference.
    pub reference: String,
    /// The pathway named by the reporter, if any.
    pub pathway: Option<String>,
    /// The instance it was applied to (none when no instance fit).
    pub instance_id: Option<i64>,
    /// The event's name.
    pub name: String,
    /// Its payload.
    pub payload: Value,
    /// When it arrived.
    pub received_at: Timestamp,
    /// Applied or rejected.
    pub outcome: Outcome,
    /// Why it was rejected: a stable code.
    pub code: Option<String>,
    /// Why it was rejected, in words.
    pub reason: Option<String>,
    /// The step it made.
    pub seq: Option<u64>,
    /// A hash of the whole request (family, pathway, instance, event, payload, contacts): the
    /// same key with another request is a conflict. `None` on records made before it was kept.
    #[serde(skip)]
    pub fingerprint: Option<String>,
}

/// An instance a batch refers to: one that exists, or one the batch creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An existing row.
    Id(i64),
    /// The n-th entry of [`Changes::new_instances`].
    New(usize),
}

/// A contact a batch refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactRef {
    /// An existing row.
    Id(i64),
    /// The n-th entry of [`Changes::contacts`].
    New(usize),
}

/// An instance to create.
#[derive(Clone, Debug)]
pub struct NewInstance {
    /// The family's reference.
    pub reference: String,
    /// The pathway's id.
    pub pathway: String,
    /// The version it starts on.
    pub pathway_version_id: i64,
    /// The instance after its first step.
    pub instance: Instance,
    /// Role → contact.
    pub roles: BTreeMap<String, ContactRef>,
    /// The instance that enrolled it.
    pub parent: Option<Target>,
}

/// A rendered notice for the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct NewNotice {
    /// The engine's notice key, unique within the instance.
    pub key: String,
    /// The pathway version that rendered it.
    pub pathway_version_id: i64,
    /// The template.
    pub template: String,
    /// The recipient role.
    pub role: String,
    /// Whether the recipient is the family (quiet hours and opt-out apply).
    pub family: bool,
    /// The recipient.
    pub contact: Option<ContactRef>,
    /// The channel chosen.
    pub channel: Option<Channel>,
    /// The address on that channel.
    pub address: Option<String>,
    /// The text, when carepath wrote it itself; a pathway's notice is rendered at delivery.
    pub text: NoticeText,
    /// The values its template is rendered with at delivery (the recipient is added then).
    pub data: Option<serde_json::Value>,
    /// `queued`, or `dead` when it cannot be sent (no contact, a render error).
    pub status: NoticeStatus,
    /// Not to be sent before.
    pub not_before: Timestamp,
    /// Never to be sent after: it is stale then (status `expired`).
    pub expires_at: Option<Timestamp>,
    /// What it is about, when a later step can withdraw it (`appointment:ID`).
    pub topic: Option<String>,
    /// The calendar entry it carries by email.
    pub calendar: Option<CalendarEntry>,
    /// Why it is dead or skipped.
    pub error: Option<String>,
}

/// A notice's text, rendered once when it is first sent and kept, so what was sent can always be
/// shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NoticeText {
    /// The language it was rendered in.
    pub language: Option<String>,
    /// Email subject.
    pub subject: Option<String>,
    /// The text body.
    pub body: Option<String>,
    /// Email: the HTML alternative, when the template has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// Where an outbox row is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeStatus {
    /// Waiting to be sent.
    Queued,
    /// Handed to the channel.
    Sent,
    /// Not sent on purpose (opt-out, life event, a cancelled appointment), with the reason.
    Skipped,
    /// Not sent because it went stale first (its appointment began, its window closed), with
    /// the reason.
    Expired,
    /// Cannot be sent without someone acting: see its error.
    Dead,
}

impl NoticeStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeStatus::Queued => "queued",
            NoticeStatus::Sent => "sent",
            NoticeStatus::Skipped => "skipped",
            NoticeStatus::Expired => "expired",
            NoticeStatus::Dead => "dead",
        }
    }

    /// Every status, in the order a notice can reach them.
    pub const ALL: [NoticeStatus; 5] = [
        NoticeStatus::Queued,
        NoticeStatus::Sent,
        NoticeStatus::Skipped,
        NoticeStatus::Expired,
        NoticeStatus::Dead,
    ];

    /// Reads a status as a user writes it (`dead`), or says which ones there are.
    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {name:?}: use {}", names.join(", "))
        })
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => NoticeStatus::Queued,
            "sent" => NoticeStatus::Sent,
            "skipped" => NoticeStatus::Skipped,
            "expired" => NoticeStatus::Expired,
            "dead" => NoticeStatus::Dead,
            _ => return None,
        })
    }
}

/// An outbox row as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The deduplication key.
    pub key: String,
    /// The instance.
    pub instance_id: i64,
    /// The pathway version that made it: its time zone is the one to show times in.
    #[serde(skip)]
    pub pathway_version_id: i64,
    /// The family's reference.
    pub reference: String,
    /// The template.
    pub template: String,
    /// The recipient role.
    pub role: String,
    /// Whether the recipient is the family.
    pub family: bool,
    /// The channel.
    pub channel: Option<Channel>,
    /// The address.
    pub address: Option<String>,
    /// The text as rendered when the notice was emitted.
    #[serde(flatten)]
    pub text: NoticeText,
    /// Where it is.
    pub status: NoticeStatus,
    /// Not before.
    pub not_before: Timestamp,
    /// Never after: stale from then on.
    pub expires_at: Option<Timestamp>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// Created at.
    pub created_at: Timestamp,
    /// The recipient's name, when a contact plays the role.
    pub recipient: Option<String>,
    /// The calendar entry it carries by email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calendar: Option<CalendarEntry>,
    /// What the SMS gateway last reported of it, and when: absent until a receipt arrives.
    pub receipt: Option<ReceiptState>,
    /// When the last receipt arrived.
    pub receipt_at: Option<Timestamp>,
    /// The values its template is rendered with, until it is rendered: never shown.
    #[serde(skip)]
    pub data: Option<serde_json::Value>,
    /// The recipient's language, for rendering.
    #[serde(skip)]
    pub recipient_language: Option<String>,
}

impl OutboxRow {
    /// Whether its text is still to be rendered (at delivery, or for showing it).
    pub fn unrendered(&self) -> bool {
        self.channel.is_some() && self.unsent_text()
    }

    /// Whether it holds the values to render it and no text yet: a notice that never went,
    /// which a retry can still render.
    pub fn unsent_text(&self) -> bool {
        self.text.body.is_none() && self.data.is_some()
    }
}

/// What an SMS gateway reported of a message it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptState {
    /// On its way: buffered, at the operator, not final.
    Pending,
    /// On the phone.
    Delivered,
    /// Not deliverable: rejected, unknown number, barred. Final.
    Failed,
    /// The network gave up before the phone could be reached. Final.
    Expired,
}

impl ReceiptState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Pending => "pending",
            ReceiptState::Delivered => "delivered",
            ReceiptState::Failed => "failed",
            ReceiptState::Expired => "expired",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ReceiptState::Pending,
            ReceiptState::Delivered,
            ReceiptState::Failed,
            ReceiptState::Expired,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// No later report changes it.
    pub fn is_final(self) -> bool {
        self != ReceiptState::Pending
    }

    /// The message did not reach the phone and never will: a dead letter.
    pub fn is_failure(self) -> bool {
        matches!(self, ReceiptState::Failed | ReceiptState::Expired)
    }
}

/// One delivery receipt from an SMS gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptReport {
    /// The notice's key, as it was handed to the gateway.
    pub key: String,
    /// What it says.
    pub state: ReceiptState,
    /// The gateway's own words, for the provenance: its status, error code and text.
    pub detail: String,
}

/// Why a notice whose SMS did not arrive is a dead letter, in words an operator can act on.
pub fn receipt_failure(state: ReceiptState, detail: &str, id: i64) -> String {
    let what = match state {
        ReceiptState::Expired => "the phone could not be reached before the network gave up",
        _ => "the phone network could not deliver the SMS",
    };
    format!("{what} ({detail}): check the family's number, then `carepath outbox retry {id}`")
}

/// One line of the audit log: an operator's action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who: `token NAME` through the API, `cli USER` from the command line, `gateway NAME`
    /// for a family's reply by SMS.
    pub actor: String,
    /// What: `enrol`, `event`, `hold`, `resume`, `opt-out`, `retry`, ….
    pub action: String,
    /// The family's reference, when the action is about one family.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The instance, when the action names one.
    pub instance_id: Option<i64>,
    /// What else identifies the action: an event's name and key, a notice's id. Never a
    /// message body, a payload or a sensitive value.
    pub detail: Option<String>,
    /// How it ended: `ok`, or the refusal's status and code.
    pub outcome: String,
}

/// What an erasure removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    /// Instances de-identified.
    pub instances: usize,
    /// Contacts emptied (those no other family's instance uses).
    pub contacts: usize,
    /// Events whose payload and reason were removed.
    pub events: usize,
    /// Notices whose text and address were removed.
    pub notices: usize,
}

/// Which audit lines to read.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only about this family.
    pub reference: Option<String>,
    /// Only from this moment on.
    pub since: Option<Timestamp>,
    /// At most this many, oldest first.
    pub limit: Option<u32>,
}

/// What recording a receipt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// Recorded on the notice; `dead` when a final failure made it a dead letter.
    Recorded {
        /// The notice's row.
        id: i64,
        /// It became a dead letter.
        dead: bool,
    },
    /// The notice has a final receipt already; a late report does not change it.
    Stale {
        /// The notice's row.
        id: i64,
        /// Its final state.
        state: ReceiptState,
    },
    /// No notice has this key.
    Missing,
}

/// One line of an outbox row's provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboxLogEntry {
    /// When.
    pub at: Timestamp,
    /// The status it entered, or `attempt` for a failed try that will be retried.
    pub status: String,
    /// What the channel said, or why.
    pub detail: Option<String>,
}

/// What became of one delivery attempt (or of the decision not to attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The channel accepted it.
    Sent {
        /// The row.
        id: i64,
        /// The channel's receipt.
        detail: String,
    },
    /// A transient failure: try again at `not_before`.
    Retry {
        /// The row.
        id: i64,
        /// The next attempt.
        not_before: Timestamp,
        /// What went wrong.
        error: String,
    },
    /// A permanent failure, or the attempts are used up: a dead letter.
    Dead {
        /// The row.
        id: i64,
        /// Why.
        error: String,
    },
    /// Not now: a family's quiet hours. Not an attempt.
    Held {
        /// The row.
        id: i64,
        /// When it may go.
        until: Timestamp,
        /// Why it waits.
        reason: String,
    },
    /// Not at all, on purpose: the recipient opted out.
    Skipped {
        /// The row.
        id: i64,
        /// Why.
        reason: String,
    },
    /// Not at all: it went stale before it could go.
    Expired {
        /// The row.
        id: i64,
        /// Why, naming the moment it expired.
        reason: String,
    },
}

/// What asking to retry a notice found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// It was dead or skipped and is queued again.
    Queued,
    /// It is not dead or skipped: nothing changed.
    NotRetryable(NoticeStatus),
    /// There is no such notice.
    Missing,
}

/// An update of an existing instance, applied only if nobody moved it meanwhile.
#[derive(Clone, Debug)]
pub struct InstanceUpdate {
    /// The row.
    pub id: i64,
    /// Its `seq` when read.
    pub expected_seq: u64,
    /// The instance afterwards.
    pub instance: Instance,
    /// Role → contact, when the step assigned contacts; `None` keeps the row's.
    pub roles: Option<BTreeMap<String, ContactRef>>,
    /// The pathway version it moves onto (a migration); `None` keeps the row's.
    pub pathway_version_id: Option<i64>,
}

/// The template name of carepath's own notice that a timer could not be armed.
pub const TIMER_NOT_ARMED: &str = "carepath-timer-not-armed";

/// The template name of carepath's own notice that the horizon closed an instance.
pub const HORIZON_CLOSED: &str = "carepath-horizon-closed";

/// The template name of carepath's own notice that a life event of the family put a pathway on
/// hold.
pub const LIFE_EVENT: &str = "carepath-life-event";

/// carepath's own notices to an instance's owner: they ask someone to act on the instance, so
/// a hold on it does not keep them back.
pub const OWN_TEMPLATES: [&str; 3] = [TIMER_NOT_ARMED, HORIZON_CLOSED, LIFE_EVENT];

/// Everything one batch writes, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// The batch's time, by the runtime's clock: rows are stamped with it.
    pub now: Timestamp,
    /// Contacts to create.
    pub contacts: Vec<Contact>,
    /// Instances to create (written in order: a parent before its children).
    pub new_instances: Vec<NewInstance>,
    /// Instances to update.
    pub updates: Vec<InstanceUpdate>,
    /// Timers to remove: (instance, key).
    pub timers_removed: Vec<(i64, String)>,
    /// Timers to add.
    pub timers_added: Vec<(Target, ArmedTimer)>,
    /// History entries.
    pub history: Vec<(Target, History)>,
    /// Notices.
    pub outbox: Vec<(Target, NewNotice)>,
    /// Events recorded.
    pub events: Vec<(Option<Target>, EventRecord)>,
    /// Queued notices from earlier steps that a step made stale, skipped with the reason
    /// before this batch's notices are written.
    pub withdrawals: Vec<Withdraw>,
    /// Instances to put on hold: (instance, by whom).
    pub holds: Vec<(i64, String)>,
    /// Dead letters addressed and queued again, now that somebody plays their role.
    pub readdressed: Vec<Readdress>,
    /// The changes were computed from a [`Storage::snapshot`], not in the write transaction:
    /// besides an instance whose seq moved, the write refuses as a [`StoreError::Conflict`] one
    /// put on hold or erased since the snapshot, neither of which moves the seq.
    pub from_snapshot: bool,
}

/// Queued notices of one instance to skip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdraw {
    /// The instance.
    pub instance_id: i64,
    /// Which of its queued notices.
    pub which: Withdrawn,
    /// Why, for their provenance.
    pub reason: String,
}

/// Which queued notices a [`Withdraw`] skips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withdrawn {
    /// Every notice to the family: the pathway ended (a life event).
    Family,
    /// Every notice: the pathway was stopped by a life event it does not take, and what it
    /// queued before is stale, for the family and the professionals alike.
    All,
    /// The notices of one topic: an appointment was cancelled or moved.
    Topic(String),
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty()
            && self.new_instances.is_empty()
            && self.updates.is_empty()
            && self.timers_removed.is_empty()
            && self.timers_added.is_empty()
            && self.history.is_empty()
            && self.outbox.is_empty()
            && self.events.is_empty()
            && self.withdrawals.is_empty()
    }
}

/// Which outbox rows to list.
#[derive(Clone, Debug, Default)]
pub struct OutboxFilter {
    /// Only this status.
    pub status: Option<NoticeStatus>,
    /// Only this instance.
    pub instance_id: Option<i64>,
    /// Only rows whose `not_before` has come by this moment.
    pub due_by: Option<Timestamp>,
    /// At most this many, oldest first.
    pub limit: Option<u32>,
    /// Only rows of instances on these pathways.
    pub pathways: Option<Vec<String>>,
    /// Leave out rows of instances on hold (delivery: they wait for the resume).
    pub skip_held: bool,
    /// Only rows that a hold keeps back: of instances on hold, and not carepath's own.
    pub held_only: bool,
}

/// Which instances to list.
#[derive(Clone, Debug, Default)]
pub struct InstanceFilter {
    /// Only instances on these pathways.
    pub pathways: Option<Vec<String>>,
    /// Only in this state.
    pub state: Option<String>,
    /// Only owned by this role.
    pub owner: Option<String>,
    /// Only with ids above this one (the cursor of the previous page).
    pub after: Option<i64>,
    /// Only those still on their pathway.
    pub active_only: bool,
    /// Only those enrolled before this moment.
    pub enrolled_before: Option<Timestamp>,
    /// Only this family's.
    pub reference: Option<String>,
    /// Only families whose reference starts with this.
    pub reference_prefix: Option<String>,
    /// Only instances waiting on somebody: a handoff or activity past its deadline.
    pub overdue_only: bool,
    /// Overdue instances only, the one waiting longest first (not a cursor's order: `after`
    /// does not page it).
    pub oldest_overdue_first: bool,
    /// At most this many, by id.
    pub limit: u32,
}

/// An API response kept under its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptResponse {
    /// A hash of the request it answered.
    pub fingerprint: String,
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Counts for monitoring, read when metrics are scraped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// (pathway, active|finished, count).
    pub instances: Vec<(String, String, u64)>,
    /// Instances on hold.
    pub held: u64,
    /// (status, count) of outbox rows.
    pub outbox: Vec<(String, u64)>,
    /// Pending timers.
    pub timers: u64,
    /// Pending timers already due (the worker has not reached them yet).
    pub timers_due: u64,
    /// When the earliest of those was due.
    pub oldest_due: Option<Timestamp>,
}

/// A storage backend: reads outside transactions, and write transactions.
pub trait Storage: Send + Sync + 'static {
    /// A write transaction.
    type Tx: Tx;

    /// Begins a write transaction. On SQLite it takes the write lock at once, so what it reads
    /// cannot change under it.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;

    /// Begins a transaction that only reads, on a snapshot of the database, or `None` where
    /// the backend has none to offer. The runtime prepares the next batch of a burst of due
    /// timers in one while the batch before it is written, so that computing and writing run
    /// side by side; what it prepared is written with [`Changes::from_snapshot`] set.
    /// PostgreSQL offers none: its workers claim the rows they read, in the write transaction.
    fn snapshot(&self) -> impl Future<Output = Result<Option<Self::Tx>>> + Send;

    /// Stores a pathway version, or confirms it is stored with the same content.
    fn put_pathway(
        &self,
        source: &PathwaySource,
        pathway: &str,
        version: u32,
        now: Timestamp,
    ) -> impl Future<Output = Result<Stored>> + Send;

    /// Every stored pathway version, oldest first.
    fn pathways(&self) -> impl Future<Output = Result<Vec<StoredPathway>>> + Send;

    /// When the earliest pending timer of an instance not on hold is due.
    fn next_due(&self) -> impl Future<Output = Result<Option<Timestamp>>> + Send;

    /// A family's instances on every pathway, oldest first.
    fn instances_by_ref(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Vec<InstanceRow>>> + Send;

    /// Every instance, by id: for reports and tests.
    fn all_instances(&self) -> impl Future<Output = Result<Vec<InstanceRow>>> + Send;

    /// One instance.
    fn instance(&self, id: i64) -> impl Future<Output = Result<Option<InstanceRow>>> + Send;

    /// Instances matching `filter`, by id.
    fn list_instances(
        &self,
        filter: &InstanceFilter,
    ) -> impl Future<Output = Result<Vec<InstanceRow>>> + Send;

    /// Puts an instance on hold (`by` says who), or resumes it (`by` is `None`). Returns
    /// whether anything changed.
    fn set_held(
        &self,
        instance_id: i64,
        by: Option<&str>,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Events recorded against an instance, oldest first.
    fn instance_events(
        &self,
        instance_id: i64,
    ) -> impl Future<Output = Result<Vec<EventRecord>>> + Send;

    /// The response kept for a caller's idempotency key.
    fn kept_response(
        &self,
        caller: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<KeptResponse>>> + Send;

    /// Keeps a response under a caller's idempotency key; the first one kept wins.
    fn keep_response(
        &self,
        caller: &str,
        key: &str,
        response: &KeptResponse,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Counts for monitoring.
    fn stats(&self, now: Timestamp) -> impl Future<Output = Result<Stats>> + Send;

    /// An instance's history, in order.
    fn history(&self, instance_id: i64) -> impl Future<Output = Result<Vec<History>>> + Send;

    /// Pending timers of an instance, by due time.
    fn timers(&self, instance_id: i64) -> impl Future<Output = Result<Vec<DueTimer>>> + Send;

    /// Events recorded for a family, oldest first.
    fn events(&self, reference: &str) -> impl Future<Output = Result<Vec<EventRecord>>> + Send;

    /// Outbox rows.
    fn outbox(&self, filter: &OutboxFilter) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;

    /// Contacts by id.
    fn contacts(&self, ids: &[i64]) -> impl Future<Output = Result<BTreeMap<i64, Contact>>> + Send;

    /// An outbox row's provenance, oldest first.
    fn outbox_log(
        &self,
        outbox_id: i64,
    ) -> impl Future<Output = Result<Vec<OutboxLogEntry>>> + Send;

    /// Erases the personal data of the instances `ids` in one transaction: their fields and
    /// appointments, the contacts only they use, their events' payloads and reasons, their
    /// notices' texts, addresses and calendar entries, their kept API answers; their reference
    /// becomes `erased:ID`. An active one is finished: its timers are removed and its queued
    /// notices skipped. States, times and counts stay, for statistics. Deleted content is
    /// overwritten (`secure_delete`) and the write-ahead log emptied afterwards, so the file
    /// does not keep it.
    fn erase(
        &self,
        ids: &[i64],
        reason: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Erased>> + Send;

    /// Up to `limit` instances of pathway version `version_id` that finished before `before`
    /// and are not erased yet: those whose retention ran out.
    fn finished_before(
        &self,
        version_id: i64,
        before: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Appends a line to the audit log, which nothing changes or deletes afterwards.
    fn append_audit(&self, entry: &AuditEntry) -> impl Future<Output = Result<()>> + Send;

    /// Audit lines, oldest first.
    fn audit_log(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = Result<Vec<AuditEntry>>> + Send;

    /// Writes and commits a small row: fails while the database cannot take writes (a full
    /// disk, a file that went read-only), for `/healthz`.
    fn check_writes(&self, now: Timestamp) -> impl Future<Output = Result<()>> + Send;

    /// Claims up to `limit` queued notices due by `now` for `worker`, with a lease until
    /// `until`, oldest first: no other worker is handed them before the lease ends or `worker`
    /// records what it did ([`Storage::record_deliveries`] clears the claim). Notices of a
    /// family on hold wait for the resume.
    fn claim_notices(
        &self,
        worker: &str,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;

    /// When the next queued notice may be claimed: its `not_before`, or the end of a lease
    /// another worker holds on it, whichever is later. Notices of families on hold wait for
    /// the resume, which wakes the worker.
    fn next_notice(&self) -> impl Future<Output = Result<Option<Timestamp>>> + Send;

    /// Records an SMS gateway's receipt on the notice it is about, in its provenance; a final
    /// failure of a sent notice makes it a dead letter with the operator-facing reason.
    fn record_receipt(
        &self,
        report: &ReceiptReport,
        now: Timestamp,
    ) -> impl Future<Output = Result<ReceiptOutcome>> + Send;

    /// Replaces the directory with `entries`, in one transaction. Returns how many it holds.
    fn replace_directory(
        &self,
        entries: &[DirectoryEntry],
    ) -> impl Future<Output = Result<usize>> + Send;

    /// The directory, by role and pathway.
    fn directory(&self) -> impl Future<Output = Result<Vec<DirectoryEntry>>> + Send;

    /// Stores the text delivery rendered for each notice, before it is sent: what was sent is
    /// then on record even if the process dies mid-send, and a retry sends the same text. Only
    /// rows without a text yet are written.
    fn set_texts(&self, texts: &[(i64, NoticeText)]) -> impl Future<Output = Result<()>> + Send;

    /// Records what delivery did with each row, and logs it, in one transaction. Sent, Retry
    /// and Dead count as attempts. A row's status changes only while it is queued, so a
    /// worker whose lease ran out cannot overwrite what another worker recorded; the claim is
    /// cleared.
    fn record_deliveries(
        &self,
        deliveries: &[Delivery],
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Queues a dead or skipped notice again, with a fresh set of attempts.
    fn requeue(
        &self,
        outbox_id: i64,
        now: Timestamp,
    ) -> impl Future<Output = Result<Requeue>> + Send;

    /// Opts an address out of a channel (`opted_out`), or back in. Returns whether anything
    /// changed.
    fn set_opt_out(
        &self,
        address: &str,
        channel: Channel,
        opted_out: bool,
        source: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Which of these (normalised address, channel) pairs are opted out.
    fn opted_out(
        &self,
        addresses: &[(String, Channel)],
    ) -> impl Future<Output = Result<Vec<(String, Channel)>>> + Send;

    /// This database's installation id: random, made with the database, never changed.
    fn installation(&self) -> impl Future<Output = Result<String>> + Send;

    /// Remembers an inbound webhook call by `key` until `forget_before`; returns `false` when
    /// the key was seen already (a replay). Older keys are forgotten in the same call.
    fn remember_inbound(
        &self,
        key: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Who or what opted a (normalised) address out of a channel (`sms STOP`, `api NAME`,
    /// `cli`), if it is opted out.
    fn opt_out_source(
        &self,
        address: &str,
        channel: Channel,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// The pathways of the instances whose contacts have this (normalised) address on this
    /// channel: whose families an opt-out of it touches.
    fn address_pathways(
        &self,
        address: &str,
        channel: Channel,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
}

/// A write transaction. Dropped without [`Tx::commit`], it rolls back.
pub trait Tx: Send {
    /// Up to `limit` timers due at or before `now`, earliest first (by due time, instance and
    /// key), and after `after` in that order when it is given; an instance on hold's timers
    /// wait.
    fn due_timers(
        &mut self,
        now: Timestamp,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DueTimer>>> + Send;

    /// Instances by id.
    fn instances(&mut self, ids: &[i64]) -> impl Future<Output = Result<Vec<InstanceRow>>> + Send;

    /// The directory with each entry's contact row.
    fn directory(&mut self) -> impl Future<Output = Result<Vec<(i64, DirectoryEntry)>>> + Send;

    /// A family's active instances.
    fn active_instances(
        &mut self,
        reference: &str,
    ) -> impl Future<Output = Result<Vec<InstanceRow>>> + Send;

    /// Contacts by id.
    fn contacts(
        &mut self,
        ids: &[i64],
    ) -> impl Future<Output = Result<BTreeMap<i64, Contact>>> + Send;

    /// Earlier events with these idempotency keys.
    fn events_by_key(
        &mut self,
        keys: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, EventRecord>>> + Send;

    /// Writes a batch's changes. Returns the ids given to the new instances, in order.
    fn write(&mut self, changes: Changes) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Makes it all durable.
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
}
