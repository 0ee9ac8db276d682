//! The audit log through the API: every write a token makes (enrol, event, hold, resume,
//! opt-out) is a line with the token's name, the action, the family, the event's name and
//! idempotency key, and how it ended; `GET /v1/audit` reads the log (admin).
//!
//! Requests without a known token are not operators' actions and are not logged here (the
//! access log has them): an anonymous flood cannot fill an append-only table. Payloads,
//! contacts and message bodies never reach the log.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{Json, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use carepath_engine::privacy::looks_like_cpr;

use super::auth::Caller;
use super::instances::IDEMPOTENCY_KEY;
use super::{Api, BODY_LIMIT, Problem, Query};
use crate::store::{AuditEntry, AuditFilter, Storage};

/// The action a write route performs, as the audit log names it.
fn action(route: &str) -> &str {
    match route {
        "/v1/instances" => "enrol",
        "/v1/instances/{id}/events" => "event",
        "/v1/instances/{id}/hold" => "hold",
        "/v1/instances/{id}/resume" => "resume",
        "/v1/opt-outs" => "opt-out",
        "/v1/families/{ref}/erase" => "erase",
        "/v1/bulk" => "bulk",
        "/v1/migrations" => "migration",
        "/v1/families/{ref}/contacts" => "assign",
        "/v1/directory" => "directory load",
        other => other,
    }
}

/// Writes an audit line for each write of a known token, after it is answered.
pub async fn record<S: Storage>(
    State(api): State<Api<S>>,
    req: Request,
    next: Next,
) -> Result<Response, Problem> {
    let Ok(caller) = api.tokens.caller(req.headers()) else {
        return Ok(next.run(req).await);
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |m| m.as_str().to_string());
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path().to_string();
    // `/v1/instances/{id}/…`: the instance.
    let instance_id = path
        .strip_prefix("/v1/instances/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| id.parse::<i64>().ok());
    // The body is read for the family's reference and the event's name, nothing else.
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        Problem::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            &format!("the body is larger than the API takes ({BODY_LIMIT} bytes)"),
        )
    })?;
    let said: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;

    let status = response.status();
    // `/v1/families/{ref}/…`: the family, as the path names it.
    let in_path = path
        .strip_prefix("/v1/families/")
        .and_then(|rest| rest.split('/').next())
        .map(percent_decode);
    let mut reference = said["ref"]
        .as_str()
        .map(str::to_string)
        .or(in_path)
        .filter(|r| r.len() <= 64 && !looks_like_cpr(r));
    if let Some(id) = instance_id
        && let Ok(Some(row)) = api.runtime.store().instance(id).await
    {
        reference = Some(row.reference);
    }
    let mut detail = Vec::new();
    if let Some(event) = said["event"].as_str().filter(|e| e.len() <= 64) {
        detail.push(format!("event {event}"));
    }
    if let Some(key) = key.filter(|k| k.len() <= 200 && !looks_like_cpr(k)) {
        detail.push(format!("key {key}"));
    }
    let entry = AuditEntry {
        at: api.runtime.clock().now(),
        actor: format!("token {}", caller.name),
        action: action(&route).to_string(),
        reference,
        instance_id,
        detail: (!detail.is_empty()).then(|| detail.join(", ")),
        outcome: if status.is_success() {
            "ok".to_string()
        } else {
            format!("refused {}", status.as_u16())
        },
    };
    if let Err(e) = api.runtime.store().append_audit(&entry).await {
        tracing::error!(error = %e, action = %entry.action, "the audit line was not written");
    }
    Ok(response)
}

/// A path segment with its `%XX` escapes decoded (a reference with a space or a slash).
fn percent_decode(segment: &str) -> String {
    form_urlencoded::parse(format!("r={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| segment.to_string())
}

/// Filters for `GET /v1/audit`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only about this family.
    #[serde(rename = "ref")]
    #[param(rename = "ref")]
    pub reference: Option<String>,
    /// Only from this moment on (RFC 3339).
    pub since: Option<String>,
    /// At most this many (default 1000, at most 10000), oldest first.
    pub limit: Option<u32>,
}

/// The audit log: who did what, when, for which family (an admin token not limited to some
/// pathways).
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "auditLog", tag = "operations",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit lines, oldest first", body = [Object]),
        (status = 400, description = "A query parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn log<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    caller.require_admin_of_every_pathway("reading the audit log")?;
    let since = q
        .since
        .as_deref()
        .map(|s| s.parse::<Timestamp>())
        .transpose()
        .map_err(|e| Problem::bad_query(&format!("since: {e}")))?;
    let lines = api
        .runtime
        .store()
        .audit_log(&AuditFilter {
            reference: q.reference,
            since,
            limit: Some(q.limit.unwrap_or(1000).clamp(1, 10_000)),
        })
        .await
        .map_err(Problem::store)?;
    Ok(Json(lines))
}
