//! One small adapter per delivery channel, behind one trait.

pub mod card;
pub mod webhook;
pub mod wechat;

use std::time::Duration;

use async_trait::async_trait;
use piaojia_store::ClaimedDelivery;

/// What one send attempt came to.
#[derive(Debug, Clone)]
pub enum SendResult {
    Delivered {
        provider_ref: Option<String>,
    },
    /// Retrying cannot fix it (43101, 40003, 47003, a webhook's 4xx): a recorded
    /// business outcome.
    Permanent {
        code: Option<i64>,
        error: String,
    },
    /// A later attempt may succeed. `interface_failure`: the outside system itself
    /// failed (timeouts, 5xx, busy), which feeds its circuit breaker; rate limits
    /// do not.
    Retryable {
        code: Option<i64>,
        error: String,
        retry_after: Option<Duration>,
        interface_failure: bool,
    },
    /// The daily quota is spent (45009): park, alert, do not retry in a loop.
    QuotaExhausted {
        code: Option<i64>,
        error: String,
    },
}

impl SendResult {
    pub fn interface_failure(&self) -> bool {
        matches!(
            self,
            SendResult::Retryable {
                interface_failure: true,
                ..
            }
        )
    }

    pub fn code(&self) -> Option<i64> {
        match self {
            SendResult::Delivered { .. } => None,
            SendResult::Permanent { code, .. }
            | SendResult::Retryable { code, .. }
            | SendResult::QuotaExhausted { code, .. } => *code,
        }
    }
}

#[async_trait]
pub trait ChannelAdapter: Send + Sync {
    /// The tracked channel key of a delivery (kind + app + template).
    async fn channel_key(&self, job: &ClaimedDelivery) -> String;
    async fn send(&self, job: &ClaimedDelivery) -> SendResult;
}
