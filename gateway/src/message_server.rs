//! Our message server (the callback URL configured in the official account):
//! WeChat's GET verification and POSTed events in plain or secure mode. We answer
//! at once and de-duplicate, since WeChat retries three times within 5 s.
//! `TEMPLATESENDJOBFINISH` reports a template message's final status.
//!
//! Only WeChat gets in: the signature must hold; its timestamp must be within
//! `security.clock_skew_secs` of ours; a (timestamp, nonce) pair is bound to the
//! body it first came with (WeChat's retries repeat both, a replay carrying another
//! body is refused; plain mode's signature does not cover the body); an app with an
//! EncodingAESKey accepts secure mode only; and an event reaches only its own app's
//! deliveries, along the transitions the delivery queue allows.

use actix_web::{HttpResponse, get, post, web};
use piaojia_store::{ChannelKind, DeliveryStatus};
use piaojia_wechat::event;
use piaojia_wechat::msgcrypt::{self, MsgCrypt};
use serde::Deserialize;

use crate::error::{ApiError, ErrorCode};
use crate::nonces::Binding;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(verify).service(receive);
}

#[derive(Debug, Deserialize)]
pub struct Signed {
    signature: Option<String>,
    timestamp: String,
    nonce: String,
    echostr: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
}

struct AppSecrets {
    token: String,
    aes_key: Option<String>,
}

async fn secrets(state: &AppState, appid: &str) -> Result<AppSecrets, ApiError> {
    let channels = state.store.channel_by_wechat_app(appid).await?;
    let purpose = piaojia_core::pii::purpose::wechat_app(appid);
    let open = |sealed: &Option<String>| {
        sealed
            .as_ref()
            .and_then(|s| state.keyring.open(s, &purpose).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    channels
        .iter()
        .find_map(|c| {
            open(&c.message_token_sealed).map(|token| AppSecrets {
                token,
                aes_key: open(&c.encoding_aes_key_sealed),
            })
        })
        .ok_or_else(|| ApiError::with(ErrorCode::UnknownApp, "no message server is configured for this appid"))
}

fn refuse() -> ApiError {
    ApiError::with(ErrorCode::BadSignature, "the WeChat signature does not match")
}

/// WeChat signs with its clock: a timestamp far from ours is a replay or a forgery.
fn check_clock(state: &AppState, timestamp: &str) -> Result<(), ApiError> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| ApiError::with(ErrorCode::StaleTimestamp, "the timestamp is not a unix time"))?;
    let skew = (chrono::Utc::now().timestamp() - ts).abs();
    if skew > state.settings.security.clock_skew.as_secs() as i64 {
        return Err(ApiError::with(
            ErrorCode::StaleTimestamp,
            "the timestamp is too far from the server clock",
        ));
    }
    Ok(())
}

/// WeChat's URL verification of our message server: answers `echostr` when
/// `signature` = sha1(sorted(token, timestamp, nonce)) holds.
#[utoipa::path(get, path = "/v1/wechat/{appid}/events", tag = "wechat",
    params(("appid" = String, Path), ("signature" = String, Query), ("timestamp" = String, Query), ("nonce" = String, Query), ("echostr" = String, Query)),
    responses((status = 200, description = "`echostr`", content_type = "text/plain", body = String),
        (status = 403, description = "`bad_signature`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_app`: no message server configured", body = crate::error::Problem, content_type = "application/problem+json")))]
#[get("/v1/wechat/{appid}/events")]
pub async fn verify(
    state: web::Data<AppState>,
    appid: web::Path<String>,
    q: web::Query<Signed>,
) -> Result<HttpResponse, ApiError> {
    let s = secrets(&state, &appid).await?;
    let sig = q.signature.as_deref().unwrap_or_default();
    if !msgcrypt::verify_signature(&s.token, &q.timestamp, &q.nonce, sig) {
        return Err(refuse());
    }
    check_clock(&state, &q.timestamp)?;
    // The signature covers only (token, timestamp, nonce): spent here, it cannot be
    // reused to carry a POST body of someone else's making.
    state
        .nonces
        .bind(
            &format!("wxsig:{appid}"),
            &format!("{}:{}", q.timestamp, q.nonce),
            "GET",
        )
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::NonceStoreUnavailable, e))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain")
        .body(q.echostr.clone().unwrap_or_default()))
}

/// Events WeChat pushes (XML, plain or secure mode with `encrypt_type=aes` and
/// `msg_signature`). Answered `success` at once; each event is handled once.
/// `TEMPLATESENDJOBFINISH` sets the final state of the template delivery.
#[utoipa::path(post, path = "/v1/wechat/{appid}/events", tag = "wechat",
    params(("appid" = String, Path), ("signature" = Option<String>, Query), ("timestamp" = String, Query), ("nonce" = String, Query),
        ("encrypt_type" = Option<String>, Query), ("msg_signature" = Option<String>, Query)),
    request_body(content = String, content_type = "text/xml"),
    responses((status = 200, description = "`success`", content_type = "text/plain", body = String),
        (status = 400, description = "`invalid_body`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`bad_signature`, `stale_timestamp` (more than `security.clock_skew_secs` off), `replayed` (a timestamp and nonce seen with another body), `secure_mode_required` (plain mode for an app with an EncodingAESKey)", body = crate::error::Problem, content_type = "application/problem+json")))]
#[post("/v1/wechat/{appid}/events")]
pub async fn receive(
    state: web::Data<AppState>,
    appid: web::Path<String>,
    q: web::Query<Signed>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let s = secrets(&state, &appid).await?;
    if body.len() > event::MAX_EVENT_BYTES {
        return Err(ApiError::payload_too_large(event::MAX_EVENT_BYTES));
    }
    let xml =
        std::str::from_utf8(&body).map_err(|_| ApiError::with(ErrorCode::InvalidBody, "the event is not UTF-8"))?;
    let secure = q.encrypt_type.as_deref() == Some("aes");
    let plain = if secure {
        let envelope = event::parse_event(xml).map_err(|e| ApiError::with(ErrorCode::InvalidBody, e.to_string()))?;
        let encrypt = envelope.encrypt.unwrap_or_default();
        let given = q.msg_signature.as_deref().unwrap_or_default();
        if !msgcrypt::verify_msg_signature(&s.token, &q.timestamp, &q.nonce, &encrypt, given) {
            return Err(refuse());
        }
        let key = s.aes_key.ok_or_else(refuse)?;
        let crypt = MsgCrypt::new(&s.token, &key, &appid).map_err(|_| refuse())?;
        crypt.decrypt(&encrypt).map_err(|_| refuse())?
    } else {
        if !msgcrypt::verify_signature(
            &s.token,
            &q.timestamp,
            &q.nonce,
            q.signature.as_deref().unwrap_or_default(),
        ) {
            return Err(refuse());
        }
        if s.aes_key.is_some() {
            // The account is configured for secure mode: a plain message is not WeChat's.
            return Err(ApiError::with(
                ErrorCode::SecureModeRequired,
                "this account's message server accepts secure mode only",
            ));
        }
        xml.to_owned()
    };
    check_clock(&state, &q.timestamp)?;
    let body_hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, &body));
    match state
        .nonces
        .bind(
            &format!("wxsig:{appid}"),
            &format!("{}:{}", q.timestamp, q.nonce),
            &body_hash,
        )
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::NonceStoreUnavailable, e))?
    {
        Binding::First => {}
        // WeChat's own retry: handled once below.
        Binding::Same => {}
        Binding::Other => {
            return Err(ApiError::with(
                ErrorCode::Replayed,
                "this timestamp and nonce came before with another message",
            ));
        }
    }
    let ev = event::parse_event(&plain).map_err(|e| ApiError::with(ErrorCode::InvalidBody, e.to_string()))?;
    // WeChat retries: handle each event once.
    if !state
        .nonces
        .first_use(&format!("wxevent:{appid}"), &ev.dedup_key())
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::NonceStoreUnavailable, e))?
    {
        return Ok(HttpResponse::Ok().content_type("text/plain").body("success"));
    }
    // Scan to view: a parametric QR code of one receipt, scanned by a follower
    // (`SCAN`) or a new follower (`subscribe` with `qrscene_`).
    if (ev.is_event(event::EVENT_SCAN) || ev.is_event(event::EVENT_SUBSCRIBE))
        && let (Some(scene), Some(openid)) = (ev.qr_scene(), ev.from_user_name.as_deref())
    {
        crate::pages::deliver_scanned_receipt(&state, &appid, openid, scene).await?;
    }
    if ev.is_event(event::EVENT_TEMPLATE_SEND_JOB_FINISH) {
        let msg_id = ev.job_msg_id.clone().unwrap_or_default();
        let status = ev.status.clone().unwrap_or_default();
        // Scoped to this app's template sends: another app's token cannot touch them.
        let interface = piaojia_notifier::routing::wechat_interface(&appid, ChannelKind::WechatTemplate);
        if status != "success"
            && let Some(delivery) = state.store.delivery_by_provider_ref(&interface, &msg_id).await?
        {
            // Only delivered → failed: a late or forged report cannot revive or end
            // a delivery in any other state.
            let error = Some(format!("TEMPLATESENDJOBFINISH: {status}"));
            state
                .store
                .settle_delivery(delivery.id, DeliveryStatus::Failed, error)
                .await?;
        }
    }
    Ok(HttpResponse::Ok().content_type("text/plain").body("success"))
}
