//! Durable event ingestion over loopback HTTP, reported in docs/benchmarks.md.
//!
//! ```text
//! cargo bench -p carepath-worker --bench api                 # 50,000 events, 64 clients
//! cargo bench -p carepath-worker --bench api -- --events 100000 --clients 128
//! ```
//!
//! The real server (`api::router`, its auth, idempotency and group commit) on 127.0.0.1 over
//! a real SQLite file, and a load generator in the same process: `--clients` keep-alive
//! connections, each posting `POST /v1/instances/{id}/events` with its own Idempotency-Key
//! as fast as the answers come, over `--families` enrolled families. Each answer is durable
//! (committed) before it is sent. The run reports events/s and the latency distribution, and
//! fails unless every request was answered 200 and every event moved its family exactly once.

/// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jiff::Timestamp;
use serde_json::{Map, json};

use carepath_worker::api::Scope;
use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::{Contact, SqliteStore, Storage};

#[path = "shared/server.rs"]
mod server;
use server::{Serving, serve};

const TOKEN: &str = "cp_bench-token";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut events, mut clients, mut families) = (50_000usize, 64usize, 1_000usize);
    while let Some(a) = args.next() {
        let mut value = || -> Result<usize> {
            Ok(args
                .next()
                .with_context(|| format!("{a} needs a number"))?
                .parse()?)
        };
        match a.as_str() {
            "--events" => events = value()?,
            "--clients" => clients = value()?,
            "--families" => families = value()?,
            other => bail!("unknown option {other:?}: --events, --clients, --families"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(events, clients.max(1), families.max(1)))
}

/// A pathway that toggles between two states on one event: every event is a step.
fn write_pathway(dir: &Path) -> Result<()> {
    let folder = dir.join("toggle");
    std::fs::create_dir_all(folder.join("templates"))?;
    let pathway = json!({
        "id": "toggle",
        "version": 1,
        "title": "Toggle",
        "horizon": "P1Y",
        "roles": {"coordinator": {"sector": "region"}},
        "events": {"toggle": {}, "finish": {}},
        "initial": "a",
        "states": {
            "a": {"owner": "coordinator", "on": [{"event": "toggle", "to": "b"}, {"event": "finish", "to": "done"}]},
            "b": {"owner": "coordinator", "on": [{"event": "toggle", "to": "a"}, {"event": "finish", "to": "done"}]},
            "done": {"terminal": true}
        }
    });
    std::fs::write(
        folder.join("pathway.json"),
        serde_json::to_string_pretty(&pathway)?,
    )?;
    Ok(())
}

async fn run(events: usize, clients: usize, families: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = dir.path().join("pathways");
    write_pathway(&pathways)?;
    let now: Timestamp = "2027-03-02T09:00:00Z".parse()?;
    let store = SqliteStore::open(&dir.path().join("carepath.db")).await?;
    let (catalog, _) = Catalog::sync(&store, &[pathways], now).await?;
    let runtime = Arc::new(Runtime::new(
        store,
        catalog,
        Arc::new(VirtualClock::new(now)) as Arc<dyn Clock>,
    ));
    let contact = Contact {
        name: "Koordinator".into(),
        email: Some("k@example.dk".into()),
        phone: None,
        language: "da".into(),
        channel: None,
    };
    let mut ids = Vec::with_capacity(families);
    for i in 0..families {
        let enrolled = runtime
            .enrol(&EnrolRequest {
                reference: format!("FAM-{i:06}"),
                pathway: "toggle".into(),
                fields: Map::new(),
                contacts: [("coordinator".to_string(), contact.clone())].into(),
            })
            .await?;
        ids.push(enrolled.instance_id);
    }
    let steps_before = steps(&runtime).await?;

    let Serving {
        base,
        wake,
        task: serving,
    } = serve(runtime.clone(), "bench", TOKEN, Scope::EventsWrite, false).await?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (http, next, ids, base) = (http.clone(), next.clone(), ids.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let id = ids[i % ids.len()];
                let sent = Instant::now();
                let r = http
                    .post(format!("{base}/v1/instances/{id}/events"))
                    .bearer_auth(TOKEN)
                    .header("Idempotency-Key", format!("bench-{i}"))
                    .header("content-type", "application/json")
                    .body(r#"{"event":"toggle"}"#)
                    .send()
                    .await?;
                let status = r.status();
                let body = r.bytes().await?;
                latencies.push(sent.elapsed());
                ensure!(
                    status == 200,
                    "event {i}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(events);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    wake.stop();
    serving.await??;

    let moved = steps(&runtime).await? - steps_before;
    ensure!(
        moved == events as u64,
        "{events} events answered 200 but {moved} steps were taken"
    );
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| events | clients | families | events/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {events} | {clients} | {families} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        events as f64 / elapsed.as_secs_f64(),
        ms(q(0.5)),
        ms(q(0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    Ok(())
}

/// Steps taken by every instance so far.
async fn steps(runtime: &Runtime<SqliteStore>) -> Result<u64> {
    Ok(runtime
        .store()
        .all_instances()
        .await?
        .iter()
        .map(|i| i.instance.seq)
        .sum())
}
