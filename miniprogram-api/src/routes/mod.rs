//! The mini-program routes, all under `/v1/mp`, and their OpenAPI description.

pub mod claims;
pub mod files;
pub mod profile;
pub mod receipts;
pub mod session;
pub mod subscriptions;

use actix_web::web;
use piaojia_core::receipt::FieldError;
use piaojia_web::error::{ApiError, ErrorCode};
use piaojia_wechat::CallError;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(session::login)
        .service(session::refresh)
        .service(session::logout)
        .service(profile::get_profile)
        .service(profile::put_profile)
        .service(profile::delete_profile)
        .service(profile::put_reminders)
        .service(subscriptions::get_subscriptions)
        .service(subscriptions::report)
        .service(receipts::list)
        .service(receipts::add)
        .service(receipts::detail)
        .service(receipts::remove)
        .service(receipts::annotate)
        .service(files::link)
        .service(files::download)
        .service(claims::reimbursers)
        .service(claims::submit)
        .service(claims::list)
        .service(claims::detail)
        .service(claims::withdraw);
}

#[derive(OpenApi)]
#[openapi(
    paths(
        session::login,
        session::refresh,
        session::logout,
        profile::get_profile,
        profile::put_profile,
        profile::delete_profile,
        profile::put_reminders,
        subscriptions::get_subscriptions,
        subscriptions::report,
        receipts::list,
        receipts::add,
        receipts::detail,
        receipts::remove,
        receipts::annotate,
        files::link,
        files::download,
        claims::reimbursers,
        claims::submit,
        claims::list,
        claims::detail,
        claims::withdraw,
    ),
    modifiers(&PayerSecurity),
    tags((name = "mini-program", description = "The receipt-wallet mini-program (财政电子票夹): payers sign in with `wx.login`, register, find, keep and download their receipts. Every call but login, refresh and file download carries `Authorization: Bearer <access token>`; a payer reaches only their own wallet, and an agency's own mini-program only that agency's receipts."))
)]
pub struct ApiDoc;

struct PayerSecurity;

impl utoipa::Modify for PayerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "payer_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The access token from POST /v1/mp/session (15 minutes by default)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Field problems collected while validating a request, answered together.
#[derive(Default)]
pub(crate) struct Problems(Vec<FieldError>);

impl Problems {
    pub(crate) fn push(&mut self, pointer: &str, code: &'static str, message: impl Into<String>) {
        self.0.push(FieldError {
            pointer: pointer.to_owned(),
            code,
            message: message.into(),
        });
    }

    pub(crate) fn into_result(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.0))
        }
    }
}

/// A WeChat call that failed while serving a payer.
pub(crate) fn wechat_error(e: CallError) -> ApiError {
    use piaojia_wechat::errcode::{CODE_BEEN_USED, INVALID_CODE, RATE_LIMITED, REALNAME_INVALID_CODE};
    match &e {
        CallError::Wechat(w) if [INVALID_CODE, CODE_BEEN_USED, REALNAME_INVALID_CODE].contains(&w.errcode) => {
            ApiError::with(
                ErrorCode::WechatCodeInvalid,
                "the WeChat code is invalid, expired or already used",
            )
            .challenge(piaojia_web::error::Challenge::Bearer)
        }
        CallError::Wechat(w) if w.errcode == RATE_LIMITED => {
            ApiError::too_many_requests(ErrorCode::WechatRateLimited, 60).cause(e)
        }
        _ => ApiError::with(
            ErrorCode::WechatUnavailable,
            "WeChat did not answer as expected; retry later",
        )
        .retry_after(5)
        .cause(e),
    }
}
