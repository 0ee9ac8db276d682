//! Small pathways written to a temporary folder, for runtime tests that need a shape the
//! real pathways do not have (a plain chain of timers, a weekly cron).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Writes a pathway folder `dir/<id>/` with `pathway.json` and Danish email templates that
/// say which state the family entered.
pub fn write_pathway(dir: &Path, pathway: &Value, templates: &[&str]) -> PathBuf {
    let id = pathway["id"].as_str().expect("id");
    let folder = dir.join(id);
    std::fs::create_dir_all(folder.join("templates")).expect("mkdir");
    std::fs::write(
        folder.join("pathway.json"),
        serde_json::to_string_pretty(pathway).expect("json"),
    )
    .expect("write pathway");
    for t in templates {
        std::fs::write(
            folder.join(format!("templates/{t}.da.email.hbs")),
            format!("Subject: {t} ({{{{instance.ref}}}})\n\nKære {{{{recipient.name}}}}\n\nFamilien {{{{instance.ref}}}} er nu i {{{{state.name}}}}.\n"),
        )
        .expect("write template");
    }
    folder
}

/// A chain s0 → s1 → … → s{n} (terminal), each step a timer one day after entry, each state
/// announcing itself to the coordinator; `skip` jumps to the end, `count` takes a guarded
/// payload.
pub fn chain(n: usize) -> Value {
    let mut states = serde_json::Map::new();
    for i in 0..n {
        let mut state = json!({
            "owner": "coordinator",
            "enter": [{"notify": {"to": "coordinator", "template": "entered"}}],
            "timers": [{"after": "P1D", "to": format!("s{}", i + 1)}],
            "on": [
                {"event": "skip", "to": format!("s{n}")},
                {"event": "count", "guard": "payload.n > 0", "actions": [{"notify": {"to": "coordinator", "template": "counted"}}]}
            ]
        });
        if i == 0 {
            state["on"]
                .as_array_mut()
                .expect("on")
                .push(json!({"event": "hold", "to": "held"}));
        }
        states.insert(format!("s{i}"), state);
    }
    states.insert(
        "held".into(),
        json!({"owner": "coordinator", "timers": [{"after": "P30D", "to": format!("s{n}")}], "on": [{"event": "skip", "to": format!("s{n}")}]}),
    );
    states.insert(
        format!("s{n}"),
        json!({"terminal": true, "enter": [{"notify": {"to": "coordinator", "template": "entered"}}]}),
    );
    json!({
        "id": "chain",
        "version": 1,
        "title": "Chain",
        "horizon": format!("P{}D", n + 31),
        "roles": {"coordinator": {"sector": "region"}},
        "events": {
            "skip": {},
            "hold": {},
            "count": {"payload": {"n": {"type": "int", "required": true}}}
        },
        "initial": "s0",
        "states": states
    })
}
