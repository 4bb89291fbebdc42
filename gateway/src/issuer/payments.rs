//! "Payments we know": the hospital's payment system reports a WeChat Pay
//! payment the moment it succeeds, so that the receipt of that order reaches the
//! payer's WeChat and wallet even when it is pushed without an `openID`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, post, web};
use chrono::{DateTime, Utc};
use piaojia_core::money;
use piaojia_store::{ChannelKind, NewWechatPayment, PaymentOutcome, WechatPayment};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::routes::{parse_json, require_json};
use crate::auth::Issuer;
use crate::error::{ApiError, ErrorCode, Problem};
use crate::state::AppState;

/// A WeChat Pay payment that succeeded. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequest {
    /// WeChat Pay's `transaction_id`: digits, at most 32. Receipts name it as `weChatOrderNo`.
    #[schema(example = "4200001234202611230000000001")]
    pub we_chat_order_no: Option<String>,
    /// The official account or mini-program the payer paid in: one of the
    /// agency's WeChat apps (channels `wechat_template` or `wechat_subscribe`).
    #[schema(example = "wx1c2d3e4f5a6b7c8d")]
    pub app_id: Option<String>,
    /// The payer's openid in that app (WeChat Pay's `payer.openid`).
    #[schema(example = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")]
    pub open_id: Option<String>,
    /// Yuan, at most 2 decimals, as a string or a number.
    #[schema(value_type = String, example = "128.50")]
    pub total_amt: Option<Value>,
    /// RFC 3339 with offset (WeChat Pay's `success_time`).
    #[schema(example = "2026-11-23T09:28:00+08:00")]
    pub paid_at: Option<String>,
}

/// A payment as piaojia holds it. Times are UTC.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    #[schema(example = "4200001234202611230000000001")]
    pub we_chat_order_no: String,
    #[schema(example = "wx1c2d3e4f5a6b7c8d")]
    pub app_id: String,
    pub open_id: String,
    #[schema(example = "128.50")]
    pub total_amt: String,
    #[schema(example = 12850)]
    pub total_fen: i64,
    pub paid_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl From<&WechatPayment> for PaymentView {
    fn from(p: &WechatPayment) -> Self {
        Self {
            we_chat_order_no: p.wechat_order_no.clone(),
            app_id: p.wechat_app_id.clone(),
            open_id: p.openid.clone(),
            total_amt: money::format_yuan(p.total_fen),
            total_fen: p.total_fen,
            paid_at: p.paid_at.into(),
            received_at: p.received_at.into(),
        }
    }
}

fn text(v: &Option<String>) -> String {
    v.as_deref().map(str::trim).unwrap_or_default().to_owned()
}

impl PaymentRequest {
    /// Every field checked (all problems at once); `apps` are the agency's WeChat appids.
    fn validate(self, issuer: &Issuer, apps: &[String]) -> Result<NewWechatPayment, ApiError> {
        let mut err = ApiError::validation(Vec::new());
        let mut bad = false;
        let mut fail = |pointer: &str, code: &str, detail: &str| {
            bad = true;
            err = std::mem::replace(&mut err, ApiError::validation(Vec::new())).field(pointer, code, detail);
        };
        let order_no = text(&self.we_chat_order_no);
        if order_no.is_empty() {
            fail("/weChatOrderNo", "required", "WeChat Pay's transaction_id");
        } else if !order_no.bytes().all(|b| b.is_ascii_digit()) {
            fail("/weChatOrderNo", "invalid_format", "digits only");
        } else if order_no.len() > 32 {
            fail("/weChatOrderNo", "too_long", "at most 32 digits");
        }
        let app_id = text(&self.app_id);
        if app_id.is_empty() {
            fail("/appId", "required", "the appid the payer paid in");
        } else if !apps.contains(&app_id) {
            fail(
                "/appId",
                "invalid_value",
                "not one of this agency's WeChat apps (official account or mini-program)",
            );
        }
        // As receipts check `openID`.
        let open_id = text(&self.open_id);
        if open_id.is_empty() {
            fail("/openId", "required", "the payer's openid in that app");
        } else if !open_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            fail(
                "/openId",
                "invalid_format",
                "must contain only letters, digits, '_' and '-'",
            );
        } else if open_id.len() > 64 {
            fail("/openId", "too_long", "must be at most 64 characters");
        }
        let total_fen = match self
            .total_amt
            .as_ref()
            .filter(|v| !v.is_null() && v.as_str() != Some(""))
        {
            None => {
                fail("/totalAmt", "required", "yuan, at most 2 decimals");
                None
            }
            Some(v) => match money::amount_from_json(v) {
                Ok(fen) => Some(fen),
                Err(e) => {
                    fail("/totalAmt", e.code(), &e.to_string());
                    None
                }
            },
        };
        let paid_at = match self.paid_at.as_deref().map(str::trim) {
            None | Some("") => {
                fail("/paidAt", "required", "RFC 3339 time with offset");
                None
            }
            Some(t) => match DateTime::parse_from_rfc3339(t) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    fail(
                        "/paidAt",
                        "invalid_format",
                        "RFC 3339 time with offset, e.g. 2026-11-23T09:28:00+08:00",
                    );
                    None
                }
            },
        };
        match (bad, total_fen, paid_at) {
            (false, Some(total_fen), Some(paid_at)) => Ok(NewWechatPayment {
                agency_id: issuer.agency.id,
                wechat_order_no: order_no,
                wechat_app_id: app_id,
                openid: open_id,
                total_fen,
                paid_at: paid_at.into(),
                issuer_app_id: issuer.app_id.clone(),
            }),
            _ => Err(err),
        }
    }
}

/// Report a WeChat Pay payment the moment it succeeds.
///
/// A receipt of this order (`weChatOrderNo`) pushed without an `openID` is then
/// treated as if it carried the payer's: announced on the channel of the app
/// paid in (template message linking the receipt's page, or subscribe message)
/// and collected into that openid's wallet before any registration. Receipts of
/// the order pushed earlier are delivered now, once. Answers 201 with the payment;
/// the same report again answers 200 with the first record; another payer (or
/// amount, app, time) for the same order answers 409 `wechat_payment_conflict`.
#[utoipa::path(
    post,
    path = "/v1/wechat-payments",
    tag = "issuer",
    security(("pj1_hmac" = [])),
    request_body(content = PaymentRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded; receipts of the order pushed before it are delivered", body = PaymentView),
        (status = 200, description = "Reported before with the same content: the first record", body = PaymentView),
        (status = 400, description = "Not JSON, or a field of the wrong JSON type (`invalid_json`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The app is disabled (`app_disabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order was reported with another payer or content (`wechat_payment_conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json` (`unsupported_media_type`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/wechat-payments")]
pub async fn report_payment(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    issuer: Issuer,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let request: PaymentRequest = parse_json(&issuer.body)?;
    let apps: Vec<String> = state
        .apps
        .channels(issuer.agency.id)
        .await?
        .iter()
        .filter(|c| ChannelKind::PAYER_PREFERENCE.contains(&c.kind))
        .map(|c| c.wechat_app_id.clone())
        .collect();
    let payment = request.validate(&issuer, &apps)?;
    match state.intake.report_payment(payment).await? {
        PaymentOutcome::Created(p) => Ok(HttpResponse::build(StatusCode::CREATED).json(PaymentView::from(&p))),
        PaymentOutcome::Duplicate(p) => Ok(HttpResponse::Ok().json(PaymentView::from(&p))),
        PaymentOutcome::Conflict(_) => Err(ApiError::with(
            ErrorCode::WechatPaymentConflict,
            "this weChatOrderNo was reported before with another payer, amount, app or time",
        )),
    }
}
