//! The issuer API's routes (fixed paths: hospitals code against them).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use piaojia_core::receipt::{self, ReceiptInputError};
use piaojia_store::Reversal;
use serde::Deserialize;
use utoipa::ToSchema;

use super::intake::IntakeError;
use super::views::ReceiptView;
use crate::auth::Issuer;
use crate::error::{ApiError, ErrorCode, Problem};
use crate::files::FileError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(push_receipt)
        .service(get_receipt)
        .service(reverse_receipt)
        .service(reimbursement_history)
        .service(receipt_qrcode)
        .service(super::payments::report_payment);
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Conflict => ApiError::with(ErrorCode::ReceiptConflict, e.to_string()),
            IntakeError::NotFound => ApiError::with(ErrorCode::ReceiptNotFound, e.to_string()),
            IntakeError::Locked(_) => ApiError::with(ErrorCode::ReceiptLocked, e.to_string()),
            IntakeError::ReversalConflict => ApiError::with(ErrorCode::ReversalConflict, e.to_string()),
            IntakeError::File(FileError::TooLarge { limit }) => ApiError::with(
                ErrorCode::FileTooLarge,
                format!("the receipt file exceeds {limit} bytes"),
            )
            .field("/file", "file_too_large", format!("at most {limit} bytes")),
            IntakeError::File(FileError::HostNotAllowed(host)) => ApiError::with(
                ErrorCode::FileHostNotAllowed,
                format!("host {host:?} is not on this agency's file host allow-list"),
            )
            .field(
                "/file/url",
                "host_not_allowed",
                "ask the operator to allow-list this host",
            ),
            IntakeError::File(FileError::PrivateAddress) => ApiError::with(
                ErrorCode::FileHostNotAllowed,
                "the file URL resolves to a private address",
            )
            .field(
                "/file/url",
                "private_address",
                "private and loopback addresses are refused",
            ),
            IntakeError::File(FileError::InsecureScheme) => ApiError::with(
                ErrorCode::FileHostNotAllowed,
                "the file URL must be https",
            )
            .field("/file/url", "https_required", "files are fetched over https only"),
            IntakeError::File(FileError::Fetch(why)) => ApiError::with(
                ErrorCode::FileFetchFailed,
                format!("the receipt file could not be fetched: {why}"),
            )
            .field("/file/url", "fetch_failed", why),
            IntakeError::File(FileError::Store(e)) => ApiError::internal(e),
            IntakeError::Store(e) => e.into(),
        }
    }
}

fn receipt_error(e: ReceiptInputError) -> ApiError {
    match e {
        ReceiptInputError::Json { pointer, message } => ApiError::invalid_json(pointer, message),
        ReceiptInputError::Invalid(errors) => ApiError::validation(errors),
    }
}

pub(crate) fn require_json(req: &actix_web::HttpRequest) -> Result<(), ApiError> {
    let ok = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::with(
            ErrorCode::UnsupportedMediaType,
            "send Content-Type: application/json",
        ))
    }
}

/// Push one issued receipt.
///
/// Answers 201 with the stored receipt and its delivery plan; the same receipt
/// pushed again answers 200 with the first result; a different receipt with the
/// same `billBatchCode` + `billNo` answers 409 `receipt_conflict`. The body follows
/// the dominant vendor's field names (DOMAIN.md §2); unknown fields are ignored.
#[utoipa::path(
    post,
    path = "/v1/receipts",
    tag = "issuer",
    security(("pj1_hmac" = [])),
    request_body(content = piaojia_core::receipt::WireReceipt, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored; deliveries planned", body = ReceiptView),
        (status = 200, description = "Pushed before with the same content: the first result", body = ReceiptView),
        (status = 400, description = "Not JSON, or a field of the wrong JSON type (`invalid_json`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Signature missing, malformed, stale, wrong or replayed: `auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The app is disabled (`app_disabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another receipt holds this code and number (`receipt_conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large (`payload_too_large`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json` (`unsupported_media_type`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`validation_failed`) or file problems (`file_too_large`, `file_host_not_allowed`, `file_fetch_failed`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/receipts")]
pub async fn push_receipt(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    issuer: Issuer,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let receipt = receipt::parse_push(&issuer.body).map_err(receipt_error)?;
    let accepted = state.intake.push(&issuer, receipt).await?;
    let status = if accepted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(
        receipt_id = %accepted.receipt.id,
        created = accepted.created,
        deliveries = accepted.receipt.deliveries.len(),
        "receipt accepted"
    );
    Ok(HttpResponse::build(status).json(ReceiptView::build(&state, &accepted.receipt)))
}

#[derive(Debug, Deserialize)]
pub struct ReceiptPath {
    bill_batch_code: String,
    bill_no: String,
}

fn check_identity(path: &ReceiptPath) -> Result<(), ApiError> {
    let mut err: Option<ApiError> = None;
    if path.bill_batch_code.len() != 8 || !path.bill_batch_code.bytes().all(|b| b.is_ascii_digit()) {
        err = Some(
            err.unwrap_or_else(|| {
                ApiError::with(ErrorCode::InvalidPath, "billBatchCode is 8 digits and billNo 10 digits")
            })
            .field("/billBatchCode", "invalid_format", "8 digits"),
        );
    }
    if path.bill_no.len() != 10 || !path.bill_no.bytes().all(|b| b.is_ascii_digit()) {
        err = Some(
            err.unwrap_or_else(|| {
                ApiError::with(ErrorCode::InvalidPath, "billBatchCode is 8 digits and billNo 10 digits")
            })
            .field("/billNo", "invalid_format", "10 digits"),
        );
    }
    err.map_or(Ok(()), Err)
}

/// What piaojia holds of one of the agency's receipts: delivery per channel,
/// reversal and reimbursement state. Ask this before voiding a receipt.
#[utoipa::path(
    get,
    path = "/v1/receipts/{billBatchCode}/{billNo}",
    tag = "issuer",
    security(("pj1_hmac" = [])),
    params(
        ("billBatchCode" = String, Path, description = "票据代码, 8 digits", example = "11060124"),
        ("billNo" = String, Path, description = "票据号码, 10 digits", example = "0000000901"),
    ),
    responses(
        (status = 200, body = ReceiptView),
        (status = 400, description = "Malformed code or number (`invalid_path`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not held for this agency (`receipt_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/receipts/{bill_batch_code}/{bill_no}")]
pub async fn get_receipt(
    state: web::Data<AppState>,
    issuer: Issuer,
    path: web::Path<ReceiptPath>,
) -> Result<HttpResponse, ApiError> {
    check_identity(&path)?;
    let receipt = state
        .intake
        .lookup(&issuer, &path.bill_batch_code, &path.bill_no)
        .await?;
    Ok(HttpResponse::Ok().json(ReceiptView::build(&state, &receipt)))
}

/// Who locked, closed, unlocked or rejected one of the agency's receipts, when,
/// from where and why (append-only), with its reversal.
#[utoipa::path(
    get,
    path = "/v1/receipts/{billBatchCode}/{billNo}/reimbursement-history",
    tag = "issuer",
    security(("pj1_hmac" = [])),
    params(
        ("billBatchCode" = String, Path, description = "票据代码, 8 digits", example = "11060124"),
        ("billNo" = String, Path, description = "票据号码, 10 digits", example = "0000000901"),
    ),
    responses(
        (status = 200, body = crate::reimburser::views::HistoryView),
        (status = 400, description = "Malformed code or number (`invalid_path`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not held for this agency (`receipt_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/receipts/{bill_batch_code}/{bill_no}/reimbursement-history")]
pub async fn reimbursement_history(
    state: web::Data<AppState>,
    issuer: Issuer,
    path: web::Path<ReceiptPath>,
) -> Result<HttpResponse, ApiError> {
    check_identity(&path)?;
    let receipt = state
        .intake
        .lookup(&issuer, &path.bill_batch_code, &path.bill_no)
        .await?;
    let now = state
        .store
        .reimbursement_of(receipt.id)
        .await?
        .ok_or_else(|| ApiError::with(ErrorCode::ReceiptNotFound, "the receipt vanished"))?;
    let events = state.store.reimbursement_history(receipt.id).await?;
    Ok(HttpResponse::Ok().json(crate::reimburser::views::HistoryView::build(&now, events)))
}

/// The red receipt (红票) that reverses an original.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReversalRequest {
    #[schema(example = "11060124")]
    #[serde(alias = "eScarletBillBatchCode")]
    pub red_bill_batch_code: Option<String>,
    #[schema(example = "0000000902")]
    #[serde(alias = "eScarletBillNo")]
    pub red_bill_no: Option<String>,
    /// The red receipt's check code, 6 characters [0-9a-z].
    #[schema(example = "a1b2c3")]
    #[serde(alias = "eScarletRandom")]
    pub red_random: Option<String>,
    /// RFC 3339 with offset.
    #[schema(example = "2026-11-23T10:00:00+08:00")]
    pub reversed_at: Option<String>,
    /// The receipt platform's form of `reversedAt` (`writeOffEBill` answers):
    /// `yyyyMMddHHmmssSSS`, Beijing time, no offset. Used when `reversedAt` is absent.
    #[schema(example = "20261123100000000")]
    pub create_time: Option<String>,
    /// Why (default `冲红` when the platform's red-receipt fields are forwarded as they come).
    #[schema(example = "患者退费")]
    pub reason: Option<String>,
}

/// `yyyyMMddHHmmssSSS` in Beijing time (UTC+8).
fn parse_create_time(s: &str) -> Option<DateTime<Utc>> {
    if s.len() != 17 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = chrono::NaiveDateTime::parse_from_str(&s[..14], "%Y%m%d%H%M%S").ok()?;
    let millis: i64 = s[14..].parse().ok()?;
    let beijing = chrono::FixedOffset::east_opt(8 * 3600)?;
    let local = naive.and_local_timezone(beijing).single()?;
    Some(local.with_timezone(&Utc) + chrono::TimeDelta::milliseconds(millis))
}

impl ReversalRequest {
    fn validate(self, path: &ReceiptPath) -> Result<Reversal, ApiError> {
        let mut err = ApiError::validation(Vec::new());
        let mut bad = false;
        let mut fail = |pointer: &str, code: &str, detail: &str| {
            bad = true;
            err = std::mem::replace(&mut err, ApiError::validation(Vec::new())).field(pointer, code, detail);
        };
        let text = |v: &Option<String>| v.as_deref().map(str::trim).unwrap_or_default().to_owned();
        let code = text(&self.red_bill_batch_code);
        let no = text(&self.red_bill_no);
        let random = text(&self.red_random).to_ascii_lowercase();
        let platform_form = self.reversed_at.is_none() && self.create_time.is_some();
        let mut reason = text(&self.reason);
        if reason.is_empty() && platform_form {
            reason = "冲红".to_owned();
        }
        if code.len() != 8 || !code.bytes().all(|b| b.is_ascii_digit()) {
            fail(
                "/redBillBatchCode",
                if code.is_empty() { "required" } else { "invalid_format" },
                "8 digits",
            );
        }
        if no.len() != 10 || !no.bytes().all(|b| b.is_ascii_digit()) {
            fail(
                "/redBillNo",
                if no.is_empty() { "required" } else { "invalid_format" },
                "10 digits",
            );
        }
        if code == path.bill_batch_code && no == path.bill_no {
            fail(
                "/redBillNo",
                "invalid_value",
                "the red receipt must differ from the original",
            );
        }
        if random.len() != 6 || !random.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
            fail(
                "/redRandom",
                if random.is_empty() {
                    "required"
                } else {
                    "invalid_format"
                },
                "6 characters [0-9a-z]",
            );
        }
        let reversed_at = match self.reversed_at.as_deref() {
            None if platform_form => {
                let parsed = self.create_time.as_deref().and_then(parse_create_time);
                if parsed.is_none() {
                    fail("/createTime", "invalid_format", "yyyyMMddHHmmssSSS, Beijing time");
                }
                parsed
            }
            None | Some("") => {
                fail("/reversedAt", "required", "RFC 3339 time with offset");
                None
            }
            Some(t) => match DateTime::parse_from_rfc3339(t) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    fail(
                        "/reversedAt",
                        "invalid_format",
                        "RFC 3339 time with offset, e.g. 2026-11-23T10:00:00+08:00",
                    );
                    None
                }
            },
        };
        if reason.is_empty() {
            fail("/reason", "required", "why the receipt is reversed");
        } else if reason.chars().count() > 200 {
            fail("/reason", "too_long", "at most 200 characters");
        }
        match (bad, reversed_at) {
            (false, Some(reversed_at)) => Ok(Reversal {
                red_bill_batch_code: code,
                red_bill_no: no,
                red_random: random,
                reversed_at: reversed_at.into(),
                reason,
                recorded_at: Utc::now().into(),
            }),
            _ => Err(err),
        }
    }
}

/// Reverse (冲红) a receipt with its red receipt.
///
/// Repeating the same reversal returns the first result (200). A receipt a
/// reimburser has locked or closed cannot be reversed: 409 `receipt_locked`.
#[utoipa::path(
    post,
    path = "/v1/receipts/{billBatchCode}/{billNo}/reversal",
    tag = "issuer",
    security(("pj1_hmac" = [])),
    params(
        ("billBatchCode" = String, Path, description = "票据代码 of the original", example = "11060124"),
        ("billNo" = String, Path, description = "票据号码 of the original", example = "0000000901"),
    ),
    request_body(content = ReversalRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Reversed; payer and reimbursers will be told", body = ReceiptView),
        (status = 200, description = "Reversed before with the same red receipt: the first result", body = ReceiptView),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`receipt_locked` (a reimburser holds it) or `reversal_conflict` (reversed differently before)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/receipts/{bill_batch_code}/{bill_no}/reversal")]
pub async fn reverse_receipt(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    issuer: Issuer,
    path: web::Path<ReceiptPath>,
) -> Result<HttpResponse, ApiError> {
    check_identity(&path)?;
    require_json(&req)?;
    let request: ReversalRequest = parse_json(&issuer.body)?;
    let reversal = request.validate(&path)?;
    let accepted = state
        .intake
        .reverse(&issuer, &path.bill_batch_code, &path.bill_no, reversal)
        .await?;
    let status = if accepted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(ReceiptView::build(&state, &accepted.receipt)))
}

/// A temporary WeChat QR code for one receipt, to show on a kiosk or window
/// screen: the payer scans it with WeChat (following the agency's official
/// account if they do not yet) and the receipt is delivered to them: collected
/// into their wallet and announced by a template message linking its page. The
/// scene inside is random and expires after `pages.qr_secs`; the first WeChat
/// user to scan it takes the receipt. Calls WeChat's `qrcode/create` through the
/// agency's official account (channel `wechat_template`).
#[utoipa::path(
    post,
    path = "/v1/receipts/{billBatchCode}/{billNo}/qrcode",
    tag = "issuer",
    security(("pj1_hmac" = [])),
    params(
        ("billBatchCode" = String, Path, description = "票据代码, 8 digits", example = "11060124"),
        ("billNo" = String, Path, description = "票据号码, 10 digits", example = "0000000901"),
    ),
    responses(
        (status = 201, description = "The QR code: WeChat's ticket and URL, a PNG of it, its expiry", body = crate::pages::scan::ReceiptQrView),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`receipt_reversed` (a reversed receipt is not handed out) or `no_official_account` (the agency has no enabled official account)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`wechat_unavailable`: WeChat refused or did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/receipts/{bill_batch_code}/{bill_no}/qrcode")]
pub async fn receipt_qrcode(
    state: web::Data<AppState>,
    issuer: Issuer,
    path: web::Path<ReceiptPath>,
) -> Result<HttpResponse, ApiError> {
    check_identity(&path)?;
    let receipt = state
        .intake
        .lookup(&issuer, &path.bill_batch_code, &path.bill_no)
        .await?;
    if receipt.reversal.is_some() {
        return Err(ApiError::with(
            ErrorCode::ReceiptReversed,
            "the receipt is reversed (冲红): it is not handed out",
        ));
    }
    let view = crate::pages::scan::create_receipt_qr(&state, &receipt).await?;
    Ok(HttpResponse::Created().json(view))
}

/// Parses JSON with the pointer of a mistyped field in the error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let pointer: String = e
            .path()
            .iter()
            .map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => format!("/{index}"),
                serde_path_to_error::Segment::Map { key } => format!("/{}", key.replace('~', "~0").replace('/', "~1")),
                serde_path_to_error::Segment::Enum { variant } => format!("/{variant}"),
                serde_path_to_error::Segment::Unknown => String::new(),
            })
            .collect();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        ApiError::invalid_json(pointer, message)
    })
}
