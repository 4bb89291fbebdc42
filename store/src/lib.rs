//! Storage of piaojia: one trait, [`Store`], with a PostgreSQL and a SQLite
//! implementation that behave the same. The backend is chosen from the URL scheme
//! at start (`postgres://` or `sqlite:`), each has its own embedded migrations, and
//! queries are runtime `query`/`query_as` so one crate can serve both databases.

mod postgres;
mod records;
mod shared;
mod sqlite;
pub mod wallet;
mod wallet_sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use postgres::PgStore;
pub use records::*;
pub use sqlite::SqliteStore;
pub use wallet::PayerStore;

/// Errors the storage layer reports; callers map them to HTTP answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated; the string names the rule (e.g. `agency_code`).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Connection options shared by both backends.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    pub max_connections: u32,
}

/// Opens the store named by `opts.url`: `postgres://…`/`postgresql://…` or `sqlite:…`.
/// Migrations are not run here: call [`Store::migrate`] deliberately.
pub async fn connect(opts: &ConnectOptions) -> Result<Arc<dyn Store>> {
    let url = opts.url.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(opts).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(opts).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// Drops the password of a URL so it can be logged or shown in an error.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Completes attempts one at a time, in order, so a second completion of one
/// delivery meets the fence the first left.
pub(crate) async fn complete_each<S: Store + ?Sized>(
    store: &S,
    owner: &str,
    completions: &[Completion],
) -> Result<Vec<bool>> {
    let mut done = Vec::with_capacity(completions.len());
    for c in completions {
        let c = c.clone();
        done.push(
            store
                .complete_attempt(c.delivery_id, owner, c.attempt, c.update, c.follow_ups)
                .await?,
        );
    }
    Ok(done)
}

/// Everything piaojia persists. Both implementations must pass the same story
/// (`store/tests/story.rs`) and the whole API suite.
#[async_trait]
pub trait Store: PayerStore + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> Result<()>;
    /// True when every embedded migration has been applied (readiness).
    async fn migrations_current(&self) -> Result<bool>;
    /// A cheap round trip (readiness).
    async fn ping(&self) -> Result<()>;

    // ----- agencies (开票单位, tenants) -----
    /// Creates an agency; `Conflict("agency_code")` when the code exists.
    async fn create_agency(&self, agency: NewAgency) -> Result<Agency>;
    /// Creates or updates (name, file hosts) by code: declarative provisioning.
    async fn upsert_agency(&self, agency: NewAgency) -> Result<Agency>;
    async fn agency(&self, id: Uuid) -> Result<Option<Agency>>;
    async fn agency_by_code(&self, code: &str) -> Result<Option<Agency>>;
    async fn list_agencies(&self) -> Result<Vec<Agency>>;

    // ----- apps: issuers now, reimbursers later -----
    /// Creates an app with its first secret; `Conflict("app_id")` when it exists.
    async fn create_app(&self, app: NewApp) -> Result<App>;
    /// Fetches an app with its active secrets, newest first.
    async fn app(&self, app_id: &str) -> Result<Option<App>>;
    async fn list_apps(&self, agency_id: Option<Uuid>) -> Result<Vec<App>>;
    /// Adds `secret` as the newest. With `keep_previous`, the newest existing secret
    /// stays active beside it (rotation); older ones are retired, so at most two are
    /// active. Without it, every existing secret is retired.
    async fn add_app_secret(&self, app_id: &str, secret: NewAppSecret, keep_previous: bool) -> Result<App>;
    /// Retires every secret but the newest (end of a rotation).
    async fn retire_old_app_secrets(&self, app_id: &str) -> Result<App>;
    async fn set_app_enabled(&self, app_id: &str, enabled: bool) -> Result<App>;
    async fn set_app_callback(&self, app_id: &str, callback_url: Option<String>) -> Result<App>;

    // ----- receipts and their outbox -----
    /// Stores a receipt and the deliveries it calls for in one transaction, and
    /// collects a person's receipt into the wallets of the registered payers it
    /// matches (with the subscribe messages they are owed, see
    /// [`NewReceiptRecord::wallet_channels`]). Identity is (`bill_batch_code`, `bill_no`) across all agencies: a second push
    /// with the same `content_hash` and agency is `Duplicate`, anything else `Conflict`;
    /// deliveries are only written for `Created`.
    async fn insert_receipt(&self, receipt: NewReceiptRecord, deliveries: Vec<NewDelivery>) -> Result<InsertOutcome>;
    /// A receipt of one agency by its identity, with its deliveries.
    async fn receipt(&self, agency_id: Uuid, bill_batch_code: &str, bill_no: &str) -> Result<Option<StoredReceipt>>;
    /// Records a reversal (冲红) and its deliveries atomically, following the rules of
    /// [`ReversalOutcome`]. Locked or closed receipts are refused.
    async fn reverse_receipt(
        &self,
        agency_id: Uuid,
        bill_batch_code: &str,
        bill_no: &str,
        reversal: Reversal,
        deliveries: Vec<NewDelivery>,
    ) -> Result<ReversalOutcome>;
    /// Sets the reimbursement state of a receipt (the reimbursement flow owns the
    /// transitions; this is the storage primitive).
    async fn set_reimbursement_state(&self, receipt_id: Uuid, state: ReimbursementState) -> Result<()>;
    /// Counts receipts of an agency (reconciliation and tests).
    async fn count_receipts(&self, agency_id: Uuid) -> Result<i64>;

    // ----- the notifier's side of the outbox -----
    /// Leases up to `limit` pending deliveries due at `now` (not leased, or lease
    /// expired), oldest due first, to `owner` until `lease_until`. Concurrent
    /// claimers never get the same row (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// Extends a lease still held by `owner`; false when it was lost.
    async fn renew_lease(&self, delivery_id: Uuid, owner: &str, lease_until: DateTime<Utc>) -> Result<bool>;
    /// Records an attempt and moves the delivery on, releasing the lease, and
    /// inserts `follow_ups` (status webhooks, a fallback channel) in the same
    /// transaction. Fenced: does nothing and returns false unless `owner` still
    /// holds the lease.
    async fn complete_attempt(
        &self,
        delivery_id: Uuid,
        owner: &str,
        attempt: AttemptRecord,
        update: DeliveryUpdate,
        follow_ups: Vec<NewDelivery>,
    ) -> Result<bool>;
    /// Records many finished attempts in one transaction, each fenced as in
    /// [`complete_attempt`](Self::complete_attempt); returns, in order, whether
    /// `owner` still held each lease. A notifier under load finishes many
    /// deliveries at once, and one write each would dominate its database work.
    async fn complete_attempts(&self, owner: &str, completions: &[Completion]) -> Result<Vec<bool>> {
        complete_each(self, owner, completions).await
    }
    /// Releases the lease and postpones without counting an attempt (breaker open).
    async fn defer_delivery(&self, delivery_id: Uuid, owner: &str, until: DateTime<Utc>) -> Result<bool>;
    /// Attempts of one delivery, oldest first.
    async fn delivery_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRecord>>;
    async fn delivery(&self, delivery_id: Uuid) -> Result<Option<Delivery>>;
    /// The delivery that sent `provider_ref` on `channel` (e.g. a template msgid).
    async fn delivery_by_provider_ref(&self, channel: &str, provider_ref: &str) -> Result<Option<Delivery>>;
    /// Sets the final state a provider reported later (TEMPLATESENDJOBFINISH).
    async fn set_delivery_outcome(
        &self,
        delivery_id: Uuid,
        status: DeliveryStatus,
        error: Option<String>,
    ) -> Result<()>;
    /// Newest first.
    async fn list_deliveries(&self, filter: &DeliveryFilter, limit: i64) -> Result<Vec<Delivery>>;
    /// Puts matching parked or failed deliveries back to pending with a fresh
    /// schedule, due from `start` and spread `spacing` apart oldest first so a
    /// re-drive does not arrive as one burst. Returns how many.
    async fn redrive(&self, filter: &DeliveryFilter, start: DateTime<Utc>, spacing: chrono::Duration) -> Result<u64>;
    async fn backlog(&self) -> Result<Vec<BacklogRow>>;

    // ----- tracking -----
    /// Inserts or replaces rows by (minute, scope, key, writer).
    async fn upsert_stats(&self, rows: Vec<StatsRow>) -> Result<()>;
    async fn stats_since(&self, since: DateTime<Utc>) -> Result<Vec<StatsRow>>;

    // ----- WeChat channels of agencies -----
    /// Creates or replaces the channel of that kind for the agency (or, with no
    /// agency, the platform's).
    async fn upsert_channel(&self, channel: NewChannel) -> Result<Channel>;
    async fn channels_for_agency(&self, agency_id: Uuid) -> Result<Vec<Channel>>;
    async fn channel_by_wechat_app(&self, wechat_app_id: &str) -> Result<Vec<Channel>>;

    // ----- alerts -----
    /// The firing alert of a rule and key, if any.
    async fn firing_alert(&self, rule: &str, key: &str) -> Result<Option<Alert>>;
    /// Inserts or updates by id.
    async fn save_alert(&self, alert: &Alert) -> Result<()>;
    /// Newest first.
    async fn list_alerts(&self, limit: i64) -> Result<Vec<Alert>>;
}
