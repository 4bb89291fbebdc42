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
pub mod decision;
pub mod routing;
pub mod schedule;
pub mod tracker;
pub mod wake;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use piaojia_core::pii::Keyring;
use piaojia_core::settings::{AlertSettings, NotifierSettings};
use piaojia_store::{ChannelKind, ClaimedDelivery, Handoff, Reserved, Store, Timestamp};
use piaojia_wechat::client::WechatClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::breaker::{BreakerConfig, Breakers};
use crate::channels::ChannelAdapter;
use crate::channels::webhook::WebhookChannel;
use crate::channels::wechat::WechatChannel;
use crate::completions::Completions;
use crate::schedule::RetrySchedule;
use crate::tracker::Tracker;
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

/// The settings the notifier reads: its own section, the alert rules, and how long
/// an app may be cached (as the gateway caches it).
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub notifier: NotifierSettings,
    pub alerts: AlertSettings,
    pub app_cache: Duration,
    /// Where payers reach the official account's pages (`server.public_url`, else
    /// the gateway's own address): a template message links the receipt's page there.
    pub pages_base_url: String,
}

pub struct NotifierDeps {
    pub config: NotifierConfig,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub wechat: Arc<WechatClient>,
    pub wake: Wake,
    pub tracker: Arc<Tracker>,
    /// Receipt files and signed links for the card package (the gateway's).
    pub card_support: Option<Arc<dyn crate::channels::card::CardSupport>>,
    /// The process's alerter, when it has one (else the notifier makes its own).
    pub alerter: Option<Arc<alerts::Alerter>>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: NotifierConfig,
    owner: String,
    schedule: RetrySchedule,
    breakers: Breakers,
    tracker: Arc<Tracker>,
    adapters: HashMap<ChannelKind, Arc<dyn ChannelAdapter>>,
    alerter: Arc<alerts::Alerter>,
    wake: Wake,
    permits: Arc<Semaphore>,
    completions: Completions,
    /// Issuers' callback URLs for `security.app_cache_secs` (as the gateway caches
    /// apps): every finished delivery needs one, and loading an app is a query.
    callbacks: Option<moka::future::Cache<String, Option<String>>>,
    /// The (channel, interface) pairs the backlog gauges were last set for: a
    /// drained pair has no backlog row and is set to zero, not left at its last value.
    backlog_reported: Mutex<HashSet<(ChannelKind, String)>>,
}

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

/// The notifier's free workers, as the intake sees them ([`Handoff`]).
struct Workers {
    /// Weak: the store holds this, and the notifier holds the store.
    notifier: Weak<Inner>,
    /// Where the notifier runs. An intake may commit on an HTTP worker's runtime,
    /// which stops with the server: a send started there would die with it, and
    /// so would the connections it left in the WeChat client's pool.
    runtime: tokio::runtime::Handle,
}

impl Handoff for Workers {
    fn reserve(&self, wanted: usize) -> Option<Reserved> {
        let inner = self.notifier.upgrade()?;
        // Free workers only: a claim waiting for workers gets those that come free
        // first (the semaphore serves waiters before `try_acquire`).
        let free = inner.permits.available_permits().min(wanted);
        if free == 0 {
            return None;
        }
        let workers = inner
            .permits
            .clone()
            .try_acquire_many_owned(u32::try_from(free).ok()?)
            .ok()?;
        let lease = TimeDelta::from_std(inner.config.notifier.lease).unwrap_or(TimeDelta::seconds(30));
        let notifier = Notifier { inner };
        let runtime = self.runtime.clone();
        Some(Reserved::new(
            notifier.inner.owner.clone(),
            Timestamp::now() + lease,
            free,
            move |jobs| notifier.start_handed(jobs, workers, &runtime),
        ))
    }
}

impl Notifier {
    /// Needs a Tokio runtime: it starts the writer that records finished attempts.
    pub fn new(deps: NotifierDeps) -> anyhow::Result<Self> {
        let n = &deps.config.notifier;
        let timeout = n.request_timeout;
        let alerter = deps
            .alerter
            .clone()
            .unwrap_or_else(|| Arc::new(alerts::Alerter::new(deps.store.clone(), deps.config.alerts.clone())));
        let mut adapters: HashMap<ChannelKind, Arc<dyn ChannelAdapter>> = HashMap::new();
        let webhook: Arc<dyn ChannelAdapter> =
            Arc::new(WebhookChannel::new(deps.store.clone(), deps.keyring.clone(), timeout)?);
        adapters.insert(ChannelKind::IssuerWebhook, webhook.clone());
        adapters.insert(ChannelKind::ReimburserClaim, webhook);
        let wechat: Arc<dyn ChannelAdapter> = Arc::new(WechatChannel::new(
            deps.store.clone(),
            deps.keyring.clone(),
            deps.wechat.clone(),
            deps.config.pages_base_url.clone(),
            deps.card_support.clone(),
        ));
        for kind in ChannelKind::ALL.iter().filter(|k| k.is_wechat()) {
            adapters.insert(*kind, wechat.clone());
        }
        let card: Arc<dyn ChannelAdapter> = Arc::new(crate::channels::card::CardChannel::new(
            deps.store.clone(),
            deps.keyring.clone(),
            deps.wechat.clone(),
            deps.card_support.clone(),
            alerter.clone(),
        ));
        for kind in ChannelKind::ALL.iter().filter(|k| k.is_card()) {
            adapters.insert(*kind, card.clone());
        }
        let callbacks = (!deps.config.app_cache.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(deps.config.app_cache)
                .build()
        });
        let owner = format!("notifier-{}", Uuid::now_v7().simple());
        Ok(Self {
            inner: Arc::new(Inner {
                completions: Completions::start(deps.store.clone(), owner.clone()),
                owner,
                schedule: RetrySchedule::new(n.retry_schedule.clone(), n.jitter_percent),
                breakers: Breakers::new(BreakerConfig {
                    failures: n.breaker_failures,
                    failure_rate: n.breaker_failure_rate,
                    window: n.breaker_window,
                    open_for: n.breaker_open,
                    max_open_for: n.breaker_max_open,
                }),
                alerter,
                permits: Arc::new(Semaphore::new(n.concurrency)),
                callbacks,
                backlog_reported: Mutex::default(),
                tracker: deps.tracker,
                adapters,
                wake: deps.wake,
                store: deps.store,
                config: deps.config,
            }),
        })
    }

    /// Runs the workers and their housekeeping until `shutdown`; in-flight sends
    /// finish (their leases would otherwise hand them to another worker later).
    pub async fn run(&self, shutdown: CancellationToken) {
        self.inner.wake.spawn_listener(shutdown.clone());
        if self.inner.config.notifier.handoff {
            self.inner.store.hand_off_to(Some(Arc::new(Workers {
                notifier: Arc::downgrade(&self.inner),
                runtime: tokio::runtime::Handle::current(),
            })));
        }
        let housekeeping = tokio::spawn(self.clone().housekeeping(shutdown.clone()));
        let poll = self.inner.config.notifier.poll_interval;
        let n = &self.inner.config.notifier;
        let base = (n.batch_size as usize).clamp(1, n.concurrency.max(1));
        let mut ask = base;
        tracing::info!(owner = %self.inner.owner, "notifier started");
        while !shutdown.is_cancelled() {
            let last_claim = Instant::now();
            match self.claim(ask).await {
                // A full batch: more is probably due, and the next claim asks for
                // twice as many. Each claim waits its turn among the writes (on
                // SQLite, in line with the pushes' group commits of up to 64
                // receipts): a fixed small claim falls behind the pushes it follows.
                Ok(Claimed { claimed, asked }) if asked > 0 && claimed == asked => {
                    ask = (ask * 2).min(n.concurrency.max(1));
                    continue;
                }
                Ok(Claimed { claimed, .. }) => {
                    if claimed < ask / 2 {
                        ask = (ask / 2).max(base);
                    }
                }
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
        // No more deliveries from the intake; then wait for in-flight sends.
        if self.inner.config.notifier.handoff {
            self.inner.store.hand_off_to(None);
        }
        let total = self.inner.config.notifier.concurrency as u32;
        let _ = self.inner.permits.acquire_many(total).await;
        housekeeping.abort();
        let _ = self.inner.tracker.flush(self.inner.store.as_ref()).await;
        tracing::info!(owner = %self.inner.owner, "notifier stopped");
    }

    /// Claims one batch for free workers and starts sending it. A busy notifier
    /// waits a moment for a whole batch of workers to come free, so that under load
    /// it claims in batches rather than once per worker that finishes.
    async fn claim(&self, batch: usize) -> piaojia_store::Result<Claimed> {
        let inner = &self.inner;
        let n = &inner.config.notifier;
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
        let now = Timestamp::now();
        let lease = TimeDelta::from_std(n.lease).unwrap_or(TimeDelta::seconds(30));
        let jobs = inner
            .store
            .claim_deliveries(&inner.owner, now, now + lease, asked as i64)
            .instrument(tracing::debug_span!("claim", asked))
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

    /// Starts the deliveries an intake leased to this notifier's reserved workers.
    fn start_handed(
        &self,
        jobs: Vec<ClaimedDelivery>,
        mut workers: OwnedSemaphorePermit,
        runtime: &tokio::runtime::Handle,
    ) {
        metrics::counter!("piaojia_delivery_handoffs_total").increment(jobs.len() as u64);
        for job in jobs {
            let Some(worker) = workers.split(1) else { break };
            let this = self.clone();
            runtime.spawn(async move {
                this.process(job).await;
                drop(worker);
            });
        }
    }

    /// Stats flushing, backlog gauges and alert evaluation.
    async fn housekeeping(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let every = inner.config.alerts.evaluate_every.max(Duration::from_secs(1));
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
            let now = Timestamp::now();
            let mut seen = HashSet::new();
            for row in rows {
                let channel = row.channel.as_str();
                metrics::gauge!("piaojia_delivery_backlog", "channel" => channel, "interface" => row.interface.clone())
                    .set(row.pending as f64);
                let age = row
                    .oldest_created_at
                    .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!("piaojia_delivery_oldest_pending_seconds", "channel" => channel, "interface" => row.interface.clone()).set(age);
                seen.insert((row.channel, row.interface));
            }
            let mut reported = self.inner.backlog_reported.lock().expect("backlog gauges lock");
            for (channel, interface) in reported.difference(&seen) {
                let channel = channel.as_str();
                metrics::gauge!("piaojia_delivery_backlog", "channel" => channel, "interface" => interface.clone())
                    .set(0.0);
                metrics::gauge!("piaojia_delivery_oldest_pending_seconds", "channel" => channel, "interface" => interface.clone()).set(0.0);
            }
            *reported = seen;
        }
        for (iface, open) in self.inner.breakers.interface_states() {
            metrics::gauge!("piaojia_breaker_open", "interface" => iface).set(if open { 1.0 } else { 0.0 });
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
