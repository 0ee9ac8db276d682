//! The directory of who receives whom, end to end: a referral from the standard track to God
//! start finds the Red Cross coordinator in the directory and the referral reaches them by
//! email through the real delivery loop (aiosmtpd on loopback); a family referred before
//! anyone was in the directory has a dead letter, which assigning a coordinator sends.

use serde_json::{Value, json};

use carepath_engine::step::Cause;
use carepath_worker::clock::Clock;
use carepath_worker::directory;
use carepath_worker::runtime::RuntimeError;
use carepath_worker::store::{DirectoryEntry, NoticeStatus, Storage};

use super::delivery::{
    SmtpServer, contact, email_notifier, enrol, event, local, received, rows, runtime,
};

fn coordinator_entry() -> DirectoryEntry {
    DirectoryEntry {
        organisation: "Røde Kors Rødovre".into(),
        role: "coordinator".into(),
        pathway: Some("red-cross-good-start".into()),
        contact: contact(
            "Koordinator, God start",
            Some("godstart.rodovre@rk.example.dk"),
            None,
            "da",
        ),
    }
}

/// The mail that reached `address`.
fn mail_to<'a>(mail: &'a [Value], address: &str) -> Vec<&'a Value> {
    mail.iter()
        .filter(|m| m["rcpt_tos"] == json!([address]))
        .collect()
}

#[tokio::test]
async fn a_referral_reaches_the_directorys_coordinator_and_an_assigned_one_gets_the_dead_letter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (smtp, out) = SmtpServer::in_dir(dir.path());
    let notifier = email_notifier(smtp.port);
    let (rt, clock) = runtime(dir.path()).await;
    clock.advance_to(local("2027-01-12T09:00"));

    // Referred before the directory names anyone: nobody plays God start's coordinator.
    enrol(&rt, "FAM-EARLY", "jordemoder@example.dk", "da").await;
    event(
        &rt,
        "FAM-EARLY",
        "first_exam_done",
        json!({"care_level": 3}),
    )
    .await;
    event(
        &rt,
        "FAM-EARLY",
        "referred_to_good_start",
        json!({"consent_date": "2027-01-12"}),
    )
    .await;
    notifier
        .deliver(rt.store(), clock.now())
        .await
        .expect("deliver");
    let early = rows(&rt, "referral_received").await;
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].status, NoticeStatus::Dead);
    assert!(
        early[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("nobody is assigned to role \"coordinator\"")),
        "{:?}",
        early[0].last_error
    );

    // A directory entry that does not fit the pathways is refused, naming it.
    let mut wrong = coordinator_entry();
    wrong.role = "coordinater".into();
    let refused = directory::check(&[wrong], rt.catalog()).expect_err("refused");
    assert!(
        refused
            .to_string()
            .contains("no loaded pathway \"red-cross-good-start\" has the role \"coordinater\""),
        "{refused}"
    );
    let entries = vec![coordinator_entry()];
    directory::check(&entries, rt.catalog()).expect("fits");
    rt.store()
        .replace_directory(&entries)
        .await
        .expect("load directory");

    // Referred now: the coordinator comes from the directory and the referral arrives.
    enrol(&rt, "FAM-DIR", "jordemoder@example.dk", "da").await;
    event(&rt, "FAM-DIR", "first_exam_done", json!({"care_level": 3})).await;
    event(
        &rt,
        "FAM-DIR",
        "referred_to_good_start",
        json!({"consent_date": "2027-01-12"}),
    )
    .await;
    let good_start = rt
        .store()
        .instances_by_ref("FAM-DIR")
        .await
        .expect("read")
        .into_iter()
        .find(|i| i.pathway == "red-cross-good-start")
        .expect("referred");
    let history = rt.store().history(good_start.id).await.expect("history");
    assert!(
        history[0]
            .notes
            .iter()
            .any(|n| n == "coordinator: Røde Kors Rødovre (from the directory)"),
        "{:?}",
        history[0].notes
    );
    let done = notifier
        .deliver(rt.store(), clock.now())
        .await
        .expect("deliver");
    assert!(done.sent >= 1, "{done:?}");
    let mail = received(&out);
    let to_coordinator = mail_to(&mail, "godstart.rodovre@rk.example.dk");
    assert_eq!(to_coordinator.len(), 1, "{mail:#?}");
    let referral = rows(&rt, "referral_received").await;
    let sent = referral
        .iter()
        .find(|r| r.reference == "FAM-DIR")
        .expect("FAM-DIR's referral");
    assert_eq!(sent.status, NoticeStatus::Sent);
    assert_eq!(
        to_coordinator[0]["subject"].as_str(),
        sent.text.subject.as_deref(),
        "the text rendered at delivery is the text stored"
    );
    let body = to_coordinator[0]["body"].as_str().expect("body");
    assert!(body.contains("Koordinator, God start"), "{body}");
    assert!(body.contains("FAM-DIR"), "{body}");

    // The early family gets a coordinator of its own; its dead letter goes to them.
    let unknown = rt
        .assign(
            "FAM-EARLY",
            "chauffeur",
            &contact("Ingen", Some("x@example.dk"), None, "da"),
            None,
            "test",
        )
        .await
        .expect_err("no such role");
    assert!(
        matches!(&unknown, RuntimeError::Assign(why) if why.contains("no active pathway with the role \"chauffeur\"")),
        "{unknown}"
    );
    let assigned = rt
        .assign(
            "FAM-EARLY",
            "coordinator",
            &contact("Lise, Røde Kors", Some("lise@rk.example.dk"), None, "da"),
            Some("red-cross-good-start"),
            "test",
        )
        .await
        .expect("assign");
    assert_eq!(assigned.retried, 1);
    assert_eq!(assigned.instances.len(), 1);
    let early_gs = rt
        .store()
        .instances_by_ref("FAM-EARLY")
        .await
        .expect("read")
        .into_iter()
        .find(|i| i.pathway == "red-cross-good-start")
        .expect("referred");
    let last = rt
        .store()
        .history(early_gs.id)
        .await
        .expect("history")
        .pop()
        .expect("a step");
    assert!(
        matches!(&last.cause, Cause::Operator { action, by } if action == "assign" && by == "test"),
        "{:?}",
        last.cause
    );
    clock.advance_to(local("2027-01-12T10:00"));
    notifier
        .deliver(rt.store(), clock.now())
        .await
        .expect("deliver");
    let mail = received(&out);
    let to_lise = mail_to(&mail, "lise@rk.example.dk");
    assert_eq!(to_lise.len(), 1, "{mail:#?}");
    let body = to_lise[0]["body"].as_str().expect("body");
    assert!(body.contains("Lise, Røde Kors"), "{body}");
    assert!(body.contains("FAM-EARLY"), "{body}");
    let retried = rows(&rt, "referral_received").await;
    let early = retried
        .iter()
        .find(|r| r.reference == "FAM-EARLY")
        .expect("FAM-EARLY");
    assert_eq!(early.status, NoticeStatus::Sent);
    let log = rt.store().outbox_log(early.id).await.expect("log");
    let steps: Vec<&str> = log.iter().map(|l| l.status.as_str()).collect();
    assert_eq!(steps, ["dead", "queued", "sent"], "{log:?}");
}
