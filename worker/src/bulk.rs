//! Acting on many families at once: hold, resume or cancel every family that a selection by
//! pathway, state, owner and enrolment date finds, with a dry run that only counts them first.
//!
//! Each family is acted on by itself, so one that moved meanwhile is retried or left as it is
//! without holding up the rest, and each gets its own line in the audit log. A cancellation is
//! a step of the family's own: its history says who cancelled it and why, its timers go, and
//! the notices not yet sent to the family are skipped with the reason.

use jiff::Timestamp;
use serde::Serialize;

use carepath_engine::step::{Cause, History, Status};

use crate::runtime::{Runtime, RuntimeError};
use crate::store::{
    AuditEntry, Changes, InstanceFilter, InstanceRow, InstanceUpdate, Storage, StoreError, Target,
    Tx, Withdraw, Withdrawn,
};

/// Families read per page while selecting.
const PAGE: u32 = 1000;

/// What to do to each selected family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put on hold: timers wait, nothing is sent.
    Hold,
    /// Resume from a hold.
    Resume,
    /// End the family's pathway now, for this reason.
    Cancel {
        /// Why, for the history and the skipped notices.
        reason: String,
    },
}

impl Action {
    /// The action's name, as the audit log has it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Hold => "bulk hold",
            Action::Resume => "bulk resume",
            Action::Cancel { .. } => "bulk cancel",
        }
    }
}

/// Which families: those still on a pathway that match every criterion given.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// On these pathways (all, when `None`).
    pub pathways: Option<Vec<String>>,
    /// In this state.
    pub state: Option<String>,
    /// Owned by this role.
    pub owner: Option<String>,
    /// Enrolled before this moment.
    pub enrolled_before: Option<Timestamp>,
    /// Only this family (a pathway a life event put on hold, resumed or ended by its owner).
    pub reference: Option<String>,
}

/// What a bulk operation found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// Families the selection found.
    pub matched: usize,
    /// Families the action changed (0 in a dry run; a held family is not held again).
    pub changed: usize,
    /// The families' references, in the order found.
    pub references: Vec<String>,
    /// Whether it only counted.
    pub dry_run: bool,
}

/// The active instances `selection` finds, by id.
pub async fn select<S: Storage>(
    rt: &Runtime<S>,
    selection: &Selection,
) -> Result<Vec<InstanceRow>, RuntimeError> {
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let page = rt
            .store()
            .list_instances(&InstanceFilter {
                pathways: selection.pathways.clone(),
                state: selection.state.clone(),
                owner: selection.owner.clone(),
                after,
                limit: PAGE,
                active_only: true,
                enrolled_before: selection.enrolled_before,
                reference: selection.reference.clone(),
                ..InstanceFilter::default()
            })
            .await?;
        let full = page.len() == PAGE as usize;
        after = page.last().map(|r| r.id);
        found.extend(page);
        if !full {
            return Ok(found);
        }
    }
}

/// Applies `action` to every family `selection` finds, as `by` (a token's name, `cli USER`);
/// with `dry_run`, only counts them.
pub async fn apply<S: Storage>(
    rt: &Runtime<S>,
    action: &Action,
    selection: &Selection,
    by: &str,
    dry_run: bool,
) -> Result<Outcome, RuntimeError> {
    let rows = select(rt, selection).await?;
    let mut outcome = Outcome {
        matched: rows.len(),
        references: rows.iter().map(|r| r.reference.clone()).collect(),
        dry_run,
        ..Outcome::default()
    };
    if dry_run {
        return Ok(outcome);
    }
    for row in &rows {
        let now = rt.clock().now();
        let changed = match action {
            Action::Hold => rt.store().set_held(row.id, Some(by), now).await?,
            Action::Resume => rt.store().set_held(row.id, None, now).await?,
            Action::Cancel { reason } => cancel(rt, row.id, reason, by).await?,
        };
        outcome.changed += usize::from(changed);
        rt.store()
            .append_audit(&AuditEntry {
                at: now,
                actor: by.to_string(),
                action: action.name().to_string(),
                reference: Some(row.reference.clone()),
                instance_id: Some(row.id),
                detail: match action {
                    Action::Cancel { reason } => Some(format!("reason {reason}")),
                    _ => None,
                },
                outcome: if changed { "ok" } else { "unchanged" }.to_string(),
            })
            .await?;
    }
    Ok(outcome)
}

/// Ends one family's pathway now: a step with the reason in its history. Returns whether it
/// was still active. A family that moved meanwhile is read again and tried again.
pub async fn cancel<S: Storage>(
    rt: &Runtime<S>,
    id: i64,
    reason: &str,
    by: &str,
) -> Result<bool, RuntimeError> {
    for _ in 0..3 {
        let Some(row) = rt.store().instance(id).await? else {
            return Ok(false);
        };
        if row.instance.status != Status::Active {
            return Ok(false);
        }
        let now = rt.clock().now();
        let mut instance = row.instance.clone();
        instance.seq += 1;
        instance.status = Status::Finished;
        instance.open_activities.clear();
        let timers: Vec<(i64, String)> = instance.timers.drain(..).map(|t| (id, t.key)).collect();
        let history = History {
            seq: instance.seq,
            at: now,
            from: Some(instance.state.clone()),
            to: instance.state.clone(),
            cause: Cause::Operator {
                action: "cancel".into(),
                by: by.to_string(),
            },
            notes: vec![format!("cancelled by {by}: {reason}")],
        };
        let changes = Changes {
            now,
            updates: vec![InstanceUpdate {
                id,
                expected_seq: row.instance.seq,
                instance,
                roles: None,
                pathway_version_id: None,
            }],
            timers_removed: timers,
            history: vec![(Target::Id(id), history)],
            withdrawals: vec![Withdraw {
                instance_id: id,
                which: Withdrawn::Family,
                reason: format!("not sent: the family's pathway was cancelled ({reason})"),
            }],
            ..Changes::default()
        };
        let mut tx = rt.store().begin().await?;
        match tx.write(changes).await {
            Ok(_) => {
                tx.commit().await?;
                // A cancelled family is not waiting for anything: no hold either.
                rt.store().set_held(id, None, now).await?;
                return Ok(true);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}
