//! The card package (卡包) for fiscal receipts (DOMAIN.md §7): the platform's and the
//! issuing unit's calls, and the reimburser's.
//!
//! Flow: `card_ticket` → `create_bill_card` (once per unit) → `get_bill_auth_url` per
//! receipt → the payer agrees (`user_authorize_invoice` event) → `get_auth_data` →
//! `set_pdf` → `insert_bill` (or `reject_insert`) → `update_card_status` on reversal.
//! Reimbursers: `get_invoice_info`/`get_invoice_batch`, then `update_invoice_status`/
//! `update_status_batch` (all or nothing).

use std::str::FromStr;

use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use super::{
    AppCredentials, CallError, PATH_CREATE_BILL_CARD, PATH_GET_AUTH_DATA, PATH_GET_BILL_AUTH_URL, PATH_INSERT_BILL,
    PATH_INVOICE_SET_URL, PATH_PLATFORM_UPDATE_STATUS, PATH_REIMBURSE_GET_BATCH, PATH_REIMBURSE_GET_INFO,
    PATH_REIMBURSE_UPDATE_BATCH, PATH_REIMBURSE_UPDATE_STATUS, PATH_REJECT_INSERT, PATH_SET_PDF, Payload, WechatClient,
    mask,
};

/// A card's reimbursement status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReimburseStatus {
    /// `INVOICE_REIMBURSE_INIT`: in the payer's card package, free to submit.
    Init,
    /// `INVOICE_REIMBURSE_LOCK`: held by one reimburser.
    Lock,
    /// `INVOICE_REIMBURSE_CLOSURE`: reimbursed; irreversible, removed from the package.
    Closure,
    /// `INVOICE_REIMBURSE_CANCEL`: reversed (冲红) by the issuer.
    Cancel,
}

impl ReimburseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INVOICE_REIMBURSE_INIT",
            Self::Lock => "INVOICE_REIMBURSE_LOCK",
            Self::Closure => "INVOICE_REIMBURSE_CLOSURE",
            Self::Cancel => "INVOICE_REIMBURSE_CANCEL",
        }
    }
}

impl std::fmt::Display for ReimburseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReimburseStatus {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "INVOICE_REIMBURSE_INIT" => Ok(Self::Init),
            "INVOICE_REIMBURSE_LOCK" => Ok(Self::Lock),
            "INVOICE_REIMBURSE_CLOSURE" => Ok(Self::Closure),
            "INVOICE_REIMBURSE_CANCEL" => Ok(Self::Cancel),
            _ => Err(()),
        }
    }
}

impl Serialize for ReimburseStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReimburseStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom("unknown reimburse_status"))
    }
}

/// A unit's card template (`nontax/createbillcard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillCardTemplate {
    /// The unit's full name, shown in the card's details.
    pub payee: String,
    /// A logo uploaded to WeChat (an mmbiz.qpic.cn URL).
    pub logo_url: String,
}

/// Where the payer opens the authorisation page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    /// Inside WeChat (official-account page, template message, QR).
    Web,
    /// From an outside app.
    App,
}

impl AuthSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::App => "app",
        }
    }
}

/// `nontax/getbillauthurl`: one receipt to authorise. The `wx_card` ticket is added by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillAuthRequest {
    /// The platform (finance bureau) identifier.
    pub s_pappid: String,
    pub order_id: String,
    /// Amount in fen.
    pub money: i64,
    /// Unix seconds.
    pub timestamp: i64,
    pub source: AuthSource,
    /// Where WeChat sends the payer after agreeing (web source only).
    pub redirect_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BillAuthUrl {
    pub auth_url: String,
    /// Seconds the link stays valid.
    pub expire_time: i64,
}

/// `getauthdata`'s `invoice_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceAuthStatus {
    /// `auth success`: the payer agreed.
    AuthSuccess,
    /// `never auth`: not (yet) agreed.
    NeverAuth,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthData {
    pub invoice_status: InvoiceAuthStatus,
    /// When the payer agreed (Unix seconds).
    pub auth_time: Option<i64>,
}

impl AuthData {
    pub fn is_authorized(&self) -> bool {
        self.invoice_status == InvoiceAuthStatus::AuthSuccess
    }
}

/// `nontax/insertbill`: the receipt put into the payer's card package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertBill {
    pub order_id: String,
    pub card_id: String,
    /// The app that obtained the authorisation URL (usually the unit's).
    pub appid: String,
    /// Amount in fen.
    pub fee: i64,
    /// The paying unit's name as shown on the card.
    pub title: String,
    /// Issue time, Unix seconds.
    pub billing_time: i64,
    /// 票据代码 (8 digits).
    pub billing_no: String,
    /// 票据号码 (10 digits).
    pub billing_code: String,
    /// From [`WechatClient::set_pdf`].
    pub s_pdf_media_id: String,
}

impl InsertBill {
    fn to_json(&self) -> Value {
        json!({
            "order_id": self.order_id,
            "card_id": self.card_id,
            "appid": self.appid,
            "card_ext": { "user_card": { "invoice_user_data": {
                "fee": self.fee,
                "title": self.title,
                "billing_time": self.billing_time,
                "billing_no": self.billing_no,
                "billing_code": self.billing_code,
                "s_pdf_media_id": self.s_pdf_media_id,
            } } },
        })
    }
}

/// What `insertbill` answers: the card's `code` and the holder's openid (in the caller's app).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct InsertedBill {
    pub code: String,
    pub openid: String,
}

impl std::fmt::Debug for InsertedBill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsertedBill")
            .field("code", &self.code)
            .field("openid", &mask(&self.openid))
            .finish()
    }
}

/// A card a payer chose for a reimburser (`wx.chooseInvoice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRef {
    pub card_id: String,
    pub encrypt_code: String,
}

/// The card's face, as a reimburser sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InvoiceUserInfo {
    pub fee: i64,
    pub title: String,
    pub billing_time: i64,
    /// 票据代码.
    pub billing_no: String,
    /// 票据号码.
    pub billing_code: String,
    #[serde(default)]
    pub pdf_url: Option<String>,
    pub reimburse_status: ReimburseStatus,
}

/// `getinvoiceinfo` / one item of `getinvoicebatch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InvoiceInfo {
    pub card_id: String,
    #[serde(default)]
    pub begin_time: i64,
    #[serde(default)]
    pub end_time: i64,
    /// The holder, in the reimburser's app.
    pub openid: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub payee: String,
    #[serde(default)]
    pub detail: String,
    pub user_info: InvoiceUserInfo,
}

fn multipart_pdf(pdf: &[u8]) -> Payload<'static> {
    let boundary = format!("----piaojia{}", uuid::Uuid::new_v4().simple());
    let mut bytes = Vec::with_capacity(pdf.len() + 256);
    bytes.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"pdf\"; filename=\"receipt.pdf\"\r\n\
             Content-Type: application/pdf\r\n\r\n"
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(pdf);
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Payload::Multipart { boundary, bytes }
}

impl WechatClient {
    /// The platform's own `s_pappid`, from the invoice URL `card/invoice/seturl` answers.
    pub async fn invoice_platform_s_pappid(&self, app: &AppCredentials) -> Result<String, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            invoice_url: String,
        }
        let r: Resp = self
            .call_json(app, Method::POST, PATH_INVOICE_SET_URL, &json!({}))
            .await?;
        let url = url::Url::parse(&r.invoice_url).map_err(|_| CallError::Decode("invoice_url is not a URL".into()))?;
        url.query_pairs()
            .find(|(k, _)| k == "s_pappid")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| CallError::Decode("invoice_url has no s_pappid".into()))
    }

    /// `nontax/createbillcard`: the unit's card template; returns its `card_id`.
    pub async fn create_bill_card(
        &self,
        app: &AppCredentials,
        template: &BillCardTemplate,
    ) -> Result<String, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            card_id: String,
        }
        let body = json!({ "invoice_info": {
            "payee": template.payee,
            "base_info": { "logo_url": template.logo_url },
        } });
        let r: Resp = self.call_json(app, Method::POST, PATH_CREATE_BILL_CARD, &body).await?;
        Ok(r.card_id)
    }

    /// `nontax/getbillauthurl`, with the cached `wx_card` ticket.
    pub async fn get_bill_auth_url(
        &self,
        app: &AppCredentials,
        req: &BillAuthRequest,
    ) -> Result<BillAuthUrl, CallError> {
        if req.money <= 0 {
            return Err(CallError::Invalid("money must be positive fen".into()));
        }
        let ticket = self.card_ticket(app).await?;
        let mut body = json!({
            "s_pappid": req.s_pappid,
            "order_id": req.order_id,
            "money": req.money,
            "timestamp": req.timestamp,
            "source": req.source.as_str(),
            "ticket": ticket,
        });
        if let Some(url) = &req.redirect_url {
            body["redirect_url"] = json!(url);
        }
        self.call_json(app, Method::POST, PATH_GET_BILL_AUTH_URL, &body).await
    }

    /// `card/invoice/getauthdata`: whether the payer authorised the order.
    pub async fn get_auth_data(
        &self,
        app: &AppCredentials,
        s_pappid: &str,
        order_id: &str,
    ) -> Result<AuthData, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            invoice_status: String,
            #[serde(default)]
            auth_time: Option<i64>,
        }
        let r: Resp = self
            .call_json(
                app,
                Method::POST,
                PATH_GET_AUTH_DATA,
                &json!({ "s_pappid": s_pappid, "order_id": order_id }),
            )
            .await?;
        let invoice_status = match r.invoice_status.as_str() {
            "auth success" => InvoiceAuthStatus::AuthSuccess,
            "never auth" => InvoiceAuthStatus::NeverAuth,
            other => InvoiceAuthStatus::Other(other.to_owned()),
        };
        Ok(AuthData {
            invoice_status,
            auth_time: r.auth_time.filter(|t| *t > 0),
        })
    }

    /// `card/invoice/platform/setpdf` (multipart field `pdf`); the `s_media_id` lasts 3 days.
    pub async fn set_pdf(&self, app: &AppCredentials, pdf: &[u8]) -> Result<String, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            s_media_id: String,
        }
        let r: Resp = self
            .call(app, Method::POST, PATH_SET_PDF, &[], &multipart_pdf(pdf))
            .await?;
        Ok(r.s_media_id)
    }

    /// `nontax/insertbill`: one card per authorised order.
    pub async fn insert_bill(&self, app: &AppCredentials, bill: &InsertBill) -> Result<InsertedBill, CallError> {
        self.call_json(app, Method::POST, PATH_INSERT_BILL, &bill.to_json())
            .await
    }

    /// `card/invoice/rejectinsert`: tells the payer the receipt will not come (`url`: where to read why).
    pub async fn reject_insert(
        &self,
        app: &AppCredentials,
        s_pappid: &str,
        order_id: &str,
        reason: &str,
        url: Option<&str>,
    ) -> Result<(), CallError> {
        let mut body = json!({ "s_pappid": s_pappid, "order_id": order_id, "reason": reason });
        if let Some(url) = url {
            body["url"] = json!(url);
        }
        let _: Value = self.call_json(app, Method::POST, PATH_REJECT_INSERT, &body).await?;
        Ok(())
    }

    /// `card/invoice/platform/updatestatus`: the platform's view of a card (CANCEL on reversal).
    pub async fn update_card_status(
        &self,
        app: &AppCredentials,
        card_id: &str,
        code: &str,
        status: ReimburseStatus,
    ) -> Result<(), CallError> {
        let body = json!({ "card_id": card_id, "code": code, "reimburse_status": status.as_str() });
        let _: Value = self
            .call_json(app, Method::POST, PATH_PLATFORM_UPDATE_STATUS, &body)
            .await?;
        Ok(())
    }

    /// Reimburser: one chosen card's details.
    pub async fn get_invoice_info(&self, app: &AppCredentials, card: &InvoiceRef) -> Result<InvoiceInfo, CallError> {
        let body = json!({ "card_id": card.card_id, "encrypt_code": card.encrypt_code });
        self.call_json(app, Method::POST, PATH_REIMBURSE_GET_INFO, &body).await
    }

    /// Reimburser: several chosen cards at once.
    pub async fn get_invoice_batch(
        &self,
        app: &AppCredentials,
        cards: &[InvoiceRef],
    ) -> Result<Vec<InvoiceInfo>, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            #[serde(default)]
            item_list: Vec<InvoiceInfo>,
        }
        if cards.is_empty() {
            return Ok(Vec::new());
        }
        let r: Resp = self
            .call_json(
                app,
                Method::POST,
                PATH_REIMBURSE_GET_BATCH,
                &json!({ "item_list": cards }),
            )
            .await?;
        Ok(r.item_list)
    }

    /// Reimburser: lock (`Lock`), unlock (`Init`) or close (`Closure`, after a lock) one card.
    pub async fn update_invoice_status(
        &self,
        app: &AppCredentials,
        card: &InvoiceRef,
        status: ReimburseStatus,
    ) -> Result<(), CallError> {
        let body = json!({
            "card_id": card.card_id,
            "encrypt_code": card.encrypt_code,
            "reimburse_status": status.as_str(),
        });
        let _: Value = self
            .call_json(app, Method::POST, PATH_REIMBURSE_UPDATE_STATUS, &body)
            .await?;
        Ok(())
    }

    /// Reimburser: the same change for several cards of one holder; all or nothing.
    pub async fn update_status_batch(
        &self,
        app: &AppCredentials,
        openid: &str,
        status: ReimburseStatus,
        cards: &[InvoiceRef],
    ) -> Result<(), CallError> {
        if cards.is_empty() {
            return Err(CallError::Invalid("no cards".into()));
        }
        let body = json!({ "openid": openid, "reimburse_status": status.as_str(), "invoice_list": cards });
        let _: Value = self
            .call_json(app, Method::POST, PATH_REIMBURSE_UPDATE_BATCH, &body)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [
            ReimburseStatus::Init,
            ReimburseStatus::Lock,
            ReimburseStatus::Closure,
            ReimburseStatus::Cancel,
        ] {
            assert_eq!(s.as_str().parse::<ReimburseStatus>(), Ok(s));
            let json = serde_json::to_string(&s).expect("serialises");
            assert_eq!(serde_json::from_str::<ReimburseStatus>(&json).expect("parses"), s);
        }
        assert!("LOCK".parse::<ReimburseStatus>().is_err());
    }

    #[test]
    fn insert_bill_shape() {
        let b = InsertBill {
            order_id: "o1".into(),
            card_id: "pCARD".into(),
            appid: "wxunit".into(),
            fee: 1250,
            title: "市第一人民医院".into(),
            billing_time: 1_700_000_000,
            billing_no: "11060124".into(),
            billing_code: "0000000001".into(),
            s_pdf_media_id: "m1".into(),
        };
        let v = b.to_json();
        let data = &v["card_ext"]["user_card"]["invoice_user_data"];
        assert_eq!(data["fee"], 1250);
        assert_eq!(data["billing_no"], "11060124");
        assert_eq!(data["billing_code"], "0000000001");
        assert_eq!(v["appid"], "wxunit");
    }

    #[test]
    fn multipart_carries_the_pdf() {
        let Payload::Multipart { boundary, bytes } = multipart_pdf(b"%PDF-1.4 x") else {
            panic!("multipart");
        };
        let text = String::from_utf8(bytes).expect("ascii");
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"pdf\""));
        assert!(text.contains("\r\n\r\n%PDF-1.4 x\r\n"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
