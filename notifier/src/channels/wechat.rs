//! WeChat payer channels: the official account's template message and the
//! mini-program's subscribe message. Template ids and the keyword → value mapping
//! are per-agency configuration (`channels` table), not code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::FixedOffset;
use piaojia_core::pii::Keyring;
use piaojia_store::{Channel, ChannelKind, ClaimedDelivery, Store};
use piaojia_wechat::client::{AppCredentials, CallError, SubscribeMessage, TemplateMessage, WechatClient};
use piaojia_wechat::errcode::ErrorClass;
use secrecy::SecretString;

use super::{ChannelAdapter, SendResult};

pub struct WechatChannel {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    client: Arc<WechatClient>,
    /// Signed card-package links for `{cardUrl}` in a template channel's page.
    card: Option<Arc<dyn super::card::CardSupport>>,
    /// Channel settings change rarely; a short cache spares a query per send.
    /// Keyed by agency; `Uuid::nil()` holds the platform's channels.
    channels: moka::future::Cache<uuid::Uuid, Arc<Vec<Channel>>>,
    /// Where the official account's pages are (template messages link there).
    pages_base_url: String,
}

/// The page of one receipt in the official account's pages (`/h5/{appId}/receipts/{id}`).
pub fn receipt_page_url(base_url: &str, wechat_app_id: &str, receipt_id: uuid::Uuid) -> String {
    format!(
        "{}/h5/{wechat_app_id}/receipts/{receipt_id}",
        base_url.trim_end_matches('/')
    )
}

impl WechatChannel {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        client: Arc<WechatClient>,
        pages_base_url: String,
        card: Option<Arc<dyn super::card::CardSupport>>,
    ) -> Self {
        Self {
            store,
            keyring,
            client,
            pages_base_url,
            card,
            channels: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
        }
    }

    async fn channel(&self, job: &ClaimedDelivery) -> Result<Channel, SendResult> {
        let store = self.store.clone();
        // The platform wallet belongs to no agency.
        let key = if job.delivery.channel.is_platform() {
            uuid::Uuid::nil()
        } else {
            job.receipt.agency_id
        };
        let all = self
            .channels
            .try_get_with(key, async move {
                if key.is_nil() {
                    store.platform_channels().await.map(Arc::new)
                } else {
                    store.channels_for_agency(key).await.map(Arc::new)
                }
            })
            .await
            .map_err(|e| SendResult::Retryable {
                code: None,
                error: format!("loading channels: {e}"),
                retry_after: None,
                interface_failure: false,
            })?;
        all.iter()
            .find(|c| c.kind == job.delivery.channel && c.enabled)
            .cloned()
            .ok_or_else(|| SendResult::Permanent {
                code: None,
                error: format!("the agency has no enabled {} channel", job.delivery.channel),
            })
    }
}

/// The claim a payer's message is about, when it is a claim's status message.
fn claim_id(job: &ClaimedDelivery) -> Option<&str> {
    job.delivery.payload.as_ref()?.get("claimId")?.as_str()
}

/// In a template channel's `page`: replaced by the receipt's signed card-package link.
pub const CARD_URL: &str = "{cardUrl}";

/// Beijing time, as payers read it.
fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

fn bus_type_zh(code: &str) -> &'static str {
    piaojia_core::receipt::BusType::from_code(code).map_or("医疗", |b| b.label_zh())
}

/// Fills `{agencyName}`-style placeholders; every value is cut to WeChat's 20
/// characters, since longer ones are refused (47003) or silently cut.
pub fn render_fields(fields: &serde_json::Value, job: &ClaimedDelivery) -> BTreeMap<String, String> {
    let r = &job.receipt;
    let reversed = job.delivery.event == piaojia_store::DeliveryEvent::Reversed;
    // A claim's status message: `{status}` is the claim's (已受理, 已报销 …), and
    // `{amount}` what was paid once reimbursed, before that what was claimed (all
    // its receipts, not the first one the message hangs on).
    let claim = job.delivery.payload.as_ref().filter(|p| p.get("claimId").is_some());
    // A reimbursement reminder says 待报销 the same way.
    let claim_status = job
        .delivery
        .payload
        .as_ref()
        .and_then(|p| p.get("statusZh"))
        .and_then(|s| s.as_str());
    let paid_fen = claim
        .and_then(|p| p.get("paidFen").and_then(serde_json::Value::as_i64))
        .or_else(|| {
            claim
                .and_then(|p| p.get("claimedFen"))
                .and_then(serde_json::Value::as_i64)
        });
    let status = match claim_status {
        Some(s) => s.to_owned(),
        None if reversed => "已冲红".to_owned(),
        None => "已开具".to_owned(),
    };
    let vars = [
        ("{agencyName}", r.agency_name.clone()),
        (
            "{amount}",
            piaojia_core::money::format_yuan(paid_fen.unwrap_or(r.total_fen)),
        ),
        ("{billBatchCode}", r.bill_batch_code.clone()),
        ("{billNo}", r.bill_no.clone()),
        (
            "{issuedAt}",
            r.issued_at
                .as_datetime()
                .with_timezone(&beijing())
                .format("%Y-%m-%d %H:%M")
                .to_string(),
        ),
        ("{busType}", bus_type_zh(&r.bus_type).to_owned()),
        ("{status}", status),
    ];
    let default;
    let fields = match fields.as_object() {
        Some(map) if !map.is_empty() => map,
        _ => {
            default = serde_json::json!({
                "thing1": "{agencyName}",
                "amount2": "{amount}元",
                "character_string3": "{billNo}",
                "time4": "{issuedAt}",
                "phrase5": "{status}",
            });
            default.as_object().expect("an object")
        }
    };
    fields
        .iter()
        .map(|(key, template)| {
            let mut value = template.as_str().unwrap_or_default().to_owned();
            for (name, v) in &vars {
                value = value.replace(name, v);
            }
            (key.clone(), value.chars().take(20).collect())
        })
        .collect()
}

pub(crate) fn classify(err: CallError) -> SendResult {
    let code = match &err {
        CallError::Wechat(e) => Some(e.errcode),
        CallError::Http(status) => Some(i64::from(*status)),
        _ => None,
    };
    let error = err.to_string();
    match err.class() {
        Some(ErrorClass::Permanent) => SendResult::Permanent { code, error },
        Some(ErrorClass::QuotaExhausted) => SendResult::QuotaExhausted { code, error },
        Some(ErrorClass::RateLimited) => SendResult::Retryable {
            code,
            error,
            retry_after: Some(Duration::from_secs(60)),
            interface_failure: false,
        },
        // Busy, a token that stayed invalid after the one refresh, timeouts, 5xx.
        _ => SendResult::Retryable {
            code,
            error,
            retry_after: None,
            interface_failure: true,
        },
    }
}

#[async_trait]
impl ChannelAdapter for WechatChannel {
    async fn channel_key(&self, job: &ClaimedDelivery) -> String {
        match self.channel(job).await {
            Ok(c) => format!("{}:{}:{}", c.kind, c.wechat_app_id, c.template_id),
            Err(_) => format!("{}:unconfigured", job.delivery.channel),
        }
    }

    async fn send(&self, job: &ClaimedDelivery) -> SendResult {
        let channel = match self.channel(job).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let secret = match self.keyring.open(
            &channel.secret_sealed,
            &piaojia_core::pii::purpose::wechat_app(&channel.wechat_app_id),
        ) {
            Ok(bytes) => SecretString::from(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => {
                return SendResult::Permanent {
                    code: None,
                    error: format!("the channel secret cannot be opened: {e}"),
                };
            }
        };
        let app = AppCredentials {
            appid: channel.wechat_app_id.clone(),
            secret,
        };
        let data = render_fields(&channel.fields, job);
        let page = channel.page.clone().unwrap_or_default();
        let result = if channel.kind == ChannelKind::WechatTemplate {
            // An unfollowed payer gets no template message (WeChat would answer
            // 43004): a business outcome, and the next channel is tried.
            // The follower record was read with the claim.
            if job.unfollowed {
                return SendResult::Permanent {
                    code: Some(piaojia_wechat::errcode::REQUIRE_SUBSCRIBE),
                    error: "the payer unfollowed the official account (unsubscribe)".into(),
                };
            }
            let url = if page.contains(CARD_URL) {
                // The card-package link ("收入微信卡包"), signed for this receipt.
                self.card
                    .as_ref()
                    .map(|c| page.replace(CARD_URL, &c.card_link(&channel.wechat_app_id, job.receipt.id)))
            } else {
                // The receipt's page among the account's own pages (signed in by
                // web OAuth on opening): it shows the state, 已冲红 included.
                Some(receipt_page_url(
                    &self.pages_base_url,
                    &channel.wechat_app_id,
                    job.receipt.id,
                ))
            };
            let msg = TemplateMessage {
                touser: job.delivery.target.clone(),
                template_id: channel.template_id.clone(),
                url,
                miniprogram: None,
                // WeChat drops a repeat with the same client_msg_id: a re-sent
                // delivery (after a crash mid-send) reaches the payer once.
                client_msg_id: Some(job.delivery.id.simple().to_string()),
                data,
            };
            self.client
                .send_template_message(&app, &msg)
                .await
                .map(|msgid| Some(msgid.to_string()))
        } else {
            let msg = SubscribeMessage {
                touser: job.delivery.target.clone(),
                template_id: channel.template_id.clone(),
                page: (!page.is_empty()).then(|| match claim_id(job) {
                    Some(claim) => format!("{page}?claim={claim}"),
                    None => format!("{page}?receipt={}", job.receipt.id),
                }),
                data,
                miniprogram_state: None,
                lang: Some("zh_CN".to_owned()),
            };
            self.client.send_subscribe_message(&app, &msg).await.map(|()| None)
        };
        match result {
            Ok(provider_ref) => SendResult::Delivered { provider_ref },
            Err(e) => classify(e),
        }
    }
}
