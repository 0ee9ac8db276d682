//! Families: enrol, report events, read, list, hold and resume.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use carepath_engine::step::Status;

use super::auth::{Caller, Scope};
use super::outbox::OutboxEntry;
use super::{Api, Body, Path, Problem, Query, parse_body};
use crate::catalog;
use crate::runtime::{EnrolError, EnrolRequest, Enrolled, EventRequest, EventResult};
use crate::store::{
    Contact, EventRecord, InstanceFilter, InstanceRow, OutboxFilter, Outcome, Storage,
};

/// The header that makes a POST idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header on an answer repeated for a seen idempotency key.
pub const REPLAYED: &str = "idempotent-replayed";

/// The most instances one page lists.
const MAX_PAGE: u32 = 500;

/// An event reported for a family.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The event's name, as the pathway declares it.
    #[schema(example = "birth_registered")]
    pub event: String,
    /// Its payload, as the event declares it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Contacts assigned with the event, role → contact (the volunteer a coordinator
    /// matched): they take the role from this event on, if the event is applied.
    #[serde(default)]
    pub contacts: BTreeMap<String, Contact>,
}

/// What became of a reported event that was applied.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventAnswer {
    /// The idempotency key it was recorded under (the caller's, or one made up).
    pub key: String,
    /// The instance.
    pub instance_id: i64,
    /// The event.
    pub event: String,
    /// `applied`.
    pub outcome: String,
    /// The step it made.
    pub seq: Option<u64>,
    /// The state before.
    pub from: Option<String>,
    /// The state after.
    pub to: Option<String>,
    /// When it was received (the first time, for a repeat).
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
}

/// A family in a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstanceSummary {
    /// The instance.
    pub id: i64,
    /// The family's external reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The pathway.
    pub pathway: String,
    /// Its version.
    pub version: Option<u32>,
    /// The current state.
    pub state: String,
    /// The role responsible now.
    pub owner: Option<String>,
    /// `active` or `finished`.
    pub status: String,
    /// Since when it is on hold, if it is.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub held_since: Option<Timestamp>,
    /// Enrolled at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last changed at.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// One page of families.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstancePage {
    /// The families, by id.
    pub instances: Vec<InstanceSummary>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<i64>,
}

/// A contact as shown: no address.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ContactView {
    /// The name.
    pub name: String,
    /// The language notices are written in.
    pub language: String,
    /// The channels the contact can be reached on.
    pub channels: Vec<String>,
}

/// One step of the history.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryView {
    /// Its number.
    pub seq: u64,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The state before (none at enrolment).
    pub from: Option<String>,
    /// The state after.
    pub to: String,
    /// Why: enrolled, an event, or a timer.
    #[schema(value_type = Object)]
    pub cause: Value,
    /// What else happened, in words.
    pub notes: Vec<String>,
}

/// A pending timer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TimerView {
    /// Its key.
    pub key: String,
    /// When it is due.
    #[schema(value_type = String, format = DateTime)]
    pub due: Timestamp,
}

/// A recorded event, applied or rejected.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventView {
    /// The event.
    pub name: String,
    /// applied or rejected.
    pub outcome: String,
    /// Why it was rejected: a stable code.
    pub code: Option<String>,
    /// Why, in words.
    pub reason: Option<String>,
    /// The step it made.
    pub seq: Option<u64>,
    /// When it arrived.
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
}

/// A family: where it is, who has it, what happened and what is coming.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstanceView {
    /// The instance.
    #[serde(flatten)]
    pub summary: InstanceSummary,
    /// The instance whose `enroll` action started this one.
    pub parent_id: Option<i64>,
    /// The family's fields; sensitive ones read "(sensitive)".
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// Who plays each role.
    pub contacts: BTreeMap<String, ContactView>,
    /// Every step, in order.
    pub history: Vec<HistoryView>,
    /// Pending timers, by due time.
    pub timers: Vec<TimerView>,
    /// Notices, by due time, without their text and with addresses masked.
    pub notices: Vec<OutboxEntry>,
    /// Events reported for it, applied and rejected.
    pub events: Vec<EventView>,
}

/// Filters for `GET /v1/instances`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this pathway.
    pub pathway: Option<String>,
    /// Only in this state.
    pub state: Option<String>,
    /// Only owned by this role.
    pub owner: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<i64>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<u32>,
}

/// Whether a hold or resume changed anything.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HoldAnswer {
    /// The instance.
    pub instance_id: i64,
    /// Whether it is on hold now.
    pub held: bool,
    /// Whether this request changed that.
    pub changed: bool,
}

/// Enrol a family.
#[utoipa::path(
    post, path = "/v1/instances", operation_id = "enrolFamily", tag = "instances",
    request_body = EnrolRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: a repeat gets the first answer")),
    responses(
        (status = 201, description = "Enrolled", body = Enrolled),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already enrolled on this pathway", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A member is wrong; `pointer` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn enrol<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Body(body): Body,
) -> Result<Response, Problem> {
    caller.require(Scope::InstancesWrite)?;
    let req: EnrolRequest = parse_body(&body)?;
    caller.require_pathway(&req.pathway)?;
    let enrolled = api.runtime.enrol(&req).await.map_err(enrol_problem)?;
    (api.committed)();
    let location = format!("/v1/instances/{}", enrolled.instance_id);
    let mut response = (StatusCode::CREATED, Json(enrolled)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

fn enrol_problem(e: EnrolError) -> Problem {
    let detail = e.to_string();
    match e {
        EnrolError::BadReference { .. } => Problem::invalid("/ref", &detail),
        EnrolError::UnknownPathway { .. } => Problem::invalid("/pathway", &detail),
        EnrolError::AlreadyEnrolled { .. } => Problem::conflict("already-enrolled", &detail),
        EnrolError::Contact { role, .. } => {
            Problem::invalid(&format!("/contacts/{}", escape(&role)), &detail)
        }
        EnrolError::Step(step) => match &step {
            carepath_engine::StepError::Field { field, .. } => {
                Problem::invalid(&format!("/fields/{}", escape(field)), &detail)
            }
            _ => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, step.code(), &detail).at("/fields"),
        },
        EnrolError::Store(e) => Problem::unavailable(&format!("nothing was saved: {e}")),
    }
}

/// Report an event for a family.
#[utoipa::path(
    post, path = "/v1/instances/{id}/events", operation_id = "reportEvent", tag = "instances",
    request_body = EventBody,
    params(
        ("id" = i64, Path, description = "The instance"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: a repeat gets the first answer"),
    ),
    responses(
        (status = 200, description = "Applied (or, with `Idempotent-Replayed: true`, applied before)", body = EventAnswer),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the instance's state (recorded as rejected)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown event or wrong payload (recorded as rejected), or a reused key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn event<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Problem> {
    caller.require(Scope::EventsWrite)?;
    let key = idempotency_key(&headers)?;
    let body: EventBody = parse_body(&body)?;
    let row = visible(&api, &caller, id).await?;
    // Keys are the caller's own: two systems may both count from 1.
    let key = match key {
        Some(k) => format!("api:{}:{k}", caller.name),
        None => format!("api:{}:{}", caller.name, api.fresh_key()),
    };
    let result = api
        .ingest
        .submit(EventRequest {
            key,
            reference: row.reference.clone(),
            pathway: Some(row.pathway.clone()),
            instance_id: Some(id),
            event: body.event.clone(),
            payload: body.payload.clone(),
            contacts: body.contacts.clone(),
        })
        .await?;
    event_response(id, result)
}

fn event_response(id: i64, result: EventResult) -> Result<Response, Problem> {
    let record = &result.record;
    if result.conflict {
        return Err(Problem::invalid(
            "",
            "this Idempotency-Key was used for another request (another event, payload or contacts): use a new key for a new event",
        )
        .with_code("idempotency-key-reused"));
    }
    let mut response = match record.outcome {
        Outcome::Applied => {
            let (from, to) = match &result.transition {
                Some((from, to)) => (Some(from.clone()), Some(to.clone())),
                None => (None, None),
            };
            Json(EventAnswer {
                key: public_key(&record.key),
                instance_id: id,
                event: record.name.clone(),
                outcome: "applied".into(),
                seq: record.seq,
                from,
                to,
                received_at: record.received_at,
            })
            .into_response()
        }
        Outcome::Rejected => rejection(record).into_response(),
    };
    if result.replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The problem for a rejected event: 409 when the instance is not in a state to take it, 422
/// when the event or its payload is wrong.
fn rejection(record: &EventRecord) -> Problem {
    let code = record.code.as_deref().unwrap_or("rejected");
    let reason = record.reason.as_deref().unwrap_or("rejected");
    let detail = format!(
        "event \"{}\" was recorded as rejected: {reason}",
        record.name
    );
    match code {
        "event-not-allowed" | "guard-false" | "instance-finished" | "instance-held" => {
            Problem::conflict(code, &detail)
        }
        "unknown-event" => Problem::invalid("/event", &detail).with_code(code),
        "bad-payload" => Problem::invalid("/payload", &detail).with_code(code),
        "bad-contact" => Problem::invalid("/contacts", &detail).with_code(code),
        "unknown-instance" => Problem::not_found(&detail),
        _ => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, &detail),
    }
}

/// The caller's key, without the prefix that scopes it to them.
fn public_key(stored: &str) -> String {
    stored
        .strip_prefix("api:")
        .and_then(|k| k.split_once(':'))
        .map_or(stored, |(_, k)| k)
        .to_string()
}

/// The `Idempotency-Key` header, if sent: 1 to 200 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 200 && k.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-idempotency-key",
            "Idempotency-Key must be 1 to 200 visible ASCII characters (a UUID will do)",
        )),
    }
}

/// Read a family: state, owner, history, timers, notices and events.
#[utoipa::path(
    get, path = "/v1/instances/{id}", operation_id = "getInstance", tag = "instances",
    params(("id" = i64, Path, description = "The instance")),
    responses(
        (status = 200, description = "The family", body = InstanceView),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(id): Path<i64>,
) -> Result<Json<InstanceView>, Problem> {
    caller.require(Scope::Read)?;
    let row = visible(&api, &caller, id).await?;
    let store = api.runtime.store();
    let version = api.runtime.catalog().version(row.pathway_version_id);
    let contacts = store
        .contacts(&row.roles.values().copied().collect::<Vec<_>>())
        .await
        .map_err(Problem::store)?;
    let contacts = row
        .roles
        .iter()
        .filter_map(|(role, cid)| {
            let c = contacts.get(cid)?;
            let channels = [
                c.email.as_ref().map(|_| "email"),
                c.phone.as_ref().map(|_| "sms"),
            ]
            .into_iter()
            .flatten()
            .map(String::from)
            .collect();
            Some((
                role.clone(),
                ContactView {
                    name: c.name.clone(),
                    language: c.language.clone(),
                    channels,
                },
            ))
        })
        .collect();
    let history = store
        .history(id)
        .await
        .map_err(Problem::store)?
        .into_iter()
        .map(|h| HistoryView {
            seq: h.seq,
            at: h.at,
            from: h.from,
            to: h.to,
            cause: serde_json::to_value(&h.cause).unwrap_or(Value::Null),
            notes: h.notes,
        })
        .collect();
    let timers = store
        .timers(id)
        .await
        .map_err(Problem::store)?
        .into_iter()
        .map(|t| TimerView {
            key: t.key,
            due: t.due,
        })
        .collect();
    let mut notices = store
        .outbox(&OutboxFilter {
            instance_id: Some(id),
            ..OutboxFilter::default()
        })
        .await
        .map_err(Problem::store)?;
    api.runtime.catalog().preview(&mut notices);
    let notices = notices.into_iter().map(OutboxEntry::from).collect();
    let events = store
        .instance_events(id)
        .await
        .map_err(Problem::store)?
        .into_iter()
        .map(|e| EventView {
            name: e.name,
            outcome: match e.outcome {
                Outcome::Applied => "applied".into(),
                Outcome::Rejected => "rejected".into(),
            },
            code: e.code,
            reason: e.reason,
            seq: e.seq,
            received_at: e.received_at,
        })
        .collect();
    Ok(Json(InstanceView {
        fields: catalog::redact(version.map(|v| &**v), &row.instance.fields),
        parent_id: row.parent_id,
        summary: summary(&api, &row),
        contacts,
        history,
        timers,
        notices,
        events,
    }))
}

/// List families, by pathway, state and owner.
#[utoipa::path(
    get, path = "/v1/instances", operation_id = "listInstances", tag = "instances",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of families", body = InstancePage),
        (status = 400, description = "A query parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<InstancePage>, Problem> {
    caller.require(Scope::Read)?;
    let pathways = match &q.pathway {
        Some(p) => {
            caller.require_pathway(p)?;
            Some(vec![p.clone()])
        }
        None => caller.restriction(),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let rows = api
        .runtime
        .store()
        .list_instances(&InstanceFilter {
            pathways,
            state: q.state,
            owner: q.owner,
            after: q.after,
            limit: limit + 1,
            ..InstanceFilter::default()
        })
        .await
        .map_err(Problem::store)?;
    let more = rows.len() > limit as usize;
    let instances: Vec<InstanceSummary> = rows
        .iter()
        .take(limit as usize)
        .map(|r| summary(&api, r))
        .collect();
    let next = if more {
        instances.last().map(|i| i.id)
    } else {
        None
    };
    Ok(Json(InstancePage { instances, next }))
}

/// Put a family on hold: its timers wait, nothing is sent to or about it, and events for it
/// are refused until it is resumed.
#[utoipa::path(
    post, path = "/v1/instances/{id}/hold", operation_id = "holdInstance", tag = "instances",
    params(
        ("id" = i64, Path, description = "The instance"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key"),
    ),
    responses(
        (status = 200, description = "On hold", body = HoldAnswer),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The instance has finished", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn hold<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(id): Path<i64>,
) -> Result<Json<HoldAnswer>, Problem> {
    set_held(api, caller, id, true).await
}

/// Resume a family on hold: timers that came due meanwhile fire, waiting notices go out.
#[utoipa::path(
    post, path = "/v1/instances/{id}/resume", operation_id = "resumeInstance", tag = "instances",
    params(
        ("id" = i64, Path, description = "The instance"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key"),
    ),
    responses(
        (status = 200, description = "Resumed", body = HoldAnswer),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn resume<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(id): Path<i64>,
) -> Result<Json<HoldAnswer>, Problem> {
    set_held(api, caller, id, false).await
}

async fn set_held<S: Storage>(
    api: Api<S>,
    caller: Arc<Caller>,
    id: i64,
    held: bool,
) -> Result<Json<HoldAnswer>, Problem> {
    caller.require(Scope::InstancesWrite)?;
    let row = visible(&api, &caller, id).await?;
    if held && row.instance.status == Status::Finished {
        return Err(Problem::conflict(
            "instance-finished",
            &format!(
                "instance {id} has finished (in \"{}\"): there is nothing to hold",
                row.instance.state
            ),
        ));
    }
    let now = api.runtime.clock().now();
    let changed = api
        .runtime
        .store()
        .set_held(id, held.then_some(caller.name.as_str()), now)
        .await
        .map_err(Problem::store)?;
    if changed {
        tracing::info!(instance = id, held, by = %caller.name, "hold changed");
        if !held {
            (api.committed)();
        }
    }
    Ok(Json(HoldAnswer {
        instance_id: id,
        held,
        changed,
    }))
}

/// The instance, if it exists and the caller may see its pathway. One the caller may not see
/// is answered exactly as one that does not exist: a 403 naming its pathway would tell
/// another organisation that the family is there, and on what.
async fn visible<S: Storage>(
    api: &Api<S>,
    caller: &Caller,
    id: i64,
) -> Result<InstanceRow, Problem> {
    let missing = || Problem::not_found(&format!("no instance {id}"));
    let row = api
        .runtime
        .store()
        .instance(id)
        .await
        .map_err(Problem::store)?
        .ok_or_else(missing)?;
    if !caller.may_use(&row.pathway) {
        return Err(missing());
    }
    Ok(row)
}

pub(super) fn summary<S: Storage>(api: &Api<S>, row: &InstanceRow) -> InstanceSummary {
    InstanceSummary {
        id: row.id,
        reference: row.reference.clone(),
        pathway: row.pathway.clone(),
        version: api
            .runtime
            .catalog()
            .version(row.pathway_version_id)
            .map(|v| v.checked.pathway.version),
        state: row.instance.state.clone(),
        owner: row.instance.owner.clone(),
        status: match row.instance.status {
            Status::Active => "active".into(),
            Status::Finished => "finished".into(),
        },
        held_since: row.held_since,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// A JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
