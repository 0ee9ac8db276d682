//! Email over SMTP with lettre: pooled connections, plain, STARTTLS or implicit TLS, optional
//! authentication. The notice key becomes the Message-ID, so a retried notice that did arrive
//! the first time can be recognised as the same message.

use std::time::Duration;

use jiff::Timestamp;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, Message as Email, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::calendar::Invitation;
use crate::channel::{Message, Receipt, SendError, mask};
use crate::config::{ConfigError, secret};

/// The Message-ID of a notice: the installation's id and the notice key, at the domain of the
/// From address (RFC 5322 §3.6.4). Globally unique, since the installation id is random per
/// database, and the same on every retry of the notice, so the far end can tell a repeat.
pub fn message_id(origin: &str, key: &str, domain: &str) -> String {
    format!("<{}>", global_id(origin, key, domain))
}

/// `ORIGIN.KEY@DOMAIN`: an id no other installation gives, stable for one `key` here. The
/// Message-ID of a notice and the UID of a calendar entry. Characters a msg-id may not hold
/// (dot-atom text) become dots.
pub fn global_id(origin: &str, key: &str, domain: &str) -> String {
    let atom = |s: &str| -> String {
        let id: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) {
                    c
                } else {
                    '.'
                }
            })
            .collect();
        id.trim_matches('.').to_string()
    };
    let left = [atom(origin), atom(key)]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    let domain = match atom(domain) {
        d if d.is_empty() => "carepath.invalid".to_string(),
        d => d,
    };
    format!("{left}@{domain}")
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// No TLS: only for a relay on the same machine or network.
    None,
    /// Upgrade with STARTTLS (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[email]` in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Its port (default: 587 for STARTTLS, 465 for TLS, 25 without).
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is protected.
    #[serde(default)]
    pub security: Security,
    /// The user to log in as, if the server wants a login.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password (never the password itself).
    #[serde(default)]
    pub password_env: Option<String>,
    /// The sender, e.g. `Forløbskoordinering <noreply@kommune.dk>`.
    pub from: String,
    /// Open connections kept for reuse.
    #[serde(default = "default_pool")]
    pub pool: u32,
    /// Seconds before a conversation with the server is given up (and retried later).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_pool() -> u32 {
    4
}

fn default_timeout() -> u64 {
    30
}

/// The email channel.
#[derive(Clone)]
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailChannel")
            .field("from", &self.from)
            .finish()
    }
}

impl EmailChannel {
    /// Builds the channel; reads the password from its environment variable.
    pub fn new(config: &EmailConfig) -> Result<Self, ConfigError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| ConfigError::Invalid {
            key: format!("email.{what}"),
            reason: e.to_string(),
        };
        let from: Mailbox = config.from.parse().map_err(|e| bad("from", &e))?;
        let tls = || TlsParameters::new(config.host.clone()).map_err(|e| bad("host", &e));
        let (tls, port) = match config.security {
            Security::None => (Tls::None, 25),
            Security::Starttls => (Tls::Required(tls()?), 587),
            Security::Tls => (Tls::Wrapper(tls()?), 465),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(Duration::from_secs(config.timeout_secs.max(1))))
            .pool_config(PoolConfig::new().max_size(config.pool.max(1)));
        if let Some(user) = &config.username {
            let password = match &config.password_env {
                Some(var) => secret(var, "email.password_env")?,
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one email; `now` stamps its calendar entry, if it carries one.
    pub async fn send(&self, m: &Message, now: Timestamp) -> Result<Receipt, SendError> {
        let to: lettre::Address = m
            .to
            .parse()
            .map_err(|e| SendError::Permanent(format!("bad email address {}: {e}", mask(&m.to))))?;
        let builder = Email::builder()
            .message_id(Some(message_id(
                &m.origin,
                &m.key,
                self.from.email.domain(),
            )))
            .from(self.from.clone())
            .to(Mailbox::new(m.name.clone(), to.clone()))
            .subject(m.subject.clone().unwrap_or_default());
        let bad = |e: &dyn std::fmt::Display| {
            SendError::Permanent(format!("cannot build the email: {e}"))
        };
        let email = match (&m.html, self.invitation(m, &to, now)) {
            // Clients show the last part they can: the HTML, else the text.
            (Some(html), None) => builder.multipart(MultiPart::alternative_plain_html(
                m.body.clone(),
                html.clone(),
            )),
            (None, None) => builder.header(ContentType::TEXT_PLAIN).body(m.body.clone()),
            // The calendar entry rides along as a `.ics` attachment, which every client offers
            // to add to the calendar.
            (html, Some((method, ics))) => {
                let calendar =
                    ContentType::parse(&format!("text/calendar; charset=utf-8; method={method}"))
                        .map_err(|e| bad(&e))?;
                let attachment = Attachment::new("carepath.ics".into()).body(ics, calendar);
                let mixed = match html {
                    Some(html) => MultiPart::mixed().multipart(MultiPart::alternative_plain_html(
                        m.body.clone(),
                        html.clone(),
                    )),
                    None => MultiPart::mixed().singlepart(SinglePart::plain(m.body.clone())),
                };
                builder.multipart(mixed.singlepart(attachment))
            }
        }
        .map_err(|e| bad(&e))?;
        match self.transport.send(email).await {
            Ok(r) => Ok(Receipt {
                detail: format!(
                    "smtp {}: {}",
                    r.code(),
                    r.message().collect::<Vec<_>>().join(" ")
                ),
            }),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("smtp: {e}"))),
            // Transient replies (4xx), timeouts, refused connections, TLS hiccups: later.
            Err(e) => Err(SendError::Transient(format!("smtp: {e}"))),
        }
    }

    /// The calendar part of `m`, if it carries an entry: its iTIP method and text.
    fn invitation(
        &self,
        m: &Message,
        to: &lettre::Address,
        now: Timestamp,
    ) -> Option<(&'static str, String)> {
        let entry = m.calendar.as_ref()?;
        let uid = global_id(&m.origin, &entry.uid, self.from.email.domain());
        let invitation = Invitation {
            entry,
            uid: &uid,
            summary: m.subject.as_deref().unwrap_or_default(),
            organizer: self.from.email.as_ref(),
            attendee: to.as_ref(),
            stamp: now,
        };
        Some((invitation.method(), invitation.to_ics()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_the_installation_and_the_notice_at_the_senders_domain() {
        let id = message_id("3f2a", "1:2:0", "region.example.dk");
        assert_eq!(id, "<3f2a.1.2.0@region.example.dk>");
        // The same notice, retried: the same id. Another installation: another id.
        assert_eq!(message_id("3f2a", "1:2:0", "region.example.dk"), id);
        assert_ne!(message_id("9c01", "1:2:0", "region.example.dk"), id);
        // Characters a msg-id may not hold become dots.
        assert_eq!(message_id("a b", "k", "d"), "<a.b.k@d>");
    }
}
