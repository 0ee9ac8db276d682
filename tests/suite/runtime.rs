//! The durable runtime on a real SQLite file: enrolment, events exactly once, misfits recorded,
//! timers in due order after downtime, anchors moved, versions immutable, DST-correct cron.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use carepath_worker::catalog::{Catalog, CatalogError};
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::runtime::{EnrolError, EnrolRequest, EventRequest, Runtime};
use carepath_worker::store::{
    Backend, Contact, NoticeStatus, OutboxFilter, Outcome, SqliteStore, Storage, StoreError,
};

use super::fixtures::{chain, write_pathway};
use super::support::{fresh_store, root};

fn t(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn contact(name: &str) -> Contact {
    Contact {
        name: name.into(),
        email: Some(format!("{}@example.dk", name.to_lowercase())),
        phone: None,
        language: "da".into(),
        channel: None,
    }
}

/// A runtime on a fresh database file in `dir`, with the pathways under `pathways`.
pub(super) async fn runtime(
    dir: &Path,
    pathways: &Path,
    start: Timestamp,
) -> (Runtime<Backend>, Arc<VirtualClock>) {
    let store = fresh_store(dir).await;
    let (catalog, _) = Catalog::sync(&store, &[pathways.to_path_buf()], start)
        .await
        .expect("load pathways");
    let clock = Arc::new(VirtualClock::new(start));
    (
        Runtime::new(store, catalog, clock.clone() as Arc<dyn Clock>),
        clock,
    )
}

pub(super) fn event(key: &str, reference: &str, name: &str, payload: Value) -> EventRequest {
    EventRequest {
        instance_id: None,
        key: key.into(),
        reference: reference.into(),
        pathway: None,
        event: name.into(),
        payload,
        contacts: Default::default(),
    }
}

fn enrol_chain(reference: &str) -> EnrolRequest {
    EnrolRequest {
        reference: reference.into(),
        pathway: "chain".into(),
        fields: Default::default(),
        contacts: BTreeMap::from([("coordinator".into(), contact("Koordinator"))]),
    }
}

#[tokio::test]
async fn an_event_is_applied_once_per_key_and_a_misfit_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    write_pathway(dir.path(), &chain(3), &["entered", "counted"]);
    let (rt, _) = runtime(dir.path(), dir.path(), t("2027-03-01T08:00:00Z")).await;
    let enrolled = rt.enrol(&enrol_chain("FAM-1")).await.expect("enrol");
    assert_eq!(enrolled.state, "s0");

    let first = rt
        .apply_events(&[event("k1", "FAM-1", "count", json!({"n": 2}))])
        .await
        .expect("apply");
    assert_eq!(first[0].record.outcome, Outcome::Applied);
    assert!(!first[0].replayed);
    // The same key again, alone and twice within one batch: acknowledged, not applied.
    let again = rt
        .apply_events(&[
            event("k1", "FAM-1", "count", json!({"n": 2})),
            event("k2", "FAM-1", "count", json!({"n": 1})),
            event("k2", "FAM-1", "count", json!({"n": 1})),
        ])
        .await
        .expect("apply");
    assert!(again[0].replayed && again[0].record == first[0].record);
    assert!(!again[1].replayed);
    assert!(again[2].replayed);
    let inst = &rt.store().instances_by_ref("FAM-1").await.expect("read")[0];
    let history = rt.store().history(inst.id).await.expect("history");
    assert_eq!(history.len(), 3, "enrolment and two counts: {history:?}");
    let counted = rt
        .store()
        .outbox(&OutboxFilter {
            instance_id: Some(inst.id),
            ..Default::default()
        })
        .await
        .expect("outbox")
        .iter()
        .filter(|n| n.template == "counted")
        .count();
    assert_eq!(counted, 2);

    // Misfits: each refused with its reason, recorded, and the instance untouched.
    let before = rt.store().instances_by_ref("FAM-1").await.expect("read")[0]
        .instance
        .clone();
    let misfits = rt
        .apply_events(&[
            event("m1", "FAM-404", "count", json!({"n": 1})),
            event("m2", "FAM-1", "no_such_event", Value::Null),
            event("m3", "FAM-1", "count", json!({"n": "three"})),
            event("m4", "FAM-1", "count", json!({"n": 0})),
        ])
        .await
        .expect("apply");
    let codes: Vec<_> = misfits
        .iter()
        .map(|r| (r.record.outcome, r.record.code.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (Outcome::Rejected, "unknown-instance".to_string()),
            (Outcome::Rejected, "unknown-event".to_string()),
            (Outcome::Rejected, "bad-payload".to_string()),
            (Outcome::Rejected, "guard-false".to_string()),
        ]
    );
    assert!(
        misfits[2]
            .record
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("/n")),
        "the reason points into the payload: {:?}",
        misfits[2].record.reason
    );
    let after = rt.store().instances_by_ref("FAM-1").await.expect("read")[0]
        .instance
        .clone();
    assert_eq!(before, after);
    let recorded = rt.store().events("FAM-1").await.expect("events");
    assert_eq!(
        recorded
            .iter()
            .filter(|e| e.outcome == Outcome::Rejected)
            .count(),
        3
    );
    assert_eq!(rt.store().events("FAM-404").await.expect("events").len(), 1);
}

#[tokio::test]
async fn timers_fire_in_due_order_after_downtime_and_timers_of_a_left_state_never_fire() {
    let dir = tempfile::tempdir().expect("tmp");
    write_pathway(dir.path(), &chain(4), &["entered", "counted"]);
    let start = t("2027-03-01T08:00:00Z");
    let (rt, clock) = runtime(dir.path(), dir.path(), start).await;
    for i in 0..5 {
        rt.enrol(&enrol_chain(&format!("FAM-{i}")))
            .await
            .expect("enrol");
    }
    // FAM-0 leaves s0 for `held` at once: its s0 timer must never fire.
    rt.apply_events(&[event("h", "FAM-0", "hold", Value::Null)])
        .await
        .expect("hold");
    // The worker was down for ten days: everything due meanwhile fires, in due order, each
    // step stamped with its due time.
    clock.advance_to(t("2027-03-11T08:00:00Z"));
    let fired = rt.fire_due(clock.now(), 3).await.expect("fire");
    assert_eq!(fired, 4 * 4, "four families, four steps each");
    for i in 1..5 {
        let inst = &rt
            .store()
            .instances_by_ref(&format!("FAM-{i}"))
            .await
            .expect("read")[0];
        assert_eq!(inst.instance.state, "s4");
        let history = rt.store().history(inst.id).await.expect("history");
        let times: Vec<Timestamp> = history.iter().map(|h| h.at).collect();
        let expected: Vec<Timestamp> = (0..5)
            .map(|d| start + jiff::SignedDuration::from_hours(24 * d))
            .collect();
        assert_eq!(times, expected, "each step at its due time");
        assert!(rt.store().timers(inst.id).await.expect("timers").is_empty());
    }
    let held = &rt.store().instances_by_ref("FAM-0").await.expect("read")[0];
    assert_eq!(held.instance.state, "held");
    let mut timers = rt.store().timers(held.id).await.expect("timers");
    // The horizon belongs to the instance, armed at enrolment: P35D from 1 March.
    let horizon = timers
        .iter()
        .position(|t| t.key == "horizon")
        .expect("horizon");
    assert_eq!(timers.remove(horizon).due, t("2027-04-05T07:00:00Z"));
    assert_eq!(timers.len(), 1, "only held's own timer: {timers:?}");
    // Thirty calendar days from 09:00 CET is 09:00 CEST: summer time began on 28 March.
    assert_eq!(timers[0].due, t("2027-03-31T07:00:00Z"));
}

#[tokio::test]
async fn an_event_after_a_missed_deadline_sees_the_deadline_pass_first() {
    let dir = tempfile::tempdir().expect("tmp");
    write_pathway(dir.path(), &chain(3), &["entered", "counted"]);
    let start = t("2027-03-01T08:00:00Z");
    let (rt, clock) = runtime(dir.path(), dir.path(), start).await;
    rt.enrol(&enrol_chain("FAM-1")).await.expect("enrol");
    // No worker ran; 36 hours later an event arrives. The s0 timer (due after 24 h) fires
    // first, so `hold` (allowed only in s0) is refused, whenever the worker gets round to it.
    clock.advance_to(t("2027-03-02T20:00:00Z"));
    let r = rt
        .apply_events(&[event("late", "FAM-1", "hold", Value::Null)])
        .await
        .expect("apply");
    assert_eq!(r[0].record.code.as_deref(), Some("event-not-allowed"));
    let inst = &rt.store().instances_by_ref("FAM-1").await.expect("read")[0];
    assert_eq!(inst.instance.state, "s1");
}

#[tokio::test]
async fn an_early_birth_moves_every_birth_anchored_timer_and_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let start = t("2027-01-11T08:00:00Z");
    let (rt, clock) = runtime(dir.path(), &root().join("pathways"), start).await;
    let family: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/families/standard-track.json"))
            .expect("family"),
    )
    .expect("json");
    let contacts: BTreeMap<String, Contact> =
        serde_json::from_value(family["contacts"].clone()).expect("contacts");
    rt.enrol(&EnrolRequest {
        reference: "FAM-1".into(),
        pathway: "standard-track".into(),
        fields: family["fields"].as_object().expect("fields").clone(),
        contacts,
    })
    .await
    .expect("enrol");
    rt.apply_events(&[event(
        "e1",
        "FAM-1",
        "first_exam_done",
        json!({"care_level": 1}),
    )])
    .await
    .expect("first exam");
    clock.advance_to(t("2027-07-20T10:00:00Z"));
    let r = rt
        .apply_events(&[event(
            "birth",
            "FAM-1",
            "birth_registered",
            json!({"birth_date": "2027-07-20"}),
        )])
        .await
        .expect("birth");
    assert_eq!(
        r[0].transition,
        Some(("pregnancy".to_string(), "newborn".to_string()))
    );
    let inst = &rt.store().instances_by_ref("FAM-1").await.expect("read")[0];
    let timers = rt.store().timers(inst.id).await.expect("timers");
    // The state's timer to infancy: birth + 7 weeks, 09:00 Copenhagen (summer time: 07:00Z).
    let dues: Vec<Timestamp> = timers.iter().map(|t| t.due).collect();
    assert!(
        dues.contains(&t("2027-09-07T07:00:00Z")),
        "birth + 7 weeks at 09:00 local among {dues:?}"
    );
    // The postnatal visit reminder: window from birth + 4 days, reminded a day before.
    assert!(
        dues.contains(&t("2027-07-23T07:00:00Z")),
        "postnatal reminder at birth + 3 days among {dues:?}"
    );
    // The timers match what the instance itself holds: the table is an index, not a copy
    // that can drift.
    let mut held: Vec<(String, Timestamp)> = inst
        .instance
        .timers
        .iter()
        .map(|t| (t.key.clone(), t.due))
        .collect();
    let mut stored: Vec<(String, Timestamp)> =
        timers.iter().map(|t| (t.key.clone(), t.due)).collect();
    held.sort();
    stored.sort();
    assert_eq!(held, stored);
    // The handoff notice reached the outbox rendered, with nothing sensitive in it.
    let mut notices = rt
        .store()
        .outbox(&OutboxFilter {
            instance_id: Some(inst.id),
            ..Default::default()
        })
        .await
        .expect("outbox");
    // Rendered at delivery: shown as a listing shows it.
    rt.catalog().preview(&mut notices);
    let birth = notices
        .iter()
        .find(|n| n.template == "birth_notice")
        .expect("birth notice");
    assert_eq!(birth.status, NoticeStatus::Queued);
    assert_eq!(
        birth.address.as_deref(),
        Some("sundhedspleje@kk.example.dk")
    );
    assert!(
        birth
            .text
            .subject
            .as_deref()
            .is_some_and(|s| s.contains("FAM-1"))
    );
    for n in &notices {
        let text = format!("{:?}{:?}", n.text.subject, n.text.body);
        assert!(!text.contains("0101901234"), "CPR in {}", n.template);
        assert!(!text.contains("2027-08-20"), "due date in {}", n.template);
    }

    // The birth is registered once: a second registration is refused and recorded.
    let r = rt
        .apply_events(&[event(
            "dup",
            "FAM-1",
            "birth_registered",
            json!({"birth_date": "2027-07-19"}),
        )])
        .await
        .expect("apply");
    assert_eq!(
        r[0].record.outcome,
        Outcome::Rejected,
        "newborn does not take a second birth"
    );
}

#[tokio::test]
async fn a_weekly_cron_keeps_local_time_across_daylight_saving() {
    let dir = tempfile::tempdir().expect("tmp");
    let pathway = json!({
        "id": "weekly",
        "version": 1,
        "title": "Weekly",
        "horizon": "P2M",
        "roles": {"volunteer": {"sector": "civil_society"}},
        "events": {"stop": {}},
        "initial": "active",
        "states": {
            "active": {
                "owner": "volunteer",
                "timers": [
                    {"every": "0 10 * * MON", "actions": [{"notify": {"to": "volunteer", "template": "visit"}}]},
                    {"after": "P5W", "to": "done"}
                ],
                "on": [{"event": "stop", "to": "done"}]
            },
            "done": {"terminal": true}
        }
    });
    write_pathway(dir.path(), &pathway, &["visit"]);
    // Monday 15 March 2027; summer time begins on Sunday 28 March.
    let start = t("2027-03-15T12:00:00Z");
    let (rt, clock) = runtime(dir.path(), dir.path(), start).await;
    rt.enrol(&EnrolRequest {
        reference: "FAM-1".into(),
        pathway: "weekly".into(),
        fields: Default::default(),
        contacts: BTreeMap::from([("volunteer".into(), contact("Frivillig"))]),
    })
    .await
    .expect("enrol");
    clock.advance_to(t("2027-05-01T00:00:00Z"));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    let inst = &rt.store().instances_by_ref("FAM-1").await.expect("read")[0];
    let history = rt.store().history(inst.id).await.expect("history");
    let fired: Vec<String> = history
        .iter()
        .skip(1)
        .filter(|h| h.to == "active")
        .map(|h| h.at.to_string())
        .collect();
    assert_eq!(
        fired,
        [
            "2027-03-22T09:00:00Z", // 10:00 CET
            "2027-03-29T08:00:00Z", // 10:00 CEST
            "2027-04-05T08:00:00Z",
            "2027-04-12T08:00:00Z",
            "2027-04-19T08:00:00Z", // 10:00, before the five weeks end at 13:00
        ]
    );
    assert_eq!(inst.instance.state, "done");
}

#[tokio::test]
async fn enrolment_refuses_bad_input_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    write_pathway(dir.path(), &chain(2), &["entered", "counted"]);
    let (rt, _) = runtime(dir.path(), dir.path(), t("2027-03-01T08:00:00Z")).await;
    let cpr = rt
        .enrol(&enrol_chain("010190-1234"))
        .await
        .expect_err("cpr");
    assert!(matches!(cpr, EnrolError::BadReference { .. }), "{cpr}");
    assert!(!cpr.to_string().contains("1234"), "{cpr}");
    let mut unknown = enrol_chain("FAM-1");
    unknown.pathway = "chian".into();
    let e = rt.enrol(&unknown).await.expect_err("unknown pathway");
    assert!(e.to_string().contains("chain"), "lists what is loaded: {e}");
    let mut field = enrol_chain("FAM-1");
    field.fields.insert("due_date".into(), json!("2027-08-20"));
    let e = rt.enrol(&field).await.expect_err("undeclared field");
    assert!(e.to_string().contains("due_date"), "{e}");
    let mut role = enrol_chain("FAM-1");
    role.contacts
        .insert("midwife".into(), contact("Jordemoder"));
    let e = rt.enrol(&role).await.expect_err("unknown role");
    assert!(e.to_string().contains("midwife"), "{e}");
    let mut phone = enrol_chain("FAM-1");
    phone.contacts.insert(
        "coordinator".into(),
        Contact {
            phone: Some("12345678".into()),
            ..contact("K")
        },
    );
    let e = rt.enrol(&phone).await.expect_err("bad phone");
    assert!(e.to_string().contains("international"), "{e}");
    assert!(rt.store().all_instances().await.expect("read").is_empty());

    rt.enrol(&enrol_chain("FAM-1")).await.expect("enrol");
    let e = rt.enrol(&enrol_chain("FAM-1")).await.expect_err("twice");
    assert!(matches!(e, EnrolError::AlreadyEnrolled { .. }), "{e}");
}

/// FAM-1 on a two-state chain, with no contact for any role.
async fn enrolled_with_nobody() -> (Runtime<Backend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    write_pathway(dir.path(), &chain(2), &["entered", "counted"]);
    let (rt, _) = runtime(dir.path(), dir.path(), t("2027-03-01T08:00:00Z")).await;
    let mut req = enrol_chain("FAM-1");
    req.contacts.clear();
    rt.enrol(&req).await.expect("enrol");
    (rt, dir)
}

#[tokio::test]
async fn a_notice_to_a_role_nobody_plays_is_dead_lettered_not_dropped() {
    let (rt, _dir) = enrolled_with_nobody().await;
    let dead = rt
        .store()
        .outbox(&OutboxFilter {
            status: Some(NoticeStatus::Dead),
            ..Default::default()
        })
        .await
        .expect("outbox");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("coordinator")),
        "{:?}",
        dead[0].last_error
    );
}

#[tokio::test]
async fn an_event_assigns_contacts_only_if_it_is_applied() {
    let (rt, _dir) = enrolled_with_nobody().await;
    let with = |key: &str, payload: Value, role: &str, c: Contact| {
        let mut e = event(key, "FAM-1", "count", payload);
        e.contacts = [(role.to_string(), c)].into();
        e
    };
    let refused = rt
        .apply_events(&[
            // A role the pathway does not have, and a payload that fails the guard: both
            // refused, recorded, and neither assigns anybody.
            with("k1", json!({"n": 1}), "volunteer", contact("Vera")),
            with("k2", json!({"n": 0}), "coordinator", contact("Nils")),
        ])
        .await
        .expect("apply");
    assert_eq!(refused[0].record.outcome, Outcome::Rejected);
    assert_eq!(refused[0].record.code.as_deref(), Some("bad-contact"));
    assert!(
        refused[0]
            .record
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("volunteer")),
        "{:?}",
        refused[0].record.reason
    );
    assert_eq!(refused[1].record.outcome, Outcome::Rejected);
    let row = &rt.store().instances_by_ref("FAM-1").await.expect("read")[0];
    assert!(row.roles.is_empty(), "{:?}", row.roles);

    // Applied: the coordinator is Bo from this event on, its own notice included.
    let applied = rt
        .apply_events(&[with("k3", json!({"n": 1}), "coordinator", contact("Bo"))])
        .await
        .expect("apply");
    assert_eq!(applied[0].record.outcome, Outcome::Applied);
    let counted = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .into_iter()
        .filter(|n| n.template == "counted")
        .map(|n| (n.recipient, n.address, n.status))
        .collect::<Vec<_>>();
    assert_eq!(
        counted,
        [(
            Some("Bo".to_string()),
            Some("bo@example.dk".to_string()),
            NoticeStatus::Queued
        )]
    );
    let history = rt.store().history(row.id).await.expect("history");
    assert!(
        history.iter().any(|h| h
            .notes
            .iter()
            .any(|n| n == "contact assigned for coordinator")),
        "{history:?}"
    );
    // Kept: a later event, in a batch of its own, still reaches Bo.
    let row = &rt.store().instances_by_ref("FAM-1").await.expect("read")[0];
    assert_eq!(row.roles.keys().collect::<Vec<_>>(), ["coordinator"]);
    rt.apply_events(&[event("k4", "FAM-1", "count", json!({"n": 1}))])
        .await
        .expect("apply");
    let to: Vec<Option<String>> = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .into_iter()
        .filter(|n| n.template == "counted")
        .map(|n| n.recipient)
        .collect();
    assert_eq!(to, [Some("Bo".to_string()), Some("Bo".to_string())]);
}

#[tokio::test]
async fn versions_are_immutable_and_instances_stay_on_theirs() {
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    let mut p = chain(2);
    write_pathway(&pathways, &p, &["entered", "counted"]);
    let (rt, clock) = runtime(dir.path(), &pathways, t("2027-03-01T08:00:00Z")).await;
    rt.enrol(&enrol_chain("FAM-1")).await.expect("enrol");

    // The same version with changed content is refused, and nothing is stored.
    p["title"] = json!("Chain, retitled");
    write_pathway(&pathways, &p, &["entered", "counted"]);
    let e = Catalog::sync(rt.store(), std::slice::from_ref(&pathways), clock.now())
        .await
        .expect_err("changed");
    assert!(
        matches!(e, CatalogError::Store(StoreError::VersionChanged { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("new \"version\""), "{e}");
    assert_eq!(rt.store().pathways().await.expect("read").len(), 1);

    // A new version is stored beside the old; the running instance stays on version 1.
    p["version"] = json!(2);
    p["states"]["s0"]["timers"][0]["after"] = json!("P3D");
    write_pathway(&pathways, &p, &["entered", "counted"]);
    let (catalog, loaded) = Catalog::sync(rt.store(), std::slice::from_ref(&pathways), clock.now())
        .await
        .expect("v2");
    assert!(loaded[0].added);
    let store = rt.store().clone();
    let rt2 = Runtime::new(store, catalog, clock.clone() as Arc<dyn Clock>);
    rt2.enrol(&enrol_chain("FAM-2")).await.expect("enrol v2");
    let one = &rt2.store().instances_by_ref("FAM-1").await.expect("read")[0];
    let two = &rt2.store().instances_by_ref("FAM-2").await.expect("read")[0];
    assert_ne!(one.pathway_version_id, two.pathway_version_id);
    assert_eq!(
        one.instance.timers[0].due,
        t("2027-03-02T08:00:00Z"),
        "v1: one day"
    );
    assert_eq!(
        two.instance.timers[0].due,
        t("2027-03-04T08:00:00Z"),
        "v2: three days"
    );
    // The old version still runs.
    clock.advance_to(t("2027-03-02T08:00:00Z"));
    rt2.fire_due(clock.now(), 10).await.expect("fire");
    let one = &rt2.store().instances_by_ref("FAM-1").await.expect("read")[0];
    assert_eq!(one.instance.state, "s1");
}

#[tokio::test]
async fn a_damaged_database_file_gets_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("carepath.db");
    std::fs::write(&path, vec![0x42u8; 8192]).expect("write");
    let e = SqliteStore::open(&path).await.expect_err("damaged");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("backup"), "{e}");
    let e = SqliteStore::open(&dir.path().join("no/such/folder/x.db"))
        .await
        .expect_err("no folder");
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
}
