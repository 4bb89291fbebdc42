//! Scan to view: what the message server calls when a payer scans a parametric QR
//! code of ours (`subscribe` with `qrscene_<scene>` as a new follower, `SCAN` as
//! a follower).
//!
//! TODO(officialaccount-pages): deliver the receipt behind `scene` (the issuer's
//! kiosk or window QR, `qrcode/create`) to `open_id` and collect it into that
//! payer's wallet; an unknown, forged or expired scene must change nothing. The
//! message server already verified the push, scoped it to `wechat_app_id`,
//! de-duplicated WeChat's retries and acknowledged it; this runs after the
//! acknowledgement, so it may take its time. Replace this body (keep the signature,
//! or change both call sites in `message_server.rs`).

use crate::state::AppState;

/// Delivers the receipt a scanned scene stands for. A no-op until the pages land.
pub async fn deliver_scanned_receipt(
    _state: &AppState,
    wechat_app_id: &str,
    _open_id: &str,
    _scene: &str,
) -> anyhow::Result<()> {
    tracing::debug!(wechat_app_id, "parametric QR scanned (scan-to-view is not wired yet)");
    Ok(())
}
