//! Money as integer fen (分, 1/100 yuan).
//!
//! Issuers send yuan decimals with at most two places, as JSON strings or numbers.
//! They are parsed exactly from their text and never pass through `f64` arithmetic,
//! so 0.1 + 0.2 style artifacts cannot reach a stored amount.

use serde_json::{Number, Value};

/// Why an amount was refused. Messages never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be a plain yuan decimal such as \"12\" or \"12.30\"")]
    Malformed,
    #[error("amount must have at most 2 decimal places")]
    TooManyDecimals,
    #[error("amount must not be negative")]
    Negative,
    #[error("amount is too large")]
    Overflow,
}

impl MoneyError {
    /// Stable snake_case code, as used in validation errors.
    pub fn code(self) -> &'static str {
        match self {
            MoneyError::Malformed => "invalid_format",
            MoneyError::TooManyDecimals => "too_many_decimals",
            MoneyError::Negative => "negative_amount",
            MoneyError::Overflow => "invalid_value",
        }
    }
}

/// Parses a yuan decimal (`"12"`, `"12.3"`, `"012.30"`) into fen, exactly.
///
/// Grammar: `-?[0-9]+(\.[0-9]{1,2})?`. Signs other than a leading `-`, exponents,
/// spaces, `".5"` and `"12."` are [`MoneyError::Malformed`]. A well-formed negative
/// non-zero amount is [`MoneyError::Negative`] so callers can say so; `"-0"` is 0.
pub fn parse_yuan(s: &str) -> Result<i64, MoneyError> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if !is_digits(int_part) {
        return Err(MoneyError::Malformed);
    }
    let frac = match frac_part {
        None => "",
        Some(f) if is_digits(f) => f,
        Some(_) => return Err(MoneyError::Malformed),
    };
    if frac.len() > 2 {
        return Err(MoneyError::TooManyDecimals);
    }

    let mut fen: i64 = 0;
    let frac_digits = frac.bytes().chain(std::iter::repeat(b'0')).take(2);
    for digit in int_part.bytes().chain(frac_digits) {
        fen = fen
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(MoneyError::Overflow)?;
    }
    if negative && fen != 0 {
        return Err(MoneyError::Negative);
    }
    Ok(fen)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Largest magnitude accepted from a JSON *float*: every decimal with at most 15
/// significant digits survives the f64 round trip, so below 10^13 yuan (with 2
/// decimals) the shortest textual form serde_json prints is the value that was sent.
/// Larger amounts must be sent as strings or integers.
const MAX_EXACT_FLOAT_YUAN: f64 = 1e13;

/// Reads an amount that arrived as a JSON string or number.
///
/// Numbers are converted through their textual form ([`Number::to_string`]) and then
/// parsed with [`parse_yuan`]; integers are exact. A float is printed in its shortest
/// round-trip form, so `12.3` reads as 1230 fen and `12.345` is refused for its
/// decimals. Floats printed in exponent form (e.g. `1e16`, `1e-7`) are refused as
/// malformed; `1e2` is parsed as the float 100.0 and so accepted as 100 yuan.
/// Any other JSON type (null, bool, array, object) is [`MoneyError::Malformed`].
pub fn amount_from_json(v: &Value) -> Result<i64, MoneyError> {
    match v {
        Value::String(s) => parse_yuan(s),
        Value::Number(n) => number_to_fen(n),
        _ => Err(MoneyError::Malformed),
    }
}

fn number_to_fen(n: &Number) -> Result<i64, MoneyError> {
    if n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= MAX_EXACT_FLOAT_YUAN) {
        return Err(MoneyError::Overflow);
    }
    parse_yuan(&n.to_string())
}

/// Formats fen as a yuan decimal with exactly two places: 1230 → `"12.30"`.
pub fn format_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(parse_yuan("12"), Ok(1200));
        assert_eq!(parse_yuan("12.3"), Ok(1230));
        assert_eq!(parse_yuan("12.30"), Ok(1230));
        assert_eq!(parse_yuan("0.01"), Ok(1));
        assert_eq!(parse_yuan("012.30"), Ok(1230));
        assert_eq!(parse_yuan("0"), Ok(0));
        assert_eq!(parse_yuan("-0.00"), Ok(0));
        assert_eq!(parse_yuan("92233720368547758.07"), Ok(i64::MAX));
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "", ".5", "12.", "1e3", "+1", " 1", "1 ", "1,000", "1.2.3", "-", "--1", "0x10", "１２", "NaN", "1.-2",
        ] {
            assert_eq!(parse_yuan(s), Err(MoneyError::Malformed), "{s:?}");
        }
    }

    #[test]
    fn distinct_errors() {
        assert_eq!(parse_yuan("1.234"), Err(MoneyError::TooManyDecimals));
        assert_eq!(parse_yuan("1.000"), Err(MoneyError::TooManyDecimals));
        assert_eq!(parse_yuan("-1.5"), Err(MoneyError::Negative));
        assert_eq!(parse_yuan("92233720368547758.08"), Err(MoneyError::Overflow));
        assert_eq!(parse_yuan("99999999999999999999"), Err(MoneyError::Overflow));
    }

    #[test]
    fn json_amounts() {
        assert_eq!(amount_from_json(&json!("12.30")), Ok(1230));
        assert_eq!(amount_from_json(&json!(12.3)), Ok(1230));
        assert_eq!(amount_from_json(&json!(100)), Ok(10000));
        assert_eq!(amount_from_json(&json!(0.1)), Ok(10));
        assert_eq!(amount_from_json(&json!(9_999_999_999_999.99)), Ok(999_999_999_999_999));
        assert_eq!(amount_from_json(&json!(12.345)), Err(MoneyError::TooManyDecimals));
        assert_eq!(amount_from_json(&json!(-5)), Err(MoneyError::Negative));
        assert_eq!(amount_from_json(&json!(-5.5)), Err(MoneyError::Negative));
        assert_eq!(amount_from_json(&json!(1e16)), Err(MoneyError::Overflow));
        assert_eq!(amount_from_json(&json!(u64::MAX)), Err(MoneyError::Overflow));
        assert_eq!(amount_from_json(&json!(null)), Err(MoneyError::Malformed));
        assert_eq!(amount_from_json(&json!(true)), Err(MoneyError::Malformed));
        assert_eq!(amount_from_json(&json!(["1"])), Err(MoneyError::Malformed));
    }

    #[test]
    fn json_number_text_is_used() {
        let parse = |s: &str| -> Result<i64, MoneyError> {
            let v: Value = serde_json::from_str(s).map_err(|_| MoneyError::Malformed)?;
            amount_from_json(&v)
        };
        assert_eq!(parse("12.30"), Ok(1230));
        assert_eq!(parse("1e2"), Ok(10000));
        assert_eq!(parse("0.30000000000000004"), Err(MoneyError::TooManyDecimals));
        assert_eq!(parse("1e-7"), Err(MoneyError::Malformed));
    }

    #[test]
    fn formats_two_places() {
        assert_eq!(format_yuan(1230), "12.30");
        assert_eq!(format_yuan(1), "0.01");
        assert_eq!(format_yuan(0), "0.00");
        assert_eq!(format_yuan(-5), "-0.05");
        assert_eq!(format_yuan(i64::MIN), "-92233720368547758.08");
    }

    proptest! {
        #[test]
        fn round_trips(fen in 0i64..=1_000_000_000_000_000) {
            prop_assert_eq!(parse_yuan(&format_yuan(fen)), Ok(fen));
        }

        #[test]
        fn float_text_round_trips(fen in 0i64..1_000_000_000_000_000) {
            // An issuer writing the amount as a JSON number gets the same fen back.
            let v: Value = serde_json::from_str(&format_yuan(fen)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(amount_from_json(&v), Ok(fen));
        }
    }
}
