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
    /// Item names, for the payers' free-text search.
    pub search_text: String,
    /// Subscribe channels through which a registered payer this receipt is
    /// collected for may be told of it, in order of preference.
    pub wallet_channels: Vec<crate::wallet::WalletChannel>,
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
    /// The outside interface it calls, e.g. `wechat:wx123:template_send` or
    /// `webhook:his.hospital.example`: the unit of circuit breaking and tracking.
    pub interface: String,
    /// Channel-specific extra content (e.g. the outcome a status webhook reports).
    pub payload: Option<serde_json::Value>,
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
    pub agency_id: Uuid,
    pub event: DeliveryEvent,
    pub channel: String,
    pub target: String,
    pub interface: String,
    pub payload: Option<serde_json::Value>,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// Why it is parked (`exhausted`, `outage`, `quota`), when parked.
    pub park_reason: Option<String>,
    /// The outside system's id for what was sent (e.g. a template message's msgid).
    pub provider_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
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
    pub issued_at: DateTime<Utc>,
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
    pub lease_until: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    /// Failed in a way a later attempt may fix (timeouts, 5xx, WeChat busy).
    Retryable,
    /// Failed in a way retrying cannot fix (43101, 40003, 47003, a webhook's 4xx).
    Permanent,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Retryable => "retryable",
            AttemptOutcome::Permanent => "permanent",
        }
    }
}

/// One try at a delivery, kept for audit and operators.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i64,
    pub outcome: AttemptOutcome,
    /// WeChat's errcode or the HTTP status, when there was one.
    pub code: Option<i64>,
    pub detail: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone)]
pub enum DeliveryUpdate {
    Delivered {
        provider_ref: Option<String>,
    },
    /// Try again at `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// A business outcome: ended, not retried.
    Failed {
        error: String,
    },
    /// Waits for an operator (or, for `outage`, for the interface to recover).
    Parked {
        reason: String,
        error: String,
    },
}

/// One finished attempt of a leased delivery, for [`crate::Store::complete_attempts`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub delivery_id: Uuid,
    pub attempt: AttemptRecord,
    pub update: DeliveryUpdate,
    pub follow_ups: Vec<NewDelivery>,
}

/// Which deliveries an operator means.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeliveryFilter {
    pub ids: Option<Vec<Uuid>>,
    pub status: Option<DeliveryStatus>,
    pub channel: Option<String>,
    pub interface: Option<String>,
    pub agency_id: Option<Uuid>,
    pub park_reason: Option<String>,
}

/// Pending work per channel and interface.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRow {
    pub channel: String,
    pub interface: String,
    pub pending: i64,
    pub oldest_created_at: Option<DateTime<Utc>>,
}

/// One writer's counts for one minute and one tracked key. Each process owns its
/// rows (`writer`), so flushing replaces instead of merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRow {
    /// Start of the minute (UTC, seconds = 0).
    pub minute: DateTime<Utc>,
    /// `channel`, `interface` or `inbound`.
    pub scope: String,
    pub key: String,
    pub writer: String,
    pub attempts: i64,
    pub successes: i64,
    /// Counts per latency bucket (bounds fixed by the notifier's tracker).
    pub latency_buckets: Vec<i64>,
}

/// A WeChat channel of an agency: which app, template and field mapping to use.
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// `None`: the platform's own channel (the shared wallet mini-program).
    pub agency_id: Option<Uuid>,
    /// `wechat_template` (official account), `wechat_subscribe` (the agency's
    /// mini-program) or `wallet_subscribe` (the platform wallet).
    pub kind: String,
    pub wechat_app_id: String,
    /// The app's secret, sealed.
    pub secret_sealed: String,
    pub template_id: String,
    /// Template keyword → value template, e.g. `{"thing1": "{agencyName}", "amount2": "{amount}元"}`.
    pub fields: serde_json::Value,
    /// Mini-program page or web page opened from the message.
    pub page: Option<String>,
    /// Message-server token and EncodingAESKey (sealed), for this app's events.
    pub message_token_sealed: Option<String>,
    pub encoding_aes_key_sealed: Option<String>,
    pub enabled: bool,
    /// A long-term subscribe template: no consent is used up per message.
    pub long_term: bool,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: Uuid,
    pub agency_id: Option<Uuid>,
    pub kind: String,
    pub wechat_app_id: String,
    pub secret_sealed: String,
    pub template_id: String,
    pub fields: serde_json::Value,
    pub page: Option<String>,
    pub message_token_sealed: Option<String>,
    pub encoding_aes_key_sealed: Option<String>,
    pub enabled: bool,
    pub long_term: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An operator alert: one row per incident.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: Uuid,
    pub rule: String,
    /// What it is about (a channel or interface key).
    pub key: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub message: String,
    pub started_at: DateTime<Utc>,
    pub last_notified_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
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
