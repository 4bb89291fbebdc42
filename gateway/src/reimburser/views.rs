//! What reimbursers (and issuers and operators, for the history) read.

use chrono::{DateTime, Utc};
use piaojia_core::money;
use piaojia_store::{ReceiptReimbursement, ReimbursementEvent};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The answer to a verification (查验). Without a claim, no personal data.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationView {
    /// True when piaojia holds a receipt with this code, number and check code
    /// (and, when given, this issue date and amount).
    #[schema(example = true)]
    pub authentic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "12110000400000001A")]
    pub agency_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "示例市第一人民医院")]
    pub agency_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// Yuan, two decimals.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "128.50")]
    pub total_amt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reversed: Option<bool>,
    /// INIT, LOCK, CLOSURE or CANCEL.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "INIT")]
    pub reimbursement_state: Option<&'static str>,
    /// True when the caller holds the lock or closed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by_you: Option<bool>,
    /// True when the caller's registration accepts this agency's receipts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// The caller's claim of this receipt, when the payer sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<Uuid>,
    /// With a claim only: the personal data the payer consented to share with the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!({"name": "张三丰"}))]
    pub personal_data: Option<std::collections::BTreeMap<String, String>>,
}

/// One receipt's reimbursement state as its reimburser sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptStateView {
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    /// INIT, LOCK, CLOSURE or CANCEL.
    #[schema(example = "LOCK")]
    pub reimbursement_state: &'static str,
    pub held_by_you: bool,
    pub locked_at: Option<DateTime<Utc>>,
    /// What was paid (CLOSURE), yuan with two decimals.
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
    #[schema(example = "128.50")]
    pub total_amt: String,
}

impl ReceiptStateView {
    pub fn build(r: &ReceiptReimbursement, caller: &str) -> Self {
        Self {
            bill_batch_code: r.bill_batch_code.clone(),
            bill_no: r.bill_no.clone(),
            reimbursement_state: r.state.as_str(),
            held_by_you: r.holder.as_deref() == Some(caller),
            locked_at: r.locked_at.map(Into::into),
            paid_amt: r.paid_fen.map(money::format_yuan),
            total_amt: money::format_yuan(r.total_fen),
        }
    }
}

/// The answer to a lock, close, unlock or reject (one receipt or a batch).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeResultView {
    #[schema(example = "c0ffee-0001")]
    pub request_id: String,
    /// True when this request id was answered before and this is that answer.
    pub replayed: bool,
    pub receipts: Vec<ReceiptStateView>,
}

/// One entry of a receipt's reimbursement history (append-only).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntryView {
    pub id: Uuid,
    /// The reimburser's appId, `system` (lock expiry) or `issuer:<appId>` (reversal).
    #[schema(example = "insurer01")]
    pub actor: String,
    /// lock, close, unlock, reject, expire or reverse.
    #[schema(example = "lock")]
    pub action: String,
    #[schema(example = "INIT")]
    pub from_state: &'static str,
    #[schema(example = "LOCK")]
    pub to_state: &'static str,
    pub paid_amt: Option<String>,
    pub reason: Option<String>,
    /// The caller's address as piaojia saw it.
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<ReimbursementEvent> for HistoryEntryView {
    fn from(e: ReimbursementEvent) -> Self {
        Self {
            id: e.id,
            actor: e.actor,
            action: e.action,
            from_state: e.from_state.as_str(),
            to_state: e.to_state.as_str(),
            paid_amt: e.paid_fen.map(money::format_yuan),
            reason: e.reason,
            remote_addr: e.remote_addr,
            request_id: e.request_id,
            at: e.at.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    #[schema(example = "CLOSURE")]
    pub reimbursement_state: &'static str,
    pub entries: Vec<HistoryEntryView>,
}

impl HistoryView {
    pub fn build(r: &ReceiptReimbursement, events: Vec<ReimbursementEvent>) -> Self {
        Self {
            bill_batch_code: r.bill_batch_code.clone(),
            bill_no: r.bill_no.clone(),
            reimbursement_state: r.state.as_str(),
            entries: events.into_iter().map(Into::into).collect(),
        }
    }
}
