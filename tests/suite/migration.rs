//! Running families moved onto a corrected version of their pathway: version 1 has one
//! waiting state whose visit is due within 10 days; version 2 splits it in two and gives the
//! visit 14 days. The migration is checked (an unmapped state refuses it whole), planned per
//! family in a dry run, applied as a step of each family's own (no notice for the past, the
//! new window's escalation instead of the old one), and a second run moves nobody.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use carepath_worker::clock::Clock;
use carepath_worker::migration::{self, MigrateError};
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::{Backend, OutboxFilter, Storage};

use super::delivery::{contact, local};
use super::fixtures::write_pathway;
use super::runtime::{event, runtime as runtime_on};
use super::support::carepath;

fn visit(days: &str) -> Value {
    json!({"name": "visit", "role": "coordinator", "window": {"from": "P1D", "to": days},
           "escalate_to": "lead", "escalation_template": "late", "done_on": "visited"})
}

/// Version `version` of the pathway, starting in `initial`, with `states`.
fn splitting(version: u32, initial: &str, states: Value) -> Value {
    json!({
        "id": "splitting", "version": version, "title": "Split", "horizon": "P6M",
        "roles": {"coordinator": {"sector": "municipality"}, "lead": {"sector": "municipality"}},
        "events": {"visited": {}, "moved_on": {}},
        "initial": initial,
        "states": states
    })
}

/// Version 1: one waiting state, the visit due within 10 days.
fn version_1() -> Value {
    splitting(
        1,
        "waiting",
        json!({
            "waiting": {"owner": "coordinator", "activities": [visit("P10D")],
                        "timers": [{"after": "P30D", "to": "done"}],
                        "on": [{"event": "moved_on", "to": "done"}]},
            "done": {"terminal": true}
        }),
    )
}

/// Version 2: the waiting state split in an early and a late part; the visit within 14 days.
fn version_2() -> Value {
    splitting(
        2,
        "early",
        json!({
            "early": {"owner": "coordinator", "activities": [visit("P14D")],
                      "timers": [{"after": "P30D", "to": "done"}],
                      "on": [{"event": "moved_on", "to": "late"}]},
            "late": {"owner": "lead", "timers": [{"after": "P30D", "to": "done"}]},
            "done": {"terminal": true}
        }),
    )
}

async fn escalations(rt: &Runtime<Backend>) -> Vec<String> {
    rt.store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .into_iter()
        .filter(|n| n.template == "late")
        .map(|n| n.reference)
        .collect()
}

async fn open(
    dir: &Path,
    at: &str,
) -> (
    Runtime<Backend>,
    std::sync::Arc<carepath_worker::clock::VirtualClock>,
) {
    runtime_on(dir, &dir.join("pathways"), local(at)).await
}

#[tokio::test]
async fn running_families_move_to_a_split_state_and_a_wider_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &version_1(), &["late"]);
    let (rt, clock) = open(dir.path(), "2027-03-01T09:00").await;
    for reference in ["FAM-M1", "FAM-M2"] {
        rt.enrol(&EnrolRequest {
            reference: reference.into(),
            pathway: "splitting".into(),
            fields: Default::default(),
            contacts: BTreeMap::from([
                (
                    "coordinator".to_string(),
                    contact("Koordinator", Some("k@example.dk"), None, "da"),
                ),
                (
                    "lead".to_string(),
                    contact("Leder", Some("l@example.dk"), None, "da"),
                ),
            ]),
        })
        .await
        .expect("enrol");
    }
    clock.advance_to(local("2027-03-05T09:00"));
    let done = rt
        .apply_events(&[event("m2-visit", "FAM-M2", "visited", json!({}))])
        .await
        .expect("event");
    assert_eq!(done.len(), 1);
    rt.store().close().await;
    drop(rt);

    // The corrected version is loaded beside the first.
    write_pathway(&pathways, &version_2(), &["late"]);
    let (rt, clock) = open(dir.path(), "2027-03-06T09:00").await;
    let no_map = migration::migrate(
        &rt,
        "splitting",
        2,
        &BTreeMap::new(),
        &Default::default(),
        "cli anne",
        true,
    )
    .await;
    match no_map {
        Err(MigrateError::Unmapped { unmapped, version }) => {
            assert_eq!((unmapped, version), (vec!["waiting".to_string()], 2));
        }
        other => panic!("an unmapped state refuses the migration: {other:?}"),
    }
    let bad = migration::migrate(
        &rt,
        "splitting",
        2,
        &BTreeMap::from([("waiting".to_string(), "nowhere".to_string())]),
        &Default::default(),
        "cli anne",
        true,
    )
    .await;
    assert!(matches!(bad, Err(MigrateError::BadMap { .. })), "{bad:?}");
    let unknown = migration::migrate(
        &rt,
        "splitting",
        7,
        &BTreeMap::new(),
        &Default::default(),
        "cli anne",
        true,
    )
    .await;
    assert!(matches!(unknown, Err(MigrateError::UnknownVersion { .. })));

    let map = BTreeMap::from([("waiting".to_string(), "early".to_string())]);
    // A selection narrows it: nobody here is owned by the lead yet.
    let only_lead = carepath_worker::bulk::Selection {
        owner: Some("lead".into()),
        ..Default::default()
    };
    let none = migration::migrate(&rt, "splitting", 2, &map, &only_lead, "cli anne", true)
        .await
        .expect("plan");
    assert!(none.moves.is_empty(), "{none:?}");
    let plan = migration::migrate(
        &rt,
        "splitting",
        2,
        &map,
        &Default::default(),
        "cli anne",
        true,
    )
    .await
    .expect("plan");
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    assert_eq!(plan.moves.len(), 2);
    let by_ref = |r: &str| {
        plan.moves
            .iter()
            .find(|m| m.reference == r)
            .cloned()
            .expect("planned")
    };
    let m1 = by_ref("FAM-M1");
    assert_eq!(
        (
            m1.from_version,
            m1.from_state.as_str(),
            m1.to_state.as_str()
        ),
        (1, "waiting", "early")
    );
    let dues: Vec<jiff::Timestamp> = m1.timers_added.iter().map(|(_, due)| *due).collect();
    assert!(
        dues.contains(&local("2027-03-15T09:00")),
        "the visit's new deadline: {m1:?}"
    );
    assert!(
        dues.contains(&local("2027-03-31T09:00")),
        "30 days from the entry: {m1:?}"
    );
    assert_eq!(m1.timers_removed.len(), 2, "{m1:?}");
    let m2 = by_ref("FAM-M2");
    assert_eq!(m2.timers_added.len(), 1, "the visit was done: {m2:?}");
    // The dry run moved nothing.
    let rows = rt.store().all_instances().await.expect("instances");
    assert!(rows.iter().all(|r| r.instance.state == "waiting"));

    let moved = migration::migrate(
        &rt,
        "splitting",
        2,
        &map,
        &Default::default(),
        "cli anne",
        false,
    )
    .await
    .expect("migrate");
    assert_eq!(moved.moves.len(), 2);
    let rows = rt.store().all_instances().await.expect("instances");
    let target = rt
        .catalog()
        .versions()
        .find(|v| v.checked.pathway.version == 2)
        .map(|v| v.id)
        .expect("version 2");
    for r in &rows {
        assert_eq!(
            (r.instance.state.as_str(), r.pathway_version_id),
            ("early", target)
        );
        let history = rt.store().history(r.id).await.expect("history");
        let last = history.last().expect("a line");
        assert_eq!(
            serde_json::to_value(&last.cause).expect("json"),
            json!({"kind": "operator", "action": "migrate", "by": "cli anne"})
        );
        assert!(
            last.notes.iter().any(|n| n.contains("from version 1 to 2")),
            "{last:?}"
        );
    }
    assert!(
        escalations(&rt).await.is_empty(),
        "nothing sent by the move"
    );

    // The old deadline (11 March) passes quietly; the new one (15 March) escalates FAM-M1.
    clock.advance_to(local("2027-03-12T09:00"));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    assert!(escalations(&rt).await.is_empty());
    clock.advance_to(local("2027-03-15T10:00"));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    assert_eq!(escalations(&rt).await, ["FAM-M1"]);

    let again = migration::migrate(
        &rt,
        "splitting",
        2,
        &map,
        &Default::default(),
        "cli anne",
        false,
    )
    .await
    .expect("again");
    assert!(
        again.moves.is_empty() && again.refused.is_empty(),
        "{again:?}"
    );
    let audit = rt
        .store()
        .audit_log(&Default::default())
        .await
        .expect("audit");
    assert_eq!(audit.iter().filter(|l| l.action == "migrate").count(), 2);
    rt.store().close().await;

    // The command line plans the same way (nobody is left to move).
    let out = carepath()
        .args([
            "migrate",
            "--pathway",
            "splitting",
            "--to-version",
            "2",
            "--map",
            "waiting=early",
            "--dry-run",
            "--db",
        ])
        .arg(super::support::db_arg(dir.path()))
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 families would move, 0 refused"));
}
