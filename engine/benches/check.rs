//! How long the checker takes on a generated pathway of N states, and how that grows.
//!
//! `cargo bench -p carepath-engine --bench check`; figures in docs/benchmarks.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use carepath_engine::{PathwaySource, SourceFile, check};

/// A chain of `n` states, each with an owner, a notice, two transitions (one guarded), an
/// `after` timer and an activity, ending in a terminal state: every check has work to do.
pub fn generated(n: usize) -> PathwaySource {
    let mut states = serde_json::Map::new();
    for i in 0..n {
        let next = if i + 1 < n {
            format!("s{}", i + 1)
        } else {
            "end".into()
        };
        let skip = if i + 2 < n {
            format!("s{}", i + 2)
        } else {
            "end".into()
        };
        states.insert(
            format!("s{i}"),
            serde_json::json!({
                "owner": if i % 2 == 0 { "midwife" } else { "health_visitor" },
                "enter": [{"notify": {"to": "midwife", "template": "moved_on"}}],
                "on": [
                    {"event": "next", "to": next},
                    {"event": "skip", "guard": "fields.care_level >= 3", "to": skip},
                    {"event": "ended", "to": "end"}
                ],
                "timers": [{"after": "P1D", "to": next}],
                "activities": [{
                    "name": "contact", "role": "health_visitor",
                    "window": {"from": "PT1H", "to": "PT20H"},
                    "escalate_to": "midwife", "escalation_template": "moved_on", "done_on": "contact_done"
                }]
            }),
        );
    }
    states.insert("end".into(), serde_json::json!({"terminal": true}));
    let pathway = serde_json::json!({
        "id": format!("generated-{n}"), "version": 1, "title": "Generated", "horizon": format!("P{}D", n + 1),
        "roles": {"midwife": {"sector": "region"}, "health_visitor": {"sector": "municipality"}},
        "fields": {"care_level": {"type": "int"}},
        "events": {"next": {}, "skip": {}, "ended": {}, "contact_done": {}},
        "initial": "s0",
        "states": states
    });
    PathwaySource {
        pathway: SourceFile {
            path: "generated.json".into(),
            text: serde_json::to_string_pretty(&pathway).unwrap_or_default(),
        },
        templates: vec![SourceFile {
            path: "templates/moved_on.da.email.hbs".into(),
            text:
                "Subject: {{pathway.title}}\n\nFamily {{instance.ref}} is now in {{state.title}}.\n"
                    .into(),
        }],
    }
}

/// A chain of `n` lean states (an owner, an event and a timer each): the largest pathway that
/// fits the 16 MiB file limit at 100,000 states.
pub fn chain(n: usize) -> PathwaySource {
    let mut states = serde_json::Map::new();
    for i in 0..n {
        states.insert(
            format!("s{i}"),
            serde_json::json!({
                "owner": "midwife",
                "on": [{"event": "seen", "to": format!("s{}", i + 1)}],
                "timers": [{"after": "PT1H", "to": format!("s{}", i + 1)}]
            }),
        );
    }
    states.insert(
        format!("s{n}"),
        serde_json::json!({"terminal": true, "enter": [{"notify": {"to": "midwife", "template": "moved_on"}}]}),
    );
    let pathway = serde_json::json!({
        "id": format!("chain-{n}"), "version": 1, "title": "Chain", "horizon": "P300Y",
        "roles": {"midwife": {"sector": "region"}},
        "events": {"seen": {}},
        "initial": "s0",
        "states": states
    });
    PathwaySource {
        pathway: SourceFile {
            path: "chain.json".into(),
            text: serde_json::to_string(&pathway).unwrap_or_default(),
        },
        templates: vec![SourceFile {
            path: "templates/moved_on.da.email.hbs".into(),
            text: "Subject: x\n\nFamily {{instance.ref}}.\n".into(),
        }],
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    group.sample_size(20);
    for n in [100, 1_000, 5_000] {
        let source = generated(n);
        let report = check(std::slice::from_ref(&source));
        assert!(
            !report.has_errors(),
            "the generated pathway must be valid: {:?}",
            &report.diagnostics[..1]
        );
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &source, |b, s| {
            b.iter(|| check(std::slice::from_ref(s)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("check_chain");
    group.sample_size(10);
    {
        let n = 100_000;
        let source = chain(n);
        let report = check(std::slice::from_ref(&source));
        assert!(
            !report.has_errors(),
            "the chain must be valid: {:?}",
            &report.diagnostics[..1]
        );
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &source, |b, s| {
            b.iter(|| check(std::slice::from_ref(s)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
