//! Operators: a bearer token from settings (`ops.token`, at least 32 characters)
//! for now. Wrong tokens are limited per client address
//! (`ops.token_failures_per_ip_per_min`, shared through Redis in scale-out): past
//! the limit the address gets `429` with `Retry-After` whatever it sends, the right
//! token included, so guessing does not pay. Each wrong token is logged with the
//! client address and a fingerprint of what was sent, never the token itself.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// The limit wrong operator tokens count against, per client address.
pub const TOKEN_FAILURES: &str = "ip";

#[derive(Debug, Clone)]
pub struct Operator;

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { check(&req).await })
    }
}

/// What a log line may say of a presented token: its length and a short hash.
fn fingerprint(token: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    format!("sha256:{}… ({} chars)", &hex::encode(hash)[..8], token.chars().count())
}

/// The operator check of a request: the extractor's, and the sandbox admin's.
pub(crate) async fn check(req: &HttpRequest) -> Result<Operator, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?;
    let expected = state.settings.ops.token.expose_secret();
    if expected.is_empty() {
        return Err(ApiError::with(
            ErrorCode::OpsDisabled,
            "the operator API is off: set ops.token",
        ));
    }
    let ip = piaojia_web::client::client_ip(req, &state.settings.server.trusted_proxies);
    let key = ip.map(piaojia_web::client::limit_key).unwrap_or_default();
    if let Some(wait) = state.ops_limits.refusal(TOKEN_FAILURES, &key).await {
        return Err(ApiError::too_many_requests(
            ErrorCode::TooManyAttempts,
            wait.as_secs() + 1,
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::with(ErrorCode::AuthMissing, "send Authorization: Bearer <operator token>"))?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Ok(Operator);
    }
    let counted = state.ops_limits.check(&[(TOKEN_FAILURES, &key)]).await;
    tracing::warn!(
        client = %key,
        presented = %fingerprint(given),
        limited = counted.is_err(),
        "wrong operator token"
    );
    match counted {
        Ok(()) => Err(ApiError::with(ErrorCode::AuthBadToken, "the operator token is wrong")),
        Err(wait) => Err(ApiError::too_many_requests(
            ErrorCode::TooManyAttempts,
            wait.as_secs() + 1,
        )),
    }
}
