//! Delivery: queued notices out through their channels, each attempt recorded.
//!
//! At least once: a notice is marked sent only after its channel accepted it, so a crash in
//! between sends it again; its key travels with it (Message-ID, the gateways' references) so
//! the far end can recognise the repeat. A transient failure is retried with exponential
//! backoff and jitter; a permanent one, or the last allowed attempt, makes a dead letter that
//! `carepath outbox --status dead` shows and `carepath outbox retry ID` queues again. A
//! family's notice waits for its quiet hours and is skipped, with the reason, when the family
//! opted out of the channel. Nothing is dropped without a row saying why.

use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;

use carepath_engine::pathway::Channel;
use carepath_notifier::channel::mask;
use carepath_notifier::quiet::QuietHours;
use carepath_notifier::retry::RetryPolicy;
use carepath_notifier::{Channels, ConfigError, Message, NotifierConfig, SendError};

use crate::catalog::{Catalog, Version};
use crate::metrics::Metrics;
use crate::store::{Delivery, OutboxRow, Storage, StoreError};

/// Pathway versions by stored id, for rendering: read from the database when a notice names a
/// version not seen yet (versions are immutable, so what was read stays right).
type Versions = Arc<std::sync::RwLock<std::collections::BTreeMap<i64, Arc<Version>>>>;

/// Notices sent concurrently: enough to keep pooled SMTP connections and a gateway busy.
const CONCURRENCY: usize = 16;

/// Rows claimed per round.
const BATCH: u32 = 200;

/// The configured channels with their retry policy and quiet hours.
#[derive(Clone, Debug)]
pub struct Notifier {
    channels: Channels,
    retry: RetryPolicy,
    quiet: QuietHours,
    metrics: Option<Arc<Metrics>>,
    /// Who claims the notices this notifier sends: the process and a random part, so two
    /// workers on one database never share a claim.
    worker: String,
    /// The templates notices are rendered with.
    versions: Versions,
}

/// What one delivery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Accepted by their channel.
    pub sent: usize,
    /// Failed for now; to be retried.
    pub retried: usize,
    /// Dead letters.
    pub dead: usize,
    /// Waiting for a family's quiet hours to end.
    pub held: usize,
    /// Not sent: the recipient opted out.
    pub skipped: usize,
    /// Not sent: stale before it could go (its appointment began, its window closed).
    pub expired: usize,
    /// Stopped early with notices left, so that no claim is taken with a moment that has grown
    /// old: call again with the time as it is now.
    pub more: bool,
}

impl Notifier {
    /// Builds the channels of `config`.
    pub fn new(config: &NotifierConfig) -> Result<Self, ConfigError> {
        Ok(Notifier {
            channels: Channels::new(config)?,
            retry: config.delivery.clone(),
            quiet: config.quiet_hours.clone(),
            metrics: None,
            worker: format!("pid {} #{:08x}", std::process::id(), fastrand::u32(..)),
            versions: Versions::default(),
        })
    }

    /// Counts what each delivery round does in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Normalises an address the way opt-outs are keyed: an email in lower case, a phone
    /// number as `+` and digits.
    pub fn opt_out_key(address: &str) -> String {
        if address.contains('@') {
            address.trim().to_lowercase()
        } else {
            address
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == '+')
                .collect()
        }
    }

    /// The opt-out key and channel for `address`: `channel` is "sms" or "email", by default
    /// email for an address with '@' and SMS otherwise.
    pub fn opt_out_target(
        address: &str,
        channel: Option<&str>,
    ) -> Result<(String, Channel), String> {
        let channel = match channel {
            Some("sms") => Channel::Sms,
            Some("email") => Channel::Email,
            Some(other) => return Err(format!("unknown channel {other:?}: use sms or email")),
            None if address.contains('@') => Channel::Email,
            None => Channel::Sms,
        };
        let key = Self::opt_out_key(address);
        let plausible = match channel {
            Channel::Email => key.contains('@') && key.len() >= 3,
            Channel::Sms => key.starts_with('+') && key.len() >= 9,
        };
        if !plausible {
            return Err(format!(
                "{} is not {}",
                carepath_notifier::channel::mask(&key),
                match channel {
                    Channel::Email => "an email address",
                    Channel::Sms => "a phone number with its country code (+45…)",
                }
            ));
        }
        Ok((key, channel))
    }

    /// Who this notifier claims notices as.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Delivers every queued notice whose time has come by `now`, each claimed before it is
    /// sent, so several workers on one database send each notice once.
    pub async fn deliver<S: Storage>(
        &self,
        store: &S,
        now: Timestamp,
    ) -> Result<Delivered, StoreError> {
        let mut total = Delivered::default();
        let origin = store.installation().await?;
        // A claim lasts the lease from `now`. Rounds taken long after `now` would take claims
        // that run out early, and another worker would send their notices too: past a third of
        // the lease in real time, the caller is asked to come again with a new `now`.
        let lease_secs = self.retry.lease_secs.max(1);
        let lease = jiff::SignedDuration::from_secs(i64::try_from(lease_secs).unwrap_or(i64::MAX));
        let until = now.checked_add(lease).map_err(|e| StoreError::Data {
            what: "a notice's lease".into(),
            reason: e.to_string(),
        })?;
        let started = std::time::Instant::now();
        let fresh_for = std::time::Duration::from_secs(lease_secs) / 3;
        loop {
            if started.elapsed() > fresh_for {
                total.more = true;
                return Ok(total);
            }
            let rows = store.claim_notices(&self.worker, now, until, BATCH).await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let (ready, mut outcomes) = self.render(store, &rows, now).await?;
            outcomes.extend(self.round(store, &ready, &origin, now).await?);
            for o in &outcomes {
                match o {
                    Delivery::Sent { .. } => total.sent += 1,
                    Delivery::Retry { .. } => total.retried += 1,
                    Delivery::Dead { .. } => total.dead += 1,
                    Delivery::Held { .. } => total.held += 1,
                    Delivery::Skipped { .. } => total.skipped += 1,
                    Delivery::Expired { .. } => total.expired += 1,
                }
            }
            store.record_deliveries(&outcomes, now).await?;
            if let Some(m) = &self.metrics {
                m.deliveries(&rows, &outcomes);
            }
            if rows.len() < BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Renders the claimed notices that have no text yet and stores their text before anything
    /// is sent. Returns the notices ready to go, and a dead letter for each that cannot be
    /// rendered. One that has expired is not rendered: it will not go.
    async fn render<S: Storage>(
        &self,
        store: &S,
        rows: &[OutboxRow],
        now: Timestamp,
    ) -> Result<(Vec<OutboxRow>, Vec<Delivery>), StoreError> {
        let known = |id: i64| self.versions.read().is_ok_and(|v| v.contains_key(&id));
        if rows
            .iter()
            .any(|r| r.unrendered() && !known(r.pathway_version_id))
        {
            let catalog = Catalog::from_store(store)
                .await
                .map_err(|e| StoreError::Data {
                    what: "the stored pathway versions".into(),
                    reason: e.to_string(),
                })?;
            if let Ok(mut v) = self.versions.write() {
                v.extend(catalog.versions().map(|x| (x.id, x.clone())));
            }
        }
        let mut ready = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        let mut texts = Vec::new();
        for r in rows {
            if !r.unrendered() || r.expires_at.is_some_and(|e| e <= now) {
                ready.push(r.clone());
                continue;
            }
            let version = self
                .versions
                .read()
                .ok()
                .and_then(|v| v.get(&r.pathway_version_id).cloned());
            match version.map(|v| v.compose(r)) {
                Some(Ok(text)) => {
                    texts.push((r.id, text.clone()));
                    let mut r = r.clone();
                    r.text = text;
                    ready.push(r);
                }
                Some(Err(e)) => {
                    tracing::error!(notice = r.id, template = %r.template, error = %e, "a notice cannot be rendered: dead letter");
                    dead.push(Delivery::Dead {
                        id: r.id,
                        error: format!("the template cannot be rendered: {e}"),
                    });
                }
                None => dead.push(Delivery::Dead {
                    id: r.id,
                    error: format!(
                        "its pathway version (row {}) is not in the database",
                        r.pathway_version_id
                    ),
                }),
            }
        }
        store.set_texts(&texts).await?;
        Ok((ready, dead))
    }

    async fn round<S: Storage>(
        &self,
        store: &S,
        rows: &[OutboxRow],
        origin: &str,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError> {
        let family: Vec<(String, Channel)> = rows
            .iter()
            .filter(|r| r.family)
            .filter_map(|r| Some((Self::opt_out_key(r.address.as_deref()?), r.channel?)))
            .collect();
        let opted_out = store.opted_out(&family).await?;
        // Quiet hours that cannot be computed (a time zone the configuration check let
        // through) hold family notices for an hour and say why: never sent at night by default.
        let quiet_until = self.quiet.next_allowed(now).unwrap_or_else(|e| {
            tracing::error!(error = %e, "quiet hours cannot be computed: family notices wait");
            now + jiff::SignedDuration::from_hours(1)
        });

        let mut outcomes = Vec::with_capacity(rows.len());
        let mut to_send: Vec<(&OutboxRow, Message)> = Vec::new();
        for r in rows {
            // Never a stale message: a notice whose moment has passed is not sent, whether it
            // waited for quiet hours, a hold, a retry or a worker that was down.
            if let Some(expires) = r.expires_at
                && expires <= now
            {
                outcomes.push(Delivery::Expired {
                    id: r.id,
                    reason: format!(
                        "not sent: it expired at {expires}, before it could go out at {now}"
                    ),
                });
                continue;
            }
            let (Some(channel), Some(address), Some(body)) = (r.channel, &r.address, &r.text.body)
            else {
                outcomes.push(Delivery::Dead {
                    id: r.id,
                    error: "nothing to send: the notice has no channel, address or text".into(),
                });
                continue;
            };
            if r.family {
                let key = (Self::opt_out_key(address), channel);
                if opted_out.contains(&key) {
                    outcomes.push(Delivery::Skipped {
                        id: r.id,
                        reason: format!("the family opted out of {}", channel.as_str()),
                    });
                    continue;
                }
                if let Some(expires) = r.expires_at
                    && quiet_until >= expires
                {
                    outcomes.push(Delivery::Expired {
                        id: r.id,
                        reason: format!(
                            "not sent: quiet hours last until {quiet_until}, and it expires at {expires}"
                        ),
                    });
                    continue;
                }
                if quiet_until > now {
                    outcomes.push(Delivery::Held {
                        id: r.id,
                        until: quiet_until,
                        reason: format!(
                            "quiet hours: a family notice waits until {}",
                            self.quiet.local(quiet_until)
                        ),
                    });
                    continue;
                }
            }
            to_send.push((
                r,
                Message {
                    key: r.key.clone(),
                    origin: origin.to_string(),
                    channel,
                    to: address.clone(),
                    name: r.recipient.clone(),
                    subject: r.text.subject.clone(),
                    body: body.clone(),
                    html: r.text.html.clone(),
                    language: r.text.language.clone(),
                    reference: r.reference.clone(),
                    role: r.role.clone(),
                    template: r.template.clone(),
                    // The entry's uid is unique within its instance; the channel makes it
                    // unique to the installation.
                    calendar: r.calendar.clone().map(|mut c| {
                        c.uid = format!("{}.{}", r.instance_id, c.uid);
                        c
                    }),
                },
            ));
        }

        // The file channel takes the whole round in one write; the others go concurrently.
        let (to_file, to_wire): (Vec<_>, Vec<_>) = to_send
            .into_iter()
            .partition(|(_, m)| self.channels.to_file(m.channel));
        if !to_file.is_empty() {
            let messages: Vec<&Message> = to_file.iter().map(|(_, m)| m).collect();
            let result = self.channels.send_to_file(&messages, now);
            for (r, _) in &to_file {
                outcomes.push(self.outcome(r, result.clone(), now));
            }
        }
        let sent: Vec<Delivery> = futures::stream::iter(to_wire)
            .map(|(r, m)| async move {
                let result = self.channels.send(&m, now).await;
                self.outcome(r, result, now)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        outcomes.extend(sent);
        Ok(outcomes)
    }

    fn outcome(
        &self,
        r: &OutboxRow,
        result: Result<carepath_notifier::Receipt, SendError>,
        now: Timestamp,
    ) -> Delivery {
        let to = r.address.as_deref().map(mask).unwrap_or_default();
        // A server's reply may quote the address: logs get the masked form.
        let scrub = |text: &str| match r.address.as_deref() {
            Some(a) if !a.is_empty() => text.replace(a, &mask(a)),
            _ => text.to_string(),
        };
        match result {
            Ok(receipt) => {
                tracing::info!(notice = r.id, to = %to, template = %r.template, "sent");
                Delivery::Sent {
                    id: r.id,
                    detail: scrub(&receipt.detail),
                }
            }
            Err(e) => {
                let attempt = r.attempts + 1;
                let error = scrub(&e.to_string());
                // A retry time that cannot be computed is a dead letter that says so, never a
                // retry at once.
                let retry_at = self.retry.next(attempt, fastrand::f64()).map(|wait| {
                    jiff::SignedDuration::try_from(wait)
                        .ok()
                        .and_then(|w| now.checked_add(w).ok())
                });
                match (e.is_transient(), retry_at) {
                    (true, Some(None)) => Delivery::Dead {
                        id: r.id,
                        error: format!("{error}; the next retry falls outside the calendar"),
                    },
                    (true, Some(Some(not_before))) => {
                        tracing::warn!(notice = r.id, to = %to, attempt, %error, retry_at = %not_before, "send failed; will retry");
                        Delivery::Retry {
                            id: r.id,
                            not_before,
                            error,
                        }
                    }
                    (transient, _) => {
                        let error = if transient {
                            format!("gave up after {attempt} attempts: {error}")
                        } else {
                            error
                        };
                        tracing::error!(notice = r.id, to = %to, %error, "dead letter: `carepath outbox retry {}` once fixed", r.id);
                        Delivery::Dead { id: r.id, error }
                    }
                }
            }
        }
    }
}
