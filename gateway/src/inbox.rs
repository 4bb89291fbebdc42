//! The message server's durable inbox. [`crate::message_server`] writes every
//! verified, decrypted event to the store (one insert, de-duplicated by WeChat's
//! key) before it answers WeChat; this worker then handles it. Every gateway may
//! run one (`wechat.inbox_worker`): an event is claimed with a lease
//! (`wechat.inbox_lease_secs`, longer than the handling may take), so two
//! processes never handle it at once, and a crashed process's claims are taken
//! again when their lease expires. A failure waits out `wechat.inbox_retry_schedule`;
//! after the last retry the event is failed for good and reported (the alert
//! `wechat_event_failed`, the per-event figures, a counter). Handled events are
//! kept `wechat.inbox_retention_secs` for de-duplication, then forgotten.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use piaojia_notifier::schedule::RetrySchedule;
use piaojia_store::{Alert, AlertState, InboxEvent, InboxOutcome, NewInboxEvent, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::state::AppState;

/// The alert rule an event failed for good raises.
pub const EVENT_FAILED_RULE: &str = "wechat_event_failed";

/// Events claimed per round trip.
const BATCH: i64 = 16;

/// How often handled events past their retention are swept.
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// This process's side of the inbox: its claimer name and the bell a received
/// event rings so the local worker takes it at once.
pub struct Inbox {
    owner: String,
    wake: Notify,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            owner: format!("inbox-{}", Uuid::now_v7().simple()),
            wake: Notify::new(),
        }
    }
}

impl Inbox {
    /// Wakes this process's worker (an operator put events back to due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Keeps a verified event; false when it was kept before (WeChat's retry).
    pub async fn record(
        &self,
        state: &AppState,
        appid: &str,
        dedup_key: String,
        event: String,
        plain_xml: &str,
    ) -> piaojia_store::Result<bool> {
        let sealed = state
            .keyring
            .seal(plain_xml.as_bytes(), &piaojia_core::pii::purpose::wechat_inbox(appid));
        let new = state
            .store
            .record_inbox_event(NewInboxEvent {
                wechat_app_id: appid.to_owned(),
                dedup_key,
                event,
                payload_sealed: sealed,
                received_at: Timestamp::now(),
            })
            .await?;
        if new {
            self.wake.notify_one();
        }
        Ok(new)
    }
}

/// `d` from now; a wait too long for a date (a setting gone wrong) is a year.
fn after(d: Duration) -> Timestamp {
    Timestamp::now()
        + TimeDelta::from_std(d)
            .unwrap_or(TimeDelta::days(365))
            .min(TimeDelta::days(365))
}

/// The waits between attempts, with the notifier's jitter so that events failed
/// together (WeChat or the store down) are not all retried in the same instant.
fn schedule(state: &AppState) -> RetrySchedule {
    RetrySchedule::new(
        state.settings.wechat.inbox_retry_schedule.clone(),
        state.settings.notifier.jitter_percent,
    )
}

/// Claims and handles due events until none is left or `stop`; how many were
/// handled. Whatever it claimed it settles before it returns, stopped or not.
async fn drain(state: &Arc<AppState>, stop: &CancellationToken) -> piaojia_store::Result<usize> {
    let w = &state.settings.wechat;
    let mut total = 0;
    loop {
        // Look first, with a read: an idle worker's poll takes no write lock (on
        // SQLite the one writer is shared with pushes and deliveries).
        if stop.is_cancelled() || !state.store.inbox_has_due(Timestamp::now()).await? {
            return Ok(total);
        }
        let claimed = state
            .store
            .claim_inbox_events(&state.inbox.owner, Timestamp::now(), after(w.inbox_lease), BATCH)
            .await?;
        let n = claimed.len();
        // Each event is a task of its own: one slow event does not hold the others
        // up, and one whose handling panics fails alone, not the worker.
        let tasks: Vec<_> = claimed
            .into_iter()
            .map(|e| {
                let (st, again) = (Arc::clone(state), e.clone());
                (tokio::spawn(async move { handle_one(&st, e).await }), again)
            })
            .collect();
        for (task, e) in tasks {
            if let Err(err) = task.await {
                tracing::error!(appid = %e.wechat_app_id, event = %e.event, error = %err, "handling a WeChat event panicked");
                settle(state, &e, Err(anyhow::anyhow!("handling panicked"))).await;
            }
        }
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

async fn handle_one(state: &AppState, e: InboxEvent) {
    let w = &state.settings.wechat;
    let started = Instant::now();
    let max_attempts = schedule(state).max_attempts() as i32;
    // A claim beyond the last is one whose process died handling it, every time:
    // it is not tried again.
    let result = if e.attempts > max_attempts {
        Err(anyhow::anyhow!("claimed {} times without an outcome", e.attempts - 1))
    } else {
        match state.keyring.open(
            &e.payload_sealed,
            &piaojia_core::pii::purpose::wechat_inbox(&e.wechat_app_id),
        ) {
            Err(err) => Err(anyhow::anyhow!("the kept event cannot be opened: {err}")),
            Ok(plain) => {
                let xml = String::from_utf8_lossy(&plain).into_owned();
                match piaojia_wechat::event::parse_event(&xml) {
                    Err(err) => Err(anyhow::anyhow!("the kept event does not parse: {err}")),
                    Ok(ev) => match tokio::time::timeout(
                        w.inbox_handle_timeout,
                        crate::message_server::handle(state, &e.wechat_app_id, ev),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(anyhow::anyhow!("handling timed out")),
                    },
                }
            }
        }
    };
    crate::message_server::track_event(state, &e.wechat_app_id, &e.event, result.is_ok(), started);
    settle(state, &e, result).await;
}

/// Records what handling `e` came to: done, or failed with the next try (none
/// after the last, which is reported).
async fn settle(state: &AppState, e: &InboxEvent, result: anyhow::Result<()>) {
    let outcome = match result {
        Ok(()) => InboxOutcome::Done,
        Err(err) => {
            let retry_at = schedule(state)
                .next_wait(u32::try_from(e.attempts).unwrap_or(u32::MAX))
                .map(after);
            let error = format!("{err:#}");
            tracing::warn!(
                appid = %e.wechat_app_id,
                event = %e.event,
                attempt = e.attempts,
                retried = retry_at.is_some(),
                error = %error,
                "handling a WeChat event failed"
            );
            InboxOutcome::Failed { error, retry_at }
        }
    };
    let final_failure = matches!(outcome, InboxOutcome::Failed { retry_at: None, .. });
    let error = match &outcome {
        InboxOutcome::Failed { error, .. } => error.clone(),
        InboxOutcome::Done => String::new(),
    };
    match state
        .store
        .settle_inbox_event(e.id, &state.inbox.owner, e.attempts, outcome, Timestamp::now())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(appid = %e.wechat_app_id, event = %e.event, "an inbox lease was lost before settling");
            return;
        }
        Err(err) => {
            // The lease runs out and the event is taken again.
            tracing::warn!(error = %err, "settling an inbox event failed");
            return;
        }
    }
    if final_failure {
        report(state, e, &error).await;
    } else if error.is_empty() && e.last_error.is_some() {
        // Done after failing (an operator's re-drive): its alert is over.
        resolve(state, e).await;
    }
}

fn alert_key(e: &InboxEvent) -> String {
    format!("wechat:{}:{}", e.wechat_app_id, e.id)
}

/// Resolves the alert of an event that failed for good before, if one is firing.
async fn resolve(state: &AppState, e: &InboxEvent) {
    match state.store.firing_alert(EVENT_FAILED_RULE, &alert_key(e)).await {
        Ok(Some(mut alert)) => {
            alert.state = AlertState::Resolved;
            alert.resolved_at = Some(Timestamp::now());
            if let Err(err) = state.store.save_alert(&alert).await {
                tracing::warn!(error = %err, "resolving the alert of a re-driven WeChat event failed");
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "reading the alert of a re-driven WeChat event failed"),
    }
}

/// An event failed for good: an alert per event, and a counter.
async fn report(state: &AppState, e: &InboxEvent, error: &str) {
    metrics::counter!("piaojia_wechat_events_failed_total").increment(1);
    tracing::error!(appid = %e.wechat_app_id, event = %e.event, error, "a WeChat event failed for good");
    let now = Timestamp::now();
    let message = format!(
        "the {} event of WeChat app {} failed after {} attempts: {error}",
        e.event, e.wechat_app_id, e.attempts
    );
    let key = alert_key(e);
    // A re-driven event that fails again renews its alert instead of adding one.
    let alert = match state.store.firing_alert(EVENT_FAILED_RULE, &key).await {
        Ok(Some(alert)) => Alert {
            message,
            last_notified_at: now,
            ..alert
        },
        _ => Alert {
            id: Uuid::now_v7(),
            rule: EVENT_FAILED_RULE.to_owned(),
            key,
            state: AlertState::Firing,
            message,
            started_at: now,
            last_notified_at: now,
            resolved_at: None,
        },
    };
    if let Err(err) = state.store.save_alert(&alert).await {
        tracing::warn!(error = %err, "saving the alert of a failed WeChat event failed");
    }
}

/// Runs the worker until `stop`: woken by a received event or every
/// `wechat.inbox_poll_interval_ms`, and sweeping handled events now and then.
/// Once stopped it claims nothing more, and the task ends when the events in hand
/// are settled (see [`crate::startup::Application::run_until_stopped`]).
pub fn spawn(state: Arc<AppState>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = state.settings.wechat.inbox_poll_interval;
        let mut last_prune: Option<Instant> = None;
        loop {
            if let Err(e) = drain(&state, &stop).await {
                tracing::warn!(error = %e, "claiming WeChat events failed");
            }
            if stop.is_cancelled() {
                return;
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                let retention = TimeDelta::from_std(state.settings.wechat.inbox_retention)
                    .unwrap_or(TimeDelta::days(3650))
                    .min(TimeDelta::days(3650));
                let before = Timestamp::now() - retention;
                match state.store.prune_inbox(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "handled WeChat events past their retention forgotten"),
                    Err(e) => tracing::warn!(error = %e, "pruning the WeChat inbox failed"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = state.inbox.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    })
}
