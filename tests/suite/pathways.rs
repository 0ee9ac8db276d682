//! The real pathways in pathways/: each runs a family fixture and an event script through the
//! real runtime on virtual time (`carepath simulate`), with the timeline kept as a reviewed
//! snapshot (tests/fixtures/timelines/, `UPDATE_EXPECT=1` to refresh) and the dates and
//! recipients that matter asserted outright. And the catalogue of offers in docs/ is current.

use serde_json::json;

use carepath_worker::simulate::{self, Entry, ScriptedEvent, Timeline};

use super::support::{golden, root, run, stdout};

/// Simulates `family` (examples/families/NAME.json) with `script` until `until`.
async fn simulate_with(
    pathway: &str,
    family: &str,
    script: &[ScriptedEvent],
    until: &str,
) -> Timeline {
    let family = simulate::read_family(&root().join(format!("examples/families/{family}.json")))
        .expect("family");
    simulate::simulate(
        &root().join(format!("pathways/{pathway}")),
        &family,
        script,
        until,
    )
    .await
    .expect("simulate")
}

fn script(name: &str) -> Vec<ScriptedEvent> {
    simulate::read_script(&root().join(format!("examples/families/{name}.events.json")))
        .expect("script")
}

/// Simulates the fixture and checks its timeline against the reviewed snapshot.
async fn snapshot(pathway: &str, family: &str, until: &str) -> Timeline {
    let timeline = simulate_with(pathway, family, &script(family), until).await;
    golden(
        &root().join(format!("tests/fixtures/timelines/{family}.txt")),
        &timeline.to_text(),
    );
    timeline
}

/// The notices of `template`, as (local time, recipient role, language, status).
fn notices(t: &Timeline, template: &str) -> Vec<(String, String, String, String)> {
    t.entries
        .iter()
        .filter_map(|e| match e {
            Entry::Notice {
                at,
                to,
                template: tpl,
                language,
                status,
                ..
            } if tpl == template => Some((
                at.clone(),
                to.clone(),
                language.clone().unwrap_or_default(),
                status.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// The transitions that changed state, as (local time, pathway, to).
fn moves(t: &Timeline) -> Vec<(String, String, String)> {
    t.entries
        .iter()
        .filter_map(|e| match e {
            Entry::Transition {
                at,
                pathway,
                from,
                to,
                ..
            } if from.as_deref() != Some(to.as_str()) => {
                Some((at.clone(), pathway.clone(), to.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The notices of `template`, as (recipient role, masked address).
fn addresses(t: &Timeline, template: &str) -> Vec<(String, String)> {
    t.entries
        .iter()
        .filter_map(|e| match e {
            Entry::Notice {
                to,
                template: tpl,
                address,
                ..
            } if tpl == template => Some((to.clone(), address.clone().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

fn row(at: &str, to: &str, language: &str, status: &str) -> (String, String, String, String) {
    (at.into(), to.into(), language.into(), status.into())
}

/// The notices of `template` whose subject mentions `about`, as local times.
fn times(t: &Timeline, template: &str, about: &str) -> Vec<String> {
    t.entries
        .iter()
        .filter_map(|e| match e {
            Entry::Notice {
                at,
                template: tpl,
                subject,
                ..
            } if tpl == template && subject.as_deref().is_some_and(|s| s.contains(about)) => {
                Some(at.clone())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_standard_track_hands_the_birth_to_the_health_visitors_and_moves_with_an_early_birth() {
    let t = snapshot("standard-track", "standard-track", "P9M").await;
    assert_eq!(
        notices(&t, "birth_notice"),
        [row("2027-08-06 14:00 Fri", "health_visitor", "da", "sent")]
    );
    // The postnatal visit's window opens at birth + 4 days; its reminder comes a day before.
    assert_eq!(
        times(&t, "activity_due", "Barselsbesøg"),
        ["2027-08-09 09:00 Mon"]
    );
    // The family hears on the day the window opens, a Tuesday, in Arabic, with nothing but a
    // phone number in it.
    assert_eq!(
        notices(&t, "home_visit_call"),
        [row("2027-08-10 09:00 Tue", "family", "ar", "sent")]
    );
    // Care level 2: the health visitor refers the family to God start på livet, whose
    // coordinator is the Red Cross's (not the region's), and the volunteer the coordinator
    // matches gets the visit reminders.
    assert!(moves(&t).contains(&(
        "2027-08-11 10:30 Wed".into(),
        "red-cross-good-start".into(),
        "awaiting_match".into()
    )));
    assert_eq!(
        addresses(&t, "referral_received"),
        [(
            "coordinator".to_string(),
            "v•••@rodekors.example.dk".to_string()
        )]
    );
    assert_eq!(
        addresses(&t, "referral_accepted"),
        [("referrer".to_string(), "s•••@kk.example.dk".to_string())]
    );
    let visits = addresses(&t, "visit_reminder");
    assert!(!visits.is_empty());
    assert!(
        visits.iter().all(|v| v
            == &(
                "volunteer".to_string(),
                "l•••@frivillig.example.dk".to_string()
            )),
        "{visits:?}"
    );

    // Born two weeks earlier: every birth-anchored timer moves with the birth.
    let mut early = script("standard-track");
    let birth = early
        .iter_mut()
        .find(|e| e.event == "birth_registered")
        .expect("birth");
    birth.at = "2027-07-23T14:00".into();
    birth.payload = json!({"birth_date": "2027-07-23", "interpreter_needed": true});
    let t = simulate_with("standard-track", "standard-track", &early, "P9M").await;
    assert_eq!(
        times(&t, "activity_due", "Barselsbesøg"),
        ["2027-07-26 09:00 Mon"]
    );
    assert_eq!(
        times(&t, "activity_due", "Etableringsbesøg"),
        ["2027-07-29 09:00 Thu"]
    );
    assert_eq!(
        times(&t, "activity_due", "Børneundersøgelse (5 uger)"),
        ["2027-08-20 09:00 Fri"]
    );
    assert_eq!(
        notices(&t, "home_visit_call"),
        [row("2027-07-27 09:00 Tue", "family", "ar", "sent")]
    );

    // Born on a Tuesday: birth + 4 days is a Saturday, and weekend quiet hours hold the
    // family's message from 09:00 until 10:00.
    let mut tuesday = script("standard-track");
    let birth = tuesday
        .iter_mut()
        .find(|e| e.event == "birth_registered")
        .expect("birth");
    birth.at = "2027-08-03T14:00".into();
    birth.payload = json!({"birth_date": "2027-08-03"});
    let t = simulate_with("standard-track", "standard-track", &tuesday, "P9M").await;
    assert_eq!(
        notices(&t, "home_visit_call"),
        [row("2027-08-07 10:00 Sat", "family", "ar", "sent")]
    );
    assert!(t.entries.iter().any(|e| matches!(e,
        Entry::Notice { template, held: Some(h), .. }
            if template == "home_visit_call" && h.contains("quiet hours"))));
}

#[tokio::test]
async fn the_standard_track_refers_only_from_care_level_two_and_to_counselling_in_pregnancy() {
    // Care level 1: a referral is refused, recorded, and starts nothing.
    let mut level_one = script("standard-track");
    level_one[0].payload = json!({"care_level": 1});
    let t = simulate_with("standard-track", "standard-track", &level_one, "P9M").await;
    assert!(
        !t.entries.iter().any(|e| matches!(e,
            Entry::Transition { pathway, .. } if pathway != "standard-track")),
        "no programme was started"
    );
    let refused: Vec<&str> = t
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Rejected { event, .. } => Some(event.as_str()),
            _ => None,
        })
        .collect();
    assert!(refused.contains(&"referred_to_good_start"), "{refused:?}");

    // In pregnancy the midwife refers to Mødrehjælpen: the counsellor is Mødrehjælpen's,
    // the referral is recorded as the midwife's, and she hears of the acceptance.
    let mut counselling: Vec<ScriptedEvent> = script("standard-track")
        .into_iter()
        .filter(|e| e.at.starts_with('P'))
        .collect();
    counselling.extend(serde_json::from_value::<Vec<ScriptedEvent>>(json!([
        {"at": "2027-03-01T10:00", "event": "referred_to_counselling",
         "payload": {"consent_date": "2027-03-01"}},
        {"at": "2027-03-03T10:00", "event": "intake_booked", "pathway": "moedrehjaelpen-counselling"},
        {"at": "2027-03-10T10:00", "event": "intake_done", "pathway": "moedrehjaelpen-counselling",
         "payload": {"track": "individual"}}
    ])).expect("script"));
    let t = simulate_with("standard-track", "standard-track", &counselling, "P3M").await;
    assert_eq!(
        addresses(&t, "new_referral"),
        [(
            "counsellor".to_string(),
            "k•••@moedrehjaelpen.example.dk".to_string()
        )]
    );
    assert_eq!(
        addresses(&t, "referral_accepted"),
        [(
            "referrer".to_string(),
            "j•••@hvidovre.example.dk".to_string()
        )]
    );
}

#[tokio::test]
async fn god_start_paa_livet_escalates_an_unmatched_referral_and_hands_a_concern_back() {
    let t = snapshot("red-cross-good-start", "red-cross-good-start", "P9M").await;
    // Referred on Monday 1 March; no match reported in ten days: the regional lead is told.
    assert_eq!(
        notices(&t, "referral_received"),
        [row("2027-03-01 10:00 Mon", "coordinator", "da", "sent")]
    );
    assert_eq!(
        notices(&t, "match_overdue"),
        [row("2027-03-11 10:00 Thu", "team_lead", "da", "sent")]
    );
    // The late match is still told to the referrer.
    assert_eq!(
        notices(&t, "referral_accepted"),
        [row("2027-03-13 10:00 Sat", "referrer", "da", "sent")]
    );
    // Twice a week, Monday and Thursday 09:00, from the match until the concern.
    let visits = notices(&t, "visit_reminder");
    assert_eq!(visits.len(), 32);
    assert_eq!(visits[0].0, "2027-03-15 09:00 Mon");
    assert_eq!(visits[31].0, "2027-07-01 09:00 Thu");
    assert!(
        visits.iter().all(
            |v| (v.0.ends_with("09:00 Mon") || v.0.ends_with("09:00 Thu")) && v.1 == "volunteer"
        ),
        "{visits:?}"
    );
    // The baby camp: eight weeks after the birth on 9 April, to the family, in Arabic.
    assert_eq!(
        notices(&t, "camp_invitation"),
        [row("2027-06-04 10:00 Fri", "family", "ar", "sent")]
    );
    // The volunteer's concern hands the family to the health visitor, who must acknowledge
    // within two days; nobody does, so the coordinator is told.
    assert_eq!(
        notices(&t, "concern_handback"),
        [row("2027-07-01 12:00 Thu", "health_visitor", "da", "sent")]
    );
    assert_eq!(
        notices(&t, "handback_overdue"),
        [row("2027-07-03 12:00 Sat", "coordinator", "da", "sent")]
    );
    assert_eq!(
        moves(&t).last().map(|m| m.2.as_str()),
        Some("closed"),
        "{:?}",
        moves(&t)
    );
    assert!(
        !t.to_text().contains("2027-04-09"),
        "the birth date is sensitive"
    );
}

#[tokio::test]
async fn the_birth_cooperation_refuses_the_eleventh_conversation_and_ends_at_eighteen_months() {
    let t = snapshot(
        "rodovre-birth-cooperation",
        "rodovre-birth-cooperation",
        "P28M",
    )
    .await;
    let held = t
        .entries
        .iter()
        .filter(
            |e| matches!(e, Entry::Transition { cause, .. } if cause == "event conversation_held"),
        )
        .count();
    assert_eq!(held, 10, "ten conversations are held");
    let refused: Vec<(&str, &str)> = t
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Rejected { at, code, .. } => Some((at.as_str(), code.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        [("2027-03-31 11:00 Wed", "guard-false")],
        "the eleventh is refused"
    );
    // The family is reminded the day before its first conversation, inside quiet hours, in a
    // text that names neither the family house nor the reason.
    assert_eq!(
        notices(&t, "conversation_reminder"),
        [row("2027-01-19 10:00 Tue", "family", "da", "sent")]
    );
    let text = t.to_text();
    let sms = text
        .lines()
        .skip_while(|l| !l.contains("conversation_reminder"))
        .nth(1)
        .expect("the text");
    assert!(
        !sms.contains("Familiehus") && !sms.contains("Fødsel"),
        "{sms}"
    );
    // Born 2 May 2027: the family house lets go when the child is 18 months.
    assert_eq!(
        moves(&t).last().cloned(),
        Some((
            "2028-11-02 09:00 Thu".to_string(),
            "rodovre-birth-cooperation".to_string(),
            "completed".to_string()
        ))
    );

    // Born five weeks earlier: the end moves with the birth date.
    let mut early = script("rodovre-birth-cooperation");
    let birth = early
        .iter_mut()
        .find(|e| e.event == "birth_registered")
        .expect("birth");
    birth.at = "2027-03-29T08:00".into();
    birth.payload = json!({"birth_date": "2027-03-28"});
    let t = simulate_with(
        "rodovre-birth-cooperation",
        "rodovre-birth-cooperation",
        &early,
        "P28M",
    )
    .await;
    assert_eq!(
        moves(&t).last().map(|m| m.0.as_str()),
        Some("2028-09-28 09:00 Thu")
    );
}

#[tokio::test]
async fn a_lighter_case_is_enrolled_in_god_start_paa_livet_and_tracked_by_the_municipality() {
    let t = snapshot("rodovre-birth-cooperation", "rodovre-light", "P3M").await;
    let m = moves(&t);
    assert!(
        m.contains(&(
            "2027-01-13 09:00 Wed".into(),
            "rodovre-birth-cooperation".into(),
            "tracked".into()
        )),
        "{m:?}"
    );
    assert!(
        m.contains(&(
            "2027-01-13 09:00 Wed".into(),
            "red-cross-good-start".into(),
            "awaiting_match".into()
        )),
        "the same day, on the Red Cross pathway: {m:?}"
    );
    // The Red Cross coordinator gets the referral; the GP who referred hears of the match.
    assert_eq!(
        notices(&t, "referral_received"),
        [row("2027-01-13 09:00 Wed", "coordinator", "da", "sent")]
    );
    assert_eq!(
        notices(&t, "referral_accepted"),
        [row("2027-01-16 09:00 Sat", "referrer", "da", "sent")]
    );
    // The municipality keeps track: a monthly follow-up to its triage.
    let follow = notices(&t, "follow_up");
    assert_eq!(
        follow.first().map(|f| f.0.as_str()),
        Some("2027-02-01 09:00 Mon")
    );
    assert!(follow.iter().all(|f| f.1 == "triage"));
}

#[tokio::test]
async fn counselling_tells_the_midwife_and_holds_the_familys_reminder_for_quiet_hours() {
    let t = snapshot(
        "moedrehjaelpen-counselling",
        "moedrehjaelpen-counselling",
        "P3M",
    )
    .await;
    // No intake booked within five days of the referral: the lead is told.
    assert_eq!(
        notices(&t, "intake_overdue"),
        [row("2027-02-06 13:00 Sat", "team_lead", "da", "sent")]
    );
    // The referring midwife hears that the family was taken on.
    assert_eq!(
        notices(&t, "referral_accepted"),
        [row("2027-02-10 13:00 Wed", "referrer", "da", "sent")]
    );
    // The reminder for Sunday's 19:30 video session falls due Saturday 19:30, after the
    // weekend's quiet hours end (18:00): it waits until Sunday 10:00, in English.
    assert_eq!(
        notices(&t, "session_reminder"),
        [row("2027-02-21 10:00 Sun", "family", "en", "sent")]
    );
    let held = t.entries.iter().find_map(|e| match e {
        Entry::Notice { template, held, .. } if template == "session_reminder" => held.clone(),
        _ => None,
    });
    assert!(held.is_some_and(|h| h.contains("quiet hours")));
    let text = t.to_text();
    let sms = text
        .lines()
        .skip_while(|l| !l.contains("session_reminder ["))
        .nth(1)
        .expect("the text");
    assert!(sms.contains("video"), "{sms}");
    assert!(
        !sms.contains("Mødrehjælp") && !sms.contains("counselling"),
        "{sms}"
    );
    let refused: Vec<&str> = t
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Rejected { code, .. } => Some(code.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        ["bad-payload"],
        "a session by telepathy is refused"
    );
}

#[tokio::test]
async fn a_family_friend_visits_every_fortnight_for_a_year_after_a_late_start() {
    let t = snapshot(
        "red-cross-family-network",
        "red-cross-family-network",
        "P15M",
    )
    .await;
    assert_eq!(
        notices(&t, "start_overdue"),
        [row("2027-03-17 09:00 Wed", "team_lead", "da", "sent")]
    );
    let visits = notices(&t, "visit_reminder");
    assert_eq!(visits.len(), 24, "the 1st and the 15th for a year");
    assert_eq!(visits[0].0, "2027-04-01 10:00 Thu");
    assert_eq!(
        moves(&t).last().cloned(),
        Some((
            "2028-03-23 09:00 Thu".to_string(),
            "red-cross-family-network".to_string(),
            "completed".to_string()
        ))
    );
}

#[test]
fn the_catalogue_of_offers_is_current_and_names_every_pathway() {
    let out = run(&["catalogue", "pathways/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    golden(&root().join("docs/catalogue.md"), &text);
    for id in [
        "standard-track",
        "red-cross-good-start",
        "rodovre-birth-cooperation",
    ] {
        assert!(
            text.contains(&format!("<a id=\"{id}\"></a>")),
            "{id} missing"
        );
    }
    // The referral is read from the pathways, not written twice.
    assert!(
        text.contains(
            "- **Henvises fra:** `rodovre-birth-cooperation`, event `triaged_light` in `triage`"
        ),
        "{text}"
    );
    let html = stdout(&run(&["catalogue", "pathways/", "--format", "html"]));
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<code>rodovre-birth-cooperation</code>"));
    assert!(
        !html.contains("Sundhedsloven § 43 <"),
        "text is escaped, not markup"
    );
}
