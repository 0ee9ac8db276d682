//! The SQLite backend: one file in WAL mode, migrations applied on open.
//!
//! Write transactions start with `BEGIN IMMEDIATE`, taking the write lock before the first
//! read, so a batch reads and writes one consistent database. Several processes may share the
//! file (a worker, `carepath event` from a shell); SQLite queues their writers for up to the
//! busy timeout.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use jiff::Timestamp;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, SqliteConnection};

use carepath_engine::PathwaySource;
use carepath_engine::pathway::Channel;
use carepath_engine::step::{History, Status};

use super::rows::{
    DeliveryRow, INSTANCE_COLUMNS, OUTBOX_SELECT, audit_row, channel, contact_row, content_hash,
    event_row, held, history_row, instance_row, ms, not_held, outbox_row, pathway_row, sealed_body,
    status_str, timer_row, to_json, ts,
};
use super::seal::Seal;
use super::wal::{Checkpointer, WAL_LIMIT};
use super::{
    AuditEntry, AuditFilter, Changes, Contact, ContactRef, Delivery, DirectoryEntry, DueTimer,
    Erased, EventRecord, InstanceFilter, InstanceRow, InstanceUpdate, KeptResponse, NoticeStatus,
    NoticeText, OutboxFilter, OutboxLogEntry, OutboxRow, ReceiptOutcome, ReceiptReport,
    ReceiptState, Requeue, Result, Stats, Storage, StoreError, Stored, StoredPathway, Target, Tx,
    Withdrawn,
};

/// How long a writer waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite allows 32,766 bound values per statement; stay below it.
const MAX_BINDS: usize = 30_000;

/// The row counts a multi-row statement comes in. A batch is cut greedily into these, so a
/// statement's text is one of four per table and its prepared form is cached per connection,
/// instead of being parsed again for every batch (11 % of a burst), while the cache stays
/// bounded: four shapes per statement. The largest is the worker's batch of 1,000 timers;
/// 1,000 outbox rows of 22 values bind 22,000, below [`MAX_BINDS`].
const SHAPES: [usize; 4] = [1000, 100, 10, 1];

/// `items` in runs of the sizes in [`SHAPES`], largest first.
fn shaped<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = SHAPES.iter().copied().find(|&s| s <= items.len())?;
        let (run, rest) = items.split_at(n);
        items = rest;
        Some(run)
    })
}

/// A multi-row statement, and for an update the rows it must change and an instance to name
/// when it changes fewer (one moved meanwhile).
type Statement = (
    sqlx::query::Query<'static, Sqlite, SqliteArguments>,
    Option<(u64, i64)>,
);

/// A [`Statement`] still to be built.
type Build<'a> = Box<dyn FnOnce() -> Result<Statement> + Send + 'a>;

/// Runs `builds` in order on `conn`, building each statement while the one before it runs on
/// the connection's own thread: binding a thousand rows' values is a good part of a batch's
/// time, and the database would otherwise wait for it.
async fn run_built(conn: &mut SqliteConnection, builds: Vec<Build<'_>>) -> Result<()> {
    let mut builds = builds.into_iter();
    let mut current = builds.next().map(|b| b()).transpose()?;
    while let Some((q, expect)) = current.take() {
        let next = builds.next();
        // Biased: the statement is handed to the connection first, then the next is built.
        let (done, built) = tokio::join!(biased; q.execute(&mut *conn), async {
            next.map(|b| b()).transpose()
        });
        let done = done?;
        if let Some((rows, first)) = expect
            && done.rows_affected() != rows
        {
            return Err(StoreError::Conflict(first));
        }
        current = built?;
    }
    Ok(())
}

/// `head`, then `VALUES` and `rows` groups of `columns` placeholders, then `tail`: a
/// multi-row statement's text, written with plain string pushes. sqlx's `QueryBuilder` writes
/// every placeholder and separator through the formatting machinery, which was a twentieth of
/// a burst's instructions for text that is the same for every batch of a shape.
fn multi_row(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let group = format!("({})", placeholders(columns));
    let mut sql = String::with_capacity(head.len() + 7 + rows * (group.len() + 1) + tail.len());
    sql.push_str(head);
    sql.push_str("VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&group);
    }
    sql.push_str(tail);
    sql
}

/// A SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: String,
    /// The data key that seals families' fields and event payloads, or none.
    seal: Seal,
    /// The checkpointer of the log, where this store writes.
    wal: Option<Arc<Checkpointer>>,
}

/// The write-ahead log beside the database file at `path`.
fn wal_file(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        // The database holds families' data: a new one is readable by its owner only, and
        // SQLite gives its WAL and shared-memory files the same permissions.
        if !path.exists() {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            if let Err(e) = options.open(path)
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(StoreError::Open {
                    path: shown,
                    reason: e.to_string(),
                });
            }
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL loses no committed transaction on a process crash; only a power
            // loss can take back the last commits, and never corrupts the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted and overwritten content is zeroed, so an erased family's data does not
            // linger in free pages of the file.
            .pragma("secure_delete", "ON")
            // 32 MiB of pages a connection (SQLite's default is 2 MiB): a batch of 1,000 steps
            // touches the instances, timers, outbox and history trees and their indexes, which
            // outgrow the default with a few thousand families and are then read again from
            // the file for every batch.
            .pragma("cache_size", "-32768")
            // A batch reads 1,000 instances: SQLite's thread hands them over without waiting
            // for each 50 to be taken (the default), one wake-up instead of twenty.
            .row_buffer_size(1024)
            .busy_timeout(BUSY_TIMEOUT);
        // The log is checkpointed beside the writers, not by them (`store::wal`).
        let checkpointer = Checkpointer::start(&options, wal_file(path))
            .await
            .map_err(|e| classify(e, &shown))?;
        // Truncated back to the checkpointer's threshold each time SQLite starts the log over,
        // the log's file is only larger than that while it holds more than that: its size is
        // then what the checkpointer goes by.
        let options = options
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", WAL_LIMIT.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // After "database or disk is full" (or an I/O error) SQLite may roll a transaction
            // back by itself; sqlx's ROLLBACK then fails and the connection goes back to the
            // pool believing it is still in a transaction, refusing every later BEGIN. Such a
            // connection is closed instead of reused (the ping of `test_before_acquire` has let
            // a dropped transaction's own rollback finish first), so the pool heals once the
            // disk has room again.
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    if sqlx::Connection::is_in_transaction(conn) {
                        tracing::warn!(
                            "a database connection was left inside a failed transaction: replaced"
                        );
                        return Ok(false);
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| classify(e, &shown))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => classify(e, &shown),
                other => StoreError::Migrate(other.to_string()),
            })?;
        Ok(SqliteStore {
            pool,
            path: shown,
            seal: Seal::none(),
            wal: Some(Arc::new(checkpointer)),
        })
    }

    /// Opens a database that `carepath run` or `carepath enroll` made, for commands that
    /// only use one (`status`, `outbox`, `optout`): it creates nothing and migrates nothing,
    /// so pointing them at a wrong or empty file leaves that file as it was.
    pub async fn open_existing(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let not_ready = |reason: String| StoreError::NotReady {
            path: shown.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(not_ready(
                "there is no such file: run `carepath run` or `carepath enroll` first, or pass --db".into(),
            ));
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| not_ready(e.to_string()))?
            .filename(path)
            .create_if_missing(false)
            .foreign_keys(true)
            .pragma("secure_delete", "ON")
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| classify(e, &shown))?;
        let applied: Vec<i64> = match sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        {
            Ok(v) => v,
            Err(e) => {
                pool.close().await;
                return Err(match classify(e, &shown) {
                    StoreError::Database(_) => not_ready(
                        "it holds no carepath tables: run `carepath run` or `carepath enroll` to make one, or pass --db"
                            .into(),
                    ),
                    other => other,
                });
            }
        };
        let known: Vec<i64> = sqlx::migrate!("./migrations/sqlite")
            .iter()
            .map(|m| m.version)
            .collect();
        if applied != known {
            pool.close().await;
            return Err(not_ready(format!(
                "its schema is at version {}, this carepath's at {}: run `carepath run` once to bring it up to date",
                applied.last().copied().unwrap_or(0),
                known.last().copied().unwrap_or(0)
            )));
        }
        Ok(SqliteStore {
            pool,
            path: shown,
            seal: Seal::none(),
            wal: None,
        })
    }

    /// The file's path, as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The connection pool, for benchmarks that compare against raw SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        if let Some(wal) = &self.wal {
            wal.stop().await;
        }
        self.pool.close().await;
    }

    /// Checkpoints the write-ahead log now and returns once that is done; the log is otherwise
    /// checkpointed as it outgrows 4 MiB, beside the writers.
    pub async fn checkpoint(&self) {
        if let Some(wal) = &self.wal {
            wal.checkpoint().await;
        }
    }
}

/// Turns SQLite's error codes into errors an operator can act on.
fn classify(e: sqlx::Error, path: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            // SQLITE_NOTADB, SQLITE_CORRUPT
            Some("26") | Some("11") => {
                return StoreError::Corrupt {
                    path: path.into(),
                    reason: db.message().into(),
                };
            }
            // SQLITE_BUSY, SQLITE_LOCKED
            Some("5") | Some("6") | Some("517") => {
                return StoreError::Locked {
                    seconds: BUSY_TIMEOUT.as_secs(),
                };
            }
            // SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_PERM
            Some("14") | Some("8") | Some("3") => {
                return StoreError::Open {
                    path: path.into(),
                    reason: db.message().into(),
                };
            }
            _ => {}
        }
    }
    StoreError::Database(e)
}

/// Appends `column` (" AND pathway") and `IN (?, ?, …)` with `values` bound; an empty list
/// matches nothing.
fn push_in(q: &mut QueryBuilder<Sqlite>, column: &str, values: &[String]) {
    if values.is_empty() {
        q.push(" AND 0");
        return;
    }
    q.push(column).push(" IN (");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v.clone());
    }
    q.push(")");
}

/// Bytes the health probe writes: about what an enrolment or a batch of steps needs, so a disk
/// with room for the probe has room for real work. Random, since SQLite leaves a page that
/// would not change unwritten.
const HEALTH_PAD: i64 = 64 * 1024;

/// One line of a notice's provenance.
async fn log_line(
    tx: &mut SqliteTx,
    outbox_id: i64,
    at: Timestamp,
    status: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO outbox_log (outbox_id, at, status, detail) VALUES (?, ?, ?, ?)")
        .bind(outbox_id)
        .bind(ms(at))
        .bind(status)
        .bind(detail)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// `?, ?, ?` for an `IN (…)` list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Rows whose `id` is in `ids`: `select` is the statement up to `WHERE`.
async fn select_by_ids<T>(
    conn: &mut SqliteConnection,
    select: &str,
    ids: &[i64],
    row: impl Fn(&SqliteRow) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(ids.len());
    for run in shaped(ids) {
        // Fixed shapes, so the statement is cached (see [`SHAPES`]).
        let sql = format!("{select} WHERE id IN ({})", placeholders(run.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in run {
            q = q.bind(id);
        }
        // Each row is decoded as it arrives, while SQLite's thread reads the next.
        let mut rows = q.fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            out.push(row(&r)?);
        }
    }
    Ok(out)
}

/// Stores a contact; returns its row id.
async fn insert_contact(conn: &mut SqliteConnection, c: &Contact) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO contacts (name, email, phone, language, channel) VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&c.name)
    .bind(&c.email)
    .bind(&c.phone)
    .bind(&c.language)
    .bind(c.channel.map(Channel::as_str))
    .fetch_one(&mut *conn)
    .await?)
}

/// The directory, by role and pathway, with each entry's contact row.
async fn select_directory(conn: &mut SqliteConnection) -> Result<Vec<(i64, DirectoryEntry)>> {
    let rows = sqlx::query(
        "SELECT d.organisation, d.role, d.pathway, c.id, c.name, c.email, c.phone, c.language, c.channel \
         FROM directory d JOIN contacts c ON c.id = d.contact_id ORDER BY d.role, d.pathway",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let pathway: String = r.try_get("pathway")?;
            Ok((
                r.try_get("id")?,
                DirectoryEntry {
                    organisation: r.try_get("organisation")?,
                    role: r.try_get("role")?,
                    pathway: (!pathway.is_empty()).then_some(pathway),
                    contact: contact_row(r)?.1,
                },
            ))
        })
        .collect()
}

/// The instances with these ids, in id order.
async fn select_instances(
    conn: &mut SqliteConnection,
    ids: &[i64],
    seal: &Seal,
) -> Result<Vec<InstanceRow>> {
    let select = format!("SELECT {INSTANCE_COLUMNS} FROM instances");
    let mut rows = select_by_ids(conn, &select, ids, |r| instance_row(r, seal)).await?;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

async fn select_contacts(
    conn: &mut SqliteConnection,
    ids: &[i64],
) -> Result<BTreeMap<i64, Contact>> {
    let select = "SELECT id, name, email, phone, language, channel FROM contacts";
    Ok(select_by_ids(conn, select, ids, contact_row)
        .await?
        .into_iter()
        .collect())
}

impl SqliteStore {
    /// Seals families' fields and event payloads with `seal`'s key from now on, and opens
    /// those sealed before. Refuses a key other than the one the database was sealed with, and
    /// no key for a database that was sealed: either would fail on the first family read.
    pub async fn seal_with(mut self, seal: Seal) -> Result<Self> {
        let known: Option<String> =
            sqlx::query_scalar("SELECT key_check FROM installation LIMIT 1")
                .fetch_one(&self.pool)
                .await?;
        if let Some(check) = seal.reconcile(known.as_deref(), &self.path)? {
            sqlx::query("UPDATE installation SET key_check = ?")
                .bind(check)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, &self.path))?;
        }
        self.seal = seal;
        Ok(self)
    }
}

impl Storage for SqliteStore {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx> {
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify(e, &self.path))?;
        Ok(SqliteTx {
            tx,
            path: self.path.clone(),
            seal: self.seal.clone(),
            wal: self.wal.clone(),
        })
    }

    async fn snapshot(&self) -> Result<Option<SqliteTx>> {
        // A deferred transaction: in WAL mode it reads one snapshot while the writer goes on.
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify(e, &self.path))?;
        Ok(Some(SqliteTx {
            tx,
            path: self.path.clone(),
            seal: self.seal.clone(),
            // It writes nothing.
            wal: None,
        }))
    }

    async fn put_pathway(
        &self,
        source: &PathwaySource,
        pathway: &str,
        version: u32,
        now: Timestamp,
    ) -> Result<Stored> {
        let hash = content_hash(source);
        let mut tx = self.begin().await?;
        let existing =
            sqlx::query("SELECT id, hash FROM pathway_versions WHERE pathway = ? AND version = ?")
                .bind(pathway)
                .bind(i64::from(version))
                .fetch_optional(&mut *tx.tx)
                .await?;
        if let Some(row) = existing {
            let stored: String = row.try_get("hash")?;
            if stored != hash {
                return Err(StoreError::VersionChanged {
                    pathway: pathway.into(),
                    version,
                });
            }
            return Ok(Stored::Unchanged(row.try_get("id")?));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO pathway_versions (pathway, version, hash, source, loaded_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(pathway)
        .bind(i64::from(version))
        .bind(&hash)
        .bind(to_json(source))
        .bind(ms(now))
        .fetch_one(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(Stored::Added(id))
    }

    async fn pathways(&self) -> Result<Vec<StoredPathway>> {
        let rows = sqlx::query(
            "SELECT id, pathway, version, hash, source, loaded_at FROM pathway_versions ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pathway_row).collect()
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT min(due) FROM timers t WHERE NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id)",
        )
            .fetch_one(&self.pool)
            .await?;
        due.map(|d| ts(d, "timer")).transpose()
    }

    async fn instances_by_ref(&self, reference: &str) -> Result<Vec<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE ref = ? ORDER BY id");
        sqlx::query(AssertSqlSafe(sql))
            .bind(reference)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| instance_row(r, &self.seal))
            .collect()
    }

    async fn all_instances(&self) -> Result<Vec<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY id");
        sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| instance_row(r, &self.seal))
            .collect()
    }

    async fn instance(&self, id: i64) -> Result<Option<InstanceRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(select_instances(&mut conn, &[id], &self.seal)
            .await?
            .into_iter()
            .next())
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRow>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE 1 = 1"
        ));
        if let Some(pathways) = &filter.pathways {
            push_in(&mut q, " AND pathway", pathways);
        }
        if let Some(state) = &filter.state {
            q.push(" AND state = ").push_bind(state.clone());
        }
        if let Some(owner) = &filter.owner {
            q.push(" AND owner = ").push_bind(owner.clone());
        }
        if let Some(after) = filter.after {
            q.push(" AND id > ").push_bind(after);
        }
        if filter.active_only {
            q.push(" AND status = 'active'");
        }
        if let Some(before) = filter.enrolled_before {
            q.push(" AND created_at < ").push_bind(ms(before));
        }
        if let Some(reference) = &filter.reference {
            q.push(" AND ref = ").push_bind(reference.clone());
        }
        if let Some(prefix) = &filter.reference_prefix {
            // A range, not LIKE: the reference's index serves it, and `%` or `_` in what was
            // typed mean themselves.
            q.push(" AND ref >= ")
                .push_bind(prefix.clone())
                .push(" AND ref < ")
                .push_bind(format!("{prefix}\u{10FFFF}"));
        }
        if filter.overdue_only {
            q.push(" AND overdue_since IS NOT NULL");
        }
        if filter.oldest_overdue_first {
            q.push(" AND overdue_since IS NOT NULL ORDER BY overdue_since, id LIMIT ");
        } else {
            q.push(" ORDER BY id LIMIT ");
        }
        q.push_bind(i64::from(filter.limit));
        q.build()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| instance_row(r, &self.seal))
            .collect()
    }

    async fn set_held(&self, instance_id: i64, by: Option<&str>, now: Timestamp) -> Result<bool> {
        let done = match by {
            Some(by) => {
                sqlx::query(
                    "INSERT INTO holds (instance_id, since, by) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .bind(instance_id)
                .bind(ms(now))
                .bind(by)
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM holds WHERE instance_id = ?")
                    .bind(instance_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }

    async fn instance_events(&self, instance_id: i64) -> Result<Vec<EventRecord>> {
        sqlx::query("SELECT * FROM events WHERE instance_id = ? ORDER BY id")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| event_row(r, &self.seal))
            .collect()
    }

    async fn kept_response(&self, caller: &str, key: &str) -> Result<Option<KeptResponse>> {
        let row = sqlx::query(
            "SELECT fingerprint, status, body FROM idempotency WHERE caller = ? AND key = ?",
        )
        .bind(caller)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(KeptResponse {
                fingerprint: r.try_get("fingerprint")?,
                status: r.try_get::<i64, _>("status")? as u16,
                body: r.try_get("body")?,
            })
        })
        .transpose()
    }

    async fn keep_response(
        &self,
        caller: &str,
        key: &str,
        response: &KeptResponse,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO idempotency (caller, key, fingerprint, status, body, created_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(caller)
        .bind(key)
        .bind(&response.fingerprint)
        .bind(i64::from(response.status))
        .bind(&response.body)
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let count = |r: &SqliteRow| -> Result<u64> { Ok(r.try_get::<i64, _>("n")?.max(0) as u64) };
        let mut stats = Stats::default();
        for r in sqlx::query(
            "SELECT pathway, status, count(*) AS n FROM instances GROUP BY pathway, status ORDER BY pathway, status",
        )
        .fetch_all(&self.pool)
        .await?
        {
            stats
                .instances
                .push((r.try_get("pathway")?, r.try_get("status")?, count(&r)?));
        }
        for r in
            sqlx::query("SELECT status, count(*) AS n FROM outbox GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?
        {
            stats.outbox.push((r.try_get("status")?, count(&r)?));
        }
        let r = sqlx::query("SELECT count(*) AS n FROM holds")
            .fetch_one(&self.pool)
            .await?;
        stats.held = count(&r)?;
        let r = sqlx::query("SELECT count(*) AS n FROM timers")
            .fetch_one(&self.pool)
            .await?;
        stats.timers = count(&r)?;
        let r = sqlx::query(
            "SELECT count(*) AS n, min(due) AS oldest FROM timers t WHERE due <= ? \
             AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id)",
        )
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        stats.timers_due = count(&r)?;
        stats.oldest_due = r
            .try_get::<Option<i64>, _>("oldest")?
            .map(|t| ts(t, "timer"))
            .transpose()?;
        Ok(stats)
    }

    async fn history(&self, instance_id: i64) -> Result<Vec<History>> {
        sqlx::query("SELECT seq, at, from_state, to_state, cause, notes FROM history WHERE instance_id = ? ORDER BY seq")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(history_row)
            .collect()
    }

    async fn timers(&self, instance_id: i64) -> Result<Vec<DueTimer>> {
        sqlx::query(
            "SELECT instance_id, key, due FROM timers WHERE instance_id = ? ORDER BY due, key",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(timer_row)
        .collect()
    }

    async fn events(&self, reference: &str) -> Result<Vec<EventRecord>> {
        sqlx::query("SELECT * FROM events WHERE ref = ? ORDER BY id")
            .bind(reference)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| event_row(r, &self.seal))
            .collect()
    }

    async fn outbox(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("{OUTBOX_SELECT} WHERE 1 = 1"));
        if let Some(at) = filter.due_by {
            q.push(" AND o.not_before <= ").push_bind(ms(at));
        }
        if let Some(s) = filter.status {
            // Held rows are found from the holds, which are few: the status index would have
            // SQLite walk every queued row instead (`+` keeps it off that index).
            q.push(if filter.held_only {
                " AND +o.status = "
            } else {
                " AND o.status = "
            })
            .push_bind(s.as_str());
        }
        if let Some(id) = filter.instance_id {
            q.push(" AND o.instance_id = ").push_bind(id);
        }
        if let Some(pathways) = &filter.pathways {
            push_in(&mut q, " AND i.pathway", pathways);
        }
        if filter.skip_held {
            q.push(" AND ").push(not_held());
        }
        if filter.held_only {
            q.push(" AND ").push(held());
        }
        q.push(" ORDER BY o.not_before, o.id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| outbox_row(r, &self.seal))
            .collect()
    }

    async fn contacts(&self, ids: &[i64]) -> Result<BTreeMap<i64, Contact>> {
        let mut conn = self.pool.acquire().await?;
        select_contacts(&mut conn, ids).await
    }

    async fn outbox_log(&self, outbox_id: i64) -> Result<Vec<OutboxLogEntry>> {
        let what = format!("outbox log of row {outbox_id}");
        sqlx::query("SELECT at, status, detail FROM outbox_log WHERE outbox_id = ? ORDER BY rowid")
            .bind(outbox_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(OutboxLogEntry {
                    at: ts(r.try_get("at")?, &what)?,
                    status: r.try_get("status")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn replace_directory(&self, entries: &[DirectoryEntry]) -> Result<usize> {
        let mut tx = self.begin().await?;
        // Contacts of the old directory stay: instances may point at them.
        sqlx::query("DELETE FROM directory")
            .execute(&mut *tx.tx)
            .await?;
        for e in entries {
            let contact = insert_contact(&mut tx.tx, &e.contact).await?;
            sqlx::query(
                "INSERT INTO directory (organisation, role, pathway, contact_id) VALUES (?, ?, ?, ?)",
            )
            .bind(&e.organisation)
            .bind(&e.role)
            .bind(e.pathway.as_deref().unwrap_or(""))
            .bind(contact)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(entries.len())
    }

    async fn directory(&self) -> Result<Vec<DirectoryEntry>> {
        let mut conn = self.pool.acquire().await?;
        Ok(select_directory(&mut conn)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    async fn set_texts(&self, texts: &[(i64, NoticeText)]) -> Result<()> {
        if texts.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for run in shaped(texts) {
            let mut q =
                QueryBuilder::<Sqlite>::new("WITH v(id, language, subject, body, html) AS (");
            q.push_values(run, |mut b, (id, t)| {
                b.push_bind(id)
                    .push_bind(&t.language)
                    .push_bind(&t.subject)
                    .push_bind(&t.body)
                    .push_bind(&t.html);
            });
            // Rendered once: the values it was rendered from are not kept beside the text.
            q.push(
                ") UPDATE outbox SET language = v.language, subject = v.subject, body = v.body, \
                 html = v.html, data = NULL FROM v WHERE outbox.id = v.id AND outbox.body IS NULL",
            );
            q.build().execute(&mut *tx.tx).await?;
        }
        tx.commit().await
    }

    async fn record_deliveries(&self, deliveries: &[Delivery], now: Timestamp) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in shaped(deliveries) {
            let rows: Vec<DeliveryRow> = chunk.iter().map(DeliveryRow::of).collect();
            let mut q = QueryBuilder::<Sqlite>::new(
                "WITH v(id, status, not_before, attempted, detail) AS (",
            );
            q.push_values(&rows, |mut b, r| {
                b.push_bind(r.id)
                    .push_bind(r.status)
                    .push_bind(r.not_before)
                    .push_bind(r.attempted)
                    .push_bind(r.detail);
            });
            q.push(") UPDATE outbox SET status = v.status, not_before = coalesce(v.not_before, outbox.not_before), \
                    attempts = outbox.attempts + v.attempted, \
                    last_error = CASE WHEN v.status = 'sent' THEN outbox.last_error ELSE v.detail END, \
                    claimed_by = NULL, lease_until = NULL, updated_at = ");
            q.push_bind(ms(now));
            q.push(
                " FROM v WHERE outbox.id = v.id AND outbox.status = 'queued' RETURNING outbox.id",
            );
            let applied: std::collections::HashSet<i64> = q
                .build_query_scalar::<i64>()
                .fetch_all(&mut *tx.tx)
                .await?
                .into_iter()
                .collect();
            let mut log = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outbox_log (outbox_id, at, status, detail) ",
            );
            log.push_values(&rows, |mut b, r| {
                let (shown, detail) = r.log_line(&applied);
                b.push_bind(r.id)
                    .push_bind(ms(now))
                    .push_bind(shown)
                    .push_bind(detail);
            });
            log.build().execute(&mut *tx.tx).await?;
        }
        tx.commit().await
    }

    async fn erase(&self, ids: &[i64], reason: &str, now: Timestamp) -> Result<Erased> {
        if ids.is_empty() {
            return Ok(Erased::default());
        }
        let mut erased = Erased::default();
        let mut tx = self.begin().await?;
        for chunk in ids.chunks(MAX_BINDS / 4) {
            let list = placeholders(chunk.len());
            let run = |sql: String| {
                let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
                for id in chunk {
                    q = q.bind(id);
                }
                q
            };
            let refs: Vec<String> = {
                let mut q = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT DISTINCT ref FROM instances WHERE id IN ({list}) AND erased_at IS NULL"
                )))
                .persistent(false);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(&mut *tx.tx).await?
            };
            // Contacts only these instances use; another family's stay.
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE contacts SET name = '(erased)', email = NULL, phone = NULL WHERE id IN ( \
                   SELECT CAST(j.value AS INTEGER) FROM instances i, json_each(i.roles) j WHERE i.id IN ({list}) \
                   EXCEPT SELECT CAST(j.value AS INTEGER) FROM instances i, json_each(i.roles) j \
                   WHERE i.id NOT IN ({list}) AND i.erased_at IS NULL)"
            )))
            .persistent(false);
            for id in chunk.iter().chain(chunk) {
                q = q.bind(id);
            }
            erased.contacts += q.execute(&mut *tx.tx).await?.rows_affected() as usize;
            erased.notices += run(format!(
                "UPDATE outbox SET address = NULL, subject = NULL, body = NULL, html = NULL, data = NULL, \
                 calendar = NULL, last_error = NULL, claimed_by = NULL, lease_until = NULL, \
                 status = CASE status WHEN 'queued' THEN 'skipped' ELSE status END \
                 WHERE instance_id IN ({list})"
            ))
            .execute(&mut *tx.tx)
            .await?
            .rows_affected() as usize;
            // Provenance lines may quote a server's answer: only the steps stay.
            run(format!(
                "UPDATE outbox_log SET detail = NULL WHERE outbox_id IN \
                 (SELECT id FROM outbox WHERE instance_id IN ({list}))"
            ))
            .execute(&mut *tx.tx)
            .await?;
            let mut log = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO outbox_log (outbox_id, at, status, detail) \
                 SELECT id, ?, 'erased', ? FROM outbox WHERE instance_id IN ({list})"
            )))
            .persistent(false)
            .bind(ms(now))
            .bind(reason);
            for id in chunk {
                log = log.bind(id);
            }
            log.execute(&mut *tx.tx).await?;
            erased.events += run(format!(
                "UPDATE events SET payload = '{{}}', reason = NULL, ref = 'erased:' || instance_id \
                 WHERE instance_id IN ({list})"
            ))
            .execute(&mut *tx.tx)
            .await?
            .rows_affected() as usize;
            for sql in [
                format!("DELETE FROM timers WHERE instance_id IN ({list})"),
                format!("DELETE FROM holds WHERE instance_id IN ({list})"),
            ] {
                run(sql).execute(&mut *tx.tx).await?;
            }
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE instances SET \
                   body = json_set(body, '$.fields', json('{{}}'), '$.appointments', json('{{}}'), \
                                   '$.timers', json('[]'), '$.status', 'finished'), \
                   ref = 'erased:' || id, status = 'finished', erased_at = ?, updated_at = ?, overdue_since = NULL \
                 WHERE id IN ({list}) AND erased_at IS NULL"
            )))
            .persistent(false)
            .bind(ms(now))
            .bind(ms(now));
            for id in chunk {
                q = q.bind(id);
            }
            erased.instances += q.execute(&mut *tx.tx).await?.rows_affected() as usize;
            // Rejected events that never reached an instance, and kept API answers, by the
            // family's reference, once no instance keeps it.
            for r in refs {
                let still: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE ref = ?")
                    .bind(&r)
                    .fetch_one(&mut *tx.tx)
                    .await?;
                if still > 0 {
                    continue;
                }
                erased.events += sqlx::query(
                    "UPDATE events SET payload = '{}', reason = NULL, ref = 'erased' \
                     WHERE ref = ? AND instance_id IS NULL",
                )
                .bind(&r)
                .execute(&mut *tx.tx)
                .await?
                .rows_affected() as usize;
                sqlx::query("DELETE FROM idempotency WHERE instr(CAST(body AS TEXT), ?) > 0")
                    .bind(format!("\"{r}\""))
                    .execute(&mut *tx.tx)
                    .await?;
            }
        }
        tx.commit().await?;
        // The old versions of the rows are in the write-ahead log until it is checkpointed
        // and emptied. Readers can hold it back; then the next checkpoint does it.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "the write-ahead log was not emptied after an erasure");
        }
        Ok(erased)
    }

    async fn finished_before(
        &self,
        version_id: i64,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM instances WHERE pathway_version_id = ? AND status = 'finished' \
             AND erased_at IS NULL AND updated_at < ? ORDER BY updated_at LIMIT ?",
        )
        .bind(version_id)
        .bind(ms(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, ref, instance_id, detail, outcome) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(ms(e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.reference)
        .bind(e.instance_id)
        .bind(&e.detail)
        .bind(&e.outcome)
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, &self.path))?;
        Ok(())
    }

    async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT at, actor, action, ref, instance_id, detail, outcome FROM audit WHERE 1 = 1",
        );
        if let Some(r) = &filter.reference {
            q.push(" AND ref = ").push_bind(r.clone());
        }
        if let Some(t) = filter.since {
            q.push(" AND at >= ").push_bind(ms(t));
        }
        q.push(" ORDER BY at, id");
        if let Some(n) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(n));
        }
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_row)
            .collect()
    }

    async fn check_writes(&self, now: Timestamp) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO health (id, checked_at, pad) VALUES (1, ?, randomblob(?)) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, pad = excluded.pad",
        )
        .bind(ms(now))
        .bind(HEALTH_PAD)
        .execute(&mut *tx.tx)
        .await
        .map_err(|e| classify(e, &self.path))?;
        tx.commit().await
    }

    async fn claim_notices(
        &self,
        worker: &str,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxRow>> {
        let mut tx = self.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE outbox SET claimed_by = ?, lease_until = ? WHERE id IN ( \
               SELECT o.id FROM outbox o WHERE o.status = 'queued' AND o.not_before <= ? \
               AND (o.lease_until IS NULL OR o.lease_until <= ?) AND {} \
               ORDER BY o.not_before, o.id LIMIT ?) RETURNING id",
            not_held()
        )))
        .bind(worker)
        .bind(ms(until))
        .bind(ms(now))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx.tx)
        .await?;
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BINDS) {
            let sql = format!(
                "{OUTBOX_SELECT} WHERE o.id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&mut *tx.tx).await? {
                rows.push(outbox_row(&r, &self.seal)?);
            }
        }
        tx.commit().await?;
        rows.sort_by_key(|r| (r.not_before, r.id));
        Ok(rows)
    }

    async fn next_notice(&self) -> Result<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(max(not_before, coalesce(lease_until, 0))) FROM outbox o \
             WHERE o.status = 'queued' AND {}",
            not_held()
        )))
        .fetch_one(&self.pool)
        .await?;
        next.map(|t| ts(t, "outbox")).transpose()
    }

    async fn record_receipt(
        &self,
        report: &ReceiptReport,
        now: Timestamp,
    ) -> Result<ReceiptOutcome> {
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT id, status, receipt FROM outbox WHERE key = ?")
            .bind(&report.key)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let Some(row) = row else {
            return Ok(ReceiptOutcome::Missing);
        };
        let id: i64 = row.try_get("id")?;
        let status: String = row.try_get("status")?;
        let known = row
            .try_get::<Option<String>, _>("receipt")?
            .and_then(|r| ReceiptState::parse(&r));
        // Reports can arrive out of order: a final one stands.
        if let Some(state) = known.filter(|k| k.is_final()) {
            return Ok(ReceiptOutcome::Stale { id, state });
        }
        let state = report.state;
        sqlx::query("UPDATE outbox SET receipt = ?, receipt_at = ?, updated_at = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(ms(now))
            .bind(ms(now))
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        log_line(
            &mut tx,
            id,
            now,
            &format!("receipt {}", state.as_str()),
            &report.detail,
        )
        .await?;
        let dead = state.is_failure() && status == NoticeStatus::Sent.as_str();
        if dead {
            let reason = super::receipt_failure(state, &report.detail, id);
            sqlx::query("UPDATE outbox SET status = 'dead', last_error = ? WHERE id = ?")
                .bind(&reason)
                .bind(id)
                .execute(&mut *tx.tx)
                .await?;
            log_line(&mut tx, id, now, NoticeStatus::Dead.as_str(), &reason).await?;
        }
        tx.commit().await?;
        Ok(ReceiptOutcome::Recorded { id, dead })
    }

    async fn requeue(&self, outbox_id: i64, now: Timestamp) -> Result<Requeue> {
        let mut tx = self.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM outbox WHERE id = ?")
            .bind(outbox_id)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let Some(status) = status else {
            return Ok(Requeue::Missing);
        };
        let status = NoticeStatus::parse(&status).unwrap_or(NoticeStatus::Queued);
        if !matches!(status, NoticeStatus::Dead | NoticeStatus::Skipped) {
            return Ok(Requeue::NotRetryable(status));
        }
        sqlx::query(
            "UPDATE outbox SET status = 'queued', attempts = 0, not_before = ?, updated_at = ?, \
             claimed_by = NULL, lease_until = NULL WHERE id = ?",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(outbox_id)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox_log (outbox_id, at, status, detail) VALUES (?, ?, 'queued', 'retry requested by an operator')",
        )
        .bind(outbox_id)
        .bind(ms(now))
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(Requeue::Queued)
    }

    async fn set_opt_out(
        &self,
        address: &str,
        channel: Channel,
        opted_out: bool,
        source: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let done = if opted_out {
            sqlx::query(
                "INSERT INTO opt_outs (address, channel, at, source) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(address)
            .bind(channel.as_str())
            .bind(ms(now))
            .bind(source)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query("DELETE FROM opt_outs WHERE address = ? AND channel = ?")
                .bind(address)
                .bind(channel.as_str())
                .execute(&self.pool)
                .await?
        };
        Ok(done.rows_affected() > 0)
    }

    async fn installation(&self) -> Result<String> {
        Ok(sqlx::query_scalar("SELECT id FROM installation LIMIT 1")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn remember_inbound(
        &self,
        key: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM inbound_seen WHERE at < ?")
            .bind(ms(forget_before))
            .execute(&mut *tx.tx)
            .await?;
        let added =
            sqlx::query("INSERT INTO inbound_seen (key, at) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(key)
                .bind(ms(now))
                .execute(&mut *tx.tx)
                .await?
                .rows_affected()
                > 0;
        tx.commit().await?;
        Ok(added)
    }

    async fn opt_out_source(&self, address: &str, channel: Channel) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT source FROM opt_outs WHERE address = ? AND channel = ?")
                .bind(address)
                .bind(channel.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn address_pathways(&self, address: &str, channel: Channel) -> Result<Vec<String>> {
        // Addresses are stored as given; opt-outs are keyed normalised (an email in lower case,
        // a phone number as `+` and digits), so the comparison normalises the stored one.
        let matches = match channel {
            Channel::Email => "lower(trim(c.email)) = ?",
            Channel::Sms => {
                "replace(replace(replace(replace(replace(c.phone, ' ', ''), '-', ''), '(', ''), ')', ''), '.', '') = ?"
            }
        };
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT DISTINCT i.pathway FROM instances i, json_each(i.roles) r \
             JOIN contacts c ON c.id = r.value WHERE {matches} ORDER BY i.pathway"
        )))
        .bind(address)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn opted_out(&self, addresses: &[(String, Channel)]) -> Result<Vec<(String, Channel)>> {
        let mut out = Vec::new();
        for chunk in addresses.chunks(MAX_BINDS / 2) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT address, channel FROM opt_outs WHERE (address, channel) IN (",
            );
            q.push_values(chunk, |mut b, (a, c)| {
                b.push_bind(a).push_bind(c.as_str());
            });
            q.push(")");
            for r in q.build().persistent(false).fetch_all(&self.pool).await? {
                if let Some(c) = channel(r.try_get("channel")?) {
                    out.push((r.try_get("address")?, c));
                }
            }
        }
        Ok(out)
    }
}

/// A SQLite write transaction.
pub struct SqliteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    path: String,
    seal: Seal,
    wal: Option<Arc<Checkpointer>>,
}

impl Tx for SqliteTx {
    async fn due_timers(
        &mut self,
        now: Timestamp,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        let q = match after {
            None => sqlx::query(
                "SELECT instance_id, key, due FROM timers t WHERE due <= ? \
                 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id) \
                 ORDER BY due, instance_id, key LIMIT ?",
            )
            .bind(ms(now)),
            // `due >= ?` as well as the row comparison: the index is then read from there on.
            Some(a) => sqlx::query(
                "SELECT instance_id, key, due FROM timers t WHERE due <= ? AND due >= ? \
                 AND (due, instance_id, key) > (?, ?, ?) \
                 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id) \
                 ORDER BY due, instance_id, key LIMIT ?",
            )
            .bind(ms(now))
            .bind(ms(a.due))
            .bind(ms(a.due))
            .bind(a.instance_id)
            .bind(&a.key),
        };
        q.bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(timer_row)
            .collect()
    }

    async fn instances(&mut self, ids: &[i64]) -> Result<Vec<InstanceRow>> {
        select_instances(&mut self.tx, ids, &self.seal).await
    }

    async fn directory(&mut self) -> Result<Vec<(i64, DirectoryEntry)>> {
        select_directory(&mut self.tx).await
    }

    async fn active_instances(&mut self, reference: &str) -> Result<Vec<InstanceRow>> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE ref = ? AND status = 'active' ORDER BY id"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(reference)
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(|r| instance_row(r, &self.seal))
            .collect()
    }

    async fn contacts(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, Contact>> {
        select_contacts(&mut self.tx, ids).await
    }

    async fn events_by_key(&mut self, keys: &[String]) -> Result<BTreeMap<String, EventRecord>> {
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(MAX_BINDS) {
            let sql = format!(
                "SELECT * FROM events WHERE idempotency_key IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for k in chunk {
                q = q.bind(k);
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                let e = event_row(&r, &self.seal)?;
                out.insert(e.key.clone(), e);
            }
        }
        Ok(out)
    }

    async fn write(&mut self, changes: Changes) -> Result<Vec<i64>> {
        let now = changes.now;
        let conn = &mut *self.tx;

        // Rows other rows point at come first, one at a time: there are few of them.
        let mut contact_ids = Vec::with_capacity(changes.contacts.len());
        for c in &changes.contacts {
            contact_ids.push(insert_contact(conn, c).await?);
        }
        let contact = |r: ContactRef| match r {
            ContactRef::Id(id) => id,
            ContactRef::New(i) => contact_ids[i],
        };
        let mut instance_ids: Vec<i64> = Vec::with_capacity(changes.new_instances.len());
        for n in &changes.new_instances {
            let roles: BTreeMap<&String, i64> =
                n.roles.iter().map(|(k, v)| (k, contact(*v))).collect();
            let parent = n.parent.map(|p| match p {
                Target::Id(id) => id,
                Target::New(i) => instance_ids[i],
            });
            let at = ms(n.instance.entered_at);
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO instances (ref, pathway, pathway_version_id, state, owner, status, seq, body, roles, parent_id, created_at, updated_at, overdue_since) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&n.reference)
            .bind(&n.pathway)
            .bind(n.pathway_version_id)
            .bind(&n.instance.state)
            .bind(&n.instance.owner)
            .bind(status_str(&n.instance))
            .bind(n.instance.seq as i64)
            .bind(sealed_body(&self.seal, &n.instance)?)
            .bind(to_json(&roles))
            .bind(parent)
            .bind(at)
            .bind(at)
            .bind(n.instance.overdue_since().map(ms))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| {
                // From a snapshot, a family that has since started this pathway by another
                // way is a change the snapshot missed: the batch is refused and read again.
                let taken = e
                    .as_database_error()
                    .is_some_and(|d| d.is_unique_violation());
                match parent {
                    Some(p) if taken && changes.from_snapshot => StoreError::Conflict(p),
                    _ => e.into(),
                }
            })?;
            instance_ids.push(id);
        }
        let target = |t: Target| match t {
            Target::Id(id) => id,
            Target::New(i) => instance_ids[i],
        };

        // The few rows of rare kinds go first: nothing below depends on them, and queued
        // notices of earlier steps that a step made stale are skipped before this batch's
        // notices go in.
        for r in &changes.readdressed {
            let done = sqlx::query(
                "UPDATE outbox SET contact_id = ?, channel = ?, address = ?, status = 'queued', attempts = 0, \
                 last_error = NULL, not_before = ?, updated_at = ?, claimed_by = NULL, lease_until = NULL \
                 WHERE id = ? AND status = 'dead' AND body IS NULL",
            )
            .bind(contact(r.contact))
            .bind(r.channel.as_str())
            .bind(&r.address)
            .bind(ms(now))
            .bind(ms(now))
            .bind(r.outbox_id)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() > 0 {
                sqlx::query(
                    "INSERT INTO outbox_log (outbox_id, at, status, detail) VALUES (?, ?, 'queued', ?)",
                )
                .bind(r.outbox_id)
                .bind(ms(now))
                .bind(&r.reason)
                .execute(&mut *conn)
                .await?;
            }
        }
        for w in &changes.withdrawals {
            let (which, topic) = match &w.which {
                Withdrawn::Family => ("family = 1", None),
                Withdrawn::All => ("1 = 1", None),
                Withdrawn::Topic(t) => ("topic = ?", Some(t)),
            };
            let queued =
                format!("FROM outbox WHERE instance_id = ? AND status = 'queued' AND {which}");
            let mut log = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO outbox_log (outbox_id, at, status, detail) SELECT id, ?, 'skipped', ? {queued}"
            )))
            .bind(ms(now))
            .bind(&w.reason)
            .bind(w.instance_id);
            if let Some(t) = topic {
                log = log.bind(t);
            }
            log.execute(&mut *conn).await?;
            let mut skip = sqlx::query(AssertSqlSafe(format!(
                "UPDATE outbox SET status = 'skipped', last_error = ?, updated_at = ? WHERE id IN (SELECT id {queued})"
            )))
            .bind(&w.reason)
            .bind(ms(now))
            .bind(w.instance_id);
            if let Some(t) = topic {
                skip = skip.bind(t);
            }
            skip.execute(&mut *conn).await?;
        }

        // The bulk of a batch: multi-row statements, each built while the one before it runs
        // on the connection's thread (see `run_built`).
        let mut builds: Vec<Build<'_>> = Vec::new();
        // An instance that stays active is written without its status: SQLite then leaves the
        // index of active families by reference alone, instead of deleting and inserting the
        // same entry for every step. No step makes a finished instance active again; a row
        // that is not active fails the update as a conflict rather than be written so.
        let (staying, finishing): (Vec<&InstanceUpdate>, Vec<&InstanceUpdate>) = changes
            .updates
            .iter()
            .partition(|u| u.instance.status == Status::Active);
        let snapshot = changes.from_snapshot;
        for (updates, status) in [(staying, false), (finishing, true)] {
            let chunks: Vec<Vec<&InstanceUpdate>> =
                shaped(&updates).map(<[&InstanceUpdate]>::to_vec).collect();
            for chunk in chunks {
                let seal = &self.seal;
                builds.push(Box::new(move || {
                    // A NULL role map keeps the row's: most steps assign no contacts.
                    let tail = format!(
                        ") UPDATE instances SET {}state = v.state, owner = v.owner, seq = v.seq, \
                         body = v.body, roles = COALESCE(v.roles, instances.roles), \
                         pathway_version_id = COALESCE(v.version, instances.pathway_version_id), updated_at = v.updated_at, \
                         overdue_since = v.overdue_since \
                         FROM v WHERE instances.id = v.id AND instances.seq = v.expected{}",
                        if status { "status = v.status, " } else { "" },
                        match (status, snapshot) {
                            (false, false) => " AND instances.status = 'active'",
                            (true, false) => "",
                            (false, true) => {
                                " AND instances.status = 'active' AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = v.id)"
                            }
                            (true, true) => {
                                " AND instances.erased_at IS NULL AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = v.id)"
                            }
                        },
                    );
                    let sql = multi_row(
                        "WITH v(id, expected, state, owner, status, seq, body, roles, version, updated_at, overdue_since) AS (",
                        11,
                        chunk.len(),
                        &tail,
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for u in &chunk {
                        let roles = u.roles.as_ref().map(|r| {
                            to_json(
                                &r.iter()
                                    .map(|(k, v)| (k, contact(*v)))
                                    .collect::<BTreeMap<&String, i64>>(),
                            )
                        });
                        q = q
                            .bind(u.id)
                            .bind(u.expected_seq as i64)
                            .bind(&u.instance.state)
                            .bind(&u.instance.owner)
                            .bind(status_str(&u.instance))
                            .bind(u.instance.seq as i64)
                            .bind(sealed_body(seal, &u.instance)?)
                            .bind(roles)
                            .bind(u.pathway_version_id)
                            .bind(ms(now))
                            .bind(u.instance.overdue_since().map(ms));
                    }
                    // Name one instance that moved: find it by its seq.
                    let first = chunk.first().map(|u| u.id).unwrap_or_default();
                    Ok((q, Some((chunk.len() as u64, first))))
                }));
            }
        }
        for chunk in shaped(&changes.timers_removed) {
            builds.push(Box::new(move || {
                let sql = multi_row(
                    "DELETE FROM timers WHERE (instance_id, key) IN (",
                    2,
                    chunk.len(),
                    ")",
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (id, key) in chunk {
                    q = q.bind(id).bind(key);
                }
                Ok((q, None))
            }));
        }
        for chunk in shaped(&changes.timers_added) {
            builds.push(Box::new(move || {
                let sql = multi_row(
                    "INSERT INTO timers (instance_id, key, due, purpose) ",
                    4,
                    chunk.len(),
                    "",
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (t, timer) in chunk {
                    q = q
                        .bind(target(*t))
                        .bind(&timer.key)
                        .bind(ms(timer.due))
                        .bind(to_json(&timer.purpose));
                }
                Ok((q, None))
            }));
        }
        for chunk in shaped(&changes.history) {
            builds.push(Box::new(move || {
                let sql = multi_row(
                    "INSERT INTO history (instance_id, seq, at, from_state, to_state, cause, notes) ",
                    7,
                    chunk.len(),
                    "",
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (t, h) in chunk {
                    q = q
                        .bind(target(*t))
                        .bind(h.seq as i64)
                        .bind(ms(h.at))
                        .bind(&h.from)
                        .bind(&h.to)
                        .bind(to_json(&h.cause))
                        .bind(to_json(&h.notes));
                }
                Ok((q, None))
            }));
        }
        for chunk in shaped(&changes.outbox) {
            let seal = &self.seal;
            builds.push(Box::new(move || {
                let sql = multi_row(
                    "INSERT INTO outbox (key, instance_id, pathway_version_id, template, role, family, contact_id, \
                     channel, address, language, subject, body, html, data, status, not_before, expires_at, topic, calendar, attempts, last_error, created_at, updated_at) ",
                    23,
                    chunk.len(),
                    "",
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (t, n) in chunk {
                    let id = target(*t);
                    let data = n
                        .data
                        .as_ref()
                        .map(|d| seal.seal_text("data", d))
                        .transpose()?;
                    q = q
                        .bind(format!("{id}:{}", n.key))
                        .bind(id)
                        .bind(n.pathway_version_id)
                        .bind(&n.template)
                        .bind(&n.role)
                        .bind(i64::from(n.family))
                        .bind(n.contact.map(contact))
                        .bind(n.channel.map(Channel::as_str))
                        .bind(&n.address)
                        .bind(&n.text.language)
                        .bind(&n.text.subject)
                        .bind(&n.text.body)
                        .bind(&n.text.html)
                        .bind(data)
                        .bind(n.status.as_str())
                        .bind(ms(n.not_before))
                        .bind(n.expires_at.map(ms))
                        .bind(&n.topic)
                        .bind(n.calendar.as_ref().map(to_json))
                        .bind(0i64)
                        .bind(&n.error)
                        .bind(ms(now))
                        .bind(ms(now));
                }
                // The log's first line is written by the trigger `outbox_log_created`.
                Ok((q, None))
            }));
        }
        for chunk in shaped(&changes.events) {
            let seal = &self.seal;
            builds.push(Box::new(move || {
                let sql = multi_row(
                    "INSERT INTO events (idempotency_key, ref, pathway, instance_id, name, payload, received_at, outcome, code, reason, seq, fingerprint) ",
                    12,
                    chunk.len(),
                    "",
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (t, e) in chunk {
                    q = q
                        .bind(&e.key)
                        .bind(&e.reference)
                        .bind(&e.pathway)
                        .bind(t.map(target).or(e.instance_id))
                        .bind(&e.name)
                        .bind(seal.seal_text("payload", &e.payload)?)
                        .bind(ms(e.received_at))
                        .bind(e.outcome.as_str())
                        .bind(&e.code)
                        .bind(&e.reason)
                        .bind(e.seq.map(|s| s as i64))
                        .bind(&e.fingerprint);
                }
                Ok((q, None))
            }));
        }
        run_built(conn, builds).await?;

        // After the updates: from a snapshot, an instance on hold is refused, and these holds
        // are the batch's own.
        for (id, by) in &changes.holds {
            sqlx::query(
                "INSERT INTO holds (instance_id, since, by) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(ms(now))
            .bind(by)
            .execute(&mut *conn)
            .await?;
        }
        Ok(instance_ids)
    }

    async fn commit(self) -> Result<()> {
        let path = self.path;
        self.tx.commit().await.map_err(|e| classify(e, &path))?;
        if let Some(wal) = &self.wal {
            wal.committed();
        }
        Ok(())
    }
}
