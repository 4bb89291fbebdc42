//! Proof of possession: what a paper or screen copy of a receipt carries. A payer
//! adds a receipt to the wallet with the QR payload printed on it, or with its
//! code, number and check code (校验码), optionally with amount and issue date.
//!
//! QR payloads come in two shapes in the field, both accepted:
//! - a verification URL whose query names the fields (`billBatchCode`/`code`/`pjdm`,
//!   `billNo`/`number`/`pjhm`, `random`/`checkCode`/`jym`, optional
//!   `totalAmt`/`amount`/`je` in yuan, `issueDate`/`date`/`kprq` as `yyyyMMdd` or `yyyy-MM-dd`);
//! - comma-separated `billBatchCode,billNo,random[,totalAmt[,issueDate]]`.

use chrono::{FixedOffset, NaiveDate};
use piaojia_store::StoredReceipt;
use subtle::ConstantTimeEq;

/// What the payer claims to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub bill_batch_code: String,
    pub bill_no: String,
    /// Lower-case, as receipts store it.
    pub random: String,
    pub total_fen: Option<i64>,
    pub issued_on: Option<NaiveDate>,
}

/// A claim field that is malformed (not: wrong). Safe to report: it depends only
/// on what the payer sent, never on what we hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub pointer: &'static str,
    pub message: &'static str,
}

fn malformed(pointer: &'static str, message: &'static str) -> Malformed {
    Malformed { pointer, message }
}

pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%Y%m%d"))
        .ok()
}

/// Builds a claim from its parts, checking their formats.
pub fn claim(
    bill_batch_code: &str,
    bill_no: &str,
    random: &str,
    total_amt: Option<&str>,
    issued_on: Option<&str>,
) -> Result<Claim, Malformed> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (code, no, random) = (bill_batch_code.trim(), bill_no.trim(), random.trim());
    if !digits(code, 8) {
        return Err(malformed("/billBatchCode", "8 digits"));
    }
    if !digits(no, 10) {
        return Err(malformed("/billNo", "10 digits"));
    }
    if random.len() != 6 || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(malformed("/random", "6 letters or digits"));
    }
    let total_fen = match total_amt.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(a) => Some(
            piaojia_core::money::parse_yuan(a).map_err(|_| malformed("/totalAmt", "yuan with at most 2 decimals"))?,
        ),
    };
    let issued_on = match issued_on.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(d) => Some(parse_date(d).ok_or_else(|| malformed("/issueDate", "yyyy-MM-dd or yyyyMMdd"))?),
    };
    Ok(Claim {
        bill_batch_code: code.to_owned(),
        bill_no: no.to_owned(),
        random: random.to_ascii_lowercase(),
        total_fen,
        issued_on,
    })
}

/// Reads a QR payload in either shape.
pub fn parse_qr(payload: &str) -> Result<Claim, Malformed> {
    let payload = payload.trim();
    if payload.len() > 2048 {
        return Err(malformed("/qr", "at most 2048 characters"));
    }
    if let Ok(url) = url::Url::parse(payload)
        && matches!(url.scheme(), "http" | "https")
    {
        let find = |names: &[&str]| {
            url.query_pairs()
                .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
                .map(|(_, v)| v.into_owned())
        };
        let (Some(code), Some(no), Some(random)) = (
            find(&["billBatchCode", "code", "pjdm"]),
            find(&["billNo", "number", "pjhm"]),
            find(&["random", "checkCode", "jym"]),
        ) else {
            return Err(malformed("/qr", "the QR link does not name a receipt"));
        };
        let total = find(&["totalAmt", "amount", "je"]);
        let date = find(&["issueDate", "date", "kprq"]);
        return claim(&code, &no, &random, total.as_deref(), date.as_deref()).map_err(|m| malformed("/qr", m.message));
    }
    let parts: Vec<&str> = payload.split(',').map(str::trim).collect();
    if !(3..=5).contains(&parts.len()) {
        return Err(malformed("/qr", "not a receipt QR code"));
    }
    claim(
        parts[0],
        parts[1],
        parts[2],
        parts.get(3).copied(),
        parts.get(4).copied(),
    )
    .map_err(|m| malformed("/qr", m.message))
}

/// Does `receipt` match the claim? Check codes compare in constant time; amount and
/// date only when claimed. Dates are the receipt's issue date in Beijing time.
pub fn proves(receipt: &StoredReceipt, claim: &Claim) -> bool {
    let random_ok = bool::from(receipt.random.as_bytes().ct_eq(claim.random.as_bytes()));
    let beijing = FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
    let amount_ok = claim.total_fen.is_none_or(|f| f == receipt.total_fen);
    let date_ok = claim
        .issued_on
        .is_none_or(|d| d == receipt.issued_at.as_datetime().with_timezone(&beijing).date_naive());
    random_ok
        && amount_ok
        && date_ok
        && receipt.bill_batch_code == claim.bill_batch_code
        && receipt.bill_no == claim.bill_no
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_payloads_in_both_shapes() {
        let want = Claim {
            bill_batch_code: "11060124".into(),
            bill_no: "0000000901".into(),
            random: "a1b2c3".into(),
            total_fen: Some(12850),
            issued_on: NaiveDate::from_ymd_opt(2026, 11, 23),
        };
        assert_eq!(
            parse_qr(
                "https://verify.example.gov.cn/pj?billBatchCode=11060124&billNo=0000000901&random=A1B2C3&totalAmt=128.50&issueDate=20261123"
            ),
            Ok(want.clone())
        );
        assert_eq!(parse_qr("11060124,0000000901,a1b2c3,128.5,2026-11-23"), Ok(want));
        let short = parse_qr("11060124, 0000000901, a1b2c3").expect("3 fields");
        assert_eq!(short.total_fen, None);
        assert!(parse_qr("https://x.example/?code=11060124").is_err());
        assert!(parse_qr("hello").is_err());
        assert!(parse_qr("1106012,0000000901,a1b2c3").is_err());
        assert!(parse_qr("11060124,0000000901,a1b2c3,12.345").is_err());
    }
}
