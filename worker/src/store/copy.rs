//! Moving up: everything a SQLite file holds, copied into an empty PostgreSQL database
//! (`carepath db copy`), in one transaction, and the rows counted on both sides.
//!
//! The two schemas have the same tables and columns (worker/migrations), so the copy is
//! generic: each table's columns are read from PostgreSQL's catalogue and copied by name, ids
//! and all, parents before children. The installation id comes along, so emails sent after the
//! move keep their Message-IDs, and the data key's check, so the same key opens the copy.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};

use super::{PgStore, Result, SqliteStore, StoreError};

/// The tables, parents first. `health` is not data, `_sqlx_migrations` is each database's own.
const TABLES: [&str; 15] = [
    "pathway_versions",
    "contacts",
    "directory",
    "instances",
    "timers",
    "events",
    "history",
    "holds",
    "outbox",
    "outbox_log",
    "opt_outs",
    "idempotency",
    "inbound_seen",
    "audit",
    "installation",
];

/// PostgreSQL allows 65,535 bound values in a statement.
const MAX_BINDS: usize = 60_000;

/// One table's rows in the source and in the copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The table.
    pub table: &'static str,
    /// Rows in the SQLite file.
    pub source: u64,
    /// Rows in the PostgreSQL database after the copy.
    pub target: u64,
}

/// A value on its way from one backend to the other.
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// Copies everything in `from` into `to`, which must hold no families, pathways or notices
/// yet: one transaction, so a failed copy leaves `to` as it was. Returns each table's counts,
/// which the caller can show; a count that differs is an error.
pub async fn copy(from: &SqliteStore, to: &PgStore) -> Result<Vec<Copied>> {
    let target = to.pool();
    for table in ["pathway_versions", "instances", "outbox", "audit"] {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(target)
            .await?;
        if n > 0 {
            return Err(StoreError::NotReady {
                path: to.url().into(),
                reason: format!(
                    "its table {table} has {n} rows already: copy into an empty database"
                ),
            });
        }
    }
    let mut tx = target.begin().await?;
    // The copy brings each notice's provenance with it: the trigger that starts a new
    // notice's provenance would add a line to each.
    sqlx::query("ALTER TABLE outbox DISABLE TRIGGER outbox_log_created")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM installation")
        .execute(&mut *tx)
        .await?;
    for table in TABLES {
        let columns = shared_columns(from, &mut tx, table).await?;
        let names = columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        // outbox_log has no key of its own in SQLite: its lines in the order they were written.
        let order = if table == "outbox_log" || table == "installation" {
            "rowid"
        } else {
            "1"
        };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {names} FROM {table} ORDER BY {order}"
        )))
        .fetch_all(from.pool())
        .await?;
        let values = rows
            .iter()
            .map(|r| read_row(r, &columns))
            .collect::<Result<Vec<_>>>()?;
        for chunk in values.chunks((MAX_BINDS / columns.len().max(1)).max(1)) {
            let mut q = QueryBuilder::<Postgres>::new(format!("INSERT INTO {table} ({names}) "));
            q.push_values(chunk, |mut b, row| {
                for v in row {
                    match v {
                        Value::Int(v) => b.push_bind(*v),
                        Value::Text(v) => b.push_bind(v.clone()),
                        Value::Bytes(v) => b.push_bind(v.clone()),
                    };
                }
            });
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        // New rows after the copy get ids after the copied ones.
        if columns.iter().any(|(n, _)| n == "id") && table != "installation" {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 greatest((SELECT max(id) FROM {table}), 1), (SELECT max(id) IS NOT NULL FROM {table}))"
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query("ALTER TABLE outbox ENABLE TRIGGER outbox_log_created")
        .execute(&mut *tx)
        .await?;
    let mut counts = Vec::new();
    for table in TABLES {
        let count = format!("SELECT count(*) FROM {table}");
        let source: i64 = sqlx::query_scalar(AssertSqlSafe(count.clone()))
            .fetch_one(from.pool())
            .await?;
        let copied: i64 = sqlx::query_scalar(AssertSqlSafe(count))
            .fetch_one(&mut *tx)
            .await?;
        counts.push(Copied {
            table,
            source: source.max(0) as u64,
            target: copied.max(0) as u64,
        });
    }
    if let Some(c) = counts.iter().find(|c| c.source != c.target) {
        return Err(StoreError::Data {
            what: format!("the copy of table {}", c.table),
            reason: format!(
                "{} rows in the file, {} copied: nothing was kept",
                c.source, c.target
            ),
        });
    }
    tx.commit().await?;
    Ok(counts)
}

/// The columns of `table` both backends have, with PostgreSQL's type of each, in the order of
/// PostgreSQL's table.
async fn shared_columns(
    from: &SqliteStore,
    tx: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<(String, String)>> {
    let target: Vec<PgRow> = sqlx::query(
        "SELECT column_name::text AS name, data_type::text AS type FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let source: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT name FROM pragma_table_info('{table}')"
    )))
    .fetch_all(from.pool())
    .await?;
    target
        .iter()
        .map(|r| Ok((r.try_get::<String, _>("name")?, r.try_get("type")?)))
        .filter(|c: &Result<(String, String)>| {
            c.as_ref().map_or(true, |(name, _)| source.contains(name))
        })
        .collect()
}

fn read_row(r: &SqliteRow, columns: &[(String, String)]) -> Result<Vec<Value>> {
    columns
        .iter()
        .map(|(name, kind)| {
            Ok(match kind.as_str() {
                "bigint" => Value::Int(r.try_get(name.as_str())?),
                "bytea" => Value::Bytes(r.try_get(name.as_str())?),
                _ => Value::Text(r.try_get(name.as_str())?),
            })
        })
        .collect()
}
