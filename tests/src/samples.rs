//! Realistic receipt bodies as hospital systems send them.

use serde_json::{Value, json};

/// 8-digit batch code: region 11 (Beijing), category 06 (medical), kind 01, year 24.
pub const BATCH: &str = "11060124";

/// An outpatient receipt (门诊) with mixed string/number amounts, personal data,
/// settlement fields and an itemised list. `n` makes the bill number unique.
pub fn outpatient(n: u64) -> Value {
    json!({
        "billBatchCode": BATCH,
        "billNo": format!("{n:010}"),
        "random": format!("{:06x}", (n * 7919) % 0xFFFFFF),
        "busNo": format!("MZ2026112300{n:06}"),
        "busType": "02",
        "issuedAt": "2026-11-23T09:30:00+08:00",
        "payer": "张三丰",
        "payerType": "1",
        "idCardNo": "11010519491231002X",
        "cardType": "01",
        "cardNo": "M0012345",
        "tel": "13800138000",
        "email": "zhangsan@example.com",
        "totalAmt": "128.50",
        "placeCode": "MZ01",
        "payee": "李收费",
        "checker": "王复核",
        "fundPay": 60,
        "accountPay": "20.00",
        "ownPay": "48.50",
        "hospitalNo": "H2026",
        "visitNo": format!("V{n}"),
        "chargeDetail": [
            { "sortNo": 1, "chargeCode": "01", "chargeName": "西药费", "number": "1", "std": "88.50", "amt": "88.50" },
            { "sortNo": 2, "chargeCode": "05", "chargeName": "检查费", "number": "1", "std": 40, "amt": 40 }
        ],
        "listDetail": [
            { "listDetailNo": "1", "chargeCode": "01", "code": "X001", "name": "阿莫西林胶囊", "unit": "盒", "std": "29.50", "number": "3", "amt": "88.50", "medicalCareType": "1" },
            { "listDetailNo": "2", "chargeCode": "05", "code": "C102", "name": "血常规", "unit": "次", "std": "40.00", "number": "1", "amt": "40.00", "medicalCareType": "2" }
        ],
        "payChannelDetail": [
            { "payChannelCode": "02", "payChannelValue": "80.00" },
            { "payChannelCode": "06", "payChannelValue": "48.50" }
        ],
        "someVendorField": "ignored"
    })
}

/// A valid mainland resident ID number (check digit included), distinct for each
/// `n` below 36.5 million: birth dates over a century, then a sequence number.
pub fn resident_id(n: u64) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let born = chrono::NaiveDate::from_ymd_opt(1930, 1, 1).expect("date") + chrono::Days::new(n % 36_500);
    let body = format!("110105{}{:03}", born.format("%Y%m%d"), (n / 36_500) % 1000);
    let sum: u32 = body
        .bytes()
        .zip(WEIGHTS)
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    format!("{body}{}", CHECK[(sum % 11) as usize] as char)
}

/// [`outpatient`] for a payer of its own (name, ID number and phone depend on `n`),
/// as a hospital's stream of many patients looks.
pub fn outpatient_of_own_payer(n: u64) -> Value {
    const SURNAMES: [&str; 8] = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄"];
    const GIVEN: [&str; 8] = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "勇"];
    let mut r = outpatient(n);
    r["payer"] = format!(
        "{}{}{}",
        SURNAMES[(n % 8) as usize],
        GIVEN[(n / 8 % 8) as usize],
        GIVEN[(n / 64 % 8) as usize]
    )
    .into();
    r["idCardNo"] = resident_id(n).into();
    r["tel"] = format!("139{:08}", n % 100_000_000).into();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_resident_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..100_000).map(resident_id).collect();
        assert_eq!(ids.len(), 100_000);
        for n in [0, 1, 36_499, 36_500, 12_345_678] {
            let id = resident_id(n);
            piaojia_core::identity::validate_id_number(piaojia_core::identity::IdType::Resident, &id)
                .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        }
        assert_eq!(outpatient_of_own_payer(9)["idCardNo"], resident_id(9));
    }
}
