//! What happens to a receipt an issuer pushes or reverses: files kept, personal
//! data sealed, the receipt and its deliveries committed in one transaction (the
//! outbox the notifier drains). HTTP-free: [`Intake`] holds only what it needs,
//! and routes map [`IntakeError`] to answers.

use std::sync::Arc;

use bytes::Bytes;
use piaojia_core::mask;
use piaojia_core::pii::{Keyring, purpose};
use piaojia_core::receipt::{FileSource, NewReceipt};
use piaojia_notifier::alerts::{self, Alerter};
use piaojia_notifier::{Wake, routing};
use piaojia_store::wallets::WalletChannel;
use piaojia_store::{
    Channel, ChannelKind, DeliveryEvent, FileMeta, InsertOutcome, NewDelivery, NewReceiptRecord, NewWechatPayment,
    PaymentOutcome, ReimbursementState, Reversal, ReversalOutcome, Store, StoredReceipt, Timestamp, WechatPayment,
};
use ring::digest;
use uuid::Uuid;

use crate::auth::SignedApp;
use crate::files::{FileError, FileStore};
use crate::state::AppDirectory;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("a different receipt with this billBatchCode and billNo exists")]
    Conflict,
    #[error("no such receipt")]
    NotFound,
    #[error("the receipt is {0} by a reimburser and cannot be reversed")]
    Locked(&'static str),
    #[error("the receipt was already reversed with a different red receipt")]
    ReversalConflict,
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Store(#[from] piaojia_store::StoreError),
}

pub struct Accepted {
    pub created: bool,
    pub receipt: StoredReceipt,
}

/// Who a receipt is announced to and collected for, and in which app that
/// openid is known (`None`: the agency's preferred channel): its own `openID`
/// first; else the payer of the known payment its `weChatOrderNo` names, when
/// the app paid in has an enabled channel.
fn payer_openid(
    receipt: &NewReceipt,
    paid: Option<&WechatPayment>,
    channels: &[Channel],
) -> (Option<String>, Option<String>) {
    match (&receipt.open_id, paid) {
        (Some(own), Some(p)) => {
            if *own != p.openid {
                // The issuer's own word wins; the payment system may know the
                // payer in another app, or one of the two systems is wrong.
                tracing::warn!(
                    receipt_openid = %mask::openid(own),
                    payment_openid = %mask::openid(&p.openid),
                    order = %mask::token(&p.wechat_order_no),
                    "a receipt's openID differs from its payment's: the receipt's is used"
                );
            }
            // The same payer: the payment names the app that openid is of.
            let app = (*own == p.openid && routing::payer_channel_of(channels, Some(&p.wechat_app_id)).is_some())
                .then(|| p.wechat_app_id.clone());
            (Some(own.clone()), app)
        }
        (Some(own), None) => (Some(own.clone()), None),
        (None, Some(p)) if routing::payer_channel_of(channels, Some(&p.wechat_app_id)).is_some() => {
            (Some(p.openid.clone()), Some(p.wechat_app_id.clone()))
        }
        (None, _) => (None, None),
    }
}

/// Receipt intake: the store, the keys that seal personal data, the file store,
/// the agencies' channels, the notifier's wake-up and the operators' alerts.
pub struct Intake {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    files: FileStore,
    apps: Arc<AppDirectory>,
    wake: Wake,
    alerter: Arc<Alerter>,
}

impl Intake {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        files: FileStore,
        apps: Arc<AppDirectory>,
        wake: Wake,
        alerter: Arc<Alerter>,
    ) -> Self {
        Self {
            store,
            keyring,
            files,
            apps,
            wake,
            alerter,
        }
    }

    /// Stores a pushed receipt; a repeat of the same content returns the first result.
    pub async fn push(&self, issuer: &SignedApp, receipt: NewReceipt) -> Result<Accepted, IntakeError> {
        let content_hash = self
            .keyring
            .keyed_hash(purpose::hash::RECEIPT_CONTENT, receipt.content_hash().as_bytes());
        let agency = &issuer.agency;

        // A repeat must not fetch or write its file again: answer from what we hold.
        if receipt.file.is_some()
            && let Some(existing) = self
                .store
                .receipt(agency.id, &receipt.bill_batch_code, &receipt.bill_no)
                .await?
        {
            return if existing.content_hash == content_hash {
                Ok(Accepted {
                    created: false,
                    receipt: existing,
                })
            } else {
                Err(IntakeError::Conflict)
            };
        }

        let id = Uuid::now_v7();
        let file = match &receipt.file {
            None => None,
            Some(file) => {
                let bytes = match &file.source {
                    FileSource::Inline(bytes) => {
                        self.files.check_size(bytes.len())?;
                        Bytes::copy_from_slice(bytes)
                    }
                    FileSource::Url(url) => self.files.fetch(url, &agency.file_hosts).await?,
                };
                // Under a key of this push alone: two racing pushes of one receipt
                // never overwrite each other's file, so the stored file is always
                // the one whose SHA-256 the winning record holds.
                let key = format!(
                    "receipts/{}/{}/{}/{}.{}",
                    agency.code,
                    receipt.bill_batch_code,
                    receipt.bill_no,
                    id.simple(),
                    file.format.extension()
                );
                let meta = FileMeta {
                    format: file.format.as_str().to_owned(),
                    sha256: hex::encode(digest::digest(&digest::SHA256, &bytes)),
                    size: bytes.len() as i64,
                    object_key: key.clone(),
                };
                self.files.put(&key, bytes).await?;
                Some(meta)
            }
        };

        let keyring = &self.keyring;
        let payer = &receipt.payer;
        let channels = self.apps.channels(agency.id).await?;
        let paid = match &receipt.we_chat_order_no {
            Some(order_no) => self.store.wechat_payment(agency.id, order_no).await?,
            None => None,
        };
        let (open_id, open_id_app) = payer_openid(&receipt, paid.as_ref(), &channels);
        // The openid belongs to the agency's channel it is announced on: the
        // receipt is collected into that user's wallet at once.
        let openid_wallet = match &open_id {
            Some(_) => routing::payer_channel_of(&channels, open_id_app.as_deref()).map(|c| c.wechat_app_id.clone()),
            None => None,
        };
        let record = NewReceiptRecord {
            id,
            agency_id: agency.id,
            issuer_app_id: issuer.app_id.clone(),
            bill_batch_code: receipt.bill_batch_code.clone(),
            bill_no: receipt.bill_no.clone(),
            random: receipt.random.clone(),
            bus_no: receipt.bus_no.clone(),
            bus_type: receipt.bus_type.as_code().to_owned(),
            payer_type: receipt.payer_type,
            issued_at: receipt.issued_at.into(),
            total_fen: receipt.total_amt,
            content_hash,
            payer_sealed: keyring.seal_json(payer, purpose::PAYER),
            payer_id_index: payer
                .id_card_no
                .as_deref()
                .map(|v| keyring.blind_index(purpose::index::ID_CARD, v)),
            // Normalized as registration normalizes, so +86 138-0013-8000 matches 13800138000.
            payer_phone_index: payer.tel.as_deref().map(|v| {
                let phone = piaojia_core::identity::normalize_phone(v).unwrap_or_else(|_| v.to_owned());
                keyring.blind_index(purpose::index::PHONE, &phone)
            }),
            payer_name_index: Some(keyring.blind_index(purpose::index::NAME, &payer.name)),
            open_id: open_id.clone(),
            details: receipt.details_json(),
            file: file.clone(),
            received_at: Timestamp::now(),
            search_text: receipt.search_text(),
            wallet_channels: self.wallet_channels(agency.id).await?,
            openid_wallet,
            wechat_order_no: receipt.we_chat_order_no.clone(),
        };
        let deliveries = self
            .plan_deliveries(
                issuer,
                DeliveryEvent::Issued,
                open_id.as_deref(),
                open_id_app.as_deref(),
            )
            .await?;
        let receipt_order_no = record.wechat_order_no.clone();
        let outcome = self.store.insert_receipt(record, deliveries).await;
        if !matches!(outcome, Ok(InsertOutcome::Created { .. }))
            && let Some(file) = &file
        {
            // The record points at another push's file (or at none): this one goes.
            self.files.remove(&file.object_key).await;
        }
        match outcome? {
            InsertOutcome::Created {
                receipt,
                identity_clash,
                handed_off,
            } => {
                // What this process's workers took from the commit needs no claim.
                if receipt.deliveries.len() > handed_off {
                    self.wake.notify().await;
                }
                if identity_clash {
                    self.report_clash(issuer, &receipt).await;
                }
                // The payment may have been reported while this push was on its
                // way (after our look-up, before our commit): its report did not
                // see this receipt, so we look again now that it is committed.
                if open_id.is_none()
                    && let Some(order_no) = &receipt_order_no
                {
                    // The receipt is committed: a failure here must not fail its
                    // push (a repeat would find it held and stop); the payment's
                    // next report delivers it.
                    let late = match self.store.wechat_payment(agency.id, order_no).await {
                        Ok(Some(payment)) => self.deliver_paid(&payment).await.map(|_| ()),
                        Ok(None) => Ok(()),
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = late {
                        tracing::error!(error = %e, receipt_id = %receipt.id, "delivering to a late-known payer failed");
                    }
                }
                Ok(Accepted { created: true, receipt })
            }
            InsertOutcome::Duplicate(receipt) => Ok(Accepted {
                created: false,
                receipt,
            }),
            InsertOutcome::Conflict => Err(IntakeError::Conflict),
        }
    }

    /// Another agency holds a receipt with this code and number. Neither is
    /// blocked and the issuer is told nothing; operators find out who pushed it.
    async fn report_clash(&self, issuer: &SignedApp, receipt: &StoredReceipt) {
        let key = format!("{}/{}", receipt.bill_batch_code, receipt.bill_no);
        tracing::warn!(
            app_id = %issuer.app_id,
            agency = %issuer.agency.code,
            receipt = %key,
            "a receipt with this code and number is held by another agency"
        );
        let message = format!(
            "票据代码与号码 {key} 同时出现在多个开票单位；最新推送来自 {}（{}）",
            issuer.agency.name, issuer.app_id
        );
        if let Err(e) = self.alerter.fire(alerts::IDENTITY_CLASH, &key, message).await {
            tracing::error!(error = %e, "raising the identity clash alert failed");
        }
    }

    /// Records a reversal (冲红); a repeat returns the first result.
    pub async fn reverse(
        &self,
        issuer: &SignedApp,
        bill_batch_code: &str,
        bill_no: &str,
        reversal: Reversal,
    ) -> Result<Accepted, IntakeError> {
        let stored = self.store.receipt(issuer.agency.id, bill_batch_code, bill_no).await?;
        let open_id = stored.as_ref().and_then(|r| r.open_id.clone());
        let mut deliveries = self
            .plan_deliveries(issuer, DeliveryEvent::Reversed, open_id.as_deref(), None)
            .await?;
        // A card in the payer's card package is cancelled with the receipt.
        if let Some(r) = &stored
            && r.reversal.is_none()
        {
            deliveries.extend(crate::card_package::cancel_delivery(self.store.as_ref(), r.id).await?);
        }
        let outcome = self
            .store
            .reverse_receipt(issuer.agency.id, bill_batch_code, bill_no, reversal, deliveries)
            .await?;
        if matches!(&outcome, ReversalOutcome::Reversed(r) if !r.deliveries.is_empty()) {
            self.wake.notify().await;
        }
        match outcome {
            ReversalOutcome::Reversed(receipt) => Ok(Accepted { created: true, receipt }),
            ReversalOutcome::AlreadyReversed(receipt) => Ok(Accepted {
                created: false,
                receipt,
            }),
            ReversalOutcome::Conflict(_) => Err(IntakeError::ReversalConflict),
            ReversalOutcome::Locked(state) => Err(IntakeError::Locked(match state {
                ReimbursementState::Closure => "closed",
                _ => "locked",
            })),
            ReversalOutcome::NotFound => Err(IntakeError::NotFound),
        }
    }

    /// Records a WeChat Pay payment the agency's payment system reports, and
    /// delivers the receipts of its order that were pushed before it without an
    /// openid. A repeat finds nothing left to deliver (every such receipt took
    /// the openid), unless the first report died half-way.
    pub async fn report_payment(&self, payment: NewWechatPayment) -> Result<PaymentOutcome, IntakeError> {
        let outcome = self.store.record_wechat_payment(payment).await?;
        if let PaymentOutcome::Created(held) | PaymentOutcome::Duplicate(held) = &outcome {
            self.deliver_paid(held).await?;
        }
        Ok(outcome)
    }

    /// The receipts of a known payment's order still without an openid, given
    /// the payment's: collected into that openid's wallet and announced on the
    /// channel of the app paid in, as a push carrying that `openID` would be.
    async fn deliver_paid(&self, payment: &WechatPayment) -> Result<usize, IntakeError> {
        let channels = self.apps.channels(payment.agency_id).await?;
        let Some(channel) = routing::payer_channel_of(&channels, Some(&payment.wechat_app_id)) else {
            // Its app's channel was disabled since: nothing can reach that openid.
            tracing::info!(
                wechat_app_id = %payment.wechat_app_id,
                order = %mask::token(&payment.wechat_order_no),
                "a payment's app has no enabled channel: its receipts wait"
            );
            return Ok(0);
        };
        let announce = routing::payer_delivery(DeliveryEvent::Issued, channel, &payment.openid, &[channel.kind]);
        let taken = self.store.deliver_paid_receipts(payment, Some(announce)).await?;
        if !taken.is_empty() {
            tracing::info!(
                receipts = taken.len(),
                order = %mask::token(&payment.wechat_order_no),
                "receipts pushed before their payment delivered to its payer"
            );
            self.wake.notify().await;
        }
        Ok(taken.len())
    }

    pub async fn lookup(
        &self,
        issuer: &SignedApp,
        bill_batch_code: &str,
        bill_no: &str,
    ) -> Result<StoredReceipt, IntakeError> {
        self.store
            .receipt(issuer.agency.id, bill_batch_code, bill_no)
            .await?
            .ok_or(IntakeError::NotFound)
    }

    /// The subscribe channels that may tell a registered payer of a new receipt:
    /// the agency's own mini-program first, then the platform's shared wallet.
    async fn wallet_channels(&self, agency_id: Uuid) -> Result<Vec<WalletChannel>, IntakeError> {
        let own = self.apps.channels(agency_id).await?;
        let platform = self.apps.platform_channels().await?;
        Ok(own
            .iter()
            .filter(|c| c.kind == ChannelKind::WechatSubscribe)
            .chain(platform.iter())
            .filter(|c| c.enabled)
            .map(|c| WalletChannel {
                kind: c.kind,
                app_id: c.wechat_app_id.clone(),
                template_id: c.template_id.clone(),
                long_term: c.long_term,
                interface: routing::wechat_interface(&c.wechat_app_id, c.kind),
            })
            .collect())
    }

    /// The deliveries an event calls for: the payer's WeChat channel when the
    /// receipt carries an openid and the agency has one, else the issuer's callback.
    async fn plan_deliveries(
        &self,
        issuer: &SignedApp,
        event: DeliveryEvent,
        open_id: Option<&str>,
        open_id_app: Option<&str>,
    ) -> Result<Vec<NewDelivery>, IntakeError> {
        let channels = self.apps.channels(issuer.agency.id).await?;
        Ok(routing::plan(&routing::EventContext {
            event,
            open_id,
            open_id_app,
            callback_url: issuer.callback_url.as_deref(),
            channels: &channels,
        }))
    }
}
