//! The pathway versions a database knows, checked, with their templates compiled once.
//!
//! Versions are immutable: loading a folder stores each pathway version the first time it is
//! seen and refuses a changed file under a version already stored. Running instances keep the
//! version they started on; new enrolments take the newest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use jiff::Timestamp;

use carepath_engine::{CheckedPathway, Diagnostic, PathwaySource};
use carepath_notifier::Renderer;

use crate::load;
use crate::store::{NoticeText, OutboxRow, Storage, StoreError, Stored};

/// Why the pathways could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The folder could not be read.
    #[error(transparent)]
    Load(#[from] load::LoadError),
    /// A pathway failed its checks: nothing was loaded.
    #[error("{} error{} in the pathways; nothing was loaded:\n{}", .0.iter().filter(|d| d.severity == carepath_engine::Severity::Error).count(), if .0.len() == 1 { "" } else { "s" }, crate::cli::render_all(.0))]
    Invalid(Vec<Diagnostic>),
    /// A stored version was changed on disk, or another storage error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A template failed to compile when loading (the checker should have caught it).
    #[error("pathway {pathway} version {version}: {source}")]
    Render {
        /// The pathway.
        pathway: String,
        /// Its version.
        version: u32,
        /// What went wrong.
        source: carepath_notifier::RenderError,
    },
}

/// One pathway version, ready to run.
pub struct Version {
    /// The stored row's id.
    pub id: i64,
    /// The checked pathway.
    pub checked: CheckedPathway,
    /// Its compiled templates.
    pub renderer: Renderer,
}

impl Version {
    /// Renders a notice read from the outbox with this version's templates, for the recipient
    /// it is addressed to: the text delivery sends and stores, and the text a listing shows
    /// while the notice waits. Deterministic, so both are the same.
    pub fn compose(&self, row: &OutboxRow) -> Result<NoticeText, String> {
        let (Some(channel), Some(data)) = (row.channel, &row.data) else {
            return Err("nothing to render: the notice has no channel or data".into());
        };
        let mut data = data.clone();
        if let Some(obj) = data.as_object_mut() {
            obj.insert(
                "recipient".into(),
                serde_json::json!({"name": row.recipient.clone().unwrap_or_default(), "role": row.role}),
            );
        }
        let language = row
            .recipient_language
            .as_deref()
            .unwrap_or(&self.checked.pathway.default_language);
        let r = self
            .renderer
            .render(&row.template, channel, language, &data)
            .map_err(|e| e.to_string())?;
        Ok(NoticeText {
            language: Some(r.language),
            subject: r.subject,
            body: Some(r.body),
            html: r.html,
        })
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("id", &self.id)
            .field("pathway", &self.checked.pathway.id)
            .field("version", &self.checked.pathway.version)
            .finish()
    }
}

/// What loading a folder did to each pathway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The pathway.
    pub pathway: String,
    /// Its version.
    pub version: u32,
    /// Whether it was new to the database.
    pub added: bool,
}

/// Every stored pathway version.
#[derive(Debug, Default)]
pub struct Catalog {
    versions: HashMap<i64, Arc<Version>>,
    latest: HashMap<String, i64>,
}

impl Catalog {
    /// Checks the pathways under `paths`, stores new versions, and loads every stored version.
    /// Refuses, storing nothing, if any pathway has an error or a stored version changed.
    pub async fn sync<S: Storage>(
        store: &S,
        paths: &[PathBuf],
        now: Timestamp,
    ) -> Result<(Catalog, Vec<Loaded>), CatalogError> {
        let sources = load::load(paths)?;
        let report = carepath_engine::check(&sources);
        if report.has_errors() {
            return Err(CatalogError::Invalid(report.diagnostics));
        }
        // Refuse a changed version before storing anything, so a refused load stores nothing.
        let stored = store.pathways().await?;
        let mut changed = Vec::new();
        for (source, p) in sources.iter().zip(&report.pathways) {
            let hash = crate::store::content_hash(source);
            if stored.iter().any(|s| {
                s.pathway == p.pathway.id && s.version == p.pathway.version && s.hash != hash
            }) {
                changed.push(StoreError::VersionChanged {
                    pathway: p.pathway.id.clone(),
                    version: p.pathway.version,
                });
            }
        }
        if let Some(e) = changed.into_iter().next() {
            return Err(e.into());
        }
        let mut loaded = Vec::new();
        for (source, p) in sources.iter().zip(&report.pathways) {
            let result = store
                .put_pathway(source, &p.pathway.id, p.pathway.version, now)
                .await?;
            loaded.push(Loaded {
                pathway: p.pathway.id.clone(),
                version: p.pathway.version,
                added: matches!(result, Stored::Added(_)),
            });
        }
        Ok((Catalog::from_store(store).await?, loaded))
    }

    /// Loads every version stored in the database.
    pub async fn from_store<S: Storage>(store: &S) -> Result<Catalog, CatalogError> {
        let stored = store.pathways().await?;
        let sources: Vec<PathwaySource> = stored.iter().map(|s| s.source.clone()).collect();
        let report = carepath_engine::check(&sources);
        if report.has_errors() {
            return Err(CatalogError::Invalid(report.diagnostics));
        }
        let mut catalog = Catalog::default();
        for checked in report.pathways {
            let Some(row) = stored
                .iter()
                .find(|s| s.pathway == checked.pathway.id && s.version == checked.pathway.version)
            else {
                continue;
            };
            let renderer = Renderer::new(&checked).map_err(|source| CatalogError::Render {
                pathway: row.pathway.clone(),
                version: row.version,
                source,
            })?;
            let newest = catalog
                .latest
                .get(&row.pathway)
                .and_then(|id| catalog.versions.get(id))
                .is_none_or(|v| v.checked.pathway.version < row.version);
            if newest {
                catalog.latest.insert(row.pathway.clone(), row.id);
            }
            catalog.versions.insert(
                row.id,
                Arc::new(Version {
                    id: row.id,
                    checked,
                    renderer,
                }),
            );
        }
        Ok(catalog)
    }

    /// A version by its stored id.
    pub fn version(&self, id: i64) -> Option<&Arc<Version>> {
        self.versions.get(&id)
    }

    /// Fills in the text of notices still to be rendered, as delivery will render them, so a
    /// listing shows what will be sent. One that cannot be rendered is left without text.
    pub fn preview(&self, rows: &mut [OutboxRow]) {
        for r in rows.iter_mut().filter(|r| r.unrendered()) {
            if let Some(Ok(text)) = self.version(r.pathway_version_id).map(|v| v.compose(r)) {
                r.text = text;
            }
        }
    }

    /// The newest version of a pathway: the one new enrolments take.
    pub fn latest(&self, pathway: &str) -> Option<&Arc<Version>> {
        self.latest
            .get(pathway)
            .and_then(|id| self.versions.get(id))
    }

    /// Every stored version, in no particular order.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<Version>> {
        self.versions.values()
    }

    /// The ids of the pathways known, sorted.
    pub fn pathway_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.latest.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// A family's fields as they may be shown: each field the pathway declares sensitive (or does
/// not declare at all, when the version is unknown) is replaced by `"(sensitive)"`.
pub fn redact(
    version: Option<&Version>,
    fields: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    fields
        .iter()
        .map(|(k, v)| {
            let sensitive = version
                .and_then(|v| v.checked.pathway.fields.get(k))
                .is_none_or(|f| f.sensitive);
            let shown = if sensitive {
                serde_json::Value::String("(sensitive)".into())
            } else {
                v.clone()
            };
            (k.clone(), shown)
        })
        .collect()
}
