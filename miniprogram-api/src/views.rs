//! What the mini-program API answers. Amounts are yuan strings with two decimals
//! (and the exact integer fen where a client computes); times are UTC RFC 3339;
//! personal data is masked.

use chrono::{DateTime, Utc};
use piaojia_core::money::format_yuan;
use piaojia_core::receipt::BusType;
use piaojia_store::wallets::{SubscriptionCredit, WalletItem};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// Short-lived access token (JWT): `Authorization: Bearer …`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: u64,
    /// Opaque; exchange it once at `/v1/mp/session/refresh` for a new pair.
    pub refresh_token: String,
    #[schema(example = 2592000)]
    pub refresh_expires_in: u64,
    /// Whether the payer has registered (name, ID, consent).
    pub registered: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MiniProgramView {
    #[schema(example = "wx9a8b7c6d5e4f3a2b")]
    pub app_id: String,
    /// True for the platform's shared wallet (every agency); false for an agency's own.
    pub platform: bool,
}

/// The payer's profile; personal data masked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileView {
    pub registered: bool,
    #[schema(example = "张*丰")]
    pub name: Option<String>,
    #[schema(example = "resident")]
    pub id_type: Option<String>,
    #[schema(example = "110***********002X")]
    pub id_number: Option<String>,
    #[schema(example = "138****8000")]
    pub phone: Option<String>,
    pub phone_verified: bool,
    /// How the identity was verified (`wechat_realname` or `phone`); `null`: not
    /// verified, receipts are added by possession only.
    #[schema(example = "wechat_realname")]
    pub verified_via: Option<String>,
    pub verified_at: Option<DateTime<Utc>>,
    #[schema(example = "2026-11")]
    pub consent_version: Option<String>,
    pub consent_at: Option<DateTime<Utc>>,
    /// Reimbursement reminders wanted.
    pub reminders: bool,
    pub registered_at: Option<DateTime<Utc>>,
    pub mini_program: MiniProgramView,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationView {
    pub profile: ProfileView,
    /// Receipts already held for this identity, now in the wallet.
    #[schema(example = 3)]
    pub collected: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditView {
    #[schema(example = "SUB-TMPL-RECEIPT")]
    pub template_id: String,
    /// One-time messages left.
    #[schema(example = 1)]
    pub remaining: i32,
    /// A long-term template accepted (every receipt may be announced).
    #[schema(example = false)]
    pub long_term: bool,
    pub updated_at: DateTime<Utc>,
}

impl From<SubscriptionCredit> for CreditView {
    fn from(c: SubscriptionCredit) -> Self {
        Self {
            template_id: c.template_id,
            remaining: c.remaining,
            long_term: c.long_term,
            updated_at: c.updated_at.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionsView {
    /// The mini-program's subscribe templates and what the payer has left of each.
    pub credits: Vec<CreditView>,
    /// Reported templates this mini-program does not use (ignored).
    #[schema(example = json!(["SUB-TMPL-OTHER"]))]
    pub ignored: Vec<String>,
}

pub fn bus_type_name(code: &str) -> &'static str {
    BusType::from_code(code).map_or("其他", BusType::label_zh)
}

/// A receipt as a line of the wallet.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletItemView {
    pub id: Uuid,
    pub agency_code: String,
    #[schema(example = "示例市第一人民医院")]
    pub agency_name: String,
    #[schema(example = "11060124")]
    pub bill_batch_code: String,
    #[schema(example = "0000000901")]
    pub bill_no: String,
    #[schema(example = "02")]
    pub bus_type: String,
    #[schema(example = "门诊")]
    pub bus_type_name: String,
    pub issued_at: DateTime<Utc>,
    #[schema(example = "128.50")]
    pub total_amt: String,
    #[schema(example = 12850)]
    pub total_fen: i64,
    /// `issued` or `reversed` (冲红).
    #[schema(example = "issued")]
    pub status: &'static str,
    /// `INIT`, `LOCK`, `CLOSURE` or `CANCEL`.
    #[schema(example = "INIT")]
    pub reimbursement_state: &'static str,
    pub has_file: bool,
    /// `collected` (matched to the payer's identity) or `possession` (added by the payer).
    pub source: String,
    pub tags: Vec<String>,
    pub added_at: DateTime<Utc>,
}

impl From<WalletItem> for WalletItemView {
    fn from(w: WalletItem) -> Self {
        Self {
            id: w.receipt_id,
            agency_code: w.agency_code,
            agency_name: w.agency_name,
            bus_type_name: bus_type_name(&w.bus_type).to_owned(),
            bill_batch_code: w.bill_batch_code,
            bill_no: w.bill_no,
            bus_type: w.bus_type,
            issued_at: w.issued_at.into(),
            total_amt: format_yuan(w.total_fen),
            total_fen: w.total_fen,
            status: if w.reversed { "reversed" } else { "issued" },
            reimbursement_state: w.reimbursement_state.as_str(),
            has_file: w.has_file,
            source: w.source.as_str().to_owned(),
            tags: w.tags,
            added_at: w.added_at.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletPageView {
    pub items: Vec<WalletItemView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[schema(example = "MTc5NTQwMDEwMDAwMDAwMDowMTkzZjRiMmM1ZDg3YTFlOWIzYzRkNWU2ZjcwODE5Mg")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileInfoView {
    #[schema(example = "pdf")]
    pub format: String,
    pub size: i64,
    pub sha256: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReversalInfoView {
    pub red_bill_batch_code: String,
    pub red_bill_no: String,
    pub reversed_at: DateTime<Utc>,
    pub reason: String,
}

/// A receipt in full: items, the medical settlement breakdown and states.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptDetailView {
    #[serde(flatten)]
    pub summary: WalletItemView,
    /// Masked payer name.
    #[schema(example = "张*丰")]
    pub payer: String,
    pub bus_no: String,
    /// 收费项目 (`chargeName`, `amt`, …), amounts as yuan strings.
    #[schema(value_type = Vec<Object>)]
    pub charge_detail: Value,
    /// 明细清单, amounts as yuan strings.
    #[schema(value_type = Vec<Object>)]
    pub list_detail: Value,
    /// 支付渠道, amounts as yuan strings.
    #[schema(value_type = Vec<Object>)]
    pub pay_channel_detail: Value,
    /// 医保结算: `fundPay` 统筹基金, `accountPay` 个人账户, `otherfundPay`, `ownPay` 个人自费,
    /// `selfPayAmt` 个人自付, `selfCashPay` 个人现金, as yuan strings.
    #[schema(value_type = Object)]
    pub settlement: Value,
    /// Hospital and visit numbers, admission and discharge dates, when sent.
    #[schema(value_type = Object)]
    pub visit: Value,
    pub file: Option<FileInfoView>,
    pub reversal: Option<ReversalInfoView>,
    /// The payer's own note.
    pub note: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadLinkView {
    /// GET it (no Authorization header) before `expiresAt`.
    #[schema(example = "/v1/mp/files/0193…?token=eyJ…")]
    pub url: String,
    pub expires_at: DateTime<Utc>,
    #[schema(example = "pdf")]
    pub format: String,
    #[schema(example = "11060124-0000000901.pdf")]
    pub file_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddedView {
    /// False when the receipt was already in the wallet.
    #[schema(example = true)]
    pub added: bool,
    pub receipt: WalletItemView,
}

/// Fen → yuan strings for the amount fields a receipt's details carry.
pub fn yuanify(value: &Value) -> Value {
    const FEN_KEYS: [&str; 5] = ["amt", "std", "selfAmt", "receivableAmt", "payChannelValue"];
    match value {
        Value::Array(items) => Value::Array(items.iter().map(yuanify).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (FEN_KEYS.contains(&k.as_str()), v.as_i64()) {
                        (true, Some(fen)) => Value::String(format_yuan(fen)),
                        _ => yuanify(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every value of the settlement object is an amount in fen.
pub fn settlement_yuan(value: Option<&Value>) -> Value {
    match value.and_then(Value::as_object) {
        Some(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_i64().map_or_else(|| v.clone(), |f| Value::String(format_yuan(f))),
                    )
                })
                .collect(),
        ),
        None => Value::Object(serde_json::Map::new()),
    }
}
