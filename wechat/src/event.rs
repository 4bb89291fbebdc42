//! Inbound message-server pushes (events and messages), plain or secure-mode envelope.
//!
//! XML is parsed without any DTD: a `<!DOCTYPE` is refused before deserialising, and
//! quick-xml itself errors on entities other than the five predefined ones.

use quick_xml::events::Event as XmlEvent;
use serde::{Deserialize, Serialize};

use crate::client::ReimburseStatus;
use crate::msgcrypt::MsgCrypt;

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
/// A payer agreed on the card-package authorisation page (DOMAIN.md §7).
pub const EVENT_USER_AUTHORIZE_INVOICE: &str = "user_authorize_invoice";
/// A reimburser changed a card's status.
pub const EVENT_UPDATE_INVOICE_STATUS: &str = "update_invoice_status";
pub const MSG_TYPE_TEXT: &str = "text";
pub const MSG_TYPE_NEWS: &str = "news";
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
    /// A field the event's type requires is absent (or the push is still encrypted).
    #[error("missing {0}")]
    Missing(&'static str),
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
    /// `user_authorize_invoice`: the order the payer authorised (empty when it failed).
    #[serde(rename = "SuccOrderId", default)]
    pub succ_order_id: Option<String>,
    /// `user_authorize_invoice`: the order whose authorisation failed.
    #[serde(rename = "FailOrderId", default)]
    pub fail_order_id: Option<String>,
    /// `user_authorize_invoice`: the app that obtained the authorisation URL.
    #[serde(rename = "AuthorizeAppId", default)]
    pub authorize_app_id: Option<String>,
    /// `user_authorize_invoice`: `web` (official-account page) or `app`.
    #[serde(rename = "Source", alias = "source", default)]
    pub source: Option<String>,
    /// `update_invoice_status`: the card template (`card_id`).
    #[serde(rename = "CardId", default)]
    pub card_id: Option<String>,
    /// `update_invoice_status`: the card's `code`.
    #[serde(rename = "Code", default)]
    pub code: Option<String>,
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
        let mut key = format!(
            "{}|{}|{}|{}",
            self.from_user_name.as_deref().unwrap_or(""),
            self.create_time.unwrap_or(0),
            self.event.as_deref().unwrap_or(""),
            self.event_key.as_deref().unwrap_or("")
        );
        // Card-package events carry no EventKey: two orders authorised, or two cards
        // changed, by one user within a second must not look like retries of one push.
        let invoice = [&self.succ_order_id, &self.fail_order_id, &self.card_id, &self.code];
        if invoice.iter().any(|v| v.as_deref().is_some_and(|s| !s.is_empty())) {
            for v in invoice.into_iter().chain([&self.status]) {
                key.push('|');
                key.push_str(v.as_deref().unwrap_or(""));
            }
        }
        key
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
        cdata(&mut x, "SuccOrderId", &self.succ_order_id);
        cdata(&mut x, "FailOrderId", &self.fail_order_id);
        cdata(&mut x, "AuthorizeAppId", &self.authorize_app_id);
        cdata(&mut x, "Source", &self.source);
        cdata(&mut x, "CardId", &self.card_id);
        cdata(&mut x, "Code", &self.code);
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

    /// `unsubscribe`.
    pub fn unsubscribe(to: &str, from: &str, create_time: i64) -> String {
        Self::new_event(to, from, create_time, EVENT_UNSUBSCRIBE).to_xml()
    }

    /// `CLICK` on a menu button with `key`.
    pub fn click(to: &str, from: &str, create_time: i64, key: &str) -> String {
        Self::new_event(to, from, create_time, EVENT_CLICK)
            .with_event_key(key)
            .to_xml()
    }

    /// `user_authorize_invoice` for one authorised order.
    pub fn user_authorize_invoice(
        to: &str,
        from: &str,
        create_time: i64,
        succ_order_id: &str,
        authorize_app_id: &str,
        source: &str,
    ) -> String {
        let mut e = Self::new_event(to, from, create_time, EVENT_USER_AUTHORIZE_INVOICE);
        e.succ_order_id = Some(succ_order_id.to_owned());
        e.fail_order_id = Some(String::new());
        e.authorize_app_id = Some(authorize_app_id.to_owned());
        e.source = Some(source.to_owned());
        e.to_xml()
    }

    /// `update_invoice_status` after a reimburser changed a card.
    pub fn update_invoice_status(
        to: &str,
        from: &str,
        create_time: i64,
        status: ReimburseStatus,
        card_id: &str,
        code: &str,
    ) -> String {
        let mut e = Self::new_event(to, from, create_time, EVENT_UPDATE_INVOICE_STATUS);
        e.status = Some(status.as_str().to_owned());
        e.card_id = Some(card_id.to_owned());
        e.code = Some(code.to_owned());
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

/// Final status of a template message (`TEMPLATESENDJOBFINISH`'s `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateJobStatus {
    Success,
    /// `failed:user block`: the user blocked the account's messages.
    UserBlock,
    /// `failed: system failed`.
    SystemFailed,
    /// Any other text WeChat may send.
    Other(String),
}

impl TemplateJobStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "success" => Self::Success,
            "failed:user block" => Self::UserBlock,
            "failed: system failed" => Self::SystemFailed,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// What a push is about, with the fields each kind requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A new follower; `scene` is set (without `qrscene_`) when they came through a parametric QR code.
    Subscribe {
        scene: Option<String>,
        ticket: Option<String>,
    },
    /// A follower scanned a parametric QR code.
    Scan {
        scene: String,
        ticket: Option<String>,
    },
    /// A menu `click` button.
    Click {
        key: String,
    },
    Unsubscribe,
    /// `msg_id` is the `msgid` that template/send returned.
    TemplateSendJobFinish {
        msg_id: String,
        status: TemplateJobStatus,
    },
    /// The payer agreed (or failed) to put an order's receipt into their card package.
    UserAuthorizeInvoice {
        succ_order_id: Option<String>,
        fail_order_id: Option<String>,
        authorize_app_id: String,
        source: String,
    },
    /// A reimburser locked, unlocked or closed a card.
    UpdateInvoiceStatus {
        status: ReimburseStatus,
        card_id: String,
        code: String,
    },
    /// A text message from the user.
    Text {
        content: String,
        msg_id: Option<String>,
    },
    /// Anything else (other events and message types): read [`Event`] itself.
    Other,
}

/// A decrypted push with its kind checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedEvent {
    /// The account's `gh_` id.
    pub to_user_name: String,
    /// The user's openid.
    pub from_user_name: String,
    pub create_time: i64,
    pub kind: EventKind,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn required(v: &Option<String>, name: &'static str) -> Result<String, EventError> {
    non_empty(v).ok_or(EventError::Missing(name))
}

impl Event {
    /// The typed view of a plain (or decrypted) push. A secure-mode envelope has no
    /// `MsgType`: decrypt its `Encrypt` first.
    pub fn typed(&self) -> Result<TypedEvent, EventError> {
        let msg_type = required(&self.msg_type, "MsgType")?;
        let kind = if msg_type == MSG_TYPE_EVENT {
            match required(&self.event, "Event")?.as_str() {
                EVENT_SUBSCRIBE => EventKind::Subscribe {
                    scene: self.qr_scene().map(str::to_owned),
                    ticket: non_empty(&self.ticket),
                },
                EVENT_SCAN => EventKind::Scan {
                    scene: required(&self.event_key, "EventKey")?,
                    ticket: non_empty(&self.ticket),
                },
                EVENT_CLICK => EventKind::Click {
                    key: required(&self.event_key, "EventKey")?,
                },
                EVENT_UNSUBSCRIBE => EventKind::Unsubscribe,
                EVENT_TEMPLATE_SEND_JOB_FINISH => EventKind::TemplateSendJobFinish {
                    msg_id: required(&self.job_msg_id, "MsgID")?,
                    status: TemplateJobStatus::parse(&required(&self.status, "Status")?),
                },
                EVENT_USER_AUTHORIZE_INVOICE => {
                    let succ_order_id = non_empty(&self.succ_order_id);
                    let fail_order_id = non_empty(&self.fail_order_id);
                    if succ_order_id.is_none() && fail_order_id.is_none() {
                        return Err(EventError::Missing("SuccOrderId or FailOrderId"));
                    }
                    EventKind::UserAuthorizeInvoice {
                        succ_order_id,
                        fail_order_id,
                        authorize_app_id: required(&self.authorize_app_id, "AuthorizeAppId")?,
                        source: required(&self.source, "Source")?,
                    }
                }
                EVENT_UPDATE_INVOICE_STATUS => EventKind::UpdateInvoiceStatus {
                    status: required(&self.status, "Status")?
                        .parse()
                        .map_err(|_| EventError::Missing("a known reimburse Status"))?,
                    card_id: required(&self.card_id, "CardId")?,
                    code: required(&self.code, "Code")?,
                },
                _ => EventKind::Other,
            }
        } else if msg_type == MSG_TYPE_TEXT {
            EventKind::Text {
                content: self.content.clone().unwrap_or_default(),
                msg_id: non_empty(&self.msg_id),
            }
        } else {
            EventKind::Other
        };
        Ok(TypedEvent {
            to_user_name: required(&self.to_user_name, "ToUserName")?,
            from_user_name: required(&self.from_user_name, "FromUserName")?,
            create_time: self.create_time.ok_or(EventError::Missing("CreateTime"))?,
            kind,
        })
    }
}

/// Parses a plain (or decrypted) XML push into its typed form.
pub fn parse_typed_event(xml: &str) -> Result<TypedEvent, EventError> {
    parse_event(xml)?.typed()
}

/// One article of a `news` passive reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Article {
    pub title: String,
    pub description: String,
    pub pic_url: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    Text {
        content: String,
    },
    /// A `news` reply with one article.
    News(Article),
}

/// A passive reply: the message server's answer to a push, shown to the user at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveReply {
    /// The user's openid (the push's `FromUserName`).
    pub to_user_name: String,
    /// The account's `gh_` id (the push's `ToUserName`).
    pub from_user_name: String,
    pub create_time: i64,
    pub body: ReplyBody,
}

impl PassiveReply {
    /// A reply to `event`, addressed back to its sender.
    pub fn to_event(event: &TypedEvent, create_time: i64, body: ReplyBody) -> Self {
        Self {
            to_user_name: event.from_user_name.clone(),
            from_user_name: event.to_user_name.clone(),
            create_time,
            body,
        }
    }

    pub fn text(event: &TypedEvent, create_time: i64, content: &str) -> Self {
        Self::to_event(
            event,
            create_time,
            ReplyBody::Text {
                content: content.to_owned(),
            },
        )
    }

    pub fn news(event: &TypedEvent, create_time: i64, article: Article) -> Self {
        Self::to_event(event, create_time, ReplyBody::News(article))
    }

    /// The plain-mode reply body.
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<xml>");
        cdata(&mut x, "ToUserName", &Some(self.to_user_name.clone()));
        cdata(&mut x, "FromUserName", &Some(self.from_user_name.clone()));
        x.push_str(&format!("<CreateTime>{}</CreateTime>", self.create_time));
        match &self.body {
            ReplyBody::Text { content } => {
                cdata(&mut x, "MsgType", &Some(MSG_TYPE_TEXT.to_owned()));
                cdata(&mut x, "Content", &Some(content.clone()));
            }
            ReplyBody::News(a) => {
                cdata(&mut x, "MsgType", &Some(MSG_TYPE_NEWS.to_owned()));
                x.push_str("<ArticleCount>1</ArticleCount><Articles><item>");
                cdata(&mut x, "Title", &Some(a.title.clone()));
                cdata(&mut x, "Description", &Some(a.description.clone()));
                cdata(&mut x, "PicUrl", &Some(a.pic_url.clone()));
                cdata(&mut x, "Url", &Some(a.url.clone()));
                x.push_str("</item></Articles>");
            }
        }
        x.push_str("</xml>");
        x
    }

    /// The secure-mode reply: the plain XML encrypted and signed with the push's own
    /// `timestamp` and `nonce` (or fresh ones).
    pub fn to_secure_xml(&self, crypt: &MsgCrypt, timestamp: &str, nonce: &str) -> String {
        crypt.encrypted_reply_xml(&self.to_xml(), timestamp, nonce)
    }

    /// Deterministic secure-mode reply for tests and test vectors.
    pub fn to_secure_xml_with_random(
        &self,
        crypt: &MsgCrypt,
        timestamp: &str,
        nonce: &str,
        random16: &[u8; 16],
    ) -> String {
        crypt.sealed_reply_with_random(&self.to_xml(), timestamp, nonce, random16)
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
    fn typed_user_events() {
        let t = parse_typed_event(&Event::subscribe("gh_1", "o1", 10, Some("r:42"), Some("T"))).expect("typed");
        assert_eq!(t.from_user_name, "o1");
        assert_eq!(t.to_user_name, "gh_1");
        assert_eq!(
            t.kind,
            EventKind::Subscribe {
                scene: Some("r:42".into()),
                ticket: Some("T".into())
            }
        );
        let t = parse_typed_event(&Event::subscribe("gh_1", "o1", 10, None, None)).expect("typed");
        assert_eq!(
            t.kind,
            EventKind::Subscribe {
                scene: None,
                ticket: None
            }
        );
        let t = parse_typed_event(&Event::scan("gh_1", "o1", 11, "r:42", Some("T"))).expect("typed");
        assert_eq!(
            t.kind,
            EventKind::Scan {
                scene: "r:42".into(),
                ticket: Some("T".into())
            }
        );
        let t = parse_typed_event(&Event::click("gh_1", "o1", 12, "MY_RECEIPTS")).expect("typed");
        assert_eq!(
            t.kind,
            EventKind::Click {
                key: "MY_RECEIPTS".into()
            }
        );
        let t = parse_typed_event(&Event::unsubscribe("gh_1", "o1", 13)).expect("typed");
        assert_eq!(t.kind, EventKind::Unsubscribe);
        let t = parse_typed_event(&Event::template_send_job_finish(
            "gh_1",
            "o1",
            14,
            7,
            "failed:user block",
        ))
        .expect("typed");
        assert_eq!(
            t.kind,
            EventKind::TemplateSendJobFinish {
                msg_id: "7".into(),
                status: TemplateJobStatus::UserBlock
            }
        );
        // CLICK and SCAN need their EventKey.
        let no_key = Event::new_event("gh_1", "o1", 1, EVENT_CLICK).to_xml();
        assert!(matches!(
            parse_typed_event(&no_key),
            Err(EventError::Missing("EventKey"))
        ));
        // An encrypted envelope must be decrypted first.
        assert!(matches!(
            parse_typed_event(&Event::secure_envelope("gh_1", "abc")),
            Err(EventError::Missing("MsgType"))
        ));
    }

    #[test]
    fn typed_invoice_events() {
        // WeChat's own sample of the authorisation event (an empty FailOrderId).
        let xml = "<xml><ToUserName><![CDATA[gh_fc0a06a20993]]></ToUserName>
            <FromUserName><![CDATA[oZI8Fj040-be6rlDohc6gkoPOQTQ]]></FromUserName>
            <CreateTime>1475134700</CreateTime><MsgType><![CDATA[event]]></MsgType>
            <Event><![CDATA[user_authorize_invoice]]></Event>
            <SuccOrderId><![CDATA[1202933957956]]></SuccOrderId><FailOrderId><![CDATA[]]></FailOrderId>
            <AuthorizeAppId><![CDATA[wxf8b4f85f3a794e77]]></AuthorizeAppId><Source><![CDATA[web]]></Source></xml>";
        let t = parse_typed_event(xml).expect("typed");
        assert_eq!(
            t.kind,
            EventKind::UserAuthorizeInvoice {
                succ_order_id: Some("1202933957956".into()),
                fail_order_id: None,
                authorize_app_id: "wxf8b4f85f3a794e77".into(),
                source: "web".into(),
            }
        );
        let built = Event::user_authorize_invoice("gh_1", "o1", 5, "order-1", "wxapp", "web");
        assert_eq!(
            parse_event(&built).expect("parses").dedup_key(),
            "o1|5|user_authorize_invoice||order-1||||"
        );
        let other = Event::user_authorize_invoice("gh_1", "o1", 5, "order-2", "wxapp", "web");
        assert_ne!(
            parse_event(&other).expect("parses").dedup_key(),
            parse_event(&built).expect("parses").dedup_key(),
            "two orders in one second are two events"
        );
        assert!(matches!(
            parse_typed_event(&built).expect("typed").kind,
            EventKind::UserAuthorizeInvoice { .. }
        ));
        let mut neither = parse_event(&built).expect("parses");
        neither.succ_order_id = None;
        assert!(matches!(neither.typed(), Err(EventError::Missing(_))));

        let xml = Event::update_invoice_status("gh_1", "o1", 6, ReimburseStatus::Lock, "pCARD", "123456789012");
        assert!(xml.contains("<Status><![CDATA[INVOICE_REIMBURSE_LOCK]]></Status>"));
        let t = parse_typed_event(&xml).expect("typed");
        assert_eq!(
            t.kind,
            EventKind::UpdateInvoiceStatus {
                status: ReimburseStatus::Lock,
                card_id: "pCARD".into(),
                code: "123456789012".into()
            }
        );
        let unlock = Event::update_invoice_status("gh_1", "o1", 6, ReimburseStatus::Init, "pCARD", "123456789012");
        assert_ne!(
            parse_event(&xml).expect("parses").dedup_key(),
            parse_event(&unlock).expect("parses").dedup_key()
        );
        let bad = xml.replace("INVOICE_REIMBURSE_LOCK", "LOCKED");
        assert!(parse_typed_event(&bad).is_err());
    }

    #[test]
    fn typed_parsing_refuses_entities_and_oversize() {
        let laughs = r#"<!DOCTYPE x [<!ENTITY a "aaaa">]><xml><ToUserName>&a;</ToUserName></xml>"#;
        assert!(matches!(parse_typed_event(laughs), Err(EventError::Doctype)));
        let big = format!("<xml><Content>{}</Content></xml>", "a".repeat(MAX_EVENT_BYTES));
        assert!(matches!(parse_typed_event(&big), Err(EventError::TooLarge)));
    }

    fn click_event() -> TypedEvent {
        parse_typed_event(&Event::click("gh_0123456789ab", "oUser", 100, "K")).expect("typed")
    }

    #[test]
    fn plain_passive_replies() {
        let text = PassiveReply::text(&click_event(), 200, "您有 2 张新票据 <a href=\"x\">查看</a>");
        let xml = text.to_xml();
        assert!(xml.starts_with("<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_0123456789ab]]></FromUserName><CreateTime>200</CreateTime><MsgType><![CDATA[text]]></MsgType>"), "{xml}");
        let back = parse_event(&xml).expect("parses");
        assert_eq!(back.content.as_deref(), Some("您有 2 张新票据 <a href=\"x\">查看</a>"));

        let news = PassiveReply::news(
            &click_event(),
            201,
            Article {
                title: "门诊收费票据".into(),
                description: "¥12.50".into(),
                pic_url: "https://piaojia.example/p.png".into(),
                url: "https://piaojia.example/r/1?a=1&b=2".into(),
            },
        );
        let xml = news.to_xml();
        assert!(xml.contains("<MsgType><![CDATA[news]]></MsgType><ArticleCount>1</ArticleCount><Articles><item><Title><![CDATA[门诊收费票据]]></Title>"), "{xml}");
        assert!(xml.contains("<Url><![CDATA[https://piaojia.example/r/1?a=1&b=2]]></Url></item></Articles></xml>"));
    }

    fn vector(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/wechat_vectors.json");
        let all: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
        all[name].clone()
    }

    #[test]
    fn secure_passive_replies_follow_the_official_algorithm() {
        let v = vector("secure_reply");
        let s = |k: &str| v[k].as_str().expect("field").to_owned();
        let crypt = MsgCrypt::new(&s("token"), &s("encoding_aes_key"), &s("appid")).expect("key");
        let random: [u8; 16] = s("random16").as_bytes().try_into().expect("16 bytes");
        // The official vector, through the same sealing the replies use.
        let sealed = crypt.sealed_reply_with_random(&s("plaintext"), &s("TimeStamp"), &s("Nonce"), &random);
        let env = parse_event(&sealed).expect("envelope");
        assert_eq!(env.encrypt.as_deref(), Some(s("Encrypt").as_str()));
        assert_eq!(env.msg_signature.as_deref(), Some(s("MsgSignature").as_str()));
        assert_eq!(env.time_stamp.as_deref(), Some(s("TimeStamp").as_str()));
        assert_eq!(env.nonce.as_deref(), Some(s("Nonce").as_str()));

        // A text reply sealed the same way decrypts back to its plain XML.
        let reply = PassiveReply::text(&click_event(), 300, "已收到");
        let xml = reply.to_secure_xml_with_random(&crypt, "1713424427", "415670741", &random);
        let env = parse_event(&xml).expect("envelope");
        let enc = env.encrypt.expect("Encrypt");
        assert!(crypt.verify_msg_signature("1713424427", "415670741", &enc, &env.msg_signature.expect("sig")));
        assert_eq!(crypt.decrypt(&enc).expect("decrypts"), reply.to_xml());
        // Random prefixes differ between calls.
        let a = parse_event(&reply.to_secure_xml(&crypt, "1", "2"))
            .expect("env")
            .encrypt;
        let b = parse_event(&reply.to_secure_xml(&crypt, "1", "2"))
            .expect("env")
            .encrypt;
        assert_ne!(a, b);
    }

    #[test]
    fn cdata_terminator_is_escaped() {
        let mut e = Event::new_event("gh", "o1", 1, EVENT_CLICK);
        e.event_key = Some("a]]>b".to_owned());
        let back = parse_event(&e.to_xml()).expect("parses");
        assert_eq!(back.event_key.as_deref(), Some("a]]>b"));
    }
}
