//! Payers and their wallets (票夹): payers of the mini-programs, their WeChat
//! identities and refresh tokens, wallet entries, subscription credits and the
//! audit trail; and the collection of a person's receipts by identity, from both
//! sides (a registration collects what is held; an arriving receipt is collected
//! for the payers it matches).
//!
//! Personal data never appears here in plain text: profiles arrive sealed and are
//! matched through blind indexes.

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::delivery::{ChannelKind, DeliveryEvent};
use piaojia_core::parties::ReimbursementState;
use piaojia_core::receipt::PayerType;
use serde::Serialize;
use uuid::Uuid;

use crate::intake::{NewReceiptRecord, RECEIPT_COLUMNS, ReceiptRow, StoredReceipt};
use crate::queue::NewDelivery;
use crate::sql::{Conn, Dialect, Json, Sql, Tx, write_error, written};
use crate::{Db, Entity, Result, StoreError, Timestamp};

/// How a payer proved who they are. Only a verified identity collects receipts
/// by identity; anyone may add a receipt they hold by possession.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityVerification {
    /// WeChat's real-name check matched the name and ID number (collects by ID
    /// number and name, and by a verified phone and name).
    WechatRealname,
    /// A phone number WeChat verified (collects by that phone and the name).
    Phone,
}

impl IdentityVerification {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityVerification::WechatRealname => "wechat_realname",
            IdentityVerification::Phone => "phone",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "wechat_realname" => Ok(IdentityVerification::WechatRealname),
            "phone" => Ok(IdentityVerification::Phone),
            other => Err(StoreError::Corrupt(format!("payer identity verification {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerRecord {
    pub id: Uuid,
    /// Name, ID type and number, phone: sealed JSON; `None` until registered.
    pub profile_sealed: Option<String>,
    pub phone_verified: bool,
    /// How the identity was verified, and when; `None`: possession only.
    pub identity_verified_via: Option<IdentityVerification>,
    pub identity_verified_at: Option<Timestamp>,
    pub consent_version: Option<String>,
    pub consent_at: Option<Timestamp>,
    /// Reimbursement reminders wanted.
    pub reminders: bool,
    pub registered_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
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
    /// What proved the identity (the caller checked it); `None` collects nothing.
    pub verified_via: Option<IdentityVerification>,
    pub consent_version: String,
    pub consent_at: Timestamp,
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
    pub expires_at: Timestamp,
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
    pub updated_at: Timestamp,
}

/// A subscribe-message channel a receipt arriving for a registered payer may be
/// announced through, in order of preference (the agency's own mini-program,
/// then the platform wallet).
#[derive(Debug, Clone)]
pub struct WalletChannel {
    /// `wechat_subscribe` or `wallet_subscribe`: the delivery's channel.
    pub kind: ChannelKind,
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
    pub issued_from: Option<Timestamp>,
    pub issued_before: Option<Timestamp>,
    pub bus_type: Option<String>,
    pub min_fen: Option<i64>,
    pub max_fen: Option<i64>,
    pub reversed: Option<bool>,
    pub reimbursement_state: Option<ReimbursementState>,
    /// Free text matched against agency and item names.
    pub text: Option<String>,
    /// Keyset cursor: entries strictly after (older than) this one.
    pub after: Option<(Timestamp, Uuid)>,
    pub limit: i64,
}

/// How a receipt came into a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalletSource {
    /// Matched by the payer's verified identity.
    Collected,
    /// Added by the payer, who proved to hold it (code, number and check code).
    Possession,
}

impl WalletSource {
    pub fn as_str(self) -> &'static str {
        match self {
            WalletSource::Collected => "collected",
            WalletSource::Possession => "possession",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "collected" => Ok(WalletSource::Collected),
            "possession" => Ok(WalletSource::Possession),
            other => Err(StoreError::Corrupt(format!("wallet entry source {other:?}"))),
        }
    }
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
    pub issued_at: Timestamp,
    pub total_fen: i64,
    pub reversed: bool,
    pub reimbursement_state: ReimbursementState,
    pub has_file: bool,
    pub source: WalletSource,
    pub tags: Vec<String>,
    pub added_at: Timestamp,
}

/// A receipt in a wallet, whole (its deliveries are not loaded).
#[derive(Debug, Clone)]
pub struct WalletDetail {
    pub receipt: StoredReceipt,
    pub agency_code: String,
    pub agency_name: String,
    pub source: WalletSource,
    pub tags: Vec<String>,
    pub note_sealed: Option<String>,
    pub added_at: Timestamp,
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
    pub at: Timestamp,
    pub detail: Option<serde_json::Value>,
}

/// The wallet's storage.
#[async_trait]
pub trait Wallets: Send + Sync {
    /// The payer behind a mini-program login: the one with this identity, else the
    /// one with this unionid (same person, another of our mini-programs), else a
    /// new one. Records the identity and the login time.
    async fn login_payer(&self, app_id: &str, openid: &str, unionid_index: Option<&str>) -> Result<LoginOutcome>;
    async fn payer(&self, id: Uuid) -> Result<Option<PayerRecord>>;
    /// The payer's openid in a mini-program (the one of the latest sign-in).
    async fn payer_openid(&self, payer_id: Uuid, app_id: &str) -> Result<Option<String>>;
    /// Registers or changes the profile, then (in the same transaction) collects
    /// every held receipt of a person whose verified identity matches (ID number and
    /// name after WeChat's real-name check, or a verified phone and name) and
    /// releases collected ones that no longer do.
    async fn register_payer(&self, payer_id: Uuid, registration: Registration) -> Result<RegisterOutcome>;
    async fn set_reminders(&self, payer_id: Uuid, enabled: bool) -> Result<PayerRecord>;
    /// Erases the payer: profile, identities, tokens, credits and wallet entries
    /// go, every delivery to the payer not yet made is cancelled (never sent), and
    /// an audit record stays. False when there was no such payer.
    async fn delete_payer(&self, payer_id: Uuid) -> Result<bool>;
    async fn payer_audit(&self, payer_id: Uuid) -> Result<Vec<AuditRecord>>;

    async fn insert_refresh_token(&self, token: NewRefreshToken) -> Result<()>;
    /// Uses the token whose hash is `presented` and stores `next` in its family;
    /// a token used before revokes its family instead.
    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next: NewRefreshToken,
        now: Timestamp,
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
}

const PAYER_COLUMNS: &str = "id, profile_sealed, phone_verified, identity_verified_via, identity_verified_at, \
     consent_version, consent_at, reminders, registered_at, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct PayerRow {
    id: Uuid,
    profile_sealed: Option<String>,
    phone_verified: bool,
    identity_verified_via: Option<String>,
    identity_verified_at: Option<Timestamp>,
    consent_version: Option<String>,
    consent_at: Option<Timestamp>,
    reminders: bool,
    registered_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl TryFrom<PayerRow> for PayerRecord {
    type Error = StoreError;

    fn try_from(r: PayerRow) -> Result<Self> {
        Ok(PayerRecord {
            identity_verified_via: r
                .identity_verified_via
                .as_deref()
                .map(IdentityVerification::parse)
                .transpose()?,
            identity_verified_at: r.identity_verified_at,
            id: r.id,
            profile_sealed: r.profile_sealed,
            phone_verified: r.phone_verified,
            consent_version: r.consent_version,
            consent_at: r.consent_at,
            reminders: r.reminders,
            registered_at: r.registered_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    family_id: Uuid,
    payer_id: Uuid,
    app_id: String,
    expires_at: Timestamp,
    used_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct CreditRow {
    app_id: String,
    template_id: String,
    remaining: i32,
    long_term: bool,
    updated_at: Timestamp,
}

/// Columns of a wallet page in the order of [`WalletItemRow`].
const WALLET_ITEM_COLUMNS: &str = "r.id AS receipt_id, a.code AS agency_code, a.name AS agency_name, \
     r.bill_batch_code, r.bill_no, r.bus_type, w.issued_at, r.total_fen, \
     (r.red_bill_no IS NOT NULL) AS reversed, r.reimbursement_state, (r.file IS NOT NULL) AS has_file, \
     w.source, w.tags, w.added_at";

#[derive(sqlx::FromRow)]
struct WalletItemRow {
    receipt_id: Uuid,
    agency_code: String,
    agency_name: String,
    bill_batch_code: String,
    bill_no: String,
    bus_type: String,
    issued_at: Timestamp,
    total_fen: i64,
    reversed: bool,
    reimbursement_state: String,
    has_file: bool,
    source: String,
    tags: sqlx::types::Json<Vec<String>>,
    added_at: Timestamp,
}

impl TryFrom<WalletItemRow> for WalletItem {
    type Error = StoreError;

    fn try_from(r: WalletItemRow) -> Result<Self> {
        Ok(WalletItem {
            reimbursement_state: ReimbursementState::parse(&r.reimbursement_state)
                .ok_or_else(|| StoreError::Corrupt(format!("receipt {}: reimbursement state", r.receipt_id)))?,
            source: WalletSource::parse(&r.source)?,
            receipt_id: r.receipt_id,
            agency_code: r.agency_code,
            agency_name: r.agency_name,
            bill_batch_code: r.bill_batch_code,
            bill_no: r.bill_no,
            bus_type: r.bus_type,
            issued_at: r.issued_at,
            total_fen: r.total_fen,
            reversed: r.reversed,
            has_file: r.has_file,
            tags: r.tags.0,
            added_at: r.added_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct WalletEntryRow {
    agency_code: String,
    agency_name: String,
    source: String,
    tags: sqlx::types::Json<Vec<String>>,
    note_sealed: Option<String>,
    added_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: Uuid,
    payer_id: Uuid,
    event: String,
    at: Timestamp,
    detail: Option<sqlx::types::Json<serde_json::Value>>,
}

/// `LIKE` pattern for free text: `%`, `_` and `\` match themselves.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// A key for serialising the matching of one identity (PostgreSQL advisory lock):
/// registration and receipt arrival take the same keys, so neither misses the
/// other. FNV-1a; a collision only serialises two unrelated transactions.
fn identity_lock_key(domain: &str, index: &str, name_index: &str) -> i64 {
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

/// The lock keys of an identity: ID number + name, phone + name.
fn identity_lock_keys(id_index: Option<&str>, phone_index: Option<&str>, name_index: &str) -> Vec<i64> {
    let mut keys: Vec<i64> = id_index
        .map(|i| identity_lock_key("id", i, name_index))
        .into_iter()
        .chain(phone_index.map(|p| identity_lock_key("phone", p, name_index)))
        .collect();
    // One order everywhere, so two transactions never wait on each other in a cycle.
    keys.sort_unstable();
    keys
}

/// The identity locks a just-pushed receipt needs before it is matched to payers:
/// none unless it is a person's with a name and an ID number or phone.
pub(crate) fn receipt_lock_keys(r: &NewReceiptRecord) -> Vec<i64> {
    match (r.payer_name_index.as_deref(), r.payer_type) {
        (Some(name_index), PayerType::Person) => {
            identity_lock_keys(r.payer_id_index.as_deref(), r.payer_phone_index.as_deref(), name_index)
        }
        _ => Vec::new(),
    }
}

/// Of a just-inserted receipt of a person, what matching it to payers needs:
/// its name index and an ID number or phone index; `None` for anyone else's.
fn matchable(r: &NewReceiptRecord) -> Option<&str> {
    match (r.payer_name_index.as_deref(), r.payer_type) {
        (Some(name_index), PayerType::Person) if r.payer_id_index.is_some() || r.payer_phone_index.is_some() => {
            Some(name_index)
        }
        _ => None,
    }
}

/// The registered payers each just-inserted receipt of a person matches (ID
/// number and name of a payer WeChat's real-name check verified, or a verified
/// phone and name), in one statement for the whole batch: receipt id to payer
/// ids, in payer order. The transaction must hold the receipts'
/// [`receipt_lock_keys`], so every registration that matches has committed.
pub(crate) async fn verified_payers_of<D: Dialect>(
    conn: &mut D::Conn,
    receipts: &[&NewReceiptRecord],
) -> Result<std::collections::HashMap<Uuid, Vec<Uuid>>> {
    let wanted: Vec<(&NewReceiptRecord, &str)> = receipts
        .iter()
        .filter_map(|r| matchable(r).map(|name| (*r, name)))
        .collect();
    let mut out: std::collections::HashMap<Uuid, Vec<Uuid>> = std::collections::HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let sql = match D::BACKEND {
        crate::Backend::Postgres => Sql::new(VERIFIED_PAYERS_PG)
            .bind(wanted.iter().map(|(r, _)| r.id).collect::<Vec<_>>())
            .bind(wanted.iter().map(|(r, _)| r.payer_id_index.clone()).collect::<Vec<_>>())
            .bind(wanted.iter().map(|(_, n)| Some((*n).to_owned())).collect::<Vec<_>>())
            .bind(
                wanted
                    .iter()
                    .map(|(r, _)| r.payer_phone_index.clone())
                    .collect::<Vec<_>>(),
            ),
        crate::Backend::Sqlite => {
            let mut sql = Sql::new("");
            push_sqlite_identities(
                &mut sql,
                wanted
                    .iter()
                    .map(|(r, name)| (r.id, &r.payer_id_index, *name, &r.payer_phone_index)),
            );
            sql
        }
    };
    let found: Vec<(Uuid, Uuid)> = sql.fetch_all(&mut *conn).await?;
    for (receipt, payer) in found {
        out.entry(receipt).or_default().push(payer);
    }
    Ok(out)
}

/// Collects a just-inserted receipt of a person into the wallets of the
/// registered payers it matches ([`verified_payers_of`]), and plans the subscribe
/// message each is owed: the first of `r.wallet_channels` where the payer has an
/// identity and a consent left (one-time consents are used up here, in the same
/// transaction).
pub(crate) async fn collect_for_payers<D: Dialect>(
    conn: &mut D::Conn,
    r: &NewReceiptRecord,
    payers: &[Uuid],
    planned: &[NewDelivery],
    now: Timestamp,
) -> Result<Vec<NewDelivery>> {
    let mut out: Vec<NewDelivery> = Vec::new();
    for &payer in payers {
        Sql::new(
            "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
             VALUES ($1, $2, $3, $4, 'collected', '[]', $5) ON CONFLICT (payer_id, receipt_id) DO NOTHING",
        )
        .bind(payer)
        .bind(r.id)
        .bind(r.agency_id)
        .bind(r.issued_at)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        for channel in &r.wallet_channels {
            let Some(openid) = spend_subscribe_credit(
                &mut *conn,
                payer,
                &channel.app_id,
                &channel.template_id,
                channel.long_term,
                now,
            )
            .await?
            else {
                continue;
            };
            // The issuer's push may already address this openid on this channel.
            let already = planned
                .iter()
                .chain(out.iter())
                .any(|d| d.channel == channel.kind && d.target == openid);
            if !already {
                out.push(NewDelivery {
                    id: Uuid::now_v7(),
                    event: DeliveryEvent::Issued,
                    channel: channel.kind,
                    target: openid,
                    interface: channel.interface.clone(),
                    // A wallet message has no fallback channel: the other channels
                    // know this payer under other openids.
                    payload: Some(serde_json::json!({
                        "tried": ChannelKind::ALL
                            .iter()
                            .filter(|k| k.is_wechat())
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>(),
                        "wallet": true,
                    })),
                });
            }
            break;
        }
    }
    Ok(out)
}

/// The openid a payer's subscribe message of `template_id` through `app_id` goes
/// to, with the consent it spends (a long-term template the payer agreed to
/// spends none); `None` when the payer has no identity there or no consent left.
pub(crate) async fn spend_subscribe_credit<C: Conn + ?Sized>(
    conn: &mut C,
    payer_id: Uuid,
    app_id: &str,
    template_id: &str,
    long_term_template: bool,
    now: Timestamp,
) -> Result<Option<String>> {
    let identity: Option<(String, Option<i32>, Option<bool>)> = Sql::new(
        "SELECT i.openid, c.remaining, c.long_term FROM payer_identities i \
         LEFT JOIN subscription_credits c ON c.payer_id = i.payer_id AND c.app_id = i.app_id \
         AND c.template_id = $3 WHERE i.payer_id = $1 AND i.app_id = $2 \
         ORDER BY i.last_login_at DESC LIMIT 1",
    )
    .bind(payer_id)
    .bind(app_id)
    .bind(template_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((openid, remaining, long_term)) = identity else {
        return Ok(None);
    };
    let owed = if long_term_template && long_term == Some(true) {
        true
    } else if remaining.unwrap_or(0) > 0 {
        Sql::new(
            "UPDATE subscription_credits SET remaining = remaining - 1, updated_at = $4 \
             WHERE payer_id = $1 AND app_id = $2 AND template_id = $3 AND remaining > 0",
        )
        .bind(payer_id)
        .bind(app_id)
        .bind(template_id)
        .bind(now)
        .execute(&mut *conn)
        .await?
            == 1
    } else {
        false
    };
    Ok(owed.then_some(openid))
}

async fn load_payer<C: Conn + ?Sized>(conn: &mut C, id: Uuid) -> Result<Option<PayerRecord>> {
    let row: Option<PayerRow> = Sql::new(concatcp!("SELECT ", PAYER_COLUMNS, " FROM payers WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(PayerRecord::try_from).transpose()
}

async fn insert_audit<C: Conn + ?Sized>(
    conn: &mut C,
    payer_id: Uuid,
    event: &str,
    detail: serde_json::Value,
    now: Timestamp,
) -> Result<()> {
    Sql::new("INSERT INTO payer_audit (id, payer_id, event, at, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(Uuid::now_v7())
        .bind(payer_id)
        .bind(event)
        .bind(now)
        .bind(Json(detail))
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes payers `a` (signed in by openid) and `b` (holding the unionid `unionid`)
/// one: the one without a registration is absorbed into the other (its WeChat
/// identities, wallet, subscribe consents, sessions, tokens and claims move; its
/// record goes, an audit record on both stays). Two registered payers stay apart:
/// each registration holds its own verified identity, which a unionid alone does
/// not merge. Returns the payer that remains, or None when both stay.
async fn merge_payers<D: Dialect>(
    conn: &mut D::Conn,
    a: Uuid,
    b: Uuid,
    unionid: &str,
    now: Timestamp,
) -> Result<Option<Uuid>> {
    // Both rows locked in one order (PostgreSQL): a push collecting into the
    // absorbed payer either commits first (and its entry is moved below) or
    // waits and then fails its foreign key, and the issuer's retry finds the
    // identity already moved. Nothing collected is dropped by the delete.
    const LOCK: &str = "SELECT id, registered_at FROM payers WHERE id IN ($1, $2) ORDER BY id";
    let rows: Vec<(Uuid, Option<Timestamp>)> = Sql::new(D::row_lock(LOCK, concatcp!(LOCK, " FOR UPDATE")))
        .bind(a)
        .bind(b)
        .fetch_all(&mut *conn)
        .await?;
    let registered = |id: Uuid| rows.iter().any(|(r, at)| *r == id && at.is_some());
    if rows.len() != 2 {
        // The other one was merged or erased meanwhile: the caller retries.
        return Err(StoreError::Conflict("payer_merge"));
    }
    let (from, into) = match (registered(a), registered(b)) {
        (false, _) => (a, b),
        (true, false) => (b, a),
        (true, true) => {
            tracing::warn!(kept = %a, other = %b, "two registered payers share a unionid: not merged");
            return Ok(None);
        }
    };
    let (entries,): (i64,) = Sql::new("SELECT count(*) FROM wallet_entries WHERE payer_id = $1")
        .bind(from)
        .fetch_one(&mut *conn)
        .await?;
    for sql in [
        "UPDATE payer_identities SET payer_id = $2 WHERE payer_id = $1",
        // A receipt in both wallets keeps the surviving payer's entry (its tags,
        // note, or removal).
        "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, note_sealed, \
         added_at, removed_at) SELECT $2, receipt_id, agency_id, issued_at, source, tags, note_sealed, added_at, \
         removed_at FROM wallet_entries WHERE payer_id = $1 ON CONFLICT (payer_id, receipt_id) DO NOTHING",
        "DELETE FROM wallet_entries WHERE payer_id = $1",
        "INSERT INTO subscription_credits (payer_id, app_id, template_id, remaining, long_term, updated_at) \
         SELECT $2, app_id, template_id, remaining, long_term, updated_at FROM subscription_credits \
         WHERE payer_id = $1 ON CONFLICT (payer_id, app_id, template_id) DO UPDATE SET \
         remaining = subscription_credits.remaining + excluded.remaining, \
         long_term = subscription_credits.long_term OR excluded.long_term",
        "DELETE FROM subscription_credits WHERE payer_id = $1",
        "UPDATE refresh_tokens SET payer_id = $2 WHERE payer_id = $1",
        "UPDATE web_sessions SET payer_id = $2 WHERE payer_id = $1",
        "UPDATE claims SET payer_id = $2 WHERE payer_id = $1",
        "DELETE FROM payers WHERE id = $1",
    ] {
        Sql::new(sql).bind(from).bind(into).execute(&mut *conn).await?;
    }
    // The absorbed one may have held the unionid.
    Sql::new("UPDATE payers SET unionid_index = $2, updated_at = $3 WHERE id = $1 AND unionid_index IS NULL")
        .bind(into)
        .bind(unionid)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let detail = |other: Uuid| serde_json::json!({ "other": other, "walletEntries": entries, "by": "unionid" });
    insert_audit(&mut *conn, from, "merged_into", detail(into), now).await?;
    insert_audit(&mut *conn, into, "merged_from", detail(from), now).await?;
    Ok(Some(into))
}

const INSERT_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens (id, family_id, payer_id, app_id, token_hash, \
     created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Appends the condition naming one visible entry of the payer's wallet to an
/// `UPDATE wallet_entries` (the scope filters on `w.agency_id`: a subquery gives it
/// that alias).
fn push_entry<'a>(sql: &mut Sql<'a>, payer_id: Uuid, receipt_id: Uuid, scope: Option<&'a [Uuid]>) {
    sql.push(" WHERE payer_id = ")
        .push_bind(payer_id)
        .push(" AND receipt_id = ")
        .push_bind(receipt_id)
        .push(
            " AND removed_at IS NULL AND receipt_id IN (SELECT w.receipt_id FROM wallet_entries w WHERE w.payer_id = ",
        )
        .push_bind(payer_id);
    push_scope(sql, scope);
    sql.push(")");
}

/// A registered payer `p` whose verified identity a new receipt names (its id
/// index `u.id_index`, name index `u.name_index`, phone index `u.phone_index`). Each
/// side of the OR must match its partial index's WHERE as written, or SQLite
/// scans every payer (and every openid pushed makes one): `phone_verified = 1`
/// there, plain `phone_verified` on PostgreSQL.
const fn payer_match(backend: crate::Backend) -> &'static str {
    const FIND: &str = "p.registered_at IS NOT NULL AND p.name_index = u.name_index \
         AND ((p.identity_verified_via = 'wechat_realname' AND p.id_index = u.id_index) OR (";
    match backend {
        crate::Backend::Sqlite => concatcp!(FIND, "p.phone_verified = 1 AND p.phone_index = u.phone_index))"),
        crate::Backend::Postgres => concatcp!(FIND, "p.phone_verified AND p.phone_index = u.phone_index))"),
    }
}

/// PostgreSQL's [`verified_payers_of`]. OFFSET 0 keeps the lookup per receipt:
/// the prepared statement's generic plan would otherwise hash-join a scan of every
/// payer (every openid pushed makes one), 1.5 ms a batch at 25,000 payers.
const VERIFIED_PAYERS_PG: &str = concatcp!(
    "SELECT u.receipt_id, p.id FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) \
     AS u (receipt_id, id_index, name_index, phone_index) CROSS JOIN LATERAL (SELECT p.id FROM payers p WHERE ",
    payer_match(crate::Backend::Postgres),
    " OFFSET 0) AS p ORDER BY u.receipt_id, p.id"
);

/// SQLite's [`verified_payers_of`]: the receipts' identities as a `VALUES` list,
/// each looked up in the payers' indexes.
fn push_sqlite_identities<'a>(
    sql: &mut Sql<'a>,
    identities: impl Iterator<Item = (Uuid, &'a Option<String>, &'a str, &'a Option<String>)>,
) {
    sql.push("WITH u (receipt_id, id_index, name_index, phone_index) AS (VALUES ");
    for (i, (receipt, id_index, name, phone_index)) in identities.enumerate() {
        sql.push(if i == 0 { "(" } else { ", (" });
        sql.push_bind(receipt).push(", ").push_bind(id_index).push(", ");
        sql.push_bind(name).push(", ").push_bind(phone_index).push(")");
    }
    sql.push(") SELECT u.receipt_id, p.id FROM u JOIN payers p ON ")
        .push(payer_match(crate::Backend::Sqlite))
        .push(" ORDER BY u.receipt_id, p.id")
        .prepared();
}

/// Appends `AND w.agency_id IN (…)` for an agency mini-program's scope.
fn push_scope<'a>(sql: &mut Sql<'a>, scope: Option<&'a [Uuid]>) {
    if let Some(scope) = scope {
        sql.push(" AND w.agency_id IN ").push_list(scope.iter().copied());
    }
}

/// The receipts of a person matching a payer's verified identity. Parameters: id
/// index, name index, phone verified, phone index, real name verified ($2 to $6;
/// $1 is the payer).
const MATCHING_RECEIPTS: &str = "SELECT r.id FROM receipts r WHERE r.payer_type = '1' AND r.payer_name_index = $3 \
     AND (($6 = true AND r.payer_id_index = $2) OR ($4 = true AND r.payer_phone_index = $5))";

/// Collects matching receipts into the wallet of payer $1 (now: $7).
const COLLECT: &str = concatcp!(
    "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
     SELECT $1, r.id, r.agency_id, r.issued_at, 'collected', '[]', $7 FROM receipts r WHERE r.id IN (",
    MATCHING_RECEIPTS,
    ") ON CONFLICT (payer_id, receipt_id) DO NOTHING"
);

/// Releases collected (not removed) entries of payer $1 that no longer match.
const RELEASE: &str = concatcp!(
    "DELETE FROM wallet_entries WHERE payer_id = $1 AND source = 'collected' AND removed_at IS NULL \
     AND receipt_id NOT IN (",
    MATCHING_RECEIPTS,
    ")"
);

impl<D: Dialect> Db<D> {
    async fn login_once(&self, app_id: &str, openid: &str, unionid_index: Option<&str>) -> Result<LoginOutcome> {
        const FIND: &str = "SELECT payer_id FROM payer_identities WHERE app_id = $1 AND openid = $2";
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let existing: Option<(Uuid,)> = Sql::new(D::row_lock(FIND, concatcp!(FIND, " FOR UPDATE")))
            .bind(app_id)
            .bind(openid)
            .fetch_optional(tx.conn())
            .await?;
        let (payer_id, created) = match existing {
            Some((id,)) => {
                Sql::new("UPDATE payer_identities SET last_login_at = $3 WHERE app_id = $1 AND openid = $2")
                    .bind(app_id)
                    .bind(openid)
                    .bind(now)
                    .execute(tx.conn())
                    .await?;
                (id, false)
            }
            None => {
                let by_union: Option<(Uuid,)> = match unionid_index {
                    Some(u) => {
                        Sql::new("SELECT id FROM payers WHERE unionid_index = $1")
                            .bind(u)
                            .fetch_optional(tx.conn())
                            .await?
                    }
                    None => None,
                };
                let (id, created) = match by_union {
                    Some((id,)) => (id, false),
                    None => {
                        let id = Uuid::now_v7();
                        Sql::new(
                            "INSERT INTO payers (id, unionid_index, created_at, updated_at) VALUES ($1, $2, $3, $3)",
                        )
                        .bind(id)
                        .bind(unionid_index)
                        .bind(now)
                        .execute(tx.conn())
                        .await
                        .map_err(|e| write_error(e, "payer_unionid"))?;
                        (id, true)
                    }
                };
                Sql::new(
                    "INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
                     VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(app_id)
                .bind(openid)
                .bind(id)
                .bind(now)
                .execute(tx.conn())
                .await
                .map_err(|e| write_error(e, "payer_identity"))?;
                (id, created)
            }
        };
        let mut payer_id = payer_id;
        if let Some(u) = unionid_index {
            let holder: Option<(Uuid,)> = Sql::new("SELECT id FROM payers WHERE unionid_index = $1")
                .bind(u)
                .fetch_optional(tx.conn())
                .await?;
            match holder {
                // A payer first seen without a unionid learns it now.
                None => {
                    Sql::new("UPDATE payers SET unionid_index = $2 WHERE id = $1 AND unionid_index IS NULL")
                        .bind(payer_id)
                        .bind(u)
                        .execute(tx.conn())
                        .await
                        .map_err(|e| write_error(e, "payer_unionid"))?;
                }
                Some((holder,)) if holder == payer_id => {}
                // One WeChat user, two payer records: one first seen by this
                // openid (an official account's push or page, before any unionid
                // was known), the other by the unionid (a mini-program sign-in).
                Some((holder,)) => {
                    if let Some(kept) = merge_payers::<D>(tx.conn(), payer_id, holder, u, now).await? {
                        payer_id = kept;
                    }
                }
            }
        }
        let payer = written(load_payer(tx.conn(), payer_id).await?, "payer")?;
        tx.commit().await?;
        Ok(LoginOutcome { payer, created })
    }

    /// Runs one change of a wallet entry in a write transaction; true when it changed a row.
    async fn change_entry(&self, change: Sql<'_>) -> Result<bool> {
        let mut tx = self.d.write().await?;
        let changed = change.execute(tx.conn()).await? == 1;
        tx.commit().await?;
        Ok(changed)
    }
}

#[async_trait]
impl<D: Dialect> Wallets for Db<D> {
    async fn login_payer(&self, app_id: &str, openid: &str, unionid_index: Option<&str>) -> Result<LoginOutcome> {
        // Two first logins of one person race on the identity or unionid key: the
        // loser retries and finds the winner's payer.
        let mut tries = 0;
        loop {
            match self.login_once(app_id, openid, unionid_index).await {
                Err(StoreError::Conflict(_)) if tries < 2 => tries += 1,
                other => return other,
            }
        }
    }

    async fn payer(&self, id: Uuid) -> Result<Option<PayerRecord>> {
        load_payer(&mut *self.d.read().await?, id).await
    }

    async fn payer_openid(&self, payer_id: Uuid, app_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = Sql::new(
            "SELECT openid FROM payer_identities WHERE payer_id = $1 AND app_id = $2 \
             ORDER BY last_login_at DESC LIMIT 1",
        )
        .bind(payer_id)
        .bind(app_id)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        Ok(row.map(|(openid,)| openid))
    }

    async fn register_payer(&self, payer_id: Uuid, reg: Registration) -> Result<RegisterOutcome> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let before = load_payer(tx.conn(), payer_id)
            .await?
            .ok_or(StoreError::NotFound(Entity::Payer))?;
        let keys = identity_lock_keys(
            Some(&reg.id_index),
            reg.phone_index.as_deref().filter(|_| reg.phone_verified),
            &reg.name_index,
        );
        D::lock_identities(tx.conn(), &keys).await?;
        Sql::new(
            "UPDATE payers SET profile_sealed = $2, id_index = $3, name_index = $4, phone_index = $5, \
             phone_verified = $6, consent_version = $7, consent_at = $8, \
             registered_at = COALESCE(registered_at, $9), updated_at = $9, identity_verified_via = $10, \
             identity_verified_at = CASE WHEN $10 IS NULL THEN NULL ELSE $9 END WHERE id = $1",
        )
        .bind(payer_id)
        .bind(&reg.profile_sealed)
        .bind(&reg.id_index)
        .bind(&reg.name_index)
        .bind(&reg.phone_index)
        .bind(reg.phone_verified)
        .bind(&reg.consent_version)
        .bind(reg.consent_at)
        .bind(now)
        .bind(reg.verified_via.map(IdentityVerification::as_str))
        .execute(tx.conn())
        .await?;
        let real_name = reg.verified_via == Some(IdentityVerification::WechatRealname);
        let matching = |sql: &'static str| {
            Sql::new(sql)
                .bind(payer_id)
                .bind(&reg.id_index)
                .bind(&reg.name_index)
                .bind(reg.phone_verified)
                .bind(&reg.phone_index)
                .bind(real_name)
        };
        let released = matching(RELEASE).execute(tx.conn()).await?;
        let collected = matching(COLLECT).bind(now).execute(tx.conn()).await?;
        let event = if before.registered_at.is_none() {
            "registered"
        } else {
            "profile_changed"
        };
        let detail = serde_json::json!({
            "collected": collected,
            "released": released,
            "consentVersion": reg.consent_version,
            "verifiedVia": reg.verified_via.map(IdentityVerification::as_str),
        });
        insert_audit(tx.conn(), payer_id, event, detail, now).await?;
        let payer = load_payer(tx.conn(), payer_id)
            .await?
            .ok_or(StoreError::NotFound(Entity::Payer))?;
        tx.commit().await?;
        Ok(RegisterOutcome {
            payer,
            collected,
            released,
        })
    }

    async fn set_reminders(&self, payer_id: Uuid, enabled: bool) -> Result<PayerRecord> {
        let mut tx = self.d.write().await?;
        let changed = Sql::new("UPDATE payers SET reminders = $2, updated_at = $3 WHERE id = $1")
            .bind(payer_id)
            .bind(enabled)
            .bind(Timestamp::now())
            .execute(tx.conn())
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound(Entity::Payer));
        }
        let payer = written(load_payer(tx.conn(), payer_id).await?, "payer")?;
        tx.commit().await?;
        Ok(payer)
    }

    async fn delete_payer(&self, payer_id: Uuid) -> Result<bool> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let (entries,): (i64,) = Sql::new("SELECT count(*) FROM wallet_entries WHERE payer_id = $1")
            .bind(payer_id)
            .fetch_one(tx.conn())
            .await?;
        // Nothing is sent to the payer afterwards, whatever its state (a parked or
        // failed delivery could be re-driven): cancelled, and kept as a record.
        let cancelled = Sql::new(
            "UPDATE deliveries SET status = 'cancelled', last_error = 'the payer erased their account', \
             lease_owner = NULL, lease_until = NULL, updated_at = $2 \
             WHERE status IN ('pending', 'parked', 'failed') \
             AND channel IN ('wechat_template', 'wechat_subscribe', 'wallet_subscribe') \
             AND target IN (SELECT openid FROM payer_identities WHERE payer_id = $1)",
        )
        .bind(payer_id)
        .bind(now)
        .execute(tx.conn())
        .await?;
        crate::claims::erase_payer_claims::<D>(tx.conn(), payer_id, now).await?;
        // Children first: SQLite's cascade needs foreign keys switched on per
        // connection, so nothing here relies on it.
        for sql in [
            "DELETE FROM wallet_entries WHERE payer_id = $1",
            "DELETE FROM subscription_credits WHERE payer_id = $1",
            "DELETE FROM refresh_tokens WHERE payer_id = $1",
            "DELETE FROM web_sessions WHERE payer_id = $1",
            "DELETE FROM payer_identities WHERE payer_id = $1",
        ] {
            Sql::new(sql).bind(payer_id).execute(tx.conn()).await?;
        }
        let deleted = Sql::new("DELETE FROM payers WHERE id = $1")
            .bind(payer_id)
            .execute(tx.conn())
            .await?;
        if deleted == 0 {
            return Ok(false);
        }
        insert_audit(
            tx.conn(),
            payer_id,
            "deleted",
            serde_json::json!({ "walletEntries": entries, "cancelledDeliveries": cancelled }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn payer_audit(&self, payer_id: Uuid) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> =
            Sql::new("SELECT id, payer_id, event, at, detail FROM payer_audit WHERE payer_id = $1 ORDER BY at, id")
                .bind(payer_id)
                .fetch_all(&mut *self.d.read().await?)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRecord {
                id: r.id,
                payer_id: r.payer_id,
                event: r.event,
                at: r.at,
                detail: r.detail.map(|d| d.0),
            })
            .collect())
    }

    async fn insert_refresh_token(&self, t: NewRefreshToken) -> Result<()> {
        Sql::new(INSERT_REFRESH_TOKEN)
            .bind(t.id)
            .bind(t.family_id)
            .bind(t.payer_id)
            .bind(&t.app_id)
            .bind(&t.token_hash)
            .bind(Timestamp::now())
            .bind(t.expires_at)
            .execute(&mut *self.d.writer().await?)
            .await
            .map_err(|e| write_error(e, "refresh_token"))?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next: NewRefreshToken,
        now: Timestamp,
    ) -> Result<RefreshOutcome> {
        const FIND: &str = "SELECT family_id, payer_id, app_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = $1";
        let mut tx = self.d.write().await?;
        let row: Option<RefreshRow> = Sql::new(D::row_lock(FIND, concatcp!(FIND, " FOR UPDATE")))
            .bind(presented)
            .fetch_optional(tx.conn())
            .await?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Unknown);
        };
        if row.revoked_at.is_some() {
            return Ok(RefreshOutcome::Revoked);
        }
        if row.used_at.is_some() {
            Sql::new("UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL")
                .bind(row.family_id)
                .bind(now)
                .execute(tx.conn())
                .await?;
            let detail = serde_json::json!({ "family": row.family_id });
            insert_audit(tx.conn(), row.payer_id, "refresh_token_reused", detail, now).await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused {
                payer_id: row.payer_id,
                family_id: row.family_id,
            });
        }
        if row.expires_at <= now {
            return Ok(RefreshOutcome::Expired);
        }
        Sql::new("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1")
            .bind(presented)
            .bind(now)
            .execute(tx.conn())
            .await?;
        Sql::new(INSERT_REFRESH_TOKEN)
            .bind(next.id)
            .bind(row.family_id)
            .bind(row.payer_id)
            .bind(&row.app_id)
            .bind(&next.token_hash)
            .bind(now)
            .bind(next.expires_at)
            .execute(tx.conn())
            .await
            .map_err(|e| write_error(e, "refresh_token"))?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated {
            payer_id: row.payer_id,
            app_id: row.app_id,
        })
    }

    async fn revoke_refresh_family(&self, payer_id: Uuid, presented: &str) -> Result<bool> {
        let revoked = Sql::new(
            "UPDATE refresh_tokens SET revoked_at = $3 WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND payer_id = $2)",
        )
        .bind(presented)
        .bind(payer_id)
        .bind(Timestamp::now())
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(revoked > 0)
    }

    async fn record_subscriptions(&self, payer_id: Uuid, app_id: &str, reports: &[SubscriptionReport]) -> Result<()> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        for r in reports {
            // Accepting a one-time template adds one message (WeChat keeps at most a
            // few per template; we cap generously); a long-term one is accepted until
            // refused. Refusing drops what is left.
            let sql = match (r.choice, r.long_term) {
                (SubscriptionChoice::Accept, false) => {
                    "INSERT INTO subscription_credits (payer_id, app_id, template_id, remaining, long_term, \
                     updated_at) VALUES ($1, $2, $3, 1, false, $4) \
                     ON CONFLICT (payer_id, app_id, template_id) DO UPDATE SET \
                     remaining = CASE WHEN subscription_credits.remaining < 100 \
                     THEN subscription_credits.remaining + 1 ELSE 100 END, updated_at = $4"
                }
                (SubscriptionChoice::Accept, true) => {
                    "INSERT INTO subscription_credits (payer_id, app_id, template_id, remaining, long_term, \
                     updated_at) VALUES ($1, $2, $3, 0, true, $4) \
                     ON CONFLICT (payer_id, app_id, template_id) DO UPDATE SET long_term = true, updated_at = $4"
                }
                (SubscriptionChoice::Reject | SubscriptionChoice::Ban, _) => {
                    "INSERT INTO subscription_credits (payer_id, app_id, template_id, remaining, long_term, \
                     updated_at) VALUES ($1, $2, $3, 0, false, $4) \
                     ON CONFLICT (payer_id, app_id, template_id) DO UPDATE SET \
                     remaining = 0, long_term = false, updated_at = $4"
                }
            };
            Sql::new(sql)
                .bind(payer_id)
                .bind(app_id)
                .bind(&r.template_id)
                .bind(now)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await
    }

    async fn subscription_credits(&self, payer_id: Uuid) -> Result<Vec<SubscriptionCredit>> {
        let rows: Vec<CreditRow> = Sql::new(
            "SELECT app_id, template_id, remaining, long_term, updated_at FROM subscription_credits \
             WHERE payer_id = $1 ORDER BY app_id, template_id",
        )
        .bind(payer_id)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SubscriptionCredit {
                app_id: r.app_id,
                template_id: r.template_id,
                remaining: r.remaining,
                long_term: r.long_term,
                updated_at: r.updated_at,
            })
            .collect())
    }

    async fn wallet_page(&self, q: &WalletQuery) -> Result<Vec<WalletItem>> {
        let mut sql = Sql::new(concatcp!(
            "SELECT ",
            WALLET_ITEM_COLUMNS,
            " FROM wallet_entries w JOIN receipts r ON r.id = w.receipt_id \
             JOIN agencies a ON a.id = r.agency_id WHERE w.payer_id = "
        ));
        sql.push_bind(q.payer_id).push(" AND w.removed_at IS NULL");
        push_scope(&mut sql, q.scope.as_deref());
        if let Some(code) = &q.agency_code {
            sql.push(" AND a.code = ").push_bind(code);
        }
        if let Some(t) = q.issued_from {
            sql.push(" AND w.issued_at >= ").push_bind(t);
        }
        if let Some(t) = q.issued_before {
            sql.push(" AND w.issued_at < ").push_bind(t);
        }
        if let Some(b) = &q.bus_type {
            sql.push(" AND r.bus_type = ").push_bind(b);
        }
        if let Some(v) = q.min_fen {
            sql.push(" AND r.total_fen >= ").push_bind(v);
        }
        if let Some(v) = q.max_fen {
            sql.push(" AND r.total_fen <= ").push_bind(v);
        }
        match q.reversed {
            Some(true) => {
                sql.push(" AND r.red_bill_no IS NOT NULL");
            }
            Some(false) => {
                sql.push(" AND r.red_bill_no IS NULL");
            }
            None => {}
        }
        if let Some(s) = q.reimbursement_state {
            sql.push(" AND r.reimbursement_state = ").push_bind(s.as_str());
        }
        if let Some(text) = &q.text {
            let pattern = like_pattern(text);
            sql.push(" AND (lower(a.name) LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR lower(COALESCE(r.search_text, '')) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        if let Some((at, id)) = q.after {
            sql.push(" AND (w.issued_at, w.receipt_id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        sql.push(" ORDER BY w.issued_at DESC, w.receipt_id DESC LIMIT ")
            .push_bind(q.limit);
        let rows: Vec<WalletItemRow> = sql.fetch_all(&mut *self.d.read().await?).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn wallet_receipt(
        &self,
        payer_id: Uuid,
        receipt_id: Uuid,
        scope: Option<&[Uuid]>,
    ) -> Result<Option<WalletDetail>> {
        let mut sql = Sql::new(
            "SELECT a.code AS agency_code, a.name AS agency_name, w.source, w.tags, w.note_sealed, w.added_at \
             FROM wallet_entries w JOIN agencies a ON a.id = w.agency_id WHERE w.payer_id = ",
        );
        sql.push_bind(payer_id)
            .push(" AND w.receipt_id = ")
            .push_bind(receipt_id)
            .push(" AND w.removed_at IS NULL");
        push_scope(&mut sql, scope);
        let mut conn = self.d.read().await?;
        let entry: Option<WalletEntryRow> = sql.fetch_optional(&mut *conn).await?;
        let Some(entry) = entry else { return Ok(None) };
        let row: Option<ReceiptRow> = Sql::new(concatcp!("SELECT ", RECEIPT_COLUMNS, " FROM receipts WHERE id = $1"))
            .bind(receipt_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(WalletDetail {
            receipt: row.into_receipt(Vec::new())?,
            agency_code: entry.agency_code,
            agency_name: entry.agency_name,
            source: WalletSource::parse(&entry.source)?,
            tags: entry.tags.0,
            note_sealed: entry.note_sealed,
            added_at: entry.added_at,
        }))
    }

    async fn add_to_wallet(&self, payer_id: Uuid, receipt_id: Uuid) -> Result<WalletAdd> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let inserted = Sql::new(
            "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
             SELECT $1, r.id, r.agency_id, r.issued_at, 'possession', '[]', $3 FROM receipts r \
             WHERE r.id = $2 ON CONFLICT (payer_id, receipt_id) DO NOTHING",
        )
        .bind(payer_id)
        .bind(receipt_id)
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "wallet_entry"))?;
        let outcome = if inserted == 1 {
            WalletAdd::Added
        } else {
            let restored = Sql::new(
                "UPDATE wallet_entries SET removed_at = NULL, source = 'possession', added_at = $3 \
                 WHERE payer_id = $1 AND receipt_id = $2 AND removed_at IS NOT NULL",
            )
            .bind(payer_id)
            .bind(receipt_id)
            .bind(now)
            .execute(tx.conn())
            .await?;
            if restored == 1 {
                WalletAdd::Added
            } else {
                WalletAdd::AlreadyThere
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn remove_from_wallet(&self, payer_id: Uuid, receipt_id: Uuid, scope: Option<&[Uuid]>) -> Result<bool> {
        let mut sql = Sql::new("UPDATE wallet_entries SET removed_at = ");
        sql.push_bind(Timestamp::now());
        push_entry(&mut sql, payer_id, receipt_id, scope);
        self.change_entry(sql).await
    }

    async fn annotate_wallet_entry(
        &self,
        payer_id: Uuid,
        receipt_id: Uuid,
        scope: Option<&[Uuid]>,
        annotation: WalletAnnotation,
    ) -> Result<bool> {
        let mut sql = Sql::new("UPDATE wallet_entries SET payer_id = payer_id");
        if let Some(tags) = annotation.tags {
            sql.push(", tags = ").push_bind(Json(tags));
        }
        if let Some(note) = annotation.note_sealed {
            sql.push(", note_sealed = ").push_bind(note);
        }
        push_entry(&mut sql, payer_id, receipt_id, scope);
        self.change_entry(sql).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("50%_Ab"), "%50\\%\\_ab%");
        assert_eq!(like_pattern("血常规"), "%血常规%");
    }

    /// A batch's lookups on PostgreSQL run as prepared statements, whose generic
    /// plan once hash-joined a scan of every payer and every identity (1.5 and 4
    /// ms a batch at 25,000 payers, the whole of PostgreSQL's extra cost per push):
    /// with tables of that shape, not yet analysed (as a growing table mostly is),
    /// their generic plans search the indexes.
    #[tokio::test]
    async fn a_batch_finds_payers_by_index_on_postgres() {
        use sqlx::Connection;
        let db = crate::testing::FreshDatabase::new(crate::Backend::Postgres)
            .await
            .expect("a database of this test's own");
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        sqlx::migrate!("./migrations/postgres")
            .run(&mut conn)
            .await
            .expect("migrations");
        sqlx::raw_sql(
            "INSERT INTO payers (id, created_at, updated_at) SELECT gen_random_uuid(), now(), now() \
             FROM generate_series(1, 20000); \
             INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
             SELECT 'wx-mp', 'o-' || id, id, now(), now() FROM payers; \
             SET plan_cache_mode = force_generic_plan",
        )
        .execute(&mut conn)
        .await
        .expect("20,000 payers");
        let openids = crate::pages::OPENID_WALLETS_PG;
        for (name, types, sql, args) in [
            (
                "payers",
                "uuid[], text[], text[], text[]",
                VERIFIED_PAYERS_PG,
                "ARRAY[gen_random_uuid()], ARRAY['i'], ARRAY['n'], ARRAY['p']",
            ),
            (
                "openids",
                "text[], text[], uuid[], uuid[], uuid[], timestamptz[], timestamptz",
                openids,
                "ARRAY['wx-mp'], ARRAY['o-new'], ARRAY[gen_random_uuid()], ARRAY[gen_random_uuid()], \
                 ARRAY[gen_random_uuid()], ARRAY[now()], now()",
            ),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE {name} ({types}) AS {sql}")))
                .execute(&mut conn)
                .await
                .expect("prepare");
            let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE {name} ({args})")))
                .fetch_all(&mut conn)
                .await
                .expect("the generic plan");
            let plan: Vec<&str> = plan.iter().map(|(line,)| line.as_str()).collect();
            assert!(
                !plan.iter().any(|l| l.contains("Seq Scan on payer")),
                "{name}: {plan:#?}"
            );
        }
        conn.close().await.expect("close");
        db.drop_now().await.expect("drop");
    }

    /// Every openid pushed makes a payer: matching a new receipt's identity must
    /// search the payers' indexes, never scan them (the scan once cost SQLite more
    /// than half its throughput as the table grew).
    #[tokio::test]
    async fn matching_a_receipt_to_payers_uses_the_indexes_on_sqlite() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut conn)
            .await
            .expect("migrations");
        let (id_index, phone_index) = (Some("i".to_owned()), Some("p".to_owned()));
        let mut sql = Sql::new("");
        let rows = [
            (Uuid::now_v7(), &id_index, "n", &phone_index),
            (Uuid::now_v7(), &id_index, "m", &phone_index),
        ];
        push_sqlite_identities(&mut sql, rows.into_iter());
        let (text, _, _) = sql.into_parts();
        let mut explain = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", text.as_str())));
        for (receipt, _, name, _) in rows {
            explain = explain.bind(receipt).bind("i").bind(name).bind("p");
        }
        let plan: Vec<(i64, i64, i64, String)> = explain.fetch_all(&mut conn).await.expect("the plan");
        let steps: Vec<&str> = plan.iter().map(|(_, _, _, s)| s.as_str()).collect();
        assert!(steps.iter().any(|s| s.contains("payers_id_idx")), "{steps:?}");
        assert!(steps.iter().any(|s| s.contains("payers_phone_idx")), "{steps:?}");
        // Only the receipts' own list is scanned, never the payers.
        assert!(!steps.iter().any(|s| s.starts_with("SCAN p")), "{steps:?}");
    }

    #[test]
    fn identity_lock_keys_are_sorted_and_distinct_per_domain() {
        let keys = identity_lock_keys(Some("i"), Some("i"), "n");
        assert_eq!(keys.len(), 2);
        assert!(keys[0] <= keys[1]);
        assert_ne!(identity_lock_key("id", "i", "n"), identity_lock_key("phone", "i", "n"));
    }
}
