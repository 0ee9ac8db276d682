//! The checker against its fixtures: one invalid pathway per code, each with its fix.
//!
//! `tests/fixtures/invalid/CODE/bad` must produce exactly the diagnostics in `expected.json`
//! (code, line, column, pointer, message, hint), among them CODE; `fixed` must produce none.
//! The diagnostics section of docs/pathway-language.md is generated from these fixtures.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use carepath_engine::{Code, PathwaySource, Report};
use carepath_notifier::sms;

use super::support::{golden, read_folder, root, update};

/// The checks as `carepath validate` runs them: the engine's, then the notifier's SMS sizes,
/// then, for a side with a `directory.toml`, the referrals' roles against it (`--directory`).
fn check_side(sources: &[PathwaySource], side: Option<&Path>) -> Report {
    let mut report = carepath_engine::check(sources);
    sms::check(&mut report, sms::DEFAULT_MAX_SEGMENTS);
    if let Some(directory) = side
        .map(|s| s.join("directory.toml"))
        .filter(|d| d.exists())
    {
        let entries = carepath_worker::directory::read(&directory).expect("directory");
        carepath_worker::directory::check_referrals(&mut report, sources, &entries);
    }
    report
}

/// The checks of a source that has no fixture folder.
fn check(sources: &[PathwaySource]) -> Report {
    check_side(sources, None)
}

fn fixtures() -> Vec<(String, PathBuf)> {
    let dir = root().join("tests/fixtures/invalid");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures folder")
        .map(|e| {
            let p = e.expect("entry").path();
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                p,
            )
        })
        .collect();
    out.sort();
    out
}

/// One side (`bad` or `fixed`) of a fixture, with the pathway in its `with/` folder when it
/// has one: the other end of an `enroll`, checked together with it.
///
/// A `pathway.json.pad` beside a `pathway.json` holds a number of blanks to append to it, so a
/// fixture for a file too large to keep in the repository stays small.
fn sources(dir: &Path, side: &str) -> Vec<PathwaySource> {
    let mut main = read_folder(&dir.join(side));
    if let Ok(pad) = std::fs::read_to_string(dir.join(side).join("pathway.json.pad")) {
        let blanks: usize = pad.trim().parse().expect("a number of blanks");
        main.pathway.text.push_str(&" ".repeat(blanks));
    }
    let mut out = vec![main];
    if dir.join("with").is_dir() {
        out.push(read_folder(&dir.join("with")));
    }
    out
}

fn diagnostics_json(dir: &Path) -> String {
    let report = check_side(&sources(dir, "bad"), Some(&dir.join("bad")));
    let mut text =
        serde_json::to_string_pretty(&carepath_engine::diagnostic::to_json(&report.diagnostics))
            .expect("json");
    text.push('\n');
    text
}

#[test]
fn every_code_has_a_fixture() {
    let have: BTreeSet<String> = fixtures().into_iter().map(|(name, _)| name).collect();
    let missing: Vec<&str> = Code::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !have.contains(*c))
        .collect();
    assert!(missing.is_empty(), "codes without a fixture: {missing:?}");
    for name in &have {
        assert!(
            Code::from_name(name).is_some(),
            "fixture {name} is not a code"
        );
    }
}

#[test]
fn each_bad_fixture_reports_its_code_where_expected() {
    for (code, dir) in fixtures() {
        let actual = diagnostics_json(&dir);
        golden(&dir.join("expected.json"), &actual);
        let parsed: serde_json::Value = serde_json::from_str(&actual).expect("json");
        let found = parsed["diagnostics"]
            .as_array()
            .expect("array")
            .iter()
            .any(|d| {
                d["code"] == code.as_str()
                    && d["line"].as_u64() > Some(0)
                    && d["column"].as_u64() > Some(0)
            });
        assert!(
            found,
            "{code}: the bad fixture does not report {code}:\n{actual}"
        );
    }
}

#[test]
fn each_fixed_fixture_is_clean() {
    for (code, dir) in fixtures() {
        let sources = sources(&dir, "fixed");
        let report = check_side(&sources, Some(&dir.join("fixed")));
        assert!(
            report.diagnostics.is_empty(),
            "{code}: the fix still has diagnostics: {:#?}",
            report.diagnostics
        );
        assert_eq!(
            report.pathways.len(),
            sources.len(),
            "{code}: the fix is not accepted"
        );
    }
}

const START: &str =
    "<!-- diagnostics:start (generated from tests/fixtures/invalid by the test suite) -->";
const END: &str = "<!-- diagnostics:end -->";

/// The reference of every code, generated from the fixtures.
fn diagnostics_section() -> String {
    let mut out = String::new();
    out.push_str(START);
    out.push('\n');
    for code in Code::ALL {
        let dir = root().join("tests/fixtures/invalid").join(code.as_str());
        let severity = match code.severity() {
            carepath_engine::Severity::Error => "error",
            carepath_engine::Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "\n### `{code}` ({severity})\n\n{}\n\n",
            code.description()
        ));
        let report = check_side(&sources(&dir, "bad"), Some(&dir.join("bad")));
        let rendered: Vec<String> = report
            .diagnostics
            .iter()
            .filter(|d| d.code == *code)
            .map(|d| d.render())
            .collect();
        out.push_str("```text\n");
        out.push_str(&rendered.join("\n"));
        out.push_str("```\n\nThe fix:\n\n```diff\n");
        out.push_str(&fix_diff(&dir));
        out.push_str("```\n");
    }
    out.push('\n');
    out.push_str(END);
    out
}

/// A unified diff of every file that differs between `bad` and `fixed`.
fn fix_diff(dir: &Path) -> String {
    let mut files = BTreeSet::new();
    for side in ["bad", "fixed"] {
        files.insert(PathBuf::from("pathway.json"));
        if let Ok(entries) = std::fs::read_dir(dir.join(side).join("templates")) {
            for e in entries {
                let name = e.expect("entry").file_name();
                files.insert(PathBuf::from("templates").join(name));
            }
        }
    }
    let mut out = String::new();
    for f in files {
        let a = std::fs::read_to_string(dir.join("bad").join(&f)).unwrap_or_default();
        let b = std::fs::read_to_string(dir.join("fixed").join(&f)).unwrap_or_default();
        if a != b {
            let name = f.to_string_lossy().replace('\\', "/");
            let diff = similar::TextDiff::from_lines(&a, &b);
            out.push_str(
                &diff
                    .unified_diff()
                    .context_radius(2)
                    .header(&name, &name)
                    .to_string(),
            );
        }
    }
    out
}

#[test]
fn language_reference_documents_every_code_from_the_fixtures() {
    let path = root().join("docs/pathway-language.md");
    let doc = std::fs::read_to_string(&path).expect("docs/pathway-language.md");
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        panic!("docs/pathway-language.md lacks the diagnostics markers");
    };
    let current = &doc[start..end + END.len()];
    let generated = diagnostics_section();
    if update() {
        let new = format!("{}{}{}", &doc[..start], generated, &doc[end + END.len()..]);
        std::fs::write(&path, new).expect("write docs");
        return;
    }
    assert!(
        current == generated,
        "the diagnostics section of docs/pathway-language.md is not current (rerun with UPDATE_EXPECT=1):\n{}",
        similar::TextDiff::from_lines(current, &generated).unified_diff()
    );
}

/// Every ```json block of the language reference passes the checker: whole pathways as they
/// are, fragments (`"roles": {...}`) merged, in order, into the first whole pathway. Templates
/// the examples name are stubbed, since the reference is about the JSON.
#[test]
fn language_reference_examples_pass() {
    let doc = std::fs::read_to_string(root().join("docs/pathway-language.md")).expect("doc");
    let mut base: Option<serde_json::Value> = None;
    let mut checked = 0;
    for block in doc.split("```json\n").skip(1) {
        let Some((body, _)) = block.split_once("```") else {
            continue;
        };
        let trimmed = body.trim();
        let example = if trimmed.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(trimmed)
                .unwrap_or_else(|e| panic!("an example does not parse: {e}\n{body}"));
            base.get_or_insert_with(|| v.clone());
            v
        } else {
            let fragment: serde_json::Value = serde_json::from_str(&format!("{{{trimmed}}}"))
                .unwrap_or_else(|e| panic!("a fragment does not parse: {e}\n{body}"));
            let b = base
                .as_mut()
                .expect("a whole pathway comes before the fragments");
            for (k, v) in fragment.as_object().expect("object") {
                if k == "activities" {
                    b["states"]["born"]["activities"] = v.clone();
                } else if let (Some(into), Some(from)) =
                    (b[k.as_str()].as_object_mut(), v.as_object())
                {
                    into.extend(from.clone());
                } else {
                    b[k.as_str()] = v.clone();
                }
            }
            b.clone()
        };
        let mut names = BTreeSet::new();
        collect_templates(&example, &mut names);
        let mut templates = Vec::new();
        for name in names {
            templates.push(carepath_engine::SourceFile {
                path: format!("templates/{name}.da.email.hbs"),
                text: "Subject: x\n\nx\n".into(),
            });
            templates.push(carepath_engine::SourceFile {
                path: format!("templates/{name}.da.sms.hbs"),
                text: "x".into(),
            });
        }
        let source = carepath_engine::PathwaySource {
            pathway: carepath_engine::SourceFile {
                path: "example.json".into(),
                text: example.to_string(),
            },
            templates,
        };
        let report = check(&[source]);
        let errors: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == carepath_engine::Severity::Error)
            .map(|d| d.render())
            .collect();
        assert!(
            errors.is_empty(),
            "an example in docs/pathway-language.md fails:\n{}\n{body}",
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(
        checked >= 6,
        "expected the reference's examples, found {checked}"
    );
}

fn collect_templates(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k.ends_with("template")
                    && let Some(s) = v.as_str()
                {
                    out.insert(s.to_string());
                }
                collect_templates(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_templates(v, out)),
        _ => {}
    }
}

#[test]
fn real_pathways_have_no_diagnostics() {
    let sources = carepath_worker::load::load(&[root().join("pathways")]).expect("pathways/");
    assert!(!sources.is_empty());
    let report = check(&sources);
    let rendered: Vec<_> = report.diagnostics.iter().map(|d| d.render()).collect();
    assert!(rendered.is_empty(), "{}", rendered.join("\n"));
    assert_eq!(report.pathways.len(), sources.len());
}

#[test]
fn html_bodies_are_checked_in_their_own_files() {
    let mut source = read_folder(&root().join("pathways/standard-track"));
    let html = |name: &str, text: &str| carepath_engine::SourceFile {
        path: format!("templates/{name}"),
        text: text.into(),
    };
    source.templates.extend([
        // No text template beside it.
        html("welcome.da.email.html.hbs", "<p>Hej</p>"),
        // A second HTML body for one template.
        html(
            "pregnancy_referral.da.email.html.hbs",
            "<p>{{instance.ref}}</p>",
        ),
        // Variables are checked like the text body's, at the HTML file's lines.
        html(
            "birth_notice.da.email.html.hbs",
            "<p>Hej</p>\n<p>{{fields.cpr}} {{handoff.nope}} {{shout instance.ref}}</p>",
        ),
    ]);
    // With the pathways it refers into, so that only the HTML files are wrong.
    let mut sources = carepath_worker::load::load(&[root().join("pathways")]).expect("load");
    sources.retain(|s| !s.pathway.path.contains("standard-track"));
    sources.push(source);
    let report = check(&sources);
    let found: Vec<(String, &str, usize, usize)> = report
        .diagnostics
        .iter()
        .map(|d| (d.file.clone(), d.code.as_str(), d.line, d.column))
        .collect();
    let has = |file: &str, code: &str, line: usize| {
        found
            .iter()
            .any(|(f, c, l, _)| f.ends_with(file) && *c == code && *l == line)
    };
    assert!(
        has("welcome.da.email.html.hbs", "template-error", 1),
        "{found:?}"
    );
    assert!(
        has("pregnancy_referral.da.email.html.hbs", "duplicate-name", 1),
        "{found:?}"
    );
    assert!(
        has("birth_notice.da.email.html.hbs", "sensitive-in-email", 2),
        "{found:?}"
    );
    assert!(
        has(
            "birth_notice.da.email.html.hbs",
            "template-unknown-variable",
            2
        ),
        "{found:?}"
    );
    assert!(
        has("birth_notice.da.email.html.hbs", "template-error", 2),
        "{found:?}"
    );
    let orphan = report
        .diagnostics
        .iter()
        .find(|d| d.file.ends_with("welcome.da.email.html.hbs"))
        .expect("the orphan");
    assert!(
        orphan.message.contains("there is no welcome.da.email.hbs"),
        "{}",
        orphan.message
    );
    assert!(
        !report
            .pathways
            .iter()
            .any(|p| p.pathway.id == "standard-track"),
        "errors refuse the pathway whole"
    );
}

/// Every way the template language can reach a sensitive field is seen, in SMS and email:
/// through `this`, `@root`, `with`, `each`, `lookup` and sub-expressions; what cannot be
/// followed statically is refused.
#[test]
fn the_privacy_lint_sees_every_way_to_a_sensitive_field() {
    let pathway = serde_json::json!({
        "id": "private", "version": 1, "title": "Private", "horizon": "P1M",
        "roles": {"family": {"sector": "family"}, "midwife": {"sector": "region"}},
        "fields": {"cpr": {"type": "text", "sensitive": true}, "language": {"type": "text"}},
        "events": {"seen": {}},
        "initial": "waiting",
        "states": {
            "waiting": {
                "owner": "midwife",
                "enter": [
                    {"notify": {"to": "family", "template": "hello"}},
                    {"notify": {"to": "midwife", "template": "hello"}}
                ],
                "on": [{"event": "seen", "to": "done"}]
            },
            "done": {"terminal": true}
        }
    });
    for body in [
        "{{this.fields.cpr}}",
        "{{@root.fields.cpr}}",
        "{{#with this}}{{fields.cpr}}{{/with}}",
        "{{#with fields}}{{cpr}}{{/with}}",
        "{{lookup (lookup this \"fields\") \"cpr\"}}",
        "{{#each (lookup this \"fields\")}}{{this}}{{/each}}",
        "{{#each fields}}{{this}}{{/each}}",
        "{{this}}",
        "{{lookup fields fields.language}}",
        "{{> secrets}}",
        "{{#each fields as |value|}}{{value}}{{/each}}",
    ] {
        for (channel, subject, code) in [
            ("sms", "", Code::SensitiveInSms),
            ("email", "Subject: Hej\n\n", Code::SensitiveInEmail),
        ] {
            let report = carepath_engine::check(&[PathwaySource {
                pathway: carepath_engine::SourceFile {
                    path: "pathway.json".into(),
                    text: pathway.to_string(),
                },
                templates: vec![
                    carepath_engine::SourceFile {
                        path: format!("templates/hello.da.{channel}.hbs"),
                        text: format!("{subject}Hej {body}"),
                    },
                    carepath_engine::SourceFile {
                        path: format!(
                            "templates/hello.da.{}.hbs",
                            if channel == "sms" { "email" } else { "sms" }
                        ),
                        text: format!(
                            "{}Hej",
                            if channel == "sms" {
                                "Subject: Hej\n\n"
                            } else {
                                ""
                            }
                        ),
                    },
                ],
            }]);
            let codes: Vec<Code> = report.diagnostics.iter().map(|d| d.code).collect();
            assert!(
                report.pathways.is_empty()
                    && (codes.contains(&code) || codes.contains(&Code::UnsafeTemplateConstruct)),
                "{body} in {channel} was not refused: {codes:?}"
            );
        }
    }
}
