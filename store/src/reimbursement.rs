//! Reimbursement: reimbursers as registered parties, and the state of a receipt
//! with them (INIT, LOCK, CLOSURE, CANCEL; DOMAIN.md §5). Every change happens in
//! one write transaction that locks the receipts it touches (in id order, so
//! concurrent batches never deadlock), decides with the one pure rule
//! [`reimbursement_transition`], appends to the history and records the answer
//! under the caller's request id. A batch is all or nothing.

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::parties::{
    ClaimField, ReimbursementAction, ReimbursementRefusal, ReimburserKind, reimbursement_transition,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use piaojia_core::parties::ReimbursementState;

use crate::sql::{Conn, Dialect, Json, Sql, Tx, write_error};
use crate::{Db, Result, StoreError, Timestamp};

/// A reimburser's profile (its credentials are an app of kind `reimburser`).
#[derive(Debug, Clone)]
pub struct NewReimburser {
    pub app_id: String,
    pub kind: ReimburserKind,
    pub name: String,
    /// Codes of the agencies whose receipts it accepts.
    pub accepted_agencies: Vec<String>,
    /// Personal fields payers may share with it.
    pub personal_fields: Vec<String>,
    /// It reimburses a receipt only this many days after its issue (None: no limit).
    pub claim_within_days: Option<u32>,
    /// The claim's own fields it asks payers for (empty: it names none).
    pub claim_fields: Vec<ClaimField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reimburser {
    pub app_id: String,
    pub kind: ReimburserKind,
    pub name: String,
    pub accepted_agencies: Vec<String>,
    pub personal_fields: Vec<String>,
    pub claim_within_days: Option<u32>,
    /// The claim's own fields it asks payers for (empty: it names none).
    pub claim_fields: Vec<ClaimField>,
    pub created_at: Timestamp,
}

impl Reimburser {
    /// The last moment a receipt issued at `issued_at` may be claimed with it.
    pub fn claim_deadline(&self, issued_at: Timestamp) -> Option<Timestamp> {
        let days = self.claim_within_days?;
        Some(issued_at + chrono::TimeDelta::days(i64::from(days)))
    }

    /// Receipts issued before this moment are past its deadline at `now`.
    pub fn claim_deadline_cutoff(&self, now: Timestamp) -> Option<Timestamp> {
        let days = self.claim_within_days?;
        Some(now - chrono::TimeDelta::days(i64::from(days)))
    }
}

/// A receipt as a reimburser names it: code, number and check code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReceiptKey {
    pub bill_batch_code: String,
    pub bill_no: String,
    pub random: String,
}

/// Where one receipt stands with reimbursers; no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptReimbursement {
    pub receipt_id: Uuid,
    pub agency_id: Uuid,
    pub bill_batch_code: String,
    pub bill_no: String,
    pub issued_at: Timestamp,
    pub total_fen: i64,
    pub state: ReimbursementState,
    /// The reimburser holding the lock or having closed it.
    pub holder: Option<String>,
    pub locked_at: Option<Timestamp>,
    pub paid_fen: Option<i64>,
    pub reversed: bool,
}

/// One change a reimburser asks for.
#[derive(Debug, Clone)]
pub struct ReimbursementChange {
    pub key: ReceiptKey,
    pub action: ReimbursementAction,
    /// For `Close`: the amount paid.
    pub paid_fen: Option<i64>,
}

/// A reimburser's request: one change or an all-or-nothing batch.
#[derive(Debug, Clone)]
pub struct ReimbursementRequest {
    pub app_id: String,
    pub request_id: String,
    /// A digest of what was asked: a request id reused for another request is refused.
    pub fingerprint: String,
    /// Agencies whose receipts the reimburser accepts.
    pub accepted_agency_ids: Vec<Uuid>,
    pub changes: Vec<ReimbursementChange>,
    pub reason: Option<String>,
    pub remote_addr: Option<String>,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReimbursementOutcome {
    /// Every change was applied (or was already so); the receipts as they now stand.
    Applied(Vec<ReceiptReimbursement>),
    /// The request id was answered before: the first answer.
    Replayed(Vec<ReceiptReimbursement>),
    /// The request id was used for a different request.
    RequestIdReused,
    /// Nothing was changed: the change at `index` names no receipt this reimburser accepts.
    NotFound { index: usize },
    /// Nothing was changed: the change at `index` was refused.
    Refused {
        index: usize,
        refusal: ReimbursementRefusal,
        receipt: Box<ReceiptReimbursement>,
    },
}

/// One entry of a receipt's reimbursement history (append-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReimbursementEvent {
    pub id: Uuid,
    pub receipt_id: Uuid,
    /// The reimburser's app id, `system` (lock expiry) or `issuer:<appId>` (reversal).
    pub actor: String,
    pub action: String,
    pub from_state: ReimbursementState,
    pub to_state: ReimbursementState,
    pub paid_fen: Option<i64>,
    pub reason: Option<String>,
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
    pub at: Timestamp,
}

#[async_trait]
pub trait Reimbursement: Send + Sync {
    /// Creates or replaces the profile of a reimburser app.
    async fn upsert_reimburser(&self, reimburser: NewReimburser) -> Result<Reimburser>;
    async fn reimburser(&self, app_id: &str) -> Result<Option<Reimburser>>;
    async fn list_reimbursers(&self) -> Result<Vec<Reimburser>>;
    /// The receipts with this code, number and check code (any agency; usually one).
    async fn find_by_check_code(&self, key: &ReceiptKey) -> Result<Vec<ReceiptReimbursement>>;
    async fn reimbursement_of(&self, receipt_id: Uuid) -> Result<Option<ReceiptReimbursement>>;
    /// Applies a request all or nothing, idempotent by its request id.
    async fn apply_reimbursement(&self, request: ReimbursementRequest) -> Result<ReimbursementOutcome>;
    /// Releases locks taken before `before` (into INIT), recording each: the released.
    async fn release_expired_locks(&self, before: Timestamp, limit: i64) -> Result<Vec<ReceiptReimbursement>>;
    /// Every change of a receipt's reimbursement state, oldest first.
    async fn reimbursement_history(&self, receipt_id: Uuid) -> Result<Vec<ReimbursementEvent>>;
}

#[derive(sqlx::FromRow)]
struct ReimburserRow {
    app_id: String,
    kind: String,
    name: String,
    accepted_agencies: sqlx::types::Json<Vec<String>>,
    personal_fields: sqlx::types::Json<Vec<String>>,
    claim_within_days: Option<i64>,
    claim_fields: sqlx::types::Json<Vec<ClaimField>>,
    created_at: Timestamp,
}

impl ReimburserRow {
    fn into_reimburser(self) -> Result<Reimburser> {
        Ok(Reimburser {
            kind: ReimburserKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("reimburser kind {:?}", self.kind)))?,
            app_id: self.app_id,
            name: self.name,
            accepted_agencies: self.accepted_agencies.0,
            personal_fields: self.personal_fields.0,
            claim_within_days: self.claim_within_days.and_then(|d| u32::try_from(d).ok()),
            claim_fields: self.claim_fields.0,
            created_at: self.created_at,
        })
    }
}

const REIMBURSER_COLUMNS: &str =
    "app_id, kind, name, accepted_agencies, personal_fields, claim_within_days, claim_fields, created_at";

#[derive(sqlx::FromRow)]
struct StateRow {
    id: Uuid,
    agency_id: Uuid,
    bill_batch_code: String,
    bill_no: String,
    issued_at: Timestamp,
    total_fen: i64,
    reimbursement_state: String,
    reimbursement_holder: Option<String>,
    reimbursement_locked_at: Option<Timestamp>,
    reimbursement_paid_fen: Option<i64>,
    reversed_at: Option<Timestamp>,
}

impl StateRow {
    fn into_state(self) -> Result<ReceiptReimbursement> {
        Ok(ReceiptReimbursement {
            state: ReimbursementState::parse(&self.reimbursement_state)
                .ok_or_else(|| StoreError::Corrupt(format!("reimbursement state {:?}", self.reimbursement_state)))?,
            receipt_id: self.id,
            agency_id: self.agency_id,
            bill_batch_code: self.bill_batch_code,
            bill_no: self.bill_no,
            issued_at: self.issued_at,
            total_fen: self.total_fen,
            holder: self.reimbursement_holder,
            locked_at: self.reimbursement_locked_at,
            paid_fen: self.reimbursement_paid_fen,
            reversed: self.reversed_at.is_some(),
        })
    }
}

const STATE_COLUMNS: &str = "id, agency_id, bill_batch_code, bill_no, issued_at, total_fen, reimbursement_state, \
     reimbursement_holder, reimbursement_locked_at, reimbursement_paid_fen, reversed_at";

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    receipt_id: Uuid,
    actor: String,
    action: String,
    from_state: String,
    to_state: String,
    paid_fen: Option<i64>,
    reason: Option<String>,
    remote_addr: Option<String>,
    request_id: Option<String>,
    at: Timestamp,
}

fn state(s: &str) -> Result<ReimbursementState> {
    ReimbursementState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("reimbursement state {s:?}")))
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    fingerprint: String,
    response: sqlx::types::Json<Vec<ReceiptReimbursement>>,
}

/// One row of the history, written in the transaction that made the change.
struct NewEvent<'a> {
    receipt_id: Uuid,
    actor: &'a str,
    action: ReimbursementAction,
    from: ReimbursementState,
    to: ReimbursementState,
    paid_fen: Option<i64>,
    reason: Option<&'a str>,
    remote_addr: Option<&'a str>,
    request_id: Option<&'a str>,
    at: Timestamp,
}

async fn append_event<C: Conn + ?Sized>(conn: &mut C, e: NewEvent<'_>) -> Result<()> {
    Sql::new(
        "INSERT INTO reimbursement_events (id, receipt_id, actor, action, from_state, to_state, paid_fen, reason, \
         remote_addr, request_id, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(Uuid::now_v7())
    .bind(e.receipt_id)
    .bind(e.actor)
    .bind(e.action.as_str())
    .bind(e.from.as_str())
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

/// Records a reversal in the history (called inside the reversal's transaction).
pub(crate) async fn record_reversal<C: Conn + ?Sized>(
    conn: &mut C,
    receipt_id: Uuid,
    issuer_app_id: &str,
    from: ReimbursementState,
    reason: &str,
    at: Timestamp,
) -> Result<()> {
    let actor = format!("issuer:{issuer_app_id}");
    append_event(
        conn,
        NewEvent {
            receipt_id,
            actor: &actor,
            action: ReimbursementAction::Reverse,
            from,
            to: ReimbursementState::Cancel,
            paid_fen: None,
            reason: Some(reason),
            remote_addr: None,
            request_id: None,
            at,
        },
    )
    .await
    .map(|_| ())
}

async fn load_state<C: Conn + ?Sized>(
    conn: &mut C,
    text: &'static str,
    id: Uuid,
) -> Result<Option<ReceiptReimbursement>> {
    let row: Option<StateRow> = Sql::new(text).bind(id).fetch_optional(conn).await?;
    row.map(StateRow::into_state).transpose()
}

#[async_trait]
impl<D: Dialect> Reimbursement for Db<D> {
    async fn upsert_reimburser(&self, r: NewReimburser) -> Result<Reimburser> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        Sql::new(
            "INSERT INTO reimbursers (app_id, kind, name, accepted_agencies, personal_fields, claim_within_days, \
             claim_fields, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $7, $8, $6, $6) \
             ON CONFLICT (app_id) DO UPDATE SET kind = excluded.kind, name = excluded.name, \
             accepted_agencies = excluded.accepted_agencies, personal_fields = excluded.personal_fields, \
             claim_within_days = excluded.claim_within_days, claim_fields = excluded.claim_fields, \
             updated_at = excluded.updated_at",
        )
        .bind(&r.app_id)
        .bind(r.kind.as_str())
        .bind(&r.name)
        .bind(Json(&r.accepted_agencies))
        .bind(Json(&r.personal_fields))
        .bind(now)
        .bind(r.claim_within_days.map(i64::from))
        .bind(Json(&r.claim_fields))
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "reimburser"))?;
        let row: ReimburserRow = Sql::new(concatcp!(
            "SELECT ",
            REIMBURSER_COLUMNS,
            " FROM reimbursers WHERE app_id = $1"
        ))
        .bind(&r.app_id)
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        row.into_reimburser()
    }

    async fn reimburser(&self, app_id: &str) -> Result<Option<Reimburser>> {
        let row: Option<ReimburserRow> = Sql::new(concatcp!(
            "SELECT ",
            REIMBURSER_COLUMNS,
            " FROM reimbursers WHERE app_id = $1"
        ))
        .bind(app_id)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        row.map(ReimburserRow::into_reimburser).transpose()
    }

    async fn list_reimbursers(&self) -> Result<Vec<Reimburser>> {
        let rows: Vec<ReimburserRow> = Sql::new(concatcp!(
            "SELECT ",
            REIMBURSER_COLUMNS,
            " FROM reimbursers ORDER BY app_id"
        ))
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter().map(ReimburserRow::into_reimburser).collect()
    }

    async fn find_by_check_code(&self, key: &ReceiptKey) -> Result<Vec<ReceiptReimbursement>> {
        let rows: Vec<StateRow> = Sql::new(concatcp!(
            "SELECT ",
            STATE_COLUMNS,
            " FROM receipts WHERE bill_batch_code = $1 AND bill_no = $2 AND random = $3 ORDER BY id"
        ))
        .bind(&key.bill_batch_code)
        .bind(&key.bill_no)
        .bind(&key.random)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter().map(StateRow::into_state).collect()
    }

    async fn reimbursement_of(&self, receipt_id: Uuid) -> Result<Option<ReceiptReimbursement>> {
        load_state(
            &mut *self.d.read().await?,
            concatcp!("SELECT ", STATE_COLUMNS, " FROM receipts WHERE id = $1"),
            receipt_id,
        )
        .await
    }

    async fn apply_reimbursement(&self, req: ReimbursementRequest) -> Result<ReimbursementOutcome> {
        const FIND: &str = concatcp!("SELECT ", STATE_COLUMNS, " FROM receipts WHERE id = $1");
        const FIND_LOCKED: &str = concatcp!(FIND, " FOR UPDATE");
        const PREVIOUS: &str =
            "SELECT fingerprint, response FROM reimbursement_requests WHERE app_id = $1 AND request_id = $2";
        let replay = |row: RequestRow| {
            if row.fingerprint == req.fingerprint {
                ReimbursementOutcome::Replayed(row.response.0)
            } else {
                ReimbursementOutcome::RequestIdReused
            }
        };
        // Answered before: no write turn needed.
        let previous: Option<RequestRow> = Sql::new(PREVIOUS)
            .bind(&req.app_id)
            .bind(&req.request_id)
            .fetch_optional(&mut *self.d.read().await?)
            .await?;
        if let Some(row) = previous {
            return Ok(replay(row));
        }

        // Which receipt each change names, among the accepted agencies' (read, unlocked).
        let mut ids = Vec::with_capacity(req.changes.len());
        {
            let mut conn = self.d.read().await?;
            for (index, change) in req.changes.iter().enumerate() {
                let mut sql = Sql::new(
                    "SELECT id FROM receipts WHERE bill_batch_code = $1 AND bill_no = $2 AND random = $3 \
                     AND agency_id IN ",
                )
                .bind(&change.key.bill_batch_code)
                .bind(&change.key.bill_no)
                .bind(&change.key.random);
                sql.push_list(req.accepted_agency_ids.iter().copied());
                sql.push(" ORDER BY id LIMIT 1");
                let row: Option<(Uuid,)> = sql.fetch_optional(&mut *conn).await?;
                match row {
                    Some((id,)) => ids.push(id),
                    None => return Ok(ReimbursementOutcome::NotFound { index }),
                }
            }
        }

        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        // Lock every receipt in id order, so two batches never wait on each other in a circle.
        let mut order: Vec<Uuid> = ids.clone();
        order.sort();
        order.dedup();
        let mut current = std::collections::HashMap::with_capacity(order.len());
        for id in &order {
            let row = load_state(tx.conn(), D::row_lock(FIND, FIND_LOCKED), *id).await?;
            let row = row.ok_or(StoreError::NotFound(crate::Entity::Receipt))?;
            current.insert(*id, row);
        }
        // Someone may have answered the same request id while we waited.
        let previous: Option<RequestRow> = Sql::new(PREVIOUS)
            .bind(&req.app_id)
            .bind(&req.request_id)
            .fetch_optional(tx.conn())
            .await?;
        if let Some(row) = previous {
            return Ok(replay(row));
        }

        // The receipts whose claims follow, by action: synced once per batch below.
        let mut synced: Vec<(ReimbursementAction, Vec<Uuid>)> = Vec::new();
        let mut sync = |action: ReimbursementAction, id: Uuid| match synced.iter_mut().find(|(a, _)| *a == action) {
            Some((_, ids)) => ids.push(id),
            None => synced.push((action, vec![id])),
        };
        for (index, (change, id)) in req.changes.iter().zip(&ids).enumerate() {
            let Some(receipt) = current.get_mut(id) else {
                return Err(StoreError::Corrupt("a locked receipt vanished".into()));
            };
            let next = reimbursement_transition(
                receipt.state,
                receipt.holder.as_deref(),
                &req.app_id,
                change.action,
                change.paid_fen,
                receipt.total_fen,
            );
            let next = match next {
                Ok(next) => next,
                Err(refusal) => {
                    // Dropping the transaction rolls back what this batch did so far.
                    return Ok(ReimbursementOutcome::Refused {
                        index,
                        refusal,
                        receipt: Box::new(receipt.clone()),
                    });
                }
            };
            let Some(to) = next else {
                // A rejection of an unlocked receipt changes no state but still rejects its claim.
                if change.action == ReimbursementAction::Reject {
                    sync(change.action, *id);
                }
                continue;
            };
            let from = receipt.state;
            let (holder, locked_at, paid) = match to {
                ReimbursementState::Lock => (Some(req.app_id.clone()), Some(now), None),
                ReimbursementState::Closure => (Some(req.app_id.clone()), receipt.locked_at, change.paid_fen),
                _ => (None, None, None),
            };
            Sql::new(
                "UPDATE receipts SET reimbursement_state = $2, reimbursement_holder = $3, \
                 reimbursement_locked_at = $4, reimbursement_paid_fen = $5, updated_at = $6 WHERE id = $1",
            )
            .bind(*id)
            .bind(to.as_str())
            .bind(&holder)
            .bind(locked_at)
            .bind(paid)
            .bind(now)
            .execute(tx.conn())
            .await?;
            append_event(
                tx.conn(),
                NewEvent {
                    receipt_id: *id,
                    actor: &req.app_id,
                    action: change.action,
                    from,
                    to,
                    paid_fen: paid,
                    reason: req.reason.as_deref(),
                    remote_addr: req.remote_addr.as_deref(),
                    request_id: Some(&req.request_id),
                    at: now,
                },
            )
            .await?;
            receipt.state = to;
            receipt.holder = holder;
            receipt.locked_at = locked_at;
            receipt.paid_fen = paid;
            sync(change.action, *id);
        }
        for (action, receipts) in &synced {
            crate::claims::sync_claims::<D>(
                tx.conn(),
                receipts,
                &req.app_id,
                *action,
                req.reason.as_deref(),
                req.remote_addr.as_deref(),
                Some(&req.request_id),
                now,
            )
            .await?;
        }
        let answer: Vec<ReceiptReimbursement> = ids.iter().filter_map(|id| current.get(id).cloned()).collect();
        Sql::new(
            "INSERT INTO reimbursement_requests (app_id, request_id, fingerprint, status, response, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&req.app_id)
        .bind(&req.request_id)
        .bind(&req.fingerprint)
        .bind(200_i32)
        .bind(Json(&answer))
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "request_id"))?;
        tx.commit().await?;
        Ok(ReimbursementOutcome::Applied(answer))
    }

    async fn release_expired_locks(&self, before: Timestamp, limit: i64) -> Result<Vec<ReceiptReimbursement>> {
        const FIND: &str = concatcp!(
            "SELECT ",
            STATE_COLUMNS,
            " FROM receipts WHERE reimbursement_state = 'LOCK' AND reimbursement_locked_at < $1 \
             AND reimbursement_holder <> $3 ORDER BY id LIMIT $2"
        );
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let rows: Vec<StateRow> = Sql::new(D::row_lock(FIND, concatcp!(FIND, " FOR UPDATE SKIP LOCKED")))
            .bind(before)
            .bind(limit)
            // WeChat's own reimbursers hold their locks there; they do not expire here.
            .bind(piaojia_core::parties::WECHAT_REIMBURSER)
            .fetch_all(tx.conn())
            .await?;
        let mut released = Vec::with_capacity(rows.len());
        let mut by_holder: Vec<(String, Vec<Uuid>)> = Vec::new();
        for row in rows {
            let mut r = row.into_state()?;
            let holder = r.holder.clone().unwrap_or_default();
            Sql::new(
                "UPDATE receipts SET reimbursement_state = 'INIT', reimbursement_holder = NULL, \
                 reimbursement_locked_at = NULL, updated_at = $2 WHERE id = $1",
            )
            .bind(r.receipt_id)
            .bind(now)
            .execute(tx.conn())
            .await?;
            let reason = format!("lock of {holder} expired");
            append_event(
                tx.conn(),
                NewEvent {
                    receipt_id: r.receipt_id,
                    actor: "system",
                    action: ReimbursementAction::Expire,
                    from: ReimbursementState::Lock,
                    to: ReimbursementState::Init,
                    paid_fen: None,
                    reason: Some(&reason),
                    remote_addr: None,
                    request_id: None,
                    at: now,
                },
            )
            .await?;
            match by_holder.iter_mut().find(|(h, _)| *h == holder) {
                Some((_, ids)) => ids.push(r.receipt_id),
                None => by_holder.push((holder, vec![r.receipt_id])),
            }
            r.state = ReimbursementState::Init;
            released.push(r);
        }
        // The claims follow once per holder, not once per receipt.
        for (holder, receipts) in &by_holder {
            let reason = format!("lock of {holder} expired");
            crate::claims::sync_claims::<D>(
                tx.conn(),
                receipts,
                holder,
                ReimbursementAction::Expire,
                Some(reason.as_str()),
                None,
                None,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    async fn reimbursement_history(&self, receipt_id: Uuid) -> Result<Vec<ReimbursementEvent>> {
        let rows: Vec<EventRow> = Sql::new(
            "SELECT id, receipt_id, actor, action, from_state, to_state, paid_fen, reason, remote_addr, request_id, at \
             FROM reimbursement_events WHERE receipt_id = $1 ORDER BY at, id",
        )
        .bind(receipt_id)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ReimbursementEvent {
                    from_state: state(&r.from_state)?,
                    to_state: state(&r.to_state)?,
                    id: r.id,
                    receipt_id: r.receipt_id,
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
}

/// What only tests may do to stored data.
#[cfg(feature = "test-support")]
#[async_trait]
pub trait TestSupport: Send + Sync {
    /// Sets the reimbursement state of a receipt, bypassing the flow's rules.
    async fn set_reimbursement_state(&self, receipt_id: Uuid, state: ReimbursementState) -> Result<()>;
    /// Backdates a lock (to test expiry).
    async fn backdate_lock(&self, receipt_id: Uuid, locked_at: Timestamp) -> Result<()>;
}

#[cfg(feature = "test-support")]
#[async_trait]
impl<D: Dialect> TestSupport for Db<D> {
    async fn set_reimbursement_state(&self, receipt_id: Uuid, state: ReimbursementState) -> Result<()> {
        let changed = Sql::new("UPDATE receipts SET reimbursement_state = $2, updated_at = $3 WHERE id = $1")
            .bind(receipt_id)
            .bind(state.as_str())
            .bind(Timestamp::now())
            .execute(&mut *self.d.writer().await?)
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound(crate::Entity::Receipt));
        }
        Ok(())
    }

    async fn backdate_lock(&self, receipt_id: Uuid, locked_at: Timestamp) -> Result<()> {
        Sql::new("UPDATE receipts SET reimbursement_locked_at = $2 WHERE id = $1 AND reimbursement_state = 'LOCK'")
            .bind(receipt_id)
            .bind(locked_at)
            .execute(&mut *self.d.writer().await?)
            .await?;
        Ok(())
    }
}
