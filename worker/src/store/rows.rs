//! What both backends share: how a stored row reads back into the runtime's types, how values
//! are stored (times as Unix milliseconds, JSON as text), and the SQL fragments that are the
//! same in both dialects.

use carepath_engine::pathway::Channel;
use carepath_engine::step::{History, Instance};
use jiff::Timestamp;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use std::path::Path;

use carepath_engine::PathwaySource;
use sha2::{Digest, Sha256};

use super::seal::Seal;
use super::{
    Contact, Delivery, DueTimer, EventRecord, InstanceRow, NoticeStatus, NoticeText, OWN_TEMPLATES,
    OutboxRow, Outcome, ReceiptState, Result, StoreError,
};

/// The content hash of a pathway's files: their paths and texts, in order.
pub fn content_hash(source: &PathwaySource) -> String {
    let mut h = Sha256::new();
    let mut files: Vec<_> = std::iter::once(&source.pathway)
        .chain(&source.templates)
        .map(|f| {
            // The folder a pathway was loaded from is not part of its content.
            let name = Path::new(&f.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, &f.text)
        })
        .collect();
    files.sort();
    for (name, text) in files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A value both backends decode the same way.
pub(super) trait Readable:
    Sized
    + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}

impl<T> Readable for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A row of either backend, read by column name: the decoders below are written once.
pub(super) trait Columns {
    /// The value of `column`.
    fn read<T: Readable>(&self, column: &str) -> Result<T>;
}

impl Columns for SqliteRow {
    fn read<T: Readable>(&self, column: &str) -> Result<T> {
        Ok(self.try_get(column)?)
    }
}

impl Columns for PgRow {
    fn read<T: Readable>(&self, column: &str) -> Result<T> {
        Ok(self.try_get(column)?)
    }
}

pub(super) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(super) fn ts(ms: i64, what: &str) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Data {
        what: what.into(),
        reason: e.to_string(),
    })
}

pub(super) fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Data {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// An instance as stored: its fields sealed when there is a data key.
pub(super) fn sealed_body(
    seal: &Seal,
    instance: &carepath_engine::step::Instance,
) -> Result<String> {
    if !seal.is_set() {
        // Straight to text: no tree of values built and dropped for every step.
        return Ok(to_json(instance));
    }
    let mut body = serde_json::to_value(instance).unwrap_or_default();
    if let Some(fields) = body.get_mut("fields") {
        *fields = seal.seal("fields", fields)?;
    }
    Ok(body.to_string())
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising our own plain data types cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn channel(s: Option<String>) -> Option<Channel> {
    match s.as_deref() {
        Some("email") => Some(Channel::Email),
        Some("sms") => Some(Channel::Sms),
        _ => None,
    }
}

pub(super) const INSTANCE_COLUMNS: &str = "id, ref, pathway, pathway_version_id, body, roles, parent_id, created_at, updated_at, \
     (SELECT since FROM holds h WHERE h.instance_id = instances.id) AS held_since";

pub(super) fn instance_row(r: &impl Columns, seal: &Seal) -> Result<InstanceRow> {
    let id: i64 = r.read("id")?;
    let what = format!("instance {id}");
    // Parsed straight into the engine's type; sealed fields arrive as a one-entry map that is
    // opened afterwards.
    let mut instance: Instance = json(&r.read::<String>("body")?, &what)?;
    if instance.fields.len() == 1 {
        let fields = Value::Object(std::mem::take(&mut instance.fields));
        instance.fields = match seal.open("fields", fields)? {
            Value::Object(map) => map,
            // Never quoted: these are a family's fields.
            _ => {
                return Err(StoreError::Data {
                    what,
                    reason: "its sealed fields do not open to an object".into(),
                });
            }
        };
    }
    Ok(InstanceRow {
        id,
        reference: r.read("ref")?,
        pathway: r.read("pathway")?,
        pathway_version_id: r.read("pathway_version_id")?,
        instance,
        roles: json(&r.read::<String>("roles")?, &what)?,
        parent_id: r.read("parent_id")?,
        created_at: ts(r.read("created_at")?, &what)?,
        updated_at: ts(r.read("updated_at")?, &what)?,
        held_since: r
            .read::<Option<i64>>("held_since")?
            .map(|t| ts(t, &what))
            .transpose()?,
    })
}

pub(super) fn timer_row(r: &impl Columns) -> Result<DueTimer> {
    Ok(DueTimer {
        instance_id: r.read("instance_id")?,
        key: r.read("key")?,
        due: ts(r.read("due")?, "timer")?,
    })
}

pub(super) fn contact_row(r: &impl Columns) -> Result<(i64, Contact)> {
    Ok((
        r.read("id")?,
        Contact {
            name: r.read("name")?,
            email: r.read("email")?,
            phone: r.read("phone")?,
            language: r.read("language")?,
            channel: channel(r.read("channel")?),
        },
    ))
}

pub(super) fn event_row(r: &impl Columns, seal: &Seal) -> Result<EventRecord> {
    let key: String = r.read("idempotency_key")?;
    let what = format!("event {key}");
    let outcome: String = r.read("outcome")?;
    Ok(EventRecord {
        reference: r.read("ref")?,
        pathway: r.read("pathway")?,
        instance_id: r.read("instance_id")?,
        name: r.read("name")?,
        payload: seal.open("payload", json(&r.read::<String>("payload")?, &what)?)?,
        received_at: ts(r.read("received_at")?, &what)?,
        outcome: if outcome == "applied" {
            Outcome::Applied
        } else {
            Outcome::Rejected
        },
        code: r.read("code")?,
        reason: r.read("reason")?,
        seq: r.read::<Option<i64>>("seq")?.map(|s| s as u64),
        fingerprint: r.read("fingerprint")?,
        key,
    })
}

pub(super) fn history_row(r: &impl Columns) -> Result<History> {
    let seq: i64 = r.read("seq")?;
    let what = format!("history entry {seq}");
    Ok(History {
        seq: seq as u64,
        at: ts(r.read("at")?, &what)?,
        from: r.read("from_state")?,
        to: r.read("to_state")?,
        cause: json(&r.read::<String>("cause")?, &what)?,
        notes: json(&r.read::<String>("notes")?, &what)?,
    })
}

pub(super) fn outbox_row(r: &impl Columns, seal: &Seal) -> Result<OutboxRow> {
    let id: i64 = r.read("id")?;
    let what = format!("outbox row {id}");
    let status: String = r.read("status")?;
    Ok(OutboxRow {
        id,
        key: r.read("key")?,
        instance_id: r.read("instance_id")?,
        pathway_version_id: r.read("pathway_version_id")?,
        reference: r.read("ref")?,
        template: r.read("template")?,
        role: r.read("role")?,
        family: r.read::<i64>("family")? != 0,
        channel: channel(r.read("channel")?),
        address: r.read("address")?,
        text: NoticeText {
            language: r.read("language")?,
            subject: r.read("subject")?,
            body: r.read("body")?,
            html: r.read("html")?,
        },
        status: NoticeStatus::parse(&status).ok_or_else(|| StoreError::Data {
            what: what.clone(),
            reason: format!("unknown status {status:?}"),
        })?,
        not_before: ts(r.read("not_before")?, &what)?,
        expires_at: r
            .read::<Option<i64>>("expires_at")?
            .map(|t| ts(t, &what))
            .transpose()?,
        attempts: r.read::<i64>("attempts")? as u32,
        last_error: r.read("last_error")?,
        created_at: ts(r.read("created_at")?, &what)?,
        recipient: r.read("recipient")?,
        calendar: r
            .read::<Option<String>>("calendar")?
            .map(|c| json(&c, &what))
            .transpose()?,
        receipt: r
            .read::<Option<String>>("receipt")?
            .map(|s| {
                ReceiptState::parse(&s).ok_or_else(|| StoreError::Data {
                    what: what.clone(),
                    reason: format!("unknown receipt {s:?}"),
                })
            })
            .transpose()?,
        receipt_at: r
            .read::<Option<i64>>("receipt_at")?
            .map(|t| ts(t, &what))
            .transpose()?,
        data: r
            .read::<Option<String>>("data")?
            .map(|d| Ok::<_, StoreError>(seal.open("data", json(&d, &what)?)?))
            .transpose()?,
        recipient_language: r.read("recipient_language")?,
    })
}

/// An outbox row with its family's reference and its recipient's name, up to `WHERE`.
pub(super) const OUTBOX_SELECT: &str = "SELECT o.*, i.ref, c.name AS recipient, c.language AS recipient_language FROM outbox o \
     JOIN instances i ON i.id = o.instance_id LEFT JOIN contacts c ON c.id = o.contact_id";

/// carepath's own templates ([`OWN_TEMPLATES`]) as an SQL list: `'a', 'b'`.
pub(super) fn own_templates() -> String {
    OWN_TEMPLATES
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition that an outbox row `o` may go: its instance is not on hold, or it is one of
/// carepath's own notices to the owner ([`OWN_TEMPLATES`]), which ask someone to act on it.
pub(super) fn not_held() -> String {
    format!(
        "(o.template IN ({}) OR NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = o.instance_id))",
        own_templates()
    )
}

/// The condition that a hold keeps an outbox row `o` back, read from the holds, which are few,
/// to their notices: not a look at every queued row.
pub(super) fn held() -> String {
    format!(
        "(o.instance_id IN (SELECT instance_id FROM holds) AND o.template NOT IN ({}))",
        own_templates()
    )
}

pub(super) fn status_str(i: &carepath_engine::Instance) -> &'static str {
    match i.status {
        carepath_engine::step::Status::Active => "active",
        carepath_engine::step::Status::Finished => "finished",
    }
}

pub(super) fn pathway_row(r: &impl Columns) -> Result<super::StoredPathway> {
    let id: i64 = r.read("id")?;
    let what = format!("pathway version {id}");
    Ok(super::StoredPathway {
        id,
        pathway: r.read("pathway")?,
        version: r.read::<i64>("version")? as u32,
        hash: r.read("hash")?,
        source: json(&r.read::<String>("source")?, &what)?,
        loaded_at: ts(r.read("loaded_at")?, &what)?,
    })
}

pub(super) fn audit_row(r: &impl Columns) -> Result<super::AuditEntry> {
    Ok(super::AuditEntry {
        at: ts(r.read("at")?, "audit line")?,
        actor: r.read("actor")?,
        action: r.read("action")?,
        reference: r.read("ref")?,
        instance_id: r.read("instance_id")?,
        detail: r.read("detail")?,
        outcome: r.read("outcome")?,
    })
}

/// One delivery outcome as the outbox row's new values.
pub(super) struct DeliveryRow<'a> {
    pub id: i64,
    pub status: &'static str,
    /// A new time to try, or none to keep the row's.
    pub not_before: Option<i64>,
    /// 1 when it was an attempt to send.
    pub attempted: i64,
    pub detail: &'a str,
    /// What its provenance line says it was.
    shown: &'static str,
}

impl<'a> DeliveryRow<'a> {
    pub fn of(d: &'a Delivery) -> Self {
        let (id, status, not_before, attempted, detail, shown) = match d {
            Delivery::Sent { id, detail } => (*id, "sent", None, 1, detail.as_str(), "sent"),
            Delivery::Retry {
                id,
                not_before,
                error,
            } => (
                *id,
                "queued",
                Some(ms(*not_before)),
                1,
                error.as_str(),
                "attempt failed",
            ),
            Delivery::Dead { id, error } => (*id, "dead", None, 1, error.as_str(), "dead"),
            Delivery::Held { id, until, reason } => {
                (*id, "queued", Some(ms(*until)), 0, reason.as_str(), "held")
            }
            Delivery::Skipped { id, reason } => {
                (*id, "skipped", None, 0, reason.as_str(), "skipped")
            }
            Delivery::Expired { id, reason } => {
                (*id, "expired", None, 0, reason.as_str(), "expired")
            }
        };
        DeliveryRow {
            id,
            status,
            not_before,
            attempted,
            detail,
            shown,
        }
    }

    /// Its provenance line (status, detail), given the rows whose outcome was recorded: what a
    /// worker did after its claim ran out and another worker recorded the notice is history,
    /// not its state.
    pub fn log_line(&self, applied: &std::collections::HashSet<i64>) -> (String, String) {
        if applied.contains(&self.id) {
            (self.shown.to_string(), self.detail.to_string())
        } else {
            (
                "late report".to_string(),
                format!(
                    "{}, by a worker whose claim had run out: {}",
                    self.shown, self.detail
                ),
            )
        }
    }
}
