//! The card package for fiscal receipts (DOMAIN.md §7): `getticket`, the platform's and
//! unit's calls (`seturl`, `createbillcard`, `getbillauthurl`, `getauthdata`, `setpdf`,
//! `insertbill`, `rejectinsert`, `platform/updatestatus`) and the reimburser's
//! (`getinvoiceinfo`, `getinvoicebatch`, `updateinvoicestatus`, `updatestatusbatch`).

use base64::Engine as _;
use chrono::TimeDelta;
use serde_json::{Map, Value, json};

use super::{Call, Reply, WxErr, authorize, authorize_any, field, multipart};
use crate::SimError;
use crate::cards::{Actor, BillCard, CardStatus, InvoiceOrder, Media, SimCard, transition};
use crate::config::AppKind;
use crate::ids;
use crate::paths;
use crate::push::{self, PushJob};
use crate::state::{State, delta};

const S_PAPPID_SUFFIX: &str = "_21";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn invalid_params(hint: &str) -> WxErr {
    WxErr::new(72031, format!("invalid params hint: {hint}"))
}

fn never_auth() -> WxErr {
    WxErr::new(72038, "invoice order never auth")
}

/// A platform's `s_pappid`: like WeChat's, base64 of its appid and a suffix.
pub(crate) fn s_pappid(appid: &str) -> String {
    B64.encode(format!("{appid}{S_PAPPID_SUFFIX}"))
}

/// The platform (official account) behind an `s_pappid`.
pub(crate) fn platform_of(st: &State, s_pappid: &str) -> Option<String> {
    let raw = String::from_utf8(B64.decode(s_pappid).ok()?).ok()?;
    let appid = raw.strip_suffix(S_PAPPID_SUFFIX)?;
    st.apps
        .get(appid)
        .filter(|a| a.kind == AppKind::OfficialAccount)
        .map(|a| a.appid.clone())
}

fn str_req<'a>(b: &'a Map<String, Value>, key: &str) -> Result<&'a str, WxErr> {
    field(b, key).ok_or_else(|| invalid_params(key))
}

fn int_req(b: &Map<String, Value>, key: &str) -> Result<i64, WxErr> {
    // Numbers, and numbers sent as strings (WeChat takes both).
    match b.get(key) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid_params(key))
}

fn ok() -> Reply {
    Reply::json(json!({ "errcode": 0, "errmsg": "ok" }))
}

pub(super) fn get_ticket(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let kind = call.q("type").unwrap_or("jsapi");
    if !matches!(kind, "wx_card" | "jsapi") {
        return Err(WxErr::new(40097, "invalid args hint: type"));
    }
    let (ticket, expires_in) = st.ticket(&appid, kind);
    Ok(Reply::json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "ticket": ticket,
        "expires_in": expires_in,
    })))
}

pub(super) fn set_url(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    Ok(Reply::json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "invoice_url": format!("{}{}?action=list&s_pappid={}", call.base_url, paths::INVOICE_AUTH_PAGE, s_pappid(&appid)),
    })))
}

pub(super) fn create_bill_card(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let info = call
        .object()?
        .get("invoice_info")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid_params("invoice_info"))?;
    let payee = str_req(info, "payee")?;
    let logo_url = info
        .get("base_info")
        .and_then(Value::as_object)
        .and_then(|b| field(b, "logo_url"))
        .ok_or_else(|| invalid_params("base_info.logo_url"))?;
    let card_id = ids::card_id();
    let card = BillCard {
        card_id: card_id.clone(),
        platform_appid: appid,
        payee: payee.to_owned(),
        logo_url: logo_url.to_owned(),
        created_at: st.now(),
    };
    st.invoice.templates.insert(card_id.clone(), card);
    Ok(Reply::json(json!({ "errcode": 0, "errmsg": "ok", "card_id": card_id })))
}

pub(super) fn get_bill_auth_url(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let b = call.object()?;
    let s_pappid = str_req(b, "s_pappid")?;
    let platform = platform_of(st, s_pappid).ok_or_else(|| invalid_params("unknown s_pappid"))?;
    let order_id = str_req(b, "order_id")?;
    if order_id.chars().count() > 64 {
        return Err(invalid_params("order_id longer than 64"));
    }
    let money = int_req(b, "money")?;
    if money <= 0 {
        return Err(invalid_params("money must be positive fen"));
    }
    let timestamp = int_req(b, "timestamp")?;
    let source = str_req(b, "source")?;
    if !matches!(source, "web" | "app") {
        return Err(invalid_params("source must be web or app"));
    }
    let redirect_url = field(b, "redirect_url").map(str::to_owned);
    let ticket = str_req(b, "ticket")?;
    if !st.ticket_valid(&appid, ticket) {
        return Err(invalid_params("ticket is not a valid wx_card ticket of this account"));
    }
    let key = (appid.clone(), order_id.to_owned());
    if let Some(o) = st.invoice.orders.get(&key) {
        if o.money != money || o.s_pappid != s_pappid {
            return Err(invalid_params("order_id already used with another money or s_pappid"));
        }
        if o.card_id.is_some() || o.rejected_reason.is_some() {
            return Err(WxErr::new(72024, "invoice status error hint: the order is closed"));
        }
        let old = o.token.clone();
        st.invoice.auth_tokens.remove(&old);
    }
    let token = ids::token(32);
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("action", "list")
        .append_pair("s_pappid", s_pappid)
        .append_pair("appid", &appid)
        .append_pair("num", "1")
        .append_pair("o1", order_id)
        .append_pair("m1", &money.to_string())
        .append_pair("t1", &timestamp.to_string())
        .append_pair("source", source);
    if let Some(r) = &redirect_url {
        q.append_pair("redirect_url", r);
    }
    q.append_pair("signature", &token);
    let auth_url = format!("{}{}?{}", call.base_url, paths::INVOICE_AUTH_PAGE, q.finish());
    let now = st.now();
    let lifetime = delta(st.cfg.invoice_auth_lifetime);
    let previous = st.invoice.orders.get(&key).cloned();
    let order = InvoiceOrder {
        s_pappid: s_pappid.to_owned(),
        platform_appid: platform,
        auth_appid: appid,
        order_id: order_id.to_owned(),
        money,
        timestamp,
        source: source.to_owned(),
        redirect_url,
        created_at: previous.as_ref().map_or(now, |p| p.created_at),
        auth_url: auth_url.clone(),
        auth_expires_at: now + lifetime,
        authorized_openid: previous.as_ref().and_then(|p| p.authorized_openid.clone()),
        authorized_at: previous.as_ref().and_then(|p| p.authorized_at),
        rejected_reason: None,
        rejected_url: None,
        card_id: None,
        code: None,
        person: previous.as_ref().and_then(|p| p.person),
        token: token.clone(),
    };
    st.invoice.orders.insert(key.clone(), order);
    st.invoice.auth_tokens.insert(token, key);
    Ok(Reply::json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "auth_url": auth_url,
        "expire_time": lifetime.num_seconds(),
    })))
}

/// The order a caller may see: its own (as the authorising app), or, for the platform of
/// `s_pappid`, the one order with that id under it.
fn order_key(st: &State, caller: &str, s_pappid: &str, order_id: &str) -> Option<(String, String)> {
    let own = (caller.to_owned(), order_id.to_owned());
    if st.invoice.orders.get(&own).is_some_and(|o| o.s_pappid == s_pappid) {
        return Some(own);
    }
    if platform_of(st, s_pappid).as_deref() != Some(caller) {
        return None;
    }
    let mut under = st
        .invoice
        .orders
        .iter()
        .filter(|(_, o)| o.s_pappid == s_pappid && o.order_id == order_id);
    match (under.next(), under.next()) {
        (Some((k, _)), None) => Some(k.clone()),
        _ => None,
    }
}

pub(super) fn get_auth_data(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let b = call.object()?;
    let (s_pappid, order_id) = (str_req(b, "s_pappid")?, str_req(b, "order_id")?);
    let key = order_key(st, &appid, s_pappid, order_id)
        .ok_or_else(|| WxErr::new(40078, "invalid card status hint: no such authorisation order"))?;
    let o = &st.invoice.orders[&key];
    Ok(Reply::json(match o.authorized_at {
        Some(at) => {
            json!({ "errcode": 0, "errmsg": "ok", "invoice_status": "auth success", "auth_time": at.timestamp() })
        }
        None => json!({ "errcode": 0, "errmsg": "ok", "invoice_status": "never auth" }),
    }))
}

pub(super) fn set_pdf(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let pdf = multipart::field(&call.content_type, &call.raw, "pdf")
        .ok_or_else(|| WxErr::new(41005, "media data missing hint: multipart field pdf"))?;
    if pdf.is_empty() || pdf.len() > st.cfg.max_pdf_bytes {
        return Err(WxErr::new(
            72043,
            "invoice size error hint: the pdf is empty or too large",
        ));
    }
    if !pdf.starts_with(b"%PDF-") {
        return Err(WxErr::new(72040, "invoice pdf error"));
    }
    let id = ids::media_id();
    let media = Media {
        appid,
        bytes: pdf.to_vec(),
        uploaded_at: st.now(),
        used_by: None,
    };
    st.invoice.media.insert(id.clone(), media);
    Ok(Reply::json(json!({ "errcode": 0, "errmsg": "ok", "s_media_id": id })))
}

fn all_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn insert_bill(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let platform = authorize(st, call, AppKind::OfficialAccount)?;
    let b = call.object()?;
    let (order_id, card_id, auth_appid) = (str_req(b, "order_id")?, str_req(b, "card_id")?, str_req(b, "appid")?);
    let data = b
        .get("card_ext")
        .and_then(|e| e.get("user_card"))
        .and_then(|u| u.get("invoice_user_data"))
        .and_then(Value::as_object)
        .ok_or_else(|| invalid_params("card_ext.user_card.invoice_user_data"))?;
    let fee = int_req(data, "fee")?;
    let title = str_req(data, "title")?;
    let billing_time = int_req(data, "billing_time")?;
    let billing_no = str_req(data, "billing_no")?;
    let billing_code = str_req(data, "billing_code")?;
    let media_id = str_req(data, "s_pdf_media_id")?;

    let template = st
        .invoice
        .templates
        .get(card_id)
        .ok_or_else(|| WxErr::new(40073, "invalid card id"))?;
    if template.platform_appid != platform {
        return Err(WxErr::new(
            72015,
            "unauthorized create invoice hint: the card belongs to another platform",
        ));
    }
    let payee = template.payee.clone();
    let key = (auth_appid.to_owned(), order_id.to_owned());
    let order = st.invoice.orders.get(&key).ok_or_else(never_auth)?;
    if order.platform_appid != platform {
        return Err(WxErr::new(
            72015,
            "unauthorized create invoice hint: the order names another platform",
        ));
    }
    if order.rejected_reason.is_some() {
        return Err(WxErr::new(72035, "biz reject insert"));
    }
    let person = order
        .person
        .filter(|_| order.authorized_at.is_some())
        .ok_or_else(never_auth)?;
    if order.card_id.is_some() {
        return Err(WxErr::new(
            72024,
            "invoice status error hint: the order already has its card",
        ));
    }
    if fee != order.money {
        return Err(invalid_params("fee differs from the authorised money"));
    }
    if !all_digits(billing_no, 8) || !all_digits(billing_code, 10) {
        return Err(invalid_params(
            "billing_no is the 8-digit 票据代码, billing_code the 10-digit 票据号码",
        ));
    }
    if st
        .invoice
        .cards
        .values()
        .any(|c| c.platform_appid == platform && c.billing_no == billing_no && c.billing_code == billing_code)
    {
        return Err(WxErr::new(72042, "billing_code and billing_no repeated"));
    }
    let now = st.now();
    let media_lifetime = delta(st.cfg.invoice_media_lifetime);
    let usable = st
        .invoice
        .media
        .get(media_id)
        .is_some_and(|m| m.appid == platform && m.used_by.is_none() && m.uploaded_at + media_lifetime > now);
    if !usable {
        return Err(WxErr::new(
            72040,
            "invoice pdf error hint: s_pdf_media_id unknown, expired or used",
        ));
    }

    let code = ids::card_code();
    let holder = st.people.openid_in(person, auth_appid);
    let card = SimCard {
        card_id: card_id.to_owned(),
        code: code.clone(),
        order_id: order_id.to_owned(),
        auth_appid: auth_appid.to_owned(),
        platform_appid: platform.clone(),
        payee,
        title: title.to_owned(),
        fee,
        billing_time,
        billing_no: billing_no.to_owned(),
        billing_code: billing_code.to_owned(),
        s_pdf_media_id: media_id.to_owned(),
        status: CardStatus::Init,
        lock_holder: None,
        openid: holder,
        inserted_at: now,
        updated_at: now,
        person,
    };
    st.invoice.cards.insert((card_id.to_owned(), code.clone()), card);
    if let Some(m) = st.invoice.media.get_mut(media_id) {
        m.used_by = Some((card_id.to_owned(), code.clone()));
    }
    if let Some(o) = st.invoice.orders.get_mut(&key) {
        o.card_id = Some(card_id.to_owned());
        o.code = Some(code.clone());
    }
    // openids are per app: the caller learns the holder's openid in its own app.
    let openid = st.people.openid_in(person, &platform);
    Ok(Reply::json(
        json!({ "errcode": 0, "errmsg": "ok", "code": code, "openid": openid }),
    ))
}

pub(super) fn reject_insert(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let b = call.object()?;
    let (s_pappid, order_id, reason) = (str_req(b, "s_pappid")?, str_req(b, "order_id")?, str_req(b, "reason")?);
    let url = field(b, "url").map(str::to_owned);
    let key = order_key(st, &appid, s_pappid, order_id).ok_or_else(never_auth)?;
    let o = st.invoice.orders.get_mut(&key).ok_or_else(never_auth)?;
    if o.authorized_at.is_none() {
        return Err(never_auth());
    }
    if o.card_id.is_some() {
        return Err(WxErr::new(
            72024,
            "invoice status error hint: the card was already inserted",
        ));
    }
    o.rejected_reason = Some(reason.to_owned());
    o.rejected_url = url;
    Ok(ok())
}

fn status_req(b: &Map<String, Value>) -> Result<CardStatus, WxErr> {
    CardStatus::parse(str_req(b, "reimburse_status")?).ok_or_else(|| invalid_params("reimburse_status"))
}

fn apply(st: &mut State, key: &(String, String), to: (CardStatus, Option<String>)) {
    let now = st.now();
    if let Some(c) = st.invoice.cards.get_mut(key) {
        c.status = to.0;
        c.lock_holder = to.1;
        c.updated_at = now;
    }
}

pub(super) fn platform_update_status(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let platform = authorize(st, call, AppKind::OfficialAccount)?;
    let b = call.object()?;
    let (card_id, code) = (str_req(b, "card_id")?, str_req(b, "code")?);
    let to = status_req(b)?;
    let template = st
        .invoice
        .templates
        .get(card_id)
        .ok_or_else(|| WxErr::new(40073, "invalid card id"))?;
    if template.platform_appid != platform {
        return Err(WxErr::new(
            72015,
            "unauthorized hint: the card belongs to another platform",
        ));
    }
    let key = (card_id.to_owned(), code.to_owned());
    let card = st.invoice.cards.get(&key).ok_or_else(|| invalid_params("code"))?;
    let change = transition(card, Actor::Platform(&platform), to).map_err(|r| WxErr::new(r.0, r.1))?;
    if let Some(change) = change {
        apply(st, &key, change);
    }
    Ok(ok())
}

/// The card an `encrypt_code` stands for, if it was chosen for `caller`.
fn resolve(st: &State, caller: &str, item: &Map<String, Value>) -> Result<(String, String), WxErr> {
    let (card_id, encrypt_code) = (str_req(item, "card_id")?, str_req(item, "encrypt_code")?);
    let chosen = st
        .invoice
        .encrypt_codes
        .get(encrypt_code)
        .ok_or_else(|| invalid_params("encrypt_code"))?;
    if chosen.reimburser != caller {
        return Err(WxErr::new(
            40078,
            "invalid card status hint: the card was not chosen for this account",
        ));
    }
    if chosen.card_id != card_id {
        return Err(invalid_params("card_id does not match encrypt_code"));
    }
    Ok((chosen.card_id.clone(), chosen.code.clone()))
}

fn info_json(st: &mut State, caller: &str, key: &(String, String), base_url: &str) -> Value {
    let Some(card) = st.invoice.cards.get(key).cloned() else {
        return Value::Null;
    };
    let openid = st.people.openid_in(card.person, caller);
    let begin = card.inserted_at.timestamp();
    json!({
        "card_id": card.card_id,
        "begin_time": begin,
        "end_time": (card.inserted_at + TimeDelta::days(3650)).timestamp(),
        "openid": openid,
        "type": "财政电子票据",
        "payee": card.payee,
        "detail": format!("票据代码 {} 票据号码 {}", card.billing_no, card.billing_code),
        "user_info": {
            "fee": card.fee,
            "title": card.title,
            "billing_time": card.billing_time,
            "billing_no": card.billing_no,
            "billing_code": card.billing_code,
            "pdf_url": format!("{base_url}{}/{}", paths::INVOICE_PDF, card.s_pdf_media_id),
            "reimburse_status": card.status.wire(),
        },
    })
}

pub(super) fn reimburse_get_info(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize_any(st, call)?;
    let key = resolve(st, &appid, call.object()?)?;
    let mut info = info_json(st, &appid, &key, &call.base_url);
    info["errcode"] = json!(0);
    info["errmsg"] = json!("ok");
    Ok(Reply::json(info))
}

fn items<'a>(b: &'a Map<String, Value>, key: &str) -> Result<Vec<&'a Map<String, Value>>, WxErr> {
    let list = b
        .get(key)
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid_params(key))?;
    list.iter()
        .map(|i| i.as_object().ok_or_else(|| invalid_params(key)))
        .collect()
}

pub(super) fn reimburse_get_batch(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize_any(st, call)?;
    let keys = items(call.object()?, "item_list")?
        .into_iter()
        .map(|i| resolve(st, &appid, i))
        .collect::<Result<Vec<_>, _>>()?;
    let list: Vec<Value> = keys.iter().map(|k| info_json(st, &appid, k, &call.base_url)).collect();
    Ok(Reply::json(json!({ "errcode": 0, "errmsg": "ok", "item_list": list })))
}

/// `update_invoice_status` to the platform and the unit, each under its own openid.
fn status_pushes(st: &mut State, key: &(String, String)) -> Vec<PushJob> {
    let Some(card) = st.invoice.cards.get(key).cloned() else {
        return Vec::new();
    };
    let mut targets = vec![card.platform_appid.clone()];
    if card.auth_appid != card.platform_appid {
        targets.push(card.auth_appid.clone());
    }
    let now = st.now().timestamp();
    let mut jobs = Vec::new();
    for appid in targets {
        let Some(app) = st.apps.get(&appid).cloned() else {
            continue;
        };
        let Some(server) = app.message_server.clone() else {
            continue;
        };
        let openid = st.people.openid_in(card.person, &appid);
        let xml = push::invoice_status_xml(
            &app.original_id,
            &openid,
            now,
            card.status.wire(),
            &card.card_id,
            &card.code,
        );
        jobs.push(PushJob::new(
            &app,
            &server,
            Some(&openid),
            "update_invoice_status",
            xml,
            None,
        ));
    }
    jobs
}

pub(super) fn reimburse_update_status(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize_any(st, call)?;
    let b = call.object()?;
    let to = status_req(b)?;
    let key = resolve(st, &appid, b)?;
    let card = st.invoice.cards.get(&key).ok_or_else(|| invalid_params("card"))?;
    let change = transition(card, Actor::Reimburser(&appid), to).map_err(|r| WxErr::new(r.0, r.1))?;
    let mut reply = ok();
    if let Some(change) = change {
        apply(st, &key, change);
        reply.pushes = status_pushes(st, &key);
    }
    Ok(reply)
}

/// All or nothing: every card is checked before any changes.
pub(super) fn reimburse_update_batch(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize_any(st, call)?;
    let b = call.object()?;
    let openid = str_req(b, "openid")?;
    let to = status_req(b)?;
    let holder = st.people.lookup(&appid, openid);
    let mut changes = Vec::new();
    for item in items(b, "invoice_list")? {
        let key = resolve(st, &appid, item)?;
        let card = st.invoice.cards.get(&key).ok_or_else(|| invalid_params("card"))?;
        if Some(card.person) != holder {
            return Err(invalid_params("openid does not hold every card"));
        }
        if let Some(change) = transition(card, Actor::Reimburser(&appid), to).map_err(|r| WxErr::new(r.0, r.1))? {
            changes.push((key, change));
        }
    }
    let mut reply = ok();
    for (key, change) in changes {
        if st.invoice.cards.get(&key).map(|c| c.status) == Some(change.0) {
            continue; // listed twice
        }
        apply(st, &key, change);
        reply.pushes.extend(status_pushes(st, &key));
    }
    Ok(reply)
}

/// The payer agrees on the authorisation page: the order is theirs, and
/// `user_authorize_invoice` goes to the unit and the platform, each under its own openid.
pub(crate) fn authorize_order(st: &mut State, token: &str, person: u64) -> Result<Vec<PushJob>, SimError> {
    let key = st
        .invoice
        .auth_tokens
        .get(token)
        .cloned()
        .ok_or(SimError::UnknownAuthUrl)?;
    let now = st.now();
    let order = st.invoice.orders.get(&key).cloned().ok_or(SimError::UnknownAuthUrl)?;
    if order.auth_expires_at <= now {
        return Err(SimError::AuthUrlExpired);
    }
    match order.person {
        Some(p) if p != person => return Err(SimError::OrderTakenByOther),
        // Agreeing twice changes nothing and pushes nothing.
        Some(_) if order.authorized_at.is_some() => return Ok(Vec::new()),
        _ => {}
    }
    let openid = st.people.openid_in(person, &order.auth_appid);
    if let Some(o) = st.invoice.orders.get_mut(&key) {
        o.person = Some(person);
        o.authorized_openid = Some(openid);
        o.authorized_at = Some(now);
    }
    let mut targets = vec![order.auth_appid.clone()];
    if order.platform_appid != order.auth_appid {
        targets.push(order.platform_appid.clone());
    }
    let mut jobs = Vec::new();
    for appid in targets {
        let Some(app) = st.apps.get(&appid).cloned() else {
            continue;
        };
        let Some(server) = app.message_server.clone() else {
            continue;
        };
        let from = st.people.openid_in(person, &appid);
        let xml = push::authorize_invoice_xml(
            &app.original_id,
            &from,
            now.timestamp(),
            &order.order_id,
            "",
            &order.auth_appid,
            &order.source,
        );
        jobs.push(PushJob::new(
            &app,
            &server,
            Some(&from),
            "user_authorize_invoice",
            xml,
            None,
        ));
    }
    Ok(jobs)
}
