//! Delivery receipts from the SMS gateways: whether a text that a gateway accepted reached the
//! phone.
//!
//! A gateway's "accepted" is not "delivered": a number can be out of service, a phone off for
//! days. With `[sms] receipts_url`, each SMS asks its gateway to report there:
//!
//! - **GatewayAPI** posts its delivery status notification as JSON (`{"id", "msisdn", "time",
//!   "status", "userref", "error", "code", …}`), signed like its other webhooks: an HS256 JWT
//!   in `X-Gwapi-Signature` whose claims are the notification itself. The claims must hold
//!   `id`, `status` and `userref` (the notice key carepath sent), and every one of them the
//!   body holds must be the one signed.
//! - **CPSMS** calls the `dlr_url` given with the message and signs nothing, so carepath makes
//!   that URL itself: the notice key and its HMAC with the shared secret
//!   ([`carepath_notifier::gateway::receipt_signature`]). The report's `status` is CPSMS's
//!   delivery code: 1 delivered, 2 not delivered, 4 buffered, 8 at the operator, 16 rejected.
//!
//! Each receipt becomes a line of the notice's provenance (`receipt delivered`, `receipt
//! failed`, …) and its `receipt` state. A final failure of a sent notice makes it a dead
//! letter with the reason, for `carepath outbox --status dead` and `carepath outbox retry`. A
//! final receipt stands: a late "on its way" does not undo "delivered". Receipts repeat
//! safely, so a gateway's retry of one is answered 200 and changes nothing.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Json;
use serde::Deserialize;
use serde_json::{Value, json};

use carepath_notifier::gateway::receipt_signature;

use super::inbound::{gatewayapi_claims, same_call, scalar};
use super::{Api, Problem};
use crate::store::{ReceiptOutcome, ReceiptReport, ReceiptState, Storage};

/// What GatewayAPI's status names mean: `None` for a name it does not document.
pub fn gatewayapi_state(status: &str) -> Option<ReceiptState> {
    Some(match status {
        "DELIVERED" => ReceiptState::Delivered,
        "EXPIRED" => ReceiptState::Expired,
        "UNDELIVERABLE" | "REJECTED" | "DELETED" | "SKIPPED" => ReceiptState::Failed,
        "UNKNOWN" | "SCHEDULED" | "BUFFERED" | "ENROUTE" | "ACCEPTED" => ReceiptState::Pending,
        _ => return None,
    })
}

/// What CPSMS's delivery codes mean: `None` for a code it does not document.
pub fn cpsms_state(status: &str) -> Option<ReceiptState> {
    Some(match status.trim() {
        "1" => ReceiptState::Delivered,
        "2" | "16" => ReceiptState::Failed,
        "4" | "8" => ReceiptState::Pending,
        _ => return None,
    })
}

/// GatewayAPI's delivery status notification for a message carepath sent.
#[utoipa::path(
    post, path = "/v1/receipts/sms/gatewayapi", operation_id = "gatewayapiReceipt", tag = "gateways",
    request_body(content = Object, description = "GatewayAPI's delivery status: id, msisdn, time, status, userref, error, code"),
    params(("X-Gwapi-Signature" = String, Header, description = "HS256 JWT signed with the webhook's secret")),
    responses(
        (status = 200, description = "Recorded, or a repeat of a final receipt", body = Object),
        (status = 401, description = "No or bad signature", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Receipts are not configured, or no notice has this userref", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a delivery status carepath knows", body = super::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn gatewayapi<S: Storage>(
    State(api): State<Api<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let (_, claims) = gatewayapi_claims(&api, &headers, "delivery receipts")?;
    let body: Value = super::parse_body(&body)?;
    same_call(
        &claims,
        &body,
        &["id", "status", "userref"],
        &["id", "msisdn", "time", "status", "userref", "error", "code"],
    )
    .map_err(|why| Problem::unauthorized(&format!("X-Gwapi-Signature: {why}")))?;
    // The signed claims are what is read: the body, where it says anything, says the same.
    let key = scalar(&claims["userref"]);
    let status = scalar(&claims["status"]);
    let state = gatewayapi_state(&status).ok_or_else(|| {
        Problem::invalid(
            "/status",
            &format!("status {status:?} is not one of GatewayAPI's delivery statuses"),
        )
    })?;
    // The gateway's code and text say why a message failed; the number stays out.
    let said = |member: &str| claims.get(member).filter(|v| !v.is_null()).map(scalar);
    let detail = match (said("code"), said("error")) {
        (None, None) => format!("GatewayAPI {status}"),
        (code, error) => format!(
            "GatewayAPI {status}: {}",
            [code.map(|c| format!("code {c}")), error]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    record(&api, key, state, detail).await
}

/// CPSMS's report on the URL carepath gave: `key` and `sig` are carepath's, `status` CPSMS's.
#[derive(Debug, Deserialize)]
pub struct CpsmsReceipt {
    /// The notice key carepath put in the URL.
    pub key: Option<String>,
    /// carepath's signature of the key.
    pub sig: Option<String>,
    /// CPSMS's delivery code.
    pub status: Option<String>,
    /// The reference CPSMS echoes, when it does: the same key.
    pub reference: Option<String>,
}

/// CPSMS's delivery report, on the `dlr_url` carepath gave it (GET with a query; a POSTed
/// form is read the same way).
#[utoipa::path(
    get, path = "/v1/receipts/sms/cpsms", operation_id = "cpsmsReceipt", tag = "gateways",
    params(
        ("key" = String, Query, description = "The notice key, as carepath put it in the URL"),
        ("sig" = String, Query, description = "carepath's HMAC of the key"),
        ("status" = String, Query, description = "CPSMS's code: 1 delivered, 2 not delivered, 4 buffered, 8 at the operator, 16 rejected"),
    ),
    responses(
        (status = 200, description = "Recorded, or a repeat of a final receipt", body = Object),
        (status = 401, description = "The URL was not made by carepath for this notice", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Receipts are not configured, or no notice has this key", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a delivery code carepath knows", body = super::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cpsms<S: Storage>(
    State(api): State<Api<S>>,
    Query(query): Query<CpsmsReceipt>,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let Some(secret) = &api.gateway_secret else {
        return Err(Problem::not_found(
            "delivery receipts are not configured: set [sms] inbound_secret_env",
        ));
    };
    // CPSMS may post a form instead: what the query lacks is read from it.
    let form: CpsmsReceipt = form(&body);
    let pick = |q: &Option<String>, f: &Option<String>| q.clone().or_else(|| f.clone());
    let (Some(key), Some(sig)) = (pick(&query.key, &form.key), pick(&query.sig, &form.sig)) else {
        return Err(Problem::unauthorized(
            "no key and sig: use the receipt URL carepath gave with the message",
        ));
    };
    let expected = receipt_signature(secret.as_bytes(), &key);
    if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        return Err(Problem::unauthorized(
            "sig is not carepath's signature of this key",
        ));
    }
    if let Some(reference) = pick(&query.reference, &form.reference)
        && reference != key
    {
        return Err(Problem::invalid(
            "/reference",
            "reference is another notice than the URL's key",
        ));
    }
    let status = pick(&query.status, &form.status)
        .ok_or_else(|| Problem::invalid("/status", "status: expected CPSMS's delivery code"))?;
    let state = cpsms_state(&status).ok_or_else(|| {
        Problem::invalid(
            "/status",
            &format!("status {status:?} is not one of CPSMS's delivery codes (1, 2, 4, 8, 16)"),
        )
    })?;
    record(&api, key, state, format!("CPSMS status {}", status.trim())).await
}

/// A form body as a receipt; anything else reads as empty.
fn form(body: &[u8]) -> CpsmsReceipt {
    let mut r = CpsmsReceipt {
        key: None,
        sig: None,
        status: None,
        reference: None,
    };
    for (k, v) in form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "key" => &mut r.key,
            "sig" => &mut r.sig,
            "status" => &mut r.status,
            "reference" => &mut r.reference,
            _ => continue,
        };
        *slot = Some(v.into_owned());
    }
    r
}

/// Compares without stopping at the first difference, so the time taken tells nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Records `state` on the notice `key` and answers the gateway.
async fn record<S: Storage>(
    api: &Api<S>,
    key: String,
    state: ReceiptState,
    detail: String,
) -> Result<Json<Value>, Problem> {
    let now = api.runtime.clock().now();
    let outcome = api
        .runtime
        .store()
        .record_receipt(&ReceiptReport { key, state, detail }, now)
        .await
        .map_err(|e| Problem::unavailable(&format!("the receipt was not recorded: {e}")))?;
    match outcome {
        ReceiptOutcome::Missing => Err(Problem::not_found(
            "no notice was sent under this key: the receipt is for another system or a purged notice",
        )),
        ReceiptOutcome::Stale { id, state } => Ok(Json(json!({
            "notice": id, "receipt": state, "recorded": false,
        }))),
        ReceiptOutcome::Recorded { id, dead } => {
            api.runtime.metrics().receipt(state);
            if dead {
                tracing::warn!(
                    notice = id,
                    receipt = state.as_str(),
                    "SMS not delivered: dead letter"
                );
            } else {
                tracing::info!(notice = id, receipt = state.as_str(), "SMS receipt");
            }
            Ok(Json(json!({
                "notice": id, "receipt": state, "recorded": true, "dead": dead,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_statuses_map_to_receipts() {
        assert_eq!(gatewayapi_state("DELIVERED"), Some(ReceiptState::Delivered));
        assert_eq!(gatewayapi_state("EXPIRED"), Some(ReceiptState::Expired));
        assert_eq!(
            gatewayapi_state("UNDELIVERABLE"),
            Some(ReceiptState::Failed)
        );
        assert_eq!(gatewayapi_state("ENROUTE"), Some(ReceiptState::Pending));
        assert_eq!(gatewayapi_state("delivered"), None);
        assert_eq!(cpsms_state("1"), Some(ReceiptState::Delivered));
        assert_eq!(cpsms_state("16"), Some(ReceiptState::Failed));
        assert_eq!(cpsms_state("8"), Some(ReceiptState::Pending));
        assert_eq!(cpsms_state("3"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
