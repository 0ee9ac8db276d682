//! `Idempotency-Key` on POSTs: a repeat of a request gets the first answer, not a second
//! effect.
//!
//! The first answer (status and body) is kept per caller and key, with a hash of the method,
//! path and body: the same key on another request is refused (422), so a client bug cannot
//! read someone else's answer. Answers of 5xx, 401, 403, 408 and 413 are not kept: the request
//! did nothing, and may be sent again as it is once the server or the token is put right.
//! Events keep their answers themselves (the event record is written in the same transaction
//! as its effect); this layer serves the other POSTs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::instances::{REPLAYED, idempotency_key};
use super::{Api, BODY_LIMIT, Problem, body_problem};
use crate::store::{KeptResponse, Storage};

/// The idempotency keys requests are using now, per caller: requests under one key take
/// turns, so a repeat sent while the first is still running waits and gets the first answer,
/// instead of running the handler a second time (20 concurrent enrolments with one key used
/// to give 1 enrolment, 7 replays and 12 `already-enrolled`).
#[derive(Default)]
pub struct Reservations(std::sync::Mutex<HashMap<(String, String), Turn>>);

/// One key's turn: held while a request under it runs.
type Turn = Arc<tokio::sync::Mutex<()>>;

impl Reservations {
    fn slot(&self, caller: &str, key: &str) -> Turn {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((caller.to_string(), key.to_string()))
            .or_default()
            .clone()
    }

    /// Forgets a key nobody else is waiting on.
    fn release(&self, caller: &str, key: &str, slot: Turn) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else holds or awaits this key.
        if Arc::strong_count(&slot) <= 2 {
            map.remove(&(caller.to_string(), key.to_string()));
        }
    }
}

/// The middleware.
pub async fn replay<S: Storage>(State(api): State<Api<S>>, req: Request, next: Next) -> Response {
    let key = match idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };
    // Without a key, or from an unknown caller (whom the handler answers 401), nothing is kept.
    let (Some(key), Ok(caller)) = (key, api.tokens.caller(req.headers())) else {
        return next.run(req).await;
    };
    let reservations = api.reservations.clone();
    let slot = reservations.slot(&caller.name, &key);
    let turn = slot.lock().await;
    let response = match kept_or_run(api, req, next, &caller.name, &key).await {
        Ok(response) | Err(response) => response,
    };
    drop(turn);
    reservations.release(&caller.name, &key, slot);
    response
}

async fn kept_or_run<S: Storage>(
    api: Api<S>,
    req: Request,
    next: Next,
    caller: &str,
    key: &str,
) -> Result<Response, Response> {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| body_problem(StatusCode::PAYLOAD_TOO_LARGE, "").into_response())?;
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(parts.method.as_str());
        h.update(b" ");
        h.update(parts.uri.path());
        h.update(b"\n");
        h.update(&body);
        super::auth::hex(&h.finalize())
    };
    let store = api.runtime.store();
    if let Some(kept) = store
        .kept_response(caller, key)
        .await
        .map_err(|e| Problem::store(e).into_response())?
    {
        if kept.fingerprint != fingerprint {
            return Err(Problem::invalid(
                "",
                "this Idempotency-Key was used for another request: use a new key for a new request",
            )
            .with_code("idempotency-key-reused")
            .into_response());
        }
        return Ok(rebuild(kept.status, kept.body, true));
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = response.status();
    let keep = !(status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::PAYLOAD_TOO_LARGE);
    if !keep {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Problem::internal(&e.to_string()).into_response())?;
    let kept = KeptResponse {
        fingerprint,
        status: status.as_u16(),
        body: body.to_vec(),
    };
    if let Err(e) = store
        .keep_response(caller, key, &kept, api.runtime.clock().now())
        .await
    {
        // The request took effect; only a repeat's answer is at risk. Say so, do not fail it.
        tracing::warn!(error = %e, "an idempotent answer was not kept");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// A kept answer as a response: JSON, or a problem document for an error status.
fn rebuild(status: u16, body: Vec<u8>, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let kind = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, [(header::CONTENT_TYPE, kind)], body).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}
