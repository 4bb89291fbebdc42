//! The card package (卡包) for fiscal receipts (DOMAIN.md §7): card templates per unit,
//! authorisation orders, uploaded PDFs, the cards in payers' packages, and what
//! reimbursers may do with them.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A card's reimbursement status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CardStatus {
    #[serde(rename = "INVOICE_REIMBURSE_INIT")]
    Init,
    #[serde(rename = "INVOICE_REIMBURSE_LOCK")]
    Lock,
    #[serde(rename = "INVOICE_REIMBURSE_CLOSURE")]
    Closure,
    #[serde(rename = "INVOICE_REIMBURSE_CANCEL")]
    Cancel,
}

impl CardStatus {
    pub fn wire(self) -> &'static str {
        match self {
            Self::Init => "INVOICE_REIMBURSE_INIT",
            Self::Lock => "INVOICE_REIMBURSE_LOCK",
            Self::Closure => "INVOICE_REIMBURSE_CLOSURE",
            Self::Cancel => "INVOICE_REIMBURSE_CANCEL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Init, Self::Lock, Self::Closure, Self::Cancel]
            .into_iter()
            .find(|c| c.wire() == s)
    }

    /// How the payer's card package shows it.
    pub fn label_zh(self) -> &'static str {
        match self {
            Self::Init => "可报销",
            Self::Lock => "报销中（已锁定）",
            Self::Closure => "已报销",
            Self::Cancel => "已作废（冲红）",
        }
    }
}

/// A unit's card template (`nontax/createbillcard`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillCard {
    pub card_id: String,
    /// The platform app that created it (only it may insert cards with it).
    pub platform_appid: String,
    pub payee: String,
    pub logo_url: String,
    pub created_at: DateTime<Utc>,
}

/// One receipt's authorisation request (`nontax/getbillauthurl`) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceOrder {
    pub s_pappid: String,
    pub platform_appid: String,
    /// The app that asked for the authorisation URL (usually the unit's).
    pub auth_appid: String,
    pub order_id: String,
    /// Fen.
    pub money: i64,
    pub timestamp: i64,
    /// `web` or `app`.
    pub source: String,
    pub redirect_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub auth_url: String,
    pub auth_expires_at: DateTime<Utc>,
    /// The payer's openid in `auth_appid`, once they agreed.
    pub authorized_openid: Option<String>,
    pub authorized_at: Option<DateTime<Utc>>,
    /// Set by `rejectinsert`.
    pub rejected_reason: Option<String>,
    pub rejected_url: Option<String>,
    /// The card inserted for this order (one per order).
    pub card_id: Option<String>,
    pub code: Option<String>,
    #[serde(skip)]
    pub(crate) person: Option<u64>,
    #[serde(skip)]
    pub(crate) token: String,
}

/// A card in a payer's package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCard {
    pub card_id: String,
    pub code: String,
    pub order_id: String,
    pub auth_appid: String,
    pub platform_appid: String,
    /// The unit (from the card template).
    pub payee: String,
    pub title: String,
    /// Fen.
    pub fee: i64,
    pub billing_time: i64,
    /// 票据代码.
    pub billing_no: String,
    /// 票据号码.
    pub billing_code: String,
    pub s_pdf_media_id: String,
    pub status: CardStatus,
    /// The account holding the lock (a reimburser, or the platform).
    pub lock_holder: Option<String>,
    /// The holder's openid in `auth_appid`.
    pub openid: String,
    pub inserted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub(crate) person: u64,
}

/// What `wx.chooseInvoice` gives a reimburser for one card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenInvoice {
    pub card_id: String,
    pub encrypt_code: String,
    /// The card's issuer side (the platform app).
    pub app_id: String,
}

/// An uploaded PDF (`setpdf`).
#[derive(Debug, Clone)]
pub(crate) struct Media {
    pub appid: String,
    pub bytes: Vec<u8>,
    pub uploaded_at: DateTime<Utc>,
    /// The card it was inserted with (then it is kept for `pdf_url`).
    pub used_by: Option<(String, String)>,
}

/// An `encrypt_code`: one card chosen for one reimburser.
#[derive(Debug, Clone)]
pub(crate) struct Chosen {
    pub reimburser: String,
    pub card_id: String,
    pub code: String,
}

#[derive(Debug, Default)]
pub(crate) struct InvoiceState {
    pub templates: BTreeMap<String, BillCard>,
    /// (auth appid, order_id) → order.
    pub orders: BTreeMap<(String, String), InvoiceOrder>,
    /// auth-page token → (auth appid, order_id).
    pub auth_tokens: HashMap<String, (String, String)>,
    pub media: HashMap<String, Media>,
    /// (card_id, code) → card.
    pub cards: BTreeMap<(String, String), SimCard>,
    pub encrypt_codes: HashMap<String, Chosen>,
}

impl InvoiceState {
    /// Forgets unused PDFs uploaded before `cutoff`.
    pub fn prune(&mut self, cutoff: DateTime<Utc>) {
        self.media.retain(|_, m| m.used_by.is_some() || m.uploaded_at > cutoff);
    }

    pub fn cards_of(&self, person: u64) -> Vec<SimCard> {
        self.cards.values().filter(|c| c.person == person).cloned().collect()
    }
}

/// Who asks for a status change.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Actor<'a> {
    /// The card's platform (`platform/updatestatus`).
    Platform(&'a str),
    /// A reimburser the payer chose the card for.
    Reimburser(&'a str),
}

impl Actor<'_> {
    fn appid(&self) -> &str {
        match self {
            Actor::Platform(a) | Actor::Reimburser(a) => a,
        }
    }
}

/// Why a status change is refused: the errcode and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(pub i64, pub &'static str);

/// The new (status, lock holder), or `None` when the card already is in `to` (a repeated
/// call after a timeout changes nothing and is not an error).
pub(crate) type Change = Option<(CardStatus, Option<String>)>;

/// The legal transitions: INIT → LOCK (one holder) → CLOSURE, or back to INIT by the
/// holder; CANCEL (reversal) only from INIT and only by the platform; CLOSURE and CANCEL
/// are final.
pub(crate) fn transition(card: &SimCard, actor: Actor<'_>, to: CardStatus) -> Result<Change, Refusal> {
    use CardStatus::{Cancel, Closure, Init, Lock};
    let me = actor.appid();
    if matches!(actor, Actor::Reimburser(_)) && to == Cancel {
        return Err(Refusal(72031, "invalid params hint: a reimburser cannot cancel"));
    }
    let held_by_me = card.lock_holder.as_deref() == Some(me);
    let repeat_allowed = match card.status {
        Init => true,
        Lock | Closure => held_by_me,
        Cancel => matches!(actor, Actor::Platform(_)),
    };
    if card.status == to && repeat_allowed {
        return Ok(None);
    }
    match (card.status, to) {
        (Closure | Cancel, _) => Err(Refusal(72024, "invoice status error")),
        (Lock, _) if !held_by_me => Err(Refusal(72023, "invoice has been lock by others")),
        (Init, Lock) => Ok(Some((Lock, Some(me.to_owned())))),
        (Init, Closure) => Err(Refusal(72039, "invoice not lock, lock it first")),
        (Init, Cancel) => Ok(Some((Cancel, None))),
        (Lock, Init) => Ok(Some((Init, None))),
        (Lock, Closure) => Ok(Some((Closure, Some(me.to_owned())))),
        (Lock, Cancel) => Err(Refusal(72024, "invoice status error hint: unlock before cancelling")),
        (Init, Init) | (Lock, Lock) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(status: CardStatus, holder: Option<&str>) -> SimCard {
        SimCard {
            card_id: "p".into(),
            code: "1".into(),
            order_id: "o".into(),
            auth_appid: "wxunit".into(),
            platform_appid: "wxplat".into(),
            payee: "医院".into(),
            title: "医院".into(),
            fee: 1,
            billing_time: 0,
            billing_no: "11060124".into(),
            billing_code: "0000000001".into(),
            s_pdf_media_id: "m".into(),
            status,
            lock_holder: holder.map(str::to_owned),
            openid: "o".into(),
            inserted_at: Utc::now(),
            updated_at: Utc::now(),
            person: 1,
        }
    }

    use CardStatus::{Cancel, Closure, Init, Lock};

    #[test]
    fn reimburser_transitions() {
        let r = Actor::Reimburser("wxR");
        assert_eq!(
            transition(&card(Init, None), r, Lock),
            Ok(Some((Lock, Some("wxR".into()))))
        );
        assert_eq!(transition(&card(Init, None), r, Closure).map_err(|e| e.0), Err(72039));
        assert_eq!(transition(&card(Init, None), r, Init), Ok(None));
        assert_eq!(transition(&card(Lock, Some("wxR")), r, Lock), Ok(None));
        assert_eq!(transition(&card(Lock, Some("wxR")), r, Init), Ok(Some((Init, None))));
        assert_eq!(
            transition(&card(Lock, Some("wxR")), r, Closure),
            Ok(Some((Closure, Some("wxR".into()))))
        );
        for to in [Init, Lock, Closure] {
            assert_eq!(
                transition(&card(Lock, Some("wxOther")), r, to).map_err(|e| e.0),
                Err(72023)
            );
            assert_eq!(
                transition(&card(Closure, Some("wxOther")), r, to).map_err(|e| e.0),
                Err(72024),
                "{to:?}"
            );
            assert_eq!(transition(&card(Cancel, None), r, to).map_err(|e| e.0), Err(72024));
        }
        // Closing twice (a retry after a timeout) changes nothing; reopening is refused.
        assert_eq!(transition(&card(Closure, Some("wxR")), r, Closure), Ok(None));
        assert_eq!(
            transition(&card(Closure, Some("wxR")), r, Init).map_err(|e| e.0),
            Err(72024)
        );
        assert_eq!(transition(&card(Init, None), r, Cancel).map_err(|e| e.0), Err(72031));
    }

    #[test]
    fn platform_transitions() {
        let p = Actor::Platform("wxplat");
        assert_eq!(transition(&card(Init, None), p, Cancel), Ok(Some((Cancel, None))));
        assert_eq!(transition(&card(Cancel, None), p, Cancel), Ok(None));
        assert_eq!(transition(&card(Cancel, None), p, Init).map_err(|e| e.0), Err(72024));
        // A reversal cannot take back a receipt a reimburser holds or closed.
        assert_eq!(
            transition(&card(Lock, Some("wxR")), p, Cancel).map_err(|e| e.0),
            Err(72023)
        );
        assert_eq!(
            transition(&card(Closure, Some("wxR")), p, Cancel).map_err(|e| e.0),
            Err(72024)
        );
        // The platform reflecting a lock taken elsewhere.
        assert_eq!(
            transition(&card(Init, None), p, Lock),
            Ok(Some((Lock, Some("wxplat".into()))))
        );
        assert_eq!(
            transition(&card(Lock, Some("wxplat")), p, Cancel).map_err(|e| e.0),
            Err(72024)
        );
    }
}
