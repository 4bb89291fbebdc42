//! The reimburser API (`/v1/reimburser/…`): verification (查验), and lock, close,
//! unlock, reject of receipts, one at a time or as an all-or-nothing batch, each
//! idempotent by its `requestId`; and a receipt's history.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use piaojia_core::money;
use piaojia_store::{
    ReceiptKey, ReimbursementAction, ReimbursementChange, ReimbursementOutcome, ReimbursementRefusal,
    ReimbursementRequest,
};
use ring::digest;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Reimburser;
use crate::error::{ApiError, ErrorCode, Problem};
use crate::issuer::routes::parse_json;
use crate::state::AppState;

use super::views::{ChangeResultView, HistoryView, ReceiptStateView, VerificationView};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(verify)
        .service(lock)
        .service(close)
        .service(unlock)
        .service(reject)
        .service(batch)
        .service(history)
        .service(super::claims::feed)
        .service(super::claims::detail)
        .service(super::claims::acknowledge)
        .service(super::claims::file);
}

/// Largest batch.
pub const BATCH_MAX: usize = 100;

/// A receipt as a reimburser names it.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptRef {
    /// 票据代码, 8 digits.
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    /// 票据号码, 10 digits.
    #[schema(example = "0000000901")]
    pub bill_no: String,
    /// 校验码, 6 characters [0-9a-z].
    #[schema(example = "a1b2c3")]
    pub random: String,
}

/// Verification (查验) of a receipt by code, number and check code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    #[serde(flatten)]
    pub receipt: ReceiptRef,
    /// Optional: the issue date as printed (Beijing time), `YYYY-MM-DD`.
    #[schema(example = "2026-11-23")]
    pub issued_date: Option<String>,
    /// Optional: the total in yuan, as a string.
    #[schema(example = "128.50")]
    pub total_amt: Option<String>,
}

/// One change: lock, close, unlock or reject one receipt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRequest {
    /// The caller's id of this request (1-64 [A-Za-z0-9_-]): repeating it returns the first answer.
    #[schema(example = "c0ffee-0001")]
    pub request_id: String,
    #[serde(flatten)]
    pub receipt: ReceiptRef,
    /// Close only: the amount paid, yuan.
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
    /// Why (required to reject; kept in the history).
    #[schema(example = "不在保障范围")]
    pub reason: Option<String>,
}

/// One receipt of a batch.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    #[serde(flatten)]
    pub receipt: ReceiptRef,
    /// Close only: the amount paid, yuan.
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
}

/// The same change of up to 100 receipts, all or nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchRequest {
    #[schema(example = "c0ffee-0002")]
    pub request_id: String,
    /// `lock`, `close`, `unlock` or `reject`.
    #[schema(example = "lock")]
    pub action: String,
    pub receipts: Vec<BatchItem>,
    #[schema(example = "月度报销")]
    pub reason: Option<String>,
}

fn check_ref(r: &ReceiptRef, at: &str, err: &mut Vec<(String, &'static str, &'static str)>) {
    if r.bill_batch_code.len() != 8 || !r.bill_batch_code.bytes().all(|b| b.is_ascii_digit()) {
        err.push((format!("{at}/billBatchCode"), "invalid_format", "8 digits"));
    }
    if r.bill_no.len() != 10 || !r.bill_no.bytes().all(|b| b.is_ascii_digit()) {
        err.push((format!("{at}/billNo"), "invalid_format", "10 digits"));
    }
    let random = r.random.to_ascii_lowercase();
    if random.len() != 6 || !random.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
        err.push((format!("{at}/random"), "invalid_format", "6 characters [0-9a-z]"));
    }
}

fn invalid(errors: Vec<(String, &'static str, &'static str)>) -> Result<(), ApiError> {
    if errors.is_empty() {
        return Ok(());
    }
    let mut e = ApiError::validation(Vec::new());
    for (pointer, code, detail) in errors {
        e = e.field(pointer, code, detail);
    }
    Err(e)
}

fn key(r: &ReceiptRef) -> ReceiptKey {
    ReceiptKey {
        bill_batch_code: r.bill_batch_code.clone(),
        bill_no: r.bill_no.clone(),
        random: r.random.to_ascii_lowercase(),
    }
}

/// Verify a receipt (查验): authentic or not, reversed or not, its reimbursement
/// state. Any registered reimburser may ask; the answer holds no personal data,
/// unless the payer sent the caller a claim of this receipt (`claimId`,
/// `personalData`: the fields the payer consented to).
#[utoipa::path(
    post,
    path = "/v1/reimburser/verifications",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    request_body(content = VerifyRequest, example = json!({"billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3", "issuedDate": "2026-11-23", "totalAmt": "128.50"})),
    responses(
        (status = 200, body = VerificationView, example = json!({"authentic": true, "agencyCode": "12110000400000001A", "agencyName": "示例市第一人民医院", "issuedAt": "2026-11-23T01:30:00Z", "totalAmt": "128.50", "reversed": false, "reimbursementState": "INIT", "heldByYou": false, "accepted": true})),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`reimburser_not_registered`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/verifications")]
pub async fn verify(state: web::Data<AppState>, caller: Reimburser) -> Result<HttpResponse, ApiError> {
    let request: VerifyRequest = parse_json(&caller.body)?;
    let mut errors = Vec::new();
    check_ref(&request.receipt, "", &mut errors);
    let date = match request.issued_date.as_deref() {
        None | Some("") => None,
        Some(d) => match chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                errors.push(("/issuedDate".into(), "invalid_format", "YYYY-MM-DD"));
                None
            }
        },
    };
    let amount = match request.total_amt.as_deref() {
        None | Some("") => None,
        Some(a) => match money::parse_yuan(a) {
            Ok(fen) => Some(fen),
            Err(e) => {
                errors.push(("/totalAmt".into(), e.code(), "yuan with at most 2 decimals"));
                None
            }
        },
    };
    invalid(errors)?;
    let found = state.store.find_by_check_code(&key(&request.receipt)).await?;
    let beijing =
        chrono::FixedOffset::east_opt(8 * 3600).ok_or_else(|| ApiError::internal(anyhow::anyhow!("offset")))?;
    let hit = found.into_iter().find(|r| {
        let issued: chrono::DateTime<chrono::Utc> = r.issued_at.into();
        date.is_none_or(|d| issued.with_timezone(&beijing).date_naive() == d) && amount.is_none_or(|a| a == r.total_fen)
    });
    let Some(r) = hit else {
        return Ok(HttpResponse::Ok().json(VerificationView {
            authentic: false,
            agency_code: None,
            agency_name: None,
            issued_at: None,
            total_amt: None,
            reversed: None,
            reimbursement_state: None,
            held_by_you: None,
            accepted: None,
            claim_id: None,
            personal_data: None,
        }));
    };
    let agency = state.store.agency(r.agency_id).await?;
    // Personal data only for a party the payer sent a claim of this receipt to.
    let claim = state.store.claim_holding(&caller.app.app_id, r.receipt_id).await?;
    let personal_data = match &claim {
        Some(c) => super::claims::personal_data(&state, c)?,
        None => None,
    };
    Ok(HttpResponse::Ok().json(VerificationView {
        claim_id: claim.map(|c| c.id),
        personal_data,
        authentic: true,
        agency_code: agency.as_ref().map(|a| a.code.clone()),
        agency_name: agency.map(|a| a.name),
        issued_at: Some(r.issued_at.into()),
        total_amt: Some(money::format_yuan(r.total_fen)),
        reversed: Some(r.reversed),
        reimbursement_state: Some(r.state.as_str()),
        held_by_you: Some(r.holder.as_deref() == Some(caller.app.app_id.as_str())),
        accepted: Some(caller.accepted_agency_ids.contains(&r.agency_id)),
    }))
}

fn check_request_id(id: &str) -> Option<(String, &'static str, &'static str)> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (!ok).then(|| {
        (
            "/requestId".to_owned(),
            "invalid_format",
            "1-64 characters [A-Za-z0-9_-]",
        )
    })
}

/// The problem for a refusal, the receipt it concerns located by `pointer`.
fn refusal_problem(refusal: ReimbursementRefusal, pointer: String) -> ApiError {
    let detail = match refusal {
        ReimbursementRefusal::LockedByOther => "another reimburser holds the lock on this receipt",
        ReimbursementRefusal::AlreadyClosed => "this receipt is already reimbursed (closed)",
        ReimbursementRefusal::Reversed => "the issuer reversed this receipt",
        ReimbursementRefusal::LockRequired => "you hold no lock on this receipt: lock it first",
        ReimbursementRefusal::PaidExceedsTotal => "the amount paid exceeds the receipt's total",
    };
    let code = match refusal {
        ReimbursementRefusal::LockedByOther => ErrorCode::ReceiptLockedByOther,
        ReimbursementRefusal::AlreadyClosed => ErrorCode::ReceiptAlreadyClosed,
        ReimbursementRefusal::Reversed => ErrorCode::ReceiptReversed,
        ReimbursementRefusal::LockRequired => ErrorCode::LockRequired,
        ReimbursementRefusal::PaidExceedsTotal => ErrorCode::PaidExceedsTotal,
    };
    ApiError::with(code, detail).field(pointer, refusal.as_str(), detail)
}

/// Runs one request (single or batch) through the store.
async fn apply(
    state: &AppState,
    req: &HttpRequest,
    caller: &Reimburser,
    request_id: String,
    action: ReimbursementAction,
    items: Vec<(String, ReceiptRef, Option<String>)>,
    reason: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Vec::new();
    errors.extend(check_request_id(&request_id));
    let mut changes = Vec::with_capacity(items.len());
    for (at, r, paid) in &items {
        check_ref(r, at, &mut errors);
        let paid_fen = match (action, paid.as_deref()) {
            (ReimbursementAction::Close, None | Some("")) => {
                errors.push((format!("{at}/paidAmt"), "required", "the amount paid, yuan"));
                None
            }
            (ReimbursementAction::Close, Some(p)) => match money::parse_yuan(p) {
                Ok(fen) => Some(fen),
                Err(e) => {
                    errors.push((format!("{at}/paidAmt"), e.code(), "yuan with at most 2 decimals"));
                    None
                }
            },
            _ => None,
        };
        changes.push(ReimbursementChange {
            key: key(r),
            action,
            paid_fen,
        });
    }
    let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if action == ReimbursementAction::Reject && reason.is_none() {
        errors.push(("/reason".into(), "required", "why the receipt is rejected"));
    }
    if reason.as_ref().is_some_and(|r| r.chars().count() > 200) {
        errors.push(("/reason".into(), "too_long", "at most 200 characters"));
    }
    invalid(errors)?;

    let mut fp = digest::Context::new(&digest::SHA256);
    fp.update(action.as_str().as_bytes());
    for c in &changes {
        fp.update(
            format!(
                "\n{}/{}/{}/{}",
                c.key.bill_batch_code,
                c.key.bill_no,
                c.key.random,
                c.paid_fen.unwrap_or(-1)
            )
            .as_bytes(),
        );
    }
    fp.update(format!("\n{}", reason.as_deref().unwrap_or_default()).as_bytes());
    let remote_addr =
        piaojia_web::client::client_ip(req, &state.settings.server.trusted_proxies).map(|ip| ip.to_string());
    let outcome = state
        .store
        .apply_reimbursement(ReimbursementRequest {
            app_id: caller.app.app_id.clone(),
            request_id: request_id.clone(),
            fingerprint: hex::encode(fp.finish()),
            accepted_agency_ids: caller.accepted_agency_ids.clone(),
            changes,
            reason,
            remote_addr,
        })
        .await?;
    let caller_id = caller.app.app_id.as_str();
    let (receipts, replayed) = match outcome {
        ReimbursementOutcome::Applied(r) => (r, false),
        ReimbursementOutcome::Replayed(r) => (r, true),
        ReimbursementOutcome::RequestIdReused => {
            return Err(ApiError::with(
                ErrorCode::RequestIdReused,
                "this requestId was used for a different request",
            )
            .field(
                "/requestId",
                "request_id_reused",
                "use a new requestId for a new request",
            ));
        }
        ReimbursementOutcome::NotFound { index } => {
            let at = items.get(index).map(|i| i.0.clone()).unwrap_or_default();
            return Err(ApiError::with(
                ErrorCode::ReceiptNotFound,
                "no receipt with this code, number and check code from an agency you accept",
            )
            .field(at, "receipt_not_found", "check the code, number and check code"));
        }
        ReimbursementOutcome::Refused { index, refusal, .. } => {
            let at = items.get(index).map(|i| i.0.clone()).unwrap_or_default();
            return Err(refusal_problem(refusal, if at.is_empty() { "/".into() } else { at }));
        }
    };
    if !replayed {
        for r in &receipts {
            super::card::mirror_to_card(state.store.as_ref(), &state.wake, r).await;
        }
        // A claim's status may have moved: its payer's message waits in the outbox.
        state.wake.notify().await;
    }
    Ok(HttpResponse::Ok().json(ChangeResultView {
        request_id,
        replayed,
        receipts: receipts.iter().map(|r| ReceiptStateView::build(r, caller_id)).collect(),
    }))
}

async fn single(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Reimburser,
    action: ReimbursementAction,
) -> Result<HttpResponse, ApiError> {
    let request: ChangeRequest = parse_json(&caller.body)?;
    apply(
        &state,
        &req,
        &caller,
        request.request_id,
        action,
        vec![(String::new(), request.receipt, request.paid_amt)],
        request.reason,
    )
    .await
}

/// Lock a receipt (INIT → LOCK): from now on no other party can lock or close it.
///
/// Locking a receipt you already hold changes nothing. Conflicts: `409
/// receipt_locked_by_other`, `409 receipt_already_closed`, `409 receipt_reversed`.
#[utoipa::path(
    post,
    path = "/v1/reimburser/receipts/lock",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    request_body(content = ChangeRequest, example = json!({"requestId": "c0ffee-0001", "billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3"})),
    responses(
        (status = 200, body = ChangeResultView, example = json!({"requestId": "c0ffee-0001", "replayed": false, "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "reimbursementState": "LOCK", "heldByYou": true, "lockedAt": "2026-11-24T02:00:00Z", "paidAmt": null, "totalAmt": "128.50"}]})),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found` (none with this check code from an accepted agency)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`receipt_locked_by_other`, `receipt_already_closed`, `receipt_reversed`, `request_id_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/receipts/lock")]
pub async fn lock(state: web::Data<AppState>, req: HttpRequest, caller: Reimburser) -> Result<HttpResponse, ApiError> {
    single(state, req, caller, ReimbursementAction::Lock).await
}

/// Close a receipt you hold locked (LOCK → CLOSURE): reimbursed, with the amount
/// paid; irreversible. Without your lock: `409 lock_required`.
#[utoipa::path(
    post,
    path = "/v1/reimburser/receipts/close",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    request_body(content = ChangeRequest, example = json!({"requestId": "c0ffee-0003", "billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3", "paidAmt": "100.00"})),
    responses(
        (status = 200, body = ChangeResultView, example = json!({"requestId": "c0ffee-0003", "replayed": false, "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "reimbursementState": "CLOSURE", "heldByYou": true, "lockedAt": "2026-11-24T02:00:00Z", "paidAmt": "100.00", "totalAmt": "128.50"}]})),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_required`, `receipt_locked_by_other`, `receipt_already_closed`, `receipt_reversed`, `request_id_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `paid_exceeds_total`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/receipts/close")]
pub async fn close(state: web::Data<AppState>, req: HttpRequest, caller: Reimburser) -> Result<HttpResponse, ApiError> {
    single(state, req, caller, ReimbursementAction::Close).await
}

/// Release your lock (LOCK → INIT).
#[utoipa::path(
    post,
    path = "/v1/reimburser/receipts/unlock",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    request_body(content = ChangeRequest, example = json!({"requestId": "c0ffee-0004", "billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3"})),
    responses(
        (status = 200, body = ChangeResultView, example = json!({"requestId": "c0ffee-0004", "replayed": false, "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "reimbursementState": "INIT", "heldByYou": false, "lockedAt": null, "paidAmt": null, "totalAmt": "128.50"}]})),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_required`, `receipt_locked_by_other`, `receipt_already_closed`, `receipt_reversed`, `request_id_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/receipts/unlock")]
pub async fn unlock(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Reimburser,
) -> Result<HttpResponse, ApiError> {
    single(state, req, caller, ReimbursementAction::Unlock).await
}

/// Refuse to reimburse a receipt, with a reason: your lock is released (LOCK →
/// INIT; an unlocked receipt stays INIT) and the refusal is kept in the history.
#[utoipa::path(
    post,
    path = "/v1/reimburser/receipts/reject",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    request_body(content = ChangeRequest, example = json!({"requestId": "c0ffee-0005", "billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3", "reason": "不在保障范围"})),
    responses(
        (status = 200, body = ChangeResultView, example = json!({"requestId": "c0ffee-0005", "replayed": false, "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "reimbursementState": "INIT", "heldByYou": false, "lockedAt": null, "paidAmt": null, "totalAmt": "128.50"}]})),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`receipt_locked_by_other`, `receipt_already_closed`, `receipt_reversed`, `request_id_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (a reason is required)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/receipts/reject")]
pub async fn reject(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Reimburser,
) -> Result<HttpResponse, ApiError> {
    single(state, req, caller, ReimbursementAction::Reject).await
}

/// Lock, close, unlock or reject up to 100 receipts at once, all or nothing: if
/// any one is refused, none changes and the problem's `errors[0].pointer` names it
/// (`/receipts/<index>`).
#[utoipa::path(
    post,
    path = "/v1/reimburser/receipts/batch",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    request_body(content = BatchRequest, example = json!({"requestId": "c0ffee-0002", "action": "lock", "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3"}, {"billBatchCode": "11060124", "billNo": "0000000902", "random": "d4e5f6"}]})),
    responses(
        (status = 200, body = ChangeResultView),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`receipt_locked_by_other`, `receipt_already_closed`, `receipt_reversed`, `lock_required`, `request_id_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `paid_exceeds_total`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/receipts/batch")]
pub async fn batch(state: web::Data<AppState>, req: HttpRequest, caller: Reimburser) -> Result<HttpResponse, ApiError> {
    let request: BatchRequest = parse_json(&caller.body)?;
    let action = match request.action.as_str() {
        "lock" => ReimbursementAction::Lock,
        "close" => ReimbursementAction::Close,
        "unlock" => ReimbursementAction::Unlock,
        "reject" => ReimbursementAction::Reject,
        _ => {
            return Err(ApiError::validation(Vec::new()).field(
                "/action",
                "invalid_value",
                "lock, close, unlock or reject",
            ));
        }
    };
    if request.receipts.is_empty() || request.receipts.len() > BATCH_MAX {
        return Err(ApiError::validation(Vec::new()).field(
            "/receipts",
            "invalid_length",
            format!("1 to {BATCH_MAX} receipts"),
        ));
    }
    let items = request
        .receipts
        .into_iter()
        .enumerate()
        .map(|(i, item)| (format!("/receipts/{i}"), item.receipt, item.paid_amt))
        .collect();
    apply(&state, &req, &caller, request.request_id, action, items, request.reason).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPath {
    /// 票据代码
    pub bill_batch_code: String,
    /// 票据号码
    pub bill_no: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// The receipt's check code (校验码): proves the caller holds it.
    pub random: String,
}

/// A receipt's reimbursement history (who did what, when, from where, why),
/// for a receipt the caller proves it holds by its check code.
#[utoipa::path(
    get,
    path = "/v1/reimburser/receipts/{billBatchCode}/{billNo}/history",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    params(
        ("billBatchCode" = String, Path, example = "11060124"),
        ("billNo" = String, Path, example = "0000000901"),
        HistoryQuery,
    ),
    responses(
        (status = 200, body = HistoryView, example = json!({"billBatchCode": "11060124", "billNo": "0000000901", "reimbursementState": "CLOSURE", "entries": [{"id": "019ad1c0-0000-7000-8000-000000000001", "actor": "insurer01", "action": "lock", "fromState": "INIT", "toState": "LOCK", "paidAmt": null, "reason": null, "remoteAddr": "203.0.113.7", "requestId": "c0ffee-0001", "at": "2026-11-24T02:00:00Z"}]})),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/reimburser/receipts/{bill_batch_code}/{bill_no}/history")]
pub async fn history(
    state: web::Data<AppState>,
    caller: Reimburser,
    path: web::Path<(String, String)>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let (code, no) = path.into_inner();
    let found = state
        .store
        .find_by_check_code(&ReceiptKey {
            bill_batch_code: code,
            bill_no: no,
            random: query.random.to_ascii_lowercase(),
        })
        .await?;
    let Some(r) = found
        .into_iter()
        .find(|r| caller.accepted_agency_ids.contains(&r.agency_id))
    else {
        return Err(ApiError::with(
            ErrorCode::ReceiptNotFound,
            "no receipt with this code, number and check code from an agency you accept",
        ));
    };
    let events = state.store.reimbursement_history(r.receipt_id).await?;
    Ok(HttpResponse::Ok().json(HistoryView::build(&r, events)))
}
