//! Payer claims: a payer sends receipts of their wallet to one reimburser,
//! consenting to exactly the personal fields it may receive (sealed for that
//! reimburser by the caller, with the claim's own fields). A claim's status
//! follows what the reimburser does to its receipts (lock, close, reject) in the
//! same transaction as that change ([`sync_claims`]), and an issuer's reversal of
//! a claimed receipt cancels the claim ([`cancel_claims_of_reversed`]). Every
//! change is appended to `claim_events` and calls for its deliveries (the
//! reimburser's webhook, the payer's subscribe message) in the same transaction.

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::delivery::{ChannelKind, DeliveryEvent};
use piaojia_core::parties::{ReimbursementAction, ReimbursementState};
use serde::Serialize;
use uuid::Uuid;

use crate::intake::{StoredReceipt, load_receipts};
use crate::queue::{NewDelivery, insert_deliveries};
use crate::sql::{Conn, Dialect, Json, Sql, Tx, write_error, written};
use crate::{Db, Entity, Result, StoreError, Timestamp};

/// Where a claim stands. `submitted`, `received` and `locked` are open (the
/// receipts are held by the claim); the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStatus {
    Submitted,
    /// The reimburser acknowledged it.
    Received,
    /// The reimburser locked (at least one of) its receipts: no withdrawal any more.
    Locked,
    /// Every receipt closed by the reimburser, with the amount paid.
    Reimbursed,
    /// Refused by the reimburser, with a reason.
    Rejected,
    /// Withdrawn by the payer (or by the erasure of the payer's account).
    Withdrawn,
    /// The issuer reversed (冲红) one of its receipts before any lock.
    Cancelled,
}

impl ClaimStatus {
    pub const ALL: &'static [ClaimStatus] = &[
        ClaimStatus::Submitted,
        ClaimStatus::Received,
        ClaimStatus::Locked,
        ClaimStatus::Reimbursed,
        ClaimStatus::Rejected,
        ClaimStatus::Withdrawn,
        ClaimStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimStatus::Submitted => "submitted",
            ClaimStatus::Received => "received",
            ClaimStatus::Locked => "locked",
            ClaimStatus::Reimbursed => "reimbursed",
            ClaimStatus::Rejected => "rejected",
            ClaimStatus::Withdrawn => "withdrawn",
            ClaimStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        matches!(
            self,
            ClaimStatus::Submitted | ClaimStatus::Received | ClaimStatus::Locked
        )
    }

    /// As the payer reads it (at most 5 characters: a subscribe message's `phrase`).
    pub fn label_zh(self) -> &'static str {
        match self {
            ClaimStatus::Submitted => "已提交",
            ClaimStatus::Received => "已受理",
            ClaimStatus::Locked => "审核中",
            ClaimStatus::Reimbursed => "已报销",
            ClaimStatus::Rejected => "未通过",
            ClaimStatus::Withdrawn => "已撤回",
            ClaimStatus::Cancelled => "已作废",
        }
    }
}

impl std::fmt::Display for ClaimStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claim to store. The caller checked the shape (consent, fields) and sealed
/// the personal data and fields for the reimburser.
#[derive(Debug, Clone)]
pub struct NewClaim {
    pub id: Uuid,
    pub payer_id: Uuid,
    pub reimburser_app_id: String,
    pub mp_app_id: String,
    /// Distinct, in the payer's order.
    pub receipt_ids: Vec<Uuid>,
    pub consented_fields: Vec<String>,
    pub personal_sealed: String,
    pub fields_sealed: Option<String>,
    /// Agencies whose receipts the reimburser accepts.
    pub accepted_agency_ids: Vec<Uuid>,
    /// Receipts issued before this are past the reimburser's deadline
    /// (`claim_within_days`; `None`: it has none).
    pub issued_after: Option<Timestamp>,
    /// The mini-program's agencies (`None`: all, the platform wallet).
    pub scope: Option<Vec<Uuid>>,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimRecord {
    pub id: Uuid,
    /// `None` once the payer erased their account.
    pub payer_id: Option<Uuid>,
    pub reimburser_app_id: String,
    pub mp_app_id: String,
    /// Position in the reimburser's feed (its pull cursor).
    pub seq: i64,
    pub status: ClaimStatus,
    pub consented_fields: Vec<String>,
    pub personal_sealed: Option<String>,
    pub fields_sealed: Option<String>,
    pub paid_fen: Option<i64>,
    pub reason: Option<String>,
    pub receipt_ids: Vec<Uuid>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Why a receipt cannot be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// Not in the payer's wallet (or outside the mini-program's agencies).
    NotInWallet,
    /// The reimburser does not accept the receipt's agency.
    NotAccepted,
    /// Issued longer ago than the reimburser's `claim_within_days`.
    PastDeadline,
    Reversed,
    /// Another reimburser holds the lock.
    LockedByOther,
    AlreadyClosed,
    /// Already in another open claim.
    AlreadyClaimed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    Submitted(Box<ClaimRecord>),
    /// Nothing was stored: the receipt at `index` cannot be claimed.
    Refused {
        index: usize,
        refusal: ClaimRefusal,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WithdrawOutcome {
    Withdrawn(Box<ClaimRecord>),
    NotFound,
    /// The reimburser locked it: too late.
    Locked(Box<ClaimRecord>),
    /// Already final (reimbursed, rejected, withdrawn, cancelled).
    Closed(Box<ClaimRecord>),
}

/// One entry of a claim's history (append-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimEvent {
    pub id: Uuid,
    pub claim_id: Uuid,
    /// `payer`, the reimburser's app id, `issuer:<appId>` or `system`.
    pub actor: String,
    /// submit, acknowledge, lock, close, unlock, reject, expire, withdraw, cancel.
    pub action: String,
    pub from_status: Option<ClaimStatus>,
    pub to_status: ClaimStatus,
    pub paid_fen: Option<i64>,
    pub reason: Option<String>,
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
    pub at: Timestamp,
}

#[async_trait]
pub trait Claims: Send + Sync {
    /// Checks every receipt under its row lock and stores the claim with its first
    /// event and the reimburser's webhook, all or nothing.
    async fn submit_claim(&self, claim: NewClaim) -> Result<SubmitOutcome>;
    /// The payer's claims, newest first: at most `limit`, strictly after (older
    /// than) the keyset cursor `after` (`created_at`, `id`) of the last one seen.
    async fn payer_claims(
        &self,
        payer_id: Uuid,
        after: Option<(Timestamp, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ClaimRecord>>;
    async fn payer_claim(&self, payer_id: Uuid, claim_id: Uuid) -> Result<Option<ClaimRecord>>;
    async fn withdraw_claim(
        &self,
        payer_id: Uuid,
        claim_id: Uuid,
        remote_addr: Option<String>,
    ) -> Result<WithdrawOutcome>;
    /// A reimburser's claims after `after_seq`, oldest first.
    async fn reimburser_claims(&self, app_id: &str, after_seq: i64, limit: i64) -> Result<Vec<ClaimRecord>>;
    async fn reimburser_claim(&self, app_id: &str, claim_id: Uuid) -> Result<Option<ClaimRecord>>;
    /// The reimburser acknowledges receipt (submitted → received; otherwise as it is).
    async fn acknowledge_claim(
        &self,
        app_id: &str,
        claim_id: Uuid,
        remote_addr: Option<String>,
    ) -> Result<Option<ClaimRecord>>;
    async fn claim_history(&self, claim_id: Uuid) -> Result<Vec<ClaimEvent>>;
    /// Any claim by id (operators).
    async fn claim(&self, claim_id: Uuid) -> Result<Option<ClaimRecord>>;
    /// Every claim that included this receipt, oldest first (operators).
    async fn receipt_claims(&self, receipt_id: Uuid) -> Result<Vec<ClaimRecord>>;
    /// The reimburser's latest claim including this receipt that was neither
    /// withdrawn nor cancelled: what entitles it to the payer's personal data.
    async fn claim_holding(&self, app_id: &str, receipt_id: Uuid) -> Result<Option<ClaimRecord>>;
    /// Which of these receipts an open claim (submitted, received, locked) holds:
    /// `(receipt id, claim id, the claim's payer)`.
    async fn open_claims_of(&self, receipt_ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid, Option<Uuid>)>>;
    /// The claim's receipts in full, in the claim's order.
    async fn claim_receipts(&self, claim: &ClaimRecord) -> Result<Vec<StoredReceipt>> {
        Ok(self
            .claims_receipts(std::slice::from_ref(claim))
            .await?
            .pop()
            .unwrap_or_default())
    }
    /// The receipts of each of these claims (in the claims' order, each in its
    /// claim's order), read in one query for all of them, whatever their number.
    async fn claims_receipts(&self, claims: &[ClaimRecord]) -> Result<Vec<Vec<StoredReceipt>>>;
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    payer_id: Option<Uuid>,
    reimburser_app_id: String,
    mp_app_id: String,
    seq: i64,
    status: String,
    consented_fields: sqlx::types::Json<Vec<String>>,
    personal_sealed: Option<String>,
    fields_sealed: Option<String>,
    paid_fen: Option<i64>,
    reason: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

const CLAIM_COLUMNS: &str = "c.id, c.payer_id, c.reimburser_app_id, c.mp_app_id, c.seq, c.status, \
     c.consented_fields, c.personal_sealed, c.fields_sealed, c.paid_fen, c.reason, c.created_at, c.updated_at";

fn status(s: &str) -> Result<ClaimStatus> {
    ClaimStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("claim status {s:?}")))
}

impl ClaimRow {
    fn into_record(self, receipt_ids: Vec<Uuid>) -> Result<ClaimRecord> {
        Ok(ClaimRecord {
            status: status(&self.status)?,
            id: self.id,
            payer_id: self.payer_id,
            reimburser_app_id: self.reimburser_app_id,
            mp_app_id: self.mp_app_id,
            seq: self.seq,
            consented_fields: self.consented_fields.0,
            personal_sealed: self.personal_sealed,
            fields_sealed: self.fields_sealed,
            paid_fen: self.paid_fen,
            reason: self.reason,
            receipt_ids,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The claims of these rows with their receipts (one more query, not one per claim).
async fn with_receipts<C: Conn + ?Sized>(conn: &mut C, rows: Vec<ClaimRow>) -> Result<Vec<ClaimRecord>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new("SELECT claim_id, receipt_id FROM claim_receipts WHERE claim_id IN ");
    sql.push_list(rows.iter().map(|r| r.id));
    sql.push(" ORDER BY claim_id, position");
    let links: Vec<(Uuid, Uuid)> = sql.fetch_all(&mut *conn).await?;
    rows.into_iter()
        .map(|row| {
            let ids = links.iter().filter(|(c, _)| *c == row.id).map(|(_, r)| *r).collect();
            row.into_record(ids)
        })
        .collect()
}

async fn load_claim<C: Conn + ?Sized>(conn: &mut C, text: &'static str, id: Uuid) -> Result<Option<ClaimRecord>> {
    let row: Option<ClaimRow> = Sql::new(text).bind(id).fetch_optional(&mut *conn).await?;
    match row {
        Some(row) => Ok(with_receipts(conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

const FIND_CLAIM: &str = concatcp!("SELECT ", CLAIM_COLUMNS, " FROM claims c WHERE c.id = $1");
const FIND_CLAIM_LOCKED: &str = concatcp!(FIND_CLAIM, " FOR UPDATE");

/// One row of the history, written in the transaction that made the change.
pub(crate) struct NewClaimEvent<'a> {
    pub claim_id: Uuid,
    pub actor: &'a str,
    pub action: &'a str,
    pub from: Option<ClaimStatus>,
    pub to: ClaimStatus,
    pub paid_fen: Option<i64>,
    pub reason: Option<&'a str>,
    pub remote_addr: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub at: Timestamp,
}

async fn append_event<C: Conn + ?Sized>(conn: &mut C, e: NewClaimEvent<'_>) -> Result<()> {
    Sql::new(
        "INSERT INTO claim_events (id, claim_id, actor, action, from_status, to_status, paid_fen, reason, \
         remote_addr, request_id, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(Uuid::now_v7())
    .bind(e.claim_id)
    .bind(e.actor)
    .bind(e.action)
    .bind(e.from.map(ClaimStatus::as_str))
    .bind(e.to.as_str())
    .bind(e.paid_fen)
    .bind(e.reason)
    .bind(e.remote_addr)
    .bind(e.request_id)
    .bind(e.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The reimburser's webhook telling of `kind` (`claim.submitted`, `claim.cancelled`),
/// when it registered an endpoint.
async fn reimburser_webhook<C: Conn + ?Sized>(
    conn: &mut C,
    claim: &ClaimRecord,
    kind: &str,
    event: DeliveryEvent,
) -> Result<Option<NewDelivery>> {
    let url: Option<(Option<String>,)> = Sql::new("SELECT callback_url FROM apps WHERE app_id = $1")
        .bind(&claim.reimburser_app_id)
        .fetch_optional(conn)
        .await?;
    let Some(url) = url.and_then(|(u,)| u).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: ChannelKind::ReimburserClaim,
        interface: piaojia_core::delivery::webhook_interface(&url),
        target: url,
        payload: Some(serde_json::json!({
            "type": kind,
            "claimId": claim.id,
            "status": claim.status.as_str(),
            "reimburser": claim.reimburser_app_id,
        })),
    }))
}

/// The payer's message of a claim's new status, through the app the claim came
/// from: a subscribe message from a mini-program, when the payer has a consent
/// left for its template (a long-term template needs none; the consent is spent),
/// or a template message from an official account (its pages), which needs none.
async fn payer_message<C: Conn + ?Sized>(
    conn: &mut C,
    claim: &ClaimRecord,
    event: DeliveryEvent,
    now: Timestamp,
) -> Result<Option<NewDelivery>> {
    let Some(payer_id) = claim.payer_id else {
        return Ok(None);
    };
    // The app's channel (an appid is the platform wallet, an agency's own
    // mini-program or an agency's official account, whose channels share one template).
    let channel: Option<(String, String, bool)> = Sql::new(
        "SELECT kind, template_id, long_term FROM channels WHERE wechat_app_id = $1 AND enabled = true \
         AND kind IN ('wallet_subscribe', 'wechat_subscribe', 'wechat_template') ORDER BY kind DESC LIMIT 1",
    )
    .bind(&claim.mp_app_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((kind, template_id, long_term_template)) = channel else {
        return Ok(None);
    };
    let Some(kind) = ChannelKind::parse(&kind) else {
        return Ok(None);
    };
    let openid = if kind == ChannelKind::WechatTemplate {
        // A follower of the account needs no consent; unfollowing is checked at send.
        let identity: Option<(String,)> = Sql::new(
            "SELECT openid FROM payer_identities WHERE payer_id = $1 AND app_id = $2 \
             ORDER BY last_login_at DESC LIMIT 1",
        )
        .bind(payer_id)
        .bind(&claim.mp_app_id)
        .fetch_optional(&mut *conn)
        .await?;
        identity.map(|(openid,)| openid)
    } else {
        crate::wallets::spend_subscribe_credit(
            &mut *conn,
            payer_id,
            &claim.mp_app_id,
            &template_id,
            long_term_template,
            now,
        )
        .await?
    };
    let Some(openid) = openid else {
        return Ok(None);
    };
    // The message hangs on the claim's first receipt; its amount is the claim's.
    let mut total = Sql::new("SELECT CAST(COALESCE(SUM(total_fen), 0) AS BIGINT) FROM receipts WHERE id IN ");
    total.push_list(claim.receipt_ids.iter().copied());
    let (claimed_fen,): (i64,) = total.fetch_one(&mut *conn).await?;
    Ok(Some(NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: kind,
        target: openid,
        interface: piaojia_core::delivery::wechat_interface(&claim.mp_app_id, kind),
        payload: Some(serde_json::json!({
            // No fallback channel, and no issuer status webhook: this is the payer's own claim.
            "tried": ChannelKind::ALL.iter().filter(|k| k.is_wechat()).map(|k| k.as_str()).collect::<Vec<_>>(),
            "type": "claim.status",
            "claimId": claim.id,
            "claimStatus": claim.status.as_str(),
            "statusZh": claim.status.label_zh(),
            "paidFen": claim.paid_fen,
            "claimedFen": claimed_fen,
            "receipts": claim.receipt_ids.len(),
        })),
    }))
}

/// Writes the deliveries of a claim change against its first receipt (a delivery
/// belongs to a receipt; the payload names the claim).
async fn insert_claim_deliveries<D: Dialect>(
    conn: &mut D::Conn,
    claim: &ClaimRecord,
    deliveries: Vec<NewDelivery>,
    now: Timestamp,
) -> Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let Some(first) = claim.receipt_ids.first() else {
        return Ok(());
    };
    let (agency_id,): (Uuid,) = Sql::new("SELECT agency_id FROM receipts WHERE id = $1")
        .bind(*first)
        .fetch_one(&mut *conn)
        .await?;
    insert_deliveries::<D>(conn, *first, agency_id, &deliveries, now).await?;
    Ok(())
}

/// Moves a claim to `to` (with the amount paid or the reason), closing its hold
/// on its receipts when final, recording the event and the payer's message.
#[allow(clippy::too_many_arguments)]
async fn move_claim<D: Dialect>(
    conn: &mut D::Conn,
    claim: &mut ClaimRecord,
    to: ClaimStatus,
    actor: &str,
    action: &str,
    paid_fen: Option<i64>,
    reason: Option<&str>,
    remote_addr: Option<&str>,
    request_id: Option<&str>,
    now: Timestamp,
    mut deliveries: Vec<NewDelivery>,
    tell_payer: bool,
) -> Result<()> {
    let from = claim.status;
    // Only from the status it was read in: a claim withdrawn meanwhile (its row
    // lock waited for) stays withdrawn.
    let changed = Sql::new(
        "UPDATE claims SET status = $2, paid_fen = $3, reason = $4, updated_at = $5 WHERE id = $1 AND status = $6",
    )
    .bind(claim.id)
    .bind(to.as_str())
    .bind(paid_fen)
    .bind(reason)
    .bind(now)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    if changed == 0 {
        return Ok(());
    }
    if !to.is_open() {
        Sql::new("UPDATE claim_receipts SET open = false WHERE claim_id = $1")
            .bind(claim.id)
            .execute(&mut *conn)
            .await?;
    }
    append_event(
        &mut *conn,
        NewClaimEvent {
            claim_id: claim.id,
            actor,
            action,
            from: Some(from),
            to,
            paid_fen,
            reason,
            remote_addr,
            request_id,
            at: now,
        },
    )
    .await?;
    claim.status = to;
    claim.paid_fen = paid_fen;
    claim.reason = reason.map(str::to_owned);
    claim.updated_at = now;
    if tell_payer {
        let event = if to == ClaimStatus::Cancelled {
            DeliveryEvent::Reversed
        } else {
            DeliveryEvent::Issued
        };
        deliveries.extend(payer_message(&mut *conn, claim, event, now).await?);
    }
    insert_claim_deliveries::<D>(conn, claim, deliveries, now).await
}

/// The open claims holding any of these receipts (any reimburser, or only
/// `reimburser`), each once, with their receipts: two queries whatever their number.
async fn open_claims_of<C: Conn + ?Sized>(
    conn: &mut C,
    receipt_ids: &[Uuid],
    reimburser: Option<&str>,
) -> Result<Vec<ClaimRecord>> {
    if receipt_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(concatcp!(
        "SELECT ",
        CLAIM_COLUMNS,
        " FROM claims c WHERE c.id IN (SELECT cr.claim_id FROM claim_receipts cr WHERE cr.open = true AND cr.receipt_id IN "
    ));
    sql.push_list(receipt_ids.iter().copied());
    sql.push(")");
    if let Some(app_id) = reimburser {
        sql.push(" AND c.reimburser_app_id = ").push_bind(app_id);
    }
    sql.push(" ORDER BY c.id");
    let rows: Vec<ClaimRow> = sql.fetch_all(&mut *conn).await?;
    with_receipts(conn, rows).await
}

/// After a reimburser's change of a batch of receipts (inside its transaction,
/// once for the whole batch): the status of that reimburser's open claims holding
/// any of them follows. A rejection rejects the claim; otherwise the claim is
/// `locked` while any of its receipts is locked or closed by the reimburser,
/// `reimbursed` (with the sum paid) once every one is closed, and back to
/// `received` when its locks are all released. The claims and the states of all
/// their receipts are read in one query each, not one per receipt.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sync_claims<D: Dialect>(
    conn: &mut D::Conn,
    receipt_ids: &[Uuid],
    reimburser: &str,
    action: ReimbursementAction,
    reason: Option<&str>,
    remote_addr: Option<&str>,
    request_id: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    // A lock held too long is released by piaojia, not by the reimburser.
    let actor = if action == ReimbursementAction::Expire {
        "system"
    } else {
        reimburser
    };
    let claims = open_claims_of(&mut *conn, receipt_ids, Some(reimburser)).await?;
    if claims.is_empty() {
        return Ok(());
    }
    type State = (Uuid, String, Option<String>, Option<i64>);
    let mut states: std::collections::HashMap<Uuid, State> = std::collections::HashMap::new();
    if action != ReimbursementAction::Reject {
        let mut ids: Vec<Uuid> = claims.iter().flat_map(|c| c.receipt_ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut sql = Sql::new(
            "SELECT id, reimbursement_state, reimbursement_holder, reimbursement_paid_fen FROM receipts WHERE id IN ",
        );
        sql.push_list(ids);
        let rows: Vec<State> = sql.fetch_all(&mut *conn).await?;
        states = rows.into_iter().map(|s| (s.0, s)).collect();
    }
    for mut claim in claims {
        if action == ReimbursementAction::Reject {
            move_claim::<D>(
                conn,
                &mut claim,
                ClaimStatus::Rejected,
                actor,
                action.as_str(),
                None,
                reason,
                remote_addr,
                request_id,
                now,
                Vec::new(),
                true,
            )
            .await?;
            continue;
        }
        let states: Vec<&State> = claim.receipt_ids.iter().filter_map(|id| states.get(id)).collect();
        let mine = |s: &State, state: ReimbursementState| s.1 == state.as_str() && s.2.as_deref() == Some(reimburser);
        let all_closed = states.iter().all(|s| mine(s, ReimbursementState::Closure));
        let any_held = states
            .iter()
            .any(|s| mine(s, ReimbursementState::Closure) || mine(s, ReimbursementState::Lock));
        let (to, paid) = if all_closed {
            (
                ClaimStatus::Reimbursed,
                Some(states.iter().filter_map(|s| s.3).sum::<i64>()),
            )
        } else if any_held {
            (ClaimStatus::Locked, None)
        } else if claim.status == ClaimStatus::Locked {
            (ClaimStatus::Received, None)
        } else {
            continue;
        };
        if to == claim.status {
            continue;
        }
        move_claim::<D>(
            conn,
            &mut claim,
            to,
            actor,
            action.as_str(),
            paid,
            reason,
            remote_addr,
            request_id,
            now,
            Vec::new(),
            true,
        )
        .await?;
    }
    Ok(())
}

/// Inside an issuer's reversal of an unlocked receipt: every open claim holding it
/// is cancelled, and its reimburser and payer are told.
pub(crate) async fn cancel_claims_of_reversed<D: Dialect>(
    conn: &mut D::Conn,
    receipt_id: Uuid,
    issuer_app_id: &str,
    reason: &str,
    now: Timestamp,
) -> Result<()> {
    let actor = format!("issuer:{issuer_app_id}");
    for mut claim in open_claims_of(&mut *conn, &[receipt_id], None).await? {
        let reason = format!("开票单位已冲红: {reason}");
        let mut hook_claim = claim.clone();
        hook_claim.status = ClaimStatus::Cancelled;
        let hook = reimburser_webhook(&mut *conn, &hook_claim, "claim.cancelled", DeliveryEvent::Reversed).await?;
        move_claim::<D>(
            conn,
            &mut claim,
            ClaimStatus::Cancelled,
            &actor,
            "cancel",
            None,
            Some(&reason),
            None,
            None,
            now,
            hook.into_iter().collect(),
            true,
        )
        .await?;
    }
    Ok(())
}

/// Inside the erasure of a payer's account: open claims are withdrawn, and every
/// claim loses its personal data and its link to the payer.
pub(crate) async fn erase_payer_claims<D: Dialect>(conn: &mut D::Conn, payer_id: Uuid, now: Timestamp) -> Result<()> {
    let rows: Vec<ClaimRow> = Sql::new(concatcp!(
        "SELECT ",
        CLAIM_COLUMNS,
        " FROM claims c WHERE c.payer_id = $1 ORDER BY c.id"
    ))
    .bind(payer_id)
    .fetch_all(&mut *conn)
    .await?;
    for mut claim in with_receipts(&mut *conn, rows).await? {
        if claim.status.is_open() {
            let mut hook_claim = claim.clone();
            hook_claim.status = ClaimStatus::Withdrawn;
            let hook = reimburser_webhook(&mut *conn, &hook_claim, "claim.withdrawn", DeliveryEvent::Issued).await?;
            move_claim::<D>(
                conn,
                &mut claim,
                ClaimStatus::Withdrawn,
                "payer",
                "withdraw",
                None,
                Some("the payer erased their account"),
                None,
                None,
                now,
                hook.into_iter().collect(),
                false,
            )
            .await?;
        }
    }
    Sql::new(
        "UPDATE claims SET payer_id = NULL, personal_sealed = NULL, fields_sealed = NULL, updated_at = $2 \
         WHERE payer_id = $1",
    )
    .bind(payer_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    agency_id: Uuid,
    issued_at: Timestamp,
    reversed_at: Option<Timestamp>,
    reimbursement_state: String,
    reimbursement_holder: Option<String>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    claim_id: Uuid,
    actor: String,
    action: String,
    from_status: Option<String>,
    to_status: String,
    paid_fen: Option<i64>,
    reason: Option<String>,
    remote_addr: Option<String>,
    request_id: Option<String>,
    at: Timestamp,
}

#[async_trait]
impl<D: Dialect> Claims for Db<D> {
    async fn submit_claim(&self, c: NewClaim) -> Result<SubmitOutcome> {
        const REIMBURSER: &str = "SELECT app_id FROM reimbursers WHERE app_id = $1";
        const RECEIPT: &str = "SELECT agency_id, issued_at, reversed_at, reimbursement_state, reimbursement_holder \
             FROM receipts WHERE id = $1";
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        // Claims of one reimburser are written one at a time: they commit in `seq`
        // order, which the pull cursor relies on.
        let found: Option<(String,)> = Sql::new(D::row_lock(REIMBURSER, concatcp!(REIMBURSER, " FOR UPDATE")))
            .bind(&c.reimburser_app_id)
            .fetch_optional(tx.conn())
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound(Entity::App));
        }
        let mut order: Vec<(usize, Uuid)> = c.receipt_ids.iter().copied().enumerate().collect();
        order.sort_by_key(|(_, id)| *id);
        for (index, id) in order {
            let refuse = |refusal| Ok(SubmitOutcome::Refused { index, refusal });
            let in_wallet: Option<(Uuid,)> = Sql::new(
                "SELECT receipt_id FROM wallet_entries WHERE payer_id = $1 AND receipt_id = $2 AND removed_at IS NULL",
            )
            .bind(c.payer_id)
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
            let row: Option<CandidateRow> = Sql::new(D::row_lock(RECEIPT, concatcp!(RECEIPT, " FOR UPDATE")))
                .bind(id)
                .fetch_optional(tx.conn())
                .await?;
            let Some(row) = row.filter(|_| in_wallet.is_some()) else {
                return refuse(ClaimRefusal::NotInWallet);
            };
            if c.scope.as_ref().is_some_and(|s| !s.contains(&row.agency_id)) {
                return refuse(ClaimRefusal::NotInWallet);
            }
            if !c.accepted_agency_ids.contains(&row.agency_id) {
                return refuse(ClaimRefusal::NotAccepted);
            }
            if row.reversed_at.is_some() || row.reimbursement_state == ReimbursementState::Cancel.as_str() {
                return refuse(ClaimRefusal::Reversed);
            }
            if row.reimbursement_state == ReimbursementState::Closure.as_str() {
                return refuse(ClaimRefusal::AlreadyClosed);
            }
            if c.issued_after.is_some_and(|after| row.issued_at < after) {
                return refuse(ClaimRefusal::PastDeadline);
            }
            if row.reimbursement_state == ReimbursementState::Lock.as_str()
                && row.reimbursement_holder.as_deref() != Some(c.reimburser_app_id.as_str())
            {
                return refuse(ClaimRefusal::LockedByOther);
            }
            let open: Option<(Uuid,)> =
                Sql::new("SELECT claim_id FROM claim_receipts WHERE receipt_id = $1 AND open = true")
                    .bind(id)
                    .fetch_optional(tx.conn())
                    .await?;
            if open.is_some() {
                return refuse(ClaimRefusal::AlreadyClaimed);
            }
        }
        let (seq,): (i64,) = Sql::new("SELECT COALESCE(MAX(seq), 0) + 1 FROM claims WHERE reimburser_app_id = $1")
            .bind(&c.reimburser_app_id)
            .fetch_one(tx.conn())
            .await?;
        Sql::new(
            "INSERT INTO claims (id, payer_id, reimburser_app_id, mp_app_id, seq, status, consented_fields, \
             personal_sealed, fields_sealed, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'submitted', $6, $7, $8, $9, $9)",
        )
        .bind(c.id)
        .bind(c.payer_id)
        .bind(&c.reimburser_app_id)
        .bind(&c.mp_app_id)
        .bind(seq)
        .bind(Json(&c.consented_fields))
        .bind(&c.personal_sealed)
        .bind(&c.fields_sealed)
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "claim"))?;
        for (position, id) in c.receipt_ids.iter().enumerate() {
            Sql::new("INSERT INTO claim_receipts (claim_id, receipt_id, position, open) VALUES ($1, $2, $3, true)")
                .bind(c.id)
                .bind(*id)
                .bind(position as i32)
                .execute(tx.conn())
                .await
                .map_err(|e| write_error(e, "claim_receipt"))?;
        }
        append_event(
            tx.conn(),
            NewClaimEvent {
                claim_id: c.id,
                actor: "payer",
                action: "submit",
                from: None,
                to: ClaimStatus::Submitted,
                paid_fen: None,
                reason: None,
                remote_addr: c.remote_addr.as_deref(),
                request_id: None,
                at: now,
            },
        )
        .await?;
        let claim = written(load_claim(tx.conn(), FIND_CLAIM, c.id).await?, "claim")?;
        let hook = reimburser_webhook(tx.conn(), &claim, "claim.submitted", DeliveryEvent::Issued).await?;
        insert_claim_deliveries::<D>(tx.conn(), &claim, hook.into_iter().collect(), now).await?;
        tx.commit().await?;
        Ok(SubmitOutcome::Submitted(Box::new(claim)))
    }

    async fn payer_claims(
        &self,
        payer_id: Uuid,
        after: Option<(Timestamp, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ClaimRecord>> {
        let mut conn = self.d.read().await?;
        let mut sql = Sql::new(concatcp!(
            "SELECT ",
            CLAIM_COLUMNS,
            " FROM claims c WHERE c.payer_id = "
        ));
        sql.push_bind(payer_id);
        if let Some((at, id)) = after {
            sql.push(" AND (c.created_at, c.id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        sql.push(" ORDER BY c.created_at DESC, c.id DESC LIMIT ")
            .push_bind(limit);
        let rows: Vec<ClaimRow> = sql.fetch_all(&mut *conn).await?;
        with_receipts(&mut *conn, rows).await
    }

    async fn payer_claim(&self, payer_id: Uuid, claim_id: Uuid) -> Result<Option<ClaimRecord>> {
        let claim = load_claim(&mut *self.d.read().await?, FIND_CLAIM, claim_id).await?;
        Ok(claim.filter(|c| c.payer_id == Some(payer_id)))
    }

    async fn withdraw_claim(
        &self,
        payer_id: Uuid,
        claim_id: Uuid,
        remote_addr: Option<String>,
    ) -> Result<WithdrawOutcome> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let claim = load_claim(tx.conn(), D::row_lock(FIND_CLAIM, FIND_CLAIM_LOCKED), claim_id).await?;
        let Some(mut claim) = claim.filter(|c| c.payer_id == Some(payer_id)) else {
            return Ok(WithdrawOutcome::NotFound);
        };
        match claim.status {
            ClaimStatus::Locked => return Ok(WithdrawOutcome::Locked(Box::new(claim))),
            s if !s.is_open() => return Ok(WithdrawOutcome::Closed(Box::new(claim))),
            _ => {}
        }
        let mut hook_claim = claim.clone();
        hook_claim.status = ClaimStatus::Withdrawn;
        let hook = reimburser_webhook(tx.conn(), &hook_claim, "claim.withdrawn", DeliveryEvent::Issued).await?;
        move_claim::<D>(
            tx.conn(),
            &mut claim,
            ClaimStatus::Withdrawn,
            "payer",
            "withdraw",
            None,
            None,
            remote_addr.as_deref(),
            None,
            now,
            hook.into_iter().collect(),
            false,
        )
        .await?;
        tx.commit().await?;
        Ok(WithdrawOutcome::Withdrawn(Box::new(claim)))
    }

    async fn reimburser_claims(&self, app_id: &str, after_seq: i64, limit: i64) -> Result<Vec<ClaimRecord>> {
        let mut conn = self.d.read().await?;
        let rows: Vec<ClaimRow> = Sql::new(concatcp!(
            "SELECT ",
            CLAIM_COLUMNS,
            " FROM claims c WHERE c.reimburser_app_id = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3"
        ))
        .bind(app_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        with_receipts(&mut *conn, rows).await
    }

    async fn claim(&self, claim_id: Uuid) -> Result<Option<ClaimRecord>> {
        load_claim(&mut *self.d.read().await?, FIND_CLAIM, claim_id).await
    }

    async fn receipt_claims(&self, receipt_id: Uuid) -> Result<Vec<ClaimRecord>> {
        let mut conn = self.d.read().await?;
        let rows: Vec<ClaimRow> = Sql::new(concatcp!(
            "SELECT ",
            CLAIM_COLUMNS,
            " FROM claims c JOIN claim_receipts cr ON cr.claim_id = c.id WHERE cr.receipt_id = $1 \
             ORDER BY c.created_at, c.id"
        ))
        .bind(receipt_id)
        .fetch_all(&mut *conn)
        .await?;
        with_receipts(&mut *conn, rows).await
    }

    async fn reimburser_claim(&self, app_id: &str, claim_id: Uuid) -> Result<Option<ClaimRecord>> {
        let claim = load_claim(&mut *self.d.read().await?, FIND_CLAIM, claim_id).await?;
        Ok(claim.filter(|c| c.reimburser_app_id == app_id))
    }

    async fn acknowledge_claim(
        &self,
        app_id: &str,
        claim_id: Uuid,
        remote_addr: Option<String>,
    ) -> Result<Option<ClaimRecord>> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let claim = load_claim(tx.conn(), D::row_lock(FIND_CLAIM, FIND_CLAIM_LOCKED), claim_id).await?;
        let Some(mut claim) = claim.filter(|c| c.reimburser_app_id == app_id) else {
            return Ok(None);
        };
        if claim.status == ClaimStatus::Submitted {
            move_claim::<D>(
                tx.conn(),
                &mut claim,
                ClaimStatus::Received,
                app_id,
                "acknowledge",
                None,
                None,
                remote_addr.as_deref(),
                None,
                now,
                Vec::new(),
                true,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(claim))
    }

    async fn claim_history(&self, claim_id: Uuid) -> Result<Vec<ClaimEvent>> {
        let rows: Vec<EventRow> = Sql::new(
            "SELECT id, claim_id, actor, action, from_status, to_status, paid_fen, reason, remote_addr, request_id, \
             at FROM claim_events WHERE claim_id = $1 ORDER BY at, id",
        )
        .bind(claim_id)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ClaimEvent {
                    from_status: r.from_status.as_deref().map(status).transpose()?,
                    to_status: status(&r.to_status)?,
                    id: r.id,
                    claim_id: r.claim_id,
                    actor: r.actor,
                    action: r.action,
                    paid_fen: r.paid_fen,
                    reason: r.reason,
                    remote_addr: r.remote_addr,
                    request_id: r.request_id,
                    at: r.at,
                })
            })
            .collect()
    }

    async fn claim_holding(&self, app_id: &str, receipt_id: Uuid) -> Result<Option<ClaimRecord>> {
        let mut conn = self.d.read().await?;
        let rows: Vec<ClaimRow> = Sql::new(concatcp!(
            "SELECT ",
            CLAIM_COLUMNS,
            " FROM claims c JOIN claim_receipts cr ON cr.claim_id = c.id WHERE cr.receipt_id = $1 \
             AND c.reimburser_app_id = $2 AND c.status NOT IN ('withdrawn', 'cancelled') \
             AND c.personal_sealed IS NOT NULL ORDER BY c.seq DESC LIMIT 1"
        ))
        .bind(receipt_id)
        .bind(app_id)
        .fetch_all(&mut *conn)
        .await?;
        Ok(with_receipts(&mut *conn, rows).await?.pop())
    }

    async fn open_claims_of(&self, receipt_ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid, Option<Uuid>)>> {
        let mut sql = Sql::new(
            "SELECT cr.receipt_id, c.id, c.payer_id FROM claim_receipts cr JOIN claims c ON c.id = cr.claim_id \
             WHERE cr.open = true AND cr.receipt_id IN ",
        );
        sql.push_list(receipt_ids.iter().copied());
        let rows: Vec<(Uuid, Uuid, Option<Uuid>)> = sql.fetch_all(&mut *self.d.read().await?).await?;
        Ok(rows)
    }

    async fn claims_receipts(&self, claims: &[ClaimRecord]) -> Result<Vec<Vec<StoredReceipt>>> {
        let mut ids: Vec<Uuid> = claims.iter().flat_map(|c| c.receipt_ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let loaded = load_receipts(&mut *self.d.read().await?, &ids).await?;
        let by_id: std::collections::HashMap<Uuid, &StoredReceipt> = loaded.iter().map(|r| (r.id, r)).collect();
        Ok(claims
            .iter()
            .map(|c| {
                c.receipt_ids
                    .iter()
                    .filter_map(|id| by_id.get(id).map(|r| (*r).clone()))
                    .collect()
            })
            .collect())
    }
}
