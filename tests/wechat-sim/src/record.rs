//! What the simulator saw and did, for assertions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One request received on a WeChat endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedCall {
    pub at: DateTime<Utc>,
    pub method: String,
    /// The WeChat path, e.g. `/cgi-bin/stable_token`, whatever scope it was mounted under.
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// The JSON body; a string if it was not JSON; null if empty. `secret` values are redacted.
    pub body: serde_json::Value,
    /// From the access_token, or the `appid` parameter.
    pub appid: Option<String>,
    pub http_status: u16,
    /// 0 on success (also where WeChat omits errcode); -1 for an HTTP 503 outage.
    pub response_errcode: i64,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentSubscribeMessage {
    pub at: DateTime<Utc>,
    pub appid: String,
    pub msgid: u64,
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    pub data: serde_json::Value,
    pub miniprogram_state: Option<String>,
    pub lang: Option<String>,
}

/// Final status of a template message, as reported by TEMPLATESENDJOBFINISH.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateStatus {
    #[default]
    Success,
    UserBlock,
    SystemFailed,
}

impl TemplateStatus {
    /// The `Status` value in the event.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::UserBlock => "failed:user block",
            Self::SystemFailed => "failed: system failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentTemplateMessage {
    pub at: DateTime<Utc>,
    pub appid: String,
    pub msgid: u64,
    pub touser: String,
    pub template_id: String,
    pub url: Option<String>,
    pub miniprogram: Option<serde_json::Value>,
    pub client_msg_id: Option<String>,
    /// As sent; WeChat ignores `first`, `remark` and colours.
    pub data: serde_json::Value,
    pub status: TemplateStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushAttempt {
    pub at: DateTime<Utc>,
    pub http_status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// One event pushed to a message server, after all its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedEvent {
    pub at: DateTime<Utc>,
    pub appid: String,
    /// `Event` of the XML, e.g. `TEMPLATESENDJOBFINISH`.
    pub event: String,
    /// The plaintext XML (before any secure-mode envelope).
    pub xml: String,
    pub secure: bool,
    /// The full URL of the first attempt, with its query.
    pub url: String,
    pub attempts: Vec<PushAttempt>,
    /// An attempt got a 2xx answer.
    pub delivered: bool,
    /// That answer was `success`, empty, or a valid passive reply, as WeChat expects;
    /// anything else is retried like a timeout.
    pub acknowledged: bool,
    /// The user the event is about (the `openid` query parameter).
    #[serde(default)]
    pub openid: Option<String>,
    /// The message server's passive reply (anything but `success`/empty), from the last attempt.
    #[serde(default)]
    pub reply: Option<PassiveReply>,
}

/// One article of a `news` passive reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyArticle {
    pub title: String,
    pub description: String,
    pub pic_url: String,
    pub url: String,
}

/// A message server's passive reply to a push, as WeChat would read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassiveReply {
    /// The body as received.
    pub raw: String,
    /// The push was in secure mode, so the reply had to be an encrypted envelope.
    pub secure: bool,
    /// Secure mode: whether the envelope's `MsgSignature` matched.
    pub signature_valid: Option<bool>,
    /// The plaintext reply XML (decrypted in secure mode).
    pub xml: Option<String>,
    pub msg_type: Option<String>,
    pub to_user_name: Option<String>,
    pub from_user_name: Option<String>,
    pub create_time: Option<i64>,
    /// `text` replies.
    pub content: Option<String>,
    /// `news` replies.
    pub articles: Vec<ReplyArticle>,
    /// `image`/`voice`/`video` replies.
    pub media_id: Option<String>,
    /// WeChat would show it to the user.
    pub valid: bool,
    /// Why not (WeChat then tells the user "该公众号暂时无法提供服务，请稍后再试").
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QrCode {
    pub at: DateTime<Utc>,
    pub appid: String,
    pub ticket: String,
    pub url: String,
    pub action_name: String,
    /// `scene_str`, or `scene_id` as text.
    pub scene: String,
    pub expire_seconds: Option<u64>,
}
