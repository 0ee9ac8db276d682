//! Moving running families onto another version of their pathway.
//!
//! A family stays on the version it started on (versions are immutable), for up to 27 months.
//! When a pathway is corrected, `carepath migrate` moves its running families onto the new
//! version. The mapping is checked before anything moves: every state a family is in must
//! have a state in the new version (the same name, or one given with `--map OLD=NEW`), the
//! owner it gets must be a role of the new version, and the new version's required fields must
//! be there. Refusals are listed with their reasons; nothing moves while any state is unmapped.
//!
//! Each family moves in one transaction, as a step of its own ([`carepath_engine::migrate`]):
//! its state's timers are re-armed by the new version's rules from when it entered the state,
//! those that fall before now are left out (they fired, or their moment passed: nothing fires
//! twice, nothing is sent for the past), and its history says who moved it from which version.
//! A family already on the new version is not selected, so running it again does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use carepath_engine::step::Migrated;

use crate::bulk::Selection;
use crate::catalog::Version;
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{
    AuditEntry, Changes, InstanceRow, InstanceUpdate, Storage, StoreError, Target, Tx,
};

/// Why a migration cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The version to move to is not loaded.
    #[error(
        "version {version} of pathway \"{pathway}\" is not loaded: load it with `carepath run --pathways` (or enroll) first"
    )]
    UnknownVersion {
        /// The pathway.
        pathway: String,
        /// The version asked for.
        version: u32,
    },
    /// A `--map` names a state the new version does not have.
    #[error("--map {from}={to}: version {version} has no state \"{to}\"")]
    BadMap {
        /// The old state.
        from: String,
        /// The state it was mapped to.
        to: String,
        /// The new version.
        version: u32,
    },
    /// Families are in states the new version does not have.
    #[error(
        "{}: map each to a state of version {version} with --map OLD=NEW",
        unmapped.iter().map(|s| format!("state \"{s}\" has no counterpart")).collect::<Vec<_>>().join(", ")
    )]
    Unmapped {
        /// The states.
        unmapped: Vec<String>,
        /// The new version.
        version: u32,
    },
    /// Storage failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<StoreError> for MigrateError {
    fn from(e: StoreError) -> Self {
        MigrateError::Runtime(e.into())
    }
}

/// What moving one family does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyMove {
    /// The family.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its instance.
    pub instance_id: i64,
    /// The version it is on.
    pub from_version: u32,
    /// Its state there.
    pub from_state: String,
    /// Its state on the new version.
    pub to_state: String,
    /// Who owns it then.
    pub owner: Option<String>,
    /// Timers armed by the new version's rules: key and due time.
    pub timers_added: Vec<(String, Timestamp)>,
    /// Timers of the old version removed.
    pub timers_removed: Vec<String>,
    /// Timers the new rules put before now, not armed.
    pub left_out: Vec<(String, Timestamp)>,
}

/// A family that cannot be moved, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The family.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its instance.
    pub instance_id: i64,
    /// Why.
    pub reason: String,
}

/// What a migration found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The families moved (or, in a dry run, to be moved).
    pub moves: Vec<FamilyMove>,
    /// The families left where they are, with the reason.
    pub refused: Vec<Refusal>,
    /// Whether it only planned.
    pub dry_run: bool,
}

/// Moves the running families of `pathway` onto its version `to_version`, states renamed by
/// `map`, as `by`: all of them, or those `only` selects by state, owner and enrolment date
/// (its pathways are `pathway`). With `dry_run`, only says what it would do.
pub async fn migrate<S: Storage>(
    rt: &Runtime<S>,
    pathway: &str,
    to_version: u32,
    map: &BTreeMap<String, String>,
    only: &Selection,
    by: &str,
    dry_run: bool,
) -> Result<Report, MigrateError> {
    let target = rt
        .catalog()
        .versions()
        .find(|v| v.checked.pathway.id == pathway && v.checked.pathway.version == to_version)
        .cloned()
        .ok_or_else(|| MigrateError::UnknownVersion {
            pathway: pathway.into(),
            version: to_version,
        })?;
    let states = &target.checked.pathway.states;
    if let Some((from, to)) = map.iter().find(|(_, to)| !states.contains_key(*to)) {
        return Err(MigrateError::BadMap {
            from: from.clone(),
            to: to.clone(),
            version: to_version,
        });
    }
    let rows = running(rt, pathway, only, target.id).await?;
    let unmapped: BTreeSet<String> = rows
        .iter()
        .map(|r| destination(map, &r.instance.state))
        .filter(|s| !states.contains_key(s))
        .collect();
    if !unmapped.is_empty() {
        return Err(MigrateError::Unmapped {
            unmapped: unmapped.into_iter().collect(),
            version: to_version,
        });
    }
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    for row in rows {
        let mut row = row;
        // A family that moved meanwhile is planned again from what it is now.
        for attempt in 0..3 {
            let planned = plan(rt, &target, &row, map, by);
            let (family, migrated) = match planned {
                Ok(p) => p,
                Err(reason) => {
                    report.refused.push(Refusal {
                        reference: row.reference.clone(),
                        instance_id: row.id,
                        reason,
                    });
                    break;
                }
            };
            if dry_run {
                report.moves.push(family);
                break;
            }
            match apply(rt, &target, &row, migrated).await {
                Ok(()) => {
                    rt.store()
                        .append_audit(&AuditEntry {
                            at: rt.clock().now(),
                            actor: by.into(),
                            action: "migrate".into(),
                            reference: Some(row.reference.clone()),
                            instance_id: Some(row.id),
                            detail: Some(format!(
                                "version {} to {to_version}: {} to {}",
                                family.from_version, family.from_state, family.to_state
                            )),
                            outcome: "ok".into(),
                        })
                        .await?;
                    report.moves.push(family);
                    break;
                }
                Err(StoreError::Conflict(_)) if attempt < 2 => {
                    match rt.store().instance(row.id).await? {
                        Some(again)
                            if again.instance.status == carepath_engine::step::Status::Active =>
                        {
                            row = again;
                        }
                        _ => break,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(report)
}

/// The state `state` becomes: as mapped, or the same name.
fn destination(map: &BTreeMap<String, String>, state: &str) -> String {
    map.get(state).cloned().unwrap_or_else(|| state.to_string())
}

/// The active instances of `pathway` that `only` selects, on any version but `target`.
async fn running<S: Storage>(
    rt: &Runtime<S>,
    pathway: &str,
    only: &Selection,
    target: i64,
) -> Result<Vec<InstanceRow>, RuntimeError> {
    let selection = Selection {
        pathways: Some(vec![pathway.to_string()]),
        ..only.clone()
    };
    Ok(crate::bulk::select(rt, &selection)
        .await?
        .into_iter()
        .filter(|r| r.pathway_version_id != target)
        .collect())
}

/// What moving `row` would do, or why it cannot move.
fn plan<S: Storage>(
    rt: &Runtime<S>,
    target: &Arc<Version>,
    row: &InstanceRow,
    map: &BTreeMap<String, String>,
    by: &str,
) -> Result<(FamilyMove, Migrated), String> {
    let old: Option<&Arc<Version>> = rt.catalog().version(row.pathway_version_id);
    let from_version = old.map_or(0, |v| v.checked.pathway.version);
    let new = &target.checked.pathway;
    let missing: Vec<&String> = new
        .fields
        .iter()
        .filter(|(name, f)| {
            f.required && row.instance.fields.get(*name).is_none_or(|v| v.is_null())
        })
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "version {} requires {}, which the family does not have: report it first",
            new.version,
            missing
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The activities of its state it has done: the state's, less those still open.
    let done: Vec<String> = old
        .and_then(|v| v.checked.pathway.states.get(&row.instance.state))
        .map(|s| {
            s.activities
                .iter()
                .map(|a| a.name.clone())
                .filter(|a| !row.instance.open_activities.contains(a))
                .collect()
        })
        .unwrap_or_default();
    let to = destination(map, &row.instance.state);
    let migrated = carepath_engine::migrate(
        &target.checked,
        &row.instance,
        &to,
        &done,
        rt.clock().now(),
        by,
        format!(
            "migrated by {by} from version {from_version} to {}: \"{}\" became \"{to}\"",
            new.version, row.instance.state
        ),
    )
    .map_err(|e| e.to_string())?;
    let owner = migrated.effects.instance.owner.clone();
    if let Some(o) = &owner
        && !new.roles.contains_key(o)
    {
        return Err(format!(
            "its owner \"{o}\" is not a role of version {}: map it to a state that names its owner",
            new.version
        ));
    }
    let family = FamilyMove {
        reference: row.reference.clone(),
        instance_id: row.id,
        from_version,
        from_state: row.instance.state.clone(),
        to_state: to,
        owner,
        timers_added: migrated
            .effects
            .armed
            .iter()
            .map(|t| (t.key.clone(), t.due))
            .collect(),
        timers_removed: migrated.effects.cancelled.clone(),
        left_out: migrated
            .left_out
            .iter()
            .map(|t| (t.key.clone(), t.due))
            .collect(),
    };
    Ok((family, migrated))
}

/// Moves one family in one transaction.
async fn apply<S: Storage>(
    rt: &Runtime<S>,
    target: &Arc<Version>,
    row: &InstanceRow,
    migrated: Migrated,
) -> Result<(), StoreError> {
    let effects = migrated.effects;
    let id = row.id;
    let changes = Changes {
        now: rt.clock().now(),
        updates: vec![InstanceUpdate {
            id,
            expected_seq: row.instance.seq,
            instance: effects.instance,
            roles: None,
            pathway_version_id: Some(target.id),
        }],
        timers_removed: effects.cancelled.into_iter().map(|k| (id, k)).collect(),
        timers_added: effects
            .armed
            .into_iter()
            .map(|t| (Target::Id(id), t))
            .collect(),
        history: vec![(Target::Id(id), effects.history)],
        ..Changes::default()
    };
    let mut tx = rt.store().begin().await?;
    tx.write(changes).await?;
    tx.commit().await
}

/// `--map OLD=NEW` arguments as a map.
pub fn parse_map(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
                Ok((from.trim().to_string(), to.trim().to_string()))
            }
            _ => Err(format!("--map {p:?}: give OLD=NEW, two state names")),
        })
        .collect()
}

/// A timestamp for a report line.
pub fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M").to_string()
}
