//! Scan to view: what the message server calls when a payer scans a parametric QR
//! code of ours (`subscribe` with `qrscene_<scene>` as a new follower, `SCAN` as
//! a follower). The work is the pages' ([`crate::pages::scan`]): the receipt
//! behind the scene is collected into the scanner's wallet and announced; an
//! unknown, forged, expired or taken scene changes nothing.

use crate::state::AppState;

/// Delivers the receipt a scanned scene stands for.
pub async fn deliver_scanned_receipt(
    state: &AppState,
    wechat_app_id: &str,
    open_id: &str,
    scene: &str,
) -> anyhow::Result<()> {
    crate::pages::deliver_scanned_receipt(state, wechat_app_id, open_id, scene)
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("delivering a scanned receipt: {e}"))
}
