//! The `carepath` binary as operators run it: the worker as its own process, killed with
//! SIGKILL in the middle of a burst, stopped with SIGTERM, woken by another process; and the
//! enroll/event/status/simulate commands.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};

use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::{Backend, Contact, OutboxFilter, SqliteStore, Storage};

use super::fixtures::{chain, write_pathway};
use super::support::{carepath, root, stdout};

const T0: &str = "2027-03-01T08:00:00Z";

fn coordinator() -> BTreeMap<String, Contact> {
    BTreeMap::from([(
        "coordinator".to_string(),
        Contact {
            name: "Koordinator".into(),
            email: Some("k@example.dk".into()),
            phone: None,
            language: "da".into(),
            channel: None,
        },
    )])
}

/// Starts `carepath run` and waits until it says it is running; returns the child and a
/// channel with the rest of its log lines.
fn start_worker(
    db: &Path,
    pathways: &Path,
    clock: &str,
    extra: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let mut run = carepath();
    run.args(["run", "--db"])
        .arg(db)
        .arg("--pathways")
        .arg(pathways)
        .args(["--clock", clock])
        .args(extra);
    start(run)
}

/// Starts `command`, a `carepath run`, and waits until it says it is running.
fn start(mut command: std::process::Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .env("CAREPATH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn carepath run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("worker starting") => return (child, rx),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the worker did not start: {e}");
            }
        }
    }
}

/// Waits for a child to exit, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

async fn history_rows(db: &Path) -> usize {
    let store = Backend::open(db).await.expect("open");
    let mut n = 0;
    for i in store.all_instances().await.expect("instances") {
        n += store.history(i.id).await.expect("history").len();
    }
    store.close().await;
    n
}

/// The empty database of the test in `dir`, as `--db` takes it (see [`support::db_arg`]).
async fn test_database(dir: &Path) -> PathBuf {
    super::support::fresh_store(dir).await.close().await;
    PathBuf::from(super::support::db_arg(dir))
}

/// Enrols `families` on the chain of `steps` at T0, each with a coordinator by email.
async fn enrol_chain(db: &Path, pathways: &Path, families: usize) {
    let t0: Timestamp = T0.parse().expect("t0");
    let store = Backend::open(db).await.expect("open");
    let (catalog, _) = Catalog::sync(&store, &[pathways.to_path_buf()], t0)
        .await
        .expect("load");
    let rt = Runtime::new(
        store,
        catalog,
        Arc::new(VirtualClock::new(t0)) as Arc<dyn Clock>,
    );
    for i in 0..families {
        rt.enrol(&EnrolRequest {
            reference: format!("FAM-{i:04}"),
            pathway: "chain".into(),
            fields: Default::default(),
            contacts: coordinator(),
        })
        .await
        .expect("enrol");
    }
    rt.store().close().await;
}

/// Two `carepath run` processes on one database (a SQLite file, or PostgreSQL), started
/// together on a backlog: each notice is claimed by one of them and sent once (before claims,
/// 89 % went out twice).
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_on_one_database_send_each_notice_once() {
    const FAMILIES: usize = 1500;
    const STEPS: usize = 2;
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(STEPS), &["entered", "counted"]);
    let db = test_database(dir.path()).await;
    enrol_chain(&db, &pathways, FAMILIES).await;

    let clock = "fixed:2027-04-01T00:00:00Z";
    let sinks = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    let mut workers: Vec<(Child, mpsc::Receiver<String>)> = sinks
        .iter()
        .map(|sink| {
            let sink = sink.to_str().expect("utf-8");
            start_worker(&db, &pathways, clock, &["--until-idle", "--sink", sink])
        })
        .collect();
    for (w, log) in &mut workers {
        let status = wait_exit(w, Duration::from_secs(120)).expect("the worker finishes");
        let said: Vec<String> = log.try_iter().collect();
        assert!(status.success(), "{status:?}: {}", said.join("\n"));
    }

    let mut by_worker = Vec::new();
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for sink in &sinks {
        let text = std::fs::read_to_string(sink).unwrap_or_default();
        let mut n = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            let key = v["message"]["key"].as_str().expect("key").to_string();
            *keys.entry(key).or_default() += 1;
            n += 1;
        }
        by_worker.push(n);
    }
    eprintln!("sent by each worker: {by_worker:?}");
    let twice: Vec<&String> = keys
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        twice.is_empty(),
        "{} of {} notices went out more than once: {:?}",
        twice.len(),
        keys.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    let store = Backend::open(&db).await.expect("open");
    let rows = store
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox");
    store.close().await;
    assert_eq!(rows.len(), FAMILIES * (STEPS + 1));
    assert!(
        rows.iter()
            .all(|r| r.status == carepath_worker::store::NoticeStatus::Sent),
        "every notice sent"
    );
    assert_eq!(keys.len(), rows.len(), "each one at a sink");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_at_random_points_loses_and_repeats_nothing() {
    const FAMILIES: usize = 1500;
    const STEPS: usize = 5;
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(STEPS), &["entered", "counted"]);
    let db = test_database(dir.path()).await;
    enrol_chain(&db, &pathways, FAMILIES).await;
    let t0: Timestamp = T0.parse().expect("t0");
    let total = FAMILIES * (STEPS + 1);
    let clock = "fixed:2027-04-01T00:00:00Z";
    let mut kills = 0;
    let mut mid_burst = 0;
    let mut rng = fastrand::Rng::with_seed(20271124);
    while kills < 20 || (kills < 200 && mid_burst < 20) {
        let before = history_rows(&db).await;
        if before == total {
            break;
        }
        let (mut child, _log) =
            start_worker(&db, &pathways, clock, &["--until-idle", "--batch", "5"]);
        std::thread::sleep(Duration::from_millis(rng.u64(0..60)));
        if child.try_wait().expect("wait").is_some() {
            continue; // it finished before the kill
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        let after = history_rows(&db).await;
        if after > before && after < total {
            mid_burst += 1;
        }
    }
    eprintln!("{kills} SIGKILLs, {mid_burst} of them mid-burst");
    assert!(kills >= 20, "only {kills} kills");
    assert!(
        mid_burst >= 5,
        "only {mid_burst} of {kills} kills landed mid-burst"
    );
    let (mut child, _log) = start_worker(&db, &pathways, clock, &["--until-idle"]);
    let status = wait_exit(&mut child, Duration::from_secs(120)).expect("the last run finishes");
    assert!(status.success(), "{status:?}");

    let store = Backend::open(&db).await.expect("open");
    let instances = store.all_instances().await.expect("instances");
    assert_eq!(instances.len(), FAMILIES);
    let expected_path: Vec<String> = (0..=STEPS).map(|i| format!("s{i}")).collect();
    let mut keys = BTreeSet::new();
    for inst in &instances {
        assert_eq!(
            inst.instance.state,
            format!("s{STEPS}"),
            "{}",
            inst.reference
        );
        let history = store.history(inst.id).await.expect("history");
        let seqs: Vec<u64> = history.iter().map(|h| h.seq).collect();
        assert_eq!(
            seqs,
            (0..=STEPS as u64).collect::<Vec<_>>(),
            "{}",
            inst.reference
        );
        let path: Vec<String> = history.iter().map(|h| h.to.clone()).collect();
        assert_eq!(path, expected_path, "{}", inst.reference);
        for (d, h) in history.iter().enumerate() {
            assert_eq!(
                h.at,
                t0 + jiff::SignedDuration::from_hours(24 * d as i64),
                "each step at its due time, however late the worker got to it"
            );
        }
        let notices = store
            .outbox(&OutboxFilter {
                instance_id: Some(inst.id),
                ..Default::default()
            })
            .await
            .expect("outbox");
        assert_eq!(notices.len(), STEPS + 1, "{}: {notices:?}", inst.reference);
        for n in notices {
            assert!(keys.insert(n.key.clone()), "duplicate outbox key {}", n.key);
        }
        assert!(store.timers(inst.id).await.expect("timers").is_empty());
    }
    assert_eq!(
        store.next_due().await.expect("next"),
        None,
        "no timer left behind"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_worker_cleanly_and_another_process_wakes_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(2), &["entered", "counted"]);
    let db = dir.path().join("wake.db");
    // A worker on a standing clock with nothing to do sleeps until woken.
    let (mut worker, _log) = start_worker(&db, &pathways, "fixed:2027-04-01T00:00:00Z", &[]);
    let family = dir.path().join("family.json");
    std::fs::write(
        &family,
        json!({"ref": "FAM-1", "pathway": "chain", "contacts": coordinator()}).to_string(),
    )
    .expect("write family");
    let out = carepath()
        .args(["enroll"])
        .arg(&family)
        .arg("--db")
        .arg(&db)
        .arg("--pathways")
        .arg(&pathways)
        .args(["--clock", &format!("fixed:{T0}")])
        .output()
        .expect("enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("enrolled FAM-1 on chain"),
        "{}",
        stdout(&out)
    );
    // The enrolment's timers are all due by the worker's clock: woken, it runs them at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let store = SqliteStore::open(&db).await.expect("open");
        let done = store.instances_by_ref("FAM-1").await.expect("read")[0]
            .instance
            .state
            == "s2";
        store.close().await;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the worker was not woken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGTERM: the worker finishes and exits 0.
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    assert_eq!(r, 0);
    let status = wait_exit(&mut worker, Duration::from_secs(30)).expect("stops");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A database removed under a running worker is noticed: the worker stops with a message
/// that says so and a failing exit code, instead of writing on into a file nobody will find.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_database_is_removed_stops_and_says_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(2), &["entered", "counted"]);
    let db = dir.path().join("gone.db");
    let (mut worker, log) = start_worker(&db, &pathways, "fixed:2027-04-01T00:00:00Z", &[]);
    std::fs::remove_file(&db).expect("rm");
    let status = wait_exit(&mut worker, Duration::from_secs(30)).expect("it stops");
    assert_eq!(status.code(), Some(1), "{status:?}");
    let said: Vec<String> = log.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("gone.db was removed while carepath was running")),
        "{said:?}"
    );
    assert!(!db.exists(), "not made again");
}

/// A full disk under a running process: writes and /healthz answer 503 while it lasts, and
/// both work again once there is room, with no restart (today's bug: one "database or disk is
/// full" left every later write failing while /healthz said ok). The disk is a 3 MiB tmpfs in
/// a mount namespace of the worker's own (`unshare`), filled and emptied through
/// `/proc/PID/root`.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_writes_and_health_until_there_is_room_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("carepath.toml");
    let token = enrolling_token(&config);
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mkdir");
    let exe = carepath().get_program().to_owned();
    let script = format!(
        "mount -t tmpfs -o size=3m none '{disk}' || exit 97; exec '{exe}' run --db '{disk}/c.db' \
         --pathways '{pathways}' --listen 127.0.0.1:0 --config '{config}' \
         --clock fixed:2027-01-11T08:00:00Z",
        disk = disk.display(),
        exe = Path::new(&exe).display(),
        pathways = root().join("pathways").display(),
        config = config.display(),
    );
    let can = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        can,
        "this test mounts a small tmpfs in a namespace of its own: it needs util-linux's \
         unshare and user namespaces (or root)"
    );
    let mut command = std::process::Command::new("unshare");
    command.args(["-rm", "sh", "-c", &script]);
    let (mut worker, log) = start(command);
    let addr = api_address(&log);
    let http = reqwest::Client::new();
    let enrol = |n: usize| enrol_over_api(&http, &addr, &token, n);
    let health = || http.get(format!("http://{addr}/healthz")).send();
    assert_eq!(enrol(1).await.expect("post").status(), 201);
    assert_eq!(health().await.expect("get").status(), 200);

    // Fill the worker's disk to the last block.
    let filler = Path::new(&format!("/proc/{}/root", worker.id())).join(
        disk.strip_prefix("/")
            .expect("an absolute temporary folder")
            .join("filler"),
    );
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("the worker's disk, seen from here");
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    for n in 2..5 {
        let r = enrol(n).await.expect("post");
        assert_eq!(r.status(), 503);
        let problem: Value = r.json().await.expect("json");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("disk is full")),
            "{problem}"
        );
    }
    assert_eq!(
        health().await.expect("get").status(),
        503,
        "unhealthy while full"
    );

    // Room again: the same process takes writes and says it is healthy.
    std::fs::remove_file(&filler).expect("rm filler");
    for n in 5..10 {
        let r = enrol(n).await.expect("post");
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }
    assert_eq!(health().await.expect("get").status(), 200);
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    assert_eq!(r, 0);
    let status = wait_exit(&mut worker, Duration::from_secs(30)).expect("stops");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn enroll_event_and_status_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("cli.db");
    let base = |args: &[&str]| {
        let mut c = carepath();
        c.args(args)
            .arg("--db")
            .arg(&db)
            .args(["--clock", "fixed:2027-01-11T08:00:00Z"])
            .env("USER", "jordemoder-anne");
        c
    };
    // A report into a database that is not there is refused, and makes no empty one.
    let out = base(&["event", "FAM-0001", "first_exam_done", "--key", "k"])
        .output()
        .expect("event");
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no such file") && said.contains("carepath enroll"),
        "{said}"
    );
    assert!(!db.exists(), "no database was made");
    let out = base(&["enroll", "examples/families/standard-track.json"])
        .output()
        .expect("enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = |key: &str, name: &str, payload: &str| {
        base(&[
            "event",
            "FAM-0001",
            name,
            "--payload",
            payload,
            "--key",
            key,
        ])
        .output()
        .expect("event")
    };
    let first = event("exam-1", "first_exam_done", r#"{"care_level": 2}"#);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout(&first).contains("awaiting_first_exam → pregnancy"),
        "{}",
        stdout(&first)
    );
    let again = event("exam-1", "first_exam_done", r#"{"care_level": 2}"#);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("key seen before"),
        "{}",
        stdout(&again)
    );
    let wrong = event("exam-2", "first_exam_done", r#"{"care_level": "high"}"#);
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("event-not-allowed") || err.contains("bad-payload"),
        "{err}"
    );

    let status = carepath()
        .args(["status", "FAM-0001", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .expect("status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = stdout(&status);
    assert!(
        !text.contains("0101901234"),
        "a CPR number in status: {text}"
    );
    let v: Value = serde_json::from_str(&text).expect("json");
    let inst = &v["instances"][0];
    assert_eq!(inst["state"], "pregnancy");
    assert_eq!(inst["owner"], "midwife");
    assert_eq!(inst["fields"]["cpr"], "(sensitive)");
    assert_eq!(inst["history"].as_array().map(Vec::len), Some(2));
    assert!(
        inst["notices"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["template"] == "pregnancy_referral")),
        "{inst}"
    );
    assert!(
        !inst["upcoming_timers"]
            .as_array()
            .expect("timers")
            .is_empty()
    );
    assert_eq!(v["refused_events"].as_array().map(Vec::len), Some(1));

    let missing = carepath()
        .args(["status", "FAM-9999", "--db"])
        .arg(&db)
        .output()
        .expect("status");
    assert_eq!(missing.status.code(), Some(1));

    // What the operator did is in the audit log, under their user name.
    let audit = carepath()
        .args(["audit", "--ref", "FAM-0001", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .expect("audit");
    assert!(audit.status.success());
    let lines: Vec<Value> = stdout(&audit)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let actions: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap_or(""),
                l["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(actions[0], ("enrol", "ok"), "{lines:#?}");
    assert!(actions.contains(&("event", "ok")), "{lines:#?}");
    assert!(
        actions
            .iter()
            .any(|(a, o)| *a == "event" && o.starts_with("refused")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l["actor"] == "cli jordemoder-anne"),
        "{lines:#?}"
    );
    assert!(!stdout(&audit).contains("0101901234"));

    // Many families at once, from the command line: a dry run counts, a cancel needs a reason.
    let bulk = |args: &[&str]| {
        carepath()
            .arg("bulk")
            .args(args)
            .arg("--db")
            .arg(&db)
            .env("USER", "koordinator-lis")
            .output()
            .expect("bulk")
    };
    let out = bulk(&["hold", "--state", "pregnancy", "--dry-run"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "would hold 1 family: FAM-0001");
    let out = bulk(&["cancel", "--state", "pregnancy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason"));
    let out = bulk(&[
        "hold",
        "--pathway",
        "standard-track",
        "--state",
        "pregnancy",
    ]);
    assert_eq!(stdout(&out).trim(), "hold: 1 of 1 family changed");
}

#[test]
fn simulate_prints_the_timeline_on_virtual_time() {
    let out = carepath()
        .args([
            "simulate",
            "pathways/standard-track",
            "--family",
            "examples/families/standard-track.json",
            "--event-script",
            "examples/families/standard-track.events.json",
            "--until",
            "P9M",
            "--format",
            "json",
        ])
        .output()
        .expect("simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(!text.contains("0101901234"), "a CPR number in the timeline");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["time_zone"], "Europe/Copenhagen");
    let entries = v["entries"].as_array().expect("entries");
    let find = |pred: &dyn Fn(&Value) -> bool| entries.iter().find(|e| pred(e)).cloned();
    let birth = find(&|e| e["kind"] == "transition" && e["to"] == "newborn").expect("birth");
    assert_eq!(birth["at"], "2027-08-06 14:00 Fri");
    assert_eq!(birth["from"], "pregnancy");
    let handoff = find(&|e| e["kind"] == "notice" && e["template"] == "birth_notice")
        .expect("handoff notice");
    assert_eq!(handoff["to"], "health_visitor");
    assert_eq!(handoff["channel"], "email");
    assert!(
        handoff["subject"]
            .as_str()
            .is_some_and(|s| s.contains("FAM-0001"))
    );
    let reminder = find(&|e| e["kind"] == "notice" && e["template"] == "appointment_reminder")
        .expect("appointment reminder");
    assert_eq!(reminder["to"], "family");
    assert_eq!(reminder["channel"], "sms");
    assert_eq!(reminder["language"], "ar");
    assert_eq!(
        reminder["at"], "2027-02-13 10:00 Sat",
        "two days before the scan (09:30), held until Saturday's quiet hours end"
    );
    assert!(
        reminder["held"]
            .as_str()
            .is_some_and(|h| h.contains("quiet hours")),
        "{reminder}"
    );
    assert_eq!(reminder["status"], "sent");
    assert_eq!(reminder["address"], "+45••••••56", "addresses are masked");
    let refused = find(&|e| e["kind"] == "rejected").expect("the duplicate visit is refused");
    assert_eq!(refused["code"], "event-not-allowed");

    let text = carepath()
        .args([
            "simulate",
            "pathways/standard-track",
            "--family",
            "examples/families/standard-track.json",
            "--until",
            "P1M",
        ])
        .output()
        .expect("simulate");
    assert!(stdout(&text).contains("Family FAM-0001 (times in Europe/Copenhagen)"));
}

#[test]
fn simulate_names_what_is_wrong_in_its_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let family = dir.path().join("family.json");
    std::fs::write(&family, "{\"ref\": \"FAM-1\",\n \"feilds\": {}}").expect("write");
    let out = carepath()
        .args(["simulate", "pathways/standard-track", "--family"])
        .arg(&family)
        .output()
        .expect("simulate");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("family.json") && err.contains("line 2") && err.contains("feilds"),
        "{err}"
    );

    std::fs::write(
        &family,
        json!({"ref": "FAM-1", "enrolled_at": "2027-01-11T09:00", "fields": {"due_date": "soon"}})
            .to_string(),
    )
    .expect("write");
    let out = carepath()
        .args(["simulate", "pathways/standard-track", "--family"])
        .arg(&family)
        .output()
        .expect("simulate");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("due_date"), "{err}");
    let _ = root();
}

#[tokio::test]
async fn run_serves_the_http_api_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(2), &["entered", "counted"]);
    let db = dir.path().join("api.db");
    let (mut worker, log) = start_worker(
        &db,
        &pathways,
        "fixed:2027-04-01T00:00:00Z",
        &["--listen", "127.0.0.1:0"],
    );
    let addr = api_address(&log);
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("text"), "ok\n");
    let r = http
        .get(format!("http://{addr}/v1/nothing-here"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Without [sms] inbound_secret_env the webhook takes nothing.
    let r = http
        .post(format!("http://{addr}/v1/inbound/sms/gatewayapi"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);

    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    assert_eq!(r, 0);
    let status = wait_exit(&mut worker, Duration::from_secs(30)).expect("stops");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A new `instances:write` token in `config`, as `carepath token new` prints it.
fn enrolling_token(config: &Path) -> String {
    let out = carepath()
        .args([
            "token",
            "new",
            "--name",
            "epj",
            "--scope",
            "instances:write",
        ])
        .arg("--config")
        .arg(config)
        .output()
        .expect("token new");
    assert!(out.status.success());
    stdout(&out).trim().to_string()
}

/// Enrols FAM-`n` on the standard track through the API at `addr`.
async fn enrol_over_api(
    http: &reqwest::Client,
    addr: &str,
    token: &str,
    n: usize,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("http://{addr}/v1/instances"))
        .bearer_auth(token)
        .json(
            &json!({"ref": format!("FAM-{n}"), "pathway": "standard-track",
            "fields": {"due_date": "2027-08-20"},
            "contacts": {"gp": {"name": "Lægehuset", "email": "laege@example.dk"}}}),
        )
        .send()
        .await
}

/// Reads the address from a worker's "HTTP API listening addr=…" line.
fn api_address(log: &mpsc::Receiver<String>) -> String {
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .expect("the API starts");
        if line.contains("HTTP API listening") {
            let at = line.find("addr=").expect("addr") + 5;
            return line[at..]
                .split_whitespace()
                .next()
                .expect("address")
                .to_string();
        }
    }
}

#[tokio::test]
async fn a_token_made_by_the_cli_opens_an_api_process_whose_enrolment_a_separate_worker_delivers() {
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways, &chain(2), &["entered", "counted"]);
    let db = dir.path().join("split.db");
    let config = dir.path().join("carepath.toml");
    let out = carepath()
        .args(["token", "new", "--name", "kommune-epj"])
        .args(["--scope", "instances:write", "--scope", "read"])
        .arg("--config")
        .arg(&config)
        .output()
        .expect("token new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("cp_"), "{token}");
    let saved = std::fs::read_to_string(&config).expect("config");
    assert!(!saved.contains(&token), "only the hash is kept:\n{saved}");
    assert!(
        saved.contains("[[api.tokens]]") && saved.contains("kommune-epj"),
        "{saved}"
    );
    let bad = carepath()
        .args(["token", "new", "--name", "x", "--scope", "write"])
        .output()
        .expect("token new");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--scope write"));
    // The API alone in one process, the worker (timers and delivery) in another.
    let clock = "fixed:2027-04-01T00:00:00Z";
    let config_arg = config.to_str().expect("utf-8");
    let (mut api, api_log) = start_worker(
        &db,
        &pathways,
        clock,
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config_arg,
            "--no-timers",
            "--no-delivery",
        ],
    );
    let addr = api_address(&api_log);
    let sink = dir.path().join("sent.jsonl");
    let (mut worker, worker_log) = start_worker(
        &db,
        &pathways,
        clock,
        &["--sink", sink.to_str().expect("utf-8")],
    );

    let http = reqwest::Client::new();
    let enrol = json!({"ref": "FAM-77", "pathway": "chain", "contacts": {
        "coordinator": {"name": "Koordinator", "email": "k@example.dk"}}});
    let r = http
        .post(format!("http://{addr}/v1/instances"))
        .json(&enrol)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "no token");
    let r = http
        .post(format!("http://{addr}/v1/instances"))
        .bearer_auth(&token)
        .json(&enrol)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    // The API process woke the worker through the socket beside the database.
    let sent = loop {
        let line = worker_log
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker delivers the enrolment's notice");
        if line.contains("sent") && line.contains("template=entered") {
            break line;
        }
    };
    assert!(
        !sent.contains("k@example.dk"),
        "addresses are masked: {sent}"
    );
    assert!(
        std::fs::read_to_string(&sink)
            .expect("sink")
            .contains("FAM-77")
    );
    // The access log names the route and the token, not the family.
    let access = loop {
        let line = api_log.recv_timeout(Duration::from_secs(30)).expect("log");
        if line.contains("carepath::access") && line.contains("status=201") {
            break line;
        }
    };
    assert!(
        access.contains("route=/v1/instances") && access.contains("caller=kommune-epj"),
        "{access}"
    );
    assert!(!access.contains("FAM-77"), "{access}");

    for child in [&mut api, &mut worker] {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(r, 0);
        let status = wait_exit(child, Duration::from_secs(30)).expect("stops");
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}

/// The README's curl walkthrough, run as written (on a free port, in a scratch folder with the
/// checkout's examples and pathways), with `carepath` on the PATH.
#[test]
fn the_readme_api_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let block = readme
        .split("<!-- walkthrough:api")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /walkthrough:api -->").next())
        .and_then(|b| b.split("```sh\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the README has the walkthrough");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = block.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().expect("tmp");
    for shared in ["examples", "pathways"] {
        std::os::unix::fs::symlink(root().join(shared), dir.path().join(shared)).expect("link");
    }
    let exe = carepath().get_program().to_owned();
    let bin = Path::new(&exe).parent().expect("bin dir").to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("CAREPATH_LOG", "warn")
        .env_remove("CAREPATH_CONFIG")
        .env_remove("CAREPATH_DB")
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        r#""state":"awaiting_first_exam""#,
        r#""outcome":"applied""#,
        r#""to":"pregnancy""#,
        r#""template":"pregnancy_referral","role":"midwife""#,
        r#""cpr":"(sensitive)""#,
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    let config = std::fs::read_to_string(dir.path().join("carepath.toml")).expect("config");
    assert!(config.contains("kommune-epj"), "{config}");
    let sent = std::fs::read_to_string(dir.path().join("notices.jsonl")).unwrap_or_default();
    assert!(
        sent.contains("pregnancy_referral") || text.contains(r#""status":"queued""#),
        "the referral is sent or waiting to be: {sent}"
    );
}

/// Three `carepath run` workers on PostgreSQL drain 20,000 families' timers and notices to a
/// real SMTP server on loopback (aiosmtpd) and an SMS gateway double, while one of them at
/// random is killed (SIGKILL) and started again, at least ten times. In the end every family
/// made each transition once and every notice was delivered; a notice reached its sink twice
/// only when a killed worker had claimed it, so the duplicates are at most what the killed
/// workers held: ten kills × a round's claim.
#[tokio::test(flavor = "multi_thread")]
async fn three_workers_on_postgres_killed_at_random_deliver_every_notice() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const FAMILIES: usize = 20_000;
    const STEPS: usize = 1;
    /// The notices one delivery round claims (`delivery::BATCH`).
    const CLAIMED_PER_ROUND: usize = 200;
    let Some(server) = super::support::postgres_server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let pathways = dir.path().join("pathways");
    let mut pathway = chain(STEPS);
    pathway["roles"]["coordinator"]["channels"] = json!(["email", "sms"]);
    let folder = write_pathway(&pathways, &pathway, &["entered", "counted"]);
    for t in ["entered", "counted"] {
        std::fs::write(
            folder.join(format!("templates/{t}.da.sms.hbs")),
            "Familien {{instance.ref}} er nu i {{state.name}}.\n",
        )
        .expect("sms template");
    }
    let url = carepath_worker::store::postgres::create_database(
        &server,
        &format!("carepath_chaos_{}", std::process::id()),
    )
    .await
    .expect("database");
    let db = PathBuf::from(&url);

    // Enrolled two days ago on a virtual clock: every family's timer is due when the workers
    // start on the system clock. Half the coordinators take email, half SMS.
    let t0 = Timestamp::now() - jiff::SignedDuration::from_hours(48);
    let store = Backend::open(&db).await.expect("open");
    let (catalog, _) = Catalog::sync(&store, std::slice::from_ref(&pathways), t0)
        .await
        .expect("load");
    let rt = Runtime::new(
        store,
        catalog,
        Arc::new(VirtualClock::new(t0)) as Arc<dyn Clock>,
    );
    use futures::StreamExt;
    futures::stream::iter(0..FAMILIES)
        .for_each_concurrent(12, |i| {
            let rt = &rt;
            async move {
                let coordinator = if i % 2 == 0 {
                    contact_by("email", &format!("k{i}@example.dk"))
                } else {
                    contact_by("sms", &format!("+4520{i:06}"))
                };
                rt.enrol(&EnrolRequest {
                    reference: format!("FAM-{i:05}"),
                    pathway: "chain".into(),
                    fields: Default::default(),
                    contacts: BTreeMap::from([("coordinator".to_string(), coordinator)]),
                })
                .await
                .expect("enrol");
            }
        })
        .await;
    let Backend::Postgres(pg) = rt.store().clone() else {
        panic!("a PostgreSQL store");
    };
    let pool = pg.pool().clone();

    let (_smtp, mail) = super::delivery::SmtpServer::in_dir(dir.path());
    let gateway = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gateway)
        .await;
    let config = dir.path().join("carepath.toml");
    std::fs::write(
        &config,
        format!(
            "[email]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
             from = \"Forløbskoordinering <noreply@carepath.example.dk>\"\npool = 4\n\n\
             [sms]\ngateway = \"webhook\"\nurl = \"{}/sms\"\nsender = \"Kommunen\"\n\n\
             [delivery]\nlease_secs = 3\n",
            _smtp.port,
            gateway.uri()
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let start = || start_worker(&db, &pathways, "system", &["--config", &config]);
    let mut workers: Vec<(Child, mpsc::Receiver<String>)> = (0..3).map(|_| start()).collect();

    let left = || async {
        let (timers, queued): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM timers), (SELECT count(*) FROM outbox WHERE status = 'queued')",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        timers + queued
    };
    let mut rng = fastrand::Rng::with_seed(20271201);
    let (mut kills, mut mid_work) = (0, 0);
    while kills < 10 {
        std::thread::sleep(Duration::from_millis(rng.u64(300..900)));
        let busy = left().await > 0;
        let i = rng.usize(0..workers.len());
        let (child, _) = &mut workers[i];
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        mid_work += usize::from(busy);
        workers[i] = start();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while left().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the workers did not drain the work"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (child, log) in &mut workers {
        // SAFETY: a plain signal to a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(child, Duration::from_secs(60)).expect("the worker stops");
        let said: Vec<String> = log.try_iter().collect();
        assert!(status.success(), "{status:?}: {}", said.join("\n"));
    }
    eprintln!("{kills} SIGKILLs, {mid_work} of them with work left");
    assert!(
        mid_work >= 5,
        "only {mid_work} of {kills} kills came while there was work"
    );

    // Every transition once: each family's history is its enrolment and its one step.
    let (rows, distinct, off_path): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (instance_id, seq)), \
         (SELECT count(*) FROM instances WHERE state <> 's1' OR seq <> 1) FROM history",
    )
    .fetch_one(&pool)
    .await
    .expect("history");
    let transitions = (FAMILIES * (STEPS + 1)) as i64;
    assert_eq!((rows, distinct, off_path), (transitions, transitions, 0));

    // Every notice sent, and at its sink.
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM outbox GROUP BY status")
            .fetch_all(&pool)
            .await
            .expect("outbox");
    assert_eq!(
        statuses,
        [("sent".to_string(), transitions)],
        "{statuses:?}"
    );
    let mut at_sinks: BTreeMap<String, usize> = BTreeMap::new();
    for m in super::delivery::received(&mail) {
        let id = m["message_id"].as_str().expect("a Message-ID").to_string();
        *at_sinks.entry(id).or_default() += 1;
    }
    let emails = at_sinks.len();
    for r in gateway.received_requests().await.expect("recorded") {
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        let key = body["key"].as_str().expect("a key").to_string();
        *at_sinks.entry(key).or_default() += 1;
    }
    assert_eq!(
        emails,
        FAMILIES * (STEPS + 1) / 2,
        "each email notice arrived"
    );
    assert_eq!(at_sinks.len(), transitions as usize, "each notice arrived");
    let duplicates: usize = at_sinks.values().map(|n| n - 1).sum();
    eprintln!("{duplicates} notices arrived twice, after {kills} kills");
    assert!(
        duplicates <= kills * CLAIMED_PER_ROUND,
        "{duplicates} duplicates: more than {kills} killed workers' claims"
    );
    rt.store().close().await;
}

/// A contact reached by `channel` only.
fn contact_by(channel: &str, address: &str) -> Contact {
    let email = channel == "email";
    Contact {
        name: "Koordinator".into(),
        email: email.then(|| address.to_string()),
        phone: (!email).then(|| address.to_string()),
        language: "da".into(),
        channel: None,
    }
}

/// A worker on PostgreSQL whose server goes away (its connections cut, new ones refused) fails
/// its health check and its writes with 503 while that lasts, and recovers by itself when the
/// server is back: no restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_on_postgres_rides_out_a_lost_server() {
    let Some(server) = super::support::postgres_server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("carepath.toml");
    std::fs::write(&config, "").expect("config");
    let token = enrolling_token(&config);
    let name = format!("carepath_lost_{}", std::process::id());
    let url = carepath_worker::store::postgres::create_database(&server, &name)
        .await
        .expect("database");
    let admin = sqlx::PgPool::connect(&server).await.expect("admin");
    let mut run = carepath();
    run.args(["run", "--db", &url, "--pathways"])
        .arg(root().join("pathways"))
        .args([
            "--clock",
            "fixed:2027-01-11T08:00:00Z",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&config);
    let (mut worker, log) = start(run);
    let addr = api_address(&log);
    let http = reqwest::Client::new();
    let enrol = |n: usize| enrol_over_api(&http, &addr, &token, n);
    let health = || http.get(format!("http://{addr}/healthz")).send();
    assert_eq!(enrol(1).await.expect("post").status(), 201);
    assert_eq!(health().await.expect("get").status(), 200);

    // The server refuses the database and cuts every connection to it.
    for sql in [
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("cut");
    }
    let down = health().await;
    let said: Vec<String> = log.try_iter().collect();
    assert_eq!(
        down.expect("the server still answers").status(),
        503,
        "{}",
        said.join("\n")
    );
    let refused = enrol(2).await.expect("post");
    assert_eq!(refused.status(), 503, "{:?}", refused.text().await);

    // Back: the same process takes writes again.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .expect("allow");
    assert_eq!(health().await.expect("get").status(), 200);
    assert_eq!(enrol(3).await.expect("post").status(), 201);
    let families: i64 = {
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        let n = sqlx::query_scalar("SELECT count(*) FROM instances")
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    };
    assert_eq!(families, 2, "FAM-1 and FAM-3; FAM-2 was refused whole");
    admin.close().await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut worker, Duration::from_secs(30)).expect("stops");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
