//! The engine's notices rendered by the notifier: every notice a real pathway sends renders in
//! every language it has, and family SMS stay short.

use carepath_engine::pathway::Sector;
use carepath_engine::{Input, check, start, step};
use carepath_notifier::{Renderer, sms};
use serde_json::json;

use super::support::root;

/// The real pathways, loaded together: the standard track refers into the others.
fn all_pathways() -> Vec<carepath_engine::PathwaySource> {
    carepath_worker::load::load(&[root().join("pathways")]).expect("load")
}

fn standard_track(report: &carepath_engine::Report) -> &carepath_engine::CheckedPathway {
    report
        .pathways
        .iter()
        .find(|p| p.pathway.id == "standard-track")
        .expect("the standard track checks")
}

#[test]
fn a_standard_track_run_renders_every_notice() {
    let report = check(&all_pathways());
    let p = standard_track(&report);
    let renderer = Renderer::new(p).expect("templates compile");

    let mut now: jiff::Timestamp = "2027-01-11T08:00:00Z".parse().expect("time");
    let fields = json!({"due_date": "2027-08-20", "cpr": "0101901234"});
    let mut effects = start(p, fields.as_object().expect("object").clone(), now).expect("enrol");
    let mut notices = effects.notices.clone();
    let script = [
        ("first_exam_done", json!({"care_level": 3})),
        ("referral_accepted", json!(null)),
        (
            "appointment_booked",
            json!({"appointment_id": "scan-1", "at": "2027-02-15T09:30:00+01:00", "place": "Ambulatorium 2, indgang 5"}),
        ),
        ("nuchal_scan_done", json!(null)),
    ];
    for (name, payload) in script {
        effects = step(
            p,
            &effects.instance,
            &Input::Event {
                name: name.into(),
                payload,
            },
            now,
        )
        .expect(name);
        notices.extend(effects.notices.clone());
    }
    // Let the timers run until the birth is overdue: reminders, escalations, the handoff.
    while let Some(t) = effects
        .instance
        .timers
        .iter()
        .min_by_key(|t| t.due)
        .cloned()
    {
        now = now.max(t.due);
        effects = step(p, &effects.instance, &Input::Timer { key: t.key }, now).expect("timer");
        notices.extend(effects.notices.clone());
        if effects.instance.state == "birth_overdue" {
            break;
        }
    }
    effects = step(
        p,
        &effects.instance,
        &Input::Event {
            name: "birth_registered".into(),
            payload: json!({"birth_date": "2027-08-28"}),
        },
        now,
    )
    .expect("birth");
    notices.extend(effects.notices.clone());

    let templates: std::collections::BTreeSet<_> =
        notices.iter().map(|n| n.template.as_str()).collect();
    for expected in [
        "activity_due",
        "activity_overdue",
        "pregnancy_referral",
        "pregnancy_visit_referral",
        "appointment_reminder",
        "birth_notice_missing",
        "birth_notice",
    ] {
        assert!(
            templates.contains(expected),
            "no {expected} notice in the run: {templates:?}"
        );
    }
    for n in &notices {
        let role = &p.pathway.roles[&n.to];
        let mut data = n.data.clone();
        data["recipient"] = json!({"name": "Test Modtager", "role": n.to});
        data["instance"] = json!({"ref": "FAM-0001"});
        for channel in role.channels() {
            for lang in ["da", "en", "ar"] {
                let r = renderer
                    .render(&n.template, channel, lang, &data)
                    .unwrap_or_else(|e| panic!("{}: {e}", n.template));
                assert!(
                    !r.body.contains("0101901234")
                        && !r.html.as_deref().unwrap_or("").contains("0101901234"),
                    "a CPR number in {}",
                    n.template
                );
                if role.sector == Sector::Family {
                    let s = sms::segments(&r.body);
                    assert!(
                        s.segments <= 2,
                        "{} in {lang} is {} segments: {}",
                        n.template,
                        s.segments,
                        r.body
                    );
                }
            }
        }
    }
    let reminder = notices
        .iter()
        .find(|n| n.template == "appointment_reminder")
        .expect("reminder");
    let mut data = reminder.data.clone();
    data["recipient"] = json!({"name": "Amal", "role": "family"});
    data["instance"] = json!({"ref": "FAM-0001"});
    let reminder_in = |lang: &str| {
        renderer
            .render(
                "appointment_reminder",
                carepath_engine::pathway::Channel::Sms,
                lang,
                &data,
            )
            .unwrap_or_else(|e| panic!("{lang}: {e}"))
    };
    let da = reminder_in("da");
    assert_eq!(
        da.body,
        "Påmindelse: Du har en aftale mandag den 15. februar 2027 kl. 09.30, Ambulatorium 2, indgang 5. Kan du ikke komme, så ring på 70 20 30 40."
    );
    let ar = reminder_in("ar");
    assert_eq!(ar.language, "ar");
    assert_eq!(sms::segments(&ar.body).encoding, sms::Encoding::Ucs2);
    // Turkish has no translation: the default language is used.
    let tr = reminder_in("tr");
    assert_eq!(tr.language, "da");
}

#[test]
fn an_html_body_escapes_values_and_the_text_body_keeps_them() {
    let report = check(&all_pathways());
    let renderer = Renderer::new(standard_track(&report)).expect("templates compile");
    let data = json!({
        "recipient": {"name": "Jordemødre <Syd> & Vest", "role": "midwife"},
        "instance": {"ref": "FAM-0001"},
        "handoff": {"from": "gp", "to": "midwife", "deadline": "2027-01-14T08:00:00Z"},
    });
    let r = renderer
        .render(
            "pregnancy_referral",
            carepath_engine::pathway::Channel::Email,
            "da",
            &data,
        )
        .expect("render");
    assert!(
        r.body.contains("Kære Jordemødre <Syd> & Vest"),
        "{}",
        r.body
    );
    let html = r.html.expect("the template has an HTML body");
    assert!(
        html.contains("<p>Kære Jordemødre &lt;Syd&gt; &amp; Vest</p>"),
        "{html}"
    );
    assert!(
        html.contains("<strong>torsdag den 14. januar 2027 kl. 09.00</strong>"),
        "{html}"
    );
    // A template without an HTML body is text only.
    let r = renderer
        .render(
            "birth_notice",
            carepath_engine::pathway::Channel::Email,
            "da",
            &data,
        )
        .expect("render");
    assert_eq!(r.html, None);
}
