//! Registration and the payer's profile: name, ID document, phone (verified
//! through WeChat's phone-number button, or entered and marked unverified) and
//! consent to the privacy notice. A verified identity (WeChat's real-name check of
//! the name and ID number, or a verified phone with the name) collects the
//! receipts already held for it into the wallet; an unverified one collects
//! nothing (receipts are then added by possession).

use actix_web::{HttpResponse, delete, get, put, web};
use piaojia_core::identity::{self, IdType};
use piaojia_core::mask;
use piaojia_core::pii::purpose;
use piaojia_store::wallets::{IdentityVerification, PayerRecord, Registration};
use piaojia_web::error::{ApiError, ErrorCode, Problem};
use piaojia_wechat::client::RealNameCheck;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Problems, wechat_error};
use crate::views::{MiniProgramView, ProfileView, RegistrationView};
use crate::{Payer, WalletState};

/// The profile as sealed at rest.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedProfile {
    pub name: String,
    pub id_type: IdType,
    pub id_number: String,
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consent {
    /// The version of the privacy notice shown (`miniprogram.privacy_notice_version`).
    #[schema(example = "2026-11")]
    pub version: String,
    pub accepted: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileRequest {
    #[schema(example = "张三丰")]
    pub name: String,
    pub id_type: IdType,
    #[schema(example = "11010519491231002X")]
    pub id_number: String,
    /// The code of the mini-program's `getPhoneNumber` button: a verified phone.
    pub phone_code: Option<String>,
    /// A phone number typed in: kept, but unverified (not used to collect receipts).
    #[schema(example = "13800138000")]
    pub phone: Option<String>,
    /// The code of the mini-program's real-name authorisation (WeChat's city-service
    /// real-name check, resident ID cards only): WeChat then checks the name and ID
    /// number against the payer's WeChat Pay real name, and a match verifies the
    /// identity.
    pub real_name_code: Option<String>,
    pub consent: Consent,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RemindersRequest {
    #[schema(example = true)]
    pub enabled: bool,
}

pub(crate) fn profile_view(state: &WalletState, payer: &Payer, record: &PayerRecord) -> ProfileView {
    let profile = record.profile_sealed.as_deref().and_then(|s| {
        state
            .keyring
            .open_json::<SealedProfile>(s, purpose::PAYER_PROFILE)
            .inspect_err(|e| tracing::error!(payer_id = %record.id, error = %e, "profile cannot be opened"))
            .ok()
    });
    ProfileView {
        registered: record.registered_at.is_some(),
        name: profile.as_ref().map(|p| mask::name(&p.name)),
        id_type: profile.as_ref().map(|p| p.id_type.as_str().to_owned()),
        id_number: profile.as_ref().map(|p| mask::id_number(&p.id_number)),
        phone: profile.as_ref().and_then(|p| p.phone.as_deref()).map(mask::phone),
        phone_verified: record.phone_verified,
        verified_via: record.identity_verified_via.map(|v| v.as_str().to_owned()),
        verified_at: record.identity_verified_at.map(Into::into),
        consent_version: record.consent_version.clone(),
        consent_at: record.consent_at.map(Into::into),
        reminders: record.reminders,
        registered_at: record.registered_at.map(Into::into),
        mini_program: MiniProgramView {
            app_id: payer.app.app_id.clone(),
            platform: payer.app.scope.is_none(),
        },
    }
}

/// The payer's profile, personal data masked.
#[utoipa::path(
    get,
    path = "/v1/mp/profile",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    responses(
        (status = 200, description = "The profile", body = ProfileView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/profile")]
pub async fn get_profile(state: web::Data<WalletState>, payer: Payer) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(profile_view(&state, &payer, &payer.record)))
}

/// Register, or change the profile.
///
/// Requires consent to the current privacy notice. With `realNameCode` WeChat checks
/// the name and ID number (a mismatch is refused); with `phoneCode` the phone is
/// verified. Every receipt already held for a person with this verified identity
/// (ID number and name after the real-name check, or the verified phone and name)
/// is collected into the wallet; after a change, collected receipts that no longer
/// match leave it. An unverified identity collects nothing: receipts are then
/// added by possession. Organisations' receipts are never collected.
#[utoipa::path(
    put,
    path = "/v1/mp/profile",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    request_body(content = ProfileRequest, example = json!({
        "name": "张三丰", "idType": "resident", "idNumber": "11010519491231002X",
        "phoneCode": "e31968a7f94cc5ee25fafc2aef2773f0bb8c3937b22520eb8ee345274d00c144",
        "realNameCode": "081Kq4Ga1Xb2dE0Hn9Ja1cUTxH2Kq4Gz",
        "consent": {"version": "2026-11", "accepted": true}
    })),
    responses(
        (status = 200, description = "Registered; `collected` receipts were added to the wallet", body = RegistrationView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (per field, e.g. `/idNumber` `invalid_value` for a wrong check digit, `/consent` `consent_required`, `/realNameCode` `not_verified` when WeChat's real-name record does not match)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`wechat_unavailable` (a phone or real-name code could not be checked)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/mp/profile")]
pub async fn put_profile(
    state: web::Data<WalletState>,
    payer: Payer,
    body: web::Json<ProfileRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let mut p = Problems::default();
    let name = identity::validate_name(&req.name)
        .inspect_err(|e| p.push("/name", e.code, e.message))
        .ok();
    let id_number = identity::validate_id_number(req.id_type, &req.id_number)
        .inspect_err(|e| p.push("/idNumber", e.code, e.message))
        .ok();
    let current = &state.settings.miniprogram.privacy_notice_version;
    if !req.consent.accepted || &req.consent.version != current {
        p.push(
            "/consent",
            "consent_required",
            format!("accept the privacy notice version {current}"),
        );
    }
    if req.phone_code.is_some() && req.phone.is_some() {
        p.push("/phone", "conflict", "send phoneCode or phone, not both");
    }
    let typed_phone = match req.phone.as_deref() {
        Some(raw) => identity::normalize_phone(raw)
            .inspect_err(|e| p.push("/phone", e.code, e.message))
            .ok(),
        None => None,
    };
    if req.phone_code.as_deref().is_some_and(|c| c.is_empty() || c.len() > 256) {
        p.push("/phoneCode", "invalid_format", "the code of the getPhoneNumber button");
    }
    if let Some(code) = req.real_name_code.as_deref() {
        if code.is_empty() || code.len() > 256 {
            p.push(
                "/realNameCode",
                "invalid_format",
                "the code of the real-name authorisation",
            );
        }
        if req.id_type != IdType::Resident {
            p.push(
                "/realNameCode",
                "not_applicable",
                "WeChat's real-name check covers resident ID cards only",
            );
        }
    }
    p.into_result()?;
    let (Some(name), Some(id_number)) = (name, id_number) else {
        return Err(ApiError::internal(anyhow::anyhow!("validated fields missing")));
    };

    let (phone, phone_verified) = match req.phone_code.as_deref() {
        Some(code) => {
            let credentials = payer.app.credentials(&state.keyring).map_err(ApiError::internal)?;
            let info = state
                .wechat
                .get_phone_number(&credentials, code)
                .await
                .map_err(|e| match wechat_error(e) {
                    e if e.code() == ErrorCode::WechatCodeInvalid => {
                        ApiError::validation(vec![piaojia_core::receipt::FieldError {
                            pointer: "/phoneCode".into(),
                            code: "invalid_value",
                            message: "the phone code is invalid, expired or used".into(),
                        }])
                    }
                    e => e,
                })?;
            let phone = identity::phone_from_wechat(&info.country_code, &info.pure_phone_number)
                .map_err(|e| ApiError::internal(anyhow::anyhow!("WeChat returned an unusable phone: {}", e.message)))?;
            (Some(phone), true)
        }
        None => (typed_phone, false),
    };

    let real_name_verified = match req.real_name_code.as_deref() {
        Some(code) => {
            check_real_name(&state, &payer, code, &name, &id_number).await?;
            true
        }
        None => false,
    };
    let verified_via = if real_name_verified {
        Some(IdentityVerification::WechatRealname)
    } else if phone_verified {
        Some(IdentityVerification::Phone)
    } else {
        None
    };

    let keyring = &state.keyring;
    let registration = Registration {
        profile_sealed: keyring.seal_json(
            &SealedProfile {
                name: name.clone(),
                id_type: req.id_type,
                id_number: id_number.clone(),
                phone: phone.clone(),
            },
            purpose::PAYER_PROFILE,
        ),
        id_index: keyring.blind_index(purpose::index::ID_CARD, &id_number),
        name_index: keyring.blind_index(purpose::index::NAME, &name),
        phone_index: phone.as_deref().map(|p| keyring.blind_index(purpose::index::PHONE, p)),
        phone_verified,
        verified_via,
        consent_version: req.consent.version,
        consent_at: piaojia_store::Timestamp::now(),
    };
    let outcome = state.store.register_payer(payer.id, registration).await?;
    tracing::info!(
        payer_id = %payer.id,
        collected = outcome.collected,
        released = outcome.released,
        phone_verified,
        verified_via = verified_via.map(IdentityVerification::as_str),
        "payer registered"
    );
    Ok(HttpResponse::Ok().json(RegistrationView {
        profile: profile_view(&state, &payer, &outcome.payer),
        collected: outcome.collected,
    }))
}

/// WeChat's real-name check of the name and ID number against the payer's WeChat
/// Pay real name; anything but a match of both is refused.
async fn check_real_name(
    state: &WalletState,
    payer: &Payer,
    code: &str,
    name: &str,
    id_number: &str,
) -> Result<(), ApiError> {
    let refuse = |message: &str| {
        ApiError::validation(vec![piaojia_core::receipt::FieldError {
            pointer: "/realNameCode".into(),
            code: "not_verified",
            message: message.into(),
        }])
    };
    let openid = state
        .store
        .payer_openid(payer.id, &payer.app.app_id)
        .await?
        .ok_or_else(|| refuse("sign in through this mini-program first"))?;
    let credentials = payer.app.credentials(&state.keyring).map_err(ApiError::internal)?;
    let check = RealNameCheck {
        openid,
        real_name: SecretString::from(name.to_owned()),
        cred_id: SecretString::from(id_number.to_owned()),
        code: code.to_owned(),
    };
    let result = state
        .wechat
        .check_real_name_info(&credentials, &check)
        .await
        .map_err(|e| match wechat_error(e) {
            e if e.code() == ErrorCode::WechatCodeInvalid => {
                ApiError::validation(vec![piaojia_core::receipt::FieldError {
                    pointer: "/realNameCode".into(),
                    code: "invalid_value",
                    message: "the real-name code is invalid, expired or used".into(),
                }])
            }
            e => e,
        })?;
    if result.is_verified() {
        Ok(())
    } else {
        tracing::info!(payer_id = %payer.id, result = ?result, "real-name check did not match");
        Err(refuse(
            "the name and ID number do not match this WeChat account's real-name record",
        ))
    }
}

/// Delete the account.
///
/// Personal data is erased, the wallet emptied (receipts stay with their issuer),
/// subscriptions and sign-ins revoked; an audit record without personal data is
/// kept. Signing in again later starts a new, empty account.
#[utoipa::path(
    delete,
    path = "/v1/mp/profile",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/v1/mp/profile")]
pub async fn delete_profile(state: web::Data<WalletState>, payer: Payer) -> Result<HttpResponse, ApiError> {
    state.store.delete_payer(payer.id).await?;
    tracing::info!(payer_id = %payer.id, "payer account deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Switch reimbursement reminders on or off.
#[utoipa::path(
    put,
    path = "/v1/mp/profile/reminders",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    request_body(content = RemindersRequest, example = json!({"enabled": false})),
    responses(
        (status = 200, description = "The profile", body = ProfileView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/mp/profile/reminders")]
pub async fn put_reminders(
    state: web::Data<WalletState>,
    payer: Payer,
    body: web::Json<RemindersRequest>,
) -> Result<HttpResponse, ApiError> {
    let record = state.store.set_reminders(payer.id, body.enabled).await?;
    Ok(HttpResponse::Ok().json(profile_view(&state, &payer, &record)))
}
