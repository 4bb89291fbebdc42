//! The pages' routes. Every answer is a page (an error too); a page that needs
//! the payer signs them in first (web OAuth) and comes back.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use object_store::ObjectStoreExt as _;
use piaojia_core::money::format_yuan;
use piaojia_core::receipt::{BusType, PayerType};
use piaojia_miniprogram_api::possession;
use piaojia_store::wallets::{WalletAdd, WalletDetail, WalletQuery};
use piaojia_store::{ReimbursementState, StoredReceipt};
use serde_json::Value;
use uuid::Uuid;

use super::session::{self, PageSession};
use super::views::{self, AddForm, Detail, FilterForm, ListLine, State};
use super::{OfficialAccount, PageError, account_path, official_account, page};
use crate::state::AppState;

const PAGE_SIZE: i64 = 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(stylesheet)
        .service(oauth_callback)
        .service(list)
        .service(detail)
        .service(download)
        .service(paper)
        .service(add_to_wallet)
        .service(super::claims::form)
        .service(super::claims::submit)
        .service(super::claims::list)
        .service(super::claims::withdraw);
}

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

pub(super) fn beijing_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&beijing()).format("%Y-%m-%d %H:%M").to_string()
}

fn beijing_midnight(d: NaiveDate) -> Option<DateTime<Utc>> {
    beijing()
        .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

pub(super) fn yuan(fen: i64) -> String {
    format!("¥{}", format_yuan(fen))
}

pub(super) fn query_map(req: &HttpRequest) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

/// This request's path and query: where to come back after signing in.
pub(super) fn here(req: &HttpRequest) -> String {
    match req.query_string() {
        "" => req.path().to_owned(),
        q => format!("{}?{q}", req.path()),
    }
}

fn reimbursement_label(s: ReimbursementState) -> &'static str {
    match s {
        ReimbursementState::Init => "未报销",
        ReimbursementState::Lock => "报销中",
        ReimbursementState::Closure => "已报销",
        ReimbursementState::Cancel => "已作废",
    }
}

fn bus_type_label(code: &str) -> &'static str {
    BusType::from_code(code).map_or("医疗", |b| b.label_zh())
}

/// The account and its signed-in payer; `Err(response)` sends the browser to sign in.
pub(super) async fn signed_in(
    req: &HttpRequest,
    state: &AppState,
    appid: &str,
) -> Result<Result<(OfficialAccount, PageSession), HttpResponse>, PageError> {
    let oa = official_account(state, appid).await?;
    match session::current(req, state, &oa).await? {
        Some(s) => Ok(Ok((oa, s))),
        None => Ok(Err(session::sign_in(state, &oa, &here(req)))),
    }
}

/// Receipt `rid` of the signed-in payer's wallet, within this account's agency
/// (the same answer whoever else holds it); `Err(response)` sends the browser to sign in.
pub(super) async fn own_receipt(
    req: &HttpRequest,
    state: &AppState,
    appid: &str,
    rid: &str,
) -> Result<Result<(OfficialAccount, PageSession, WalletDetail), HttpResponse>, PageError> {
    let (oa, s) = match signed_in(req, state, appid).await? {
        Ok(v) => v,
        Err(redirect) => return Ok(Err(redirect)),
    };
    let rid = receipt_id(rid).map_err(|e| e.back_to(&oa.appid))?;
    match state
        .store
        .wallet_receipt(s.payer_id, rid, Some(&[oa.agency_id]))
        .await?
    {
        Some(w) => Ok(Ok((oa, s, w))),
        None => Err(PageError::receipt_not_found().back_to(&oa.appid)),
    }
}

/// The pages' one stylesheet.
#[utoipa::path(get, path = "/h5/static/h5.css", tag = "pages",
    responses((status = 200, description = "The stylesheet of the pages", content_type = "text/css", body = String)))]
#[get("/h5/static/h5.css")]
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(views::STYLESHEET)
}

/// WeChat's web-OAuth redirect back (`snsapi_base`): exchanges the code for the
/// openid, begins the session (cookie `pj_h5`: HttpOnly, Secure, SameSite=Lax,
/// `Path=/h5/{appId}`) and goes on to the page that asked for it.
#[utoipa::path(get, path = "/h5/{appId}/oauth", tag = "pages",
    params(("appId" = String, Path, description = "The official account's WeChat appid"),
        ("code" = String, Query, description = "WeChat's one-time code"),
        ("state" = String, Query, description = "The state we sent (bound to the browser)")),
    responses((status = 303, description = "Signed in: on to the page that asked"),
        (status = 400, description = "An error page: the sign-in was not started here or expired", content_type = "text/html"),
        (status = 401, description = "An error page: WeChat did not confirm the code", content_type = "text/html"),
        (status = 404, description = "An error page: no such official account", content_type = "text/html")))]
#[get("/h5/{appid}/oauth")]
pub async fn oauth_callback(
    req: HttpRequest,
    state: web::Data<AppState>,
    appid: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let oa = official_account(&state, &appid).await?;
    let q = query_map(&req);
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    session::callback(&req, &state, &oa, get("code"), get("state")).await
}

/// The filters of the list, parsed as the mini-program API parses them.
fn list_query(
    payer_id: Uuid,
    agency_id: Uuid,
    q: &BTreeMap<String, String>,
) -> (WalletQuery, FilterForm, Option<&'static str>) {
    let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let form = FilterForm {
        from: get("from"),
        to: get("to"),
        bus_type: get("busType"),
        state: get("state"),
        q: get("q").chars().take(50).collect(),
    };
    let mut problem = None;
    let mut date = |s: &str| -> Option<NaiveDate> {
        if s.is_empty() {
            return None;
        }
        let d = possession::parse_date(s);
        if d.is_none() {
            problem = Some("日期格式应为 年-月-日");
        }
        d
    };
    let from = date(&form.from);
    let to = date(&form.to);
    let bus_type = BusType::from_code(&form.bus_type).map(|b| b.as_code().to_owned());
    let reversed = match form.state.as_str() {
        "valid" => Some(false),
        "reversed" => Some(true),
        _ => None,
    };
    let after = q.get("cursor").and_then(|c| decode_cursor(c));
    let query = WalletQuery {
        payer_id,
        scope: Some(vec![agency_id]),
        issued_from: from.and_then(beijing_midnight).map(Into::into),
        issued_before: to.and_then(|d| d.succ_opt()).and_then(beijing_midnight).map(Into::into),
        bus_type,
        reversed,
        text: (!form.q.is_empty()).then(|| form.q.clone()),
        after: after.map(|(at, id)| (at.into(), id)),
        limit: PAGE_SIZE + 1,
        ..WalletQuery::default()
    };
    (query, form, problem)
}

pub(super) fn encode_cursor(issued_at: DateTime<Utc>, id: Uuid) -> String {
    B64URL.encode(format!("{}:{}", issued_at.timestamp_micros(), id.simple()))
}

pub(super) fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(B64URL.decode(s).ok()?).ok()?;
    let (micros, id) = raw.split_once(':')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// 我的票据: the payer's receipts of this account's agency, newest first, with
/// the wallet's filters (`from`, `to`: Beijing dates; `busType`; `state`:
/// `valid`|`reversed`; `q`: text in agency or item names; `cursor`: next page).
#[utoipa::path(get, path = "/h5/{appId}/receipts", tag = "pages",
    params(("appId" = String, Path, description = "The official account's WeChat appid"),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("busType" = Option<String>, Query),
        ("state" = Option<String>, Query), ("q" = Option<String>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "The list page", content_type = "text/html", body = String),
        (status = 302, description = "Not signed in: to WeChat's authorize page (snsapi_base)"),
        (status = 404, description = "An error page: no such official account", content_type = "text/html")))]
#[get("/h5/{appid}/receipts")]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    appid: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let (oa, s) = match signed_in(&req, &state, &appid).await? {
        Ok(v) => v,
        Err(redirect) => return Ok(redirect),
    };
    let q = query_map(&req);
    let (query, form, problem) = list_query(s.payer_id, oa.agency_id, &q);
    let mut items = state.store.wallet_page(&query).await?;
    let next = if items.len() as i64 > PAGE_SIZE {
        items.truncate(PAGE_SIZE as usize);
        items.last().map(|i| {
            let mut next = q.clone();
            next.insert("cursor".into(), encode_cursor(i.issued_at.as_datetime(), i.receipt_id));
            let qs: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(next.iter())
                .finish();
            format!("{}?{qs}", account_path(&oa.appid, "/receipts"))
        })
    } else {
        None
    };
    let lines: Vec<ListLine> = items
        .iter()
        .map(|i| ListLine {
            href: account_path(&oa.appid, &format!("/receipts/{}", i.receipt_id)),
            agency_name: i.agency_name.clone(),
            bus_type: bus_type_label(&i.bus_type),
            bill: format!("{} {}", i.bill_batch_code, i.bill_no),
            issued_at: beijing_time(i.issued_at.as_datetime()),
            amount: yuan(i.total_fen),
            state: if i.reversed { State::Reversed } else { State::Valid },
        })
        .collect();
    Ok(page(views::receipt_list(
        &oa.agency_name,
        &account_path(&oa.appid, "/receipts"),
        &account_path(&oa.appid, "/claims"),
        &form,
        problem,
        &lines,
        next.as_deref(),
    )))
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn fen(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// What the receipt page shows (the same facts as the mini-program's detail).
fn detail_of(state: &AppState, oa: &OfficialAccount, r: &StoredReceipt, agency_name: &str, in_wallet: bool) -> Detail {
    let d = &r.details;
    let payer = piaojia_core::receipt::masked_payer_name(&state.keyring, &r.payer_sealed);
    let mut facts = vec![
        ("开票单位", agency_name.to_owned()),
        ("票据代码", r.bill_batch_code.clone()),
        ("票据号码", r.bill_no.clone()),
        ("开票日期", beijing_time(r.issued_at.as_datetime())),
        ("业务类型", bus_type_label(&r.bus_type).to_owned()),
        ("交款人", payer),
        ("业务流水号", r.bus_no.clone()),
    ];
    for (label, key) in [
        ("病历号", "hospitalNo"),
        ("就诊号", "visitNo"),
        ("入院日期", "inHospitalDate"),
        ("出院日期", "outHospitalDate"),
    ] {
        let v = text(d, key);
        if !v.is_empty() {
            facts.push((label, v));
        }
    }
    let array = |key: &str| d.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let charges = array("chargeDetail")
        .iter()
        .map(|c| (text(c, "chargeName"), fen(c, "amt").map(yuan).unwrap_or_default()))
        .collect();
    let items = array("listDetail")
        .iter()
        .map(|c| {
            let unit = text(c, "unit");
            (
                text(c, "name"),
                format!("{}{unit}", text(c, "number")),
                fen(c, "amt").map(yuan).unwrap_or_default(),
            )
        })
        .collect();
    let s = d.get("settlement").cloned().unwrap_or(Value::Null);
    let settlement = [
        ("统筹基金支付", "fundPay"),
        ("个人账户支付", "accountPay"),
        ("其他基金支付", "otherfundPay"),
        ("个人自费", "ownPay"),
        ("个人自付", "selfPayAmt"),
        ("个人现金支付", "selfCashPay"),
    ]
    .into_iter()
    .filter_map(|(label, key)| fen(&s, key).map(|f| (label, yuan(f))))
    .collect();
    let base = format!("/receipts/{}", r.id);
    Detail {
        agency_name: agency_name.to_owned(),
        title: format!("{}电子票据", bus_type_label(&r.bus_type)),
        amount: yuan(r.total_fen),
        state: if r.reversal.is_some() {
            State::Reversed
        } else {
            State::Valid
        },
        reimbursement: reimbursement_label(r.reimbursement_state),
        facts,
        charges,
        items,
        settlement,
        reversal: r.reversal.as_ref().map(|v| {
            (
                format!("{} {}", v.red_bill_batch_code, v.red_bill_no),
                beijing_time(v.reversed_at.as_datetime()),
                v.reason.clone(),
            )
        }),
        download: (in_wallet && r.file.is_some()).then(|| account_path(&oa.appid, &format!("{base}/file"))),
        card_link: (in_wallet && r.reversal.is_none()).then(|| account_path(&oa.appid, &format!("{base}/card"))),
        claim: None,
        claim_pending: None,
        back: Some(account_path(&oa.appid, "/receipts")),
    }
}

fn receipt_id(raw: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(raw).map_err(|_| PageError::receipt_not_found())
}

/// One receipt of the payer's wallet: items, the medical settlement breakdown,
/// its state (已开具 / 已冲红, reimbursement), download and "收入微信卡包".
#[utoipa::path(get, path = "/h5/{appId}/receipts/{receiptId}", tag = "pages",
    params(("appId" = String, Path, description = "The official account's WeChat appid"), ("receiptId" = Uuid, Path)),
    responses((status = 200, description = "The receipt page", content_type = "text/html", body = String),
        (status = 302, description = "Not signed in: to WeChat's authorize page (snsapi_base)"),
        (status = 404, description = "An error page: not in this payer's wallet (whoever else holds it)", content_type = "text/html")))]
#[get("/h5/{appid}/receipts/{receipt_id}")]
pub async fn detail(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (appid, rid) = path.into_inner();
    let (oa, s, w) = match own_receipt(&req, &state, &appid, &rid).await? {
        Ok(v) => v,
        Err(redirect) => return Ok(redirect),
    };
    let notice = query_map(&req).contains_key("added").then_some("已加入您的票夹。");
    let mut d = detail_of(&state, &oa, &w.receipt, &w.agency_name, true);
    match super::claims::offer(&state, &oa, s.payer_id, &w).await? {
        Some(super::claims::ClaimOffer::Claim(href)) => d.claim = Some(href),
        Some(super::claims::ClaimOffer::Pending(href)) => d.claim_pending = Some(href),
        None => {}
    }
    Ok(page(views::receipt_detail(&d, None, notice)))
}

/// The receipt's file (PDF or OFD), for the payer whose wallet holds it.
#[utoipa::path(get, path = "/h5/{appId}/receipts/{receiptId}/file", tag = "pages",
    params(("appId" = String, Path), ("receiptId" = Uuid, Path)),
    responses((status = 200, description = "The file", content_type = "application/pdf"),
        (status = 302, description = "Not signed in: to WeChat's authorize page"),
        (status = 404, description = "An error page: not in this wallet, or no file", content_type = "text/html")))]
#[get("/h5/{appid}/receipts/{receipt_id}/file")]
pub async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (appid, rid) = path.into_inner();
    let (oa, _, w) = match own_receipt(&req, &state, &appid, &rid).await? {
        Ok(v) => v,
        Err(redirect) => return Ok(redirect),
    };
    let Some(file) = &w.receipt.file else {
        return Err(PageError::no_file().back_to(&oa.appid));
    };
    let bytes = async {
        state
            .wallet
            .files
            .get(&object_store::path::Path::from(file.object_key.as_str()))
            .await?
            .bytes()
            .await
    }
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "reading a receipt file failed");
        PageError::unavailable()
    })?;
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    if sha != file.sha256 {
        tracing::error!(receipt_id = %rid, "a stored file does not match its record");
        return Err(PageError::unavailable());
    }
    let (mime, ext) = if file.format == "ofd" {
        ("application/ofd", "ofd")
    } else {
        ("application/pdf", "pdf")
    };
    Ok(HttpResponse::Ok()
        .content_type(mime)
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}-{}.{ext}\"",
                w.receipt.bill_batch_code, w.receipt.bill_no
            ),
        ))
        .body(bytes))
}

/// The one receipt of this agency a paper QR claim proves (code, number, check
/// code; amount and date when given), limited per client address.
async fn proven_paper_receipt(
    req: &HttpRequest,
    state: &AppState,
    oa: &OfficialAccount,
    fields: &BTreeMap<String, String>,
) -> Result<StoredReceipt, PageError> {
    let ip = piaojia_web::client::client_ip(req, &state.settings.server.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    if state.pages.paper_limits.check(&[(PAPER_LIMIT, &ip)]).await.is_err() {
        return Err(PageError::too_many());
    }
    let get = |k: &str| fields.get(k).map(String::as_str);
    let claim = match get("qr") {
        Some(qr) => possession::parse_qr(qr),
        None => possession::claim(
            get("billBatchCode").unwrap_or_default(),
            get("billNo").unwrap_or_default(),
            get("random").unwrap_or_default(),
            get("totalAmt"),
            get("issueDate"),
        ),
    }
    .map_err(|_| PageError::paper_not_proven())?;
    let candidates = state
        .store
        .find_receipts(&claim.bill_batch_code, &claim.bill_no)
        .await?;
    let mut proven = candidates
        .into_iter()
        .filter(|r| possession::proves(r, &claim) && r.payer_type == PayerType::Person && r.agency_id == oa.agency_id);
    match (proven.next(), proven.next()) {
        (Some(r), None) => Ok(r),
        _ => Err(PageError::paper_not_proven()),
    }
}

/// The rate limit of paper-QR checks (per client address).
pub const PAPER_LIMIT: &str = "paper_qr";

/// The claim fields a paper QR carries, passed on to the add form.
const CLAIM_FIELDS: [&str; 6] = ["qr", "billBatchCode", "billNo", "random", "totalAmt", "issueDate"];

/// Scan to view (a): the QR printed on a paper receipt or settlement slip opens
/// `/h5/{appId}/paper?billBatchCode=…&billNo=…&random=…[&totalAmt=…&issueDate=…]`
/// (or `?qr=<the issuer platform's verification payload>`): after signing in,
/// the payer sees that one receipt, with "加入我的票夹".
#[utoipa::path(get, path = "/h5/{appId}/paper", tag = "pages",
    params(("appId" = String, Path), ("billBatchCode" = Option<String>, Query), ("billNo" = Option<String>, Query),
        ("random" = Option<String>, Query, description = "校验码"), ("totalAmt" = Option<String>, Query), ("issueDate" = Option<String>, Query),
        ("qr" = Option<String>, Query, description = "A whole QR payload instead of the fields")),
    responses((status = 200, description = "The receipt page with the add form", content_type = "text/html", body = String),
        (status = 302, description = "Not signed in: to WeChat's authorize page"),
        (status = 404, description = "An error page: the claim proves no receipt of this agency (nothing else said)", content_type = "text/html"),
        (status = 429, description = "An error page: too many checks from this address", content_type = "text/html")))]
#[get("/h5/{appid}/paper")]
pub async fn paper(
    req: HttpRequest,
    state: web::Data<AppState>,
    appid: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let (oa, s) = match signed_in(&req, &state, &appid).await? {
        Ok(v) => v,
        Err(redirect) => return Ok(redirect),
    };
    let fields = query_map(&req);
    let r = proven_paper_receipt(&req, &state, &oa, &fields)
        .await
        .map_err(|e| e.back_to(&oa.appid))?;
    let held = state
        .store
        .wallet_receipt(s.payer_id, r.id, Some(&[oa.agency_id]))
        .await?
        .is_some();
    let d = detail_of(&state, &oa, &r, &oa.agency_name, held);
    let add = (!held).then(|| AddForm {
        action: account_path(&oa.appid, "/wallet"),
        csrf: s.csrf.clone(),
        fields: CLAIM_FIELDS
            .iter()
            .filter_map(|k| fields.get(*k).map(|v| (*k, v.clone())))
            .collect(),
    });
    let notice = held.then_some("这张票据已在您的票夹中。");
    Ok(page(views::receipt_detail(&d, add.as_ref(), notice)))
}

/// "加入我的票夹" from the paper-QR page: the form repeats the claim and carries
/// the session's CSRF token; the receipt is added by possession.
#[utoipa::path(post, path = "/h5/{appId}/wallet", tag = "pages",
    params(("appId" = String, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`csrf` and the claim fields of the paper page"),
    responses((status = 303, description = "Added: on to the receipt's page"),
        (status = 403, description = "An error page: missing or wrong CSRF token", content_type = "text/html"),
        (status = 404, description = "An error page: the claim proves no receipt", content_type = "text/html")))]
#[post("/h5/{appid}/wallet")]
pub async fn add_to_wallet(
    req: HttpRequest,
    state: web::Data<AppState>,
    appid: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    let oa = official_account(&state, &appid).await?;
    let Some(s) = session::current(&req, &state, &oa).await? else {
        return Err(PageError::csrf().back_to(&oa.appid));
    };
    if body.len() > 8 * 1024 {
        return Err(PageError::bad_request().back_to(&oa.appid));
    }
    let fields: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !s.check_csrf(fields.get("csrf").map(String::as_str).unwrap_or_default()) {
        return Err(PageError::csrf().back_to(&oa.appid));
    }
    let r = proven_paper_receipt(&req, &state, &oa, &fields)
        .await
        .map_err(|e| e.back_to(&oa.appid))?;
    let added = state.store.add_to_wallet(s.payer_id, r.id).await?;
    tracing::info!(payer_id = %s.payer_id, receipt_id = %r.id, new = added == WalletAdd::Added, "receipt added from a paper QR");
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            account_path(&oa.appid, &format!("/receipts/{}?added=1", r.id)),
        ))
        .finish())
}
