//! The family across its pathways: one family on the standard track, God start and the
//! Rødovre cooperation. A birth reported once reaches each pathway that takes it; a pregnancy
//! loss reported once ends the standard track and stops the other two, so that no family or
//! volunteer message follows it.

use std::collections::BTreeMap;

use jiff::{Timestamp, ToSpan};
use serde_json::{Value, json};

use carepath_engine::step::{Cause, Status};
use carepath_worker::bulk::{self, Action, Selection};
use carepath_worker::clock::Clock;
use carepath_worker::runtime::{EnrolRequest, EventRequest, EventResult, LIFE_EVENT, Runtime};
use carepath_worker::store::{Backend, Contact, NoticeStatus, OutboxFilter, Storage};

use super::delivery::{contact, enrol, local, runtime};

fn email(name: &str, address: &str) -> Contact {
    contact(name, Some(address), None, "da")
}

/// Enrols `reference` on God start (a volunteer matched) and on Rødovre (triaged light), next
/// to the standard track.
async fn on_three_pathways(rt: &Runtime<Backend>, reference: &str) {
    enrol(rt, reference, "jordemoder@example.dk", "da").await;
    let family = contact("Amal", None, Some("+4520999111"), "da");
    let good_start: BTreeMap<String, Contact> = [
        ("referrer", email("Kommunen", "visitation@example.dk")),
        (
            "coordinator",
            email("Røde Kors", "rk-koordinator@example.dk"),
        ),
        ("team_lead", email("Røde Kors leder", "rk-leder@example.dk")),
        ("volunteer", email("Frivillig", "frivillig@example.dk")),
        ("health_visitor", email("Sundhedsplejen", "sp@example.dk")),
        ("family", family.clone()),
    ]
    .into_iter()
    .map(|(r, c)| (r.to_string(), c))
    .collect();
    let rodovre: BTreeMap<String, Contact> = [
        ("referrer", email("Kommunen", "visitation@example.dk")),
        ("triage", email("Triage", "triage@example.dk")),
        ("team_lead", email("Leder", "leder@example.dk")),
        ("therapist", email("Terapeut", "terapeut@example.dk")),
        (
            "coordinator",
            email("Røde Kors", "rk-koordinator@example.dk"),
        ),
        ("rc_lead", email("Røde Kors leder", "rk-leder@example.dk")),
        ("volunteer", email("Frivillig", "frivillig@example.dk")),
        ("health_visitor", email("Sundhedsplejen", "sp@example.dk")),
        ("family", family),
    ]
    .into_iter()
    .map(|(r, c)| (r.to_string(), c))
    .collect();
    for (pathway, contacts) in [
        ("red-cross-good-start", good_start),
        ("rodovre-birth-cooperation", rodovre),
    ] {
        rt.enrol(&EnrolRequest {
            reference: reference.into(),
            pathway: pathway.into(),
            fields: json!({"consent_date": "2027-01-11"})
                .as_object()
                .expect("object")
                .clone(),
            contacts,
        })
        .await
        .expect("enrol");
    }
    let matched = report(rt, reference, "volunteer_matched", json!({})).await;
    assert_eq!(
        matched.record.pathway.as_deref(),
        None,
        "one pathway takes it: no fan-out"
    );
    assert!(matched.also.is_empty());
    report(
        rt,
        reference,
        "triaged_light",
        json!({"consent_date": "2027-01-11"}),
    )
    .await;
}

async fn report(
    rt: &Runtime<Backend>,
    reference: &str,
    event: &str,
    payload: Value,
) -> EventResult {
    let r = rt
        .apply_events(&[EventRequest {
            key: format!("{reference}:{event}"),
            reference: reference.into(),
            pathway: None,
            instance_id: None,
            event: event.into(),
            payload,
            contacts: BTreeMap::new(),
        }])
        .await
        .expect("apply")
        .pop()
        .expect("one result");
    for part in std::iter::once(&r).chain(&r.also) {
        assert_eq!(
            part.record.outcome,
            carepath_worker::store::Outcome::Applied,
            "{event} on {:?}: {:?}",
            part.record.pathway,
            part.record.reason
        );
    }
    r
}

/// Steps the clock a day at a time to `until`, firing what comes due.
async fn run_until(
    rt: &Runtime<Backend>,
    clock: &carepath_worker::clock::VirtualClock,
    until: Timestamp,
) {
    let mut now = clock.now();
    while now < until {
        now = now.checked_add(24.hours()).expect("day");
        clock.advance_to(now);
        rt.fire_due(now, 1000).await.expect("fire");
    }
}

#[tokio::test]
async fn a_birth_reported_once_reaches_every_pathway_that_takes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, _clock) = runtime(dir.path()).await;
    on_three_pathways(&rt, "FAM-BIRTH").await;
    report(
        &rt,
        "FAM-BIRTH",
        "first_exam_done",
        json!({"care_level": 3}),
    )
    .await;

    let born = report(
        &rt,
        "FAM-BIRTH",
        "birth_registered",
        json!({"birth_date": "2027-01-10"}),
    )
    .await;
    let mut took: Vec<String> = std::iter::once(&born)
        .chain(&born.also)
        .map(|p| {
            p.record
                .pathway
                .clone()
                .expect("each part names its pathway")
        })
        .collect();
    took.sort();
    assert_eq!(
        took,
        [
            "red-cross-good-start",
            "rodovre-birth-cooperation",
            "standard-track"
        ]
    );
    // One key covers the fan-out: its parts are recorded as KEY~PATHWAY.
    assert!(
        born.also
            .iter()
            .all(|p| p.record.key.starts_with("FAM-BIRTH:birth_registered~")),
        "{:?}",
        born.also.iter().map(|p| &p.record.key).collect::<Vec<_>>()
    );

    let instances = rt
        .store()
        .instances_by_ref("FAM-BIRTH")
        .await
        .expect("read");
    assert_eq!(instances.len(), 3);
    let mut steps = BTreeMap::new();
    for i in &instances {
        assert_eq!(
            i.instance.fields.get("birth_date"),
            Some(&json!("2027-01-10")),
            "{}",
            i.pathway
        );
        let history = rt.store().history(i.id).await.expect("history");
        let last = history.last().expect("a history");
        assert_eq!(
            last.cause,
            Cause::Event {
                name: "birth_registered".into()
            },
            "{}",
            i.pathway
        );
        assert!(
            last.notes.iter().any(|n| n.starts_with("from the family:")),
            "{}: {:?}",
            i.pathway,
            last.notes
        );
        steps.insert(i.id, history.len());
    }

    // The same key again is the first answer, applied nowhere a second time.
    let again = rt
        .apply_events(&[EventRequest {
            key: "FAM-BIRTH:birth_registered".into(),
            reference: "FAM-BIRTH".into(),
            pathway: None,
            instance_id: None,
            event: "birth_registered".into(),
            payload: json!({"birth_date": "2027-01-10"}),
            contacts: BTreeMap::new(),
        }])
        .await
        .expect("apply")
        .pop()
        .expect("one result");
    assert!(again.replayed && !again.conflict);
    for i in &instances {
        let history = rt.store().history(i.id).await.expect("history");
        assert_eq!(history.len(), steps[&i.id], "{}", i.pathway);
    }
}

#[tokio::test]
async fn a_pregnancy_loss_reported_once_stops_every_family_and_volunteer_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, clock) = runtime(dir.path()).await;
    on_three_pathways(&rt, "FAM-LOSS").await;
    // A week of God start runs as usual: the volunteer is reminded of visits.
    run_until(&rt, &clock, local("2027-01-18T12:00")).await;
    let before = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    assert!(
        before
            .iter()
            .any(|n| n.role == "volunteer" && n.template == "visit_reminder"),
        "God start reminds the volunteer before the loss"
    );

    let loss_at = clock.now();
    let lost = report(&rt, "FAM-LOSS", "pregnancy_ended", json!({})).await;
    assert_eq!(
        lost.record.pathway, None,
        "only the standard track takes it"
    );
    assert!(lost.also.is_empty());

    let instances = rt.store().instances_by_ref("FAM-LOSS").await.expect("read");
    for i in &instances {
        let history = rt.store().history(i.id).await.expect("history");
        let last = history.last().expect("a history");
        if i.pathway == "standard-track" {
            assert_eq!(i.instance.state, "ended");
            continue;
        }
        // The others are on hold, say why, and their owner is told.
        assert!(i.held_since.is_some(), "{} is on hold", i.pathway);
        assert!(
            matches!(&last.cause, Cause::Operator { action, .. } if action == "hold"),
            "{}: {:?}",
            i.pathway,
            last.cause
        );
        assert!(
            last.notes
                .iter()
                .any(|n| n.contains("\"pregnancy_ended\" reported on standard-track")),
            "{}: {:?}",
            i.pathway,
            last.notes
        );
        let told: Vec<_> = rt
            .store()
            .outbox(&OutboxFilter {
                instance_id: Some(i.id),
                ..OutboxFilter::default()
            })
            .await
            .expect("outbox")
            .into_iter()
            .filter(|n| n.template == LIFE_EVENT)
            .collect();
        assert_eq!(told.len(), 1, "{}", i.pathway);
        assert_eq!(Some(&told[0].role), i.instance.owner.as_ref());
        assert_eq!(told[0].status, NoticeStatus::Queued);
    }
    // Whatever was queued for the family or the volunteer is not sent.
    let queued = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .into_iter()
        .filter(|n| (n.family || n.role == "volunteer") && n.template != LIFE_EVENT)
        .filter(|n| n.status == NoticeStatus::Queued)
        .count();
    assert_eq!(queued, 0);

    // Four months pass: nothing more goes to the family or the volunteer, and the owners'
    // notices from carepath are the only ones the stopped pathways made.
    run_until(
        &rt,
        &clock,
        loss_at.checked_add(24.hours() * 120).expect("later"),
    )
    .await;
    let after: Vec<_> = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .into_iter()
        .filter(|n| n.created_at > loss_at)
        .collect();
    for n in &after {
        let routine = n.template != LIFE_EVENT;
        assert!(
            !(routine && (n.family || n.role == "volunteer")),
            "sent after the loss: {} to {} ({})",
            n.template,
            n.role,
            n.created_at
        );
    }
    // The notices to the owners are not kept back by the hold: a delivery would claim them.
    let claimable = rt
        .store()
        .claim_notices("test", clock.now(), clock.now(), 100)
        .await
        .expect("claim");
    assert_eq!(
        claimable
            .iter()
            .filter(|n| n.template == LIFE_EVENT)
            .count(),
        2
    );

    // The Red Cross ends God start for this family; Rødovre's owner resumes the cooperation
    // (the mother is still followed after a loss). Each acts on this family alone.
    let only = |pathway: &str| Selection {
        pathways: Some(vec![pathway.to_string()]),
        reference: Some("FAM-LOSS".into()),
        ..Selection::default()
    };
    let ended = bulk::apply(
        &rt,
        &Action::Cancel {
            reason: "the pregnancy ended".into(),
        },
        &only("red-cross-good-start"),
        "rk-koordinator",
        false,
    )
    .await
    .expect("cancel");
    assert_eq!((ended.matched, ended.changed), (1, 1));
    let resumed = bulk::apply(
        &rt,
        &Action::Resume,
        &only("rodovre-birth-cooperation"),
        "triage",
        false,
    )
    .await
    .expect("resume");
    assert_eq!((resumed.matched, resumed.changed), (1, 1));
    for i in rt.store().instances_by_ref("FAM-LOSS").await.expect("read") {
        match i.pathway.as_str() {
            "red-cross-good-start" => assert!(i.instance.status == Status::Finished),
            "rodovre-birth-cooperation" => {
                assert!(i.held_since.is_none() && i.instance.status == Status::Active)
            }
            _ => {}
        }
    }
}

/// Enrols `reference` on `pathway` with `fields`, every role played by someone with email.
async fn enrol_on(rt: &Runtime<Backend>, reference: &str, pathway: &str, fields: Value) {
    let version = rt.catalog().latest(pathway).expect("loaded");
    let contacts: BTreeMap<String, Contact> = version
        .checked
        .pathway
        .roles
        .keys()
        .map(|role| {
            let c = if role == "family" {
                contact("Amal", None, Some("+4520999111"), "da")
            } else {
                email(role, &format!("{role}@example.dk"))
            };
            (role.clone(), c)
        })
        .collect();
    rt.enrol(&EnrolRequest {
        reference: reference.into(),
        pathway: pathway.into(),
        fields: fields.as_object().expect("object").clone(),
        contacts,
    })
    .await
    .expect("enrol");
}

/// The seeds' programmes as they are: God start matched in pregnancy covers the birth and the
/// camp invitation goes; the dating scan moves the due date; Rødovre ends at 18 months without
/// a reported birth; the standard track refers into the Red Cross family network.
#[tokio::test]
async fn the_programmes_follow_the_seeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, clock) = runtime(dir.path()).await;

    // God start: matched on 5 February in pregnancy, born 6 August. Six months from the
    // match would end on 5 August, the day before the birth; the support covers the birth,
    // the camp invitation goes eight weeks after it, and the six months count from the birth.
    enrol_on(
        &rt,
        "FAM-GS",
        "red-cross-good-start",
        json!({"consent_date": "2027-01-11"}),
    )
    .await;
    run_until(&rt, &clock, local("2027-02-05T12:00")).await;
    report(&rt, "FAM-GS", "volunteer_matched", json!({})).await;
    run_until(&rt, &clock, local("2027-08-06T12:00")).await;
    let gs = &rt.store().instances_by_ref("FAM-GS").await.expect("read")[0];
    assert_eq!(gs.instance.state, "active_in_pregnancy", "still supported");
    report(
        &rt,
        "FAM-GS",
        "birth_registered",
        json!({"birth_date": "2027-08-06"}),
    )
    .await;
    run_until(&rt, &clock, local("2027-10-02T12:00")).await;
    let camp = super::delivery::rows(&rt, "camp_invitation").await;
    assert_eq!(camp.len(), 1, "the camp invitation went");
    assert_eq!(camp[0].not_before, local("2027-10-01T10:00"));
    run_until(&rt, &clock, local("2028-02-08T12:00")).await;
    let gs = &rt.store().instances_by_ref("FAM-GS").await.expect("read")[0];
    assert_eq!(gs.instance.state, "completed");
    let history = rt.store().history(gs.id).await.expect("history");
    let ended = history.last().expect("a step");
    // Reported on the worker's next daily round, 7 August: six months from then.
    assert_eq!(
        ended.at,
        local("2028-02-07T09:00"),
        "six months from the birth"
    );

    // The standard track: the dating scan moves the due date, and every deadline with it.
    enrol_on(
        &rt,
        "FAM-SCAN",
        "standard-track",
        json!({"due_date": "2028-08-20"}),
    )
    .await;
    report(&rt, "FAM-SCAN", "first_exam_done", json!({"care_level": 1})).await;
    // The pregnancy's own timer (its only one): the birth not registered four weeks after
    // the due date.
    let deadline = || async {
        let i = &rt.store().instances_by_ref("FAM-SCAN").await.expect("read")[0];
        i.instance
            .timers
            .iter()
            .find(|t| t.purpose == carepath_engine::step::Purpose::State { index: 0 })
            .map(|t| t.due)
    };
    let before = deadline().await;
    report(
        &rt,
        "FAM-SCAN",
        "due_date_revised",
        json!({"due_date": "2028-09-10"}),
    )
    .await;
    let after = deadline().await;
    assert_ne!(before, after);
    assert_eq!(
        after,
        Some(local("2028-10-08T09:00")),
        "four weeks after the new due date"
    );

    // Rødovre: referred in pregnancy with a due date; no birth is ever reported. The
    // cooperation ends 18 months after the due date all the same.
    enrol_on(
        &rt,
        "FAM-RO",
        "rodovre-birth-cooperation",
        json!({"due_date": "2028-06-15"}),
    )
    .await;
    report(&rt, "FAM-RO", "triaged_heavy", json!({})).await;
    run_until(&rt, &clock, local("2029-12-16T12:00")).await;
    let ro = &rt.store().instances_by_ref("FAM-RO").await.expect("read")[0];
    assert_eq!(ro.instance.state, "completed");
    let last = rt
        .store()
        .history(ro.id)
        .await
        .expect("history")
        .pop()
        .expect("step");
    assert_eq!(last.at, local("2029-12-15T09:00"));

    // The standard track refers a family with a child into the Red Cross family network.
    enrol_on(
        &rt,
        "FAM-NET",
        "standard-track",
        json!({"due_date": "2030-01-20"}),
    )
    .await;
    report(&rt, "FAM-NET", "first_exam_done", json!({"care_level": 1})).await;
    report(
        &rt,
        "FAM-NET",
        "birth_registered",
        json!({"birth_date": "2029-12-15"}),
    )
    .await;
    report(
        &rt,
        "FAM-NET",
        "referred_to_family_network",
        json!({"consent_date": "2029-12-16"}),
    )
    .await;
    let pathways: Vec<String> = rt
        .store()
        .instances_by_ref("FAM-NET")
        .await
        .expect("read")
        .into_iter()
        .map(|i| i.pathway)
        .collect();
    assert!(
        pathways.contains(&"red-cross-family-network".to_string()),
        "{pathways:?}"
    );
}

/// What a family's instances, steps and notices are, told apart from how they were stored
/// (row ids) so that two databases can be compared.
async fn outcome(rt: &Runtime<Backend>, reference: &str) -> Vec<String> {
    let mut out = Vec::new();
    for row in rt.store().instances_by_ref(reference).await.expect("read") {
        let i = &row.instance;
        out.push(format!(
            "{} {} seq {} {:?}",
            row.pathway, i.state, i.seq, i.status
        ));
        for h in rt.store().history(row.id).await.expect("history") {
            out.push(format!("  {} {} {:?} -> {}", h.seq, h.at, h.from, h.to));
        }
        for t in rt.store().timers(row.id).await.expect("timers") {
            out.push(format!("  timer {} {}", t.key, t.due));
        }
        let mut notices: Vec<String> = rt
            .store()
            .outbox(&OutboxFilter {
                instance_id: Some(row.id),
                ..OutboxFilter::default()
            })
            .await
            .expect("outbox")
            .iter()
            .map(|n| format!("  notice {} {:?} {}", n.key, n.status, n.not_before))
            .collect();
        notices.sort();
        out.extend(notices);
    }
    out
}

/// A burst fired in small batches, each next one prepared on a snapshot while the one before
/// is written, ends exactly as the same burst fired in one batch: every family on three
/// pathways, whose instances fall into neighbouring batches, steps once per due timer.
#[tokio::test]
async fn a_burst_in_small_batches_ends_as_it_does_in_one() {
    let families: Vec<String> = (0..8).map(|i| format!("FAM-BURST-{i}")).collect();
    let mut outcomes = Vec::new();
    for batch in [5, 1000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rt, clock) = runtime(dir.path()).await;
        for reference in &families {
            on_three_pathways(&rt, reference).await;
        }
        // Half a year without a worker: every pathway has timers long due.
        let later = local("2027-07-01T08:00");
        clock.advance_to(later);
        let steps = rt.fire_due(later, batch).await.expect("fire");
        assert!(steps > 3 * families.len(), "{steps} steps");
        let mut all = Vec::new();
        for reference in &families {
            all.push(outcome(&rt, reference).await);
        }
        assert_eq!(
            rt.store().stats(later).await.expect("stats").timers_due,
            0,
            "nothing due is left"
        );
        outcomes.push((steps, all));
    }
    assert_eq!(outcomes[0], outcomes[1]);
}
