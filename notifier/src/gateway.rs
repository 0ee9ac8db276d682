//! SMS over HTTP gateways: GatewayAPI, CPSMS, and a generic JSON webhook.
//!
//! Each adapter is one request shape (domain.md, "SMS gateways"). What they share: the phone
//! number is checked before anything is sent, the notice key travels with the request so a
//! gateway that deduplicates can, and the HTTP status decides between retry and dead letter:
//! 408, 425, 429 and 5xx are worth retrying, other 4xx are not.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::channel::{Message, Receipt, SendError, mask};
use crate::config::{ConfigError, secret};

/// Which gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    /// GatewayAPI: `POST /rest/mtsms`, `Authorization: Token …`.
    Gatewayapi,
    /// CPSMS: `POST /v2/send`, basic authentication.
    Cpsms,
    /// Any service taking `{"key","to","message","language","sender"}` as JSON.
    Webhook,
}

impl Gateway {
    /// The gateway's name, as messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Gateway::Gatewayapi => "GatewayAPI",
            Gateway::Cpsms => "CPSMS",
            Gateway::Webhook => "SMS webhook",
        }
    }
}

/// `[sms]` in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// Which gateway.
    pub gateway: Gateway,
    /// The gateway's base URL (for a webhook: the whole URL).
    pub url: String,
    /// The environment variable holding the API token (CPSMS: the API key).
    #[serde(default)]
    pub token_env: Option<String>,
    /// CPSMS: the account's user name.
    #[serde(default)]
    pub username: Option<String>,
    /// The sender name shown on the phone (at most 11 characters).
    pub sender: String,
    /// Seconds before a request is given up (and retried later).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// `carepath validate` warns when a family SMS template is longer than this.
    #[serde(default = "default_segments")]
    pub max_segments: usize,
    /// The environment variable holding the secret shared with the gateway. GatewayAPI signs
    /// its webhooks with it (`X-Gwapi-Signature`: inbound SMS and delivery receipts); for
    /// CPSMS, carepath signs each message's receipt URL with it. Without it,
    /// `carepath run --listen` takes no inbound SMS and no receipts.
    #[serde(default)]
    pub inbound_secret_env: Option<String>,
    /// Where the gateway reaches `carepath run --listen` from outside, as
    /// `https://carepath.kommune.dk`: given, each SMS asks for delivery receipts there
    /// (GatewayAPI's `callback_url`, CPSMS's `dlr_url`). Needs `inbound_secret_env`.
    #[serde(default)]
    pub receipts_url: Option<String>,
    /// GatewayAPI: the keyword inbound SMS start with on a shared short code ("CAREPATH STOP");
    /// it is taken off before the reply is read.
    #[serde(default)]
    pub inbound_keyword: Option<String>,
}

fn default_timeout() -> u64 {
    10
}

fn default_segments() -> usize {
    crate::sms::DEFAULT_MAX_SEGMENTS
}

/// The SMS channel.
#[derive(Clone, Debug)]
pub struct SmsChannel {
    gateway: Gateway,
    url: String,
    token: Option<String>,
    username: Option<String>,
    sender: String,
    client: reqwest::Client,
    /// Where receipts go, and the secret that signs CPSMS's receipt URLs.
    receipts: Option<(reqwest::Url, String)>,
}

/// The path under which `carepath run --listen` takes `gateway`'s delivery receipts, for the
/// gateways that send them.
pub fn receipts_path(gateway: Gateway) -> Option<&'static str> {
    match gateway {
        Gateway::Gatewayapi => Some("/v1/receipts/sms/gatewayapi"),
        Gateway::Cpsms => Some("/v1/receipts/sms/cpsms"),
        Gateway::Webhook => None,
    }
}

/// The signature of a CPSMS receipt URL for the notice `key`: HMAC-SHA256 with the shared
/// secret, in hex. CPSMS calls the URL as given and signs nothing itself, so the URL carries
/// the proof that carepath made it, for this notice only.
pub fn receipt_signature(secret: &[u8], key: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(key.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl SmsChannel {
    /// Builds the channel; reads the token from its environment variable.
    pub fn new(config: &SmsConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("sms.{key}"),
            reason,
        };
        if reqwest::Url::parse(&config.url).is_err() {
            return Err(invalid("url", format!("{:?} is not a URL", config.url)));
        }
        if config.sender.is_empty() || config.sender.chars().count() > 11 {
            return Err(invalid("sender", "give 1 to 11 characters".into()));
        }
        let token = match &config.token_env {
            Some(var) => Some(secret(var, "sms.token_env")?),
            None => None,
        };
        match config.gateway {
            Gateway::Gatewayapi if token.is_none() => {
                return Err(invalid("token_env", "GatewayAPI needs a token".into()));
            }
            Gateway::Cpsms if token.is_none() || config.username.is_none() => {
                return Err(invalid(
                    "username",
                    "CPSMS needs a username and token_env".into(),
                ));
            }
            _ => {}
        }
        let receipts = match &config.receipts_url {
            None => None,
            Some(url) => {
                let base = reqwest::Url::parse(url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| {
                        invalid("receipts_url", format!("{url:?} is not an http(s) URL"))
                    })?;
                let Some(var) = &config.inbound_secret_env else {
                    return Err(invalid(
                        "inbound_secret_env",
                        "receipts_url needs the secret that authenticates the gateway's calls"
                            .into(),
                    ));
                };
                let Some(path) = receipts_path(config.gateway) else {
                    return Err(invalid(
                        "receipts_url",
                        "delivery receipts come from GatewayAPI and CPSMS, not a webhook".into(),
                    ));
                };
                let secret = secret(var, "sms.inbound_secret_env")?;
                let mut at = base.clone();
                at.set_path(&format!("{}{path}", base.path().trim_end_matches('/')));
                Some((at, secret))
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()
            .map_err(|e| invalid("url", e.to_string()))?;
        Ok(SmsChannel {
            gateway: config.gateway,
            url: config.url.trim_end_matches('/').to_string(),
            token,
            username: config.username.clone(),
            sender: config.sender.clone(),
            client,
            receipts,
        })
    }

    /// Sends one SMS.
    pub async fn send(&self, m: &Message) -> Result<Receipt, SendError> {
        let msisdn = msisdn(&m.to)?;
        let request = match self.gateway {
            Gateway::Gatewayapi => self
                .client
                .post(format!("{}/rest/mtsms", self.url))
                .header(
                    "Authorization",
                    format!("Token {}", self.token.as_deref().unwrap_or_default()),
                )
                .json(&{
                    let mut body = json!({
                        "sender": self.sender,
                        "message": m.body,
                        "recipients": [{"msisdn": msisdn}],
                        "userref": m.key,
                    });
                    // GatewayAPI sends GSM 03.38 unless told otherwise, which garbles Arabic,
                    // Farsi or Ukrainian: a text outside GSM-7 goes as UCS-2, as documented.
                    if crate::sms::segments(&m.body).encoding == crate::sms::Encoding::Ucs2 {
                        body["encoding"] = json!("UCS2");
                    }
                    if let Some(url) = self.receipt_url(&m.key) {
                        body["callback_url"] = json!(url);
                    }
                    body
                }),
            Gateway::Cpsms => self
                .client
                .post(format!("{}/v2/send", self.url))
                .basic_auth(
                    self.username.as_deref().unwrap_or_default(),
                    self.token.as_deref(),
                )
                .json(&{
                    let mut body = json!({
                        "to": msisdn.to_string(),
                        "message": m.body,
                        "from": self.sender,
                        "reference": m.key,
                    });
                    if let Some(url) = self.receipt_url(&m.key) {
                        body["dlr_url"] = json!(url);
                    }
                    body
                }),
            Gateway::Webhook => {
                let mut r = self
                    .client
                    .post(&self.url)
                    .header("Idempotency-Key", &m.key)
                    .json(&json!({
                        "key": m.key,
                        "to": m.to,
                        "message": m.body,
                        "language": m.language,
                        "sender": self.sender,
                    }));
                if let Some(token) = &self.token {
                    r = r.bearer_auth(token);
                }
                r
            }
        };
        let response = request.send().await.map_err(|e| {
            // Timeouts and refused connections: the gateway may be back later.
            SendError::Transient(format!(
                "{} unreachable: {}",
                self.gateway.name(),
                e.without_url()
            ))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Receipt {
                detail: receipt(self.gateway, status, &text),
            });
        }
        let reason = format!(
            "{} answered {status} for {}: {}",
            self.gateway.name(),
            mask(&m.to),
            text.chars().take(200).collect::<String>()
        );
        if retry_worth(status) {
            Err(SendError::Transient(reason))
        } else {
            Err(SendError::Permanent(reason))
        }
    }
}

impl SmsChannel {
    /// Where the gateway should report on the message `key`, when receipts are configured:
    /// for CPSMS with the key and its signature in the query, since CPSMS signs nothing.
    fn receipt_url(&self, key: &str) -> Option<String> {
        let (url, secret) = self.receipts.as_ref()?;
        let mut url = url.clone();
        if self.gateway == Gateway::Cpsms {
            url.query_pairs_mut()
                .append_pair("key", key)
                .append_pair("sig", &receipt_signature(secret.as_bytes(), key));
        }
        Some(url.to_string())
    }
}

fn retry_worth(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY | StatusCode::TOO_MANY_REQUESTS
        )
}

fn receipt(gateway: Gateway, status: StatusCode, text: &str) -> String {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    match gateway {
        Gateway::Gatewayapi => match body.get("ids") {
            Some(ids) => format!("gatewayapi {status}, ids {ids}"),
            None => format!("gatewayapi {status}"),
        },
        Gateway::Cpsms => format!("cpsms {status}"),
        Gateway::Webhook => format!("webhook {status}"),
    }
}

/// A phone number as gateways want it: country code and number, digits only. A number
/// without a country code is refused: guessing +45 could text a stranger abroad.
pub fn msisdn(phone: &str) -> Result<u64, SendError> {
    let bad = || SendError::Permanent(format!("invalid phone number {}", mask(phone)));
    let rest = phone.trim().strip_prefix('+').ok_or_else(bad)?;
    let digits: String = rest.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !(8..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_become_msisdns_or_are_refused() {
        assert_eq!(msisdn("+45 20 12 34 56"), Ok(4520123456));
        assert!(msisdn("20123456").is_err(), "no country code");
        assert!(msisdn("+45 2012 345X").is_err());
        let e = msisdn("+45 2012 345X").expect_err("not digits").to_string();
        assert!(!e.contains("2012"), "the number is masked: {e}");
    }

    #[test]
    fn statuses_worth_a_retry() {
        assert!(retry_worth(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_worth(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retry_worth(StatusCode::UNAUTHORIZED));
        assert!(!retry_worth(StatusCode::BAD_REQUEST));
    }
}
