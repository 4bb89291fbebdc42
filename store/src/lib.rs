//! Storage of piaojia, cut by role: each module holds one job's records, its
//! trait and its SQL, written once for PostgreSQL and SQLite over the seam in
//! `sql.rs` (what truly differs lives in `postgres.rs` and `sqlite.rs`).
//!
//! | module | job |
//! |---|---|
//! | [`claims`] | payers' claims to reimbursers, their status and history |
//! | [`reminders`] | reimbursement reminders of receipts still unclaimed |
//! | [`tenants`] | agencies, issuer and reimburser apps with their secrets, WeChat channels |
//! | [`intake`] | receipts pushed and reversed, with the deliveries they call for |
//! | [`queue`] | the delivery queue: claims, leases, attempts, re-drive |
//! | [`figures`] | tracking figures, backlog, alerts |
//! | [`wallets`] | payers, sign-ins, wallets, subscription credits, audit |
//! | [`reimbursement`] | reimbursers, the lock on a receipt (INIT, LOCK, CLOSURE, CANCEL), its history, request ids |
//! | [`official_account`] | followers, providers' final reports, the card package (卡包), the message server's inbox |
//! | [`pages`] | web OAuth sessions of the official account's pages, wallets kept under an openid, QR scenes |
//! | [`payments`] | WeChat Pay payments the agency reported: who paid an order, for its receipts |
//!
//! [`Store`] is every role at once; the backend is chosen from the URL scheme at
//! start ([`connect`]), and migrations are run deliberately ([`Store::migrate`]).

pub mod claims;
pub mod figures;
mod group_commit;
pub mod intake;
pub mod official_account;
pub mod pages;
pub mod payments;
mod postgres;
pub mod queue;
pub mod reimbursement;
pub mod reminders;
mod sql;
mod sqlite;
pub mod tenants;
#[cfg(feature = "test-support")]
pub mod testing;
mod time;
pub mod wallets;

use std::sync::Arc;

use async_trait::async_trait;

pub use claims::{
    ClaimEvent, ClaimRecord, ClaimRefusal, ClaimStatus, Claims, NewClaim, SubmitOutcome, WithdrawOutcome,
};
pub use figures::{Alert, AlertState, BacklogRow, Figures, StatsRow};
pub use intake::{FileMeta, InsertOutcome, Intake, NewReceiptRecord, Reversal, ReversalOutcome, StoredReceipt};
pub use official_account::{
    CardOrder, CardReceipt, CardUnit, InboxEvent, InboxOutcome, NewInboxEvent, OfficialAccount, ProviderReport,
    WechatInbox,
};
pub use pages::PayerPages;
pub use payments::{NewWechatPayment, PaymentOutcome, WechatPayment, WechatPayments};
pub use piaojia_core::delivery::{AttemptOutcome, ChannelKind, DeliveryEvent, DeliveryStatus, ParkReason};
pub use piaojia_core::parties::{AppKind, ReimbursementState};
pub use piaojia_core::parties::{ReimbursementAction, ReimbursementRefusal, ReimburserKind};
pub use postgres::PgStore;
pub use queue::{
    AttemptRecord, ClaimedDelivery, Completion, Delivery, DeliveryFilter, DeliveryQueue, DeliveryReceipt,
    DeliveryUpdate, Handoff, NewDelivery, Reserved,
};
#[cfg(feature = "test-support")]
pub use reimbursement::TestSupport;
pub use reimbursement::{
    NewReimburser, ReceiptKey, ReceiptReimbursement, Reimbursement, ReimbursementChange, ReimbursementEvent,
    ReimbursementOutcome, ReimbursementRequest, Reimburser,
};
pub use sqlite::SqliteStore;
pub use tenants::{Agency, App, AppSecret, Channel, NewAgency, NewApp, NewAppSecret, NewChannel, Tenants};
pub use time::Timestamp;
pub use wallets::Wallets;

/// What a [`StoreError::NotFound`] was looking for, so an HTTP answer keeps a
/// specific code (`payer_not_found`, not a bare `not_found`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Agency,
    App,
    Payer,
    Receipt,
    Delivery,
    /// A row a write refers to (a foreign key) is gone: a concurrent change won.
    Referenced,
}

/// Errors the storage layer reports; callers map them to HTTP answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named record does not exist (or vanished under a concurrent change).
    #[error("{0:?} not found")]
    NotFound(Entity),
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

impl StoreError {
    /// True when the database (or the pool in front of it) could not be reached:
    /// the request may succeed later (`503`), nothing is wrong with it.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || e
                    .as_database_error()
                    .and_then(|db| db.code())
                    // PostgreSQL: admin shutdown, crash shutdown, cannot connect now,
                    // too many connections; SQLite: busy, locked.
                    .is_some_and(|code| matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "5" | "6"))
            }
            _ => false,
        }
    }
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

    /// The backend a database URL names: `postgres://…`/`postgresql://…` or `sqlite:…`.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }
}

/// Connection options shared by both backends.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before the database counts as
    /// unavailable (`503`): rather a quick answer to retry than a hung request.
    pub acquire_timeout: std::time::Duration,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            url: url.into(),
            max_connections,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// The store on one database: every role, implemented once over its dialect.
pub(crate) struct Db<D> {
    pub(crate) d: Arc<D>,
    /// Pushes waiting to share a write transaction.
    pub(crate) intake: Arc<group_commit::GroupCommit<intake::PushJob, InsertOutcome>>,
    /// This process's notifier, taking pushes' deliveries straight from their commit.
    pub(crate) handoff: Arc<std::sync::RwLock<Option<Arc<dyn queue::Handoff>>>>,
}

impl<D: sql::Dialect> Db<D> {
    fn new(d: D) -> Self {
        let committers = d.committers();
        Self {
            d: Arc::new(d),
            intake: Arc::new(group_commit::GroupCommit::new(committers)),
            handoff: Arc::default(),
        }
    }
}

/// Everything piaojia persists, every role at once. Both databases pass the same
/// story (`store/tests/`) and the whole API suite.
#[async_trait]
pub trait Store:
    Tenants
    + Intake
    + DeliveryQueue
    + Figures
    + Wallets
    + Reimbursement
    + Claims
    + reminders::Reminders
    + OfficialAccount
    + WechatInbox
    + PayerPages
    + WechatPayments
    + StoreTestSupport
    + Send
    + Sync
    + 'static
{
    fn backend(&self) -> Backend;
    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> Result<()>;
    /// True when every embedded migration has been applied (readiness).
    async fn migrations_current(&self) -> Result<bool>;
    /// A cheap round trip (readiness).
    async fn ping(&self) -> Result<()>;
}

/// [`TestSupport`] with the `test-support` feature, nothing without it.
#[cfg(feature = "test-support")]
pub trait StoreTestSupport: TestSupport {}
#[cfg(feature = "test-support")]
impl<T: TestSupport> StoreTestSupport for T {}
#[cfg(not(feature = "test-support"))]
pub trait StoreTestSupport {}
#[cfg(not(feature = "test-support"))]
impl<T> StoreTestSupport for T {}

#[async_trait]
impl<D: sql::Dialect> Store for Db<D> {
    fn backend(&self) -> Backend {
        D::BACKEND
    }

    async fn migrate(&self) -> Result<()> {
        self.d.migrate().await
    }

    async fn migrations_current(&self) -> Result<bool> {
        self.d.migrations_current().await
    }

    async fn ping(&self) -> Result<()> {
        sql::Sql::new("SELECT 1").execute(&mut *self.d.read().await?).await?;
        Ok(())
    }
}

/// Opens the store named by `opts.url`: `postgres://…`/`postgresql://…` or `sqlite:…`.
/// Migrations are not run here: call [`Store::migrate`] deliberately.
pub async fn connect(opts: &ConnectOptions) -> Result<Arc<dyn Store>> {
    match Backend::of_url(&opts.url) {
        Some(Backend::Postgres) => Ok(Arc::new(Db::new(PgStore::connect(opts).await?))),
        Some(Backend::Sqlite) => Ok(Arc::new(Db::new(SqliteStore::connect(opts).await?))),
        None => Err(StoreError::UnsupportedUrl(redact_url(&opts.url))),
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
