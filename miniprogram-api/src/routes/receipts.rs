//! The wallet: the payer's receipts with filters and keyset pagination, a receipt
//! in full, adding one by possession, removing one, and the payer's own tags and
//! notes. Everything is bounded by the payer and by the mini-program's agencies.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use piaojia_core::pii::purpose;
use piaojia_store::ReimbursementState;
use piaojia_store::wallets::{WalletAdd, WalletAnnotation, WalletDetail, WalletItem, WalletQuery};
use piaojia_web::error::{ApiError, ErrorCode, Problem};
use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Problems;
use crate::possession::{self, Claim};
use crate::views::{
    AddedView, FileInfoView, ReceiptDetailView, ReversalInfoView, WalletItemView, WalletPageView, settlement_yuan,
    yuanify,
};
use crate::{Payer, WalletState};

const DEFAULT_PAGE: u32 = 20;

fn not_found() -> ApiError {
    ApiError::with(ErrorCode::ReceiptNotFound, "no such receipt in this wallet")
}

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

fn beijing_midnight(d: NaiveDate) -> Option<DateTime<Utc>> {
    beijing()
        .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

pub(crate) fn encode_cursor(issued_at: DateTime<Utc>, id: Uuid) -> String {
    B64URL.encode(format!("{}:{}", issued_at.timestamp_micros(), id.simple()))
}

/// A page's `cursor` (a `nextCursor`) and `limit` (1 to `max`, 20 when absent),
/// each problem pushed onto `p`.
pub(crate) fn page(
    p: &mut Problems,
    cursor: Option<&str>,
    limit: Option<u32>,
    max: u32,
) -> (Option<(DateTime<Utc>, Uuid)>, u32) {
    let after = cursor.and_then(|c| {
        let parsed = decode_cursor(c);
        if parsed.is_none() {
            p.push("/cursor", "invalid_value", "use nextCursor of the previous page");
        }
        parsed
    });
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > max {
        p.push("/limit", "out_of_range", format!("between 1 and {max}"));
    }
    (after, limit)
}

pub(crate) fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(B64URL.decode(s).ok()?).ok()?;
    let (micros, id) = raw.split_once(':')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// Filters of the wallet list. Dates are Beijing dates (`yyyy-MM-dd`), both ends
/// included; amounts are yuan.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The issuing agency's code.
    pub agency: Option<String>,
    /// Issued on or after this date.
    #[param(example = "2026-11-01")]
    pub from: Option<String>,
    /// Issued on or before this date.
    #[param(example = "2026-11-30")]
    pub to: Option<String>,
    /// `01` 住院, `02` 门诊, `03` 急诊, `04` 门特, `05` 体检, `06` 挂号.
    pub bus_type: Option<String>,
    #[param(example = "100.00")]
    pub min_amount: Option<String>,
    pub max_amount: Option<String>,
    /// `true`: only reversed (冲红) receipts; `false`: only valid ones.
    pub reversed: Option<bool>,
    /// `INIT`, `LOCK`, `CLOSURE` or `CANCEL`.
    pub reimbursement_state: Option<String>,
    /// Text in the agency's name or the items' names.
    #[param(example = "血常规")]
    pub q: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 20, at most `miniprogram.page_size_max`).
    pub limit: Option<u32>,
}

fn wallet_query(payer: &Payer, q: ListQuery, max: u32) -> Result<WalletQuery, ApiError> {
    let mut p = Problems::default();
    let mut date = |name: &str, v: Option<&str>| -> Option<NaiveDate> {
        let v = v?;
        let d = possession::parse_date(v);
        if d.is_none() {
            p.push(&format!("/{name}"), "invalid_format", "a date yyyy-MM-dd");
        }
        d
    };
    let from = date("from", q.from.as_deref());
    let to = date("to", q.to.as_deref());
    let mut amount = |name: &str, v: Option<&str>| -> Option<i64> {
        let v = v?;
        piaojia_core::money::parse_yuan(v)
            .inspect_err(|_| p.push(&format!("/{name}"), "invalid_format", "yuan with at most 2 decimals"))
            .ok()
    };
    let min_fen = amount("minAmount", q.min_amount.as_deref());
    let max_fen = amount("maxAmount", q.max_amount.as_deref());
    let reimbursement_state = match q.reimbursement_state.as_deref() {
        None => None,
        Some(s) => {
            let parsed = ReimbursementState::parse(s);
            if parsed.is_none() {
                p.push("/reimbursementState", "invalid_value", "INIT, LOCK, CLOSURE or CANCEL");
            }
            parsed
        }
    };
    if q.bus_type
        .as_deref()
        .is_some_and(|b| b.len() != 2 || !b.bytes().all(|c| c.is_ascii_digit()))
    {
        p.push("/busType", "invalid_format", "a two-digit business type code");
    }
    if q.agency.as_deref().is_some_and(|a| a.is_empty() || a.len() > 64) {
        p.push("/agency", "invalid_format", "an agency code");
    }
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > 50) {
        p.push("/q", "too_long", "at most 50 characters");
    }
    let (after, limit) = page(&mut p, q.cursor.as_deref(), q.limit, max);
    p.into_result()?;
    Ok(WalletQuery {
        payer_id: payer.id,
        scope: payer.scope().map(<[Uuid]>::to_vec),
        agency_code: q.agency,
        issued_from: from.and_then(beijing_midnight).map(Into::into),
        issued_before: to.and_then(|d| d.succ_opt()).and_then(beijing_midnight).map(Into::into),
        bus_type: q.bus_type,
        min_fen,
        max_fen,
        reversed: q.reversed,
        reimbursement_state,
        text: text.map(str::to_owned),
        after: after.map(|(at, id)| (at.into(), id)),
        // One more than asked tells whether another page follows.
        limit: i64::from(limit) + 1,
    })
}

/// The payer's receipts, newest issue first.
#[utoipa::path(
    get,
    path = "/v1/mp/receipts",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the wallet", body = WalletPageView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a filter is malformed (the pointer names the parameter)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/receipts")]
pub async fn list(
    state: web::Data<WalletState>,
    payer: Payer,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = wallet_query(&payer, query.into_inner(), state.settings.miniprogram.page_size_max)?;
    let page = (q.limit - 1) as usize;
    let mut items = state.store.wallet_page(&q).await?;
    let next_cursor = if items.len() > page {
        items.truncate(page);
        items.last().map(|i| encode_cursor(i.issued_at.into(), i.receipt_id))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(WalletPageView {
        items: items.into_iter().map(WalletItemView::from).collect(),
        next_cursor,
    }))
}

fn summary(d: &WalletDetail) -> WalletItemView {
    let r = &d.receipt;
    WalletItemView::from(WalletItem {
        receipt_id: r.id,
        agency_code: d.agency_code.clone(),
        agency_name: d.agency_name.clone(),
        bill_batch_code: r.bill_batch_code.clone(),
        bill_no: r.bill_no.clone(),
        bus_type: r.bus_type.clone(),
        issued_at: r.issued_at,
        total_fen: r.total_fen,
        reversed: r.reversal.is_some(),
        reimbursement_state: r.reimbursement_state,
        has_file: r.file.is_some(),
        source: d.source,
        tags: d.tags.clone(),
        added_at: d.added_at,
    })
}

fn detail_view(state: &WalletState, d: WalletDetail) -> ReceiptDetailView {
    let r = &d.receipt;
    let payer = piaojia_core::receipt::masked_payer_name(&state.keyring, &r.payer_sealed);
    let note = d.note_sealed.as_deref().and_then(|n| {
        state
            .keyring
            .open(n, purpose::WALLET_NOTE)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    });
    let details = &r.details;
    let pick = |key: &str| details.get(key).map(yuanify).unwrap_or(serde_json::json!([]));
    let mut visit = serde_json::Map::new();
    for key in ["hospitalNo", "visitNo", "inHospitalDate", "outHospitalDate"] {
        if let Some(v) = details.get(key) {
            visit.insert(key.to_owned(), v.clone());
        }
    }
    ReceiptDetailView {
        summary: summary(&d),
        payer,
        bus_no: r.bus_no.clone(),
        charge_detail: pick("chargeDetail"),
        list_detail: pick("listDetail"),
        pay_channel_detail: pick("payChannelDetail"),
        settlement: settlement_yuan(details.get("settlement")),
        visit: serde_json::Value::Object(visit),
        file: r.file.as_ref().map(|f| FileInfoView {
            format: f.format.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
        }),
        reversal: r.reversal.as_ref().map(|v| ReversalInfoView {
            red_bill_batch_code: v.red_bill_batch_code.clone(),
            red_bill_no: v.red_bill_no.clone(),
            reversed_at: v.reversed_at.into(),
            reason: v.reason.clone(),
        }),
        note,
    }
}

pub(crate) async fn load(state: &WalletState, payer: &Payer, receipt_id: Uuid) -> Result<WalletDetail, ApiError> {
    state
        .store
        .wallet_receipt(payer.id, receipt_id, payer.scope())
        .await?
        .ok_or_else(not_found)
}

/// A receipt of the wallet in full: items, the medical settlement breakdown, states.
#[utoipa::path(
    get,
    path = "/v1/mp/receipts/{receipt_id}",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(("receipt_id" = Uuid, Path, description = "The receipt's id (`id` in the list)")),
    responses(
        (status = 200, description = "The receipt", body = ReceiptDetailView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`: not in this wallet (or not this mini-program's)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/receipts/{receipt_id}")]
pub async fn detail(
    state: web::Data<WalletState>,
    payer: Payer,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let d = load(&state, &payer, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(detail_view(&state, d)))
}

/// Proof of possession: the QR payload, or code + number + check code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddRequest {
    /// The QR code printed on the receipt, as scanned.
    pub qr: Option<String>,
    #[schema(example = "11060124")]
    pub bill_batch_code: Option<String>,
    #[schema(example = "0000000901")]
    pub bill_no: Option<String>,
    /// 校验码, 6 characters.
    #[schema(example = "a1b2c3")]
    pub random: Option<String>,
    /// Optional: the total in yuan, checked when given.
    #[schema(example = "128.50")]
    pub total_amt: Option<String>,
    /// Optional: the issue date (Beijing), checked when given.
    #[schema(example = "2026-11-23")]
    pub issue_date: Option<String>,
}

fn add_claim(req: &AddRequest) -> Result<Claim, ApiError> {
    let malformed = |m: possession::Malformed| {
        let mut p = Problems::default();
        p.push(m.pointer, "invalid_format", m.message);
        p.into_result()
            .err()
            .unwrap_or_else(|| ApiError::internal(anyhow::anyhow!("no problem")))
    };
    match (&req.qr, &req.bill_batch_code, &req.bill_no, &req.random) {
        (Some(qr), None, None, None) => possession::parse_qr(qr).map_err(malformed),
        (None, Some(code), Some(no), Some(random)) => {
            possession::claim(code, no, random, req.total_amt.as_deref(), req.issue_date.as_deref()).map_err(malformed)
        }
        _ => {
            let mut p = Problems::default();
            p.push(
                "",
                "invalid_combination",
                "send qr, or billBatchCode, billNo and random",
            );
            Err(p
                .into_result()
                .err()
                .unwrap_or_else(|| ApiError::internal(anyhow::anyhow!("no problem"))))
        }
    }
}

/// Add a receipt the payer holds (scanned or typed from a paper or screen copy).
///
/// Any combination that does not prove possession of a person's receipt of this
/// mini-program's agencies gets the same `404 receipt_not_found`, and attempts are
/// limited per payer and per client address, so receipts cannot be enumerated.
#[utoipa::path(
    post,
    path = "/v1/mp/receipts",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    request_body(content = AddRequest, examples(
        ("qr" = (value = json!({"qr": "https://verify.example.gov.cn/pj?billBatchCode=11060124&billNo=0000000901&random=a1b2c3&totalAmt=128.50&issueDate=20261123"}))),
        ("typed" = (value = json!({"billBatchCode": "11060124", "billNo": "0000000901", "random": "a1b2c3", "totalAmt": "128.50"})))
    )),
    responses(
        (status = 201, description = "Added to the wallet", body = AddedView),
        (status = 200, description = "Already in the wallet", body = AddedView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`: these details prove no receipt", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: malformed details", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_attempts` (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/receipts")]
pub async fn add(
    req: HttpRequest,
    state: web::Data<WalletState>,
    payer: Payer,
    body: web::Json<AddRequest>,
) -> Result<HttpResponse, ApiError> {
    let claim = add_claim(&body)?;
    let ip = piaojia_web::client::client_ip(&req, &state.settings.trusted_proxies);
    if let Err(wait) = state.limits.check(payer.id, ip).await {
        return Err(ApiError::too_many_requests(
            ErrorCode::TooManyAttempts,
            wait.as_secs() + 1,
        ));
    }
    // Code and number may name receipts of several agencies: the check code (and
    // the amount and date when given) tells which one the payer holds.
    let candidates = state
        .store
        .find_receipts(&claim.bill_batch_code, &claim.bill_no)
        .await?;
    let mut proven = candidates.into_iter().filter(|r| {
        possession::proves(r, &claim)
            && r.payer_type == piaojia_core::receipt::PayerType::Person
            && payer.app.covers(r.agency_id)
    });
    // Two that fit alike cannot be told apart: neither is taken.
    let proven = match (proven.next(), proven.next()) {
        (Some(r), None) => Some(r),
        _ => None,
    };
    let Some(receipt) = proven else {
        tracing::info!(payer_id = %payer.id, "possession not proven");
        return Err(ApiError::with(
            ErrorCode::ReceiptNotFound,
            "no receipt matches these details",
        ));
    };
    let added = state.store.add_to_wallet(payer.id, receipt.id).await? == WalletAdd::Added;
    let d = load(&state, &payer, receipt.id).await?;
    let view = AddedView {
        added,
        receipt: summary(&d),
    };
    Ok(if added {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

/// Remove a receipt from the wallet (for good: it is not collected again; adding
/// it by possession brings it back).
#[utoipa::path(
    delete,
    path = "/v1/mp/receipts/{receipt_id}",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(("receipt_id" = Uuid, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/v1/mp/receipts/{receipt_id}")]
pub async fn remove(
    state: web::Data<WalletState>,
    payer: Payer,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if state
        .store
        .remove_from_wallet(payer.id, path.into_inner(), payer.scope())
        .await?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(not_found())
    }
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The payer's own tags and note; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnnotateRequest {
    /// Replaces the tags: at most 10, each 1 to 20 characters.
    #[schema(example = json!(["医保", "2026"]))]
    pub tags: Option<Vec<String>>,
    /// Up to 200 characters (kept encrypted); `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "女儿的门诊")]
    pub note: Option<Option<String>>,
}

/// Tag a receipt or write a note on it.
#[utoipa::path(
    patch,
    path = "/v1/mp/receipts/{receipt_id}",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(("receipt_id" = Uuid, Path)),
    request_body(content = AnnotateRequest, example = json!({"tags": ["医保"], "note": "待报销"})),
    responses(
        (status = 200, description = "The receipt", body = ReceiptDetailView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/v1/mp/receipts/{receipt_id}")]
pub async fn annotate(
    state: web::Data<WalletState>,
    payer: Payer,
    path: web::Path<Uuid>,
    body: web::Json<AnnotateRequest>,
) -> Result<HttpResponse, ApiError> {
    let receipt_id = path.into_inner();
    let req = body.into_inner();
    let mut p = Problems::default();
    let tags = req.tags.map(|tags| {
        if tags.len() > 10 {
            p.push("/tags", "too_many_items", "at most 10 tags");
        }
        let mut clean: Vec<String> = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            let t = t.trim();
            let n = t.chars().count();
            if n == 0 || n > 20 || t.chars().any(char::is_control) {
                p.push(&format!("/tags/{i}"), "invalid_format", "1 to 20 characters");
            } else if !clean.iter().any(|c| c == t) {
                clean.push(t.to_owned());
            }
        }
        clean
    });
    let note = req.note.map(|note| {
        note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).map(|n| {
            if n.chars().count() > 200 || n.chars().any(|c| c.is_control() && c != '\n') {
                p.push("/note", "invalid_format", "at most 200 characters");
            }
            state.keyring.seal(n.as_bytes(), purpose::WALLET_NOTE)
        })
    });
    p.into_result()?;
    let changed = state
        .store
        .annotate_wallet_entry(
            payer.id,
            receipt_id,
            payer.scope(),
            WalletAnnotation {
                tags,
                note_sealed: note,
            },
        )
        .await?;
    if !changed {
        return Err(not_found());
    }
    let d = load(&state, &payer, receipt_id).await?;
    Ok(HttpResponse::Ok().json(detail_view(&state, d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).expect("time");
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(&B64URL.encode("12:nope")), None);
    }

    #[test]
    fn beijing_dates_start_at_16_utc() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
        assert_eq!(
            beijing_midnight(d).map(|t| t.to_rfc3339()),
            Some("2026-11-22T16:00:00+00:00".to_owned())
        );
    }
}
