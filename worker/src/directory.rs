//! The directory: which organisation's contact plays a role for every family, kept in the
//! database and loaded from a file (`carepath directory load directory.toml`) or the API
//! (`PUT /v1/directory`).
//!
//! ```toml
//! [[role]]
//! organisation = "Røde Kors Rødovre"
//! role = "coordinator"
//! pathway = "red-cross-good-start"      # optional: without it, every pathway with the role
//! contact = { name = "Koordinator, God start", email = "godstart.rodovre@example.dk" }
//! ```
//!
//! A referral or an enrolment that leaves one of the new instance's roles without a contact
//! takes the directory's: the pathway's own entry first, then the one for every pathway.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use carepath_engine::diagnostic::LineIndex;
use carepath_engine::json::Locations;
use carepath_engine::pathway::{Action, Sector, enrolled_roles};
use carepath_engine::{Code, PathwaySource, Report};

use crate::catalog::Catalog;
use crate::store::DirectoryEntry;

/// A directory file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    role: Vec<DirectoryEntry>,
}

/// Why a directory cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a directory in TOML.
    #[error("{path} is not a directory file: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// Entries that do not fit the loaded pathways; nothing was loaded.
    #[error("the directory is refused, nothing was loaded:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Reads a directory file.
pub fn read(path: &Path) -> Result<Vec<DirectoryEntry>, DirectoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file: File = toml::from_str(&text).map_err(|e| DirectoryError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(file.role)
}

/// The entry of `entries` that plays `role` on `pathway`: the pathway's own entry, else the
/// one for every pathway. `of` reads the entry out of an element.
pub fn entry_for<'a, T>(
    entries: &'a [T],
    of: impl Fn(&T) -> &DirectoryEntry,
    pathway: &str,
    role: &str,
) -> Option<&'a T> {
    let plays = |t: &&T, on: Option<&str>| of(t).role == role && of(t).pathway.as_deref() == on;
    entries
        .iter()
        .find(|t| plays(t, Some(pathway)))
        .or_else(|| entries.iter().find(|t| plays(t, None)))
}

/// Checks entries against the loaded pathways: each names a loaded pathway (when it names
/// one) that has the role, a role at most once per pathway, and a contact that reaches the
/// role on every pathway it serves. Returns every problem, each naming its entry.
pub fn check(entries: &[DirectoryEntry], catalog: &Catalog) -> Result<(), DirectoryError> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let at = format!(
            "role {} ({}, {}{})",
            i + 1,
            e.organisation,
            e.role,
            e.pathway
                .as_deref()
                .map(|p| format!(" on {p}"))
                .unwrap_or_default()
        );
        if !seen.insert((e.role.clone(), e.pathway.clone())) {
            problems.push(format!(
                "{at}: a second entry for the same role and pathway; keep one"
            ));
        }
        let serves: Vec<_> = catalog
            .pathway_ids()
            .into_iter()
            .filter(|p| e.pathway.as_ref().is_none_or(|x| x == p))
            .filter_map(|p| catalog.latest(&p).cloned())
            .filter(|v| v.checked.pathway.roles.contains_key(&e.role))
            .collect();
        if let Some(p) = &e.pathway
            && catalog.latest(p).is_none()
        {
            problems.push(format!(
                "{at}: no pathway \"{p}\" is loaded (loaded: {})",
                catalog.pathway_ids().join(", ")
            ));
            continue;
        }
        if serves.is_empty() {
            problems.push(format!(
                "{at}: no loaded pathway{} has the role \"{}\"",
                e.pathway
                    .as_deref()
                    .map(|p| format!(" \"{p}\""))
                    .unwrap_or_default(),
                e.role
            ));
        }
        let one: BTreeMap<String, _> = [(e.role.clone(), e.contact.clone())].into();
        for v in serves {
            if let Err(err) = crate::runtime::check_contacts(&v, &one) {
                problems.push(format!("{at}: on {}: {err}", v.checked.pathway.id));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DirectoryError::Invalid(problems))
    }
}

/// `role-not-in-directory` warnings (`carepath validate --directory`): for each referral
/// (`enroll`) of a checked pathway into another checked one, each role that the other
/// pathway's first state notifies as it starts, outside the family, that `entries` has nobody
/// for: unless the family happens to have the contact the referral copies (the issue found
/// referrals to the Red Cross dead for want of the coordinator's address), those first
/// notices are dead letters. Roles told later, such as a volunteer assigned with the match,
/// are left alone.
pub fn check_referrals(report: &mut Report, sources: &[PathwaySource], entries: &[DirectoryEntry]) {
    // Each source parsed once, found by its pathway's id.
    let parsed: BTreeMap<String, (&PathwaySource, carepath_engine::json::Node)> = sources
        .iter()
        .filter_map(|s| {
            let node = carepath_engine::json::parse(&s.pathway.text).ok()?;
            let id = serde_json::from_str::<serde_json::Value>(&s.pathway.text)
                .ok()?
                .get("id")?
                .as_str()?
                .to_string();
            Some((id, (s, node)))
        })
        .collect();
    let mut found = Vec::new();
    for p in &report.pathways {
        let Some((source, node)) = parsed.get(&p.pathway.id) else {
            continue;
        };
        let locations = Locations::of(node);
        let index = LineIndex::new(&source.pathway.text);
        for (pointer, action) in p.pathway.action_sites() {
            let Action::Enroll(e) = action else {
                continue;
            };
            let Some(theirs) = report.pathways.iter().find(|q| q.pathway.id == e.pathway) else {
                continue;
            };
            let given: BTreeMap<String, String> =
                enrolled_roles(&e.roles, &theirs.pathway.roles, |r| {
                    p.pathway.roles.contains_key(r)
                })
                .into_iter()
                .collect();
            let told: BTreeSet<&str> = theirs
                .pathway
                .states
                .get(&theirs.pathway.initial)
                .into_iter()
                .flat_map(|s| &s.enter)
                .flat_map(|a| a.notices())
                .map(|(role, _)| role)
                .collect();
            for (role, decl) in &theirs.pathway.roles {
                let listed = entry_for(entries, |e| e, &theirs.pathway.id, role).is_some();
                if decl.sector == Sector::Family || !told.contains(role.as_str()) || listed {
                    continue;
                }
                let from = given
                    .get(role)
                    .map(|mine| format!("only the family's own \"{mine}\" contact, if it has one"))
                    .unwrap_or_else(|| "no contact".into());
                found.push(index.diagnostic(
                    &source.pathway.path,
                    Code::RoleNotInDirectory,
                    format!(
                        "the referral to \"{}\" gives role \"{role}\" {from}, and nobody in the directory plays it: without it, its first notices are dead letters",
                        theirs.pathway.id
                    ),
                    locations.value(&pointer),
                    &pointer,
                    Some(format!(
                        "add a [[role]] with role = \"{role}\" (and pathway = \"{}\") to the directory, or map it in this enroll's \"roles\"",
                        theirs.pathway.id
                    )),
                ));
            }
        }
    }
    report.diagnostics.extend(found);
}
