//! Moving up: a SQLite file copied into PostgreSQL with `carepath db copy`, and the work going
//! on there where it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use carepath_engine::pathway::Channel;
use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::{Contact, OutboxFilter, PgStore, SqliteStore, Storage};

use super::fixtures::{chain, write_pathway};
use super::support::{carepath, postgres_server, stdout, succeeded};

/// Everything a store holds that an operator or a worker reads, as text to compare.
async fn everything<S: Storage>(store: &S) -> String {
    let mut out = String::new();
    for i in store.all_instances().await.expect("instances") {
        let history = store.history(i.id).await.expect("history");
        let timers = store.timers(i.id).await.expect("timers");
        let events = store.instance_events(i.id).await.expect("events");
        out.push_str(&format!(
            "{} {} {:?} {:?} {:?} {:?} {:?} {history:?} {timers:?} {events:?}\n",
            i.id, i.reference, i.instance, i.roles, i.parent_id, i.created_at, i.held_since
        ));
    }
    for o in store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
    {
        let log = store.outbox_log(o.id).await.expect("log");
        out.push_str(&format!("{o:?} {log:?}\n"));
    }
    out.push_str(&format!(
        "{:?} {:?} {:?}\n",
        store.installation().await.expect("installation"),
        store
            .opted_out(&[("+4520000001".into(), Channel::Sms)])
            .await
            .expect("opt-outs"),
        store.pathways().await.expect("versions").len()
    ));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_file_copied_into_postgres_goes_on_there_where_it_stopped() {
    let Some(server) = postgres_server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(3), &["entered", "counted"]);
    let file = dir.path().join("carepath.db");
    let t0: Timestamp = "2027-03-01T08:00:00Z".parse().expect("t0");

    // A day's work on one machine: twenty families, their first step, a hold, an opt-out.
    let store = SqliteStore::open(&file).await.expect("open");
    let (catalog, _) = Catalog::sync(&store, std::slice::from_ref(&pathways), t0)
        .await
        .expect("load");
    let clock = Arc::new(VirtualClock::new(t0));
    let rt = Runtime::new(store, catalog, clock.clone() as Arc<dyn Clock>);
    for i in 0..20 {
        rt.enrol(&EnrolRequest {
            reference: format!("FAM-{i:02}"),
            pathway: "chain".into(),
            fields: Default::default(),
            contacts: BTreeMap::from([(
                "coordinator".to_string(),
                Contact {
                    name: format!("Koordinator {i}"),
                    email: Some(format!("k{i}@example.dk")),
                    phone: None,
                    language: "da".into(),
                    channel: None,
                },
            )]),
        })
        .await
        .expect("enrol");
    }
    clock.advance_to(t0 + SignedDuration::from_hours(25));
    rt.fire_due(clock.now(), 100).await.expect("fire");
    let held = rt.store().instances_by_ref("FAM-07").await.expect("read")[0].id;
    rt.store()
        .set_held(held, Some("cli anne"), clock.now())
        .await
        .expect("hold");
    rt.store()
        .set_opt_out("+4520000001", Channel::Sms, true, "sms STOP", clock.now())
        .await
        .expect("opt out");
    let before = everything(rt.store()).await;
    let last_notice = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .iter()
        .map(|o| o.id)
        .max()
        .expect("notices");
    rt.store().close().await;

    let url = carepath_worker::store::postgres::create_database(
        &server,
        &format!("carepath_copy_{}", std::process::id()),
    )
    .await
    .expect("database");
    let sqlite_arg = format!("sqlite:{}", file.display());
    let copied = carepath()
        .args(["db", "copy", "--from", &sqlite_arg, "--to", &url])
        .output()
        .expect("db copy");
    let said = stdout(&copied);
    assert!(
        copied.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(said.contains("outbox_log"), "{said}");

    // The same families, steps, timers, events, notices with their provenance, hold, opt-out
    // and installation id (so emails keep their Message-IDs).
    let pg = PgStore::open(&url).await.expect("open");
    assert_eq!(everything(&pg).await, before);
    pg.close().await;

    // A copy goes into an empty database only.
    let again = carepath()
        .args(["db", "copy", "--from", &sqlite_arg, "--to", &url])
        .output()
        .expect("db copy");
    assert_eq!(again.status.code(), Some(2), "refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("copy into an empty database"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A worker on PostgreSQL takes it from there: every family but the held one to its end.
    let sink = dir.path().join("sink.jsonl");
    let run = carepath()
        .args(["run", "--db", &url, "--pathways"])
        .arg(&pathways)
        .args([
            "--clock",
            "fixed:2027-03-10T08:00:00Z",
            "--until-idle",
            "--sink",
        ])
        .arg(&sink)
        .output()
        .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let pg = PgStore::open(&url).await.expect("open");
    for i in pg.all_instances().await.expect("instances") {
        let expected = if i.id == held { "s1" } else { "s3" };
        assert_eq!(i.instance.state, expected, "{}", i.reference);
    }
    let outbox = pg.outbox(&OutboxFilter::default()).await.expect("outbox");
    let new: Vec<_> = outbox
        .iter()
        .filter(|o| o.created_at > clock.now())
        .collect();
    assert_eq!(new.len(), 19 * 2, "two more steps for each family not held");
    assert!(
        new.iter().all(|o| o.id > last_notice),
        "new notices are numbered after the copied ones"
    );
    pg.close().await;
}

/// A database URL may carry a password: `--help` shows neither `CAREPATH_DB` nor
/// `DATABASE_URL`, and says where the default comes from.
#[test]
fn help_shows_no_database_url() {
    for command in [
        &["outbox", "--help"][..],
        &["run", "--help"],
        &["status", "--help"],
    ] {
        let o = carepath()
            .args(command)
            .env(
                "CAREPATH_DB",
                "postgres://carepath:s3cret-one@db.example/carepath",
            )
            .env(
                "DATABASE_URL",
                "postgres://carepath:s3cret-two@db.example/carepath",
            )
            .output()
            .expect("run carepath");
        let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(0), "{command:?}: {all}");
        assert!(
            !all.contains("s3cret"),
            "{command:?} shows a password: {all}"
        );
        assert!(all.contains("DATABASE_URL"), "{command:?}: {all}");
    }
}

/// Without `--db` or `CAREPATH_DB`, a PostgreSQL `DATABASE_URL` (as hosting platforms set it)
/// is the database; `CAREPATH_DB` comes before it, and a `DATABASE_URL` that is not PostgreSQL's
/// leaves the default file.
#[tokio::test(flavor = "multi_thread")]
async fn database_url_names_the_postgresql_database_when_nothing_else_does() {
    let Some(server) = postgres_server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (authority, _) = server.rsplit_once('/').expect("a URL with a database name");
    let name = format!("carepath_database_url_{}", std::process::id());
    carepath_worker::store::postgres::create_database(&server, &name)
        .await
        .expect("create the database");
    let url = format!("{authority}/{name}");
    PgStore::open(&url)
        .await
        .expect("carepath's tables")
        .close()
        .await;

    let outbox = |vars: &[(&str, &str)]| {
        let mut cmd = carepath();
        cmd.current_dir(dir.path())
            .args(["outbox", "--format", "json"]);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().expect("run carepath")
    };
    let o = outbox(&[("DATABASE_URL", &url)]);
    succeeded(&o, "outbox on DATABASE_URL");
    assert!(
        !dir.path().join("carepath.db").exists(),
        "a file was made beside a PostgreSQL DATABASE_URL"
    );

    // CAREPATH_DB first: this file does not exist, and the command says so.
    let o = outbox(&[("DATABASE_URL", &url), ("CAREPATH_DB", "elsewhere.db")]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("elsewhere.db"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Not a PostgreSQL URL: the default file, which is not there either.
    let o = outbox(&[("DATABASE_URL", "sqlite:other.db")]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("carepath.db") && !said.contains("other.db"),
        "{said}"
    );
}
