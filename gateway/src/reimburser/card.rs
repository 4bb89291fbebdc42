//! The hook for mirroring a receipt's reimbursement state into the payer's WeChat
//! card package (卡包, DOMAIN.md §7: `/card/invoice/platform/updatestatus` with
//! `reimburse_status` LOCK, CLOSURE, or back to INIT).
//!
//! Every applied change of a receipt's reimbursement state passes through
//! [`mirror_to_card`]: reimbursers' lock, close, unlock and reject (single and
//! batch, not replays) and lock expiry. The card package work (#12, branch
//! `officialaccount-card`) replaces its body, e.g. by queueing a delivery of a
//! card-status kind for receipts that are in a card package; until then it only
//! logs. CANCEL (reversal) is queued by the issuer's reversal itself.

use piaojia_store::{ReceiptReimbursement, Store};

/// Called after each applied reimbursement change, outside its transaction.
pub async fn mirror_to_card(_store: &dyn Store, receipt: &ReceiptReimbursement) {
    tracing::debug!(
        receipt = %receipt.receipt_id,
        state = receipt.state.as_str(),
        holder = receipt.holder.as_deref().unwrap_or(""),
        "reimbursement state changed (card package mirroring hook)"
    );
}
