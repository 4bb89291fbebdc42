//! Locks held past `reimbursement.lock_ttl_secs` without closing are released
//! (back to INIT, recorded as `expire` by `system`) and reported: an alert per
//! receipt (`reimbursement_lock_expired`) and a warning in the log. Every process
//! may run this; the store releases each lock once (`FOR UPDATE SKIP LOCKED`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use piaojia_store::{Alert, AlertState, ReceiptReimbursement, Store, Timestamp};
use uuid::Uuid;

/// The alert rule a released lock raises.
pub const LOCK_EXPIRED_RULE: &str = "reimbursement_lock_expired";

/// Releases every lock older than `ttl`; the receipts released.
pub async fn release_expired(
    store: &dyn Store,
    wake: &piaojia_notifier::Wake,
    ttl: Duration,
) -> piaojia_store::Result<Vec<ReceiptReimbursement>> {
    let before: Timestamp = (Utc::now() - TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX)).into();
    let mut all = Vec::new();
    loop {
        let released = store.release_expired_locks(before, 500).await?;
        let n = released.len();
        for r in &released {
            let holder = r.holder.as_deref().unwrap_or("?");
            tracing::warn!(
                receipt = %r.receipt_id,
                holder,
                "a reimbursement lock was held past its time and released"
            );
            let now = Timestamp::now();
            store
                .save_alert(&Alert {
                    id: Uuid::now_v7(),
                    rule: LOCK_EXPIRED_RULE.to_owned(),
                    key: format!("receipt:{}/{}", r.bill_batch_code, r.bill_no),
                    state: AlertState::Firing,
                    message: format!(
                        "the lock of {holder} on receipt {}/{} was held longer than {} s without closing and was released",
                        r.bill_batch_code,
                        r.bill_no,
                        ttl.as_secs()
                    ),
                    started_at: now,
                    last_notified_at: now,
                    resolved_at: None,
                })
                .await?;
            metrics::counter!("piaojia_reimbursement_locks_expired_total").increment(1);
            super::card::mirror_to_card(store, wake, r).await;
        }
        all.extend(released);
        if n < 500 {
            return Ok(all);
        }
    }
}

/// Runs [`release_expired`] every `every` until the process ends.
pub fn spawn(
    store: Arc<dyn Store>,
    wake: piaojia_notifier::Wake,
    ttl: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = release_expired(store.as_ref(), &wake, ttl).await {
                tracing::warn!(error = %e, "releasing expired reimbursement locks failed");
            }
        }
    })
}
