//! SQLite's side of the seam. SQLite has one writer at a time, so every write
//! transaction starts with `BEGIN IMMEDIATE`: it takes the write lock up front
//! (waiting up to the busy timeout) instead of failing with SQLITE_BUSY when a read
//! transaction later tries to upgrade. Holding that lock is what `FOR UPDATE`
//! gives on PostgreSQL, and it serialises identity matching too. Writers of one
//! process first take turns on an in-process lock ([`WriteTurn`]), so they queue in
//! order rather than meet SQLite's busy handler, whose growing sleeps (up to
//! 100 ms) starve a steady write load; readers never wait for it.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::BoxDynError;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::sql::{self, Arg, Conn, Dialect, Record, Sql, Tx, Work};
use crate::{Backend, ConnectOptions, Result, StoreError};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection this process writes through (the same pool in memory).
    writes: SqlitePool,
    /// This process's turn to write.
    turn: Arc<WriteTurn>,
    /// The runtime the store was opened on (the process's main one), where pushed
    /// receipts are written; see [`Dialect::run_intake`].
    runtime: tokio::runtime::Handle,
}

impl SqliteStore {
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        let url = opts.url.as_str();
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL, not NORMAL: in WAL mode NORMAL lets a power loss roll back
            // commits already answered with a 2xx. Group commit pays the fsync
            // once per batch, not once per receipt.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let (pool, writes) = if in_memory {
            // An in-memory database lives as long as one of its connections: keep
            // exactly one, forever.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            (pool.clone(), pool)
        } else {
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Database(sqlx::Error::Configuration(
                        format!("cannot create directory {}: {e}", dir.display()).into(),
                    ))
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(options.clone())
                .await?;
            // Writing through one connection keeps its page cache warm: a
            // connection's cache is dropped whenever another one has written.
            // Room for the batch statements kept prepared (`Sql::prepared`): a
            // few for each batch size up to 64, beside every static statement.
            let writes = SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options.statement_cache_capacity(1024))
                .await?;
            (pool, writes)
        };
        Ok(Self {
            pool,
            writes,
            turn: Arc::new(WriteTurn::default()),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

/// This process's turn to write (tokio's mutex queues in arrival order). Pushes
/// reach it through one group committer (`group_commit.rs`), so under a stream of
/// pushes the notifier's claims and completions wait for at most one batch.
#[derive(Default)]
struct WriteTurn {
    turn: Arc<Mutex<()>>,
}

impl WriteTurn {
    async fn turn(&self) -> OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }
}

fn arguments(args: Vec<Arg<'_>>) -> Result<SqliteArguments, BoxDynError> {
    let mut out = SqliteArguments::default();
    for arg in args {
        match arg {
            Arg::Uuid(v) => out.add(v)?,
            Arg::Text(v) => out.add(v.as_deref())?,
            Arg::Int(v) => out.add(v)?,
            Arg::Int4(v) => out.add(v)?,
            Arg::Bool(v) => out.add(v)?,
            Arg::Time(v) => out.add(v)?,
            Arg::Json(v) => out.add(v.map(|j| String::from(Box::<str>::from(j))))?,
            Arg::UuidArray(_) | Arg::TextArray(_) | Arg::IntArray(_) | Arg::TimeArray(_) => {
                return Err("arrays are bound only by PostgreSQL's own statements".into());
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Conn for SqliteConnection {
    async fn fetch_all<T: Record>(&mut self, sql: Sql<'_>) -> Result<Vec<T>> {
        let (text, persistent, args) = sql.into_parts();
        Ok(
            sqlx::query_as_with::<Sqlite, T, _>(text, arguments(args).map_err(sqlx::Error::Encode)?)
                .persistent(persistent)
                .fetch_all(&mut *self)
                .await?,
        )
    }

    async fn fetch_optional<T: Record>(&mut self, sql: Sql<'_>) -> Result<Option<T>> {
        let (text, persistent, args) = sql.into_parts();
        Ok(
            sqlx::query_as_with::<Sqlite, T, _>(text, arguments(args).map_err(sqlx::Error::Encode)?)
                .persistent(persistent)
                .fetch_optional(&mut *self)
                .await?,
        )
    }

    async fn execute(&mut self, sql: Sql<'_>) -> Result<u64> {
        let (text, persistent, args) = sql.into_parts();
        Ok(
            sqlx::query_with::<Sqlite, _>(text, arguments(args).map_err(sqlx::Error::Encode)?)
                .persistent(persistent)
                .execute(&mut *self)
                .await?
                .rows_affected(),
        )
    }
}

pub struct SqliteTx {
    // Dropped before the turn: an unfinished transaction rolls back first.
    tx: Transaction<'static, Sqlite>,
    _turn: Option<OwnedMutexGuard<()>>,
}

#[async_trait]
impl Tx for SqliteTx {
    type Conn = SqliteConnection;

    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

/// The write connection, on this process's turn to write.
pub struct SqliteWriter {
    conn: PoolConnection<Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl Deref for SqliteWriter {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for SqliteWriter {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

#[async_trait]
impl Dialect for SqliteStore {
    type Conn = SqliteConnection;
    type Read = PoolConnection<Sqlite>;
    type Writer = SqliteWriter;
    type Tx = SqliteTx;

    const BACKEND: Backend = Backend::Sqlite;

    fn row_lock(plain: &'static str, for_update: &'static str) -> &'static str {
        let _ = for_update;
        plain
    }

    async fn read(&self) -> Result<Self::Read> {
        Ok(self.pool.acquire().await?)
    }

    async fn snapshot(&self) -> Result<SqliteTx> {
        // A deferred transaction reads one snapshot and never takes the write lock.
        Ok(SqliteTx {
            tx: self.pool.begin().await?,
            _turn: None,
        })
    }

    async fn writer(&self) -> Result<SqliteWriter> {
        let turn = self.turn.turn().await;
        Ok(SqliteWriter {
            conn: self.writes.acquire().await?,
            _turn: turn,
        })
    }

    async fn write(&self) -> Result<SqliteTx> {
        let turn = self.turn.turn().await;
        Ok(SqliteTx {
            tx: self.writes.begin_with("BEGIN IMMEDIATE").await?,
            _turn: Some(turn),
        })
    }

    async fn intake(&self) -> Result<SqliteTx> {
        let turn = self.turn.turn().await;
        Ok(SqliteTx {
            tx: self.writes.begin_with("BEGIN IMMEDIATE").await?,
            _turn: Some(turn),
        })
    }

    fn committers(&self) -> usize {
        // One writer at a time anyway: one batch, as large as the queue.
        1
    }

    async fn run_intake<T: Send + 'static>(&self, work: Work<T>) -> Result<T> {
        // On the store's runtime, not the caller's: pushes arrive on the HTTP
        // server's single-threaded workers, where every await inside the turn would
        // wait behind other requests' CPU work (signatures, sealing) while all
        // writers wait for the turn.
        match self.runtime.spawn(work).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down.
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolClosed)),
        }
    }

    async fn lock_identities(_conn: &mut SqliteConnection, _keys: &[i64]) -> Result<()> {
        // Writers are serialised by `BEGIN IMMEDIATE`: matching needs no extra lock.
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !exists {
            return Ok(false);
        }
        let applied: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(sql::all_applied(&MIGRATOR, &applied))
    }
}
