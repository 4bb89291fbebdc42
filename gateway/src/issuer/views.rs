//! What issuers read of their receipts.

use chrono::{DateTime, Utc};
use piaojia_core::money;
use piaojia_store::{FileMeta, StoredReceipt};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::state::AppState;
use crate::views::DeliveryView;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    #[schema(example = "pdf")]
    pub format: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub size: i64,
}

impl From<&FileMeta> for FileView {
    fn from(f: &FileMeta) -> Self {
        Self {
            format: f.format.clone(),
            sha256: f.sha256.clone(),
            size: f.size,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReversalView {
    #[schema(example = "11060124")]
    pub red_bill_batch_code: String,
    #[schema(example = "0000000902")]
    pub red_bill_no: String,
    pub reversed_at: DateTime<Utc>,
    pub reason: String,
}

/// What piaojia holds of a receipt. Times are UTC; amounts are yuan strings with
/// two decimals plus the exact integer fen.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptView {
    pub id: Uuid,
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    pub bus_no: String,
    #[schema(example = "02")]
    pub bus_type: String,
    pub issued_at: DateTime<Utc>,
    #[schema(example = "128.50")]
    pub total_amt: String,
    #[schema(example = 12850)]
    pub total_fen: i64,
    /// Masked payer name.
    #[schema(example = "张*丰")]
    pub payer: String,
    #[schema(example = "1")]
    pub payer_type: String,
    /// `issued` or `reversed`.
    #[schema(example = "issued")]
    pub status: String,
    /// `INIT`, `LOCK`, `CLOSURE` or `CANCEL`.
    #[schema(example = "INIT")]
    pub reimbursement_state: String,
    pub reversal: Option<ReversalView>,
    pub file: Option<FileView>,
    /// Keyed hash of the receipt's canonical content: equal pushes have equal hashes.
    pub content_hash: String,
    pub received_at: DateTime<Utc>,
    pub deliveries: Vec<DeliveryView>,
}

impl ReceiptView {
    pub(crate) fn build(state: &AppState, r: &StoredReceipt) -> Self {
        let payer = piaojia_core::receipt::masked_payer_name(&state.keyring, &r.payer_sealed);
        Self {
            id: r.id,
            bill_batch_code: r.bill_batch_code.clone(),
            bill_no: r.bill_no.clone(),
            bus_no: r.bus_no.clone(),
            bus_type: r.bus_type.clone(),
            issued_at: r.issued_at.into(),
            total_amt: money::format_yuan(r.total_fen),
            total_fen: r.total_fen,
            payer,
            payer_type: r.payer_type.as_code().to_owned(),
            status: if r.reversal.is_some() { "reversed" } else { "issued" }.to_owned(),
            reimbursement_state: r.reimbursement_state.as_str().to_owned(),
            reversal: r.reversal.as_ref().map(|v| ReversalView {
                red_bill_batch_code: v.red_bill_batch_code.clone(),
                red_bill_no: v.red_bill_no.clone(),
                reversed_at: v.reversed_at.into(),
                reason: v.reason.clone(),
            }),
            file: r.file.as_ref().map(FileView::from),
            content_hash: r.content_hash.clone(),
            received_at: r.received_at.into(),
            // What the issuer's push called for: not the wallet's own announcements,
            // whose presence would tell which payers have a verified wallet, nor a
            // claim's messages, which would tell with whom the payer claimed.
            deliveries: r
                .deliveries
                .iter()
                .filter(|d| !is_payers_own(d))
                .map(DeliveryView::from)
                .collect(),
        }
    }
}

/// A delivery of the payer's own business, not the issuer's: a subscribe message
/// the wallet owes a payer it collected the receipt for, or a claim's webhook or
/// status message (claim deliveries hang on the claim's first receipt).
fn is_payers_own(d: &piaojia_store::Delivery) -> bool {
    let payload = d.payload.as_ref();
    d.channel == piaojia_store::ChannelKind::ReimburserClaim
        || payload.and_then(|p| p.get("claimId")).is_some()
        || payload
            .and_then(|p| p.get("wallet"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
}
