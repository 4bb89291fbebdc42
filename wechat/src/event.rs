//! Inbound message-server pushes (events and messages), plain or secure-mode envelope.
//!
//! XML is parsed without any DTD: a `<!DOCTYPE` is refused before deserialising, and
//! quick-xml itself errors on entities other than the five predefined ones.

use quick_xml::events::Event as XmlEvent;
use serde::{Deserialize, Serialize};

/// WeChat pushes are a few KiB; anything far larger is not from WeChat.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

pub const MSG_TYPE_EVENT: &str = "event";
pub const EVENT_SUBSCRIBE: &str = "subscribe";
pub const EVENT_UNSUBSCRIBE: &str = "unsubscribe";
pub const EVENT_SCAN: &str = "SCAN";
pub const EVENT_CLICK: &str = "CLICK";
pub const EVENT_TEMPLATE_SEND_JOB_FINISH: &str = "TEMPLATESENDJOBFINISH";
pub const EVENT_SUBSCRIBE_MSG_POPUP: &str = "subscribe_msg_popup_event";
pub const EVENT_SUBSCRIBE_MSG_CHANGE: &str = "subscribe_msg_change_event";
pub const EVENT_SUBSCRIBE_MSG_SENT: &str = "subscribe_msg_sent_event";
/// EventKey prefix of a `subscribe` caused by scanning a parametric QR code.
pub const QRSCENE_PREFIX: &str = "qrscene_";

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("document type declarations are not accepted")]
    Doctype,
    #[error("event body too large")]
    TooLarge,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("malformed JSON: {0}")]
    Json(String),
}

/// One push. Every field is optional because the set depends on `MsgType`/`Event`;
/// unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "ToUserName", default)]
    pub to_user_name: Option<String>,
    #[serde(rename = "FromUserName", default)]
    pub from_user_name: Option<String>,
    #[serde(rename = "CreateTime", default)]
    pub create_time: Option<i64>,
    #[serde(rename = "MsgType", default)]
    pub msg_type: Option<String>,
    #[serde(rename = "Event", default)]
    pub event: Option<String>,
    #[serde(rename = "EventKey", default)]
    pub event_key: Option<String>,
    /// `Ticket` of a QR-scan `subscribe`/`SCAN`.
    #[serde(rename = "Ticket", default)]
    pub ticket: Option<String>,
    /// `MsgId` of ordinary messages (text, image, …).
    #[serde(rename = "MsgId", default)]
    pub msg_id: Option<String>,
    /// `MsgID` (capital D) of TEMPLATESENDJOBFINISH: the `msgid` template/send returned.
    #[serde(rename = "MsgID", default)]
    pub job_msg_id: Option<String>,
    /// TEMPLATESENDJOBFINISH outcome: `success`, `failed:user block`, `failed: system failed`.
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "Content", default)]
    pub content: Option<String>,
    /// Secure-mode envelope: the encrypted push.
    #[serde(rename = "Encrypt", default)]
    pub encrypt: Option<String>,
    /// Present in secure-mode reply envelopes (the simulator reads our replies).
    #[serde(rename = "MsgSignature", default)]
    pub msg_signature: Option<String>,
    #[serde(rename = "TimeStamp", default)]
    pub time_stamp: Option<String>,
    #[serde(rename = "Nonce", default)]
    pub nonce: Option<String>,
    /// `subscribe_msg_popup_event`: what the user chose in the mini-program pop-up.
    #[serde(rename = "SubscribeMsgPopupEvent", default)]
    pub subscribe_msg_popup_event: Option<SubscribeMsgList>,
    /// `subscribe_msg_change_event`: the user changed a subscription in settings.
    #[serde(rename = "SubscribeMsgChangeEvent", default)]
    pub subscribe_msg_change_event: Option<SubscribeMsgList>,
    /// `subscribe_msg_sent_event`: delivery result of a subscribe message.
    #[serde(rename = "SubscribeMsgSentEvent", default)]
    pub subscribe_msg_sent_event: Option<SubscribeMsgList>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeMsgList {
    #[serde(rename = "List", default)]
    pub list: Vec<SubscribeMsgItem>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeMsgItem {
    #[serde(rename = "TemplateId", default)]
    pub template_id: Option<String>,
    /// `accept`, `reject`, `ban`, `filter`, `acceptWithAudio`, …
    #[serde(rename = "SubscribeStatusString", default)]
    pub subscribe_status_string: Option<String>,
    #[serde(rename = "PopupScene", default)]
    pub popup_scene: Option<String>,
    #[serde(rename = "MsgID", default)]
    pub msg_id: Option<String>,
    #[serde(rename = "ErrorCode", default)]
    pub error_code: Option<String>,
    #[serde(rename = "ErrorStatus", default)]
    pub error_status: Option<String>,
}

/// Parses an XML push (plain event or secure-mode envelope).
pub fn parse_event(xml: &str) -> Result<Event, EventError> {
    if xml.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge);
    }
    refuse_dtd(xml)?;
    quick_xml::de::from_str(xml).map_err(|e| EventError::Xml(e.to_string()))
}

/// Parses a JSON push (mini-programs may be configured for JSON). Numbers such as
/// `MsgId` become strings so both formats yield the same `Event`.
pub fn parse_event_json(json: &str) -> Result<Event, EventError> {
    if json.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge);
    }
    let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| EventError::Json(e.to_string()))?;
    normalise_json(&mut v, true);
    serde_json::from_value(v).map_err(|e| EventError::Json(e.to_string()))
}

/// A single scan of the markup finds any DOCTYPE (text inside CDATA is not markup).
fn refuse_dtd(xml: &str) -> Result<(), EventError> {
    let lower = xml.to_ascii_lowercase();
    if !lower.contains("<!doctype") && !lower.contains("<!entity") {
        return Ok(());
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(XmlEvent::DocType(_)) => return Err(EventError::Doctype),
            Ok(XmlEvent::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(EventError::Xml(e.to_string())),
        }
    }
}

fn normalise_json(v: &mut serde_json::Value, top: bool) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    Value::Number(n) if !(top && k == "CreateTime") => *child = Value::String(n.to_string()),
                    // XML repeats <List>; JSON may send one object instead of an array.
                    Value::Object(_) if k == "List" => {
                        let one = child.take();
                        *child = Value::Array(vec![one]);
                        normalise_json(child, false);
                    }
                    _ => normalise_json(child, false),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| normalise_json(i, false)),
        _ => {}
    }
}

impl Event {
    /// De-duplication key for WeChat's retries: the message id when there is one,
    /// else FromUserName + CreateTime + Event + EventKey.
    pub fn dedup_key(&self) -> String {
        if let Some(id) = self
            .msg_id
            .as_deref()
            .or(self.job_msg_id.as_deref())
            .filter(|s| !s.is_empty())
        {
            return id.to_owned();
        }
        format!(
            "{}|{}|{}|{}",
            self.from_user_name.as_deref().unwrap_or(""),
            self.create_time.unwrap_or(0),
            self.event.as_deref().unwrap_or(""),
            self.event_key.as_deref().unwrap_or("")
        )
    }

    pub fn is_event(&self, name: &str) -> bool {
        self.msg_type.as_deref() == Some(MSG_TYPE_EVENT) && self.event.as_deref() == Some(name)
    }

    /// The parametric-QR scene of a `subscribe` (`qrscene_<scene>`) or `SCAN` (`<scene>`).
    pub fn qr_scene(&self) -> Option<&str> {
        let key = self.event_key.as_deref().filter(|k| !k.is_empty())?;
        match self.event.as_deref()? {
            EVENT_SUBSCRIBE => key.strip_prefix(QRSCENE_PREFIX),
            EVENT_SCAN => Some(key),
            _ => None,
        }
    }

    /// A new `MsgType=event` push; fill other fields, then call [`Event::to_xml`].
    pub fn new_event(to: &str, from: &str, create_time: i64, event: &str) -> Self {
        Self {
            to_user_name: Some(to.to_owned()),
            from_user_name: Some(from.to_owned()),
            create_time: Some(create_time),
            msg_type: Some(MSG_TYPE_EVENT.to_owned()),
            event: Some(event.to_owned()),
            ..Self::default()
        }
    }

    pub fn with_event_key(mut self, key: &str) -> Self {
        self.event_key = Some(key.to_owned());
        self
    }

    /// XML as WeChat sends it: strings in CDATA, CreateTime as a bare number.
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<xml>");
        cdata(&mut x, "ToUserName", &self.to_user_name);
        cdata(&mut x, "FromUserName", &self.from_user_name);
        if let Some(t) = self.create_time {
            x.push_str(&format!("<CreateTime>{t}</CreateTime>"));
        }
        cdata(&mut x, "MsgType", &self.msg_type);
        cdata(&mut x, "Event", &self.event);
        cdata(&mut x, "EventKey", &self.event_key);
        cdata(&mut x, "Ticket", &self.ticket);
        cdata(&mut x, "Content", &self.content);
        plain(&mut x, "MsgId", &self.msg_id);
        plain(&mut x, "MsgID", &self.job_msg_id);
        cdata(&mut x, "Status", &self.status);
        cdata(&mut x, "Encrypt", &self.encrypt);
        cdata(&mut x, "MsgSignature", &self.msg_signature);
        plain(&mut x, "TimeStamp", &self.time_stamp);
        cdata(&mut x, "Nonce", &self.nonce);
        for (tag, list) in [
            ("SubscribeMsgPopupEvent", &self.subscribe_msg_popup_event),
            ("SubscribeMsgChangeEvent", &self.subscribe_msg_change_event),
            ("SubscribeMsgSentEvent", &self.subscribe_msg_sent_event),
        ] {
            if let Some(list) = list {
                x.push_str(&format!("<{tag}>"));
                for item in &list.list {
                    x.push_str("<List>");
                    cdata(&mut x, "TemplateId", &item.template_id);
                    cdata(&mut x, "SubscribeStatusString", &item.subscribe_status_string);
                    plain(&mut x, "PopupScene", &item.popup_scene);
                    plain(&mut x, "MsgID", &item.msg_id);
                    plain(&mut x, "ErrorCode", &item.error_code);
                    cdata(&mut x, "ErrorStatus", &item.error_status);
                    x.push_str("</List>");
                }
                x.push_str(&format!("</{tag}>"));
            }
        }
        x.push_str("</xml>");
        x
    }

    /// TEMPLATESENDJOBFINISH as WeChat pushes it.
    pub fn template_send_job_finish(to: &str, from: &str, create_time: i64, msg_id: i64, status: &str) -> String {
        let mut e = Self::new_event(to, from, create_time, EVENT_TEMPLATE_SEND_JOB_FINISH);
        e.job_msg_id = Some(msg_id.to_string());
        e.status = Some(status.to_owned());
        e.to_xml()
    }

    /// `subscribe`; with a scene the EventKey is `qrscene_<scene>` (parametric QR).
    pub fn subscribe(to: &str, from: &str, create_time: i64, scene: Option<&str>, ticket: Option<&str>) -> String {
        let mut e = Self::new_event(to, from, create_time, EVENT_SUBSCRIBE);
        if let Some(scene) = scene {
            e.event_key = Some(format!("{QRSCENE_PREFIX}{scene}"));
        }
        e.ticket = ticket.map(str::to_owned);
        e.to_xml()
    }

    /// `SCAN` by an existing follower.
    pub fn scan(to: &str, from: &str, create_time: i64, scene: &str, ticket: Option<&str>) -> String {
        let mut e = Self::new_event(to, from, create_time, EVENT_SCAN).with_event_key(scene);
        e.ticket = ticket.map(str::to_owned);
        e.to_xml()
    }

    /// `subscribe_msg_popup_event` with one `(template_id, status)` per template.
    pub fn subscribe_msg_popup(to: &str, from: &str, create_time: i64, choices: &[(&str, &str)]) -> String {
        let mut e = Self::new_event(to, from, create_time, EVENT_SUBSCRIBE_MSG_POPUP);
        e.subscribe_msg_popup_event = Some(SubscribeMsgList {
            list: choices
                .iter()
                .map(|(t, s)| SubscribeMsgItem {
                    template_id: Some((*t).to_owned()),
                    subscribe_status_string: Some((*s).to_owned()),
                    popup_scene: Some("0".to_owned()),
                    ..SubscribeMsgItem::default()
                })
                .collect(),
        });
        e.to_xml()
    }

    /// Secure-mode inbound envelope: what WeChat POSTs instead of the plain XML.
    pub fn secure_envelope(to: &str, encrypt: &str) -> String {
        let e = Self {
            to_user_name: Some(to.to_owned()),
            encrypt: Some(encrypt.to_owned()),
            ..Self::default()
        };
        e.to_xml()
    }
}

/// Text safe inside `<![CDATA[…]]>`: a literal "]]>" is split across two sections.
pub(crate) fn cdata_text(s: &str) -> String {
    s.replace("]]>", "]]]]><![CDATA[>")
}

fn cdata(x: &mut String, tag: &str, v: &Option<String>) {
    if let Some(v) = v {
        x.push_str(&format!("<{tag}><![CDATA[{}]]></{tag}>", cdata_text(v)));
    }
}

fn plain(x: &mut String, tag: &str, v: &Option<String>) {
    if let Some(v) = v {
        x.push_str(&format!("<{tag}>{}</{tag}>", quick_xml::escape::escape(v.as_str())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_send_job_finish_round_trips() {
        let xml = Event::template_send_job_finish(
            "gh_7f083739789a",
            "oia2TjuEGTNoeX76QEjQNrcURxG8",
            1395658920,
            200163836,
            "success",
        );
        assert!(xml.contains("<MsgID>200163836</MsgID>"));
        assert!(xml.contains("<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>"));
        let e = parse_event(&xml).expect("parses");
        assert!(e.is_event(EVENT_TEMPLATE_SEND_JOB_FINISH));
        assert_eq!(e.job_msg_id.as_deref(), Some("200163836"));
        assert_eq!(e.status.as_deref(), Some("success"));
        assert_eq!(e.create_time, Some(1395658920));
        assert_eq!(e.dedup_key(), "200163836");
    }

    #[test]
    fn parses_official_template_finish_sample() {
        let xml = "<xml>
            <ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>
            <FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>
            <CreateTime>1395658984</CreateTime>
            <MsgType><![CDATA[event]]></MsgType>
            <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>
            <MsgID>200163840</MsgID>
            <Status><![CDATA[failed:user block]]></Status>
            </xml>";
        let e = parse_event(xml).expect("parses");
        assert_eq!(e.status.as_deref(), Some("failed:user block"));
        assert_eq!(e.job_msg_id.as_deref(), Some("200163840"));
    }

    #[test]
    fn subscribe_and_scan_scenes() {
        let e = parse_event(&Event::subscribe("gh", "o1", 10, Some("r:abc"), Some("T"))).expect("parses");
        assert_eq!(e.qr_scene(), Some("r:abc"));
        assert_eq!(e.ticket.as_deref(), Some("T"));
        assert_eq!(e.dedup_key(), "o1|10|subscribe|qrscene_r:abc");
        let plain = parse_event(&Event::subscribe("gh", "o1", 10, None, None)).expect("parses");
        assert_eq!(plain.qr_scene(), None);
        let e = parse_event(&Event::scan("gh", "o1", 11, "r:abc", None)).expect("parses");
        assert_eq!(e.qr_scene(), Some("r:abc"));
        assert!(e.is_event(EVENT_SCAN));
    }

    #[test]
    fn popup_event_lists() {
        let xml = Event::subscribe_msg_popup("gh", "o1", 12, &[("T1", "accept"), ("T2", "reject")]);
        let e = parse_event(&xml).expect("parses");
        let list = &e.subscribe_msg_popup_event.as_ref().expect("list").list;
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].template_id.as_deref(), Some("T2"));
        assert_eq!(list[1].subscribe_status_string.as_deref(), Some("reject"));
        assert_eq!(parse_event(&e.to_xml()).expect("re-parses"), e);
    }

    #[test]
    fn json_push_matches_xml_shape() {
        let json = r#"{"ToUserName":"gh_1","FromUserName":"o1","CreateTime":1714112445,"MsgType":"event",
            "Event":"subscribe_msg_popup_event","SubscribeMsgPopupEvent":{"List":{"TemplateId":"T1",
            "SubscribeStatusString":"accept","PopupScene":2}}}"#;
        let e = parse_event_json(json).expect("parses");
        let list = &e.subscribe_msg_popup_event.expect("list").list;
        assert_eq!(list[0].popup_scene.as_deref(), Some("2"));
        assert_eq!(e.create_time, Some(1714112445));
        let e = parse_event_json(r#"{"FromUserName":"o1","MsgId":6054768590064713728}"#).expect("parses");
        assert_eq!(e.dedup_key(), "6054768590064713728");
    }

    #[test]
    fn secure_envelope_round_trips() {
        let xml = Event::secure_envelope("gh_1", "abc+/=");
        let e = parse_event(&xml).expect("parses");
        assert_eq!(e.encrypt.as_deref(), Some("abc+/="));
        assert_eq!(e.to_user_name.as_deref(), Some("gh_1"));
    }

    #[test]
    fn refuses_doctype_and_entities() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>
            <xml><Content>&lol2;</Content></xml>"#;
        assert!(matches!(parse_event(laughs), Err(EventError::Doctype)));
        let xxe = r#"<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Content>&xxe;</Content></xml>"#;
        assert!(matches!(parse_event(xxe), Err(EventError::Doctype)));
        // An undeclared entity is an error, never expanded.
        assert!(parse_event("<xml><Content>&xxe;</Content></xml>").is_err());
        // Mentioning DOCTYPE inside CDATA is just text.
        let ok = parse_event("<xml><Content><![CDATA[<!DOCTYPE x>]]></Content></xml>").expect("text");
        assert_eq!(ok.content.as_deref(), Some("<!DOCTYPE x>"));
        // The predefined escapes still work.
        let ok = parse_event("<xml><Content>a &amp; b</Content></xml>").expect("escapes");
        assert_eq!(ok.content.as_deref(), Some("a & b"));
    }

    #[test]
    fn refuses_oversize_and_garbage() {
        assert!(matches!(
            parse_event(&"a".repeat(MAX_EVENT_BYTES + 1)),
            Err(EventError::TooLarge)
        ));
        assert!(parse_event("<xml><CreateTime>x</CreateTime></xml>").is_err());
        assert!(parse_event("<xml><ToUserName>").is_err());
    }

    #[test]
    fn cdata_terminator_is_escaped() {
        let mut e = Event::new_event("gh", "o1", 1, EVENT_CLICK);
        e.event_key = Some("a]]>b".to_owned());
        let back = parse_event(&e.to_xml()).expect("parses");
        assert_eq!(back.event_key.as_deref(), Some("a]]>b"));
    }
}
