//! Runtime benchmarks on a real SQLite file (WAL), reported in docs/benchmarks.md.
//!
//! ```text
//! cargo bench -p carepath-worker --bench runtime -- burst      # 100,000 timers due at once
//! cargo bench -p carepath-worker --bench runtime -- lateness   # 1,000,000 pending, 30 due/s
//! cargo bench -p carepath-worker --bench runtime -- cohort     # 60,000 families, 27 months
//! ```
//!
//! `--n N` scales the burst, the pending timers or the cohort down for a quick look. Each run
//! works in a fresh temporary folder and prints a Markdown table row.

/// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jiff::{Timestamp, ToSpan, ZonedDateTime};
use serde_json::{Map, Value};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, SystemClock, VirtualClock};
use carepath_worker::lateness::Lateness;
use carepath_worker::runtime::Runtime;
use carepath_worker::store::{Outcome, SqliteStore};
use carepath_worker::worker::{self, Options, Wake};

#[path = "shared/cohort.rs"]
mod cohort;
use cohort::{cohort_events, cohort_family};
#[path = "shared/tick.rs"]
mod tick;
use tick::{tick_family, write_tick};

/// Timers claimed per transaction: the worker's default, used by carepath and the baseline.
const BATCH: u32 = 1000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut what = Vec::new();
    let mut n = None;
    while let Some(a) = args.next() {
        if a == "--n" {
            n = Some(args.next().context("--n needs a number")?.parse()?);
        } else {
            what.push(a);
        }
    }
    if what.is_empty() {
        what = vec!["burst".into(), "lateness".into(), "cohort".into()];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for w in what {
        match w.as_str() {
            "burst" => rt.block_on(burst(n.unwrap_or(100_000)))?,
            "lateness" => rt.block_on(lateness(n.unwrap_or(1_000_000)))?,
            "cohort" => rt.block_on(cohort(n.unwrap_or(60_000)))?,
            other => bail!("unknown benchmark {other:?}: burst, lateness or cohort"),
        }
    }
    Ok(())
}

async fn open(db: &Path, pathways: &Path, clock: Arc<dyn Clock>) -> Result<Runtime<SqliteStore>> {
    let store = SqliteStore::open(db).await?;
    let (catalog, _) = Catalog::sync(&store, &[pathways.to_path_buf()], clock.now()).await?;
    Ok(Runtime::new(store, catalog, clock))
}

/// Memory of this process, from /proc: (current, peak) resident set in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn count(pool: &SqlitePool, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Burst

async fn burst(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = write_tick(&dir.path().join("pathways"))?;
    let db = dir.path().join("carepath.db");
    let t0: Timestamp = "2027-01-04T07:00:00Z".parse()?;
    let clock = Arc::new(VirtualClock::new(t0));
    let rt = open(&db, &pathways, clock.clone()).await?;

    let started = Instant::now();
    for i in 0..n {
        rt.enrol(&tick_family(format!("B-{i:06}"))).await?;
    }
    let enrol = started.elapsed();
    rt.store().close().await;

    // The baseline starts from a copy of the same database.
    let base = dir.path().join("baseline.db");
    std::fs::copy(&db, &base)?;

    let rt = open(&db, &pathways, clock.clone()).await?;
    let now = t0.checked_add(2.hours())?;
    clock.advance_to(now);
    // For a profiler: attach when this is printed, detach at "fired".
    eprintln!(
        "burst: {n} families enrolled, firing (pid {})",
        std::process::id()
    );
    let started = Instant::now();
    let steps = rt.fire_due(now, BATCH).await?;
    let carepath = started.elapsed();
    eprintln!("burst: fired");
    let pool = rt.store().pool();
    let moved = count(
        pool,
        "SELECT count(*) FROM history WHERE to_state = 'reminded'",
    )
    .await?;
    let notices = count(pool, "SELECT count(*) FROM outbox WHERE status = 'queued'").await?;
    ensure!(
        steps == n && moved == n as i64 && notices == n as i64,
        "burst: {steps} steps, {moved} transitions, {notices} notices for {n} timers"
    );
    rt.store().close().await;

    let raw_store = SqliteStore::open(&base).await?;
    let started = Instant::now();
    let raw_steps = raw_burst(raw_store.pool(), now).await?;
    let raw = started.elapsed();
    ensure!(raw_steps == n, "baseline: {raw_steps} steps for {n} timers");
    raw_store.close().await;

    let rate = |steps: usize, d: Duration| steps as f64 / d.as_secs_f64();
    println!("| timers | enrolment | carepath | raw SQLite | carepath / raw |");
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.0} families/s | {:.0} transitions/s ({:.2} s) | {:.0} transitions/s ({:.2} s) | {:.2} |",
        rate(n, enrol),
        rate(steps, carepath),
        carepath.as_secs_f64(),
        rate(raw_steps, raw),
        raw.as_secs_f64(),
        rate(steps, carepath) / rate(raw_steps, raw),
    );
    Ok(())
}

/// The same reads and writes as carepath's timer batch, in the same batch size and the same
/// set-based statements, without the engine: no JSON decoding, no step, no rendering. The
/// instance body is written back as read; the notice text is a fixed string.
async fn raw_burst(pool: &SqlitePool, now: Timestamp) -> Result<usize> {
    let now_ms = now.as_millisecond();
    let mut total = 0;
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let due = sqlx::query(
            "SELECT instance_id, key, due FROM timers t WHERE due <= ? \
             AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id) \
             ORDER BY due, instance_id, key LIMIT ?",
        )
        .bind(now_ms)
        .bind(i64::from(BATCH))
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            return Ok(total);
        }
        let timers: Vec<(i64, String, i64)> = due
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, ref, pathway, pathway_version_id, body, roles, parent_id, created_at, updated_at FROM instances WHERE id IN (",
        );
        let mut ids = q.separated(", ");
        for (id, _, _) in &timers {
            ids.push_bind(id);
        }
        q.push(")");
        let rows = q.build().fetch_all(&mut *tx).await?;
        let instances: Vec<(i64, String, i64, String)> = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("ref")?,
                    r.try_get("pathway_version_id")?,
                    r.try_get("body")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, name, email, phone, language, channel FROM contacts WHERE id IN (",
        );
        let mut ids = q.separated(", ");
        for r in &rows {
            let roles: String = r.try_get("roles")?;
            let roles: Map<String, Value> = serde_json::from_str(&roles)?;
            for id in roles.values().filter_map(Value::as_i64) {
                ids.push_bind(id);
            }
        }
        q.push(")");
        q.build().fetch_all(&mut *tx).await?;

        let mut q = QueryBuilder::<Sqlite>::new(
            "WITH v(id, expected, state, owner, status, seq, body, updated_at) AS (",
        );
        q.push_values(&instances, |mut b, (id, _, _, body)| {
            b.push_bind(id)
                .push_bind(0i64)
                .push_bind("reminded")
                .push_bind("coordinator")
                .push_bind("active")
                .push_bind(1i64)
                .push_bind(body)
                .push_bind(now_ms);
        });
        q.push(
            ") UPDATE instances SET state = v.state, owner = v.owner, status = v.status, seq = v.seq, \
             body = v.body, updated_at = v.updated_at FROM v WHERE instances.id = v.id AND instances.seq = v.expected",
        );
        let updated = q.build().execute(&mut *tx).await?.rows_affected();
        ensure!(updated == instances.len() as u64, "baseline lost a row");

        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM timers WHERE (instance_id, key) IN (");
        q.push_values(&timers, |mut b, (id, key, _)| {
            b.push_bind(id).push_bind(key);
        });
        q.push(")");
        q.build().execute(&mut *tx).await?;

        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO timers (instance_id, key, due, purpose) ");
        q.push_values(&timers, |mut b, (id, _, due)| {
            b.push_bind(id)
                .push_bind("reminded/1/0")
                .push_bind(due + 86_400_000)
                .push_bind(r#"{"kind":"state","index":0}"#);
        });
        q.build().execute(&mut *tx).await?;

        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO history (instance_id, seq, at, from_state, to_state, cause, notes) ",
        );
        q.push_values(&timers, |mut b, (id, key, due)| {
            b.push_bind(id)
                .push_bind(1i64)
                .push_bind(due)
                .push_bind("waiting")
                .push_bind("reminded")
                .push_bind(format!(r#"{{"kind":"timer","key":"{key}"}}"#))
                .push_bind("[]");
        });
        q.build().execute(&mut *tx).await?;

        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO outbox (key, instance_id, pathway_version_id, template, role, family, contact_id, \
             channel, address, language, subject, body, status, not_before, attempts, last_error, created_at, updated_at) ",
        );
        q.push_values(&instances, |mut b, (id, reference, version, _)| {
            b.push_bind(format!("{id}:1:reminded:coordinator"))
                .push_bind(id)
                .push_bind(version)
                .push_bind("reminded")
                .push_bind("coordinator")
                .push_bind(0i64)
                .push_bind(Option::<i64>::None)
                .push_bind("email")
                .push_bind("koordinator@example.dk")
                .push_bind("da")
                .push_bind(format!("Familie {reference}"))
                .push_bind(format!(
                    "Kære Koordinator\n\nFamilien {reference} venter på jer.\n"
                ))
                .push_bind("queued")
                .push_bind(now_ms)
                .push_bind(0i64)
                .push_bind(Option::<String>::None)
                .push_bind(now_ms)
                .push_bind(now_ms);
        });
        // The outbox's log line is written by carepath's trigger, as for carepath.
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        total += timers.len();
    }
}

// ---------------------------------------------------------------------------------------------
// Lateness

/// How many seconds of firings to measure.
const WINDOW_SECS: i64 = 30;
/// Firings per second.
const RATE: i64 = 30;

async fn lateness(pending: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = write_tick(&dir.path().join("pathways"))?;
    let db = dir.path().join("carepath.db");
    let rt = open(&db, &pathways, Arc::new(SystemClock)).await?;
    let template = rt.enrol(&tick_family("L-0".into())).await?.instance_id;

    // Clone the enrolled family into `pending` families in SQL (enrolling a million through
    // the runtime would take minutes and measure nothing of interest here). The first
    // RATE × WINDOW_SECS come due RATE a second, starting a few seconds from now; the rest wait
    // a month.
    let started = Instant::now();
    let first = Timestamp::now().as_millisecond() + 5_000 + (pending as i64 / 50_000) * 1_000;
    let soon = RATE * WINDOW_SECS;
    let later = first + 30 * 86_400_000;
    let due_of = "CASE WHEN i <= ?2 THEN ?3 + ((i - 1) * 1000) / ?6 ELSE ?4 + i END";
    let clone = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1), \
         d(i, due) AS (SELECT i, {due_of} FROM n) \
         INSERT INTO instances (ref, pathway, pathway_version_id, state, owner, status, seq, body, roles, parent_id, created_at, updated_at) \
         SELECT 'L-' || d.i, pathway, pathway_version_id, state, owner, status, seq, \
                json_set(body, '$.timers[0].due', strftime('%Y-%m-%dT%H:%M:%S', d.due / 1000, 'unixepoch') || printf('.%03dZ', d.due % 1000)), \
                roles, NULL, created_at, updated_at \
         FROM d, instances WHERE instances.id = ?5"
    );
    let pool = rt.store().pool();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let clones = pending as i64 - 1;
    for sql in [
        clone,
        format!(
            "WITH d(id, i) AS (SELECT id, id - ?5 FROM instances WHERE id > ?5 AND id <= ?5 + ?1) \
             INSERT INTO timers (instance_id, key, due, purpose) \
             SELECT d.id, t.key, CASE WHEN t.key = 'horizon' THEN t.due ELSE {due_of} END, t.purpose \
             FROM d, timers t WHERE t.instance_id = ?5"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(clones)
            .bind(soon)
            .bind(first)
            .bind(later)
            .bind(template)
            .bind(RATE)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // Each family also keeps the template's horizon timer, two months away.
    let total = count(pool, "SELECT count(*) FROM timers WHERE key <> 'horizon'").await?;
    ensure!(
        total == pending as i64,
        "{total} timers pending, wanted {pending}"
    );
    let setup = started.elapsed();
    ensure!(
        Timestamp::now().as_millisecond() < first,
        "setup took {setup:?}: past the first due time"
    );

    let until = Timestamp::from_millisecond(first + WINDOW_SECS * 1000 + 500)?;
    let summary = worker::run(
        &rt,
        &Wake::new(),
        None,
        &Options {
            batch: BATCH,
            until_idle: false,
            until: Some(until),
            timers: true,
        },
    )
    .await?;
    let fired = count(
        pool,
        "SELECT count(*) FROM history WHERE to_state = 'reminded'",
    )
    .await?;
    ensure!(
        fired == soon.min(clones) && summary.lateness.count() == fired as u64,
        "{fired} fired, {} measured, wanted {soon}",
        summary.lateness.count()
    );
    let q = |q| {
        summary
            .lateness
            .quantile(q)
            .map_or("-".into(), Lateness::show)
    };
    println!("| pending timers | firings | p50 | p99 | max | setup |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {pending} | {fired} at {RATE}/s | {} | {} | {} | {:.1} s |",
        q(0.5),
        q(0.99),
        Lateness::show(summary.lateness.max()),
        setup.as_secs_f64()
    );
    rt.store().close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cohort

async fn cohort(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pathways");
    let db = dir.path().join("carepath.db");
    let start: ZonedDateTime = "2027-01-04T08:00[Europe/Copenhagen]".parse()?;
    let clock = Arc::new(VirtualClock::new(start.timestamp()));
    let rt = open(&db, &pathways, clock.clone()).await?;
    let began = Instant::now();
    let (rss_start, _) = memory();

    for i in 0..n {
        rt.enrol(&cohort_family(i, start.date())?).await?;
    }
    let enrolled = began.elapsed();
    println!("| day | active | finished | transitions | notices | RSS (MiB) |");
    println!("|---|---|---|---|---|---|");
    let end = start.checked_add(27.months())?;
    let mut day = 0i64;
    let mut rejected = 0;
    loop {
        let today = start.checked_add(day.days())?;
        if today > end {
            break;
        }
        clock.advance_to(today.timestamp());
        rt.fire_due(today.timestamp(), BATCH).await?;
        let mut events = Vec::new();
        for i in 0..n {
            events.extend(cohort_events(i, day, start.date())?);
        }
        for chunk in events.chunks(BATCH as usize) {
            for r in rt.apply_events(chunk).await? {
                if r.record.outcome == Outcome::Rejected {
                    rejected += 1;
                }
            }
        }
        if day % 91 == 0 {
            report(rt.store().pool(), day).await?;
        }
        day += 1;
    }
    clock.advance_to(end.timestamp());
    rt.fire_due(end.timestamp(), BATCH).await?;
    report(rt.store().pool(), day).await?;
    let wall = began.elapsed();
    let (_, peak) = memory();
    let active = count(
        rt.store().pool(),
        "SELECT count(*) FROM instances WHERE status = 'active'",
    )
    .await?;
    let size = std::fs::metadata(&db)?.len() as f64 / (1024.0 * 1024.0);
    println!();
    println!(
        "{n} families: enrolment {:.1} s, whole run {:.1} s of wall time for 27 months; \
         peak RSS {peak:.0} MiB (at start {rss_start:.0} MiB); {active} still active; \
         {rejected} events rejected; database {size:.0} MiB",
        enrolled.as_secs_f64(),
        wall.as_secs_f64(),
    );
    rt.store().close().await;
    Ok(())
}

async fn report(pool: &SqlitePool, day: i64) -> Result<()> {
    let active = count(
        pool,
        "SELECT count(*) FROM instances WHERE status = 'active'",
    )
    .await?;
    let finished = count(
        pool,
        "SELECT count(*) FROM instances WHERE status = 'finished'",
    )
    .await?;
    let transitions = count(pool, "SELECT count(*) FROM history").await?;
    let notices = count(pool, "SELECT count(*) FROM outbox").await?;
    let (rss, _) = memory();
    println!("| {day} | {active} | {finished} | {transitions} | {notices} | {rss:.0} |");
    Ok(())
}
