//! The cohort the benchmarks share: a national year of standard-track families, the same every
//! run, with the events their professionals report.

use anyhow::{Result, bail};
use jiff::ToSpan;
use jiff::civil::Date;
use serde_json::{Value, json};

use carepath_worker::runtime::{EnrolRequest, EventRequest};
use carepath_worker::store::Contact;

/// A contact with an email address or a phone number.
pub fn contact(name: &str, email: Option<&str>, phone: Option<&str>) -> Contact {
    Contact {
        name: name.into(),
        email: email.map(str::to_string),
        phone: phone.map(str::to_string),
        language: "da".into(),
        channel: None,
    }
}

/// A cheap, fixed scramble of the family number, so the cohort is the same every run.
pub fn scramble(i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
}

/// One family of the cohort: due 190–231 days after enrolment, born up to two weeks either
/// side of it.
pub struct Plan {
    pub due: i64,
    pub first_exam: i64,
    pub birth: i64,
}

pub fn plan(i: usize) -> Plan {
    let h = scramble(i);
    let due = 190 + (h % 42) as i64;
    Plan {
        due,
        first_exam: 3 + ((h >> 8) % 7) as i64,
        birth: due - 14 + ((h >> 16) % 29) as i64,
    }
}

pub fn cohort_family(i: usize, start: Date) -> Result<EnrolRequest> {
    let p = plan(i);
    let fields =
        json!({"due_date": start.checked_add(p.due.days())?.to_string(), "cpr": "0101901234"});
    let Value::Object(fields) = fields else {
        bail!("fields")
    };
    let contacts = [
        ("gp", contact("Lægehuset", Some("laege@example.dk"), None)),
        (
            "midwife",
            contact("Jordemoder", Some("jordemoder@example.dk"), None),
        ),
        (
            "coordinator",
            contact("Koordinator", Some("koordinator@example.dk"), None),
        ),
        (
            "health_visitor",
            contact("Sundhedsplejen", Some("sundhedspleje@example.dk"), None),
        ),
        (
            "team_lead",
            contact("Leder", Some("leder@example.dk"), None),
        ),
        ("family", contact("Familie", None, Some("+4520123456"))),
    ]
    .into_iter()
    .map(|(r, c)| (r.to_string(), c))
    .collect();
    Ok(EnrolRequest {
        reference: format!("C-{i:06}"),
        pathway: "standard-track".into(),
        fields,
        contacts,
    })
}

/// The events family `i` reports on day `day` after enrolment.
pub fn cohort_events(i: usize, day: i64, start: Date) -> Result<Vec<EventRequest>> {
    let p = plan(i);
    let reference = format!("C-{i:06}");
    let event = |name: &str, payload: Value| EventRequest {
        instance_id: None,
        key: format!("{reference}:{name}"),
        reference: reference.clone(),
        pathway: None,
        event: name.into(),
        payload,
        contacts: Default::default(),
    };
    let mut out = Vec::new();
    if day == p.first_exam {
        out.push(event(
            "first_exam_done",
            json!({"care_level": 1 + scramble(i) % 4}),
        ));
    }
    if day == p.first_exam + 2 {
        out.push(event("referral_accepted", json!({})));
    }
    if day == p.birth {
        let born = start.checked_add(p.birth.days())?.to_string();
        out.push(event("birth_registered", json!({"birth_date": born})));
    }
    if day == p.birth + 1 {
        out.push(event("birth_notice_received", json!({})));
    }
    Ok(out)
}
