//! Our message server (the callback URL configured in the official account):
//! WeChat's GET verification and POSTed events in plain or secure mode. WeChat
//! waits 5 s and retries three times: we verify, write the decrypted event to the
//! store's inbox (one insert, de-duplicated by `MsgId`, or FromUserName +
//! CreateTime + Event + EventKey), acknowledge with `success`, and an inbox
//! worker of any gateway handles it afterwards, once ([`crate::inbox`]). Only a
//! `CLICK` on the "我的票据" menu entry is answered with a passive reply (a link
//! to the payer's receipts, encrypted in secure mode).
//!
//! Events: `subscribe` / `unsubscribe` (recorded: an unfollowed payer gets no
//! template message), `subscribe` with `qrscene_` and `SCAN` (scan to view, see
//! [`crate::scan`]), `CLICK`, `TEMPLATESENDJOBFINISH` (the template delivery's
//! final status), and the card package's `user_authorize_invoice` and
//! `update_invoice_status` (see [`crate::card_package`]).
//!
//! Only WeChat gets in: the signature must hold; its timestamp must be within
//! `security.clock_skew_secs` of ours; a (timestamp, nonce) pair is bound to the
//! body it first came with (WeChat's retries repeat both, a replay carrying another
//! body is refused; plain mode's signature does not cover the body); an app with an
//! EncodingAESKey accepts secure mode only; and an event reaches only its own app's
//! deliveries, along the transitions the delivery queue allows.

use std::time::Instant;

use actix_web::{HttpResponse, get, post, web};
use piaojia_notifier::tracker::Scope;
use piaojia_store::{ChannelKind, DeliveryStatus, Timestamp};
use piaojia_wechat::event::{self, Article, EventKind, PassiveReply, TemplateJobStatus, TypedEvent};
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
/// `msg_signature`). Verified, written to the inbox (WeChat's retries insert
/// nothing), answered `success`, and handled afterwards by an inbox worker, once
/// per event (failures retried with backoff). A `CLICK` on the "我的票据" entry is
/// answered with a passive reply linking to the payer's receipts.
#[utoipa::path(post, path = "/v1/wechat/{appid}/events", tag = "wechat",
    params(("appid" = String, Path), ("signature" = Option<String>, Query), ("timestamp" = String, Query), ("nonce" = String, Query),
        ("encrypt_type" = Option<String>, Query), ("msg_signature" = Option<String>, Query)),
    request_body(content = String, content_type = "text/xml"),
    responses((status = 200, description = "`success`, or a passive reply (`news`, encrypted in secure mode) to a `CLICK` on the menu's `wechat.menu_receipts_key`", content_type = "text/plain", body = String),
        (status = 400, description = "`invalid_body`: not UTF-8, not XML, or XML with a DOCTYPE or entities", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`bad_signature`, `stale_timestamp` (more than `security.clock_skew_secs` off), `replayed` (a timestamp and nonce seen with another body), `secure_mode_required` (plain mode for an app with an EncodingAESKey)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_app`: no message server configured", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: over 256 KiB", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`database_unavailable` (the event could not be kept in the inbox, so it is not acknowledged: WeChat retries), `nonce_store_unavailable`", body = crate::error::Problem, content_type = "application/problem+json")))]
#[post("/v1/wechat/{appid}/events")]
pub async fn receive(
    state: web::Data<AppState>,
    appid: web::Path<String>,
    q: web::Query<Signed>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let appid = appid.into_inner();
    let s = secrets(&state, &appid).await?;
    let started = Instant::now();
    // Callbacks of a configured app only: a stranger's appids make no figures. An
    // event we could not keep counts as a failed callback (WeChat retries it).
    let figure = |ok: bool| {
        state.tracker.record(
            Scope::Interface,
            &format!("wechat:{appid}:message_server"),
            ok,
            started.elapsed().as_millis() as u64,
        );
    };
    let (ev, plain, crypt) = accept(&state, &appid, &q, &body, &s)
        .await
        .inspect_err(|_| figure(false))?;
    // The only synchronous answer: a passive reply has no side effects, so a retry
    // gets it again (WeChat retries when it did not arrive).
    if let Ok(typed) = ev.typed()
        && let EventKind::Click { key } = &typed.kind
        && *key == state.settings.wechat.menu_receipts_key
    {
        let reply = receipts_reply(&state, &appid, &typed);
        let body = match &crypt {
            Some(c) => reply.to_secure_xml(c, &q.timestamp, &q.nonce),
            None => reply.to_xml(),
        };
        figure(true);
        track_event(&state, &appid, "CLICK", true, started);
        return Ok(HttpResponse::Ok().content_type("application/xml").body(body));
    }
    // Kept before WeChat hears from us, so an acknowledged event survives any crash;
    // the insert is the de-duplication of WeChat's retries. Handled afterwards by
    // an inbox worker ([`crate::inbox`]): WeChat's 5 s never wait for our work.
    let name = ev.event.clone().or(ev.msg_type.clone()).unwrap_or_default();
    let kept = state.inbox.record(&state, &appid, ev.dedup_key(), name, &plain).await;
    figure(kept.is_ok());
    kept?;
    Ok(success())
}

fn success() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("success")
}

/// Per-event figures of the message server (`message_server:{appid}:{event}`).
pub(crate) fn track_event(state: &AppState, appid: &str, event: &str, ok: bool, started: Instant) {
    state.tracker.record(
        Scope::Channel,
        &format!("message_server:{appid}:{event}"),
        ok,
        started.elapsed().as_millis() as u64,
    );
}

/// Verifies one push and parses it; the secure-mode crypt when it came encrypted.
async fn accept(
    state: &AppState,
    appid: &str,
    q: &Signed,
    body: &[u8],
    s: &AppSecrets,
) -> Result<(event::Event, String, Option<MsgCrypt>), ApiError> {
    if body.len() > event::MAX_EVENT_BYTES {
        return Err(ApiError::payload_too_large(event::MAX_EVENT_BYTES));
    }
    let xml =
        std::str::from_utf8(body).map_err(|_| ApiError::with(ErrorCode::InvalidBody, "the event is not UTF-8"))?;
    let secure = q.encrypt_type.as_deref() == Some("aes");
    let (plain, crypt) = if secure {
        let envelope = event::parse_event(xml).map_err(|e| ApiError::with(ErrorCode::InvalidBody, e.to_string()))?;
        let encrypt = envelope.encrypt.unwrap_or_default();
        let given = q.msg_signature.as_deref().unwrap_or_default();
        if !msgcrypt::verify_msg_signature(&s.token, &q.timestamp, &q.nonce, &encrypt, given) {
            return Err(refuse());
        }
        let key = s.aes_key.as_deref().ok_or_else(refuse)?;
        let crypt = MsgCrypt::new(&s.token, key, appid).map_err(|_| refuse())?;
        let plain = crypt.decrypt(&encrypt).map_err(|_| refuse())?;
        (plain, Some(crypt))
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
        (xml.to_owned(), None)
    };
    check_clock(state, &q.timestamp)?;
    let body_hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
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
        // WeChat's own retry (Same) is handled once further on.
        Binding::First | Binding::Same => {}
        Binding::Other => {
            return Err(ApiError::with(
                ErrorCode::Replayed,
                "this timestamp and nonce came before with another message",
            ));
        }
    }
    let ev = event::parse_event(&plain).map_err(|e| ApiError::with(ErrorCode::InvalidBody, e.to_string()))?;
    Ok((ev, plain, crypt))
}

/// The passive reply to "我的票据": one article linking to the payer's receipts.
fn receipts_reply(state: &AppState, appid: &str, typed: &TypedEvent) -> PassiveReply {
    let base = state.base_url.trim_end_matches('/');
    PassiveReply::news(
        typed,
        chrono::Utc::now().timestamp(),
        Article {
            title: "我的票据".into(),
            description: "查看在本单位开具的电子票据，可下载、收入微信卡包。".into(),
            pic_url: String::new(),
            url: format!("{base}/h5/{appid}/receipts"),
        },
    )
}

/// What an event does, after its acknowledgement (run by the inbox worker).
pub(crate) async fn handle(state: &AppState, appid: &str, ev: event::Event) -> anyhow::Result<()> {
    if ev.is_event(event::EVENT_TEMPLATE_SEND_JOB_FINISH) {
        return template_job_finished(state, appid, &ev).await;
    }
    let typed = match ev.typed() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(appid, error = %e, "an event without the fields its type needs: ignored");
            return Ok(());
        }
    };
    let openid = typed.from_user_name.as_str();
    let at = chrono::DateTime::from_timestamp(typed.create_time, 0)
        .map(Timestamp::from)
        .unwrap_or_else(Timestamp::now);
    match &typed.kind {
        EventKind::Subscribe { scene, .. } => {
            state.store.set_following(appid, openid, true, at).await?;
            if let Some(scene) = scene {
                crate::scan::deliver_scanned_receipt(state, appid, openid, scene).await?;
            }
        }
        EventKind::Scan { scene, .. } => {
            crate::scan::deliver_scanned_receipt(state, appid, openid, scene).await?;
        }
        EventKind::Unsubscribe => state.store.set_following(appid, openid, false, at).await?,
        EventKind::UserAuthorizeInvoice {
            succ_order_id: Some(order_id),
            ..
        } => crate::card_package::authorized(state, appid, openid, order_id).await?,
        EventKind::UserAuthorizeInvoice { .. } => {
            tracing::info!(appid, "user_authorize_invoice without a successful order");
        }
        EventKind::UpdateInvoiceStatus { status, card_id, code } => {
            crate::card_package::wechat_status(state, card_id, code, openid, *status).await?;
        }
        // Other menu keys, messages and events need nothing of us.
        _ => {}
    }
    Ok(())
}

/// `TEMPLATESENDJOBFINISH`: the template message's final status, recorded on its
/// delivery (and in the figures per app); anything but `success` ends it failed.
async fn template_job_finished(state: &AppState, appid: &str, ev: &event::Event) -> anyhow::Result<()> {
    let msg_id = ev.job_msg_id.clone().unwrap_or_default();
    let status = ev.status.clone().unwrap_or_default();
    let success = TemplateJobStatus::parse(&status) == TemplateJobStatus::Success;
    state
        .tracker
        .record(Scope::Channel, &format!("wechat_template_job:{appid}"), success, 0);
    // Scoped to this app's template sends: another app's token cannot touch them.
    let interface = piaojia_notifier::routing::wechat_interface(appid, ChannelKind::WechatTemplate);
    let Some(delivery) = state.store.delivery_by_provider_ref(&interface, &msg_id).await? else {
        return Ok(());
    };
    if !state
        .store
        .record_provider_report(delivery.id, &status, Timestamp::now())
        .await?
    {
        // A second report of one job: the first stands.
        return Ok(());
    }
    if !success {
        // Only delivered → failed: a late or forged report cannot revive or end
        // a delivery in any other state.
        let error = Some(format!("TEMPLATESENDJOBFINISH: {status}"));
        state
            .store
            .settle_delivery(delivery.id, DeliveryStatus::Failed, error)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use piaojia_wechat::event::ReplyBody;

    use super::*;

    fn vector(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/wechat_vectors.json");
        let text = std::fs::read_to_string(&path).expect("read vectors");
        let all: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
        all[name].clone()
    }

    /// Our secure-mode replies are WeChat's algorithm: with the official vector's
    /// random bytes the envelope is the official one.
    #[test]
    fn secure_replies_follow_the_official_vector() {
        let v = vector("secure_reply");
        let s = |k: &str| v[k].as_str().expect("vector field").to_owned();
        let crypt = MsgCrypt::new(&s("token"), &s("encoding_aes_key"), &s("appid")).expect("key");
        let random: [u8; 16] = s("random16").as_bytes().try_into().expect("16 bytes");
        let xml = crypt.sealed_reply_with_random(&s("plaintext"), &s("TimeStamp"), &s("Nonce"), &random);
        let env = event::parse_event(&xml).expect("envelope");
        assert_eq!(env.encrypt.as_deref(), Some(s("Encrypt").as_str()));
        assert_eq!(env.msg_signature.as_deref(), Some(s("MsgSignature").as_str()));
        // And a "我的票据" reply round-trips through the same algorithm.
        let typed = TypedEvent {
            to_user_name: "gh_1".into(),
            from_user_name: "o-user".into(),
            create_time: 1,
            kind: EventKind::Click { key: "K".into() },
        };
        let reply = PassiveReply::news(
            &typed,
            2,
            Article {
                title: "我的票据".into(),
                url: "https://x.example/h5/wx/receipts".into(),
                ..Article::default()
            },
        );
        let sealed = reply.to_secure_xml(&crypt, "1713424427", "415670741");
        let env = event::parse_event(&sealed).expect("envelope");
        let enc = env.encrypt.expect("Encrypt");
        assert!(crypt.verify_msg_signature("1713424427", "415670741", &enc, &env.msg_signature.expect("sig")));
        let plain = crypt.decrypt(&enc).expect("decrypts");
        assert!(plain.contains("<Url><![CDATA[https://x.example/h5/wx/receipts]]></Url>"));
        assert!(matches!(reply.body, ReplyBody::News(_)));
    }
}
