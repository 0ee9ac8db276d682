//! The JSON Schema of pathway.json: current, and in agreement with the checker's decoder and
//! with serde.

use std::path::PathBuf;

use carepath_engine::Pathway;

use super::support::{golden, root};

fn schema() -> serde_json::Value {
    carepath_engine::schema()
}

#[test]
fn committed_schema_is_current() {
    let mut text = carepath_worker::cli::schema_text();
    text.push('\n');
    golden(&root().join("docs/pathway.schema.json"), &text);
}

/// The real pathways and every fixed fixture.
fn good_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["pathways", "tests/fixtures/invalid"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("dir") {
            let p = entry.expect("entry").path();
            for candidate in [p.join("pathway.json"), p.join("fixed/pathway.json")] {
                if candidate.is_file() {
                    files.push(candidate);
                }
            }
        }
    }
    files.sort();
    assert!(files.len() > 20);
    files
}

#[test]
fn accepted_pathways_follow_the_schema_and_read_the_same_through_serde() {
    let validator = jsonschema::validator_for(&schema()).expect("the schema compiles");
    for file in good_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
        let decoded = carepath_engine::decode::decode("pathway.json", &text)
            .pathway
            .expect("decodes");
        let via_serde: Pathway = serde_json::from_str(&text).expect("serde reads it");
        assert_eq!(
            decoded,
            via_serde,
            "{}: the decoder and serde disagree",
            file.display()
        );
        let again: Pathway =
            serde_json::from_str(&serde_json::to_string(&via_serde).expect("write"))
                .expect("read back");
        assert_eq!(
            again,
            via_serde,
            "{}: serde does not round-trip",
            file.display()
        );
    }
}

#[test]
fn structural_mistakes_fail_the_schema_too() {
    let validator = jsonschema::validator_for(&schema()).expect("the schema compiles");
    for code in ["unknown-key", "missing-key", "wrong-type", "bad-duration"] {
        let file = root()
            .join("tests/fixtures/invalid")
            .join(code)
            .join("bad/pathway.json");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert!(
            !validator.is_valid(&value),
            "{code}: the schema accepts what the checker refuses"
        );
    }
}

#[test]
fn pathway_files_point_editors_at_the_schema() {
    for entry in std::fs::read_dir(root().join("pathways")).expect("pathways/") {
        let file = entry.expect("entry").path().join("pathway.json");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(
            value["$schema"],
            "../../docs/pathway.schema.json",
            "{}",
            file.display()
        );
    }
}
