//! Inputs an attacker or an accident could write: huge, deep or long. Every one ends in a
//! diagnostic, never a crash, and each check runs on a thread with the default 2 MiB stack,
//! as a worker's or a test harness's thread has.

use carepath_engine::{Code, PathwaySource, Report, SourceFile, check};
use serde_json::{Value, json};

/// Runs the checker on a thread with a 2 MiB stack, the default for spawned threads.
fn check_on_small_stack(text: String) -> Report {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            check(&[PathwaySource {
                pathway: SourceFile {
                    path: "pathway.json".into(),
                    text,
                },
                templates: vec![SourceFile {
                    path: "templates/hello.da.email.hbs".into(),
                    text: "Subject: hej\n\nhej\n".into(),
                }],
            }])
        })
        .expect("spawn")
        .join()
        .expect("the checker must not crash")
}

/// A chain of `n` states, each left by a timer a day later and by an event.
fn chain(n: usize) -> Value {
    let mut states = serde_json::Map::new();
    for i in 0..n {
        states.insert(
            format!("s{i}"),
            json!({
                "owner": "midwife",
                "on": [{"event": "seen", "to": format!("s{}", i + 1)}],
                "timers": [{"after": "PT1H", "to": format!("s{}", i + 1)}]
            }),
        );
    }
    states.insert(
        format!("s{n}"),
        json!({"terminal": true, "enter": [{"notify": {"to": "midwife", "template": "hello"}}]}),
    );
    json!({
        "id": "chain", "version": 1, "title": "Chain", "horizon": "P300Y",
        "roles": {"midwife": {"sector": "region"}},
        "fields": {"n": {"type": "int"}},
        "events": {"seen": {}},
        "initial": "s0",
        "states": states
    })
}

#[test]
fn a_hundred_thousand_states_are_checked_without_overflowing_the_stack() {
    let report = check_on_small_stack(chain(100_000).to_string());
    assert!(!report.has_errors(), "{:?}", report.diagnostics.first());
    assert_eq!(report.pathways.len(), 1);
}

fn with_guard(guard: &str) -> String {
    let mut p = chain(2);
    p["states"]["s0"]["on"][0]["guard"] = json!(guard);
    p.to_string()
}

#[test]
fn deep_and_long_guards_end_in_a_diagnostic() {
    let parens = format!("{}fields.n{} > 1", "(".repeat(70), ")".repeat(70));
    let lists = format!("size({}1{}) > 0", "[".repeat(50), "]".repeat(50));
    let sum = format!("{} > 1", vec!["fields.n"; 5000].join(" + "));
    let deep_parens = format!("{}fields.n{} > 1", "(".repeat(5000), ")".repeat(5000));
    for guard in [parens, lists, sum, deep_parens] {
        let report = check_on_small_stack(with_guard(&guard));
        let codes: Vec<Code> = report.diagnostics.iter().map(|d| d.code).collect();
        assert!(
            codes.contains(&Code::GuardTooComplex),
            "{}…: {codes:?}",
            &guard[..40]
        );
    }
    // An ordinary guard of some depth still passes.
    let fine = check_on_small_stack(with_guard("((fields.n + 1) * 2 > 3) && [1, 2].size() > 1"));
    assert!(!fine.has_errors(), "{:?}", fine.diagnostics);
}

use carepath_engine::expr::{Expression, Scope};
use proptest::prelude::*;

/// Guards as a hasty or hostile author writes them: real operators and names, nested to
/// random depths, and plain noise.
fn guard() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("fields.n".to_string()),
        Just("payload.n".to_string()),
        Just("1".to_string()),
        Just("\"x\"".to_string()),
        Just("[1, 2]".to_string()),
        Just("has(fields.n)".to_string()),
    ];
    let nested = leaf.prop_recursive(24, 256, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} + {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} >= {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("[{a}]")),
            inner.clone().prop_map(|a| format!("!{a}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a} ? {b} : 0")),
        ]
    });
    prop_oneof![nested, "[()\\[\\]{}a-z0-9 .+*/%<>=!&|?:,\"-]{0,300}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every guard ends in a value, a refusal or an evaluation error, on a 2 MiB stack: the
    /// limits keep the recursive parser and evaluator within it.
    #[test]
    fn guards_end_in_a_result_never_a_crash(text in guard()) {
        let outcome = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let fields = serde_json::from_value(json!({"n": {"type": "int"}})).expect("fields");
                let scope = Scope { fields: &fields, payload: None };
                match Expression::compile(&text) {
                    Err(_) => "refused",
                    Ok(e) => {
                        let _ = e.check(&scope);
                        let values = serde_json::from_value(json!({"n": 3})).expect("values");
                        match e.eval(&values, &json!({"n": 2})) {
                            Ok(_) => "value",
                            Err(_) => "error",
                        }
                    }
                }
            })
            .expect("spawn")
            .join();
        prop_assert!(outcome.is_ok(), "the guard crashed the thread");
    }
}
