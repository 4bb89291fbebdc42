//! What operators read: tracked figures, alerts, re-drive results.

use chrono::Utc;
use piaojia_notifier::tracker::WindowSummary;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Success rate and latency percentiles of one tracked key.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackedView {
    /// A channel (`wechat_template:<appid>:<template>`, `issuer_webhook:<app>`), an
    /// outside interface (`wechat:<appid>:template_send`, `webhook:<host>`), or an
    /// inbound issuer app.
    pub key: String,
    #[serde(rename = "last5m")]
    pub last_5m: WindowSummary,
    #[serde(rename = "last1h")]
    pub last_1h: WindowSummary,
    #[serde(rename = "last24h")]
    pub last_24h: WindowSummary,
    /// Pending deliveries and the age of the oldest, in seconds (channels and interfaces).
    pub backlog: Option<i64>,
    pub oldest_pending_secs: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct InterfacesView {
    /// Each outside interface we call (each WeChat API per app, each webhook host).
    pub outbound: Vec<TrackedView>,
    /// The inbound issuer API, per issuer app.
    pub inbound: Vec<TrackedView>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    pub id: Uuid,
    #[schema(example = "success_rate")]
    pub rule: String,
    pub key: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub message: String,
    pub started_at: chrono::DateTime<Utc>,
    pub last_notified_at: chrono::DateTime<Utc>,
    pub resolved_at: Option<chrono::DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct RedriveResult {
    /// How many deliveries are pending again.
    pub redriven: u64,
}
