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
