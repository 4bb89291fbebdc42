//! What operators watch: per-minute tracking figures each process writes, the
//! delivery backlog, and alerts (one row per incident).

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::delivery::ChannelKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sql::{Dialect, Json, Sql, Tx, write_error};
use crate::{Db, Result, StoreError, Timestamp};

/// One writer's counts for one minute and one tracked key. Each process owns its
/// rows (`writer`), so flushing replaces instead of merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRow {
    /// Start of the minute (UTC, seconds = 0).
    pub minute: Timestamp,
    /// `channel`, `interface` or `inbound`.
    pub scope: String,
    pub key: String,
    pub writer: String,
    pub attempts: i64,
    pub successes: i64,
    /// Counts per latency bucket (bounds fixed by the notifier's tracker).
    pub latency_buckets: Vec<i64>,
}

/// Pending work per channel and interface.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRow {
    pub channel: ChannelKind,
    pub interface: String,
    pub pending: i64,
    pub oldest_created_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "firing" => Some(AlertState::Firing),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// An operator alert: one row per incident.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: Uuid,
    pub rule: String,
    /// What it is about (a channel or interface key).
    pub key: String,
    pub state: AlertState,
    pub message: String,
    pub started_at: Timestamp,
    pub last_notified_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

#[async_trait]
pub trait Figures: Send + Sync {
    /// Inserts or replaces rows by (minute, scope, key, writer).
    async fn upsert_stats(&self, rows: Vec<StatsRow>) -> Result<()>;
    async fn stats_since(&self, since: Timestamp) -> Result<Vec<StatsRow>>;
    /// Pending deliveries per channel and interface.
    async fn backlog(&self) -> Result<Vec<BacklogRow>>;

    /// The firing alert of a rule and key, if any.
    async fn firing_alert(&self, rule: &str, key: &str) -> Result<Option<Alert>>;
    /// Inserts or updates by id.
    async fn save_alert(&self, alert: &Alert) -> Result<()>;
    /// Newest first.
    async fn list_alerts(&self, limit: i64) -> Result<Vec<Alert>>;
}

const STATS_COLUMNS: &str = "minute, scope, key, writer, attempts, successes, latency_buckets";

#[derive(sqlx::FromRow)]
struct StatsDbRow {
    minute: Timestamp,
    scope: String,
    key: String,
    writer: String,
    attempts: i64,
    successes: i64,
    latency_buckets: sqlx::types::Json<Vec<i64>>,
}

#[derive(sqlx::FromRow)]
struct BacklogDbRow {
    channel: String,
    interface: String,
    pending: i64,
    oldest_created_at: Option<Timestamp>,
}

const ALERT_COLUMNS: &str = "id, rule, key, state, message, started_at, last_notified_at, resolved_at";

#[derive(sqlx::FromRow)]
struct AlertRow {
    id: Uuid,
    rule: String,
    key: String,
    state: String,
    message: String,
    started_at: Timestamp,
    last_notified_at: Timestamp,
    resolved_at: Option<Timestamp>,
}

impl TryFrom<AlertRow> for Alert {
    type Error = StoreError;

    fn try_from(row: AlertRow) -> Result<Self> {
        Ok(Alert {
            state: AlertState::parse(&row.state)
                .ok_or_else(|| StoreError::Corrupt(format!("alert {}: state {:?}", row.id, row.state)))?,
            id: row.id,
            rule: row.rule,
            key: row.key,
            message: row.message,
            started_at: row.started_at,
            last_notified_at: row.last_notified_at,
            resolved_at: row.resolved_at,
        })
    }
}

#[async_trait]
impl<D: Dialect> Figures for Db<D> {
    async fn upsert_stats(&self, rows: Vec<StatsRow>) -> Result<()> {
        let mut tx = self.d.write().await?;
        for r in &rows {
            Sql::new(concatcp!(
                "INSERT INTO tracking_stats (",
                STATS_COLUMNS,
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
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    async fn stats_since(&self, since: Timestamp) -> Result<Vec<StatsRow>> {
        let rows: Vec<StatsDbRow> = Sql::new(concatcp!(
            "SELECT ",
            STATS_COLUMNS,
            " FROM tracking_stats WHERE minute >= $1 ORDER BY minute, scope, key, writer"
        ))
        .bind(since)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StatsRow {
                minute: row.minute,
                scope: row.scope,
                key: row.key,
                writer: row.writer,
                attempts: row.attempts,
                successes: row.successes,
                latency_buckets: row.latency_buckets.0,
            })
            .collect())
    }

    async fn backlog(&self) -> Result<Vec<BacklogRow>> {
        let rows: Vec<BacklogDbRow> = Sql::new(
            "SELECT channel, interface, count(*) AS pending, min(created_at) AS oldest_created_at \
             FROM deliveries WHERE status = 'pending' GROUP BY channel, interface ORDER BY channel, interface",
        )
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(BacklogRow {
                    channel: ChannelKind::parse(&row.channel)
                        .ok_or_else(|| StoreError::Corrupt(format!("delivery channel {:?}", row.channel)))?,
                    interface: row.interface,
                    pending: row.pending,
                    oldest_created_at: row.oldest_created_at,
                })
            })
            .collect()
    }

    async fn firing_alert(&self, rule: &str, key: &str) -> Result<Option<Alert>> {
        let row: Option<AlertRow> = Sql::new(concatcp!(
            "SELECT ",
            ALERT_COLUMNS,
            " FROM alerts WHERE rule = $1 AND key = $2 AND state = 'firing'"
        ))
        .bind(rule)
        .bind(key)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        row.map(Alert::try_from).transpose()
    }

    async fn save_alert(&self, a: &Alert) -> Result<()> {
        Sql::new(concatcp!(
            "INSERT INTO alerts (",
            ALERT_COLUMNS,
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
            "ON CONFLICT (id) DO UPDATE SET rule = excluded.rule, key = excluded.key, ",
            "state = excluded.state, message = excluded.message, started_at = excluded.started_at, ",
            "last_notified_at = excluded.last_notified_at, resolved_at = excluded.resolved_at"
        ))
        .bind(a.id)
        .bind(&a.rule)
        .bind(&a.key)
        .bind(a.state.as_str())
        .bind(&a.message)
        .bind(a.started_at)
        .bind(a.last_notified_at)
        .bind(a.resolved_at)
        .execute(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "alert_firing"))?;
        Ok(())
    }

    async fn list_alerts(&self, limit: i64) -> Result<Vec<Alert>> {
        let rows: Vec<AlertRow> = Sql::new(concatcp!(
            "SELECT ",
            ALERT_COLUMNS,
            " FROM alerts ORDER BY started_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter().map(Alert::try_from).collect()
    }
}
