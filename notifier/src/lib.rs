//! The notifier: drains the outbox the gateway commits with every receipt.
//!
//! Workers lease due deliveries (`claim_deliveries`), renew the lease while a send
//! is in flight, record every attempt, retry on a WeChat-Pay-like schedule, and
//! park what is exhausted for an operator; nothing is dropped. A circuit breaker per
//! outside interface makes deliveries wait during an outage instead of burning
//! their retries, and releases them oldest first when the interface recovers.
//! The same workers run inside `piaojia serve` (embedded) or alone as
//! `piaojia notifier`; any number of processes share the work.

pub mod alerts;
pub mod breaker;
pub mod channels;
mod completions;
pub mod routing;
pub mod schedule;
pub mod tracker;
pub mod wake;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use piaojia_core::pii::Keyring;
use piaojia_core::settings::Settings;
use piaojia_store::{
    AttemptOutcome, AttemptRecord, ClaimedDelivery, Completion, DeliveryFilter, DeliveryStatus, DeliveryUpdate, Store,
};
use piaojia_wechat::client::WechatClient;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::breaker::{BreakerConfig, Breakers, Permit, Transition};
use crate::channels::webhook::WebhookChannel;
use crate::channels::wechat::WechatChannel;
use crate::channels::{ChannelAdapter, SendResult};
use crate::completions::Completions;
use crate::schedule::RetrySchedule;
use crate::tracker::{Scope, Tracker};
pub use crate::wake::Wake;

/// How long a busy notifier waits for a full batch of free workers before it
/// claims for the ones it has.
const BATCH_GATHER: Duration = Duration::from_millis(20);
/// Least time between two claims prompted by wake-ups.
const CLAIM_SPACING: Duration = Duration::from_millis(10);

/// What one claim came to.
#[derive(Debug, Default, Clone, Copy)]
struct Claimed {
    claimed: usize,
    asked: usize,
}

pub struct NotifierDeps {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub wechat: Arc<WechatClient>,
    pub wake: Wake,
    pub tracker: Arc<Tracker>,
}

struct Inner {
    store: Arc<dyn Store>,
    settings: Arc<Settings>,
    owner: String,
    schedule: RetrySchedule,
    breakers: Breakers,
    tracker: Arc<Tracker>,
    adapters: HashMap<&'static str, Arc<dyn ChannelAdapter>>,
    alerter: alerts::Alerter,
    wake: Wake,
    permits: Arc<Semaphore>,
    completions: Completions,
    /// Issuers' callback URLs for `security.app_cache_secs` (as the gateway caches
    /// apps): every finished delivery needs one, and loading an app is a query.
    callbacks: Option<moka::future::Cache<String, Option<String>>>,
}

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// Needs a Tokio runtime: it starts the writer that records finished attempts.
    pub fn new(deps: NotifierDeps) -> anyhow::Result<Self> {
        let n = &deps.settings.notifier;
        let waits = n.retry_waits().map_err(anyhow::Error::msg)?;
        let timeout = Duration::from_secs(n.request_timeout_secs);
        let mut adapters: HashMap<&'static str, Arc<dyn ChannelAdapter>> = HashMap::new();
        adapters.insert(
            routing::ISSUER_WEBHOOK,
            Arc::new(WebhookChannel::new(deps.store.clone(), deps.keyring.clone(), timeout)?),
        );
        let wechat: Arc<dyn ChannelAdapter> = Arc::new(WechatChannel::new(
            deps.store.clone(),
            deps.keyring.clone(),
            deps.wechat.clone(),
        ));
        adapters.insert(routing::WECHAT_TEMPLATE, wechat.clone());
        adapters.insert(routing::WECHAT_SUBSCRIBE, wechat.clone());
        adapters.insert(routing::WALLET_SUBSCRIBE, wechat);
        let callbacks = (deps.settings.security.app_cache_secs > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(deps.settings.security.app_cache_secs))
                .build()
        });
        let owner = format!("notifier-{}", Uuid::now_v7().simple());
        Ok(Self {
            inner: Arc::new(Inner {
                completions: Completions::start(deps.store.clone(), owner.clone()),
                owner,
                schedule: RetrySchedule::new(waits, n.jitter_percent),
                breakers: Breakers::new(BreakerConfig {
                    failures: n.breaker_failures,
                    failure_rate: n.breaker_failure_rate,
                    window: Duration::from_secs(n.breaker_window_secs),
                    open_for: Duration::from_secs(n.breaker_open_secs),
                    max_open_for: Duration::from_secs(n.breaker_max_open_secs),
                }),
                alerter: alerts::Alerter::new(deps.store.clone(), deps.settings.alerts.clone()),
                permits: Arc::new(Semaphore::new(n.concurrency)),
                callbacks,
                tracker: deps.tracker,
                adapters,
                wake: deps.wake,
                store: deps.store,
                settings: deps.settings,
            }),
        })
    }

    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Runs the workers and their housekeeping until `shutdown`; in-flight sends
    /// finish (their leases would otherwise hand them to another worker later).
    pub async fn run(&self, shutdown: CancellationToken) {
        self.inner.wake.spawn_listener(shutdown.clone());
        let housekeeping = tokio::spawn(self.clone().housekeeping(shutdown.clone()));
        let poll = Duration::from_millis(self.inner.settings.notifier.poll_interval_ms);
        tracing::info!(owner = %self.inner.owner, "notifier started");
        while !shutdown.is_cancelled() {
            let last_claim = Instant::now();
            match self.claim().await {
                // A full batch: more is probably due.
                Ok(Claimed { claimed, asked }) if asked > 0 && claimed == asked => continue,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "claiming deliveries failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            // Receipts each send a wake-up; under a stream of them, claim at most once
            // per CLAIM_SPACING so that they are claimed in batches (a lone receipt
            // still goes at once). Every claim is a write transaction.
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until((last_claim + CLAIM_SPACING).into()) => {}
            }
        }
        // Wait for in-flight sends.
        let total = self.inner.settings.notifier.concurrency as u32;
        let _ = self.inner.permits.acquire_many(total).await;
        housekeeping.abort();
        let _ = self.inner.tracker.flush(self.inner.store.as_ref()).await;
        tracing::info!(owner = %self.inner.owner, "notifier stopped");
    }

    /// Claims one batch for free workers and starts sending it. A busy notifier
    /// waits a moment for a whole batch of workers to come free, so that under load
    /// it claims in batches rather than once per worker that finishes.
    async fn claim(&self) -> piaojia_store::Result<Claimed> {
        let inner = &self.inner;
        let n = &inner.settings.notifier;
        let batch = (n.batch_size as usize).clamp(1, n.concurrency.max(1));
        let permits = inner.permits.clone();
        let gathered = tokio::time::timeout(BATCH_GATHER, permits.clone().acquire_many_owned(batch as u32)).await;
        let mut workers = match gathered {
            Ok(Ok(workers)) => workers,
            // Fewer are free: take what there is, waiting for one if need be.
            Err(_) => {
                let free = permits.available_permits().clamp(1, batch);
                match permits.acquire_many_owned(free as u32).await {
                    Ok(workers) => workers,
                    Err(_) => return Ok(Claimed::default()),
                }
            }
            // The semaphore is never closed.
            Ok(Err(_)) => return Ok(Claimed::default()),
        };
        let asked = workers.num_permits();
        let now = Utc::now();
        let lease = TimeDelta::seconds(n.lease_secs as i64);
        let jobs = inner
            .store
            .claim_deliveries(&inner.owner, now, now + lease, asked as i64)
            .await?;
        let claimed = jobs.len();
        for job in jobs {
            // As many workers as rows were asked for; the unused ones go back below.
            let Some(worker) = workers.split(1) else { break };
            let this = self.clone();
            tokio::spawn(async move {
                this.process(job).await;
                drop(worker);
            });
        }
        Ok(Claimed { claimed, asked })
    }

    /// Claims and sends due deliveries until none is due; returns how many were
    /// processed. Tests use it to drain synchronously.
    pub async fn drain_once(&self) -> usize {
        let inner = &self.inner;
        let mut total = 0;
        loop {
            let now = Utc::now();
            let lease = TimeDelta::seconds(inner.settings.notifier.lease_secs as i64);
            let batch = match inner.store.claim_deliveries(&inner.owner, now, now + lease, 64).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "claiming deliveries failed");
                    return total;
                }
            };
            if batch.is_empty() {
                return total;
            }
            total += batch.len();
            futures_util::future::join_all(batch.into_iter().map(|job| self.process(job))).await;
        }
    }

    async fn process(&self, job: ClaimedDelivery) {
        let inner = &self.inner;
        let d = &job.delivery;
        let Some(adapter) = inner.adapters.get(d.channel.as_str()).cloned() else {
            tracing::error!(delivery_id = %d.id, channel = %d.channel, "no adapter for channel");
            let attempt = attempt_record(
                Utc::now(),
                0,
                AttemptOutcome::Permanent,
                None,
                Some("unknown channel".into()),
            );
            let _ = inner
                .store
                .complete_attempt(
                    d.id,
                    &inner.owner,
                    attempt,
                    DeliveryUpdate::Failed {
                        error: "unknown channel".into(),
                    },
                    Vec::new(),
                )
                .await;
            return;
        };
        if let Permit::Wait(until) = inner.breakers.permit(&d.interface) {
            // Wait for the interface instead of burning a retry; spread the
            // waiting deliveries so recovery is not a burst.
            let wait = until.saturating_duration_since(Instant::now()) + schedule::jitter(Duration::from_secs(2), 100);
            let at = Utc::now() + TimeDelta::from_std(wait).unwrap_or(TimeDelta::seconds(1));
            if let Err(e) = inner.store.defer_delivery(d.id, &inner.owner, at).await {
                tracing::error!(error = %e, delivery_id = %d.id, "deferring failed");
            }
            return;
        }

        let renewal = self.spawn_renewal(d.id);
        let started_at = Utc::now();
        let clock = Instant::now();
        let channel_key = adapter.channel_key(&job).await;
        let timeout = Duration::from_secs(inner.settings.notifier.request_timeout_secs + 1);
        let result = match tokio::time::timeout(timeout, adapter.send(&job)).await {
            Ok(r) => r,
            Err(_) => SendResult::Retryable {
                code: None,
                error: "the send timed out".into(),
                retry_after: None,
                interface_failure: true,
            },
        };
        renewal.cancel();
        let latency = clock.elapsed();
        let latency_ms = latency.as_millis() as u64;

        let transition = inner.breakers.record(&d.interface, result.interface_failure());
        let success = matches!(result, SendResult::Delivered { .. });
        inner.tracker.record(Scope::Channel, &channel_key, success, latency_ms);
        inner
            .tracker
            .record(Scope::Interface, &d.interface, !result.interface_failure(), latency_ms);
        let outcome_label = match &result {
            SendResult::Delivered { .. } => "delivered",
            SendResult::Permanent { .. } => "permanent",
            SendResult::Retryable { .. } => "retryable",
            SendResult::QuotaExhausted { .. } => "quota",
        };
        metrics::counter!("piaojia_delivery_attempts_total", "channel" => d.channel.clone(), "outcome" => outcome_label).increment(1);
        metrics::histogram!("piaojia_delivery_attempt_duration_seconds", "channel" => d.channel.clone())
            .record(latency.as_secs_f64());
        metrics::counter!("piaojia_external_calls_total", "interface" => d.interface.clone(), "outcome" => if result.interface_failure() { "failure" } else { "ok" }).increment(1);

        let attempts = d.attempts as u32 + 1;
        let (outcome, update, error) = match &result {
            SendResult::Delivered { provider_ref } => {
                let e2e = (Utc::now() - d.created_at).to_std().unwrap_or_default();
                metrics::histogram!("piaojia_delivery_end_to_end_seconds", "channel" => d.channel.clone())
                    .record(e2e.as_secs_f64());
                (
                    AttemptOutcome::Success,
                    DeliveryUpdate::Delivered {
                        provider_ref: provider_ref.clone(),
                    },
                    None,
                )
            }
            SendResult::Permanent { error, .. } => (
                AttemptOutcome::Permanent,
                DeliveryUpdate::Failed { error: error.clone() },
                Some(error.clone()),
            ),
            SendResult::QuotaExhausted { error, .. } => {
                self.alert(
                    alerts::QUOTA_EXHAUSTED,
                    &d.interface,
                    format!("接口当日调用额度已用尽（45009）：{error}"),
                )
                .await;
                (
                    AttemptOutcome::Retryable,
                    DeliveryUpdate::Parked {
                        reason: "quota".into(),
                        error: error.clone(),
                    },
                    Some(error.clone()),
                )
            }
            SendResult::Retryable {
                error,
                retry_after,
                interface_failure,
                ..
            } => {
                let update = match inner.schedule.next_wait(attempts) {
                    Some(wait) => {
                        let wait = retry_after.map_or(wait, |r| r.max(wait));
                        DeliveryUpdate::Retry {
                            at: Utc::now() + TimeDelta::from_std(wait).unwrap_or(TimeDelta::seconds(15)),
                            error: error.clone(),
                        }
                    }
                    None => DeliveryUpdate::Parked {
                        // Exhausted while the interface itself was failing: released
                        // again automatically when it recovers.
                        reason: if *interface_failure { "outage" } else { "exhausted" }.into(),
                        error: error.clone(),
                    },
                };
                (AttemptOutcome::Retryable, update, Some(error.clone()))
            }
        };
        let final_status = match &update {
            DeliveryUpdate::Delivered { .. } => Some(DeliveryStatus::Delivered),
            DeliveryUpdate::Failed { .. } => Some(DeliveryStatus::Failed),
            DeliveryUpdate::Parked { .. } => Some(DeliveryStatus::Parked),
            DeliveryUpdate::Retry { .. } => None,
        };
        let follow_ups = match final_status {
            Some(status) => self.follow_ups(&job, status, error.as_deref()).await,
            None => Vec::new(),
        };
        let has_follow_ups = !follow_ups.is_empty();
        let attempt = attempt_record(started_at, latency_ms as i64, outcome, result.code(), error);
        let completion = Completion {
            delivery_id: d.id,
            attempt,
            update,
            follow_ups,
        };
        match inner.completions.complete(completion).await {
            Ok(true) => {
                if let Some(DeliveryStatus::Parked) = final_status {
                    tracing::warn!(delivery_id = %d.id, channel = %d.channel, attempts, "delivery parked");
                }
            }
            Ok(false) => tracing::warn!(delivery_id = %d.id, "lease lost before the attempt was recorded"),
            Err(e) => tracing::error!(delivery_id = %d.id, error = %e, "recording the attempt failed"),
        }
        match transition {
            Transition::Opened => {
                metrics::counter!("piaojia_breaker_opened_total", "interface" => d.interface.clone()).increment(1);
                self.alert(
                    alerts::BREAKER_OPEN,
                    &d.interface,
                    "外部接口连续失败，熔断器已打开，消息暂缓投递".into(),
                )
                .await;
            }
            Transition::Recovered => self.recovered(&d.interface).await,
            Transition::None => {}
        }
        if has_follow_ups {
            // Follow-ups are due now. Only then: every wake-up makes every notifier
            // process claim, and in scale-out it is a Redis message.
            inner.wake.notify().await;
        }
    }

    async fn follow_ups(
        &self,
        job: &ClaimedDelivery,
        status: DeliveryStatus,
        error: Option<&str>,
    ) -> Vec<piaojia_store::NewDelivery> {
        let store = &self.inner.store;
        let callback = self.callback_url(&job.receipt.issuer_app_id).await;
        // Only a failure falls back to another payer channel.
        let channels = if status == DeliveryStatus::Failed {
            store
                .channels_for_agency(job.receipt.agency_id)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        routing::follow_ups(
            job.delivery.event,
            &job.delivery,
            status,
            error,
            callback.as_deref(),
            &channels,
        )
    }

    async fn callback_url(&self, app_id: &str) -> Option<String> {
        let store = self.inner.store.clone();
        let id = app_id.to_owned();
        let load = async move { store.app(&id).await.map(|app| app.and_then(|a| a.callback_url)) };
        let loaded = match &self.inner.callbacks {
            Some(cache) => cache
                .try_get_with(app_id.to_owned(), load)
                .await
                .map_err(|e| e.to_string()),
            None => load.await.map_err(|e| e.to_string()),
        };
        loaded.unwrap_or_else(|e| {
            tracing::warn!(app_id, error = %e, "loading the issuer's callback URL failed");
            None
        })
    }

    /// The interface answers again: release what waited for it, oldest first,
    /// spaced out.
    async fn recovered(&self, interface: &str) {
        let inner = &self.inner;
        let filter = DeliveryFilter {
            interface: Some(interface.to_owned()),
            status: Some(DeliveryStatus::Parked),
            park_reason: Some("outage".to_owned()),
            ..DeliveryFilter::default()
        };
        let spacing = TimeDelta::milliseconds(inner.settings.notifier.release_spacing_ms as i64);
        match inner.store.redrive(&filter, Utc::now(), spacing).await {
            Ok(n) => tracing::info!(interface, released = n, "interface recovered"),
            Err(e) => tracing::error!(interface, error = %e, "releasing parked deliveries failed"),
        }
        if let Err(e) = inner.alerter.resolve(alerts::BREAKER_OPEN, interface).await {
            tracing::error!(error = %e, "resolving the breaker alert failed");
        }
        inner.wake.notify().await;
    }

    async fn alert(&self, rule: &str, key: &str, message: String) {
        if let Err(e) = self.inner.alerter.fire(rule, key, message).await {
            tracing::error!(rule, key, error = %e, "raising an alert failed");
        }
    }

    fn spawn_renewal(&self, delivery_id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        let (store, owner) = (self.inner.store.clone(), self.inner.owner.clone());
        let lease = self.inner.settings.notifier.lease_secs;
        let every = Duration::from_secs((lease / 3).max(1));
        let stop = token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {
                        let until = Utc::now() + TimeDelta::seconds(lease as i64);
                        if !matches!(store.renew_lease(delivery_id, &owner, until).await, Ok(true)) {
                            tracing::warn!(%delivery_id, "lease renewal failed");
                            return;
                        }
                    }
                }
            }
        });
        token
    }

    /// Stats flushing, backlog gauges and alert evaluation.
    async fn housekeeping(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let every = Duration::from_secs(inner.settings.alerts.evaluate_every_secs.max(1));
        let mut flush = tokio::time::interval(Duration::from_secs(5));
        let mut evaluate = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = flush.tick() => {
                    if let Err(e) = inner.tracker.flush(inner.store.as_ref()).await {
                        tracing::warn!(error = %e, "flushing tracking figures failed");
                    }
                    self.backlog_gauges().await;
                }
                _ = evaluate.tick() => {
                    if let Err(e) = inner.alerter.evaluate(&inner.breakers.open_interfaces()).await {
                        tracing::warn!(error = %e, "evaluating alerts failed");
                    }
                }
            }
        }
    }

    async fn backlog_gauges(&self) {
        if let Ok(rows) = self.inner.store.backlog().await {
            let now = Utc::now();
            for row in rows {
                metrics::gauge!("piaojia_delivery_backlog", "channel" => row.channel.clone(), "interface" => row.interface.clone()).set(row.pending as f64);
                let age = row
                    .oldest_created_at
                    .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!("piaojia_delivery_oldest_pending_seconds", "channel" => row.channel, "interface" => row.interface).set(age);
            }
        }
        for iface in self.inner.breakers.open_interfaces() {
            metrics::gauge!("piaojia_breaker_open", "interface" => iface).set(1.0);
        }
    }

    /// Evaluates the alert rules once (tests; the loop does it periodically).
    pub async fn evaluate_alerts(&self) -> piaojia_store::Result<()> {
        self.inner.tracker.flush(self.inner.store.as_ref()).await?;
        self.inner
            .alerter
            .evaluate(&self.inner.breakers.open_interfaces())
            .await
    }
}

fn attempt_record(
    started_at: chrono::DateTime<Utc>,
    latency_ms: i64,
    outcome: AttemptOutcome,
    code: Option<i64>,
    detail: Option<String>,
) -> AttemptRecord {
    AttemptRecord {
        id: Uuid::now_v7(),
        started_at,
        latency_ms,
        outcome,
        code,
        detail,
    }
}
