//! The hook for mirroring a receipt's reimbursement state into the payer's WeChat
//! card package (卡包, DOMAIN.md §7: `/card/invoice/platform/updatestatus` with
//! `reimburse_status` LOCK, CLOSURE, or back to INIT).
//!
//! Every applied change of a receipt's reimbursement state passes through
//! [`mirror_to_card`]: reimbursers' lock, close, unlock and reject (single and
//! batch, not replays) and lock expiry. CANCEL (reversal) is queued by the
//! issuer's reversal itself.

use piaojia_notifier::Wake;
use piaojia_store::{ReceiptReimbursement, Store};

/// Called after each applied reimbursement change, outside its transaction: a
/// receipt that is in a card package gets a `card_status` delivery (LOCK,
/// CLOSURE, or INIT after an unlock or expiry). A failure to queue it is logged
/// and never undoes the change, which is already committed.
pub async fn mirror_to_card(store: &dyn Store, wake: &Wake, receipt: &ReceiptReimbursement) {
    match crate::card_package::mirror_reimbursement(store, wake, receipt.receipt_id, receipt.state).await {
        Ok(mirrored) => tracing::debug!(
            receipt = %receipt.receipt_id,
            state = receipt.state.as_str(),
            mirrored,
            "reimbursement state changed"
        ),
        Err(e) => tracing::error!(
            receipt = %receipt.receipt_id,
            state = receipt.state.as_str(),
            error = %e,
            "the card package could not be told of a reimbursement change"
        ),
    }
}
