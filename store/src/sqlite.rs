//! SQLite implementation, parallel to the PostgreSQL one. SQLite has one writer at
//! a time, so every write transaction starts with `BEGIN IMMEDIATE`: it takes the
//! write lock up front (waiting up to the busy timeout) instead of failing with
//! SQLITE_BUSY when a read transaction later tries to upgrade. Holding that lock is
//! what `FOR UPDATE` gives on PostgreSQL. Writers of one process first take turns
//! on an in-process lock (`begin_write`), so they queue in order rather than meet
//! SQLite's busy handler, whose growing sleeps (up to 100 ms) starve a steady write
//! load; readers never wait for it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Transaction};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::shared::{
    self, AgencyRow, AlertRow, AppRow, AttemptRow, BacklogDbRow, ChannelRow, DeliveryReceiptRow, DeliveryRow,
    ReceiptRow, SecretRow, StatsDbRow, agency_columns, alert_columns, app_columns, attempt_columns, channel_columns,
    delivery_columns, receipt_columns, secret_columns, stats_columns, write_error,
};
use crate::{
    Agency, Alert, App, AttemptRecord, Backend, BacklogRow, Channel, ClaimedDelivery, Completion, ConnectOptions,
    Delivery, DeliveryFilter, DeliveryStatus, DeliveryUpdate, InsertOutcome, NewAgency, NewApp, NewAppSecret,
    NewChannel, NewDelivery, NewReceiptRecord, ReimbursementState, Result, Reversal, ReversalOutcome, StatsRow, Store,
    StoreError, StoredReceipt,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Writers are serialised by `BEGIN IMMEDIATE`: matching needs no extra lock.
async fn lock_identities(_conn: &mut SqliteConnection, _keys: &[i64]) -> Result<()> {
    Ok(())
}

crate::wallet_sql::wallet_store!(SqliteStore, sqlx::Sqlite, SqliteConnection, lock_identities, "");

pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection this process writes through (the same pool in memory).
    writes: SqlitePool,
    /// This process's turn to write.
    writer: Arc<WriteTurn>,
    /// The runtime the store was opened on (the process's main one), where
    /// receipts are written; see `insert_receipt`.
    runtime: tokio::runtime::Handle,
}

impl SqliteStore {
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        let url = opts.url.as_str();
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
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
                .connect_with(options.clone())
                .await?;
            // Writing through one connection keeps its page cache warm: a
            // connection's cache is dropped whenever another one has written.
            let writes = SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            (pool, writes)
        };
        Ok(Self {
            pool,
            writes,
            writer: Arc::new(WriteTurn::default()),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// A write transaction (`BEGIN IMMEDIATE`), begun on this process's turn to
    /// write; the turn ends when the guard is dropped, after the transaction.
    async fn begin_write(&self) -> Result<(MutexGuard<'_, ()>, Transaction<'static, Sqlite>)> {
        let turn = self.writer.turn().await;
        let tx = self.writes.begin_with("BEGIN IMMEDIATE").await?;
        Ok((turn, tx))
    }

    /// This process's turn to write, for a single statement on `self.writes`.
    async fn write_turn(&self) -> MutexGuard<'_, ()> {
        self.writer.turn().await
    }
}

/// This process's turn to write (tokio's mutex queues in arrival order). Pushed
/// receipts first queue in a lane of their own and join the turn's queue one at a
/// time: under a stream of pushes, the notifier's claims and completions (each a
/// batch that moves many accepted receipts on) then wait for at most one receipt's
/// write rather than for every push in flight, and new pushes wait instead.
#[derive(Default)]
struct WriteTurn {
    turn: Mutex<()>,
    intake: Mutex<()>,
}

impl WriteTurn {
    async fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    async fn intake_turn(&self) -> MutexGuard<'_, ()> {
        let _lane = self.intake.lock().await;
        self.turn.lock().await
    }
}

/// What writing a pushed receipt came to.
enum Written {
    New(Box<StoredReceipt>),
    Existing(Box<InsertOutcome>),
}

/// Inserts a receipt and its deliveries in the caller's write transaction, or
/// classifies the receipt already holding its identity.
async fn insert_receipt_in(
    conn: &mut SqliteConnection,
    r: &NewReceiptRecord,
    deliveries: &[NewDelivery],
) -> Result<Written> {
    let now = shared::now();
    // Writers are serialised, so a taken identity is simply a committed row.
    let inserted: Option<ReceiptRow> = sqlx::query_as(concat!(
        "INSERT INTO receipts (id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, \
         bus_no, bus_type, payer_type, issued_at, total_fen, content_hash, payer_sealed, \
         payer_id_index, payer_phone_index, payer_name_index, open_id, details, file, \
         received_at, reimbursement_state, updated_at, search_text) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, 'INIT', $21, $22) \
         ON CONFLICT (bill_batch_code, bill_no) DO NOTHING RETURNING ",
        receipt_columns!()
    ))
    .bind(r.id)
    .bind(r.agency_id)
    .bind(&r.issuer_app_id)
    .bind(&r.bill_batch_code)
    .bind(&r.bill_no)
    .bind(&r.random)
    .bind(&r.bus_no)
    .bind(&r.bus_type)
    .bind(&r.payer_type)
    .bind(r.issued_at)
    .bind(r.total_fen)
    .bind(&r.content_hash)
    .bind(&r.payer_sealed)
    .bind(&r.payer_id_index)
    .bind(&r.payer_phone_index)
    .bind(&r.payer_name_index)
    .bind(&r.open_id)
    .bind(Json(&r.details))
    .bind(r.file.as_ref().map(Json))
    .bind(r.received_at)
    .bind(now)
    .bind(&r.search_text)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| write_error(e, "receipt_id"))?;
    if let Some(row) = inserted {
        // The rows come back from the writes themselves: no reading back.
        let mut planned = deliveries.to_vec();
        planned.extend(collect_new_receipt(&mut *conn, r, deliveries, now, false).await?);
        let stored_deliveries = insert_deliveries(&mut *conn, row.id, r.agency_id, &planned, now).await?;
        return Ok(Written::New(Box::new(row.into_receipt(stored_deliveries)?)));
    }
    let row: Option<ReceiptRow> = sqlx::query_as(concat!(
        "SELECT ",
        receipt_columns!(),
        " FROM receipts WHERE bill_batch_code = $1 AND bill_no = $2"
    ))
    .bind(&r.bill_batch_code)
    .bind(&r.bill_no)
    .fetch_optional(&mut *conn)
    .await?;
    let existing = written(with_deliveries(&mut *conn, row).await?, "conflicting receipt")?;
    Ok(Written::Existing(Box::new(shared::classify_existing(existing, r))))
}

/// The fenced step of completing one attempt, inside the caller's write
/// transaction: false (and nothing written) unless `owner` holds the lease.
async fn complete_in(
    conn: &mut SqliteConnection,
    delivery_id: Uuid,
    owner: &str,
    attempt: AttemptRecord,
    update: DeliveryUpdate,
    follow_ups: &[NewDelivery],
) -> Result<bool> {
    let now = shared::now();
    let attempt = shared::normalize_attempt(attempt);
    let t = shared::transition(update, now);
    // The fence: only the lease holder of a pending delivery moves it on.
    let owned: Option<(Uuid, Uuid)> = sqlx::query_as(shared::COMPLETE_ATTEMPT)
        .bind(delivery_id)
        .bind(owner)
        .bind(t.status)
        .bind(t.next_attempt_at)
        .bind(&t.last_error)
        .bind(&t.park_reason)
        .bind(&t.provider_ref)
        .bind(t.delivered_at)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((receipt_id, agency_id)) = owned else {
        return Ok(false);
    };
    sqlx::query(shared::INSERT_ATTEMPT)
        .bind(attempt.id)
        .bind(delivery_id)
        .bind(attempt.started_at)
        .bind(attempt.latency_ms)
        .bind(attempt.outcome.as_str())
        .bind(attempt.code)
        .bind(&attempt.detail)
        .execute(&mut *conn)
        .await
        .map_err(|e| write_error(e, "attempt_id"))?;
    insert_deliveries(&mut *conn, receipt_id, agency_id, follow_ups, now).await?;
    Ok(true)
}

async fn load_agency_by_code(conn: &mut SqliteConnection, code: &str) -> Result<Option<Agency>> {
    let row: Option<AgencyRow> =
        sqlx::query_as(concat!("SELECT ", agency_columns!(), " FROM agencies WHERE code = $1"))
            .bind(code)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(Agency::from))
}

async fn load_app(conn: &mut SqliteConnection, app_id: &str) -> Result<Option<App>> {
    let row: Option<AppRow> = sqlx::query_as(concat!("SELECT ", app_columns!(), " FROM apps WHERE app_id = $1"))
        .bind(app_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let secrets: Vec<SecretRow> = sqlx::query_as(concat!(
        "SELECT ",
        secret_columns!(),
        " FROM app_secrets WHERE app_id = $1 AND retired_at IS NULL",
        " ORDER BY created_at DESC, id DESC"
    ))
    .bind(app_id)
    .fetch_all(&mut *conn)
    .await?;
    row.into_app(secrets).map(Some)
}

/// Checks the app exists; the IMMEDIATE transaction already serialises writers.
async fn lock_app(conn: &mut SqliteConnection, app_id: &str) -> Result<()> {
    sqlx::query_scalar::<_, String>("SELECT app_id FROM apps WHERE app_id = $1")
        .bind(app_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|_| ())
        .ok_or(StoreError::NotFound)
}

/// Retires the app's active secrets, sparing the newest one when `keep_newest`.
async fn retire_secrets(
    conn: &mut SqliteConnection,
    app_id: &str,
    keep_newest: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let sql = if keep_newest {
        "UPDATE app_secrets SET retired_at = $2 WHERE app_id = $1 AND retired_at IS NULL AND id <> \
         (SELECT id FROM app_secrets WHERE app_id = $1 AND retired_at IS NULL \
          ORDER BY created_at DESC, id DESC LIMIT 1)"
    } else {
        "UPDATE app_secrets SET retired_at = $2 WHERE app_id = $1 AND retired_at IS NULL"
    };
    sqlx::query(sql).bind(app_id).bind(now).execute(&mut *conn).await?;
    Ok(())
}

async fn insert_secret(
    conn: &mut SqliteConnection,
    app_id: &str,
    secret: &NewAppSecret,
    now: DateTime<Utc>,
) -> Result<()> {
    // The new secret must sort first even if the clock stepped back or an older
    // secret carries the same microsecond.
    let newest: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT created_at FROM app_secrets WHERE app_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(app_id)
            .fetch_optional(&mut *conn)
            .await?;
    let created_at = shared::after(newest, now);
    sqlx::query("INSERT INTO app_secrets (id, app_id, sealed, created_at) VALUES ($1, $2, $3, $4)")
        .bind(secret.id)
        .bind(app_id)
        .bind(&secret.sealed)
        .bind(created_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| write_error(e, "app_secret_id"))?;
    Ok(())
}

async fn load_deliveries(conn: &mut SqliteConnection, receipt_id: Uuid) -> Result<Vec<DeliveryRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM deliveries WHERE receipt_id = $1 ORDER BY created_at, id"
    ))
    .bind(receipt_id)
    .fetch_all(&mut *conn)
    .await?)
}

async fn with_deliveries(conn: &mut SqliteConnection, row: Option<ReceiptRow>) -> Result<Option<StoredReceipt>> {
    let Some(row) = row else { return Ok(None) };
    let deliveries = load_deliveries(conn, row.id).await?;
    row.into_receipt(deliveries).map(Some)
}

async fn load_receipt_by_id(conn: &mut SqliteConnection, id: Uuid) -> Result<Option<StoredReceipt>> {
    let row: Option<ReceiptRow> =
        sqlx::query_as(concat!("SELECT ", receipt_columns!(), " FROM receipts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    with_deliveries(conn, row).await
}

async fn insert_deliveries(
    conn: &mut SqliteConnection,
    receipt_id: Uuid,
    agency_id: Uuid,
    deliveries: &[NewDelivery],
    now: DateTime<Utc>,
) -> Result<Vec<DeliveryRow>> {
    let mut rows = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let row: DeliveryRow = sqlx::query_as(concat!(
            "INSERT INTO deliveries (id, receipt_id, agency_id, event, channel, target, interface, \
             payload, status, attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9, $9) RETURNING ",
            delivery_columns!()
        ))
        .bind(d.id)
        .bind(receipt_id)
        .bind(agency_id)
        .bind(d.event.as_str())
        .bind(&d.channel)
        .bind(&d.target)
        .bind(&d.interface)
        .bind(d.payload.as_ref().map(Json))
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| write_error(e, "delivery_id"))?;
        rows.push(row);
    }
    // In the order reading back gives: (created_at, id), created_at being `now`.
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

/// Loads a row just written in this transaction; its absence is a broken invariant.
fn written<T>(row: Option<T>, what: &str) -> Result<T> {
    row.ok_or_else(|| StoreError::Corrupt(format!("{what} vanished inside its transaction")))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
             AND name = '_sqlx_migrations')",
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
        Ok(shared::all_applied(&MIGRATOR, &applied))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_agency(&self, agency: NewAgency) -> Result<Agency> {
        let now = shared::now();
        let row: AgencyRow = sqlx::query_as(concat!(
            "INSERT INTO agencies (id, code, name, file_hosts, created_at, updated_at) ",
            "VALUES ($1, $2, $3, $4, $5, $5) RETURNING ",
            agency_columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(&agency.code)
        .bind(&agency.name)
        .bind(Json(&agency.file_hosts))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| write_error(e, "agency_code"))?;
        Ok(row.into())
    }

    async fn upsert_agency(&self, agency: NewAgency) -> Result<Agency> {
        let now = shared::now();
        let row: AgencyRow = sqlx::query_as(concat!(
            "INSERT INTO agencies (id, code, name, file_hosts, created_at, updated_at) ",
            "VALUES ($1, $2, $3, $4, $5, $5) ",
            "ON CONFLICT (code) DO UPDATE SET name = excluded.name, ",
            "file_hosts = excluded.file_hosts, updated_at = excluded.updated_at RETURNING ",
            agency_columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(&agency.code)
        .bind(&agency.name)
        .bind(Json(&agency.file_hosts))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| write_error(e, "agency_code"))?;
        Ok(row.into())
    }

    async fn agency(&self, id: Uuid) -> Result<Option<Agency>> {
        let row: Option<AgencyRow> =
            sqlx::query_as(concat!("SELECT ", agency_columns!(), " FROM agencies WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Agency::from))
    }

    async fn agency_by_code(&self, code: &str) -> Result<Option<Agency>> {
        let mut conn = self.pool.acquire().await?;
        load_agency_by_code(&mut conn, code).await
    }

    async fn list_agencies(&self) -> Result<Vec<Agency>> {
        let rows: Vec<AgencyRow> =
            sqlx::query_as(concat!("SELECT ", agency_columns!(), " FROM agencies ORDER BY code"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(Agency::from).collect())
    }

    async fn create_app(&self, app: NewApp) -> Result<App> {
        let now = shared::now();
        let (_turn, mut tx) = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO apps (app_id, agency_id, kind, name, enabled, callback_url, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $6)",
        )
        .bind(&app.app_id)
        .bind(app.agency_id)
        .bind(app.kind.as_str())
        .bind(&app.name)
        .bind(&app.callback_url)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, "app_id"))?;
        insert_secret(&mut tx, &app.app_id, &app.secret, now).await?;
        let created = written(load_app(&mut tx, &app.app_id).await?, "app")?;
        tx.commit().await?;
        Ok(created)
    }

    async fn app(&self, app_id: &str) -> Result<Option<App>> {
        let mut conn = self.pool.acquire().await?;
        load_app(&mut conn, app_id).await
    }

    async fn list_apps(&self, agency_id: Option<Uuid>) -> Result<Vec<App>> {
        // One snapshot for both queries so apps and secrets agree.
        let mut tx = self.pool.begin().await?;
        let apps: Vec<AppRow> = sqlx::query_as(concat!(
            "SELECT ",
            app_columns!(),
            " FROM apps WHERE ($1 IS NULL OR agency_id = $1) ORDER BY created_at, app_id"
        ))
        .bind(agency_id)
        .fetch_all(&mut *tx)
        .await?;
        let secrets: Vec<SecretRow> = sqlx::query_as(concat!(
            "SELECT ",
            secret_columns!(),
            " FROM app_secrets WHERE retired_at IS NULL AND app_id IN ",
            "(SELECT app_id FROM apps WHERE $1 IS NULL OR agency_id = $1) ",
            "ORDER BY app_id, created_at DESC, id DESC"
        ))
        .bind(agency_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        shared::assemble_apps(apps, secrets)
    }

    async fn add_app_secret(&self, app_id: &str, secret: NewAppSecret, keep_previous: bool) -> Result<App> {
        let now = shared::now();
        let (_turn, mut tx) = self.begin_write().await?;
        lock_app(&mut tx, app_id).await?;
        retire_secrets(&mut tx, app_id, keep_previous, now).await?;
        insert_secret(&mut tx, app_id, &secret, now).await?;
        let app = written(load_app(&mut tx, app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn retire_old_app_secrets(&self, app_id: &str) -> Result<App> {
        let now = shared::now();
        let (_turn, mut tx) = self.begin_write().await?;
        lock_app(&mut tx, app_id).await?;
        retire_secrets(&mut tx, app_id, true, now).await?;
        let app = written(load_app(&mut tx, app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn set_app_enabled(&self, app_id: &str, enabled: bool) -> Result<App> {
        let (_turn, mut tx) = self.begin_write().await?;
        let done = sqlx::query("UPDATE apps SET enabled = $2, updated_at = $3 WHERE app_id = $1")
            .bind(app_id)
            .bind(enabled)
            .bind(shared::now())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let app = written(load_app(&mut tx, app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn set_app_callback(&self, app_id: &str, callback_url: Option<String>) -> Result<App> {
        let (_turn, mut tx) = self.begin_write().await?;
        let done = sqlx::query("UPDATE apps SET callback_url = $2, updated_at = $3 WHERE app_id = $1")
            .bind(app_id)
            .bind(&callback_url)
            .bind(shared::now())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let app = written(load_app(&mut tx, app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn insert_receipt(&self, receipt: NewReceiptRecord, deliveries: Vec<NewDelivery>) -> Result<InsertOutcome> {
        let r = shared::normalize_receipt(receipt);
        let (writes, writer) = (self.writes.clone(), self.writer.clone());
        // On the store's runtime, not the caller's: pushes arrive on the HTTP
        // server's single-threaded workers, where every await inside the turn
        // would wait behind other requests' CPU work (signatures, sealing) while
        // all writers wait for the turn.
        let write = self.runtime.spawn(async move {
            let _turn = writer.intake_turn().await;
            let mut tx = writes.begin_with("BEGIN IMMEDIATE").await?;
            let outcome = insert_receipt_in(&mut tx, &r, &deliveries).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(outcome)
        });
        let outcome = match write.await {
            Ok(outcome) => outcome?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down.
            Err(_) => return Err(StoreError::Database(sqlx::Error::PoolClosed)),
        };
        match outcome {
            Written::New(stored) => Ok(InsertOutcome::Created(*stored)),
            Written::Existing(outcome) => Ok(*outcome),
        }
    }

    async fn receipt(&self, agency_id: Uuid, bill_batch_code: &str, bill_no: &str) -> Result<Option<StoredReceipt>> {
        // Receipt and deliveries from one snapshot (a deferred, read-only transaction).
        let mut tx = self.pool.begin().await?;
        let row: Option<ReceiptRow> = sqlx::query_as(concat!(
            "SELECT ",
            receipt_columns!(),
            " FROM receipts WHERE agency_id = $1 AND bill_batch_code = $2 AND bill_no = $3"
        ))
        .bind(agency_id)
        .bind(bill_batch_code)
        .bind(bill_no)
        .fetch_optional(&mut *tx)
        .await?;
        let stored = with_deliveries(&mut tx, row).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn reverse_receipt(
        &self,
        agency_id: Uuid,
        bill_batch_code: &str,
        bill_no: &str,
        reversal: Reversal,
        deliveries: Vec<NewDelivery>,
    ) -> Result<ReversalOutcome> {
        let reversal = shared::normalize_reversal(reversal);
        let now = shared::now();
        let (_turn, mut tx) = self.begin_write().await?;
        let row: Option<ReceiptRow> = sqlx::query_as(concat!(
            "SELECT ",
            receipt_columns!(),
            " FROM receipts WHERE agency_id = $1 AND bill_batch_code = $2 AND bill_no = $3"
        ))
        .bind(agency_id)
        .bind(bill_batch_code)
        .bind(bill_no)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(stored) = with_deliveries(&mut tx, row).await? else {
            return Ok(ReversalOutcome::NotFound);
        };
        let id = stored.id;
        if let Some(refusal) = shared::refuse_reversal(stored, &reversal) {
            return Ok(refusal);
        }
        sqlx::query(
            "UPDATE receipts SET red_bill_batch_code = $2, red_bill_no = $3, red_random = $4, \
             reversed_at = $5, reversal_reason = $6, reversal_recorded_at = $7, \
             reimbursement_state = 'CANCEL', updated_at = $8 WHERE id = $1",
        )
        .bind(id)
        .bind(&reversal.red_bill_batch_code)
        .bind(&reversal.red_bill_no)
        .bind(&reversal.red_random)
        .bind(reversal.reversed_at)
        .bind(&reversal.reason)
        .bind(reversal.recorded_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_deliveries(&mut tx, id, agency_id, &deliveries, now).await?;
        let updated = written(load_receipt_by_id(&mut tx, id).await?, "receipt")?;
        tx.commit().await?;
        Ok(ReversalOutcome::Reversed(updated))
    }

    async fn set_reimbursement_state(&self, receipt_id: Uuid, state: ReimbursementState) -> Result<()> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("UPDATE receipts SET reimbursement_state = $2, updated_at = $3 WHERE id = $1")
            .bind(receipt_id)
            .bind(state.as_str())
            .bind(shared::now())
            .execute(&self.writes)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn count_receipts(&self, agency_id: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM receipts WHERE agency_id = $1")
            .bind(agency_id)
            .fetch_one(&self.pool)
            .await?)
    }
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        let (now, lease_until) = (shared::micros(now), shared::micros(lease_until));
        // The write lock makes select-and-lease one step for concurrent claimers.
        // INDEXED BY: without statistics SQLite would rather take the status index
        // and sort every pending row; the due index yields them in claim order.
        let (_turn, mut tx) = self.begin_write().await?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(concat!(
            "UPDATE deliveries SET lease_owner = $1, lease_until = $2 WHERE id IN ",
            "(SELECT id FROM deliveries INDEXED BY deliveries_due_idx ",
            "WHERE status = 'pending' AND next_attempt_at <= $3 ",
            "AND (lease_until IS NULL OR lease_until < $3) ",
            "ORDER BY next_attempt_at, created_at LIMIT $4) RETURNING ",
            delivery_columns!()
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let receipts: Vec<DeliveryReceiptRow> = shared::delivery_receipts_query(&shared::receipt_ids(&rows))
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        shared::assemble_claimed(rows, receipts, lease_until)
    }

    async fn renew_lease(&self, delivery_id: Uuid, owner: &str, lease_until: DateTime<Utc>) -> Result<bool> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE deliveries SET lease_until = $3 \
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(delivery_id)
        .bind(owner)
        .bind(shared::micros(lease_until))
        .execute(&self.writes)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete_attempt(
        &self,
        delivery_id: Uuid,
        owner: &str,
        attempt: AttemptRecord,
        update: DeliveryUpdate,
        follow_ups: Vec<NewDelivery>,
    ) -> Result<bool> {
        let (_turn, mut tx) = self.begin_write().await?;
        let done = complete_in(&mut tx, delivery_id, owner, attempt, update, &follow_ups).await?;
        if done {
            tx.commit().await?;
        }
        Ok(done)
    }

    async fn complete_attempts(&self, owner: &str, completions: &[Completion]) -> Result<Vec<bool>> {
        // One write transaction for all: SQLite has one writer, and each
        // transaction of its own would queue for it again.
        let (_turn, mut tx) = self.begin_write().await?;
        let mut ids: Vec<Uuid> = completions.iter().map(|c| c.delivery_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if completions.len() < 2 || ids.len() < completions.len() {
            // One, or the same delivery twice: in order, so the second meets the
            // fence the first left.
            let mut done = Vec::with_capacity(completions.len());
            for c in completions {
                let (attempt, update) = (c.attempt.clone(), c.update.clone());
                done.push(complete_in(&mut tx, c.delivery_id, owner, attempt, update, &c.follow_ups).await?);
            }
            tx.commit().await?;
            return Ok(done);
        }
        // Every statement is a round trip to the connection's thread while the
        // writer lock is held: one UPDATE and one INSERT for the whole batch.
        let now = shared::now();
        let mut update = QueryBuilder::<Sqlite>::new(
            "WITH u (id, status, next_attempt_at, last_error, park_reason, provider_ref, delivered_at) AS (",
        );
        update.push_values(completions, |mut row, c| {
            let t = shared::transition(c.update.clone(), now);
            row.push_bind(c.delivery_id)
                .push_bind(t.status)
                .push_bind(t.next_attempt_at)
                .push_bind(t.last_error)
                .push_bind(t.park_reason)
                .push_bind(t.provider_ref)
                .push_bind(t.delivered_at);
        });
        update
            .push(
                ") UPDATE deliveries SET status = u.status, attempts = deliveries.attempts + 1, \
                 next_attempt_at = COALESCE(u.next_attempt_at, deliveries.next_attempt_at), \
                 last_error = u.last_error, park_reason = u.park_reason, \
                 provider_ref = CASE WHEN u.status = 'delivered' THEN u.provider_ref \
                 ELSE deliveries.provider_ref END, \
                 delivered_at = COALESCE(u.delivered_at, deliveries.delivered_at), \
                 lease_owner = NULL, lease_until = NULL, updated_at = ",
            )
            .push_bind(now)
            .push(" FROM u WHERE deliveries.id = u.id AND deliveries.lease_owner = ")
            .push_bind(owner)
            .push(" AND deliveries.status = 'pending' RETURNING id, receipt_id, agency_id");
        let owned: Vec<(Uuid, Uuid, Uuid)> = update.build_query_as().persistent(false).fetch_all(&mut *tx).await?;
        let owned: std::collections::HashMap<Uuid, (Uuid, Uuid)> =
            owned.into_iter().map(|(d, r, a)| (d, (r, a))).collect();
        let recorded: Vec<&Completion> = completions
            .iter()
            .filter(|c| owned.contains_key(&c.delivery_id))
            .collect();
        if !recorded.is_empty() {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO delivery_attempts (id, delivery_id, started_at, latency_ms, outcome, code, detail) ",
            );
            insert.push_values(&recorded, |mut row, c| {
                let a = shared::normalize_attempt(c.attempt.clone());
                row.push_bind(a.id)
                    .push_bind(c.delivery_id)
                    .push_bind(a.started_at)
                    .push_bind(a.latency_ms)
                    .push_bind(a.outcome.as_str())
                    .push_bind(a.code)
                    .push_bind(a.detail);
            });
            insert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(|e| write_error(e, "attempt_id"))?;
        }
        for c in &recorded {
            if let Some((receipt_id, agency_id)) = owned.get(&c.delivery_id) {
                insert_deliveries(&mut tx, *receipt_id, *agency_id, &c.follow_ups, now).await?;
            }
        }
        tx.commit().await?;
        Ok(completions.iter().map(|c| owned.contains_key(&c.delivery_id)).collect())
    }

    async fn defer_delivery(&self, delivery_id: Uuid, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $3, lease_owner = NULL, lease_until = NULL, \
             updated_at = $4 WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(delivery_id)
        .bind(owner)
        .bind(shared::micros(until))
        .bind(shared::now())
        .execute(&self.writes)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delivery_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRecord>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM delivery_attempts WHERE delivery_id = $1 ORDER BY started_at, id"
        ))
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AttemptRecord::try_from).collect()
    }

    async fn delivery(&self, delivery_id: Uuid) -> Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = sqlx::query_as(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE id = $1"
        ))
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeliveryRow::into_delivery).transpose()
    }

    async fn delivery_by_provider_ref(&self, channel: &str, provider_ref: &str) -> Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = sqlx::query_as(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE channel = $1 AND provider_ref = $2 ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(channel)
        .bind(provider_ref)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeliveryRow::into_delivery).transpose()
    }

    async fn set_delivery_outcome(
        &self,
        delivery_id: Uuid,
        status: DeliveryStatus,
        error: Option<String>,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        let now = shared::now();
        let done = sqlx::query(
            "UPDATE deliveries SET status = $2, last_error = $3, updated_at = $4, \
             delivered_at = CASE WHEN $2 = 'delivered' THEN $4 ELSE delivered_at END, \
             park_reason = CASE WHEN $2 = 'parked' THEN park_reason END WHERE id = $1",
        )
        .bind(delivery_id)
        .bind(status.as_str())
        .bind(&error)
        .bind(now)
        .execute(&self.writes)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter, limit: i64) -> Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = shared::list_deliveries_query(filter, limit)
            .build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?;
        shared::into_deliveries(rows)
    }

    async fn redrive(&self, filter: &DeliveryFilter, start: DateTime<Utc>, spacing: chrono::Duration) -> Result<u64> {
        let Some(mut candidates) = shared::redrive_candidates_query(filter) else {
            return Ok(0);
        };
        let now = shared::now();
        let (_turn, mut tx) = self.begin_write().await?;
        let ids: Vec<Uuid> = candidates
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
        let schedule = shared::redrive_schedule(ids, start, spacing);
        for (id, due) in &schedule {
            sqlx::query(
                "UPDATE deliveries SET status = 'pending', attempts = 0, park_reason = NULL, \
                 lease_owner = NULL, lease_until = NULL, next_attempt_at = $2, updated_at = $3 \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(due)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(schedule.len() as u64)
    }

    async fn backlog(&self) -> Result<Vec<BacklogRow>> {
        let rows: Vec<BacklogDbRow> = sqlx::query_as(
            "SELECT channel, interface, count(*) AS pending, min(created_at) AS oldest_created_at \
             FROM deliveries WHERE status = 'pending' GROUP BY channel, interface ORDER BY channel, interface",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(BacklogRow::from).collect())
    }

    async fn upsert_stats(&self, rows: Vec<StatsRow>) -> Result<()> {
        let (_turn, mut tx) = self.begin_write().await?;
        for r in rows.into_iter().map(shared::normalize_stats) {
            sqlx::query(concat!(
                "INSERT INTO tracking_stats (",
                stats_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7) ",
                "ON CONFLICT (minute, scope, key, writer) DO UPDATE SET attempts = excluded.attempts, ",
                "successes = excluded.successes, latency_buckets = excluded.latency_buckets"
            ))
            .bind(r.minute)
            .bind(&r.scope)
            .bind(&r.key)
            .bind(&r.writer)
            .bind(r.attempts)
            .bind(r.successes)
            .bind(Json(&r.latency_buckets))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stats_since(&self, since: DateTime<Utc>) -> Result<Vec<StatsRow>> {
        let rows: Vec<StatsDbRow> = sqlx::query_as(concat!(
            "SELECT ",
            stats_columns!(),
            " FROM tracking_stats WHERE minute >= $1 ORDER BY minute, scope, key, writer"
        ))
        .bind(shared::micros(since))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(StatsRow::from).collect())
    }

    async fn upsert_channel(&self, channel: NewChannel) -> Result<Channel> {
        upsert_channel(self, channel).await
    }

    async fn channels_for_agency(&self, agency_id: Uuid) -> Result<Vec<Channel>> {
        let rows: Vec<ChannelRow> = sqlx::query_as(concat!(
            "SELECT ",
            channel_columns!(),
            " FROM channels WHERE agency_id = $1 ORDER BY kind"
        ))
        .bind(agency_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Channel::from).collect())
    }

    async fn channel_by_wechat_app(&self, wechat_app_id: &str) -> Result<Vec<Channel>> {
        let rows: Vec<ChannelRow> = sqlx::query_as(concat!(
            "SELECT ",
            channel_columns!(),
            " FROM channels WHERE wechat_app_id = $1 ORDER BY created_at, id"
        ))
        .bind(wechat_app_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Channel::from).collect())
    }

    async fn firing_alert(&self, rule: &str, key: &str) -> Result<Option<Alert>> {
        let row: Option<AlertRow> = sqlx::query_as(concat!(
            "SELECT ",
            alert_columns!(),
            " FROM alerts WHERE rule = $1 AND key = $2 AND state = 'firing'"
        ))
        .bind(rule)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Alert::from))
    }

    async fn save_alert(&self, alert: &Alert) -> Result<()> {
        let _turn = self.write_turn().await;
        let a = shared::normalize_alert(alert);
        sqlx::query(concat!(
            "INSERT INTO alerts (",
            alert_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
            "ON CONFLICT (id) DO UPDATE SET rule = excluded.rule, key = excluded.key, ",
            "state = excluded.state, message = excluded.message, started_at = excluded.started_at, ",
            "last_notified_at = excluded.last_notified_at, resolved_at = excluded.resolved_at"
        ))
        .bind(a.id)
        .bind(&a.rule)
        .bind(&a.key)
        .bind(&a.state)
        .bind(&a.message)
        .bind(a.started_at)
        .bind(a.last_notified_at)
        .bind(a.resolved_at)
        .execute(&self.writes)
        .await
        .map_err(|e| write_error(e, "alert_firing"))?;
        Ok(())
    }

    async fn list_alerts(&self, limit: i64) -> Result<Vec<Alert>> {
        let rows: Vec<AlertRow> = sqlx::query_as(concat!(
            "SELECT ",
            alert_columns!(),
            " FROM alerts ORDER BY started_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Alert::from).collect())
    }
}
