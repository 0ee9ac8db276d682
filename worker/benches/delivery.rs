//! Delivery benchmarks: notices out of a real SQLite outbox through the real channels to sinks
//! on loopback, reported in docs/benchmarks.md.
//!
//! ```text
//! cargo bench -p carepath-worker --bench delivery -- email   # 20,000 emails, SMTP sink
//! cargo bench -p carepath-worker --bench delivery -- sms     # 20,000 SMS, GatewayAPI-shaped HTTP sink
//! ```
//!
//! Each run enrols N families on a one-notice pathway (`--n N`, default 20,000), so N rendered
//! notices wait in the outbox, then times two things: the channel alone (N messages through
//! the configured `Channels` with the delivery loop's concurrency) and the whole delivery
//! loop (`Notifier::deliver`: read the outbox, send, record every attempt). The sinks count
//! what they accept, and the run fails unless every message arrived and every row is `sent`.

/// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use jiff::Timestamp;
use serde_json::{Map, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use carepath_engine::pathway::Channel;
use carepath_notifier::email::{EmailConfig, Security};
use carepath_notifier::gateway::{Gateway, SmsConfig};
use carepath_notifier::{Channels, Message, NotifierConfig};
use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::delivery::Notifier;
use carepath_worker::runtime::{EnrolRequest, Runtime};
use carepath_worker::store::{Contact, NoticeStatus, OutboxFilter, SqliteStore, Storage};

/// The delivery loop's concurrency, for the channel-alone figure.
const CONCURRENCY: usize = 16;

/// SMTP connections in the pool.
const POOL: u32 = 8;

/// The token variable the SMS gateway configuration names.
const TOKEN_ENV: &str = "CAREPATH_BENCH_SMS_TOKEN";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut what = Vec::new();
    let mut n = 20_000;
    while let Some(a) = args.next() {
        if a == "--n" {
            n = args.next().context("--n needs a number")?.parse()?;
        } else {
            what.push(a);
        }
    }
    if what.is_empty() {
        what = vec!["email".into(), "sms".into()];
    }
    // SAFETY: set once, before the runtime starts any thread that could read the environment.
    unsafe { std::env::set_var(TOKEN_ENV, "bench-token") };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("| channel | notices | channel alone | delivery loop (outbox → sink → recorded) |");
    println!("|---|---|---|---|");
    for w in what {
        match w.as_str() {
            "email" => rt.block_on(email(n))?,
            "sms" => rt.block_on(sms(n))?,
            other => bail!("unknown benchmark {other:?}: email or sms"),
        }
    }
    Ok(())
}

/// A pathway whose initial state sends one notice to `role` on enrolment.
fn write_pathway(dir: &Path, channel: Channel) -> Result<PathBuf> {
    let folder = dir.join("notify");
    std::fs::create_dir_all(folder.join("templates"))?;
    let (role, sector) = match channel {
        Channel::Email => ("coordinator", "region"),
        Channel::Sms => ("family", "family"),
    };
    let pathway = json!({
        "id": "notify",
        "version": 1,
        "title": "Notify",
        "horizon": "P60D",
        "roles": {role: {"sector": sector, "channels": [channel.as_str()]}},
        "initial": "waiting",
        "states": {
            "waiting": {
                "owner": role,
                "enter": [{"notify": {"to": role, "template": "hello"}}],
                "timers": [{"after": "P1D", "to": "done"}]
            },
            "done": {"terminal": true}
        }
    });
    std::fs::write(
        folder.join("pathway.json"),
        serde_json::to_string_pretty(&pathway)?,
    )?;
    let template = match channel {
        Channel::Email => (
            "hello.da.email.hbs",
            "Subject: Familie {{instance.ref}}\n\nKære {{recipient.name}}\n\nFamilien {{instance.ref}} er henvist til jer. Kvittér for modtagelsen i journalsystemet.\n",
        ),
        Channel::Sms => (
            "hello.da.sms.hbs",
            "Påmindelse: Du har en aftale hos sundhedsplejen. Kan du ikke komme, så ring på 70 20 30 40.",
        ),
    };
    std::fs::write(folder.join("templates").join(template.0), template.1)?;
    Ok(dir.to_path_buf())
}

/// Enrols `n` families; each leaves one queued notice. Returns the runtime and a moment inside
/// the families' quiet-hours window (a Tuesday, 10:00 in Copenhagen).
async fn outbox_of(
    dir: &Path,
    channel: Channel,
    n: usize,
) -> Result<(Runtime<SqliteStore>, Timestamp)> {
    let pathways = write_pathway(&dir.join("pathways"), channel)?;
    let now: Timestamp = "2027-03-02T09:00:00Z".parse()?;
    let clock = Arc::new(VirtualClock::new(now));
    let store = SqliteStore::open(&dir.join("carepath.db")).await?;
    let (catalog, _) = Catalog::sync(&store, &[pathways], clock.now()).await?;
    let rt = Runtime::new(store, catalog, clock);
    for i in 0..n {
        let (role, contact) = match channel {
            Channel::Email => (
                "coordinator",
                Contact {
                    name: "Koordinator".into(),
                    email: Some(format!("koordinator{i}@example.dk")),
                    phone: None,
                    language: "da".into(),
                    channel: None,
                },
            ),
            Channel::Sms => (
                "family",
                Contact {
                    name: "Familie".into(),
                    email: None,
                    phone: Some(format!("+45{:08}", 20_000_000 + i)),
                    language: "da".into(),
                    channel: None,
                },
            ),
        };
        rt.enrol(&EnrolRequest {
            reference: format!("D-{i:06}"),
            pathway: "notify".into(),
            fields: Map::new(),
            contacts: [(role.to_string(), contact)].into(),
        })
        .await?;
    }
    Ok((rt, now))
}

fn message(i: usize, channel: Channel) -> Message {
    Message {
        origin: "bench".into(),
        key: format!("bench:{i}"),
        channel,
        to: match channel {
            Channel::Email => format!("koordinator{i}@example.dk"),
            Channel::Sms => format!("+45{:08}", 30_000_000 + i),
        },
        name: Some("Koordinator".into()),
        subject: Some(format!("Familie B-{i}")),
        body: "Familien er henvist til jer. Kvittér for modtagelsen i journalsystemet.".into(),
        html: None,
        language: Some("da".into()),
        reference: format!("B-{i}"),
        role: "coordinator".into(),
        template: "hello".into(),
        calendar: None,
    }
}

/// Sends `n` messages through `send` with the delivery loop's concurrency.
async fn channel_alone<F, Fut>(n: usize, channel: Channel, send: F) -> Result<Duration>
where
    F: Fn(Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let failures: Vec<String> = futures::stream::iter((0..n).map(|i| send(message(i, channel))))
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    ensure!(
        failures.is_empty(),
        "{} sends failed: {:?}",
        failures.len(),
        failures.first()
    );
    Ok(started.elapsed())
}

async fn delivery_loop(
    rt: &Runtime<SqliteStore>,
    notifier: &Notifier,
    now: Timestamp,
    n: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let done = notifier.deliver(rt.store(), now).await?;
    let elapsed = started.elapsed();
    ensure!(done.sent == n, "delivery loop: {done:?} for {n} notices");
    let sent = rt
        .store()
        .outbox(&OutboxFilter {
            status: Some(NoticeStatus::Sent),
            ..OutboxFilter::default()
        })
        .await?
        .len();
    ensure!(sent == n, "{sent} rows sent of {n}");
    Ok(elapsed)
}

fn row(channel: &str, n: usize, alone: Duration, loop_: Duration) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "| {channel} | {n} | {:.0}/s ({:.2} s) | {:.0}/s ({:.2} s) |",
        rate(alone),
        alone.as_secs_f64(),
        rate(loop_),
        loop_.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Email

async fn email(n: usize) -> Result<()> {
    let received = Arc::new(AtomicUsize::new(0));
    let port = smtp_sink(received.clone()).await?;
    let config = NotifierConfig {
        email: Some(EmailConfig {
            host: "127.0.0.1".into(),
            port: Some(port),
            security: Security::None,
            username: None,
            password_env: None,
            from: "Forløbskoordinering <noreply@carepath.example.dk>".into(),
            pool: POOL,
            timeout_secs: 10,
        }),
        ..NotifierConfig::default()
    };
    let label = format!("email, SMTP, {POOL} pooled connections");
    measure(&label, Channel::Email, n, &config, &received).await
}

/// Times `n` messages through the channel alone, then `n` notices through the delivery loop,
/// checking that the sink counted every one.
async fn measure(
    label: &str,
    channel: Channel,
    n: usize,
    config: &NotifierConfig,
    received: &AtomicUsize,
) -> Result<()> {
    let arrived = |expected: usize| {
        let got = received.load(Ordering::Relaxed);
        ensure!(got == expected, "the sink got {got} of {expected}");
        Ok(())
    };
    let channels = Channels::new(config)?;
    let now = Timestamp::now();
    let alone = channel_alone(n, channel, |m| {
        let channels = &channels;
        async move {
            channels
                .send(&m, now)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    arrived(n)?;

    let dir = tempfile::tempdir()?;
    let (rt, now) = outbox_of(dir.path(), channel, n).await?;
    let loop_ = delivery_loop(&rt, &Notifier::new(config)?, now, n).await?;
    arrived(2 * n)?;
    row(label, n, alone, loop_);
    rt.store().close().await;
    Ok(())
}

/// A minimal SMTP server on loopback: it accepts every message and counts it. It speaks the
/// part of RFC 5321 a client uses to submit (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
async fn smtp_sink(received: Arc<AtomicUsize>) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // As mail servers do: replies are small and each is awaited by the client.
            let _ = socket.set_nodelay(true);
            let received = received.clone();
            tokio::spawn(async move {
                let _ = smtp_session(socket, received).await;
            });
        }
    });
    Ok(port)
}

async fn smtp_session(
    socket: tokio::net::TcpStream,
    received: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                write
                    .write_all(b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?
            }
            "DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
                write.write_all(b"250 2.0.0 accepted\r\n").await?;
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"250 OK\r\n").await?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SMS

async fn sms(n: usize) -> Result<()> {
    let received = Arc::new(AtomicUsize::new(0));
    let port = http_sink(received.clone()).await?;
    let config = NotifierConfig {
        sms: Some(SmsConfig {
            gateway: Gateway::Gatewayapi,
            url: format!("http://127.0.0.1:{port}"),
            token_env: Some(TOKEN_ENV.into()),
            username: None,
            sender: "Sundhed".into(),
            timeout_secs: 10,
            max_segments: 3,
            inbound_secret_env: None,
            inbound_keyword: None,
            receipts_url: None,
        }),
        ..NotifierConfig::default()
    };
    measure(
        "SMS, GatewayAPI over HTTP/1.1",
        Channel::Sms,
        n,
        &config,
        &received,
    )
    .await
}

/// A GatewayAPI-shaped HTTP sink on loopback: checks the token, counts each message, answers
/// with a message id.
async fn http_sink(received: Arc<AtomicUsize>) -> Result<u16> {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route(
        "/rest/mtsms",
        post(
            move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                let received = received.clone();
                async move {
                    let authorised = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Token bench-token");
                    if !authorised || body["recipients"][0]["msisdn"].as_u64().is_none() {
                        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "no"})));
                    }
                    let id = received.fetch_add(1, Ordering::Relaxed);
                    (StatusCode::OK, axum::Json(json!({"ids": [id]})))
                }
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}
