//! Operator alerts: rules evaluated over the tracked figures, one alert per
//! incident (a partial unique index keeps it one across processes), re-sent at an
//! interval while it lasts, and a recovery notice when it clears. Sent to a
//! WeCom group-robot compatible webhook.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use piaojia_core::settings::AlertSettings;
use piaojia_store::{Alert, AlertState, Store, StoreError, Timestamp};
use serde_json::json;
use uuid::Uuid;

use crate::tracker::{self, Scope};

pub const SUCCESS_RATE: &str = "success_rate";
pub const LATENCY_P95: &str = "latency_p95";
pub const BACKLOG_AGE: &str = "backlog_age";
pub const BREAKER_OPEN: &str = "breaker_open";
pub const QUOTA_EXHAUSTED: &str = "quota_exhausted";
/// Two agencies hold a receipt with one code and number (raised at intake).
pub const IDENTITY_CLASH: &str = "identity_clash";

pub struct Alerter {
    store: Arc<dyn Store>,
    cfg: AlertSettings,
    http: reqwest::Client,
}

impl Alerter {
    pub fn new(store: Arc<dyn Store>, cfg: AlertSettings) -> Self {
        // Direct: never through a proxy named by the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { store, cfg, http }
    }

    /// Raises the alert unless one is already firing for this rule and key;
    /// re-sends it when the re-notify interval has passed.
    pub async fn fire(&self, rule: &str, key: &str, message: String) -> Result<(), StoreError> {
        let now = Timestamp::now();
        match self.store.firing_alert(rule, key).await? {
            Some(mut alert) => {
                if now - alert.last_notified_at
                    >= TimeDelta::from_std(self.cfg.renotify_every).unwrap_or(TimeDelta::MAX)
                {
                    alert.last_notified_at = now;
                    alert.message = message;
                    self.store.save_alert(&alert).await?;
                    self.notify(&alert, true).await;
                }
            }
            None => {
                let alert = Alert {
                    id: Uuid::now_v7(),
                    rule: rule.to_owned(),
                    key: key.to_owned(),
                    state: AlertState::Firing,
                    message,
                    started_at: now,
                    last_notified_at: now,
                    resolved_at: None,
                };
                match self.store.save_alert(&alert).await {
                    Ok(()) => {
                        metrics::counter!("piaojia_alerts_fired_total", "rule" => rule.to_owned()).increment(1);
                        self.notify(&alert, false).await;
                    }
                    // Another process raised it first: one alert per incident.
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    pub async fn resolve(&self, rule: &str, key: &str) -> Result<(), StoreError> {
        if let Some(mut alert) = self.store.firing_alert(rule, key).await? {
            alert.state = AlertState::Resolved;
            alert.resolved_at = Some(Timestamp::now());
            self.store.save_alert(&alert).await?;
            self.notify(&alert, false).await;
        }
        Ok(())
    }

    async fn notify(&self, alert: &Alert, reminder: bool) {
        let url = &self.cfg.webhook_url;
        if url.is_empty() {
            return;
        }
        let title = match (alert.state, reminder) {
            (AlertState::Resolved, _) => "【票夹】已恢复",
            (_, true) => "【票夹】告警仍在持续",
            _ => "【票夹】告警",
        };
        let content = format!(
            "**{title}**\n> 规则：{}\n> 对象：{}\n> 详情：{}\n> 开始：{}",
            alert.rule,
            alert.key,
            alert.message,
            alert
                .started_at
                .as_datetime()
                .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("offset"))
                .format("%Y-%m-%d %H:%M:%S")
        );
        let body = json!({ "msgtype": "markdown", "markdown": { "content": content } });
        if let Err(e) = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            tracing::warn!(error = %e.without_url(), rule = %alert.rule, "operator alert webhook failed");
        }
    }

    /// One evaluation of the rules over the last day's figures and the backlog.
    pub async fn evaluate(&self, open_breakers: &[String]) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let window_mins = (self.cfg.window.as_secs() / 60) as i64;
        let rows = self
            .store
            .stats_since(now - TimeDelta::minutes(window_mins + 1))
            .await?;
        for scope in [Scope::Channel, Scope::Interface] {
            for summary in tracker::summaries(&rows, scope, now) {
                let w = tracker::window_of(&rows, scope, &summary.key, now, window_mins);
                let key = format!("{}:{}", scope.as_str(), summary.key);
                match w.success_rate {
                    Some(rate) if w.attempts >= self.cfg.min_attempts && rate < self.cfg.success_rate_below => {
                        let msg = format!(
                            "近{}分钟成功率 {:.1}%（{} 次中成功 {} 次）",
                            window_mins,
                            rate * 100.0,
                            w.attempts,
                            w.successes
                        );
                        self.fire(SUCCESS_RATE, &key, msg).await?;
                    }
                    _ => self.resolve(SUCCESS_RATE, &key).await?,
                }
                match w.p95_ms {
                    Some(p95) if w.attempts >= self.cfg.min_attempts && p95 > self.cfg.p95_above.as_millis() as u64 => {
                        self.fire(LATENCY_P95, &key, format!("近{window_mins}分钟 p95 延迟约 {p95} ms"))
                            .await?;
                    }
                    _ => self.resolve(LATENCY_P95, &key).await?,
                }
                if scope == Scope::Interface {
                    // Clean calls in the last minute mean the interface is back,
                    // whichever process saw it fail.
                    let recent = tracker::window_of(&rows, scope, &summary.key, now, 1);
                    if recent.attempts > 0 && recent.success_rate == Some(1.0) && !open_breakers.contains(&summary.key)
                    {
                        self.resolve(QUOTA_EXHAUSTED, &summary.key).await?;
                        self.resolve(BREAKER_OPEN, &summary.key).await?;
                    }
                }
            }
        }
        // Backlog rows are per (channel, interface): judge each channel once, by its
        // oldest pending delivery, or one interface's fresh row would resolve what
        // another's old row just fired.
        let mut channels: std::collections::BTreeMap<String, (i64, i64)> = std::collections::BTreeMap::new();
        for row in self.store.backlog().await? {
            let age = row.oldest_created_at.map(|t| (now - t).num_seconds()).unwrap_or(0);
            let entry = channels.entry(format!("channel:{}", row.channel)).or_default();
            entry.0 += row.pending;
            entry.1 = entry.1.max(age);
        }
        for (key, (pending, age)) in &channels {
            if *age > self.cfg.backlog_older_than.as_secs() as i64 {
                self.fire(
                    BACKLOG_AGE,
                    key,
                    format!("最早的待投递消息已等待 {age} 秒，共 {pending} 条"),
                )
                .await?;
            } else {
                self.resolve(BACKLOG_AGE, key).await?;
            }
        }
        // Backlogs that drained completely resolve too.
        for alert in self.store.list_alerts(200).await? {
            if alert.state == AlertState::Firing && alert.rule == BACKLOG_AGE && !channels.contains_key(&alert.key) {
                self.resolve(BACKLOG_AGE, &alert.key).await?;
            }
        }
        Ok(())
    }
}
