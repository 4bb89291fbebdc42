//! The official account's custom menu: `menu/create` validated like WeChat, `menu/get`,
//! `menu/delete`.

use serde_json::{Map, Value, json};

use super::{Call, Reply, WxErr, authorize};
use crate::config::AppKind;
use crate::state::State;

const NAME_BYTES_TOP: usize = 16;
const NAME_BYTES_SUB: usize = 60;
const KEY_BYTES: usize = 128;
const URL_BYTES: usize = 1024;
/// Types that push an event carrying `key`.
const KEY_TYPES: [&str; 7] = [
    "click",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
];

/// The errcodes of one level: top-level buttons or sub-buttons.
struct Codes {
    kind: i64,
    name: i64,
    key: i64,
    url: i64,
    name_bytes: usize,
}

const TOP: Codes = Codes {
    kind: 40017,
    name: 40018,
    key: 40019,
    url: 40020,
    name_bytes: NAME_BYTES_TOP,
};
const SUB: Codes = Codes {
    kind: 40024,
    name: 40025,
    key: 40026,
    url: 40027,
    name_bytes: NAME_BYTES_SUB,
};

fn str_field<'a>(b: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    b.get(k).and_then(Value::as_str)
}

fn valid_url(u: &str) -> bool {
    (1..=URL_BYTES).contains(&u.len()) && (u.starts_with("http://") || u.starts_with("https://"))
}

/// One button with an action (not a group).
fn check_action(b: &Map<String, Value>, c: &Codes) -> Result<(), WxErr> {
    let kind = str_field(b, "type").ok_or_else(|| WxErr::new(c.kind, "invalid button type"))?;
    match kind {
        k if KEY_TYPES.contains(&k) => {
            let key = str_field(b, "key").unwrap_or_default();
            if !(1..=KEY_BYTES).contains(&key.len()) {
                return Err(WxErr::new(c.key, "invalid button key size"));
            }
        }
        "view" => {
            if !valid_url(str_field(b, "url").unwrap_or_default()) {
                return Err(WxErr::new(c.url, "invalid button url size"));
            }
        }
        "miniprogram" => {
            // `url` is the fallback for clients without mini-programs: required.
            if !valid_url(str_field(b, "url").unwrap_or_default()) {
                return Err(WxErr::new(c.url, "invalid button url size"));
            }
            if str_field(b, "appid").is_none_or(str::is_empty) || str_field(b, "pagepath").is_none_or(str::is_empty) {
                return Err(WxErr::new(
                    c.kind,
                    "invalid button type hint: miniprogram needs appid and pagepath",
                ));
            }
        }
        "media_id" | "view_limited" => {
            if str_field(b, "media_id").is_none_or(str::is_empty) {
                return Err(WxErr::new(40007, "invalid media_id"));
            }
        }
        "article_id" | "article_view_limited" => {
            if str_field(b, "article_id").is_none_or(str::is_empty) {
                return Err(WxErr::new(40007, "invalid media_id hint: article_id"));
            }
        }
        _ => return Err(WxErr::new(c.kind, "invalid button type")),
    }
    Ok(())
}

fn check_name(b: &Map<String, Value>, c: &Codes) -> Result<(), WxErr> {
    let name = str_field(b, "name").unwrap_or_default();
    if name.is_empty() || name.len() > c.name_bytes {
        return Err(WxErr::new(c.name, "invalid button name size"));
    }
    Ok(())
}

fn check_menu(body: &Map<String, Value>) -> Result<(), WxErr> {
    let buttons = body
        .get("button")
        .and_then(Value::as_array)
        .filter(|b| (1..=3).contains(&b.len()))
        .ok_or_else(|| WxErr::new(40016, "invalid button size"))?;
    for b in buttons {
        let b = b.as_object().ok_or_else(|| WxErr::new(40017, "invalid button type"))?;
        check_name(b, &TOP)?;
        match b.get("sub_button").and_then(Value::as_array) {
            // A group: its own type is ignored; 1 to 5 sub-buttons, one level only.
            Some(subs) if !subs.is_empty() => {
                if subs.len() > 5 {
                    return Err(WxErr::new(40023, "invalid sub button size"));
                }
                for s in subs {
                    let s = s
                        .as_object()
                        .ok_or_else(|| WxErr::new(40024, "invalid sub button type"))?;
                    if s.get("sub_button")
                        .and_then(Value::as_array)
                        .is_some_and(|x| !x.is_empty())
                    {
                        return Err(WxErr::new(40022, "invalid sub menu level"));
                    }
                    check_name(s, &SUB)?;
                    check_action(s, &SUB)?;
                }
            }
            _ => check_action(b, &TOP)?,
        }
    }
    Ok(())
}

pub(super) fn create(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let body = call.object()?;
    check_menu(body)?;
    st.menus.insert(appid, json!({ "button": body["button"].clone() }));
    Ok(Reply::json(json!({ "errcode": 0, "errmsg": "ok" })))
}

pub(super) fn get(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    match st.menus.get(&appid) {
        Some(menu) => Ok(Reply::json(json!({ "menu": menu }))),
        None => Err(WxErr::new(46003, "menu no exist")),
    }
}

pub(super) fn delete(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    st.menus.remove(&appid);
    Ok(Reply::json(json!({ "errcode": 0, "errmsg": "ok" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(menu: Value) -> i64 {
        check_menu(menu.as_object().expect("object"))
            .err()
            .map_or(0, |e| e.code)
    }

    #[test]
    fn menu_rules() {
        let click = |name: &str, key: &str| json!({ "type": "click", "name": name, "key": key });
        assert_eq!(code(json!({ "button": [click("票据", "K")] })), 0);
        assert_eq!(code(json!({ "button": [] })), 40016);
        assert_eq!(code(json!({})), 40016);
        assert_eq!(
            code(json!({ "button": [click("a", "1"), click("b", "2"), click("c", "3"), click("d", "4")] })),
            40016
        );
        assert_eq!(code(json!({ "button": [{ "type": "bogus", "name": "a" }] })), 40017);
        // 16 bytes: five CJK characters is 15 bytes, six is 18.
        assert_eq!(code(json!({ "button": [click("我的电子票", "K")] })), 0);
        assert_eq!(code(json!({ "button": [click("我的电子票据", "K")] })), 40018);
        assert_eq!(code(json!({ "button": [click("", "K")] })), 40018);
        assert_eq!(code(json!({ "button": [click("a", "")] })), 40019);
        assert_eq!(code(json!({ "button": [click("a", &"k".repeat(129))] })), 40019);
        assert_eq!(
            code(json!({ "button": [{ "type": "view", "name": "a", "url": "ftp://x" }] })),
            40020
        );
        let sub = |subs: Vec<Value>| json!({ "button": [{ "name": "服务", "sub_button": subs }] });
        assert_eq!(code(sub(vec![click("一二三四五六七八九十", "K")])), 0);
        assert_eq!(code(sub((0..6).map(|i| click("a", &i.to_string())).collect())), 40023);
        assert_eq!(code(sub(vec![json!({ "type": "nope", "name": "a" })])), 40024);
        assert_eq!(code(sub(vec![click(&"名".repeat(21), "K")])), 40025);
        assert_eq!(code(sub(vec![click("a", "")])), 40026);
        assert_eq!(
            code(sub(vec![json!({ "type": "view", "name": "a", "url": "" })])),
            40027
        );
        assert_eq!(
            code(sub(vec![
                json!({ "type": "view", "name": "a", "url": format!("https://{}", "x".repeat(1020)) })
            ])),
            40027
        );
        assert_eq!(
            code(sub(vec![json!({ "name": "a", "sub_button": [click("b", "K")] })])),
            40022
        );
        let mp = json!({ "type": "miniprogram", "name": "票夹", "url": "https://x.example", "appid": "wxmini", "pagepath": "pages/index" });
        assert_eq!(code(json!({ "button": [mp] })), 0);
        let mp = json!({ "type": "miniprogram", "name": "票夹", "url": "https://x.example" });
        assert_eq!(code(json!({ "button": [mp] })), 40017);
        assert_eq!(code(json!({ "button": [{ "type": "media_id", "name": "a" }] })), 40007);
    }
}
