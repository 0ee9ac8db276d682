//! `carepath graph` checked by the programs that read its output: Mermaid's own parser (under
//! Node, `tests/fixtures/mermaid`) and Graphviz's `dot`, for every real pathway. Substring
//! checks once let three broken formats through; these read the output as its users do.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::support::{root, run, stdout};

fn pathways() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root().join("pathways"))
        .expect("pathways")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

fn graph(id: &str, format: &str) -> String {
    let o = run(&["graph", &format!("pathways/{id}"), "--format", format]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

#[test]
fn mermaid_output_parses_with_mermaids_own_parser() {
    let checker = root().join("tests/fixtures/mermaid");
    assert!(
        checker.join("node_modules/mermaid").is_dir(),
        "Mermaid is not installed in {}: run `bash .ci/test`, which installs it (npm install --prefix tests/fixtures/mermaid)",
        checker.display()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let mut files = Vec::new();
    for id in pathways() {
        let file = dir.path().join(format!("{id}.mmd"));
        std::fs::write(&file, graph(&id, "mermaid")).expect("write");
        files.push(file);
    }
    let o = Command::new("node")
        .arg(checker.join("parse.mjs"))
        .args(&files)
        .output()
        .expect("node (installed by .ci/test)");
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "Mermaid refuses carepath's output:\n{report}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(report.lines().count(), files.len(), "{report}");
    // The parser is not lenient: a subgraph named by the keyword `end` is refused.
    let broken = dir.path().join("broken.mmd");
    std::fs::write(
        &broken,
        "flowchart LR\n  subgraph end\n    a\n  end\n  style end fill:#e5e7eb\n",
    )
    .expect("write");
    let o = Command::new("node")
        .arg(checker.join("parse.mjs"))
        .arg(&broken)
        .output()
        .expect("node");
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Graphviz's layout of a DOT text, as JSON (`dot -Tjson`), with its warnings.
fn layout(dot: &str, dir: &Path) -> (Value, String) {
    let file = dir.join("graph.dot");
    std::fs::write(&file, dot).expect("write");
    let o = Command::new("dot")
        .args(["-Tjson"])
        .arg(&file)
        .output()
        .expect("Graphviz's dot (installed by .ci/test: apt install graphviz)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        serde_json::from_slice(&o.stdout).expect("dot -Tjson"),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn dot_output_is_laid_out_by_graphviz_as_drawn() {
    let dir = tempfile::tempdir().expect("tmp");
    for id in pathways() {
        let (g, warnings) = layout(&graph(&id, "dot"), dir.path());
        assert_eq!(warnings, "", "{id}: Graphviz warns");
        let objects = g["objects"].as_array().expect("objects");
        // Every line Graphviz draws in a node: the title, then the owner in parentheses on a
        // line of its own — never a literal backslash-n.
        for o in objects.iter().filter(|o| o.get("nodes").is_none()) {
            let lines: Vec<&str> = o["_ldraw_"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|op| op["text"].as_str())
                .collect();
            for line in &lines {
                assert!(!line.contains("\\n"), "{id}: {line:?} shows a literal \\n");
            }
        }
        let clusters: Vec<(&str, Vec<&str>)> = objects
            .iter()
            .filter_map(|o| {
                let members = o.get("nodes")?.as_array()?;
                Some((
                    o["label"].as_str()?,
                    members
                        .iter()
                        .filter_map(|i| objects[i.as_u64()? as usize]["name"].as_str())
                        .collect(),
                ))
            })
            .collect();
        let pathway: Value = serde_json::from_str(
            &std::fs::read_to_string(root().join(format!("pathways/{id}/pathway.json")))
                .expect("pathway"),
        )
        .expect("json");
        // Only terminal states are drawn among the ends: a state whose family is handed off
        // on entry belongs to the receiver's sector.
        let ends = clusters
            .iter()
            .find(|(label, _)| *label == "ends")
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        for (name, state) in pathway["states"].as_object().expect("states") {
            let terminal = state["terminal"].as_bool().unwrap_or(false);
            assert_eq!(
                ends.contains(&name.as_str()),
                terminal,
                "{id}: state {name} drawn {} the ends",
                if terminal { "outside" } else { "among" }
            );
        }
    }
    // The standard track's newborn state has no owner of its own: the birth is handed to the
    // health visitors on entry, so it is drawn with the municipality.
    let (g, _) = layout(&graph("standard-track", "dot"), dir.path());
    let municipality = g["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["label"] == "municipality")
        .expect("municipality cluster");
    let names: Vec<&str> = municipality["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|i| g["objects"][i.as_u64().unwrap_or(0) as usize]["name"].as_str())
        .collect();
    assert!(names.contains(&"newborn"), "{names:?}");
}

#[test]
fn svg_output_is_an_svg_document_from_graphviz() {
    let svg = graph("red-cross-good-start", "svg");
    assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("Generated by graphviz"));
    // The titles are text of the drawing, escaped as XML.
    assert!(svg.contains("Aktiv: hjemmebesøg af den frivillige"));
}
