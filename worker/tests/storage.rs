//! The storage conformance suite: what every backend must do, whatever its SQL.
//!
//! Each property is one generic function over [`Storage`]; the `backend!` macro at the end
//! runs every one of them against a backend. A new backend (PostgreSQL) adds one line there
//! and must pass the same suite.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, json};

use carepath_engine::pathway::Channel;
use carepath_engine::step::{
    ArmedTimer, Cause, History, Instance, Overdue, OverdueKind, Purpose, Status,
};
use carepath_engine::{PathwaySource, SourceFile};
use carepath_worker::store::{
    AuditEntry, AuditFilter, Changes, Contact, ContactRef, Delivery, EventRecord, InstanceFilter,
    InstanceUpdate, KeptResponse, NewInstance, NewNotice, NoticeStatus, NoticeText, OutboxFilter,
    Outcome, PgStore, ReceiptOutcome, ReceiptReport, ReceiptState, Requeue, SqliteStore, Storage,
    StoreError, Stored, Target, Tx, Withdraw, Withdrawn,
};

fn t0() -> Timestamp {
    "2027-03-01T09:00:00Z".parse().expect("timestamp")
}

fn minutes(n: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(n)
}

fn source(text: &str) -> PathwaySource {
    PathwaySource {
        pathway: SourceFile {
            path: "p/pathway.json".into(),
            text: text.into(),
        },
        templates: vec![SourceFile {
            path: "p/templates/hello.da.email.hbs".into(),
            text: "Subject: Hej\n\nHej {{recipient.name}}\n".into(),
        }],
    }
}

fn timer(key: &str, due: Timestamp) -> ArmedTimer {
    ArmedTimer {
        key: key.into(),
        due,
        purpose: Purpose::State { index: 0 },
    }
}

fn instance(state: &str, seq: u64, timers: Vec<ArmedTimer>) -> Instance {
    Instance {
        state: state.into(),
        owner: Some("midwife".into()),
        fields: Map::new(),
        status: Status::Active,
        entered_at: t0(),
        seq,
        entered_seq: seq,
        timers,
        open_activities: Vec::new(),
        appointments: BTreeMap::new(),
        overdue: Vec::new(),
        enrolled_at: Some(t0()),
    }
}

fn contact(name: &str) -> Contact {
    Contact {
        name: name.into(),
        email: Some(format!("{}@example.dk", name.to_lowercase())),
        phone: None,
        language: "da".into(),
        channel: None,
    }
}

fn history(seq: u64, from: Option<&str>, to: &str) -> History {
    History {
        seq,
        at: t0(),
        from: from.map(str::to_string),
        to: to.into(),
        cause: if from.is_none() {
            Cause::Enrolled
        } else {
            Cause::Event { name: "go".into() }
        },
        notes: vec![],
    }
}

fn notice(key: &str, version: i64, contact: Option<ContactRef>, status: NoticeStatus) -> NewNotice {
    NewNotice {
        key: key.into(),
        pathway_version_id: version,
        template: "hello".into(),
        role: "midwife".into(),
        family: false,
        contact,
        channel: None,
        address: Some("anne@example.dk".into()),
        text: NoticeText {
            language: Some("da".into()),
            subject: Some("Hej".into()),
            body: Some("Hej Anne".into()),
            html: Some("<p>Hej Anne</p>".into()),
        },
        data: None,
        status,
        not_before: t0(),
        expires_at: None,
        topic: None,
        calendar: None,
        error: None,
    }
}

fn event(key: &str, reference: &str, outcome: Outcome) -> EventRecord {
    EventRecord {
        key: key.into(),
        reference: reference.into(),
        pathway: None,
        instance_id: None,
        name: "go".into(),
        payload: json!({"n": 1}),
        received_at: t0(),
        outcome,
        code: (outcome == Outcome::Rejected).then(|| "guard-false".into()),
        reason: (outcome == Outcome::Rejected).then(|| "the guard is false".into()),
        seq: (outcome == Outcome::Applied).then_some(2),
        fingerprint: Some(format!("fingerprint of {key}")),
    }
}

async fn version<S: Storage>(store: &S) -> i64 {
    match store
        .put_pathway(&source("{}"), "p", 1, t0())
        .await
        .expect("store pathway")
    {
        Stored::Added(id) | Stored::Unchanged(id) => id,
    }
}

/// Writes `changes` in one committed transaction.
async fn commit<S: Storage>(store: &S, changes: Changes) {
    let mut tx = store.begin().await.expect("begin");
    tx.write(changes).await.expect("write");
    tx.commit().await.expect("commit");
}

/// Enrols `reference` in one committed batch; returns the instance id.
async fn enrol<S: Storage>(store: &S, reference: &str, timers: Vec<ArmedTimer>) -> i64 {
    let version = version(store).await;
    let mut tx = store.begin().await.expect("begin");
    let ids = tx
        .write(Changes {
            now: t0(),
            contacts: vec![contact("Anne")],
            new_instances: vec![NewInstance {
                reference: reference.into(),
                pathway: "p".into(),
                pathway_version_id: version,
                instance: instance("waiting", 1, timers.clone()),
                roles: [("midwife".to_string(), ContactRef::New(0))].into(),
                parent: None,
            }],
            timers_added: timers.into_iter().map(|t| (Target::New(0), t)).collect(),
            history: vec![(Target::New(0), history(1, None, "waiting"))],
            ..Changes::default()
        })
        .await
        .expect("write");
    tx.commit().await.expect("commit");
    ids[0]
}

// --- the properties ------------------------------------------------------------------------

async fn pathway_versions_are_immutable<S: Storage>(store: &S) {
    let first = store.put_pathway(&source("{\"a\":1}"), "p", 1, t0()).await;
    let Ok(Stored::Added(id)) = first else {
        panic!("first store: {first:?}")
    };
    let again = store
        .put_pathway(&source("{\"a\":1}"), "p", 1, minutes(1))
        .await;
    assert!(
        matches!(again, Ok(Stored::Unchanged(same)) if same == id),
        "{again:?}"
    );
    let changed = store
        .put_pathway(&source("{\"a\":2}"), "p", 1, minutes(2))
        .await;
    assert!(
        matches!(changed, Err(StoreError::VersionChanged { ref pathway, version: 1 }) if pathway == "p"),
        "{changed:?}"
    );
    let next = store
        .put_pathway(&source("{\"a\":2}"), "p", 2, minutes(3))
        .await;
    assert!(matches!(next, Ok(Stored::Added(_))), "{next:?}");
    let stored = store.pathways().await.expect("pathways");
    let versions: Vec<(u32, &str)> = stored
        .iter()
        .map(|p| (p.version, p.source.pathway.text.as_str()))
        .collect();
    assert_eq!(versions, [(1, "{\"a\":1}"), (2, "{\"a\":2}")]);
    assert_eq!(stored[0].source, source("{\"a\":1}"));
    assert_eq!(stored[0].loaded_at, t0());
}

async fn a_batch_round_trips<S: Storage>(store: &S) {
    let version = version(store).await;
    let mut tx = store.begin().await.expect("begin");
    let mut child = instance("child", 1, vec![timer("c/1/0", minutes(30))]);
    child.fields.insert("due_date".into(), json!("2027-08-20"));
    let ids = tx
        .write(Changes {
            now: t0(),
            contacts: vec![contact("Anne"), contact("Bo")],
            new_instances: vec![
                NewInstance {
                    reference: "FAM-1".into(),
                    pathway: "p".into(),
                    pathway_version_id: version,
                    instance: instance("waiting", 1, vec![timer("w/1/0", minutes(10))]),
                    roles: [("midwife".to_string(), ContactRef::New(0))].into(),
                    parent: None,
                },
                NewInstance {
                    reference: "FAM-1".into(),
                    pathway: "q".into(),
                    pathway_version_id: version,
                    instance: child.clone(),
                    roles: [("midwife".to_string(), ContactRef::New(1))].into(),
                    parent: Some(Target::New(0)),
                },
            ],
            timers_added: vec![
                (Target::New(0), timer("w/1/0", minutes(10))),
                (Target::New(1), timer("c/1/0", minutes(30))),
            ],
            history: vec![
                (Target::New(0), history(1, None, "waiting")),
                (Target::New(1), history(1, None, "child")),
            ],
            outbox: vec![(
                Target::New(0),
                notice(
                    "1:hello:midwife",
                    version,
                    Some(ContactRef::New(0)),
                    NoticeStatus::Queued,
                ),
            )],
            events: vec![(
                Some(Target::New(0)),
                event("k-1", "FAM-1", Outcome::Applied),
            )],
            ..Changes::default()
        })
        .await
        .expect("write");
    tx.commit().await.expect("commit");
    assert_eq!(ids.len(), 2);
    let (parent, child_id) = (ids[0], ids[1]);

    let rows = store.instances_by_ref("FAM-1").await.expect("by ref");
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [parent, child_id]
    );
    assert_eq!(rows[1].parent_id, Some(parent));
    assert_eq!(rows[1].pathway, "q");
    assert_eq!(
        rows[1].instance, child,
        "the engine's instance comes back as written"
    );
    assert_eq!(rows[0].pathway_version_id, version);
    let contacts = store
        .contacts(&[rows[0].roles["midwife"], rows[1].roles["midwife"]])
        .await
        .expect("contacts");
    let names: Vec<&str> = contacts.values().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Anne", "Bo"]);

    let timers = store.timers(child_id).await.expect("timers");
    assert_eq!(timers.len(), 1);
    assert_eq!(
        (timers[0].key.as_str(), timers[0].due),
        ("c/1/0", minutes(30))
    );
    assert_eq!(store.next_due().await.expect("next due"), Some(minutes(10)));
    let h = store.history(child_id).await.expect("history");
    assert_eq!(h, [history(1, None, "child")]);

    let outbox = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].key, format!("{parent}:1:hello:midwife"));
    assert_eq!(outbox[0].reference, "FAM-1");
    assert_eq!(outbox[0].status, NoticeStatus::Queued);
    assert_eq!(outbox[0].text.body.as_deref(), Some("Hej Anne"));
    assert_eq!(outbox[0].text.html.as_deref(), Some("<p>Hej Anne</p>"));

    let events = store.events("FAM-1").await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].instance_id, Some(parent));
    assert_eq!(events[0].payload, json!({"n": 1}));
    let mut tx = store.begin().await.expect("begin");
    let seen = tx
        .events_by_key(&["k-1".into(), "k-2".into()])
        .await
        .expect("by key");
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["k-1"]);
}

async fn an_uncommitted_transaction_leaves_nothing<S: Storage>(store: &S) {
    let version = version(store).await;
    {
        let mut tx = store.begin().await.expect("begin");
        tx.write(Changes {
            now: t0(),
            new_instances: vec![NewInstance {
                reference: "FAM-GONE".into(),
                pathway: "p".into(),
                pathway_version_id: version,
                instance: instance("waiting", 1, vec![]),
                roles: BTreeMap::new(),
                parent: None,
            }],
            ..Changes::default()
        })
        .await
        .expect("write");
        // Dropped: a crash before the commit.
    }
    assert!(
        store
            .instances_by_ref("FAM-GONE")
            .await
            .expect("read")
            .is_empty()
    );
    assert!(store.all_instances().await.expect("read").is_empty());
}

async fn due_timers_come_in_due_order_up_to_now<S: Storage>(store: &S) {
    let a = enrol(
        store,
        "FAM-A",
        vec![timer("b", minutes(20)), timer("a", minutes(20))],
    )
    .await;
    let b = enrol(
        store,
        "FAM-B",
        vec![timer("x", minutes(5)), timer("y", minutes(90))],
    )
    .await;
    assert_eq!(store.next_due().await.expect("next"), Some(minutes(5)));
    let mut tx = store.begin().await.expect("begin");
    let due = tx.due_timers(minutes(20), None, 10).await.expect("due");
    let got: Vec<(i64, &str)> = due
        .iter()
        .map(|t| (t.instance_id, t.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [(b, "x"), (a, "a"), (a, "b")],
        "due, then instance, then key"
    );
    let limited = tx.due_timers(minutes(20), None, 2).await.expect("due");
    assert_eq!(limited.len(), 2);
    // After a timer, in the same order: the same key on an earlier instance or due time
    // does not count as after it.
    let rest = tx
        .due_timers(minutes(20), Some(&limited[1]), 10)
        .await
        .expect("due after");
    assert_eq!(
        rest.iter()
            .map(|t| (t.instance_id, t.key.as_str()))
            .collect::<Vec<_>>(),
        [(a, "b")]
    );
    let first = tx
        .due_timers(minutes(20), Some(&limited[0]), 1)
        .await
        .expect("due after");
    assert_eq!(first, limited[1..]);
    assert!(
        tx.due_timers(minutes(20), Some(&rest[0]), 10)
            .await
            .expect("due after the last")
            .is_empty()
    );
    assert!(
        tx.due_timers(minutes(4), None, 10)
            .await
            .expect("due")
            .is_empty()
    );
    // Removing a timer by key leaves the instance's others.
    tx.write(Changes {
        now: minutes(20),
        timers_removed: vec![(b, "x".into())],
        ..Changes::default()
    })
    .await
    .expect("remove");
    tx.commit().await.expect("commit");
    let left: Vec<String> = store
        .timers(b)
        .await
        .expect("timers")
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(left, ["y"]);
    assert_eq!(store.next_due().await.expect("next"), Some(minutes(20)));
}

async fn a_stale_update_conflicts_and_writes_nothing<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-C", vec![timer("t", minutes(5))]).await;
    let update = |expected_seq| InstanceUpdate {
        id,
        expected_seq,
        instance: instance("next", 2, vec![]),
        roles: None,
        pathway_version_id: None,
    };
    let mut tx = store.begin().await.expect("begin");
    let stale = tx
        .write(Changes {
            now: minutes(1),
            updates: vec![update(7)],
            timers_removed: vec![(id, "t".into())],
            history: vec![(Target::Id(id), history(2, Some("waiting"), "next"))],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict(i)) if i == id),
        "{stale:?}"
    );
    drop(tx);
    let row = &store.instances_by_ref("FAM-C").await.expect("read")[0];
    assert_eq!(
        (row.instance.state.as_str(), row.instance.seq),
        ("waiting", 1)
    );
    assert_eq!(store.timers(id).await.expect("timers").len(), 1);
    assert_eq!(store.history(id).await.expect("history").len(), 1);

    commit(
        store,
        Changes {
            now: minutes(1),
            updates: vec![update(1)],
            timers_removed: vec![(id, "t".into())],
            history: vec![(Target::Id(id), history(2, Some("waiting"), "next"))],
            ..Changes::default()
        },
    )
    .await;
    let row = &store.instances_by_ref("FAM-C").await.expect("read")[0];
    assert_eq!((row.instance.state.as_str(), row.instance.seq), ("next", 2));
    assert_eq!(row.updated_at, minutes(1));
    assert!(store.timers(id).await.expect("timers").is_empty());
}

/// A batch prepared on a snapshot is refused when an instance it moves was put on hold or
/// erased since the snapshot (neither moves the seq), for a step that keeps the instance
/// active and for one that finishes it; written in the write transaction, the same batch
/// goes in.
async fn a_batch_from_a_snapshot_is_refused_for_a_family_held_or_erased_since<S: Storage>(
    store: &S,
) {
    let step = |id, status, from_snapshot| {
        let mut next = instance("next", 2, vec![]);
        next.status = status;
        Changes {
            now: minutes(1),
            updates: vec![InstanceUpdate {
                id,
                expected_seq: 1,
                instance: next,
                roles: None,
                pathway_version_id: None,
            }],
            timers_removed: vec![(id, "t".into())],
            history: vec![(Target::Id(id), history(2, Some("waiting"), "next"))],
            from_snapshot,
            ..Changes::default()
        }
    };
    let try_write = |changes: Changes| async move {
        let mut tx = store.begin().await.expect("begin");
        tx.write(changes).await?;
        tx.commit().await
    };
    for (n, status) in [Status::Active, Status::Finished].into_iter().enumerate() {
        let held = enrol(
            store,
            &format!("FAM-HELD-{n}"),
            vec![timer("t", minutes(0))],
        )
        .await;
        assert!(
            store
                .set_held(held, Some("kommune"), t0())
                .await
                .expect("hold")
        );
        let refused = try_write(step(held, status, true)).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(i)) if i == held),
            "{status:?}: {refused:?}"
        );
        assert_eq!(store.history(held).await.expect("history").len(), 1);
        assert_eq!(store.timers(held).await.expect("timers").len(), 1);
        try_write(step(held, status, false))
            .await
            .expect("in the write transaction");
        assert_eq!(store.history(held).await.expect("history").len(), 2);

        let erased = enrol(
            store,
            &format!("FAM-ERASED-{n}"),
            vec![timer("t", minutes(0))],
        )
        .await;
        store.erase(&[erased], "test", t0()).await.expect("erase");
        let refused = try_write(step(erased, status, true)).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(i)) if i == erased),
            "{status:?}: {refused:?}"
        );
        let row = store.instance(erased).await.expect("read").expect("kept");
        assert_eq!(
            (row.instance.state.as_str(), row.instance.status),
            ("waiting", Status::Finished),
            "still as the erasure left it"
        );

        let free = enrol(
            store,
            &format!("FAM-FREE-{n}"),
            vec![timer("t", minutes(0))],
        )
        .await;
        try_write(step(free, status, true))
            .await
            .expect("nothing moved it");
        let row = store.instance(free).await.expect("read").expect("kept");
        assert_eq!(
            (row.instance.state.as_str(), row.instance.status),
            ("next", status)
        );
    }
}

async fn keys_are_written_once<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-D", vec![]).await;
    let version = version(store).await;
    let write = |changes: Changes| async move {
        let mut tx = store.begin().await.expect("begin");
        tx.write(changes).await?;
        tx.commit().await
    };
    let with_event = || Changes {
        now: t0(),
        events: vec![(
            Some(Target::Id(id)),
            event("same-key", "FAM-D", Outcome::Rejected),
        )],
        ..Changes::default()
    };
    write(with_event()).await.expect("first event");
    assert!(
        write(with_event()).await.is_err(),
        "an idempotency key is stored once"
    );
    let with_notice = || Changes {
        now: t0(),
        outbox: vec![(
            Target::Id(id),
            notice("2:hello:midwife", version, None, NoticeStatus::Queued),
        )],
        ..Changes::default()
    };
    write(with_notice()).await.expect("first notice");
    assert!(
        write(with_notice()).await.is_err(),
        "a notice key is written once"
    );
    assert_eq!(store.events("FAM-D").await.expect("events").len(), 1);
    assert_eq!(
        store
            .outbox(&OutboxFilter::default())
            .await
            .expect("outbox")
            .len(),
        1
    );
}

async fn a_finished_instance_frees_the_reference<S: Storage>(store: &S) {
    let first = enrol(store, "FAM-E", vec![]).await;
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.active_instances("FAM-E").await.expect("active").len(), 1);
    drop(tx);
    // A second active instance of the same pathway is refused by the store itself.
    let version = version(store).await;
    let mut tx = store.begin().await.expect("begin");
    let twice = tx
        .write(Changes {
            now: t0(),
            new_instances: vec![NewInstance {
                reference: "FAM-E".into(),
                pathway: "p".into(),
                pathway_version_id: version,
                instance: instance("waiting", 1, vec![]),
                roles: BTreeMap::new(),
                parent: None,
            }],
            ..Changes::default()
        })
        .await;
    assert!(
        twice.is_err(),
        "two active instances of one pathway for one family"
    );
    drop(tx);

    let mut done = instance("closed", 2, vec![]);
    done.status = Status::Finished;
    let mut tx = store.begin().await.expect("begin");
    tx.write(Changes {
        now: minutes(1),
        updates: vec![InstanceUpdate {
            id: first,
            expected_seq: 1,
            instance: done,
            roles: None,
            pathway_version_id: None,
        }],
        ..Changes::default()
    })
    .await
    .expect("finish");
    assert!(
        tx.active_instances("FAM-E")
            .await
            .expect("active")
            .is_empty()
    );
    tx.commit().await.expect("commit");
    let again = enrol(store, "FAM-E", vec![]).await;
    assert_ne!(again, first);
    assert_eq!(
        store.instances_by_ref("FAM-E").await.expect("read").len(),
        2
    );
}

async fn deliveries_are_recorded_with_their_provenance<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-F", vec![]).await;
    let version = version(store).await;
    let mut late = notice("2:b:midwife", version, None, NoticeStatus::Queued);
    late.not_before = minutes(60);
    let mut dead = notice("3:c:midwife", version, None, NoticeStatus::Dead);
    dead.error = Some("nobody plays the role".into());
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![
                (Target::Id(id), late),
                (
                    Target::Id(id),
                    notice("1:a:midwife", version, None, NoticeStatus::Queued),
                ),
                (Target::Id(id), dead),
            ],
            ..Changes::default()
        },
    )
    .await;
    let all = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    let keys: Vec<&str> = all
        .iter()
        .map(|r| r.key.rsplit(':').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(keys, ["a", "c", "b"], "oldest not_before first");
    let (a, c, b) = (all[0].id, all[1].id, all[2].id);
    let due = OutboxFilter {
        status: Some(NoticeStatus::Queued),
        due_by: Some(minutes(1)),
        ..OutboxFilter::default()
    };
    let ids: Vec<i64> = store
        .outbox(&due)
        .await
        .expect("due")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [a], "only what is due by then");

    store
        .record_deliveries(
            &[
                Delivery::Retry {
                    id: a,
                    not_before: minutes(5),
                    error: "smtp: 451 busy".into(),
                },
                Delivery::Held {
                    id: b,
                    until: minutes(90),
                    reason: "quiet hours".into(),
                },
            ],
            minutes(1),
        )
        .await
        .expect("record");
    record(
        store,
        Delivery::Sent {
            id: a,
            detail: "smtp 250".into(),
        },
        minutes(5),
    )
    .await;
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    let row = |id| rows.iter().find(|r| r.id == id).expect("row");
    assert_eq!((row(a).status, row(a).attempts), (NoticeStatus::Sent, 2));
    assert_eq!(
        row(a).last_error.as_deref(),
        Some("smtp: 451 busy"),
        "the last failure stays visible"
    );
    assert_eq!(
        (row(b).status, row(b).attempts, row(b).not_before),
        (NoticeStatus::Queued, 0, minutes(90))
    );
    let log: Vec<String> = store
        .outbox_log(a)
        .await
        .expect("log")
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(log, ["queued", "attempt failed", "sent"]);

    assert_eq!(
        store.requeue(a, minutes(6)).await.expect("requeue"),
        Requeue::NotRetryable(NoticeStatus::Sent)
    );
    assert_eq!(
        store.requeue(c, minutes(6)).await.expect("requeue"),
        Requeue::Queued
    );
    assert_eq!(
        store.requeue(9999, minutes(6)).await.expect("requeue"),
        Requeue::Missing
    );
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    let c_row = rows.iter().find(|r| r.id == c).expect("row");
    assert_eq!(
        (c_row.status, c_row.attempts, c_row.not_before),
        (NoticeStatus::Queued, 0, minutes(6))
    );
    let log = store.outbox_log(c).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].detail.as_deref(), Some("nobody plays the role"));
}

async fn opt_outs_are_kept_per_address_and_channel<S: Storage>(store: &S) {
    assert!(
        store
            .set_opt_out("+4520123456", Channel::Sms, true, "cli", t0())
            .await
            .expect("opt out")
    );
    assert!(
        !store
            .set_opt_out("+4520123456", Channel::Sms, true, "sms STOP", t0())
            .await
            .expect("again")
    );
    let asked = vec![
        ("+4520123456".to_string(), Channel::Sms),
        ("+4520123456".to_string(), Channel::Email),
        ("+4599999999".to_string(), Channel::Sms),
    ];
    assert_eq!(
        store.opted_out(&asked).await.expect("read"),
        [("+4520123456".to_string(), Channel::Sms)]
    );
    assert!(
        store
            .set_opt_out("+4520123456", Channel::Sms, false, "cli", t0())
            .await
            .expect("opt in")
    );
    assert!(store.opted_out(&asked).await.expect("read").is_empty());
}

async fn a_database_has_one_random_installation_id<S: Storage>(store: &S) {
    let id = store.installation().await.expect("read");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(
        store.installation().await.expect("again"),
        id,
        "never changes"
    );
}

async fn an_inbound_call_is_taken_once_within_its_window<S: Storage>(store: &S) {
    assert!(
        store
            .remember_inbound("gatewayapi:1", t0(), minutes(-20))
            .await
            .expect("first")
    );
    assert!(
        !store
            .remember_inbound("gatewayapi:1", minutes(1), minutes(-19))
            .await
            .expect("again")
    );
    assert!(
        store
            .remember_inbound("gatewayapi:2", minutes(1), minutes(-19))
            .await
            .expect("other")
    );
    // Once the window has passed, the key is forgotten.
    assert!(
        store
            .remember_inbound("gatewayapi:1", minutes(60), minutes(40))
            .await
            .expect("later")
    );
}

async fn an_opt_out_knows_its_source_and_an_address_its_families_pathways<S: Storage>(store: &S) {
    assert_eq!(
        store
            .opt_out_source("+4520123456", Channel::Sms)
            .await
            .expect("read"),
        None
    );
    store
        .set_opt_out("+4520123456", Channel::Sms, true, "sms STOP", t0())
        .await
        .expect("opt out");
    assert_eq!(
        store
            .opt_out_source("+4520123456", Channel::Sms)
            .await
            .expect("read")
            .as_deref(),
        Some("sms STOP")
    );
    // Anne's address, as stored, is found by its normalised form; nobody has the other.
    enrol(store, "FAM-P", vec![]).await;
    assert_eq!(
        store
            .address_pathways("anne@example.dk", Channel::Email)
            .await
            .expect("read"),
        ["p"]
    );
    assert!(
        store
            .address_pathways("nobody@example.dk", Channel::Email)
            .await
            .expect("read")
            .is_empty()
    );
}

async fn a_held_instance_waits_and_is_listed_by_filter<S: Storage>(store: &S) {
    let held = enrol(store, "FAM-H", vec![timer("soon", minutes(1))]).await;
    let other = enrol(store, "FAM-I", vec![timer("later", minutes(2))]).await;
    let version = version(store).await;
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![(
                Target::Id(held),
                notice("h:1", version, None, NoticeStatus::Queued),
            )],
            ..Changes::default()
        },
    )
    .await;
    assert!(
        store
            .set_held(held, Some("kommune"), t0())
            .await
            .expect("hold")
    );
    assert!(
        !store
            .set_held(held, Some("kommune"), t0())
            .await
            .expect("again")
    );
    let row = store.instance(held).await.expect("read").expect("exists");
    assert_eq!(row.held_since, Some(t0()));
    // Its timers and notices wait; the other family's do not.
    let mut tx = store.begin().await.expect("begin");
    let due = tx.due_timers(minutes(5), None, 10).await.expect("due");
    drop(tx);
    assert_eq!(
        due.iter().map(|t| t.instance_id).collect::<Vec<_>>(),
        [other]
    );
    assert_eq!(store.next_due().await.expect("next"), Some(minutes(2)));
    let deliverable = store
        .outbox(&OutboxFilter {
            skip_held: true,
            ..OutboxFilter::default()
        })
        .await
        .expect("outbox");
    assert!(deliverable.is_empty());
    let stats = store.stats(minutes(5)).await.expect("stats");
    assert_eq!((stats.held, stats.timers, stats.timers_due), (1, 2, 1));
    assert_eq!(stats.oldest_due, Some(minutes(2)));
    assert!(store.set_held(held, None, t0()).await.expect("resume"));
    assert_eq!(
        store
            .instance(held)
            .await
            .expect("read")
            .and_then(|r| r.held_since),
        None
    );
    assert_eq!(store.next_due().await.expect("next"), Some(minutes(1)));

    let page = |after: Option<i64>| InstanceFilter {
        pathways: Some(vec!["p".into()]),
        state: Some("waiting".into()),
        after,
        limit: 1,
        ..InstanceFilter::default()
    };
    let first = store.list_instances(&page(None)).await.expect("list");
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), [held]);
    let second = store.list_instances(&page(Some(held))).await.expect("list");
    assert_eq!(second.iter().map(|r| r.id).collect::<Vec<_>>(), [other]);
    let none = InstanceFilter {
        pathways: Some(vec!["elsewhere".into()]),
        limit: 10,
        ..InstanceFilter::default()
    };
    assert!(store.list_instances(&none).await.expect("list").is_empty());
}

async fn overdue_families_come_oldest_first_and_references_by_their_start<S: Storage>(store: &S) {
    let a = enrol(store, "FAM-A1", vec![]).await;
    let b = enrol(store, "FAM-B1", vec![]).await;
    let c = enrol(store, "FAM-%", vec![]).await;
    let waiting = |since: Timestamp| {
        let mut i = instance("waiting", 2, vec![]);
        i.overdue.push(Overdue {
            kind: OverdueKind::Handoff,
            name: "referral_accepted".into(),
            role: "midwife".into(),
            escalated_to: "coordinator".into(),
            since,
        });
        i
    };
    let update = |id: i64, expected_seq: u64, instance: Instance| InstanceUpdate {
        id,
        expected_seq,
        instance,
        roles: None,
        pathway_version_id: None,
    };
    commit(
        store,
        Changes {
            now: minutes(20),
            updates: vec![
                update(a, 1, waiting(minutes(10))),
                update(b, 1, waiting(minutes(5))),
            ],
            ..Changes::default()
        },
    )
    .await;
    let ids = |rows: Vec<carepath_worker::store::InstanceRow>| {
        rows.iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let list = |f: InstanceFilter| async move {
        store
            .list_instances(&InstanceFilter { limit: 10, ..f })
            .await
            .expect("list")
    };
    let oldest = list(InstanceFilter {
        oldest_overdue_first: true,
        ..InstanceFilter::default()
    })
    .await;
    assert_eq!(ids(oldest.clone()), [b, a], "the longest wait first");
    assert_eq!(oldest[0].instance.overdue_since(), Some(minutes(5)));
    assert_eq!(
        ids(list(InstanceFilter {
            overdue_only: true,
            ..InstanceFilter::default()
        })
        .await),
        [a, b]
    );
    let prefix = |p: &str| InstanceFilter {
        reference_prefix: Some(p.into()),
        ..InstanceFilter::default()
    };
    assert_eq!(ids(list(prefix("FAM-A")).await), [a]);
    assert_eq!(ids(list(prefix("FAM-")).await), [a, b, c]);
    assert_eq!(
        ids(list(prefix("FAM-%")).await),
        [c],
        "% is itself, not a wildcard"
    );
    assert!(list(prefix("fam-")).await.is_empty());

    // The late acknowledgement: B waits on nobody any more.
    commit(
        store,
        Changes {
            now: minutes(30),
            updates: vec![update(b, 2, instance("waiting", 3, vec![]))],
            ..Changes::default()
        },
    )
    .await;
    assert_eq!(
        ids(list(InstanceFilter {
            oldest_overdue_first: true,
            ..InstanceFilter::default()
        })
        .await),
        [a]
    );

    // A hold keeps A's queued notice back: listed as held, not as deliverable.
    let version = version(store).await;
    commit(
        store,
        Changes {
            now: minutes(30),
            outbox: vec![
                (
                    Target::Id(a),
                    notice("a:1", version, None, NoticeStatus::Queued),
                ),
                (
                    Target::Id(c),
                    notice("c:1", version, None, NoticeStatus::Queued),
                ),
            ],
            ..Changes::default()
        },
    )
    .await;
    store
        .set_held(a, Some("web koordinator"), minutes(31))
        .await
        .expect("hold");
    let held = store
        .outbox(&OutboxFilter {
            held_only: true,
            ..OutboxFilter::default()
        })
        .await
        .expect("outbox");
    assert_eq!(held.iter().map(|n| n.instance_id).collect::<Vec<_>>(), [a]);
}

async fn the_first_kept_response_wins<S: Storage>(store: &S) {
    let first = KeptResponse {
        fingerprint: "abc".into(),
        status: 201,
        body: b"{\"instance_id\":1}".to_vec(),
    };
    assert_eq!(store.kept_response("epj", "k").await.expect("read"), None);
    store
        .keep_response("epj", "k", &first, t0())
        .await
        .expect("keep");
    let second = KeptResponse {
        status: 409,
        ..first.clone()
    };
    store
        .keep_response("epj", "k", &second, t0())
        .await
        .expect("keep");
    assert_eq!(
        store.kept_response("epj", "k").await.expect("read"),
        Some(first)
    );
    assert_eq!(
        store.kept_response("other", "k").await.expect("read"),
        None,
        "keys are per caller"
    );
}

async fn a_life_event_skips_the_familys_queued_notices<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-G", vec![]).await;
    let version = version(store).await;
    let mut to_family = notice("1:reminder:family", version, None, NoticeStatus::Queued);
    to_family.family = true;
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![
                (Target::Id(id), to_family.clone()),
                (
                    Target::Id(id),
                    notice("1:handoff:midwife", version, None, NoticeStatus::Queued),
                ),
            ],
            ..Changes::default()
        },
    )
    .await;
    let mut later = to_family;
    later.key = "2:goodbye:family".into();
    commit(
        store,
        Changes {
            now: minutes(1),
            withdrawals: vec![Withdraw {
                instance_id: id,
                which: Withdrawn::Family,
                reason: "the family moved away".into(),
            }],
            outbox: vec![(Target::Id(id), later)],
            ..Changes::default()
        },
    )
    .await;
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    let status: Vec<(&str, NoticeStatus)> = rows
        .iter()
        .map(|r| (r.key.split_once(':').map_or("", |k| k.1), r.status))
        .collect();
    assert_eq!(
        status,
        [
            ("1:reminder:family", NoticeStatus::Skipped),
            ("1:handoff:midwife", NoticeStatus::Queued),
            ("2:goodbye:family", NoticeStatus::Queued),
        ]
    );
    let skipped = rows
        .iter()
        .find(|r| r.status == NoticeStatus::Skipped)
        .expect("skipped");
    assert_eq!(skipped.last_error.as_deref(), Some("the family moved away"));
    let log = store.outbox_log(skipped.id).await.expect("log");
    assert_eq!(log.last().map(|e| e.status.as_str()), Some("skipped"));
}

async fn a_notice_is_data_until_its_text_is_stored_once<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-D", vec![]).await;
    let version = version(store).await;
    let mut n = notice("1:hello:midwife", version, None, NoticeStatus::Queued);
    n.text = NoticeText::default();
    n.channel = Some(carepath_engine::pathway::Channel::Email);
    n.data = Some(serde_json::json!({"fields": {"due_date": "2027-08-20"}}));
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![(Target::Id(id), n)],
            ..Changes::default()
        },
    )
    .await;
    let row = &store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")[0];
    assert!(row.unrendered());
    assert_eq!(
        row.data,
        Some(serde_json::json!({"fields": {"due_date": "2027-08-20"}}))
    );
    let first = NoticeText {
        language: Some("da".into()),
        subject: Some("Hej".into()),
        body: Some("Hej Anne".into()),
        html: None,
    };
    store
        .set_texts(&[(row.id, first.clone())])
        .await
        .expect("set");
    // A second rendering (a worker whose claim ran out) does not replace what was stored.
    let second = NoticeText {
        body: Some("Hej igen".into()),
        ..first.clone()
    };
    store.set_texts(&[(row.id, second)]).await.expect("set");
    let row = &store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")[0];
    assert_eq!(row.text, first);
    assert!(!row.unrendered());
    assert_eq!(row.data, None, "the values are not kept beside the text");
}

async fn a_hold_in_a_batch_keeps_back_all_but_carepaths_own_notices<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-H", vec![]).await;
    let version = version(store).await;
    let mut own = notice("1:alert:0", version, None, NoticeStatus::Queued);
    own.template = carepath_worker::store::LIFE_EVENT.into();
    commit(
        store,
        Changes {
            now: t0(),
            holds: vec![(id, "carepath".into())],
            outbox: vec![
                (
                    Target::Id(id),
                    notice("1:hello:midwife", version, None, NoticeStatus::Queued),
                ),
                (Target::Id(id), own),
            ],
            ..Changes::default()
        },
    )
    .await;
    assert!(
        store
            .instance(id)
            .await
            .expect("read")
            .expect("row")
            .held_since
            .is_some()
    );
    let claimed = store
        .claim_notices("w", minutes(1), minutes(20), 10)
        .await
        .expect("claim");
    let templates: Vec<&str> = claimed.iter().map(|r| r.template.as_str()).collect();
    assert_eq!(templates, [carepath_worker::store::LIFE_EVENT]);
}

async fn a_withdrawn_topic_skips_only_its_queued_notices<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-W", vec![]).await;
    let version = version(store).await;
    let reminder = |key: &str, topic: &str, status| {
        let mut n = notice(key, version, None, status);
        n.family = true;
        n.topic = Some(topic.into());
        n.expires_at = Some(minutes(90));
        n
    };
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![
                (
                    Target::Id(id),
                    reminder("1:a", "appointment:scan", NoticeStatus::Queued),
                ),
                (
                    Target::Id(id),
                    reminder("1:b", "appointment:visit", NoticeStatus::Queued),
                ),
                (
                    Target::Id(id),
                    reminder("1:c", "appointment:scan", NoticeStatus::Dead),
                ),
            ],
            ..Changes::default()
        },
    )
    .await;
    commit(
        store,
        Changes {
            now: minutes(1),
            withdrawals: vec![Withdraw {
                instance_id: id,
                which: Withdrawn::Topic("appointment:scan".into()),
                reason: "appointment scan was cancelled".into(),
            }],
            ..Changes::default()
        },
    )
    .await;
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    let status: Vec<(&str, NoticeStatus)> = rows
        .iter()
        .map(|r| (r.key.split_once(':').map_or("", |k| k.1), r.status))
        .collect();
    assert_eq!(
        status,
        [
            ("1:a", NoticeStatus::Skipped),
            ("1:b", NoticeStatus::Queued),
            ("1:c", NoticeStatus::Dead),
        ],
        "only the queued notice of the withdrawn topic is skipped"
    );
    assert!(rows.iter().all(|r| r.expires_at == Some(minutes(90))));
    assert_eq!(
        rows[0].last_error.as_deref(),
        Some("appointment scan was cancelled")
    );
    // Delivery records an expired notice with its reason.
    record(
        store,
        Delivery::Expired {
            id: rows[1].id,
            reason: "it expired".into(),
        },
        minutes(91),
    )
    .await;
    let expired = store
        .outbox(&OutboxFilter {
            status: Some(NoticeStatus::Expired),
            ..OutboxFilter::default()
        })
        .await
        .expect("outbox");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].last_error.as_deref(), Some("it expired"));
    let log = store.outbox_log(expired[0].id).await.expect("log");
    assert_eq!(log.last().map(|e| e.status.as_str()), Some("expired"));
}

async fn an_update_assigns_contacts_or_keeps_them<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-R", vec![]).await;
    let anne = store.instances_by_ref("FAM-R").await.expect("read")[0].roles["midwife"];
    // A step that assigns: a new contact for a new role, the midwife's kept by id.
    commit(
        store,
        Changes {
            now: minutes(1),
            contacts: vec![contact("Birgitte")],
            updates: vec![InstanceUpdate {
                id,
                expected_seq: 1,
                instance: instance("matched", 2, vec![]),
                roles: Some(
                    [
                        ("midwife".to_string(), ContactRef::Id(anne)),
                        ("volunteer".to_string(), ContactRef::New(0)),
                    ]
                    .into(),
                ),
                pathway_version_id: None,
            }],
            ..Changes::default()
        },
    )
    .await;
    // A step that does not: the role map stays.
    commit(
        store,
        Changes {
            now: minutes(2),
            updates: vec![InstanceUpdate {
                id,
                expected_seq: 2,
                instance: instance("visiting", 3, vec![]),
                roles: None,
                pathway_version_id: None,
            }],
            ..Changes::default()
        },
    )
    .await;
    let row = &store.instances_by_ref("FAM-R").await.expect("read")[0];
    assert_eq!(row.instance.state, "visiting");
    assert_eq!(
        row.roles.keys().collect::<Vec<_>>(),
        ["midwife", "volunteer"]
    );
    assert_eq!(row.roles["midwife"], anne);
    let contacts = store
        .contacts(&[row.roles["volunteer"]])
        .await
        .expect("contacts");
    assert_eq!(contacts[&row.roles["volunteer"]].name, "Birgitte");
}

async fn receipts_are_recorded_and_a_final_failure_is_a_dead_letter<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-R", vec![]).await;
    let version = version(store).await;
    let mut with_entry = notice("1:a:family", version, None, NoticeStatus::Queued);
    let entry = carepath_engine::calendar::CalendarEntry {
        uid: "appointment:scan".into(),
        sequence: 2,
        cancelled: false,
        when: carepath_engine::calendar::When::Moment {
            start: minutes(90),
            end: None,
        },
        location: Some("Hvidovre Hospital, indgang 3".into()),
    };
    with_entry.calendar = Some(entry.clone());
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![
                (Target::Id(id), with_entry),
                (
                    Target::Id(id),
                    notice("2:b:family", version, None, NoticeStatus::Queued),
                ),
            ],
            ..Changes::default()
        },
    )
    .await;
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    assert_eq!(rows[0].calendar.as_ref(), Some(&entry), "the entry is kept");
    assert_eq!(rows[1].calendar, None);
    let (a, b) = (rows[0].clone(), rows[1].clone());
    store
        .record_deliveries(
            &[
                Delivery::Sent {
                    id: a.id,
                    detail: "gatewayapi 200".into(),
                },
                Delivery::Sent {
                    id: b.id,
                    detail: "gatewayapi 200".into(),
                },
            ],
            minutes(1),
        )
        .await
        .expect("sent");
    // On its way, then delivered; a late "on its way" changes nothing; a final failure makes
    // a dead letter; a key no notice has is missing.
    let steps = [
        (&a.key, ReceiptState::Pending, "GatewayAPI ENROUTE", 2),
        (&a.key, ReceiptState::Delivered, "GatewayAPI DELIVERED", 3),
        (&a.key, ReceiptState::Pending, "GatewayAPI ENROUTE", 4),
        (&b.key, ReceiptState::Failed, "GatewayAPI UNDELIVERABLE", 5),
        (
            &"9:z".to_string(),
            ReceiptState::Delivered,
            "GatewayAPI DELIVERED",
            5,
        ),
    ];
    let mut outcomes = Vec::new();
    for (key, state, detail, at) in steps {
        let report = ReceiptReport {
            key: key.clone(),
            state,
            detail: detail.into(),
        };
        outcomes.push(
            store
                .record_receipt(&report, minutes(at))
                .await
                .expect("receipt"),
        );
    }
    assert_eq!(
        outcomes,
        [
            ReceiptOutcome::Recorded {
                id: a.id,
                dead: false
            },
            ReceiptOutcome::Recorded {
                id: a.id,
                dead: false
            },
            ReceiptOutcome::Stale {
                id: a.id,
                state: ReceiptState::Delivered
            },
            ReceiptOutcome::Recorded {
                id: b.id,
                dead: true
            },
            ReceiptOutcome::Missing,
        ]
    );

    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    assert_eq!(
        (rows[0].status, rows[0].receipt, rows[0].receipt_at),
        (
            NoticeStatus::Sent,
            Some(ReceiptState::Delivered),
            Some(minutes(3))
        )
    );
    assert_eq!(
        (rows[1].status, rows[1].receipt),
        (NoticeStatus::Dead, Some(ReceiptState::Failed))
    );
    let reason = rows[1].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("UNDELIVERABLE") && reason.contains(&format!("outbox retry {}", b.id)),
        "{reason}"
    );
    let steps = |log: Vec<carepath_worker::store::OutboxLogEntry>| -> Vec<String> {
        log.into_iter().map(|e| e.status).collect()
    };
    assert_eq!(
        steps(store.outbox_log(a.id).await.expect("log")),
        ["queued", "sent", "receipt pending", "receipt delivered"]
    );
    assert_eq!(
        steps(store.outbox_log(b.id).await.expect("log")),
        ["queued", "sent", "receipt failed", "dead"]
    );
}

async fn a_claimed_notice_is_handed_to_one_worker_until_its_lease_ends<S: Storage>(store: &S) {
    let id = enrol(store, "FAM-C", vec![]).await;
    let version = version(store).await;
    let mut later = notice("3:c:midwife", version, None, NoticeStatus::Queued);
    later.not_before = minutes(60);
    commit(
        store,
        Changes {
            now: t0(),
            outbox: vec![
                (
                    Target::Id(id),
                    notice("1:a:midwife", version, None, NoticeStatus::Queued),
                ),
                (
                    Target::Id(id),
                    notice("2:b:midwife", version, None, NoticeStatus::Queued),
                ),
                (Target::Id(id), later),
            ],
            ..Changes::default()
        },
    )
    .await;
    let keys = |rows: Vec<carepath_worker::store::OutboxRow>| -> Vec<String> {
        rows.into_iter()
            .map(|r| r.key.rsplit(':').nth(1).unwrap_or("").to_string())
            .collect()
    };
    // Worker A claims what is due; worker B, a minute later, is handed nothing.
    let a = store
        .claim_notices("A", minutes(1), minutes(11), 10)
        .await
        .expect("claim");
    let (a_id, b_id) = (a[0].id, a[1].id);
    assert_eq!(keys(a), ["a", "b"], "due ones, oldest first");
    let b = store
        .claim_notices("B", minutes(2), minutes(12), 10)
        .await
        .expect("claim");
    assert!(b.is_empty(), "claimed by A: {:?}", keys(b));
    assert_eq!(
        store.next_notice().await.expect("next"),
        Some(minutes(11)),
        "the next a worker may take: when A's lease ends"
    );
    // A sends one and dies holding the other; its lease runs out and B takes it.
    record(
        store,
        Delivery::Sent {
            id: a_id,
            detail: "smtp 250".into(),
        },
        minutes(3),
    )
    .await;
    let b = store
        .claim_notices("B", minutes(5), minutes(15), 10)
        .await
        .expect("claim");
    assert!(b.is_empty(), "A's lease on b still runs");
    let b = store
        .claim_notices("B", minutes(11), minutes(21), 10)
        .await
        .expect("claim");
    assert_eq!(keys(b), ["b"], "the lease ran out");
    record(
        store,
        Delivery::Sent {
            id: b_id,
            detail: "smtp 250".into(),
        },
        minutes(12),
    )
    .await;
    // A comes back and reports what it did long ago: history, not the notice's state.
    record(
        store,
        Delivery::Dead {
            id: b_id,
            error: "smtp 550".into(),
        },
        minutes(13),
    )
    .await;
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    let b_row = rows.iter().find(|r| r.id == b_id).expect("b");
    assert_eq!((b_row.status, b_row.attempts), (NoticeStatus::Sent, 1));
    let log: Vec<String> = store
        .outbox_log(b_id)
        .await
        .expect("log")
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(log, ["queued", "sent", "late report"]);
    assert_eq!(
        store.next_notice().await.expect("next"),
        Some(minutes(60)),
        "only c waits"
    );
}

async fn the_audit_log_keeps_lines_in_order_and_filters_them<S: Storage>(store: &S) {
    let line = |at: i64, actor: &str, action: &str, reference: Option<&str>| AuditEntry {
        at: minutes(at),
        actor: actor.into(),
        action: action.into(),
        reference: reference.map(str::to_string),
        instance_id: None,
        detail: None,
        outcome: "ok".into(),
    };
    let lines = [
        line(1, "token epj", "enrol", Some("FAM-A")),
        line(2, "cli anne", "event", Some("FAM-B")),
        line(3, "token epj", "hold", Some("FAM-A")),
        line(4, "gateway GatewayAPI", "opt-out", None),
    ];
    for l in &lines {
        store.append_audit(l).await.expect("append");
    }
    let all = store
        .audit_log(&AuditFilter::default())
        .await
        .expect("read");
    assert_eq!(all, lines);
    let a = store
        .audit_log(&AuditFilter {
            reference: Some("FAM-A".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("read");
    assert_eq!(a, [lines[0].clone(), lines[2].clone()]);
    let late = store
        .audit_log(&AuditFilter {
            since: Some(minutes(3)),
            limit: Some(1),
            ..AuditFilter::default()
        })
        .await
        .expect("read");
    assert_eq!(late, [lines[2].clone()]);
}

/// Records one delivery outcome at `at`.
async fn record<S: Storage>(store: &S, delivery: Delivery, at: Timestamp) {
    store
        .record_deliveries(&[delivery], at)
        .await
        .expect("record");
}

/// Runs every property against one backend. `$open` is an async expression giving a fresh,
/// empty store (or none when the backend is not there to test) and whatever keeps it alive.
macro_rules! backend {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            macro_rules! property {
                ($p:ident) => {
                    #[tokio::test]
                    async fn $p() {
                        let (store, _keep) = $open.await;
                        if let Some(store) = store {
                            super::$p(&store).await;
                        }
                    }
                };
            }

            property!(pathway_versions_are_immutable);
            property!(a_batch_round_trips);
            property!(an_uncommitted_transaction_leaves_nothing);
            property!(due_timers_come_in_due_order_up_to_now);
            property!(a_stale_update_conflicts_and_writes_nothing);
            property!(a_batch_from_a_snapshot_is_refused_for_a_family_held_or_erased_since);
            property!(keys_are_written_once);
            property!(a_finished_instance_frees_the_reference);
            property!(deliveries_are_recorded_with_their_provenance);
            property!(opt_outs_are_kept_per_address_and_channel);
            property!(a_held_instance_waits_and_is_listed_by_filter);
            property!(the_first_kept_response_wins);
            property!(a_life_event_skips_the_familys_queued_notices);
            property!(an_update_assigns_contacts_or_keeps_them);
            property!(a_withdrawn_topic_skips_only_its_queued_notices);
            property!(an_opt_out_knows_its_source_and_an_address_its_families_pathways);
            property!(an_inbound_call_is_taken_once_within_its_window);
            property!(a_database_has_one_random_installation_id);
            property!(receipts_are_recorded_and_a_final_failure_is_a_dead_letter);
            property!(a_claimed_notice_is_handed_to_one_worker_until_its_lease_ends);
            property!(the_audit_log_keeps_lines_in_order_and_filters_them);
            property!(a_notice_is_data_until_its_text_is_stored_once);
            property!(a_hold_in_a_batch_keeps_back_all_but_carepaths_own_notices);
            property!(overdue_families_come_oldest_first_and_references_by_their_start);
        }
    };
}

async fn sqlite_file() -> (Option<SqliteStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("carepath.db"))
        .await
        .expect("open");
    (Some(store), dir)
}

backend!(sqlite, sqlite_file());

/// The store's connections leave the write-ahead log to the checkpointer: once asked (or once
/// the log outgrows 4 MiB) it folds the log into the file, and closing the store leaves the
/// file whole with no log beside it. The database file alone is copied to show it.
#[tokio::test]
async fn the_log_is_folded_into_the_file_by_the_checkpointer_and_at_close() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("carepath.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let count = |path: std::path::PathBuf| async move {
        let copy = SqliteStore::open_existing(&path)
            .await
            .expect("open the copy");
        let n = copy.all_instances().await.expect("read").len();
        copy.close().await;
        n
    };
    let copy_file = |name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(&path, &to).expect("copy the file alone");
        to
    };
    for i in 0..50 {
        enrol(
            &store,
            &format!("FAM-WAL-{i}"),
            vec![timer("t", minutes(5))],
        )
        .await;
    }
    let wal = dir.path().join("carepath.db-wal");
    assert!(
        std::fs::metadata(&wal).expect("a log").len() > 0,
        "the writes are in the log"
    );
    store.checkpoint().await;
    assert_eq!(count(copy_file("checkpointed.db")).await, 50);

    for i in 50..80 {
        enrol(&store, &format!("FAM-WAL-{i}"), vec![]).await;
    }
    store.close().await;
    assert!(!wal.exists(), "no log is left beside a closed database");
    assert_eq!(count(copy_file("closed.db")).await, 80);
}

/// A new, empty database on the PostgreSQL server at `CAREPATH_TEST_POSTGRES` (`.ci/test`
/// starts a throwaway one), or none when that is unset and `CAREPATH_REQUIRE_POSTGRES` is not.
async fn postgres_database() -> (Option<PgStore>, ()) {
    let Ok(admin) = std::env::var("CAREPATH_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CAREPATH_REQUIRE_POSTGRES").is_none(),
            "CAREPATH_REQUIRE_POSTGRES is set but CAREPATH_TEST_POSTGRES is not"
        );
        eprintln!("CAREPATH_TEST_POSTGRES is not set: the PostgreSQL backend is not tested here");
        return (None, ());
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "carepath_storage_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let url = carepath_worker::store::postgres::create_database(&admin, &name)
        .await
        .expect("create a database on CAREPATH_TEST_POSTGRES");
    let store = PgStore::open(&url).await.expect("open");
    (Some(store), ())
}

backend!(postgres, postgres_database());
