//! Receipt push parsing and validation against the wire contract (DOMAIN.md §2).

use chrono::{NaiveDate, TimeZone, Utc};
use piaojia_core::receipt::{
    BusType, FieldError, FileFormat, FileSource, MedicalCareType, NewReceipt, PayerType, ReceiptInputError, parse_push,
};
use serde_json::{Value, json};

/// A realistic outpatient push as a hospital system sends it: amounts as a mix of
/// strings and numbers, and fields we do not use.
const OUTPATIENT: &str = r#"{
  "billBatchCode": "11060124",
  "billNo": "0000123456",
  "random": "a1b2c3",
  "busNo": "MZ20261123-000187",
  "busType": "02",
  "issuedAt": "2026-11-23T09:30:00+08:00",
  "payer": "张三",
  "payerType": "1",
  "totalAmt": "128.50",
  "idCardNo": "11010519491231002x",
  "cardType": "01",
  "cardNo": "M000998877",
  "tel": "13800138000",
  "email": "zhangsan@example.com",
  "openID": "oAbC_123-xyz",
  "weChatOrderNo": "4200001234202611230000000001",
  "placeCode": "MZ-SF-03",
  "payee": "李四",
  "fundPay": 60.00,
  "accountPay": "20.5",
  "ownPay": 0,
  "selfCashPay": "48.00",
  "hospitalNo": "H0012345",
  "visitNo": "V20261123001",
  "chargeDetail": [
    {"sortNo": 1, "chargeCode": "A01", "chargeName": "西药费", "unit": "元", "std": 35.25, "number": 2, "amt": "70.50", "selfAmt": "10.00"},
    {"sortNo": 2, "chargeCode": "A05", "chargeName": "检查费", "amt": 45},
    {"sortNo": 3, "chargeCode": "A09", "chargeName": "诊察费", "amt": "13", "remark": "普通门诊"}
  ],
  "listDetail": [
    {"listDetailNo": "1", "chargeCode": "A01", "name": "阿莫西林胶囊(0.25g*24粒)", "unit": "盒", "std": "35.25", "number": "2", "amt": 70.5, "medicalCareType": "1", "medReimburseRate": 0.1},
    {"name": "血常规", "amt": "45.00", "medicalCareType": "2"}
  ],
  "payChannelDetail": [
    {"payChannelCode": "02", "payChannelValue": "80.50"},
    {"payChannelCode": "WX", "payChannelValue": 48}
  ],
  "file": {"format": "PDF", "base64": "JVBERi0xLjcK"},
  "pictureUrl": "https://files.example-hospital.cn/r/0000123456.png",
  "hospitalArea": "东院区",
  "extra": {"nested": [1, 2, {"deep": null}]}
}"#;

fn body() -> Value {
    serde_json::from_str(OUTPATIENT).expect("fixture is JSON")
}

fn push(v: &Value) -> Result<NewReceipt, ReceiptInputError> {
    parse_push(&serde_json::to_vec(v).expect("serializes"))
}

fn errors(v: &Value) -> Vec<FieldError> {
    match push(v) {
        Err(ReceiptInputError::Invalid(errors)) => errors,
        other => panic!("expected field errors, got {other:?}"),
    }
}

/// Asserts that a problem with `code` is reported at `pointer`.
#[track_caller]
fn assert_problem(errors: &[FieldError], pointer: &str, code: &str) {
    assert!(
        errors.iter().any(|e| e.pointer == pointer && e.code == code),
        "expected {code} at {pointer}, got {errors:#?}"
    );
}

/// Sets (or adds) the member at `pointer`; its parent must exist.
fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    match v.pointer_mut(parent).expect("parent exists in fixture") {
        Value::Array(items) => items[key.parse::<usize>().expect("index")] = new,
        Value::Object(members) => {
            members.insert(key.to_owned(), new);
        }
        _ => panic!("{parent} is not a container"),
    }
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().expect("object").remove(key);
    v
}

#[test]
fn valid_outpatient_receipt_parses_and_normalizes() {
    let r = parse_push(OUTPATIENT.as_bytes()).expect("valid receipt");
    assert_eq!(r.bill_batch_code, "11060124");
    assert_eq!(r.bill_no, "0000123456");
    assert_eq!(r.random, "a1b2c3");
    assert_eq!(r.bus_type, BusType::Outpatient);
    assert_eq!(r.bus_type.label_zh(), "门诊");
    assert_eq!(r.payer_type, PayerType::Person);
    assert_eq!(
        r.issued_at,
        Utc.with_ymd_and_hms(2026, 11, 23, 1, 30, 0).single().expect("valid")
    );
    assert_eq!(r.total_amt, 12850);
    assert_eq!(r.payer.name, "张三");
    assert_eq!(r.payer.id_card_no.as_deref(), Some("11010519491231002X"));
    assert_eq!(r.open_id.as_deref(), Some("oAbC_123-xyz"));
    assert_eq!(r.settlement.fund_pay, Some(6000));
    assert_eq!(r.settlement.account_pay, Some(2050));
    assert_eq!(r.settlement.own_pay, Some(0));
    assert_eq!(r.settlement.self_pay_amt, None);
    assert_eq!(r.charge_detail.len(), 3);
    assert_eq!(r.charge_detail[0].charge_name, "西药费");
    assert_eq!(r.charge_detail[0].std, Some(3525));
    assert_eq!(r.charge_detail[0].number.as_deref(), Some("2"));
    assert_eq!(r.charge_detail[1].amt, 4500);
    assert_eq!(r.list_detail[0].medical_care_type, Some(MedicalCareType::ClassA));
    assert_eq!(r.list_detail[0].med_reimburse_rate.as_deref(), Some("0.1"));
    assert_eq!(r.list_detail[1].amt, 4500);
    assert_eq!(r.pay_channel_detail[1].pay_channel_value, 4800);
    let file = r.file.as_ref().expect("file");
    assert_eq!(file.format, FileFormat::Pdf);
    assert_eq!(file.format.content_type(), "application/pdf");
    assert_eq!(file.source, FileSource::Inline(b"%PDF-1.7\n".to_vec()));
    assert_eq!(
        r.picture_url.as_ref().map(|u| u.as_str()),
        Some("https://files.example-hospital.cn/r/0000123456.png")
    );
}

#[test]
fn minimal_receipt_parses() {
    let v = json!({
        "billBatchCode": "11060124", "billNo": "0000000001", "random": "ZZ9ZZ9",
        "busNo": "1", "busType": "06", "issuedAt": "2026-11-23T01:30:00Z",
        "payer": "  某某公司  ", "payerType": "2", "totalAmt": 5,
        "chargeDetail": [{"chargeCode": "G1", "chargeName": "挂号费", "amt": "5"}],
        "tel": "", "payChannelDetail": null
    });
    let r = push(&v).expect("valid");
    assert_eq!(r.random, "zz9zz9");
    assert_eq!(r.payer.name, "某某公司");
    assert_eq!(r.payer.tel, None);
    assert!(r.pay_channel_detail.is_empty() && r.list_detail.is_empty());
    assert_eq!(r.file, None);
}

#[test]
fn missing_required_fields_are_listed_together() {
    let mut v = body();
    for key in [
        "billBatchCode",
        "billNo",
        "random",
        "busNo",
        "busType",
        "issuedAt",
        "payer",
        "payerType",
        "totalAmt",
        "chargeDetail",
    ] {
        v = without(v, key);
    }
    let errs = errors(&v);
    for ptr in [
        "/billBatchCode",
        "/billNo",
        "/random",
        "/busNo",
        "/busType",
        "/issuedAt",
        "/payer",
        "/payerType",
        "/totalAmt",
        "/chargeDetail",
    ] {
        assert_problem(&errs, ptr, "required");
    }
}

#[test]
fn empty_and_blank_required_values_count_as_missing() {
    let v = with(body(), "/payer", json!("   "));
    let v = with(v, "/chargeDetail", json!([]));
    let v = with(v, "/chargeDetail", json!([]));
    let errs = errors(&v);
    assert_problem(&errs, "/payer", "required");
    assert_problem(&errs, "/chargeDetail", "required");
}

#[test]
fn bad_codes_and_formats() {
    let v = with(body(), "/billBatchCode", json!("1106012"));
    let v = with(v, "/billNo", json!("00001234ab"));
    let v = with(v, "/random", json!("a1b2c"));
    let v = with(v, "/busNo", json!("MZ 2026"));
    let v = with(v, "/busType", json!("07"));
    let v = with(v, "/payerType", json!("3"));
    let v = with(v, "/tel", json!("138-abc"));
    let v = with(v, "/email", json!("zhangsan.example.com"));
    let v = with(v, "/openID", json!("o/../x"));
    let v = with(v, "/inHospitalDate", json!("2026-1-5"));
    let v = with(v, "/pictureUrl", json!("http://files.example-hospital.cn/x.png"));
    let v = with(v, "/listDetail/1/medicalCareType", json!("4"));
    let v = with(v, "/chargeDetail/0/number", json!("2 盒"));
    let errs = errors(&v);
    assert_problem(&errs, "/billBatchCode", "invalid_format");
    assert_problem(&errs, "/billNo", "invalid_format");
    assert_problem(&errs, "/random", "invalid_format");
    assert_problem(&errs, "/busNo", "invalid_format");
    assert_problem(&errs, "/busType", "invalid_value");
    assert_problem(&errs, "/payerType", "invalid_value");
    assert_problem(&errs, "/tel", "invalid_format");
    assert_problem(&errs, "/email", "invalid_format");
    assert_problem(&errs, "/openID", "invalid_format");
    assert_problem(&errs, "/inHospitalDate", "invalid_format");
    assert_problem(&errs, "/pictureUrl", "invalid_value");
    assert_problem(&errs, "/listDetail/1/medicalCareType", "invalid_value");
    assert_problem(&errs, "/chargeDetail/0/number", "invalid_format");
}

#[test]
fn length_limits_count_characters() {
    // 100 Chinese characters are 300 bytes but within the 100-character limit.
    let ok = with(body(), "/payer", json!("张".repeat(100)));
    assert!(push(&ok).is_ok());
    let long = with(body(), "/payer", json!("张".repeat(101)));
    assert_problem(&errors(&long), "/payer", "too_long");
    let long = with(body(), "/busNo", json!("A".repeat(65)));
    assert_problem(&errors(&long), "/busNo", "too_long");
}

#[test]
fn naive_issued_at_is_rejected() {
    for t in ["2026-11-23T09:30:00", "2026-11-23", "2026/11/23 09:30:00+08:00"] {
        let v = with(body(), "/issuedAt", json!(t));
        assert_problem(&errors(&v), "/issuedAt", "invalid_format");
    }
}

#[test]
fn amount_errors() {
    let v = with(body(), "/totalAmt", json!("128.505"));
    let errs = errors(&v);
    assert_problem(&errs, "/totalAmt", "too_many_decimals");
    // An unparsable total is not also reported as a sum mismatch.
    assert!(!errs.iter().any(|e| e.code == "sum_mismatch"), "{errs:#?}");

    let v = with(body(), "/chargeDetail/1/amt", json!(-45));
    assert_problem(&errors(&v), "/chargeDetail/1/amt", "negative_amount");

    let v = with(body(), "/fundPay", json!("-1.00"));
    assert_problem(&errors(&v), "/fundPay", "negative_amount");

    let v = with(body(), "/chargeDetail/2/amt", json!("1e3"));
    assert_problem(&errors(&v), "/chargeDetail/2/amt", "invalid_format");

    let v = with(body(), "/totalAmt", json!(0));
    let v = with(
        v,
        "/chargeDetail",
        json!([{"chargeCode": "A", "chargeName": "x", "amt": 0}]),
    );
    let v = without(v, "payChannelDetail");
    assert_problem(&errors(&v), "/totalAmt", "invalid_value");
}

#[test]
fn too_many_decimals_as_json_number() {
    let raw = OUTPATIENT.replace(r#""totalAmt": "128.50""#, r#""totalAmt": 128.505"#);
    match parse_push(raw.as_bytes()) {
        Err(ReceiptInputError::Invalid(errs)) => {
            assert_problem(&errs, "/totalAmt", "too_many_decimals");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn charge_detail_must_sum_to_total() {
    let v = with(body(), "/chargeDetail/2/amt", json!("13.01"));
    let errs = errors(&v);
    assert_problem(&errs, "/chargeDetail", "sum_mismatch");
    assert!(!errs.iter().any(|e| e.pointer == "/payChannelDetail"));
}

#[test]
fn pay_channels_must_sum_to_total() {
    let v = with(body(), "/payChannelDetail/1/payChannelValue", json!("47.99"));
    let errs = errors(&v);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_problem(&errs, "/payChannelDetail", "sum_mismatch");
}

#[test]
fn item_limits() {
    let item = json!({"chargeCode": "A", "chargeName": "材料费", "amt": "0.01"});
    let v = with(body(), "/chargeDetail", Value::Array(vec![item; 501]));
    let v = with(v, "/totalAmt", json!("5.01"));
    let v = without(v, "payChannelDetail");
    let errs = errors(&v);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_problem(&errs, "/chargeDetail", "too_many_items");

    let pay = json!({"payChannelCode": "X", "payChannelValue": 0});
    let mut pays = vec![pay; 20];
    pays.push(json!({"payChannelCode": "X", "payChannelValue": "128.50"}));
    let v = with(body(), "/payChannelDetail", Value::Array(pays));
    assert_problem(&errors(&v), "/payChannelDetail", "too_many_items");
}

#[test]
fn item_errors_point_into_the_array() {
    let v = with(body(), "/chargeDetail/1", json!({"amt": 45}));
    let v = with(v, "/listDetail/0/name", json!(""));
    let errs = errors(&v);
    assert_problem(&errs, "/chargeDetail/1/chargeCode", "required");
    assert_problem(&errs, "/chargeDetail/1/chargeName", "required");
    assert_problem(&errs, "/listDetail/0/name", "required");
    // The amounts were fine, so the sum still checks out.
    assert!(!errs.iter().any(|e| e.code == "sum_mismatch"), "{errs:#?}");
}

#[test]
fn file_errors() {
    let v = with(body(), "/file/base64", json!("JVBERi0x*LjcK"));
    assert_problem(&errors(&v), "/file/base64", "invalid_format");

    let v = with(
        body(),
        "/file",
        json!({"format": "pdf", "base64": "JVBERi0xLjcK", "url": "https://x.example/a.pdf"}),
    );
    assert_problem(&errors(&v), "/file", "invalid_value");

    let v = with(body(), "/file", json!({"format": "pdf"}));
    assert_problem(&errors(&v), "/file", "invalid_value");

    let v = with(body(), "/file", json!({"format": "doc", "url": "ftp://x.example/a"}));
    let errs = errors(&v);
    assert_problem(&errs, "/file/format", "invalid_value");
    assert_problem(&errs, "/file/url", "invalid_value");

    let v = with(
        body(),
        "/file",
        json!({"format": "ofd", "url": "http://x.example/a.ofd"}),
    );
    let r = push(&v).expect("http file URL is accepted here");
    let file = r.file.expect("file");
    assert_eq!(file.format, FileFormat::Ofd);
    assert!(matches!(file.source, FileSource::Url(ref u) if u.as_str() == "http://x.example/a.ofd"));
}

#[test]
fn base64_with_line_breaks_is_accepted() {
    let v = with(body(), "/file/base64", json!("JVBE\r\nRi0x\nLjcK"));
    let r = push(&v).expect("valid");
    assert_eq!(
        r.file.map(|f| f.source),
        Some(FileSource::Inline(b"%PDF-1.7\n".to_vec()))
    );
}

#[test]
fn wrong_json_type_for_code_is_a_json_error() {
    let v = with(body(), "/busType", json!(2));
    match push(&v) {
        Err(ReceiptInputError::Json { pointer, message }) => {
            assert_eq!(pointer, "/busType");
            assert!(message.contains("expected a string"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let v = with(body(), "/chargeDetail/1/chargeName", json!(["检查费"]));
    match push(&v) {
        Err(ReceiptInputError::Json { pointer, .. }) => {
            assert_eq!(pointer, "/chargeDetail/1/chargeName");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn json_type_errors_do_not_echo_personal_data() {
    let v = with(body(), "/idCardNo", json!(110105194912310021_u64));
    match push(&v) {
        Err(ReceiptInputError::Json { pointer, message }) => {
            assert_eq!(pointer, "/idCardNo");
            assert!(!message.contains("110105"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_json_syntax() {
    for bad in [&b""[..], b"{", b"{\"billNo\": }", b"not json", b"{} trailing", b"[1]"] {
        match parse_push(bad) {
            Err(ReceiptInputError::Json { .. }) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
        }
    }
}

#[test]
fn id_card_check_digit() {
    let v = with(body(), "/idCardNo", json!("110105194912310021"));
    let errs = errors(&v);
    assert_problem(&errs, "/idCardNo", "invalid_value");
    for e in &errs {
        assert!(!e.message.contains("1101051949"), "{e:?}");
    }

    let v = with(body(), "/idCardNo", json!("11010519491231002Y"));
    assert_problem(&errors(&v), "/idCardNo", "invalid_format");

    // Other lengths (passports, permits) are not checked.
    let v = with(body(), "/idCardNo", json!("E12345678"));
    assert!(push(&v).is_ok());

    // An organisation's 18-character number is a credit code, not a resident ID.
    let v = with(body(), "/payerType", json!("2"));
    let v = with(v, "/idCardNo", json!("91350100M000100Y43"));
    assert!(push(&v).is_ok());
}

#[test]
fn messages_never_echo_personal_values() {
    let v = with(body(), "/payer", json!(format!("王五{}", "\u{7}")));
    let v = with(v, "/tel", json!("1380013800013800138000"));
    let v = with(v, "/email", json!("wang@wu@example.com"));
    let v = with(v, "/idCardNo", json!("110105194912310021"));
    let errs = errors(&v);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    for e in &errs {
        for secret in ["王五", "13800138", "wang", "110105"] {
            assert!(!e.message.contains(secret), "{e:?}");
        }
    }
}

#[test]
fn hospital_dates() {
    let v = with(body(), "/inHospitalDate", json!("2026-11-20"));
    let ok = with(v.clone(), "/outHospitalDate", json!("2026-11-23"));
    let r = push(&ok).expect("valid");
    assert_eq!(r.in_hospital_date, NaiveDate::from_ymd_opt(2026, 11, 20));
    let bad = with(v, "/outHospitalDate", json!("2026-11-19"));
    assert_problem(&errors(&bad), "/outHospitalDate", "invalid_value");
    let bad = with(body(), "/inHospitalDate", json!("2026-02-30"));
    assert_problem(&errors(&bad), "/inHospitalDate", "invalid_format");
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v = body();
    v["vendorExtension"] = json!({"a": [1, 2, 3], "b": "c"});
    v["chargeDetail"][0]["insuranceCode"] = json!(123);
    v["file"]["fileName"] = json!("x.pdf");
    let r = push(&v).expect("valid");
    assert_eq!(
        r.content_hash(),
        parse_push(OUTPATIENT.as_bytes()).expect("valid").content_hash()
    );
}

#[test]
fn error_report_is_capped() {
    let bad_item = json!({"chargeCode": "A", "chargeName": "x", "amt": "x"});
    let v = with(body(), "/chargeDetail", Value::Array(vec![bad_item; 300]));
    let errs = errors(&v);
    assert_eq!(errs.len(), 101);
    assert_eq!(errs.last().map(|e| e.code), Some("too_many_errors"));
}

#[test]
fn content_hash_ignores_spelling() {
    let base = parse_push(OUTPATIENT.as_bytes()).expect("valid").content_hash();
    assert_eq!(base.len(), 64);
    assert!(base.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    // Whitespace and key order.
    let compact = serde_json::to_vec(&body()).expect("serializes");
    assert_eq!(parse_push(&compact).expect("valid").content_hash(), base);
    let mut reordered: Vec<(String, Value)> = body().as_object().expect("object").clone().into_iter().collect();
    reordered.reverse();
    let text = format!(
        "{{{}}}",
        reordered
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
            .collect::<Vec<_>>()
            .join(",\n  ")
    );
    assert_eq!(parse_push(text.as_bytes()).expect("valid").content_hash(), base);

    // Amount spelling: "128.50" vs 128.5, 45 vs "45.00".
    let respelled = OUTPATIENT
        .replace(r#""totalAmt": "128.50""#, r#""totalAmt": 128.5"#)
        .replace(r#""amt": 45}"#, r#""amt": "45.00"}"#)
        .replace(r#""fundPay": 60.00"#, r#""fundPay": "60""#);
    assert_ne!(respelled, OUTPATIENT);
    assert_eq!(parse_push(respelled.as_bytes()).expect("valid").content_hash(), base);

    // The same instant with another offset.
    let utc = OUTPATIENT.replace("2026-11-23T09:30:00+08:00", "2026-11-23T01:30:00Z");
    assert_eq!(parse_push(utc.as_bytes()).expect("valid").content_hash(), base);
}

#[test]
fn content_hash_changes_with_content() {
    let base = parse_push(OUTPATIENT.as_bytes()).expect("valid").content_hash();
    let changes = [
        ("/issuedAt", json!("2026-11-23T09:30:01+08:00")),
        ("/payer", json!("张三丰")),
        ("/tel", json!("13800138001")),
        ("/random", json!("a1b2c4")),
        ("/chargeDetail/0/chargeName", json!("中药费")),
        ("/listDetail/1/medicalCareType", json!("3")),
        ("/ownPay", json!("0.01")),
        ("/file/base64", json!("JVBERi0xLjYK")),
        ("/pictureUrl", json!("https://files.example-hospital.cn/r/other.png")),
    ];
    for (ptr, value) in changes {
        let v = with(body(), ptr, value);
        let hash = push(&v).expect("still valid").content_hash();
        assert_ne!(hash, base, "changing {ptr} must change the hash");
    }
}

#[test]
fn details_json_excludes_personal_data() {
    let r = parse_push(OUTPATIENT.as_bytes()).expect("valid");
    let details = r.details_json();
    let obj = details.as_object().expect("object");
    for key in [
        "chargeDetail",
        "listDetail",
        "payChannelDetail",
        "settlement",
        "hospitalNo",
        "visitNo",
        "placeCode",
        "payee",
        "weChatOrderNo",
        "pictureUrl",
    ] {
        assert!(obj.contains_key(key), "missing {key}");
    }
    for key in [
        "payer", "idCardNo", "tel", "email", "file", "random", "openId", "billNo",
    ] {
        assert!(!obj.contains_key(key), "unexpected {key}");
    }
    let text = details.to_string();
    for secret in ["张三", "13800138000", "zhangsan", "11010519491231002X", "a1b2c3"] {
        assert!(!text.contains(secret), "details leak {secret}");
    }
    assert_eq!(details["chargeDetail"][0]["amt"], json!(7050));
    assert_eq!(details["settlement"]["fundPay"], json!(6000));
    assert_eq!(details["listDetail"][0]["medicalCareType"], json!("1"));
}

#[test]
fn serialization_hides_file_bytes_and_debug_redacts_payer() {
    let r = parse_push(OUTPATIENT.as_bytes()).expect("valid");
    let v = serde_json::to_value(&r).expect("serializes");
    assert_eq!(v["file"]["format"], json!("pdf"));
    assert_eq!(v["file"]["sha256"].as_str().map(str::len), Some(64));
    assert!(v["file"].get("base64").is_none());
    assert_eq!(v["issuedAt"], json!("2026-11-23T01:30:00Z"));
    assert_eq!(v["busType"], json!("02"));

    let debug = format!("{r:?}");
    for secret in ["张三", "13800138000", "zhangsan@", "11010519491231002X"] {
        assert!(!debug.contains(secret), "Debug leaks {secret}");
    }
}
