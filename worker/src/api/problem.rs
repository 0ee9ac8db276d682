//! Errors as RFC 9457 problem documents: a status, a stable machine code, a sentence for
//! people and, for a bad member of a request body, its JSON pointer.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An `application/problem+json` answer (RFC 9457).
// Boxed: it travels in every handler's `Err`, which should stay small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem(Box<ProblemDoc>);

/// The members of a problem document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProblemDoc {
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
        Problem(Box::new(ProblemDoc {
            kind: format!("urn:carepath:problem:{code}"),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            detail: detail.to_string(),
            code: code.to_string(),
            pointer: None,
        }))
    }

    /// The same problem, naming the bad member by its JSON pointer.
    pub fn at(mut self, pointer: &str) -> Self {
        self.0.pointer = Some(pointer.to_string());
        self
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
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", detail).at(pointer)
    }

    /// 400: the body is not JSON at all.
    pub fn malformed(detail: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-json", detail)
    }

    /// 400: a query parameter is wrong.
    pub fn bad_query(detail: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-query", detail)
    }

    /// 403: the token is known but may not do this.
    pub fn forbidden(code: &str, detail: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 409: the request is well formed but conflicts with the instance's state.
    pub fn conflict(code: &str, detail: &str) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 500: the server failed; the detail says what to tell an operator.
    pub fn internal(detail: &str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// The same problem under another machine code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.0.kind = format!("urn:carepath:problem:{code}");
        self.0.code = code.to_string();
        self
    }

    /// 503 for a failed database call: nothing was changed.
    pub fn store(e: crate::store::StoreError) -> Self {
        Self::unavailable(&format!("the database did not answer: {e}"))
    }

    /// 503: a dependency (the database) does not answer.
    pub fn unavailable(detail: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
}

impl std::ops::Deref for Problem {
    type Target = ProblemDoc;

    fn deref(&self) -> &ProblemDoc {
        &self.0
    }
}

/// Every refusal is a problem document, whoever made it: axum's 405 for a method a route
/// does not take, the timeout's 408 and the body limit's 413 come with an empty body, and are
/// given one here, keeping their headers (`Allow` on a 405).
pub async fn shape_refusals(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let shaped = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || shaped {
        return response;
    }
    let (code, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            format!("{path} does not take {method}: see /openapi.json"),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request-timeout",
            "the request took too long to arrive or to answer: try again".to_string(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body-too-large",
            "the body is larger than the API takes".to_string(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "send the body as application/json".to_string(),
        ),
        other => (
            "refused",
            format!(
                "{} {}",
                other.as_u16(),
                other.canonical_reason().unwrap_or("refused")
            ),
        ),
    };
    let (mut parts, _) = response.into_parts();
    let problem = Problem::new(status, code, &detail).into_response();
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, problem.into_body())
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

/// Reads a JSON body as `T`: 400 when it is not JSON, 422 with the JSON pointer of the first
/// member that does not fit.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(Problem::malformed(&format!("the body is not JSON: {e}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let pointer = pointer(e.path());
        let inner = e.into_inner().to_string();
        // serde_json appends " at line L column C": the pointer says where, more usefully.
        let detail = inner
            .rsplit_once(" at line ")
            .map_or(inner.as_str(), |(d, _)| d)
            .to_string();
        let at = if pointer.is_empty() {
            "the body"
        } else {
            pointer.as_str()
        };
        Problem::invalid(&pointer, &format!("{at}: {detail}"))
    })
}

/// A serde path as an RFC 6901 JSON pointer.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        let part = match segment {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                key.replace('~', "~0").replace('/', "~1")
            }
            Segment::Unknown => continue,
        };
        out.push('/');
        out.push_str(&part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        n: u32,
    }

    #[test]
    fn bad_members_are_named_by_pointer_and_non_json_is_400() {
        let p =
            parse_body::<Body>(br#"{"name": "a", "items": [{"n": 1}, {"n": "x"}]}"#).unwrap_err();
        assert_eq!((p.status, p.pointer.as_deref()), (422, Some("/items/1/n")));
        assert!(
            p.detail.starts_with("/items/1/n: invalid type"),
            "{}",
            p.detail
        );
        let p = parse_body::<Body>(br#"{"name": "a"}"#).unwrap_err();
        assert_eq!(p.pointer.as_deref(), Some(""));
        assert!(p.detail.contains("missing field `items`"), "{}", p.detail);
        let p = parse_body::<Body>(b"{").unwrap_err();
        assert_eq!((p.status, p.code.as_str()), (400, "malformed-json"));
    }
}
