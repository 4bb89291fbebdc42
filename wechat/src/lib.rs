//! WeChat for piaojia (DOMAIN.md §4, §7, §8): the outbound API client with a shared
//! access-token (and card-ticket) cache, the message-server crypto, inbound event parsing
//! and passive replies.

pub mod client;
pub mod errcode;
pub mod event;
pub mod msgcrypt;

pub use client::{AppCredentials, CallError, TokenCache, WechatClient};
pub use errcode::{ErrorClass, WechatError, classify};
pub use event::{Event, EventError, EventKind, PassiveReply, TypedEvent, parse_event, parse_typed_event};
pub use msgcrypt::{CryptError, MsgCrypt};
