//! A corpus of broken pathways, made by a seeded generator from the real ones: each kind of
//! damage a coordinator's editor, a bad merge or an attacker can do. Every one, checked by
//! the real binary, ends in exit 1 with a coded and located diagnostic, or exit 2 with a
//! clear message: never a crash, a hang, or exit 0.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use super::support::{carepath, root};

/// How many broken pathways the corpus holds.
const SIZE: usize = 240;

/// A small deterministic generator (SplitMix64): the corpus is the same on every run.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every value in a JSON document with its pointer, in document order.
fn pointers(v: &Value, at: String, out: &mut Vec<(String, Value)>) {
    out.push((at.clone(), v.clone()));
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// One kind of damage, applied to a pathway's text and templates; each always breaks it.
fn damage(kind: usize, rng: &mut Seeded, text: &str, templates: &mut [(String, String)]) -> String {
    let mut doc: Value = serde_json::from_str(text).expect("a real pathway");
    let mut all = Vec::new();
    pointers(&doc, String::new(), &mut all);
    let matching = |pred: &dyn Fn(&str, &Value) -> bool| -> Vec<String> {
        all.iter()
            .filter(|(p, v)| pred(p, v))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let set = |doc: &mut Value, pointer: &str, v: Value| {
        if let Some(slot) = doc.pointer_mut(pointer) {
            *slot = v;
        }
    };
    match kind {
        // Cut the file short.
        0 => {
            let mut cut = 1 + rng.below(text.len().saturating_sub(2));
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            return text[..cut].to_string();
        }
        // A transition or timer to a state that does not exist.
        1 => {
            let targets =
                matching(&|p, v| p.ends_with("/to") && v.is_string() && p.contains("/states/"));
            let t = rng.pick(&targets).clone();
            let old = doc
                .pointer(&t)
                .and_then(Value::as_str)
                .unwrap_or("x")
                .to_string();
            set(&mut doc, &t, json!(format!("{old}_typo")));
        }
        // A duration that is not ISO 8601.
        2 => {
            let durations = matching(&|p, v| {
                v.as_str()
                    .is_some_and(|s| s.starts_with('P') || s.starts_with("-P"))
                    && !p.contains("description")
            });
            let d = rng.pick(&durations).clone();
            set(
                &mut doc,
                &d,
                json!(
                    rng.pick(&["P1Q", "4 days", "p4d", "PT1.5H", "P"])
                        .to_string()
                ),
            );
        }
        // A required key removed.
        3 => {
            let key = rng.pick(&[
                "id", "version", "title", "horizon", "roles", "initial", "states",
            ]);
            doc.as_object_mut().expect("object").remove(*key);
        }
        // An owner or recipient that is not a role.
        4 => {
            let roles = matching(&|p, v| {
                (p.ends_with("/owner") || p.ends_with("/notify/to")) && v.is_string()
            });
            let r = rng.pick(&roles).clone();
            set(&mut doc, &r, json!("nobody_here"));
        }
        // An unknown key somewhere.
        5 => {
            let objects = matching(&|_, v| v.is_object());
            let o = rng.pick(&objects).clone();
            if let Some(Value::Object(m)) = doc.pointer_mut(&o) {
                m.insert("colour".into(), json!("blue"));
            }
        }
        // A guard that does not parse, or is far too deep.
        6 => {
            let on = matching(&|p, v| {
                p.ends_with("/on") && v.is_array() && v.as_array().is_some_and(|a| !a.is_empty())
            });
            let o = rng.pick(&on).clone();
            let guard = if rng.below(2) == 0 {
                format!("{}fields.x{}", "(".repeat(200), ")".repeat(200))
            } else {
                "payload.x >= ".to_string()
            };
            if let Some(Value::Object(t)) = doc.pointer_mut(&format!("{o}/0")) {
                t.insert("guard".into(), json!(guard));
            }
        }
        // A cron schedule in another dialect, or that never fires.
        7 => {
            let states = matching(&|p, v| p.ends_with("/timers") && v.is_array());
            let s = rng.pick(&states).clone();
            let every = rng.pick(&["0 0 9 * * 1", "0 0 30 2 *", "0 9 * * 8", "every monday"]);
            if let Some(Value::Array(timers)) = doc.pointer_mut(&s) {
                timers.push(json!({"every": every}));
            }
        }
        // A pathway id that is not lowercase words with dashes.
        8 => {
            let id = rng.pick(&[
                "Standard Track",
                "../../etc",
                "standard\u{0}track",
                "x_y",
                "",
            ]);
            set(&mut doc, "/id", json!(id));
        }
        // A version of 0, or not a number.
        9 => {
            let v = rng
                .pick(&[json!(0), json!(-1), json!("2"), json!(1.5)])
                .clone();
            set(&mut doc, "/version", v);
        }
        // A sensitive field in a template, reached one way or another.
        10 => {
            let sensitive: Vec<String> = doc["fields"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, f)| f["sensitive"] == json!(true))
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            let field = if sensitive.is_empty() {
                doc["fields"]
                    .as_object_mut()
                    .expect("fields")
                    .insert("cpr".into(), json!({"type": "text", "sensitive": true}));
                "cpr".to_string()
            } else {
                rng.pick(&sensitive).clone()
            };
            let forms = [
                format!("{{{{fields.{field}}}}}"),
                format!("{{{{this.fields.{field}}}}}"),
                format!("{{{{@root.fields.{field}}}}}"),
                format!("{{{{#with fields}}}}{{{{{field}}}}}{{{{/with}}}}"),
                format!("{{{{lookup (lookup this \"fields\") \"{field}\"}}}}"),
                "{{#each fields}}{{this}}{{/each}}".to_string(),
            ];
            let i = rng.below(templates.len());
            let form = rng.pick(&forms).clone();
            templates[i].1.push_str(&form);
        }
        // A template that does not compile, or calls a helper wrongly.
        11 => {
            let i = rng.below(templates.len());
            let broken = rng.pick(&[
                "{{#if}}x{{/if}}",
                "{{#each x}}",
                "{{ never closed",
                "{{> partial}}",
                "{{unknown_helper x}}",
            ]);
            templates[i].1.push_str(broken);
        }
        // A huge single line of padding inside a string, past the size carepath reads.
        12 => {
            doc["description"] = json!("x".repeat(17 * 1024 * 1024));
        }
        // Deep nesting.
        13 => {
            let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
            let mut s = serde_json::to_string(&doc).expect("json");
            s.insert_str(1, &format!("\"deep\": {deep},"));
            return s;
        }
        // A negative or endless duration where only a forward one makes sense.
        14 => {
            let acks = matching(&|p, v| {
                (p.ends_with("/ack_within")
                    || p.ends_with("/after")
                    || p.ends_with("/remind_before"))
                    && v.is_string()
            });
            let a = rng.pick(&acks).clone();
            set(
                &mut doc,
                &a,
                json!(rng.pick(&["-P1D", "P10000Y"]).to_string()),
            );
        }
        // The initial state missing.
        _ => {
            set(&mut doc, "/initial", json!("nowhere"));
        }
    }
    // Damage to the templates leaves the pathway file as it was; any other must change it.
    let templates_only = kind == 10
        && doc["fields"] == serde_json::from_str::<Value>(text).expect("json")["fields"]
        || kind == 11;
    if !templates_only && serde_json::from_str::<Value>(text).ok().as_ref() == Some(&doc) {
        panic!("damage {kind} changed nothing");
    }
    serde_json::to_string_pretty(&doc).expect("json")
}

const KINDS: usize = 16;

fn write(dir: &Path, text: &str, templates: &[(String, String)]) {
    std::fs::create_dir_all(dir.join("templates")).expect("mkdir");
    std::fs::write(dir.join("pathway.json"), text).expect("write");
    for (name, body) in templates {
        std::fs::write(dir.join("templates").join(name), body).expect("write");
    }
}

fn real_pathways() -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("pathways"))
        .expect("pathways")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for d in dirs {
        let text = std::fs::read_to_string(d.join("pathway.json")).expect("pathway");
        let mut templates: Vec<(String, String)> = std::fs::read_dir(d.join("templates"))
            .expect("templates")
            .map(|e| {
                let p = e.expect("entry").path();
                (
                    p.file_name().expect("name").to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).expect("template"),
                )
            })
            .collect();
        templates.sort();
        out.push((text, templates));
    }
    out
}

fn verdict(o: &Output) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&o.stderr);
    if stderr.contains("panicked") || stderr.contains("overflow") {
        return Err(format!("crashed: {stderr}"));
    }
    match o.status.code() {
        Some(1) => {
            let v: Value = serde_json::from_slice(&o.stdout)
                .map_err(|e| format!("exit 1 without JSON diagnostics: {e}"))?;
            let located = v["diagnostics"].as_array().is_some_and(|ds| {
                ds.iter().any(|d| {
                    d["severity"] == "error"
                        && d["code"].as_str().is_some_and(|c| !c.is_empty())
                        && d["line"].as_u64() > Some(0)
                        && d["column"].as_u64() > Some(0)
                })
            });
            if located {
                Ok(())
            } else {
                Err("exit 1 without a coded, located error".into())
            }
        }
        Some(2) if !stderr.trim().is_empty() && stderr.len() < 2000 => Ok(()),
        other => Err(format!("exit {other:?}: {stderr}")),
    }
}

#[test]
fn every_broken_pathway_in_the_corpus_ends_in_a_diagnostic() {
    let dir = tempfile::tempdir().expect("tmp");
    let originals = real_pathways();
    let mut rng = Seeded(0x0ca7_e9a7);
    let mut failures = Vec::new();
    let size = std::env::var("CORPUS_DEBUG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SIZE);
    for n in 0..size {
        // Every kind of damage, in turn, to each real pathway.
        let kind = n % KINDS;
        let (text, templates) = &originals[(n / KINDS) % originals.len()];
        let mut templates = templates.clone();
        let broken = damage(kind, &mut rng, text, &mut templates);
        // Each case alone in its folder: a pathway is checked with those beside it.
        let case = dir.path().join(format!("case-{n:03}")).join("pathway");
        write(&case, &broken, &templates);
        let started = std::time::Instant::now();
        let o = carepath()
            .args(["validate", "--format", "json"])
            .arg(&case)
            .output()
            .expect("run carepath");
        if std::env::var_os("CORPUS_DEBUG").is_some() {
            eprintln!(
                "case {n} kind {kind}: {:?} {:?}",
                started.elapsed(),
                o.status.code()
            );
        }
        if let Err(why) = verdict(&o) {
            failures.push(format!("case {n} (damage {kind}): {why}"));
        }
        // A case that passed is removed; the failing ones stay for a look.
        if failures.is_empty() && std::env::var_os("CORPUS_DEBUG").is_none() {
            let _ = std::fs::remove_dir_all(dir.path().join(format!("case-{n:03}")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SIZE} broken pathways did not end in a diagnostic:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
