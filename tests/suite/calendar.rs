//! Calendar entries end to end: notices sent through the real delivery loop to a real SMTP
//! server on loopback (aiosmtpd), their `text/calendar` parts read by Python's `icalendar`.
//!
//! The health visitor's reminder of the postnatal visit on the real standard track carries
//! the window (4–7 days after the birth) as whole days. A family's booked appointment, on a
//! pathway that reminds families by email, is one entry through its life: the reminder
//! publishes it, a move publishes it again with a higher SEQUENCE under the same UID, and the
//! cancellation cancels that UID.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use carepath_worker::delivery::Notifier;
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::Backend;

use super::delivery::{
    SmtpServer, contact, email_notifier, enrol, event, local, received, runtime,
};
use super::fixtures::write_pathway;
use super::runtime::runtime as runtime_on;

/// Fires what is due at `at` and delivers it to the SMTP server; returns the mail received
/// so far.
async fn deliver_at(
    rt: &Runtime<Backend>,
    clock: &carepath_worker::clock::VirtualClock,
    notifier: &Notifier,
    at: jiff::Timestamp,
    out: &Path,
) -> Vec<Value> {
    clock.advance_to(at);
    rt.fire_due(at, 1000).await.expect("fire");
    notifier.deliver(rt.store(), at).await.expect("deliver");
    received(out)
}

/// The calendar parts of the mail to `to`, in the order they arrived.
fn calendars(mail: &[Value], to: &str) -> Vec<Value> {
    mail.iter()
        .filter(|m| m["rcpt_tos"] == json!([to]))
        .flat_map(|m| m["calendars"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// What every part must be, whatever it announces: RFC 5545's own rules on the raw text.
fn well_formed(part: &Value) {
    let raw = part["raw"].as_str().expect("raw");
    assert!(raw.ends_with("\r\n"), "CRLF line ends");
    for line in raw.split("\r\n") {
        assert!(line.len() <= 75, "a line of {} octets: {line}", line.len());
        assert!(!line.contains('\n'), "a bare LF: {line:?}");
    }
    assert_eq!(part["version"], "2.0");
    assert_eq!(part["filename"], "carepath.ics");
    assert_eq!(
        part["content_method"], part["method"],
        "the MIME method is the calendar's"
    );
    let events = part["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "one entry a part: {part}");
    let uid = events[0]["uid"].as_str().expect("uid");
    assert!(
        uid.ends_with("@carepath.example.dk"),
        "a UID at the sender's domain: {uid}"
    );
}

#[tokio::test]
async fn an_activity_window_reaches_the_health_visitor_as_whole_days() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (smtp, out) = SmtpServer::in_dir(dir.path());
    let notifier = email_notifier(smtp.port);
    let (rt, clock) = runtime(dir.path()).await;
    enrol(&rt, "FAM-CAL", "jordemoder@example.dk", "da").await;
    clock.advance_to(local("2027-01-12T09:00"));
    event(&rt, "FAM-CAL", "first_exam_done", json!({"care_level": 1})).await;
    let registered = local("2027-08-02T09:00");
    clock.advance_to(registered);
    rt.fire_due(registered, 1000).await.expect("fire");
    event(
        &rt,
        "FAM-CAL",
        "birth_registered",
        json!({"birth_date": "2027-08-01"}),
    )
    .await;

    // The reminder goes the day before the window opens.
    let mail = deliver_at(&rt, &clock, &notifier, local("2027-08-04T10:00"), &out).await;
    let parts = calendars(&mail, "sp@example.dk");
    assert_eq!(parts.len(), 1, "{mail:?}");
    let part = &parts[0];
    well_formed(part);
    assert_eq!(part["method"], "PUBLISH");
    let visit = &part["events"][0];
    assert_eq!(visit["all_day"], true, "{visit}");
    // 4–7 days after the birth on 1 August: 5 to 8 August, the end exclusive.
    assert_eq!(
        (&visit["start"], &visit["end"]),
        (&json!("2027-08-05"), &json!("2027-08-09")),
        "{visit}"
    );
    assert_eq!(visit["summary"], "Påmindelse: Barselsbesøg (FAM-CAL)");
    assert_eq!(
        visit["transparency"], "TRANSPARENT",
        "a window does not make anyone busy"
    );
    assert_eq!(visit["sequence"], 0);
    assert_eq!(visit["organizer"], "mailto:noreply@carepath.example.dk");

    // The next visit's reminder is another entry.
    let mail = deliver_at(&rt, &clock, &notifier, local("2027-08-07T10:00"), &out).await;
    let parts = calendars(&mail, "sp@example.dk");
    assert_eq!(parts.len(), 2, "{mail:?}");
    let next = &parts[1]["events"][0];
    assert_eq!(next["summary"], "Påmindelse: Etableringsbesøg (FAM-CAL)");
    assert_eq!(
        (&next["start"], &next["end"]),
        (&json!("2027-08-09"), &json!("2027-08-17"))
    );
    assert_ne!(next["uid"], visit["uid"]);
    drop(smtp);
}

/// A pathway that reminds families of appointments by email and tells them of a
/// cancellation.
fn by_email() -> Value {
    json!({
        "id": "appointments-by-email",
        "version": 1,
        "title": "Aftaler på mail",
        "horizon": "P12M",
        "roles": {
            "midwife": {"sector": "region"},
            "family": {"sector": "family", "channels": ["email"]}
        },
        "appointments": {
            "to": "family",
            "neutral_place": true,
            "cancel_template": "appointment_cancelled",
            "reminders": [{"before": "P2D", "template": "appointment_reminder"}]
        },
        "events": {"done": {}},
        "initial": "waiting",
        "states": {
            "waiting": {"owner": "midwife", "on": [{"event": "done", "to": "finished"}]},
            "finished": {"terminal": true}
        }
    })
}

#[tokio::test]
async fn a_moved_appointment_updates_and_a_cancelled_one_cancels_the_same_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (smtp, out) = SmtpServer::in_dir(dir.path());
    let notifier = email_notifier(smtp.port);
    let pathways = dir.path().join("pathways");
    write_pathway(
        &pathways,
        &by_email(),
        &["appointment_reminder", "appointment_cancelled"],
    );
    let (rt, clock) = runtime_on(dir.path(), &pathways, local("2027-03-01T12:00")).await;
    let contacts: BTreeMap<String, _> = [
        (
            "midwife".to_string(),
            contact("Jordemoder", Some("jm@example.dk"), None, "da"),
        ),
        (
            "family".to_string(),
            contact("Sara", Some("sara@example.dk"), None, "da"),
        ),
    ]
    .into();
    rt.enrol(&EnrolRequest {
        reference: "FAM-APPT".into(),
        pathway: "appointments-by-email".into(),
        fields: Default::default(),
        contacts,
    })
    .await
    .expect("enrol");
    let family = "sara@example.dk";

    // Booked for Wednesday 10 March at 12:00 until 12:45: the reminder two days before
    // publishes it.
    event(
        &rt,
        "FAM-APPT",
        "appointment_booked",
        json!({"appointment_id": "scan-7", "at": "2027-03-10T12:00:00+01:00",
               "ends": "2027-03-10T12:45:00+01:00", "place": "Hvidovre Hospital, indgang 3"}),
    )
    .await;
    let mail = deliver_at(&rt, &clock, &notifier, local("2027-03-08T12:00"), &out).await;
    let parts = calendars(&mail, family);
    assert_eq!(parts.len(), 1, "{mail:?}");
    well_formed(&parts[0]);
    assert_eq!(parts[0]["method"], "PUBLISH");
    let booked = &parts[0]["events"][0];
    assert_eq!(booked["all_day"], false);
    assert_eq!(
        booked["start"], "2027-03-10T11:00:00+00:00",
        "noon in Copenhagen"
    );
    assert_eq!(booked["end"], "2027-03-10T11:45:00+00:00");
    assert_eq!(booked["location"], "Hvidovre Hospital, indgang 3");
    assert_eq!(
        (&booked["sequence"], &booked["status"]),
        (&json!(0), &json!("CONFIRMED"))
    );
    assert_eq!(booked["transparency"], "OPAQUE");
    let uid = booked["uid"].clone();

    // Moved to Friday 12 March at 13:00, no end given: the new reminder updates the entry.
    clock.advance_to(local("2027-03-08T15:00"));
    event(
        &rt,
        "FAM-APPT",
        "appointment_moved",
        json!({"appointment_id": "scan-7", "at": "2027-03-12T13:00:00+01:00",
               "place": "Hvidovre Hospital, indgang 3"}),
    )
    .await;
    let mail = deliver_at(&rt, &clock, &notifier, local("2027-03-10T13:00"), &out).await;
    let parts = calendars(&mail, family);
    assert_eq!(parts.len(), 2, "{mail:?}");
    well_formed(&parts[1]);
    let moved = &parts[1]["events"][0];
    assert_eq!(moved["uid"], uid, "the same entry");
    assert_eq!(moved["sequence"], 1, "a newer version of it");
    assert_eq!(moved["start"], "2027-03-12T12:00:00+00:00");
    assert_eq!(moved["end"], Value::Null, "a point in time, as booked");

    // Cancelled: the cancellation takes the same entry out of the calendar.
    clock.advance_to(local("2027-03-11T12:00"));
    event(
        &rt,
        "FAM-APPT",
        "appointment_cancelled",
        json!({"appointment_id": "scan-7"}),
    )
    .await;
    let mail = deliver_at(&rt, &clock, &notifier, local("2027-03-11T12:00"), &out).await;
    let parts = calendars(&mail, family);
    assert_eq!(parts.len(), 3, "{mail:?}");
    well_formed(&parts[2]);
    assert_eq!(parts[2]["method"], "CANCEL");
    let cancelled = &parts[2]["events"][0];
    assert_eq!(cancelled["uid"], uid);
    assert_eq!(cancelled["sequence"], 2);
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["attendees"], json!([format!("mailto:{family}")]));
    let subjects: Vec<&str> = mail
        .iter()
        .filter(|m| m["rcpt_tos"] == json!([family]))
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert_eq!(
        subjects,
        [
            "appointment_reminder (FAM-APPT)",
            "appointment_reminder (FAM-APPT)",
            "appointment_cancelled (FAM-APPT)"
        ]
    );
    drop(smtp);
}
