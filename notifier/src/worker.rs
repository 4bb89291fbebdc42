//! One delivery's attempt, in phases: prepare (its channel's adapter and the
//! interface's breaker), send (the lease renewed meanwhile), observe (breaker,
//! figures, metrics), decide ([`crate::decision::decide`]), complete (the attempt,
//! the decision and what follows, in one fenced write), and the aftermath
//! (alerts, recovery, wake-ups). It runs in a span with the delivery's id,
//! channel and interface, so every log line of the WeChat client is tied to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use piaojia_store::{
    AttemptOutcome, AttemptRecord, Channel, ClaimedDelivery, Completion, DeliveryFilter, DeliveryStatus, NewDelivery,
    ParkReason, Timestamp,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::breaker::{Permit, Transition};
use crate::channels::{ChannelAdapter, SendResult};
use crate::decision::{self, Decision, Situation};
use crate::tracker::Scope;
use crate::{Notifier, alerts, routing, schedule};

/// What the send phase came to.
struct Sent {
    result: SendResult,
    started_at: Timestamp,
    latency: Duration,
}

impl Notifier {
    /// Attempts one claimed delivery.
    pub(crate) async fn process(&self, job: ClaimedDelivery) {
        let d = &job.delivery;
        let span = tracing::info_span!(
            "delivery",
            delivery_id = %d.id,
            channel = %d.channel,
            interface = %d.interface,
            attempt = d.attempts + 1,
        );
        self.attempt(&job).instrument(span).await;
    }

    async fn attempt(&self, job: &ClaimedDelivery) {
        let Some(adapter) = self.prepare(job).await else {
            return;
        };
        let sent = self.send(job, adapter.as_ref()).await;
        let transition = self.observe(job, adapter.as_ref(), &sent).await;
        let channels = self.fallback_candidates(job, &sent.result).await;
        let decision = self.decide(job, &sent.result, &channels);
        let follow_ups = match decision.final_status() {
            Some(status) => self.follow_ups(job, &decision, status, &channels).await,
            None => Vec::new(),
        };
        let has_follow_ups = !follow_ups.is_empty();
        self.complete(job, &sent, &decision, follow_ups).await;
        self.aftermath(job, &decision, transition, has_follow_ups).await;
    }

    /// The channel's adapter, unless the interface's breaker holds the delivery
    /// back (it is then deferred without spending an attempt).
    async fn prepare(&self, job: &ClaimedDelivery) -> Option<Arc<dyn ChannelAdapter>> {
        let inner = &self.inner;
        let d = &job.delivery;
        let Some(adapter) = inner.adapters.get(&d.channel).cloned() else {
            tracing::error!("no adapter for the channel");
            let error = format!("no adapter for channel {}", d.channel);
            let decision = Decision::GiveUp { error: error.clone() };
            let sent = Sent {
                result: SendResult::Permanent { code: None, error },
                started_at: Timestamp::now(),
                latency: Duration::ZERO,
            };
            self.complete(job, &sent, &decision, Vec::new()).await;
            return None;
        };
        if let Permit::Wait(until) = inner.breakers.permit(&d.interface) {
            // Wait for the interface instead of burning a retry; spread the waiting
            // deliveries so recovery is not a burst.
            let wait = until.saturating_duration_since(Instant::now()) + schedule::jitter(Duration::from_secs(2), 100);
            let at = Timestamp::now() + TimeDelta::from_std(wait).unwrap_or(TimeDelta::seconds(1));
            if let Err(e) = inner.store.defer_delivery(d.id, &inner.owner, at).await {
                tracing::error!(error = %e, "deferring failed");
            }
            return None;
        }
        Some(adapter)
    }

    async fn send(&self, job: &ClaimedDelivery, adapter: &dyn ChannelAdapter) -> Sent {
        let renewal = self.spawn_renewal(job.delivery.id);
        let started_at = Timestamp::now();
        let clock = Instant::now();
        // A second past the client's own timeout: the adapter's answer wins a tie.
        let timeout = self.inner.config.notifier.request_timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout(timeout, adapter.send(job)).await {
            Ok(r) => r,
            Err(_) => SendResult::Retryable {
                code: None,
                error: "the send timed out".into(),
                retry_after: None,
                interface_failure: true,
            },
        };
        renewal.cancel();
        Sent {
            result,
            started_at,
            latency: clock.elapsed(),
        }
    }

    /// Feeds the breaker, the figures and the metrics; the breaker's transition.
    async fn observe(&self, job: &ClaimedDelivery, adapter: &dyn ChannelAdapter, sent: &Sent) -> Transition {
        let inner = &self.inner;
        let d = &job.delivery;
        let result = &sent.result;
        let latency_ms = sent.latency.as_millis() as u64;
        let transition = inner.breakers.record(&d.interface, result.interface_failure());
        let success = matches!(result, SendResult::Delivered { .. });
        let channel_key = adapter.channel_key(job).await;
        inner.tracker.record(Scope::Channel, &channel_key, success, latency_ms);
        inner
            .tracker
            .record(Scope::Interface, &d.interface, !result.interface_failure(), latency_ms);
        let label = match result {
            SendResult::Delivered { .. } => "delivered",
            SendResult::Permanent { .. } => "permanent",
            SendResult::Retryable { .. } => "retryable",
            SendResult::QuotaExhausted { .. } => "quota",
        };
        let channel = d.channel.as_str();
        metrics::counter!("piaojia_delivery_attempts_total", "channel" => channel, "outcome" => label).increment(1);
        metrics::histogram!("piaojia_delivery_attempt_duration_seconds", "channel" => channel)
            .record(sent.latency.as_secs_f64());
        let call = if result.interface_failure() { "failure" } else { "ok" };
        metrics::counter!("piaojia_external_calls_total", "interface" => d.interface.clone(), "outcome" => call)
            .increment(1);
        if success {
            let e2e = (Timestamp::now() - d.created_at).to_std().unwrap_or_default();
            metrics::histogram!("piaojia_delivery_end_to_end_seconds", "channel" => channel).record(e2e.as_secs_f64());
        }
        transition
    }

    /// The agency's channels, when a fallback could follow (only a failure that
    /// retrying cannot fix falls back).
    async fn fallback_candidates(&self, job: &ClaimedDelivery, result: &SendResult) -> Vec<Channel> {
        match result {
            SendResult::Permanent { .. } if job.delivery.channel.is_wechat() => self
                .inner
                .store
                .channels_for_agency(job.receipt.agency_id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "loading the agency's channels failed; no fallback");
                    Vec::new()
                }),
            _ => Vec::new(),
        }
    }

    fn decide(&self, job: &ClaimedDelivery, result: &SendResult, channels: &[Channel]) -> Decision {
        let attempts = job.delivery.attempts as u32 + 1;
        decision::decide(
            result,
            Situation {
                attempts,
                scheduled_wait: self.inner.schedule.next_wait(attempts),
                fallback: routing::fallback(&job.delivery, channels).map(|c| c.kind),
                now: Timestamp::now(),
            },
        )
    }

    /// The fallback delivery and the issuer's status webhook a final decision calls for.
    async fn follow_ups(
        &self,
        job: &ClaimedDelivery,
        decision: &Decision,
        status: DeliveryStatus,
        channels: &[Channel],
    ) -> Vec<NewDelivery> {
        let callback = self.callback_url(&job.receipt.issuer_app_id).await;
        let fallback = match decision {
            Decision::FallBack { to, .. } => channels.iter().find(|c| c.kind == *to && c.enabled),
            _ => None,
        };
        let mut next = routing::follow_ups(&job.delivery, status, decision.error(), callback.as_deref(), fallback);
        if let Decision::Delivered { provider_ref } = decision {
            next.extend(routing::card_follow_up(&job.delivery, provider_ref.as_deref()));
        }
        next
    }

    /// Records the attempt and the decision (fenced by the lease).
    async fn complete(&self, job: &ClaimedDelivery, sent: &Sent, decision: &Decision, follow_ups: Vec<NewDelivery>) {
        let d = &job.delivery;
        let completion = Completion {
            delivery_id: d.id,
            attempt: AttemptRecord {
                id: Uuid::now_v7(),
                started_at: sent.started_at,
                latency_ms: sent.latency.as_millis() as i64,
                outcome: decision::outcome(&sent.result),
                code: sent.result.code(),
                detail: decision.error().map(str::to_owned),
            },
            update: decision.update(),
            follow_ups,
        };
        debug_assert!(
            completion.attempt.outcome != AttemptOutcome::Success || decision.error().is_none(),
            "a success carries no error"
        );
        match self.inner.completions.complete(completion).await {
            Ok(true) => {
                if let Decision::Park { reason, .. } = decision {
                    tracing::warn!(reason = %reason, "delivery parked");
                }
            }
            Ok(false) => tracing::warn!("lease lost before the attempt was recorded"),
            Err(e) => tracing::error!(error = %e, "recording the attempt failed"),
        }
    }

    async fn aftermath(&self, job: &ClaimedDelivery, decision: &Decision, transition: Transition, woke: bool) {
        let interface = &job.delivery.interface;
        if let Decision::Park {
            reason: ParkReason::Quota,
            error,
        } = decision
        {
            self.alert(
                alerts::QUOTA_EXHAUSTED,
                interface,
                format!("接口当日调用额度已用尽（45009）：{error}"),
            )
            .await;
        }
        match transition {
            Transition::Opened => {
                metrics::counter!("piaojia_breaker_opened_total", "interface" => interface.clone()).increment(1);
                self.alert(
                    alerts::BREAKER_OPEN,
                    interface,
                    "外部接口连续失败，熔断器已打开，消息暂缓投递".into(),
                )
                .await;
            }
            Transition::Recovered => self.recovered(interface).await,
            Transition::None => {}
        }
        if woke {
            // Follow-ups are due now. Only then: every wake-up makes every notifier
            // process claim, and in scale-out it is a Redis message.
            self.inner.wake.notify().await;
        }
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
            park_reason: Some(ParkReason::Outage),
            ..DeliveryFilter::default()
        };
        let spacing = TimeDelta::from_std(inner.config.notifier.release_spacing).unwrap_or(TimeDelta::zero());
        match inner.store.redrive(&filter, Timestamp::now(), spacing).await {
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

    /// Keeps the lease while a send is in flight.
    fn spawn_renewal(&self, delivery_id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        let (store, owner) = (self.inner.store.clone(), self.inner.owner.clone());
        let lease = self.inner.config.notifier.lease;
        let every = (lease / 3).max(Duration::from_secs(1));
        let stop = token.clone();
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {
                            let until = Timestamp::now() + TimeDelta::from_std(lease).unwrap_or(TimeDelta::seconds(30));
                            if !matches!(store.renew_lease(delivery_id, &owner, until).await, Ok(true)) {
                                tracing::warn!("lease renewal failed");
                                return;
                            }
                        }
                    }
                }
            }
            .in_current_span(),
        );
        token
    }
}
