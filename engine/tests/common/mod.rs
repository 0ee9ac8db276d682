//! What the engine's tests share: the real pathways, read from `pathways/`.

use std::path::Path;

use carepath_engine::{CheckedPathway, PathwaySource, SourceFile, check};

/// One pathway folder: `pathway.json` and its templates, in name order.
pub fn read_pathway(dir: &Path) -> PathwaySource {
    let text = std::fs::read_to_string(dir.join("pathway.json")).expect("pathway.json");
    let mut templates = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir.join("templates"))
        .map(|rd| rd.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default();
    paths.sort();
    for p in paths {
        templates.push(SourceFile {
            path: p.display().to_string(),
            text: std::fs::read_to_string(&p).expect("template"),
        });
    }
    PathwaySource {
        pathway: SourceFile {
            path: dir.join("pathway.json").display().to_string(),
            text,
        },
        templates,
    }
}

/// Every real pathway's files, in folder order.
pub fn real_sources() -> Vec<PathwaySource> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pathways");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("pathways/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("pathway.json").is_file())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| read_pathway(d)).collect()
}

/// Every real pathway, checked together.
pub fn real_pathways() -> Vec<CheckedPathway> {
    let report = check(&real_sources());
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    report.pathways
}
