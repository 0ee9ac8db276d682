//! SQLite's WAL checkpoints, taken off the writers.
//!
//! By default the connection whose commit takes the write-ahead log past 1,000 pages copies the
//! log back into the database file before its commit returns: in a burst of timers every few
//! batches waited milliseconds for that. The store's connections therefore never checkpoint
//! (`wal_autocheckpoint = 0`); a [`Checkpointer`] with a connection of its own does, in passive
//! mode, beside the writer, once the log has outgrown the same 1,000 pages (4 MiB). It looks
//! after every commit it is told of, and every [`EVERY`] in any case, so that writes it is not
//! told of (the delivery's, the API's) are checkpointed too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How often the log's size is looked at when no commit says so.
pub const EVERY: Duration = Duration::from_millis(250);

/// The log's size past which it is checkpointed: SQLite's own default of 1,000 pages. The
/// store's connections also truncate the log's file to it when they start the log over
/// (`journal_size_limit`); else a file that once grew would stay large, and every commit
/// would be checkpointed.
pub const WAL_LIMIT: u64 = 1000 * 4096;

/// The checkpointing task of one store. Dropped with the store's last clone, or stopped by
/// [`Checkpointer::stop`], it closes its connection and ends.
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    /// Held by the store only: the task sees it gone when the store is.
    _alive: Arc<Alive>,
    task: Mutex<Option<JoinHandle<()>>>,
    rounds: watch::Receiver<u64>,
}

#[derive(Debug)]
struct Shared {
    wake: Notify,
    /// A round is asked for whatever the log's size.
    forced: AtomicBool,
    /// The store is closing: the task ends.
    stopping: AtomicBool,
}

/// The store's token; its end wakes the task to end too.
#[derive(Debug)]
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.wake.notify_one();
    }
}

impl Checkpointer {
    /// Opens a connection with `options` and starts checkpointing the log at `wal`.
    pub async fn start(options: &SqliteConnectOptions, wal: PathBuf) -> Result<Self, sqlx::Error> {
        let conn = options.connect().await?;
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            forced: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        let alive = Arc::new(Alive(shared.clone()));
        let (rounds_tx, rounds) = watch::channel(0);
        let task = tokio::spawn(run(
            conn,
            options.clone(),
            wal,
            shared.clone(),
            Arc::downgrade(&alive),
            rounds_tx,
        ));
        Ok(Checkpointer {
            shared,
            _alive: alive,
            task: Mutex::new(Some(task)),
            rounds,
        })
    }

    /// Tells the task that a transaction committed: the log may have outgrown its limit.
    pub fn committed(&self) {
        self.shared.wake.notify_one();
    }

    /// Checkpoints now, whatever the log's size, and returns once that round is done.
    pub async fn checkpoint(&self) {
        let mut rounds = self.rounds.clone();
        let seen = *rounds.borrow_and_update();
        self.shared.forced.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        // An ended task ends the wait too.
        let _ = rounds.wait_for(|n| *n > seen).await;
    }

    /// Ends the task and closes its connection, so that the store's own connections are the
    /// last to close and SQLite folds the log into the file as they do.
    pub async fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    mut conn: SqliteConnection,
    options: SqliteConnectOptions,
    wal: PathBuf,
    shared: Arc<Shared>,
    alive: Weak<Alive>,
    rounds: watch::Sender<u64>,
) {
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(EVERY) => {}
        }
        if alive.strong_count() == 0 || shared.stopping.load(Ordering::SeqCst) {
            let _ = conn.close().await;
            return;
        }
        let forced = shared.forced.swap(false, Ordering::SeqCst);
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if forced || size > WAL_LIMIT {
            let done = match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                Ok(_) => Ok(()),
                // A connection that failed (a full disk, the file replaced) is opened again
                // for the next round.
                Err(e) => match options.connect().await {
                    Ok(fresh) => {
                        conn = fresh;
                        Err(e)
                    }
                    Err(_) => Err(e),
                },
            };
            match done {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::info!("the database's write-ahead log is checkpointed again");
                    }
                }
                Err(e) => {
                    let said = e.to_string();
                    // Once per distinct failure, not every round.
                    if failing.as_deref() != Some(said.as_str()) {
                        tracing::warn!(error = %said, "cannot checkpoint the database's write-ahead log; it grows until this passes");
                        failing = Some(said);
                    }
                }
            }
        }
        rounds.send_modify(|n| *n += 1);
    }
}
