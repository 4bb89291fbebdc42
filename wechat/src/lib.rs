//! WeChat for piaojia (DOMAIN.md §4): the outbound API client with a shared access-token
//! cache, the message-server crypto, and inbound event parsing.

pub mod client;
pub mod errcode;
pub mod event;
pub mod msgcrypt;

pub use client::{AppCredentials, CallError, TokenCache, WechatClient};
pub use errcode::{ErrorClass, WechatError, classify};
pub use event::{Event, EventError, parse_event};
pub use msgcrypt::{CryptError, MsgCrypt};
