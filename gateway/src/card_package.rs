//! WeChat's card package (卡包) for fiscal receipts, with piaojia in the platform
//! role of DOMAIN.md §7 for the agencies that enable it (`piaojia card enable`):
//! one card template per agency (`createbillcard`), the "收入微信卡包" link
//! (`GET /h5/{appId}/receipts/{receiptId}/card`, which obtains `getbillauthurl` and
//! sends the payer there), and on `user_authorize_invoice` the PDF upload and the
//! insertion as notifier deliveries (`card_pdf` → `card_insert`). A reversal sets the
//! card to CANCEL ([`cancel_delivery`]); reimbursers' LOCK and CLOSURE are mirrored
//! with [`mirror_reimbursement`]; WeChat's `update_invoice_status` is recorded and
//! kept as the reimbursement state of the party `wechat` ([`wechat_status`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, web};
use async_trait::async_trait;
use piaojia_core::pii::{Keyring, purpose};
use piaojia_notifier::channels::card::{CARD_CODE_UNKNOWN, CardSupport, STATUS, card_alert_key};
use piaojia_notifier::routing;
use piaojia_notifier::tracker::{Scope, Tracker};
use piaojia_store::{
    CardOrder, CardUnit, ChannelKind, DeliveryEvent, NewDelivery, ReimbursementState, Store, StoreError, Timestamp,
};
use piaojia_wechat::client::{
    AppCredentials, AuthSource, BillAuthRequest, BillCardTemplate, ReimburseStatus, WechatClient,
};
use ring::hmac;
use secrecy::SecretString;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::files::FileStore;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(take_card);
}

/// Signs and checks the short-lived "收入微信卡包" links of template messages: an
/// HMAC over (appid, receipt, expiry) with a key derived from the master keys.
pub struct CardLinks {
    /// Newest (active) first.
    keys: Vec<(String, [u8; 32])>,
    public_url: String,
    ttl: Duration,
}

impl CardLinks {
    pub fn new(keyring: &Keyring, public_url: &str, ttl: Duration) -> Self {
        Self {
            keys: keyring.derived_keys(purpose::key::CARD_LINK),
            public_url: public_url.trim_end_matches('/').to_owned(),
            ttl,
        }
    }

    fn mac(key: &[u8; 32], appid: &str, receipt_id: Uuid, expires: i64) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let tag = hmac::sign(
            &key,
            format!("card|{appid}|{}|{expires}", receipt_id.simple()).as_bytes(),
        );
        hex::encode(&tag.as_ref()[..16])
    }

    /// A token valid until `expires` (unix seconds).
    pub fn token(&self, appid: &str, receipt_id: Uuid, expires: i64) -> String {
        let (kid, key) = self.keys.first().map_or(("", &[0u8; 32]), |(k, v)| (k.as_str(), v));
        format!("{expires}.{kid}.{}", Self::mac(key, appid, receipt_id, expires))
    }

    /// True when `token` was signed by us for this app and receipt and has not expired.
    pub fn verify(&self, appid: &str, receipt_id: Uuid, token: &str, now: i64) -> bool {
        let mut parts = token.splitn(3, '.');
        let (Some(exp), Some(kid), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(expires) = exp.parse::<i64>() else {
            return false;
        };
        if expires < now {
            return false;
        }
        self.keys.iter().filter(|(k, _)| k == kid).any(|(_, key)| {
            let expected = Self::mac(key, appid, receipt_id, expires);
            bool::from(expected.as_bytes().ct_eq(mac.as_bytes()))
        })
    }

    /// The payer's link: `/h5/{appId}/receipts/{receiptId}/card?t=…`.
    pub fn link(&self, appid: &str, receipt_id: Uuid) -> String {
        let expires = chrono::Utc::now().timestamp() + self.ttl.as_secs() as i64;
        format!(
            "{}/h5/{appid}/receipts/{}/card?t={}",
            self.public_url,
            receipt_id,
            self.token(appid, receipt_id, expires)
        )
    }

    /// The receipt page WeChat sends the payer back to after agreeing.
    pub fn receipt_page(&self, appid: &str, receipt_id: Uuid) -> String {
        format!("{}/h5/{appid}/receipts/{receipt_id}", self.public_url)
    }
}

/// The gateway's side of the notifier's card channel: receipt files and links.
pub struct GatewayCardSupport {
    pub store: Arc<dyn Store>,
    pub files: FileStore,
    pub links: Arc<CardLinks>,
}

#[async_trait]
impl CardSupport for GatewayCardSupport {
    async fn receipt_pdf(&self, receipt_id: Uuid) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(receipt) = self.store.card_receipt(receipt_id).await? else {
            return Ok(None);
        };
        match receipt.file {
            Some(f) if f.format == "pdf" => Ok(Some(self.files.get(&f.object_key).await?.to_vec())),
            _ => Ok(None),
        }
    }

    fn card_link(&self, wechat_app_id: &str, receipt_id: Uuid) -> String {
        self.links.link(wechat_app_id, receipt_id)
    }
}

/// The credentials of an agency's official account (its template channel).
async fn credentials(
    store: &dyn Store,
    keyring: &Keyring,
    agency_id: Uuid,
    appid: &str,
) -> anyhow::Result<AppCredentials> {
    let channels = store.channels_for_agency(agency_id).await?;
    let channel = channels
        .iter()
        .find(|c| c.kind == ChannelKind::WechatTemplate && c.wechat_app_id == appid)
        .ok_or_else(|| anyhow::anyhow!("{appid} is not an official-account channel of the agency"))?;
    let secret = keyring
        .open(&channel.secret_sealed, &purpose::wechat_app(appid))
        .map_err(|e| anyhow::anyhow!("the channel secret cannot be opened: {e}"))?;
    Ok(AppCredentials {
        appid: appid.to_owned(),
        secret: SecretString::from(String::from_utf8_lossy(&secret).into_owned()),
    })
}

/// Times a WeChat call into the per-interface figures (`wechat:{appid}:{api}`).
async fn tracked<T, E>(
    tracker: &Tracker,
    appid: &str,
    api: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let out = call.await;
    tracker.record(
        Scope::Interface,
        &format!("wechat:{appid}:{api}"),
        out.is_ok(),
        started.elapsed().as_millis() as u64,
    );
    out
}

/// What enabling the card package for an agency takes.
#[derive(Debug, Clone)]
pub struct EnableCard {
    pub agency_code: String,
    /// The agency's official account (a `wechat_template` channel).
    pub wechat_app_id: String,
    /// The unit's full name on the card.
    pub payee: String,
    /// A logo uploaded to WeChat (an mmbiz.qpic.cn URL).
    pub logo_url: String,
}

/// Enables the card package for an agency: asks the platform's `s_pappid`
/// (`card/invoice/seturl`) and creates the agency's card template
/// (`createbillcard`) once; a repeat keeps the template and updates the rest.
pub async fn enable(
    store: &dyn Store,
    keyring: &Keyring,
    wechat: &WechatClient,
    spec: EnableCard,
) -> anyhow::Result<CardUnit> {
    let agency = store
        .agency_by_code(&spec.agency_code)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no agency with code {}", spec.agency_code))?;
    let app = credentials(store, keyring, agency.id, &spec.wechat_app_id).await?;
    let existing = store
        .card_unit(agency.id)
        .await?
        .filter(|u| u.wechat_app_id == spec.wechat_app_id);
    let (s_pappid, card_id) = match existing {
        Some(u) if u.payee == spec.payee && u.logo_url == spec.logo_url => (u.s_pappid, u.card_id),
        _ => {
            let s_pappid = wechat.invoice_platform_s_pappid(&app).await?;
            let card_id = wechat
                .create_bill_card(
                    &app,
                    &BillCardTemplate {
                        payee: spec.payee.clone(),
                        logo_url: spec.logo_url.clone(),
                    },
                )
                .await?;
            (s_pappid, card_id)
        }
    };
    let now = Timestamp::now();
    Ok(store
        .upsert_card_unit(CardUnit {
            agency_id: agency.id,
            wechat_app_id: spec.wechat_app_id,
            s_pappid,
            card_id,
            payee: spec.payee,
            logo_url: spec.logo_url,
            enabled: true,
            created_at: now,
            updated_at: now,
        })
        .await?)
}

/// Turns the card package off for an agency (the template is kept).
pub async fn disable(store: &dyn Store, agency_code: &str) -> anyhow::Result<CardUnit> {
    let agency = store
        .agency_by_code(agency_code)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no agency with code {agency_code}"))?;
    let unit = store
        .card_unit(agency.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the card package is not enabled for {agency_code}"))?;
    Ok(store
        .upsert_card_unit(CardUnit {
            enabled: false,
            updated_at: Timestamp::now(),
            ..unit
        })
        .await?)
}

#[derive(Debug, Deserialize)]
pub struct CardQuery {
    /// The signed link token of a template message.
    t: Option<String>,
}

/// A small page for a payer (the page helper's error page replaces it when merged).
fn page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .insert_header(("Cache-Control", "no-store"))
        .body(format!(
            "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title></head>\
             <body style=\"font-family:sans-serif;padding:1.5em;max-width:40em;margin:auto\">\
             <h1 style=\"font-size:1.3em\">{title}</h1><p>{text}</p></body></html>"
        ))
}

/// The payer's openid from the pages' web OAuth session of this app, when there is
/// one (the receipt page's link); otherwise the signed link token of the template
/// message must prove the payer.
async fn session_openid(state: &AppState, req: &HttpRequest, appid: &str) -> Option<String> {
    let oa = crate::pages::official_account(state, appid).await.ok()?;
    crate::pages::session::current(req, state, &oa)
        .await
        .ok()
        .flatten()
        .map(|s| s.openid)
}

/// "收入微信卡包": puts one receipt into its payer's WeChat card package. The payer
/// must be the receipt's (the OAuth session's openid, or the signed link of the
/// template message sent to that openid); the agency must have enabled the card
/// package. Obtains the authorisation URL (`getbillauthurl`) and redirects there.
#[utoipa::path(get, path = "/h5/{appId}/receipts/{receiptId}/card", tag = "wechat",
    params(("appId" = String, Path, description = "The official account's WeChat appid"),
        ("receiptId" = String, Path, description = "The receipt's id"),
        ("t" = Option<String>, Query, description = "The signed link token of the template message (`wechat.card_link_secs`)")),
    responses((status = 302, description = "To WeChat's authorisation page (`auth_url`). Failures answer Chinese HTML pages, not problem+json: 403 (invalid or expired link, not the receipt's payer), 404 (no such receipt, card package not enabled), 409 (reversed), 502 (WeChat unreachable)"),
        (status = 200, description = "An HTML page: the receipt already is in the card package", content_type = "text/html")))]
#[get("/h5/{app_id}/receipts/{receipt_id}/card")]
pub async fn take_card(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    q: web::Query<CardQuery>,
) -> HttpResponse {
    let (appid, receipt_id) = path.into_inner();
    let invalid = || {
        page(
            StatusCode::FORBIDDEN,
            "链接无效",
            "该链接无效或已过期，请从公众号消息或票据页面重新打开。",
        )
    };
    let Ok(receipt_id) = Uuid::parse_str(&receipt_id) else {
        return invalid();
    };
    let now = chrono::Utc::now().timestamp();
    let by_link =
        q.t.as_deref()
            .is_some_and(|t| state.card_links.verify(&appid, receipt_id, t, now));
    let session = session_openid(&state, &req, &appid).await;
    if !by_link && session.is_none() {
        return invalid();
    }
    match card_authorisation(&state, &appid, receipt_id, session.as_deref()).await {
        Ok(Taken::Redirect(url)) => HttpResponse::Found()
            .insert_header(("Location", url))
            .insert_header(("Cache-Control", "no-store"))
            .finish(),
        Ok(Taken::Already) => page(
            StatusCode::OK,
            "已收入卡包",
            "这张票据已在您的微信卡包中（我 › 卡包 › 票证）。",
        ),
        Err(Refused::NotPayer) => invalid(),
        Err(Refused::NotFound) => page(
            StatusCode::NOT_FOUND,
            "无法收入卡包",
            "未找到该票据，或本单位未开通微信卡包。",
        ),
        Err(Refused::Reversed) => page(
            StatusCode::CONFLICT,
            "票据已冲红",
            "该票据已冲红作废，不能收入微信卡包。",
        ),
        Err(Refused::Failed(e)) => {
            tracing::warn!(error = %e, "getbillauthurl failed");
            page(
                StatusCode::BAD_GATEWAY,
                "暂时无法收入卡包",
                "微信暂时无法处理，请稍后再试。",
            )
        }
    }
}

enum Taken {
    Redirect(String),
    Already,
}

enum Refused {
    NotPayer,
    NotFound,
    Reversed,
    Failed(anyhow::Error),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Failed(e.into())
    }
}

async fn card_authorisation(
    state: &AppState,
    appid: &str,
    receipt_id: Uuid,
    session_openid: Option<&str>,
) -> Result<Taken, Refused> {
    let receipt = state.store.card_receipt(receipt_id).await?.ok_or(Refused::NotFound)?;
    let unit = state
        .store
        .card_unit(receipt.agency_id)
        .await?
        .filter(|u| u.enabled && u.wechat_app_id == appid)
        .ok_or(Refused::NotFound)?;
    let open_id = receipt.open_id.clone().ok_or(Refused::NotFound)?;
    if session_openid.is_some_and(|s| s != open_id) {
        return Err(Refused::NotPayer);
    }
    if receipt.reversed {
        return Err(Refused::Reversed);
    }
    let order = state
        .store
        .open_card_order(CardOrder {
            order_id: receipt.id.simple().to_string(),
            receipt_id: receipt.id,
            agency_id: receipt.agency_id,
            wechat_app_id: appid.to_owned(),
            open_id,
            card_id: unit.card_id.clone(),
            requested_at: Timestamp::now(),
            authorized_at: None,
            code: None,
            inserted_at: None,
            card_status: None,
            wechat_status: None,
            wechat_status_at: None,
            updated_at: Timestamp::now(),
        })
        .await?;
    // In the package, whether or not WeChat's answer with its code reached us.
    if order.inserted_at.is_some() {
        return Ok(Taken::Already);
    }
    let app = credentials(state.store.as_ref(), &state.keyring, receipt.agency_id, appid)
        .await
        .map_err(Refused::Failed)?;
    let request = BillAuthRequest {
        s_pappid: unit.s_pappid.clone(),
        order_id: order.order_id.clone(),
        money: receipt.total_fen,
        timestamp: chrono::Utc::now().timestamp(),
        source: AuthSource::Web,
        redirect_url: Some(state.card_links.receipt_page(appid, receipt.id)),
    };
    let auth = tracked(
        &state.tracker,
        appid,
        "getbillauthurl",
        state.wechat.get_bill_auth_url(&app, &request),
    )
    .await
    .map_err(|e| Refused::Failed(e.into()))?;
    Ok(Taken::Redirect(auth.auth_url))
}

/// `user_authorize_invoice`: the payer (`open_id` of `appid`) agreed to take the
/// receipt of `order_id`. Confirmed with `getauthdata`, then the PDF upload and the
/// insertion are queued. Another app's order, or another person's agreement, is ignored.
pub async fn authorized(state: &AppState, appid: &str, open_id: &str, order_id: &str) -> anyhow::Result<()> {
    let Some(order) = state.store.card_order(order_id).await? else {
        tracing::warn!(appid, "user_authorize_invoice for an unknown order");
        return Ok(());
    };
    if order.wechat_app_id != appid || order.open_id != open_id {
        tracing::warn!(appid, "user_authorize_invoice of another app or payer: ignored");
        return Ok(());
    }
    if order.authorized_at.is_some() {
        return Ok(());
    }
    let unit = state
        .store
        .card_unit(order.agency_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the agency's card template is gone"))?;
    let app = credentials(state.store.as_ref(), &state.keyring, order.agency_id, appid).await?;
    let auth = tracked(
        &state.tracker,
        appid,
        "getauthdata",
        state.wechat.get_auth_data(&app, &unit.s_pappid, order_id),
    )
    .await?;
    if !auth.is_authorized() {
        tracing::warn!(appid, "user_authorize_invoice not confirmed by getauthdata: ignored");
        return Ok(());
    }
    let pdf = routing::card_delivery(
        DeliveryEvent::Issued,
        ChannelKind::CardPdf,
        appid,
        open_id,
        serde_json::json!({ "orderId": order_id }),
    );
    if state
        .store
        .authorize_card_order(order_id, Timestamp::now(), vec![pdf])
        .await?
        .is_some()
    {
        state.wake.notify().await;
    }
    Ok(())
}

/// The alert of a lock taken through WeChat on a receipt another party holds here.
pub const WECHAT_LOCK_CONFLICT: &str = "wechat_lock_conflict";

/// `update_invoice_status`: a reimburser changed one of our cards through WeChat's
/// own calls. Recorded, and kept here as the party `wechat` holding the receipt:
/// LOCK locks it, CLOSURE closes it (the amount is not reported), INIT releases
/// its lock; so no reimburser of piaojia pays a receipt paid through WeChat. Our
/// own mirror of a state is no news. A receipt another party holds here is left
/// as it is and reported (`wechat_lock_conflict`).
///
/// A card whose code we never learned (insertbill's answer was lost) is known by
/// its first report: the payer's one inserted card of that template without a
/// code. Its code is recorded, the alert `card_code_unknown` resolved, and a
/// state the card missed meanwhile (reversal, lock, closure) is mirrored now.
pub async fn wechat_status(
    state: &AppState,
    card_id: &str,
    code: &str,
    openid: &str,
    status: ReimburseStatus,
) -> anyhow::Result<()> {
    use piaojia_core::parties::WECHAT_REIMBURSER;
    use piaojia_store::{
        ReceiptKey, ReimbursementAction as A, ReimbursementChange, ReimbursementOutcome, ReimbursementRequest,
    };
    let store = state.store.as_ref();
    let order = match store.card_order_by_code(card_id, code).await? {
        Some(order) => order,
        None => match store.learn_card_code(card_id, openid, code).await? {
            Some(order) => {
                tracing::info!(order_id = %order.order_id, "a card's code learned from WeChat's report");
                state
                    .alerter
                    .resolve(CARD_CODE_UNKNOWN, &card_alert_key(&order.order_id))
                    .await?;
                // What the card missed while its code was unknown (a reversal, a
                // reimburser's lock or closure here) is mirrored now.
                if let Some(now) = store.reimbursement_of(order.receipt_id).await?
                    && order.card_status.as_deref() != Some(card_state(now.state).as_str())
                {
                    mirror_reimbursement(store, &state.wake, order.receipt_id, now.state).await?;
                }
                order
            }
            None => {
                tracing::warn!(card_id, "update_invoice_status for a card that is not ours");
                return Ok(());
            }
        },
    };
    store
        .record_wechat_card_status(card_id, code, status.as_str(), Timestamp::now())
        .await?;
    let actions: &[A] = match status {
        ReimburseStatus::Lock => &[A::Lock],
        ReimburseStatus::Closure => &[A::Lock, A::Close],
        ReimburseStatus::Init => &[A::Unlock],
        ReimburseStatus::Cancel => &[],
    };
    let Some(now) = store.reimbursement_of(order.receipt_id).await? else {
        return Ok(());
    };
    // What we set ourselves, or what WeChat's party already holds here.
    let ours =
        order.card_status.as_deref() == Some(status.as_str()) && now.holder.as_deref() != Some(WECHAT_REIMBURSER);
    if actions.is_empty() || ours || card_state(now.state) == status {
        return Ok(());
    }
    let Some(receipt) = store.receipt(now.agency_id, &now.bill_batch_code, &now.bill_no).await? else {
        return Ok(());
    };
    let key = ReceiptKey {
        bill_batch_code: receipt.bill_batch_code.clone(),
        bill_no: receipt.bill_no.clone(),
        random: receipt.random.clone(),
    };
    // A closure that follows WeChat's own lock needs no second lock.
    let actions = if now.holder.as_deref() == Some(WECHAT_REIMBURSER) && now.state == ReimbursementState::Lock {
        actions.iter().copied().filter(|a| *a != A::Lock).collect::<Vec<_>>()
    } else {
        actions.to_vec()
    };
    let request_id = format!("wechat:{card_id}:{code}:{}:{}", status.as_str(), Uuid::now_v7());
    let outcome = store
        .apply_reimbursement(ReimbursementRequest {
            app_id: WECHAT_REIMBURSER.to_owned(),
            fingerprint: request_id.clone(),
            request_id,
            accepted_agency_ids: vec![now.agency_id],
            changes: actions
                .iter()
                .map(|action| ReimbursementChange {
                    key: key.clone(),
                    action: *action,
                    paid_fen: None,
                })
                .collect(),
            reason: Some(format!("update_invoice_status {}", status.as_str())),
            remote_addr: None,
        })
        .await?;
    match outcome {
        ReimbursementOutcome::Applied(_) | ReimbursementOutcome::Replayed(_) => {
            tracing::info!(receipt = %order.receipt_id, status = status.as_str(), "a reimbursement through WeChat kept here");
        }
        ReimbursementOutcome::Refused { refusal, .. } => {
            let holder = now.holder.as_deref().unwrap_or("?");
            tracing::warn!(receipt = %order.receipt_id, holder, ?refusal, status = status.as_str(),
                "WeChat reports a reimbursement of a receipt held here by another party");
            let message = format!(
                "WeChat reports {} on the card of receipt {}/{}, which {holder} holds here ({}): check with both reimbursers",
                status.as_str(),
                now.bill_batch_code,
                now.bill_no,
                now.state.as_str(),
            );
            let key = format!("receipt:{}/{}", now.bill_batch_code, now.bill_no);
            state.alerter.fire(WECHAT_LOCK_CONFLICT, &key, message).await?;
        }
        other => tracing::warn!(receipt = %order.receipt_id, ?other, "a reimbursement through WeChat was not kept"),
    }
    Ok(())
}

fn card_state(state: ReimbursementState) -> ReimburseStatus {
    match state {
        ReimbursementState::Init => ReimburseStatus::Init,
        ReimbursementState::Lock => ReimburseStatus::Lock,
        ReimbursementState::Closure => ReimburseStatus::Closure,
        ReimbursementState::Cancel => ReimburseStatus::Cancel,
    }
}

fn status_delivery(order: &CardOrder, event: DeliveryEvent, to: ReimburseStatus) -> NewDelivery {
    routing::card_delivery(
        event,
        ChannelKind::CardStatus,
        &order.wechat_app_id,
        &order.open_id,
        serde_json::json!({ STATUS: to.as_str(), "orderId": order.order_id }),
    )
}

/// The delivery that sets a reversed receipt's card to CANCEL, when it has a card.
pub async fn cancel_delivery(store: &dyn Store, receipt_id: Uuid) -> Result<Option<NewDelivery>, StoreError> {
    Ok(store
        .card_order_for_receipt(receipt_id)
        .await?
        .filter(|o| o.code.is_some())
        .map(|o| status_delivery(&o, DeliveryEvent::Reversed, ReimburseStatus::Cancel)))
}

/// Mirrors a receipt's reimbursement state (a reimburser's LOCK or CLOSURE, an
/// unlock back to INIT) to its card in the payer's card package, when it has one:
/// queues a `card_status` delivery (`updatestatus`, retried like every send).
/// Returns whether there was a card. For the reimbursement flow to call after
/// it changed the state.
pub async fn mirror_reimbursement(
    store: &dyn Store,
    wake: &piaojia_notifier::Wake,
    receipt_id: Uuid,
    state: ReimbursementState,
) -> Result<bool, StoreError> {
    let Some(order) = store
        .card_order_for_receipt(receipt_id)
        .await?
        .filter(|o| o.code.is_some())
    else {
        return Ok(false);
    };
    let event = if state == ReimbursementState::Cancel {
        DeliveryEvent::Reversed
    } else {
        DeliveryEvent::Issued
    };
    store
        .queue_card_deliveries(
            order.receipt_id,
            order.agency_id,
            vec![status_delivery(&order, event, card_state(state))],
        )
        .await?;
    wake.notify().await;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> CardLinks {
        let keyring = Keyring::from_config(
            &format!("k1:{}", piaojia_core::pii::generate_key()),
            None,
            &piaojia_core::pii::generate_key(),
        )
        .expect("keyring");
        CardLinks::new(&keyring, "https://piaojia.example/", Duration::from_secs(600))
    }

    #[test]
    fn card_links_are_bound_to_app_receipt_and_time() {
        let l = links();
        let id = Uuid::now_v7();
        let now = chrono::Utc::now().timestamp();
        let t = l.token("wxA", id, now + 60);
        assert!(l.verify("wxA", id, &t, now));
        assert!(!l.verify("wxB", id, &t, now), "another app");
        assert!(!l.verify("wxA", Uuid::now_v7(), &t, now), "another receipt");
        assert!(!l.verify("wxA", id, &t, now + 61), "expired");
        let forged = t.replacen(&(now + 60).to_string(), &(now + 9999).to_string(), 1);
        assert!(!l.verify("wxA", id, &forged, now), "expiry is signed");
        assert!(!l.verify("wxA", id, "garbage", now));
        let link = l.link("wxA", id);
        assert!(link.starts_with(&format!("https://piaojia.example/h5/wxA/receipts/{id}/card?t=")));
    }
}
