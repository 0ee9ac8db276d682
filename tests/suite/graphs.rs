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

/// The web view's own drawing (`carepath_engine::graph::to_svg`), read by Python's XML parser:
/// well-formed SVG with one box per state, one arrow per transition and every state's title.
#[test]
fn the_web_views_svg_is_well_formed_and_draws_every_state_and_edge() {
    let sources: Vec<_> = pathways()
        .iter()
        .map(|id| super::support::read_folder(&root().join("pathways").join(id)))
        .collect();
    let report = carepath_engine::check(&sources);
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    let dir = tempfile::tempdir().expect("tmp");
    for checked in &report.pathways {
        let p = &checked.pathway;
        let file = dir.path().join(format!("{}.svg", p.id));
        std::fs::write(&file, carepath_engine::graph::to_svg(p)).expect("write");
        let edges = carepath_engine::graph::StateGraph::new(p)
            .transitions()
            .len();
        let o = Command::new("python3")
            .args([
                "-c",
                r#"
import sys, xml.etree.ElementTree as ET
ns = {"s": "http://www.w3.org/2000/svg"}
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
states = root.findall("s:g[@class='state']", ns)
edges = root.findall("s:path[@class='edge']", ns)
titles = [g.find("s:title", ns).text for g in states]
w, h = float(root.get("width")), float(root.get("height"))
for g in states:
    r = g.find("s:rect", ns)
    x, y = float(r.get("x")), float(r.get("y"))
    assert 0 <= x and x + float(r.get("width")) <= w and 0 <= y and y + float(r.get("height")) <= h, ("outside", x, y)
print(len(states), len(edges))
print("\n".join(titles))
"#,
            ])
            .arg(&file)
            .output()
            .expect("python3");
        assert!(
            o.status.success(),
            "{}: {}",
            p.id,
            String::from_utf8_lossy(&o.stderr)
        );
        let out = stdout(&o);
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(format!("{} {edges}", p.states.len()).as_str()),
            "{}: one box per state, one arrow per transition",
            p.id
        );
        let titles: Vec<&str> = lines.collect();
        for (name, s) in &p.states {
            let title = format!("{} ({name})", s.title.as_deref().unwrap_or(name));
            assert!(titles.contains(&title.as_str()), "{}: no {title}", p.id);
        }
    }
}
