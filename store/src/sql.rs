//! The seam between the role modules and the two databases.
//!
//! Role modules (`tenants`, `intake`, `queue`, …) write each statement once, as
//! [`Sql`] text with `$n` parameters (valid on PostgreSQL and SQLite alike), and run
//! it through [`Conn`] on any [`Dialect`]. What truly differs lives behind
//! [`Dialect`]: how a write transaction begins (SQLite's in-process turn to write
//! and `BEGIN IMMEDIATE`), identity locks (PostgreSQL advisory locks; SQLite's one
//! writer needs none), the row-lock suffix (`FOR UPDATE`), and how a time encodes
//! ([`crate::Timestamp`]). A statement is written twice only where the dialects
//! really differ (arrays and `UNNEST` on PostgreSQL), chosen by [`Dialect::BACKEND`].
//!
//! Values are bound as [`Arg`]s, typed the same way on both databases; rows are
//! decoded by one `FromRow` struct that both drivers accept ([`Record`]).

use std::borrow::Cow;

use async_trait::async_trait;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, FromRow, SqlSafeStr, SqlStr};
use uuid::Uuid;

use crate::{Backend, Result, StoreError, Timestamp};

/// A row type both drivers decode (every field type is supported by both).
pub(crate) trait Record: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

impl<T> Record for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

/// One bound value. `None`s keep their type (PostgreSQL wants typed NULLs).
#[derive(Debug, Clone)]
pub(crate) enum Arg<'a> {
    Uuid(Option<Uuid>),
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Int4(Option<i32>),
    Bool(Option<bool>),
    Time(Option<Timestamp>),
    /// JSON, serialised once when bound (jsonb on PostgreSQL, text on SQLite).
    Json(Option<Box<RawValue>>),
    /// Arrays exist only on PostgreSQL: statements that bind them are PostgreSQL's own.
    UuidArray(Vec<Uuid>),
    TextArray(Vec<Option<String>>),
    IntArray(Vec<Option<i64>>),
    TimeArray(Vec<Option<Timestamp>>),
}

/// A JSON value to bind (see [`Arg::Json`]).
pub(crate) struct Json<T>(pub T);

impl<'a> From<Uuid> for Arg<'a> {
    fn from(v: Uuid) -> Self {
        Arg::Uuid(Some(v))
    }
}
impl<'a> From<Option<Uuid>> for Arg<'a> {
    fn from(v: Option<Uuid>) -> Self {
        Arg::Uuid(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(Cow::Borrowed(v)))
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(Cow::Borrowed(v.as_str())))
    }
}
impl<'a> From<String> for Arg<'a> {
    fn from(v: String) -> Self {
        Arg::Text(Some(Cow::Owned(v)))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v.map(Cow::Borrowed))
    }
}
impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref().map(Cow::Borrowed))
    }
}
impl<'a> From<Option<String>> for Arg<'a> {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v.map(Cow::Owned))
    }
}
impl<'a> From<i64> for Arg<'a> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl<'a> From<Option<i64>> for Arg<'a> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl<'a> From<i32> for Arg<'a> {
    fn from(v: i32) -> Self {
        Arg::Int4(Some(v))
    }
}
impl<'a> From<bool> for Arg<'a> {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}
impl<'a> From<Timestamp> for Arg<'a> {
    fn from(v: Timestamp) -> Self {
        Arg::Time(Some(v))
    }
}
impl<'a> From<Option<Timestamp>> for Arg<'a> {
    fn from(v: Option<Timestamp>) -> Self {
        Arg::Time(v)
    }
}
impl<'a, T: serde::Serialize> From<Json<T>> for Arg<'a> {
    fn from(v: Json<T>) -> Self {
        // Serialising plain data structures cannot fail; `null` keeps the row valid if it did.
        Arg::Json(Some(
            serde_json::value::to_raw_value(&v.0).unwrap_or_else(|_| null_json()),
        ))
    }
}
impl<'a, T: serde::Serialize> From<Option<Json<T>>> for Arg<'a> {
    fn from(v: Option<Json<T>>) -> Self {
        match v {
            Some(j) => j.into(),
            None => Arg::Json(None),
        }
    }
}
impl<'a> From<Vec<Uuid>> for Arg<'a> {
    fn from(v: Vec<Uuid>) -> Self {
        Arg::UuidArray(v)
    }
}
impl<'a> From<Vec<Option<String>>> for Arg<'a> {
    fn from(v: Vec<Option<String>>) -> Self {
        Arg::TextArray(v)
    }
}
impl<'a> From<Vec<Option<i64>>> for Arg<'a> {
    fn from(v: Vec<Option<i64>>) -> Self {
        Arg::IntArray(v)
    }
}
impl<'a> From<Vec<Option<Timestamp>>> for Arg<'a> {
    fn from(v: Vec<Option<Timestamp>>) -> Self {
        Arg::TimeArray(v)
    }
}

fn null_json() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("`null` is JSON"))
}

/// A statement and its arguments. Static text is prepared once per connection;
/// text built at run time (filters, lists) is not kept.
#[derive(Debug, Clone)]
pub(crate) struct Sql<'a> {
    text: Cow<'static, str>,
    pub(crate) args: Vec<Arg<'a>>,
    /// Keep text built at run time prepared too (see [`Sql::prepared`]).
    keep: bool,
}

impl<'a> Sql<'a> {
    pub(crate) fn new(text: &'static str) -> Self {
        Self {
            text: Cow::Borrowed(text),
            args: Vec::new(),
            keep: false,
        }
    }

    /// Keeps this statement prepared even though its text is built at run time:
    /// for text that takes few shapes and runs all the time (a batch's multi-row
    /// insert on SQLite, one shape per batch size), where parsing it anew each time
    /// would cost the one writer more than running it.
    pub(crate) fn prepared(&mut self) -> &mut Self {
        self.keep = true;
        self
    }

    /// Binds the next `$n`.
    pub(crate) fn bind(mut self, v: impl Into<Arg<'a>>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Appends text (only ever our own, never input).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.to_mut().push_str(text);
        self
    }

    /// Appends the next `$n` and binds `v` to it.
    pub(crate) fn push_bind(&mut self, v: impl Into<Arg<'a>>) -> &mut Self {
        self.args.push(v.into());
        let n = self.args.len();
        self.text.to_mut().push_str(&format!("${n}"));
        self
    }

    /// Appends `(` `$a, $b, …` `)` for a list of values; `(NULL)` when empty, which
    /// matches nothing in `IN`.
    pub(crate) fn push_list<V: Into<Arg<'a>>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        self.push("(");
        let mut first = true;
        for v in values {
            if !first {
                self.push(", ");
            }
            first = false;
            self.push_bind(v);
        }
        if first {
            self.push("NULL");
        }
        self.push(")")
    }

    /// The text for sqlx, with whether to keep it prepared.
    pub(crate) fn into_parts(self) -> (SqlStr, bool, Vec<Arg<'a>>) {
        match self.text {
            Cow::Borrowed(s) => (s.into_sql_str(), true, self.args),
            Cow::Owned(s) => (AssertSqlSafe(s).into_sql_str(), self.keep, self.args),
        }
    }

    pub(crate) async fn fetch_all<C: Conn + ?Sized, T: Record>(self, conn: &mut C) -> Result<Vec<T>> {
        conn.fetch_all(self).await
    }

    pub(crate) async fn fetch_optional<C: Conn + ?Sized, T: Record>(self, conn: &mut C) -> Result<Option<T>> {
        conn.fetch_optional(self).await
    }

    pub(crate) async fn fetch_one<C: Conn + ?Sized, T: Record>(self, conn: &mut C) -> Result<T> {
        conn.fetch_optional(self)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Runs the statement; the number of rows it changed.
    pub(crate) async fn execute<C: Conn + ?Sized>(self, conn: &mut C) -> Result<u64> {
        conn.execute(self).await
    }
}

/// A connection of either database (inside a transaction or not).
#[async_trait]
pub(crate) trait Conn: Send {
    async fn fetch_all<T: Record>(&mut self, sql: Sql<'_>) -> Result<Vec<T>>;
    async fn fetch_optional<T: Record>(&mut self, sql: Sql<'_>) -> Result<Option<T>>;
    async fn execute(&mut self, sql: Sql<'_>) -> Result<u64>;
}

/// A transaction of either database: its connection, and its end.
#[async_trait]
pub(crate) trait Tx: Send {
    type Conn: Conn;
    fn conn(&mut self) -> &mut Self::Conn;
    async fn commit(self) -> Result<()>;
}

/// A unit of work handed to [`Dialect::run_intake`].
pub(crate) type Work<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

/// What differs between PostgreSQL and SQLite, and nothing else.
#[async_trait]
pub(crate) trait Dialect: Send + Sync + 'static {
    type Conn: Conn;
    /// A pooled connection for reads (autocommit).
    type Read: std::ops::DerefMut<Target = Self::Conn> + Send;
    /// A single autocommitted write, on this process's turn to write.
    type Writer: std::ops::DerefMut<Target = Self::Conn> + Send;
    type Tx: Tx<Conn = Self::Conn>;

    const BACKEND: Backend;
    /// Of a `SELECT` whose rows a write transaction's decision depends on, the text
    /// to run: with `FOR UPDATE` on PostgreSQL; as it is on SQLite, whose write
    /// transaction already excludes every other writer.
    fn row_lock(plain: &'static str, for_update: &'static str) -> &'static str;

    async fn read(&self) -> Result<Self::Read>;
    /// A consistent read of several statements (PostgreSQL: repeatable read, read only).
    async fn snapshot(&self) -> Result<Self::Tx>;
    async fn writer(&self) -> Result<Self::Writer>;
    /// A write transaction, on this process's turn to write.
    async fn write(&self) -> Result<Self::Tx>;
    /// A write transaction for a batch of pushes (see `group_commit.rs`, whose
    /// committers are the only callers: their number bounds what pushes hold).
    async fn intake(&self) -> Result<Self::Tx>;
    /// How many batches of pushes may commit at once (`group_commit.rs`).
    fn committers(&self) -> usize;
    /// Runs a push's write transaction where it should run: SQLite runs it on the
    /// runtime the store was opened on (see `sqlite.rs`), PostgreSQL in place.
    async fn run_intake<T: Send + 'static>(&self, work: Work<T>) -> Result<T>;
    /// Serialises the matching of identities (sorted keys) until the transaction ends.
    async fn lock_identities(conn: &mut Self::Conn, keys: &[i64]) -> Result<()>;

    async fn migrate(&self) -> Result<()>;
    async fn migrations_current(&self) -> Result<bool>;
}

/// Maps a failed write: a unique violation becomes `Conflict(rule)`, a missing
/// referenced row `NotFound(Referenced)`; anything else stays a database error.
pub(crate) fn write_error(err: StoreError, rule: &'static str) -> StoreError {
    match &err {
        StoreError::Database(e) => match e.as_database_error() {
            Some(db) if db.is_unique_violation() => StoreError::Conflict(rule),
            Some(db) if db.is_foreign_key_violation() => StoreError::NotFound(crate::Entity::Referenced),
            _ => err,
        },
        _ => err,
    }
}

/// A row just written in this transaction; its absence is a broken invariant.
pub(crate) fn written<T>(row: Option<T>, what: &str) -> Result<T> {
    row.ok_or_else(|| StoreError::Corrupt(format!("{what} vanished inside its transaction")))
}

/// True when every (up) migration of `migrator` is among `applied` (version,
/// checksum) with the same checksum: an edited migration is not current either.
pub(crate) fn all_applied(migrator: &sqlx::migrate::Migrator, applied: &[(i64, Vec<u8>)]) -> bool {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| {
            applied
                .iter()
                .any(|(version, checksum)| *version == m.version && checksum[..] == m.checksum[..])
        })
}
