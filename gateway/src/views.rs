//! Views more than one caller shows: a delivery is part of the issuer's receipt
//! status and of the operators' delivery lists.

use chrono::{DateTime, Utc};
use piaojia_store::Delivery;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A delivery the receipt called for and where it stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: Uuid,
    /// `issued` or `reversed`.
    #[schema(example = "issued")]
    pub event: String,
    /// Channel kind, e.g. `issuer_webhook`, `wechat_template`, `wechat_subscribe`.
    #[schema(example = "issuer_webhook")]
    pub channel: String,
    /// `pending`, `delivered`, `failed` (a business outcome), `parked` (waiting for an
    /// operator) or `cancelled` (the payer erased their account).
    #[schema(example = "pending")]
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// Why it is parked: `exhausted`, `outage` or `quota`.
    #[schema(example = "outage")]
    pub park_reason: Option<String>,
    /// The outside system's id of what was sent (a template message's msgid).
    #[schema(example = "2837295720391")]
    pub provider_ref: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id,
            event: d.event.as_str().to_owned(),
            channel: d.channel.to_string(),
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            park_reason: d.park_reason.map(|r| r.as_str().to_owned()),
            provider_ref: d.provider_ref.clone(),
            updated_at: d.updated_at.into(),
        }
    }
}
