//! Reading a message server's answer to a push the way WeChat does: `success` or an empty
//! body acknowledge it; anything else must be a passive reply addressed back to the user
//! (encrypted and signed in secure mode), or WeChat shows the user an error and tries again.

use quick_xml::events::Event as XmlEvent;

use crate::push::PushJob;
use crate::record::{PassiveReply, ReplyArticle};
use crate::secure;

const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Reply types WeChat accepts.
const MSG_TYPES: [&str; 7] = [
    "text",
    "image",
    "voice",
    "video",
    "music",
    "news",
    "transfer_customer_service",
];

pub(crate) enum Answer {
    /// `success` or an empty body.
    Ack,
    /// Anything else; `valid` says whether WeChat would accept it.
    Reply(Box<PassiveReply>),
}

pub(crate) fn read_answer(text: &str, job: &PushJob) -> Answer {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "success" {
        return Answer::Ack;
    }
    let mut reply = PassiveReply {
        raw: text.to_owned(),
        secure: job.server.encoding_aes_key.is_some(),
        ..PassiveReply::default()
    };
    match check(text, job, &mut reply) {
        Ok(()) => reply.valid = true,
        Err(e) => reply.error = Some(e),
    }
    Answer::Reply(Box::new(reply))
}

/// Marks the start of each `news` article in [`fields`]' output.
const ARTICLE_START: &str = "xml/Articles/item#";

/// Text of each element by path (`xml/Articles/item/Title`), with [`ARTICLE_START`]
/// before each article.
fn fields(xml: &str) -> Result<Vec<(String, String)>, String> {
    if xml.len() > MAX_REPLY_BYTES {
        return Err("reply too large".into());
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|e| format!("not XML: {e}"))? {
            XmlEvent::DocType(_) => return Err("document type declarations are refused".into()),
            XmlEvent::Start(e) => {
                if path.is_empty() && e.name().0 != "xml" {
                    return Err("the root element must be <xml>".into());
                }
                path.push(e.name().0.to_owned());
                text.clear();
                if path.join("/") == "xml/Articles/item" {
                    out.push((ARTICLE_START.into(), String::new()));
                }
            }
            XmlEvent::End(_) => {
                out.push((path.join("/"), std::mem::take(&mut text)));
                path.pop();
            }
            XmlEvent::Empty(e) => {
                if path.is_empty() {
                    return Err("the root element must be <xml>".into());
                }
                out.push((format!("{}/{}", path.join("/"), e.name().0), String::new()));
            }
            XmlEvent::Text(t) => text.push_str(&t.xml10_content()),
            XmlEvent::CData(c) => text.push_str(&c.xml10_content()),
            XmlEvent::GeneralRef(r) => match r.resolve_char_ref() {
                Ok(Some(c)) => text.push(c),
                _ => match &*r {
                    "amp" => text.push('&'),
                    "lt" => text.push('<'),
                    "gt" => text.push('>'),
                    "quot" => text.push('"'),
                    "apos" => text.push('\''),
                    other => return Err(format!("undeclared entity &{other};")),
                },
            },
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    if out.is_empty() {
        return Err("not XML".into());
    }
    Ok(out)
}

fn get<'a>(f: &'a [(String, String)], path: &str) -> Option<&'a str> {
    f.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str())
}

fn check(text: &str, job: &PushJob, r: &mut PassiveReply) -> Result<(), String> {
    let outer = fields(text)?;
    let plain = match &job.server.encoding_aes_key {
        Some(key) => {
            let need = |name: &str| {
                get(&outer, &format!("xml/{name}"))
                    .ok_or_else(|| format!("secure mode: the reply must be an encrypted envelope (no {name})"))
            };
            let encrypt = need("Encrypt")?;
            let (sig, ts, nonce) = (need("MsgSignature")?, need("TimeStamp")?, need("Nonce")?);
            let ok = secure::msg_signature(&job.server.token, ts, nonce, encrypt) == sig;
            r.signature_valid = Some(ok);
            if !ok {
                return Err("MsgSignature does not match".into());
            }
            let (msg, appid) = secure::open(key, encrypt).ok_or("Encrypt does not decrypt with the EncodingAESKey")?;
            if appid != job.appid {
                return Err(format!("encrypted for appid {appid}, not {}", job.appid));
            }
            msg
        }
        None => text.to_owned(),
    };
    r.xml = Some(plain.clone());
    let f = fields(&plain)?;
    let field = |name: &str| get(&f, &format!("xml/{name}")).map(str::to_owned);
    r.msg_type = field("MsgType");
    r.to_user_name = field("ToUserName");
    r.from_user_name = field("FromUserName");
    r.create_time = field("CreateTime").and_then(|t| t.trim().parse().ok());
    r.content = field("Content");
    r.media_id = get(&f, "xml/Image/MediaId")
        .or_else(|| get(&f, "xml/Voice/MediaId"))
        .or_else(|| get(&f, "xml/Video/MediaId"))
        .map(str::to_owned);
    for (path, value) in &f {
        if path == ARTICLE_START {
            r.articles.push(ReplyArticle::default());
            continue;
        }
        let (Some(name), Some(a)) = (path.strip_prefix("xml/Articles/item/"), r.articles.last_mut()) else {
            continue;
        };
        match name {
            "Title" => a.title = value.clone(),
            "Description" => a.description = value.clone(),
            "PicUrl" => a.pic_url = value.clone(),
            "Url" => a.url = value.clone(),
            _ => {}
        }
    }

    let user = job.openid.as_deref().unwrap_or_default();
    if r.to_user_name.as_deref() != Some(user) {
        return Err("ToUserName must be the user's openid (the push's FromUserName)".into());
    }
    if r.from_user_name.as_deref() != Some(job.original_id.as_str()) {
        return Err("FromUserName must be the account's gh_ id (the push's ToUserName)".into());
    }
    if r.create_time.is_none() {
        return Err("CreateTime must be an integer".into());
    }
    let msg_type = r.msg_type.clone().unwrap_or_default();
    if !MSG_TYPES.contains(&msg_type.as_str()) {
        return Err(format!("unknown MsgType {msg_type:?}"));
    }
    match msg_type.as_str() {
        "text" if r.content.as_deref().is_none_or(str::is_empty) => Err("a text reply needs Content".into()),
        "news" => {
            let count: Option<usize> = field("ArticleCount").and_then(|c| c.trim().parse().ok());
            if r.articles.is_empty() || r.articles.len() > 8 || count != Some(r.articles.len()) {
                Err("a news reply needs 1-8 articles and a matching ArticleCount".into())
            } else if r.articles.iter().any(|a| a.title.is_empty()) {
                Err("every article needs a Title".into())
            } else {
                Ok(())
            }
        }
        "image" | "voice" | "video" if r.media_id.is_none() => Err("a media reply needs its MediaId".into()),
        _ => Ok(()),
    }
}
