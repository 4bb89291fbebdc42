//! Receipt intake: what issuers push and reverse (冲红), stored with the
//! deliveries each event calls for in one transaction (the outbox), and a
//! person's receipt collected into the wallets of the payers it matches.

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::parties::ReimbursementState;
use piaojia_core::receipt::PayerType;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

use crate::queue::{self, ClaimedDelivery, Delivery, DeliveryRow, Handoff, NewDelivery, Reserved};
use crate::sql::{Conn, Dialect, Json, Sql, Tx, write_error, written};
use crate::wallets::{self, WalletChannel};
use crate::{Backend, Db, Result, StoreError, Timestamp};

/// Metadata of a receipt file held in the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// `pdf` or `ofd`.
    pub format: String,
    /// Lower-case hex SHA-256 of the file bytes.
    pub sha256: String,
    pub size: i64,
    /// Key in the object store.
    pub object_key: String,
}

/// A validated receipt ready to store.
#[derive(Debug, Clone)]
pub struct NewReceiptRecord {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub issuer_app_id: String,
    pub bill_batch_code: String,
    pub bill_no: String,
    /// The 6-character check code (校验码).
    pub random: String,
    pub bus_no: String,
    pub bus_type: String,
    pub payer_type: PayerType,
    pub issued_at: Timestamp,
    pub total_fen: i64,
    /// Lower-case hex SHA-256 of the canonical receipt content (idempotency).
    pub content_hash: String,
    /// Personal data (name, ID number, phone, …) sealed as one JSON document.
    pub payer_sealed: String,
    /// Keyed blind indexes for matching without decrypting.
    pub payer_id_index: Option<String>,
    pub payer_phone_index: Option<String>,
    pub payer_name_index: Option<String>,
    pub open_id: Option<String>,
    /// Everything else of the receipt that is not personal (items, settlement, …).
    pub details: serde_json::Value,
    pub file: Option<FileMeta>,
    pub received_at: Timestamp,
    /// Item names, for the payers' free-text search.
    pub search_text: String,
    /// Subscribe channels through which a registered payer this receipt is
    /// collected for may be told of it, in order of preference.
    pub wallet_channels: Vec<WalletChannel>,
    /// The WeChat app (official account or mini-program) whose user `open_id` is:
    /// the receipt is collected into that openid's wallet at once, registered or not.
    pub openid_wallet: Option<String>,
    /// The receipt's `weChatOrderNo`: a payment of it reported later gives the
    /// receipt its payer's openid (`payments::deliver_paid_receipts`).
    pub wechat_order_no: Option<String>,
}

/// The red receipt (红票) that voids an original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    pub red_bill_batch_code: String,
    pub red_bill_no: String,
    pub red_random: String,
    pub reversed_at: Timestamp,
    pub reason: String,
    pub recorded_at: Timestamp,
}

impl Reversal {
    /// Two reversal requests are "the same" when they name the same red receipt,
    /// time and reason (the record time is ours, not the issuer's).
    pub fn same_request(&self, other: &Reversal) -> bool {
        self.red_bill_batch_code == other.red_bill_batch_code
            && self.red_bill_no == other.red_bill_no
            && self.red_random == other.red_random
            && self.reversed_at == other.reversed_at
            && self.reason == other.reason
    }
}

/// A receipt as held, with its states and deliveries.
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub issuer_app_id: String,
    pub bill_batch_code: String,
    pub bill_no: String,
    pub random: String,
    pub bus_no: String,
    pub bus_type: String,
    pub payer_type: PayerType,
    pub issued_at: Timestamp,
    pub total_fen: i64,
    pub content_hash: String,
    pub payer_sealed: String,
    pub payer_id_index: Option<String>,
    pub payer_phone_index: Option<String>,
    pub payer_name_index: Option<String>,
    pub open_id: Option<String>,
    pub details: serde_json::Value,
    pub file: Option<FileMeta>,
    pub received_at: Timestamp,
    pub reimbursement_state: ReimbursementState,
    pub reversal: Option<Reversal>,
    /// Deliveries, oldest first.
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Created {
        receipt: StoredReceipt,
        /// Another agency holds a receipt with the same code and number: an
        /// issuer pushed what is not its own, or a real clash. Operators are told;
        /// neither receipt is blocked, and the issuer learns nothing.
        identity_clash: bool,
        /// How many of its deliveries went straight to this process's notifier
        /// workers ([`crate::queue::Handoff`]): only the others need a wake-up.
        handed_off: usize,
    },
    /// The same receipt was pushed before by this agency: the first result.
    Duplicate(StoredReceipt),
    /// This agency holds a different receipt with this code and number.
    Conflict,
}

#[derive(Debug, Clone)]
pub enum ReversalOutcome {
    Reversed(StoredReceipt),
    /// The same reversal was recorded before: the first result.
    AlreadyReversed(StoredReceipt),
    /// A different reversal was recorded before.
    Conflict(StoredReceipt),
    /// A reimburser has locked or closed the receipt: it cannot be reversed.
    Locked(ReimbursementState),
    NotFound,
}

#[async_trait]
pub trait Intake: Send + Sync {
    /// Stores a receipt and the deliveries it calls for in one transaction, and
    /// collects a person's receipt into the wallets of the registered payers it
    /// matches (with the subscribe messages they are owed, see
    /// [`NewReceiptRecord::wallet_channels`]). Identity is (`bill_batch_code`,
    /// `bill_no`) within the agency: a second push with the same `content_hash` is
    /// `Duplicate`, with other content `Conflict`; deliveries are only written for
    /// `Created`.
    async fn insert_receipt(&self, receipt: NewReceiptRecord, deliveries: Vec<NewDelivery>) -> Result<InsertOutcome>;
    /// Where pushes' deliveries go at once, leased in the intake's own transaction,
    /// while that notifier has free workers (`None`: every delivery waits for a claim).
    fn hand_off_to(&self, handoff: Option<Arc<dyn Handoff>>);
    /// A receipt of one agency by its identity, with its deliveries.
    async fn receipt(&self, agency_id: Uuid, bill_batch_code: &str, bill_no: &str) -> Result<Option<StoredReceipt>>;
    /// The receipts of every agency with this code and number (deliveries not
    /// loaded): callers tell them apart by the check code (possession, verification).
    async fn find_receipts(&self, bill_batch_code: &str, bill_no: &str) -> Result<Vec<StoredReceipt>>;
    /// Records a reversal (冲红) and its deliveries atomically, following the rules of
    /// [`ReversalOutcome`]. Locked or closed receipts are refused.
    async fn reverse_receipt(
        &self,
        agency_id: Uuid,
        bill_batch_code: &str,
        bill_no: &str,
        reversal: Reversal,
        deliveries: Vec<NewDelivery>,
    ) -> Result<ReversalOutcome>;
    /// Counts receipts of an agency (reconciliation).
    async fn count_receipts(&self, agency_id: Uuid) -> Result<i64>;
}

pub(crate) const RECEIPT_COLUMNS: &str = "id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, \
     bus_type, payer_type, issued_at, total_fen, content_hash, payer_sealed, payer_id_index, payer_phone_index, \
     payer_name_index, open_id, details, file, received_at, reimbursement_state, red_bill_batch_code, red_bill_no, \
     red_random, reversed_at, reversal_reason, reversal_recorded_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ReceiptRow {
    id: Uuid,
    agency_id: Uuid,
    issuer_app_id: String,
    bill_batch_code: String,
    bill_no: String,
    random: String,
    bus_no: String,
    bus_type: String,
    payer_type: String,
    issued_at: Timestamp,
    total_fen: i64,
    content_hash: String,
    payer_sealed: String,
    payer_id_index: Option<String>,
    payer_phone_index: Option<String>,
    payer_name_index: Option<String>,
    open_id: Option<String>,
    details: sqlx::types::Json<serde_json::Value>,
    file: Option<sqlx::types::Json<FileMeta>>,
    received_at: Timestamp,
    reimbursement_state: String,
    red_bill_batch_code: Option<String>,
    red_bill_no: Option<String>,
    red_random: Option<String>,
    reversed_at: Option<Timestamp>,
    reversal_reason: Option<String>,
    reversal_recorded_at: Option<Timestamp>,
}

impl ReceiptRow {
    pub(crate) fn into_receipt(self, deliveries: Vec<DeliveryRow>) -> Result<StoredReceipt> {
        let corrupt = |what: &str, value: &str| StoreError::Corrupt(format!("receipt {}: {what} {value:?}", self.id));
        let reimbursement_state = ReimbursementState::parse(&self.reimbursement_state)
            .ok_or_else(|| corrupt("reimbursement state", &self.reimbursement_state))?;
        let payer_type =
            PayerType::from_code(&self.payer_type).ok_or_else(|| corrupt("payer type", &self.payer_type))?;
        let reversal = match (
            self.red_bill_batch_code,
            self.red_bill_no,
            self.red_random,
            self.reversed_at,
            self.reversal_reason,
            self.reversal_recorded_at,
        ) {
            (None, None, None, None, None, None) => None,
            (
                Some(red_bill_batch_code),
                Some(red_bill_no),
                Some(red_random),
                Some(reversed_at),
                Some(reason),
                Some(recorded_at),
            ) => Some(Reversal {
                red_bill_batch_code,
                red_bill_no,
                red_random,
                reversed_at,
                reason,
                recorded_at,
            }),
            _ => return Err(StoreError::Corrupt(format!("receipt {}: partial reversal", self.id))),
        };
        Ok(StoredReceipt {
            id: self.id,
            agency_id: self.agency_id,
            issuer_app_id: self.issuer_app_id,
            bill_batch_code: self.bill_batch_code,
            bill_no: self.bill_no,
            random: self.random,
            bus_no: self.bus_no,
            bus_type: self.bus_type,
            payer_type,
            issued_at: self.issued_at,
            total_fen: self.total_fen,
            content_hash: self.content_hash,
            payer_sealed: self.payer_sealed,
            payer_id_index: self.payer_id_index,
            payer_phone_index: self.payer_phone_index,
            payer_name_index: self.payer_name_index,
            open_id: self.open_id,
            details: self.details.0,
            file: self.file.map(|f| f.0),
            received_at: self.received_at,
            reimbursement_state,
            reversal,
            deliveries: queue::deliveries(deliveries)?,
        })
    }
}

/// The receipt with this id, with its deliveries.
pub(crate) async fn load_receipt<C: Conn + ?Sized>(conn: &mut C, id: Uuid) -> Result<Option<StoredReceipt>> {
    let row: Option<ReceiptRow> = Sql::new(concatcp!("SELECT ", RECEIPT_COLUMNS, " FROM receipts WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    with_deliveries(conn, row).await
}

/// The receipts with these ids, with their deliveries, in two queries whatever
/// their number; in the order of `ids` (missing ones left out).
pub(crate) async fn load_receipts<C: Conn + ?Sized>(conn: &mut C, ids: &[Uuid]) -> Result<Vec<StoredReceipt>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(concatcp!("SELECT ", RECEIPT_COLUMNS, " FROM receipts WHERE id IN "));
    sql.push_list(ids.iter().copied());
    let rows: Vec<ReceiptRow> = sql.fetch_all(&mut *conn).await?;
    let mut deliveries: std::collections::HashMap<Uuid, Vec<queue::DeliveryRow>> = std::collections::HashMap::new();
    for d in queue::deliveries_of(&mut *conn, ids).await? {
        deliveries.entry(d.receipt_id()).or_default().push(d);
    }
    let mut by_id: std::collections::HashMap<Uuid, ReceiptRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    ids.iter()
        .filter_map(|id| by_id.remove(id))
        .map(|row| {
            let of_row = deliveries.remove(&row.id).unwrap_or_default();
            row.into_receipt(of_row)
        })
        .collect()
}

async fn with_deliveries<C: Conn + ?Sized>(conn: &mut C, row: Option<ReceiptRow>) -> Result<Option<StoredReceipt>> {
    let Some(row) = row else { return Ok(None) };
    let deliveries = queue::receipt_deliveries(conn, row.id).await?;
    row.into_receipt(deliveries).map(Some)
}

/// What a push whose identity the agency already holds amounts to.
fn classify_existing(existing: StoredReceipt, new: &NewReceiptRecord) -> InsertOutcome {
    if existing.content_hash == new.content_hash {
        InsertOutcome::Duplicate(existing)
    } else {
        InsertOutcome::Conflict
    }
}

/// A pushed receipt's INSERT answer: its id, and whether another agency holds
/// the same code and number (the subquery sees only committed rows of others).
/// The rest of the row is what was pushed: it is not read back.
#[derive(sqlx::FromRow)]
struct InsertedRow {
    id: Uuid,
    identity_clash: bool,
}

/// A just-inserted receipt as stored, from what was written.
fn created_receipt(r: &NewReceiptRecord, deliveries: Vec<DeliveryRow>) -> Result<StoredReceipt> {
    Ok(StoredReceipt {
        id: r.id,
        agency_id: r.agency_id,
        issuer_app_id: r.issuer_app_id.clone(),
        bill_batch_code: r.bill_batch_code.clone(),
        bill_no: r.bill_no.clone(),
        random: r.random.clone(),
        bus_no: r.bus_no.clone(),
        bus_type: r.bus_type.clone(),
        payer_type: r.payer_type,
        issued_at: r.issued_at,
        total_fen: r.total_fen,
        content_hash: r.content_hash.clone(),
        payer_sealed: r.payer_sealed.clone(),
        payer_id_index: r.payer_id_index.clone(),
        payer_phone_index: r.payer_phone_index.clone(),
        payer_name_index: r.payer_name_index.clone(),
        open_id: r.open_id.clone(),
        details: r.details.clone(),
        file: r.file.clone(),
        received_at: r.received_at,
        reimbursement_state: ReimbursementState::Init,
        reversal: None,
        deliveries: queue::deliveries(deliveries)?,
    })
}

/// The answer to a reversal request that the stored receipt refuses, or `None`
/// when the reversal is to be recorded.
fn refuse_reversal(stored: StoredReceipt, request: &Reversal) -> Option<ReversalOutcome> {
    // A recorded reversal wins over the lock: a repeat must still get its first answer.
    match &stored.reversal {
        Some(previous) if previous.same_request(request) => return Some(ReversalOutcome::AlreadyReversed(stored)),
        Some(_) => return Some(ReversalOutcome::Conflict(stored)),
        None => {}
    }
    match stored.reimbursement_state {
        state @ (ReimbursementState::Lock | ReimbursementState::Closure) => Some(ReversalOutcome::Locked(state)),
        ReimbursementState::Init | ReimbursementState::Cancel => None,
    }
}

const RECEIPT_INSERT_COLUMNS: &str = "id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, \
     bus_type, payer_type, issued_at, total_fen, content_hash, payer_sealed, payer_id_index, payer_phone_index, \
     payer_name_index, open_id, details, file, received_at, search_text, wechat_order_no";
const ON_IDENTITY_TAKEN: &str = " ON CONFLICT (agency_id, bill_batch_code, bill_no) DO NOTHING RETURNING ";
const RETURNING_CLASH: &str = ", EXISTS (SELECT 1 FROM receipts other WHERE other.bill_batch_code = receipts.bill_batch_code \
     AND other.bill_no = receipts.bill_no AND other.agency_id <> receipts.agency_id) AS identity_clash";

/// Inserts the receipts of a batch of pushes in one statement: the rows it
/// inserted (a receipt whose identity is taken, by a committed push or an earlier
/// one of this batch, is left out).
async fn insert_receipts<D: Dialect>(conn: &mut D::Conn, jobs: &[PushJob], now: Timestamp) -> Result<Vec<InsertedRow>> {
    let rs = || jobs.iter().map(|(r, _)| r);
    let texts = |f: &dyn Fn(&NewReceiptRecord) -> Option<String>| rs().map(f).collect::<Vec<_>>();
    let sql = match D::BACKEND {
        // A concurrent insert of the same identity makes this wait for the other
        // transaction; once it commits we get no row and read its receipt later.
        // The statement also takes the payers' identity locks (saving a round
        // trip), all of the batch's in one order: a registration holding them has
        // committed by the time they are ours, and the matching is a later
        // statement, so it sees that payer. Arrays keep it prepared whatever the count.
        Backend::Postgres => {
            let mut keys: Vec<i64> = rs().flat_map(wallets::receipt_lock_keys).collect();
            keys.sort_unstable();
            keys.dedup();
            Sql::new(concatcp!(
                "INSERT INTO receipts (",
                RECEIPT_INSERT_COLUMNS,
                ", reimbursement_state, updated_at) SELECT u.id, u.agency_id, u.issuer_app_id, u.bill_batch_code, \
                 u.bill_no, u.random, u.bus_no, u.bus_type, u.payer_type, u.issued_at, u.total_fen, u.content_hash, \
                 u.payer_sealed, u.payer_id_index, u.payer_phone_index, u.payer_name_index, u.open_id, u.details::jsonb, \
                 u.file::jsonb, u.received_at, u.search_text, u.wechat_order_no, 'INIT', $23 \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::timestamptz[], $11::bigint[], $12::text[], $13::text[], $14::text[], \
                 $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::timestamptz[], $21::text[], \
                 $22::text[]) AS u (",
                RECEIPT_INSERT_COLUMNS,
                ") CROSS JOIN (SELECT count(pg_advisory_xact_lock(k)) FROM unnest($24::bigint[]) AS k) AS locked",
                ON_IDENTITY_TAKEN,
                "id",
                RETURNING_CLASH
            ))
            .bind(rs().map(|r| r.id).collect::<Vec<_>>())
            .bind(rs().map(|r| r.agency_id).collect::<Vec<_>>())
            .bind(texts(&|r| Some(r.issuer_app_id.clone())))
            .bind(texts(&|r| Some(r.bill_batch_code.clone())))
            .bind(texts(&|r| Some(r.bill_no.clone())))
            .bind(texts(&|r| Some(r.random.clone())))
            .bind(texts(&|r| Some(r.bus_no.clone())))
            .bind(texts(&|r| Some(r.bus_type.clone())))
            .bind(texts(&|r| Some(r.payer_type.as_code().to_owned())))
            .bind(rs().map(|r| Some(r.issued_at)).collect::<Vec<_>>())
            .bind(rs().map(|r| Some(r.total_fen)).collect::<Vec<_>>())
            .bind(texts(&|r| Some(r.content_hash.clone())))
            .bind(texts(&|r| Some(r.payer_sealed.clone())))
            .bind(texts(&|r| r.payer_id_index.clone()))
            .bind(texts(&|r| r.payer_phone_index.clone()))
            .bind(texts(&|r| r.payer_name_index.clone()))
            .bind(texts(&|r| r.open_id.clone()))
            .bind(texts(&|r| Some(r.details.to_string())))
            .bind(texts(&|r| r.file.as_ref().and_then(|f| serde_json::to_string(f).ok())))
            .bind(rs().map(|r| Some(r.received_at)).collect::<Vec<_>>())
            .bind(texts(&|r| Some(r.search_text.clone())))
            .bind(texts(&|r| r.wechat_order_no.clone()))
            .bind(now)
            .bind(keys.into_iter().map(Some).collect::<Vec<_>>())
        }
        // Writers are serialised, so a taken identity is simply a committed row
        // or one of this batch.
        Backend::Sqlite => {
            let mut sql = Sql::new(concatcp!(
                "INSERT INTO receipts (",
                RECEIPT_INSERT_COLUMNS,
                ", reimbursement_state, updated_at) VALUES "
            ));
            for (i, r) in rs().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.push_bind(r.id).push(", ").push_bind(r.agency_id).push(", ");
                sql.push_bind(&r.issuer_app_id)
                    .push(", ")
                    .push_bind(&r.bill_batch_code)
                    .push(", ");
                sql.push_bind(&r.bill_no).push(", ").push_bind(&r.random).push(", ");
                sql.push_bind(&r.bus_no).push(", ").push_bind(&r.bus_type).push(", ");
                sql.push_bind(r.payer_type.as_code())
                    .push(", ")
                    .push_bind(r.issued_at)
                    .push(", ");
                sql.push_bind(r.total_fen)
                    .push(", ")
                    .push_bind(&r.content_hash)
                    .push(", ");
                sql.push_bind(&r.payer_sealed)
                    .push(", ")
                    .push_bind(&r.payer_id_index)
                    .push(", ");
                sql.push_bind(&r.payer_phone_index)
                    .push(", ")
                    .push_bind(&r.payer_name_index)
                    .push(", ");
                sql.push_bind(&r.open_id)
                    .push(", ")
                    .push_bind(Json(&r.details))
                    .push(", ");
                sql.push_bind(r.file.as_ref().map(Json))
                    .push(", ")
                    .push_bind(r.received_at)
                    .push(", ");
                sql.push_bind(&r.search_text)
                    .push(", ")
                    .push_bind(&r.wechat_order_no)
                    .push(", 'INIT', ");
                sql.push_bind(now).push(")");
            }
            sql.push(ON_IDENTITY_TAKEN).push("id").push(RETURNING_CLASH).prepared();
            sql
        }
    };
    sql.fetch_all(&mut *conn)
        .await
        .map_err(|e| write_error(e, "receipt_id"))
}

/// Writes a batch of pushes in the caller's intake transaction, in a handful of
/// statements whatever the batch's size (a statement is a round trip, and on
/// SQLite two thread hand-offs): the receipts, the payers they match, the wallets
/// of their openids, their deliveries. A push whose identity is taken then reads
/// what holds it.
async fn insert_all<D: Dialect>(
    conn: &mut D::Conn,
    jobs: &[PushJob],
    handoff: Option<&dyn Handoff>,
) -> Result<(Vec<InsertOutcome>, Option<Handed>)> {
    use std::collections::{HashMap, HashSet};
    let now = Timestamp::now();
    let mut inserted: HashMap<Uuid, bool> = insert_receipts::<D>(&mut *conn, jobs, now)
        .await?
        .into_iter()
        .map(|row| (row.id, row.identity_clash))
        .collect();
    let created: Vec<&PushJob> = jobs.iter().filter(|(r, _)| inserted.contains_key(&r.id)).collect();
    let receipts: Vec<&NewReceiptRecord> = created.iter().map(|(r, _)| r).collect();
    let matched = wallets::verified_payers_of::<D>(&mut *conn, &receipts).await?;
    let mut planned: Vec<Vec<NewDelivery>> = Vec::with_capacity(created.len());
    for (r, deliveries) in &created {
        let mut mine = deliveries.clone();
        if let Some(payers) = matched.get(&r.id) {
            let owed = wallets::collect_for_payers::<D>(&mut *conn, r, payers, &mine, now).await?;
            mine.extend(owed);
        }
        planned.push(mine);
    }
    let openids: Vec<crate::pages::OpenidPush> = receipts
        .iter()
        .filter_map(|r| match (&r.openid_wallet, &r.open_id) {
            (Some(app), Some(openid)) => Some((app.as_str(), openid.as_str(), r.id, r.agency_id, r.issued_at)),
            _ => None,
        })
        .collect();
    crate::pages::collect_all_under_openid::<D>(&mut *conn, &openids, now).await?;
    let batch: Vec<(Uuid, Uuid, &[NewDelivery])> = receipts
        .iter()
        .zip(&planned)
        .map(|(r, p)| (r.id, r.agency_id, p.as_slice()))
        .collect();
    // Free workers of this process's notifier take the first deliveries as they are
    // written; the rest wait for a claim.
    let total: usize = planned.iter().map(Vec::len).sum();
    let reserved = handoff.filter(|_| total > 0).and_then(|h| h.reserve(total));
    let lease = reserved.as_ref().map(|r| queue::IntakeLease {
        owner: &r.owner,
        until: r.lease_until,
        count: r.count.min(total),
    });
    let leased: HashSet<Uuid> = planned
        .iter()
        .flatten()
        .take(lease.map_or(0, |l| l.count))
        .map(|d| d.id)
        .collect();
    let mut stored: HashMap<Uuid, Vec<DeliveryRow>> = HashMap::new();
    for row in queue::insert_deliveries_of::<D>(&mut *conn, &batch, now, lease).await? {
        stored.entry(row.receipt_id()).or_default().push(row);
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (i, (r, _)) in jobs.iter().enumerate() {
        if let Some(identity_clash) = inserted.remove(&r.id) {
            // The statement's own rows are not in its snapshot: a clash with an
            // earlier push of this batch is found here.
            let clash_in_batch = jobs[..i].iter().any(|(other, _)| {
                other.bill_batch_code == r.bill_batch_code
                    && other.bill_no == r.bill_no
                    && other.agency_id != r.agency_id
            });
            let receipt = created_receipt(r, stored.remove(&r.id).unwrap_or_default())?;
            let handed_off = receipt.deliveries.iter().filter(|d| leased.contains(&d.id)).count();
            outcomes.push(InsertOutcome::Created {
                receipt,
                identity_clash: identity_clash || clash_in_batch,
                handed_off,
            });
            continue;
        }
        // PostgreSQL at READ COMMITTED: this statement sees the row that won the conflict.
        let row: Option<ReceiptRow> = Sql::new(concatcp!(
            "SELECT ",
            RECEIPT_COLUMNS,
            " FROM receipts WHERE agency_id = $1 AND bill_batch_code = $2 AND bill_no = $3"
        ))
        .bind(r.agency_id)
        .bind(&r.bill_batch_code)
        .bind(&r.bill_no)
        .fetch_optional(&mut *conn)
        .await?;
        let existing = written(with_deliveries(&mut *conn, row).await?, "conflicting receipt")?;
        outcomes.push(classify_existing(existing, r));
    }
    let handed = match reserved {
        Some(reserved) => {
            let records: HashMap<Uuid, &NewReceiptRecord> = receipts.iter().map(|r| (r.id, *r)).collect();
            let mine = outcomes
                .iter()
                .filter_map(|o| match o {
                    InsertOutcome::Created { receipt, .. } => Some(receipt),
                    _ => None,
                })
                .flat_map(|receipt| receipt.deliveries.iter())
                .filter(|d| leased.contains(&d.id))
                .filter_map(|d| records.get(&d.receipt_id).map(|r| (d.clone(), *r)))
                .collect();
            let jobs = queue::leased_jobs::<D>(&mut *conn, mine, reserved.lease_until).await?;
            Some(Handed { reserved, jobs })
        }
        None => None,
    };
    Ok((outcomes, handed))
}

/// Deliveries leased in an intake transaction and the workers reserved for them:
/// started once the transaction has committed.
struct Handed {
    reserved: Reserved,
    jobs: Vec<ClaimedDelivery>,
}

/// One push: the receipt and the deliveries its issue calls for.
pub(crate) type PushJob = (NewReceiptRecord, Vec<NewDelivery>);

/// Stores a batch of pushes in one transaction (see `group_commit.rs`); when that
/// fails, each push again in a transaction of its own, so every push gets its own
/// answer. A database that cannot be reached fails the whole batch at once.
async fn commit_pushes<D: Dialect>(
    d: Arc<D>,
    jobs: Vec<PushJob>,
    handoff: Option<Arc<dyn Handoff>>,
) -> Result<Vec<Result<InsertOutcome>>> {
    let handoff = handoff.as_deref();
    if jobs.len() > 1 {
        match insert_batch(&*d, &jobs, handoff).await {
            Ok(outcomes) => return Ok(outcomes.into_iter().map(Ok).collect()),
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, pushes = jobs.len(), "a batch of pushes failed; storing them one by one")
            }
        }
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in &jobs {
        results.push(
            insert_batch(&*d, std::slice::from_ref(job), handoff)
                .await
                .map(|mut o| o.remove(0)),
        );
    }
    Ok(results)
}

async fn insert_batch<D: Dialect>(
    d: &D,
    jobs: &[PushJob],
    handoff: Option<&dyn Handoff>,
) -> Result<Vec<InsertOutcome>> {
    let mut tx = d.intake().await?;
    let (outcomes, handed) = insert_all::<D>(tx.conn(), jobs, handoff).await?;
    tx.commit().await?;
    // Only now: a worker must never send what a rollback could still undo.
    if let Some(Handed { reserved, jobs }) = handed {
        reserved.start(jobs);
    }
    Ok(outcomes)
}

#[async_trait]
impl<D: Dialect> Intake for Db<D> {
    async fn insert_receipt(&self, receipt: NewReceiptRecord, deliveries: Vec<NewDelivery>) -> Result<InsertOutcome> {
        let d = self.d.clone();
        let handoff = self.handoff.clone();
        self.intake
            .submit((receipt, deliveries), move |jobs| {
                let d = d.clone();
                // Read per batch: the notifier may have stopped since the push came.
                let handoff = handoff.read().unwrap_or_else(|p| p.into_inner()).clone();
                async move {
                    let n = jobs.len();
                    let work = d.clone();
                    match d.run_intake(Box::pin(commit_pushes::<D>(work, jobs, handoff))).await {
                        Ok(results) => results,
                        Err(e) => std::iter::once(Err(e))
                            .chain((1..n).map(|_| Err(StoreError::Database(sqlx::Error::PoolClosed))))
                            .collect(),
                    }
                }
            })
            .await
    }

    fn hand_off_to(&self, handoff: Option<Arc<dyn Handoff>>) {
        *self.handoff.write().unwrap_or_else(|p| p.into_inner()) = handoff;
    }

    async fn receipt(&self, agency_id: Uuid, bill_batch_code: &str, bill_no: &str) -> Result<Option<StoredReceipt>> {
        // Receipt and deliveries from one snapshot.
        let mut tx = self.d.snapshot().await?;
        let row: Option<ReceiptRow> = Sql::new(concatcp!(
            "SELECT ",
            RECEIPT_COLUMNS,
            " FROM receipts WHERE agency_id = $1 AND bill_batch_code = $2 AND bill_no = $3"
        ))
        .bind(agency_id)
        .bind(bill_batch_code)
        .bind(bill_no)
        .fetch_optional(tx.conn())
        .await?;
        let stored = with_deliveries(tx.conn(), row).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn find_receipts(&self, bill_batch_code: &str, bill_no: &str) -> Result<Vec<StoredReceipt>> {
        let rows: Vec<ReceiptRow> = Sql::new(concatcp!(
            "SELECT ",
            RECEIPT_COLUMNS,
            " FROM receipts WHERE bill_batch_code = $1 AND bill_no = $2 ORDER BY received_at, id"
        ))
        .bind(bill_batch_code)
        .bind(bill_no)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        rows.into_iter().map(|r| r.into_receipt(Vec::new())).collect()
    }

    async fn reverse_receipt(
        &self,
        agency_id: Uuid,
        bill_batch_code: &str,
        bill_no: &str,
        reversal: Reversal,
        deliveries: Vec<NewDelivery>,
    ) -> Result<ReversalOutcome> {
        const FIND: &str = concatcp!(
            "SELECT ",
            RECEIPT_COLUMNS,
            " FROM receipts WHERE agency_id = $1 AND bill_batch_code = $2 AND bill_no = $3"
        );
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let row: Option<ReceiptRow> = Sql::new(D::row_lock(FIND, concatcp!(FIND, " FOR UPDATE")))
            .bind(agency_id)
            .bind(bill_batch_code)
            .bind(bill_no)
            .fetch_optional(tx.conn())
            .await?;
        let Some(stored) = with_deliveries(tx.conn(), row).await? else {
            return Ok(ReversalOutcome::NotFound);
        };
        let id = stored.id;
        let (issuer_app_id, before) = (stored.issuer_app_id.clone(), stored.reimbursement_state);
        if let Some(refusal) = refuse_reversal(stored, &reversal) {
            return Ok(refusal);
        }
        Sql::new(
            "UPDATE receipts SET red_bill_batch_code = $2, red_bill_no = $3, red_random = $4, reversed_at = $5, \
             reversal_reason = $6, reversal_recorded_at = $7, reimbursement_state = 'CANCEL', updated_at = $8 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(&reversal.red_bill_batch_code)
        .bind(&reversal.red_bill_no)
        .bind(&reversal.red_random)
        .bind(reversal.reversed_at)
        .bind(&reversal.reason)
        .bind(reversal.recorded_at)
        .bind(now)
        .execute(tx.conn())
        .await?;
        crate::reimbursement::record_reversal(tx.conn(), id, &issuer_app_id, before, &reversal.reason, now).await?;
        crate::claims::cancel_claims_of_reversed::<D>(tx.conn(), id, &issuer_app_id, &reversal.reason, now).await?;
        queue::insert_deliveries::<D>(tx.conn(), id, agency_id, &deliveries, now).await?;
        let updated = written(load_receipt(tx.conn(), id).await?, "receipt")?;
        tx.commit().await?;
        Ok(ReversalOutcome::Reversed(updated))
    }

    async fn count_receipts(&self, agency_id: Uuid) -> Result<i64> {
        let (n,): (i64,) = Sql::new("SELECT count(*) FROM receipts WHERE agency_id = $1")
            .bind(agency_id)
            .fetch_one(&mut *self.d.read().await?)
            .await?;
        Ok(n)
    }
}
