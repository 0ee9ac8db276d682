//! Property tests over the real pathways: random event and timer sequences through the step
//! function, and random bytes and mutations through the checker.

mod common;

use std::collections::HashSet;

use carepath_engine::step::{OverdueKind, Purpose, Status};
use carepath_engine::{
    CheckedPathway, Input, Instance, PathwaySource, SourceFile, StepError, check, start, step,
};
use common::{real_pathways, real_sources};
use jiff::{Span, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One thing that can happen to an instance.
#[derive(Clone, Debug)]
enum Op {
    /// An event chosen by index among the declared ones, with a payload seed.
    Event(usize, u32),
    /// The earliest pending timer fires.
    NextTimer,
    /// A pending timer chosen by index fires early (as after a clock jump it may).
    SomeTimer(usize),
    /// A timer that was cancelled earlier is delivered late (a stale claim).
    StaleTimer(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), any::<u32>()).prop_map(|(i, s)| Op::Event(i, s)),
        4 => Just(Op::NextTimer),
        1 => any::<usize>().prop_map(Op::SomeTimer),
        1 => any::<usize>().prop_map(Op::StaleTimer),
    ]
}

/// A payload that fits the event's declaration, varied by `seed`.
fn payload(
    p: &CheckedPathway,
    event: &str,
    seed: u32,
    now: Timestamp,
    due: jiff::civil::Date,
) -> Value {
    let decl = p.pathway.event(event).expect("declared");
    let mut obj = serde_json::Map::new();
    for (name, f) in &decl.payload {
        if !f.required && seed.is_multiple_of(3) {
            continue;
        }
        let v = match f.ty {
            carepath_engine::pathway::FieldType::Date => {
                let d = due
                    .checked_add(Span::new().days(i64::from(seed % 60) - 30))
                    .unwrap_or(due);
                json!(d.to_string())
            }
            carepath_engine::pathway::FieldType::Datetime => {
                // An appointment ends an hour after it starts.
                let hours = i64::from(seed % 2000) + i64::from(name == "ends");
                let t = now.checked_add(Span::new().hours(hours)).unwrap_or(now);
                json!(t.to_string())
            }
            carepath_engine::pathway::FieldType::Int => json!(1 + seed % 4),
            carepath_engine::pathway::FieldType::Bool => json!(seed.is_multiple_of(2)),
            carepath_engine::pathway::FieldType::Text if name == "appointment_id" => {
                json!(format!("a{}", seed % 3))
            }
            carepath_engine::pathway::FieldType::Text => json!("x"),
            carepath_engine::pathway::FieldType::Enum => json!(
                f.values
                    .as_ref()
                    .and_then(|v| v.first())
                    .cloned()
                    .unwrap_or_default()
            ),
        };
        obj.insert(name.clone(), v);
    }
    Value::Object(obj)
}

fn invariants(p: &CheckedPathway, i: &Instance) {
    let decl = &p.pathway;
    let state = decl
        .states
        .get(&i.state)
        .unwrap_or_else(|| panic!("undeclared state {}", i.state));
    match i.status {
        Status::Active => {
            assert!(!state.terminal, "active in terminal state {}", i.state);
            let owner = i
                .owner
                .as_deref()
                .unwrap_or_else(|| panic!("no owner in {}", i.state));
            assert!(
                decl.roles.contains_key(owner),
                "owner {owner} is not a role"
            );
        }
        Status::Finished => {
            // Only the horizon closes an instance where it is, and only when the pathway
            // names no state to stop in.
            assert!(
                state.terminal || decl.on_horizon.is_none(),
                "finished in non-terminal state {}",
                i.state
            );
            assert!(
                i.timers.is_empty(),
                "a finished instance keeps timers: {:?}",
                i.timers
            );
        }
    }
    // Who is waited on belongs to the current visit of the state: nobody, once it is over.
    if i.status == Status::Finished {
        assert!(
            i.overdue.is_empty(),
            "a finished instance waits on {:?}",
            i.overdue
        );
    }
    for o in &i.overdue {
        match o.kind {
            OverdueKind::Activity => assert!(
                i.open_activities.contains(&o.name)
                    && state.activities.iter().any(|a| a.name == o.name),
                "overdue activity {} is not open in {}",
                o.name,
                i.state
            ),
            OverdueKind::Handoff => assert!(
                decl.events.contains_key(&o.name),
                "overdue handoff waits on undeclared event {}",
                o.name
            ),
        }
    }
    let mut keys = HashSet::new();
    let visit = format!("s{}:", i.entered_seq);
    for t in &i.timers {
        assert!(keys.insert(&t.key), "duplicate timer key {}", t.key);
        match &t.purpose {
            Purpose::AppointmentReminder { appointment, .. } => {
                assert!(
                    i.appointments.contains_key(appointment),
                    "reminder for an unknown appointment"
                );
            }
            // The horizon belongs to the instance, not to a visit of a state.
            Purpose::Horizon => assert_eq!(t.key, carepath_engine::step::HORIZON_KEY),
            _ => assert!(
                t.key.starts_with(&visit),
                "timer {} does not belong to the current visit of {}",
                t.key,
                i.state
            ),
        }
        if let Purpose::State { index } = t.purpose {
            assert!(
                index < state.timers.len(),
                "timer index out of the state's timers"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The instance is always in a declared state, an active one always has an owner, and a
    /// timer of a state that was left never fires.
    #[test]
    fn random_runs_keep_the_invariants(ops in prop::collection::vec(op(), 1..60), pick in any::<usize>(), days in 0i64..300) {
        let pathways = real_pathways();
        let p = &pathways[pick % pathways.len()];
        let mut now: Timestamp = "2027-01-04T08:00:00Z".parse().expect("time");
        let due = jiff::civil::date(2027, 8, 1).checked_add(Span::new().days(days)).expect("date");
        let mut fields = serde_json::Map::new();
        for (name, f) in &p.pathway.fields {
            if f.required {
                // A date no later than the pathway allows after enrolment (`within`).
                let latest = f.within.as_ref().map(|w| {
                    jiff::civil::date(2027, 1, 4).checked_add(w.span()).expect("latest")
                });
                let v = match f.ty {
                    carepath_engine::pathway::FieldType::Date => {
                        json!(latest.map_or(due, |l| due.min(l)).to_string())
                    }
                    carepath_engine::pathway::FieldType::Int => json!(1),
                    carepath_engine::pathway::FieldType::Bool => json!(true),
                    carepath_engine::pathway::FieldType::Enum => json!(f.values.as_ref().and_then(|v| v.first()).cloned().unwrap_or_default()),
                    _ => json!("x"),
                };
                fields.insert(name.clone(), v);
            }
        }
        let effects = start(p, fields, now).expect("enrol");
        let mut instance = effects.instance;
        invariants(p, &instance);
        let mut gone: Vec<String> = Vec::new();
        let mut events: Vec<String> = p.pathway.events.keys().cloned().collect();
        if p.pathway.appointments.is_some() {
            events.extend(["appointment_booked", "appointment_moved", "appointment_cancelled"].map(String::from));
        }
        for op in ops {
            let input = match op {
                Op::Event(i, _) if events.is_empty() => { let _ = i; continue }
                Op::Event(i, seed) => {
                    let name = events[i % events.len()].clone();
                    Input::Event { payload: payload(p, &name, seed, now, due), name }
                }
                Op::NextTimer | Op::SomeTimer(_) if instance.timers.is_empty() => continue,
                Op::NextTimer => {
                    let t = instance.timers.iter().min_by_key(|t| t.due).expect("timer").clone();
                    now = now.max(t.due);
                    Input::Timer { key: t.key }
                }
                Op::SomeTimer(i) => Input::Timer { key: instance.timers[i % instance.timers.len()].key.clone() },
                Op::StaleTimer(_) if gone.is_empty() => continue,
                Op::StaleTimer(i) => {
                    let key = gone[i % gone.len()].clone();
                    let before = instance.clone();
                    let r = step(p, &instance, &Input::Timer { key: key.clone() }, now);
                    if instance.status == Status::Active {
                        prop_assert!(matches!(r, Err(StepError::StaleTimer { .. })), "stale timer {key} fired: {r:?}");
                    }
                    prop_assert_eq!(&before, &instance);
                    continue;
                }
            };
            match step(p, &instance, &input, now) {
                Ok(effects) => {
                    prop_assert!(effects.history.seq == instance.seq + 1);
                    for k in &effects.cancelled {
                        prop_assert!(instance.timers.iter().any(|t| &t.key == k), "cancelled a timer that was not pending: {k}");
                    }
                    gone.extend(effects.cancelled.iter().cloned());
                    for n in &effects.notices {
                        prop_assert!(p.pathway.roles.contains_key(&n.to));
                        let fields = n.data["fields"].as_object().expect("fields");
                        for (k, f) in &p.pathway.fields {
                            prop_assert!(!(f.sensitive && fields.contains_key(k)), "sensitive field {k} in a notice");
                        }
                    }
                    instance = effects.instance;
                    invariants(p, &instance);
                }
                Err(StepError::Finished { .. }) => prop_assert_eq!(instance.status, Status::Finished),
                Err(StepError::NotAllowed { .. } | StepError::GuardFalse { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected refusal of {input:?} in {}: {e}", instance.state),
            }
        }
    }
}

/// Mutations of real pathway text that a coordinator's typing could make.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, char),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                '{', '}', '[', ']', '"', ',', ':', '\\', 'x', '0', '-', 'é', '\n'
            ])
        )
            .prop_map(|(a, c)| Mutation::Insert(a, c)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let boundary = |i: usize| {
        let mut i = i % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match *m {
        Mutation::Delete(a, n) => {
            let a = boundary(a);
            let b = boundary(a + n).max(a);
            format!("{}{}", &text[..a], &text[b..])
        }
        Mutation::Insert(a, c) => {
            let a = boundary(a);
            format!("{}{c}{}", &text[..a], &text[a..])
        }
        Mutation::DuplicateLine(i) | Mutation::SwapLines(i, _) if text.lines().count() == 0 => {
            let _ = i;
            text.to_string()
        }
        Mutation::DuplicateLine(i) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let n = lines.len();
            lines.swap(a % n, b % n);
            lines.join("\n")
        }
    }
}

/// Replaces the value at a random place of the JSON tree with another JSON value.
fn replace_somewhere(v: &mut Value, mut at: usize, with: Value) -> bool {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let n = m.len();
            let key = m.keys().nth(at % n).cloned().expect("key");
            at /= n;
            if at.is_multiple_of(3) {
                m.insert(key, with);
                true
            } else {
                replace_somewhere(m.get_mut(&key).expect("value"), at / 3, with)
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            let i = at % n;
            if (at / n).is_multiple_of(3) {
                a[i] = with;
                true
            } else {
                replace_somewhere(&mut a[i], at / n / 3, with)
            }
        }
        _ => {
            *v = with;
            true
        }
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        prop::sample::select(vec![
            "",
            "P1D",
            "-P2W",
            "P99999Y",
            "0 10 * * MON",
            "* * *",
            "done",
            "waiting",
            "family",
            "fields.x > 1",
            "{{",
            "Europe/Nowhere",
            "birth_date"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "to", "after", "at", "every", "owner", "terminal", "on", "event", "guard",
                    "notify", "handoff", "anchor", "offset"
                ]),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The checker never panics on any bytes.
    #[test]
    fn checker_survives_random_text(text in "\\PC{0,400}") {
        let source = PathwaySource { pathway: SourceFile { path: "fuzz.json".into(), text }, templates: vec![] };
        let report = check(&[source]);
        for d in &report.diagnostics {
            prop_assert!(d.line >= 1 && d.column >= 1);
        }
    }

    /// The checker never panics on typing mistakes in real pathways, and every error it finds
    /// is located; what it accepts, the step function can start.
    #[test]
    fn checker_survives_mutated_pathways(pick in any::<usize>(), muts in prop::collection::vec(mutation(), 1..4)) {
        let sources = real_sources();
        let mut source = sources[pick % sources.len()].clone();
        for m in &muts {
            source.pathway.text = apply(&source.pathway.text, m);
        }
        let report = check(&[source]);
        for d in &report.diagnostics {
            prop_assert!(d.line >= 1 && d.column >= 1, "unlocated {d:?}");
        }
    }

    /// The checker never panics when any part of a real pathway is replaced by other JSON, and
    /// what it accepts can be enrolled without a panic.
    #[test]
    fn checker_survives_replaced_subtrees(pick in any::<usize>(), at in any::<usize>(), with in any_json()) {
        let sources = real_sources();
        let mut source = sources[pick % sources.len()].clone();
        let mut value: Value = serde_json::from_str(&source.pathway.text).expect("json");
        replace_somewhere(&mut value, at, with);
        source.pathway.text = serde_json::to_string_pretty(&value).expect("text");
        let report = check(&[source]);
        for p in &report.pathways {
            let mut fields = serde_json::Map::new();
            for (name, f) in &p.pathway.fields {
                if f.required && f.ty == carepath_engine::pathway::FieldType::Date {
                    fields.insert(name.clone(), json!("2027-08-01"));
                }
            }
            let _ = start(p, fields, "2027-01-04T08:00:00Z".parse().expect("time"));
        }
    }
}
