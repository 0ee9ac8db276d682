//! A family as a whole, by its reference: erasure at its request.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{Caller, Scope};
use super::{Api, Body, Path, Problem, parse_body};
use crate::store::{Erased, Storage};

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
    caller.require(Scope::Admin)?;
    if caller.restriction().is_some() {
        return Err(Problem::forbidden(
            "insufficient-scope",
            "erasing a family reaches all its pathways: use an admin token that is not limited to some pathways",
        ));
    }
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
