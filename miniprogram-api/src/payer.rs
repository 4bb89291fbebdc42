//! The payer extractor: a valid access token of a payer who still exists, signed in
//! through a mini-program that is still enabled. Handlers that take a [`Payer`]
//! serve that payer only, within that mini-program's scope.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use piaojia_store::wallets::PayerRecord;
use piaojia_web::error::{ApiError, Challenge, ErrorCode};
use uuid::Uuid;

use crate::WalletState;
use crate::apps::MiniProgram;

#[derive(Debug, Clone)]
pub struct Payer {
    pub id: Uuid,
    pub record: PayerRecord,
    /// The mini-program the payer signed in through.
    pub app: Arc<MiniProgram>,
}

impl Payer {
    /// The agencies this payer may reach now (`None`: all, the platform wallet).
    pub fn scope(&self) -> Option<&[Uuid]> {
        self.app.scope()
    }
}

pub fn unauthorized(code: ErrorCode, detail: &str) -> ApiError {
    ApiError::with(code, detail).challenge(Challenge::Bearer)
}

pub fn state(req: &HttpRequest) -> Result<web::Data<WalletState>, ApiError> {
    req.app_data::<web::Data<WalletState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("WalletState is not registered")))
}

impl FromRequest for Payer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = state(&req)?;
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| unauthorized(ErrorCode::AuthMissing, "send Authorization: Bearer <access token>"))?;
            let grant = state
                .tokens
                .verify_access(token.trim())
                .map_err(|e| unauthorized(e.code(), &e.to_string()))?;
            let record = state
                .store
                .payer(grant.payer_id)
                .await?
                .ok_or_else(|| unauthorized(ErrorCode::TokenInvalid, "the account no longer exists"))?;
            let app = state
                .apps
                .get(&grant.app_id)
                .await?
                .ok_or_else(|| unauthorized(ErrorCode::TokenInvalid, "the mini-program is no longer enabled"))?;
            Ok(Payer {
                id: record.id,
                record,
                app,
            })
        })
    }
}
