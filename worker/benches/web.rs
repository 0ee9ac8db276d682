//! The web view's pages over loopback HTTP with a national cohort in the database, reported
//! in docs/benchmarks.md.
//!
//! ```text
//! cargo bench -p carepath-worker --bench web                  # 60,000 families, 200 requests a page
//! cargo bench -p carepath-worker --bench web -- --families 6000 --requests 50
//! ```
//!
//! The cohort of the runtime benchmark (standard track, real pathways and templates), run for
//! 90 days on virtual time: first exams, the midwives' acknowledgements (one family in ten's
//! never comes: an overdue handoff) and every timer, so thousands of activities are overdue
//! too. Then the real server (`api::router` with `web::router`) on 127.0.0.1, a session signed
//! in as an admin, and each page requested one after another. Prints one row per page: p50,
//! p99 and max; the capacity page's first, uncached request on its own row.

/// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jiff::{ToSpan, ZonedDateTime};

use carepath_worker::api::Scope;
use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::runtime::Runtime;
use carepath_worker::store::{SqliteStore, Storage};

#[path = "shared/cohort.rs"]
mod cohort;
#[path = "shared/server.rs"]
mod server;
use server::{Serving, serve};

const TOKEN: &str = "cp_bench-web-token";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut families, mut requests) = (60_000usize, 200usize);
    while let Some(a) = args.next() {
        let mut value = || -> Result<usize> {
            Ok(args
                .next()
                .with_context(|| format!("{a} needs a number"))?
                .parse()?)
        };
        match a.as_str() {
            "--families" => families = value()?,
            "--requests" => requests = value()?,
            other => bail!("unknown option {other:?}: --families, --requests"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(families.max(10), requests.max(10)))
}

async fn run(families: usize, requests: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pathways = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pathways");
    let start: ZonedDateTime = "2027-01-04T08:00[Europe/Copenhagen]".parse()?;
    let clock = Arc::new(VirtualClock::new(start.timestamp()));
    let store = SqliteStore::open(&dir.path().join("carepath.db")).await?;
    let (catalog, _) = Catalog::sync(&store, &[pathways], start.timestamp()).await?;
    let runtime = Arc::new(Runtime::new(
        store,
        catalog,
        clock.clone() as Arc<dyn Clock>,
    ));

    let seeding = Instant::now();
    for i in 0..families {
        runtime
            .enrol(&cohort::cohort_family(i, start.date())?)
            .await?;
    }
    for day in 0..=90i64 {
        let today = start.checked_add(day.days())?;
        clock.advance_to(today.timestamp());
        runtime.fire_due(today.timestamp(), 1000).await?;
        let mut events = Vec::new();
        for i in 0..families {
            events.extend(
                cohort::cohort_events(i, day, start.date())?
                    .into_iter()
                    .filter(|e| !(e.event == "referral_accepted" && i % 10 == 0)),
            );
        }
        for chunk in events.chunks(1000) {
            runtime.apply_events(chunk).await?;
        }
    }
    let overdue = runtime
        .store()
        .list_instances(&carepath_worker::store::InstanceFilter {
            overdue_only: true,
            limit: u32::MAX,
            ..Default::default()
        })
        .await?
        .len();
    eprintln!(
        "{families} families seeded and run 90 days in {:.0} s; {overdue} wait on somebody",
        seeding.elapsed().as_secs_f64()
    );

    let Serving {
        base,
        wake,
        task: serving,
    } = serve(runtime.clone(), "koordinator", TOKEN, Scope::Admin, true).await?;

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let session = sign_in(&http, &base).await?;
    let family = "C-000120";
    let pages = [
        ("Overblik", "/".to_string()),
        ("Familier", "/familier".to_string()),
        ("Familier, overdue only", "/familier?overdue=1".to_string()),
        ("Familier, search", "/familier?q=C-0012".to_string()),
        ("Familie", format!("/familier/{family}")),
        ("Udbakke", "/udbakke".to_string()),
        ("Forløb", "/forloeb".to_string()),
        (
            "Forløb: standard track",
            "/forloeb/standard-track".to_string(),
        ),
        (
            "Forløb: its SVG",
            "/forloeb/standard-track/graf.svg".to_string(),
        ),
        ("Kapacitet", "/kapacitet".to_string()),
    ];
    println!("| page | families | requests | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, path) in &pages {
        if path == "/kapacitet" {
            // The forecast is computed at start beside the server: the first request waits
            // for what is left of it. Then "compute again now", which computes while it waits.
            let first = get(&http, &base, path, &session).await?;
            println!(
                "| Kapacitet, first after start (waits for the warm-up) | {families} | 1 | {:.1} ms | | |",
                ms(first)
            );
            let html = http
                .get(format!("{base}{path}"))
                .header("cookie", &session)
                .send()
                .await?
                .text()
                .await?;
            let csrf = html
                .split("name=\"_csrf\" value=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .context("no CSRF token on the capacity page")?
                .to_string();
            let sent = Instant::now();
            let answer = http
                .post(format!("{base}{path}"))
                .header("cookie", &session)
                .form(&[("_csrf", csrf.as_str())])
                .send()
                .await?;
            let took = sent.elapsed();
            ensure!(
                answer.status() == 303,
                "recompute answered {}",
                answer.status()
            );
            println!(
                "| Kapacitet, compute again now (POST) | {families} | 1 | {:.1} ms | | |",
                ms(took)
            );
        }
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            times.push(get(&http, &base, path, &session).await?);
        }
        times.sort();
        let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        println!(
            "| {name} | {families} | {requests} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(q(0.5)),
            ms(q(0.99)),
            ms(times[times.len() - 1])
        );
    }
    wake.stop();
    serving.await??;
    runtime.store().close().await;
    Ok(())
}

/// Signs in as the admin token: the sign-in form's cookie and CSRF token, then the session.
async fn sign_in(http: &reqwest::Client, base: &str) -> Result<String> {
    let form = http.get(format!("{base}/login")).send().await?;
    let login_cookie = cookie(&form, "carepath_login")?;
    let html = form.text().await?;
    let csrf = html
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no CSRF token on the sign-in form")?
        .to_string();
    let answer = http
        .post(format!("{base}/login"))
        .header("cookie", format!("carepath_login={login_cookie}"))
        .form(&[("token", TOKEN), ("_csrf", csrf.as_str()), ("next", "/")])
        .send()
        .await?;
    ensure!(
        answer.status() == 303,
        "sign-in answered {}",
        answer.status()
    );
    Ok(format!(
        "carepath_session={}",
        cookie(&answer, "carepath_session")?
    ))
}

fn cookie(r: &reqwest::Response, name: &str) -> Result<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}="))?.split(';').next())
        .map(str::to_string)
        .with_context(|| format!("no {name} cookie"))
}

/// One page, read whole; refused unless it is answered 200.
async fn get(http: &reqwest::Client, base: &str, path: &str, session: &str) -> Result<Duration> {
    let sent = Instant::now();
    let r = http
        .get(format!("{base}{path}"))
        .header("cookie", session)
        .send()
        .await?;
    let status = r.status();
    let body = r.bytes().await?;
    let took = sent.elapsed();
    ensure!(
        status == 200 && !body.is_empty(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&body)
            .chars()
            .take(300)
            .collect::<String>()
    );
    Ok(took)
}
