//! Every problem `code` piaojia can answer, in one place: its spelling on the wire,
//! its HTTP status, its title and what it means. The README's error table and the
//! OpenAPI spec's `Problem.code` are checked against [`ErrorCode::ALL`] by tests, so
//! a code cannot be added, renamed or dropped here without the docs following.

use actix_web::http::StatusCode;

macro_rules! error_codes {
    ($( $variant:ident = $spelling:literal, $status:ident, $title:literal, $meaning:literal; )*) => {
        /// A stable machine-readable problem code; clients branch on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( #[doc = $meaning] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order the README lists them.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )*];

            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $spelling, )* }
            }

            pub const fn status(self) -> StatusCode {
                match self { $( ErrorCode::$variant => StatusCode::$status, )* }
            }

            pub const fn title(self) -> &'static str {
                match self { $( ErrorCode::$variant => $title, )* }
            }

            /// One line for the README table and the OpenAPI description.
            pub const fn meaning(self) -> &'static str {
                match self { $( ErrorCode::$variant => $meaning, )* }
            }
        }
    };
}

error_codes! {
    InvalidJson = "invalid_json", BAD_REQUEST, "The body is not the expected JSON",
        "the body is not JSON of the expected shape (a field pointer names the culprit)";
    InvalidBody = "invalid_body", BAD_REQUEST, "Bad request",
        "the body could not be read or parsed (not UTF-8, malformed XML, entities)";
    InvalidPath = "invalid_path", BAD_REQUEST, "Bad request",
        "a path parameter is malformed";
    InvalidQuery = "invalid_query", BAD_REQUEST, "Bad request",
        "a query parameter is malformed";

    AuthMissing = "auth_missing", UNAUTHORIZED, "Unauthorized",
        "no Authorization header";
    AuthWrongScheme = "auth_wrong_scheme", UNAUTHORIZED, "Unauthorized",
        "the Authorization header uses another scheme";
    AuthMalformed = "auth_malformed", UNAUTHORIZED, "Unauthorized",
        "the PJ1-HMAC-SHA256 header cannot be parsed";
    AuthStaleTimestamp = "auth_stale_timestamp", UNAUTHORIZED, "Unauthorized",
        "the signed timestamp is more than `security.clock_skew_secs` off";
    AuthBadSignature = "auth_bad_signature", UNAUTHORIZED, "Unauthorized",
        "the signature does not match (also for an unknown appId)";
    AuthReplayedNonce = "auth_replayed_nonce", UNAUTHORIZED, "Unauthorized",
        "the nonce was already used within the replay window";
    AuthBadToken = "auth_bad_token", UNAUTHORIZED, "Unauthorized",
        "operator API: the bearer token is wrong";
    TokenInvalid = "token_invalid", UNAUTHORIZED, "Unauthorized",
        "mini-program API: the access token is invalid or its payer is gone";
    TokenExpired = "token_expired", UNAUTHORIZED, "Unauthorized",
        "mini-program API: the access token has expired (refresh it)";
    WechatCodeInvalid = "wechat_code_invalid", UNAUTHORIZED, "Unauthorized",
        "WeChat refused the login code";
    RefreshTokenInvalid = "refresh_token_invalid", UNAUTHORIZED, "Unauthorized",
        "the refresh token is unknown";
    RefreshTokenExpired = "refresh_token_expired", UNAUTHORIZED, "Unauthorized",
        "the refresh token has expired (sign in again)";
    RefreshTokenRevoked = "refresh_token_revoked", UNAUTHORIZED, "Unauthorized",
        "the refresh token was revoked (signed out)";
    RefreshTokenReused = "refresh_token_reused", UNAUTHORIZED, "Unauthorized",
        "an already rotated refresh token was presented again: the whole session is revoked";

    AppDisabled = "app_disabled", FORBIDDEN, "Forbidden",
        "the calling app is disabled";
    AppWrongKind = "app_wrong_kind", FORBIDDEN, "Forbidden",
        "the calling app is not of the kind this API serves";
    OpsDisabled = "ops_disabled", FORBIDDEN, "Forbidden",
        "operator API: no operator token is configured";
    DownloadLinkInvalid = "download_link_invalid", FORBIDDEN, "Forbidden",
        "the signed download link is forged or for another receipt";
    DownloadLinkExpired = "download_link_expired", FORBIDDEN, "Forbidden",
        "the signed download link has expired";
    BadSignature = "bad_signature", FORBIDDEN, "Forbidden",
        "message server: the WeChat signature does not match";
    StaleTimestamp = "stale_timestamp", FORBIDDEN, "Forbidden",
        "message server: the timestamp is more than `security.clock_skew_secs` off";
    Replayed = "replayed", FORBIDDEN, "Forbidden",
        "message server: a timestamp and nonce seen with another body";
    SecureModeRequired = "secure_mode_required", FORBIDDEN, "Forbidden",
        "message server: plain mode for an app with an EncodingAESKey";
    ReimburserNotRegistered = "reimburser_not_registered", FORBIDDEN, "Forbidden",
        "reimburser API: the app has no reimburser profile (ask the operator to register it)";

    ReceiptNotFound = "receipt_not_found", NOT_FOUND, "Not found",
        "no such receipt for this caller";
    FileNotFound = "file_not_found", NOT_FOUND, "Not found",
        "the receipt has no stored file";
    MiniprogramNotFound = "miniprogram_not_found", NOT_FOUND, "Not found",
        "no enabled mini-program app with this appid";
    PayerNotFound = "payer_not_found", NOT_FOUND, "Not found",
        "the payer account no longer exists";
    AgencyNotFound = "agency_not_found", NOT_FOUND, "Not found",
        "no such agency";
    AppNotFound = "app_not_found", NOT_FOUND, "Not found",
        "no such app";
    DeliveryNotFound = "delivery_not_found", NOT_FOUND, "Not found",
        "no such delivery";
    InboxEventNotFound = "inbox_event_not_found", NOT_FOUND, "Not found",
        "operator API: no such event in the message server's inbox";
    ReimburserNotFound = "reimburser_not_found", NOT_FOUND, "Not found",
        "mini-program API: no registered reimburser with this appId";
    ClaimNotFound = "claim_not_found", NOT_FOUND, "Not found",
        "no such claim for this caller (a payer's own, or one sent to this reimburser)";
    UnknownApp = "unknown_app", NOT_FOUND, "Not found",
        "message server: no message server is configured for this appid";
    RouteNotFound = "route_not_found", NOT_FOUND, "Not found",
        "no route for this method and path";

    ReceiptConflict = "receipt_conflict", CONFLICT, "Conflict",
        "the same receipt was pushed before with other content";
    ReversalConflict = "reversal_conflict", CONFLICT, "Conflict",
        "the receipt was already reversed with another red receipt";
    WechatPaymentConflict = "wechat_payment_conflict", CONFLICT, "Conflict",
        "this WeChat Pay order was reported before with another payer, amount, app or time";
    ReceiptLocked = "receipt_locked", CONFLICT, "Conflict",
        "the receipt is locked or reimbursed and cannot be reversed";
    ReceiptReversed = "receipt_reversed", CONFLICT, "Conflict",
        "the issuer reversed the receipt (冲红): it cannot be locked, nor get a QR code";
    NoOfficialAccount = "no_official_account", CONFLICT, "Conflict",
        "the agency has no enabled official account (channel `wechat_template`)";
    AgencyExists = "agency_exists", CONFLICT, "Conflict",
        "an agency with this code exists";
    AppExists = "app_exists", CONFLICT, "Conflict",
        "an app with this appId exists";
    ConcurrentChange = "concurrent_change", CONFLICT, "Conflict",
        "a concurrent request changed the same record first; retry";
    ReceiptLockedByOther = "receipt_locked_by_other", CONFLICT, "Conflict",
        "another reimburser holds the lock on this receipt (reimburser API, and claims)";
    ReceiptAlreadyClosed = "receipt_already_closed", CONFLICT, "Conflict",
        "the receipt is already reimbursed (closed) (reimburser API, and claims)";
    LockRequired = "lock_required", CONFLICT, "Conflict",
        "reimburser API: closing, unlocking or rejecting needs your own lock";
    RequestIdReused = "request_id_reused", CONFLICT, "Conflict",
        "reimburser API: this requestId was used for a different request";
    ReceiptAlreadyClaimed = "receipt_already_claimed", CONFLICT, "Conflict",
        "mini-program API: the receipt is already in an open claim (withdraw that one first)";
    ClaimLocked = "claim_locked", CONFLICT, "Conflict",
        "mini-program API: the reimburser locked the claim's receipts; it can no longer be withdrawn";
    ClaimClosed = "claim_closed", CONFLICT, "Conflict",
        "the claim is final (reimbursed, rejected, withdrawn or cancelled)";
    InboxEventNotFailed = "inbox_event_not_failed", CONFLICT, "Conflict",
        "operator API: only a failed inbox event can be retried (it is pending or done)";

    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE, "Payload too large",
        "the body is above its scope's limit, refused before it is read";
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type",
        "send Content-Type: application/json";
    RangeNotSatisfiable = "range_not_satisfiable", RANGE_NOT_SATISFIABLE, "Range not satisfiable",
        "the requested byte range lies outside the file";

    ValidationFailed = "validation_failed", UNPROCESSABLE_ENTITY, "The request is invalid",
        "one or more fields are invalid (`errors[]` gives a pointer and a field code each)";
    FileTooLarge = "file_too_large", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "the receipt file is above `files.max_bytes`";
    FileHostNotAllowed = "file_host_not_allowed", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "the file URL is not allowed (field codes `host_not_allowed`, `private_address`, `https_required`)";
    FileFetchFailed = "file_fetch_failed", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "the receipt file could not be fetched from its URL";
    PaidExceedsTotal = "paid_exceeds_total", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "reimburser API: the amount paid exceeds the receipt's total";
    ConsentMismatch = "consent_mismatch", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "mini-program API: the consent must list exactly the personal fields the reimburser receives";
    ReimburserDoesNotAccept = "reimburser_does_not_accept", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "mini-program API: the reimburser does not accept receipts of this receipt's agency";
    ClaimDeadlinePassed = "claim_deadline_passed", UNPROCESSABLE_ENTITY, "Unprocessable content",
        "mini-program API: the receipt was issued longer ago than the reimburser's `claimWithinDays`";

    TooManyAttempts = "too_many_attempts", TOO_MANY_REQUESTS, "Too many requests",
        "too many attempts from this address or account; see `Retry-After`";
    WechatRateLimited = "wechat_rate_limited", TOO_MANY_REQUESTS, "Too many requests",
        "WeChat refused the call for its quota; see `Retry-After`";

    InternalError = "internal_error", INTERNAL_SERVER_ERROR, "Internal server error",
        "an unexpected failure, logged with its cause";
    WechatUnavailable = "wechat_unavailable", BAD_GATEWAY, "Bad gateway",
        "WeChat could not be reached or failed";
    NonceStoreUnavailable = "nonce_store_unavailable", SERVICE_UNAVAILABLE, "Service unavailable",
        "the replay store (Redis) is unreachable; retry later";
    DatabaseUnavailable = "database_unavailable", SERVICE_UNAVAILABLE, "Service unavailable",
        "the database or its pool is unreachable; retry later (`Retry-After`)";
    MigrationsPending = "migrations_pending", SERVICE_UNAVAILABLE, "Service unavailable",
        "readiness: the schema is behind this build";
    RedisUnavailable = "redis_unavailable", SERVICE_UNAVAILABLE, "Service unavailable",
        "readiness: Redis is unreachable";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let mut description = String::from("Stable machine-readable code; clients branch on it.\n\n");
        for code in Self::ALL {
            description.push_str(&format!(
                "- `{}` ({}): {}\n",
                code.as_str(),
                code.status().as_u16(),
                code.meaning()
            ));
        }
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Self::ALL.iter().map(|c| c.as_str())))
            .description(Some(description))
            .examples([serde_json::json!("validation_failed")])
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

impl ErrorCode {
    /// The README's error table, as `scripts` and the docs test render it.
    pub fn markdown_table() -> String {
        let mut out = String::from("| status | code | meaning |\n|---|---|---|\n");
        for code in Self::ALL {
            out.push_str(&format!(
                "| {} | `{}` | {} |\n",
                code.status().as_u16(),
                code.as_str(),
                code.meaning()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn spellings_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!(
                code.status().is_client_error() || code.status().is_server_error(),
                "{s}"
            );
        }
    }

    #[test]
    fn listed_by_status() {
        let statuses: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.status().as_u16()).collect();
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        // 413/415/416 sit before 422 on purpose: the table reads in status order.
        assert_eq!(statuses, sorted);
    }
}
