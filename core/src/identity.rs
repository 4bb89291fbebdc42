//! A payer's identity as the mini-program registers it: ID document types and
//! numbers (the mainland resident ID checked by its GB 11643 check digit), names
//! and phone numbers, normalized the way receipts' blind indexes are built so the
//! two match.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The kind of ID document a payer registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdType {
    /// 居民身份证 (18 characters, GB 11643 check digit).
    Resident,
    /// 护照.
    Passport,
    /// 港澳居民来往内地通行证 (H/M + 8 or 10 digits).
    HkMacauPermit,
    /// 台湾居民来往大陆通行证 (8 digits).
    TaiwanPermit,
    /// 外国人永久居留身份证 (15 or 18 characters).
    ForeignPermanentResident,
    /// Any other document: letters and digits.
    Other,
}

impl IdType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdType::Resident => "resident",
            IdType::Passport => "passport",
            IdType::HkMacauPermit => "hk_macau_permit",
            IdType::TaiwanPermit => "taiwan_permit",
            IdType::ForeignPermanentResident => "foreign_permanent_resident",
            IdType::Other => "other",
        }
    }
}

/// Why an ID number was refused (a stable code and an English message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdProblem {
    pub code: &'static str,
    pub message: &'static str,
}

const fn problem(code: &'static str, message: &'static str) -> IdProblem {
    IdProblem { code, message }
}

/// Validates an ID number of `kind` and returns it normalized (trimmed, upper-case).
pub fn validate_id_number(kind: IdType, raw: &str) -> Result<String, IdProblem> {
    let s = raw.trim().to_ascii_uppercase();
    if s.is_empty() {
        return Err(problem("required", "is required"));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(problem("invalid_format", "must contain only letters and digits"));
    }
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    match kind {
        IdType::Resident => {
            if s.len() != 18 {
                return Err(problem("invalid_format", "a resident ID has 18 characters"));
            }
            let (body, check) = s.as_bytes().split_at(17);
            if !body.iter().all(u8::is_ascii_digit) || !matches!(check, [b'0'..=b'9' | b'X']) {
                return Err(problem("invalid_format", "a resident ID is 17 digits and a digit or X"));
            }
            if check != [crate::receipt::gb11643_check(body)] {
                return Err(problem("invalid_value", "the resident ID check digit does not match"));
            }
        }
        IdType::Passport => {
            if !(5..=17).contains(&s.len()) {
                return Err(problem("invalid_format", "a passport number has 5 to 17 characters"));
            }
        }
        IdType::HkMacauPermit => {
            let ok = matches!(s.as_bytes().first(), Some(b'H' | b'M')) && matches!(s.len(), 9 | 11) && digits(&s[1..]);
            if !ok {
                return Err(problem("invalid_format", "H or M followed by 8 or 10 digits"));
            }
        }
        IdType::TaiwanPermit => {
            if s.len() != 8 || !digits(&s) {
                return Err(problem("invalid_format", "a Taiwan permit number has 8 digits"));
            }
        }
        IdType::ForeignPermanentResident => {
            if !matches!(s.len(), 15 | 18) {
                return Err(problem("invalid_format", "15 or 18 characters"));
            }
        }
        IdType::Other => {
            if s.len() > 32 {
                return Err(problem("too_long", "at most 32 characters"));
            }
        }
    }
    Ok(s)
}

/// A person's name: 1 to 50 characters, no control characters; inner spaces kept
/// (foreign names), surrounding ones trimmed.
pub fn validate_name(raw: &str) -> Result<String, IdProblem> {
    let s = raw.trim();
    let n = s.chars().count();
    if n == 0 {
        return Err(problem("required", "is required"));
    }
    if n > 50 {
        return Err(problem("too_long", "at most 50 characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(problem("invalid_format", "must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// A phone number as receipts carry it: a mainland mobile (11 digits starting
/// with 1, an optional +86 dropped) or `+<country code> <digits>` elsewhere.
pub fn normalize_phone(raw: &str) -> Result<String, IdProblem> {
    let compact: String = raw.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    let national = compact
        .strip_prefix("+86")
        .or_else(|| compact.strip_prefix("0086"))
        .unwrap_or(&compact);
    let is_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if national.len() == 11 && national.starts_with('1') && is_digits(national) {
        return Ok(national.to_owned());
    }
    if let Some(intl) = compact.strip_prefix('+')
        && is_digits(intl)
        && (6..=16).contains(&intl.len())
    {
        return Ok(compact);
    }
    Err(problem(
        "invalid_format",
        "a mainland mobile number (11 digits) or +<country code><number>",
    ))
}

/// The phone number WeChat's getuserphonenumber returns, in the form above.
pub fn phone_from_wechat(country_code: &str, pure_phone_number: &str) -> Result<String, IdProblem> {
    if country_code.trim() == "86" || country_code.trim().is_empty() {
        normalize_phone(pure_phone_number)
    } else {
        normalize_phone(&format!("+{}{}", country_code.trim(), pure_phone_number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_ids_need_their_check_digit() {
        assert_eq!(
            validate_id_number(IdType::Resident, " 11010519491231002x").as_deref(),
            Ok("11010519491231002X")
        );
        assert_eq!(
            validate_id_number(IdType::Resident, "110105194912310021").map_err(|p| p.code),
            Err("invalid_value")
        );
        assert_eq!(
            validate_id_number(IdType::Resident, "1101051949123100").map_err(|p| p.code),
            Err("invalid_format")
        );
        assert!(validate_id_number(IdType::Passport, "E12345678").is_ok());
        assert!(validate_id_number(IdType::HkMacauPermit, "H12345678").is_ok());
        assert!(validate_id_number(IdType::HkMacauPermit, "X12345678").is_err());
        assert!(validate_id_number(IdType::TaiwanPermit, "1234567").is_err());
        assert!(validate_id_number(IdType::Other, "AB-1").is_err());
    }

    #[test]
    fn phones_normalize_as_receipts_carry_them() {
        assert_eq!(normalize_phone("+86 138-0013-8000").as_deref(), Ok("13800138000"));
        assert_eq!(normalize_phone("13800138000").as_deref(), Ok("13800138000"));
        assert_eq!(normalize_phone("+852 91234567").as_deref(), Ok("+85291234567"));
        assert!(normalize_phone("12345").is_err());
        assert_eq!(phone_from_wechat("86", "13800138000").as_deref(), Ok("13800138000"));
        assert_eq!(phone_from_wechat("852", "91234567").as_deref(), Ok("+85291234567"));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name(" 张三丰 ").as_deref(), Ok("张三丰"));
        assert!(validate_name("").is_err());
        assert!(validate_name("a\u{0}b").is_err());
        assert!(validate_name(&"名".repeat(51)).is_err());
    }
}
