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
/// The body is not the JSON the interface expects.
pub const DATA_FORMAT_ERROR: i64 = 47001;
/// Invalid `media_id` (e.g. a `media_id` menu button).
pub const INVALID_MEDIA_ID: i64 = 40007;
/// An upload without its file (e.g. `setpdf` without the `pdf` field).
pub const MEDIA_DATA_MISSING: i64 = 41005;
/// `menu/get` of an account without a menu.
pub const MENU_NOT_EXIST: i64 = 46003;

// ---- custom menu (`/cgi-bin/menu/create`) ----
/// Top-level buttons: 1 to 3.
pub const MENU_INVALID_BUTTON_SIZE: i64 = 40016;
pub const MENU_INVALID_BUTTON_TYPE: i64 = 40017;
/// Top-level name: 1 to 16 bytes.
pub const MENU_INVALID_BUTTON_NAME_SIZE: i64 = 40018;
/// `key`: 1 to 128 bytes.
pub const MENU_INVALID_BUTTON_KEY_SIZE: i64 = 40019;
/// `url`: 1 to 1024 bytes, http(s).
pub const MENU_INVALID_BUTTON_URL_SIZE: i64 = 40020;
/// A sub-button with sub-buttons of its own.
pub const MENU_INVALID_SUB_MENU_LEVEL: i64 = 40022;
/// Sub-buttons: 1 to 5.
pub const MENU_INVALID_SUB_BUTTON_SIZE: i64 = 40023;
pub const MENU_INVALID_SUB_BUTTON_TYPE: i64 = 40024;
/// Sub-button name: 1 to 60 bytes.
pub const MENU_INVALID_SUB_BUTTON_NAME_SIZE: i64 = 40025;
pub const MENU_INVALID_SUB_BUTTON_KEY_SIZE: i64 = 40026;
pub const MENU_INVALID_SUB_BUTTON_URL_SIZE: i64 = 40027;

// ---- real-name check (`/intp/realname/checkrealnameinfo`) ----
/// Real-name authorisation code unknown, expired, already used, or issued for another
/// user or app ("无效code").
pub const REALNAME_INVALID_CODE: i64 = 80113;

// ---- card package: fiscal receipts and reimbursers (DOMAIN.md §7) ----
/// `card_id` unknown.
pub const INVALID_CARD_ID: i64 = 40073;
/// The card or order is not authorised for this caller (e.g. `getauthdata` of an order
/// WeChat never saw, an `encrypt_code` chosen for another reimburser).
pub const CARD_NOT_AUTHORIZED: i64 = 40078;
/// No permission: the card, order or platform belongs to another account.
pub const INVOICE_NO_PERMISSION: i64 = 72015;
/// The card is locked by another reimburser.
pub const INVOICE_LOCKED_BY_OTHER: i64 = 72023;
/// The card's status does not allow this change (closed, cancelled, order already carded).
pub const INVOICE_BAD_STATUS: i64 = 72024;
pub const INVOICE_INVALID_PARAMS: i64 = 72031;
/// The platform refused to issue for this order (`rejectinsert`).
pub const INVOICE_ORDER_REJECTED: i64 = 72035;
/// WeChat is busy with this card: retry.
pub const INVOICE_BUSY: i64 = 72036;
/// The payer never authorised this order.
pub const INVOICE_ORDER_NEVER_AUTH: i64 = 72038;
/// Closing a card needs a prior lock by the same reimburser.
pub const INVOICE_MUST_LOCK_FIRST: i64 = 72039;
/// The PDF (or its `s_media_id`) is unusable.
pub const INVOICE_PDF_ERROR: i64 = 72040;
/// This `billing_no` + `billing_code` was already put in a card package.
pub const INVOICE_CODE_NUMBER_REPEATED: i64 = 72042;
/// A size limit was exceeded (e.g. the PDF is empty or over 2 MiB).
pub const INVOICE_SIZE_ERROR: i64 = 72043;

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
        BUSY | INVOICE_BUSY => ErrorClass::Busy,
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
        | API_UNAUTHORIZED
        | DATA_FORMAT_ERROR
        | INVALID_MEDIA_ID
        | MEDIA_DATA_MISSING
        | MENU_NOT_EXIST
        | MENU_INVALID_BUTTON_SIZE
        | MENU_INVALID_BUTTON_TYPE
        | MENU_INVALID_BUTTON_NAME_SIZE
        | MENU_INVALID_BUTTON_KEY_SIZE
        | MENU_INVALID_BUTTON_URL_SIZE
        | MENU_INVALID_SUB_MENU_LEVEL
        | MENU_INVALID_SUB_BUTTON_SIZE
        | MENU_INVALID_SUB_BUTTON_TYPE
        | MENU_INVALID_SUB_BUTTON_NAME_SIZE
        | MENU_INVALID_SUB_BUTTON_KEY_SIZE
        | MENU_INVALID_SUB_BUTTON_URL_SIZE
        | REALNAME_INVALID_CODE
        | INVALID_CARD_ID
        | CARD_NOT_AUTHORIZED
        | INVOICE_NO_PERMISSION
        | INVOICE_LOCKED_BY_OTHER
        | INVOICE_BAD_STATUS
        | INVOICE_INVALID_PARAMS
        | INVOICE_ORDER_REJECTED
        | INVOICE_ORDER_NEVER_AUTH
        | INVOICE_MUST_LOCK_FIRST
        | INVOICE_PDF_ERROR
        | INVOICE_CODE_NUMBER_REPEATED
        | INVOICE_SIZE_ERROR => ErrorClass::Permanent,
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
        // Card package: only 72036 (busy) is worth retrying.
        assert_eq!(classify(72036), ErrorClass::Busy);
        for c in [
            40073, 40078, 72015, 72023, 72024, 72031, 72035, 72038, 72039, 72040, 72042, 72043,
        ] {
            assert_eq!(classify(c), ErrorClass::Permanent, "{c}");
        }
        // Menu validation and the real-name code.
        for c in [
            40007, 40016, 40017, 40018, 40019, 40020, 40022, 40023, 40024, 40025, 40026, 40027, 80113, 47001,
        ] {
            assert_eq!(classify(c), ErrorClass::Permanent, "{c}");
        }
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
