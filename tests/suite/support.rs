//! Shared helpers: paths, the binary, golden files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use carepath_engine::{PathwaySource, SourceFile};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Whether golden files are to be rewritten instead of compared.
pub fn update() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some()
}

/// Compares `actual` with the golden file at `path`, or rewrites it under `UPDATE_EXPECT=1`.
pub fn golden(path: &Path, actual: &str) {
    if update() {
        std::fs::write(path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_EXPECT=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} is not current (rerun with UPDATE_EXPECT=1 and review the diff):\n{}",
        path.display(),
        similar::TextDiff::from_lines(&expected, actual).unified_diff()
    );
}

/// Reads one pathway folder, naming files relative to it, so goldens do not depend on where
/// the checkout is.
pub fn read_folder(dir: &Path) -> PathwaySource {
    let text = std::fs::read_to_string(dir.join("pathway.json")).expect("pathway.json");
    let mut templates = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("templates")) {
        let mut paths: Vec<_> = entries.map(|e| e.expect("entry").path()).collect();
        paths.sort();
        for p in paths {
            templates.push(SourceFile {
                path: format!(
                    "templates/{}",
                    p.file_name().expect("name").to_string_lossy()
                ),
                text: std::fs::read_to_string(&p).expect("template"),
            });
        }
    }
    PathwaySource {
        pathway: SourceFile {
            path: "pathway.json".into(),
            text,
        },
        templates,
    }
}

/// The `carepath` binary beside this test binary (`target/debug/deps/tests-…` →
/// `target/debug/carepath`), wherever `CARGO_TARGET_DIR` puts them; built if `cargo test`
/// did not build it already.
pub fn carepath() -> Command {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|t| Some(t.parent()?.parent()?.join("carepath")))
        .expect("the test binary lives in a target directory");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "carepath-worker", "--bin", "carepath"])
            .current_dir(root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building carepath failed");
    });
    assert!(
        exe.is_file(),
        "no carepath binary at {} after building it",
        exe.display()
    );
    let mut cmd = Command::new(exe);
    // The machine's own database settings are not the test's.
    cmd.current_dir(root())
        .env_remove("CAREPATH_DB")
        .env_remove("DATABASE_URL");
    cmd
}

/// Runs `carepath` with `args` from the workspace root.
pub fn run(args: &[&str]) -> Output {
    carepath().args(args).output().expect("run carepath")
}

/// Runs `carepath` with `args` from the workspace root, `input` on its standard input.
pub fn run_with_input(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = carepath()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run carepath");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to carepath's stdin");
    child.wait_with_output().expect("carepath ends")
}

/// Asserts that `carepath` exited 0, showing what it printed otherwise; `what` names the step.
pub fn succeeded(o: &Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: {}{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether the end-to-end tests run on PostgreSQL: `CAREPATH_TEST_BACKEND=postgres`, with the
/// server at `CAREPATH_TEST_POSTGRES` (`.ci/test` starts a throwaway one and runs the runtime,
/// delivery and API tests a second time so). SQLite otherwise.
pub fn on_postgres() -> bool {
    std::env::var("CAREPATH_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// The database of the test in `dir`, as `--db` takes it: the SQLite file `carepath.db` in
/// `dir`, or on PostgreSQL the test server's database named for `dir`.
pub fn db_arg(dir: &Path) -> String {
    if !on_postgres() {
        return dir.join("carepath.db").to_string_lossy().into_owned();
    }
    let server = std::env::var("CAREPATH_TEST_POSTGRES")
        .expect("CAREPATH_TEST_BACKEND=postgres needs the server's URL in CAREPATH_TEST_POSTGRES");
    let (authority, _) = server.rsplit_once('/').expect("a URL with a database name");
    format!("{authority}/{}", pg_name(dir))
}

/// A database name for `dir`: the same each time for the same folder.
fn pg_name(dir: &Path) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("carepath_e2e_{hex}")
}

/// The store of the test in `dir` (see [`db_arg`]), its schema in place: made empty the first
/// time this process asks for it, the same database after.
pub async fn fresh_store(dir: &Path) -> carepath_worker::store::Backend {
    static MADE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    if on_postgres() {
        let first = {
            let mut made = MADE.lock().expect("lock");
            let first = !made.iter().any(|d| d == dir);
            if first {
                made.push(dir.to_path_buf());
            }
            first
        };
        if first {
            let server = std::env::var("CAREPATH_TEST_POSTGRES").expect("server");
            carepath_worker::store::postgres::create_database(&server, &pg_name(dir))
                .await
                .expect("create a test database");
        }
    }
    carepath_worker::store::Backend::open(Path::new(&db_arg(dir)))
        .await
        .expect("open the test database")
}

/// The PostgreSQL server of the tests (`CAREPATH_TEST_POSTGRES`), or none: then the tests that
/// need one are not run here, unless `CAREPATH_REQUIRE_POSTGRES` is set (as `.ci/test` sets it),
/// when they fail.
pub fn postgres_server() -> Option<String> {
    match std::env::var("CAREPATH_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CAREPATH_REQUIRE_POSTGRES").is_none(),
                "CAREPATH_REQUIRE_POSTGRES is set but CAREPATH_TEST_POSTGRES is not"
            );
            eprintln!("CAREPATH_TEST_POSTGRES is not set: this PostgreSQL test is not run here");
            None
        }
    }
}
