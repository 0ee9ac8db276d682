//! The backend a `--db` names: a SQLite file (the default), or a PostgreSQL server
//! (`postgres://…`). The commands and the worker hold a [`Backend`]; the runtime stays generic
//! over [`Storage`].

use std::collections::BTreeMap;
use std::path::Path;

use carepath_engine::PathwaySource;
use carepath_engine::pathway::Channel;
use carepath_engine::step::History;
use jiff::Timestamp;

use super::seal::Seal;
use super::{
    AuditEntry, AuditFilter, Changes, Contact, Delivery, DirectoryEntry, DueTimer, Erased,
    EventRecord, InstanceFilter, InstanceRow, KeptResponse, NoticeText, OutboxFilter,
    OutboxLogEntry, OutboxRow, PgStore, ReceiptOutcome, ReceiptReport, Requeue, Result,
    SqliteStore, Stats, Storage, Stored, StoredPathway, Tx,
};

/// Whether `db` names a PostgreSQL server rather than a SQLite file.
pub fn is_postgres(db: &Path) -> bool {
    let text = db.to_string_lossy();
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// One of the backends.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PgStore),
}

impl Backend {
    /// Opens the database `db` names, creating a missing SQLite file, and brings its schema up
    /// to date: for the commands meant to start a database (`run`, `enroll`).
    pub async fn open(db: &Path) -> Result<Self> {
        Ok(if is_postgres(db) {
            Backend::Postgres(PgStore::open(&db.to_string_lossy()).await?)
        } else {
            Backend::Sqlite(SqliteStore::open(db).await?)
        })
    }

    /// Opens a database `carepath run` or `carepath enroll` made, changing nothing in it.
    pub async fn open_existing(db: &Path) -> Result<Self> {
        Ok(if is_postgres(db) {
            Backend::Postgres(PgStore::open_existing(&db.to_string_lossy()).await?)
        } else {
            Backend::Sqlite(SqliteStore::open_existing(db).await?)
        })
    }

    /// Seals families' fields and event payloads with `seal` (see [`SqliteStore::seal_with`]).
    pub async fn seal_with(self, seal: Seal) -> Result<Self> {
        Ok(match self {
            Backend::Sqlite(s) => Backend::Sqlite(s.seal_with(seal).await?),
            Backend::Postgres(s) => Backend::Postgres(s.seal_with(seal).await?),
        })
    }

    /// The file, or the URL without its password: for messages.
    pub fn name(&self) -> &str {
        match self {
            Backend::Sqlite(s) => s.path(),
            Backend::Postgres(s) => s.url(),
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }
}

/// Each method as a call of the same method on the backend within.
macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        $(
            async fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Backend::Sqlite(s) => s.$name($($arg),*).await,
                    Backend::Postgres(s) => s.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl Storage for Backend {
    type Tx = BackendTx;

    async fn begin(&self) -> Result<BackendTx> {
        Ok(match self {
            Backend::Sqlite(s) => BackendTx::Sqlite(s.begin().await?),
            Backend::Postgres(s) => BackendTx::Postgres(s.begin().await?),
        })
    }

    async fn snapshot(&self) -> Result<Option<BackendTx>> {
        Ok(match self {
            Backend::Sqlite(s) => s.snapshot().await?.map(BackendTx::Sqlite),
            Backend::Postgres(s) => s.snapshot().await?.map(BackendTx::Postgres),
        })
    }

    delegate! {
        fn put_pathway(&self, source: &PathwaySource, pathway: &str, version: u32, now: Timestamp) -> Result<Stored>;
        fn pathways(&self) -> Result<Vec<StoredPathway>>;
        fn next_due(&self) -> Result<Option<Timestamp>>;
        fn instances_by_ref(&self, reference: &str) -> Result<Vec<InstanceRow>>;
        fn all_instances(&self) -> Result<Vec<InstanceRow>>;
        fn instance(&self, id: i64) -> Result<Option<InstanceRow>>;
        fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRow>>;
        fn set_held(&self, instance_id: i64, by: Option<&str>, now: Timestamp) -> Result<bool>;
        fn instance_events(&self, instance_id: i64) -> Result<Vec<EventRecord>>;
        fn kept_response(&self, caller: &str, key: &str) -> Result<Option<KeptResponse>>;
        fn keep_response(&self, caller: &str, key: &str, response: &KeptResponse, now: Timestamp) -> Result<()>;
        fn stats(&self, now: Timestamp) -> Result<Stats>;
        fn history(&self, instance_id: i64) -> Result<Vec<History>>;
        fn timers(&self, instance_id: i64) -> Result<Vec<DueTimer>>;
        fn events(&self, reference: &str) -> Result<Vec<EventRecord>>;
        fn outbox(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>>;
        fn contacts(&self, ids: &[i64]) -> Result<BTreeMap<i64, Contact>>;
        fn outbox_log(&self, outbox_id: i64) -> Result<Vec<OutboxLogEntry>>;
        fn erase(&self, ids: &[i64], reason: &str, now: Timestamp) -> Result<Erased>;
        fn finished_before(&self, version_id: i64, before: Timestamp, limit: u32) -> Result<Vec<i64>>;
        fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
        fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;
        fn check_writes(&self, now: Timestamp) -> Result<()>;
        fn claim_notices(&self, worker: &str, now: Timestamp, until: Timestamp, limit: u32) -> Result<Vec<OutboxRow>>;
        fn next_notice(&self) -> Result<Option<Timestamp>>;
        fn record_receipt(&self, report: &ReceiptReport, now: Timestamp) -> Result<ReceiptOutcome>;
        fn replace_directory(&self, entries: &[DirectoryEntry]) -> Result<usize>;
        fn directory(&self) -> Result<Vec<DirectoryEntry>>;
        fn set_texts(&self, texts: &[(i64, NoticeText)]) -> Result<()>;
        fn record_deliveries(&self, deliveries: &[Delivery], now: Timestamp) -> Result<()>;
        fn requeue(&self, outbox_id: i64, now: Timestamp) -> Result<Requeue>;
        fn set_opt_out(&self, address: &str, channel: Channel, opted_out: bool, source: &str, now: Timestamp) -> Result<bool>;
        fn opted_out(&self, addresses: &[(String, Channel)]) -> Result<Vec<(String, Channel)>>;
        fn installation(&self) -> Result<String>;
        fn remember_inbound(&self, key: &str, now: Timestamp, forget_before: Timestamp) -> Result<bool>;
        fn opt_out_source(&self, address: &str, channel: Channel) -> Result<Option<String>>;
        fn address_pathways(&self, address: &str, channel: Channel) -> Result<Vec<String>>;
    }
}

/// A transaction of either backend.
pub enum BackendTx {
    /// On SQLite.
    Sqlite(<SqliteStore as Storage>::Tx),
    /// On PostgreSQL.
    Postgres(<PgStore as Storage>::Tx),
}

/// Each method as a call of the same method on the transaction within.
macro_rules! delegate_tx {
    ($( fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        $(
            async fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                match self {
                    BackendTx::Sqlite(t) => t.$name($($arg),*).await,
                    BackendTx::Postgres(t) => t.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl Tx for BackendTx {
    delegate_tx! {
        fn due_timers(&mut self, now: Timestamp, after: Option<&DueTimer>, limit: u32) -> Result<Vec<DueTimer>>;
        fn instances(&mut self, ids: &[i64]) -> Result<Vec<InstanceRow>>;
        fn directory(&mut self) -> Result<Vec<(i64, DirectoryEntry)>>;
        fn active_instances(&mut self, reference: &str) -> Result<Vec<InstanceRow>>;
        fn contacts(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, Contact>>;
        fn events_by_key(&mut self, keys: &[String]) -> Result<BTreeMap<String, EventRecord>>;
        fn write(&mut self, changes: Changes) -> Result<Vec<i64>>;
    }

    async fn commit(self) -> Result<()> {
        match self {
            BackendTx::Sqlite(t) => t.commit().await,
            BackendTx::Postgres(t) => t.commit().await,
        }
    }
}
