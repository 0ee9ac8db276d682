//! The web view in a real browser: Debian's Chromium, driven by Playwright for Python
//! (`tests/browser/web_view.py`), with axe-core checking every page for WCAG 2.1 AA.
//!
//! The database is the demo cohort's, run to its end by `carepath demo`, and two families more:
//! FAM-9001, whose midwife nobody plays (the handoff is a dead letter and goes unacknowledged)
//! and whose SMS gateway is down for its number; FAM-9002, whose first SMS the gateway refuses.
//! The browser signs in, finds the overdue handoff on the overview, holds the family and sees
//! its reminder wait, resumes it, assigns a midwife (the dead handoff goes out), retries the
//! refused SMS (it goes out), checks the capacity page against `carepath forecast`, and what a
//! token limited to God start sees. Screenshots of every page go to `<target>/web-screenshots`,
//! or to `CAREPATH_SCREENSHOTS` (the docs' are made with `CAREPATH_SCREENSHOTS=docs/screenshots`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::{carepath, root, run, run_with_input, stdout, succeeded};

/// The moment the demo cohort ends (`"until": "P11M"` from 2027-01-04 09:00 local).
const DEMO_END: &str = "2027-12-04T07:00:00Z";

/// The moment the web view is opened: Monday 13 December 2027, 10:00 in Copenhagen.
const OPENED: &str = "2027-12-13T09:00:00Z";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn family(dir: &Path, reference: &str, phone: &str, midwife: bool) -> PathBuf {
    let midwife = if midwife {
        r#""midwife": {"name": "Jordemodercentret Hvidovre", "email": "jordemoder@hvidovre.example.dk"},"#
    } else {
        ""
    };
    let text = format!(
        r#"{{
  "ref": "{reference}", "pathway": "standard-track",
  "fields": {{"due_date": "2028-06-01", "cpr": "0101901234"}},
  "contacts": {{
    "gp": {{"name": "Lægehuset Rødovre", "email": "roedovre@laeger.example.dk"}},
    {midwife}
    "coordinator": {{"name": "Forløbskoordinator", "email": "koordinator@regionh.example.dk"}},
    "health_visitor": {{"name": "Sundhedsplejen Rødovre", "email": "sundhedspleje@rk.example.dk"}},
    "team_lead": {{"name": "Leder, Sundhedsplejen", "email": "leder@rk.example.dk"}},
    "family": {{"name": "Sara", "phone": "{phone}", "language": "da", "channel": "sms"}}
  }}
}}"#
    );
    let path = dir.join(format!("{reference}.json"));
    std::fs::write(&path, text).expect("family file");
    path
}

fn token(config: &Path, name: &str, scopes: &[&str], pathway: Option<&str>) -> String {
    let mut args = vec!["token", "new", "--name", name];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    if let Some(p) = pathway {
        args.extend(["--pathway", p]);
    }
    let config = config.to_str().expect("utf-8");
    args.extend(["--config", config]);
    let o = run(&args);
    succeeded(&o, "token new");
    stdout(&o).trim().to_string()
}

/// Where screenshots go: `CAREPATH_SCREENSHOTS`, or `web-screenshots` in the target folder.
fn screenshots() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAREPATH_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            root().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|t| Some(t.parent()?.parent()?.join("web-screenshots")))
        .expect("the test binary lives in a target folder")
}

#[test]
fn a_coordinator_works_through_the_web_view_in_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    let axe = root().join("tests/browser/node_modules/axe-core/axe.min.js");
    let python_ok = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        chromium.is_file() && axe.is_file() && python_ok,
        "the browser test needs Debian's chromium, Playwright for Python and axe-core: run `bash .ci/test`, which installs them"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let demo = dir.path().join("demo");
    let demo_arg = demo.to_str().expect("utf-8");
    succeeded(
        &run(&["demo", "--dir", demo_arg, "--seconds", "4"]),
        "the demo cohort",
    );
    let db = demo.join("demo.db");
    let db_arg = db.to_str().expect("utf-8");
    let at_end = format!("fixed:{DEMO_END}");

    // FAM-9001: no midwife; its gateway is down. FAM-9002: its first SMS is refused.
    for (reference, phone, midwife) in [
        ("FAM-9001", "+4520009001", false),
        ("FAM-9002", "+4520009002", true),
    ] {
        let f = family(dir.path(), reference, phone, midwife);
        succeeded(
            &run(&[
                "enroll",
                f.to_str().expect("utf-8"),
                "--db",
                db_arg,
                "--clock",
                &at_end,
            ]),
            "enrol",
        );
        succeeded(
            &run(&[
                "event",
                reference,
                "appointment_booked",
                "--payload",
                r#"{"appointment_id": "scan-1", "at": "2027-12-14T11:00:00+01:00", "place": "Hvidovre Hospital"}"#,
                "--db",
                db_arg,
                "--clock",
                &at_end,
                "--key",
                &format!("{reference}-booked"),
            ]),
            "appointment",
        );
    }
    succeeded(
        &run(&[
            "event",
            "FAM-9001",
            "first_exam_done",
            "--payload",
            r#"{"care_level": 2}"#,
            "--db",
            db_arg,
            "--clock",
            &at_end,
        ]),
        "first exam",
    );

    // A birth notice for a family still waiting for its first exam does not fit: refused, and
    // kept for the family's page.
    let refused = run(&[
        "event",
        "FAM-9002",
        "birth_notice_received",
        "--db",
        db_arg,
        "--clock",
        &at_end,
    ]);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "the misfit event is refused"
    );

    let port = free_port();
    let gateway_port = free_port();
    let config = dir.path().join("carepath.toml");
    std::fs::write(
        &config,
        format!(
            "[sms]\ngateway = \"webhook\"\nurl = \"http://127.0.0.1:{gateway_port}/sms\"\nsender = \"Kommunen\"\n\n\
             [delivery]\nmax_attempts = 3\nbackoff_secs = 30\nbackoff_max_secs = 60\n"
        ),
    )
    .expect("config");
    let admin = token(&config, "koordinator", &["admin"], None);
    // The Red Cross's coordinator signs in with a password, limited to God start, reading only.
    let password = "sommerfugl-i-rødovre";
    let user = run_with_input(
        &[
            "user",
            "new",
            "--name",
            "lina.rk",
            "--scope",
            "read",
            "--pathway",
            "red-cross-good-start",
            "--config",
            config.to_str().expect("utf-8"),
        ],
        &format!("{password}\n"),
    );
    succeeded(&user, "user new");
    let saved = std::fs::read_to_string(&config).expect("config");
    assert!(
        saved.contains("[[api.users]]")
            && saved.contains("$argon2id$")
            && !saved.contains(password),
        "only the password's Argon2id hash is kept:\n{saved}"
    );

    let shots = screenshots();
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let binary = carepath().get_program().to_os_string();
    let output = Command::new("python3")
        .arg(root().join("tests/browser/web_view.py"))
        .current_dir(root())
        .env("CAREPATH", &binary)
        .env("CAREPATH_DB", &db)
        .env("CAREPATH_CONFIG_FILE", &config)
        .env("CAREPATH_CLOCK_AT", OPENED)
        .env("PORT", port.to_string())
        .env("GATEWAY_PORT", gateway_port.to_string())
        .env("ADMIN_TOKEN", &admin)
        .env("GOOD_START_USER", "lina.rk")
        .env("GOOD_START_PASSWORD", password)
        .env("SINK", dir.path().join("sink.jsonl"))
        .env("SERVER_LOG", dir.path().join("carepath.log"))
        .env("SHOTS", &shots)
        .env("AXE", &axe)
        .env("CHROMIUM", chromium)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(dir.path().join("carepath.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the browser test failed:\n{text}\n--- carepath run's log:\n{log}"
    );
    for page in [
        "login", "overview", "family", "outbox", "families", "pathways", "pathway", "capacity",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{} is no screenshot",
            png.display()
        );
    }
    assert!(text.contains("all checks passed"), "{text}");
}
