//! The `carepath` binary as a user runs it from the README.

use super::support::{root, run, run_with_input, stdout, succeeded};

#[test]
fn validate_accepts_the_real_pathways() {
    let o = run(&["validate", "pathways/"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout(&o).contains(": 0 errors, 0 warnings"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_reports_every_problem_with_a_caret_and_exits_1() {
    let o = run(&["validate", "tests/fixtures/invalid/zero-time-cycle/bad"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("error[zero-time-cycle]: timers can loop through \"again\", \"waiting\" without time passing"), "{out}");
    assert!(
        out.contains("--> tests/fixtures/invalid/zero-time-cycle/bad/pathway.json:"),
        "{out}"
    );
    assert!(
        out.contains("error[horizon-exceeded]"),
        "all problems at once: {out}"
    );
    assert!(out.contains('^'), "{out}");
    assert!(
        out.ends_with("checked 1 pathway: 2 errors, 0 warnings\n"),
        "{out}"
    );
}

#[test]
fn validate_json_has_the_documented_shape() {
    let o = run(&[
        "validate",
        "--format",
        "json",
        "tests/fixtures/invalid/unknown-state/bad",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["code"], "unknown-state");
    assert_eq!(
        d["file"],
        "tests/fixtures/invalid/unknown-state/bad/pathway.json"
    );
    assert_eq!(d["pointer"], "/states/waiting/on/0/to");
    assert!(d["line"].as_u64().is_some_and(|l| l > 1));
    assert!(d["column"].as_u64().is_some_and(|c| c > 1));
    assert_eq!(d["hint"], "did you mean \"done\"?");
    let keys: Vec<&str> = d
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "severity", "code", "message", "file", "line", "column", "pointer", "hint"
        ]
    );
}

#[test]
fn warnings_alone_exit_0() {
    let o = run(&[
        "validate",
        "tests/fixtures/invalid/wait-without-timeout/bad",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("warning[wait-without-timeout]"));
}

#[test]
fn unreadable_paths_and_usage_errors_exit_2() {
    let o = run(&["validate", "no/such/folder"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot read no/such/folder"), "{err}");
    let o = run(&["validate", "docs"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no pathway.json in docs"));
    let o = run(&["validate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["validate", "--format", "yaml", "pathways"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn several_paths_are_checked_together() {
    let o = run(&[
        "validate",
        "tests/fixtures/invalid/unknown-key/bad",
        "tests/fixtures/invalid/unknown-role/bad",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("error[unknown-key]") && out.contains("error[unknown-role]"),
        "{out}"
    );
    // Both fixtures declare the pathway "fixture" version 1.
    assert!(
        out.contains("error[duplicate-name]: pathway \"fixture\" version 1 is also declared"),
        "{out}"
    );
}

#[test]
fn graph_of_a_broken_file_shows_why() {
    let o = run(&["graph", "tests/fixtures/invalid/parse-error/bad"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error[parse-error]"));
}

#[test]
fn schema_prints_the_committed_schema() {
    let o = run(&["schema"]);
    assert_eq!(o.status.code(), Some(0));
    let committed =
        std::fs::read_to_string(root().join("docs/pathway.schema.json")).expect("schema");
    assert_eq!(stdout(&o), committed);
    let v: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(v["title"], "carepath pathway");
    assert!(v["properties"]["states"].is_object());
}

#[test]
fn validate_reports_sms_segments_and_warns_over_the_limit() {
    let o = run(&["validate", "pathways"]);
    let out = stdout(&o);
    // Arabic forces UCS-2 (70 units a message), so the reminder needs two segments; Danish
    // fits one in GSM-7 even with the longest date of the year.
    assert!(
        out.contains("standard-track appointment_reminder.ar: 2 segments,")
            && out.contains("UCS-2 units"),
        "{out}"
    );
    assert!(
        out.contains("standard-track appointment_reminder.da: 1 segment,"),
        "{out}"
    );

    let o = run(&[
        "validate",
        "--max-segments",
        "1",
        "--format",
        "json",
        "pathways",
    ]);
    assert_eq!(o.status.code(), Some(0), "a warning does not refuse");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let warnings: Vec<&serde_json::Value> = v["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .filter(|d| {
            d["code"] == "sms-segments"
                && d["file"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("pathways/standard-track/"))
        })
        .map(|d| &d["file"])
        .collect();
    assert_eq!(
        warnings,
        [
            "pathways/standard-track/templates/appointment_reminder.ar.sms.hbs",
            "pathways/standard-track/templates/home_visit_call.ar.sms.hbs"
        ],
        "{v:#}"
    );
    let ar = v["sms"]
        .as_array()
        .expect("sms")
        .iter()
        .find(|e| e["language"] == "ar" && e["template"] == "appointment_reminder")
        .expect("the Arabic reminder");
    assert_eq!(
        (ar["encoding"].as_str(), ar["segments"].as_u64()),
        (Some("UCS-2"), Some(2))
    );
}

#[test]
fn validate_takes_the_segment_limit_from_the_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("carepath.toml");
    std::fs::write(
        &config,
        "[sms]\ngateway = \"gatewayapi\"\nurl = \"http://127.0.0.1:9/rest/mtsms\"\ntoken_env = \"NONE\"\nsender = \"carepath\"\nmax_segments = 1\n",
    )
    .expect("write");
    let config = config.to_string_lossy().into_owned();
    let o = run(&["validate", "--config", &config, "pathways"]);
    assert_eq!(o.status.code(), Some(0), "a warning does not refuse");
    assert!(
        stdout(&o).contains("warning[sms-segments]") && !stdout(&o).contains(" 0 warnings"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_checks_one_pathway_with_those_beside_it_and_reports_on_that_one() {
    // The standard track refers into the programmes beside it: named alone, it is checked
    // with them as context, and only its own findings and SMS sizes are reported.
    let o = run(&["validate", "--format", "json", "pathways/standard-track"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["diagnostics"].as_array().map(Vec::len), Some(0), "{v:#}");
    let pathways: std::collections::BTreeSet<&str> = v["sms"]
        .as_array()
        .expect("sms")
        .iter()
        .filter_map(|e| e["pathway"].as_str())
        .collect();
    assert_eq!(pathways.into_iter().collect::<Vec<_>>(), ["standard-track"]);

    // Copied away from them, the same file refers into pathways nobody knows.
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = dir.path().join("standard-track");
    std::fs::create_dir_all(alone.join("templates")).expect("mkdir");
    let src = root().join("pathways/standard-track");
    std::fs::copy(src.join("pathway.json"), alone.join("pathway.json")).expect("copy");
    for e in std::fs::read_dir(src.join("templates")).expect("templates") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), alone.join("templates").join(e.file_name())).expect("copy");
    }
    let o = run(&["validate", &alone.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("error[unknown-pathway]")
            && stdout(&o).contains("red-cross-good-start"),
        "{}",
        stdout(&o)
    );
}

/// Commands that only use a database never create or migrate one, and say what is wrong.
#[test]
fn read_only_commands_leave_a_wrong_file_as_it_was() {
    let dir = tempfile::tempdir().expect("tmp");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").expect("empty file");
    let db = empty.to_string_lossy().to_string();
    for args in [
        vec!["status", "FAM-0001", "--db", &db],
        vec!["outbox", "--db", &db],
        vec!["outbox", "show", "1", "--db", &db],
        vec!["optout", "+4512345678", "--db", &db],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(
                "is not a carepath database ready for this command: it holds no carepath tables"
            ),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::metadata(&empty).expect("still there").len(),
            0,
            "{args:?} wrote into the file"
        );
    }
    let missing = dir.path().join("missing.db");
    let o = run(&["outbox", "--db", &missing.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!missing.exists(), "outbox created a database");
}

/// Options may come after a subcommand's own subcommand, an empty list says so, and a
/// reader that goes away is no error.
#[test]
fn outbox_takes_its_options_anywhere_and_says_when_there_is_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("carepath.db");
    let db = db.to_string_lossy().to_string();
    // `enroll` makes the database, with the family's first notices queued.
    let o = run(&[
        "enroll",
        "examples/families/standard-track.json",
        "--db",
        &db,
        "--clock",
        "fixed:2027-01-11T08:00:00Z",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let none = run(&["outbox", "--db", &db]);
    assert_eq!(stdout(&none), "no notices\n");
    // The first exam hands the family to the midwife: one notice.
    let o = run(&[
        "event",
        "FAM-0001",
        "first_exam_done",
        "--payload",
        r#"{"care_level": 1}"#,
        "--db",
        &db,
        "--clock",
        "fixed:2027-01-12T08:00:00Z",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let listed = run(&["outbox", "--db", &db]);
    let first = stdout(&listed);
    let id = first
        .split_whitespace()
        .next()
        .and_then(|w| w.strip_prefix('#'))
        .expect("a notice id");
    let shown = run(&["outbox", "show", id, "--db", &db, "--format", "json"]);
    assert_eq!(
        shown.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(v["notice"]["id"].to_string(), id);
    let none = run(&["outbox", "--status", "dead", "--db", &db]);
    assert_eq!(stdout(&none), "no dead notices\n");

    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} schema | head -c 10 >/dev/null",
            super::support::carepath().get_program().to_string_lossy()
        ))
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr),
        "",
        "no broken pipe shown"
    );
}

/// A path that cannot be looked at says so, instead of "no pathway.json".
#[test]
fn a_symbolic_link_loop_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let folder = dir.path().join("looping");
    std::fs::create_dir(&folder).expect("mkdir");
    #[cfg(unix)]
    std::os::unix::fs::symlink("pathway.json", folder.join("pathway.json")).expect("link");
    let o = run(&["validate", &dir.path().to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read")
            && err.contains("looping/pathway.json")
            && err.contains("symbolic links"),
        "{err}"
    );
}

/// Files carepath creates hold families' data or secrets' hashes: only their owner reads them.
#[cfg(unix)]
#[test]
fn files_carepath_creates_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("carepath.db");
    let sink = dir.path().join("notices.jsonl");
    let config = dir.path().join("carepath.toml");
    let clock = "fixed:2027-01-11T08:00:00Z";
    let db_s = db.to_string_lossy().to_string();
    let ok = |o: std::process::Output| {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(run(&[
        "enroll",
        "examples/families/standard-track.json",
        "--db",
        &db_s,
        "--clock",
        clock,
    ]));
    ok(run(&[
        "event",
        "FAM-0001",
        "first_exam_done",
        "--payload",
        r#"{"care_level": 1}"#,
        "--db",
        &db_s,
        "--clock",
        clock,
    ]));
    ok(run(&[
        "run",
        "--db",
        &db_s,
        "--sink",
        &sink.to_string_lossy(),
        "--until-idle",
        "--clock",
        clock,
    ]));
    ok(run(&[
        "token",
        "new",
        "--name",
        "epj",
        "--scope",
        "read",
        "--config",
        &config.to_string_lossy(),
    ]));
    for file in [&db, &sink, &config] {
        let mode = std::fs::metadata(file)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    // SQLite's side files follow the database's permissions while they exist.
    for side in ["carepath.db-wal", "carepath.db-shm"] {
        if let Ok(meta) = std::fs::metadata(dir.path().join(side)) {
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{side}");
        }
    }
}

/// The directory is loaded from a file, all or nothing, and listed with addresses masked; a
/// person is assigned to a family's role, and a role the family does not have is refused.
#[test]
fn the_directory_loads_whole_or_not_at_all_and_a_role_is_assigned() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("carepath.db");
    let db = db.to_string_lossy().to_string();
    succeeded(
        &run(&[
            "enroll",
            "examples/families/standard-track.json",
            "--db",
            &db,
            "--clock",
            "fixed:2027-01-11T08:00:00Z",
        ]),
        "enroll",
    );

    let loaded = run(&["directory", "load", "examples/directory.toml", "--db", &db]);
    assert_eq!(
        (loaded.status.code(), stdout(&loaded)),
        (
            Some(0),
            "directory loaded: 7 roles from examples/directory.toml\n".to_string()
        ),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let listed = stdout(&run(&["directory", "list", "--db", &db]));
    assert_eq!(listed.lines().count(), 7, "{listed}");
    // The example directory covers every role a referral of the real pathways first tells;
    // one without the Red Cross coordinators is warned about, by code and place.
    let clean = run(&[
        "validate",
        "pathways/",
        "--directory",
        "examples/directory.toml",
    ]);
    assert!(
        stdout(&clean).ends_with("checked 5 pathways: 0 errors, 0 warnings\n"),
        "{}",
        stdout(&clean)
    );
    let thin = dir.path().join("thin.toml");
    std::fs::write(&thin, "").expect("write");
    let warned = run(&[
        "validate",
        "pathways/",
        "--directory",
        &thin.to_string_lossy(),
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&warned.stdout).expect("json");
    let coordinator = report["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .find(|d| {
            d["code"] == "role-not-in-directory"
                && d["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("standard-track/pathway.json"))
                && d["message"].as_str().is_some_and(|m| {
                    m.contains("\"red-cross-good-start\" gives role \"coordinator\"")
                })
        })
        .expect("the standard track's referral to God start is warned about");
    assert!(coordinator["line"].as_u64() > Some(0), "{coordinator}");
    assert!(
        listed.contains("coordinator      red-cross-good-start         Røde Kors Rødovre"),
        "{listed}"
    );
    assert!(
        !listed.contains("godstart.rodovre@example.dk"),
        "masked: {listed}"
    );

    // One bad entry refuses the file: the earlier directory stays.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[role]]\norganisation = \"X\"\nrole = \"coordinator\"\npathway = \"no-such-pathway\"\ncontact = { name = \"X\", email = \"x@example.dk\" }\n",
    )
    .expect("write");
    let refused = run(&["directory", "load", &bad.to_string_lossy(), "--db", &db]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(
            "role 1 (X, coordinator on no-such-pathway): no pathway \"no-such-pathway\" is loaded"
        ),
        "{err}"
    );
    assert_eq!(stdout(&run(&["directory", "list", "--db", &db])), listed);

    let assigned = run(&[
        "assign",
        "FAM-0001",
        "health_visitor",
        "--name",
        "Hanne",
        "--email",
        "hanne@example.dk",
        "--db",
        &db,
    ]);
    assert_eq!(
        assigned.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&assigned.stderr)
    );
    assert!(
        stdout(&assigned).starts_with("health_visitor assigned for FAM-0001 on standard-track"),
        "{}",
        stdout(&assigned)
    );
    let unknown = run(&[
        "assign",
        "FAM-0001",
        "pilot",
        "--name",
        "X",
        "--email",
        "x@example.dk",
        "--db",
        &db,
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("family FAM-0001 has no active pathway with the role \"pilot\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

/// `carepath user new` keeps a password's Argon2id hash, never the password, and refuses a
/// short one without touching the configuration.
#[test]
fn user_new_keeps_only_an_argon2id_hash_and_refuses_a_short_password() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("carepath.toml");
    let new_user = |name: &str, password: &str| {
        let config = config.to_str().expect("utf-8");
        let args = [
            "user", "new", "--name", name, "--scope", "read", "--config", config,
        ];
        run_with_input(&args, &format!("{password}\n"))
    };
    let short = new_user("hanne", "kort");
    assert_ne!(short.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    assert!(!config.exists(), "a refused user writes nothing");

    let made = new_user("hanne", "en lang nok adgangskode");
    assert_eq!(
        made.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let saved = std::fs::read_to_string(&config).expect("config");
    assert!(
        saved.contains("[[api.users]]") && saved.contains("name = \"hanne\""),
        "{saved}"
    );
    assert!(saved.contains("argon2 = \"$argon2id$v=19$"), "{saved}");
    assert!(!saved.contains("en lang nok adgangskode"), "{saved}");
    assert!(!saved.contains("tokens"), "no empty token list: {saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the configuration is its owner's only");
    }
}
