//! WeChat Pay payments the agency's payment system reported ("payments we
//! know"): who paid an order (the openid in the app they paid in), so that a
//! receipt pushed with only its `weChatOrderNo` reaches that payer as if it had
//! carried their `openID`, whichever of the two arrives first.

use async_trait::async_trait;
use uuid::Uuid;

use crate::queue::{self, NewDelivery};
use crate::sql::{Dialect, Sql, Tx, write_error, written};
use crate::{Db, Result, Timestamp};

/// A payment as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWechatPayment {
    pub agency_id: Uuid,
    /// WeChat Pay's `transaction_id`.
    pub wechat_order_no: String,
    /// The official account or mini-program the payer paid in.
    pub wechat_app_id: String,
    pub openid: String,
    pub total_fen: i64,
    pub paid_at: Timestamp,
    pub issuer_app_id: String,
}

/// A payment as held.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WechatPayment {
    pub agency_id: Uuid,
    pub wechat_order_no: String,
    pub wechat_app_id: String,
    pub openid: String,
    pub total_fen: i64,
    pub paid_at: Timestamp,
    pub issuer_app_id: String,
    pub received_at: Timestamp,
}

impl WechatPayment {
    /// The same payment reported again (who reported it and when we heard are ours).
    pub fn same_as(&self, new: &NewWechatPayment) -> bool {
        self.wechat_app_id == new.wechat_app_id
            && self.openid == new.openid
            && self.total_fen == new.total_fen
            && self.paid_at == new.paid_at
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Created(WechatPayment),
    /// Reported before with the same content: the first record.
    Duplicate(WechatPayment),
    /// Reported before with other content (another openid, amount, app or time).
    Conflict(WechatPayment),
}

#[async_trait]
pub trait WechatPayments: Send + Sync {
    /// Records a payment once per (agency, order), following [`PaymentOutcome`].
    async fn record_wechat_payment(&self, payment: NewWechatPayment) -> Result<PaymentOutcome>;
    /// The agency's payment of this order, if reported.
    async fn wechat_payment(&self, agency_id: Uuid, wechat_order_no: &str) -> Result<Option<WechatPayment>>;
    /// The agency's receipts of this order pushed without an openid (and not
    /// reversed) take the payment's: each is collected into that openid's wallet
    /// and gets `announce` (a copy with its own id), in one transaction. A receipt
    /// is taken once: it has an openid afterwards. Returns the receipts taken.
    async fn deliver_paid_receipts(&self, payment: &WechatPayment, announce: Option<NewDelivery>) -> Result<Vec<Uuid>>;
}

const COLUMNS: &str =
    "agency_id, wechat_order_no, wechat_app_id, openid, total_fen, paid_at, issuer_app_id, received_at";

#[async_trait]
impl<D: Dialect> WechatPayments for Db<D> {
    async fn record_wechat_payment(&self, p: NewWechatPayment) -> Result<PaymentOutcome> {
        let mut tx = self.d.write().await?;
        let inserted = Sql::new(
            "INSERT INTO wechat_payments (agency_id, wechat_order_no, wechat_app_id, openid, total_fen, paid_at, \
             issuer_app_id, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (agency_id, wechat_order_no) DO NOTHING",
        )
        .bind(p.agency_id)
        .bind(&p.wechat_order_no)
        .bind(&p.wechat_app_id)
        .bind(&p.openid)
        .bind(p.total_fen)
        .bind(p.paid_at)
        .bind(&p.issuer_app_id)
        .bind(Timestamp::now())
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "wechat_payment"))?;
        // PostgreSQL at READ COMMITTED: this statement sees the row that won the conflict.
        let row: Option<WechatPayment> = Sql::new(const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM wechat_payments WHERE agency_id = $1 AND wechat_order_no = $2"
        ))
        .bind(p.agency_id)
        .bind(&p.wechat_order_no)
        .fetch_optional(tx.conn())
        .await?;
        let held = written(row, "wechat payment")?;
        tx.commit().await?;
        Ok(if inserted == 1 {
            PaymentOutcome::Created(held)
        } else if held.same_as(&p) {
            PaymentOutcome::Duplicate(held)
        } else {
            PaymentOutcome::Conflict(held)
        })
    }

    async fn wechat_payment(&self, agency_id: Uuid, wechat_order_no: &str) -> Result<Option<WechatPayment>> {
        Sql::new(const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM wechat_payments WHERE agency_id = $1 AND wechat_order_no = $2"
        ))
        .bind(agency_id)
        .bind(wechat_order_no)
        .fetch_optional(&mut *self.d.read().await?)
        .await
    }

    async fn deliver_paid_receipts(&self, p: &WechatPayment, announce: Option<NewDelivery>) -> Result<Vec<Uuid>> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        // The condition is the claim: of two concurrent callers (the payment's
        // report and the receipt's push that saw it late) one takes each receipt.
        let taken: Vec<(Uuid,)> = Sql::new(
            "UPDATE receipts SET open_id = $3, updated_at = $4 \
             WHERE agency_id = $1 AND wechat_order_no = $2 AND open_id IS NULL AND reversal_recorded_at IS NULL \
             RETURNING id",
        )
        .bind(p.agency_id)
        .bind(&p.wechat_order_no)
        .bind(&p.openid)
        .bind(now)
        .fetch_all(tx.conn())
        .await?;
        let mut ids = Vec::with_capacity(taken.len());
        for (id,) in taken {
            crate::pages::collect_under_openid::<D>(tx.conn(), &p.wechat_app_id, &p.openid, id, now).await?;
            if let Some(template) = &announce {
                let delivery = NewDelivery {
                    id: Uuid::now_v7(),
                    ..template.clone()
                };
                queue::insert_deliveries::<D>(tx.conn(), id, p.agency_id, &[delivery], now).await?;
            }
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }
}
