//! WeChat's `{errcode, errmsg}` and what each code means for the caller.

use serde::{Deserialize, Serialize};

/// System busy; WeChat asks to retry later.
pub const BUSY: i64 = -1;
pub const OK: i64 = 0;
/// Invalid credential: the access_token is wrong or was superseded.
pub const INVALID_CREDENTIAL: i64 = 40001;
pub const INVALID_OPENID: i64 = 40003;
pub const INVALID_ACCESS_TOKEN: i64 = 40014;
pub const INVALID_CODE: i64 = 40029;
pub const INVALID_TEMPLATE_ID: i64 = 40037;
pub const CODE_BEEN_USED: i64 = 40163;
pub const INVALID_PAGE: i64 = 41030;
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
pub const REQUIRE_SUBSCRIBE: i64 = 43004;
/// One-time subscription consumed or refused by the user: a business outcome.
pub const USER_REFUSED: i64 = 43101;
/// Daily quota of the interface exhausted.
pub const QUOTA_EXHAUSTED: i64 = 45009;
/// Frequency limit (e.g. jscode2session 100/user/min).
pub const RATE_LIMITED: i64 = 45011;
pub const INVALID_TEMPLATE_DATA: i64 = 47003;
/// Invalid appid.
pub const INVALID_APPID: i64 = 40013;
/// Invalid secret (AppSecret wrong or reset).
pub const INVALID_SECRET: i64 = 40125;
/// Caller IP not on the account's whitelist.
pub const IP_NOT_WHITELISTED: i64 = 40164;
/// Invalid QR scene / action parameters.
pub const INVALID_ARGS: i64 = 40097;
/// API unauthorised for this account (e.g. unverified service account).
pub const API_UNAUTHORIZED: i64 = 48001;

/// WeChat's error body. `errcode == 0` is success and never built into this type by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("wechat errcode {errcode}: {errmsg}")]
pub struct WechatError {
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

impl WechatError {
    pub fn new(errcode: i64, errmsg: impl Into<String>) -> Self {
        Self {
            errcode,
            errmsg: errmsg.into(),
        }
    }

    pub fn class(&self) -> ErrorClass {
        classify(self.errcode)
    }
}

/// How a caller should react to an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Token rejected: drop it (if still the cached one), refresh, retry once.
    TokenInvalid,
    /// 45011: back off; never retried in a tight loop.
    RateLimited,
    /// 45009: nothing more today; alert.
    QuotaExhausted,
    /// -1: transient; retry later.
    Busy,
    /// Retrying the same request cannot succeed.
    Permanent,
    /// Unknown code: treat as retryable with backoff, but look at it.
    Other,
}

impl ErrorClass {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::TokenInvalid | Self::RateLimited | Self::Busy | Self::Other)
    }
}

pub fn classify(errcode: i64) -> ErrorClass {
    match errcode {
        INVALID_CREDENTIAL | INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED => ErrorClass::TokenInvalid,
        RATE_LIMITED => ErrorClass::RateLimited,
        QUOTA_EXHAUSTED => ErrorClass::QuotaExhausted,
        BUSY => ErrorClass::Busy,
        USER_REFUSED
        | INVALID_OPENID
        | INVALID_TEMPLATE_DATA
        | INVALID_TEMPLATE_ID
        | REQUIRE_SUBSCRIBE
        | INVALID_CODE
        | CODE_BEEN_USED
        | INVALID_PAGE
        | INVALID_APPID
        | INVALID_SECRET
        | IP_NOT_WHITELISTED
        | INVALID_ARGS
        | API_UNAUTHORIZED => ErrorClass::Permanent,
        _ => ErrorClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for c in [40001, 40014, 42001] {
            assert_eq!(classify(c), ErrorClass::TokenInvalid);
        }
        assert_eq!(classify(45011), ErrorClass::RateLimited);
        assert_eq!(classify(45009), ErrorClass::QuotaExhausted);
        assert_eq!(classify(-1), ErrorClass::Busy);
        for c in [43101, 40003, 47003, 40037, 43004, 40029, 40163, 41030] {
            assert_eq!(classify(c), ErrorClass::Permanent, "{c}");
        }
        assert_eq!(classify(99999), ErrorClass::Other);
        assert!(!ErrorClass::QuotaExhausted.is_retryable());
        assert!(!ErrorClass::Permanent.is_retryable());
        assert!(ErrorClass::Busy.is_retryable());
    }

    #[test]
    fn deserializes_wechat_body() {
        let e: WechatError =
            serde_json::from_str(r#"{"errcode":43101,"errmsg":"user refuse to accept the msg"}"#).expect("valid json");
        assert_eq!(e.class(), ErrorClass::Permanent);
    }
}
