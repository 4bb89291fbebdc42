//! Subscribe messages (mini-program) and template messages (official account).

use serde_json::{Map, Value, json};

use super::{Call, Reply, WxErr, authorize, field};
use crate::config::AppKind;
use crate::ids;
use crate::push::{self, PushJob, cdata};
use crate::record::{SentSubscribeMessage, SentTemplateMessage};
use crate::state::{State, push_bounded};

fn argument_invalid(key: &str) -> WxErr {
    WxErr::new(47003, format!("argument invalid! data.{key}.value invalid"))
}

fn touser(body: &Map<String, Value>) -> Result<&str, WxErr> {
    field(body, "touser")
        .filter(|o| ids::is_openid(o))
        .ok_or_else(|| WxErr::new(40003, "invalid openid"))
}

fn template_id(body: &Map<String, Value>) -> Result<&str, WxErr> {
    field(body, "template_id").ok_or_else(|| WxErr::new(40037, "invalid template_id"))
}

fn is_decimal(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(s),
    }
}

/// `amount`: an optional currency sign, up to 10 integer digits, optional decimals, optional 元.
fn is_amount(s: &str) -> bool {
    let s = s.trim_start_matches(['¥', '￥', '$', '€', '£']);
    let s = s.strip_suffix('元').unwrap_or(s);
    let int = s.split_once('.').map_or(s, |(i, _)| i);
    is_decimal(s) && int.len() <= 10
}

fn is_han(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}')
}

/// Checks a keyword's value by its type prefix (`thing1` → `thing`); unknown types allow 20 characters.
fn valid_value(key: &str, v: &str) -> bool {
    let n = v.chars().count();
    let kind = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match kind {
        "thing" => (1..=20).contains(&n),
        "character_string" => (1..=32).contains(&n) && v.chars().all(|c| c.is_ascii() && !c.is_ascii_control()),
        "number" => n <= 32 && is_decimal(v),
        "letter" => (1..=32).contains(&n) && v.chars().all(|c| c.is_ascii_alphabetic()),
        "symbol" => (1..=5).contains(&n) && v.chars().all(|c| !c.is_alphanumeric() && !c.is_whitespace()),
        "time" | "date" => v.chars().any(|c| c.is_ascii_digit()),
        "amount" => is_amount(v),
        "phone_number" => (1..=17).contains(&n) && v.chars().all(|c| c.is_ascii_digit() || "+-() ".contains(c)),
        "car_number" => (1..=8).contains(&n),
        "name" => n > 0 && if v.is_ascii() { n <= 20 } else { n <= 10 },
        "phrase" => (1..=5).contains(&n) && v.chars().all(is_han),
        _ => (1..=20).contains(&n),
    }
}

/// `data{key:{value}}`; `skip` names keys WeChat ignores.
fn check_data(body: &Map<String, Value>, skip: &[&str]) -> Result<Value, WxErr> {
    let data = match body.get("data") {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::Object(d)) => d,
        Some(_) => return Err(WxErr::new(47001, "data format error")),
    };
    for (key, item) in data {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let value = item
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| argument_invalid(key))?;
        if !valid_value(key, value) {
            return Err(argument_invalid(key));
        }
    }
    Ok(Value::Object(data.clone()))
}

fn optional_string(body: &Map<String, Value>, key: &str) -> Option<String> {
    field(body, key).map(str::to_owned)
}

pub(super) fn subscribe_send(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::MiniProgram)?;
    let body = call.object()?;
    let touser = touser(body)?;
    let template_id = template_id(body)?;
    let data = check_data(body, &[])?;
    let state = optional_string(body, "miniprogram_state");
    if state
        .as_deref()
        .is_some_and(|s| !matches!(s, "developer" | "trial" | "formal"))
    {
        return Err(WxErr::new(47003, "argument invalid! miniprogram_state invalid"));
    }
    let lang = optional_string(body, "lang");
    if lang
        .as_deref()
        .is_some_and(|l| !matches!(l, "zh_CN" | "en_US" | "zh_HK" | "zh_TW"))
    {
        return Err(WxErr::new(47003, "argument invalid! lang invalid"));
    }
    if !st.long_term.contains(&(appid.clone(), template_id.to_owned())) {
        let key = (appid.clone(), touser.to_owned(), template_id.to_owned());
        match st.subscriptions.get_mut(&key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => return Err(WxErr::new(43101, "user refuse to accept the msg")),
        }
    }
    let msgid = st.msgid();
    let now = st.now();
    let msg = SentSubscribeMessage {
        at: now,
        appid: appid.clone(),
        msgid,
        touser: touser.to_owned(),
        template_id: template_id.to_owned(),
        page: optional_string(body, "page"),
        data,
        miniprogram_state: state,
        lang,
    };
    let limit = st.cfg.record_limit;
    push_bounded(&mut st.subscribe_sent, msg, limit);

    let mut reply = Reply::json(json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid }));
    let app = &st.apps[&appid];
    if let Some(server) = &app.message_server {
        let xml = format!(
            "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{}</CreateTime>\
             <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event>\
             <SubscribeMsgSentEvent><List><TemplateId>{}</TemplateId><MsgID>{msgid}</MsgID>\
             <ErrorCode>0</ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List></SubscribeMsgSentEvent></xml>",
            cdata(&app.original_id),
            cdata(touser),
            now.timestamp(),
            cdata(template_id),
        );
        reply.pushes.push(PushJob::new(
            app,
            server,
            Some(touser),
            "subscribe_msg_sent_event",
            xml,
            None,
        ));
    }
    Ok(reply)
}

pub(super) fn template_send(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let body = call.object()?;
    let touser = touser(body)?;
    let template_id = template_id(body)?;
    let miniprogram = match body.get("miniprogram") {
        None | Some(Value::Null) => None,
        Some(mp @ Value::Object(o)) if field(o, "appid").is_some() => Some(mp.clone()),
        Some(_) => return Err(WxErr::new(47001, "data format error")),
    };
    // Since 2023 `first` and `remark` are dropped, so their length does not matter.
    let data = check_data(body, &["first", "remark"])?;
    if st.unfollowed.contains(&(appid.clone(), touser.to_owned())) {
        return Err(WxErr::new(43004, "require subscribe"));
    }
    let now = st.now();
    let client_msg_id = optional_string(body, "client_msg_id");
    if let Some(id) = &client_msg_id
        && let Some((msgid, at)) = st.client_msg_ids.get(&(appid.clone(), id.clone()))
        && now - *at < chrono::TimeDelta::days(1)
    {
        return Ok(Reply::json(json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid })));
    }
    let msgid = st.msgid();
    if let Some(id) = &client_msg_id {
        st.client_msg_ids.insert((appid.clone(), id.clone()), (msgid, now));
    }
    let status = st
        .template_status
        .get(&(appid.clone(), touser.to_owned()))
        .copied()
        .unwrap_or_default();
    let msg = SentTemplateMessage {
        at: now,
        appid: appid.clone(),
        msgid,
        touser: touser.to_owned(),
        template_id: template_id.to_owned(),
        url: optional_string(body, "url"),
        miniprogram,
        client_msg_id,
        data,
        status,
    };
    let limit = st.cfg.record_limit;
    push_bounded(&mut st.template_sent, msg, limit);

    let mut reply = Reply::json(json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid }));
    let app = &st.apps[&appid];
    if let Some(server) = &app.message_server {
        let xml = push::template_finish_xml(&app.original_id, touser, now.timestamp(), msgid, status.wire());
        let delay = Some(st.cfg.template_event_delay);
        reply.pushes.push(PushJob::new(
            app,
            server,
            Some(touser),
            "TEMPLATESENDJOBFINISH",
            xml,
            delay,
        ));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::valid_value;

    #[test]
    fn keyword_types() {
        assert!(valid_value("thing1", "电子票据已开具"));
        assert!(!valid_value("thing1", "一二三四五六七八九十一二三四五六七八九十一"));
        assert!(!valid_value("thing1", ""));
        assert!(valid_value("character_string2", "2024-0001-ABCDEFG"));
        assert!(!valid_value("character_string2", "票据号"));
        assert!(valid_value("amount3", "¥100.50"));
        assert!(valid_value("amount3", "100元"));
        assert!(!valid_value("amount3", "一百元"));
        assert!(valid_value("phrase4", "已开具"));
        assert!(!valid_value("phrase4", "issued"));
        assert!(valid_value("time5", "2024年5月1日 10:00"));
        assert!(!valid_value("date6", ""));
        assert!(valid_value("number7", "12.5"));
        assert!(!valid_value("number7", "12."));
    }
}
