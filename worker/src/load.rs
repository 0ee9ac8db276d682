//! Reading pathway folders from disk into [`PathwaySource`]s for the engine.
//!
//! The layout: a pathway is a folder holding `pathway.json` and, beside it, `templates/` with
//! files named `NAME.LANG.CHANNEL.hbs`. A path given on the command line may be such a folder,
//! its `pathway.json`, or a folder of pathway folders (`pathways/`).

use std::path::{Path, PathBuf};

use carepath_engine::{PathwaySource, SourceFile};

/// Why pathway files could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The path does not exist or cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path holds no pathway.
    #[error("no pathway.json in {0} or in its sub-folders")]
    Empty(PathBuf),
}

/// The name of a pathway file inside its folder.
pub const PATHWAY_FILE: &str = "pathway.json";
/// The folder of templates beside it.
pub const TEMPLATES_DIR: &str = "templates";

/// Reads every pathway at `paths`, in a stable order (sorted by folder).
pub fn load(paths: &[PathBuf]) -> Result<Vec<PathwaySource>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let found = pathway_files(path)?;
        if found.is_empty() {
            return Err(LoadError::Empty(path.clone()));
        }
        for file in found {
            out.push(read_pathway(&file)?);
        }
    }
    Ok(out)
}

/// The pathways beside those at `paths` that `paths` do not name: when a single pathway
/// folder is named, the others in its parent folder, which its `enroll` actions may refer
/// into. Checked with the named ones as their context, they are not themselves reported on.
/// Best effort: a parent that cannot be read adds nothing.
pub fn beside(paths: &[PathBuf], named: &[PathwaySource]) -> Vec<PathwaySource> {
    // A folder beside with a named pathway's id (a copy, an older draft) is no context.
    let ids: Vec<Option<String>> = named.iter().map(declared_id).collect();
    let mut out: Vec<PathwaySource> = Vec::new();
    for parent in paths.iter().filter_map(|p| collection(p)) {
        for file in pathway_files(&parent).unwrap_or_default() {
            let shown = display(&file);
            let known = named.iter().chain(&out).any(|s| s.pathway.path == shown);
            if !known
                && let Ok(source) = read_pathway(&file)
                && !ids.contains(&declared_id(&source))
            {
                out.push(source);
            }
        }
    }
    out
}

/// The folder that holds the pathway at `path` among others (`pathways/` for
/// `pathways/standard-track` or its `pathway.json`); `None` when `path` is not a single
/// pathway or has no parent folder.
pub fn collection(path: &Path) -> Option<PathBuf> {
    let folder = if path.is_file() {
        path.parent()?
    } else if path.join(PATHWAY_FILE).is_file() {
        path
    } else {
        return None;
    };
    folder
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// The `id` a pathway file declares, read without checking the rest.
pub fn declared_id(source: &PathwaySource) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(&source.pathway.text)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `pathway.json` files at or below `path` (one level of sub-folders).
fn pathway_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let direct = path.join(PATHWAY_FILE);
    if is_file(&direct)? {
        return Ok(vec![direct]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let candidate = entry.path().join(PATHWAY_FILE);
        if is_file(&candidate)? {
            found.push(candidate);
        }
    }
    found.sort();
    Ok(found)
}

/// Whether `path` is a file: absent is `false`, but a path that cannot be looked at (a
/// symbolic link that loops, a folder without permission) is an error naming it, not a
/// silent "no pathway.json".
fn is_file(path: &Path) -> Result<bool, LoadError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.is_file()),
        // Absent, a link to nothing, or inside a file: no file here. A link to itself, or a
        // folder that may not be read, fails otherwise.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Reads a file of at most [`carepath_engine::check::MAX_FILE_BYTES`] and one byte more:
/// the checker refuses a larger one with a located diagnostic, and memory stays bounded
/// however large the file is.
fn read_bounded(file: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(carepath_engine::check::MAX_FILE_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(io(file))?;
    Ok(text)
}

fn read_pathway(file: &Path) -> Result<PathwaySource, LoadError> {
    let text = read_bounded(file)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let templates_dir = dir.join(TEMPLATES_DIR);
    let mut templates = Vec::new();
    if templates_dir.is_dir() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&templates_dir).map_err(io(&templates_dir))? {
            let p = entry.map_err(io(&templates_dir))?.path();
            if is_file(&p)? {
                names.push(p);
            }
        }
        names.sort();
        for p in names {
            let text = read_bounded(&p)?;
            templates.push(SourceFile {
                path: display(&p),
                text,
            });
        }
    }
    Ok(PathwaySource {
        pathway: SourceFile {
            path: display(file),
            text,
        },
        templates,
    })
}

/// A path as it should read in a diagnostic: as given, with `/` separators and no `./`.
fn display(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}
