//! Operators: a bearer token from settings (`ops.token`) for now.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct Operator;

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(check(req))
    }
}

fn check(req: &HttpRequest) -> Result<Operator, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?;
    let expected = state.settings.ops.token.expose_secret();
    if expected.is_empty() {
        return Err(ApiError::forbidden(
            "ops_disabled",
            "the operator API is off: set ops.token",
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("auth_missing", "send Authorization: Bearer <operator token>"))?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(Operator)
    } else {
        Err(ApiError::unauthorized("auth_bad_token", "the operator token is wrong"))
    }
}
