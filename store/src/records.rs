//! Plain records that cross the storage boundary. Personal data never appears here
//! in plain text: it arrives sealed (encrypted) and as blind indexes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewAgency {
    /// The agency's own code (统一社会信用代码 or the finance bureau's unit code).
    pub code: String,
    pub name: String,
    /// Hosts from which receipt files may be fetched by URL (exact host names).
    pub file_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agency {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub file_hosts: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    Issuer,
    Reimburser,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Issuer => "issuer",
            AppKind::Reimburser => "reimburser",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issuer" => Some(AppKind::Issuer),
            "reimburser" => Some(AppKind::Reimburser),
            _ => None,
        }
    }
}

/// A secret as stored: sealed under the master key (`piaojia_core::pii::Keyring`).
#[derive(Debug, Clone)]
pub struct NewAppSecret {
    pub id: Uuid,
    pub sealed: String,
}

#[derive(Debug, Clone)]
pub struct NewApp {
    pub app_id: String,
    pub agency_id: Uuid,
    pub kind: AppKind,
    pub name: String,
    pub callback_url: Option<String>,
    pub secret: NewAppSecret,
}

#[derive(Debug, Clone)]
pub struct AppSecret {
    pub id: Uuid,
    pub sealed: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub app_id: String,
    pub agency_id: Uuid,
    pub kind: AppKind,
    pub name: String,
    pub enabled: bool,
    pub callback_url: Option<String>,
    /// Active secrets, newest first (one, or two during a rotation).
    pub secrets: Vec<AppSecret>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReimbursementState {
    Init,
    Lock,
    Closure,
    Cancel,
}

impl ReimbursementState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReimbursementState::Init => "INIT",
            ReimbursementState::Lock => "LOCK",
            ReimbursementState::Closure => "CLOSURE",
            ReimbursementState::Cancel => "CANCEL",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "INIT" => Some(Self::Init),
            "LOCK" => Some(Self::Lock),
            "CLOSURE" => Some(Self::Closure),
            "CANCEL" => Some(Self::Cancel),
            _ => None,
        }
    }
}

/// Metadata of a receipt file held in the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// `pdf` or `ofd`.
    pub format: String,
    /// Lower-case hex SHA-256 of the file bytes.
    pub sha256: String,
    pub size: i64,
    /// Key in the object store.
    pub object_key: String,
}

/// A validated receipt ready to store.
#[derive(Debug, Clone)]
pub struct NewReceiptRecord {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub issuer_app_id: String,
    pub bill_batch_code: String,
    pub bill_no: String,
    /// The 6-character check code (校验码).
    pub random: String,
    pub bus_no: String,
    pub bus_type: String,
    pub payer_type: String,
    pub issued_at: DateTime<Utc>,
    pub total_fen: i64,
    /// Lower-case hex SHA-256 of the canonical receipt content (idempotency).
    pub content_hash: String,
    /// Personal data (name, ID number, phone, …) sealed as one JSON document.
    pub payer_sealed: String,
    /// Keyed blind indexes for matching without decrypting.
    pub payer_id_index: Option<String>,
    pub payer_phone_index: Option<String>,
    pub payer_name_index: Option<String>,
    pub open_id: Option<String>,
    /// Everything else of the receipt that is not personal (items, settlement, …).
    pub details: serde_json::Value,
    pub file: Option<FileMeta>,
    pub received_at: DateTime<Utc>,
}

/// The red receipt (红票) that voids an original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    pub red_bill_batch_code: String,
    pub red_bill_no: String,
    pub red_random: String,
    pub reversed_at: DateTime<Utc>,
    pub reason: String,
    pub recorded_at: DateTime<Utc>,
}

impl Reversal {
    /// Two reversal requests are "the same" when they name the same red receipt,
    /// time and reason (the record time is ours, not the issuer's).
    pub fn same_request(&self, other: &Reversal) -> bool {
        self.red_bill_batch_code == other.red_bill_batch_code
            && self.red_bill_no == other.red_bill_no
            && self.red_random == other.red_random
            && self.reversed_at == other.reversed_at
            && self.reason == other.reason
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryEvent {
    Issued,
    Reversed,
}

impl DeliveryEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryEvent::Issued => "issued",
            DeliveryEvent::Reversed => "reversed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issued" => Some(Self::Issued),
            "reversed" => Some(Self::Reversed),
            _ => None,
        }
    }
}

/// A delivery the notifier must make (the outbox row).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub event: DeliveryEvent,
    /// Channel kind, e.g. `issuer_webhook`, `wechat_template`, `wechat_subscribe`.
    pub channel: String,
    /// Where it goes within the channel (a URL, an openid, …).
    pub target: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Ended by an outcome retrying cannot fix (recorded, not an outage).
    Failed,
    /// Retries exhausted: waits for an operator.
    Parked,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Parked => "parked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            "parked" => Some(Self::Parked),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: Uuid,
    pub receipt_id: Uuid,
    pub event: DeliveryEvent,
    pub channel: String,
    pub target: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A receipt as held, with its states and deliveries.
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub issuer_app_id: String,
    pub bill_batch_code: String,
    pub bill_no: String,
    pub random: String,
    pub bus_no: String,
    pub bus_type: String,
    pub payer_type: String,
    pub issued_at: DateTime<Utc>,
    pub total_fen: i64,
    pub content_hash: String,
    pub payer_sealed: String,
    pub payer_id_index: Option<String>,
    pub payer_phone_index: Option<String>,
    pub payer_name_index: Option<String>,
    pub open_id: Option<String>,
    pub details: serde_json::Value,
    pub file: Option<FileMeta>,
    pub received_at: DateTime<Utc>,
    pub reimbursement_state: ReimbursementState,
    pub reversal: Option<Reversal>,
    /// Deliveries, oldest first.
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Created(StoredReceipt),
    /// The same receipt was pushed before: the first result.
    Duplicate(StoredReceipt),
    /// The identity is taken by different content or by another agency.
    Conflict {
        same_agency: bool,
    },
}

#[derive(Debug, Clone)]
pub enum ReversalOutcome {
    Reversed(StoredReceipt),
    /// The same reversal was recorded before: the first result.
    AlreadyReversed(StoredReceipt),
    /// A different reversal was recorded before.
    Conflict(StoredReceipt),
    /// A reimburser has locked or closed the receipt: it cannot be reversed.
    Locked(ReimbursementState),
    NotFound,
}
