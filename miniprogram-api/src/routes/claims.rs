//! Claims (报销申请): the payer chooses receipts of their wallet and a reimburser
//! that accepts them, consents to sharing exactly the personal fields that
//! reimburser receives, adds the claim's own fields (bank account, reference) and
//! submits. The personal data and fields are sealed for that reimburser alone.
//! The payer follows the claim's status and may withdraw it until the reimburser
//! locks its receipts. A payer only ever reaches their own claims.

use std::collections::{BTreeMap, HashMap};

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use piaojia_core::money::format_yuan;
use piaojia_core::parties::ClaimField;
use piaojia_core::pii::purpose;
use piaojia_store::ClaimRecord;
use piaojia_web::error::{ApiError, Problem};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Problems;
use crate::claiming::{self, claim_not_found};
use crate::{Payer, WalletState};

pub use crate::claiming::{CLAIM_RECEIPTS_MAX, ClaimConsent, ClaimRequest};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReimbursersQuery {
    /// The receipt to be claimed (its `id` in the wallet).
    pub receipt: Uuid,
}

/// A reimburser a payer may send a receipt to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReimburserOptionView {
    #[schema(example = "insurer01")]
    pub app_id: String,
    #[schema(example = "示例人寿保险")]
    pub name: String,
    /// medical_insurance, commercial_insurer or employer.
    #[schema(example = "commercial_insurer")]
    pub kind: &'static str,
    /// The personal fields it receives: the consent must list exactly these.
    #[schema(example = json!(["name", "id_card_no"]))]
    pub personal_fields: Vec<String>,
    /// It reimburses a receipt only this many days after its issue; null: no limit.
    #[schema(example = 180)]
    pub claim_within_days: Option<u32>,
    /// The last moment this receipt may be claimed with it (from `claimWithinDays`).
    #[schema(example = "2027-05-22T01:30:00Z")]
    pub claim_by: Option<chrono::DateTime<chrono::Utc>>,
    /// The claim's own fields it asks for (the claim's `fields`: no other name,
    /// every required one); empty: it names none and any fields are passed on.
    pub claim_fields: Vec<ClaimField>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReimburserListView {
    pub items: Vec<ReimburserOptionView>,
}

/// The reimbursers that accept a receipt's agency, with the personal fields each receives.
#[utoipa::path(
    get,
    path = "/v1/mp/reimbursers",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(ReimbursersQuery),
    responses(
        (status = 200, body = ReimburserListView, example = json!({"items": [{"appId": "insurer01", "name": "示例人寿保险", "kind": "commercial_insurer", "personalFields": ["name", "id_card_no"], "claimWithinDays": 180, "claimBy": "2027-05-22T01:30:00Z", "claimFields": [{"name": "bankAccount", "label": "收款银行账号", "required": true}, {"name": "policyNo", "label": "保单号", "required": false}]}]})),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/reimbursers")]
pub async fn reimbursers(
    state: web::Data<WalletState>,
    payer: Payer,
    query: web::Query<ReimbursersQuery>,
) -> Result<HttpResponse, ApiError> {
    let d = super::receipts::load(&state, &payer, query.receipt).await?;
    let items = claiming::reimbursers_for(&state, &d.agency_code, d.receipt.issued_at)
        .await?
        .into_iter()
        .map(|c| ReimburserOptionView {
            claim_by: c.claim_by.map(Into::into),
            claim_within_days: c.reimburser.claim_within_days,
            app_id: c.reimburser.app_id,
            name: c.reimburser.name,
            kind: c.reimburser.kind.as_str(),
            personal_fields: c.reimburser.personal_fields,
            claim_fields: c.reimburser.claim_fields,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ReimburserListView { items }))
}

/// One receipt of a claim, as the payer sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReceiptView {
    pub receipt_id: Uuid,
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    #[schema(example = "示例市第一人民医院")]
    pub agency_name: String,
    #[schema(example = "128.50")]
    pub total_amt: String,
    pub issued_at: DateTime<Utc>,
    /// INIT, LOCK, CLOSURE or CANCEL.
    #[schema(example = "INIT")]
    pub reimbursement_state: &'static str,
}

/// One change of a claim.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimEventView {
    /// submit, acknowledge, lock, close, unlock, reject, expire, withdraw, cancel.
    #[schema(example = "acknowledge")]
    pub action: String,
    pub from_status: Option<&'static str>,
    #[schema(example = "received")]
    pub to_status: &'static str,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A claim as its payer sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    pub id: Uuid,
    #[schema(example = "insurer01")]
    pub reimburser: String,
    #[schema(example = "示例人寿保险")]
    pub reimburser_name: String,
    /// submitted, received, locked, reimbursed, rejected, withdrawn or cancelled.
    #[schema(example = "submitted")]
    pub status: &'static str,
    /// The status in Chinese (已提交, 已受理, 审核中, 已报销, 未通过, 已撤回, 已作废).
    #[schema(example = "已提交")]
    pub status_text: &'static str,
    /// Reimbursed: the amount paid, yuan.
    #[schema(example = "100.00")]
    pub paid_amt: Option<String>,
    /// Rejected or cancelled: why.
    pub reason: Option<String>,
    pub consented_fields: Vec<String>,
    /// The claim's own fields, masked.
    pub fields: BTreeMap<String, String>,
    /// True while the payer may still withdraw it.
    pub withdrawable: bool,
    pub receipts: Vec<ClaimReceiptView>,
    /// Detail only: every change, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ClaimEventView>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimListView {
    pub items: Vec<ClaimView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Paging of the payer's claims, as the wallet's receipts are paged.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimListQuery {
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 20, at most `miniprogram.page_size_max`).
    pub limit: Option<u32>,
}

fn mask_value(v: &str) -> String {
    let chars: Vec<char> = v.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{}{tail}", "*".repeat(chars.len() - 4))
}

async fn claim_view(state: &WalletState, claim: &ClaimRecord, history: bool) -> Result<ClaimView, ApiError> {
    let mut views = claim_views(state, std::slice::from_ref(claim), history).await?;
    views
        .pop()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a claim without its view")))
}

/// The payer's view of these claims: their receipts, agencies and reimbursers are
/// read once for all of them, not once per claim or receipt.
async fn claim_views(state: &WalletState, claims: &[ClaimRecord], history: bool) -> Result<Vec<ClaimView>, ApiError> {
    let receipts = state.store.claims_receipts(claims).await?;
    let mut agency_ids: Vec<Uuid> = receipts.iter().flatten().map(|r| r.agency_id).collect();
    agency_ids.sort_unstable();
    agency_ids.dedup();
    let agencies: HashMap<Uuid, String> = state
        .store
        .agencies(&agency_ids)
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut views = Vec::with_capacity(claims.len());
    for (claim, stored) in claims.iter().zip(receipts) {
        let name = match names.get(claim.reimburser_app_id.as_str()) {
            Some(name) => name.clone(),
            None => {
                let name = state
                    .store
                    .reimburser(&claim.reimburser_app_id)
                    .await?
                    .map(|r| r.name)
                    .unwrap_or_default();
                names.insert(&claim.reimburser_app_id, name.clone());
                name
            }
        };
        let receipts = stored
            .into_iter()
            .map(|r| ClaimReceiptView {
                receipt_id: r.id,
                agency_name: agencies.get(&r.agency_id).cloned().unwrap_or_default(),
                bill_batch_code: r.bill_batch_code,
                bill_no: r.bill_no,
                total_amt: format_yuan(r.total_fen),
                issued_at: r.issued_at.into(),
                reimbursement_state: r.reimbursement_state.as_str(),
            })
            .collect();
        views.push(view_of(state, claim, name, receipts, history).await?);
    }
    Ok(views)
}

async fn view_of(
    state: &WalletState,
    claim: &ClaimRecord,
    name: String,
    receipts: Vec<ClaimReceiptView>,
    history: bool,
) -> Result<ClaimView, ApiError> {
    let fields = match claim.fields_sealed.as_deref() {
        None => BTreeMap::new(),
        Some(s) => state
            .keyring
            .open_json::<BTreeMap<String, String>>(s, &purpose::claim_fields(&claim.reimburser_app_id))
            .map_err(|e| ApiError::internal(anyhow::anyhow!("claim fields cannot be opened: {e}")))?
            .into_iter()
            .map(|(k, v)| (k, mask_value(&v)))
            .collect(),
    };
    let history = if history {
        Some(
            state
                .store
                .claim_history(claim.id)
                .await?
                .into_iter()
                .map(|e| ClaimEventView {
                    action: e.action,
                    from_status: e.from_status.map(|s| s.as_str()),
                    to_status: e.to_status.as_str(),
                    reason: e.reason,
                    at: e.at.into(),
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(ClaimView {
        id: claim.id,
        reimburser: claim.reimburser_app_id.clone(),
        reimburser_name: name,
        status: claim.status.as_str(),
        status_text: claim.status.label_zh(),
        paid_amt: claim.paid_fen.map(format_yuan),
        reason: claim.reason.clone(),
        consented_fields: claim.consented_fields.clone(),
        fields,
        withdrawable: claiming::withdrawable(claim.status),
        receipts,
        history,
        created_at: claim.created_at.into(),
        updated_at: claim.updated_at.into(),
    })
}

/// Submit a claim: receipts of the wallet to one reimburser, with the consented
/// personal data and the claim's own fields.
///
/// The consent must list exactly the reimburser's `personalFields` (`422
/// consent_mismatch`). Name, ID number and phone come from the registered
/// profile; other consented fields from `personalData`. Each receipt must be the
/// payer's own, accepted by the reimburser, not reversed, not locked or reimbursed
/// by another reimburser, and in no other open claim. The reimburser is told by
/// webhook (`claim.submitted`).
#[utoipa::path(
    post,
    path = "/v1/mp/claims",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    request_body(content = ClaimRequest, example = json!({"reimburser": "insurer01", "receipts": ["019ad1c0-0000-7000-8000-000000000001"], "consent": {"fields": ["name", "id_card_no"], "accepted": true}, "fields": {"bankAccount": "6222020200112233445"}})),
    responses(
        (status = 201, body = ClaimView, example = json!({"id": "019ad1c0-0000-7000-8000-0000000000c1", "reimburser": "insurer01", "reimburserName": "示例人寿保险", "status": "submitted", "statusText": "已提交", "paidAmt": null, "reason": null, "consentedFields": ["name", "id_card_no"], "fields": {"bankAccount": "***************3445"}, "withdrawable": true, "receipts": [{"receiptId": "019ad1c0-0000-7000-8000-000000000001", "billBatchCode": "11060124", "billNo": "0000000901", "agencyName": "示例市第一人民医院", "totalAmt": "128.50", "issuedAt": "2026-11-23T01:30:00Z", "reimbursementState": "INIT"}], "createdAt": "2026-11-24T02:00:00Z", "updatedAt": "2026-11-24T02:00:00Z"})),
        (status = 400, description = "`invalid_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`reimburser_not_found`, `receipt_not_found` (`errors[0].pointer` names the receipt)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`receipt_already_claimed`, `receipt_reversed`, `receipt_locked_by_other`, `receipt_already_closed`, `concurrent_change`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`consent_mismatch`, `reimburser_does_not_accept`, `claim_deadline_passed`, `validation_failed` (a consented field has no value, a field is malformed)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/claims")]
pub async fn submit(
    req: HttpRequest,
    state: web::Data<WalletState>,
    payer: Payer,
    body: web::Json<ClaimRequest>,
) -> Result<HttpResponse, ApiError> {
    let claimant = claiming::Claimant {
        payer: &payer.record,
        app_id: &payer.app.app_id,
        scope: payer.scope(),
        remote_addr: piaojia_web::client::client_ip(&req, &state.settings.trusted_proxies).map(|ip| ip.to_string()),
    };
    let claim = claiming::submit(&state, claimant, &body).await?;
    Ok(HttpResponse::Created().json(claim_view(&state, &claim, false).await?))
}

/// The payer's claims, newest first, with their status, a page at a time
/// (keyset: `nextCursor` is passed back as `cursor`).
#[utoipa::path(
    get,
    path = "/v1/mp/claims",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(ClaimListQuery),
    responses(
        (status = 200, body = ClaimListView),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: `cursor` or `limit` is malformed", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/claims")]
pub async fn list(
    state: web::Data<WalletState>,
    payer: Payer,
    query: web::Query<ClaimListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let max = state.settings.miniprogram.page_size_max;
    let mut p = Problems::default();
    let (after, limit) = super::receipts::page(&mut p, q.cursor.as_deref(), q.limit, max);
    p.into_result()?;
    // One more than asked tells whether another page follows.
    let mut claims = state
        .store
        .payer_claims(payer.id, after.map(|(at, id)| (at.into(), id)), i64::from(limit) + 1)
        .await?;
    let next_cursor = if claims.len() > limit as usize {
        claims.truncate(limit as usize);
        claims
            .last()
            .map(|c| super::receipts::encode_cursor(c.created_at.into(), c.id))
    } else {
        None
    };
    let items = claim_views(&state, &claims, false).await?;
    Ok(HttpResponse::Ok().json(ClaimListView { items, next_cursor }))
}

/// One of the payer's claims, with its history.
#[utoipa::path(
    get,
    path = "/v1/mp/claims/{claim_id}",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(("claim_id" = Uuid, Path)),
    responses(
        (status = 200, body = ClaimView),
        (status = 400, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`claim_not_found` (also for another payer's claim)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/claims/{claim_id}")]
pub async fn detail(
    state: web::Data<WalletState>,
    payer: Payer,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let claim = state
        .store
        .payer_claim(payer.id, path.into_inner())
        .await?
        .ok_or_else(claim_not_found)?;
    Ok(HttpResponse::Ok().json(claim_view(&state, &claim, true).await?))
}

/// Withdraw a claim the reimburser has not locked (submitted or received); the
/// reimburser is told by webhook (`claim.withdrawn`) and the receipts are free again.
#[utoipa::path(
    post,
    path = "/v1/mp/claims/{claim_id}/withdrawal",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(("claim_id" = Uuid, Path)),
    responses(
        (status = 200, body = ClaimView),
        (status = 400, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`claim_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`claim_locked` (the reimburser locked its receipts), `claim_closed` (already final)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/claims/{claim_id}/withdrawal")]
pub async fn withdraw(
    req: HttpRequest,
    state: web::Data<WalletState>,
    payer: Payer,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let remote = piaojia_web::client::client_ip(&req, &state.settings.trusted_proxies).map(|ip| ip.to_string());
    let claim = claiming::withdraw(&state, payer.id, path.into_inner(), remote).await?;
    Ok(HttpResponse::Ok().json(claim_view(&state, &claim, true).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_but_their_tail() {
        assert_eq!(mask_value("6222020200112233445"), "***************3445");
        assert_eq!(mask_value("abc"), "***");
    }
}
