//! Personal data at rest, judged by the database file itself: after `carepath erase` and after
//! a retention purge, the bytes of the file (and its write-ahead log) hold none of the family's
//! CPR number, name, phone or email, while another family's data and the de-identified rows
//! stay; with a data key, a family's fields and event payloads are sealed in the file from the
//! start.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use carepath_worker::clock::Clock;
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::{AuditFilter, Backend, Storage};

use super::delivery::{contact, event, local, runtime};
use super::fixtures::{chain, write_pathway};
use super::runtime::runtime as runtime_on;
use super::support::carepath;

/// Every byte of the database: the file, its write-ahead log and shared memory.
/// What the database of the test in `dir` holds, as bytes: on SQLite the file with its
/// write-ahead log, every page, free ones too; on PostgreSQL every row of every table as text
/// (the server's own pages are its business: see docs/operations.md).
async fn stored_bytes(dir: &Path) -> Vec<u8> {
    if super::support::on_postgres() {
        let pool = sqlx::PgPool::connect(&super::support::db_arg(dir))
            .await
            .expect("connect");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_all(&pool)
        .await
        .expect("tables");
        let mut all = Vec::new();
        for t in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {t} t")))
                    .fetch_all(&pool)
                    .await
                    .expect("rows");
            for r in rows {
                all.extend(r.into_bytes());
            }
        }
        pool.close().await;
        return all;
    }
    file_bytes(&dir.join("carepath.db"))
}

/// A SQLite file's bytes with its write-ahead log: every page, free ones too.
fn file_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(Path::new(&p)) {
            all.extend(b);
        }
    }
    all
}

fn holds(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

/// A family on the standard track with a CPR number, a named contact with phone and email.
async fn enrol_person(
    rt: &Runtime<Backend>,
    reference: &str,
    name: &str,
    phone: &str,
    email: &str,
    cpr: &str,
) {
    let contacts: BTreeMap<String, _> = [
        ("family", contact(name, Some(email), Some(phone), "da")),
        (
            "gp",
            contact("Lægehuset", Some("laege@example.dk"), None, "da"),
        ),
        (
            "midwife",
            contact("Jordemodercentret", Some("jm@example.dk"), None, "da"),
        ),
    ]
    .into_iter()
    .map(|(r, c)| (r.to_string(), c))
    .collect();
    let fields: Map<String, Value> = json!({"due_date": "2027-08-20", "cpr": cpr})
        .as_object()
        .cloned()
        .unwrap_or_default();
    rt.enrol(&EnrolRequest {
        reference: reference.into(),
        pathway: "standard-track".into(),
        fields,
        contacts,
    })
    .await
    .expect("enrol");
}

#[tokio::test]
async fn an_erased_family_is_gone_from_the_database_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = super::support::db_arg(dir.path());
    let (rt, clock) = runtime(dir.path()).await;
    enrol_person(
        &rt,
        "FAM-ERASE",
        "Amal Haddad",
        "+4520123456",
        "amal.haddad@example.dk",
        "0101901234",
    )
    .await;
    enrol_person(
        &rt,
        "FAM-KEEP",
        "Birgitte Bager",
        "+4531313131",
        "birgitte.bager@example.dk",
        "0202802345",
    )
    .await;
    clock.advance_to(local("2027-01-12T09:00"));
    for family in ["FAM-ERASE", "FAM-KEEP"] {
        event(&rt, family, "first_exam_done", json!({"care_level": 2})).await;
        event(
            &rt,
            family,
            "appointment_booked",
            json!({"appointment_id": "scan-1", "at": "2027-02-15T09:30:00+01:00", "place": "Hvidovre Hospital, indgang 3"}),
        )
        .await;
    }
    // A refused event keeps its payload for the record: a CPR number typed as a date.
    let refused = rt
        .apply_events(&[super::runtime::event(
            "FAM-ERASE:typo",
            "FAM-ERASE",
            "birth_registered",
            json!({"birth_date": "010190 1234"}),
        )])
        .await
        .expect("event");
    assert_eq!(refused.len(), 1);
    rt.store().close().await;
    drop(rt);
    // The family's CPR number, name, phone, email, and the CPR number typed into an event.
    let personal = [
        "0101901234",
        "Amal Haddad",
        "4520123456",
        "amal.haddad@example.dk",
        "010190 1234",
    ];
    let before = stored_bytes(dir.path()).await;
    for text in personal {
        assert!(
            holds(&before, text),
            "the family's {text:?} is in the file before"
        );
    }

    let out = carepath()
        .args(["erase", "FAM-ERASE", "--reason", "GDPR-2027-014", "--db"])
        .arg(&db)
        .env("USER", "dpo-karen")
        .output()
        .expect("erase");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("erased FAM-ERASE: 1 instance"), "{said}");

    let after = stored_bytes(dir.path()).await;
    for text in personal {
        assert!(
            !holds(&after, text),
            "the family's {text:?} is still in the file"
        );
    }
    for text in ["0202802345", "Birgitte Bager", "4531313131"] {
        assert!(
            holds(&after, text),
            "another family's {text:?} was erased too"
        );
    }

    // The de-identified instance stays, its history with it; the erasure is in the audit log.
    let store = super::support::fresh_store(dir.path()).await;
    let all = store.all_instances().await.expect("instances");
    let erased = all
        .iter()
        .find(|i| i.reference.starts_with("erased:"))
        .expect("the de-identified instance");
    assert_eq!(erased.instance.state, "pregnancy");
    assert!(
        erased.instance.fields.is_empty(),
        "{:?}",
        erased.instance.fields
    );
    assert!(store.history(erased.id).await.expect("history").len() >= 2);
    assert!(store.timers(erased.id).await.expect("timers").is_empty());
    let audit = store
        .audit_log(&AuditFilter {
            reference: Some("FAM-ERASE".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].outcome.as_str()
        ),
        ("cli dpo-karen", "erase", "ok")
    );
    store.close().await;
    let again = carepath()
        .args(["erase", "FAM-ERASE", "--reason", "twice", "--db"])
        .arg(&db)
        .output()
        .expect("erase");
    assert_eq!(again.status.code(), Some(1), "no such family any more");
}

#[tokio::test]
async fn a_family_past_its_pathways_retention_is_erased_by_the_worker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pathways = dir.path().join("pathways");
    let mut kept = chain(1);
    kept["retention"] = json!("P1M");
    write_pathway(&pathways, &kept, &["entered", "counted"]);
    let (rt, clock) = runtime_on(dir.path(), &pathways, local("2027-03-01T09:00")).await;
    let enrol = |reference: &'static str, name: &'static str| {
        let rt = &rt;
        async move {
            rt.enrol(&EnrolRequest {
                reference: reference.into(),
                pathway: "chain".into(),
                fields: Default::default(),
                contacts: [(
                    "coordinator".to_string(),
                    contact(name, Some("olga.old@example.dk"), Some("+4540404040"), "da"),
                )]
                .into(),
            })
            .await
            .expect("enrol")
        }
    };
    enrol("FAM-OLD", "Olga Oldrup").await;
    // The chain's one step is a day after entry: FAM-OLD finishes on 2 March.
    clock.advance_to(local("2027-03-03T09:00"));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    // A month later FAM-NEW finishes on 3 April.
    clock.advance_to(local("2027-04-02T09:00"));
    let mut contacts = BTreeMap::new();
    contacts.insert(
        "coordinator".to_string(),
        contact("Nina Nyborg", Some("nina@example.dk"), None, "da"),
    );
    rt.enrol(&EnrolRequest {
        reference: "FAM-NEW".into(),
        pathway: "chain".into(),
        fields: Default::default(),
        contacts,
    })
    .await
    .expect("enrol");
    clock.advance_to(local("2027-04-03T10:00"));
    rt.fire_due(clock.now(), 100).await.expect("fire");

    // 1 April: FAM-OLD finished less than a month ago. 3 April: more than a month ago.
    let early = rt
        .purge(local("2027-04-01T10:00"), 100)
        .await
        .expect("purge");
    assert_eq!(early.instances, 0, "not a day early");
    let done = rt
        .purge(local("2027-04-03T10:00"), 100)
        .await
        .expect("purge");
    assert_eq!(done.instances, 1, "{done:?}");
    assert_eq!(done.contacts, 1, "{done:?}");
    let again = rt
        .purge(local("2027-04-03T11:00"), 100)
        .await
        .expect("purge");
    assert_eq!(again.instances, 0, "once");
    rt.store().close().await;

    let bytes = stored_bytes(dir.path()).await;
    for text in ["Olga Oldrup", "olga.old@example.dk", "4540404040"] {
        assert!(!holds(&bytes, text), "{text:?} outlived its retention");
    }
    assert!(
        holds(&bytes, "Nina Nyborg"),
        "FAM-NEW is within its retention"
    );
    let store = super::support::fresh_store(dir.path()).await;
    let all = store.all_instances().await.expect("instances");
    assert!(all.iter().any(|i| i.reference == "FAM-NEW"));
    assert!(!all.iter().any(|i| i.reference == "FAM-OLD"));
    store.close().await;
}

#[test]
fn with_a_data_key_the_file_never_shows_a_cpr_number() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("sealed.db");
    let key = carepath().args(["key", "new"]).output().expect("key new");
    assert!(key.status.success());
    let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    assert_eq!(key.len(), 44, "32 bytes in base64: {key}");
    let family = dir.path().join("family.json");
    std::fs::write(
        &family,
        json!({"ref": "FAM-SEAL", "pathway": "standard-track",
               "fields": {"due_date": "2027-08-20", "cpr": "0101901234", "interpreter_needed": true},
               "contacts": {"gp": {"name": "Lægehuset", "email": "laege@example.dk"},
                            "midwife": {"name": "Jordemoder", "email": "jm@example.dk"}}})
        .to_string(),
    )
    .expect("write");
    let with = |key: Option<&str>, args: &[&str]| {
        let mut c = carepath();
        c.args(args)
            .arg("--db")
            .arg(&db)
            .env_remove("CAREPATH_DATA_KEY");
        // The commands that step instances run on the day of the enrolment.
        if matches!(args.first(), Some(&"enroll" | &"event" | &"run")) {
            c.args(["--clock", "fixed:2027-01-11T08:00:00Z"]);
        }
        if let Some(k) = key {
            c.env("CAREPATH_DATA_KEY", k);
        }
        c.output().expect("carepath")
    };
    let out = with(Some(&key), &["enroll", family.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A CPR number typed as a birth date: the refused event keeps its payload, sealed.
    let out = with(
        Some(&key),
        &[
            "event",
            "FAM-SEAL",
            "first_exam_done",
            "--payload",
            r#"{"care_level": "0101901234"}"#,
            "--key",
            "k1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "refused");
    let out = with(
        Some(&key),
        &["run", "--until-idle", "--pathways", "pathways"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bytes = file_bytes(&db);
    assert!(!holds(&bytes, "0101901234"), "a CPR number in the file");
    assert!(!holds(&bytes, "2027-08-20"), "a sensitive date in the file");

    // With the key, everything reads: the fields that may be shown are there.
    let out = with(Some(&key), &["status", "FAM-SEAL", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["instances"][0]["fields"]["interpreter_needed"], true,
        "{v}"
    );
    assert_eq!(v["instances"][0]["fields"]["cpr"], "(sensitive)");
    // Without it, or with another, nothing starts, and it says why.
    let out = with(None, &["status", "FAM-SEAL"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("CAREPATH_DATA_KEY"), "{said}");
    let other = String::from_utf8_lossy(
        &carepath()
            .args(["key", "new"])
            .output()
            .expect("key")
            .stdout,
    )
    .trim()
    .to_string();
    let out = with(Some(&other), &["status", "FAM-SEAL"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("another data key"), "{said}");
}
