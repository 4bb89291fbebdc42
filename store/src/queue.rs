//! The delivery queue (the outbox): deliveries written with the receipt events
//! that call for them, leased by notifier workers, completed with a record of
//! every attempt, re-driven by operators. Every change of a delivery's state is
//! one operation here: [`DeliveryQueue::complete_attempts`] (fenced by the lease),
//! [`DeliveryQueue::defer_delivery`], [`DeliveryQueue::settle_delivery`] (what a
//! provider reports later) and [`DeliveryQueue::redrive`].

use std::collections::HashMap;

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::delivery::{AttemptOutcome, ChannelKind, DeliveryEvent, DeliveryStatus, ParkReason};
use piaojia_core::parties::ReimbursementState;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sql::{Conn, Dialect, Json, Sql, Tx, write_error};
use crate::{Backend, Db, Result, StoreError, Timestamp};

/// A delivery the notifier must make (the outbox row).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub event: DeliveryEvent,
    pub channel: ChannelKind,
    /// Where it goes within the channel (a URL, an openid, …).
    pub target: String,
    /// The outside interface it calls, e.g. `wechat:wx123:template_send` or
    /// `webhook:his.hospital.example`: the unit of circuit breaking and tracking.
    pub interface: String,
    /// Channel-specific extra content (e.g. the outcome a status webhook reports).
    pub payload: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: Uuid,
    pub receipt_id: Uuid,
    pub agency_id: Uuid,
    pub event: DeliveryEvent,
    pub channel: ChannelKind,
    pub target: String,
    pub interface: String,
    pub payload: Option<serde_json::Value>,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    /// Why it is parked, when parked.
    pub park_reason: Option<ParkReason>,
    /// The outside system's id for what was sent (e.g. a template message's msgid).
    pub provider_ref: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

/// What a channel needs of the receipt a delivery is about (no personal data but
/// the openid the receipt was pushed with).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryReceipt {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub agency_code: String,
    pub agency_name: String,
    pub issuer_app_id: String,
    pub bill_batch_code: String,
    pub bill_no: String,
    pub bus_type: String,
    pub issued_at: Timestamp,
    pub total_fen: i64,
    pub open_id: Option<String>,
    pub reversed: bool,
    pub reimbursement_state: ReimbursementState,
}

/// A delivery claimed under a lease, with its receipt.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: Delivery,
    pub receipt: DeliveryReceipt,
    pub lease_until: Timestamp,
    /// A template message whose payer unfollowed the official account (read with
    /// the claim, once per batch rather than once per send).
    pub unfollowed: bool,
}

/// Workers of a notifier in this process that take a push's deliveries straight
/// from the intake's commit: leased to them in the insert, the deliveries skip the
/// claim (a write transaction per batch, and the wait for its turn).
pub trait Handoff: Send + Sync {
    /// Holds up to `wanted` free workers; `None` when none is free.
    fn reserve(&self, wanted: usize) -> Option<Reserved>;
}

/// Workers held for one intake transaction. Dropped unused (the transaction
/// failed), they are free again.
pub struct Reserved {
    pub owner: String,
    pub lease_until: Timestamp,
    pub count: usize,
    start: Box<dyn FnOnce(Vec<ClaimedDelivery>) + Send>,
}

impl Reserved {
    pub fn new(
        owner: String,
        lease_until: Timestamp,
        count: usize,
        start: impl FnOnce(Vec<ClaimedDelivery>) + Send + 'static,
    ) -> Self {
        Self {
            owner,
            lease_until,
            count,
            start: Box::new(start),
        }
    }

    /// Hands the committed deliveries leased to these workers over to them.
    pub(crate) fn start(self, jobs: Vec<ClaimedDelivery>) {
        (self.start)(jobs);
    }
}

/// The lease an intake gives the first `count` of the deliveries it inserts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntakeLease<'a> {
    pub(crate) owner: &'a str,
    pub(crate) until: Timestamp,
    pub(crate) count: usize,
}

/// One try at a delivery, kept for audit and operators.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub id: Uuid,
    pub started_at: Timestamp,
    pub latency_ms: i64,
    pub outcome: AttemptOutcome,
    /// WeChat's errcode or the HTTP status, when there was one.
    pub code: Option<i64>,
    pub detail: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryUpdate {
    Delivered {
        provider_ref: Option<String>,
    },
    /// Try again at `at`.
    Retry {
        at: Timestamp,
        error: String,
    },
    /// A business outcome: ended, not retried.
    Failed {
        error: String,
    },
    /// Waits for an operator (or, for an outage, for the interface to recover).
    Parked {
        reason: ParkReason,
        error: String,
    },
}

/// One finished attempt of a leased delivery, for [`DeliveryQueue::complete_attempts`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub delivery_id: Uuid,
    pub attempt: AttemptRecord,
    pub update: DeliveryUpdate,
    /// Deliveries that follow (status webhooks, a fallback channel), written in
    /// the same transaction.
    pub follow_ups: Vec<NewDelivery>,
}

/// Which deliveries an operator means.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeliveryFilter {
    pub ids: Option<Vec<Uuid>>,
    pub status: Option<DeliveryStatus>,
    pub channel: Option<ChannelKind>,
    pub interface: Option<String>,
    pub agency_id: Option<Uuid>,
    pub park_reason: Option<ParkReason>,
}

#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Leases up to `limit` pending deliveries due at `now` (not leased, or lease
    /// expired), oldest due first, to `owner` until `lease_until`. Concurrent
    /// claimers never get the same row (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// Extends a lease still held by `owner`; false when it was lost.
    async fn renew_lease(&self, delivery_id: Uuid, owner: &str, lease_until: Timestamp) -> Result<bool>;
    /// Records finished attempts in one transaction: each records its attempt,
    /// moves its delivery on, releases the lease and writes its follow-ups, fenced:
    /// nothing happens to a delivery whose lease `owner` no longer holds. Returns,
    /// in order, whether `owner` still held each lease.
    async fn complete_attempts(&self, owner: &str, completions: &[Completion]) -> Result<Vec<bool>>;
    /// Releases the lease and postpones without counting an attempt (breaker open).
    async fn defer_delivery(&self, delivery_id: Uuid, owner: &str, until: Timestamp) -> Result<bool>;
    /// Attempts of one delivery, oldest first.
    async fn delivery_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRecord>>;
    async fn delivery(&self, delivery_id: Uuid) -> Result<Option<Delivery>>;
    /// The delivery that sent `provider_ref` through `interface` (e.g. a template msgid).
    async fn delivery_by_provider_ref(&self, interface: &str, provider_ref: &str) -> Result<Option<Delivery>>;
    /// Moves a delivered delivery to the final state its provider reported later
    /// (TEMPLATESENDJOBFINISH): `delivered` → `failed` only. False when the
    /// delivery was not in a state that report may change.
    async fn settle_delivery(&self, delivery_id: Uuid, status: DeliveryStatus, error: Option<String>) -> Result<bool>;
    /// Newest first.
    async fn list_deliveries(&self, filter: &DeliveryFilter, limit: i64) -> Result<Vec<Delivery>>;
    /// Puts matching parked or failed deliveries back to pending with a fresh
    /// schedule, due from `start` and spread `spacing` apart oldest first so a
    /// re-drive does not arrive as one burst. Returns how many.
    async fn redrive(&self, filter: &DeliveryFilter, start: Timestamp, spacing: chrono::TimeDelta) -> Result<u64>;
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, receipt_id, agency_id, event, channel, target, interface, payload, \
     status, attempts, next_attempt_at, last_error, park_reason, provider_ref, created_at, updated_at, delivered_at";

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: Uuid,
    receipt_id: Uuid,
    agency_id: Uuid,
    event: String,
    channel: String,
    target: String,
    interface: String,
    payload: Option<sqlx::types::Json<serde_json::Value>>,
    status: String,
    attempts: i32,
    next_attempt_at: Timestamp,
    last_error: Option<String>,
    park_reason: Option<String>,
    provider_ref: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    delivered_at: Option<Timestamp>,
}

fn corrupt(id: Uuid, what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("delivery {id}: {what} {value:?}"))
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self> {
        let id = row.id;
        Ok(Delivery {
            event: DeliveryEvent::parse(&row.event).ok_or_else(|| corrupt(id, "event", &row.event))?,
            channel: ChannelKind::parse(&row.channel).ok_or_else(|| corrupt(id, "channel", &row.channel))?,
            status: DeliveryStatus::parse(&row.status).ok_or_else(|| corrupt(id, "status", &row.status))?,
            park_reason: match &row.park_reason {
                None => None,
                Some(r) => Some(ParkReason::parse(r).ok_or_else(|| corrupt(id, "park reason", r))?),
            },
            id,
            receipt_id: row.receipt_id,
            agency_id: row.agency_id,
            target: row.target,
            interface: row.interface,
            payload: row.payload.map(|p| p.0),
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            provider_ref: row.provider_ref,
            created_at: row.created_at,
            updated_at: row.updated_at,
            delivered_at: row.delivered_at,
        })
    }
}

pub(crate) fn deliveries(rows: Vec<DeliveryRow>) -> Result<Vec<Delivery>> {
    rows.into_iter().map(Delivery::try_from).collect()
}

#[derive(sqlx::FromRow)]
struct DeliveryReceiptRow {
    id: Uuid,
    agency_id: Uuid,
    agency_code: String,
    agency_name: String,
    issuer_app_id: String,
    bill_batch_code: String,
    bill_no: String,
    bus_type: String,
    issued_at: Timestamp,
    total_fen: i64,
    open_id: Option<String>,
    reversed: bool,
    reimbursement_state: String,
}

impl TryFrom<DeliveryReceiptRow> for DeliveryReceipt {
    type Error = StoreError;

    fn try_from(row: DeliveryReceiptRow) -> Result<Self> {
        Ok(DeliveryReceipt {
            reimbursement_state: ReimbursementState::parse(&row.reimbursement_state).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "receipt {}: reimbursement state {:?}",
                    row.id, row.reimbursement_state
                ))
            })?,
            id: row.id,
            agency_id: row.agency_id,
            agency_code: row.agency_code,
            agency_name: row.agency_name,
            issuer_app_id: row.issuer_app_id,
            bill_batch_code: row.bill_batch_code,
            bill_no: row.bill_no,
            bus_type: row.bus_type,
            issued_at: row.issued_at,
            total_fen: row.total_fen,
            open_id: row.open_id,
            reversed: row.reversed,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: Uuid,
    started_at: Timestamp,
    latency_ms: i64,
    outcome: String,
    code: Option<i64>,
    detail: Option<String>,
}

/// Where an attempt leaves a delivery, as the column values the fenced update
/// writes. `None` keeps the stored `next_attempt_at`/`delivered_at`.
struct Transition {
    status: DeliveryStatus,
    next_attempt_at: Option<Timestamp>,
    last_error: Option<String>,
    park_reason: Option<ParkReason>,
    /// Written only when the status is `delivered`.
    provider_ref: Option<String>,
    delivered_at: Option<Timestamp>,
}

impl Transition {
    fn of(update: &DeliveryUpdate, now: Timestamp) -> Self {
        let base = Transition {
            status: DeliveryStatus::Pending,
            next_attempt_at: None,
            last_error: None,
            park_reason: None,
            provider_ref: None,
            delivered_at: None,
        };
        match update.clone() {
            DeliveryUpdate::Delivered { provider_ref } => Transition {
                status: DeliveryStatus::Delivered,
                provider_ref,
                delivered_at: Some(now),
                ..base
            },
            DeliveryUpdate::Retry { at, error } => Transition {
                next_attempt_at: Some(at),
                last_error: Some(error),
                ..base
            },
            DeliveryUpdate::Failed { error } => Transition {
                status: DeliveryStatus::Failed,
                last_error: Some(error),
                ..base
            },
            DeliveryUpdate::Parked { reason, error } => Transition {
                status: DeliveryStatus::Parked,
                last_error: Some(error),
                park_reason: Some(reason),
                ..base
            },
        }
    }
}

/// Inserts deliveries of one receipt and returns them as stored, in id order (the
/// order reading back gives: they share `created_at`). One statement however many
/// there are: a round trip is most of what a small insert costs.
pub(crate) async fn insert_deliveries<D: Dialect>(
    conn: &mut D::Conn,
    receipt_id: Uuid,
    agency_id: Uuid,
    new: &[NewDelivery],
    now: Timestamp,
) -> Result<Vec<DeliveryRow>> {
    insert_deliveries_of::<D>(conn, &[(receipt_id, agency_id, new)], now, None).await
}

/// [`insert_deliveries`] for several receipts (receipt, its agency, its
/// deliveries) in one statement, as for a batch of pushes; in id order. With a
/// lease, the first `lease.count` of them (in the order given) are leased at once.
pub(crate) async fn insert_deliveries_of<D: Dialect>(
    conn: &mut D::Conn,
    receipts: &[(Uuid, Uuid, &[NewDelivery])],
    now: Timestamp,
    lease: Option<IntakeLease<'_>>,
) -> Result<Vec<DeliveryRow>> {
    const INSERT: &str = "INSERT INTO deliveries (id, receipt_id, agency_id, event, channel, target, interface, \
         payload, status, attempts, next_attempt_at, created_at, updated_at, lease_owner, lease_until) ";
    let all: Vec<(Uuid, Uuid, &NewDelivery)> = receipts
        .iter()
        .flat_map(|(receipt, agency, new)| new.iter().map(move |d| (*receipt, *agency, d)))
        .collect();
    let leased = lease.map_or(0, |l| l.count);
    let owner = |i: usize| lease.filter(|_| i < leased).map(|l| l.owner);
    let until = |i: usize| lease.filter(|_| i < leased).map(|l| l.until);
    let mut rows: Vec<DeliveryRow> =
        match (all.len(), D::BACKEND) {
            (0, _) => return Ok(Vec::new()),
            (1, _) => {
                let (receipt_id, agency_id, d) = all[0];
                Sql::new(concatcp!(
                    INSERT,
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9, $9, $10, $11) RETURNING ",
                    DELIVERY_COLUMNS
                ))
                .bind(d.id)
                .bind(receipt_id)
                .bind(agency_id)
                .bind(d.event.as_str())
                .bind(d.channel.as_str())
                .bind(&d.target)
                .bind(&d.interface)
                .bind(d.payload.as_ref().map(Json))
                .bind(now)
                .bind(owner(0))
                .bind(until(0))
                .fetch_all(conn)
                .await
            }
            // Arrays keep the statement prepared whatever the count.
            (_, Backend::Postgres) => Sql::new(concatcp!(
                INSERT,
                "SELECT u.id, u.receipt_id, u.agency_id, u.event, u.channel, u.target, u.interface, u.payload::jsonb, \
                 'pending', 0, $9, $9, $9, u.lease_owner, u.lease_until FROM UNNEST($1::uuid[], $2::uuid[], \
                 $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $10::text[], \
                 $11::timestamptz[]) AS u (id, receipt_id, agency_id, event, channel, target, interface, payload, \
                 lease_owner, lease_until) RETURNING ",
                DELIVERY_COLUMNS
            ))
            .bind(all.iter().map(|(_, _, d)| d.id).collect::<Vec<_>>())
            .bind(all.iter().map(|(r, _, _)| *r).collect::<Vec<_>>())
            .bind(all.iter().map(|(_, a, _)| *a).collect::<Vec<_>>())
            .bind(texts(&all, |d| d.event.as_str().to_owned()))
            .bind(texts(&all, |d| d.channel.as_str().to_owned()))
            .bind(texts(&all, |d| d.target.clone()))
            .bind(texts(&all, |d| d.interface.clone()))
            .bind(
                all.iter()
                    .map(|(_, _, d)| d.payload.as_ref().map(ToString::to_string))
                    .collect::<Vec<_>>(),
            )
            .bind(now)
            .bind((0..all.len()).map(|i| owner(i).map(str::to_owned)).collect::<Vec<_>>())
            .bind((0..all.len()).map(until).collect::<Vec<_>>())
            .fetch_all(conn)
            .await,
            (_, Backend::Sqlite) => {
                let mut sql = Sql::new(INSERT);
                sql.push("VALUES ");
                for (i, (receipt_id, agency_id, d)) in all.iter().enumerate() {
                    sql.push(if i == 0 { "(" } else { ", (" });
                    sql.push_bind(d.id)
                        .push(", ")
                        .push_bind(*receipt_id)
                        .push(", ")
                        .push_bind(*agency_id);
                    sql.push(", ")
                        .push_bind(d.event.as_str())
                        .push(", ")
                        .push_bind(d.channel.as_str());
                    sql.push(", ").push_bind(&d.target).push(", ").push_bind(&d.interface);
                    sql.push(", ").push_bind(d.payload.as_ref().map(Json));
                    sql.push(", 'pending', 0, ")
                        .push_bind(now)
                        .push(", ")
                        .push_bind(now)
                        .push(", ")
                        .push_bind(now);
                    sql.push(", ").push_bind(owner(i)).push(", ").push_bind(until(i));
                    sql.push(")");
                }
                sql.push(" RETURNING ").push(DELIVERY_COLUMNS).prepared();
                sql.fetch_all(conn).await
            }
        }
        .map_err(|e| write_error(e, "delivery_id"))?;
    // RETURNING's order is not promised.
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

fn texts(all: &[(Uuid, Uuid, &NewDelivery)], f: impl Fn(&NewDelivery) -> String) -> Vec<Option<String>> {
    all.iter().map(|(_, _, d)| Some(f(d))).collect()
}

/// (appid, openid) of the claimed template messages whose payer unfollowed: one
/// statement for the whole claim, through the followers' primary key.
async fn unfollowed_targets<C: Conn + ?Sized>(
    conn: &mut C,
    rows: &[DeliveryRow],
) -> Result<std::collections::HashSet<(String, String)>> {
    unfollowed_among(
        conn,
        rows.iter()
            .map(|r| (r.channel.as_str(), r.interface.as_str(), r.target.as_str())),
        false,
    )
    .await
}

/// [`unfollowed_targets`] of (channel, interface, target) triples; `keep`: the
/// statement stays prepared (see [`Sql::prepared`]).
async fn unfollowed_among<'a, C: Conn + ?Sized>(
    conn: &mut C,
    deliveries: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    keep: bool,
) -> Result<std::collections::HashSet<(String, String)>> {
    let template = ChannelKind::WechatTemplate.as_str();
    let mut apps: Vec<&str> = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    for (_, interface, target) in deliveries.filter(|(channel, _, _)| *channel == template) {
        let Some(app) = piaojia_core::delivery::interface_app(interface) else {
            continue;
        };
        apps.push(app);
        targets.push(target);
    }
    if targets.is_empty() {
        return Ok(Default::default());
    }
    apps.sort_unstable();
    apps.dedup();
    let mut sql =
        Sql::new("SELECT wechat_app_id, open_id FROM wechat_followers WHERE following = false AND wechat_app_id IN ");
    sql.push_list(apps.into_iter().map(str::to_owned));
    sql.push(" AND open_id IN ");
    sql.push_list(targets.into_iter().map(str::to_owned));
    if keep {
        sql.prepared();
    }
    let found: Vec<(String, String)> = sql.fetch_all(conn).await?;
    Ok(found.into_iter().collect())
}

/// A template message whose payer unfollowed the official account.
fn is_unfollowed(delivery: &Delivery, unfollowed: &std::collections::HashSet<(String, String)>) -> bool {
    delivery.channel == ChannelKind::WechatTemplate
        && piaojia_core::delivery::interface_app(&delivery.interface)
            .is_some_and(|app| unfollowed.contains(&(app.to_owned(), delivery.target.clone())))
}

/// The deliveries an intake leased in its transaction, ready for the workers it
/// reserved: each with its receipt as just pushed, as a claim would return them.
pub(crate) async fn leased_jobs<D: Dialect>(
    conn: &mut D::Conn,
    leased: Vec<(Delivery, &crate::NewReceiptRecord)>,
    lease_until: Timestamp,
) -> Result<Vec<ClaimedDelivery>> {
    // Every intake batch runs these on SQLite's one writer: kept prepared there, as
    // the batch's other statements are (PostgreSQL's smaller statement cache would
    // churn through the list lengths).
    let keep = D::BACKEND == Backend::Sqlite;
    if leased.is_empty() {
        return Ok(Vec::new());
    }
    let mut agency_ids: Vec<Uuid> = leased.iter().map(|(_, r)| r.agency_id).collect();
    agency_ids.sort_unstable();
    agency_ids.dedup();
    let mut sql = Sql::new("SELECT id, code, name FROM agencies WHERE id IN ");
    sql.push_list(agency_ids);
    if keep {
        sql.prepared();
    }
    let rows: Vec<(Uuid, String, String)> = sql.fetch_all(&mut *conn).await?;
    let agencies: HashMap<Uuid, (String, String)> =
        rows.into_iter().map(|(id, code, name)| (id, (code, name))).collect();
    let unfollowed = unfollowed_among(
        &mut *conn,
        leased
            .iter()
            .map(|(d, _)| (d.channel.as_str(), d.interface.as_str(), d.target.as_str())),
        keep,
    )
    .await?;
    leased
        .into_iter()
        .map(|(delivery, r)| {
            let (agency_code, agency_name) = agencies
                .get(&r.agency_id)
                .cloned()
                .ok_or_else(|| StoreError::Corrupt(format!("receipt {}: agency {} missing", r.id, r.agency_id)))?;
            Ok(ClaimedDelivery {
                unfollowed: is_unfollowed(&delivery, &unfollowed),
                delivery,
                receipt: DeliveryReceipt {
                    id: r.id,
                    agency_id: r.agency_id,
                    agency_code,
                    agency_name,
                    issuer_app_id: r.issuer_app_id.clone(),
                    bill_batch_code: r.bill_batch_code.clone(),
                    bill_no: r.bill_no.clone(),
                    bus_type: r.bus_type.clone(),
                    issued_at: r.issued_at,
                    total_fen: r.total_fen,
                    open_id: r.open_id.clone(),
                    reversed: false,
                    reimbursement_state: ReimbursementState::Init,
                },
                lease_until,
            })
        })
        .collect()
}

/// The deliveries of one receipt, oldest first.
pub(crate) async fn receipt_deliveries<C: Conn + ?Sized>(conn: &mut C, receipt_id: Uuid) -> Result<Vec<DeliveryRow>> {
    Sql::new(concatcp!(
        "SELECT ",
        DELIVERY_COLUMNS,
        " FROM deliveries WHERE receipt_id = $1 ORDER BY created_at, id"
    ))
    .bind(receipt_id)
    .fetch_all(conn)
    .await
}

/// The deliveries of these receipts, in one query (each receipt's in order).
pub(crate) async fn deliveries_of<C: Conn + ?Sized>(conn: &mut C, receipt_ids: &[Uuid]) -> Result<Vec<DeliveryRow>> {
    if receipt_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(concatcp!(
        "SELECT ",
        DELIVERY_COLUMNS,
        " FROM deliveries WHERE receipt_id IN "
    ));
    sql.push_list(receipt_ids.iter().copied());
    sql.push(" ORDER BY receipt_id, created_at, id");
    sql.fetch_all(conn).await
}

impl DeliveryRow {
    pub(crate) fn receipt_id(&self) -> Uuid {
        self.receipt_id
    }
}

/// The fenced completion of one attempt: only the lease holder of a pending
/// delivery moves it on (no row back otherwise).
const COMPLETE_ATTEMPT: &str = "UPDATE deliveries SET status = $3, attempts = attempts + 1, \
     next_attempt_at = COALESCE($4, next_attempt_at), last_error = $5, park_reason = $6, \
     provider_ref = CASE WHEN $3 = 'delivered' THEN $7 ELSE provider_ref END, \
     delivered_at = COALESCE($8, delivered_at), lease_owner = NULL, lease_until = NULL, updated_at = $9 \
     WHERE id = $1 AND lease_owner = $2 AND status = 'pending' RETURNING id, receipt_id, agency_id";

const INSERT_ATTEMPT: &str =
    "INSERT INTO delivery_attempts (id, delivery_id, started_at, latency_ms, outcome, code, detail) ";

/// Completes attempts one by one, in order, so that a second completion of one
/// delivery meets the fence the first left.
async fn complete_each<D: Dialect>(
    conn: &mut D::Conn,
    owner: &str,
    completions: &[Completion],
    now: Timestamp,
) -> Result<Vec<bool>> {
    let mut done = Vec::with_capacity(completions.len());
    for c in completions {
        let t = Transition::of(&c.update, now);
        let row: Option<(Uuid, Uuid, Uuid)> = Sql::new(COMPLETE_ATTEMPT)
            .bind(c.delivery_id)
            .bind(owner)
            .bind(t.status.as_str())
            .bind(t.next_attempt_at)
            .bind(t.last_error)
            .bind(t.park_reason.map(|r| r.as_str()))
            .bind(t.provider_ref)
            .bind(t.delivered_at)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((_, receipt_id, agency_id)) = row else {
            done.push(false);
            continue;
        };
        let a = &c.attempt;
        Sql::new(concatcp!(INSERT_ATTEMPT, "VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(a.id)
            .bind(c.delivery_id)
            .bind(a.started_at)
            .bind(a.latency_ms)
            .bind(a.outcome.as_str())
            .bind(a.code)
            .bind(&a.detail)
            .execute(&mut *conn)
            .await
            .map_err(|e| write_error(e, "attempt_id"))?;
        insert_deliveries::<D>(&mut *conn, receipt_id, agency_id, &c.follow_ups, now).await?;
        done.push(true);
    }
    Ok(done)
}

/// Completes a batch of distinct deliveries with one UPDATE and one INSERT: each
/// statement is a round trip while the write turn is held.
async fn complete_batch<D: Dialect>(
    conn: &mut D::Conn,
    owner: &str,
    completions: &[Completion],
    now: Timestamp,
) -> Result<HashMap<Uuid, (Uuid, Uuid)>> {
    let transitions: Vec<Transition> = completions.iter().map(|c| Transition::of(&c.update, now)).collect();
    let owned: Vec<(Uuid, Uuid, Uuid)> = match D::BACKEND {
        Backend::Postgres => {
            Sql::new(
                "UPDATE deliveries AS d SET status = u.status, attempts = d.attempts + 1, \
                 next_attempt_at = COALESCE(u.next_attempt_at, d.next_attempt_at), \
                 last_error = u.last_error, park_reason = u.park_reason, \
                 provider_ref = CASE WHEN u.status = 'delivered' THEN u.provider_ref ELSE d.provider_ref END, \
                 delivered_at = COALESCE(u.delivered_at, d.delivered_at), lease_owner = NULL, \
                 lease_until = NULL, updated_at = $8 \
                 FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
                 $7::timestamptz[]) AS u(id, status, next_attempt_at, last_error, park_reason, provider_ref, \
                 delivered_at) \
                 WHERE d.id = u.id AND d.lease_owner = $9 AND d.status = 'pending' \
                 RETURNING d.id, d.receipt_id, d.agency_id",
            )
            .bind(completions.iter().map(|c| c.delivery_id).collect::<Vec<_>>())
            .bind(
                transitions
                    .iter()
                    .map(|t| Some(t.status.as_str().to_owned()))
                    .collect::<Vec<_>>(),
            )
            .bind(transitions.iter().map(|t| t.next_attempt_at).collect::<Vec<_>>())
            .bind(transitions.iter().map(|t| t.last_error.clone()).collect::<Vec<_>>())
            .bind(
                transitions
                    .iter()
                    .map(|t| t.park_reason.map(|r| r.as_str().to_owned()))
                    .collect::<Vec<_>>(),
            )
            .bind(transitions.iter().map(|t| t.provider_ref.clone()).collect::<Vec<_>>())
            .bind(transitions.iter().map(|t| t.delivered_at).collect::<Vec<_>>())
            .bind(now)
            .bind(owner)
            .fetch_all(&mut *conn)
            .await?
        }
        Backend::Sqlite => {
            let mut sql = Sql::new(
                "WITH u (id, status, next_attempt_at, last_error, park_reason, provider_ref, delivered_at) AS (VALUES ",
            );
            for (i, (c, t)) in completions.iter().zip(&transitions).enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.push_bind(c.delivery_id).push(", ").push_bind(t.status.as_str());
                sql.push(", ")
                    .push_bind(t.next_attempt_at)
                    .push(", ")
                    .push_bind(&t.last_error);
                sql.push(", ").push_bind(t.park_reason.map(|r| r.as_str()));
                sql.push(", ")
                    .push_bind(&t.provider_ref)
                    .push(", ")
                    .push_bind(t.delivered_at);
                sql.push(")");
            }
            sql.push(
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
            .push(" AND deliveries.status = 'pending' RETURNING id, receipt_id, agency_id")
            .prepared();
            sql.fetch_all(&mut *conn).await?
        }
    };
    let owned: HashMap<Uuid, (Uuid, Uuid)> = owned.into_iter().map(|(d, r, a)| (d, (r, a))).collect();
    let recorded: Vec<&Completion> = completions
        .iter()
        .filter(|c| owned.contains_key(&c.delivery_id))
        .collect();
    if !recorded.is_empty() {
        match D::BACKEND {
            Backend::Postgres => {
                Sql::new(concatcp!(
                    INSERT_ATTEMPT,
                    "SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int8[], $5::text[], \
                     $6::int8[], $7::text[])"
                ))
                .bind(recorded.iter().map(|c| c.attempt.id).collect::<Vec<_>>())
                .bind(recorded.iter().map(|c| c.delivery_id).collect::<Vec<_>>())
                .bind(recorded.iter().map(|c| Some(c.attempt.started_at)).collect::<Vec<_>>())
                .bind(recorded.iter().map(|c| Some(c.attempt.latency_ms)).collect::<Vec<_>>())
                .bind(
                    recorded
                        .iter()
                        .map(|c| Some(c.attempt.outcome.as_str().to_owned()))
                        .collect::<Vec<_>>(),
                )
                .bind(recorded.iter().map(|c| c.attempt.code).collect::<Vec<_>>())
                .bind(recorded.iter().map(|c| c.attempt.detail.clone()).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await
            }
            Backend::Sqlite => {
                let mut sql = Sql::new(INSERT_ATTEMPT);
                sql.push("VALUES ");
                for (i, c) in recorded.iter().enumerate() {
                    let a = &c.attempt;
                    sql.push(if i == 0 { "(" } else { ", (" });
                    sql.push_bind(a.id)
                        .push(", ")
                        .push_bind(c.delivery_id)
                        .push(", ")
                        .push_bind(a.started_at);
                    sql.push(", ")
                        .push_bind(a.latency_ms)
                        .push(", ")
                        .push_bind(a.outcome.as_str());
                    sql.push(", ")
                        .push_bind(a.code)
                        .push(", ")
                        .push_bind(&a.detail)
                        .push(")");
                }
                sql.prepared();
                sql.execute(&mut *conn).await
            }
        }
        .map_err(|e| write_error(e, "attempt_id"))?;
    }
    for c in &recorded {
        if let Some((receipt_id, agency_id)) = owned.get(&c.delivery_id) {
            insert_deliveries::<D>(&mut *conn, *receipt_id, *agency_id, &c.follow_ups, now).await?;
        }
    }
    Ok(owned)
}

/// Appends ` AND …` for every field the filter sets (the text so far ends in a
/// `WHERE`). An empty `ids` list matches nothing.
fn push_filter<'a>(sql: &mut Sql<'a>, f: &'a DeliveryFilter) {
    if let Some(ids) = &f.ids {
        sql.push(" AND id IN ").push_list(ids.iter().copied());
    }
    if let Some(status) = f.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(channel) = f.channel {
        sql.push(" AND channel = ").push_bind(channel.as_str());
    }
    if let Some(interface) = &f.interface {
        sql.push(" AND interface = ").push_bind(interface);
    }
    if let Some(agency_id) = f.agency_id {
        sql.push(" AND agency_id = ").push_bind(agency_id);
    }
    if let Some(reason) = f.park_reason {
        sql.push(" AND park_reason = ").push_bind(reason.as_str());
    }
}

#[async_trait]
impl<D: Dialect> DeliveryQueue for Db<D> {
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        let mut tx = self.d.write().await?;
        let claim = match D::BACKEND {
            Backend::Postgres => {
                // Walk the due index in claim order and stop after `limit` rows. The
                // planner's estimates lag a queue that changes this fast, and with them
                // it may take a bitmap scan that reads and sorts every pending row: a
                // claim then costs as much as the backlog is long, just when it is longest.
                Sql::new("SET LOCAL enable_bitmapscan = off").execute(tx.conn()).await?;
                // SKIP LOCKED: concurrent claimers pass over each other's rows instead
                // of waiting; a row leased meanwhile fails the re-checked WHERE.
                Sql::new(concatcp!(
                    "UPDATE deliveries SET lease_owner = $1, lease_until = $2 WHERE id IN ",
                    "(SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $3 ",
                    "AND (lease_until IS NULL OR lease_until < $3) ",
                    "ORDER BY next_attempt_at, created_at LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING ",
                    DELIVERY_COLUMNS
                ))
            }
            // The write lock makes select-and-lease one step for concurrent claimers.
            // INDEXED BY: without statistics SQLite would rather take the status index
            // and sort every pending row; the due index yields them in claim order.
            Backend::Sqlite => Sql::new(concatcp!(
                "UPDATE deliveries SET lease_owner = $1, lease_until = $2 WHERE id IN ",
                "(SELECT id FROM deliveries INDEXED BY deliveries_due_idx ",
                "WHERE status = 'pending' AND next_attempt_at <= $3 ",
                "AND (lease_until IS NULL OR lease_until < $3) ",
                "ORDER BY next_attempt_at, created_at LIMIT $4) RETURNING ",
                DELIVERY_COLUMNS
            )),
        };
        let rows: Vec<DeliveryRow> = claim
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(tx.conn())
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut receipt_ids: Vec<Uuid> = rows.iter().map(|r| r.receipt_id).collect();
        receipt_ids.sort_unstable();
        receipt_ids.dedup();
        let mut sql = Sql::new(
            "SELECT r.id, r.agency_id, a.code AS agency_code, a.name AS agency_name, r.issuer_app_id, \
             r.bill_batch_code, r.bill_no, r.bus_type, r.issued_at, r.total_fen, r.open_id, \
             (r.red_bill_no IS NOT NULL) AS reversed, r.reimbursement_state \
             FROM receipts r JOIN agencies a ON a.id = r.agency_id WHERE r.id IN ",
        );
        sql.push_list(receipt_ids);
        let receipts: Vec<DeliveryReceiptRow> = sql.fetch_all(tx.conn()).await?;
        let unfollowed = unfollowed_targets(tx.conn(), &rows).await?;
        tx.commit().await?;
        let receipts: HashMap<Uuid, DeliveryReceipt> = receipts
            .into_iter()
            .map(|r| DeliveryReceipt::try_from(r).map(|r| (r.id, r)))
            .collect::<Result<_>>()?;
        let mut claimed = rows
            .into_iter()
            .map(|row| {
                let delivery = Delivery::try_from(row)?;
                let receipt = receipts.get(&delivery.receipt_id).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "delivery {}: receipt {} missing",
                        delivery.id, delivery.receipt_id
                    ))
                })?;
                Ok(ClaimedDelivery {
                    unfollowed: is_unfollowed(&delivery, &unfollowed),
                    delivery,
                    receipt,
                    lease_until,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The order of the claim (`RETURNING` does not keep it).
        claimed.sort_by_key(|c| (c.delivery.next_attempt_at, c.delivery.created_at, c.delivery.id));
        Ok(claimed)
    }

    async fn renew_lease(&self, delivery_id: Uuid, owner: &str, lease_until: Timestamp) -> Result<bool> {
        let changed = Sql::new(
            "UPDATE deliveries SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(delivery_id)
        .bind(owner)
        .bind(lease_until)
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(changed == 1)
    }

    async fn complete_attempts(&self, owner: &str, completions: &[Completion]) -> Result<Vec<bool>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        let mut ids: Vec<Uuid> = completions.iter().map(|c| c.delivery_id).collect();
        ids.sort_unstable();
        ids.dedup();
        // One write transaction for all: each transaction of its own would queue
        // for the write turn (SQLite) or a connection (PostgreSQL) again.
        let mut tx = self.d.write().await?;
        let done: Vec<bool> = if completions.len() < 2 || ids.len() < completions.len() {
            // One, or the same delivery twice: in order, each with its own result
            // (the second meets the fence the first left).
            complete_each::<D>(tx.conn(), owner, completions, now).await?
        } else {
            let owned = complete_batch::<D>(tx.conn(), owner, completions, now).await?;
            completions.iter().map(|c| owned.contains_key(&c.delivery_id)).collect()
        };
        if done.contains(&true) {
            tx.commit().await?;
        }
        Ok(done)
    }

    async fn defer_delivery(&self, delivery_id: Uuid, owner: &str, until: Timestamp) -> Result<bool> {
        let changed = Sql::new(
            "UPDATE deliveries SET next_attempt_at = $3, lease_owner = NULL, lease_until = NULL, \
             updated_at = $4 WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(delivery_id)
        .bind(owner)
        .bind(until)
        .bind(Timestamp::now())
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(changed == 1)
    }

    async fn delivery_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRecord>> {
        let rows: Vec<AttemptRow> = Sql::new(
            "SELECT id, started_at, latency_ms, outcome, code, detail FROM delivery_attempts \
             WHERE delivery_id = $1 ORDER BY started_at, id",
        )
        .bind(delivery_id)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AttemptRecord {
                    outcome: AttemptOutcome::parse(&row.outcome)
                        .ok_or_else(|| StoreError::Corrupt(format!("attempt {}: outcome {:?}", row.id, row.outcome)))?,
                    id: row.id,
                    started_at: row.started_at,
                    latency_ms: row.latency_ms,
                    code: row.code,
                    detail: row.detail,
                })
            })
            .collect()
    }

    async fn delivery(&self, delivery_id: Uuid) -> Result<Option<Delivery>> {
        let row: Option<DeliveryRow> =
            Sql::new(concatcp!("SELECT ", DELIVERY_COLUMNS, " FROM deliveries WHERE id = $1"))
                .bind(delivery_id)
                .fetch_optional(&mut *self.d.read().await?)
                .await?;
        row.map(Delivery::try_from).transpose()
    }

    async fn delivery_by_provider_ref(&self, interface: &str, provider_ref: &str) -> Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = Sql::new(concatcp!(
            "SELECT ",
            DELIVERY_COLUMNS,
            " FROM deliveries WHERE interface = $1 AND provider_ref = $2 ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(interface)
        .bind(provider_ref)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        row.map(Delivery::try_from).transpose()
    }

    async fn settle_delivery(&self, delivery_id: Uuid, status: DeliveryStatus, error: Option<String>) -> Result<bool> {
        // A provider's later report can only take back what it had accepted.
        if status != DeliveryStatus::Failed {
            return Ok(false);
        }
        let changed = Sql::new(
            "UPDATE deliveries SET status = $2, last_error = $3, updated_at = $4 \
             WHERE id = $1 AND status = 'delivered'",
        )
        .bind(delivery_id)
        .bind(status.as_str())
        .bind(error)
        .bind(Timestamp::now())
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(changed == 1)
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter, limit: i64) -> Result<Vec<Delivery>> {
        let mut sql = Sql::new(concatcp!("SELECT ", DELIVERY_COLUMNS, " FROM deliveries WHERE true"));
        push_filter(&mut sql, filter);
        sql.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit);
        deliveries(sql.fetch_all(&mut *self.d.read().await?).await?)
    }

    async fn redrive(&self, filter: &DeliveryFilter, start: Timestamp, spacing: chrono::TimeDelta) -> Result<u64> {
        // Only parked or failed ones: a filter naming another status matches nothing.
        let statuses = match filter.status {
            None => vec![DeliveryStatus::Parked, DeliveryStatus::Failed],
            Some(s @ (DeliveryStatus::Parked | DeliveryStatus::Failed)) => vec![s],
            Some(DeliveryStatus::Pending | DeliveryStatus::Delivered | DeliveryStatus::Cancelled) => return Ok(0),
        };
        let unfiltered = DeliveryFilter {
            status: None,
            ..filter.clone()
        };
        let mut candidates = Sql::new("SELECT id FROM deliveries WHERE true");
        push_filter(&mut candidates, &unfiltered);
        candidates
            .push(" AND status IN ")
            .push_list(statuses.iter().map(|s| s.as_str()))
            .push(" ORDER BY created_at, id");
        if D::BACKEND == Backend::Postgres {
            candidates.push(" FOR UPDATE");
        }
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let ids: Vec<(Uuid,)> = candidates.fetch_all(tx.conn()).await?;
        // Oldest first: `start`, `start + spacing`, …
        let schedule: Vec<(Uuid, Timestamp)> = ids
            .into_iter()
            .zip(0..)
            .map(|((id,), i)| (id, start + spacing * i))
            .collect();
        const REDRIVE: &str = "UPDATE deliveries SET status = 'pending', attempts = 0, park_reason = NULL, \
             lease_owner = NULL, lease_until = NULL, ";
        match D::BACKEND {
            Backend::Postgres => {
                Sql::new(concatcp!(
                    REDRIVE,
                    "next_attempt_at = s.due, updated_at = $3 FROM unnest($1::uuid[], $2::timestamptz[]) \
                     AS s (id, due) WHERE deliveries.id = s.id"
                ))
                .bind(schedule.iter().map(|(id, _)| *id).collect::<Vec<_>>())
                .bind(schedule.iter().map(|(_, due)| Some(*due)).collect::<Vec<_>>())
                .bind(now)
                .execute(tx.conn())
                .await?;
            }
            Backend::Sqlite => {
                for (id, due) in &schedule {
                    Sql::new(concatcp!(
                        REDRIVE,
                        "next_attempt_at = $2, updated_at = $3 WHERE id = $1"
                    ))
                    .bind(*id)
                    .bind(*due)
                    .bind(now)
                    .execute(tx.conn())
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(schedule.len() as u64)
    }
}
