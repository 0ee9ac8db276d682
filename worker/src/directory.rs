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
