//! The capacity forecast against the simulator: the same family stepped forward in memory by
//! `carepath forecast` and run on the real runtime by `carepath simulate` sends the same
//! notices to the same roles in the same weeks.

use std::collections::BTreeMap;

use jiff::civil::{Date, DateTime};
use serde_json::Value;

use super::support::{run, stdout, succeeded};

#[test]
fn the_forecast_counts_what_the_simulator_sends() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("carepath.db").to_string_lossy().to_string();
    let t0 = "fixed:2027-01-11T08:00:00Z"; // Monday 09:00 in Copenhagen, the family's enrolment
    succeeded(
        &run(&[
            "enroll",
            "examples/families/standard-track.json",
            "--db",
            &db,
            "--clock",
            t0,
        ]),
        "enroll",
    );
    succeeded(
        &run(&[
            "event",
            "FAM-0001",
            "first_exam_done",
            "--payload",
            r#"{"care_level": 1}"#,
            "--db",
            &db,
            "--clock",
            t0,
        ]),
        "first exam",
    );
    let out = run(&[
        "forecast", "--db", &db, "--clock", t0, "--weeks", "12", "--format", "json",
    ]);
    succeeded(&out, "forecast");
    let forecast: Value = serde_json::from_str(&stdout(&out)).expect("forecast JSON");
    assert_eq!(forecast["families"], 1);
    let weeks: Vec<Date> = forecast["weeks"]
        .as_array()
        .expect("weeks")
        .iter()
        .map(|w| w.as_str().expect("date").parse().expect("date"))
        .collect();
    assert_eq!(weeks.len(), 12);
    assert_eq!(
        weeks[0],
        jiff::civil::date(2027, 1, 11),
        "the week of the forecast's start"
    );
    let got: BTreeMap<String, Vec<u64>> = forecast["roles"]
        .as_object()
        .expect("roles")
        .iter()
        .map(|(r, v)| {
            (
                r.clone(),
                v.as_array()
                    .expect("counts")
                    .iter()
                    .map(|n| n.as_u64().expect("count"))
                    .collect(),
            )
        })
        .collect();

    // The same family on the real runtime, with the same first exam at enrolment.
    let script = dir.path().join("events.json");
    std::fs::write(
        &script,
        r#"[{"at": "PT0S", "event": "first_exam_done", "payload": {"care_level": 1}}]"#,
    )
    .expect("script");
    let sim = run(&[
        "simulate",
        "pathways/standard-track",
        "--family",
        "examples/families/standard-track.json",
        "--event-script",
        script.to_str().expect("utf-8"),
        "--until",
        "P12W",
        "--format",
        "json",
    ]);
    succeeded(&sim, "simulate");
    let sim: Value = serde_json::from_str(&stdout(&sim)).expect("simulation JSON");
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // Notices follow the step that made them; those of the enrolment and the first exam were
    // made before the forecast starts.
    let mut counting = false;
    for e in sim["entries"].as_array().expect("entries") {
        match e["kind"].as_str() {
            Some("transition") => {
                let cause = e["cause"].as_str().unwrap_or_default();
                counting = cause != "enrolled" && !cause.starts_with("event ");
            }
            Some("notice") if counting => {
                let at = e["at"].as_str().expect("at");
                let day: DateTime = at[..16].parse().expect("local time");
                let week = (day.date() - weeks[0]).get_days() / 7;
                if (0..12).contains(&week) {
                    let role = e["to"].as_str().expect("role").to_string();
                    expected.entry(role).or_insert_with(|| vec![0; 12])[week as usize] += 1;
                }
            }
            _ => {}
        }
    }
    let total: u64 = expected.values().flatten().sum();
    assert!(
        total >= 3,
        "the simulation sends too little to compare: {expected:?}"
    );
    assert_eq!(
        got, expected,
        "forecast (left) and simulation (right) differ"
    );
}
