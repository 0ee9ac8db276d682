//! What every delivery channel shares: the message handed to it, the receipt it gives back,
//! and how it fails.
//!
//! The distinction that matters to the delivery loop is whether trying again can help: a
//! server that is down, a gateway answering 500 or 429, a timeout are [`SendError::Transient`]
//! and retried with backoff; a rejected address or a refused request are
//! [`SendError::Permanent`] and dead-lettered at once, with the reason.

use carepath_engine::calendar::CalendarEntry;
use carepath_engine::pathway::Channel;
use serde::Serialize;

/// One rendered notice, ready to go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// A key stable across retries of this notice; passed to gateways that deduplicate, and
    /// used as the email's Message-ID.
    pub key: String,
    /// The installation that made the notice (its database's random id): with the key, a
    /// Message-ID no other deployment gives.
    #[serde(skip)]
    pub origin: String,
    /// Email or SMS.
    pub channel: Channel,
    /// The address: an email address or a phone number with country code.
    pub to: String,
    /// The recipient's name, for the email's To header.
    pub name: Option<String>,
    /// The email subject.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
    /// For email: the HTML alternative of the text, when the template has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The language it is written in.
    pub language: Option<String>,
    /// The family's reference: never a CPR number, safe for logs.
    pub reference: String,
    /// The recipient's role.
    pub role: String,
    /// The template it was rendered from.
    pub template: String,
    /// For email: a calendar entry to attach, its `uid` already unique to the instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calendar: Option<CalendarEntry>,
}

/// What a channel says when it accepted a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The channel's own words: an SMTP reply, a gateway's message id.
    pub detail: String,
}

/// Why a message was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Trying again later may work: the server is down or busy, the request timed out.
    #[error("{0}")]
    Transient(String),
    /// Trying again will not work without someone acting: a rejected address, a refused
    /// request, a channel that is not configured.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    /// Whether the delivery loop should try again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient(_))
    }
}

/// Masks a phone number or email address for logs: enough to tell two apart, not enough to
/// reach anyone.
pub fn mask(address: &str) -> String {
    if address.contains('@') {
        mask_email(address)
    } else {
        mask_phone(address)
    }
}

/// `+45••••••78`: the country code and the last two digits.
pub fn mask_phone(phone: &str) -> String {
    let n = phone.chars().count();
    phone
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_digit() && i >= 3 && i + 2 < n {
                '•'
            } else {
                c
            }
        })
        .collect()
}

/// `a•••@example.dk`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((user, domain)) => {
            let first: String = user.chars().take(1).collect();
            format!("{first}•••@{domain}")
        }
        None => "•••".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_addresses_out_of_logs() {
        assert_eq!(mask("+4512345678"), "+45••••••78");
        assert_eq!(mask("anne@example.dk"), "a•••@example.dk");
        assert_eq!(mask("112"), "112");
    }
}
