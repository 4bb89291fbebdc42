//! The Rust API of the card package: what payers and reimbursers do outside the HTTP API
//! (agreeing on an authorisation page, `wx.chooseInvoice`), and views for assertions.

use crate::api::card::{authorize_order, s_pappid};
use crate::cards::{BillCard, CardStatus, Chosen, ChosenInvoice, InvoiceOrder, SimCard};
use crate::record::PushedEvent;
use crate::{SimError, Simulator, ids};

/// The authorisation token of an `auth_url` (its `signature` parameter), or the token itself.
fn auth_token(auth_url: &str) -> String {
    url::Url::parse(auth_url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "signature")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| auth_url.to_owned())
}

impl Simulator {
    /// The `s_pappid` that identifies `appid` as an invoice platform (`card/invoice/seturl`).
    pub fn s_pappid(&self, appid: &str) -> String {
        s_pappid(appid)
    }

    /// The payer (`openid` in the app that obtained `auth_url`) agrees on the authorisation
    /// page; returns the `user_authorize_invoice` pushes (to the unit and the platform) once
    /// delivered. Agreeing twice pushes nothing.
    pub async fn authorize_invoice(&self, auth_url: &str, openid: &str) -> Result<Vec<PushedEvent>, SimError> {
        if !ids::is_openid(openid) {
            return Err(SimError::InvalidOpenid);
        }
        let token = auth_token(auth_url);
        let jobs = self.with_state(|st| {
            let key = st
                .invoice
                .auth_tokens
                .get(&token)
                .cloned()
                .ok_or(SimError::UnknownAuthUrl)?;
            let person = st.people.person(&key.0, openid);
            authorize_order(st, &token, person)
        })?;
        let mut events = Vec::new();
        for job in jobs {
            events.push(self.deliver(job).await);
        }
        Ok(events)
    }

    /// The cards in the package of the user `openid` of `appid` (any app the person uses).
    pub fn card_package(&self, appid: &str, openid: &str) -> Vec<SimCard> {
        self.with_state(|st| match st.people.lookup(appid, openid) {
            Some(person) => st.invoice.cards_of(person),
            None => Vec::new(),
        })
    }

    /// One card by `card_id` and `code`.
    pub fn card(&self, card_id: &str, code: &str) -> Option<SimCard> {
        self.with_state(|st| st.invoice.cards.get(&(card_id.to_owned(), code.to_owned())).cloned())
    }

    /// Every authorisation order (`getbillauthurl`) and what became of it.
    pub fn invoice_orders(&self) -> Vec<InvoiceOrder> {
        self.with_state(|st| st.invoice.orders.values().cloned().collect())
    }

    /// The card templates (`createbillcard`).
    pub fn bill_cards(&self) -> Vec<BillCard> {
        self.with_state(|st| st.invoice.templates.values().cloned().collect())
    }

    /// The same person's openid in another app (minted if the simulator has none yet).
    pub fn openid_in(&self, appid: &str, openid: &str, other_appid: &str) -> String {
        self.with_state(|st| {
            let person = st.people.person(appid, openid);
            st.people.openid_in(person, other_appid)
        })
    }

    /// `wx.chooseInvoice` in the reimburser's page: the user (`openid` of `appid`) picks cards
    /// by `code` (none: every card they can submit) and the reimburser gets `card_id` +
    /// `encrypt_code` for each. Cards closed, cancelled, or locked by someone else cannot be picked.
    pub fn choose_invoice(
        &self,
        reimburser_appid: &str,
        appid: &str,
        openid: &str,
        codes: &[&str],
    ) -> Result<Vec<ChosenInvoice>, SimError> {
        self.with_state(|st| {
            if !st.apps.contains_key(reimburser_appid) {
                return Err(SimError::UnknownApp(reimburser_appid.to_owned()));
            }
            let person = st.people.lookup(appid, openid).ok_or(SimError::UnknownCard)?;
            let mine = st.invoice.cards_of(person);
            let choosable = |c: &SimCard| match c.status {
                CardStatus::Init => true,
                CardStatus::Lock => c.lock_holder.as_deref() == Some(reimburser_appid),
                CardStatus::Closure | CardStatus::Cancel => false,
            };
            let picked: Vec<SimCard> = if codes.is_empty() {
                mine.into_iter().filter(choosable).collect()
            } else {
                let mut picked = Vec::new();
                for code in codes {
                    let card = mine.iter().find(|c| c.code == *code).ok_or(SimError::UnknownCard)?;
                    if !choosable(card) {
                        return Err(SimError::CardNotChoosable);
                    }
                    picked.push(card.clone());
                }
                picked
            };
            Ok(picked
                .into_iter()
                .map(|c| {
                    let encrypt_code = ids::token(64);
                    st.invoice.encrypt_codes.insert(
                        encrypt_code.clone(),
                        Chosen {
                            reimburser: reimburser_appid.to_owned(),
                            card_id: c.card_id.clone(),
                            code: c.code.clone(),
                        },
                    );
                    ChosenInvoice {
                        card_id: c.card_id,
                        encrypt_code,
                        app_id: c.platform_appid,
                    }
                })
                .collect())
        })
    }
}
