//! The outbox, and families' opt-outs.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use carepath_notifier::channel::mask;

use super::auth::{Caller, Scope};
use super::{Api, Body, Problem, Query, parse_body};
use crate::delivery::Notifier;
use crate::store::{NoticeStatus, OutboxFilter, OutboxRow, Storage};

/// Filters for `GET /v1/outbox`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// Only this status: queued, sent, skipped, expired or dead.
    pub status: Option<String>,
    /// Only this instance.
    pub instance: Option<i64>,
    /// At most this many (default 100, at most 1000), by due time.
    pub limit: Option<u32>,
}

/// An outbox notice, with its address masked and without its text.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OutboxEntry {
    /// The row.
    pub id: i64,
    /// The instance.
    pub instance_id: i64,
    /// The family's reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The template.
    pub template: String,
    /// The recipient's role.
    pub role: String,
    /// Whether the recipient is the family.
    pub family: bool,
    /// The channel.
    pub channel: Option<String>,
    /// The address, masked (`+45 •••• ••78`).
    pub address: Option<String>,
    /// queued, sent, skipped, expired or dead.
    pub status: String,
    /// Not to be sent before.
    #[schema(value_type = String, format = DateTime)]
    pub not_before: Timestamp,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last error, or why it was skipped.
    pub last_error: Option<String>,
    /// What the SMS gateway last reported: pending, delivered, failed or expired; absent
    /// until a receipt arrives.
    pub receipt: Option<String>,
    /// When that receipt arrived.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub receipt_at: Option<Timestamp>,
}

impl From<OutboxRow> for OutboxEntry {
    fn from(o: OutboxRow) -> Self {
        OutboxEntry {
            id: o.id,
            instance_id: o.instance_id,
            reference: o.reference,
            template: o.template,
            role: o.role,
            family: o.family,
            channel: o.channel.map(|c| c.as_str().to_string()),
            address: o.address.as_deref().map(mask),
            status: o.status.as_str().to_string(),
            not_before: o.not_before,
            attempts: o.attempts,
            last_error: o.last_error,
            receipt: o.receipt.map(|r| r.as_str().to_string()),
            receipt_at: o.receipt_at,
        }
    }
}

/// The outbox: what went out, what waits, what failed.
#[utoipa::path(
    get, path = "/v1/outbox", operation_id = "listOutbox", tag = "outbox",
    params(OutboxQuery),
    responses(
        (status = 200, description = "Notices, by due time", body = [OutboxEntry]),
        (status = 400, description = "A query parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn outbox<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Vec<OutboxEntry>>, Problem> {
    caller.require(Scope::Read)?;
    let status = q
        .status
        .as_deref()
        .map(NoticeStatus::from_name)
        .transpose()
        .map_err(|e| Problem::bad_query(&format!("status: {e}")))?;
    let mut rows = api
        .runtime
        .store()
        .outbox(&OutboxFilter {
            status,
            instance_id: q.instance,
            limit: Some(q.limit.unwrap_or(100).clamp(1, 1000)),
            pathways: caller.restriction(),
            ..OutboxFilter::default()
        })
        .await
        .map_err(Problem::store)?;
    api.runtime.catalog().preview(&mut rows);
    Ok(Json(rows.into_iter().map(OutboxEntry::from).collect()))
}

/// A family's wish not to be messaged on a channel (or to be again).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptOutBody {
    /// The phone number (+45…) or email address.
    #[schema(example = "+4512345678")]
    pub address: String,
    /// `sms` or `email`; by default email for an address with '@', SMS otherwise.
    pub channel: Option<String>,
    /// `false` opts back in.
    #[serde(default = "yes")]
    pub opted_out: bool,
}

fn yes() -> bool {
    true
}

/// What an opt-out did.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OptOutAnswer {
    /// The address, masked.
    pub address: String,
    /// The channel.
    pub channel: String,
    /// Whether the address is opted out now.
    pub opted_out: bool,
    /// Whether this request changed that.
    pub changed: bool,
}

/// Opt an address out of a channel (or back in): its notices are then skipped, with the reason.
#[utoipa::path(
    post, path = "/v1/opt-outs", operation_id = "recordOptOut", tag = "outbox",
    request_body = OptOutBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    responses(
        (status = 200, description = "Recorded", body = OptOutAnswer),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No instances:write scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A token limited to some pathways named an address no family on them has", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The family opted out by SMS: only their START or an admin opts them back in", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an address", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn opt_out<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Body(body): Body,
) -> Result<Json<OptOutAnswer>, Problem> {
    caller.require(Scope::InstancesWrite)?;
    let body: OptOutBody = parse_body(&body)?;
    let (key, channel) =
        Notifier::opt_out_target(&body.address, body.channel.as_deref()).map_err(|why| {
            let pointer = if why.starts_with("unknown channel") {
                "/channel"
            } else {
                "/address"
            };
            Problem::invalid(pointer, &why)
        })?;
    let store = api.runtime.store();
    // A token limited to some pathways acts only on the families on them: the address must
    // be a contact of one. Any other is answered as unknown, so nothing is learnt about it.
    if let Some(allowed) = caller.restriction() {
        let theirs = store
            .address_pathways(&key, channel)
            .await
            .map_err(Problem::store)?;
        if !theirs.iter().any(|p| allowed.contains(p)) {
            return Err(Problem::not_found(
                "no family on this token's pathways has this address",
            ));
        }
    }
    // What the family said by SMS, only the family (START) or an administrator undoes.
    if !body.opted_out
        && !caller.is_admin()
        && store
            .opt_out_source(&key, channel)
            .await
            .map_err(Problem::store)?
            .is_some_and(|source| source.starts_with("sms "))
    {
        return Err(Problem::conflict(
            "opted-out-by-family",
            "the family opted out themselves by SMS: only their START, or an administrator, opts them back in",
        ));
    }
    if !body.opted_out && caller.is_admin() {
        tracing::info!(token = %caller.name, address = %mask(&key), channel = channel.as_str(), "opt-in by an administrator");
    }
    let changed = store
        .set_opt_out(
            &key,
            channel,
            body.opted_out,
            &format!("api {}", caller.name),
            api.runtime.clock().now(),
        )
        .await
        .map_err(Problem::store)?;
    Ok(Json(OptOutAnswer {
        address: mask(&key),
        channel: channel.as_str().to_string(),
        opted_out: body.opted_out,
        changed,
    }))
}
