//! Simulation: one family's whole pathway on the real runtime — a real SQLite file, the real
//! worker steps, the real templates — on a virtual clock that jumps from one due moment to the
//! next. What it prints is what production would do, in order, in local time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use carepath_engine::IsoDuration;
use carepath_engine::step::Cause;

use crate::catalog::{Catalog, CatalogError};
use crate::clock::{Clock, VirtualClock};
use crate::delivery::Notifier;
use crate::runtime::{EnrolError, EnrolRequest, EventRequest, Runtime, RuntimeError};
use crate::store::{Contact, NoticeStatus, OutboxFilter, SqliteStore, Storage, StoreError};
use carepath_notifier::NotifierConfig;
use carepath_notifier::channel::{mask_email, mask_phone};
use carepath_notifier::file::{Console, FileConfig};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulateError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The family file or event script is not what it should be.
    #[error("{path}: {reason}")]
    Input {
        /// The file.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// The pathways did not load.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The family could not be enrolled.
    #[error("enrolment refused: {0}")]
    Enrol(#[from] EnrolError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A family to simulate (and the shape of `carepath enroll`'s file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// The family's reference.
    #[serde(rename = "ref", default = "default_ref")]
    pub reference: String,
    /// The pathway (default: the one simulated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    /// When the family is enrolled, e.g. `2027-01-11T09:00:00+01:00`, or a local time
    /// `2027-01-11T09:00` in the pathway's time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<String>,
    /// The family's fields.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Who plays each role.
    #[serde(default)]
    pub contacts: BTreeMap<String, Contact>,
}

fn default_ref() -> String {
    "SIM-0001".into()
}

/// One scripted event.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedEvent {
    /// When: a duration after enrolment (`P10D`), or a time (`2027-03-01T10:00:00+01:00`, or
    /// local `2027-03-01T10:00`).
    pub at: String,
    /// The event.
    pub event: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
    /// The pathway, when the family is on several that take the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    /// Contacts assigned with the event, role → contact.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contacts: BTreeMap<String, Contact>,
}

/// What a simulation shows, in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// The family.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The time zone times are shown in.
    pub time_zone: String,
    /// Every transition, notice and refused event.
    pub entries: Vec<Entry>,
}

/// One line of a timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A step: enrolment, event or timer.
    Transition {
        /// Local time.
        at: String,
        /// The pathway.
        pathway: String,
        /// The state before.
        from: Option<String>,
        /// The state after.
        to: String,
        /// The responsible role after.
        owner: Option<String>,
        /// What caused it, in words.
        cause: String,
        /// What else happened.
        notes: Vec<String>,
    },
    /// A notice, as rendered.
    Notice {
        /// Local time it is to go out (quiet hours may hold it past its creation).
        at: String,
        /// The pathway.
        pathway: String,
        /// The recipient role.
        to: String,
        /// The template.
        template: String,
        /// The channel.
        channel: Option<String>,
        /// The address, masked.
        address: Option<String>,
        /// The language.
        language: Option<String>,
        /// Email subject.
        subject: Option<String>,
        /// The text.
        body: Option<String>,
        /// sent, skipped, expired, dead, or queued (not yet due when the simulation ended).
        status: String,
        /// Why it waited past its creation (a family's quiet hours), if it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        held: Option<String>,
        /// Why it cannot be sent.
        error: Option<String>,
    },
    /// An event the runtime refused.
    Rejected {
        /// Local time.
        at: String,
        /// The event.
        event: String,
        /// The stable code.
        code: String,
        /// Why.
        reason: String,
    },
}

/// A moment: a duration after `start` (`P10D`), a time with an offset, or a local time in `tz`.
pub fn moment(text: &str, start: Timestamp, tz: &TimeZone) -> Result<Timestamp, String> {
    if text.starts_with('P') || text.starts_with("-P") {
        let d: IsoDuration = text.parse().map_err(|e| format!("{e}"))?;
        return carepath_engine::time::after(start, d.span(), tz).map_err(|e| e.to_string());
    }
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    text.parse::<jiff::civil::DateTime>()
        .map_err(|e| e.to_string())
        .and_then(|dt| dt.to_zoned_datetime(tz.clone()).map_err(|e| e.to_string()))
        .map(|z| z.timestamp())
        .map_err(|e| {
            format!("{text:?} is neither a duration (P10D), a time with offset, nor a local time (2027-03-01T10:00): {e}")
        })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SimulateError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SimulateError::Input {
        path: path.display().to_string(),
        reason: format!("line {} column {}: {e}", e.line(), e.column()),
    })
}

/// Reads a family file.
pub fn read_family(path: &Path) -> Result<Family, SimulateError> {
    read_json(path)
}

/// Reads an event script.
pub fn read_script(path: &Path) -> Result<Vec<ScriptedEvent>, SimulateError> {
    read_json(path)
}

/// The pathway folders to load for simulating `pathway`: its siblings too, when they load,
/// so that referrals into them can be followed.
pub fn pathway_paths(pathway: &Path) -> Vec<PathBuf> {
    let folder = if pathway.is_file() {
        pathway.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        pathway.to_path_buf()
    };
    if let Some(parent) = crate::load::collection(&folder)
        && crate::load::load(std::slice::from_ref(&parent))
            .is_ok_and(|s| !carepath_engine::check(&s).has_errors())
    {
        return vec![parent];
    }
    vec![folder]
}

/// The id of the pathway in a folder or file. Only the id is read here: the pathway is
/// checked when it is loaded, together with those it refers into.
fn pathway_id(path: &Path) -> Result<String, SimulateError> {
    let sources = crate::load::load(&[path.to_path_buf()]).map_err(CatalogError::from)?;
    let ids: Vec<String> = sources
        .iter()
        .filter_map(crate::load::declared_id)
        .collect();
    match &ids[..] {
        [one] => Ok(one.clone()),
        _ => Err(SimulateError::Input {
            path: path.display().to_string(),
            reason: format!(
                "holds {} pathways with an id: name one pathway folder",
                ids.len()
            ),
        }),
    }
}

/// Runs a family through a pathway until `until` (a duration after enrolment), with scripted
/// events, on a temporary SQLite file.
pub async fn simulate(
    pathway: &Path,
    family: &Family,
    script: &[ScriptedEvent],
    until: &str,
) -> Result<Timeline, SimulateError> {
    let dir = tempfile::tempdir().map_err(|source| SimulateError::Read {
        path: "a temporary folder".into(),
        source,
    })?;
    let store = SqliteStore::open(&dir.path().join("simulation.db")).await?;
    let id = match &family.pathway {
        Some(id) => id.clone(),
        None => pathway_id(pathway)?,
    };
    // Load at a fixed moment: the load time is stored, and a simulation is reproducible.
    let (catalog, _) =
        Catalog::sync(&store, &pathway_paths(pathway), Timestamp::UNIX_EPOCH).await?;
    let version = catalog.latest(&id).ok_or_else(|| SimulateError::Input {
        path: pathway.display().to_string(),
        reason: format!("no pathway \"{id}\" there"),
    })?;
    let tz_name = version.checked.pathway.time_zone.clone();
    let tz = carepath_engine::time::zone(&tz_name).unwrap_or(TimeZone::UTC);
    let bad_family = |reason: String| SimulateError::Input {
        path: "family".into(),
        reason,
    };
    let start = match &family.enrolled_at {
        Some(t) => moment(t, Timestamp::UNIX_EPOCH, &tz)
            .map_err(|e| bad_family(format!("enrolled_at: {e}")))?,
        None => Timestamp::now(),
    };
    let end = moment(until, start, &tz).map_err(|e| bad_family(format!("--until: {e}")))?;
    let mut events = Vec::with_capacity(script.len());
    for (i, e) in script.iter().enumerate() {
        let at = moment(&e.at, start, &tz).map_err(|reason| SimulateError::Input {
            path: "event script".into(),
            reason: format!("event {i} ({}): at: {reason}", e.event),
        })?;
        events.push((at, i, e));
    }
    events.sort_by_key(|(at, i, _)| (*at, *i));

    let clock = Arc::new(VirtualClock::new(start));
    let rt = Runtime::new(store, catalog, clock.clone() as Arc<dyn Clock>);
    rt.enrol(&EnrolRequest {
        reference: family.reference.clone(),
        pathway: id.clone(),
        fields: family.fields.clone(),
        contacts: family.contacts.clone(),
    })
    .await?;

    // Notices go out as they would: through the default retry policy and quiet hours, to a
    // file in the temporary folder, so the timeline shows when each one is sent.
    let notifier = Notifier::new(&NotifierConfig {
        file: Some(FileConfig {
            path: Some(dir.path().join("notices.jsonl")),
            console: Console::Off,
        }),
        ..NotifierConfig::default()
    })
    .map_err(|e| SimulateError::Input {
        path: "the simulation's notice file".into(),
        reason: e.to_string(),
    })?;
    notifier.deliver(rt.store(), start).await?;
    let mut pending = events.into_iter().peekable();
    loop {
        let next_event = pending.peek().map(|(at, _, _)| *at);
        let next = [
            rt.store().next_due().await?,
            next_event,
            rt.store().next_notice().await?,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            break;
        };
        if next > end {
            break;
        }
        clock.advance_to(next);
        if next_event == Some(next) {
            let mut batch = Vec::new();
            while let Some((at, i, e)) = pending.peek() {
                if *at != next {
                    break;
                }
                batch.push(EventRequest {
                    instance_id: None,
                    key: format!("script-{i}"),
                    reference: family.reference.clone(),
                    pathway: e.pathway.clone(),
                    event: e.event.clone(),
                    payload: e.payload.clone(),
                    contacts: e.contacts.clone(),
                });
                pending.next();
            }
            rt.apply_events(&batch).await?;
        }
        rt.fire_due(next, 1000).await?;
        notifier.deliver(rt.store(), next).await?;
    }
    let timeline = timeline(rt.store(), rt.catalog(), &family.reference, &tz_name, &tz).await?;
    rt.store().close().await;
    Ok(timeline)
}

fn local(t: Timestamp, tz: &TimeZone) -> String {
    let z: ZonedDateTime = t.to_zoned_datetime(tz.clone());
    z.strftime("%Y-%m-%d %H:%M %a").to_string()
}

/// What caused a step, in words.
pub(crate) fn describe(cause: &Cause) -> String {
    match cause {
        Cause::Enrolled => "enrolled".into(),
        Cause::Event { name } => format!("event {name}"),
        Cause::Operator { action, by } => format!("{action} by {by}"),
        Cause::Timer { key, purpose, name } => timer_words(purpose, name.as_deref(), key),
    }
}

/// What a timer is for, in words: its declared name for a state's timer.
pub(crate) fn timer_words(
    purpose: &carepath_engine::step::Purpose,
    name: Option<&str>,
    key: &str,
) -> String {
    use carepath_engine::step::Purpose;
    match purpose {
        Purpose::State { .. } => format!("timer {}", name.unwrap_or(key)),
        Purpose::HandoffDeadline { to, .. } => {
            format!("handoff to {to} not acknowledged in time")
        }
        Purpose::ActivityReminder { activity } => format!("activity {activity} due"),
        Purpose::ActivityOverdue { activity } => format!("activity {activity} overdue"),
        Purpose::AppointmentReminder { appointment, .. } => {
            format!("reminder for appointment {appointment}")
        }
        Purpose::Horizon => "horizon reached".into(),
    }
}

/// Where an entry goes among entries of the same moment: instance, step, kind (transition,
/// notice, refusal), row.
type Order = (i64, u64, u8, i64);

/// Everything that happened to a family, in order: transitions, notices, refused events.
pub async fn timeline<S: Storage>(
    store: &S,
    catalog: &Catalog,
    reference: &str,
    tz_name: &str,
    tz: &TimeZone,
) -> Result<Timeline, StoreError> {
    let mut keyed: Vec<(Timestamp, Order, Entry)> = Vec::new();
    for inst in store.instances_by_ref(reference).await? {
        for h in store.history(inst.id).await? {
            let owner = if h.seq == inst.instance.seq {
                inst.instance.owner.clone()
            } else {
                None
            };
            keyed.push((
                h.at,
                (inst.id, h.seq, 0, 0),
                Entry::Transition {
                    at: local(h.at, tz),
                    pathway: inst.pathway.clone(),
                    from: h.from.clone(),
                    to: h.to.clone(),
                    owner,
                    cause: describe(&h.cause),
                    notes: h.notes.clone(),
                },
            ));
        }
        let mut rows = store
            .outbox(&OutboxFilter {
                instance_id: Some(inst.id),
                ..OutboxFilter::default()
            })
            .await?;
        catalog.preview(&mut rows);
        for r in rows {
            let held = store
                .outbox_log(r.id)
                .await?
                .into_iter()
                .find(|l| l.status == "held")
                .and_then(|l| l.detail);
            let seq: u64 = r
                .key
                .split(':')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            keyed.push((
                r.created_at,
                (inst.id, seq, 1, r.id),
                Entry::Notice {
                    at: local(r.not_before, tz),
                    pathway: inst.pathway.clone(),
                    to: r.role.clone(),
                    template: r.template.clone(),
                    channel: r.channel.map(|c| c.as_str().to_string()),
                    address: r.address.as_deref().map(|a| {
                        if a.contains('@') {
                            mask_email(a)
                        } else {
                            mask_phone(a)
                        }
                    }),
                    language: r.text.language.clone(),
                    subject: r.text.subject.clone(),
                    body: r.text.body.clone(),
                    status: r.status.as_str().into(),
                    held,
                    // Once sent, the last error is history (a hold, a retried failure).
                    error: (r.status != NoticeStatus::Sent)
                        .then(|| r.last_error.clone())
                        .flatten(),
                },
            ));
        }
    }
    for e in store.events(reference).await? {
        if e.outcome == crate::store::Outcome::Rejected {
            keyed.push((
                e.received_at,
                (e.instance_id.unwrap_or_default(), u64::MAX, 2, 0),
                Entry::Rejected {
                    at: local(e.received_at, tz),
                    event: e.name.clone(),
                    code: e.code.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                },
            ));
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(Timeline {
        reference: reference.into(),
        time_zone: tz_name.into(),
        entries: keyed.into_iter().map(|(_, _, e)| e).collect(),
    })
}

impl Timeline {
    /// The timeline as people read it.
    pub fn to_text(&self) -> String {
        let mut out = format!("Family {} (times in {})\n", self.reference, self.time_zone);
        for e in &self.entries {
            match e {
                Entry::Transition {
                    at,
                    pathway,
                    from,
                    to,
                    owner,
                    cause,
                    notes,
                } => {
                    let from = from
                        .as_deref()
                        .map(|f| format!("{f} → "))
                        .unwrap_or_default();
                    let owner = owner
                        .as_deref()
                        .map(|o| format!(" (owner {o})"))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "\n{at}  {pathway}: {from}{to}{owner}  [{cause}]\n"
                    ));
                    for n in notes {
                        out.push_str(&format!("    · {n}\n"));
                    }
                }
                Entry::Notice {
                    at,
                    to,
                    template,
                    channel,
                    address,
                    language,
                    subject,
                    body,
                    status,
                    held,
                    error,
                    ..
                } => {
                    out.push_str(&format!(
                        "    ✉ {at}  to {to}{} {template} [{status}]\n",
                        match (channel, address, language) {
                            (Some(c), Some(a), Some(l)) => format!(" by {c} ({a}, {l})"),
                            _ => String::new(),
                        }
                    ));
                    if let Some(s) = subject {
                        out.push_str(&format!("        Subject: {s}\n"));
                    }
                    if let Some(b) = body {
                        for line in b.trim_end().lines() {
                            out.push_str(&format!("        | {line}\n"));
                        }
                    }
                    if let Some(h) = held {
                        out.push_str(&format!("        ⏸ held: {h}\n"));
                    }
                    if let Some(e) = error {
                        out.push_str(&format!("        ! {e}\n"));
                    }
                }
                Entry::Rejected {
                    at,
                    event,
                    code,
                    reason,
                } => {
                    out.push_str(&format!(
                        "\n{at}  refused event {event}: {code}: {reason}\n"
                    ));
                }
            }
        }
        out
    }
}
