//! The worker loop: fire what is due, deliver queued notices, then sleep until the next timer
//! or notice is due — or until new work arrives, or a signal asks it to stop.
//!
//! There is no polling interval. Inside one process, whoever adds work calls
//! [`Wake::notify`]; across processes (`carepath event` from a shell while `carepath run`
//! sleeps) a one-byte datagram on a Unix socket beside the database file does the same.
//!
//! SIGINT and SIGTERM stop the loop between batches: the batch in hand commits, and the
//! process exits 0. A SIGKILL loses nothing either: an uncommitted batch simply never
//! happened, and is found due again on restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::net::UnixDatagram;
use tokio::sync::Notify;

use crate::delivery::Notifier;
use crate::lateness::Lateness;
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{PgStore, Storage};

/// The longest the loop sleeps without being woken: a safety net against a lost wake-up,
/// not a polling interval.
const SAFETY_NET: Duration = Duration::from_secs(3600);

/// How often the loop erases what is past its pathway's retention.
const PURGE_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// Instances erased per pathway version in one purge; the rest wait for the next.
const PURGE_BATCH: u32 = 1000;

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Timers claimed per transaction.
    pub batch: u32,
    /// Stop when nothing is due (for tests and one-shot catch-up runs).
    pub until_idle: bool,
    /// Stop when the clock passes this moment.
    pub until: Option<Timestamp>,
    /// Fire timers (off when another process does, and this one only delivers).
    pub timers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 1000,
            until_idle: false,
            until: None,
            timers: true,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Timer steps taken.
    pub fired: usize,
    /// How late the claimed timers fired: due time to the commit that fired them.
    pub lateness: Lateness,
    /// Notices their channels accepted.
    pub delivered: usize,
    /// Notices that became dead letters.
    pub dead: usize,
    /// Notices that went stale before they could go, and were not sent.
    pub expired: usize,
    /// Whether a signal stopped it.
    pub stopped_by_signal: bool,
}

/// Wakes a sleeping worker when work arrives.
#[derive(Clone, Debug, Default)]
pub struct Wake {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    stopped: Arc<Notify>,
}

impl Wake {
    /// A new, unset wake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the worker in this process.
    pub fn notify(&self) {
        self.notify.notify_one();
    }

    /// Asks the worker to stop after the batch in hand.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify.notify_one();
        self.stopped.notify_waiters();
    }

    /// Resolves once [`Wake::stop`] is called: the HTTP server's graceful shutdown.
    pub async fn stopped(&self) {
        let stopped = self.stopped.notified();
        if self.stopping() {
            return;
        }
        stopped.await;
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Stops the worker on SIGINT or SIGTERM.
    pub fn stop_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let wake = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: finishing the batch in hand");
            wake.stop();
        });
        Ok(())
    }

    /// Listens on the database's wake socket, so other processes can wake this worker.
    /// Without a socket (a path too long, a read-only folder) the worker still runs; work
    /// from other processes then waits until the worker next wakes by itself.
    pub fn listen(&self, db: &Path) {
        let path = socket_path(db);
        let _ = std::fs::remove_file(&path);
        match UnixDatagram::bind(&path) {
            Ok(socket) => {
                let wake = self.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while socket.recv(&mut buf).await.is_ok() {
                        wake.notify();
                    }
                });
            }
            Err(e) => tracing::warn!(
                "no wake socket at {}: {e}; events from other processes wait for the next timer",
                path.display()
            ),
        }
    }
}

impl Wake {
    /// Wakes this worker whenever a commit on the PostgreSQL database arms timers or queues
    /// notices, from this process or any other (`LISTEN`, see [`crate::store::postgres`]). A
    /// lost connection is made again; what was said while it was down is not heard, so the
    /// worker looks for work at once after each reconnection.
    pub fn listen_postgres(&self, store: &PgStore) {
        let (wake, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            while !wake.stopping() {
                match store.listen().await {
                    Ok(mut listener) => loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => wake.notify(),
                            // The connection was lost; the next call makes it again.
                            Ok(None) => wake.notify(),
                            Err(_) if wake.stopping() => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "the wake-up listener lost the database; reconnecting");
                                break;
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "no wake-up listener on the database; retrying")
                    }
                }
                wake.notify();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// How often [`watch_database`] looks at the database file.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Watches the database file of a running process: once it is removed or replaced by another
/// file, every later write would go to a file nobody will find again, so the process stops
/// (through `wake`) and the returned slot says why. The caller exits non-zero with it.
pub fn watch_database(db: &Path, wake: &Wake) -> Arc<std::sync::OnceLock<String>> {
    use std::os::unix::fs::MetadataExt;
    let gone = Arc::new(std::sync::OnceLock::new());
    let identity = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    // Opened a moment ago: a file missing already was removed in between.
    let original = identity(db);
    let (db, wake, slot) = (db.to_path_buf(), wake.clone(), gone.clone());
    tokio::spawn(async move {
        let mut first = true;
        while !wake.stopping() {
            if !first {
                tokio::time::sleep(WATCH_EVERY).await;
            }
            first = false;
            let why = match (identity(&db), original) {
                (Some(now), Some(original)) if now == original => continue,
                (Some(_), _) => "was replaced by another file",
                (None, _) => "was removed",
            };
            let message = format!(
                "the database {} {why} while carepath was running: stopping, since what it \
                 writes now would be lost; restore the file (or start carepath again on the new \
                 one)",
                db.display()
            );
            tracing::error!("{message}");
            let _ = slot.set(message);
            wake.stop();
            return;
        }
    });
    gone
}

fn socket_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".wake");
    PathBuf::from(name)
}

/// Wakes the worker that runs on the database at `db`, if one does.
pub fn wake_other(db: &Path) {
    // On PostgreSQL the commit itself wakes the workers (`NOTIFY`).
    if crate::store::backend::is_postgres(db) {
        return;
    }
    if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = socket.send_to(b"w", socket_path(db));
    }
}

/// The longest a worker waits before trying again after the database failed.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs the loop until told to stop (or, with the options, until idle or a moment passes).
///
/// A database that fails for a while (a lost connection, a server restarting, a full disk) does
/// not stop the worker: it says so, waits (one second, doubling up to 30) and goes on where it
/// was, since every batch either committed whole or not at all. Only a database that is not
/// carepath's, or damaged, stops it.
pub async fn run<S: Storage>(
    rt: &Runtime<S>,
    wake: &Wake,
    notifier: Option<&Notifier>,
    opts: &Options,
) -> Result<Summary, RuntimeError> {
    let mut summary = Summary::default();
    let first_pause = Duration::from_secs(1);
    let mut pause = first_pause;
    let mut last_failure: Option<std::time::Instant> = None;
    loop {
        match run_until_failure(rt, wake, notifier, opts, &mut summary).await {
            Err(RuntimeError::Store(e)) if e.is_transient() && !wake.stopping() => {
                // A failure long after the last one starts the waits from the beginning.
                if last_failure.is_some_and(|t| t.elapsed() > 2 * RETRY_MAX) {
                    pause = first_pause;
                }
                last_failure = Some(std::time::Instant::now());
                tracing::error!(error = %e, retry_in = ?pause, "the database failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = wake.stopped() => {}
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
            done => return done.map(|()| summary),
        }
    }
}

async fn run_until_failure<S: Storage>(
    rt: &Runtime<S>,
    wake: &Wake,
    notifier: Option<&Notifier>,
    opts: &Options,
    summary: &mut Summary,
) -> Result<(), RuntimeError> {
    let mut next_purge = rt.clock().now();
    loop {
        let now = rt.clock().now();
        let horizon = opts.until.map_or(now, |u| now.min(u));
        // Retention: at most once an hour, whatever wakes the loop.
        if opts.timers && now >= next_purge {
            rt.purge(horizon, PURGE_BATCH).await?;
            next_purge = now + PURGE_EVERY;
        }
        if opts.timers {
            rt.fire_all(horizon, opts.batch, |fired| {
                let committed = rt.clock().now();
                for due in &fired.due {
                    summary.lateness.record(*due, committed);
                    rt.metrics().lateness(*due, committed);
                }
                summary.fired += fired.steps;
                summary.dead += fired.dead;
                if fired.claimed > 0 {
                    tracing::debug!(
                        claimed = fired.claimed,
                        steps = fired.steps,
                        "batch committed"
                    );
                }
                !wake.stopping()
            })
            .await?;
            if wake.stopping() {
                summary.stopped_by_signal = true;
                return Ok(());
            }
        }
        let mut more = false;
        if let Some(n) = notifier {
            // The time as it is after the firing, which may have taken a while: claims on
            // notices last from it.
            let now = rt.clock().now();
            let d = n
                .deliver(rt.store(), opts.until.map_or(now, |u| now.min(u)))
                .await?;
            summary.delivered += d.sent;
            summary.dead += d.dead;
            summary.expired += d.expired;
            more = d.more;
        }
        if more {
            continue;
        }
        if opts.until.is_some_and(|u| now >= u) {
            return Ok(());
        }
        let mut next = if opts.timers {
            rt.store().next_due().await?
        } else {
            None
        };
        if notifier.is_some() {
            // A notice held for quiet hours or waiting for a retry wakes the loop too.
            if let Some(n) = rt.store().next_notice().await? {
                next = Some(next.map_or(n, |t| t.min(n)));
            }
        }
        if opts.until_idle && next.is_none_or(|n| n > now) {
            return Ok(());
        }
        let target = match (next, opts.until) {
            (Some(n), Some(u)) => Some(n.min(u)),
            (n, u) => n.or(u),
        };
        // With nothing scheduled, sleep until woken; the hour is only a safety net.
        let wait = target
            .map_or(SAFETY_NET, |t| rt.clock().real_wait(t))
            .min(SAFETY_NET);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notify.notified() => {}
        }
        if wake.stopping() {
            summary.stopped_by_signal = true;
            return Ok(());
        }
    }
}
