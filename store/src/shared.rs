//! What both backends share: row shapes (one `FromRow` struct decodes on either
//! database because every field type is supported by both), conversion to records,
//! the duplicate/conflict and reversal decisions, and error mapping. Each backend
//! keeps only its SQL and its transaction/locking strategy.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::types::Json;
use sqlx::{Database, Encode, QueryBuilder, Type};
use uuid::Uuid;

use crate::{
    Agency, Alert, App, AppKind, AppSecret, AttemptOutcome, AttemptRecord, Channel, ClaimedDelivery, Delivery,
    DeliveryEvent, DeliveryFilter, DeliveryReceipt, DeliveryStatus, DeliveryUpdate, FileMeta, InsertOutcome,
    NewReceiptRecord, ReimbursementState, Reversal, ReversalOutcome, StatsRow, StoreError, StoredReceipt,
};

/// Columns of `receipts` in the order of [`ReceiptRow`].
macro_rules! receipt_columns {
    () => {
        "id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, bus_type, \
         payer_type, issued_at, total_fen, content_hash, payer_sealed, payer_id_index, \
         payer_phone_index, payer_name_index, open_id, details, file, received_at, \
         reimbursement_state, red_bill_batch_code, red_bill_no, red_random, reversed_at, \
         reversal_reason, reversal_recorded_at"
    };
}
pub(crate) use receipt_columns;

macro_rules! delivery_columns {
    () => {
        "id, receipt_id, agency_id, event, channel, target, interface, payload, status, attempts, \
         next_attempt_at, last_error, park_reason, provider_ref, created_at, updated_at, delivered_at"
    };
}
pub(crate) use delivery_columns;

/// Completing one attempt, fenced: only the lease holder of a pending delivery
/// moves it on (no row back otherwise). Both stores run this text.
pub(crate) const COMPLETE_ATTEMPT: &str = "UPDATE deliveries SET status = $3, attempts = attempts + 1, \
     next_attempt_at = COALESCE($4, next_attempt_at), last_error = $5, park_reason = $6, \
     provider_ref = CASE WHEN $3 = 'delivered' THEN $7 ELSE provider_ref END, \
     delivered_at = COALESCE($8, delivered_at), lease_owner = NULL, lease_until = NULL, \
     updated_at = $9 \
     WHERE id = $1 AND lease_owner = $2 AND status = 'pending' \
     RETURNING receipt_id, agency_id";

/// Recording one attempt (after [`COMPLETE_ATTEMPT`] returned its row).
pub(crate) const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts (id, delivery_id, started_at, latency_ms, outcome, code, \
     detail) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Columns of `receipts r JOIN agencies a` in the order of [`DeliveryReceiptRow`].
macro_rules! delivery_receipt_columns {
    () => {
        "r.id, r.agency_id, a.code AS agency_code, a.name AS agency_name, r.issuer_app_id, \
         r.bill_batch_code, r.bill_no, r.bus_type, r.issued_at, r.total_fen, r.open_id, \
         (r.red_bill_no IS NOT NULL) AS reversed, r.reimbursement_state"
    };
}

macro_rules! attempt_columns {
    () => {
        "id, started_at, latency_ms, outcome, code, detail"
    };
}
pub(crate) use attempt_columns;

macro_rules! stats_columns {
    () => {
        "minute, scope, key, writer, attempts, successes, latency_buckets"
    };
}
pub(crate) use stats_columns;

macro_rules! channel_columns {
    () => {
        "id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, page, \
         message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at, long_term"
    };
}
pub(crate) use channel_columns;

macro_rules! upsert_channel {
    ($target:literal) => {
        concat!(
            "INSERT INTO channels (",
            channel_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13) ",
            "ON CONFLICT ",
            $target,
            " DO UPDATE SET wechat_app_id = excluded.wechat_app_id, ",
            "secret_sealed = excluded.secret_sealed, template_id = excluded.template_id, ",
            "fields = excluded.fields, page = excluded.page, ",
            "message_token_sealed = excluded.message_token_sealed, ",
            "encoding_aes_key_sealed = excluded.encoding_aes_key_sealed, enabled = excluded.enabled, ",
            "long_term = excluded.long_term, updated_at = excluded.updated_at RETURNING ",
            channel_columns!()
        )
    };
}

/// Creates or replaces an agency's channel of a kind.
pub(crate) const UPSERT_AGENCY_CHANNEL: &str = upsert_channel!("(agency_id, kind)");
/// Creates or replaces the platform's channel of a kind (the partial unique index).
pub(crate) const UPSERT_PLATFORM_CHANNEL: &str = upsert_channel!("(kind) WHERE agency_id IS NULL");

macro_rules! alert_columns {
    () => {
        "id, rule, key, state, message, started_at, last_notified_at, resolved_at"
    };
}
pub(crate) use alert_columns;

macro_rules! agency_columns {
    () => {
        "id, code, name, file_hosts, created_at"
    };
}
pub(crate) use agency_columns;

macro_rules! app_columns {
    () => {
        "app_id, agency_id, kind, name, enabled, callback_url, created_at"
    };
}
pub(crate) use app_columns;

macro_rules! secret_columns {
    () => {
        "id, app_id, sealed, created_at"
    };
}
pub(crate) use secret_columns;

/// The current time at the precision both databases keep (PostgreSQL stores
/// microseconds), so a value written and read back compares equal.
pub(crate) fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// Brings caller-supplied times to stored precision before they are written or
/// compared with stored ones.
pub(crate) fn normalize_receipt(mut r: NewReceiptRecord) -> NewReceiptRecord {
    r.issued_at = micros(r.issued_at);
    r.received_at = micros(r.received_at);
    r
}

pub(crate) fn normalize_reversal(mut r: Reversal) -> Reversal {
    r.reversed_at = micros(r.reversed_at);
    r.recorded_at = micros(r.recorded_at);
    r
}

/// Maps a failed write: a unique violation becomes `Conflict(rule)`, a missing
/// referenced row `NotFound`; anything else stays a database error.
pub(crate) fn write_error(err: sqlx::Error, rule: &'static str) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Conflict(rule),
        Some(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => StoreError::Database(err),
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AgencyRow {
    id: Uuid,
    code: String,
    name: String,
    file_hosts: Json<Vec<String>>,
    created_at: DateTime<Utc>,
}

impl From<AgencyRow> for Agency {
    fn from(row: AgencyRow) -> Self {
        Agency {
            id: row.id,
            code: row.code,
            name: row.name,
            file_hosts: row.file_hosts.0,
            created_at: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AppRow {
    pub(crate) app_id: String,
    agency_id: Uuid,
    kind: String,
    name: String,
    enabled: bool,
    callback_url: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct SecretRow {
    id: Uuid,
    pub(crate) app_id: String,
    sealed: String,
    created_at: DateTime<Utc>,
}

impl AppRow {
    /// `secrets` must be this app's active secrets, newest first.
    pub(crate) fn into_app(self, secrets: Vec<SecretRow>) -> Result<App, StoreError> {
        let kind = AppKind::parse(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("app {}: kind {:?}", self.app_id, self.kind)))?;
        Ok(App {
            app_id: self.app_id,
            agency_id: self.agency_id,
            kind,
            name: self.name,
            enabled: self.enabled,
            callback_url: self.callback_url,
            secrets: secrets
                .into_iter()
                .map(|s| AppSecret {
                    id: s.id,
                    sealed: s.sealed,
                    created_at: s.created_at,
                })
                .collect(),
            created_at: self.created_at,
        })
    }
}

/// Joins apps with their secrets (both lists come ordered from the database:
/// secrets by app then newest first), keeping the order of `apps`.
pub(crate) fn assemble_apps(apps: Vec<AppRow>, secrets: Vec<SecretRow>) -> Result<Vec<App>, StoreError> {
    let mut by_app: std::collections::HashMap<String, Vec<SecretRow>> = std::collections::HashMap::new();
    for s in secrets {
        by_app.entry(s.app_id.clone()).or_default().push(s);
    }
    apps.into_iter()
        .map(|a| {
            let secrets = by_app.remove(&a.app_id).unwrap_or_default();
            a.into_app(secrets)
        })
        .collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct ReceiptRow {
    pub(crate) id: Uuid,
    agency_id: Uuid,
    issuer_app_id: String,
    bill_batch_code: String,
    bill_no: String,
    random: String,
    bus_no: String,
    bus_type: String,
    payer_type: String,
    issued_at: DateTime<Utc>,
    total_fen: i64,
    content_hash: String,
    payer_sealed: String,
    payer_id_index: Option<String>,
    payer_phone_index: Option<String>,
    payer_name_index: Option<String>,
    open_id: Option<String>,
    details: Json<serde_json::Value>,
    file: Option<Json<FileMeta>>,
    received_at: DateTime<Utc>,
    reimbursement_state: String,
    red_bill_batch_code: Option<String>,
    red_bill_no: Option<String>,
    red_random: Option<String>,
    reversed_at: Option<DateTime<Utc>>,
    reversal_reason: Option<String>,
    reversal_recorded_at: Option<DateTime<Utc>>,
}

impl ReceiptRow {
    pub(crate) fn into_receipt(self, deliveries: Vec<DeliveryRow>) -> Result<StoredReceipt, StoreError> {
        let reimbursement_state = ReimbursementState::parse(&self.reimbursement_state).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "receipt {}: reimbursement_state {:?}",
                self.id, self.reimbursement_state
            ))
        })?;
        let reversal = match (
            self.red_bill_batch_code,
            self.red_bill_no,
            self.red_random,
            self.reversed_at,
            self.reversal_reason,
            self.reversal_recorded_at,
        ) {
            (None, None, None, None, None, None) => None,
            (
                Some(red_bill_batch_code),
                Some(red_bill_no),
                Some(red_random),
                Some(reversed_at),
                Some(reason),
                Some(recorded_at),
            ) => Some(Reversal {
                red_bill_batch_code,
                red_bill_no,
                red_random,
                reversed_at,
                reason,
                recorded_at,
            }),
            _ => {
                return Err(StoreError::Corrupt(format!("receipt {}: partial reversal", self.id)));
            }
        };
        Ok(StoredReceipt {
            id: self.id,
            agency_id: self.agency_id,
            issuer_app_id: self.issuer_app_id,
            bill_batch_code: self.bill_batch_code,
            bill_no: self.bill_no,
            random: self.random,
            bus_no: self.bus_no,
            bus_type: self.bus_type,
            payer_type: self.payer_type,
            issued_at: self.issued_at,
            total_fen: self.total_fen,
            content_hash: self.content_hash,
            payer_sealed: self.payer_sealed,
            payer_id_index: self.payer_id_index,
            payer_phone_index: self.payer_phone_index,
            payer_name_index: self.payer_name_index,
            open_id: self.open_id,
            details: self.details.0,
            file: self.file.map(|f| f.0),
            received_at: self.received_at,
            reimbursement_state,
            reversal,
            deliveries: into_deliveries(deliveries)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    pub(crate) id: Uuid,
    receipt_id: Uuid,
    agency_id: Uuid,
    event: String,
    channel: String,
    target: String,
    interface: String,
    payload: Option<Json<serde_json::Value>>,
    status: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
    park_reason: Option<String>,
    provider_ref: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl DeliveryRow {
    pub(crate) fn into_delivery(self) -> Result<Delivery, StoreError> {
        let event = DeliveryEvent::parse(&self.event)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {}: event {:?}", self.id, self.event)))?;
        let status = DeliveryStatus::parse(&self.status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {}: status {:?}", self.id, self.status)))?;
        Ok(Delivery {
            id: self.id,
            receipt_id: self.receipt_id,
            agency_id: self.agency_id,
            event,
            channel: self.channel,
            target: self.target,
            interface: self.interface,
            payload: self.payload.map(|p| p.0),
            status,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            park_reason: self.park_reason,
            provider_ref: self.provider_ref,
            created_at: self.created_at,
            updated_at: self.updated_at,
            delivered_at: self.delivered_at,
        })
    }
}

pub(crate) fn into_deliveries(rows: Vec<DeliveryRow>) -> Result<Vec<Delivery>, StoreError> {
    rows.into_iter().map(DeliveryRow::into_delivery).collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryReceiptRow {
    id: Uuid,
    agency_id: Uuid,
    agency_code: String,
    agency_name: String,
    issuer_app_id: String,
    bill_batch_code: String,
    bill_no: String,
    bus_type: String,
    issued_at: DateTime<Utc>,
    total_fen: i64,
    open_id: Option<String>,
    reversed: bool,
    reimbursement_state: String,
}

impl DeliveryReceiptRow {
    fn into_receipt(self) -> Result<DeliveryReceipt, StoreError> {
        let reimbursement_state = ReimbursementState::parse(&self.reimbursement_state).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "receipt {}: reimbursement_state {:?}",
                self.id, self.reimbursement_state
            ))
        })?;
        Ok(DeliveryReceipt {
            id: self.id,
            agency_id: self.agency_id,
            agency_code: self.agency_code,
            agency_name: self.agency_name,
            issuer_app_id: self.issuer_app_id,
            bill_batch_code: self.bill_batch_code,
            bill_no: self.bill_no,
            bus_type: self.bus_type,
            issued_at: self.issued_at,
            total_fen: self.total_fen,
            open_id: self.open_id,
            reversed: self.reversed,
            reimbursement_state,
        })
    }
}

/// Pairs claimed deliveries with their receipts, oldest due first (the order of
/// the claim; `RETURNING` does not keep it).
pub(crate) fn assemble_claimed(
    deliveries: Vec<DeliveryRow>,
    receipts: Vec<DeliveryReceiptRow>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let receipts: HashMap<Uuid, DeliveryReceipt> = receipts
        .into_iter()
        .map(|r| r.into_receipt().map(|r| (r.id, r)))
        .collect::<Result<_, _>>()?;
    let mut claimed = deliveries
        .into_iter()
        .map(|row| {
            let delivery = row.into_delivery()?;
            let receipt = receipts.get(&delivery.receipt_id).cloned().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "delivery {}: receipt {} missing",
                    delivery.id, delivery.receipt_id
                ))
            })?;
            Ok(ClaimedDelivery {
                delivery,
                receipt,
                lease_until,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    claimed.sort_by_key(|c| (c.delivery.next_attempt_at, c.delivery.created_at, c.delivery.id));
    Ok(claimed)
}

/// Where an attempt leaves a delivery, as the column values the fenced update
/// writes. `None` keeps the stored `next_attempt_at`/`delivered_at`.
pub(crate) struct Transition {
    pub(crate) status: &'static str,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
    pub(crate) last_error: Option<String>,
    pub(crate) park_reason: Option<String>,
    /// Written only when the status is `delivered`.
    pub(crate) provider_ref: Option<String>,
    pub(crate) delivered_at: Option<DateTime<Utc>>,
}

pub(crate) fn transition(update: DeliveryUpdate, now: DateTime<Utc>) -> Transition {
    let base = Transition {
        status: DeliveryStatus::Pending.as_str(),
        next_attempt_at: None,
        last_error: None,
        park_reason: None,
        provider_ref: None,
        delivered_at: None,
    };
    match update {
        DeliveryUpdate::Delivered { provider_ref } => Transition {
            status: DeliveryStatus::Delivered.as_str(),
            provider_ref,
            delivered_at: Some(now),
            ..base
        },
        DeliveryUpdate::Retry { at, error } => Transition {
            next_attempt_at: Some(micros(at)),
            last_error: Some(error),
            ..base
        },
        DeliveryUpdate::Failed { error } => Transition {
            status: DeliveryStatus::Failed.as_str(),
            last_error: Some(error),
            ..base
        },
        DeliveryUpdate::Parked { reason, error } => Transition {
            status: DeliveryStatus::Parked.as_str(),
            last_error: Some(error),
            park_reason: Some(reason),
            ..base
        },
    }
}

pub(crate) fn normalize_attempt(mut a: AttemptRecord) -> AttemptRecord {
    a.started_at = micros(a.started_at);
    a
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    id: Uuid,
    started_at: DateTime<Utc>,
    latency_ms: i64,
    outcome: String,
    code: Option<i64>,
    detail: Option<String>,
}

impl TryFrom<AttemptRow> for AttemptRecord {
    type Error = StoreError;

    fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
        let outcome = [
            AttemptOutcome::Success,
            AttemptOutcome::Retryable,
            AttemptOutcome::Permanent,
        ]
        .into_iter()
        .find(|o| o.as_str() == row.outcome)
        .ok_or_else(|| StoreError::Corrupt(format!("attempt {}: outcome {:?}", row.id, row.outcome)))?;
        Ok(AttemptRecord {
            id: row.id,
            started_at: row.started_at,
            latency_ms: row.latency_ms,
            outcome,
            code: row.code,
            detail: row.detail,
        })
    }
}

/// Appends ` AND …` for every field the filter sets (callers start with `WHERE true`).
/// An empty `ids` list matches nothing.
fn push_delivery_filter<DB>(qb: &mut QueryBuilder<DB>, f: &DeliveryFilter)
where
    DB: Database,
    for<'t> Uuid: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    if let Some(ids) = &f.ids {
        if ids.is_empty() {
            qb.push(" AND false");
        } else {
            qb.push(" AND id IN (");
            let mut list = qb.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
        }
    }
    if let Some(status) = f.status {
        qb.push(" AND status = ").push_bind(status.as_str().to_owned());
    }
    if let Some(channel) = &f.channel {
        qb.push(" AND channel = ").push_bind(channel.clone());
    }
    if let Some(interface) = &f.interface {
        qb.push(" AND interface = ").push_bind(interface.clone());
    }
    if let Some(agency_id) = f.agency_id {
        qb.push(" AND agency_id = ").push_bind(agency_id);
    }
    if let Some(reason) = &f.park_reason {
        qb.push(" AND park_reason = ").push_bind(reason.clone());
    }
}

/// `SELECT` of the filtered deliveries, newest first.
pub(crate) fn list_deliveries_query<DB>(f: &DeliveryFilter, limit: i64) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> Uuid: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(concat!("SELECT ", delivery_columns!(), " FROM deliveries WHERE true"));
    push_delivery_filter(&mut qb, f);
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit);
    qb
}

/// `SELECT id` of the deliveries a re-drive takes back, oldest first: only parked
/// or failed ones, so a filter naming another status matches nothing (`None`).
pub(crate) fn redrive_candidates_query<DB>(f: &DeliveryFilter) -> Option<QueryBuilder<DB>>
where
    DB: Database,
    for<'t> Uuid: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let statuses: &[DeliveryStatus] = match f.status {
        None => &[DeliveryStatus::Parked, DeliveryStatus::Failed],
        Some(s @ (DeliveryStatus::Parked | DeliveryStatus::Failed)) => &[s],
        Some(DeliveryStatus::Pending | DeliveryStatus::Delivered) => return None,
    };
    let mut qb = QueryBuilder::new("SELECT id FROM deliveries WHERE true");
    push_delivery_filter(
        &mut qb,
        &DeliveryFilter {
            status: None,
            ..f.clone()
        },
    );
    qb.push(" AND status IN (");
    let mut list = qb.separated(", ");
    for s in statuses {
        list.push_bind(s.as_str().to_owned());
    }
    list.push_unseparated(") ORDER BY created_at, id");
    Some(qb)
}

/// The fresh due times of re-driven deliveries (given oldest first): `start`,
/// `start + spacing`, … so they do not arrive as one burst.
pub(crate) fn redrive_schedule(
    ids: Vec<Uuid>,
    start: DateTime<Utc>,
    spacing: chrono::Duration,
) -> Vec<(Uuid, DateTime<Utc>)> {
    let mut due = start;
    ids.into_iter()
        .map(|id| {
            let this = micros(due);
            due += spacing;
            (id, this)
        })
        .collect()
}

/// `SELECT` of the receipts (with their agency) of claimed deliveries.
pub(crate) fn delivery_receipts_query<DB>(receipt_ids: &[Uuid]) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> Uuid: Encode<'t, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(concat!(
        "SELECT ",
        delivery_receipt_columns!(),
        " FROM receipts r JOIN agencies a ON a.id = r.agency_id WHERE r.id IN ("
    ));
    let mut list = qb.separated(", ");
    for id in receipt_ids {
        list.push_bind(*id);
    }
    list.push_unseparated(")");
    qb
}

/// Distinct receipt ids of claimed rows (never empty when `rows` is not).
pub(crate) fn receipt_ids(rows: &[DeliveryRow]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = rows.iter().map(|r| r.receipt_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[derive(sqlx::FromRow)]
pub(crate) struct BacklogDbRow {
    channel: String,
    interface: String,
    pending: i64,
    oldest_created_at: Option<DateTime<Utc>>,
}

impl From<BacklogDbRow> for crate::BacklogRow {
    fn from(row: BacklogDbRow) -> Self {
        crate::BacklogRow {
            channel: row.channel,
            interface: row.interface,
            pending: row.pending,
            oldest_created_at: row.oldest_created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct StatsDbRow {
    minute: DateTime<Utc>,
    scope: String,
    key: String,
    writer: String,
    attempts: i64,
    successes: i64,
    latency_buckets: Json<Vec<i64>>,
}

impl From<StatsDbRow> for StatsRow {
    fn from(row: StatsDbRow) -> Self {
        StatsRow {
            minute: row.minute,
            scope: row.scope,
            key: row.key,
            writer: row.writer,
            attempts: row.attempts,
            successes: row.successes,
            latency_buckets: row.latency_buckets.0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ChannelRow {
    id: Uuid,
    agency_id: Option<Uuid>,
    kind: String,
    wechat_app_id: String,
    secret_sealed: String,
    template_id: String,
    fields: Json<serde_json::Value>,
    page: Option<String>,
    message_token_sealed: Option<String>,
    encoding_aes_key_sealed: Option<String>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    long_term: bool,
}

impl From<ChannelRow> for Channel {
    fn from(row: ChannelRow) -> Self {
        Channel {
            id: row.id,
            agency_id: row.agency_id,
            kind: row.kind,
            wechat_app_id: row.wechat_app_id,
            secret_sealed: row.secret_sealed,
            template_id: row.template_id,
            fields: row.fields.0,
            page: row.page,
            message_token_sealed: row.message_token_sealed,
            encoding_aes_key_sealed: row.encoding_aes_key_sealed,
            enabled: row.enabled,
            long_term: row.long_term,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AlertRow {
    id: Uuid,
    rule: String,
    key: String,
    state: String,
    message: String,
    started_at: DateTime<Utc>,
    last_notified_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

impl From<AlertRow> for Alert {
    fn from(row: AlertRow) -> Self {
        Alert {
            id: row.id,
            rule: row.rule,
            key: row.key,
            state: row.state,
            message: row.message,
            started_at: row.started_at,
            last_notified_at: row.last_notified_at,
            resolved_at: row.resolved_at,
        }
    }
}

pub(crate) fn normalize_alert(a: &Alert) -> Alert {
    Alert {
        started_at: micros(a.started_at),
        last_notified_at: micros(a.last_notified_at),
        resolved_at: a.resolved_at.map(micros),
        ..a.clone()
    }
}

pub(crate) fn normalize_stats(mut r: StatsRow) -> StatsRow {
    r.minute = micros(r.minute);
    r
}

/// What a push whose identity is already taken amounts to.
pub(crate) fn classify_existing(existing: StoredReceipt, new: &NewReceiptRecord) -> InsertOutcome {
    if existing.agency_id != new.agency_id {
        InsertOutcome::Conflict { same_agency: false }
    } else if existing.content_hash != new.content_hash {
        InsertOutcome::Conflict { same_agency: true }
    } else {
        InsertOutcome::Duplicate(existing)
    }
}

/// The answer to a reversal request that the stored receipt refuses, or `None`
/// when the reversal is to be recorded.
pub(crate) fn refuse_reversal(stored: StoredReceipt, request: &Reversal) -> Option<ReversalOutcome> {
    // A recorded reversal wins over the lock: a repeat must still get its first answer.
    match &stored.reversal {
        Some(previous) if previous.same_request(request) => {
            return Some(ReversalOutcome::AlreadyReversed(stored));
        }
        Some(_) => return Some(ReversalOutcome::Conflict(stored)),
        None => {}
    }
    match stored.reimbursement_state {
        state @ (ReimbursementState::Lock | ReimbursementState::Closure) => Some(ReversalOutcome::Locked(state)),
        ReimbursementState::Init | ReimbursementState::Cancel => None,
    }
}

/// A creation time that sorts after `newest` (the newest existing sibling) even
/// when the clock stepped back or both fall in one microsecond.
pub(crate) fn after(newest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    match newest {
        Some(newest) if newest >= now => newest + chrono::Duration::microseconds(1),
        _ => now,
    }
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
