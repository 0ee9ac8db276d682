//! carepath on PostgreSQL, reported in docs/benchmarks.md:
//!
//! ```text
//! CAREPATH_BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p carepath-worker --bench postgres -- burst      # 100,000 due at once
//! CAREPATH_BENCH_POSTGRES=… cargo bench -p carepath-worker --bench postgres -- lateness
//! ```
//!
//! The lateness: 1,000,000 pending timers, 30 coming due a second for 30 seconds, three
//! workers on the system clock; how late each firing commits after its due time.
//!
//! The burst: 100,000 families whose timers are all due, drained by 1, 2 and 4 workers, each
//! with its own connections, claiming disjoint batches (`FOR UPDATE SKIP LOCKED`); then, on the
//! same server and a copy of the same database, graphile-worker 0.18 (npm, in
//! `worker/benches/graphile`) draining the same workload shape at several concurrencies. The
//! server is any PostgreSQL the user may create databases on: `bash .ci/postgres start DIR`
//! starts a throwaway one. `--n N` scales the burst or the pending timers down for a quick look; `--carepath-only`
//! leaves graphile-worker out.

/// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jiff::{Timestamp, ToSpan};
use serde_json::Value;

use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, SystemClock, VirtualClock};
use carepath_worker::lateness::Lateness;
use carepath_worker::runtime::Runtime;
use carepath_worker::store::PgStore;
use carepath_worker::store::postgres::create_database;
use carepath_worker::worker::{self, Options, Wake};

#[path = "shared/tick.rs"]
mod tick;
use tick::{tick_family, write_tick};

/// Timers claimed per transaction: the worker's default.
const BATCH: u32 = 1000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<usize>())
        .transpose()?;
    let Ok(server) = std::env::var("CAREPATH_BENCH_POSTGRES") else {
        bail!(
            "set CAREPATH_BENCH_POSTGRES to a PostgreSQL server's URL (bash .ci/postgres start DIR prints one)"
        );
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let graphile = !args.iter().any(|a| a == "--carepath-only");
    match args.first().map(String::as_str) {
        Some("lateness") => rt.block_on(lateness(&server, n.unwrap_or(1_000_000), 3)),
        Some("burst") | None => rt.block_on(burst(&server, n.unwrap_or(100_000), graphile)),
        Some(other) => bail!("unknown benchmark {other:?}: burst or lateness"),
    }
}

/// Firings a second in the lateness run, and for how long.
const RATE: i64 = 30;
const WINDOW_SECS: i64 = 30;

async fn lateness(server: &str, pending: usize, workers: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = write_tick(&dir.path().join("pathways"))?;
    let url = create_database(server, "carepath_bench_lateness").await?;
    let rt = runtime(&url, &pathways, Arc::new(SystemClock)).await?;
    let template = rt.enrol(&tick_family("L-0".into())).await?.instance_id;
    // The enrolled family cloned in SQL into `pending` families: the first RATE × WINDOW_SECS
    // come due RATE a second, a few seconds from now; the rest a month later. Each keeps the
    // template's horizon timer too.
    let started = Instant::now();
    let first = Timestamp::now().as_millisecond() + 5_000 + (pending as i64 / 15_000) * 1_000;
    let soon = RATE * WINDOW_SECS;
    let later = first + 30 * 86_400_000;
    let due_of = "CASE WHEN d.i <= $2 THEN $3 + ((d.i - 1) * 1000) / $6 ELSE $4 + d.i END";
    let pool = rt.store().pool().clone();
    let mut tx = pool.begin().await?;
    let clones = pending as i64 - 1;
    for sql in [
        format!(
            "INSERT INTO instances (ref, pathway, pathway_version_id, state, owner, status, seq, body, roles, parent_id, created_at, updated_at) \
             SELECT 'L-' || d.i, pathway, pathway_version_id, state, owner, status, seq, \
                    jsonb_set(body::jsonb, '{{timers,0,due}}', to_jsonb(to_char(to_timestamp(({due_of}) / 1000.0) AT TIME ZONE 'UTC', \
                              'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')))::text, \
                    roles, NULL, created_at, updated_at \
             FROM generate_series(1, $1) AS d(i), instances WHERE instances.id = $5 ORDER BY d.i"
        ),
        format!(
            "INSERT INTO timers (instance_id, key, due, purpose) \
             SELECT d.id, t.key, CASE WHEN t.key = 'horizon' THEN t.due ELSE {due_of} END, t.purpose \
             FROM (SELECT id, id - $5 AS i FROM instances WHERE id > $5 AND id <= $5 + $1) AS d, timers t \
             WHERE t.instance_id = $5"
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
    sqlx::query("ANALYZE").execute(&pool).await?;
    let setup = started.elapsed();
    ensure!(
        Timestamp::now().as_millisecond() < first,
        "setup took {setup:?}: past the first due time"
    );
    rt.store().close().await;

    let until = Timestamp::from_millisecond(first + WINDOW_SECS * 1000 + 500)?;
    let mut runtimes = Vec::new();
    for _ in 0..workers {
        runtimes.push(runtime(&url, &pathways, Arc::new(SystemClock)).await?);
    }
    let options = Options {
        batch: BATCH,
        until_idle: false,
        until: Some(until),
        timers: true,
    };
    // The workers' loops side by side on this runtime: each its own connections, wake-up and
    // sleep until the next due timer.
    let runs = runtimes
        .iter()
        .map(|rt| async { worker::run(rt, &Wake::new(), None, &options).await });
    let summaries = futures::future::try_join_all(runs).await?;
    for rt in &runtimes {
        rt.store().close().await;
    }
    let mut all = Lateness::new();
    let mut each = Vec::new();
    for summary in &summaries {
        each.push(summary.fired);
        all.merge(&summary.lateness);
    }
    let fired = count(
        &url,
        "SELECT count(*) FROM history WHERE to_state = 'reminded'",
    )
    .await?;
    ensure!(
        fired == soon && all.count() == fired as u64,
        "{fired} fired, {} measured, wanted {soon}",
        all.count()
    );
    let q = |q| all.quantile(q).map_or("-".into(), Lateness::show);
    println!("| pending timers | workers | firings (by each) | p50 | p99 | max | setup |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {pending} | {workers} | {fired} at {RATE}/s ({each:?}) | {} | {} | {} | {:.1} s |",
        q(0.5),
        q(0.99),
        Lateness::show(all.max()),
        setup.as_secs_f64()
    );
    Ok(())
}

async fn runtime(url: &str, pathways: &Path, clock: Arc<dyn Clock>) -> Result<Runtime<PgStore>> {
    let store = PgStore::open(url).await?;
    let (catalog, _) = Catalog::sync(&store, &[pathways.to_path_buf()], clock.now()).await?;
    Ok(Runtime::new(store, catalog, clock))
}

/// A database made from `template`, which nobody may be connected to.
async fn copy_of(server: &str, template: &str, name: &str) -> Result<String> {
    let url = create_database(server, name).await?;
    let admin = sqlx::PgPool::connect(server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(url)
}

async fn count(url: &str, sql: &str) -> Result<i64> {
    let pool = sqlx::PgPool::connect(url).await?;
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n)
}

async fn burst(server: &str, n: usize, graphile: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = write_tick(&dir.path().join("pathways"))?;
    let t0: Timestamp = "2027-01-04T07:00:00Z".parse()?;
    let base = "carepath_bench_burst";
    let url = create_database(server, base).await?;
    let clock = Arc::new(VirtualClock::new(t0));
    let rt = Arc::new(runtime(&url, &pathways, clock.clone()).await?);
    let started = Instant::now();
    // Enrolled from eight tasks at once: a server takes several writers.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let rt = rt.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(8) {
                    rt.enrol(&tick_family(format!("B-{i:06}"))).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let enrol = started.elapsed();
    rt.store().close().await;
    drop(rt);
    let now = t0.checked_add(2.hours())?;
    let rate = |steps: f64, d: Duration| steps / d.as_secs_f64();

    println!("enrolment: {n} families in {:.1} s", enrol.as_secs_f64());
    println!("| workers | transitions/s | seconds |");
    println!("|---|---|---|");
    let mut two = 0.0;
    for workers in [1usize, 2, 4] {
        let name = format!("carepath_bench_burst_{workers}");
        let url = copy_of(server, base, &name).await?;
        let mut runtimes = Vec::new();
        for _ in 0..workers {
            runtimes.push(Arc::new(
                runtime(&url, &pathways, Arc::new(VirtualClock::new(now))).await?,
            ));
        }
        let started = Instant::now();
        let tasks: Vec<_> = runtimes
            .iter()
            .map(|rt| {
                let rt = rt.clone();
                tokio::spawn(async move {
                    let mut steps = 0;
                    loop {
                        let fired = rt.fire_batch(now, BATCH).await?;
                        steps += fired.steps;
                        if fired.claimed == 0 {
                            return anyhow::Ok(steps);
                        }
                    }
                })
            })
            .collect();
        let mut steps = 0;
        for t in tasks {
            steps += t.await??;
        }
        let took = started.elapsed();
        for rt in &runtimes {
            rt.store().close().await;
        }
        let moved = count(
            &url,
            "SELECT count(*) FROM history WHERE to_state = 'reminded'",
        )
        .await?;
        let notices = count(&url, "SELECT count(*) FROM outbox WHERE status = 'queued'").await?;
        ensure!(
            steps == n && moved == n as i64 && notices == n as i64,
            "{workers} workers: {steps} steps, {moved} transitions, {notices} notices for {n} timers"
        );
        let r = rate(steps as f64, took);
        if workers == 2 {
            two = r;
        }
        println!("| {workers} | {r:.0} | {:.2} |", took.as_secs_f64());
    }

    if !graphile {
        return Ok(());
    }
    let graphile = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/graphile");
    if !graphile.join("node_modules/graphile-worker").is_dir() {
        let installed = Command::new("npm")
            .args([
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
            ])
            .current_dir(&graphile)
            .status()
            .context("npm, to install graphile-worker")?;
        ensure!(installed.success(), "npm install graphile-worker failed");
    }
    println!();
    println!("| graphile-worker 0.18 concurrency | jobs/s | seconds |");
    println!("|---|---|---|");
    let mut best = 0.0f64;
    for concurrency in [1usize, 4, 16, 32] {
        let name = format!("carepath_bench_graphile_{concurrency}");
        let url = copy_of(server, base, &name).await?;
        let out = Command::new("node")
            .arg(graphile.join("drain.js"))
            .arg(&url)
            .arg(concurrency.to_string())
            .arg(now.as_millisecond().to_string())
            .output()
            .context("node, to run graphile-worker")?;
        ensure!(
            out.status.success(),
            "graphile-worker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: Value = serde_json::from_slice(&out.stdout)?;
        let jobs = said["jobs"].as_f64().unwrap_or(0.0);
        let moved = said["moved"].as_f64().unwrap_or(0.0);
        ensure!(
            jobs == n as f64 && moved == n as f64,
            "graphile-worker moved {moved} of {n}"
        );
        let seconds = said["seconds"].as_f64().unwrap_or(f64::NAN);
        let r = jobs / seconds;
        best = best.max(r);
        println!("| {concurrency} | {r:.0} | {seconds:.2} |");
    }
    println!();
    println!(
        "carepath with 2 workers / graphile-worker at its best concurrency: {:.1}×",
        two / best
    );
    Ok(())
}
