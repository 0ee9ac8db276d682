//! The loaded pathways: what they are, and their graphs.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use carepath_engine::graph;

use super::auth::{Caller, Scope};
use super::{Api, Path, Problem};
use crate::store::Storage;

/// A pathway in the list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PathwaySummary {
    /// Its id.
    pub id: String,
    /// The latest loaded version.
    pub version: u32,
    /// Its title.
    pub title: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its states, in declaration order.
    pub states: Vec<String>,
    /// The events it takes.
    pub events: Vec<String>,
}

/// A pathway with its graph and declaration.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PathwayView {
    /// The summary.
    #[serde(flatten)]
    pub summary: PathwaySummary,
    /// The state graph as a Mermaid flowchart.
    pub mermaid: String,
    /// The pathway file as loaded (pathway.json).
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// The pathways the caller may see.
#[utoipa::path(
    get, path = "/v1/pathways", operation_id = "listPathways", tag = "pathways",
    responses(
        (status = 200, description = "The pathways, latest versions", body = [PathwaySummary]),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
) -> Result<Json<Vec<PathwaySummary>>, Problem> {
    caller.require(Scope::Read)?;
    let catalog = api.runtime.catalog();
    let mut ids = catalog.pathway_ids();
    ids.sort();
    Ok(Json(
        ids.iter()
            .filter(|id| caller.may_use(id))
            .filter_map(|id| catalog.latest(id))
            .map(|v| summary(&v.checked.pathway))
            .collect(),
    ))
}

/// One pathway: its latest version, graph and declaration.
#[utoipa::path(
    get, path = "/v1/pathways/{id}", operation_id = "getPathway", tag = "pathways",
    params(("id" = String, Path, description = "The pathway's id")),
    responses(
        (status = 200, description = "The pathway", body = PathwayView),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or pathway not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pathway", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
    Path(id): Path<String>,
) -> Result<Json<PathwayView>, Problem> {
    caller.require(Scope::Read)?;
    caller.require_pathway(&id)?;
    let version = api.runtime.catalog().latest(&id).ok_or_else(|| {
        Problem::not_found(&format!(
            "no pathway \"{id}\" (loaded: {})",
            api.runtime.catalog().pathway_ids().join(", ")
        ))
    })?;
    let p = &version.checked.pathway;
    Ok(Json(PathwayView {
        summary: summary(p),
        mermaid: graph::to_mermaid(p),
        definition: serde_json::to_value(p).unwrap_or(Value::Null),
    }))
}

fn summary(p: &carepath_engine::Pathway) -> PathwaySummary {
    PathwaySummary {
        id: p.id.clone(),
        version: p.version,
        title: p.title.clone(),
        description: p.description.clone(),
        states: p.states.keys().cloned().collect(),
        events: p.events.keys().cloned().collect(),
    }
}
