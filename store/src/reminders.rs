//! Reimbursement reminders: a receipt still unreimbursed (INIT, in no open claim)
//! some days after its issue, and again some days before a reimburser's deadline,
//! reminds each payer who keeps it in their wallet and opted in, once per receipt
//! and period, as a subscribe message through the
//! mini-program they signed in with (the agency's own first, else the platform
//! wallet), spending a consent like every subscribe message. Which payer is
//! reminded of what is decided by the key of `reimbursement_reminders`, so two
//! gateways scanning at once send one reminder.

use async_trait::async_trait;
use piaojia_core::delivery::{ChannelKind, DeliveryEvent};
use uuid::Uuid;

use crate::queue::{NewDelivery, insert_deliveries};
use crate::sql::{Dialect, Sql, Tx};
use crate::{Db, Result, Timestamp};

/// The period of the reminder a receipt gets once it is `after_days` old.
pub const UNCLAIMED: &str = "unclaimed";
/// The period of the reminder a receipt gets close to a reimburser's deadline.
pub const DEADLINE: &str = "deadline";

/// What `{status}` of a reminder's subscribe message says (a phrase: at most 5 characters).
pub fn status_zh(period: &str) -> &'static str {
    if period == DEADLINE {
        "报销将截止"
    } else {
        "待报销"
    }
}

/// Receipts of these agencies issued in `(issued_after, issued_until]` are close
/// to a reimburser's deadline.
#[derive(Debug, Clone)]
pub struct DeadlineWindow {
    pub agencies: Vec<String>,
    pub issued_after: Timestamp,
    pub issued_until: Timestamp,
}

/// One scan: receipts issued at or before `cutoff` are due, except the agencies
/// of `agency_cutoffs`, each with its own; and the receipts of `deadlines`.
#[derive(Debug, Clone)]
pub struct ReminderScan {
    pub now: Timestamp,
    pub cutoff: Timestamp,
    /// Agency code and its own cutoff (`reminders.agency_after_days`).
    pub agency_cutoffs: Vec<(String, Timestamp)>,
    /// One per reimburser with a deadline (`claim_within_days`).
    pub deadlines: Vec<DeadlineWindow>,
    /// At most this many reminders per scan.
    pub limit: i64,
}

/// What one scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReminderRun {
    /// Reminders recorded (each due receipt of each payer, once per period).
    pub recorded: u64,
    /// Of them, those with a message queued (the others had no channel or consent).
    pub queued: u64,
}

#[async_trait]
pub trait Reminders: Send + Sync {
    /// Records the due reminders and queues their messages, in one transaction.
    async fn send_due_reminders(&self, scan: &ReminderScan) -> Result<ReminderRun>;
}

/// `$1` the latest issue time, `$2` the period.
const DUE: &str = "SELECT w.payer_id, w.receipt_id, r.agency_id FROM wallet_entries w \
     JOIN receipts r ON r.id = w.receipt_id \
     JOIN agencies a ON a.id = r.agency_id \
     JOIN payers p ON p.id = w.payer_id \
     WHERE w.removed_at IS NULL AND p.reminders = true AND r.reimbursement_state = 'INIT' \
     AND r.issued_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM claim_receipts cr WHERE cr.receipt_id = r.id AND cr.open = true) \
     AND NOT EXISTS (SELECT 1 FROM reimbursement_reminders m WHERE m.receipt_id = w.receipt_id \
                     AND m.payer_id = w.payer_id AND m.period = $2)";

/// A due reminder: payer, receipt, agency, period.
type Due = (Uuid, Uuid, Uuid, &'static str);

impl<D: Dialect> Db<D> {
    async fn due_rows(&self, conn: &mut D::Conn, scan: &ReminderScan) -> Result<Vec<Due>> {
        let mut rows: Vec<Due> = Vec::new();
        let add = |got: Vec<(Uuid, Uuid, Uuid)>, period: &'static str, rows: &mut Vec<Due>| {
            rows.extend(got.into_iter().map(|(p, r, a)| (p, r, a, period)));
        };
        // Deadlines first: they cannot wait for the next scan as long.
        for w in &scan.deadlines {
            let left = scan.limit - rows.len() as i64;
            if left <= 0 {
                return Ok(rows);
            }
            let mut q = Sql::new(DUE).bind(w.issued_until).bind(DEADLINE);
            q.push(" AND r.issued_at > ")
                .push_bind(w.issued_after)
                .push(" AND a.code IN ")
                .push_list(w.agencies.iter().map(String::as_str))
                .push(" ORDER BY r.issued_at LIMIT ")
                .push_bind(left);
            add(q.fetch_all(&mut *conn).await?, DEADLINE, &mut rows);
        }
        // Agencies with their own period are scanned apart, so that receipts not
        // yet due under a longer period never fill the default scan's limit.
        let left = scan.limit - rows.len() as i64;
        if left <= 0 {
            return Ok(rows);
        }
        let mut default = Sql::new(DUE).bind(scan.cutoff).bind(UNCLAIMED);
        if !scan.agency_cutoffs.is_empty() {
            default
                .push(" AND a.code NOT IN ")
                .push_list(scan.agency_cutoffs.iter().map(|(code, _)| code.as_str()));
        }
        default.push(" ORDER BY r.issued_at LIMIT ").push_bind(left);
        add(default.fetch_all(&mut *conn).await?, UNCLAIMED, &mut rows);
        for (code, cutoff) in &scan.agency_cutoffs {
            let left = scan.limit - rows.len() as i64;
            if left <= 0 {
                break;
            }
            let mut own = Sql::new(DUE).bind(*cutoff).bind(UNCLAIMED);
            own.push(" AND a.code = ")
                .push_bind(code.as_str())
                .push(" ORDER BY r.issued_at LIMIT ")
                .push_bind(left);
            add(own.fetch_all(&mut *conn).await?, UNCLAIMED, &mut rows);
        }
        Ok(rows)
    }
}

#[async_trait]
impl<D: Dialect> Reminders for Db<D> {
    async fn send_due_reminders(&self, scan: &ReminderScan) -> Result<ReminderRun> {
        let now = scan.now;
        let mut tx = self.d.write().await?;
        let due = self.due_rows(tx.conn(), scan).await?;
        let mut run = ReminderRun::default();
        for (payer_id, receipt_id, agency_id, period) in due {
            // The key decides between two gateways scanning at once.
            let recorded = Sql::new(
                "INSERT INTO reimbursement_reminders (receipt_id, payer_id, period, sent_at) \
                 VALUES ($1, $2, $4, $3) ON CONFLICT (receipt_id, payer_id, period) DO NOTHING",
            )
            .bind(receipt_id)
            .bind(payer_id)
            .bind(now)
            .bind(period)
            .execute(tx.conn())
            .await?;
            if recorded == 0 {
                continue;
            }
            run.recorded += 1;
            // The agency's own mini-program first, else the platform wallet, of
            // those the payer signed in with.
            let channel: Option<(String, String, String, bool)> = Sql::new(
                "SELECT c.wechat_app_id, c.kind, c.template_id, c.long_term FROM channels c \
                 WHERE c.enabled = true AND ((c.kind = 'wechat_subscribe' AND c.agency_id = $2) \
                 OR c.kind = 'wallet_subscribe') \
                 AND EXISTS (SELECT 1 FROM payer_identities i WHERE i.payer_id = $1 AND i.app_id = c.wechat_app_id) \
                 ORDER BY c.kind DESC LIMIT 1",
            )
            .bind(payer_id)
            .bind(agency_id)
            .fetch_optional(tx.conn())
            .await?;
            let Some((app_id, kind, template_id, long_term)) = channel else {
                continue;
            };
            let Some(kind) = ChannelKind::parse(&kind) else {
                continue;
            };
            let Some(openid) =
                crate::wallets::spend_subscribe_credit(tx.conn(), payer_id, &app_id, &template_id, long_term, now)
                    .await?
            else {
                continue;
            };
            let delivery = NewDelivery {
                id: Uuid::now_v7(),
                event: DeliveryEvent::Issued,
                channel: kind,
                target: openid,
                interface: piaojia_core::delivery::wechat_interface(&app_id, kind),
                payload: Some(serde_json::json!({
                    // No fallback channel and no issuer status webhook: the payer's own.
                    "tried": ChannelKind::ALL.iter().filter(|k| k.is_wechat()).map(|k| k.as_str()).collect::<Vec<_>>(),
                    "type": "reminder",
                    "wallet": true,
                    "reminder": period,
                    "statusZh": status_zh(period),
                })),
            };
            let id = delivery.id;
            insert_deliveries::<D>(tx.conn(), receipt_id, agency_id, &[delivery], now).await?;
            Sql::new(
                "UPDATE reimbursement_reminders SET delivery_id = $3 \
                 WHERE receipt_id = $1 AND payer_id = $2 AND period = $4",
            )
            .bind(receipt_id)
            .bind(payer_id)
            .bind(id)
            .bind(period)
            .execute(tx.conn())
            .await?;
            run.queued += 1;
        }
        tx.commit().await?;
        Ok(run)
    }
}
