//! What both backends share: row shapes (one `FromRow` struct decodes on either
//! database because every field type is supported by both), conversion to records,
//! the duplicate/conflict and reversal decisions, and error mapping. Each backend
//! keeps only its SQL and its transaction/locking strategy.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{
    Agency, App, AppKind, AppSecret, Delivery, DeliveryEvent, DeliveryStatus, FileMeta, InsertOutcome,
    NewReceiptRecord, ReimbursementState, Reversal, ReversalOutcome, StoreError, StoredReceipt,
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
        "id, receipt_id, event, channel, target, status, attempts, next_attempt_at, \
         last_error, created_at, updated_at"
    };
}
pub(crate) use delivery_columns;

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
            deliveries: deliveries
                .into_iter()
                .map(DeliveryRow::into_delivery)
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: Uuid,
    receipt_id: Uuid,
    event: String,
    channel: String,
    target: String,
    status: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl DeliveryRow {
    fn into_delivery(self) -> Result<Delivery, StoreError> {
        let event = DeliveryEvent::parse(&self.event)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {}: event {:?}", self.id, self.event)))?;
        let status = DeliveryStatus::parse(&self.status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {}: status {:?}", self.id, self.status)))?;
        Ok(Delivery {
            id: self.id,
            receipt_id: self.receipt_id,
            event,
            channel: self.channel,
            target: self.target,
            status,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
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
