//! What happens to a receipt an issuer pushes or reverses: files kept, personal
//! data sealed, the receipt and its deliveries committed in one transaction (the
//! outbox the notifier drains). HTTP-free: routes map [`IntakeError`] to answers.

use bytes::Bytes;
use chrono::Utc;
use piaojia_core::pii::purpose;
use piaojia_core::receipt::{FileSource, NewReceipt};
use piaojia_store::{
    ChannelKind, DeliveryEvent, FileMeta, InsertOutcome, NewDelivery, NewReceiptRecord, Reversal, ReversalOutcome,
    StoredReceipt,
};
use ring::digest;
use uuid::Uuid;

use crate::auth::SignedApp;
use crate::files::FileError;
use crate::state::AppState;

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

/// Stores a pushed receipt; a repeat of the same content returns the first result.
pub async fn push(state: &AppState, issuer: &SignedApp, receipt: NewReceipt) -> Result<Accepted, IntakeError> {
    let content_hash = state
        .keyring
        .keyed_hash(purpose::hash::RECEIPT_CONTENT, receipt.content_hash().as_bytes());
    let agency = &issuer.agency;

    // A repeat must not fetch or write its file again: answer from what we hold.
    if receipt.file.is_some()
        && let Some(existing) = state
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

    let file = match &receipt.file {
        None => None,
        Some(file) => {
            let bytes = match &file.source {
                FileSource::Inline(bytes) => {
                    state.files.check_size(bytes.len())?;
                    Bytes::copy_from_slice(bytes)
                }
                FileSource::Url(url) => state.files.fetch(url, &agency.file_hosts).await?,
            };
            let key = format!(
                "receipts/{}/{}/{}.{}",
                agency.code,
                receipt.bill_batch_code,
                receipt.bill_no,
                file.format.extension()
            );
            let meta = FileMeta {
                format: file.format.as_str().to_owned(),
                sha256: hex::encode(digest::digest(&digest::SHA256, &bytes)),
                size: bytes.len() as i64,
                object_key: key.clone(),
            };
            state.files.put(&key, bytes).await?;
            Some(meta)
        }
    };

    let keyring = &state.keyring;
    let payer = &receipt.payer;
    let record = NewReceiptRecord {
        id: Uuid::now_v7(),
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
        open_id: receipt.open_id.clone(),
        details: receipt.details_json(),
        file,
        received_at: Utc::now().into(),
        search_text: receipt.search_text(),
        wallet_channels: wallet_channels(state, agency.id).await?,
    };
    let deliveries = plan_deliveries(state, issuer, DeliveryEvent::Issued, receipt.open_id.as_deref()).await?;
    match state.store.insert_receipt(record, deliveries).await? {
        InsertOutcome::Created(receipt) => {
            if !receipt.deliveries.is_empty() {
                state.wake.notify().await;
            }
            Ok(Accepted { created: true, receipt })
        }
        InsertOutcome::Duplicate(receipt) => Ok(Accepted {
            created: false,
            receipt,
        }),
        InsertOutcome::Conflict { .. } => Err(IntakeError::Conflict),
    }
}

/// Records a reversal (冲红); a repeat returns the first result.
pub async fn reverse(
    state: &AppState,
    issuer: &SignedApp,
    bill_batch_code: &str,
    bill_no: &str,
    reversal: Reversal,
) -> Result<Accepted, IntakeError> {
    let open_id = state
        .store
        .receipt(issuer.agency.id, bill_batch_code, bill_no)
        .await?
        .and_then(|r| r.open_id);
    let deliveries = plan_deliveries(state, issuer, DeliveryEvent::Reversed, open_id.as_deref()).await?;
    let outcome = state
        .store
        .reverse_receipt(issuer.agency.id, bill_batch_code, bill_no, reversal, deliveries)
        .await?;
    if matches!(&outcome, ReversalOutcome::Reversed(r) if !r.deliveries.is_empty()) {
        state.wake.notify().await;
    }
    match outcome {
        ReversalOutcome::Reversed(receipt) => Ok(Accepted { created: true, receipt }),
        ReversalOutcome::AlreadyReversed(receipt) => Ok(Accepted {
            created: false,
            receipt,
        }),
        ReversalOutcome::Conflict(_) => Err(IntakeError::ReversalConflict),
        ReversalOutcome::Locked(state) => Err(IntakeError::Locked(match state {
            piaojia_store::ReimbursementState::Closure => "closed",
            _ => "locked",
        })),
        ReversalOutcome::NotFound => Err(IntakeError::NotFound),
    }
}

pub async fn lookup(
    state: &AppState,
    issuer: &SignedApp,
    bill_batch_code: &str,
    bill_no: &str,
) -> Result<StoredReceipt, IntakeError> {
    state
        .store
        .receipt(issuer.agency.id, bill_batch_code, bill_no)
        .await?
        .ok_or(IntakeError::NotFound)
}

/// The subscribe channels that may tell a registered payer of a new receipt: the
/// agency's own mini-program first, then the platform's shared wallet.
async fn wallet_channels(
    state: &AppState,
    agency_id: Uuid,
) -> Result<Vec<piaojia_store::wallets::WalletChannel>, IntakeError> {
    let own = state.apps.channels(agency_id).await?;
    let platform = state.apps.platform_channels().await?;
    Ok(own
        .iter()
        .filter(|c| c.kind == ChannelKind::WechatSubscribe)
        .chain(platform.iter())
        .filter(|c| c.enabled)
        .map(|c| piaojia_store::wallets::WalletChannel {
            kind: c.kind,
            app_id: c.wechat_app_id.clone(),
            template_id: c.template_id.clone(),
            long_term: c.long_term,
            interface: piaojia_notifier::routing::wechat_interface(&c.wechat_app_id, c.kind),
        })
        .collect())
}

/// The deliveries an event calls for: the payer's WeChat channel when the receipt
/// carries an openid and the agency has one, else the issuer's status callback.
async fn plan_deliveries(
    state: &AppState,
    issuer: &SignedApp,
    event: DeliveryEvent,
    open_id: Option<&str>,
) -> Result<Vec<NewDelivery>, IntakeError> {
    let channels = state.apps.channels(issuer.agency.id).await?;
    Ok(piaojia_notifier::routing::plan(
        &piaojia_notifier::routing::EventContext {
            event,
            open_id,
            callback_url: issuer.callback_url.as_deref(),
            channels: &channels,
        },
    ))
}
