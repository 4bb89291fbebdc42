//! The card package (卡包, DOMAIN.md §7) as deliveries: after the payer agreed
//! (`user_authorize_invoice`), the receipt's PDF is uploaded (`card_pdf`:
//! `setpdf`), then the card inserted (`card_insert`: `insertbill`); a reversal or
//! a reimburser's lock or closure sets the card's status (`card_status`:
//! `updatestatus`). Each is one delivery with retries, the breaker and tracking
//! like every other send; piaojia plays the platform for the agency's own
//! official account (one app in both roles).

use std::sync::Arc;

use async_trait::async_trait;
use piaojia_core::pii::{Keyring, purpose};
use piaojia_core::receipt::PayerIdentity;
use piaojia_store::{CardOrder, CardUnit, ChannelKind, ClaimedDelivery, Store, Timestamp};
use piaojia_wechat::client::{AppCredentials, CallError, InsertBill, ReimburseStatus, WechatClient};
use piaojia_wechat::errcode;
use secrecy::SecretString;
use uuid::Uuid;

use super::wechat::classify;
use super::{ChannelAdapter, SendResult};
use crate::alerts::Alerter;

/// What the card package needs of the gateway: the receipt files and the signed
/// "收入微信卡包" links (the notifier holds neither the file store nor the public URL).
#[async_trait]
pub trait CardSupport: Send + Sync {
    /// The receipt's PDF, when it has one.
    async fn receipt_pdf(&self, receipt_id: Uuid) -> anyhow::Result<Option<Vec<u8>>>;
    /// The short-lived signed link that puts the receipt into its payer's card
    /// package (`/h5/{appId}/receipts/{receiptId}/card?t=…`), for template messages.
    fn card_link(&self, wechat_app_id: &str, receipt_id: Uuid) -> String;
}

/// The payload key of a `card_insert` delivery: the `s_media_id` `setpdf` returned.
pub const MEDIA_ID: &str = "sMediaId";
/// The payload key of a `card_status` delivery: the `INVOICE_REIMBURSE_*` status to set.
pub const STATUS: &str = "status";

/// The alert of a card in a payer's package whose code WeChat's lost answer
/// carried (key `card:<order_id>`); resolved when WeChat reports the card.
pub const CARD_CODE_UNKNOWN: &str = "card_code_unknown";

pub fn card_alert_key(order_id: &str) -> String {
    format!("card:{order_id}")
}

pub struct CardChannel {
    alerter: Arc<Alerter>,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    client: Arc<WechatClient>,
    support: Option<Arc<dyn CardSupport>>,
}

fn permanent(error: impl Into<String>) -> SendResult {
    SendResult::Permanent {
        code: None,
        error: error.into(),
    }
}

fn store_error(e: impl std::fmt::Display) -> SendResult {
    SendResult::Retryable {
        code: None,
        error: format!("the store: {e}"),
        retry_after: None,
        interface_failure: false,
    }
}

impl CardChannel {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        client: Arc<WechatClient>,
        support: Option<Arc<dyn CardSupport>>,
        alerter: Arc<Alerter>,
    ) -> Self {
        Self {
            alerter,
            store,
            keyring,
            client,
            support,
        }
    }

    /// The agency's card template, its order for this receipt and the official
    /// account's credentials.
    async fn context(&self, job: &ClaimedDelivery) -> Result<(CardUnit, CardOrder, AppCredentials), SendResult> {
        let agency = job.receipt.agency_id;
        let unit = self
            .store
            .card_unit(agency)
            .await
            .map_err(store_error)?
            .ok_or_else(|| permanent("the agency has no card template (card package not enabled)"))?;
        let order = self
            .store
            .card_order_for_receipt(job.receipt.id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| permanent("the receipt has no card-package order"))?;
        let channels = self.store.channels_for_agency(agency).await.map_err(store_error)?;
        let channel = channels
            .iter()
            .find(|c| c.kind == ChannelKind::WechatTemplate && c.wechat_app_id == unit.wechat_app_id)
            .ok_or_else(|| permanent("the card template's official account is not a channel of the agency"))?;
        let secret = self
            .keyring
            .open(&channel.secret_sealed, &purpose::wechat_app(&channel.wechat_app_id))
            .map_err(|e| permanent(format!("the channel secret cannot be opened: {e}")))?;
        let app = AppCredentials {
            appid: channel.wechat_app_id.clone(),
            secret: SecretString::from(String::from_utf8_lossy(&secret).into_owned()),
        };
        Ok((unit, order, app))
    }

    async fn upload_pdf(&self, job: &ClaimedDelivery, app: &AppCredentials) -> SendResult {
        if job.receipt.reversed {
            return permanent("the receipt was reversed (冲红): no card");
        }
        let Some(support) = &self.support else {
            return permanent("no file access in this process");
        };
        let pdf = match support.receipt_pdf(job.receipt.id).await {
            Ok(Some(pdf)) => pdf,
            Ok(None) => return permanent("the receipt has no PDF"),
            Err(e) => {
                return SendResult::Retryable {
                    code: None,
                    error: format!("reading the receipt file: {e}"),
                    retry_after: None,
                    interface_failure: false,
                };
            }
        };
        match self.client.set_pdf(app, &pdf).await {
            Ok(media_id) => SendResult::Delivered {
                provider_ref: Some(media_id),
            },
            Err(e) => classify(e),
        }
    }

    async fn insert(
        &self,
        job: &ClaimedDelivery,
        unit: &CardUnit,
        order: &CardOrder,
        app: &AppCredentials,
    ) -> SendResult {
        if job.receipt.reversed {
            return permanent("the receipt was reversed (冲红): no card");
        }
        if let Some(code) = &order.code {
            return SendResult::Delivered {
                provider_ref: Some(code.clone()),
            };
        }
        let Some(media_id) = job
            .delivery
            .payload
            .as_ref()
            .and_then(|p| p.get(MEDIA_ID))
            .and_then(|m| m.as_str())
        else {
            return permanent("the delivery carries no s_media_id");
        };
        let r = &job.receipt;
        // The card's 抬头 is the receipt's payer (交款人), as on the paper receipt;
        // it is sealed at rest, so it is opened here, for WeChat alone.
        let title = match self.store.receipt(r.agency_id, &r.bill_batch_code, &r.bill_no).await {
            Ok(Some(stored)) => match self
                .keyring
                .open_json::<PayerIdentity>(&stored.payer_sealed, purpose::PAYER)
            {
                Ok(payer) => payer.name,
                Err(e) => return permanent(format!("the receipt's payer data cannot be opened: {e}")),
            },
            Ok(None) => return permanent("the receipt is not stored"),
            Err(e) => return store_error(e),
        };
        let bill = InsertBill {
            order_id: order.order_id.clone(),
            card_id: unit.card_id.clone(),
            appid: unit.wechat_app_id.clone(),
            fee: r.total_fen,
            title,
            billing_time: r.issued_at.as_datetime().timestamp(),
            billing_no: r.bill_batch_code.clone(),
            billing_code: r.bill_no.clone(),
            s_pdf_media_id: media_id.to_owned(),
        };
        match self.client.insert_bill(app, &bill).await {
            Ok(inserted) => {
                if let Err(e) = self
                    .store
                    .card_inserted(&order.order_id, Some(&inserted.code), Timestamp::now())
                    .await
                {
                    tracing::error!(error = %e, "recording the inserted card failed");
                }
                SendResult::Delivered {
                    provider_ref: Some(inserted.code),
                }
            }
            // 72024 on our own authorised order: its card exists. piaojia never
            // rejects an order (`rejectinsert`), so only an earlier insertbill of
            // ours whose answer was lost (a timeout: WeChat inserted, we never read
            // the code) can have closed it. The card is in the payer's package:
            // delivered, with its code unknown until WeChat reports the card
            // (`update_invoice_status`); until then its status cannot be mirrored,
            // which the alert says.
            Err(CallError::Wechat(e)) if e.errcode == errcode::INVOICE_BAD_STATUS => {
                tracing::warn!(order_id = %order.order_id, "insertbill: the order already has its card (an earlier answer was lost)");
                if let Err(e) = self.store.card_inserted(&order.order_id, None, Timestamp::now()).await {
                    tracing::error!(error = %e, "recording the inserted card failed");
                    return store_error(e);
                }
                let message = format!(
                    "the card of receipt {} {} is in the payer's card package, but WeChat's answer with its code \
                     was lost: its status (reversal, reimbursement) cannot be mirrored until WeChat reports the card",
                    r.bill_batch_code, r.bill_no
                );
                if let Err(e) = self
                    .alerter
                    .fire(CARD_CODE_UNKNOWN, &card_alert_key(&order.order_id), message)
                    .await
                {
                    tracing::error!(error = %e, "raising the alert failed");
                }
                SendResult::Delivered { provider_ref: None }
            }
            Err(e) => classify(e),
        }
    }

    async fn set_status(&self, job: &ClaimedDelivery, order: &CardOrder, app: &AppCredentials) -> SendResult {
        let Some(status) = job
            .delivery
            .payload
            .as_ref()
            .and_then(|p| p.get(STATUS))
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse::<ReimburseStatus>().ok())
        else {
            return permanent("the delivery carries no card status");
        };
        let Some(code) = &order.code else {
            if order.inserted_at.is_some() {
                return permanent(
                    "the card's code is unknown (insertbill's answer was lost) until WeChat reports the card",
                );
            }
            return permanent("no card was inserted for the receipt");
        };
        match self.client.update_card_status(app, &order.card_id, code, status).await {
            Ok(()) => {
                if let Err(e) = self
                    .store
                    .set_card_status(&order.order_id, status.as_str(), Timestamp::now())
                    .await
                {
                    tracing::error!(error = %e, "recording the card status failed");
                }
                SendResult::Delivered { provider_ref: None }
            }
            Err(e) => classify(e),
        }
    }
}

#[async_trait]
impl ChannelAdapter for CardChannel {
    async fn channel_key(&self, job: &ClaimedDelivery) -> String {
        match self.store.card_unit(job.receipt.agency_id).await {
            Ok(Some(unit)) => format!("{}:{}:{}", job.delivery.channel, unit.wechat_app_id, unit.card_id),
            _ => format!("{}:unconfigured", job.delivery.channel),
        }
    }

    async fn send(&self, job: &ClaimedDelivery) -> SendResult {
        let (unit, order, app) = match self.context(job).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        match job.delivery.channel {
            ChannelKind::CardPdf => self.upload_pdf(job, &app).await,
            ChannelKind::CardInsert => self.insert(job, &unit, &order, &app).await,
            ChannelKind::CardStatus => self.set_status(job, &order, &app).await,
            other => permanent(format!("{other} is not a card-package channel")),
        }
    }
}
