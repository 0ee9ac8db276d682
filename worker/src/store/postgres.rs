//! The PostgreSQL backend: for more than one machine, and several workers on one database.
//!
//! Work is claimed before it is done, so workers never do it twice:
//!
//! - a batch of due timers locks them and the instances it moves
//!   (`FOR UPDATE OF t, i SKIP LOCKED`): a second worker passes over them to the next due
//!   instances instead of waiting or conflicting, and an event for a family waits for the
//!   batch that moves it (`FOR UPDATE`);
//! - notices are claimed with a lease, as on SQLite, choosing rows no other worker is claiming
//!   (`FOR UPDATE SKIP LOCKED`).
//!
//! Statements bind arrays (`= ANY($1)`, `UNNEST`) rather than lists of placeholders, so each has
//! one text whatever the batch size, and its prepared form is cached per connection.
//!
//! Commits that arm timers or queue notices `NOTIFY` the channel [`WAKE_CHANNEL`]; workers
//! `LISTEN` on it ([`PgStore::listen`]) instead of polling.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, QueryBuilder, Row};

use carepath_engine::PathwaySource;
use carepath_engine::pathway::Channel;
use carepath_engine::step::History;

use super::rows::{
    DeliveryRow, INSTANCE_COLUMNS, OUTBOX_SELECT, audit_row, channel, contact_row, content_hash,
    event_row, held, history_row, instance_row, ms, not_held, outbox_row, pathway_row, sealed_body,
    status_str, timer_row, to_json, ts,
};
use super::seal::Seal;
use super::{
    AuditEntry, AuditFilter, Changes, Contact, ContactRef, Delivery, DirectoryEntry, DueTimer,
    Erased, EventRecord, InstanceFilter, InstanceRow, KeptResponse, NoticeStatus, NoticeText,
    OutboxFilter, OutboxLogEntry, OutboxRow, ReceiptOutcome, ReceiptReport, ReceiptState, Requeue,
    Result, Stats, Storage, StoreError, Stored, StoredPathway, Target, Tx, Withdrawn,
};

/// The channel a commit that arms timers or queues notices notifies, and workers listen on.
pub const WAKE_CHANNEL: &str = "carepath_wake";

/// How long a statement waits for a connection before the pool gives up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The URL without its password, for messages.
    shown: String,
    seal: Seal,
}

/// `url` as it may be shown: without a password.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{}", &rest[authority_end..])
        }
        None => url.into(),
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/postgres")
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`) and brings its schema up to date.
    /// The database itself must exist: a server's databases are made by its administrator.
    pub async fn open(url: &str) -> Result<Self> {
        let store = Self::connect(url, 16).await?;
        // sqlx takes an advisory lock around the migrations: workers starting together apply
        // them once.
        migrator().run(&store.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => classify(e, &store.shown),
            other => StoreError::Migrate(other.to_string()),
        })?;
        Ok(store)
    }

    /// Connects to a database that `carepath run` or `carepath enroll` prepared, for commands
    /// that only use one: it migrates nothing, and refuses a database without carepath's
    /// tables or with an older schema.
    pub async fn open_existing(url: &str) -> Result<Self> {
        let store = Self::connect(url, 2).await?;
        let not_ready = |reason: String| StoreError::NotReady {
            path: store.shown.clone(),
            reason,
        };
        let applied: Vec<i64> = match sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&store.pool)
        .await
        {
            Ok(v) => v,
            Err(_) => {
                return Err(not_ready(
                    "it holds no carepath tables: run `carepath run` or `carepath enroll` on it first, or pass --db"
                        .into(),
                ));
            }
        };
        let known: Vec<i64> = migrator().iter().map(|m| m.version).collect();
        if applied != known {
            return Err(not_ready(format!(
                "its schema is at version {}, this carepath's at {}: run `carepath run` once to bring it up to date",
                applied.last().copied().unwrap_or(0),
                known.last().copied().unwrap_or(0)
            )));
        }
        Ok(store)
    }

    async fn connect(url: &str, connections: u32) -> Result<Self> {
        let shown = without_password(url);
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| StoreError::Open {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection the server closed (a restart, a failover) is found out before it is
            // handed out and replaced, so the pool recovers by itself once the server is back.
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        Ok(PgStore {
            pool,
            shown,
            seal: Seal::none(),
        })
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The connection pool, for tests and benchmarks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A listener on [`WAKE_CHANNEL`]: it hears every commit that arms timers or queues
    /// notices, from any worker or command on this database.
    pub async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| classify(e, &self.shown))?;
        listener
            .listen(WAKE_CHANNEL)
            .await
            .map_err(|e| classify(e, &self.shown))?;
        Ok(listener)
    }

    /// Seals families' fields and event payloads with `seal`'s key from now on: see
    /// [`super::SqliteStore::seal_with`].
    pub async fn seal_with(mut self, seal: Seal) -> Result<Self> {
        let known: Option<String> =
            sqlx::query_scalar("SELECT key_check FROM installation LIMIT 1")
                .fetch_one(&self.pool)
                .await?;
        if let Some(check) = seal.reconcile(known.as_deref(), &self.shown)? {
            sqlx::query("UPDATE installation SET key_check = $1")
                .bind(check)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, &self.shown))?;
        }
        self.seal = seal;
        Ok(self)
    }
}

/// Makes a new, empty database `name` on the server at `server` (a URL of any database there
/// that the user may create databases from), dropping one of that name first; returns its URL.
/// For throwaway databases: tests, benchmarks, a copy's target.
pub async fn create_database(server: &str, name: &str) -> Result<String> {
    use sqlx::Connection;
    let shown = without_password(server);
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Open {
            path: shown,
            reason: format!("{name:?} is not a plain database name (letters, digits, _)"),
        });
    }
    let mut conn = PgConnection::connect(server)
        .await
        .map_err(|e| classify(e, &shown))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server, String::new()),
    };
    let (authority, _) = base.rsplit_once('/').unwrap_or((base, ""));
    Ok(format!("{authority}/{name}{query}"))
}

/// Turns PostgreSQL's errors into errors an operator can act on.
fn classify(e: sqlx::Error, shown: &str) -> StoreError {
    match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => StoreError::Open {
            path: shown.into(),
            reason: e.to_string(),
        },
        _ => StoreError::Database(e),
    }
}

async fn select_instances(
    conn: &mut PgConnection,
    ids: &[i64],
    seal: &Seal,
    lock: bool,
) -> Result<Vec<InstanceRow>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ANY($1) ORDER BY id{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| instance_row(r, seal))
        .collect()
}

async fn select_contacts(conn: &mut PgConnection, ids: &[i64]) -> Result<BTreeMap<i64, Contact>> {
    sqlx::query("SELECT id, name, email, phone, language, channel FROM contacts WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(contact_row)
        .collect()
}

async fn select_directory(conn: &mut PgConnection) -> Result<Vec<(i64, DirectoryEntry)>> {
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

async fn insert_contact(conn: &mut PgConnection, c: &Contact) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO contacts (name, email, phone, language, channel) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&c.name)
    .bind(&c.email)
    .bind(&c.phone)
    .bind(&c.language)
    .bind(c.channel.map(Channel::as_str))
    .fetch_one(&mut *conn)
    .await?)
}

async fn log_line(
    conn: &mut PgConnection,
    outbox_id: i64,
    at: Timestamp,
    status: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO outbox_log (outbox_id, at, status, detail) VALUES ($1, $2, $3, $4)")
        .bind(outbox_id)
        .bind(ms(at))
        .bind(status)
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Tells listening workers there is new work, when this transaction commits.
async fn wake(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Storage for PgStore {
    type Tx = PgTx;

    async fn begin(&self) -> Result<PgTx> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify(e, &self.shown))?;
        Ok(PgTx {
            tx,
            shown: self.shown.clone(),
            seal: self.seal.clone(),
        })
    }

    async fn snapshot(&self) -> Result<Option<PgTx>> {
        Ok(None)
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
        // Two workers loading the same pathway at once: the second waits for the first's row.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(pathway)
            .execute(&mut *tx.tx)
            .await?;
        let existing = sqlx::query(
            "SELECT id, hash FROM pathway_versions WHERE pathway = $1 AND version = $2",
        )
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
            "INSERT INTO pathway_versions (pathway, version, hash, source, loaded_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
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
        // `ORDER BY … LIMIT 1`, not `min()`: PostgreSQL answers `min` beside the holds'
        // anti-join by reading every timer (87 ms at 200,000), the first index entry in 0.1 ms.
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT due FROM timers t WHERE NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id) \
             ORDER BY due LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        due.map(|d| ts(d, "timer")).transpose()
    }

    async fn instances_by_ref(&self, reference: &str) -> Result<Vec<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE ref = $1 ORDER BY id");
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
        Ok(select_instances(&mut conn, &[id], &self.seal, false)
            .await?
            .into_iter()
            .next())
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRow>> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE true"
        ));
        if let Some(pathways) = &filter.pathways {
            q.push(" AND pathway = ANY(")
                .push_bind(pathways.clone())
                .push(")");
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
            // A range on the byte-ordered reference (COLLATE "C"): its index serves it, and `%`
            // or `_` in what was typed mean themselves.
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
                    "INSERT INTO holds (instance_id, since, by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(instance_id)
                .bind(ms(now))
                .bind(by)
                .execute(&self.pool)
                .await?
            }
            None => {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("DELETE FROM holds WHERE instance_id = $1")
                    .bind(instance_id)
                    .execute(&mut *tx)
                    .await?;
                // Its timers and notices may be due: wake the workers.
                wake(&mut tx).await?;
                tx.commit().await?;
                done
            }
        };
        Ok(done.rows_affected() > 0)
    }

    async fn instance_events(&self, instance_id: i64) -> Result<Vec<EventRecord>> {
        sqlx::query("SELECT * FROM events WHERE instance_id = $1 ORDER BY id")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| event_row(r, &self.seal))
            .collect()
    }

    async fn kept_response(&self, caller: &str, key: &str) -> Result<Option<KeptResponse>> {
        let row = sqlx::query(
            "SELECT fingerprint, status, body FROM idempotency WHERE caller = $1 AND key = $2",
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
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
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
        let count = |r: &PgRow| -> Result<u64> { Ok(r.try_get::<i64, _>("n")?.max(0) as u64) };
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
            "SELECT count(*) AS n, min(due) AS oldest FROM timers t WHERE due <= $1 \
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
        sqlx::query("SELECT seq, at, from_state, to_state, cause, notes FROM history WHERE instance_id = $1 ORDER BY seq")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(history_row)
            .collect()
    }

    async fn timers(&self, instance_id: i64) -> Result<Vec<DueTimer>> {
        sqlx::query(
            "SELECT instance_id, key, due FROM timers WHERE instance_id = $1 ORDER BY due, key",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(timer_row)
        .collect()
    }

    async fn events(&self, reference: &str) -> Result<Vec<EventRecord>> {
        sqlx::query("SELECT * FROM events WHERE ref = $1 ORDER BY id")
            .bind(reference)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| event_row(r, &self.seal))
            .collect()
    }

    async fn outbox(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>> {
        let mut q = QueryBuilder::<Postgres>::new(format!("{OUTBOX_SELECT} WHERE true"));
        if let Some(at) = filter.due_by {
            q.push(" AND o.not_before <= ").push_bind(ms(at));
        }
        if let Some(s) = filter.status {
            q.push(" AND o.status = ").push_bind(s.as_str());
        }
        if let Some(id) = filter.instance_id {
            q.push(" AND o.instance_id = ").push_bind(id);
        }
        if let Some(pathways) = &filter.pathways {
            q.push(" AND i.pathway = ANY(")
                .push_bind(pathways.clone())
                .push(")");
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
            .persistent(false)
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

    async fn outbox_log(&self, outbox_id: i64) -> Result<Vec<super::OutboxLogEntry>> {
        let what = format!("outbox log of row {outbox_id}");
        sqlx::query("SELECT at, status, detail FROM outbox_log WHERE outbox_id = $1 ORDER BY id")
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

    async fn erase(&self, ids: &[i64], reason: &str, now: Timestamp) -> Result<Erased> {
        if ids.is_empty() {
            return Ok(Erased::default());
        }
        let mut erased = Erased::default();
        let mut tx = self.begin().await?;
        let conn = &mut *tx.tx;
        let refs: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT ref FROM instances WHERE id = ANY($1) AND erased_at IS NULL",
        )
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        // Contacts only these instances use; another family's stay.
        erased.contacts += sqlx::query(
            "UPDATE contacts SET name = '(erased)', email = NULL, phone = NULL WHERE id IN ( \
               SELECT r.value::bigint FROM instances i, jsonb_each_text(i.roles::jsonb) r WHERE i.id = ANY($1) \
               EXCEPT SELECT r.value::bigint FROM instances i, jsonb_each_text(i.roles::jsonb) r \
               WHERE NOT (i.id = ANY($1)) AND i.erased_at IS NULL)",
        )
        .bind(ids)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
        erased.notices += sqlx::query(
            "UPDATE outbox SET address = NULL, subject = NULL, body = NULL, html = NULL, data = NULL, \
             calendar = NULL, last_error = NULL, claimed_by = NULL, lease_until = NULL, \
             status = CASE status WHEN 'queued' THEN 'skipped' ELSE status END \
             WHERE instance_id = ANY($1)",
        )
        .bind(ids)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
        // Provenance lines may quote a server's answer: only the steps stay.
        sqlx::query(
            "UPDATE outbox_log SET detail = NULL WHERE outbox_id IN \
             (SELECT id FROM outbox WHERE instance_id = ANY($1))",
        )
        .bind(ids)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO outbox_log (outbox_id, at, status, detail) \
             SELECT id, $2, 'erased', $3 FROM outbox WHERE instance_id = ANY($1) ORDER BY id",
        )
        .bind(ids)
        .bind(ms(now))
        .bind(reason)
        .execute(&mut *conn)
        .await?;
        erased.events += sqlx::query(
            "UPDATE events SET payload = '{}', reason = NULL, ref = 'erased:' || instance_id \
             WHERE instance_id = ANY($1)",
        )
        .bind(ids)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
        for sql in [
            "DELETE FROM timers WHERE instance_id = ANY($1)",
            "DELETE FROM holds WHERE instance_id = ANY($1)",
        ] {
            sqlx::query(sql).bind(ids).execute(&mut *conn).await?;
        }
        erased.instances += sqlx::query(
            "UPDATE instances SET \
               body = jsonb_set(jsonb_set(jsonb_set(jsonb_set(body::jsonb, '{fields}', '{}'), \
                      '{appointments}', '{}'), '{timers}', '[]'), '{status}', '\"finished\"')::text, \
               ref = 'erased:' || id, status = 'finished', erased_at = $2, updated_at = $2, overdue_since = NULL \
             WHERE id = ANY($1) AND erased_at IS NULL",
        )
        .bind(ids)
        .bind(ms(now))
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
        // Rejected events that never reached an instance, and kept API answers, by the
        // family's reference, once no instance keeps it.
        for r in refs {
            let still: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE ref = $1")
                .bind(&r)
                .fetch_one(&mut *conn)
                .await?;
            if still > 0 {
                continue;
            }
            erased.events += sqlx::query(
                "UPDATE events SET payload = '{}', reason = NULL, ref = 'erased' \
                 WHERE ref = $1 AND instance_id IS NULL",
            )
            .bind(&r)
            .execute(&mut *conn)
            .await?
            .rows_affected() as usize;
            sqlx::query("DELETE FROM idempotency WHERE strpos(convert_from(body, 'UTF8'), $1) > 0")
                .bind(format!("\"{r}\""))
                .execute(&mut *conn)
                .await?;
        }
        tx.commit().await?;
        Ok(erased)
    }

    async fn finished_before(
        &self,
        version_id: i64,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM instances WHERE pathway_version_id = $1 AND status = 'finished' \
             AND erased_at IS NULL AND updated_at < $2 ORDER BY updated_at LIMIT $3",
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
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
        .map_err(|e| classify(e, &self.shown))?;
        Ok(())
    }

    async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT at, actor, action, ref, instance_id, detail, outcome FROM audit WHERE true",
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
        sqlx::query(
            "INSERT INTO health (id, checked_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(ms(now))
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, &self.shown))?;
        Ok(())
    }

    async fn claim_notices(
        &self,
        worker: &str,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxRow>> {
        let mut tx = self.begin().await?;
        // Rows another worker is claiming this moment are passed over, not waited for.
        let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE outbox SET claimed_by = $1, lease_until = $2 WHERE id IN ( \
               SELECT o.id FROM outbox o WHERE o.status = 'queued' AND o.not_before <= $3 \
               AND (o.lease_until IS NULL OR o.lease_until <= $3) AND {} \
               ORDER BY o.not_before, o.id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING id",
            not_held()
        )))
        .bind(worker)
        .bind(ms(until))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx.tx)
        .await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{OUTBOX_SELECT} WHERE o.id = ANY($1) ORDER BY o.not_before, o.id"
        )))
        .bind(&ids)
        .fetch_all(&mut *tx.tx)
        .await?
        .iter()
        .map(|r| outbox_row(r, &self.seal))
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn next_notice(&self) -> Result<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(greatest(not_before, coalesce(lease_until, 0))) FROM outbox o \
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
        let row = sqlx::query("SELECT id, status, receipt FROM outbox WHERE key = $1 FOR UPDATE")
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
        sqlx::query(
            "UPDATE outbox SET receipt = $1, receipt_at = $2, updated_at = $2 WHERE id = $3",
        )
        .bind(state.as_str())
        .bind(ms(now))
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
        log_line(
            &mut tx.tx,
            id,
            now,
            &format!("receipt {}", state.as_str()),
            &report.detail,
        )
        .await?;
        let dead = state.is_failure() && status == NoticeStatus::Sent.as_str();
        if dead {
            let reason = super::receipt_failure(state, &report.detail, id);
            sqlx::query("UPDATE outbox SET status = 'dead', last_error = $1 WHERE id = $2")
                .bind(&reason)
                .bind(id)
                .execute(&mut *tx.tx)
                .await?;
            log_line(&mut tx.tx, id, now, NoticeStatus::Dead.as_str(), &reason).await?;
        }
        tx.commit().await?;
        Ok(ReceiptOutcome::Recorded { id, dead })
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
                "INSERT INTO directory (organisation, role, pathway, contact_id) VALUES ($1, $2, $3, $4)",
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
        let ids: Vec<i64> = texts.iter().map(|(id, _)| *id).collect();
        let column = |f: fn(&NoticeText) -> Option<String>| -> Vec<Option<String>> {
            texts.iter().map(|(_, t)| f(t)).collect()
        };
        // Rendered once: the values it was rendered from are not kept beside the text.
        sqlx::query(
            "UPDATE outbox SET language = v.language, subject = v.subject, body = v.body, html = v.html, data = NULL \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) AS v(id, language, subject, body, html) \
             WHERE outbox.id = v.id AND outbox.body IS NULL",
        )
        .bind(&ids)
        .bind(column(|t| t.language.clone()))
        .bind(column(|t| t.subject.clone()))
        .bind(column(|t| t.body.clone()))
        .bind(column(|t| t.html.clone()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_deliveries(&self, deliveries: &[Delivery], now: Timestamp) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let rows: Vec<DeliveryRow> = deliveries.iter().map(DeliveryRow::of).collect();
        let mut tx = self.begin().await?;
        let applied: HashSet<i64> = sqlx::query_scalar(
            "UPDATE outbox SET status = v.status, not_before = coalesce(v.not_before, outbox.not_before), \
               attempts = outbox.attempts + v.attempted, \
               last_error = CASE WHEN v.status = 'sent' THEN outbox.last_error ELSE v.detail END, \
               claimed_by = NULL, lease_until = NULL, updated_at = $6 \
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]) \
               AS v(id, status, not_before, attempted, detail) \
             WHERE outbox.id = v.id AND outbox.status = 'queued' RETURNING outbox.id",
        )
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.not_before).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempted).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.detail).collect::<Vec<_>>())
        .bind(ms(now))
        .fetch_all(&mut *tx.tx)
        .await?
        .into_iter()
        .collect();
        let lines: Vec<(String, String)> = rows.iter().map(|r| r.log_line(&applied)).collect();
        sqlx::query(
            "INSERT INTO outbox_log (outbox_id, at, status, detail) \
             SELECT v.id, $2, v.status, v.detail FROM UNNEST($1::bigint[], $3::text[], $4::text[]) \
               WITH ORDINALITY AS v(id, status, detail, n) ORDER BY v.n",
        )
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(ms(now))
        .bind(lines.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>())
        .bind(lines.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx.tx)
        .await?;
        // A retry or a hold sets a new time: the workers' next wake-up may change.
        wake(&mut tx.tx).await?;
        tx.commit().await
    }

    async fn requeue(&self, outbox_id: i64, now: Timestamp) -> Result<Requeue> {
        let mut tx = self.begin().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM outbox WHERE id = $1 FOR UPDATE")
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
            "UPDATE outbox SET status = 'queued', attempts = 0, not_before = $1, updated_at = $1, \
             claimed_by = NULL, lease_until = NULL WHERE id = $2",
        )
        .bind(ms(now))
        .bind(outbox_id)
        .execute(&mut *tx.tx)
        .await?;
        log_line(
            &mut tx.tx,
            outbox_id,
            now,
            "queued",
            "retry requested by an operator",
        )
        .await?;
        wake(&mut tx.tx).await?;
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
                "INSERT INTO opt_outs (address, channel, at, source) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(address)
            .bind(channel.as_str())
            .bind(ms(now))
            .bind(source)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query("DELETE FROM opt_outs WHERE address = $1 AND channel = $2")
                .bind(address)
                .bind(channel.as_str())
                .execute(&self.pool)
                .await?
        };
        Ok(done.rows_affected() > 0)
    }

    async fn opted_out(&self, addresses: &[(String, Channel)]) -> Result<Vec<(String, Channel)>> {
        let rows = sqlx::query(
            "SELECT o.address, o.channel FROM opt_outs o \
             JOIN UNNEST($1::text[], $2::text[]) AS v(address, channel) \
               ON o.address = v.address AND o.channel = v.channel",
        )
        .bind(
            addresses
                .iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            addresses
                .iter()
                .map(|(_, c)| c.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(c) = channel(r.try_get("channel")?) {
                out.push((r.try_get("address")?, c));
            }
        }
        Ok(out)
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
        sqlx::query("DELETE FROM inbound_seen WHERE at < $1")
            .bind(ms(forget_before))
            .execute(&mut *tx.tx)
            .await?;
        let added = sqlx::query(
            "INSERT INTO inbound_seen (key, at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
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
            sqlx::query_scalar("SELECT source FROM opt_outs WHERE address = $1 AND channel = $2")
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
            Channel::Email => "lower(trim(c.email)) = $1",
            Channel::Sms => "regexp_replace(c.phone, '[ ().-]', '', 'g') = $1",
        };
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT DISTINCT i.pathway FROM instances i, jsonb_each_text(i.roles::jsonb) r \
             JOIN contacts c ON c.id = r.value::bigint WHERE {matches} ORDER BY i.pathway"
        )))
        .bind(address)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A PostgreSQL transaction.
pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
    shown: String,
    seal: Seal,
}

impl Tx for PgTx {
    async fn due_timers(
        &mut self,
        now: Timestamp,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        // The timers are locked with their instances; those another worker has locked are
        // skipped, so several workers take disjoint batches. Locking the timer rows too means
        // a timer another worker fired (deleted) since this statement's snapshot is not
        // handed out again.
        let q = match after {
            None => sqlx::query(
                "SELECT t.instance_id, t.key, t.due FROM timers t JOIN instances i ON i.id = t.instance_id \
                 WHERE t.due <= $1 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id) \
                 ORDER BY t.due, t.instance_id, t.key LIMIT $2 FOR UPDATE OF t, i SKIP LOCKED",
            )
            .bind(ms(now))
            .bind(i64::from(limit)),
            Some(a) => sqlx::query(
                "SELECT t.instance_id, t.key, t.due FROM timers t JOIN instances i ON i.id = t.instance_id \
                 WHERE t.due <= $1 AND (t.due, t.instance_id, t.key) > ($3, $4, $5) \
                 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = t.instance_id) \
                 ORDER BY t.due, t.instance_id, t.key LIMIT $2 FOR UPDATE OF t, i SKIP LOCKED",
            )
            .bind(ms(now))
            .bind(i64::from(limit))
            .bind(ms(a.due))
            .bind(a.instance_id)
            .bind(&a.key),
        };
        q.fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(timer_row)
            .collect()
    }

    async fn instances(&mut self, ids: &[i64]) -> Result<Vec<InstanceRow>> {
        select_instances(&mut self.tx, ids, &self.seal, true).await
    }

    async fn directory(&mut self) -> Result<Vec<(i64, DirectoryEntry)>> {
        select_directory(&mut self.tx).await
    }

    async fn active_instances(&mut self, reference: &str) -> Result<Vec<InstanceRow>> {
        // Locked: an event for a family waits for a batch that is moving it, then sees the
        // batch's result.
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE ref = $1 AND status = 'active' ORDER BY id FOR UPDATE"
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
        for r in sqlx::query("SELECT * FROM events WHERE idempotency_key = ANY($1)")
            .bind(keys)
            .fetch_all(&mut *self.tx)
            .await?
        {
            let e = event_row(&r, &self.seal)?;
            out.insert(e.key.clone(), e);
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) RETURNING id",
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
            .bind(n.instance.overdue_since().map(ms))
            .fetch_one(&mut *conn)
            .await?;
            instance_ids.push(id);
        }
        let target = |t: Target| match t {
            Target::Id(id) => id,
            Target::New(i) => instance_ids[i],
        };

        if !changes.updates.is_empty() {
            let u = &changes.updates;
            let bodies = u
                .iter()
                .map(|u| sealed_body(&self.seal, &u.instance))
                .collect::<Result<Vec<String>>>()?;
            let roles: Vec<Option<String>> = u
                .iter()
                .map(|u| {
                    u.roles.as_ref().map(|r| {
                        to_json(
                            &r.iter()
                                .map(|(k, v)| (k, contact(*v)))
                                .collect::<BTreeMap<&String, i64>>(),
                        )
                    })
                })
                .collect();
            // A NULL role map keeps the row's: most steps assign no contacts.
            let sql = format!(
                "UPDATE instances SET state = v.state, owner = v.owner, status = v.status, seq = v.seq, \
                   body = v.body, roles = COALESCE(v.roles, instances.roles), \
                   pathway_version_id = COALESCE(v.version, instances.pathway_version_id), updated_at = $11, \
                   overdue_since = v.overdue_since \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
                             $7::text[], $8::text[], $9::bigint[], $10::bigint[]) \
                   AS v(id, expected, state, owner, status, seq, body, roles, version, overdue_since) \
                 WHERE instances.id = v.id AND instances.seq = v.expected{}",
                if changes.from_snapshot {
                    " AND instances.erased_at IS NULL AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = v.id)"
                } else {
                    ""
                }
            );
            let done = sqlx::query(AssertSqlSafe(sql))
                .bind(u.iter().map(|u| u.id).collect::<Vec<_>>())
                .bind(u.iter().map(|u| u.expected_seq as i64).collect::<Vec<_>>())
                .bind(
                    u.iter()
                        .map(|u| u.instance.state.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    u.iter()
                        .map(|u| u.instance.owner.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    u.iter()
                        .map(|u| status_str(&u.instance))
                        .collect::<Vec<_>>(),
                )
                .bind(u.iter().map(|u| u.instance.seq as i64).collect::<Vec<_>>())
                .bind(&bodies)
                .bind(&roles)
                .bind(u.iter().map(|u| u.pathway_version_id).collect::<Vec<_>>())
                .bind(
                    u.iter()
                        .map(|u| u.instance.overdue_since().map(ms))
                        .collect::<Vec<_>>(),
                )
                .bind(ms(now))
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if done != u.len() as u64 {
                let moved = u.first().map(|u| u.id).unwrap_or_default();
                return Err(StoreError::Conflict(moved));
            }
        }

        if !changes.timers_removed.is_empty() {
            let t = &changes.timers_removed;
            sqlx::query(
                "DELETE FROM timers t USING UNNEST($1::bigint[], $2::text[]) AS v(instance_id, key) \
                 WHERE t.instance_id = v.instance_id AND t.key = v.key",
            )
            .bind(t.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(t.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !changes.timers_added.is_empty() {
            let t = &changes.timers_added;
            sqlx::query(
                "INSERT INTO timers (instance_id, key, due, purpose) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[])",
            )
            .bind(t.iter().map(|(i, _)| target(*i)).collect::<Vec<_>>())
            .bind(t.iter().map(|(_, t)| t.key.as_str()).collect::<Vec<_>>())
            .bind(t.iter().map(|(_, t)| ms(t.due)).collect::<Vec<_>>())
            .bind(
                t.iter()
                    .map(|(_, t)| to_json(&t.purpose))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
        }
        if !changes.history.is_empty() {
            let h = &changes.history;
            sqlx::query(
                "INSERT INTO history (instance_id, seq, at, from_state, to_state, cause, notes) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])",
            )
            .bind(h.iter().map(|(t, _)| target(*t)).collect::<Vec<_>>())
            .bind(h.iter().map(|(_, h)| h.seq as i64).collect::<Vec<_>>())
            .bind(h.iter().map(|(_, h)| ms(h.at)).collect::<Vec<_>>())
            .bind(h.iter().map(|(_, h)| h.from.as_deref()).collect::<Vec<_>>())
            .bind(h.iter().map(|(_, h)| h.to.as_str()).collect::<Vec<_>>())
            .bind(h.iter().map(|(_, h)| to_json(&h.cause)).collect::<Vec<_>>())
            .bind(h.iter().map(|(_, h)| to_json(&h.notes)).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        for (id, by) in &changes.holds {
            sqlx::query(
                "INSERT INTO holds (instance_id, since, by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(ms(now))
            .bind(by)
            .execute(&mut *conn)
            .await?;
        }
        for r in &changes.readdressed {
            let done = sqlx::query(
                "UPDATE outbox SET contact_id = $1, channel = $2, address = $3, status = 'queued', attempts = 0, \
                 last_error = NULL, not_before = $4, updated_at = $4, claimed_by = NULL, lease_until = NULL \
                 WHERE id = $5 AND status = 'dead' AND body IS NULL",
            )
            .bind(contact(r.contact))
            .bind(r.channel.as_str())
            .bind(&r.address)
            .bind(ms(now))
            .bind(r.outbox_id)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() > 0 {
                log_line(conn, r.outbox_id, now, "queued", &r.reason).await?;
            }
        }
        for w in &changes.withdrawals {
            let (which, topic) = match &w.which {
                Withdrawn::Family => ("family = 1", None),
                Withdrawn::All => ("true", None),
                Withdrawn::Topic(t) => ("topic = $4", Some(t)),
            };
            let queued =
                format!("FROM outbox WHERE instance_id = $3 AND status = 'queued' AND {which}");
            let mut log = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO outbox_log (outbox_id, at, status, detail) SELECT id, $1, 'skipped', $2 {queued} ORDER BY id"
            )))
            .bind(ms(now))
            .bind(&w.reason)
            .bind(w.instance_id);
            if let Some(t) = topic {
                log = log.bind(t);
            }
            log.execute(&mut *conn).await?;
            let mut skip = sqlx::query(AssertSqlSafe(format!(
                "UPDATE outbox SET status = 'skipped', last_error = $2, updated_at = $1 WHERE id IN (SELECT id {queued})"
            )))
            .bind(ms(now))
            .bind(&w.reason)
            .bind(w.instance_id);
            if let Some(t) = topic {
                skip = skip.bind(t);
            }
            skip.execute(&mut *conn).await?;
        }
        if !changes.outbox.is_empty() {
            let o = &changes.outbox;
            let data = o
                .iter()
                .map(|(_, n)| {
                    n.data
                        .as_ref()
                        .map(|d| Ok(self.seal.seal_text("data", d)?))
                        .transpose()
                })
                .collect::<Result<Vec<Option<String>>>>()?;
            // The log's first line is written by the trigger `outbox_log_created`.
            sqlx::query(
                "INSERT INTO outbox (key, instance_id, pathway_version_id, template, role, family, contact_id, \
                   channel, address, language, subject, body, html, data, status, not_before, expires_at, topic, \
                   calendar, attempts, last_error, created_at, updated_at) \
                 SELECT v.key, v.instance_id, v.version, v.template, v.role, v.family, v.contact_id, v.channel, \
                   v.address, v.language, v.subject, v.body, v.html, v.data, v.status, v.not_before, v.expires_at, \
                   v.topic, v.calendar, 0, v.last_error, $19, $19 \
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], \
                   $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                   $14::text[], $15::text[], $16::bigint[], $17::bigint[], $18::text[], $20::text[], $21::text[]) \
                   WITH ORDINALITY AS v(key, instance_id, version, template, role, family, contact_id, channel, \
                   address, language, subject, body, html, data, status, not_before, expires_at, topic, calendar, \
                   last_error, n) ORDER BY v.n",
            )
            .bind(
                o.iter()
                    .map(|(t, n)| format!("{}:{}", target(*t), n.key))
                    .collect::<Vec<_>>(),
            )
            .bind(o.iter().map(|(t, _)| target(*t)).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.pathway_version_id).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.template.as_str()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.role.as_str()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| i64::from(n.family)).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.contact.map(contact)).collect::<Vec<_>>())
            .bind(
                o.iter()
                    .map(|(_, n)| n.channel.map(Channel::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(o.iter().map(|(_, n)| n.address.as_deref()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.text.language.as_deref()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.text.subject.as_deref()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.text.body.as_deref()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.text.html.as_deref()).collect::<Vec<_>>())
            .bind(&data)
            .bind(o.iter().map(|(_, n)| n.status.as_str()).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| ms(n.not_before)).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.expires_at.map(ms)).collect::<Vec<_>>())
            .bind(o.iter().map(|(_, n)| n.topic.as_deref()).collect::<Vec<_>>())
            .bind(ms(now))
            .bind(
                o.iter()
                    .map(|(_, n)| n.calendar.as_ref().map(to_json))
                    .collect::<Vec<_>>(),
            )
            .bind(o.iter().map(|(_, n)| n.error.as_deref()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !changes.events.is_empty() {
            let e = &changes.events;
            let payloads = e
                .iter()
                .map(|(_, e)| Ok(self.seal.seal_text("payload", &e.payload)?))
                .collect::<Result<Vec<String>>>()?;
            sqlx::query(
                "INSERT INTO events (idempotency_key, ref, pathway, instance_id, name, payload, received_at, \
                   outcome, code, reason, seq, fingerprint) \
                 SELECT v.key, v.ref, v.pathway, v.instance_id, v.name, v.payload, v.received_at, v.outcome, \
                   v.code, v.reason, v.seq, v.fingerprint \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
                   $7::bigint[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[]) \
                   WITH ORDINALITY AS v(key, ref, pathway, instance_id, name, payload, received_at, outcome, \
                   code, reason, seq, fingerprint, n) ORDER BY v.n",
            )
            .bind(e.iter().map(|(_, e)| e.key.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.reference.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.pathway.as_deref()).collect::<Vec<_>>())
            .bind(
                e.iter()
                    .map(|(t, e)| t.map(target).or(e.instance_id))
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|(_, e)| e.name.as_str()).collect::<Vec<_>>())
            .bind(&payloads)
            .bind(e.iter().map(|(_, e)| ms(e.received_at)).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.outcome.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.code.as_deref()).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.reason.as_deref()).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.seq.map(|s| s as i64)).collect::<Vec<_>>())
            .bind(e.iter().map(|(_, e)| e.fingerprint.as_deref()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !changes.timers_added.is_empty() || !changes.outbox.is_empty() {
            wake(conn).await?;
        }
        Ok(instance_ids)
    }

    async fn commit(self) -> Result<()> {
        let shown = self.shown;
        self.tx.commit().await.map_err(|e| classify(e, &shown))
    }
}
