//! Codes exchanged for identities: wx.login, web OAuth, and getPhoneNumber.

use serde_json::json;

use super::{Call, Reply, WxErr, app, authorize, field};
use crate::config::AppKind;
use crate::ids;
use crate::state::{Code, CodeKind, State, delta};

fn invalid_code() -> WxErr {
    WxErr::new(40029, "invalid code")
}

/// Looks a code up for `appid`: unknown, foreign or expired → 40029; used → `used_err`.
fn check_code(st: &mut State, kind: CodeKind, appid: &str, code: &str, used_err: WxErr) -> Result<Code, WxErr> {
    let now = st.now();
    let lifetime = delta(st.cfg.code_lifetime);
    let rec = st
        .codes(kind)
        .get(code)
        .filter(|c| c.appid == appid)
        .cloned()
        .ok_or_else(invalid_code)?;
    if rec.used {
        return Err(used_err);
    }
    if rec.issued_at + lifetime <= now {
        return Err(invalid_code());
    }
    Ok(rec)
}

fn mark_used(st: &mut State, kind: CodeKind, code: &str) {
    if let Some(c) = st.codes(kind).get_mut(code) {
        c.used = true;
    }
}

fn code_used() -> WxErr {
    WxErr::new(40163, "code been used")
}

/// Checks appid, secret and grant_type of the `/sns/*` calls.
fn check_client(st: &State, call: &Call, kind: AppKind) -> Result<String, WxErr> {
    let appid = call.q("appid").ok_or_else(|| WxErr::new(41002, "appid missing"))?;
    let secret = call.q("secret").ok_or_else(|| WxErr::new(41004, "appsecret missing"))?;
    let app = app(st, appid)?;
    if app.kind != kind {
        return Err(WxErr::new(40013, "invalid appid"));
    }
    if app.secret != secret {
        return Err(WxErr::new(40125, "invalid appsecret"));
    }
    if call.q("grant_type") != Some("authorization_code") {
        return Err(WxErr::new(40002, "invalid grant_type"));
    }
    Ok(appid.to_owned())
}

pub(super) fn jscode2session(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = check_client(st, call, AppKind::MiniProgram)?;
    let code = call.q("js_code").ok_or_else(|| WxErr::new(41008, "missing code"))?;
    let rec = check_code(st, CodeKind::Login, &appid, code, code_used())?;
    let minute = st.now().timestamp().div_euclid(60);
    let n = st
        .login_minutes
        .entry((appid.clone(), rec.openid.clone(), minute))
        .or_insert(0);
    *n += 1;
    if *n > st.cfg.login_per_user_per_minute {
        return Err(WxErr::new(
            45011,
            "api minute-quota reach limit  mustslower  retry next minute",
        ));
    }
    mark_used(st, CodeKind::Login, code);
    let session_key = ids::session_key();
    st.session_keys.insert((appid, rec.openid.clone()), session_key.clone());
    let mut body = json!({ "session_key": session_key, "openid": rec.openid });
    if let Some(u) = rec.unionid {
        body["unionid"] = json!(u);
    }
    Ok(Reply::json(body))
}

pub(super) fn oauth_access_token(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = check_client(st, call, AppKind::OfficialAccount)?;
    let code = call.q("code").ok_or_else(|| WxErr::new(41008, "missing code"))?;
    let rec = check_code(st, CodeKind::OAuth, &appid, code, code_used())?;
    mark_used(st, CodeKind::OAuth, code);
    let mut body = json!({
        "access_token": ids::access_token(),
        "expires_in": 7200,
        "refresh_token": ids::access_token(),
        "openid": rec.openid,
        "scope": rec.scope.as_deref().unwrap_or("snsapi_base"),
    });
    if let Some(u) = rec.unionid {
        body["unionid"] = json!(u);
    }
    Ok(Reply::json(body))
}

pub(super) fn phone_number(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::MiniProgram)?;
    let body = call.object()?;
    let code = field(body, "code").ok_or_else(|| WxErr::new(47001, "data format error hint"))?;
    let rec = check_code(st, CodeKind::Phone, &appid, code, invalid_code())?;
    mark_used(st, CodeKind::Phone, code);
    let phone = rec.phone.unwrap_or_default();
    // "+852 91234567" carries its country code; bare numbers are mainland ones.
    let (country, pure) = match phone.strip_prefix('+').and_then(|p| p.split_once(' ')) {
        Some((cc, rest)) => (cc.to_owned(), rest.to_owned()),
        None => ("86".to_owned(), phone.clone()),
    };
    let full = if country == "86" {
        pure.clone()
    } else {
        format!("+{country} {pure}")
    };
    Ok(Reply::json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "phone_info": {
            "phoneNumber": full,
            "purePhoneNumber": pure,
            "countryCode": country,
            "watermark": { "timestamp": st.now().timestamp(), "appid": appid },
        },
    })))
}
