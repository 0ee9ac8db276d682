//! Errors as RFC 9457 problem documents: a status, a stable machine code, a sentence for
//! people and, for a bad member of a request body, its JSON pointer.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An `application/problem+json` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:carepath:problem:CODE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status, repeated in the body.
    pub status: u16,
    /// A short summary of the kind.
    pub title: String,
    /// What went wrong in this request, and what to do.
    pub detail: String,
    /// The stable machine code.
    pub code: String,
    /// For a bad member of the body: its JSON pointer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

impl Problem {
    /// A problem of `status` with a machine `code`.
    pub fn new(status: StatusCode, code: &str, detail: &str) -> Self {
        Problem {
            kind: format!("urn:carepath:problem:{code}"),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            detail: detail.to_string(),
            code: code.to_string(),
            pointer: None,
        }
    }

    /// 404.
    pub fn not_found(detail: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 401: no credentials, or wrong ones.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 422: the body has the wrong shape; `pointer` names the member.
    pub fn invalid(pointer: &str, detail: &str) -> Self {
        Problem {
            pointer: Some(pointer.to_string()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", detail)
        }
    }

    /// 503: a dependency (the database) does not answer.
    pub fn unavailable(detail: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}
