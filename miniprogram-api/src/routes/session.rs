//! Signing in: the mini-program's `wx.login` code becomes our access token and a
//! refresh token. WeChat's `session_key` is dropped at once: it never leaves the
//! server, nor is it kept.

use actix_web::{HttpRequest, HttpResponse, post, web};
use chrono::{Duration, Utc};
use piaojia_core::pii::purpose;
use piaojia_store::wallets::{NewRefreshToken, RefreshOutcome};
use piaojia_web::error::{ApiError, ErrorCode, Problem};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Problems, wechat_error};
use crate::payer::unauthorized;
use crate::views::SessionView;
use crate::{Payer, WalletState, tokens};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    /// The mini-program's WeChat appid.
    #[schema(example = "wx9a8b7c6d5e4f3a2b")]
    pub app_id: String,
    /// The code from `wx.login()` (single use, about 5 minutes).
    #[schema(example = "0a3Xk2Ga1Xb2dE0Hn9Ja1cUTxH2Xk2Gi")]
    pub code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    #[schema(example = "ycjtDr2iBIQaCB1yr55Qt3PAZ6xmluczAp6vM3T60_c")]
    pub refresh_token: String,
}

/// The answer to a sign-in or refresh: a fresh access token and `pair`'s refresh token.
fn issue(state: &WalletState, payer_id: Uuid, app_id: &str, registered: bool, pair: (String, String)) -> SessionView {
    let mp = &state.settings.miniprogram;
    SessionView {
        access_token: state
            .tokens
            .issue_access(payer_id, app_id, Utc::now(), mp.access_token_ttl.as_secs()),
        token_type: "Bearer",
        expires_in: mp.access_token_ttl.as_secs(),
        refresh_token: pair.0,
        refresh_expires_in: mp.refresh_token_ttl.as_secs(),
        registered,
    }
}

fn refresh_expiry(state: &WalletState) -> piaojia_store::Timestamp {
    piaojia_store::Timestamp::now()
        + Duration::from_std(state.settings.miniprogram.refresh_token_ttl).unwrap_or(Duration::days(30))
}

/// Sign in with a `wx.login` code.
///
/// A payer who reaches us through several of our mini-programs with the same
/// WeChat `unionid` is one payer. Sign-ins are limited per client address (IPv6:
/// per /64) and per mini-program before WeChat is asked
/// (`miniprogram.session_per_ip_per_min`, `session_per_app_per_min`).
#[utoipa::path(
    post,
    path = "/v1/mp/session",
    tag = "mini-program",
    request_body(content = LoginRequest, example = json!({"appId": "wx9a8b7c6d5e4f3a2b", "code": "0a3Xk2Ga1Xb2dE0Hn9Ja1cUTxH2Xk2Gi"})),
    responses(
        (status = 200, description = "Signed in", body = SessionView),
        (status = 401, description = "`wechat_code_invalid`: the code is wrong, expired or used", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`miniprogram_not_found`: no enabled mini-program has this appid", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_attempts` (too many sign-ins from this address or for this mini-program; `Retry-After`) or `wechat_rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`wechat_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/session")]
pub async fn login(
    req: HttpRequest,
    state: web::Data<WalletState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let LoginRequest { app_id, code } = body.into_inner();
    let mut p = Problems::default();
    if app_id.is_empty() || app_id.len() > 32 || !app_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        p.push("/appId", "invalid_format", "a WeChat appid");
    }
    if code.is_empty() || code.len() > 128 || !code.bytes().all(|b| b.is_ascii_graphic()) {
        p.push("/code", "invalid_format", "the code from wx.login()");
    }
    p.into_result()?;
    let app = state
        .apps
        .get(&app_id)
        .await?
        .ok_or_else(|| ApiError::with(ErrorCode::MiniprogramNotFound, "no enabled mini-program has this appid"))?;
    // Before WeChat is asked: bogus codes must not spend the app's quota.
    let ip = piaojia_web::client::client_ip(&req, &state.settings.trusted_proxies);
    if let Err(wait) = state.session_limits.check(ip, &app_id).await {
        tracing::warn!(app_id, "sign-ins over their limit");
        return Err(ApiError::too_many_requests(
            ErrorCode::TooManyAttempts,
            wait.as_secs() + 1,
        ));
    }
    let credentials = app.credentials(&state.keyring).map_err(ApiError::internal)?;
    let session = state
        .wechat
        .jscode2session(&credentials, &code)
        .await
        .map_err(wechat_error)?;
    let unionid = session
        .unionid
        .as_deref()
        .map(|u| state.keyring.blind_index(purpose::index::UNIONID, u));
    let outcome = state
        .store
        .login_payer(&app_id, &session.openid, unionid.as_deref())
        .await?;
    drop(session);
    let payer = outcome.payer;
    let pair = tokens::new_refresh_token(&state.keyring);
    state
        .store
        .insert_refresh_token(NewRefreshToken {
            id: Uuid::now_v7(),
            family_id: Uuid::now_v7(),
            payer_id: payer.id,
            app_id: app_id.clone(),
            token_hash: pair.1.clone(),
            expires_at: refresh_expiry(&state),
        })
        .await?;
    tracing::info!(payer_id = %payer.id, app_id, new_payer = outcome.created, "payer signed in");
    let view = issue(&state, payer.id, &app_id, payer.registered_at.is_some(), pair);
    Ok(HttpResponse::Ok().json(view))
}

/// Exchange a refresh token for a new access token and refresh token.
///
/// Each refresh token works once. Presenting one that was already used revokes
/// every token of its sign-in (someone else may hold a copy): sign in again.
#[utoipa::path(
    post,
    path = "/v1/mp/session/refresh",
    tag = "mini-program",
    request_body(content = RefreshRequest, example = json!({"refreshToken": "Qm9vdHN0cmFwcGVkIHJlZnJlc2ggdG9rZW4gZXhhbXBsZQ"})),
    responses(
        (status = 200, description = "A new pair", body = SessionView),
        (status = 401, description = "`refresh_token_invalid`, `refresh_token_expired`, `refresh_token_revoked`, `refresh_token_reused`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/session/refresh")]
pub async fn refresh(state: web::Data<WalletState>, body: web::Json<RefreshRequest>) -> Result<HttpResponse, ApiError> {
    let presented = body.into_inner().refresh_token;
    if presented.is_empty() || presented.len() > 128 {
        return Err(unauthorized(ErrorCode::RefreshTokenInvalid, "unknown refresh token"));
    }
    let presented_hash = tokens::refresh_token_hash(&state.keyring, &presented);
    let next = tokens::new_refresh_token(&state.keyring);
    let outcome = state
        .store
        .rotate_refresh_token(
            &presented_hash,
            NewRefreshToken {
                id: Uuid::now_v7(),
                // The store keeps the presented token's family.
                family_id: Uuid::nil(),
                payer_id: Uuid::nil(),
                app_id: String::new(),
                token_hash: next.1.clone(),
                expires_at: refresh_expiry(&state),
            },
            Utc::now().into(),
        )
        .await?;
    let (payer_id, app_id) = match outcome {
        RefreshOutcome::Rotated { payer_id, app_id } => (payer_id, app_id),
        RefreshOutcome::Reused { payer_id, .. } => {
            tracing::warn!(%payer_id, "a used refresh token was presented again: its family is revoked");
            return Err(unauthorized(
                ErrorCode::RefreshTokenReused,
                "this refresh token was already used; every token of this sign-in is revoked",
            ));
        }
        RefreshOutcome::Revoked => return Err(unauthorized(ErrorCode::RefreshTokenRevoked, "signed out")),
        RefreshOutcome::Expired => return Err(unauthorized(ErrorCode::RefreshTokenExpired, "sign in again")),
        RefreshOutcome::Unknown => return Err(unauthorized(ErrorCode::RefreshTokenInvalid, "unknown refresh token")),
    };
    if state.apps.get(&app_id).await?.is_none() {
        return Err(unauthorized(
            ErrorCode::TokenInvalid,
            "the mini-program is no longer enabled",
        ));
    }
    let payer = state
        .store
        .payer(payer_id)
        .await?
        .ok_or_else(|| unauthorized(ErrorCode::TokenInvalid, "the account no longer exists"))?;
    let view = issue(&state, payer.id, &app_id, payer.registered_at.is_some(), next);
    Ok(HttpResponse::Ok().json(view))
}

/// Sign out: revokes the refresh token's sign-in (its whole family).
///
/// The access token stays valid until it expires (minutes); drop it.
#[utoipa::path(
    post,
    path = "/v1/mp/session/logout",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    request_body(content = RefreshRequest),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/session/logout")]
pub async fn logout(
    state: web::Data<WalletState>,
    payer: Payer,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let hash = tokens::refresh_token_hash(&state.keyring, &body.refresh_token);
    // Idempotent: an unknown or foreign token changes nothing and says nothing.
    state.store.revoke_refresh_family(payer.id, &hash).await?;
    Ok(HttpResponse::NoContent().finish())
}
