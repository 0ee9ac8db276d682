//! The durable runtime: enrolments, events and timers applied exactly once.
//!
//! Every entry point has the same shape: open a write transaction, read what the batch needs,
//! run the pure engine on it, and write the batch's [`Changes`] — instances, timers, history,
//! rendered notices and event records — in that one transaction. If anything fails before the
//! commit, nothing happened, and the same work is found again next time.
//!
//! Two rules make the outcome independent of when the worker happens to run:
//!
//! - a timer fires at its due time: its step is stamped with the due time, not the moment a
//!   late worker got to it, so after downtime every deadline counts from when it passed;
//! - before an event is applied, the instance's timers that came due before it fire first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use carepath_engine::pathway::{Channel, Sector, enrolled_roles};
pub use carepath_engine::privacy::looks_like_cpr;
use carepath_engine::step::{
    Alert, ArmedTimer, Cause, Effects, Enrolment, History, Input, Instance, Status,
};
use carepath_engine::{StepError, start, step};
use carepath_notifier::channel::{mask_email, mask_phone};

use crate::catalog::{Catalog, Version};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{
    Changes, Contact, ContactRef, DirectoryEntry, DueTimer, Erased, EventRecord, InstanceRow,
    InstanceUpdate, NewInstance, NewNotice, NoticeStatus, NoticeText, OutboxFilter, Outcome,
    Readdress, Storage, StoreError, Target, Tx, Withdraw, Withdrawn,
};

/// How many times a batch is retried when another writer moved one of its instances.
const CONFLICT_RETRIES: usize = 5;

/// The most steps one instance takes in one batch while catching up; the rest wait for the
/// next batch, so one instance cannot hold a transaction for long.
const MAX_CATCH_UP: usize = 1000;

/// How deep `enroll` actions may chain within one step.
const MAX_ENROL_DEPTH: usize = 8;

/// Why an enrolment was refused. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// The reference is empty, too long, or looks like a CPR number.
    #[error("reference {reference:?}: {reason}")]
    BadReference {
        /// What was given (masked when it looks like a CPR number).
        reference: String,
        /// Why.
        reason: String,
    },
    /// No such pathway is loaded.
    #[error("unknown pathway \"{pathway}\" (loaded: {})", known.join(", "))]
    UnknownPathway {
        /// What was asked for.
        pathway: String,
        /// What is loaded.
        known: Vec<String>,
    },
    /// The family already has an active instance of the pathway.
    #[error("family {reference} is already enrolled on \"{pathway}\" (instance {instance_id})")]
    AlreadyEnrolled {
        /// The family.
        reference: String,
        /// The pathway.
        pathway: String,
        /// The active instance.
        instance_id: i64,
    },
    /// A contact names a role the pathway does not declare, or cannot be reached.
    #[error("contact for role \"{role}\": {reason}")]
    Contact {
        /// The role.
        role: String,
        /// Why.
        reason: String,
    },
    /// A field is missing or of the wrong type.
    #[error(transparent)]
    Step(#[from] StepError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a runtime call failed as a whole (as opposed to an event being rejected).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A contact cannot be assigned as asked: the family has no such role, or the contact
    /// cannot be reached on the role's channels.
    #[error("{0}")]
    Assign(String),
}

/// A family to enrol.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The family's external reference (a case number: never a CPR number).
    #[serde(rename = "ref")]
    #[schema(example = "F-2026-0042")]
    pub reference: String,
    /// The pathway.
    #[schema(example = "standard-track")]
    pub pathway: String,
    /// The family's fields, as the pathway declares them.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// Who plays each role for this family.
    #[serde(default)]
    pub contacts: BTreeMap<String, Contact>,
}

/// An enrolled family.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Enrolled {
    /// The new instance.
    pub instance_id: i64,
    /// The pathway version it runs on.
    pub version: u32,
    /// Its first state.
    pub state: String,
    /// Who owns it.
    pub owner: Option<String>,
}

/// An event reported for a family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// The idempotency key: the same key twice is applied once.
    pub key: String,
    /// The family's reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The pathway, when the family is on several that take the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    /// The instance, when the reporter names it (the HTTP API's
    /// `/v1/instances/{id}/events`): then only that instance may take the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<i64>,
    /// The event's name.
    pub event: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
    /// Contacts the reporter assigns with the event, role → contact: the volunteer the
    /// coordinator matched, the health visitor the municipality appointed. They replace the
    /// role's contact from this event on (its own notices included), and only if the event
    /// is applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contacts: BTreeMap<String, Contact>,
}

/// What became of an event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventResult {
    /// The recorded event.
    pub record: EventRecord,
    /// True when the key had been seen: this is the first answer, repeated.
    pub replayed: bool,
    /// True when the key had been seen with another request (another family, instance,
    /// event, payload or contacts): nothing was applied, and `record` is what the key was
    /// first used for. A conflict, never a silent replay.
    pub conflict: bool,
    /// The state before and after, when applied now.
    pub transition: Option<(String, String)>,
    /// The family's other pathways the event went to as well, when it named none and more
    /// than one of the family's pathways takes it: each part is recorded under the key
    /// `KEY~PATHWAY`, all in the one transaction, so the key covers the whole fan-out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<EventResult>,
}

/// What assigning a contact to a family's role did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Assigned {
    /// The instances the role was assigned on: (instance id, pathway).
    pub instances: Vec<(i64, String)>,
    /// Dead letters for the role addressed to the contact and queued again.
    pub retried: usize,
}

/// What one timer batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fired {
    /// Due timers claimed.
    pub claimed: usize,
    /// Steps taken: the claimed timers, and timers their steps armed that were due too.
    pub steps: usize,
    /// When the claimed timers were due, for measuring how late they fired.
    pub due: Vec<Timestamp>,
    /// Notices these steps made that are dead letters from the start (nobody plays the role,
    /// the template failed): counted and logged, since no delivery will ever see them fail.
    pub dead: usize,
}

/// A batch of due timers read and stepped on a snapshot, waiting to be written.
struct Prepared {
    changes: Changes,
    fired: Fired,
    /// The families it touches, by reference: the next batch passes over them.
    families: BTreeSet<String>,
    /// The last timer read, when the read was full and more may follow it.
    last: Option<DueTimer>,
}

/// The runtime over one store.
pub struct Runtime<S: Storage> {
    store: S,
    catalog: Catalog,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl<S: Storage> Runtime<S> {
    /// A runtime over `store` with the pathway versions in `catalog`, reading `clock`.
    pub fn new(store: S, catalog: Catalog, clock: Arc<dyn Clock>) -> Self {
        Runtime {
            store,
            catalog,
            clock,
            metrics: Arc::default(),
        }
    }

    /// What this runtime counted, for `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The pathway versions.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Enrols a family on a pathway, now.
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<Enrolled, EnrolError> {
        check_reference(&req.reference)?;
        let version =
            self.catalog
                .latest(&req.pathway)
                .ok_or_else(|| EnrolError::UnknownPathway {
                    pathway: req.pathway.clone(),
                    known: self.catalog.pathway_ids(),
                })?;
        check_contacts(version, &req.contacts)?;
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if let Some(active) = tx
            .active_instances(&req.reference)
            .await?
            .into_iter()
            .find(|i| i.pathway == req.pathway)
        {
            return Err(EnrolError::AlreadyEnrolled {
                reference: req.reference.clone(),
                pathway: req.pathway.clone(),
                instance_id: active.id,
            });
        }
        let effects = start(&version.checked, req.fields.clone(), now)?;
        let enrolled = Enrolled {
            instance_id: 0,
            version: version.checked.pathway.version,
            state: effects.instance.state.clone(),
            owner: effects.instance.owner.clone(),
        };
        let mut batch = Batch::new(&self.catalog, now);
        let roles: RoleMap = req
            .contacts
            .iter()
            .map(|(role, c)| {
                batch.changes.contacts.push(c.clone());
                (
                    role.clone(),
                    (ContactRef::New(batch.changes.contacts.len() - 1), c.clone()),
                )
            })
            .collect();
        batch
            .create(
                &mut tx,
                &req.reference,
                version,
                roles,
                None,
                effects,
                now,
                0,
            )
            .await?;
        let (ids, _) = self.commit(tx, batch.finish()).await?;
        Ok(Enrolled {
            instance_id: ids.first().copied().unwrap_or_default(),
            ..enrolled
        })
    }

    /// Applies events in one transaction. Each is applied, rejected with its reason, or (for a
    /// key seen before) answered with its first result; every one is recorded.
    pub async fn apply_events(
        &self,
        requests: &[EventRequest],
    ) -> Result<Vec<EventResult>, RuntimeError> {
        retrying(|| self.try_apply_events(requests)).await
    }

    async fn try_apply_events(
        &self,
        requests: &[EventRequest],
    ) -> Result<Vec<EventResult>, RuntimeError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let keys: Vec<String> = requests.iter().map(|r| r.key.clone()).collect();
        let seen = tx.events_by_key(&keys).await?;
        let mut batch = Batch::new(&self.catalog, now);
        // Events that name their instance (the HTTP API's) are read in one query, not one each.
        let named: Vec<i64> = requests
            .iter()
            .filter_map(|r| r.instance_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        batch.load(&mut tx, &named).await?;
        let mut results: Vec<EventResult> = Vec::with_capacity(requests.len());
        let mut this_batch: HashMap<&str, usize> = HashMap::new();
        for req in requests {
            let fingerprint = fingerprint(req);
            let first = match this_batch.get(req.key.as_str()) {
                Some(&i) => Some(results[i].record.clone()),
                None => seen.get(&req.key).cloned(),
            };
            if let Some(first) = first {
                results.push(EventResult {
                    conflict: !same_request(&first, req, &fingerprint),
                    record: first,
                    replayed: true,
                    transition: None,
                    also: Vec::new(),
                });
                continue;
            }
            this_batch.insert(&req.key, results.len());
            let result = batch.event(&mut tx, req, now).await?;
            results.push(result);
        }
        self.commit(tx, batch.finish()).await?;
        for r in results.iter().filter(|r| !r.replayed) {
            self.metrics.event(r.record.outcome == Outcome::Applied);
        }
        Ok(results)
    }

    /// Assigns `contact` to `role` for a family, from now on: on every active pathway of the
    /// family that has the role (or on `pathway` only). Each instance gets an operator step in
    /// its history, and its dead letters that went nowhere for want of somebody in that role
    /// are addressed to the new contact and queued again. The contact must reach the role by
    /// one of its channels.
    pub async fn assign(
        &self,
        reference: &str,
        role: &str,
        contact: &Contact,
        pathway: Option<&str>,
        by: &str,
    ) -> Result<Assigned, RuntimeError> {
        retrying(|| self.try_assign(reference, role, contact, pathway, by)).await
    }

    async fn try_assign(
        &self,
        reference: &str,
        role: &str,
        contact: &Contact,
        pathway: Option<&str>,
        by: &str,
    ) -> Result<Assigned, RuntimeError> {
        let now = self.clock.now();
        let rows: Vec<InstanceRow> = self
            .store
            .instances_by_ref(reference)
            .await?
            .into_iter()
            .filter(|r| r.instance.status == Status::Active)
            .filter(|r| pathway.is_none_or(|p| p == r.pathway))
            .filter(|r| {
                self.catalog
                    .version(r.pathway_version_id)
                    .is_some_and(|v| v.checked.pathway.roles.contains_key(role))
            })
            .collect();
        if rows.is_empty() {
            return Err(RuntimeError::Assign(format!(
                "family {reference} has no active pathway{} with the role \"{role}\"",
                pathway.map(|p| format!(" \"{p}\"")).unwrap_or_default()
            )));
        }
        let mut dead = Vec::new();
        for r in &rows {
            let Some(version) = self.catalog.version(r.pathway_version_id) else {
                continue;
            };
            let one: BTreeMap<String, Contact> = [(role.to_string(), contact.clone())].into();
            check_contacts(version, &one)
                .map_err(|e| RuntimeError::Assign(format!("on {}: {e}", r.pathway)))?;
            let channels = version
                .checked
                .pathway
                .roles
                .get(role)
                .map(|d| d.channels())
                .unwrap_or_default();
            let Some((channel, addr)) = address(&channels, contact) else {
                return Err(RuntimeError::Assign(format!(
                    "the contact has no address for role \"{role}\" on {}: it takes {}",
                    r.pathway,
                    channel_list(&channels)
                )));
            };
            let letters = self
                .store
                .outbox(&OutboxFilter {
                    instance_id: Some(r.id),
                    status: Some(NoticeStatus::Dead),
                    ..OutboxFilter::default()
                })
                .await?;
            dead.extend(
                letters
                    .into_iter()
                    .filter(|n| n.role == role && n.address.is_none() && n.unsent_text())
                    .map(|n| (n.id, channel, addr.clone())),
            );
        }
        let mut tx = self.store.begin().await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut batch = Batch::new(&self.catalog, now);
        batch.load(&mut tx, &ids).await?;
        batch.changes.contacts.push(contact.clone());
        let new = ContactRef::New(batch.changes.contacts.len() - 1);
        let mut assigned = Assigned::default();
        for id in &ids {
            let Some(w) = batch.working.get_mut(id) else {
                continue;
            };
            if w.instance.seq
                != rows
                    .iter()
                    .find(|r| r.id == *id)
                    .map_or(0, |r| r.instance.seq)
            {
                return Err(StoreError::Conflict(*id).into());
            }
            w.roles.insert(role.to_string(), (new, contact.clone()));
            w.roles_changed = true;
            assigned.instances.push((*id, w.row.pathway.clone()));
            batch.operator_step(
                *id,
                "assign",
                by,
                format!("contact assigned for {role}"),
                now,
            );
        }
        for (outbox_id, channel, address) in dead {
            batch.changes.readdressed.push(Readdress {
                outbox_id,
                contact: new,
                channel,
                address,
                reason: format!("retried: somebody was assigned to {role} by {by}"),
            });
            assigned.retried += 1;
        }
        self.commit(tx, batch.finish()).await?;
        Ok(assigned)
    }

    /// Erases a family's personal data at its request: every instance of `reference`, active
    /// or finished. `None` when no instance has the reference.
    pub async fn erase_family(
        &self,
        reference: &str,
        reason: &str,
    ) -> Result<Option<Erased>, RuntimeError> {
        let ids: Vec<i64> = self
            .store
            .instances_by_ref(reference)
            .await?
            .iter()
            .map(|i| i.id)
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let erased = self.store.erase(&ids, reason, self.clock.now()).await?;
        tracing::info!(
            instances = erased.instances,
            "a family's data was erased on request"
        );
        Ok(Some(erased))
    }

    /// Erases the personal data of instances whose pathway's `retention` ran out after they
    /// finished, up to `limit` per pathway version.
    pub async fn purge(&self, now: Timestamp, limit: u32) -> Result<Erased, RuntimeError> {
        let mut total = Erased::default();
        for v in self.catalog.versions() {
            let p = &v.checked.pathway;
            let Some(retention) = &p.retention else {
                continue;
            };
            // A retention whose cut-off cannot be computed erases nothing and says so: never
            // early.
            let cutoff = jiff::tz::TimeZone::get(&p.time_zone)
                .map_err(|e| e.to_string())
                .and_then(|tz| {
                    carepath_engine::time::after(now, retention.span().negate(), &tz)
                        .map_err(|e| e.to_string())
                });
            let cutoff = match cutoff {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(pathway = %p.id, error = %e, "retention not applied");
                    continue;
                }
            };
            let ids = self.store.finished_before(v.id, cutoff, limit).await?;
            if ids.is_empty() {
                continue;
            }
            let reason = format!("retention {retention} after the pathway finished");
            let erased = self.store.erase(&ids, &reason, now).await?;
            tracing::info!(pathway = %p.id, instances = erased.instances, "retention: erased");
            total.instances += erased.instances;
            total.contacts += erased.contacts;
            total.events += erased.events;
            total.notices += erased.notices;
        }
        Ok(total)
    }

    /// Fires every timer due at `now`, in batches of `batch_size`, each in one transaction.
    /// Returns how many steps the timers made.
    pub async fn fire_due(&self, now: Timestamp, batch_size: u32) -> Result<usize, RuntimeError> {
        let mut total = 0;
        self.fire_all(now, batch_size, |fired| {
            total += fired.steps;
            true
        })
        .await?;
        Ok(total)
    }

    /// Fires every timer due at `now`, in batches of `batch_size`, each in one transaction,
    /// and tells `each` of every batch as it is committed; stops early when `each` says no.
    ///
    /// A burst (the first batch is full) is pipelined where the store offers a
    /// [`Storage::snapshot`]: the next batch is read and stepped on a snapshot while the one
    /// before it is written, so computing and writing use a core each. A family the batch in
    /// flight touches is passed over, and a prepared batch that a hold, an erasure or another
    /// writer overtook is refused whole by its write ([`Changes::from_snapshot`]); what was
    /// passed over or refused is fired by the ordinary batches that end every call.
    pub async fn fire_all(
        &self,
        now: Timestamp,
        batch_size: u32,
        mut each: impl FnMut(&Fired) -> bool,
    ) -> Result<(), RuntimeError> {
        let full = batch_size as usize;
        let first = self.fire_batch(now, batch_size).await?;
        if !each(&first) || first.claimed < full {
            return Ok(());
        }
        let mut next = self
            .prepare(now, batch_size, None, &BTreeSet::new())
            .await?;
        while let Some(p) = next.take() {
            let Prepared {
                changes,
                fired,
                families,
                last,
            } = p;
            let write = self.write_prepared(changes, fired);
            let (written, following) = match last {
                Some(after) => {
                    tokio::join!(
                        write,
                        self.prepare(now, batch_size, Some(&after), &families)
                    )
                }
                None => (write.await, Ok(None)),
            };
            match written {
                Ok(fired) => {
                    if fired.claimed > 0 && !each(&fired) {
                        return Ok(());
                    }
                }
                // Left for the ordinary batches below, which read afresh.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            next = following?;
        }
        loop {
            let fired = self.fire_batch(now, batch_size).await?;
            if fired.claimed == 0 {
                return Ok(());
            }
            if !each(&fired) || fired.claimed < full {
                return Ok(());
            }
        }
    }

    /// Reads and steps, on a snapshot, up to `limit` timers due at `now` after `after`,
    /// passing over those of `busy` families. `None` when the store has no snapshot or no
    /// timer is due after `after`.
    async fn prepare(
        &self,
        now: Timestamp,
        limit: u32,
        after: Option<&DueTimer>,
        busy: &BTreeSet<String>,
    ) -> Result<Option<Prepared>, StoreError> {
        let Some(mut tx) = self.store.snapshot().await? else {
            return Ok(None);
        };
        let due = tx.due_timers(now, after, limit).await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        let last = (due.len() == limit as usize).then(|| due[due.len() - 1].clone());
        let mut batch = Batch::new(&self.catalog, now);
        batch.changes.from_snapshot = true;
        let ids: BTreeSet<i64> = due.iter().map(|t| t.instance_id).collect();
        batch
            .load(&mut tx, &ids.iter().copied().collect::<Vec<_>>())
            .await?;
        // What the snapshot says of a family the batch in flight is writing is about to
        // change: such a family waits for the ordinary batches.
        batch
            .working
            .retain(|_, w| !busy.contains(&w.row.reference));
        let ready: Vec<i64> = ids
            .into_iter()
            .filter(|id| batch.working.contains_key(id))
            .collect();
        for (n, id) in ready.iter().enumerate() {
            batch.catch_up(&mut tx, *id, now).await?;
            // Stepping does not wait on the database: let the write beside it go on to its
            // next statement now and then, so that the database is not left idle.
            if n % 8 == 7 {
                tokio::task::yield_now().await;
            }
        }
        let mut families: BTreeSet<String> = batch
            .working
            .values()
            .map(|w| w.row.reference.clone())
            .collect();
        families.extend(batch.created.iter().map(|(reference, _)| reference.clone()));
        tx.commit().await?;
        let due: Vec<Timestamp> = due
            .iter()
            .filter(|t| ready.binary_search(&t.instance_id).is_ok())
            .map(|t| t.due)
            .collect();
        let fired = Fired {
            claimed: due.len(),
            steps: batch.steps,
            due,
            dead: 0,
        };
        Ok(Some(Prepared {
            changes: batch.finish(),
            fired,
            families,
            last,
        }))
    }

    /// Writes a batch prepared on a snapshot, in a write transaction of its own.
    async fn write_prepared(
        &self,
        changes: Changes,
        mut fired: Fired,
    ) -> Result<Fired, StoreError> {
        if fired.claimed == 0 {
            return Ok(fired);
        }
        let tx = self.store.begin().await?;
        fired.dead = self.commit(tx, changes).await?.1;
        Ok(fired)
    }

    /// Claims at most `batch_size` due timers and, in one transaction, brings their instances
    /// up to `now`.
    pub async fn fire_batch(&self, now: Timestamp, batch_size: u32) -> Result<Fired, RuntimeError> {
        retrying(|| self.try_fire_batch(now, batch_size)).await
    }

    /// Writes a batch and commits it, counting its steps. Returns the new instances' ids and
    /// how many of its notices were dead letters from the start, each logged.
    async fn commit(
        &self,
        mut tx: S::Tx,
        changes: Changes,
    ) -> Result<(Vec<i64>, usize), StoreError> {
        let steps = changes.history.len();
        let dead: Vec<(Target, String, String)> = changes
            .outbox
            .iter()
            .filter(|(_, n)| n.status == NoticeStatus::Dead)
            .map(|(t, n)| (*t, n.template.clone(), n.error.clone().unwrap_or_default()))
            .collect();
        let ids = tx.write(changes).await?;
        tx.commit().await?;
        self.metrics.transitions(steps);
        for (target, template, error) in &dead {
            let instance = match target {
                Target::Id(id) => *id,
                Target::New(i) => ids.get(*i).copied().unwrap_or_default(),
            };
            tracing::warn!(instance, %template, %error, "a notice is a dead letter from the start: `carepath outbox --status dead`");
        }
        Ok((ids, dead.len()))
    }

    async fn try_fire_batch(&self, now: Timestamp, limit: u32) -> Result<Fired, RuntimeError> {
        let mut tx = self.store.begin().await?;
        let due = tx.due_timers(now, None, limit).await?;
        if due.is_empty() {
            return Ok(Fired::default());
        }
        let mut batch = Batch::new(&self.catalog, now);
        let ids: Vec<i64> = due
            .iter()
            .map(|t| t.instance_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        batch.load(&mut tx, &ids).await?;
        // Each instance catches up to `now`: its timers fire in due order, including those its
        // own steps arm on the way (a weekly cron after a month's downtime fires four times).
        for id in &ids {
            batch.catch_up(&mut tx, *id, now).await?;
        }
        for t in &due {
            batch.drop_stray(t.instance_id, &t.key);
        }
        let steps = batch.steps;
        let (_, dead) = self.commit(tx, batch.finish()).await?;
        Ok(Fired {
            claimed: due.len(),
            steps,
            due: due.iter().map(|t| t.due).collect(),
            dead,
        })
    }
}

/// Runs `attempt` again when another writer moved one of its instances meanwhile, up to
/// [`CONFLICT_RETRIES`] times: each attempt reads afresh.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, RuntimeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RuntimeError>>,
{
    let mut n = 0;
    loop {
        match attempt().await {
            Err(RuntimeError::Store(StoreError::Conflict(_))) if n < CONFLICT_RETRIES => n += 1,
            other => return other,
        }
    }
}

/// A hash of everything an event request says, so that a key reused for another request is
/// told apart from a repeat of the same one.
pub fn fingerprint(req: &EventRequest) -> String {
    use sha2::{Digest, Sha256};
    let said = json!({
        "ref": req.reference,
        "pathway": req.pathway,
        "instance_id": req.instance_id,
        "event": req.event,
        "payload": req.payload,
        "contacts": req.contacts,
    });
    format!("{:x}", Sha256::digest(said.to_string().as_bytes()))
}

/// Whether `req` repeats the request `first` recorded. Records from before fingerprints were
/// kept are compared by what they hold.
fn same_request(first: &EventRecord, req: &EventRequest, fingerprint: &str) -> bool {
    match &first.fingerprint {
        Some(f) => f == fingerprint,
        None => {
            first.reference == req.reference
                && first.name == req.event
                && first.payload == req.payload
                && req
                    .instance_id
                    .is_none_or(|id| first.instance_id == Some(id))
        }
    }
}

/// Refuses references that are empty, unwieldy, or look like a CPR number: the reference ends
/// up in keys and log lines, where a CPR number must never be.
fn check_reference(reference: &str) -> Result<(), EnrolError> {
    let bad = |reason: &str| EnrolError::BadReference {
        reference: if looks_like_cpr(reference) {
            "(masked)".into()
        } else {
            reference.into()
        },
        reason: reason.into(),
    };
    if reference.trim().is_empty() {
        return Err(bad("empty; give the family's case reference"));
    }
    if reference.len() > 64 || reference.chars().any(char::is_control) {
        return Err(bad("at most 64 printable characters"));
    }
    if looks_like_cpr(reference) {
        return Err(bad(
            "looks like a CPR number; a CPR number may never be a reference (it would reach keys and logs): use the case reference",
        ));
    }
    Ok(())
}

/// Checks contacts given for roles of `version`: each role exists, each contact has a name,
/// well-formed addresses, and an address on one of the role's channels.
pub(crate) fn check_contacts(
    version: &Version,
    contacts: &BTreeMap<String, Contact>,
) -> Result<(), EnrolError> {
    let decl = &version.checked.pathway;
    for (role, c) in contacts {
        let Some(r) = decl.roles.get(role) else {
            return Err(EnrolError::Contact {
                role: role.clone(),
                reason: format!(
                    "the pathway declares no such role (declared: {})",
                    decl.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        if c.name.trim().is_empty() {
            return Err(EnrolError::Contact {
                role: role.clone(),
                reason: "no name".into(),
            });
        }
        if let Some(phone) = &c.phone {
            check_phone(phone).map_err(|reason| EnrolError::Contact {
                role: role.clone(),
                reason,
            })?;
        }
        if let Some(email) = &c.email
            && !email.contains('@')
        {
            return Err(EnrolError::Contact {
                role: role.clone(),
                reason: format!("email {:?} has no @", mask_email(email)),
            });
        }
        if address(&r.channels(), c).is_none() {
            return Err(EnrolError::Contact {
                role: role.clone(),
                reason: format!(
                    "the role is reached by {}, and the contact has no {}",
                    channel_list(&r.channels()),
                    channel_list(&r.channels())
                        .replace("email", "email address")
                        .replace("sms", "mobile number")
                ),
            });
        }
    }
    Ok(())
}

fn channel_list(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A mobile number in international form: `+` and 8 to 15 digits, checked at enrolment by
/// the same rule the SMS gateways apply at sending.
pub fn check_phone(phone: &str) -> Result<(), String> {
    carepath_notifier::gateway::msisdn(phone)
        .map(|_| ())
        .map_err(|_| {
            format!(
                "phone {} is not a mobile number in international form, such as +4512345678",
                mask_phone(phone)
            )
        })
}

/// The channel and address a contact is reached by, in the order the role allows, the
/// contact's preference first.
fn address(channels: &[Channel], c: &Contact) -> Option<(Channel, String)> {
    let mut order: Vec<Channel> = channels.to_vec();
    if let Some(p) = c.channel
        && let Some(i) = order.iter().position(|x| *x == p)
    {
        order.remove(i);
        order.insert(0, p);
    }
    order.into_iter().find_map(|ch| {
        let a = match ch {
            Channel::Email => c.email.clone(),
            Channel::Sms => c.phone.clone(),
        };
        a.map(|a| (ch, a))
    })
}

/// Role → the contact reference and the contact.
type RoleMap = BTreeMap<String, (ContactRef, Contact)>;

/// An instance being worked on in a batch.
struct Working {
    row: InstanceRow,
    instance: Instance,
    roles: RoleMap,
    changed: bool,
    /// The roles were assigned new contacts: the row's role map is written too.
    roles_changed: bool,
}

/// One transaction's work: the instances it touches and the changes it will write.
struct Batch<'c> {
    catalog: &'c Catalog,
    working: BTreeMap<i64, Working>,
    /// Instances created in this batch: (reference, pathway).
    created: Vec<(String, String)>,
    changes: Changes,
    /// Timer steps taken.
    steps: usize,
    /// The directory, read when an instance starts with a role nobody plays.
    directory: Option<Vec<(i64, DirectoryEntry)>>,
}

impl<'c> Batch<'c> {
    fn new(catalog: &'c Catalog, now: Timestamp) -> Self {
        Batch {
            catalog,
            working: BTreeMap::new(),
            created: Vec::new(),
            steps: 0,
            directory: None,
            changes: Changes {
                now,
                ..Changes::default()
            },
        }
    }

    /// Reads instances and their contacts into the batch.
    async fn load(&mut self, tx: &mut impl Tx, ids: &[i64]) -> Result<(), StoreError> {
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.working.contains_key(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = tx.instances(&missing).await?;
        self.adopt(tx, rows).await
    }

    async fn adopt(&mut self, tx: &mut impl Tx, rows: Vec<InstanceRow>) -> Result<(), StoreError> {
        let contact_ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.roles.values().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let contacts = tx.contacts(&contact_ids).await?;
        for row in rows {
            if self.working.contains_key(&row.id) {
                continue;
            }
            let roles = row
                .roles
                .iter()
                .filter_map(|(role, id)| {
                    contacts
                        .get(id)
                        .map(|c| (role.clone(), (ContactRef::Id(*id), c.clone())))
                })
                .collect();
            self.working.insert(
                row.id,
                Working {
                    instance: row.instance.clone(),
                    row,
                    roles,
                    changed: false,
                    roles_changed: false,
                },
            );
        }
        Ok(())
    }

    /// Fires one timer of a loaded instance at its due time.
    async fn fire(
        &mut self,
        tx: &mut impl Tx,
        id: i64,
        key: &str,
        due: Timestamp,
    ) -> Result<(), StoreError> {
        let Some(w) = self.working.get(&id) else {
            return Ok(());
        };
        let Some(version) = self.catalog.version(w.row.pathway_version_id).cloned() else {
            return Err(missing_version(&w.row));
        };
        if w.instance.status == Status::Finished || !w.instance.timers.iter().any(|t| t.key == key)
        {
            // Cancelled by an earlier step in this batch (the diff at the end removes it), or
            // a row the instance does not know: remove that one here.
            // Not from a snapshot: the row may have been armed again since.
            if !w.row.instance.timers.iter().any(|t| t.key == key) && !self.changes.from_snapshot {
                self.changes.timers_removed.push((id, key.to_string()));
            }
            return Ok(());
        }
        let input = Input::Timer { key: key.into() };
        match step(&version.checked, &w.instance, &input, due) {
            Ok(effects) => {
                self.steps += 1;
                self.absorb(tx, id, &version, effects, due, 0).await
            }
            Err(e) => {
                // A timer whose step fails (a date out of range, an expression that fails on
                // these fields) must not fire again and again: it is dropped and the failure
                // recorded where `carepath status` shows it.
                let Some(w) = self.working.get_mut(&id) else {
                    return Ok(());
                };
                w.instance.timers.retain(|t| t.key != key);
                w.changed = true;
                let record = EventRecord {
                    key: format!("timer:{id}:{key}"),
                    reference: w.row.reference.clone(),
                    pathway: Some(w.row.pathway.clone()),
                    instance_id: Some(id),
                    name: format!("timer {key}"),
                    payload: Value::Null,
                    received_at: due,
                    outcome: Outcome::Rejected,
                    code: Some(e.code().into()),
                    reason: Some(e.to_string()),
                    seq: None,
                    fingerprint: None,
                };
                self.changes.events.push((Some(Target::Id(id)), record));
                Ok(())
            }
        }
    }

    /// Removes a claimed timer row that the instance itself does not hold (a row left over by
    /// hand-editing or a bug), so it cannot be claimed again and again.
    fn drop_stray(&mut self, id: i64, key: &str) {
        let known = self
            .working
            .get(&id)
            .is_some_and(|w| w.row.instance.timers.iter().any(|t| t.key == key));
        if !known {
            self.changes.timers_removed.push((id, key.to_string()));
        }
    }

    /// Applies one event to the instances it is for (see [`Batch::resolve`]), after firing
    /// each one's timers that came due before it. A life event then stops the family's other
    /// pathways that do not take it ([`Batch::stop_for_life_event`]).
    async fn event(
        &mut self,
        tx: &mut impl Tx,
        req: &EventRequest,
        now: Timestamp,
    ) -> Result<EventResult, StoreError> {
        let mut record = EventRecord {
            key: req.key.clone(),
            reference: req.reference.clone(),
            pathway: req.pathway.clone(),
            instance_id: None,
            name: req.event.clone(),
            payload: req.payload.clone(),
            received_at: now,
            outcome: Outcome::Rejected,
            code: None,
            reason: None,
            seq: None,
            fingerprint: Some(fingerprint(req)),
        };
        let ids = match self.resolve(tx, req).await? {
            Ok(ids) => ids,
            Err((code, reason)) => {
                record.code = Some(code.into());
                record.reason = Some(reason);
                self.changes.events.push((None, record.clone()));
                return Ok(EventResult {
                    record,
                    replayed: false,
                    conflict: false,
                    transition: None,
                    also: Vec::new(),
                });
            }
        };
        // `resolve` has read every one of them into the batch.
        let pathways: Vec<String> = ids
            .iter()
            .map(|id| {
                self.working
                    .get(id)
                    .map(|w| w.row.pathway.clone())
                    .unwrap_or_default()
            })
            .collect();
        let mut parts = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            let mut record = record.clone();
            if ids.len() > 1 {
                record.pathway = Some(pathways[i].clone());
            }
            if i > 0 {
                record.key = format!("{}~{}", req.key, pathways[i]);
            }
            let fanned = (ids.len() > 1).then(|| {
                format!(
                    "from the family: \"{}\" reported once for its pathways {}",
                    req.event,
                    pathways.join(", ")
                )
            });
            parts.push(self.event_on(tx, req, record, id, fanned, now).await?);
        }
        let life_event = ids.iter().any(|id| {
            self.working
                .get(id)
                .and_then(|w| self.catalog.version(w.row.pathway_version_id))
                .and_then(|v| v.checked.pathway.event(&req.event).map(|e| e.life_event))
                .unwrap_or(false)
        });
        if life_event && parts.iter().any(|p| p.record.outcome == Outcome::Applied) {
            self.stop_for_life_event(tx, req, &ids, &pathways, now)
                .await?;
        }
        let mut first = parts.remove(0);
        first.also = parts;
        Ok(first)
    }

    /// Applies one event to one instance of the family: the instance's own part of it.
    async fn event_on(
        &mut self,
        tx: &mut impl Tx,
        req: &EventRequest,
        mut record: EventRecord,
        id: i64,
        fanned: Option<String>,
        now: Timestamp,
    ) -> Result<EventResult, StoreError> {
        record.instance_id = Some(id);
        if let Some(since) = self.working.get(&id).and_then(|w| w.row.held_since) {
            record.code = Some("instance-held".into());
            record.reason = Some(format!(
                "instance {id} is on hold since {since}: resume it before reporting events"
            ));
            self.changes
                .events
                .push((Some(Target::Id(id)), record.clone()));
            return Ok(EventResult {
                record,
                replayed: false,
                conflict: false,
                transition: None,
                also: Vec::new(),
            });
        }
        self.catch_up(tx, id, now).await?;
        let Some(w) = self.working.get(&id) else {
            return Err(StoreError::Conflict(id));
        };
        let Some(version) = self.catalog.version(w.row.pathway_version_id).cloned() else {
            return Err(missing_version(&w.row));
        };
        let input = Input::Event {
            name: req.event.clone(),
            payload: req.payload.clone(),
        };
        let mut transition = None;
        let stepped = check_contacts(&version, &req.contacts)
            .map_err(|e| ("bad-contact", e.to_string()))
            .and_then(|()| {
                step(&version.checked, &w.instance, &input, now)
                    .map_err(|e| (e.code(), e.to_string()))
            });
        match stepped {
            Ok(mut effects) => {
                record.outcome = Outcome::Applied;
                record.seq = Some(effects.history.seq);
                transition = Some((
                    effects.history.from.clone().unwrap_or_default(),
                    effects.history.to.clone(),
                ));
                effects.history.notes.extend(fanned);
                if !req.contacts.is_empty() {
                    self.assign(id, &req.contacts);
                    effects.history.notes.push(format!(
                        "contact assigned for {}",
                        req.contacts.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                self.absorb(tx, id, &version, effects, now, 0).await?;
            }
            Err((code, reason)) => {
                record.code = Some(code.into());
                record.reason = Some(reason);
            }
        }
        self.changes
            .events
            .push((Some(Target::Id(id)), record.clone()));
        Ok(EventResult {
            record,
            replayed: false,
            conflict: false,
            transition,
            also: Vec::new(),
        })
    }

    /// Gives roles of a loaded instance new contacts, created with the batch.
    fn assign(&mut self, id: i64, contacts: &BTreeMap<String, Contact>) {
        let Some(w) = self.working.get_mut(&id) else {
            return;
        };
        for (role, c) in contacts {
            self.changes.contacts.push(c.clone());
            let r = ContactRef::New(self.changes.contacts.len() - 1);
            w.roles.insert(role.clone(), (r, c.clone()));
        }
        w.roles_changed = true;
    }

    /// Fires an instance's timers due at or before `now`, in due order.
    async fn catch_up(
        &mut self,
        tx: &mut impl Tx,
        id: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        for _ in 0..MAX_CATCH_UP {
            let Some(w) = self.working.get(&id) else {
                return Ok(());
            };
            if w.instance.status == Status::Finished {
                return Ok(());
            }
            let Some(next) = w
                .instance
                .timers
                .iter()
                .filter(|t| t.due <= now)
                .min_by(|a, b| a.due.cmp(&b.due).then_with(|| a.key.cmp(&b.key)))
                .cloned()
            else {
                return Ok(());
            };
            let before = w.instance.timers.len();
            self.fire(tx, id, &next.key, next.due).await?;
            let after = self.working.get(&id).map(|w| {
                (
                    w.instance.timers.len(),
                    w.instance.timers.iter().any(|t| t.key == next.key),
                )
            });
            // Every firing removes the timer; stop if one ever did not, rather than spin.
            if matches!(after, Some((n, true)) if n >= before) {
                return Ok(());
            }
        }
        // The rest stays due and is found by the next batch.
        Ok(())
    }

    /// Finds the instances an event is for: the named instance, the family's active instance
    /// on the named pathway, or else every active instance whose pathway declares the event
    /// (a family event such as a birth goes to each of the family's pathways that takes it).
    async fn resolve(
        &mut self,
        tx: &mut impl Tx,
        req: &EventRequest,
    ) -> Result<Result<Vec<i64>, (&'static str, String)>, StoreError> {
        if let Some(id) = req.instance_id {
            self.load(tx, &[id]).await?;
            return Ok(match self.working.get(&id) {
                Some(w) if w.row.reference == req.reference => Ok(vec![id]),
                _ => Err((
                    "unknown-instance",
                    format!("family {} has no instance {id}", req.reference),
                )),
            });
        }
        let rows = tx.active_instances(&req.reference).await?;
        // An instance this batch already moved is read from the batch, not the database.
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        self.adopt(tx, rows).await?;
        let active: Vec<&Working> = ids
            .iter()
            .filter_map(|id| self.working.get(id))
            .filter(|w| w.instance.status == Status::Active)
            .collect();
        if active.is_empty() {
            return Ok(Err((
                "unknown-instance",
                format!(
                    "family {} has no active instance{}",
                    req.reference,
                    req.pathway
                        .as_ref()
                        .map(|p| format!(" on \"{p}\""))
                        .unwrap_or_default()
                ),
            )));
        }
        if let Some(p) = &req.pathway {
            return Ok(match active.iter().find(|w| &w.row.pathway == p) {
                Some(w) => Ok(vec![w.row.id]),
                None => Err((
                    "unknown-instance",
                    format!(
                        "family {} has no active instance on \"{p}\" (active on: {})",
                        req.reference,
                        active
                            .iter()
                            .map(|w| w.row.pathway.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            });
        }
        let takers: Vec<&&Working> = active
            .iter()
            .filter(|w| {
                self.catalog
                    .version(w.row.pathway_version_id)
                    .is_some_and(|v| declares_event(&v.checked.pathway, &req.event))
            })
            .collect();
        Ok(match takers.as_slice() {
            [] if active.len() == 1 => Ok(vec![active[0].row.id]),
            [] => Err((
                "unknown-event",
                format!(
                    "none of family {}'s pathways ({}) declares event \"{}\"",
                    req.reference,
                    active
                        .iter()
                        .map(|w| w.row.pathway.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    req.event
                ),
            )),
            takers => Ok(takers.iter().map(|w| w.row.id).collect()),
        })
    }

    /// A life event taken by `took` stops the family's other active pathways that do not take
    /// it: each is put on hold (its timers wait), its queued notices are skipped (stale now, for
    /// the family and the professionals alike), a line in its history says why, and its owner
    /// is told by carepath's own notice, which a hold does not stop. Resuming or ending it is
    /// then the owner's decision.
    async fn stop_for_life_event(
        &mut self,
        tx: &mut impl Tx,
        req: &EventRequest,
        took: &[i64],
        pathways: &[String],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let rows = tx.active_instances(&req.reference).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        self.adopt(tx, rows).await?;
        let on = pathways.join(", ");
        for id in ids {
            if took.contains(&id) {
                continue;
            }
            let Some(w) = self.working.get_mut(&id) else {
                continue;
            };
            if w.instance.status != Status::Active || w.row.held_since.is_some() {
                continue;
            }
            let Some(version) = self.catalog.version(w.row.pathway_version_id).cloned() else {
                return Err(missing_version(&w.row));
            };
            w.row.held_since = Some(now);
            let owner = w.instance.owner.clone();
            let roles = w.roles.clone();
            let reference = w.row.reference.clone();
            self.changes.holds.push((id, LIFE_EVENT_HOLD.to_string()));
            let seq = self.operator_step(
                id,
                "hold",
                LIFE_EVENT_HOLD,
                format!(
                    "from the family: \"{}\" reported on {on}, which this pathway does not take: on hold, its queued notices skipped, owner told",
                    req.event
                ),
                now,
            );
            self.withdraw(
                id,
                Withdrawn::All,
                format!(
                    "not sent: the family reported \"{}\" on {on} at {now}",
                    req.event
                ),
            );
            let alert = Alert::LifeEvent {
                event: req.event.clone(),
                on: on.clone(),
            };
            let Some(owner) = owner else {
                tracing::warn!(instance = id, event = %req.event, "a pathway on hold for a life event has no owner to tell");
                continue;
            };
            let notice = alert_notice(
                &version,
                &roles,
                &owner,
                format!("{seq}:alert:0"),
                &reference,
                &alert,
                now,
            );
            self.changes.outbox.push((Target::Id(id), notice));
        }
        Ok(())
    }

    /// Takes a step's effects into the batch: the instance, history, notices, and any
    /// enrolments into other pathways.
    #[allow(clippy::too_many_arguments)]
    async fn absorb(
        &mut self,
        tx: &mut impl Tx,
        id: i64,
        version: &Arc<Version>,
        mut effects: Effects,
        now: Timestamp,
        depth: usize,
    ) -> Result<(), StoreError> {
        let Some(w) = self.working.get(&id) else {
            return Ok(());
        };
        let roles = w.roles.clone();
        let reference = w.row.reference.clone();
        let enrolments = std::mem::take(&mut effects.enrolments);
        let notes = self
            .enrol_all(
                tx,
                &reference,
                &roles,
                Target::Id(id),
                enrolments,
                now,
                depth,
            )
            .await?;
        effects.history.notes.extend(notes);
        let was_active = self
            .working
            .get(&id)
            .is_some_and(|w| w.instance.status == Status::Active);
        if was_active && effects.instance.status == Status::Finished {
            self.withdraw(
                id,
                Withdrawn::Family,
                format!(
                    "not sent: the pathway ended in \"{}\" at {now} before the notice went out",
                    effects.instance.state
                ),
            );
        }
        for w in std::mem::take(&mut effects.withdrawn) {
            self.withdraw(id, Withdrawn::Topic(w.topic), w.reason);
        }
        if !effects.alerts.is_empty() {
            self.alerts(id, version, &roles, &reference, &effects, now);
        }
        for n in std::mem::take(&mut effects.notices) {
            let notice = render(version, &roles, n, &reference, now);
            self.changes.outbox.push((Target::Id(id), notice));
        }
        self.changes.history.push((Target::Id(id), effects.history));
        if let Some(w) = self.working.get_mut(&id) {
            w.instance = effects.instance;
            w.changed = true;
        }
        Ok(())
    }

    /// Notices of the instance not yet sent that a step made stale are skipped, with the
    /// reason — those from earlier steps of this batch here, older ones by the store. A life
    /// event that ended the pathway (the pregnancy ended, the family moved) withdraws every
    /// family notice; professionals' notices still go: they need to know. A cancelled or
    /// moved appointment withdraws its reminders.
    fn withdraw(&mut self, id: i64, which: Withdrawn, reason: String) {
        for (target, notice) in &mut self.changes.outbox {
            let hit = match &which {
                Withdrawn::Family => notice.family,
                Withdrawn::All => true,
                Withdrawn::Topic(t) => notice.topic.as_ref() == Some(t),
            };
            if *target == Target::Id(id) && hit && notice.status == NoticeStatus::Queued {
                notice.status = NoticeStatus::Skipped;
                notice.error = Some(reason.clone());
            }
        }
        self.changes.withdrawals.push(Withdraw {
            instance_id: id,
            which,
            reason,
        });
    }

    /// What carepath itself must tell the instance's owner (a timer that could not be armed,
    /// the horizon closing the instance): logged at WARN and sent to the owner, so a family is
    /// never left waiting on a timer that will not come, nor closed without anyone knowing.
    fn alerts(
        &mut self,
        id: i64,
        version: &Version,
        roles: &RoleMap,
        reference: &str,
        effects: &Effects,
        now: Timestamp,
    ) {
        for (i, alert) in effects.alerts.iter().enumerate() {
            let pathway = &version.checked.pathway.id;
            match alert {
                Alert::TimerNotArmed { what } => {
                    tracing::warn!(instance = id, %pathway, problem = %what, "a timer could not be armed; the owner is told");
                }
                Alert::HorizonClosed { horizon, state } => {
                    tracing::warn!(instance = id, %pathway, %horizon, %state, "the horizon closed an instance still on its pathway; the owner is told");
                }
                Alert::LifeEvent { event, on } => {
                    tracing::warn!(instance = id, %pathway, %event, %on, "a life event of the family put the pathway on hold; the owner is told");
                }
            }
            let Some(owner) = effects.instance.owner.clone() else {
                continue;
            };
            let notice = alert_notice(
                version,
                roles,
                &owner,
                format!("{}:alert:{i}", effects.history.seq),
                reference,
                alert,
                now,
            );
            self.changes.outbox.push((Target::Id(id), notice));
        }
    }

    /// Starts the family on other pathways; returns what happened, in words, for the
    /// history of the instance that referred them.
    #[allow(clippy::too_many_arguments)]
    async fn enrol_all(
        &mut self,
        tx: &mut impl Tx,
        reference: &str,
        roles: &RoleMap,
        parent: Target,
        enrolments: Vec<Enrolment>,
        now: Timestamp,
        depth: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut notes = Vec::new();
        for e in enrolments {
            let Some(version) = self.catalog.latest(&e.pathway).cloned() else {
                notes.push(format!(
                    "referral to \"{}\" not started: that pathway is not loaded",
                    e.pathway
                ));
                continue;
            };
            if depth >= MAX_ENROL_DEPTH {
                notes.push(format!(
                    "referral to \"{}\" not started: referrals nest deeper than {MAX_ENROL_DEPTH}",
                    e.pathway
                ));
                continue;
            }
            let already_db = tx
                .active_instances(reference)
                .await?
                .into_iter()
                .any(|i| i.pathway == e.pathway && self.still_active(i.id));
            let already_batch = self
                .created
                .iter()
                .any(|(r, p)| r == reference && p == &e.pathway);
            if already_db || already_batch {
                notes.push(format!(
                    "referral to \"{}\": the family is already on it",
                    e.pathway
                ));
                continue;
            }
            match start(&version.checked, e.fields.clone(), now) {
                Ok(effects) => {
                    let roles: RoleMap =
                        enrolled_roles(&e.roles, &version.checked.pathway.roles, |r| {
                            roles.contains_key(r)
                        })
                        .into_iter()
                        .filter_map(|(theirs, mine)| roles.get(&mine).map(|c| (theirs, c.clone())))
                        .collect();
                    Box::pin(self.create(
                        tx,
                        reference,
                        &version,
                        roles,
                        Some(parent),
                        effects,
                        now,
                        depth + 1,
                    ))
                    .await?;
                    notes.push(format!(
                        "referred to \"{}\" version {}",
                        e.pathway, version.checked.pathway.version
                    ));
                }
                Err(err) => notes.push(format!("referral to \"{}\" not started: {err}", e.pathway)),
            }
        }
        Ok(notes)
    }

    /// A step of a loaded instance that an operator (or carepath for the family) takes outside
    /// the pathway: the state stays, the step is counted and its history line says who did
    /// what. Returns the step's number.
    fn operator_step(
        &mut self,
        id: i64,
        action: &str,
        by: &str,
        note: String,
        now: Timestamp,
    ) -> u64 {
        let Some(w) = self.working.get_mut(&id) else {
            return 0;
        };
        w.instance.seq += 1;
        w.changed = true;
        self.changes.history.push((
            Target::Id(id),
            History {
                seq: w.instance.seq,
                at: now,
                from: Some(w.instance.state.clone()),
                to: w.instance.state.clone(),
                cause: Cause::Operator {
                    action: action.into(),
                    by: by.into(),
                },
                notes: vec![note],
            },
        ));
        w.instance.seq
    }

    /// Gives the roles of a starting instance that nobody plays for this family the
    /// directory's contact: the pathway's own entry, else the one for every pathway. Returns
    /// the roles and a history note for each role taken from the directory.
    async fn fill_from_directory(
        &mut self,
        tx: &mut impl Tx,
        version: &Version,
        mut roles: RoleMap,
    ) -> Result<(RoleMap, Vec<String>), StoreError> {
        let decl = &version.checked.pathway;
        let missing: Vec<&String> = decl
            .roles
            .iter()
            .filter(|(name, r)| r.sector != Sector::Family && !roles.contains_key(*name))
            .map(|(name, _)| name)
            .collect();
        if missing.is_empty() {
            return Ok((roles, Vec::new()));
        }
        if self.directory.is_none() {
            self.directory = Some(tx.directory().await?);
        }
        let directory = self.directory.as_deref().unwrap_or_default();
        let mut notes = Vec::new();
        for role in missing {
            let entry = crate::directory::entry_for(directory, |(_, e)| e, &decl.id, role);
            if let Some((id, e)) = entry {
                roles.insert(role.clone(), (ContactRef::Id(*id), e.contact.clone()));
                notes.push(format!("{role}: {} (from the directory)", e.organisation));
            }
        }
        Ok((roles, notes))
    }

    fn still_active(&self, id: i64) -> bool {
        self.working
            .get(&id)
            .is_none_or(|w| w.instance.status == Status::Active)
    }

    /// Adds a new instance with its first step's effects.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &mut self,
        tx: &mut impl Tx,
        reference: &str,
        version: &Arc<Version>,
        roles: RoleMap,
        parent: Option<Target>,
        mut effects: Effects,
        now: Timestamp,
        depth: usize,
    ) -> Result<(), StoreError> {
        let (roles, notes) = self.fill_from_directory(tx, version, roles).await?;
        effects.history.notes.extend(notes);
        let index = self.changes.new_instances.len();
        let target = Target::New(index);
        self.created
            .push((reference.to_string(), version.checked.pathway.id.clone()));
        // Reserve the slot first so children enrolled below come after their parent.
        self.changes.new_instances.push(NewInstance {
            reference: reference.into(),
            pathway: version.checked.pathway.id.clone(),
            pathway_version_id: version.id,
            instance: effects.instance.clone(),
            roles: roles.iter().map(|(k, (r, _))| (k.clone(), *r)).collect(),
            parent,
        });
        let enrolments = std::mem::take(&mut effects.enrolments);
        let notes =
            Box::pin(self.enrol_all(tx, reference, &roles, target, enrolments, now, depth)).await?;
        effects.history.notes.extend(notes);
        for t in &effects.instance.timers {
            self.changes.timers_added.push((target, t.clone()));
        }
        for n in std::mem::take(&mut effects.notices) {
            let notice = render(version, &roles, n, reference, now);
            self.changes.outbox.push((target, notice));
        }
        self.changes.history.push((target, effects.history));
        Ok(())
    }

    /// The batch's changes, with each touched instance's update and timer difference.
    fn finish(mut self) -> Changes {
        for (id, w) in std::mem::take(&mut self.working) {
            if !w.changed {
                continue;
            }
            let before: BTreeMap<&str, &ArmedTimer> = w
                .row
                .instance
                .timers
                .iter()
                .map(|t| (t.key.as_str(), t))
                .collect();
            let after: BTreeMap<&str, &ArmedTimer> = w
                .instance
                .timers
                .iter()
                .map(|t| (t.key.as_str(), t))
                .collect();
            for (key, t) in &before {
                if after.get(key) != Some(t) {
                    self.changes.timers_removed.push((id, key.to_string()));
                }
            }
            for (key, t) in &after {
                if before.get(key) != Some(t) {
                    self.changes
                        .timers_added
                        .push((Target::Id(id), (*t).clone()));
                }
            }
            let roles = w
                .roles_changed
                .then(|| w.roles.iter().map(|(k, (r, _))| (k.clone(), *r)).collect());
            self.changes.updates.push(InstanceUpdate {
                id,
                expected_seq: w.row.instance.seq,
                instance: w.instance,
                roles,
                pathway_version_id: None,
            });
        }
        self.changes
    }
}

fn declares_event(p: &carepath_engine::Pathway, event: &str) -> bool {
    p.event(event).is_some()
}

fn missing_version(row: &InstanceRow) -> StoreError {
    StoreError::Data {
        what: format!("instance {}", row.id),
        reason: format!(
            "runs on pathway version row {}, which is not loaded",
            row.pathway_version_id
        ),
    }
}

/// A notice for the outbox: addressed now, rendered at delivery (a notice is data until it
/// is sent), or dead with the reason when nobody can receive it.
fn render(
    version: &Version,
    roles: &RoleMap,
    n: carepath_engine::step::Notice,
    reference: &str,
    now: Timestamp,
) -> NewNotice {
    let (mut notice, contact) = addressed(version, roles, &n.key, &n.template, &n.to, now);
    notice.expires_at = n.expires_at;
    notice.topic = n.topic;
    // A calendar entry travels by email only.
    if notice.channel == Some(Channel::Email) {
        notice.calendar = n.calendar;
    }
    let mut data = n.data;
    if let Some(obj) = data.as_object_mut() {
        obj.insert("instance".into(), json!({"ref": reference}));
    }
    // Kept with a dead letter too: once somebody is assigned to the role, a retry renders it.
    notice.data = Some(data);
    if contact.is_some() && notice.channel.is_some() {
        notice.status = NoticeStatus::Queued;
    }
    notice
}

/// A notice to `role` without its text yet: the contact who plays the role and the channel
/// and address it goes by, or dead with the reason when there is none.
fn addressed(
    version: &Version,
    roles: &RoleMap,
    key: &str,
    template: &str,
    role: &str,
    now: Timestamp,
) -> (NewNotice, Option<Contact>) {
    let decl = &version.checked.pathway;
    let family = decl
        .roles
        .get(role)
        .is_some_and(|r| r.sector == Sector::Family);
    let mut notice = NewNotice {
        key: key.to_string(),
        pathway_version_id: version.id,
        template: template.to_string(),
        role: role.to_string(),
        family,
        contact: None,
        channel: None,
        address: None,
        text: NoticeText::default(),
        data: None,
        status: NoticeStatus::Dead,
        not_before: now,
        expires_at: None,
        topic: None,
        calendar: None,
        error: None,
    };
    let Some((contact_ref, contact)) = roles.get(role) else {
        notice.error = Some(format!(
            "nobody is assigned to role \"{role}\" for this family: assign a contact, then retry the notice"
        ));
        return (notice, None);
    };
    notice.contact = Some(*contact_ref);
    let channels = decl
        .roles
        .get(role)
        .map(|r| r.channels())
        .unwrap_or_default();
    let Some((channel, addr)) = address(&channels, contact) else {
        notice.error = Some(format!(
            "the contact for role \"{role}\" has no address for {}",
            channel_list(&channels)
        ));
        return (notice, None);
    };
    notice.channel = Some(channel);
    notice.address = Some(addr);
    (notice, Some(contact.clone()))
}

pub use crate::store::{HORIZON_CLOSED, LIFE_EVENT, OWN_TEMPLATES, TIMER_NOT_ARMED};

/// Who holds a pathway that a life event of the family stopped (the holds' `by`).
pub const LIFE_EVENT_HOLD: &str = "carepath (a life event of the family)";

/// Tells the owner what carepath itself noticed ([`Alert`]): carepath's own text, not a
/// pathway template, so every pathway has it. In Danish, or English for a contact who reads
/// English; by SMS only that something needs looking at, with nothing of the detail.
#[allow(clippy::too_many_arguments)]
fn alert_notice(
    version: &Version,
    roles: &RoleMap,
    role: &str,
    key: String,
    reference: &str,
    alert: &Alert,
    now: Timestamp,
) -> NewNotice {
    let template = match alert {
        Alert::TimerNotArmed { .. } => TIMER_NOT_ARMED,
        Alert::HorizonClosed { .. } => HORIZON_CLOSED,
        Alert::LifeEvent { .. } => LIFE_EVENT,
    };
    let (mut notice, contact) = addressed(version, roles, &key, template, role, now);
    let (Some(contact), Some(channel)) = (contact, notice.channel) else {
        return notice;
    };
    let title = &version.checked.pathway.title;
    let name = &contact.name;
    let english = contact.language == "en";
    let see = format!("carepath status {reference}");
    let (subject, body) = match (alert, english) {
        (Alert::TimerNotArmed { what }, false) => (
            format!("carepath: en timer kunne ikke sættes for familie {reference}"),
            format!(
                "Kære {name}\n\nFamilien {reference} er på forløbet \"{title}\", hvor du er ansvarlig.\n\n{what}.\n\nForløbet venter nu uden denne timer: følg selv op, og bed koordinatoren rette forløbet. Se `{see}`."
            ),
        ),
        (Alert::TimerNotArmed { what }, true) => (
            format!("carepath: a timer could not be set for family {reference}"),
            format!(
                "Dear {name}\n\nFamily {reference} is on the pathway \"{title}\", where you are responsible.\n\n{what}.\n\nThe pathway now waits without this timer: follow up yourself, and ask the coordinator to correct the pathway. See `{see}`."
            ),
        ),
        (Alert::HorizonClosed { horizon, state }, false) => (
            format!("carepath: forløbet for familie {reference} er lukket ved sin tidshorisont"),
            format!(
                "Kære {name}\n\nFamilien {reference} var stadig i \"{state}\" på forløbet \"{title}\", da forløbets tidshorisont ({horizon} fra henvisningen) var nået. Forløbet er lukket, og der sendes ikke flere beskeder fra det.\n\nFølg op, hvis familien stadig har brug for hjælp. Se `{see}`."
            ),
        ),
        (Alert::LifeEvent { event, on }, false) => (
            format!("carepath: familie {reference} har meldt en livshændelse ({event})"),
            format!(
                "Kære {name}\n\nFamilien {reference} er på forløbet \"{title}\", hvor du er ansvarlig. Familien har meldt \"{event}\" på {on}, og det tager dette forløb ikke selv stilling til.\n\nForløbet er sat i bero: der sendes ikke flere beskeder til familien, og dets påmindelser venter. Tag stilling til, om forløbet skal genoptages eller afsluttes. Se `{see}`."
            ),
        ),
        (Alert::LifeEvent { event, on }, true) => (
            format!("carepath: family {reference} reported a life event ({event})"),
            format!(
                "Dear {name}\n\nFamily {reference} is on the pathway \"{title}\", where you are responsible. The family reported \"{event}\" on {on}, which this pathway does not handle itself.\n\nThe pathway is on hold: nothing more goes to the family, and its reminders wait. Decide whether to resume or end it. See `{see}`."
            ),
        ),
        (Alert::HorizonClosed { horizon, state }, true) => (
            format!("carepath: the pathway of family {reference} closed at its horizon"),
            format!(
                "Dear {name}\n\nFamily {reference} was still in \"{state}\" on the pathway \"{title}\" when the pathway's horizon ({horizon} from enrolment) passed. The pathway is closed, and it sends nothing more.\n\nFollow up if the family still needs help. See `{see}`."
            ),
        ),
    };
    let (subject, body) = match (channel, english) {
        (Channel::Email, _) => (Some(subject), body),
        (Channel::Sms, false) => (None, format!("{subject}. Se {see}.")),
        (Channel::Sms, true) => (None, format!("{subject}. See {see}.")),
    };
    notice.text = NoticeText {
        language: Some(if english { "en" } else { "da" }.into()),
        subject,
        body: Some(body),
        html: None,
    };
    notice.status = NoticeStatus::Queued;
    notice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_that_looks_like_a_cpr_number_is_refused_unechoed() {
        let e = check_reference("010190-1234").expect_err("refused");
        assert!(!e.to_string().contains("1234"), "{e}");
    }

    #[test]
    fn addresses_follow_the_preference_within_the_roles_channels() {
        let c = Contact {
            name: "A".into(),
            email: Some("a@example.dk".into()),
            phone: Some("+4512345678".into()),
            language: "da".into(),
            channel: Some(Channel::Sms),
        };
        assert_eq!(
            address(&[Channel::Email, Channel::Sms], &c).map(|a| a.0),
            Some(Channel::Sms)
        );
        assert_eq!(
            address(&[Channel::Email], &c).map(|a| a.0),
            Some(Channel::Email)
        );
        let no_phone = Contact { phone: None, ..c };
        assert_eq!(address(&[Channel::Sms], &no_phone), None);
    }

    #[test]
    fn phone_numbers_need_a_country_code() {
        assert!(check_phone("12345678").is_err());
        assert!(check_phone("+45 12 34 56 78").is_ok());
    }
}
