//! Families as a whole: one by its reference (erasure at its request, a person assigned to
//! one of its roles), many by a selection (hold, resume, cancel), a pathway's running families
//! onto another of its versions, and the directory of who plays a role for every family.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Scope};
use super::instances::InstanceSummary;
use super::{Api, Body, Path, Problem, parse_body};
use crate::runtime::{Assigned, RuntimeError};
use crate::store::{Contact, DirectoryEntry, Erased, Storage};

/// Why a family is erased.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    /// The request's record: a case number, not a person's data.
    #[schema(example = "GDPR-2027-014")]
    pub reason: String,
}

/// Erase a family's personal data at its request, at once: every instance of the reference.
/// States, times and counts stay, de-identified; the audit log keeps who erased it and when.
#[utoipa::path(
    post, path = "/v1/families/{ref}/erase", operation_id = "eraseFamily", tag = "families",
    params(("ref" = String, Path, description = "The family's reference")),
    request_body = EraseBody,
    responses(
        (status = 200, description = "What was erased", body = Object),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin of every pathway", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No family has the reference", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn erase<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(reference): Path<String>,
    Body(body): Body,
) -> Result<Json<Erased>, Problem> {
    caller.require_admin_of_every_pathway("erasing a family")?;
    let body: EraseBody = parse_body(&body)?;
    if body.reason.trim().is_empty() {
        return Err(Problem::invalid(
            "/reason",
            "reason: say why, for the record",
        ));
    }
    api.runtime
        .erase_family(&reference, &format!("on request: {}", body.reason))
        .await
        .map_err(|e| Problem::unavailable(&format!("nothing was erased: {e}")))?
        .map(Json)
        .ok_or_else(|| Problem::not_found("no family has this reference"))
}

/// Many families at once: what to do, and to whom.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// `hold`, `resume` or `cancel`.
    #[schema(example = "hold")]
    pub action: String,
    /// Only families on these pathways (a token limited to some pathways: only those).
    #[serde(default)]
    pub pathways: Option<Vec<String>>,
    /// Only families in this state.
    #[serde(default)]
    pub state: Option<String>,
    /// Only families owned by this role.
    #[serde(default)]
    pub owner: Option<String>,
    /// Only families enrolled before this moment (RFC 3339).
    #[serde(default)]
    pub enrolled_before: Option<String>,
    /// Only this family.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// Why: required to cancel, for each family's history.
    #[serde(default)]
    pub reason: Option<String>,
    /// Only count and list the families it would act on.
    #[serde(default)]
    pub dry_run: bool,
}

/// Hold, resume or cancel every family still on a pathway that matches; `dry_run` counts them
/// first. Holding and resuming take `instances:write`, cancelling `admin`. Each family gets its
/// own line in the audit log; a cancellation is a step in its history.
#[utoipa::path(
    post, path = "/v1/bulk", operation_id = "bulk", tag = "families",
    request_body = BulkBody,
    responses(
        (status = 200, description = "What it found and did", body = crate::bulk::Outcome),
        (status = 400, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown action, a cancel without a reason, a bad time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn bulk<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Body(body): Body,
) -> Result<Json<crate::bulk::Outcome>, Problem> {
    use crate::bulk::{Action, Selection};
    let body: BulkBody = parse_body(&body)?;
    let action = match (body.action.as_str(), body.reason) {
        ("hold", _) => Action::Hold,
        ("resume", _) => Action::Resume,
        ("cancel", Some(reason)) if !reason.trim().is_empty() => Action::Cancel { reason },
        ("cancel", _) => {
            return Err(Problem::invalid(
                "/reason",
                "reason: cancelling needs one, for each family's history",
            ));
        }
        (other, _) => {
            return Err(Problem::invalid(
                "/action",
                &format!("action {other:?}: use hold, resume or cancel"),
            ));
        }
    };
    caller.require(match action {
        Action::Cancel { .. } => Scope::Admin,
        _ => Scope::InstancesWrite,
    })?;
    // A token limited to some pathways acts on those only.
    let pathways = match (body.pathways, caller.restriction()) {
        (asked, None) => asked,
        (None, Some(allowed)) => Some(allowed),
        (Some(asked), Some(allowed)) => {
            if let Some(p) = asked.iter().find(|p| !allowed.contains(p)) {
                return Err(Problem::forbidden(
                    "pathway-not-allowed",
                    &format!("this token does not reach pathway {p:?}"),
                ));
            }
            Some(asked)
        }
    };
    let enrolled_before = enrolled_before(body.enrolled_before.as_deref())?;
    let selection = Selection {
        pathways,
        state: body.state,
        owner: body.owner,
        enrolled_before,
        reference: body.reference,
    };
    let outcome = crate::bulk::apply(
        &api.runtime,
        &action,
        &selection,
        &format!("token {}", caller.name),
        body.dry_run,
    )
    .await
    .map_err(|e| Problem::unavailable(&format!("stopped: {e}")))?;
    if !body.dry_run {
        (api.committed)();
    }
    Ok(Json(outcome))
}

/// Running families onto another version of their pathway.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationBody {
    /// The pathway.
    #[schema(example = "standard-track")]
    pub pathway: String,
    /// The version to move to.
    pub to_version: u32,
    /// States of the old versions and the states they become.
    #[serde(default)]
    pub map: std::collections::BTreeMap<String, String>,
    /// Only families in this state.
    #[serde(default)]
    pub state: Option<String>,
    /// Only families owned by this role.
    #[serde(default)]
    pub owner: Option<String>,
    /// Only families enrolled before this moment (RFC 3339).
    #[serde(default)]
    pub enrolled_before: Option<String>,
    /// Only this family.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// Only say what would happen to each family.
    #[serde(default)]
    pub dry_run: bool,
}

/// Move a pathway's running families onto another of its versions (admin of every pathway):
/// the mapping is checked first, each family moves in one transaction, and `dry_run` says what
/// each would get. Families already on the version are left alone.
#[utoipa::path(
    post, path = "/v1/migrations", operation_id = "migrate", tag = "families",
    request_body = MigrationBody,
    responses(
        (status = 200, description = "Each family's move, and those refused with the reason", body = Object),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin of every pathway", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The version is not loaded", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A state without a counterpart, or a map to no state", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn migrate<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Body(body): Body,
) -> Result<Json<crate::migration::Report>, Problem> {
    use crate::migration::MigrateError;
    caller.require_admin_of_every_pathway("a migration")?;
    let body: MigrationBody = parse_body(&body)?;
    let only = crate::bulk::Selection {
        pathways: None,
        state: body.state,
        owner: body.owner,
        enrolled_before: enrolled_before(body.enrolled_before.as_deref())?,
        reference: body.reference,
    };
    let report = crate::migration::migrate(
        &api.runtime,
        &body.pathway,
        body.to_version,
        &body.map,
        &only,
        &format!("token {}", caller.name),
        body.dry_run,
    )
    .await
    .map_err(|e| match e {
        MigrateError::UnknownVersion { .. } => Problem::not_found(&e.to_string()),
        MigrateError::BadMap { .. } => Problem::invalid("/map", &e.to_string()),
        MigrateError::Unmapped { .. } => Problem::invalid("/map", &e.to_string()),
        MigrateError::Runtime(_) => Problem::unavailable(&format!("stopped: {e}")),
    })?;
    if !body.dry_run {
        (api.committed)();
    }
    Ok(Json(report))
}

/// `enrolled_before` of a body, read.
fn enrolled_before(text: Option<&str>) -> Result<Option<jiff::Timestamp>, Problem> {
    text.map(|t| t.parse::<jiff::Timestamp>())
        .transpose()
        .map_err(|e| Problem::invalid("/enrolled_before", &format!("enrolled_before: {e}")))
}

/// Somebody to assign to a role of a family.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    /// The role, as the pathways name it.
    #[schema(example = "coordinator")]
    pub role: String,
    /// Who plays it from now on.
    pub contact: Contact,
    /// Only on this pathway; without it, on every active pathway of the family with the role.
    /// A token limited to some pathways must name one of them.
    #[serde(default)]
    pub pathway: Option<String>,
}

/// Assign a person to a role of a family from now on: on every active pathway of the family
/// that has the role (or the named one). Each instance gets a step in its history, and its
/// dead letters that went nowhere for want of somebody in the role are queued again for them.
#[utoipa::path(
    post, path = "/v1/families/{ref}/contacts", operation_id = "assignContact", tag = "families",
    params(("ref" = String, Path, description = "The family's reference")),
    request_body = AssignBody,
    responses(
        (status = 200, description = "Where it was assigned, and how many dead letters were queued again", body = Assigned),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No such role for the family, or a contact that cannot reach it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn assign<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(reference): Path<String>,
    Body(body): Body,
) -> Result<Json<Assigned>, Problem> {
    caller.require(Scope::InstancesWrite)?;
    let body: AssignBody = parse_body(&body)?;
    match (&body.pathway, caller.restriction()) {
        (Some(p), _) => caller.require_pathway(p)?,
        (None, Some(_)) => {
            return Err(Problem::invalid(
                "/pathway",
                "pathway: this token is limited to some pathways: name one of them",
            ));
        }
        (None, None) => {}
    }
    match api
        .runtime
        .assign(
            &reference,
            &body.role,
            &body.contact,
            body.pathway.as_deref(),
            &format!("token {}", caller.name),
        )
        .await
    {
        Ok(a) => {
            (api.committed)();
            Ok(Json(a))
        }
        Err(RuntimeError::Assign(why)) => Err(Problem::invalid("/role", &why)),
        Err(RuntimeError::Store(e)) => Err(Problem::store(e)),
    }
}

/// The directory: the organisations' contacts that play a role for every family.
#[utoipa::path(
    get, path = "/v1/directory", operation_id = "directory", tag = "families",
    responses(
        (status = 200, description = "The directory's entries", body = Vec<DirectoryEntry>),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn directory<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
) -> Result<Json<Vec<DirectoryEntry>>, Problem> {
    caller.require(Scope::Read)?;
    api.runtime
        .store()
        .directory()
        .await
        .map(Json)
        .map_err(Problem::store)
}

/// Replace the directory, checked against the loaded pathways first: all or nothing.
#[utoipa::path(
    put, path = "/v1/directory", operation_id = "replaceDirectory", tag = "families",
    request_body = Vec<DirectoryEntry>,
    responses(
        (status = 200, description = "The directory as loaded", body = Vec<DirectoryEntry>),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin of every pathway", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Entries that do not fit the loaded pathways, each named", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn replace_directory<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Body(body): Body,
) -> Result<Json<Vec<DirectoryEntry>>, Problem> {
    caller.require_admin_of_every_pathway("replacing the directory")?;
    let entries: Vec<DirectoryEntry> = parse_body(&body)?;
    crate::directory::check(&entries, api.runtime.catalog())
        .map_err(|e| Problem::invalid("", &e.to_string()))?;
    let store = api.runtime.store();
    store
        .replace_directory(&entries)
        .await
        .map_err(Problem::store)?;
    store.directory().await.map(Json).map_err(Problem::store)
}

/// A family with all its pathways.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FamilyView {
    /// The family's reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its instances, active and finished, oldest first (a token limited to some pathways
    /// sees those only).
    pub instances: Vec<InstanceSummary>,
}

/// A family by its reference: every pathway it is or was on, each with its state, owner and
/// hold. `GET /v1/instances/{id}` has the details of one.
#[utoipa::path(
    get, path = "/v1/families/{ref}", operation_id = "family", tag = "families",
    params(("ref" = String, Path, description = "The family's reference")),
    responses(
        (status = 200, description = "The family's pathways", body = FamilyView),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No family has the reference (on the token's pathways)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn family<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(reference): Path<String>,
) -> Result<Json<FamilyView>, Problem> {
    caller.require(Scope::Read)?;
    let instances: Vec<InstanceSummary> = api
        .runtime
        .store()
        .instances_by_ref(&reference)
        .await
        .map_err(Problem::store)?
        .iter()
        .filter(|r| caller.may_use(&r.pathway))
        .map(|r| super::instances::summary(&api, r))
        .collect();
    if instances.is_empty() {
        return Err(Problem::not_found("no family has this reference"));
    }
    Ok(Json(FamilyView {
        reference,
        instances,
    }))
}
