//! Who is waited on: a handoff not acknowledged in time and an activity whose window closed
//! stay on the instance as overdue until the late acknowledgement or contact comes.

mod common;

use carepath_engine::step::{OverdueKind, Purpose};
use carepath_engine::{CheckedPathway, Input, Instance, start, step};
use jiff::Timestamp;
use serde_json::json;

/// The standard track, checked with the pathways it refers families to.
fn standard_track() -> CheckedPathway {
    common::real_pathways()
        .into_iter()
        .find(|p| p.pathway.id == "standard-track")
        .expect("the standard track")
}

fn fire(p: &CheckedPathway, i: &Instance, what: impl Fn(&Purpose) -> bool) -> Instance {
    let t = i
        .timers
        .iter()
        .find(|t| what(&t.purpose))
        .unwrap_or_else(|| panic!("no such timer among {:?}", i.timers))
        .clone();
    let e = step(p, i, &Input::Timer { key: t.key }, t.due).expect("timer fires");
    e.instance
}

fn event(p: &CheckedPathway, i: &Instance, name: &str, at: Timestamp) -> (Instance, Vec<String>) {
    let e = step(
        p,
        i,
        &Input::Event {
            name: name.into(),
            payload: json!({}),
        },
        at,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    (e.instance, e.history.notes)
}

#[test]
fn a_late_handoff_and_a_missed_contact_are_overdue_until_they_come() {
    let p = standard_track();
    let t0: Timestamp = "2027-01-04T08:00:00Z".parse().expect("time");
    let mut fields = serde_json::Map::new();
    fields.insert("due_date".into(), json!("2027-08-20"));
    let i = start(&p, fields, t0).expect("enrol").instance;
    let i = step(
        &p,
        &i,
        &Input::Event {
            name: "first_exam_done".into(),
            payload: json!({"care_level": 2}),
        },
        t0,
    )
    .expect("first exam")
    .instance;
    assert_eq!(i.state, "pregnancy");
    assert!(i.overdue.is_empty());

    // The midwife does not acknowledge within five days.
    let deadline = i
        .timers
        .iter()
        .find(|t| matches!(t.purpose, Purpose::HandoffDeadline { .. }))
        .expect("handoff deadline")
        .due;
    let i = fire(&p, &i, |p| matches!(p, Purpose::HandoffDeadline { .. }));
    assert_eq!(i.overdue.len(), 1, "{:?}", i.overdue);
    let o = &i.overdue[0];
    assert_eq!(o.kind, OverdueKind::Handoff);
    assert_eq!(
        (o.name.as_str(), o.role.as_str()),
        ("referral_accepted", "midwife")
    );
    assert_eq!(o.since, deadline);
    assert_eq!(i.overdue_since(), Some(deadline));

    // The nuchal scan's window closes with no scan recorded.
    let i = fire(
        &p,
        &i,
        |p| matches!(p, Purpose::ActivityOverdue { activity } if activity == "nuchal_scan"),
    );
    assert_eq!(i.overdue.len(), 2);
    assert_eq!(
        i.overdue_since(),
        Some(deadline),
        "the oldest deadline leads"
    );

    // The acknowledgement comes late: accepted, and nobody waits on the midwife's answer.
    let (i, notes) = event(
        &p,
        &i,
        "referral_accepted",
        deadline + jiff::SignedDuration::from_hours(240),
    );
    assert!(
        notes.iter().any(|n| n.contains("acknowledged late")),
        "{notes:?}"
    );
    assert_eq!(i.overdue.len(), 1);
    assert_eq!(i.overdue[0].kind, OverdueKind::Activity);

    // The scan is recorded late: nothing is overdue.
    let (i, _) = event(
        &p,
        &i,
        "nuchal_scan_done",
        deadline + jiff::SignedDuration::from_hours(480),
    );
    assert!(i.overdue.is_empty(), "{:?}", i.overdue);
    assert_eq!(i.overdue_since(), None);
}

#[test]
fn leaving_the_state_ends_the_wait() {
    let p = standard_track();
    let t0: Timestamp = "2027-01-04T08:00:00Z".parse().expect("time");
    let mut fields = serde_json::Map::new();
    fields.insert("due_date".into(), json!("2027-08-20"));
    let i = start(&p, fields, t0).expect("enrol").instance;
    let i = fire(
        &p,
        &i,
        |p| matches!(p, Purpose::ActivityOverdue { activity } if activity == "first_exam"),
    );
    assert_eq!(i.overdue.len(), 1);
    let (i, _) = event(
        &p,
        &i,
        "moved_away",
        t0 + jiff::SignedDuration::from_hours(24 * 60),
    );
    assert!(
        i.overdue.is_empty(),
        "{} still waits on {:?}",
        i.state,
        i.overdue
    );
}
