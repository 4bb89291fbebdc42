//! The official account and WeChat's own channel: who follows an account (an
//! `unsubscribe` stops template sends to that openid), what WeChat finally reported
//! of a delivery (`TEMPLATESENDJOBFINISH`), and the card package (卡包, DOMAIN.md §7):
//! one card template per agency ([`CardUnit`]) and one authorisation order per
//! receipt ([`CardOrder`]) with the card it became.

use async_trait::async_trait;
use const_format::concatcp;
use serde::Serialize;
use uuid::Uuid;

use crate::intake::FileMeta;
use crate::queue::{Delivery, NewDelivery, deliveries, insert_deliveries};
use crate::sql::{Dialect, Sql, Tx, write_error};
use crate::{Db, Result, StoreError, Timestamp};

/// An agency's card template in the card package, with the platform it is under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardUnit {
    pub agency_id: Uuid,
    /// The official account that is both platform and unit (piaojia plays both roles).
    pub wechat_app_id: String,
    /// The platform's identifier (`card/invoice/seturl`).
    pub s_pappid: String,
    /// `createbillcard`'s `card_id`.
    pub card_id: String,
    pub payee: String,
    pub logo_url: String,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One receipt offered to a payer's card package (`getbillauthurl`), and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardOrder {
    pub order_id: String,
    pub receipt_id: Uuid,
    pub agency_id: Uuid,
    pub wechat_app_id: String,
    /// The payer's openid in `wechat_app_id` (the receipt's payer).
    pub open_id: String,
    pub card_id: String,
    pub requested_at: Timestamp,
    /// When `user_authorize_invoice` arrived.
    pub authorized_at: Option<Timestamp>,
    /// The card's `code`, once inserted (`insertbill`).
    pub code: Option<String>,
    pub inserted_at: Option<Timestamp>,
    /// The status we last set on the card (`INVOICE_REIMBURSE_*`).
    pub card_status: Option<String>,
    /// The status WeChat last reported (`update_invoice_status`).
    pub wechat_status: Option<String>,
    pub wechat_status_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// What the card package needs of a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardReceipt {
    pub id: Uuid,
    pub agency_id: Uuid,
    /// The payer's openid the receipt was pushed with.
    pub open_id: Option<String>,
    pub total_fen: i64,
    pub reversed: bool,
    pub file: Option<FileMeta>,
}

/// What a provider finally reported of a delivery it had accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderReport {
    pub delivery_id: Uuid,
    /// E.g. `success`, `failed:user block`.
    pub status: String,
    pub reported_at: Timestamp,
}

#[async_trait]
pub trait OfficialAccount: Send + Sync {
    /// Records a follow (`subscribe`) or unfollow (`unsubscribe`); an older event
    /// than the one recorded changes nothing.
    async fn set_following(&self, wechat_app_id: &str, open_id: &str, following: bool, at: Timestamp) -> Result<()>;
    /// `Some(false)` once the openid unfollowed (and did not follow again); `None`
    /// when no event about it was seen.
    async fn following(&self, wechat_app_id: &str, open_id: &str) -> Result<Option<bool>>;
    /// Records a provider's final report of a delivery (the first report wins).
    async fn record_provider_report(&self, delivery_id: Uuid, status: &str, at: Timestamp) -> Result<bool>;
    async fn provider_report(&self, delivery_id: Uuid) -> Result<Option<ProviderReport>>;

    /// The receipt as the card package needs it.
    async fn card_receipt(&self, receipt_id: Uuid) -> Result<Option<CardReceipt>>;
    /// Creates or replaces the agency's card template.
    async fn upsert_card_unit(&self, unit: CardUnit) -> Result<CardUnit>;
    async fn card_unit(&self, agency_id: Uuid) -> Result<Option<CardUnit>>;
    /// Records the authorisation order of a receipt; a repeat returns the order as
    /// first recorded (its payer cannot change).
    async fn open_card_order(&self, order: CardOrder) -> Result<CardOrder>;
    async fn card_order(&self, order_id: &str) -> Result<Option<CardOrder>>;
    async fn card_order_for_receipt(&self, receipt_id: Uuid) -> Result<Option<CardOrder>>;
    /// The order of the card WeChat names by `card_id` and `code`.
    async fn card_order_by_code(&self, card_id: &str, code: &str) -> Result<Option<CardOrder>>;
    /// The payer agreed: with the deliveries that put the card into their package,
    /// in one transaction. `None` (and nothing written) when the order was already
    /// authorised, so a repeated event starts nothing twice.
    async fn authorize_card_order(
        &self,
        order_id: &str,
        at: Timestamp,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Option<Vec<Delivery>>>;
    /// The card was inserted with `code` (`None`: it is in the payer's package but
    /// WeChat's answer with its code was lost).
    async fn card_inserted(&self, order_id: &str, code: Option<&str>, at: Timestamp) -> Result<()>;
    /// A card of `card_id` in `open_id`'s package reported with `code` that no
    /// order of ours holds: when exactly one inserted order of theirs has no code
    /// yet (its insertion's answer was lost), it is that one; the code is recorded.
    async fn learn_card_code(&self, card_id: &str, open_id: &str, code: &str) -> Result<Option<CardOrder>>;
    /// The status we set on the card.
    async fn set_card_status(&self, order_id: &str, status: &str, at: Timestamp) -> Result<()>;
    /// What WeChat reported of a card (`update_invoice_status`); false when no
    /// card of ours has that `card_id` and `code`.
    async fn record_wechat_card_status(&self, card_id: &str, code: &str, status: &str, at: Timestamp) -> Result<bool>;
    /// Queues deliveries about a card of `receipt_id` (status mirrors).
    async fn queue_card_deliveries(
        &self,
        receipt_id: Uuid,
        agency_id: Uuid,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<Delivery>>;
}

const UNIT_COLUMNS: &str =
    "agency_id, wechat_app_id, s_pappid, card_id, payee, logo_url, enabled, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct UnitRow {
    agency_id: Uuid,
    wechat_app_id: String,
    s_pappid: String,
    card_id: String,
    payee: String,
    logo_url: String,
    enabled: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<UnitRow> for CardUnit {
    fn from(r: UnitRow) -> Self {
        CardUnit {
            agency_id: r.agency_id,
            wechat_app_id: r.wechat_app_id,
            s_pappid: r.s_pappid,
            card_id: r.card_id,
            payee: r.payee,
            logo_url: r.logo_url,
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const ORDER_COLUMNS: &str = "order_id, receipt_id, agency_id, wechat_app_id, open_id, card_id, requested_at, \
     authorized_at, code, inserted_at, card_status, wechat_status, wechat_status_at, updated_at";

#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: String,
    receipt_id: Uuid,
    agency_id: Uuid,
    wechat_app_id: String,
    open_id: String,
    card_id: String,
    requested_at: Timestamp,
    authorized_at: Option<Timestamp>,
    code: Option<String>,
    inserted_at: Option<Timestamp>,
    card_status: Option<String>,
    wechat_status: Option<String>,
    wechat_status_at: Option<Timestamp>,
    updated_at: Timestamp,
}

impl From<OrderRow> for CardOrder {
    fn from(r: OrderRow) -> Self {
        CardOrder {
            order_id: r.order_id,
            receipt_id: r.receipt_id,
            agency_id: r.agency_id,
            wechat_app_id: r.wechat_app_id,
            open_id: r.open_id,
            card_id: r.card_id,
            requested_at: r.requested_at,
            authorized_at: r.authorized_at,
            code: r.code,
            inserted_at: r.inserted_at,
            card_status: r.card_status,
            wechat_status: r.wechat_status,
            wechat_status_at: r.wechat_status_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CardReceiptRow {
    id: Uuid,
    agency_id: Uuid,
    open_id: Option<String>,
    total_fen: i64,
    reversed: bool,
    file: Option<sqlx::types::Json<FileMeta>>,
}

#[derive(sqlx::FromRow)]
struct FollowRow {
    following: bool,
}

#[derive(sqlx::FromRow)]
struct ReportRow {
    delivery_id: Uuid,
    status: String,
    reported_at: Timestamp,
}

impl<D: Dialect> Db<D> {
    async fn order_by(&self, sql: Sql<'_>) -> Result<Option<CardOrder>> {
        let row: Option<OrderRow> = sql.fetch_optional(&mut *self.d.read().await?).await?;
        Ok(row.map(CardOrder::from))
    }
}

#[async_trait]
impl<D: Dialect> OfficialAccount for Db<D> {
    async fn set_following(&self, wechat_app_id: &str, open_id: &str, following: bool, at: Timestamp) -> Result<()> {
        Sql::new(
            "INSERT INTO wechat_followers (wechat_app_id, open_id, following, changed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (wechat_app_id, open_id) DO UPDATE SET following = excluded.following, \
             changed_at = excluded.changed_at WHERE wechat_followers.changed_at <= excluded.changed_at",
        )
        .bind(wechat_app_id)
        .bind(open_id)
        .bind(following)
        .bind(at)
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(())
    }

    async fn following(&self, wechat_app_id: &str, open_id: &str) -> Result<Option<bool>> {
        let row: Option<FollowRow> =
            Sql::new("SELECT following FROM wechat_followers WHERE wechat_app_id = $1 AND open_id = $2")
                .bind(wechat_app_id)
                .bind(open_id)
                .fetch_optional(&mut *self.d.read().await?)
                .await?;
        Ok(row.map(|r| r.following))
    }

    async fn record_provider_report(&self, delivery_id: Uuid, status: &str, at: Timestamp) -> Result<bool> {
        let n = Sql::new(
            "INSERT INTO provider_reports (delivery_id, status, reported_at) VALUES ($1, $2, $3) \
             ON CONFLICT (delivery_id) DO NOTHING",
        )
        .bind(delivery_id)
        .bind(status)
        .bind(at)
        .execute(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "provider_report"))?;
        Ok(n > 0)
    }

    async fn provider_report(&self, delivery_id: Uuid) -> Result<Option<ProviderReport>> {
        let row: Option<ReportRow> =
            Sql::new("SELECT delivery_id, status, reported_at FROM provider_reports WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_optional(&mut *self.d.read().await?)
                .await?;
        Ok(row.map(|r| ProviderReport {
            delivery_id: r.delivery_id,
            status: r.status,
            reported_at: r.reported_at,
        }))
    }

    async fn card_receipt(&self, receipt_id: Uuid) -> Result<Option<CardReceipt>> {
        let row: Option<CardReceiptRow> = Sql::new(
            "SELECT id, agency_id, open_id, total_fen, (red_bill_no IS NOT NULL) AS reversed, file \
             FROM receipts WHERE id = $1",
        )
        .bind(receipt_id)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        Ok(row.map(|r| CardReceipt {
            id: r.id,
            agency_id: r.agency_id,
            open_id: r.open_id,
            total_fen: r.total_fen,
            reversed: r.reversed,
            file: r.file.map(|f| f.0),
        }))
    }

    async fn upsert_card_unit(&self, u: CardUnit) -> Result<CardUnit> {
        let row: UnitRow = Sql::new(concatcp!(
            "INSERT INTO card_units (",
            UNIT_COLUMNS,
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (agency_id) DO UPDATE SET \
             wechat_app_id = excluded.wechat_app_id, s_pappid = excluded.s_pappid, card_id = excluded.card_id, \
             payee = excluded.payee, logo_url = excluded.logo_url, enabled = excluded.enabled, \
             updated_at = excluded.updated_at RETURNING ",
            UNIT_COLUMNS
        ))
        .bind(u.agency_id)
        .bind(&u.wechat_app_id)
        .bind(&u.s_pappid)
        .bind(&u.card_id)
        .bind(&u.payee)
        .bind(&u.logo_url)
        .bind(u.enabled)
        .bind(u.updated_at)
        .fetch_one(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "card_unit"))?;
        Ok(row.into())
    }

    async fn card_unit(&self, agency_id: Uuid) -> Result<Option<CardUnit>> {
        let row: Option<UnitRow> = Sql::new(concatcp!(
            "SELECT ",
            UNIT_COLUMNS,
            " FROM card_units WHERE agency_id = $1"
        ))
        .bind(agency_id)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        Ok(row.map(CardUnit::from))
    }

    async fn open_card_order(&self, o: CardOrder) -> Result<CardOrder> {
        let mut tx = self.d.write().await?;
        Sql::new(concatcp!(
            "INSERT INTO card_orders (",
            ORDER_COLUMNS,
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, NULL, NULL, $7) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(&o.order_id)
        .bind(o.receipt_id)
        .bind(o.agency_id)
        .bind(&o.wechat_app_id)
        .bind(&o.open_id)
        .bind(&o.card_id)
        .bind(o.requested_at)
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "card_order"))?;
        let row: Option<OrderRow> = Sql::new(concatcp!(
            "SELECT ",
            ORDER_COLUMNS,
            " FROM card_orders WHERE receipt_id = $1"
        ))
        .bind(o.receipt_id)
        .fetch_optional(tx.conn())
        .await?;
        tx.commit().await?;
        row.map(CardOrder::from)
            .ok_or_else(|| StoreError::Corrupt("card order vanished inside its transaction".into()))
    }

    async fn card_order(&self, order_id: &str) -> Result<Option<CardOrder>> {
        self.order_by(
            Sql::new(concatcp!(
                "SELECT ",
                ORDER_COLUMNS,
                " FROM card_orders WHERE order_id = $1"
            ))
            .bind(order_id),
        )
        .await
    }

    async fn card_order_by_code(&self, card_id: &str, code: &str) -> Result<Option<CardOrder>> {
        self.order_by(
            Sql::new(concatcp!(
                "SELECT ",
                ORDER_COLUMNS,
                " FROM card_orders WHERE card_id = $1 AND code = $2"
            ))
            .bind(card_id)
            .bind(code),
        )
        .await
    }

    async fn card_order_for_receipt(&self, receipt_id: Uuid) -> Result<Option<CardOrder>> {
        self.order_by(
            Sql::new(concatcp!(
                "SELECT ",
                ORDER_COLUMNS,
                " FROM card_orders WHERE receipt_id = $1"
            ))
            .bind(receipt_id),
        )
        .await
    }

    async fn authorize_card_order(
        &self,
        order_id: &str,
        at: Timestamp,
        new: Vec<NewDelivery>,
    ) -> Result<Option<Vec<Delivery>>> {
        let mut tx = self.d.write().await?;
        let row: Option<OrderRow> = Sql::new(concatcp!(
            "UPDATE card_orders SET authorized_at = $2, updated_at = $2 WHERE order_id = $1 \
             AND authorized_at IS NULL RETURNING ",
            ORDER_COLUMNS
        ))
        .bind(order_id)
        .bind(at)
        .fetch_optional(tx.conn())
        .await?;
        let Some(order) = row else {
            return Ok(None);
        };
        let rows = insert_deliveries::<D>(tx.conn(), order.receipt_id, order.agency_id, &new, at).await?;
        tx.commit().await?;
        Ok(Some(deliveries(rows)?))
    }

    async fn card_inserted(&self, order_id: &str, code: Option<&str>, at: Timestamp) -> Result<()> {
        let n = Sql::new(
            "UPDATE card_orders SET code = $2, inserted_at = $3, card_status = 'INVOICE_REIMBURSE_INIT', \
             updated_at = $3 WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(code)
        .bind(at)
        .execute(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "card_code"))?;
        if n == 0 {
            return Err(StoreError::NotFound(crate::Entity::Receipt));
        }
        Ok(())
    }

    async fn learn_card_code(&self, card_id: &str, open_id: &str, code: &str) -> Result<Option<CardOrder>> {
        let mut tx = self.d.write().await?;
        let candidates: Vec<(String,)> = Sql::new(
            "SELECT order_id FROM card_orders WHERE card_id = $1 AND open_id = $2 \
             AND inserted_at IS NOT NULL AND code IS NULL LIMIT 2",
        )
        .bind(card_id)
        .bind(open_id)
        .fetch_all(tx.conn())
        .await?;
        let [(order_id,)] = candidates.as_slice() else {
            return Ok(None);
        };
        Sql::new("UPDATE card_orders SET code = $2, updated_at = $3 WHERE order_id = $1 AND code IS NULL")
            .bind(order_id)
            .bind(code)
            .bind(Timestamp::now())
            .execute(tx.conn())
            .await
            .map_err(|e| write_error(e, "card_code"))?;
        let order: Option<OrderRow> = Sql::new(concatcp!(
            "SELECT ",
            ORDER_COLUMNS,
            " FROM card_orders WHERE order_id = $1"
        ))
        .bind(order_id)
        .fetch_optional(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(order.map(CardOrder::from))
    }

    async fn set_card_status(&self, order_id: &str, status: &str, at: Timestamp) -> Result<()> {
        Sql::new("UPDATE card_orders SET card_status = $2, updated_at = $3 WHERE order_id = $1")
            .bind(order_id)
            .bind(status)
            .bind(at)
            .execute(&mut *self.d.writer().await?)
            .await?;
        Ok(())
    }

    async fn record_wechat_card_status(&self, card_id: &str, code: &str, status: &str, at: Timestamp) -> Result<bool> {
        let n = Sql::new(
            "UPDATE card_orders SET wechat_status = $3, wechat_status_at = $4, updated_at = $4 \
             WHERE card_id = $1 AND code = $2",
        )
        .bind(card_id)
        .bind(code)
        .bind(status)
        .bind(at)
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(n > 0)
    }

    async fn queue_card_deliveries(
        &self,
        receipt_id: Uuid,
        agency_id: Uuid,
        new: Vec<NewDelivery>,
    ) -> Result<Vec<Delivery>> {
        let mut tx = self.d.write().await?;
        let rows = insert_deliveries::<D>(tx.conn(), receipt_id, agency_id, &new, Timestamp::now()).await?;
        tx.commit().await?;
        deliveries(rows)
    }
}

/// The message server's inbox: an event WeChat pushed, kept from before its
/// acknowledgement until it is handled (see `wechat_inbox` in the migrations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxEvent {
    pub id: Uuid,
    pub wechat_app_id: String,
    pub dedup_key: String,
    pub event: String,
    pub payload_sealed: String,
    /// `pending`, `done` or `failed`.
    pub state: String,
    /// Claims so far, the current one included.
    pub attempts: i32,
    pub received_at: Timestamp,
    pub next_attempt_at: Timestamp,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Timestamp>,
    pub handled_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// An event to keep, verified and decrypted.
#[derive(Debug, Clone)]
pub struct NewInboxEvent {
    pub wechat_app_id: String,
    pub dedup_key: String,
    pub event: String,
    pub payload_sealed: String,
    pub received_at: Timestamp,
}

/// What became of a claimed event.
#[derive(Debug, Clone)]
pub enum InboxOutcome {
    Done,
    /// Failed; retried at the time given, or `None`: failed for good.
    Failed {
        error: String,
        retry_at: Option<Timestamp>,
    },
}

#[async_trait]
pub trait WechatInbox: Send + Sync {
    /// Keeps an event, once: false when an event with its key was kept before
    /// (WeChat's retry), whatever became of it.
    async fn record_inbox_event(&self, event: NewInboxEvent) -> Result<bool>;
    /// Leases up to `limit` due events to `owner` until `lease_until` (counting an
    /// attempt each): pending ones whose time came and that no live lease holds.
    /// Concurrent claimers never get the same row.
    async fn claim_inbox_events(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<InboxEvent>>;
    /// Settles a claimed event; false (nothing written) when `owner` no longer holds
    /// this claim of it: `attempt` is the event's `attempts` as claimed, so a stale
    /// handling cannot settle a newer claim, even one by the same owner.
    async fn settle_inbox_event(
        &self,
        id: Uuid,
        owner: &str,
        attempt: i32,
        outcome: InboxOutcome,
        at: Timestamp,
    ) -> Result<bool>;
    /// Whether an event is due at `now` (what [`Self::claim_inbox_events`] would
    /// take): a read, so an idle worker's poll takes no write lock.
    async fn inbox_has_due(&self, now: Timestamp) -> Result<bool>;
    /// Forgets events that ended before `before`; how many.
    async fn prune_inbox(&self, before: Timestamp) -> Result<u64>;
    /// An app's kept events, oldest first (operators and tests).
    async fn inbox_events(&self, wechat_app_id: &str) -> Result<Vec<InboxEvent>>;
    /// Kept events of every app in the order received (ids are time-ordered), in
    /// `state` if given, after the event `after` (paging), at most `limit`.
    async fn list_inbox_events(&self, state: Option<&str>, after: Option<Uuid>, limit: i64) -> Result<Vec<InboxEvent>>;
    async fn inbox_event(&self, id: Uuid) -> Result<Option<InboxEvent>>;
    /// Puts a failed event back to due at `now` with its attempts reset (an
    /// operator's re-drive); false when it is not failed.
    async fn retry_inbox_event(&self, id: Uuid, now: Timestamp) -> Result<bool>;
    /// Puts every event failed since `since` back to due at `now`; how many.
    async fn retry_failed_inbox_events(&self, since: Timestamp, now: Timestamp) -> Result<u64>;
}

const INBOX_COLUMNS: &str = "id, wechat_app_id, dedup_key, event, payload_sealed, state, attempts, received_at, \
     next_attempt_at, lease_owner, lease_until, handled_at, last_error";

#[derive(sqlx::FromRow)]
struct InboxRow {
    id: Uuid,
    wechat_app_id: String,
    dedup_key: String,
    event: String,
    payload_sealed: String,
    state: String,
    attempts: i32,
    received_at: Timestamp,
    next_attempt_at: Timestamp,
    lease_owner: Option<String>,
    lease_until: Option<Timestamp>,
    handled_at: Option<Timestamp>,
    last_error: Option<String>,
}

impl From<InboxRow> for InboxEvent {
    fn from(r: InboxRow) -> Self {
        InboxEvent {
            id: r.id,
            wechat_app_id: r.wechat_app_id,
            dedup_key: r.dedup_key,
            event: r.event,
            payload_sealed: r.payload_sealed,
            state: r.state,
            attempts: r.attempts,
            received_at: r.received_at,
            next_attempt_at: r.next_attempt_at,
            lease_owner: r.lease_owner,
            lease_until: r.lease_until,
            handled_at: r.handled_at,
            last_error: r.last_error,
        }
    }
}

#[async_trait]
impl<D: Dialect> WechatInbox for Db<D> {
    async fn record_inbox_event(&self, e: NewInboxEvent) -> Result<bool> {
        // One insert: the unique key is the de-duplication, durable and shared by
        // every gateway on the store.
        let n = Sql::new(
            "INSERT INTO wechat_inbox (id, wechat_app_id, dedup_key, event, payload_sealed, state, attempts, \
             received_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) \
             ON CONFLICT (wechat_app_id, dedup_key) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(&e.wechat_app_id)
        .bind(&e.dedup_key)
        .bind(&e.event)
        .bind(&e.payload_sealed)
        .bind(e.received_at)
        .execute(&mut *self.d.writer().await?)
        .await
        .map_err(|err| write_error(err, "wechat_inbox"))?;
        Ok(n > 0)
    }

    async fn claim_inbox_events(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<InboxEvent>> {
        let mut tx = self.d.write().await?;
        // PostgreSQL: SKIP LOCKED, so concurrent claimers pass over each other's rows;
        // SQLite: the write transaction already excludes every other claimer.
        const DUE: &str = "SELECT id FROM wechat_inbox WHERE state = 'pending' AND next_attempt_at <= $3 \
             AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT $4";
        let sql = D::row_lock(
            concatcp!(
                "UPDATE wechat_inbox SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 WHERE id IN (",
                DUE,
                ") RETURNING ",
                INBOX_COLUMNS
            ),
            concatcp!(
                "UPDATE wechat_inbox SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 WHERE id IN (",
                DUE,
                " FOR UPDATE SKIP LOCKED) RETURNING ",
                INBOX_COLUMNS
            ),
        );
        let rows: Vec<InboxRow> = Sql::new(sql)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        let mut events: Vec<InboxEvent> = rows.into_iter().map(InboxEvent::from).collect();
        events.sort_by_key(|e| e.received_at);
        Ok(events)
    }

    async fn settle_inbox_event(
        &self,
        id: Uuid,
        owner: &str,
        attempt: i32,
        outcome: InboxOutcome,
        at: Timestamp,
    ) -> Result<bool> {
        let (state, next, handled, error) = match outcome {
            InboxOutcome::Done => ("done", at, Some(at), None),
            InboxOutcome::Failed {
                error,
                retry_at: Some(retry),
            } => ("pending", retry, None, Some(error)),
            InboxOutcome::Failed { error, retry_at: None } => ("failed", at, Some(at), Some(error)),
        };
        // Fenced by the claim: every claim counts an attempt, so (owner, attempts)
        // names one claim; a handling whose lease was taken over writes nothing.
        let n = Sql::new(
            "UPDATE wechat_inbox SET state = $3, next_attempt_at = $4, handled_at = $5, last_error = $6, \
             lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2 AND attempts = $7 AND state = 'pending'",
        )
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(next)
        .bind(handled)
        .bind(error)
        .bind(attempt)
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(n > 0)
    }

    async fn inbox_has_due(&self, now: Timestamp) -> Result<bool> {
        let row: Option<(Uuid,)> = Sql::new(
            "SELECT id FROM wechat_inbox WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        Ok(row.is_some())
    }

    async fn prune_inbox(&self, before: Timestamp) -> Result<u64> {
        Sql::new("DELETE FROM wechat_inbox WHERE state <> 'pending' AND handled_at < $1")
            .bind(before)
            .execute(&mut *self.d.writer().await?)
            .await
    }

    async fn inbox_events(&self, wechat_app_id: &str) -> Result<Vec<InboxEvent>> {
        let rows: Vec<InboxRow> = Sql::new(concatcp!(
            "SELECT ",
            INBOX_COLUMNS,
            " FROM wechat_inbox WHERE wechat_app_id = $1 ORDER BY received_at, id"
        ))
        .bind(wechat_app_id)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        Ok(rows.into_iter().map(InboxEvent::from).collect())
    }

    async fn list_inbox_events(&self, state: Option<&str>, after: Option<Uuid>, limit: i64) -> Result<Vec<InboxEvent>> {
        let rows: Vec<InboxRow> = Sql::new(concatcp!(
            "SELECT ",
            INBOX_COLUMNS,
            " FROM wechat_inbox WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind(state)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.d.read().await?)
        .await?;
        Ok(rows.into_iter().map(InboxEvent::from).collect())
    }

    async fn inbox_event(&self, id: Uuid) -> Result<Option<InboxEvent>> {
        let row: Option<InboxRow> = Sql::new(concatcp!("SELECT ", INBOX_COLUMNS, " FROM wechat_inbox WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *self.d.read().await?)
            .await?;
        Ok(row.map(InboxEvent::from))
    }

    async fn retry_inbox_event(&self, id: Uuid, now: Timestamp) -> Result<bool> {
        // Attempts start over: the worker fails an event claimed past the last
        // attempt without trying it. The last error stays until the next outcome.
        let n = Sql::new(
            "UPDATE wechat_inbox SET state = 'pending', attempts = 0, next_attempt_at = $2, handled_at = NULL, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1 AND state = 'failed'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *self.d.writer().await?)
        .await?;
        Ok(n > 0)
    }

    async fn retry_failed_inbox_events(&self, since: Timestamp, now: Timestamp) -> Result<u64> {
        Sql::new(
            "UPDATE wechat_inbox SET state = 'pending', attempts = 0, next_attempt_at = $2, handled_at = NULL, \
             lease_owner = NULL, lease_until = NULL WHERE state = 'failed' AND handled_at >= $1",
        )
        .bind(since)
        .bind(now)
        .execute(&mut *self.d.writer().await?)
        .await
    }
}
