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

/// An event of the message server's inbox, without its body (it is sealed: it
/// names the payer and the card).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxEventView {
    pub id: Uuid,
    #[schema(example = "subscribe")]
    pub event: String,
    pub app_id: String,
    /// The sender's openid, masked; absent when the kept event cannot be read.
    #[schema(example = "oAbC********wXyZ")]
    pub open_id: Option<String>,
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// Claims so far (a claim whose process died counts too).
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at: chrono::DateTime<Utc>,
    /// When a pending event is due (again).
    pub next_attempt_at: chrono::DateTime<Utc>,
    /// Set while a worker holds it.
    pub lease_until: Option<chrono::DateTime<Utc>>,
    /// When it ended done or failed.
    pub handled_at: Option<chrono::DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct InboxRetryResult {
    /// How many failed events are due again.
    pub retried: u64,
}

/// A claim as operators see it: who claimed with whom, which receipts, where it
/// stands and everything that happened to it; never the payer's personal data
/// or the claim's own fields (sealed for the reimburser).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpsClaimView {
    pub id: Uuid,
    /// The reimburser's appId.
    #[schema(example = "insurer01")]
    pub reimburser: String,
    /// The mini-program (or official account) it was submitted through.
    pub mp_app_id: String,
    /// null once the payer erased their account.
    pub payer_id: Option<Uuid>,
    #[schema(example = "reimbursed")]
    pub status: &'static str,
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
    pub reason: Option<String>,
    /// What the payer agreed to share (the names, not the values).
    pub consented_fields: Vec<String>,
    pub receipt_ids: Vec<Uuid>,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
    /// Oldest first: who, what, from which status to which, from where, why.
    pub history: Vec<crate::reimburser::claims::ClaimEventView>,
}

impl OpsClaimView {
    pub fn build(c: piaojia_store::ClaimRecord, history: Vec<piaojia_store::ClaimEvent>) -> Self {
        Self {
            id: c.id,
            reimburser: c.reimburser_app_id,
            mp_app_id: c.mp_app_id,
            payer_id: c.payer_id,
            status: c.status.as_str(),
            paid_amt: c.paid_fen.map(piaojia_core::money::format_yuan),
            reason: c.reason,
            consented_fields: c.consented_fields,
            receipt_ids: c.receipt_ids,
            created_at: c.created_at.into(),
            updated_at: c.updated_at.into(),
            history: history.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpsClaimListView {
    pub items: Vec<OpsClaimView>,
}
