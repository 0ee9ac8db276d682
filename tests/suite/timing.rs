//! Time and messages families and professionals can trust, through the real runtime: cron as
//! crontab(5) reads it across daylight saving, never a stale message, escalations the day after
//! a window, late enrolment, the horizon as a hard stop, a timer that cannot be armed is told,
//! idempotency keys that conflict, and what the SMS gateway is sent.

use serde_json::{Value, json};

use carepath_engine::step::Cause;
use carepath_worker::clock::Clock;
use carepath_worker::delivery::Notifier;
use carepath_worker::runtime::{EnrolError, EnrolRequest, EventRequest, Runtime};
use carepath_worker::store::{Backend, Contact, NoticeStatus, Storage};

use super::delivery::{
    accepting_gateway, enrol, event_keyed, gateway, local, requests, rows, runtime, sms_notifier,
};
use super::fixtures::write_pathway;
use super::runtime::runtime as runtime_on;
use super::support::{run, stdout};

fn coordinator() -> Contact {
    Contact {
        name: "Koordinator".into(),
        email: Some("koordinator@example.dk".into()),
        phone: Some("+4520000001".into()),
        language: "da".into(),
        channel: None,
    }
}

/// A one-state pathway with `timers` (each a JSON timer), left only on `skip`.
fn tracked(id: &str, horizon: &str, timers: Value, extra: Value) -> Value {
    let mut p = json!({
        "id": id,
        "version": 1,
        "title": "Tracked",
        "horizon": horizon,
        "roles": {"coordinator": {"sector": "municipality"}},
        "fields": {"birth_date": {"type": "date"}},
        "events": {"skip": {}, "born": {"payload": {"birth_date": {"type": "date", "required": true}}}},
        "initial": "tracked",
        "states": {
            "tracked": {
                "owner": "coordinator",
                "timers": timers,
                "on": [
                    {"event": "skip", "to": "done"},
                    {"event": "born", "to": "infant", "actions": [{"set": {"field": "birth_date", "expr": "payload.birth_date"}}]}
                ]
            },
            "infant": {
                "owner": "coordinator",
                "timers": [{"name": "one_month_old", "at": {"anchor": "birth_date", "offset": "P1M"}, "to": "done"}],
                "on": [{"event": "skip", "to": "done"}]
            },
            "done": {"terminal": true}
        }
    });
    if extra.get("on_horizon").is_some() {
        p["states"]["closed"] = json!({"terminal": true});
    }
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    p
}

/// A runtime from 11 January 2027, 09:00, on the `tracked` pathway `id` with `timers`,
/// written into `dir` with an email template "entered".
async fn tracked_runtime(
    dir: &std::path::Path,
    id: &str,
    horizon: &str,
    timers: Value,
) -> (
    Runtime<Backend>,
    std::sync::Arc<carepath_worker::clock::VirtualClock>,
) {
    write_pathway(dir, &tracked(id, horizon, timers, json!({})), &["entered"]);
    runtime_on(dir, dir, local("2027-01-11T09:00")).await
}

async fn enrol_tracked(rt: &Runtime<Backend>, id: &str, reference: &str) {
    rt.enrol(&EnrolRequest {
        reference: reference.into(),
        pathway: id.into(),
        fields: Default::default(),
        contacts: [("coordinator".to_string(), coordinator())].into(),
    })
    .await
    .expect("enrol");
}

fn timer_fired_at(history: &[carepath_engine::step::History], name: &str) -> Vec<String> {
    history
        .iter()
        .filter(|h| matches!(&h.cause, Cause::Timer { name: Some(n), .. } if n == name))
        .map(|h| {
            h.at.to_zoned_datetime(jiff::tz::TimeZone::get("Europe/Copenhagen").expect("tz"))
                .strftime("%a %Y-%m-%d %H:%M %:z")
                .to_string()
        })
        .collect()
}

async fn history_of(rt: &Runtime<Backend>, reference: &str) -> Vec<carepath_engine::step::History> {
    let inst = &rt.store().instances_by_ref(reference).await.expect("read")[0];
    rt.store().history(inst.id).await.expect("history")
}

#[tokio::test]
async fn cron_reads_weekdays_as_crontab_and_fires_once_on_both_dst_days() {
    let dir = tempfile::tempdir().expect("tmp");
    let timers = json!([
        {"name": "weekly", "every": "0 9 * * 1", "actions": [{"notify": {"to": "coordinator", "template": "entered"}}]},
        {"name": "nightly", "every": "30 2 * * *", "actions": [{"notify": {"to": "coordinator", "template": "counted"}}]}
    ]);
    write_pathway(
        dir.path(),
        &tracked("weekly", "P12M", timers, json!({})),
        &["entered", "counted"],
    );
    // Wednesday 24 March 2027, noon.
    let (rt, clock) = runtime_on(dir.path(), dir.path(), local("2027-03-24T12:00")).await;
    enrol_tracked(&rt, "weekly", "FAM-CRON").await;
    clock.advance_to(local("2027-11-02T12:00"));
    rt.fire_due(clock.now(), 500).await.expect("fire");
    let history = history_of(&rt, "FAM-CRON").await;

    // "1" is Monday, as in crontab(5): not Sunday, as the Quartz numbering read it.
    let weekly = timer_fired_at(&history, "weekly");
    assert_eq!(
        &weekly[..2],
        ["Mon 2027-03-29 09:00 +02:00", "Mon 2027-04-05 09:00 +02:00"]
    );
    assert!(weekly.iter().all(|w| w.starts_with("Mon")), "{weekly:?}");

    let nightly = timer_fired_at(&history, "nightly");
    let around =
        |day: &str| -> Vec<&String> { nightly.iter().filter(|n| n.contains(day)).collect() };
    // Spring forward: 02:30 does not exist on 28 March; it fires once, at 03:00.
    assert_eq!(around("2027-03-28"), ["Sun 2027-03-28 03:00 +02:00"]);
    assert_eq!(around("2027-03-29"), ["Mon 2027-03-29 02:30 +02:00"]);
    // Fall back: 02:30 happens twice on 31 October; it fires once, at the first.
    assert_eq!(around("2027-10-31"), ["Sun 2027-10-31 02:30 +02:00"]);
    assert_eq!(around("2027-11-01"), ["Mon 2027-11-01 02:30 +01:00"]);
    // Every night once, from 25 March to 2 November.
    assert_eq!(nightly.len(), 223, "{:?}", &nightly[..3]);
}

#[test]
fn validate_refuses_quartz_cron_and_schedules_that_never_fire_in_the_coordinators_words() {
    let dir = tempfile::tempdir().expect("tmp");
    for (id, every) in [
        ("six", "0 0 9 * * 1"),
        ("never", "0 0 30 2 *"),
        ("eight", "0 9 * * 8"),
    ] {
        let timers = json!([{"every": every, "actions": [{"notify": {"to": "coordinator", "template": "entered"}}]}]);
        write_pathway(
            dir.path(),
            &tracked(id, "P12M", timers, json!({})),
            &["entered"],
        );
    }
    let out = run(&["validate", &dir.path().to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for expected in [
        "error[bad-cron]: invalid cron schedule \"0 0 9 * * 1\": expected 5 fields (minute hour day-of-month month day-of-week), found 6: carepath reads standard crontab schedules, without a seconds or year field",
        "error[bad-cron]: invalid cron schedule \"0 0 30 2 *\": it never fires: no date matches its day and month",
        "error[bad-cron]: invalid cron schedule \"0 9 * * 8\": day of week \"8\": 8 is out of range",
    ] {
        assert!(text.contains(expected), "{expected}\nnot in:\n{text}");
    }
    // The caret sits under the coordinator's own text, not under an internal echo.
    assert!(text.contains("\"every\": \"0 0 9 * * 1\""), "{text}");
}

async fn standard_family(
    rt: &Runtime<Backend>,
    clock: &carepath_worker::clock::VirtualClock,
    reference: &str,
) {
    enrol(rt, reference, "jordemoder@example.dk", "da").await;
    clock.advance_to(local("2027-01-12T09:00"));
    apply(
        rt,
        reference,
        "exam",
        "first_exam_done",
        json!({"care_level": 2}),
    )
    .await;
    apply(rt, reference, "accepted", "referral_accepted", json!({})).await;
}

async fn apply(rt: &Runtime<Backend>, reference: &str, key: &str, name: &str, payload: Value) {
    event_keyed(rt, reference, key, name, payload).await;
}

async fn book(rt: &Runtime<Backend>, reference: &str, key: &str, name: &str, at: &str) {
    apply(
        rt,
        reference,
        key,
        name,
        json!({"appointment_id": "scan-1", "at": at, "place": "Hvidovre Hospital"}),
    )
    .await;
}

async fn notifier(server: &wiremock::MockServer) -> Notifier {
    sms_notifier(gateway(server).await)
}

#[tokio::test]
async fn a_reminder_that_quiet_hours_would_hold_past_its_appointment_expires_unsent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = accepting_gateway().await;
    let (rt, clock) = runtime(dir.path()).await;
    standard_family(&rt, &clock, "FAM-EARLY").await;
    // Monday 15 February at 07:45: reminders Saturday 07:45 (held to 10:00, then sent) and
    // Monday 04:45, which quiet hours would hold until 08:00, after the appointment.
    book(
        &rt,
        "FAM-EARLY",
        "book",
        "appointment_booked",
        "2027-02-15T07:45:00+01:00",
    )
    .await;
    let notifier = notifier(&server).await;
    for at in [
        "2027-02-13T07:45",
        "2027-02-13T10:00",
        "2027-02-15T04:45",
        "2027-02-15T08:00",
    ] {
        let now = local(at);
        clock.advance_to(now);
        rt.fire_due(now, 100).await.expect("fire");
        notifier.deliver(rt.store(), now).await.expect("deliver");
    }
    let got = requests(&server).await;
    assert_eq!(got.len(), 1, "only Saturday's reminder goes out");
    let body: Value = serde_json::from_slice(&got[0].body).expect("json");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("kl. 07.45"), "{message}");
    // Danish fits GSM-7: no encoding is asked for, and no trailing newline is sent.
    assert_eq!(body.get("encoding"), None, "{body}");
    assert!(!message.ends_with('\n'));

    let reminders = rows(&rt, "appointment_reminder").await;
    assert_eq!(reminders.len(), 2);
    let monday = &reminders[1];
    assert_eq!(monday.status, NoticeStatus::Expired);
    assert_eq!(monday.expires_at, Some(local("2027-02-15T07:45")));
    let reason = monday.last_error.as_deref().unwrap_or_default();
    assert!(reason.contains("quiet hours last until"), "{reason}");
    let log = rt.store().outbox_log(monday.id).await.expect("log");
    assert_eq!(
        log.iter().map(|e| e.status.as_str()).collect::<Vec<_>>(),
        ["queued", "expired"]
    );
}

#[tokio::test]
async fn a_cancelled_appointments_held_reminder_is_withdrawn_and_a_moved_one_goes_for_the_new_time()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let server = accepting_gateway().await;
    let (rt, clock) = runtime(dir.path()).await;
    standard_family(&rt, &clock, "FAM-CANCEL").await;
    standard_family(&rt, &clock, "FAM-MOVE").await;
    for r in ["FAM-CANCEL", "FAM-MOVE"] {
        book(
            &rt,
            r,
            "book",
            "appointment_booked",
            "2027-02-15T09:30:00+01:00",
        )
        .await;
    }
    let notifier = notifier(&server).await;
    // Saturday 09:30: both reminders are made and held for quiet hours until 10:00.
    let saturday = local("2027-02-13T09:30");
    clock.advance_to(saturday);
    rt.fire_due(saturday, 100).await.expect("fire");
    let done = notifier
        .deliver(rt.store(), saturday)
        .await
        .expect("deliver");
    assert_eq!(done.held, 2, "{done:?}");

    // The status shows when a held notice will go, in local time.
    let out = run(&[
        "status",
        "FAM-CANCEL",
        "--db",
        &super::support::db_arg(dir.path()),
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("appointment_reminder [queued, waits until 2027-02-13 10:00]"),
        "{text}"
    );

    clock.advance_to(local("2027-02-13T09:45"));
    apply(
        &rt,
        "FAM-CANCEL",
        "cancel",
        "appointment_cancelled",
        json!({"appointment_id": "scan-1"}),
    )
    .await;
    book(
        &rt,
        "FAM-MOVE",
        "move",
        "appointment_moved",
        "2027-02-17T09:30:00+01:00",
    )
    .await;

    let ten = local("2027-02-13T10:00");
    clock.advance_to(ten);
    let done = notifier.deliver(rt.store(), ten).await.expect("deliver");
    assert_eq!(done.sent, 0, "{done:?}");
    assert!(requests(&server).await.is_empty());
    let reminders = rows(&rt, "appointment_reminder").await;
    for r in &reminders {
        assert_eq!(r.status, NoticeStatus::Skipped, "{r:?}");
    }
    let why: Vec<&str> = reminders
        .iter()
        .filter_map(|r| r.last_error.as_deref())
        .collect();
    assert!(
        why[0].contains("appointment scan-1 was cancelled"),
        "{why:?}"
    );
    assert!(
        why[1].contains("appointment scan-1 was moved from 2027-02-15T09:30:00+01:00"),
        "{why:?}"
    );

    // The moved appointment's reminders follow it: Monday 09:30 (two days before Wednesday).
    let monday = local("2027-02-15T09:30");
    clock.advance_to(monday);
    rt.fire_due(monday, 100).await.expect("fire");
    let done = notifier.deliver(rt.store(), monday).await.expect("deliver");
    assert_eq!(done.sent, 1, "{done:?}");
    let got = requests(&server).await;
    let body: Value = serde_json::from_slice(&got[0].body).expect("json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("17. februar")),
        "{body}"
    );
}

#[tokio::test]
async fn after_downtime_or_a_hold_reminders_for_past_appointments_expire_unsent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = accepting_gateway().await;
    let (rt, clock) = runtime(dir.path()).await;
    standard_family(&rt, &clock, "FAM-DOWN").await;
    standard_family(&rt, &clock, "FAM-HOLD").await;
    for r in ["FAM-DOWN", "FAM-HOLD"] {
        book(
            &rt,
            r,
            "book",
            "appointment_booked",
            "2027-02-15T09:30:00+01:00",
        )
        .await;
    }
    let hold = rt.store().instances_by_ref("FAM-HOLD").await.expect("read")[0].id;
    assert!(
        rt.store()
            .set_held(hold, Some("test"), local("2027-02-12T12:00"))
            .await
            .expect("hold")
    );
    let notifier = notifier(&server).await;
    // The worker is down from Friday until Tuesday; FAM-HOLD is resumed on Tuesday.
    let tuesday = local("2027-02-16T10:00");
    clock.advance_to(tuesday);
    rt.fire_due(tuesday, 100).await.expect("fire");
    let done = notifier
        .deliver(rt.store(), tuesday)
        .await
        .expect("deliver");
    assert_eq!((done.sent, done.expired), (0, 2), "{done:?}");
    assert!(
        rt.store()
            .set_held(hold, None, tuesday)
            .await
            .expect("resume")
    );
    rt.fire_due(tuesday, 100).await.expect("fire");
    let done = notifier
        .deliver(rt.store(), tuesday)
        .await
        .expect("deliver");
    assert_eq!((done.sent, done.expired), (0, 2), "{done:?}");
    assert!(
        requests(&server).await.is_empty(),
        "nothing stale reached a family"
    );
    let reminders = rows(&rt, "appointment_reminder").await;
    assert_eq!(reminders.len(), 4);
    assert!(reminders.iter().all(|r| r.status == NoticeStatus::Expired));
}

#[tokio::test]
async fn a_date_window_escalates_the_morning_after_its_last_day() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, clock) = runtime(dir.path()).await;
    standard_family(&rt, &clock, "FAM-WIN").await;
    // Due 20 August 2027: the malformation scan is due weeks 20 to 18 before, the last day
    // Friday 2 April. It escalates Saturday 3 April at 09:00, not on the last day itself.
    let inst = &rt.store().instances_by_ref("FAM-WIN").await.expect("read")[0];
    let timers = rt.store().timers(inst.id).await.expect("timers");
    let overdue = timers
        .iter()
        .find(|t| t.key.contains("malformation_scan:overdue"))
        .expect("overdue timer");
    assert_eq!(overdue.due, local("2027-04-03T09:00"));
    clock.advance_to(local("2027-04-03T09:00"));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    let escalation = rows(&rt, "activity_overdue").await;
    let malformation = escalation
        .iter()
        .find(|r| r.text.subject.as_deref() == Some("Overskredet: Misdannelsesskanning (FAM-WIN)"))
        .expect("malformation scan escalated");
    assert_eq!(malformation.created_at, local("2027-04-03T09:00"));
    let text = malformation.text.body.as_deref().unwrap_or_default();
    assert!(text.contains("senest fredag den 2. april 2027"), "{text}");
}

#[tokio::test]
async fn windows_closed_before_a_late_enrolment_do_not_apply_and_open_ones_escalate_as_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, clock) = runtime(dir.path()).await;
    // Enrolled on 11 January in week 18: due 14 June. The first exam (weeks 6-10) and the
    // nuchal scan (weeks 11-14) closed before; the malformation scan (weeks 18-20) is open.
    let mut req = late_family("FAM-LATE", "2027-06-14");
    rt.enrol(&req).await.expect("enrol");
    clock.advance_to(local("2027-02-08T10:00"));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    let history = history_of(&rt, "FAM-LATE").await;
    let notes: Vec<&String> = history.iter().flat_map(|h| &h.notes).collect();
    for activity in ["first_exam", "nuchal_scan"] {
        assert!(
            notes.iter().any(|n| n.starts_with(&format!(
                "activity {activity} not applicable (enrolled later)"
            ))),
            "{activity}: {notes:?}"
        );
    }
    let overdue: Vec<String> = rows(&rt, "activity_overdue")
        .await
        .iter()
        .filter_map(|r| r.text.subject.clone())
        .collect();
    assert_eq!(overdue, ["Overskredet: Misdannelsesskanning (FAM-LATE)"]);

    // A due date further ahead than the pathway allows is refused at enrolment.
    req.reference = "FAM-TYPO".into();
    req.fields.insert("due_date".into(), json!("2029-06-14"));
    let e = rt.enrol(&req).await.expect_err("refused");
    assert!(matches!(e, EnrolError::Step(_)), "{e}");
    // The due date is sensitive: the refusal names the field, never the date.
    let said = e.to_string();
    assert!(
        said.contains("the date given is more than P8M after enrolment"),
        "{said}"
    );
    assert!(!said.contains("2029-06-14"), "{said}");
}

fn late_family(reference: &str, due: &str) -> EnrolRequest {
    let c = coordinator();
    EnrolRequest {
        reference: reference.into(),
        pathway: "standard-track".into(),
        fields: json!({"due_date": due})
            .as_object()
            .expect("object")
            .clone(),
        contacts: [
            "gp",
            "midwife",
            "coordinator",
            "health_visitor",
            "team_lead",
        ]
        .into_iter()
        .map(|r| (r.to_string(), c.clone()))
        .collect(),
    }
}

#[tokio::test]
async fn the_horizon_closes_a_family_nothing_moves_on_or_moves_it_where_the_pathway_says() {
    let dir = tempfile::tempdir().expect("tmp");
    let monthly = || json!([{"name": "follow_up", "every": "0 9 1 * *", "actions": [{"notify": {"to": "coordinator", "template": "entered"}}]}]);
    write_pathway(
        dir.path(),
        &tracked("plain", "P3M", monthly(), json!({})),
        &["entered"],
    );
    write_pathway(
        dir.path(),
        &tracked(
            "stopped",
            "P3M",
            monthly(),
            json!({"on_horizon": {"to": "closed", "actions": [{"notify": {"to": "coordinator", "template": "closing"}}]}}),
        ),
        &["entered", "closing"],
    );
    let (rt, clock) = runtime_on(dir.path(), dir.path(), local("2027-01-11T09:00")).await;
    enrol_tracked(&rt, "plain", "FAM-PLAIN").await;
    enrol_tracked(&rt, "stopped", "FAM-STOP").await;
    clock.advance_to(local("2031-01-11T09:00"));
    rt.fire_due(clock.now(), 500).await.expect("fire");

    for (reference, state) in [("FAM-PLAIN", "tracked"), ("FAM-STOP", "closed")] {
        let inst = &rt.store().instances_by_ref(reference).await.expect("read")[0];
        assert_eq!(
            inst.instance.status,
            carepath_engine::step::Status::Finished
        );
        assert_eq!(inst.instance.state, state);
        assert!(rt.store().timers(inst.id).await.expect("timers").is_empty());
        let history = rt.store().history(inst.id).await.expect("history");
        let last = history.last().expect("history");
        assert_eq!(
            last.at,
            local("2027-04-11T09:00"),
            "the horizon is three months"
        );
        assert!(
            last.notes[0].starts_with("horizon P3M reached"),
            "{:?}",
            last.notes
        );
        // Follow-ups on 1 February, March and April, and none after the horizon.
        assert_eq!(timer_fired_at(&history, "follow_up").len(), 3);
    }
    // The owner hears of it either way: from the pathway's own action, or from carepath.
    assert_eq!(rows(&rt, "closing").await.len(), 1);
    let closed = rows(&rt, carepath_worker::runtime::HORIZON_CLOSED).await;
    assert_eq!(closed.len(), 1, "only where the pathway says nothing");
    assert_eq!(closed[0].role, "coordinator");
    assert_eq!(
        closed[0].text.subject.as_deref(),
        Some("carepath: forløbet for familie FAM-PLAIN er lukket ved sin tidshorisont")
    );
}

#[tokio::test]
async fn a_timer_that_cannot_be_armed_is_told_to_the_owner_not_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rt, _clock) = tracked_runtime(dir.path(), "dates", "P2Y", json!([])).await;
    enrol_tracked(&rt, "dates", "FAM-9999").await;
    // A birth date typed in the year 9999: a month after it is beyond the calendar.
    let r = rt
        .apply_events(&[EventRequest {
            instance_id: None,
            key: "born".into(),
            reference: "FAM-9999".into(),
            pathway: None,
            event: "born".into(),
            payload: json!({"birth_date": "9999-12-15"}),
            contacts: Default::default(),
        }])
        .await
        .expect("event");
    assert_eq!(
        r[0].transition,
        Some(("tracked".to_string(), "infant".to_string()))
    );
    let history = history_of(&rt, "FAM-9999").await;
    let notes = &history.last().expect("step").notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("one_month_old of state \"infant\" could not be armed")),
        "{notes:?}"
    );
    let told = rows(&rt, carepath_worker::runtime::TIMER_NOT_ARMED).await;
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].role, "coordinator");
    assert_eq!(told[0].status, NoticeStatus::Queued);
    assert_eq!(
        told[0].text.subject.as_deref(),
        Some("carepath: en timer kunne ikke sættes for familie FAM-9999")
    );
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_family_is_a_conflict_not_a_replay() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rt, _clock) = tracked_runtime(dir.path(), "keys", "P12M", json!([])).await;
    for r in ["FAM-A", "FAM-B"] {
        enrol_tracked(&rt, "keys", r).await;
    }
    let skip = |reference: &str| super::runtime::event("gp-1", reference, "skip", Value::Null);
    let first = rt.apply_events(&[skip("FAM-A")]).await.expect("apply");
    assert!(!first[0].conflict && !first[0].replayed);
    // The same request again is a replay; the key for another family is a conflict, in
    // another batch and within one.
    let again = rt
        .apply_events(&[skip("FAM-A"), skip("FAM-B")])
        .await
        .expect("apply");
    assert!(again[0].replayed && !again[0].conflict);
    assert!(again[1].conflict, "{:?}", again[1]);
    assert_eq!(again[1].record.reference, "FAM-A");
    let fresh = rt
        .apply_events(&[
            super::runtime::event("gp-2", "FAM-B", "skip", Value::Null),
            super::runtime::event("gp-2", "FAM-A", "skip", Value::Null),
        ])
        .await
        .expect("apply");
    assert!(!fresh[0].conflict && fresh[1].conflict);
    let b = &rt.store().instances_by_ref("FAM-B").await.expect("read")[0];
    assert_eq!(b.instance.state, "done", "FAM-B moved on its own key only");
    rt.store().close().await;

    // The command line says so and exits 1.
    let db = super::support::db_arg(dir.path());
    let out = run(&[
        "event",
        "FAM-B",
        "skip",
        "--key",
        "gp-1",
        "--db",
        &db,
        "--pathways",
        &dir.path().to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key gp-1 was used before for another event (skip for FAM-A)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_template_s_trailing_newline_is_neither_sent_nor_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = tracked(
        "texts",
        "P12M",
        json!([{"after": "P1D", "actions": [{"notify": {"to": "coordinator", "template": "nudge"}}]}]),
        json!({}),
    );
    p["roles"]["coordinator"]["channels"] = json!(["sms"]);
    let folder = write_pathway(dir.path(), &p, &[]);
    std::fs::write(
        folder.join("templates/nudge.da.sms.hbs"),
        "Hej {{recipient.name}}, se familie {{instance.ref}}.\n\n",
    )
    .expect("template");
    let (rt, clock) = runtime_on(dir.path(), dir.path(), local("2027-01-11T09:00")).await;
    enrol_tracked(&rt, "texts", "FAM-NL").await;
    clock.advance_to(local("2027-01-12T09:00"));
    rt.fire_due(clock.now(), 10).await.expect("fire");
    let sent = rows(&rt, "nudge").await;
    assert_eq!(
        sent[0].text.body.as_deref(),
        Some("Hej Koordinator, se familie FAM-NL.")
    );
}

#[tokio::test]
async fn notices_dead_from_the_start_are_counted_by_the_worker() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rt, clock) = tracked_runtime(dir.path(), "lonely", "P12M", json!([{"after": "P1D", "actions": [{"notify": {"to": "coordinator", "template": "entered"}}]}])).await;
    // Nobody plays the coordinator for this family: its notice cannot go to anyone.
    rt.enrol(&EnrolRequest {
        reference: "FAM-ALONE".into(),
        pathway: "lonely".into(),
        fields: Default::default(),
        contacts: Default::default(),
    })
    .await
    .expect("enrol");
    clock.advance_to(local("2027-01-12T09:00"));
    let fired = rt.fire_batch(clock.now(), 10).await.expect("fire");
    assert_eq!((fired.steps, fired.dead), (1, 1), "{fired:?}");
    let dead = rows(&rt, "entered").await;
    assert_eq!(dead[0].status, NoticeStatus::Dead);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("nobody is assigned to role \"coordinator\"")),
        "{:?}",
        dead[0].last_error
    );
}

#[tokio::test]
async fn a_field_that_may_be_unset_is_refused_unless_guarded_and_renders_when_guarded() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = tracked(
        "maybe",
        "P12M",
        json!([{"after": "P1D", "actions": [{"notify": {"to": "coordinator", "template": "nudge"}}]}]),
        json!({}),
    );
    let folder = write_pathway(dir.path(), &p, &[]);
    let template = folder.join("templates/nudge.da.email.hbs");
    // Unguarded, a field no enrolment must give is refused at check time…
    std::fs::write(
        &template,
        "Subject: Se familien\n\nFødt {{fields.birth_date}}.\n",
    )
    .expect("t");
    let out = run(&["validate", &folder.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("field \"birth_date\" may not be set when this notice is made"),
        "{}",
        stdout(&out)
    );
    // …and guarded, it renders whether the field is set or not.
    std::fs::write(
        &template,
        "Subject: Se familien\n\n{{#if fields.birth_date}}Født {{fields.birth_date}}.{{else}}Ikke født.{{/if}}\n",
    )
    .expect("t");
    let (rt, clock) = runtime_on(dir.path(), dir.path(), local("2027-01-11T09:00")).await;
    enrol_tracked(&rt, "maybe", "FAM-MAYBE").await;
    clock.advance_to(local("2027-01-12T09:00"));
    rt.fire_due(clock.now(), 10).await.expect("fire");
    let sent = rows(&rt, "nudge").await;
    assert_eq!(
        sent[0].status,
        NoticeStatus::Queued,
        "{:?}",
        sent[0].last_error
    );
    assert_eq!(sent[0].text.body.as_deref(), Some("Ikke født."));
}
