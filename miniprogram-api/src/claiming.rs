//! Claiming a receipt (报销申请), whatever the channel: the mini-program API
//! (`routes::claims`) and the official account's pages submit, list and withdraw
//! claims through these functions alone, so the rules are written once.
//!
//! The rules: 1 to [`CLAIM_RECEIPTS_MAX`] distinct receipts; the payer accepts
//! sharing, and the consent lists exactly the reimburser's personal fields; name,
//! ID number and phone come from the sealed registered profile, other consented
//! fields from what the payer typed; the personal data and the claim's own fields
//! are sealed for that reimburser alone; the store then checks every receipt
//! (the payer's own, accepted, within the reimburser's deadline, not reversed,
//! locked or reimbursed by another, in no other open claim) in one transaction.

use std::collections::BTreeMap;

use piaojia_core::pii::purpose;
use piaojia_store::wallets::PayerRecord;
use piaojia_store::{
    ClaimRecord, ClaimRefusal, ClaimStatus, NewClaim, Reimburser, StoreError, SubmitOutcome, Timestamp, WithdrawOutcome,
};
use piaojia_web::error::{ApiError, ErrorCode};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::WalletState;
use crate::routes::Problems;
use crate::routes::profile::SealedProfile;

/// Most receipts in one claim.
pub const CLAIM_RECEIPTS_MAX: usize = 20;
/// Most fields of the claim's own, and their sizes.
pub const FIELDS_MAX: usize = 10;
pub const FIELD_NAME_MAX: usize = 32;
pub const FIELD_VALUE_MAX: usize = 200;

/// The personal fields a payer's profile holds; the others the payer types in.
pub const FROM_PROFILE: &[&str] = &["name", "id_card_no", "phone"];

/// The field code of a consented field the registered profile must hold
/// (`errors[].code` of `validation_failed`).
pub const PROFILE_REQUIRED: &str = "profile_required";

/// The payer's consent to sharing personal data with the reimburser.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimConsent {
    /// Exactly the reimburser's `personalFields` (any order).
    #[schema(example = json!(["name", "id_card_no"]))]
    pub fields: Vec<String>,
    pub accepted: bool,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequest {
    /// The reimburser's appId (from `GET /v1/mp/reimbursers`).
    #[schema(example = "insurer01")]
    pub reimburser: String,
    /// 1 to 20 receipts of the wallet (their ids).
    pub receipts: Vec<Uuid>,
    pub consent: ClaimConsent,
    /// Consented fields the profile does not hold (`email`, `medical_card_no`).
    #[serde(default)]
    #[schema(example = json!({}))]
    pub personal_data: BTreeMap<String, String>,
    /// The claim's own fields the reimburser asks for (its `claimFields`: no other
    /// name, every required one; any names when it lists none); kept sealed.
    /// Names 1-32 `[A-Za-z0-9_]`, values 1-200 characters.
    #[serde(default)]
    #[schema(example = json!({"bankAccount": "6222020200112233445", "policyNo": "P2026-0001"}))]
    pub fields: BTreeMap<String, String>,
}

/// Who claims, and through what.
pub struct Claimant<'a> {
    pub payer: &'a PayerRecord,
    /// The mini-program or official account the claim comes from (its WeChat appid).
    pub app_id: &'a str,
    /// The agencies the channel reaches (`None`: all, the platform wallet).
    pub scope: Option<&'a [Uuid]>,
    pub remote_addr: Option<String>,
}

/// A reimburser a payer may send a receipt to, and until when.
pub struct ReimburserChoice {
    pub reimburser: Reimburser,
    /// The last moment this receipt may be claimed with it.
    pub claim_by: Option<Timestamp>,
}

/// The enabled reimbursers that accept receipts of this agency.
pub async fn reimbursers_for(
    state: &WalletState,
    agency_code: &str,
    issued_at: Timestamp,
) -> Result<Vec<ReimburserChoice>, ApiError> {
    let mut items = Vec::new();
    for r in state.store.list_reimbursers().await? {
        if !r.accepted_agencies.iter().any(|a| a == agency_code) {
            continue;
        }
        if !state.store.app(&r.app_id).await?.is_some_and(|a| a.enabled) {
            continue;
        }
        items.push(ReimburserChoice {
            claim_by: r.claim_deadline(issued_at),
            reimburser: r,
        });
    }
    Ok(items)
}

/// True while the payer may still withdraw the claim (the reimburser has not locked it).
pub fn withdrawable(status: ClaimStatus) -> bool {
    matches!(status, ClaimStatus::Submitted | ClaimStatus::Received)
}

/// True while the claim holds its receipts (no other claim may include them).
pub fn is_open(status: ClaimStatus) -> bool {
    matches!(
        status,
        ClaimStatus::Submitted | ClaimStatus::Received | ClaimStatus::Locked
    )
}

fn refusal(index: usize, refusal: ClaimRefusal) -> ApiError {
    let (code, what) = match refusal {
        ClaimRefusal::NotInWallet => (ErrorCode::ReceiptNotFound, "no such receipt in this wallet"),
        ClaimRefusal::NotAccepted => (
            ErrorCode::ReimburserDoesNotAccept,
            "this reimburser does not accept receipts of this agency",
        ),
        ClaimRefusal::PastDeadline => (
            ErrorCode::ClaimDeadlinePassed,
            "this receipt was issued longer ago than this reimburser accepts (claimWithinDays)",
        ),
        ClaimRefusal::Reversed => (ErrorCode::ReceiptReversed, "the issuer reversed this receipt (冲红)"),
        ClaimRefusal::LockedByOther => (
            ErrorCode::ReceiptLockedByOther,
            "another reimburser holds the lock on this receipt",
        ),
        ClaimRefusal::AlreadyClosed => (ErrorCode::ReceiptAlreadyClosed, "this receipt is already reimbursed"),
        ClaimRefusal::AlreadyClaimed => (
            ErrorCode::ReceiptAlreadyClaimed,
            "this receipt is already in an open claim",
        ),
    };
    ApiError::with(code, what).field(format!("/receipts/{index}"), code.as_str(), what)
}

fn reimburser_not_found() -> ApiError {
    ApiError::with(
        ErrorCode::ReimburserNotFound,
        "no registered reimburser with this appId",
    )
}

/// The request's own shape: receipts, consent accepted, the claim's fields.
fn check_shape(body: &ClaimRequest) -> Result<(), ApiError> {
    let mut p = Problems::default();
    if body.receipts.is_empty() || body.receipts.len() > CLAIM_RECEIPTS_MAX {
        p.push(
            "/receipts",
            "invalid_length",
            format!("1 to {CLAIM_RECEIPTS_MAX} receipts"),
        );
    }
    for (i, id) in body.receipts.iter().enumerate() {
        if body.receipts[..i].contains(id) {
            p.push(&format!("/receipts/{i}"), "duplicate", "each receipt once");
        }
    }
    if !body.consent.accepted {
        p.push(
            "/consent/accepted",
            "required",
            "the payer must accept sharing the listed data",
        );
    }
    if body.fields.len() > FIELDS_MAX {
        p.push("/fields", "too_many", format!("at most {FIELDS_MAX} fields"));
    }
    for (k, v) in &body.fields {
        let name_ok =
            !k.is_empty() && k.len() <= FIELD_NAME_MAX && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            p.push(&format!("/fields/{k}"), "invalid_format", "names are 1-32 [A-Za-z0-9_]");
        } else if v.trim().is_empty() || v.chars().count() > FIELD_VALUE_MAX {
            p.push(&format!("/fields/{k}"), "invalid_length", "1 to 200 characters");
        }
    }
    p.into_result()
}

/// The claim's own fields against what the reimburser asks for: when it names
/// its fields, no other field and every required one; when it names none, any.
fn check_fields(reimburser: &Reimburser, fields: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if reimburser.claim_fields.is_empty() {
        return Ok(());
    }
    let mut p = Problems::default();
    for k in fields.keys() {
        if !reimburser.claim_fields.iter().any(|f| &f.name == k) {
            let asked: Vec<&str> = reimburser.claim_fields.iter().map(|f| f.name.as_str()).collect();
            p.push(
                &format!("/fields/{k}"),
                "unknown_field",
                format!("this reimburser asks for {}", asked.join(", ")),
            );
        }
    }
    for f in reimburser.claim_fields.iter().filter(|f| f.required) {
        if !fields.contains_key(&f.name) {
            p.push(
                &format!("/fields/{}", f.name),
                "required",
                format!("the reimburser needs {}", f.name),
            );
        }
    }
    p.into_result()
}

/// The consented values: the profile's, then what the payer typed in.
fn personal_data(
    state: &WalletState,
    payer: &PayerRecord,
    reimburser: &Reimburser,
    typed: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let profile = payer.profile_sealed.as_deref().and_then(|s| {
        state
            .keyring
            .open_json::<SealedProfile>(s, purpose::PAYER_PROFILE)
            .inspect_err(|e| tracing::error!(payer_id = %payer.id, error = %e, "profile cannot be opened"))
            .ok()
    });
    let mut personal: BTreeMap<String, String> = BTreeMap::new();
    let mut p = Problems::default();
    for field in &reimburser.personal_fields {
        let from_profile = profile.as_ref().and_then(|pr| match field.as_str() {
            "name" => Some(pr.name.clone()),
            "id_card_no" => Some(pr.id_number.clone()),
            "phone" => pr.phone.clone(),
            _ => None,
        });
        let typed = typed.get(field).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let value = if FROM_PROFILE.contains(&field.as_str()) {
            from_profile
        } else {
            typed
        };
        match value {
            Some(v) if v.chars().count() <= FIELD_VALUE_MAX => {
                personal.insert(field.clone(), v);
            }
            Some(_) => p.push(&format!("/personalData/{field}"), "too_long", "at most 200 characters"),
            None if FROM_PROFILE.contains(&field.as_str()) => p.push(
                &format!("/personalData/{field}"),
                PROFILE_REQUIRED,
                "register this in the profile first (PUT /v1/mp/profile)",
            ),
            None => p.push(
                &format!("/personalData/{field}"),
                "required",
                "the reimburser receives this field",
            ),
        }
    }
    p.into_result()?;
    Ok(personal)
}

/// Submits a claim by every rule (see the module), tells the notifier that the
/// reimburser's webhook waits, and returns the stored claim.
pub async fn submit(state: &WalletState, claimant: Claimant<'_>, body: &ClaimRequest) -> Result<ClaimRecord, ApiError> {
    check_shape(body)?;
    let reimburser = state.store.reimburser(&body.reimburser).await?;
    let enabled = match &reimburser {
        Some(r) => state.store.app(&r.app_id).await?.is_some_and(|a| a.enabled),
        None => false,
    };
    let Some(reimburser) = reimburser.filter(|_| enabled) else {
        return Err(reimburser_not_found().field(
            "/reimburser",
            "reimburser_not_found",
            "use an appId from GET /v1/mp/reimbursers",
        ));
    };
    // The consent: exactly the reimburser's fields, each once.
    let mut asked: Vec<&str> = reimburser.personal_fields.iter().map(String::as_str).collect();
    let mut given: Vec<&str> = body.consent.fields.iter().map(String::as_str).collect();
    asked.sort_unstable();
    given.sort_unstable();
    if asked != given {
        return Err(ApiError::with(
            ErrorCode::ConsentMismatch,
            format!(
                "the consent must list exactly the fields this reimburser receives: {}",
                reimburser.personal_fields.join(", ")
            ),
        )
        .field(
            "/consent/fields",
            "consent_mismatch",
            reimburser.personal_fields.join(", "),
        ));
    }
    check_fields(&reimburser, &body.fields)?;
    let personal = personal_data(state, claimant.payer, &reimburser, &body.personal_data)?;

    let mut accepted_agency_ids = Vec::with_capacity(reimburser.accepted_agencies.len());
    for code in &reimburser.accepted_agencies {
        if let Some(a) = state.store.agency_by_code(code).await? {
            accepted_agency_ids.push(a.id);
        }
    }
    let app_id = &reimburser.app_id;
    let fields_sealed =
        (!body.fields.is_empty()).then(|| state.keyring.seal_json(&body.fields, &purpose::claim_fields(app_id)));
    let outcome = state
        .store
        .submit_claim(NewClaim {
            id: Uuid::now_v7(),
            payer_id: claimant.payer.id,
            reimburser_app_id: app_id.clone(),
            mp_app_id: claimant.app_id.to_owned(),
            receipt_ids: body.receipts.clone(),
            consented_fields: reimburser.personal_fields.clone(),
            personal_sealed: state.keyring.seal_json(&personal, &purpose::claim_personal(app_id)),
            fields_sealed,
            accepted_agency_ids,
            issued_after: reimburser.claim_deadline_cutoff(Timestamp::now()),
            scope: claimant.scope.map(<[Uuid]>::to_vec),
            remote_addr: claimant.remote_addr,
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound(piaojia_store::Entity::App) => reimburser_not_found(),
            other => other.into(),
        })?;
    let claim = match outcome {
        SubmitOutcome::Submitted(claim) => *claim,
        SubmitOutcome::Refused { index, refusal: r } => return Err(refusal(index, r)),
    };
    tracing::info!(claim_id = %claim.id, reimburser = %app_id, channel = %claimant.app_id, receipts = claim.receipt_ids.len(), "claim submitted");
    if let Some(wake) = &state.wake {
        wake().await;
    }
    Ok(claim)
}

/// The payer's claim, unless someone else's or none.
pub fn claim_not_found() -> ApiError {
    ApiError::with(ErrorCode::ClaimNotFound, "no such claim of yours")
}

/// Withdraws the payer's claim the reimburser has not locked; the reimburser is
/// told by webhook and the receipts are free again.
pub async fn withdraw(
    state: &WalletState,
    payer_id: Uuid,
    claim_id: Uuid,
    remote_addr: Option<String>,
) -> Result<ClaimRecord, ApiError> {
    let claim = match state.store.withdraw_claim(payer_id, claim_id, remote_addr).await? {
        WithdrawOutcome::Withdrawn(c) => *c,
        WithdrawOutcome::NotFound => return Err(claim_not_found()),
        WithdrawOutcome::Locked(_) => {
            return Err(ApiError::with(
                ErrorCode::ClaimLocked,
                "the reimburser locked this claim's receipts: it can no longer be withdrawn",
            ));
        }
        WithdrawOutcome::Closed(c) => {
            return Err(ApiError::with(
                ErrorCode::ClaimClosed,
                format!("this claim is already {}", c.status),
            ));
        }
    };
    if let Some(wake) = &state.wake {
        wake().await;
    }
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_fields_are_known_personal_fields() {
        for f in FROM_PROFILE {
            assert!(["name", "id_card_no", "phone", "email", "medical_card_no"].contains(f));
        }
    }
}
