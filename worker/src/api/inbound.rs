//! Inbound SMS from GatewayAPI (its "MO" webhook): a family answers STOP to opt their number
//! out of SMS, START to opt back in.
//!
//! GatewayAPI signs each call with a JWT (HS256) in `X-Gwapi-Signature`, made with the secret
//! set on the webhook, whose claims are the message itself. The body is JSON: `{"id",
//! "msisdn", "receiver", "message", "senttime", ...}`. A call is taken only when:
//!
//! - the signature is valid for the configured secret;
//! - the signed claims are this body's message: the same `msisdn` and `message` (and `id`,
//!   `senttime` when the body has them), so a token signed for one message cannot carry
//!   another number's STOP;
//! - it is fresh: an `exp` that has not passed, or a `senttime` within [`FRESHNESS`] of now;
//! - it was not taken before: the message's `id` (or the token's hash) is remembered for the
//!   freshness window, and a second call with it is refused 409.
//!
//! Anything else is refused 401 and changes nothing. On a shared short code the reply starts
//! with the service's keyword ("CAREPATH STOP"): `[sms] inbound_keyword` takes it off. The
//! text of a message is never logged: a family may write anything in a reply.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Json;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use carepath_engine::pathway::Channel;
use carepath_notifier::channel::mask_phone;

use super::{Api, Problem};
use crate::delivery::Notifier;
use crate::store::Storage;

/// The header GatewayAPI signs webhooks in.
pub const SIGNATURE_HEADER: &str = "x-gwapi-signature";

/// How far a message's `senttime` may be from now, and how long a handled one is remembered.
pub const FRESHNESS: i64 = 10 * 60;

/// Words that opt a number out, as the first word of a reply (any case).
pub const STOP_WORDS: &[&str] = &["STOP", "STOPP", "AFMELD"];

/// Words that opt a number back in.
pub const START_WORDS: &[&str] = &["START", "TILMELD"];

/// What an inbound message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The number was opted out of SMS.
    OptedOut,
    /// The number was opted back in.
    OptedIn,
    /// Not a keyword: nothing changed.
    Ignored,
}

impl Action {
    /// The first word of `message` after the service's `keyword`, if it starts with it, read
    /// as a keyword.
    pub fn of(message: &str, keyword: Option<&str>) -> Self {
        let mut words = message.split_whitespace().peekable();
        if let (Some(k), Some(first)) = (keyword, words.peek())
            && first.eq_ignore_ascii_case(k)
        {
            words.next();
        }
        let word = words
            .next()
            .unwrap_or("")
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_uppercase();
        if STOP_WORDS.contains(&word.as_str()) {
            Action::OptedOut
        } else if START_WORDS.contains(&word.as_str()) {
            Action::OptedIn
        } else {
            Action::Ignored
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::OptedOut => "opted-out",
            Action::OptedIn => "opted-in",
            Action::Ignored => "ignored",
        }
    }
}

/// GatewayAPI's inbound SMS webhook: STOP/STOPP/AFMELD opt the sender out of SMS,
/// START/TILMELD back in; anything else changes nothing. Signed with HS256 in
/// `X-Gwapi-Signature` by the secret of `[sms] inbound_secret_env`.
#[utoipa::path(
    post, path = "/v1/inbound/sms/gatewayapi", operation_id = "gatewayapiInbound", tag = "gateways",
    request_body(content = Object, description = "GatewayAPI's MO message: msisdn, message, …"),
    params(("X-Gwapi-Signature" = String, Header, description = "HS256 JWT signed with the webhook's secret")),
    responses(
        (status = 200, description = "What the message did: opted-out, opted-in or ignored", body = Object),
        (status = 401, description = "No or bad signature", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Inbound SMS are not configured", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a message", body = super::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn gatewayapi<S: Storage>(
    State(api): State<Api<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let now = api.runtime.clock().now();
    let (token, claims) = gatewayapi_claims(&api, &headers, "inbound SMS")?;

    let body: Value = super::parse_body(&body)?;
    signed_for(&claims, &body, now.as_second())
        .map_err(|why| Problem::unauthorized(&format!("X-Gwapi-Signature: {why}")))?;
    let msisdn = match &body["msisdn"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => {
            return Err(Problem::invalid(
                "/msisdn",
                "msisdn: expected the sender's number",
            ));
        }
    };
    let message = body["message"]
        .as_str()
        .ok_or_else(|| Problem::invalid("/message", "message: expected the text"))?;
    let number = Notifier::opt_out_key(&format!("+{}", msisdn.trim_start_matches('+')));
    if number.len() < 9 {
        return Err(Problem::invalid(
            "/msisdn",
            "msisdn: expected a number with its country code, as 4512345678",
        ));
    }
    // Once per message: a signed call posted again is a replay, whoever sends it.
    let seen_key = match claims.get("id").filter(|v| !v.is_null()) {
        Some(id) => format!("gatewayapi:{}", scalar(id)),
        None => {
            use sha2::Digest;
            let digest = Sha256::digest(token.as_bytes());
            format!("token:{}", super::auth::hex(&digest))
        }
    };
    let fresh = api
        .runtime
        .store()
        .remember_inbound(
            &seen_key,
            now,
            now - jiff::SignedDuration::from_secs(2 * FRESHNESS),
        )
        .await
        .map_err(|e| Problem::unavailable(&format!("the message was not recorded: {e}")))?;
    if !fresh {
        return Err(Problem::conflict(
            "replayed",
            "this signed message was taken already: it is not applied again",
        ));
    }
    let action = Action::of(message, api.inbound_keyword.as_deref());
    let shown = mask_phone(&number);
    let changed = match action {
        Action::Ignored => false,
        Action::OptedOut | Action::OptedIn => api
            .runtime
            .store()
            .set_opt_out(
                &number,
                Channel::Sms,
                action == Action::OptedOut,
                match action {
                    Action::OptedOut => "sms STOP",
                    _ => "sms START",
                },
                now,
            )
            .await
            .map_err(|e| Problem::unavailable(&format!("the opt-out was not saved: {e}")))?,
    };
    if action != Action::Ignored {
        let entry = crate::store::AuditEntry {
            at: now,
            actor: "gateway GatewayAPI".into(),
            action: if action == Action::OptedOut {
                "opt-out"
            } else {
                "opt-in"
            }
            .into(),
            reference: None,
            instance_id: None,
            detail: Some(format!("sms {shown}, the family's reply")),
            outcome: "ok".into(),
        };
        if let Err(e) = api.runtime.store().append_audit(&entry).await {
            tracing::error!(error = %e, "the audit line was not written");
        }
    }
    tracing::info!(from = %shown, action = action.as_str(), changed, "inbound SMS");
    Ok(Json(json!({"action": action.as_str(), "changed": changed})))
}

/// The verified claims of a GatewayAPI webhook call, and its token: refused 404 when no secret
/// is configured for `what`, 401 without a valid signature.
pub(super) fn gatewayapi_claims<'h, S: Storage>(
    api: &Api<S>,
    headers: &'h HeaderMap,
    what: &str,
) -> Result<(&'h str, Value), Problem> {
    let Some(secret) = &api.gateway_secret else {
        return Err(Problem::not_found(&format!(
            "{what} are not configured: set [sms] inbound_secret_env"
        )));
    };
    let token = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Problem::unauthorized("no X-Gwapi-Signature header"))?;
    let now = api.runtime.clock().now();
    let claims = verify_jwt(token, secret.as_bytes(), now.as_second())
        .map_err(|why| Problem::unauthorized(&format!("X-Gwapi-Signature: {why}")))?;
    Ok((token, claims))
}

/// A JSON scalar as text, so a number and its string compare equal (`4512345678`, `"4512345678"`).
pub(super) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().trim_start_matches('+').to_string(),
        other => other.to_string(),
    }
}

/// Whether the signed `claims` are this `body`: they hold every `required` member, and each
/// of `compared` the body has is the one signed. GatewayAPI's claims are the call itself, so a
/// token signed for one call cannot carry another's content.
pub fn same_call(
    claims: &Value,
    body: &Value,
    required: &[&str],
    compared: &[&str],
) -> Result<(), String> {
    for member in required {
        if claims.get(member).is_none_or(Value::is_null) {
            return Err(format!(
                "the signed claims hold no \"{member}\": the signature does not cover the message"
            ));
        }
    }
    for member in compared {
        if let Some(said) = body.get(member).filter(|v| !v.is_null())
            && claims.get(member).map(scalar) != Some(scalar(said))
        {
            return Err(format!(
                "the body's \"{member}\" is not the one signed: the signature is for another message"
            ));
        }
    }
    Ok(())
}

/// Whether the signed `claims` are this `body`'s message, and fresh at `now` (seconds).
pub fn signed_for(claims: &Value, body: &Value, now: i64) -> Result<(), String> {
    same_call(
        claims,
        body,
        &["msisdn", "message"],
        &["id", "msisdn", "message", "senttime"],
    )?;
    match (claims["exp"].as_i64(), claims["senttime"].as_i64()) {
        (Some(_), _) => Ok(()), // checked with the signature
        (None, Some(sent)) if (now - sent).abs() <= FRESHNESS => Ok(()),
        (None, Some(_)) => Err(format!(
            "the message was sent more than {} minutes from now: refused as stale",
            FRESHNESS / 60
        )),
        (None, None) => Err(
            "the signed claims hold no time (exp or senttime): refused, since it could be replayed forever"
                .into(),
        ),
    }
}

/// Checks an HS256 JWT's signature with `secret`, and its `exp` claim, if any, against `now`
/// (seconds since the epoch); returns its claims.
pub fn verify_jwt(token: &str, secret: &[u8], now: i64) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three dot-separated parts)".into());
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| format!("the {what} is not base64url: {e}"))
    };
    let json = |bytes: Vec<u8>, what: &str| {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("the {what} is not JSON: {e}"))
    };
    let head = json(decode(header, "header")?, "header")?;
    if head["alg"] != "HS256" {
        return Err(format!("algorithm {} is not HS256", head["alg"]));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(claims.as_bytes());
    mac.verify_slice(&decode(signature, "signature")?)
        .map_err(|_| "the signature does not match the configured secret".to_string())?;
    let claims = json(decode(claims, "claims")?, "claims")?;
    if let Some(exp) = claims["exp"].as_i64()
        && exp < now
    {
        return Err("the token has expired".into());
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signs `claims` as GatewayAPI does.
    fn sign(claims: &Value, secret: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(format!("{header}.{claims}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{claims}.{sig}")
    }

    #[test]
    fn a_signed_token_passes_and_a_forged_one_does_not() {
        let token = sign(&json!({"msisdn": 4512345678u64}), b"s3cret");
        assert_eq!(
            verify_jwt(&token, b"s3cret", 0),
            Ok(json!({"msisdn": 4512345678u64}))
        );
        let err = verify_jwt(&token, b"other", 0).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(verify_jwt("a.b", b"s3cret", 0).is_err());
        let expired = sign(&json!({"exp": 100}), b"s3cret");
        assert!(
            verify_jwt(&expired, b"s3cret", 200)
                .unwrap_err()
                .contains("expired")
        );
        assert!(verify_jwt(&expired, b"s3cret", 50).is_ok());
    }

    #[test]
    fn the_signature_covers_this_message_and_is_fresh() {
        let body = json!({"id": 7, "msisdn": 4520123456u64, "message": "STOP", "senttime": 1000});
        assert_eq!(signed_for(&body, &body, 1100), Ok(()));
        let mut other = body.clone();
        other["msisdn"] = json!(4599999999u64);
        let e = signed_for(&body, &other, 1100).unwrap_err();
        assert!(e.contains("\"msisdn\" is not the one signed"), "{e}");
        let e = signed_for(&json!({"iat": 1000}), &body, 1100).unwrap_err();
        assert!(e.contains("hold no \"msisdn\""), "{e}");
        let e = signed_for(&body, &body, 1000 + FRESHNESS + 1).unwrap_err();
        assert!(e.contains("stale"), "{e}");
        let timeless = json!({"msisdn": "4520123456", "message": "STOP"});
        assert!(
            signed_for(&timeless, &timeless, 0)
                .unwrap_err()
                .contains("no time")
        );
        // A number and its string are the same number.
        let stringly = json!({"msisdn": "+4520123456", "message": "STOP", "exp": 99});
        assert_eq!(
            signed_for(
                &stringly,
                &json!({"msisdn": 4520123456u64, "message": "STOP"}),
                0
            ),
            Ok(())
        );
    }

    #[test]
    fn keywords_are_the_first_word_in_any_case() {
        assert_eq!(Action::of("stop", None), Action::OptedOut);
        assert_eq!(Action::of("  Stop tak", None), Action::OptedOut);
        assert_eq!(Action::of("AFMELD.", None), Action::OptedOut);
        assert_eq!(Action::of("start", None), Action::OptedIn);
        assert_eq!(Action::of("Kan vi flytte tiden?", None), Action::Ignored);
        assert_eq!(Action::of("Please don't stop", None), Action::Ignored);
        assert_eq!(Action::of("", None), Action::Ignored);
        // On a shared short code the service's keyword comes first.
        assert_eq!(
            Action::of("carepath STOP", Some("CAREPATH")),
            Action::OptedOut
        );
        assert_eq!(
            Action::of("CAREPATH start", Some("CAREPATH")),
            Action::OptedIn
        );
        assert_eq!(Action::of("CAREPATH", Some("CAREPATH")), Action::Ignored);
        assert_eq!(Action::of("STOP", Some("CAREPATH")), Action::OptedOut);
    }
}
