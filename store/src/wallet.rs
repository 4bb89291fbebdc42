//! The receipt wallet's storage: payers of the mini-programs, their WeChat
//! identities and refresh tokens, wallet entries, subscription credits and the
//! audit trail. One trait, [`PayerStore`], implemented once for both databases by
//! `wallet_sql.rs` (the SQL is the same text on both).
//!
//! Personal data never appears here in plain text: profiles arrive sealed and are
//! matched through blind indexes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Channel, ReimbursementState, Result, StoredReceipt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerRecord {
    pub id: Uuid,
    /// Name, ID type and number, phone: sealed JSON; `None` until registered.
    pub profile_sealed: Option<String>,
    pub phone_verified: bool,
    pub consent_version: Option<String>,
    pub consent_at: Option<DateTime<Utc>>,
    /// Reimbursement reminders wanted.
    pub reminders: bool,
    pub registered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub payer: PayerRecord,
    /// True when this login created the payer.
    pub created: bool,
}

/// A registration or a change of it: the sealed profile and what it is matched by.
#[derive(Debug, Clone)]
pub struct Registration {
    pub profile_sealed: String,
    pub id_index: String,
    pub name_index: String,
    pub phone_index: Option<String>,
    pub phone_verified: bool,
    pub consent_version: String,
    pub consent_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    pub payer: PayerRecord,
    /// Receipts newly collected into the wallet by this registration.
    pub collected: u64,
    /// Collected receipts that no longer match the changed identity.
    pub released: u64,
}

#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub id: Uuid,
    pub family_id: Uuid,
    pub payer_id: Uuid,
    pub app_id: String,
    /// Keyed hash of the token; the token itself is never stored.
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The presented token was valid: it is now used, and `next` (same family) stored.
    Rotated {
        payer_id: Uuid,
        app_id: String,
    },
    /// Used before: the family is revoked now (a stolen token was replayed, or the
    /// thief rotated first).
    Reused {
        payer_id: Uuid,
        family_id: Uuid,
    },
    Revoked,
    Expired,
    Unknown,
}

/// A payer's answer to `wx.requestSubscribeMessage` for one template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionChoice {
    Accept,
    Reject,
    /// The payer turned the template off for good in WeChat's settings.
    Ban,
}

#[derive(Debug, Clone)]
pub struct SubscriptionReport {
    pub template_id: String,
    pub choice: SubscriptionChoice,
    /// The template is long-term: one acceptance covers every message.
    pub long_term: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionCredit {
    pub app_id: String,
    pub template_id: String,
    pub remaining: i32,
    pub long_term: bool,
    pub updated_at: DateTime<Utc>,
}

/// A subscribe-message channel a receipt arriving for a registered payer may be
/// announced through, in order of preference (the agency's own mini-program,
/// then the platform wallet).
#[derive(Debug, Clone)]
pub struct WalletChannel {
    /// `wechat_subscribe` or `wallet_subscribe`: the delivery's channel.
    pub kind: String,
    pub app_id: String,
    pub template_id: String,
    pub long_term: bool,
    /// The outside interface the delivery calls.
    pub interface: String,
}

/// Which receipts of a wallet to list.
#[derive(Debug, Clone, Default)]
pub struct WalletQuery {
    pub payer_id: Uuid,
    /// The agencies the mini-program may show (`None`: the platform wallet, all).
    pub scope: Option<Vec<Uuid>>,
    pub agency_code: Option<String>,
    pub issued_from: Option<DateTime<Utc>>,
    pub issued_before: Option<DateTime<Utc>>,
    pub bus_type: Option<String>,
    pub min_fen: Option<i64>,
    pub max_fen: Option<i64>,
    pub reversed: Option<bool>,
    pub reimbursement_state: Option<ReimbursementState>,
    /// Free text matched against agency and item names.
    pub text: Option<String>,
    /// Keyset cursor: entries strictly after (older than) this one.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One line of a wallet page.
#[derive(Debug, Clone)]
pub struct WalletItem {
    pub receipt_id: Uuid,
    pub agency_code: String,
    pub agency_name: String,
    pub bill_batch_code: String,
    pub bill_no: String,
    pub bus_type: String,
    pub issued_at: DateTime<Utc>,
    pub total_fen: i64,
    pub reversed: bool,
    pub reimbursement_state: ReimbursementState,
    pub has_file: bool,
    pub source: String,
    pub tags: Vec<String>,
    pub added_at: DateTime<Utc>,
}

/// A receipt in a wallet, whole (its deliveries are not loaded).
#[derive(Debug, Clone)]
pub struct WalletDetail {
    pub receipt: StoredReceipt,
    pub agency_code: String,
    pub agency_name: String,
    pub source: String,
    pub tags: Vec<String>,
    pub note_sealed: Option<String>,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletAdd {
    Added,
    /// Already in the wallet (a removed entry is restored).
    AlreadyThere,
}

/// A change of the payer's own tags or note; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WalletAnnotation {
    pub tags: Option<Vec<String>>,
    /// `Some(None)` clears the note.
    pub note_sealed: Option<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: Uuid,
    pub payer_id: Uuid,
    pub event: String,
    pub at: DateTime<Utc>,
    pub detail: Option<serde_json::Value>,
}

/// The wallet's storage, on both databases.
#[async_trait]
pub trait PayerStore: Send + Sync {
    /// The payer behind a mini-program login: the one with this identity, else the
    /// one with this unionid (same person, another of our mini-programs), else a
    /// new one. Records the identity and the login time.
    async fn login_payer(&self, app_id: &str, openid: &str, unionid_index: Option<&str>) -> Result<LoginOutcome>;
    async fn payer(&self, id: Uuid) -> Result<Option<PayerRecord>>;
    /// Registers or changes the profile, then (in the same transaction) collects
    /// every held receipt of a person whose identity matches (ID number and name,
    /// or a verified phone and name) and releases collected ones that no longer do.
    async fn register_payer(&self, payer_id: Uuid, registration: Registration) -> Result<RegisterOutcome>;
    async fn set_reminders(&self, payer_id: Uuid, enabled: bool) -> Result<PayerRecord>;
    /// Erases the payer: profile, identities, tokens, credits and wallet entries
    /// go; an audit record stays. False when there was no such payer.
    async fn delete_payer(&self, payer_id: Uuid) -> Result<bool>;
    async fn add_audit(&self, payer_id: Uuid, event: &str, detail: Option<serde_json::Value>) -> Result<()>;
    async fn payer_audit(&self, payer_id: Uuid) -> Result<Vec<AuditRecord>>;

    async fn insert_refresh_token(&self, token: NewRefreshToken) -> Result<()>;
    /// Uses the token whose hash is `presented` and stores `next` in its family;
    /// a token used before revokes its family instead.
    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next: NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<RefreshOutcome>;
    /// Revokes the family of the token whose hash is `presented` (logout). False
    /// when the token is unknown or belongs to another payer.
    async fn revoke_refresh_family(&self, payer_id: Uuid, presented: &str) -> Result<bool>;

    async fn record_subscriptions(&self, payer_id: Uuid, app_id: &str, reports: &[SubscriptionReport]) -> Result<()>;
    async fn subscription_credits(&self, payer_id: Uuid) -> Result<Vec<SubscriptionCredit>>;

    /// A page of the wallet, newest issue first (ties by receipt id), `limit` rows.
    async fn wallet_page(&self, query: &WalletQuery) -> Result<Vec<WalletItem>>;
    async fn wallet_receipt(
        &self,
        payer_id: Uuid,
        receipt_id: Uuid,
        scope: Option<&[Uuid]>,
    ) -> Result<Option<WalletDetail>>;
    /// A receipt by its identity in any agency (deliveries not loaded).
    async fn find_receipt(&self, bill_batch_code: &str, bill_no: &str) -> Result<Option<StoredReceipt>>;
    /// Adds a receipt the payer proved to hold.
    async fn add_to_wallet(&self, payer_id: Uuid, receipt_id: Uuid) -> Result<WalletAdd>;
    /// Hides the receipt from the wallet for good (not collected again).
    async fn remove_from_wallet(&self, payer_id: Uuid, receipt_id: Uuid, scope: Option<&[Uuid]>) -> Result<bool>;
    async fn annotate_wallet_entry(
        &self,
        payer_id: Uuid,
        receipt_id: Uuid,
        scope: Option<&[Uuid]>,
        annotation: WalletAnnotation,
    ) -> Result<bool>;

    /// Channels of no agency: the platform's wallet mini-program.
    async fn platform_channels(&self) -> Result<Vec<Channel>>;
}

/// A key for serialising the matching of one identity (PostgreSQL advisory lock):
/// registration and receipt arrival take the same keys, so neither misses the
/// other. FNV-1a; a collision only serialises two unrelated transactions.
pub(crate) fn identity_lock_key(domain: &str, index: &str, name_index: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain
        .bytes()
        .chain([0])
        .chain(index.bytes())
        .chain([0])
        .chain(name_index.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// The identity locks a just-pushed receipt needs before it is matched to payers:
/// none unless it is a person's with a name and an ID number or phone.
pub(crate) fn receipt_lock_keys(r: &crate::NewReceiptRecord) -> Vec<i64> {
    match (r.payer_name_index.as_deref(), r.payer_type == "1") {
        (Some(name_index), true) => {
            identity_lock_keys(r.payer_id_index.as_deref(), r.payer_phone_index.as_deref(), name_index)
        }
        _ => Vec::new(),
    }
}

/// The lock keys of an identity: ID number + name, phone + name.
pub(crate) fn identity_lock_keys(id_index: Option<&str>, phone_index: Option<&str>, name_index: &str) -> Vec<i64> {
    let mut keys: Vec<i64> = id_index
        .map(|i| identity_lock_key("id", i, name_index))
        .into_iter()
        .chain(phone_index.map(|p| identity_lock_key("phone", p, name_index)))
        .collect();
    // One order everywhere, so two transactions never wait on each other in a cycle.
    keys.sort_unstable();
    keys
}
