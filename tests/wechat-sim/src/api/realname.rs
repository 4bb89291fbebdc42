//! `POST /intp/realname/checkrealnameinfo`: a name and ID number against the user's
//! WeChat Pay real-name record, with a single-use real-name authorisation code.

use serde_json::{Value, json};

use super::{Call, Reply, WxErr, authorize, field};
use crate::config::AppKind;
use crate::state::{CodeKind, State, delta};

fn invalid_code() -> WxErr {
    WxErr::new(80113, "无效code")
}

/// ID numbers compare without case (a final `x` is an `X`).
fn same_id(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

pub(super) fn check(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::MiniProgram)?;
    let body = call.object()?;
    let (Some(openid), Some(real_name), Some(cred_id), Some(code)) = (
        field(body, "openid"),
        field(body, "real_name"),
        field(body, "cred_id"),
        field(body, "code"),
    ) else {
        return Err(WxErr::new(
            47001,
            "data format error hint: openid, real_name, cred_id and code are required",
        ));
    };
    let cred_type_ok = match body.get("cred_type") {
        None => true,
        Some(Value::String(s)) => s == "1",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(_) => false,
    };
    if !cred_type_ok {
        return Err(WxErr::new(
            40097,
            "invalid args hint: only cred_type 1 (ID card) is supported",
        ));
    }
    // Unknown, foreign (another app or user), expired and used codes all answer 80113.
    let now = st.now();
    let lifetime = delta(st.cfg.code_lifetime);
    let rec = st
        .codes(CodeKind::RealName)
        .get_mut(code)
        .filter(|c| c.appid == appid && c.openid == openid && !c.used && c.issued_at + lifetime > now)
        .ok_or_else(invalid_code)?;
    rec.used = true;
    let (verify_openid, verify_real_name) = match st.real_names.get(openid) {
        None => ("V_OP_NA", ""),
        Some(r) if r.name.trim() != real_name.trim() => ("V_OP_NM_UM", ""),
        Some(r) if same_id(&r.cred_id, cred_id) => ("V_OP_NM_MA", "V_NM_ID_MA"),
        Some(_) => ("V_OP_NM_MA", "V_NM_ID_UM"),
    };
    Ok(Reply::json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "verify_openid": verify_openid,
        "verify_real_name": verify_real_name,
    })))
}
