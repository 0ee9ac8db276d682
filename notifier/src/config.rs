//! The notifier's configuration file: which channels exist, how retries go, quiet hours.
//!
//! ```toml
//! [email]
//! host = "smtp.kommune.dk"
//! security = "starttls"
//! username = "carepath"
//! password_env = "CAREPATH_SMTP_PASSWORD"   # the variable's name, never the password
//! from = "Forløbskoordinering <noreply@kommune.dk>"
//!
//! [sms]
//! gateway = "gatewayapi"
//! url = "https://gatewayapi.com"
//! token_env = "GATEWAYAPI_TOKEN"
//! sender = "Kommunen"
//!
//! [delivery]
//! max_attempts = 8
//!
//! [quiet_hours]
//! weekdays = { from = "08:00", until = "20:00" }
//! ```
//!
//! Secrets come from environment variables named in the file, so the file can be kept in
//! version control.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use carepath_engine::pathway::Channel;

use crate::channel::{Message, Receipt, SendError};
use crate::email::{EmailChannel, EmailConfig};
use crate::file::{FileChannel, FileConfig};
use crate::gateway::{SmsChannel, SmsConfig};
use crate::quiet::QuietHours;
use crate::retry::RetryPolicy;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is wrong.
    #[error("configuration: {key}: {reason}")]
    Invalid {
        /// The key, dotted (`email.from`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment variable the file names is not set.
    #[error("configuration: {key} names the environment variable {var}, which is not set")]
    MissingSecret {
        /// The variable.
        var: String,
        /// The key that names it.
        key: String,
    },
}

/// Reads a secret from the environment variable `var`, named by `key` in the file.
pub fn secret(var: &str, key: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|_| ConfigError::MissingSecret {
        var: var.into(),
        key: key.into(),
    })
}

/// The whole `[email]`, `[sms]`, `[file]`, `[delivery]`, `[quiet_hours]` configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Email over SMTP.
    #[serde(default)]
    pub email: Option<EmailConfig>,
    /// SMS over an HTTP gateway.
    #[serde(default)]
    pub sms: Option<SmsConfig>,
    /// Messages to a file or the console; takes every channel that has no transport.
    #[serde(default)]
    pub file: Option<FileConfig>,
    /// Retries.
    #[serde(default)]
    pub delivery: RetryPolicy,
    /// When families may be messaged.
    #[serde(default)]
    pub quiet_hours: QuietHours,
}

/// The configured channels, ready to send.
#[derive(Clone, Debug)]
pub struct Channels {
    email: Option<EmailChannel>,
    sms: Option<SmsChannel>,
    file: Option<FileChannel>,
}

impl Channels {
    /// Builds every configured channel, checking the configuration and reading secrets.
    pub fn new(config: &NotifierConfig) -> Result<Self, ConfigError> {
        let tz = config
            .quiet_hours
            .validate()
            .map_err(|e| ConfigError::Invalid {
                key: "quiet_hours".into(),
                reason: e.to_string(),
            })?;
        Ok(Channels {
            email: config.email.as_ref().map(EmailChannel::new).transpose()?,
            sms: config.sms.as_ref().map(SmsChannel::new).transpose()?,
            file: config.file.clone().map(|f| FileChannel::new(f, tz)),
        })
    }

    /// Whether any channel is configured.
    pub fn any(&self) -> bool {
        self.email.is_some() || self.sms.is_some() || self.file.is_some()
    }

    /// Whether `channel` goes to the file/console channel.
    pub fn to_file(&self, channel: Channel) -> bool {
        self.file.is_some()
            && match channel {
                Channel::Email => self.email.is_none(),
                Channel::Sms => self.sms.is_none(),
            }
    }

    /// Writes messages to the file/console channel in one go.
    pub fn send_to_file(
        &self,
        messages: &[&Message],
        now: Timestamp,
    ) -> Result<Receipt, SendError> {
        match &self.file {
            Some(f) => f.send_all(messages, now),
            None => Err(SendError::Permanent(
                "no [file] channel is configured".into(),
            )),
        }
    }

    /// Sends one message on its channel.
    pub async fn send(&self, m: &Message, now: Timestamp) -> Result<Receipt, SendError> {
        match m.channel {
            Channel::Email => match &self.email {
                Some(email) => email.send(m, now).await,
                None => self
                    .send_to_file(&[m], now)
                    .map_err(|_| not_configured("email")),
            },
            Channel::Sms => match &self.sms {
                Some(sms) => sms.send(m).await,
                None => self
                    .send_to_file(&[m], now)
                    .map_err(|_| not_configured("sms")),
            },
        }
    }
}

fn not_configured(channel: &str) -> SendError {
    SendError::Permanent(format!(
        "no {channel} channel is configured: add [{channel}] (or [file]) to the configuration, then `carepath outbox retry`"
    ))
}
