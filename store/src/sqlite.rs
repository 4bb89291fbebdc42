//! SQLite implementation, parallel to the PostgreSQL one. SQLite has one writer at
//! a time, so every write transaction starts with `BEGIN IMMEDIATE`: it takes the
//! write lock up front (waiting up to the busy timeout) instead of failing with
//! SQLITE_BUSY when a read transaction later tries to upgrade. Holding that lock is
//! what `FOR UPDATE` gives on PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use uuid::Uuid;

use crate::shared::{
    self, AgencyRow, AppRow, DeliveryRow, ReceiptRow, SecretRow, agency_columns, app_columns, delivery_columns,
    receipt_columns, secret_columns, write_error,
};
use crate::{
    Agency, App, Backend, ConnectOptions, InsertOutcome, NewAgency, NewApp, NewAppSecret, NewDelivery,
    NewReceiptRecord, ReimbursementState, Result, Reversal, ReversalOutcome, Store, StoreError, StoredReceipt,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = if in_memory {
            // An in-memory database lives as long as one of its connections: keep
            // exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
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
            SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .connect_with(options)
                .await?
        };
        Ok(Self { pool })
    }
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
) -> Result<()> {
    for d in deliveries {
        sqlx::query(
            "INSERT INTO deliveries (id, receipt_id, agency_id, event, channel, target, status, \
             attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7)",
        )
        .bind(d.id)
        .bind(receipt_id)
        .bind(agency_id)
        .bind(d.event.as_str())
        .bind(&d.channel)
        .bind(&d.target)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| write_error(e, "delivery_id"))?;
    }
    Ok(())
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        lock_app(&mut tx, app_id).await?;
        retire_secrets(&mut tx, app_id, keep_previous, now).await?;
        insert_secret(&mut tx, app_id, &secret, now).await?;
        let app = written(load_app(&mut tx, app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn retire_old_app_secrets(&self, app_id: &str) -> Result<App> {
        let now = shared::now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        lock_app(&mut tx, app_id).await?;
        retire_secrets(&mut tx, app_id, true, now).await?;
        let app = written(load_app(&mut tx, app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn set_app_enabled(&self, app_id: &str, enabled: bool) -> Result<App> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let now = shared::now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Writers are serialised, so a taken identity is simply a committed row.
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO receipts (id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, \
             bus_no, bus_type, payer_type, issued_at, total_fen, content_hash, payer_sealed, \
             payer_id_index, payer_phone_index, payer_name_index, open_id, details, file, \
             received_at, reimbursement_state, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, 'INIT', $21) \
             ON CONFLICT (bill_batch_code, bill_no) DO NOTHING RETURNING id",
        )
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
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error(e, "receipt_id"))?;

        if let Some(id) = inserted {
            insert_deliveries(&mut tx, id, r.agency_id, &deliveries, now).await?;
            let stored = written(load_receipt_by_id(&mut tx, id).await?, "receipt")?;
            tx.commit().await?;
            return Ok(InsertOutcome::Created(stored));
        }

        let row: Option<ReceiptRow> = sqlx::query_as(concat!(
            "SELECT ",
            receipt_columns!(),
            " FROM receipts WHERE bill_batch_code = $1 AND bill_no = $2"
        ))
        .bind(&r.bill_batch_code)
        .bind(&r.bill_no)
        .fetch_optional(&mut *tx)
        .await?;
        let existing = written(with_deliveries(&mut tx, row).await?, "conflicting receipt")?;
        tx.commit().await?;
        Ok(shared::classify_existing(existing, &r))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let done = sqlx::query("UPDATE receipts SET reimbursement_state = $2, updated_at = $3 WHERE id = $1")
            .bind(receipt_id)
            .bind(state.as_str())
            .bind(shared::now())
            .execute(&self.pool)
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
}
