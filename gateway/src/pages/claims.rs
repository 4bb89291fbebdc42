//! Claiming reimbursement from the pages (在线报销): a receipt's claim form (the
//! reimbursers accepting its agency, the personal fields each receives, its
//! deadline, the consent, the claim's own fields), its submission, the payer's
//! claims (我的报销) with their status, and withdrawal. The rules are the
//! mini-program API's, in one place: [`piaojia_miniprogram_api::claiming`].
//!
//! Every form carries the session's CSRF token; every refusal is the form again
//! (or an error page) in Chinese; only the signed-in payer's own receipts and
//! claims of this account's agency are ever reached.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use piaojia_core::parties::ClaimField;
use piaojia_core::parties::ReimburserKind;
use piaojia_miniprogram_api::claiming::{self, ClaimConsent, ClaimRequest, Claimant, PROFILE_REQUIRED};
use piaojia_store::wallets::{WalletDetail, WalletQuery};
use piaojia_store::{ClaimRecord, ClaimStatus, ReimbursementState, Timestamp};
use piaojia_web::error::{ApiError, ErrorCode};
use uuid::Uuid;

use super::routes::{beijing_time, decode_cursor, encode_cursor, own_receipt, query_map, signed_in, yuan};
use super::session::{self, PageSession};
use super::views::{self, ClaimForm, ClaimLine, OtherReceipt, OwnField, ReimburserOption};
use super::{OfficialAccount, PageError, account_path, official_account, page};
use crate::state::AppState;

/// The payer's claims one page of 我的报销 lists (newest first; "更早的申请" for more).
const CLAIMS_SHOWN: i64 = 20;
/// The wallet's other receipts a claim form offers at most.
const OTHERS_SHOWN: i64 = 50;
/// Largest form body accepted.
const FORM_MAX: usize = 16 * 1024;

/// Consented personal fields the payer types in (the others come from the profile).
const TYPED_FIELDS: [&str; 2] = ["email", "medical_card_no"];

pub fn field_label(field: &str) -> &'static str {
    match field {
        "name" => "姓名",
        "id_card_no" => "身份证号",
        "phone" => "手机号",
        "email" => "电子邮箱",
        "medical_card_no" => "医保卡号",
        _ => "其他信息",
    }
}

fn kind_label(kind: ReimburserKind) -> &'static str {
    match kind {
        ReimburserKind::MedicalInsurance => "医保经办机构",
        ReimburserKind::CommercialInsurer => "商业保险公司",
        ReimburserKind::Employer => "工作单位",
    }
}

/// A claim's status as the payer reads it on the pages: the same words as the
/// mini-program and the messages, with the amount paid or the reason.
pub fn status_label(c: &ClaimRecord) -> String {
    let label = c.status.label_zh();
    let detail = match c.status {
        ClaimStatus::Reimbursed => c.paid_fen.map(yuan),
        ClaimStatus::Rejected | ClaimStatus::Cancelled => c.reason.clone().filter(|r| !r.is_empty()),
        _ => None,
    };
    match detail {
        Some(d) => format!("{label}（{d}）"),
        None => label.to_owned(),
    }
}

/// True when one of the payer's own open claims holds this receipt.
async fn in_own_open_claim(state: &AppState, payer_id: Uuid, receipt_id: Uuid) -> Result<bool, PageError> {
    Ok(state
        .store
        .open_claims_of(&[receipt_id])
        .await?
        .iter()
        .any(|(_, _, payer)| *payer == Some(payer_id)))
}

/// The claim's own fields a reimburser is asked on the form: the ones it names,
/// or the usual pair (bank account, note) when it names none.
fn asked_fields(r: &piaojia_store::Reimburser) -> Vec<ClaimField> {
    if r.claim_fields.is_empty() {
        ClaimField::defaults()
    } else {
        r.claim_fields.clone()
    }
}

fn own_field_input(app_id: &str, name: &str) -> String {
    format!("field.{app_id}.{name}")
}

/// What the receipt page offers about reimbursement: "申请报销" for a receipt
/// still to be claimed, or the way to the open claim holding it.
pub enum ClaimOffer {
    Claim(String),
    Pending(String),
}

pub async fn offer(
    state: &AppState,
    oa: &OfficialAccount,
    payer_id: Uuid,
    w: &WalletDetail,
) -> Result<Option<ClaimOffer>, PageError> {
    let r = &w.receipt;
    if r.reversal.is_some() {
        return Ok(None);
    }
    if in_own_open_claim(state, payer_id, r.id).await? {
        return Ok(Some(ClaimOffer::Pending(account_path(&oa.appid, "/claims"))));
    }
    if r.reimbursement_state != ReimbursementState::Init {
        return Ok(None);
    }
    Ok(Some(ClaimOffer::Claim(account_path(
        &oa.appid,
        &format!("/receipts/{}/claim", r.id),
    ))))
}

/// The wallet's other receipts of this account's agency a claim may include:
/// not reversed, not locked or reimbursed, in no open claim, newest first.
async fn other_claimable(
    state: &AppState,
    oa: &OfficialAccount,
    payer_id: Uuid,
    except: Uuid,
) -> Result<Vec<piaojia_store::wallets::WalletItem>, PageError> {
    let items = state
        .store
        .wallet_page(&WalletQuery {
            payer_id,
            scope: Some(vec![oa.agency_id]),
            agency_code: None,
            issued_from: None,
            issued_before: None,
            bus_type: None,
            min_fen: None,
            max_fen: None,
            reversed: Some(false),
            reimbursement_state: Some(ReimbursementState::Init),
            text: None,
            after: None,
            limit: OTHERS_SHOWN,
        })
        .await?;
    let ids: Vec<Uuid> = items.iter().map(|i| i.receipt_id).collect();
    let held: Vec<Uuid> = state
        .store
        .open_claims_of(&ids)
        .await?
        .into_iter()
        .map(|(r, _, _)| r)
        .collect();
    Ok(items
        .into_iter()
        .filter(|i| i.receipt_id != except && !held.contains(&i.receipt_id))
        .collect())
}

/// The form of a receipt's claim, with what the payer chose when it comes again.
#[allow(clippy::too_many_arguments)]
async fn claim_form(
    state: &AppState,
    oa: &OfficialAccount,
    s: &PageSession,
    w: &WalletDetail,
    chosen: Option<&str>,
    chosen_others: &[Uuid],
    typed: &BTreeMap<String, String>,
    problem: Option<String>,
) -> Result<ClaimForm, PageError> {
    let payer = state
        .store
        .payer(s.payer_id)
        .await?
        .ok_or_else(PageError::unavailable)?;
    let registered = payer.profile_sealed.is_some();
    let choices = claiming::reimbursers_for(&state.wallet, &w.agency_code, w.receipt.issued_at)
        .await
        .map_err(|e| api_unavailable(&e))?;
    let options = choices
        .into_iter()
        .map(|c| {
            let r = c.reimburser;
            let needs_profile = r
                .personal_fields
                .iter()
                .any(|f| claiming::FROM_PROFILE.contains(&f.as_str()));
            ReimburserOption {
                checked: chosen == Some(r.app_id.as_str()),
                consent_value: format!("{}:{}", r.app_id, r.personal_fields.join(",")),
                fields: r.personal_fields.iter().map(|f| field_label(f)).collect(),
                typed: r
                    .personal_fields
                    .iter()
                    .filter(|f| TYPED_FIELDS.contains(&f.as_str()))
                    .map(|f| {
                        (
                            format!("personal.{f}"),
                            field_label(f),
                            typed.get(&format!("personal.{f}")).cloned().unwrap_or_default(),
                        )
                    })
                    .collect(),
                claim_fields: asked_fields(&r)
                    .into_iter()
                    .map(|f| {
                        let input = own_field_input(&r.app_id, &f.name);
                        OwnField {
                            value: typed.get(&input).cloned().unwrap_or_default(),
                            input,
                            label: f.label,
                            required: f.required,
                        }
                    })
                    .collect(),
                deadline: c.claim_by.map(|t| beijing_date(t.as_datetime())),
                within_days: r.claim_within_days,
                profile_missing: needs_profile && !registered,
                kind: kind_label(r.kind),
                name: r.name,
                app_id: r.app_id,
            }
        })
        .collect();
    Ok(ClaimForm {
        action: account_path(&oa.appid, &format!("/receipts/{}/claim", w.receipt.id)),
        csrf: s.csrf.clone(),
        bill: format!("{} {}", w.receipt.bill_batch_code, w.receipt.bill_no),
        agency_name: w.agency_name.clone(),
        amount: yuan(w.receipt.total_fen),
        issued_at: beijing_time(w.receipt.issued_at.as_datetime()),
        options,
        others: other_claimable(state, oa, s.payer_id, w.receipt.id)
            .await?
            .into_iter()
            .map(|i| OtherReceipt {
                checked: chosen_others.contains(&i.receipt_id),
                id: i.receipt_id.to_string(),
                text: format!(
                    "{} {} · {} · {}",
                    i.bill_batch_code,
                    i.bill_no,
                    beijing_date(i.issued_at.as_datetime()),
                    yuan(i.total_fen)
                ),
            })
            .collect(),
        receipts_max: claiming::CLAIM_RECEIPTS_MAX,
        problem,
        back: account_path(&oa.appid, &format!("/receipts/{}", w.receipt.id)),
    })
}

fn beijing_date(t: chrono::DateTime<chrono::Utc>) -> String {
    beijing_time(t).chars().take(10).collect()
}

fn api_unavailable(e: &ApiError) -> PageError {
    tracing::error!(error = %e, "a claim page failed");
    PageError::unavailable()
}

/// 申请报销: the claim form of one receipt of the payer's wallet.
#[utoipa::path(get, path = "/h5/{appId}/receipts/{receiptId}/claim", tag = "pages",
    params(("appId" = String, Path, description = "The official account's WeChat appid"), ("receiptId" = Uuid, Path)),
    responses((status = 200, description = "The claim form: the reimbursers accepting the receipt's agency, the personal fields each receives, its deadline, the consent, the claim's own fields", content_type = "text/html", body = String),
        (status = 302, description = "Not signed in: to WeChat's authorize page (snsapi_base)"),
        (status = 404, description = "An error page: not in this payer's wallet (whoever else holds it)", content_type = "text/html"),
        (status = 409, description = "An error page: the receipt is reversed, reimbursed or already in a claim", content_type = "text/html")))]
#[get("/h5/{appid}/receipts/{receipt_id}/claim")]
pub async fn form(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (appid, rid) = path.into_inner();
    let (oa, s, w) = match own_receipt(&req, &state, &appid, &rid).await? {
        Ok(v) => v,
        Err(redirect) => return Ok(redirect),
    };
    match offer(&state, &oa, s.payer_id, &w).await? {
        Some(ClaimOffer::Claim(_)) => {}
        Some(ClaimOffer::Pending(_)) => return Err(PageError::already_claimed().back_to(&oa.appid)),
        None => return Err(PageError::not_claimable().back_to(&oa.appid)),
    }
    let f = claim_form(&state, &oa, &s, &w, None, &[], &BTreeMap::new(), None).await?;
    Ok(page(views::claim_form(&f)))
}

/// The refusal in words a payer understands: `Ok` shows the form again with it.
/// A refusal of one receipt of several (`several`) names that receipt (`bill`).
fn refusal_text(e: &ApiError, several: bool, bill: Option<String>) -> Result<String, PageError> {
    let problem = e.problem();
    let text = match e.code() {
        ErrorCode::ValidationFailed => {
            if problem.errors.iter().any(|f| f.code == PROFILE_REQUIRED) {
                "该报销方需要您的实名信息，请先在票夹小程序完成实名登记。"
            } else if problem.errors.iter().any(|f| f.pointer == "/consent/accepted") {
                "请勾选同意向所选报销方提供所列个人信息。"
            } else if problem.errors.iter().any(|f| f.pointer == "/receipts") {
                "一次报销的票据数量超过上限，请减少勾选的票据。"
            } else if problem.errors.iter().any(|f| f.pointer.starts_with("/personalData/")) {
                "请填写报销方需要的个人信息（每项最多200字）。"
            } else if problem
                .errors
                .iter()
                .any(|f| f.pointer.starts_with("/fields/") && f.code == "required")
            {
                "请填写报销方要求的必填报销信息。"
            } else {
                "报销信息有误（每项最多200字）。"
            }
        }
        ErrorCode::ConsentMismatch => "报销方需要的个人信息已变更，请重新确认后提交。",
        ErrorCode::ReimburserNotFound | ErrorCode::ReimburserDoesNotAccept => "请从列出的报销方中选择一个。",
        ErrorCode::ClaimDeadlinePassed => "这张票据已超过该报销方的报销期限，无法申请。",
        ErrorCode::ReceiptAlreadyClaimed => "这张票据已在报销申请中，不能重复申请。",
        ErrorCode::ReceiptLockedByOther => "这张票据正由其他报销方处理，暂不能申请。",
        ErrorCode::ReceiptAlreadyClosed => "这张票据已报销，不能再次申请。",
        ErrorCode::ReceiptReversed => "这张票据已冲红，不能报销。",
        ErrorCode::ReceiptNotFound if several => "所选票据中有一张已不在您的票夹中。",
        ErrorCode::ReceiptNotFound => return Err(PageError::receipt_not_found()),
        _ => return Err(api_unavailable(e)),
    };
    Ok(match bill {
        Some(bill) => format!("票据 {bill}：{text}"),
        None => text.to_owned(),
    })
}

/// The receipt of several that a refusal concerns (its `/receipts/<index>`), as the
/// form names it ("code number"); none for a claim of one, or one not in the wallet.
/// One read: the refused receipt's, whatever the form carried.
async fn refused_bill(
    state: &AppState,
    payer_id: Uuid,
    oa: &OfficialAccount,
    e: &ApiError,
    receipts: &[Uuid],
) -> Result<Option<String>, PageError> {
    if receipts.len() < 2 {
        return Ok(None);
    }
    let Some(id) = e
        .problem()
        .errors
        .iter()
        .find_map(|f| f.pointer.strip_prefix("/receipts/"))
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| receipts.get(i))
    else {
        return Ok(None);
    };
    Ok(state
        .store
        .wallet_receipt(payer_id, *id, Some(std::slice::from_ref(&oa.agency_id)))
        .await?
        .map(|w| format!("{} {}", w.receipt.bill_batch_code, w.receipt.bill_no)))
}

/// Submits the claim form: the chosen reimburser, the consent (the fields it
/// listed), typed personal fields, the claim's own fields; on to 我的报销.
#[utoipa::path(post, path = "/h5/{appId}/receipts/{receiptId}/claim", tag = "pages",
    params(("appId" = String, Path), ("receiptId" = Uuid, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`csrf`, `reimburser` (its appId), `consent` (`<appId>:<fields>` as the form lists them), `personal.<field>` for typed fields, `field.<appId>.<name>` for the claim's own fields the chosen reimburser asks for (its `claimFields`, or 收款银行账号 `bankAccount` and 备注 `note` when it names none), `receipt` (repeatable) for other receipts of the wallet the claim includes (at most 20 in all)"),
    responses((status = 303, description = "Submitted: on to 我的报销"),
        (status = 403, description = "An error page: missing or wrong CSRF token", content_type = "text/html"),
        (status = 404, description = "An error page: not in this payer's wallet", content_type = "text/html"),
        (status = 422, description = "The form again with the refusal (consent missing, deadline passed, already claimed, locked by another reimburser, real-name registration needed …)", content_type = "text/html", body = String)))]
#[post("/h5/{appid}/receipts/{receipt_id}/claim")]
pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    let (appid, rid) = path.into_inner();
    let oa = official_account(&state, &appid).await?;
    let Some(s) = session::current(&req, &state, &oa).await? else {
        return Err(PageError::csrf().back_to(&oa.appid));
    };
    if body.len() > FORM_MAX {
        return Err(PageError::bad_request().back_to(&oa.appid));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let one = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !s.check_csrf(one("csrf").unwrap_or_default()) {
        return Err(PageError::csrf().back_to(&oa.appid));
    }
    let (oa, s, w) = match own_receipt(&req, &state, &oa.appid, &rid).await? {
        Ok(v) => v,
        Err(_) => return Err(PageError::csrf().back_to(&appid)),
    };
    let reimburser = one("reimburser").unwrap_or_default().to_owned();
    // The consent box of the chosen reimburser names the fields it listed.
    let consent = pairs
        .iter()
        .filter(|(n, _)| n == "consent")
        .find_map(|(_, v)| v.split_once(':').filter(|(app, _)| *app == reimburser))
        .map(|(_, fields)| {
            fields
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
    let typed: BTreeMap<String, String> = pairs
        .iter()
        .filter(|(n, v)| (n.starts_with("personal.") || n.starts_with("field.")) && !v.trim().is_empty())
        .map(|(n, v)| (n.clone(), v.trim().to_owned()))
        .collect();
    // This receipt first, then the others the payer ticked (each once).
    let mut receipts = vec![w.receipt.id];
    for (_, v) in pairs.iter().filter(|(n, _)| n == "receipt") {
        match Uuid::parse_str(v) {
            Ok(id) if !receipts.contains(&id) => receipts.push(id),
            Ok(_) => {}
            Err(_) => return Err(PageError::bad_request().back_to(&oa.appid)),
        }
    }
    let again = |problem: String| {
        let (state, oa, s, w, reimburser, typed, others) = (&state, &oa, &s, &w, &reimburser, &typed, &receipts[1..]);
        async move {
            let f = claim_form(state, oa, s, w, Some(reimburser), others, typed, Some(problem)).await?;
            Ok::<_, PageError>(
                HttpResponse::build(StatusCode::UNPROCESSABLE_ENTITY)
                    .content_type("text/html; charset=utf-8")
                    .insert_header((header::CACHE_CONTROL, "no-store"))
                    .body(views::claim_form(&f).into_string()),
            )
        }
    };
    if reimburser.is_empty() {
        return again("请选择一个报销方。".to_owned()).await;
    }
    let payer = state
        .store
        .payer(s.payer_id)
        .await?
        .ok_or_else(PageError::unavailable)?;
    let own_prefix = format!("field.{reimburser}.");
    let request = ClaimRequest {
        reimburser: reimburser.clone(),
        receipts: receipts.clone(),
        consent: ClaimConsent {
            accepted: consent.is_some(),
            fields: consent.unwrap_or_default(),
        },
        personal_data: typed
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("personal.").map(|f| (f.to_owned(), v.clone())))
            .collect(),
        fields: typed
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&own_prefix).map(|f| (f.to_owned(), v.clone())))
            .collect(),
    };
    let claimant = Claimant {
        payer: &payer,
        app_id: &oa.appid,
        scope: Some(std::slice::from_ref(&oa.agency_id)),
        remote_addr: piaojia_web::client::client_ip(&req, &state.settings.server.trusted_proxies)
            .map(|ip| ip.to_string()),
    };
    match claiming::submit(&state.wallet, claimant, &request).await {
        Ok(claim) => {
            tracing::info!(payer_id = %s.payer_id, claim_id = %claim.id, "claim submitted from the pages");
            Ok(HttpResponse::SeeOther()
                .insert_header((header::LOCATION, account_path(&oa.appid, "/claims?submitted=1")))
                .finish())
        }
        Err(e) => {
            let bill = refused_bill(&state, s.payer_id, &oa, &e, &receipts).await?;
            match refusal_text(&e, receipts.len() > 1, bill) {
                Ok(text) => again(text).await,
                Err(page_error) => Err(page_error.back_to(&oa.appid)),
            }
        }
    }
}

/// True for a claim of this account's agency (all its receipts are).
fn of_agency(oa: &OfficialAccount, receipts: &[piaojia_store::StoredReceipt]) -> bool {
    !receipts.is_empty() && receipts.iter().all(|r| r.agency_id == oa.agency_id)
}

/// One page of the payer's claims of this account's agency, newest first, after
/// the keyset cursor; and the cursor of the next page when there is one.
async fn own_claims(
    state: &AppState,
    oa: &OfficialAccount,
    payer_id: Uuid,
    mut after: Option<(Timestamp, Uuid)>,
) -> Result<(ClaimsPage, Option<(Timestamp, Uuid)>), PageError> {
    let mut out = Vec::new();
    // Claims of other agencies (through other channels) are skipped, so a page
    // may take more than one read to fill.
    loop {
        let claims = state.store.payer_claims(payer_id, after, CLAIMS_SHOWN + 1).await?;
        let more = claims.len() as i64 > CLAIMS_SHOWN;
        let receipts = state.store.claims_receipts(&claims).await?;
        for (c, rs) in claims.into_iter().zip(receipts) {
            if out.len() as i64 == CLAIMS_SHOWN {
                let next = out.last().map(|(c, _): &(ClaimRecord, _)| (c.created_at, c.id));
                return Ok((out, next));
            }
            after = Some((c.created_at, c.id));
            if of_agency(oa, &rs) {
                out.push((c, rs));
            }
        }
        if !more {
            return Ok((out, None));
        }
    }
}

type ClaimsPage = Vec<(ClaimRecord, Vec<piaojia_store::StoredReceipt>)>;

/// 我的报销: the payer's claims with their status (已提交, 已受理, 审核中, 已报销
/// with the amount paid, 未通过 with the reason, 已撤回) and "撤回申请" while withdrawable.
#[utoipa::path(get, path = "/h5/{appId}/claims", tag = "pages",
    params(("appId" = String, Path, description = "The official account's WeChat appid"),
        ("cursor" = Option<String>, Query, description = "The next (older) page, from the page's 更早的申请 link")),
    responses((status = 200, description = "The claims page (20 claims a page, newest first)", content_type = "text/html", body = String),
        (status = 302, description = "Not signed in: to WeChat's authorize page (snsapi_base)"),
        (status = 404, description = "An error page: no such official account", content_type = "text/html")))]
#[get("/h5/{appid}/claims")]
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
    let notice = if q.contains_key("submitted") {
        Some("报销申请已提交，报销方处理后状态会在这里更新。")
    } else if q.contains_key("withdrawn") {
        Some("报销申请已撤回。")
    } else {
        None
    };
    let after = q
        .get("cursor")
        .map(|c| decode_cursor(c).ok_or_else(|| PageError::bad_request().back_to(&oa.appid)))
        .transpose()?
        .map(|(at, id)| (Timestamp::from(at), id));
    let (claims, next) = own_claims(&state, &oa, s.payer_id, after).await?;
    let older = next.map(|(at, id)| {
        format!(
            "{}?cursor={}",
            account_path(&oa.appid, "/claims"),
            encode_cursor(at.as_datetime(), id)
        )
    });
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = Vec::new();
    for (c, receipts) in claims {
        if !names.contains_key(&c.reimburser_app_id) {
            let name = state
                .store
                .reimburser(&c.reimburser_app_id)
                .await?
                .map(|r| r.name)
                .unwrap_or_default();
            names.insert(c.reimburser_app_id.clone(), name);
        }
        lines.push(ClaimLine {
            reimburser: names.get(&c.reimburser_app_id).cloned().unwrap_or_default(),
            status: status_label(&c),
            submitted_at: beijing_time(c.created_at.as_datetime()),
            receipts: receipts
                .iter()
                .map(|r| {
                    (
                        account_path(&oa.appid, &format!("/receipts/{}", r.id)),
                        format!("{} {} · {}", r.bill_batch_code, r.bill_no, yuan(r.total_fen)),
                    )
                })
                .collect(),
            fields: c.consented_fields.iter().map(|f| field_label(f)).collect(),
            withdraw: claiming::withdrawable(c.status)
                .then(|| account_path(&oa.appid, &format!("/claims/{}/withdrawal", c.id))),
            closed: !claiming::is_open(c.status),
        });
    }
    Ok(page(views::claim_list(
        &oa.agency_name,
        &s.csrf,
        &lines,
        notice,
        older.as_deref(),
        &account_path(&oa.appid, "/receipts"),
    )))
}

/// 撤回申请: withdraws the payer's claim the reimburser has not locked.
#[utoipa::path(post, path = "/h5/{appId}/claims/{claimId}/withdrawal", tag = "pages",
    params(("appId" = String, Path), ("claimId" = Uuid, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`csrf`"),
    responses((status = 303, description = "Withdrawn: back to 我的报销"),
        (status = 403, description = "An error page: missing or wrong CSRF token", content_type = "text/html"),
        (status = 404, description = "An error page: no such claim of this payer", content_type = "text/html"),
        (status = 409, description = "An error page: the reimburser locked it, or it is already closed", content_type = "text/html")))]
#[post("/h5/{appid}/claims/{claim_id}/withdrawal")]
pub async fn withdraw(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    let (appid, cid) = path.into_inner();
    let oa = official_account(&state, &appid).await?;
    let Some(s) = session::current(&req, &state, &oa).await? else {
        return Err(PageError::csrf().back_to(&oa.appid));
    };
    if body.len() > FORM_MAX {
        return Err(PageError::bad_request().back_to(&oa.appid));
    }
    let fields: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !s.check_csrf(fields.get("csrf").map(String::as_str).unwrap_or_default()) {
        return Err(PageError::csrf().back_to(&oa.appid));
    }
    let not_found = || PageError::claim_not_found().back_to(&oa.appid);
    let cid = Uuid::parse_str(&cid).map_err(|_| not_found())?;
    // Only the payer's claim of this account's agency, as the list shows them.
    let Some(claim) = state.store.payer_claim(s.payer_id, cid).await? else {
        return Err(not_found());
    };
    if !of_agency(&oa, &state.store.claim_receipts(&claim).await?) {
        return Err(not_found());
    }
    let remote = piaojia_web::client::client_ip(&req, &state.settings.server.trusted_proxies).map(|ip| ip.to_string());
    match claiming::withdraw(&state.wallet, s.payer_id, cid, remote).await {
        Ok(_) => Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, account_path(&oa.appid, "/claims?withdrawn=1")))
            .finish()),
        Err(e) => Err(match e.code() {
            ErrorCode::ClaimNotFound => not_found(),
            ErrorCode::ClaimLocked => PageError::claim_locked().back_to(&oa.appid),
            ErrorCode::ClaimClosed => PageError::claim_closed().back_to(&oa.appid),
            _ => api_unavailable(&e),
        }),
    }
}
