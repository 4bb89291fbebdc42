//! Reimbursement reminders (`[reminders]`): every `check_secs` each gateway asks
//! the store to record and queue the due reminders (unclaimed receipts, and those
//! close to a reimburser's `claim_within_days`) (the store's key makes each
//! one once, whichever gateway finds it first), outside the quiet hours read in
//! Beijing time, and wakes the notifier when it queued any.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use piaojia_core::settings::ReminderSettings;
use piaojia_store::reminders::{DeadlineWindow, ReminderRun, ReminderScan};
use piaojia_store::{Store, Timestamp};

/// Reminders written per transaction.
const REMINDERS_PER_TRANSACTION: u64 = 50;

/// One scan now (nothing in the quiet hours).
pub async fn run_once(
    store: &dyn Store,
    wake: &piaojia_notifier::Wake,
    cfg: &ReminderSettings,
) -> piaojia_store::Result<ReminderRun> {
    let now = Utc::now();
    if cfg.is_quiet(now) {
        return Ok(ReminderRun::default());
    }
    let cutoff = |days: u32| -> Timestamp { (now - TimeDelta::days(i64::from(days))).into() };
    // Each reimburser with a deadline: its receipts issued between `days` and
    // `days - before` ago (not yet past it, within `before` of it).
    let mut deadlines = Vec::new();
    if cfg.deadline_before_days > 0 {
        for r in store.list_reimbursers().await? {
            let Some(days) = r.claim_within_days else { continue };
            if r.accepted_agencies.is_empty() {
                continue;
            }
            deadlines.push(DeadlineWindow {
                agencies: r.accepted_agencies,
                issued_after: cutoff(days),
                issued_until: cutoff(days.saturating_sub(cfg.deadline_before_days)),
            });
        }
    }
    let scan = ReminderScan {
        deadlines,
        now: now.into(),
        cutoff: cutoff(cfg.after_days),
        agency_cutoffs: cfg
            .agency_after_days
            .iter()
            .map(|(code, days)| (code.clone(), cutoff(*days)))
            .collect(),
        limit: 0,
    };
    // In short transactions: one of `batch` would hold SQLite's write turn (and
    // every push waiting for it) for as long as it takes to write them all.
    let batch = u64::from(cfg.batch.max(1));
    let mut run = ReminderRun::default();
    while run.recorded < batch {
        let chunk = (batch - run.recorded).min(REMINDERS_PER_TRANSACTION);
        let done = store
            .send_due_reminders(&ReminderScan {
                limit: chunk as i64,
                ..scan.clone()
            })
            .await?;
        run.recorded += done.recorded;
        run.queued += done.queued;
        if done.recorded < chunk {
            break;
        }
    }
    if run.queued > 0 {
        tracing::info!(
            recorded = run.recorded,
            queued = run.queued,
            "reimbursement reminders queued"
        );
        wake.notify().await;
    }
    Ok(run)
}

/// Runs [`run_once`] every `check_secs` until the process ends.
pub fn spawn(
    store: Arc<dyn Store>,
    wake: piaojia_notifier::Wake,
    cfg: ReminderSettings,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = run_once(store.as_ref(), &wake, &cfg).await {
                tracing::warn!(error = %e, "the reminder scan failed");
            }
        }
    })
}
