//! Claims as their reimburser meets them: pushed by webhook (`claim.submitted`,
//! `claim.withdrawn`, `claim.cancelled`, signed like every webhook of ours),
//! pulled in order with a cursor, read in full (receipts, files, the consented
//! personal data unsealed for this reimburser only) and acknowledged. What the
//! reimburser then does to the receipts (lock, close, reject) moves the claim's
//! status in the same transaction (`piaojia_store::claims`).

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use piaojia_core::money;
use piaojia_core::pii::purpose;
use piaojia_store::{ClaimRecord, StoredReceipt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Reimburser;
use crate::error::{ApiError, ErrorCode, Problem};
use crate::state::AppState;

/// Default and largest page of the claim feed.
const PAGE: i64 = 50;
const PAGE_MAX: i64 = 200;

fn not_found() -> ApiError {
    ApiError::with(ErrorCode::ClaimNotFound, "no such claim sent to you")
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// `nextCursor` of the previous page (omit for the first claim ever).
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// A receipt of a claim, named as reimbursers name receipts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReceiptRefView {
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    #[schema(example = "a1b2c3")]
    pub random: String,
}

/// A claim in the feed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSummaryView {
    pub id: Uuid,
    /// Its position in your feed (`after=` this returns the claims after it).
    #[schema(example = "17")]
    pub cursor: String,
    /// submitted, received, locked, reimbursed, rejected, withdrawn or cancelled.
    #[schema(example = "submitted")]
    pub status: &'static str,
    pub receipts: Vec<ClaimReceiptRefView>,
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimFeedView {
    pub items: Vec<ClaimSummaryView>,
    /// Pass as `after` next time (the same cursor when nothing new came).
    #[schema(example = "17")]
    pub next_cursor: String,
}

/// A receipt's file, fetched with a signed GET of `url`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimFileView {
    #[schema(example = "pdf")]
    pub format: String,
    pub size: i64,
    pub sha256: String,
    pub url: String,
}

/// A receipt of a claim in full.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReceiptView {
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    #[schema(example = "a1b2c3")]
    pub random: String,
    #[schema(example = "12110000400000001A")]
    pub agency_code: String,
    #[schema(example = "示例市第一人民医院")]
    pub agency_name: String,
    #[schema(example = "02")]
    pub bus_type: String,
    pub bus_no: String,
    pub issued_at: DateTime<Utc>,
    #[schema(example = "128.50")]
    pub total_amt: String,
    /// The receipt's items and settlement, as the issuer sent them (no personal data).
    pub details: serde_json::Value,
    /// INIT, LOCK, CLOSURE or CANCEL.
    #[schema(example = "INIT")]
    pub reimbursement_state: &'static str,
    pub reversed: bool,
    pub file: Option<ClaimFileView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimEventView {
    /// `payer`, a reimburser's appId, `issuer:<appId>` or `system`.
    pub actor: String,
    #[schema(example = "submit")]
    pub action: String,
    pub from_status: Option<&'static str>,
    #[schema(example = "submitted")]
    pub to_status: &'static str,
    pub paid_amt: Option<String>,
    pub reason: Option<String>,
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<piaojia_store::ClaimEvent> for ClaimEventView {
    fn from(e: piaojia_store::ClaimEvent) -> Self {
        Self {
            actor: e.actor,
            action: e.action,
            from_status: e.from_status.map(|s| s.as_str()),
            to_status: e.to_status.as_str(),
            paid_amt: e.paid_fen.map(money::format_yuan),
            reason: e.reason,
            remote_addr: e.remote_addr,
            request_id: e.request_id,
            at: e.at.into(),
        }
    }
}

/// A claim in full, for the reimburser it was sent to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimDetailView {
    pub id: Uuid,
    #[schema(example = "17")]
    pub cursor: String,
    #[schema(example = "submitted")]
    pub status: &'static str,
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
    pub reason: Option<String>,
    /// The personal fields the payer consented to share with you.
    #[schema(example = json!(["name", "id_card_no"]))]
    pub consented_fields: Vec<String>,
    /// Their values (`null` once the payer erased their account).
    #[schema(example = json!({"name": "张三丰", "id_card_no": "11010519491231002X"}))]
    pub personal_data: Option<BTreeMap<String, String>>,
    /// The claim's own fields (bank account, reference, …).
    #[schema(example = json!({"bankAccount": "6222020200112233445"}))]
    pub fields: BTreeMap<String, String>,
    pub receipts: Vec<ClaimReceiptView>,
    pub history: Vec<ClaimEventView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn summary(claim: &ClaimRecord, receipts: &[StoredReceipt]) -> ClaimSummaryView {
    ClaimSummaryView {
        id: claim.id,
        cursor: claim.seq.to_string(),
        status: claim.status.as_str(),
        receipts: receipts
            .iter()
            .map(|r| ClaimReceiptRefView {
                bill_batch_code: r.bill_batch_code.clone(),
                bill_no: r.bill_no.clone(),
                random: r.random.clone(),
            })
            .collect(),
        paid_amt: claim.paid_fen.map(money::format_yuan),
        reason: claim.reason.clone(),
        created_at: claim.created_at.into(),
        updated_at: claim.updated_at.into(),
    }
}

/// Opens what the payer shared: sealed for this reimburser, it opens for no other.
pub fn personal_data(state: &AppState, claim: &ClaimRecord) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    claim
        .personal_sealed
        .as_deref()
        .map(|s| {
            state
                .keyring
                .open_json(s, &purpose::claim_personal(&claim.reimburser_app_id))
                .map_err(|e| ApiError::internal(anyhow::anyhow!("claim personal data cannot be opened: {e}")))
        })
        .transpose()
}

/// New claims, oldest first, after a cursor.
///
/// Claims come in the order they were submitted; a claim is never skipped (each
/// reimburser's claims are written one at a time). Status changes are read with
/// the claim (`GET /v1/reimburser/claims/{id}`) or arrive by webhook.
#[utoipa::path(
    get,
    path = "/v1/reimburser/claims",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    params(FeedQuery),
    responses(
        (status = 200, body = ClaimFeedView, example = json!({"items": [{"id": "019ad1c0-0000-7000-8000-0000000000c1", "cursor": "1", "status": "submitted", "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3"}], "paidAmt": null, "reason": null, "createdAt": "2026-11-24T02:00:00Z", "updatedAt": "2026-11-24T02:00:00Z"}], "nextCursor": "1"})),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`reimburser_not_registered`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (`after` or `limit`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/reimburser/claims")]
pub async fn feed(
    state: web::Data<AppState>,
    caller: Reimburser,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse, ApiError> {
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(a) => a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::validation(Vec::new()).field("/after", "invalid_value", "use nextCursor of the previous page")
        })?,
    };
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::validation(Vec::new()).field(
            "/limit",
            "out_of_range",
            format!("between 1 and {PAGE_MAX}"),
        ));
    }
    let claims = state.store.reimburser_claims(&caller.app.app_id, after, limit).await?;
    // Every claim's receipts in one read, not one per claim or receipt.
    let receipts = state.store.claims_receipts(&claims).await?;
    let items = claims.iter().zip(&receipts).map(|(c, r)| summary(c, r)).collect();
    let next_cursor = claims.last().map_or(after, |c| c.seq).to_string();
    Ok(HttpResponse::Ok().json(ClaimFeedView { items, next_cursor }))
}

async fn load(state: &AppState, caller: &Reimburser, id: Uuid) -> Result<ClaimRecord, ApiError> {
    state
        .store
        .reimburser_claim(&caller.app.app_id, id)
        .await?
        .ok_or_else(not_found)
}

fn file_url(state: &AppState, claim: Uuid, receipt: Uuid) -> String {
    format!(
        "{}/v1/reimburser/claims/{claim}/receipts/{receipt}/file",
        state.base_url.trim_end_matches('/')
    )
}

/// A claim in full: its receipts with their data and file links, the personal data
/// the payer consented to share with you, the claim's fields, and its history.
#[utoipa::path(
    get,
    path = "/v1/reimburser/claims/{claim_id}",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    params(("claim_id" = Uuid, Path)),
    responses(
        (status = 200, body = ClaimDetailView, example = json!({"id": "019ad1c0-0000-7000-8000-0000000000c1", "cursor": "1", "status": "submitted", "paidAmt": null, "reason": null, "consentedFields": ["name", "id_card_no"], "personalData": {"name": "张三丰", "id_card_no": "11010519491231002X"}, "fields": {"bankAccount": "6222020200112233445"}, "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3", "agencyCode": "12110000400000001A", "agencyName": "示例市第一人民医院", "busType": "02", "busNo": "MZ20261123001", "issuedAt": "2026-11-23T01:30:00Z", "totalAmt": "128.50", "details": {}, "reimbursementState": "INIT", "reversed": false, "file": {"format": "pdf", "size": 1024, "sha256": "…", "url": "https://piaojia.example/v1/reimburser/claims/019ad1c0-0000-7000-8000-0000000000c1/receipts/019ad1c0-0000-7000-8000-000000000001/file"}}], "history": [{"actor": "payer", "action": "submit", "fromStatus": null, "toStatus": "submitted", "paidAmt": null, "reason": null, "remoteAddr": "203.0.113.9", "requestId": null, "at": "2026-11-24T02:00:00Z"}], "createdAt": "2026-11-24T02:00:00Z", "updatedAt": "2026-11-24T02:00:00Z"})),
        (status = 400, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`reimburser_not_registered`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`claim_not_found` (also for another reimburser's claim)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/reimburser/claims/{claim_id}")]
pub async fn detail(
    state: web::Data<AppState>,
    caller: Reimburser,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let claim = load(&state, &caller, path.into_inner()).await?;
    let stored = state.store.claim_receipts(&claim).await?;
    let mut agency_ids: Vec<Uuid> = stored.iter().map(|r| r.agency_id).collect();
    agency_ids.sort_unstable();
    agency_ids.dedup();
    let agencies: std::collections::HashMap<Uuid, piaojia_store::Agency> = state
        .store
        .agencies(&agency_ids)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    let mut receipts = Vec::with_capacity(stored.len());
    for r in stored {
        let agency = agencies.get(&r.agency_id);
        receipts.push(ClaimReceiptView {
            agency_code: agency.map(|a| a.code.clone()).unwrap_or_default(),
            agency_name: agency.map(|a| a.name.clone()).unwrap_or_default(),
            file: r.file.as_ref().map(|f| ClaimFileView {
                format: f.format.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                url: file_url(&state, claim.id, r.id),
            }),
            reimbursement_state: r.reimbursement_state.as_str(),
            reversed: r.reversal.is_some(),
            issued_at: r.issued_at.into(),
            total_amt: money::format_yuan(r.total_fen),
            bill_batch_code: r.bill_batch_code,
            bill_no: r.bill_no,
            random: r.random,
            bus_type: r.bus_type,
            bus_no: r.bus_no,
            details: r.details,
        });
    }
    let fields = match claim.fields_sealed.as_deref() {
        None => BTreeMap::new(),
        Some(s) => state
            .keyring
            .open_json(s, &purpose::claim_fields(&claim.reimburser_app_id))
            .map_err(|e| ApiError::internal(anyhow::anyhow!("claim fields cannot be opened: {e}")))?,
    };
    let history = state
        .store
        .claim_history(claim.id)
        .await?
        .into_iter()
        .map(ClaimEventView::from)
        .collect();
    Ok(HttpResponse::Ok().json(ClaimDetailView {
        id: claim.id,
        cursor: claim.seq.to_string(),
        status: claim.status.as_str(),
        paid_amt: claim.paid_fen.map(money::format_yuan),
        reason: claim.reason.clone(),
        consented_fields: claim.consented_fields.clone(),
        personal_data: personal_data(&state, &claim)?,
        fields,
        receipts,
        history,
        created_at: claim.created_at.into(),
        updated_at: claim.updated_at.into(),
    }))
}

/// Acknowledge a claim (submitted → received); the payer is told. Repeating it,
/// or acknowledging a claim past `submitted`, changes nothing.
#[utoipa::path(
    post,
    path = "/v1/reimburser/claims/{claim_id}/acknowledgement",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    params(("claim_id" = Uuid, Path)),
    responses(
        (status = 200, body = ClaimSummaryView, example = json!({"id": "019ad1c0-0000-7000-8000-0000000000c1", "cursor": "1", "status": "received", "receipts": [{"billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3"}], "paidAmt": null, "reason": null, "createdAt": "2026-11-24T02:00:00Z", "updatedAt": "2026-11-24T02:05:00Z"})),
        (status = 400, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`reimburser_not_registered`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`claim_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/reimburser/claims/{claim_id}/acknowledgement")]
pub async fn acknowledge(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Reimburser,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let remote = piaojia_web::client::client_ip(&req, &state.settings.server.trusted_proxies).map(|ip| ip.to_string());
    let claim = state
        .store
        .acknowledge_claim(&caller.app.app_id, path.into_inner(), remote)
        .await?
        .ok_or_else(not_found)?;
    state.wake.notify().await;
    let receipts = state.store.claim_receipts(&claim).await?;
    Ok(HttpResponse::Ok().json(summary(&claim, &receipts)))
}

/// A claimed receipt's file (PDF or OFD), for the reimburser the claim was sent to.
#[utoipa::path(
    get,
    path = "/v1/reimburser/claims/{claim_id}/receipts/{receipt_id}/file",
    tag = "reimburser",
    security(("pj1_hmac" = [])),
    params(("claim_id" = Uuid, Path), ("receipt_id" = Uuid, Path)),
    responses(
        (status = 200, description = "The file (`application/pdf` or `application/ofd`)", content_type = "application/pdf"),
        (status = 400, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `auth_wrong_scheme`, `auth_malformed`, `auth_stale_timestamp`, `auth_bad_signature`, `auth_replayed_nonce`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`reimburser_not_registered`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`claim_not_found`, `receipt_not_found` (not in this claim), `file_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/reimburser/claims/{claim_id}/receipts/{receipt_id}/file")]
pub async fn file(
    state: web::Data<AppState>,
    caller: Reimburser,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (claim_id, receipt_id) = path.into_inner();
    let claim = load(&state, &caller, claim_id).await?;
    if !claim.receipt_ids.contains(&receipt_id) {
        return Err(ApiError::with(
            ErrorCode::ReceiptNotFound,
            "this receipt is not in the claim",
        ));
    }
    let receipt = state
        .store
        .claim_receipts(&claim)
        .await?
        .into_iter()
        .find(|r| r.id == receipt_id)
        .ok_or_else(|| ApiError::with(ErrorCode::ReceiptNotFound, "this receipt is not in the claim"))?;
    let meta = receipt
        .file
        .as_ref()
        .ok_or_else(|| ApiError::with(ErrorCode::FileNotFound, "the issuer sent no file for this receipt"))?;
    let bytes = state
        .wallet
        .files
        .get(&ObjectPath::from(meta.object_key.as_str()))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                ApiError::with(ErrorCode::FileNotFound, "the file is not available")
            }
            other => ApiError::internal(other),
        })?
        .bytes()
        .await
        .map_err(ApiError::internal)?;
    let content_type = match meta.format.as_str() {
        "pdf" => "application/pdf",
        "ofd" => "application/ofd",
        _ => "application/octet-stream",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}-{}.{}\"",
                receipt.bill_batch_code, receipt.bill_no, meta.format
            ),
        ))
        .body(bytes))
}
