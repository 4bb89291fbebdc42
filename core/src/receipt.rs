//! Receipts as issuers push them (DOMAIN.md §2): the lenient wire shape, validation
//! that reports every problem at once, and the normalized [`NewReceipt`].
//!
//! Validation messages never contain the submitted values, so they can be logged and
//! returned as they are even when the field holds personal data.

use std::fmt;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use chrono::{DateTime, NaiveDate, Utc};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use url::Url;

use crate::money::amount_from_json;

/// At most this many `chargeDetail` items.
pub const MAX_CHARGE_ITEMS: usize = 500;
/// At most this many `listDetail` items.
pub const MAX_LIST_ITEMS: usize = 5000;
/// At most this many `payChannelDetail` items.
pub const MAX_PAY_CHANNELS: usize = 20;
/// A report lists at most this many problems (then one `too_many_errors`), so a
/// hostile body cannot make the error response larger than the request.
pub const MAX_FIELD_ERRORS: usize = 100;

/// Stable codes of [`FieldError::code`].
pub mod code {
    pub const REQUIRED: &str = "required";
    pub const INVALID_FORMAT: &str = "invalid_format";
    pub const INVALID_VALUE: &str = "invalid_value";
    pub const TOO_LONG: &str = "too_long";
    pub const TOO_MANY_DECIMALS: &str = "too_many_decimals";
    pub const NEGATIVE_AMOUNT: &str = "negative_amount";
    pub const SUM_MISMATCH: &str = "sum_mismatch";
    pub const TOO_MANY_ITEMS: &str = "too_many_items";
    pub const TOO_MANY_ERRORS: &str = "too_many_errors";
}

/// One problem with one field of a pushed receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// RFC 6901 JSON pointer into the request body, e.g. `/chargeDetail/2/amt`.
    pub pointer: String,
    /// Stable snake_case code, one of [`code`].
    pub code: &'static str,
    /// English explanation; never echoes the submitted value.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptInputError {
    /// The body is not JSON, or a field has the wrong JSON type. `pointer` is where
    /// (may be `""` for syntax errors).
    #[error("malformed receipt JSON at {pointer:?}: {message}")]
    Json { pointer: String, message: String },
    /// The JSON is well-formed but fields are invalid: every problem found, not just the first.
    #[error("invalid receipt: {} problem(s)", .0.len())]
    Invalid(Vec<FieldError>),
}

// ---------------------------------------------------------------------------
// Code lists
// ---------------------------------------------------------------------------

/// 业务类型 (`busType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusType {
    /// 01 住院
    Inpatient,
    /// 02 门诊
    Outpatient,
    /// 03 急诊
    Emergency,
    /// 04 门特 (outpatient special diseases)
    OutpatientSpecial,
    /// 05 体检
    CheckUp,
    /// 06 挂号
    Registration,
}

impl BusType {
    pub const ALL: [BusType; 6] = [
        BusType::Inpatient,
        BusType::Outpatient,
        BusType::Emergency,
        BusType::OutpatientSpecial,
        BusType::CheckUp,
        BusType::Registration,
    ];

    pub fn as_code(self) -> &'static str {
        match self {
            BusType::Inpatient => "01",
            BusType::Outpatient => "02",
            BusType::Emergency => "03",
            BusType::OutpatientSpecial => "04",
            BusType::CheckUp => "05",
            BusType::Registration => "06",
        }
    }

    pub fn label_zh(self) -> &'static str {
        match self {
            BusType::Inpatient => "住院",
            BusType::Outpatient => "门诊",
            BusType::Emergency => "急诊",
            BusType::OutpatientSpecial => "门特",
            BusType::CheckUp => "体检",
            BusType::Registration => "挂号",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_code() == code)
    }
}

/// 交款人类型 (`payerType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayerType {
    /// 1 个人
    Person,
    /// 2 单位
    Organisation,
}

impl PayerType {
    pub fn as_code(self) -> &'static str {
        match self {
            PayerType::Person => "1",
            PayerType::Organisation => "2",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "1" => Some(PayerType::Person),
            "2" => Some(PayerType::Organisation),
            _ => None,
        }
    }
}

/// 医保类别 of an itemised line (`medicalCareType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MedicalCareType {
    /// 1 甲类
    ClassA,
    /// 2 乙类
    ClassB,
    /// 3 丙类
    ClassC,
}

impl MedicalCareType {
    pub fn as_code(self) -> &'static str {
        match self {
            MedicalCareType::ClassA => "1",
            MedicalCareType::ClassB => "2",
            MedicalCareType::ClassC => "3",
        }
    }

    pub fn label_zh(self) -> &'static str {
        match self {
            MedicalCareType::ClassA => "甲",
            MedicalCareType::ClassB => "乙",
            MedicalCareType::ClassC => "丙",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "1" => Some(MedicalCareType::ClassA),
            "2" => Some(MedicalCareType::ClassB),
            "3" => Some(MedicalCareType::ClassC),
            _ => None,
        }
    }
}

/// Format of the receipt file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Pdf,
    /// OFD (GB/T 33190), the national fixed-layout format.
    Ofd,
}

impl FileFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Pdf => "pdf",
            FileFormat::Ofd => "ofd",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            FileFormat::Pdf => "application/pdf",
            FileFormat::Ofd => "application/ofd",
        }
    }

    /// File-name extension, without the dot.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    /// `"pdf"` / `"ofd"`, any case.
    pub fn parse(s: &str) -> Option<Self> {
        [FileFormat::Pdf, FileFormat::Ofd]
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
    }
}

// Codes serialize as their wire code, so the canonical form (and the content hash)
// does not depend on Rust variant names.
macro_rules! serialize_as {
    ($ty:ty, $method:ident) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.$method())
            }
        }
    };
}
serialize_as!(BusType, as_code);
serialize_as!(PayerType, as_code);
serialize_as!(MedicalCareType, as_code);
serialize_as!(FileFormat, as_str);

// ---------------------------------------------------------------------------
// Normalized receipt
// ---------------------------------------------------------------------------

/// A validated, normalized receipt push. Amounts are integer fen.
///
/// `Serialize` output contains the payer's personal data: do not log it. `Debug`
/// redacts the payer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewReceipt {
    /// 票据代码, exactly 8 ASCII digits.
    pub bill_batch_code: String,
    /// 票据号码, exactly 10 ASCII digits.
    pub bill_no: String,
    /// 校验码, 6 characters `[0-9a-z]` (lower-cased).
    pub random: String,
    /// 业务流水号, 1..=64 `[A-Za-z0-9_-]`.
    pub bus_no: String,
    pub bus_type: BusType,
    pub issued_at: DateTime<Utc>,
    pub payer_type: PayerType,
    /// Fen, > 0.
    pub total_amt: i64,
    pub payer: PayerIdentity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub we_chat_order_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checker: Option<String>,
    pub settlement: Settlement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hospital_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visit_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_hospital_date: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_hospital_date: Option<NaiveDate>,
    pub charge_detail: Vec<ChargeItem>,
    pub list_detail: Vec<ListItem>,
    pub pay_channel_detail: Vec<PayChannel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<ReceiptFile>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_opt_url")]
    pub picture_url: Option<Url>,
}

// `url` is built without its `serde` feature; a URL serializes as its string.
fn serialize_opt_url<S: Serializer>(url: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
    url.as_ref().map(Url::as_str).serialize(s)
}

/// The masked payer name (`张*丰`) of a receipt's sealed payer data, or `*` when it
/// cannot be opened (logged: that is a key problem, not the client's).
pub fn masked_payer_name(keyring: &crate::pii::Keyring, payer_sealed: &str) -> String {
    keyring
        .open_json::<PayerIdentity>(payer_sealed, crate::pii::purpose::PAYER)
        .map(|p| crate::mask::name(&p.name))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "a receipt's payer data cannot be opened");
            "*".to_owned()
        })
}

/// The payer's personal data (PIPL): encrypt at rest, never log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayerIdentity {
    /// 1..=100 characters, trimmed.
    pub name: String,
    /// 1..=32 `[0-9A-Z]` (letters upper-cased, so a trailing `x` becomes `X`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_card_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl fmt::Debug for PayerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redacted(v: &Option<String>) -> Option<&'static str> {
            v.as_ref().map(|_| "<redacted>")
        }
        f.debug_struct("PayerIdentity")
            .field("name", &"<redacted>")
            .field("id_card_no", &redacted(&self.id_card_no))
            .field("card_type", &self.card_type)
            .field("card_no", &redacted(&self.card_no))
            .field("tel", &redacted(&self.tel))
            .field("email", &redacted(&self.email))
            .finish()
    }
}

/// Medical-insurance settlement, each in fen and >= 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settlement {
    /// 统筹基金
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fund_pay: Option<i64>,
    /// 个人账户
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_pay: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otherfund_pay: Option<i64>,
    /// 个人自费
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_pay: Option<i64>,
    /// 个人自付
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_pay_amt: Option<i64>,
    /// 个人现金
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_cash_pay: Option<i64>,
}

/// A `chargeDetail` line (收费项目).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_no: Option<i64>,
    pub charge_code: String,
    pub charge_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Unit price in fen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<i64>,
    /// Quantity as sent (decimal text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    pub amt: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_amt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
}

/// A `listDetail` line (明细清单).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_detail_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    pub amt: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_amt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receivable_amt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medical_care_type: Option<MedicalCareType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub med_care_item_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub med_reimburse_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
}

/// A `payChannelDetail` line (交款渠道).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PayChannel {
    pub pay_channel_code: String,
    pub pay_channel_value: i64,
}

/// Where the receipt file comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Decoded from standard base64.
    Inline(Vec<u8>),
    /// To be fetched; http or https. The host allow-list is checked elsewhere.
    Url(Url),
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileSource::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
            FileSource::Url(url) => f.debug_tuple("Url").field(&url.as_str()).finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptFile {
    pub format: FileFormat,
    pub source: FileSource,
}

/// `{"format", "sha256"}` for inline bytes (the bytes themselves never go into the
/// canonical form or details), `{"format", "url"}` otherwise.
impl Serialize for ReceiptFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ReceiptFile", 2)?;
        st.serialize_field("format", &self.format)?;
        match &self.source {
            FileSource::Inline(bytes) => st.serialize_field("sha256", &sha256_hex(bytes))?,
            FileSource::Url(url) => st.serialize_field("url", url.as_str())?,
        }
        st.end()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

impl NewReceipt {
    /// Lower-case hex SHA-256 of the canonical JSON form, for recognizing a repeated
    /// push: independent of whitespace, key order, unknown fields, amount spelling and
    /// the `issuedAt` offset; any change of content changes it.
    ///
    /// The hash covers the payer's personal data, unkeyed.
    pub fn content_hash(&self) -> String {
        // Infallible: every field serializes to JSON with string keys.
        let canonical = serde_json::to_vec(self).expect("NewReceipt serializes to JSON");
        sha256_hex(&canonical)
    }

    /// Non-personal details for plain-text storage: everything except the payer,
    /// the file, `openId` and the fields that identify the receipt or are stored on
    /// their own (`billBatchCode`, `billNo`, `random`, `busNo`, `busType`,
    /// `issuedAt`, `payerType`, `totalAmt`). Amounts are integer fen; absent
    /// optional values are left out.
    /// Item names (charge items and the itemised list), for payers' free-text search.
    pub fn search_text(&self) -> String {
        let mut names: Vec<&str> = self.charge_detail.iter().map(|c| c.charge_name.as_str()).collect();
        names.extend(self.list_detail.iter().map(|l| l.name.as_str()));
        names.sort_unstable();
        names.dedup();
        names.join(" ")
    }

    pub fn details_json(&self) -> Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Details<'a> {
            charge_detail: &'a [ChargeItem],
            list_detail: &'a [ListItem],
            pay_channel_detail: &'a [PayChannel],
            settlement: &'a Settlement,
            #[serde(skip_serializing_if = "Option::is_none")]
            hospital_no: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            visit_no: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            in_hospital_date: Option<NaiveDate>,
            #[serde(skip_serializing_if = "Option::is_none")]
            out_hospital_date: Option<NaiveDate>,
            #[serde(skip_serializing_if = "Option::is_none")]
            place_code: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            payee: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            checker: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            we_chat_order_no: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            picture_url: Option<&'a str>,
        }
        let details = Details {
            charge_detail: &self.charge_detail,
            list_detail: &self.list_detail,
            pay_channel_detail: &self.pay_channel_detail,
            settlement: &self.settlement,
            hospital_no: self.hospital_no.as_deref(),
            visit_no: self.visit_no.as_deref(),
            in_hospital_date: self.in_hospital_date,
            out_hospital_date: self.out_hospital_date,
            place_code: self.place_code.as_deref(),
            payee: self.payee.as_deref(),
            checker: self.checker.as_deref(),
            we_chat_order_no: self.we_chat_order_no.as_deref(),
            picture_url: self.picture_url.as_ref().map(Url::as_str),
        };
        // Infallible for the same reason as in `content_hash`.
        serde_json::to_value(details).expect("receipt details serialize to JSON")
    }
}

// ---------------------------------------------------------------------------
// Wire shape: everything optional so that missing fields are reported together
// with the other problems; unknown fields are ignored (serde's default).
// ---------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
/// The body of `POST /v1/receipts`, as issuers' systems send it. Amounts are yuan
/// with at most 2 decimals, as JSON strings or numbers; codes are strings; times are
/// RFC 3339 with offset. Unknown fields are ignored.
#[schema(as = ReceiptPush)]
pub struct WireReceipt {
    /// 票据代码: 8 digits
    #[schema(required = true, example = "11060124")]
    pub bill_batch_code: Option<String>,
    /// 票据号码: 10 digits
    #[schema(required = true, example = "0000000901")]
    pub bill_no: Option<String>,
    /// 校验码: 6 characters [0-9a-z]
    #[schema(required = true, example = "a1b2c3")]
    pub random: Option<String>,
    /// 业务流水号
    #[schema(required = true, example = "MZ20261123000001")]
    pub bus_no: Option<String>,
    /// 01 住院, 02 门诊, 03 急诊, 04 门特, 05 体检, 06 挂号
    #[schema(required = true, example = "02")]
    pub bus_type: Option<String>,
    /// RFC 3339 with offset
    #[schema(required = true, example = "2026-11-23T09:30:00+08:00")]
    pub issued_at: Option<String>,
    /// 交款人 (payer's name; personal data)
    #[schema(required = true, example = "张三丰")]
    pub payer: Option<String>,
    /// 1 person, 2 organisation
    #[schema(required = true, example = "1")]
    pub payer_type: Option<String>,
    /// Total in yuan; items and payment channels sum to it.
    #[schema(required = true, value_type = String, example = "128.50")]
    pub total_amt: Option<Value>,
    pub id_card_no: Option<String>,
    pub card_type: Option<String>,
    pub card_no: Option<String>,
    pub tel: Option<String>,
    pub email: Option<String>,
    #[serde(rename = "openID", alias = "openId")]
    pub open_id: Option<String>,
    pub we_chat_order_no: Option<String>,
    pub place_code: Option<String>,
    pub payee: Option<String>,
    pub checker: Option<String>,
    #[schema(value_type = Option<String>)]
    pub fund_pay: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub account_pay: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub otherfund_pay: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub own_pay: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub self_pay_amt: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub self_cash_pay: Option<Value>,
    pub hospital_no: Option<String>,
    pub visit_no: Option<String>,
    pub in_hospital_date: Option<String>,
    pub out_hospital_date: Option<String>,
    /// Charge categories; amounts sum to totalAmt.
    #[schema(required = true)]
    pub charge_detail: Option<Vec<WireChargeItem>>,
    pub list_detail: Option<Vec<WireListItem>>,
    pub pay_channel_detail: Option<Vec<WirePayChannel>>,
    /// The receipt file: `{"format": "pdf"|"ofd", "base64": …}` or `{"format": …, "url": "https://…"}` on an allow-listed host.
    pub file: Option<WireFile>,
    pub picture_url: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ChargeItem)]
pub struct WireChargeItem {
    pub sort_no: Option<i64>,
    pub charge_code: Option<String>,
    pub charge_name: Option<String>,
    pub unit: Option<String>,
    #[schema(value_type = Option<String>)]
    pub std: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub number: Option<Value>,
    #[schema(value_type = Option<String>, example = "128.50")]
    pub amt: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub self_amt: Option<Value>,
    pub remark: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ListItem)]
pub struct WireListItem {
    pub list_detail_no: Option<String>,
    pub charge_code: Option<String>,
    pub charge_name: Option<String>,
    pub code: Option<String>,
    pub name: Option<String>,
    pub unit: Option<String>,
    #[schema(value_type = Option<String>)]
    pub std: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub number: Option<Value>,
    #[schema(value_type = Option<String>, example = "128.50")]
    pub amt: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub self_amt: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub receivable_amt: Option<Value>,
    pub medical_care_type: Option<String>,
    pub med_care_item_type: Option<String>,
    #[schema(value_type = Option<String>)]
    pub med_reimburse_rate: Option<Value>,
    pub remark: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = PayChannel)]
pub struct WirePayChannel {
    pub pay_channel_code: Option<String>,
    #[schema(value_type = Option<String>)]
    pub pay_channel_value: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = File)]
pub struct WireFile {
    pub format: Option<String>,
    base64: Option<String>,
    pub url: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses and validates the body of a receipt push.
pub fn parse_push(body: &[u8]) -> Result<NewReceipt, ReceiptInputError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let wire: WireReceipt = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| ReceiptInputError::Json {
        pointer: String::new(),
        message: e.to_string(),
    })?;
    validate(wire)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ReceiptInputError {
    let pointer = json_pointer(err.path());
    let inner = err.into_inner();
    let message = match inner.classify() {
        // serde's data messages quote the offending value ("invalid type: string
        // \"张三\", expected ..."), which may be personal data: keep only what was
        // expected.
        serde_json::error::Category::Data => sanitize_data_message(&inner.to_string()),
        _ => inner.to_string(),
    };
    ReceiptInputError::Json { pointer, message }
}

fn sanitize_data_message(raw: &str) -> String {
    let msg = raw.rfind(" at line ").map_or(raw, |i| &raw[..i]);
    if msg.starts_with("invalid type:") || msg.starts_with("invalid value:") {
        let expected = msg.rsplit_once(", expected ").map_or("another type", |(_, e)| e);
        let expected = match expected {
            e if e.starts_with("struct ") => "an object",
            "a sequence" => "an array",
            "i64" => "an integer",
            e => e,
        };
        format!("wrong JSON type, expected {expected}")
    } else if msg.starts_with("duplicate field") || msg.starts_with("invalid length") {
        msg.to_owned()
    } else {
        "invalid value".to_owned()
    }
}

fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            // A pointer cannot say "somewhere below": stop at the known prefix.
            Segment::Unknown => break,
        }
    }
    out
}

/// Collects field problems, capped at [`MAX_FIELD_ERRORS`].
#[derive(Default)]
struct Problems {
    errors: Vec<FieldError>,
    overflowed: bool,
}

impl Problems {
    fn push(&mut self, pointer: &str, code: &'static str, message: impl Into<String>) {
        if self.errors.len() < MAX_FIELD_ERRORS {
            self.errors.push(FieldError {
                pointer: pointer.to_owned(),
                code,
                message: message.into(),
            });
        } else {
            self.overflowed = true;
        }
    }

    fn into_error(mut self) -> ReceiptInputError {
        if self.overflowed {
            self.errors.push(FieldError {
                pointer: String::new(),
                code: code::TOO_MANY_ERRORS,
                message: format!("more problems were found; only the first {MAX_FIELD_ERRORS} are listed"),
            });
        }
        if self.errors.is_empty() {
            // Every rejected value records a problem; this only guards against a bug.
            self.errors.push(FieldError {
                pointer: String::new(),
                code: code::INVALID_VALUE,
                message: "receipt is invalid".to_owned(),
            });
        }
        ReceiptInputError::Invalid(self.errors)
    }

    // Field validators: each returns the normalized value, or None after recording
    // a problem (or, for optional fields, when absent). Any problem fails the whole
    // push, so an invalid optional value may simply become None.

    fn required(&mut self, ptr: &str, v: Option<String>) -> Option<String> {
        let v = present(v);
        if v.is_none() {
            self.push(ptr, code::REQUIRED, "is required");
        }
        v
    }

    /// Free text of at most `max` characters without control characters.
    fn text(&mut self, ptr: &str, s: String, max: usize) -> Option<String> {
        self.text_allowing(ptr, s, max, |_| false)
    }

    fn text_allowing(
        &mut self,
        ptr: &str,
        s: String,
        max: usize,
        allowed_control: impl Fn(char) -> bool,
    ) -> Option<String> {
        if s.chars().count() > max {
            self.push(ptr, code::TOO_LONG, format!("must be at most {max} characters"));
            None
        } else if s.chars().any(|c| c.is_control() && !allowed_control(c)) {
            self.push(ptr, code::INVALID_FORMAT, "must not contain control characters");
            None
        } else {
            Some(s)
        }
    }

    fn required_text(&mut self, ptr: &str, v: Option<String>, max: usize) -> Option<String> {
        let s = self.required(ptr, v)?;
        self.text(ptr, s, max)
    }

    fn opt_text(&mut self, ptr: &str, v: Option<String>, max: usize) -> Option<String> {
        let s = present(v)?;
        self.text(ptr, s, max)
    }

    /// Remarks may legitimately span lines.
    fn opt_remark(&mut self, ptr: &str, v: Option<String>) -> Option<String> {
        let s = present(v)?;
        self.text_allowing(ptr, s, 500, |c| matches!(c, '\n' | '\r' | '\t'))
    }

    /// Exactly `len` ASCII digits.
    fn digits(&mut self, ptr: &str, v: Option<String>, len: usize) -> Option<String> {
        let s = self.required(ptr, v)?;
        if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
            Some(s)
        } else {
            self.push(ptr, code::INVALID_FORMAT, format!("must be exactly {len} digits"));
            None
        }
    }

    /// 1..=max characters of `[A-Za-z0-9_-]`.
    fn token(&mut self, ptr: &str, s: String, max: usize) -> Option<String> {
        // Charset first, so that byte length equals character count below.
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            self.push(
                ptr,
                code::INVALID_FORMAT,
                "must contain only letters, digits, '_' and '-'",
            );
            None
        } else if s.len() > max {
            self.push(ptr, code::TOO_LONG, format!("must be at most {max} characters"));
            None
        } else {
            Some(s)
        }
    }

    fn code_value<T>(
        &mut self,
        ptr: &str,
        v: Option<String>,
        parse: impl Fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Option<T> {
        let s = present(v)?;
        let parsed = parse(&s);
        if parsed.is_none() {
            self.push(ptr, code::INVALID_VALUE, format!("must be one of {allowed}"));
        }
        parsed
    }

    fn required_code<T>(
        &mut self,
        ptr: &str,
        v: Option<String>,
        parse: impl Fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Option<T> {
        let s = self.required(ptr, v)?;
        self.code_value(ptr, Some(s), parse, allowed)
    }

    fn amount(&mut self, ptr: &str, v: &Value) -> Option<i64> {
        amount_from_json(v)
            .map_err(|e| self.push(ptr, e.code(), e.to_string()))
            .ok()
    }

    /// Optional amount; `""` counts as absent, like other empty optional values.
    fn opt_amount(&mut self, ptr: &str, v: Option<Value>) -> Option<i64> {
        let v = present_value(v)?;
        self.amount(ptr, &v)
    }

    fn required_amount(&mut self, ptr: &str, v: Option<Value>) -> Option<i64> {
        match present_value(v) {
            Some(v) => self.amount(ptr, &v),
            None => {
                self.push(ptr, code::REQUIRED, "is required");
                None
            }
        }
    }

    /// A quantity: non-negative decimal text, sent as a string or a number.
    fn opt_quantity(&mut self, ptr: &str, v: Option<Value>) -> Option<String> {
        let s = self.opt_text_or_number(ptr, v, 20)?;
        let well_formed = match s.split_once('.') {
            Some((i, f)) => is_digits(i) && is_digits(f),
            None => is_digits(&s),
        };
        if well_formed {
            Some(s)
        } else {
            self.push(ptr, code::INVALID_FORMAT, "must be a non-negative decimal number");
            None
        }
    }

    fn opt_text_or_number(&mut self, ptr: &str, v: Option<Value>, max: usize) -> Option<String> {
        match present_value(v)? {
            Value::String(s) => self.text(ptr, s.trim().to_owned(), max),
            Value::Number(n) => self.text(ptr, n.to_string(), max),
            _ => {
                self.push(ptr, code::INVALID_FORMAT, "must be a string or a number");
                None
            }
        }
    }

    fn opt_date(&mut self, ptr: &str, v: Option<String>) -> Option<NaiveDate> {
        let s = present(v)?;
        // chrono alone would also accept unpadded fields such as "2026-1-5".
        let shaped = s.len() == 10
            && s.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        let date = shaped.then(|| NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok()).flatten();
        if date.is_none() {
            self.push(ptr, code::INVALID_FORMAT, "must be a date YYYY-MM-DD");
        }
        date
    }

    fn opt_url(&mut self, ptr: &str, v: Option<String>, schemes: &[&str]) -> Option<Url> {
        let s = present(v)?;
        if s.len() > 2048 {
            self.push(ptr, code::TOO_LONG, "must be at most 2048 characters");
            return None;
        }
        match Url::parse(&s) {
            Ok(url) if schemes.contains(&url.scheme()) && url.host().is_some() => Some(url),
            Ok(_) => {
                self.push(
                    ptr,
                    code::INVALID_VALUE,
                    format!("must be an absolute URL with scheme {}", schemes.join(" or ")),
                );
                None
            }
            Err(_) => {
                self.push(ptr, code::INVALID_FORMAT, "must be an absolute URL");
                None
            }
        }
    }
}

/// Trimmed and non-empty: issuers send `""` for unset optional fields.
fn present(v: Option<String>) -> Option<String> {
    let s = v?;
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn present_value(v: Option<Value>) -> Option<Value> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        v => Some(v),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// GB 11643 check character of the first 17 digits of a resident ID number.
pub(crate) fn gb11643_check(first17: &[u8]) -> u8 {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17.iter().zip(WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    CHECK[(sum % 11) as usize]
}

fn validate(w: WireReceipt) -> Result<NewReceipt, ReceiptInputError> {
    let mut p = Problems::default();

    let bill_batch_code = p.digits("/billBatchCode", w.bill_batch_code, 8);
    let bill_no = p.digits("/billNo", w.bill_no, 10);
    let random = p.required("/random", w.random).and_then(|s| {
        if s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Some(s.to_ascii_lowercase())
        } else {
            p.push("/random", code::INVALID_FORMAT, "must be 6 letters or digits");
            None
        }
    });
    let bus_no = p.required("/busNo", w.bus_no).and_then(|s| p.token("/busNo", s, 64));
    let bus_type = p.required_code("/busType", w.bus_type, BusType::from_code, "01..06");
    let issued_at = p
        .required("/issuedAt", w.issued_at)
        .and_then(|s| match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                p.push(
                    "/issuedAt",
                    code::INVALID_FORMAT,
                    "must be an RFC 3339 date-time with an offset, e.g. 2026-11-23T09:30:00+08:00",
                );
                None
            }
        });
    let payer_type = p.required_code("/payerType", w.payer_type, PayerType::from_code, "1, 2");
    let total_amt = p.required_amount("/totalAmt", w.total_amt).and_then(|fen| {
        if fen > 0 {
            Some(fen)
        } else {
            p.push("/totalAmt", code::INVALID_VALUE, "must be greater than 0");
            None
        }
    });

    let payer_name = p.required_text("/payer", w.payer, 100);
    let id_card_no = validate_id_card(&mut p, w.id_card_no, payer_type);
    let card_type = p.opt_text("/cardType", w.card_type, 32);
    let card_no = p.opt_text("/cardNo", w.card_no, 64);
    let tel = present(w.tel).and_then(|s| {
        if !s.bytes().all(|b| b.is_ascii_digit() || b == b'+' || b == b'-') || s.len() < 5 {
            p.push("/tel", code::INVALID_FORMAT, "must be 5 to 20 digits, '+' or '-'");
            None
        } else if s.len() > 20 {
            p.push("/tel", code::TOO_LONG, "must be at most 20 characters");
            None
        } else {
            Some(s)
        }
    });
    let email = present(w.email).and_then(|s| {
        let well_formed = match s.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            }
            None => false,
        };
        if s.chars().count() > 254 {
            p.push("/email", code::TOO_LONG, "must be at most 254 characters");
            None
        } else if !well_formed {
            p.push("/email", code::INVALID_FORMAT, "must be an e-mail address");
            None
        } else {
            Some(s)
        }
    });
    let open_id = present(w.open_id).and_then(|s| p.token("/openID", s, 64));
    let we_chat_order_no = p.opt_text("/weChatOrderNo", w.we_chat_order_no, 64);
    let place_code = p.opt_text("/placeCode", w.place_code, 64);
    let payee = p.opt_text("/payee", w.payee, 50);
    let checker = p.opt_text("/checker", w.checker, 50);

    let settlement = Settlement {
        fund_pay: p.opt_amount("/fundPay", w.fund_pay),
        account_pay: p.opt_amount("/accountPay", w.account_pay),
        otherfund_pay: p.opt_amount("/otherfundPay", w.otherfund_pay),
        own_pay: p.opt_amount("/ownPay", w.own_pay),
        self_pay_amt: p.opt_amount("/selfPayAmt", w.self_pay_amt),
        self_cash_pay: p.opt_amount("/selfCashPay", w.self_cash_pay),
    };

    let hospital_no = p.opt_text("/hospitalNo", w.hospital_no, 64);
    let visit_no = p.opt_text("/visitNo", w.visit_no, 64);
    let in_hospital_date = p.opt_date("/inHospitalDate", w.in_hospital_date);
    let out_hospital_date = p.opt_date("/outHospitalDate", w.out_hospital_date);
    if let (Some(inp), Some(out)) = (in_hospital_date, out_hospital_date)
        && out < inp
    {
        p.push(
            "/outHospitalDate",
            code::INVALID_VALUE,
            "must not be before inHospitalDate",
        );
    }

    let charge_detail = validate_charge_detail(&mut p, w.charge_detail.unwrap_or_default(), total_amt);
    let list_detail = validate_list_detail(&mut p, w.list_detail.unwrap_or_default());
    let pay_channel_detail = validate_pay_channels(&mut p, w.pay_channel_detail.unwrap_or_default(), total_amt);
    let file = w.file.and_then(|f| validate_file(&mut p, f));
    let picture_url = p.opt_url("/pictureUrl", w.picture_url, &["https"]);

    let (
        Some(bill_batch_code),
        Some(bill_no),
        Some(random),
        Some(bus_no),
        Some(bus_type),
        Some(issued_at),
        Some(payer_type),
        Some(total_amt),
        Some(name),
        Some(charge_detail),
        Some(list_detail),
        Some(pay_channel_detail),
    ) = (
        bill_batch_code,
        bill_no,
        random,
        bus_no,
        bus_type,
        issued_at,
        payer_type,
        total_amt,
        payer_name,
        charge_detail,
        list_detail,
        pay_channel_detail,
    )
    else {
        return Err(p.into_error());
    };
    if !p.errors.is_empty() || p.overflowed {
        return Err(p.into_error());
    }

    Ok(NewReceipt {
        bill_batch_code,
        bill_no,
        random,
        bus_no,
        bus_type,
        issued_at,
        payer_type,
        total_amt,
        payer: PayerIdentity {
            name,
            id_card_no,
            card_type,
            card_no,
            tel,
            email,
        },
        open_id,
        we_chat_order_no,
        place_code,
        payee,
        checker,
        settlement,
        hospital_no,
        visit_no,
        in_hospital_date,
        out_hospital_date,
        charge_detail,
        list_detail,
        pay_channel_detail,
        file,
        picture_url,
    })
}

fn validate_id_card(p: &mut Problems, v: Option<String>, payer_type: Option<PayerType>) -> Option<String> {
    const PTR: &str = "/idCardNo";
    let s = present(v)?;
    if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        p.push(PTR, code::INVALID_FORMAT, "must contain only letters and digits");
        return None;
    }
    if s.len() > 32 {
        p.push(PTR, code::TOO_LONG, "must be at most 32 characters");
        return None;
    }
    let s = s.to_ascii_uppercase();
    // Only a person's 18-character number is a resident ID (GB 11643); an
    // organisation's is typically a unified social credit code with its own check.
    if payer_type == Some(PayerType::Person) && s.len() == 18 {
        let (body, check) = s.as_bytes().split_at(17);
        if !body.iter().all(u8::is_ascii_digit) || !matches!(check, [b'0'..=b'9' | b'X']) {
            p.push(
                PTR,
                code::INVALID_FORMAT,
                "an 18-character resident ID must be 17 digits and a digit or X",
            );
            return None;
        }
        if check != [gb11643_check(body)] {
            p.push(PTR, code::INVALID_VALUE, "resident ID check digit does not match");
            return None;
        }
    }
    Some(s)
}

fn check_count(p: &mut Problems, ptr: &str, len: usize, max: usize) {
    if len > max {
        p.push(ptr, code::TOO_MANY_ITEMS, format!("must have at most {max} items"));
    }
}

/// Records a mismatch when every part parsed and they do not add up to `total`.
fn check_sum(p: &mut Problems, ptr: &str, parts: &[Option<i64>], total: Option<i64>, what: &str) {
    let Some(total) = total else { return };
    let Some(parts) = parts.iter().copied().collect::<Option<Vec<i64>>>() else {
        return;
    };
    let sum = parts.iter().try_fold(0i64, |acc, v| acc.checked_add(*v));
    if sum != Some(total) {
        let sum = sum.map_or_else(|| "more than the largest amount".to_owned(), crate::money::format_yuan);
        p.push(
            ptr,
            code::SUM_MISMATCH,
            format!(
                "{what} add up to {sum}, but totalAmt is {}",
                crate::money::format_yuan(total)
            ),
        );
    }
}

fn validate_charge_detail(
    p: &mut Problems,
    items: Vec<WireChargeItem>,
    total_amt: Option<i64>,
) -> Option<Vec<ChargeItem>> {
    if items.is_empty() {
        p.push("/chargeDetail", code::REQUIRED, "must have at least one item");
        return None;
    }
    check_count(p, "/chargeDetail", items.len(), MAX_CHARGE_ITEMS);
    let mut amounts = Vec::with_capacity(items.len());
    let validated: Vec<Option<ChargeItem>> = items
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let ptr = |f: &str| format!("/chargeDetail/{i}/{f}");
            // Validate every field before `?` so that all problems are recorded.
            let amt = p.required_amount(&ptr("amt"), w.amt);
            amounts.push(amt);
            let charge_code = p.required_text(&ptr("chargeCode"), w.charge_code, 50);
            let charge_name = p.required_text(&ptr("chargeName"), w.charge_name, 100);
            let unit = p.opt_text(&ptr("unit"), w.unit, 20);
            let std = p.opt_amount(&ptr("std"), w.std);
            let number = p.opt_quantity(&ptr("number"), w.number);
            let self_amt = p.opt_amount(&ptr("selfAmt"), w.self_amt);
            let remark = p.opt_remark(&ptr("remark"), w.remark);
            Some(ChargeItem {
                sort_no: w.sort_no,
                charge_code: charge_code?,
                charge_name: charge_name?,
                unit,
                std,
                number,
                amt: amt?,
                self_amt,
                remark,
            })
        })
        .collect();
    check_sum(p, "/chargeDetail", &amounts, total_amt, "chargeDetail amounts");
    validated.into_iter().collect()
}

fn validate_list_detail(p: &mut Problems, items: Vec<WireListItem>) -> Option<Vec<ListItem>> {
    check_count(p, "/listDetail", items.len(), MAX_LIST_ITEMS);
    let validated: Vec<Option<ListItem>> = items
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let ptr = |f: &str| format!("/listDetail/{i}/{f}");
            let name = p.required_text(&ptr("name"), w.name, 200);
            let amt = p.required_amount(&ptr("amt"), w.amt);
            // Optional fields first, so that `?` on the required ones loses nothing.
            let mut item = ListItem {
                list_detail_no: p.opt_text(&ptr("listDetailNo"), w.list_detail_no, 64),
                charge_code: p.opt_text(&ptr("chargeCode"), w.charge_code, 50),
                charge_name: p.opt_text(&ptr("chargeName"), w.charge_name, 100),
                code: p.opt_text(&ptr("code"), w.code, 50),
                name: String::new(),
                unit: p.opt_text(&ptr("unit"), w.unit, 20),
                std: p.opt_amount(&ptr("std"), w.std),
                number: p.opt_quantity(&ptr("number"), w.number),
                amt: 0,
                self_amt: p.opt_amount(&ptr("selfAmt"), w.self_amt),
                receivable_amt: p.opt_amount(&ptr("receivableAmt"), w.receivable_amt),
                medical_care_type: p.code_value(
                    &ptr("medicalCareType"),
                    w.medical_care_type,
                    MedicalCareType::from_code,
                    "1, 2, 3",
                ),
                med_care_item_type: p.opt_text(&ptr("medCareItemType"), w.med_care_item_type, 20),
                med_reimburse_rate: p.opt_text_or_number(&ptr("medReimburseRate"), w.med_reimburse_rate, 20),
                remark: p.opt_remark(&ptr("remark"), w.remark),
            };
            item.name = name?;
            item.amt = amt?;
            Some(item)
        })
        .collect();
    validated.into_iter().collect()
}

fn validate_pay_channels(
    p: &mut Problems,
    items: Vec<WirePayChannel>,
    total_amt: Option<i64>,
) -> Option<Vec<PayChannel>> {
    check_count(p, "/payChannelDetail", items.len(), MAX_PAY_CHANNELS);
    let mut amounts = Vec::with_capacity(items.len());
    let validated: Vec<Option<PayChannel>> = items
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let code_ptr = format!("/payChannelDetail/{i}/payChannelCode");
            let value_ptr = format!("/payChannelDetail/{i}/payChannelValue");
            let pay_channel_code = p.required_text(&code_ptr, w.pay_channel_code, 20);
            let pay_channel_value = p.required_amount(&value_ptr, w.pay_channel_value);
            amounts.push(pay_channel_value);
            Some(PayChannel {
                pay_channel_code: pay_channel_code?,
                pay_channel_value: pay_channel_value?,
            })
        })
        .collect();
    if !amounts.is_empty() {
        check_sum(p, "/payChannelDetail", &amounts, total_amt, "payChannelDetail values");
    }
    validated.into_iter().collect()
}

fn validate_file(p: &mut Problems, w: WireFile) -> Option<ReceiptFile> {
    let format = p.required_code("/file/format", w.format, FileFormat::parse, "pdf, ofd");
    let source = match (present(w.base64), present(w.url)) {
        (Some(b64), None) => {
            // Tolerate MIME-style line breaks some issuers insert.
            let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            match BASE64_STANDARD.decode(compact) {
                Ok(bytes) => Some(FileSource::Inline(bytes)),
                Err(_) => {
                    p.push("/file/base64", code::INVALID_FORMAT, "must be standard base64");
                    None
                }
            }
        }
        (None, Some(url)) => p
            .opt_url("/file/url", Some(url), &["https", "http"])
            .map(FileSource::Url),
        _ => {
            p.push("/file", code::INVALID_VALUE, "must have exactly one of base64 and url");
            None
        }
    };
    Some(ReceiptFile {
        format: format?,
        source: source?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb11643_known_number() {
        assert_eq!(gb11643_check(b"11010519491231002"), b'X');
    }

    #[test]
    fn data_messages_do_not_echo_values() {
        let msg =
            sanitize_data_message("invalid type: string \"110105194912310021\", expected i64 at line 1 column 30");
        assert_eq!(msg, "wrong JSON type, expected an integer");
        let msg = sanitize_data_message("invalid type: integer `13800138000`, expected a string");
        assert_eq!(msg, "wrong JSON type, expected a string");
        assert_eq!(
            sanitize_data_message("duplicate field `billNo` at line 3 column 9"),
            "duplicate field `billNo`"
        );
        assert_eq!(sanitize_data_message("something \"secret\""), "invalid value");
    }
}
