//! PostgreSQL's side of the seam. Transactions run at READ COMMITTED; rows that a
//! decision depends on are locked with `SELECT … FOR UPDATE`, receipt identity
//! races are settled by `ON CONFLICT DO NOTHING` on the unique key, and identity
//! matching is serialised by transaction-scoped advisory locks.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::error::BoxDynError;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};
use sqlx::{Arguments, Transaction};

use crate::sql::{self, Arg, Conn, Dialect, Record, Sql, Tx, Work};
use crate::{Backend, ConnectOptions, Result};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
    /// Batches of pushes that may commit at once (`group_commit.rs`), at most half
    /// the pool: under a stream of pushes the notifier's claims and completions
    /// still find a connection at once, and new pushes wait in the queue instead.
    committers: usize,
}

impl PgStore {
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        let options = PgConnectOptions::from_str(&opts.url)?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(options)
            .await?;
        let half = (opts.max_connections as usize / 2).max(1);
        Ok(Self {
            pool,
            committers: half.min(4),
        })
    }
}

fn arguments(args: Vec<Arg<'_>>) -> Result<PgArguments, BoxDynError> {
    let mut out = PgArguments::default();
    for arg in args {
        match arg {
            Arg::Uuid(v) => out.add(v)?,
            Arg::Text(v) => out.add(v.as_deref())?,
            Arg::Int(v) => out.add(v)?,
            Arg::Int4(v) => out.add(v)?,
            Arg::Bool(v) => out.add(v)?,
            Arg::Time(v) => out.add(v)?,
            Arg::Json(v) => out.add(v.map(sqlx::types::Json))?,
            Arg::UuidArray(v) => out.add(v)?,
            Arg::TextArray(v) => out.add(v)?,
            Arg::IntArray(v) => out.add(v)?,
            Arg::TimeArray(v) => out.add(
                v.into_iter()
                    .map(|t| t.map(Into::into))
                    .collect::<Vec<Option<chrono::DateTime<chrono::Utc>>>>(),
            )?,
        }
    }
    Ok(out)
}

#[async_trait]
impl Conn for PgConnection {
    async fn fetch_all<T: Record>(&mut self, sql: Sql<'_>) -> Result<Vec<T>> {
        let (text, persistent, args) = sql.into_parts();
        Ok(
            sqlx::query_as_with::<Postgres, T, _>(text, arguments(args).map_err(sqlx::Error::Encode)?)
                .persistent(persistent)
                .fetch_all(&mut *self)
                .await?,
        )
    }

    async fn fetch_optional<T: Record>(&mut self, sql: Sql<'_>) -> Result<Option<T>> {
        let (text, persistent, args) = sql.into_parts();
        Ok(
            sqlx::query_as_with::<Postgres, T, _>(text, arguments(args).map_err(sqlx::Error::Encode)?)
                .persistent(persistent)
                .fetch_optional(&mut *self)
                .await?,
        )
    }

    async fn execute(&mut self, sql: Sql<'_>) -> Result<u64> {
        let (text, persistent, args) = sql.into_parts();
        Ok(
            sqlx::query_with::<Postgres, _>(text, arguments(args).map_err(sqlx::Error::Encode)?)
                .persistent(persistent)
                .execute(&mut *self)
                .await?
                .rows_affected(),
        )
    }
}

pub struct PgTx {
    tx: Transaction<'static, Postgres>,
}

#[async_trait]
impl Tx for PgTx {
    type Conn = PgConnection;

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

#[async_trait]
impl Dialect for PgStore {
    type Conn = PgConnection;
    type Read = PoolConnection<Postgres>;
    type Writer = PoolConnection<Postgres>;
    type Tx = PgTx;

    const BACKEND: Backend = Backend::Postgres;

    fn row_lock(plain: &'static str, for_update: &'static str) -> &'static str {
        let _ = plain;
        for_update
    }

    async fn read(&self) -> Result<Self::Read> {
        Ok(self.pool.acquire().await?)
    }

    async fn snapshot(&self) -> Result<PgTx> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        Ok(PgTx { tx })
    }

    async fn writer(&self) -> Result<Self::Writer> {
        self.read().await
    }

    async fn write(&self) -> Result<PgTx> {
        Ok(PgTx {
            tx: self.pool.begin().await?,
        })
    }

    async fn intake(&self) -> Result<PgTx> {
        self.write().await
    }

    fn committers(&self) -> usize {
        self.committers
    }

    async fn run_intake<T: Send + 'static>(&self, work: Work<T>) -> Result<T> {
        work.await
    }

    async fn lock_identities(conn: &mut PgConnection, keys: &[i64]) -> Result<()> {
        // One round trip; the keys come sorted and `unnest` keeps the array's order, so
        // every transaction acquires them in the same order.
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
            .bind(keys)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
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
