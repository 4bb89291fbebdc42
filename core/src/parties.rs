//! Who calls piaojia with signed requests, and the reimbursement state a
//! receipt is in (which reimburser holds it).

use serde::{Deserialize, Serialize};

use crate::delivery::spelled;

/// The kind of a signed caller (an app with HMAC secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// A hospital's billing or receipt system.
    Issuer,
    /// Medical insurance, an insurer or an employer.
    Reimburser,
}

spelled!(AppKind {
    Issuer => "issuer",
    Reimburser => "reimburser",
});

/// Where a receipt stands with reimbursers (DOMAIN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReimbursementState {
    Init,
    /// Held by exactly one reimburser.
    Lock,
    /// Reimbursed; irreversible.
    Closure,
    /// Reversed by the issuer.
    Cancel,
}

spelled!(ReimbursementState {
    Init => "INIT",
    Lock => "LOCK",
    Closure => "CLOSURE",
    Cancel => "CANCEL",
});

/// What kind of party a reimburser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReimburserKind {
    /// A medical-insurance bureau (医保).
    MedicalInsurance,
    /// A commercial insurer (商业保险).
    CommercialInsurer,
    /// An employer reimbursing its staff.
    Employer,
}

spelled!(ReimburserKind {
    MedicalInsurance => "medical_insurance",
    CommercialInsurer => "commercial_insurer",
    Employer => "employer",
});

/// A field of the claim's own that a reimburser asks payers for (bank account,
/// policy number …): its name as the reimburser receives it, the label payers
/// read, and whether a claim needs it. Values are kept sealed for that reimburser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimField {
    /// 1-32 `[A-Za-z0-9_]`.
    #[schema(example = "bankAccount")]
    pub name: String,
    /// What payers read (Chinese), 1-20 characters.
    #[schema(example = "收款银行账号")]
    pub label: String,
    #[serde(default)]
    pub required: bool,
}

impl ClaimField {
    /// Most fields a reimburser may ask for.
    pub const MAX: usize = 10;
    pub const NAME_MAX: usize = 32;
    pub const LABEL_MAX: usize = 20;

    /// The fields a reimburser that names none is offered on the pages (both optional).
    pub fn defaults() -> Vec<ClaimField> {
        vec![
            ClaimField {
                name: "bankAccount".into(),
                label: "收款银行账号".into(),
                required: false,
            },
            ClaimField {
                name: "note".into(),
                label: "备注".into(),
                required: false,
            },
        ]
    }

    /// True for a field name a claim may carry.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty() && name.len() <= Self::NAME_MAX && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    /// Parses the command line's `NAME:LABEL` or `NAME:LABEL:required`.
    pub fn parse_spec(spec: &str) -> Result<ClaimField, String> {
        let mut parts = spec.splitn(3, ':');
        let name = parts.next().unwrap_or_default().trim();
        let label = parts.next().unwrap_or_default().trim();
        let required = match parts.next().map(str::trim) {
            None | Some("optional") => false,
            Some("required") => true,
            Some(other) => {
                return Err(format!(
                    "claim field {spec:?}: {other:?} is neither required nor optional"
                ));
            }
        };
        let field = ClaimField {
            name: name.to_owned(),
            label: label.to_owned(),
            required,
        };
        Self::check_all(std::slice::from_ref(&field))?;
        Ok(field)
    }

    /// Checks a reimburser's list: names, labels, each name once, at most [`Self::MAX`].
    pub fn check_all(fields: &[ClaimField]) -> Result<(), String> {
        if fields.len() > Self::MAX {
            return Err(format!("at most {} claim fields", Self::MAX));
        }
        for (i, f) in fields.iter().enumerate() {
            if !Self::valid_name(&f.name) {
                return Err(format!("claim field name {:?} must be 1-32 [A-Za-z0-9_]", f.name));
            }
            let n = f.label.trim().chars().count();
            if n == 0 || n > Self::LABEL_MAX || f.label.chars().any(char::is_control) {
                return Err(format!("claim field {:?}: its label must be 1-20 characters", f.name));
            }
            if fields[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("claim field {:?} is named twice", f.name));
            }
        }
        Ok(())
    }
}

/// What a reimburser asks of a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReimbursementAction {
    /// INIT → LOCK, held by the caller.
    Lock,
    /// The caller's LOCK → CLOSURE, with the amount paid.
    Close,
    /// The caller's LOCK → INIT.
    Unlock,
    /// The caller refuses to reimburse: its LOCK → INIT (or INIT stays INIT), with a reason.
    Reject,
    /// A lock held too long is released (by piaojia, not a reimburser).
    Expire,
    /// The issuer reversed the receipt (冲红).
    Reverse,
}

spelled!(ReimbursementAction {
    Lock => "lock",
    Close => "close",
    Unlock => "unlock",
    Reject => "reject",
    Expire => "expire",
    Reverse => "reverse",
});

/// Why a reimbursement action is refused (stable; each maps to one error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReimbursementRefusal {
    /// Another reimburser holds the lock.
    LockedByOther,
    /// The receipt is already reimbursed (closed), by anyone.
    AlreadyClosed,
    /// The issuer reversed the receipt.
    Reversed,
    /// Closing, unlocking or rejecting needs the caller's own lock.
    LockRequired,
    /// More was paid than the receipt's total.
    PaidExceedsTotal,
}

spelled!(ReimbursementRefusal {
    LockedByOther => "receipt_locked_by_other",
    AlreadyClosed => "receipt_already_closed",
    Reversed => "receipt_reversed",
    LockRequired => "lock_required",
    PaidExceedsTotal => "paid_exceeds_total",
});

/// The next state of a receipt when `actor` asks `action` of it, given its state
/// and holder now: `Ok(None)` when nothing changes (a repeated lock by its holder),
/// `Ok(Some(state))` for a change, or the refusal. One function decides for every
/// store, so the rules cannot drift between them.
/// The holder of a lock taken through WeChat's own reimburser calls (a
/// reimburser that took the receipt from the payer's card package): WeChat
/// reports it (`update_invoice_status`) and piaojia keeps it like any other
/// party's, so no reimburser here locks or closes that receipt meanwhile.
pub const WECHAT_REIMBURSER: &str = "wechat";

pub fn reimbursement_transition(
    state: ReimbursementState,
    holder: Option<&str>,
    actor: &str,
    action: ReimbursementAction,
    paid_fen: Option<i64>,
    total_fen: i64,
) -> Result<Option<ReimbursementState>, ReimbursementRefusal> {
    use ReimbursementAction as A;
    use ReimbursementState as S;
    let mine = holder == Some(actor);
    match (state, action) {
        (S::Cancel, _) => Err(ReimbursementRefusal::Reversed),
        (S::Closure, _) => Err(ReimbursementRefusal::AlreadyClosed),
        (S::Lock, A::Expire) => Ok(Some(S::Init)),
        (S::Lock, A::Reverse) => Err(ReimbursementRefusal::LockedByOther),
        (S::Init, A::Reverse) => Ok(Some(S::Cancel)),
        (_, A::Expire) => Ok(None),
        (S::Lock, _) if !mine => Err(ReimbursementRefusal::LockedByOther),
        (S::Init, A::Lock) => Ok(Some(S::Lock)),
        (S::Lock, A::Lock) => Ok(None),
        (S::Lock, A::Close) => match paid_fen {
            Some(p) if p > total_fen => Err(ReimbursementRefusal::PaidExceedsTotal),
            _ => Ok(Some(S::Closure)),
        },
        (S::Lock, A::Unlock | A::Reject) => Ok(Some(S::Init)),
        (S::Init, A::Reject) => Ok(Some(S::Init)),
        (S::Init, A::Close | A::Unlock) => Err(ReimbursementRefusal::LockRequired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_fields_from_the_command_line() {
        let f = ClaimField::parse_spec("bankAccount:收款银行账号:required").expect("parses");
        assert_eq!(
            (f.name.as_str(), f.label.as_str(), f.required),
            ("bankAccount", "收款银行账号", true)
        );
        assert!(!ClaimField::parse_spec("policyNo:保单号").expect("parses").required);
        for bad in [
            "",
            "policyNo",
            "policy no:保单号",
            "policyNo:保单号:maybe",
            "x:一二三四五六七八九十一二三四五六七八九十一",
        ] {
            assert!(ClaimField::parse_spec(bad).is_err(), "{bad:?} accepted");
        }
        let twice = [ClaimField::defaults(), ClaimField::defaults()].concat();
        assert!(ClaimField::check_all(&twice).is_err());
        assert!(ClaimField::check_all(&ClaimField::defaults()).is_ok());
    }

    #[test]
    fn one_holder_and_closing_needs_its_lock() {
        use ReimbursementAction as A;
        use ReimbursementState as S;
        let t = |s, h, a, p| reimbursement_transition(s, h, "me", a, p, 1000);
        assert_eq!(t(S::Init, None, A::Lock, None), Ok(Some(S::Lock)));
        assert_eq!(t(S::Lock, Some("me"), A::Lock, None), Ok(None));
        assert_eq!(
            t(S::Lock, Some("other"), A::Lock, None),
            Err(ReimbursementRefusal::LockedByOther)
        );
        assert_eq!(
            t(S::Lock, Some("other"), A::Close, Some(1)),
            Err(ReimbursementRefusal::LockedByOther)
        );
        assert_eq!(
            t(S::Init, None, A::Close, Some(1)),
            Err(ReimbursementRefusal::LockRequired)
        );
        assert_eq!(
            t(S::Lock, Some("me"), A::Close, Some(1001)),
            Err(ReimbursementRefusal::PaidExceedsTotal)
        );
        assert_eq!(t(S::Lock, Some("me"), A::Close, Some(1000)), Ok(Some(S::Closure)));
        assert_eq!(
            t(S::Closure, Some("me"), A::Unlock, None),
            Err(ReimbursementRefusal::AlreadyClosed)
        );
        assert_eq!(t(S::Cancel, None, A::Lock, None), Err(ReimbursementRefusal::Reversed));
        assert_eq!(t(S::Lock, Some("me"), A::Unlock, None), Ok(Some(S::Init)));
        assert_eq!(
            t(S::Init, None, A::Unlock, None),
            Err(ReimbursementRefusal::LockRequired)
        );
        assert_eq!(t(S::Init, None, A::Reject, None), Ok(Some(S::Init)));
        assert_eq!(t(S::Lock, Some("x"), A::Expire, None), Ok(Some(S::Init)));
    }
}
