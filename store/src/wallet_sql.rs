//! The wallet's SQL, written once for both databases. Every statement here is
//! valid on PostgreSQL and SQLite as it stands (`$n` parameters, `ON CONFLICT`,
//! `RETURNING`, row values); [`wallet_store!`] instantiates the implementation
//! for each backend with what differs: how a write transaction begins, how
//! identity matching is serialised, and the row-lock suffix. (Channel upserts
//! live here too: the same text on both.)

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::wallet::{AuditRecord, PayerRecord, SubscriptionCredit, WalletItem};
use crate::{ReimbursementState, StoreError};

pub(crate) const PAYER_COLUMNS: &str = "id, profile_sealed, phone_verified, consent_version, consent_at, reminders, \
                                        registered_at, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct PayerRow {
    id: Uuid,
    profile_sealed: Option<String>,
    phone_verified: bool,
    consent_version: Option<String>,
    consent_at: Option<DateTime<Utc>>,
    reminders: bool,
    registered_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PayerRow> for PayerRecord {
    fn from(r: PayerRow) -> Self {
        PayerRecord {
            id: r.id,
            profile_sealed: r.profile_sealed,
            phone_verified: r.phone_verified,
            consent_version: r.consent_version,
            consent_at: r.consent_at,
            reminders: r.reminders,
            registered_at: r.registered_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RefreshRow {
    pub(crate) family_id: Uuid,
    pub(crate) payer_id: Uuid,
    pub(crate) app_id: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) used_at: Option<DateTime<Utc>>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct CreditRow {
    app_id: String,
    template_id: String,
    remaining: i32,
    long_term: bool,
    updated_at: DateTime<Utc>,
}

impl From<CreditRow> for SubscriptionCredit {
    fn from(r: CreditRow) -> Self {
        SubscriptionCredit {
            app_id: r.app_id,
            template_id: r.template_id,
            remaining: r.remaining,
            long_term: r.long_term,
            updated_at: r.updated_at,
        }
    }
}

/// Columns of a wallet page in the order of [`WalletItemRow`].
pub(crate) const WALLET_ITEM_COLUMNS: &str = "r.id AS receipt_id, a.code AS agency_code, a.name AS agency_name, \
     r.bill_batch_code, r.bill_no, r.bus_type, w.issued_at, r.total_fen, \
     (r.red_bill_no IS NOT NULL) AS reversed, r.reimbursement_state, (r.file IS NOT NULL) AS has_file, \
     w.source, w.tags, w.added_at";

#[derive(sqlx::FromRow)]
pub(crate) struct WalletItemRow {
    receipt_id: Uuid,
    agency_code: String,
    agency_name: String,
    bill_batch_code: String,
    bill_no: String,
    bus_type: String,
    issued_at: DateTime<Utc>,
    total_fen: i64,
    reversed: bool,
    reimbursement_state: String,
    has_file: bool,
    source: String,
    tags: Json<Vec<String>>,
    added_at: DateTime<Utc>,
}

impl TryFrom<WalletItemRow> for WalletItem {
    type Error = StoreError;

    fn try_from(r: WalletItemRow) -> Result<Self, StoreError> {
        Ok(WalletItem {
            reimbursement_state: ReimbursementState::parse(&r.reimbursement_state)
                .ok_or_else(|| StoreError::Corrupt(format!("receipt {}: reimbursement state", r.receipt_id)))?,
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
            source: r.source,
            tags: r.tags.0,
            added_at: r.added_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct WalletEntryRow {
    pub(crate) agency_code: String,
    pub(crate) agency_name: String,
    pub(crate) source: String,
    pub(crate) tags: Json<Vec<String>>,
    pub(crate) note_sealed: Option<String>,
    pub(crate) added_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: Uuid,
    payer_id: Uuid,
    event: String,
    at: DateTime<Utc>,
    detail: Option<Json<serde_json::Value>>,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        AuditRecord {
            id: r.id,
            payer_id: r.payer_id,
            event: r.event,
            at: r.at,
            detail: r.detail.map(|d| d.0),
        }
    }
}

/// `LIKE` pattern for free text: `%`, `_` and `\` match themselves.
pub(crate) fn like_pattern(text: &str) -> String {
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

/// Which registered payers a new receipt belongs to: ID number and name, or a
/// verified phone and name. Parameters: id index, name index, phone index.
pub(crate) const MATCHING_PAYERS: &str = "SELECT id FROM payers WHERE registered_at IS NOT NULL AND name_index = $2 \
     AND (id_index = $1 OR (phone_verified = true AND phone_index = $3)) ORDER BY id";

/// The receipts of a person matching a payer's identity. Parameters: id index,
/// name index, phone verified, phone index (used by the statements below).
macro_rules! matching_receipts {
    () => {
        "SELECT r.id FROM receipts r WHERE r.payer_type = '1' AND r.payer_name_index = $3 \
         AND (r.payer_id_index = $2 OR ($4 = true AND r.payer_phone_index = $5))"
    };
}

/// Collects matching receipts into the wallet of payer $1 (now: $6).
pub(crate) const COLLECT: &str = concat!(
    "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
     SELECT $1, r.id, r.agency_id, r.issued_at, 'collected', '[]', $6 FROM receipts r WHERE r.id IN (",
    matching_receipts!(),
    ") ON CONFLICT (payer_id, receipt_id) DO NOTHING"
);

/// Releases collected (not removed) entries of payer $1 that no longer match.
pub(crate) const RELEASE: &str = concat!(
    "DELETE FROM wallet_entries WHERE payer_id = $1 AND source = 'collected' AND removed_at IS NULL \
     AND receipt_id NOT IN (",
    matching_receipts!(),
    ")"
);

/// Implements [`crate::wallet::PayerStore`] and the receipt-arrival collection for
/// one backend. The store's `begin_write()` opens a write transaction (with
/// SQLite's in-process turn to write), `$lock` takes the identity locks (sorted
/// keys) inside it, `$for_update` is the row-lock suffix.
macro_rules! wallet_store {
    ($store:ty, $db:ty, $conn:ty, $lock:path, $for_update:literal) => {
        /// Collects a just-inserted receipt of a person into the wallets of the
        /// registered payers it matches, and plans the subscribe message each
        /// is owed: the first of `channels` where the payer has an identity and a
        /// consent left (one-time consents are used up here, in the same transaction).
        /// `locked`: the transaction already holds [`crate::wallet::receipt_lock_keys`].
        pub(crate) async fn collect_new_receipt(
            conn: &mut $conn,
            r: &$crate::NewReceiptRecord,
            planned: &[$crate::NewDelivery],
            now: chrono::DateTime<chrono::Utc>,
            locked: bool,
        ) -> $crate::Result<Vec<$crate::NewDelivery>> {
            let (Some(name_index), true) = (r.payer_name_index.as_deref(), r.payer_type == "1") else {
                return Ok(Vec::new());
            };
            if r.payer_id_index.is_none() && r.payer_phone_index.is_none() {
                return Ok(Vec::new());
            }
            if !locked {
                $lock(&mut *conn, &$crate::wallet::receipt_lock_keys(r)).await?;
            }
            let payers: Vec<uuid::Uuid> = sqlx::query_scalar($crate::wallet_sql::MATCHING_PAYERS)
                .bind(&r.payer_id_index)
                .bind(name_index)
                .bind(&r.payer_phone_index)
                .fetch_all(&mut *conn)
                .await?;
            let mut out: Vec<$crate::NewDelivery> = Vec::new();
            for payer in payers {
                sqlx::query(
                    "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, \
                     added_at) VALUES ($1, $2, $3, $4, 'collected', '[]', $5) \
                     ON CONFLICT (payer_id, receipt_id) DO NOTHING",
                )
                .bind(payer)
                .bind(r.id)
                .bind(r.agency_id)
                .bind(r.issued_at)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                for channel in &r.wallet_channels {
                    let identity: Option<(String, Option<i32>, Option<bool>)> = sqlx::query_as(
                        "SELECT i.openid, c.remaining, c.long_term FROM payer_identities i \
                         LEFT JOIN subscription_credits c ON c.payer_id = i.payer_id AND c.app_id = i.app_id \
                         AND c.template_id = $3 WHERE i.payer_id = $1 AND i.app_id = $2 \
                         ORDER BY i.last_login_at DESC LIMIT 1",
                    )
                    .bind(payer)
                    .bind(&channel.app_id)
                    .bind(&channel.template_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some((openid, remaining, long_term)) = identity else {
                        continue;
                    };
                    let owed = if channel.long_term && long_term == Some(true) {
                        true
                    } else if remaining.unwrap_or(0) > 0 {
                        sqlx::query(
                            "UPDATE subscription_credits SET remaining = remaining - 1, updated_at = $4 \
                             WHERE payer_id = $1 AND app_id = $2 AND template_id = $3 AND remaining > 0",
                        )
                        .bind(payer)
                        .bind(&channel.app_id)
                        .bind(&channel.template_id)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected()
                            == 1
                    } else {
                        false
                    };
                    if !owed {
                        continue;
                    }
                    // The issuer's push may already address this openid on this channel.
                    let already = planned
                        .iter()
                        .chain(out.iter())
                        .any(|d| d.channel == channel.kind && d.target == openid);
                    if !already {
                        out.push($crate::NewDelivery {
                            id: uuid::Uuid::now_v7(),
                            event: $crate::DeliveryEvent::Issued,
                            channel: channel.kind.clone(),
                            target: openid,
                            interface: channel.interface.clone(),
                            // A wallet message has no fallback channel: the other
                            // channels know this payer under other openids.
                            payload: Some(serde_json::json!({
                                "tried": ["wechat_template", "wechat_subscribe", "wallet_subscribe"],
                                "wallet": true,
                            })),
                        });
                    }
                    break;
                }
            }
            Ok(out)
        }

        /// Creates or replaces an agency's (or the platform's) channel of a kind.
        async fn upsert_channel(store: &$store, channel: $crate::NewChannel) -> $crate::Result<$crate::Channel> {
            let sql = if channel.agency_id.is_some() {
                $crate::shared::UPSERT_AGENCY_CHANNEL
            } else {
                $crate::shared::UPSERT_PLATFORM_CHANNEL
            };
            let (_turn, mut tx) = store.begin_write().await?;
            let row: $crate::shared::ChannelRow = sqlx::query_as(sql)
                .bind(uuid::Uuid::now_v7())
                .bind(channel.agency_id)
                .bind(&channel.kind)
                .bind(&channel.wechat_app_id)
                .bind(&channel.secret_sealed)
                .bind(&channel.template_id)
                .bind(sqlx::types::Json(&channel.fields))
                .bind(&channel.page)
                .bind(&channel.message_token_sealed)
                .bind(&channel.encoding_aes_key_sealed)
                .bind(channel.enabled)
                .bind($crate::shared::now())
                .bind(channel.long_term)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| $crate::shared::write_error(e, "channel_id"))?;
            tx.commit().await?;
            Ok(row.into())
        }

        async fn load_payer(conn: &mut $conn, id: uuid::Uuid) -> $crate::Result<Option<$crate::wallet::PayerRecord>> {
            let row: Option<$crate::wallet_sql::PayerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM payers WHERE id = $1",
                $crate::wallet_sql::PAYER_COLUMNS
            )))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(row.map(Into::into))
        }

        async fn insert_audit(
            conn: &mut $conn,
            payer_id: uuid::Uuid,
            event: &str,
            detail: Option<serde_json::Value>,
            now: chrono::DateTime<chrono::Utc>,
        ) -> $crate::Result<()> {
            sqlx::query("INSERT INTO payer_audit (id, payer_id, event, at, detail) VALUES ($1, $2, $3, $4, $5)")
                .bind(uuid::Uuid::now_v7())
                .bind(payer_id)
                .bind(event)
                .bind(now)
                .bind(detail.map(sqlx::types::Json))
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Pushes `AND w.agency_id IN (…)` for an agency mini-program's scope.
        fn push_scope(qb: &mut sqlx::QueryBuilder<$db>, scope: Option<&[uuid::Uuid]>) {
            if let Some(scope) = scope {
                if scope.is_empty() {
                    qb.push(" AND false");
                    return;
                }
                qb.push(" AND w.agency_id IN (");
                let mut list = qb.separated(", ");
                for id in scope {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
            }
        }

        async fn login_once(
            store: &$store,
            app_id: &str,
            openid: &str,
            unionid_index: Option<&str>,
        ) -> $crate::Result<$crate::wallet::LoginOutcome> {
            let now = $crate::shared::now();
            let (_turn, mut tx) = store.begin_write().await?;
            let existing: Option<uuid::Uuid> = sqlx::query_scalar(concat!(
                "SELECT payer_id FROM payer_identities WHERE app_id = $1 AND openid = $2",
                $for_update
            ))
            .bind(app_id)
            .bind(openid)
            .fetch_optional(&mut *tx)
            .await?;
            let (payer_id, created) = match existing {
                Some(id) => {
                    sqlx::query("UPDATE payer_identities SET last_login_at = $3 WHERE app_id = $1 AND openid = $2")
                        .bind(app_id)
                        .bind(openid)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    (id, false)
                }
                None => {
                    let by_union: Option<uuid::Uuid> = match unionid_index {
                        Some(u) => {
                            sqlx::query_scalar("SELECT id FROM payers WHERE unionid_index = $1")
                                .bind(u)
                                .fetch_optional(&mut *tx)
                                .await?
                        }
                        None => None,
                    };
                    let (id, created) = match by_union {
                        Some(id) => (id, false),
                        None => {
                            let id = uuid::Uuid::now_v7();
                            sqlx::query(
                                "INSERT INTO payers (id, unionid_index, created_at, updated_at) VALUES ($1, $2, $3, $3)",
                            )
                            .bind(id)
                            .bind(unionid_index)
                            .bind(now)
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| $crate::shared::write_error(e, "payer_unionid"))?;
                            (id, true)
                        }
                    };
                    sqlx::query(
                        "INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
                         VALUES ($1, $2, $3, $4, $4)",
                    )
                    .bind(app_id)
                    .bind(openid)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| $crate::shared::write_error(e, "payer_identity"))?;
                    (id, created)
                }
            };
            if let Some(u) = unionid_index {
                // A payer first seen without a unionid learns it now.
                sqlx::query(
                    "UPDATE payers SET unionid_index = $2 WHERE id = $1 AND unionid_index IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM payers WHERE unionid_index = $2)",
                )
                .bind(payer_id)
                .bind(u)
                .execute(&mut *tx)
                .await?;
            }
            let payer = load_payer(&mut tx, payer_id)
                .await?
                .ok_or_else(|| $crate::StoreError::Corrupt("payer vanished inside its transaction".into()))?;
            tx.commit().await?;
            Ok($crate::wallet::LoginOutcome { payer, created })
        }

        #[async_trait::async_trait]
        impl $crate::wallet::PayerStore for $store {
            async fn login_payer(
                &self,
                app_id: &str,
                openid: &str,
                unionid_index: Option<&str>,
            ) -> $crate::Result<$crate::wallet::LoginOutcome> {
                // Two first logins of one person race on the identity or unionid
                // key: the loser retries and finds the winner's payer.
                let mut tries = 0;
                loop {
                    match login_once(self, app_id, openid, unionid_index).await {
                        Err($crate::StoreError::Conflict(_)) if tries < 2 => tries += 1,
                        other => return other,
                    }
                }
            }

            async fn payer(&self, id: uuid::Uuid) -> $crate::Result<Option<$crate::wallet::PayerRecord>> {
                let mut conn = self.pool.acquire().await?;
                load_payer(&mut conn, id).await
            }

            async fn register_payer(
                &self,
                payer_id: uuid::Uuid,
                reg: $crate::wallet::Registration,
            ) -> $crate::Result<$crate::wallet::RegisterOutcome> {
                let now = $crate::shared::now();
                let consent_at = $crate::shared::micros(reg.consent_at);
                let (_turn, mut tx) = self.begin_write().await?;
                let before = load_payer(&mut tx, payer_id).await?.ok_or($crate::StoreError::NotFound)?;
                let keys = $crate::wallet::identity_lock_keys(
                    Some(&reg.id_index),
                    reg.phone_index.as_deref().filter(|_| reg.phone_verified),
                    &reg.name_index,
                );
                $lock(&mut *tx, &keys).await?;
                sqlx::query(
                    "UPDATE payers SET profile_sealed = $2, id_index = $3, name_index = $4, phone_index = $5, \
                     phone_verified = $6, consent_version = $7, consent_at = $8, \
                     registered_at = COALESCE(registered_at, $9), updated_at = $9 WHERE id = $1",
                )
                .bind(payer_id)
                .bind(&reg.profile_sealed)
                .bind(&reg.id_index)
                .bind(&reg.name_index)
                .bind(&reg.phone_index)
                .bind(reg.phone_verified)
                .bind(&reg.consent_version)
                .bind(consent_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let bind = |sql: &'static str| {
                    sqlx::query(sql)
                        .bind(payer_id)
                        .bind(reg.id_index.clone())
                        .bind(reg.name_index.clone())
                        .bind(reg.phone_verified)
                        .bind(reg.phone_index.clone())
                };
                let released = bind($crate::wallet_sql::RELEASE).execute(&mut *tx).await?.rows_affected();
                let collected = bind($crate::wallet_sql::COLLECT)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let event = if before.registered_at.is_none() { "registered" } else { "profile_changed" };
                insert_audit(
                    &mut tx,
                    payer_id,
                    event,
                    Some(serde_json::json!({ "collected": collected, "released": released, "consentVersion": reg.consent_version })),
                    now,
                )
                .await?;
                let payer = load_payer(&mut tx, payer_id).await?.ok_or($crate::StoreError::NotFound)?;
                tx.commit().await?;
                Ok($crate::wallet::RegisterOutcome {
                    payer,
                    collected,
                    released,
                })
            }

            async fn set_reminders(
                &self,
                payer_id: uuid::Uuid,
                enabled: bool,
            ) -> $crate::Result<$crate::wallet::PayerRecord> {
                let now = $crate::shared::now();
                let (_turn, mut tx) = self.begin_write().await?;
                let n = sqlx::query("UPDATE payers SET reminders = $2, updated_at = $3 WHERE id = $1")
                    .bind(payer_id)
                    .bind(enabled)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                let payer = load_payer(&mut tx, payer_id).await?.ok_or($crate::StoreError::NotFound)?;
                tx.commit().await?;
                Ok(payer)
            }

            async fn delete_payer(&self, payer_id: uuid::Uuid) -> $crate::Result<bool> {
                let now = $crate::shared::now();
                let (_turn, mut tx) = self.begin_write().await?;
                let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_entries WHERE payer_id = $1")
                    .bind(payer_id)
                    .fetch_one(&mut *tx)
                    .await?;
                // Children first: SQLite's cascade needs foreign keys switched on
                // per connection, so nothing here relies on it.
                for sql in [
                    "DELETE FROM wallet_entries WHERE payer_id = $1",
                    "DELETE FROM subscription_credits WHERE payer_id = $1",
                    "DELETE FROM refresh_tokens WHERE payer_id = $1",
                    "DELETE FROM payer_identities WHERE payer_id = $1",
                ] {
                    sqlx::query(sql).bind(payer_id).execute(&mut *tx).await?;
                }
                let deleted = sqlx::query("DELETE FROM payers WHERE id = $1")
                    .bind(payer_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Ok(false);
                }
                insert_audit(
                    &mut tx,
                    payer_id,
                    "deleted",
                    Some(serde_json::json!({ "walletEntries": entries })),
                    now,
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn add_audit(
                &self,
                payer_id: uuid::Uuid,
                event: &str,
                detail: Option<serde_json::Value>,
            ) -> $crate::Result<()> {
                let (_turn, mut tx) = self.begin_write().await?;
                insert_audit(&mut tx, payer_id, event, detail, $crate::shared::now()).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn payer_audit(&self, payer_id: uuid::Uuid) -> $crate::Result<Vec<$crate::wallet::AuditRecord>> {
                let rows: Vec<$crate::wallet_sql::AuditRow> = sqlx::query_as(
                    "SELECT id, payer_id, event, at, detail FROM payer_audit WHERE payer_id = $1 ORDER BY at, id",
                )
                .bind(payer_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn insert_refresh_token(&self, t: $crate::wallet::NewRefreshToken) -> $crate::Result<()> {
                let (_turn, mut tx) = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO refresh_tokens (id, family_id, payer_id, app_id, token_hash, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(t.id)
                .bind(t.family_id)
                .bind(t.payer_id)
                .bind(&t.app_id)
                .bind(&t.token_hash)
                .bind($crate::shared::now())
                .bind($crate::shared::micros(t.expires_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::shared::write_error(e, "refresh_token"))?;
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_refresh_token(
                &self,
                presented: &str,
                next: $crate::wallet::NewRefreshToken,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<$crate::wallet::RefreshOutcome> {
                use $crate::wallet::RefreshOutcome;
                let now = $crate::shared::micros(now);
                let (_turn, mut tx) = self.begin_write().await?;
                let row: Option<$crate::wallet_sql::RefreshRow> = sqlx::query_as(concat!(
                    "SELECT family_id, payer_id, app_id, expires_at, used_at, revoked_at \
                     FROM refresh_tokens WHERE token_hash = $1",
                    $for_update
                ))
                .bind(presented)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(RefreshOutcome::Unknown);
                };
                if row.revoked_at.is_some() {
                    return Ok(RefreshOutcome::Revoked);
                }
                if row.used_at.is_some() {
                    sqlx::query(
                        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
                    )
                    .bind(row.family_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    insert_audit(
                        &mut tx,
                        row.payer_id,
                        "refresh_token_reused",
                        Some(serde_json::json!({ "family": row.family_id })),
                        now,
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Reused {
                        payer_id: row.payer_id,
                        family_id: row.family_id,
                    });
                }
                if row.expires_at <= now {
                    return Ok(RefreshOutcome::Expired);
                }
                sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1")
                    .bind(presented)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO refresh_tokens (id, family_id, payer_id, app_id, token_hash, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(next.id)
                .bind(row.family_id)
                .bind(row.payer_id)
                .bind(&row.app_id)
                .bind(&next.token_hash)
                .bind(now)
                .bind($crate::shared::micros(next.expires_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::shared::write_error(e, "refresh_token"))?;
                tx.commit().await?;
                Ok(RefreshOutcome::Rotated {
                    payer_id: row.payer_id,
                    app_id: row.app_id,
                })
            }

            async fn revoke_refresh_family(&self, payer_id: uuid::Uuid, presented: &str) -> $crate::Result<bool> {
                let (_turn, mut tx) = self.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $3 WHERE revoked_at IS NULL AND family_id = \
                     (SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND payer_id = $2)",
                )
                .bind(presented)
                .bind(payer_id)
                .bind($crate::shared::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(n > 0)
            }

            async fn record_subscriptions(
                &self,
                payer_id: uuid::Uuid,
                app_id: &str,
                reports: &[$crate::wallet::SubscriptionReport],
            ) -> $crate::Result<()> {
                use $crate::wallet::SubscriptionChoice;
                let now = $crate::shared::now();
                let (_turn, mut tx) = self.begin_write().await?;
                for r in reports {
                    // Accepting a one-time template adds one message (WeChat keeps at
                    // most a few per template; we cap generously); a long-term one
                    // is accepted until refused. Refusing drops what is left.
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
                             ON CONFLICT (payer_id, app_id, template_id) DO UPDATE SET \
                             long_term = true, updated_at = $4"
                        }
                        (SubscriptionChoice::Reject | SubscriptionChoice::Ban, _) => {
                            "INSERT INTO subscription_credits (payer_id, app_id, template_id, remaining, long_term, \
                             updated_at) VALUES ($1, $2, $3, 0, false, $4) \
                             ON CONFLICT (payer_id, app_id, template_id) DO UPDATE SET \
                             remaining = 0, long_term = false, updated_at = $4"
                        }
                    };
                    sqlx::query(sql)
                        .bind(payer_id)
                        .bind(app_id)
                        .bind(&r.template_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn subscription_credits(
                &self,
                payer_id: uuid::Uuid,
            ) -> $crate::Result<Vec<$crate::wallet::SubscriptionCredit>> {
                let rows: Vec<$crate::wallet_sql::CreditRow> = sqlx::query_as(
                    "SELECT app_id, template_id, remaining, long_term, updated_at FROM subscription_credits \
                     WHERE payer_id = $1 ORDER BY app_id, template_id",
                )
                .bind(payer_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn wallet_page(
                &self,
                q: &$crate::wallet::WalletQuery,
            ) -> $crate::Result<Vec<$crate::wallet::WalletItem>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM wallet_entries w JOIN receipts r ON r.id = w.receipt_id \
                     JOIN agencies a ON a.id = r.agency_id WHERE w.payer_id = ",
                    $crate::wallet_sql::WALLET_ITEM_COLUMNS
                ));
                qb.push_bind(q.payer_id).push(" AND w.removed_at IS NULL");
                push_scope(&mut qb, q.scope.as_deref());
                if let Some(code) = &q.agency_code {
                    qb.push(" AND a.code = ").push_bind(code.clone());
                }
                if let Some(t) = q.issued_from {
                    qb.push(" AND w.issued_at >= ").push_bind(t);
                }
                if let Some(t) = q.issued_before {
                    qb.push(" AND w.issued_at < ").push_bind(t);
                }
                if let Some(b) = &q.bus_type {
                    qb.push(" AND r.bus_type = ").push_bind(b.clone());
                }
                if let Some(v) = q.min_fen {
                    qb.push(" AND r.total_fen >= ").push_bind(v);
                }
                if let Some(v) = q.max_fen {
                    qb.push(" AND r.total_fen <= ").push_bind(v);
                }
                match q.reversed {
                    Some(true) => {
                        qb.push(" AND r.red_bill_no IS NOT NULL");
                    }
                    Some(false) => {
                        qb.push(" AND r.red_bill_no IS NULL");
                    }
                    None => {}
                }
                if let Some(s) = q.reimbursement_state {
                    qb.push(" AND r.reimbursement_state = ").push_bind(s.as_str());
                }
                if let Some(text) = &q.text {
                    let pattern = $crate::wallet_sql::like_pattern(text);
                    qb.push(" AND (lower(a.name) LIKE ")
                        .push_bind(pattern.clone())
                        .push(" ESCAPE '\\' OR lower(COALESCE(r.search_text, '')) LIKE ")
                        .push_bind(pattern)
                        .push(" ESCAPE '\\')");
                }
                if let Some((at, id)) = q.after {
                    qb.push(" AND (w.issued_at, w.receipt_id) < (")
                        .push_bind($crate::shared::micros(at))
                        .push(", ")
                        .push_bind(id)
                        .push(")");
                }
                qb.push(" ORDER BY w.issued_at DESC, w.receipt_id DESC LIMIT ")
                    .push_bind(q.limit);
                let rows: Vec<$crate::wallet_sql::WalletItemRow> =
                    qb.build_query_as().fetch_all(&self.pool).await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn wallet_receipt(
                &self,
                payer_id: uuid::Uuid,
                receipt_id: uuid::Uuid,
                scope: Option<&[uuid::Uuid]>,
            ) -> $crate::Result<Option<$crate::wallet::WalletDetail>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT a.code AS agency_code, a.name AS agency_name, w.source, w.tags, w.note_sealed, \
                     w.added_at FROM wallet_entries w JOIN agencies a ON a.id = w.agency_id WHERE w.payer_id = ",
                );
                qb.push_bind(payer_id)
                    .push(" AND w.receipt_id = ")
                    .push_bind(receipt_id)
                    .push(" AND w.removed_at IS NULL");
                push_scope(&mut qb, scope);
                let mut conn = self.pool.acquire().await?;
                let entry: Option<$crate::wallet_sql::WalletEntryRow> =
                    qb.build_query_as().fetch_optional(&mut *conn).await?;
                let Some(entry) = entry else { return Ok(None) };
                let row: Option<$crate::shared::ReceiptRow> =
                    sqlx::query_as(concat!("SELECT ", $crate::shared::receipt_columns!(), " FROM receipts WHERE id = $1"))
                        .bind(receipt_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some($crate::wallet::WalletDetail {
                    receipt: row.into_receipt(Vec::new())?,
                    agency_code: entry.agency_code,
                    agency_name: entry.agency_name,
                    source: entry.source,
                    tags: entry.tags.0,
                    note_sealed: entry.note_sealed,
                    added_at: entry.added_at,
                }))
            }

            async fn find_receipt(
                &self,
                bill_batch_code: &str,
                bill_no: &str,
            ) -> $crate::Result<Option<$crate::StoredReceipt>> {
                let row: Option<$crate::shared::ReceiptRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::shared::receipt_columns!(),
                    " FROM receipts WHERE bill_batch_code = $1 AND bill_no = $2"
                ))
                .bind(bill_batch_code)
                .bind(bill_no)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| r.into_receipt(Vec::new())).transpose()
            }

            async fn add_to_wallet(
                &self,
                payer_id: uuid::Uuid,
                receipt_id: uuid::Uuid,
            ) -> $crate::Result<$crate::wallet::WalletAdd> {
                let now = $crate::shared::now();
                let (_turn, mut tx) = self.begin_write().await?;
                let inserted = sqlx::query(
                    "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
                     SELECT $1, r.id, r.agency_id, r.issued_at, 'possession', '[]', $3 FROM receipts r \
                     WHERE r.id = $2 ON CONFLICT (payer_id, receipt_id) DO NOTHING",
                )
                .bind(payer_id)
                .bind(receipt_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::shared::write_error(e, "wallet_entry"))?
                .rows_affected();
                let outcome = if inserted == 1 {
                    $crate::wallet::WalletAdd::Added
                } else {
                    let restored = sqlx::query(
                        "UPDATE wallet_entries SET removed_at = NULL, source = 'possession', added_at = $3 \
                         WHERE payer_id = $1 AND receipt_id = $2 AND removed_at IS NOT NULL",
                    )
                    .bind(payer_id)
                    .bind(receipt_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if restored == 1 {
                        $crate::wallet::WalletAdd::Added
                    } else {
                        $crate::wallet::WalletAdd::AlreadyThere
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }

            async fn remove_from_wallet(
                &self,
                payer_id: uuid::Uuid,
                receipt_id: uuid::Uuid,
                scope: Option<&[uuid::Uuid]>,
            ) -> $crate::Result<bool> {
                // The scope filters on `w.agency_id`: a subquery gives it that alias.
                let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE wallet_entries SET removed_at = ");
                qb.push_bind($crate::shared::now())
                    .push(" WHERE payer_id = ")
                    .push_bind(payer_id)
                    .push(" AND receipt_id = ")
                    .push_bind(receipt_id)
                    .push(" AND removed_at IS NULL AND receipt_id IN (SELECT w.receipt_id FROM wallet_entries w WHERE w.payer_id = ")
                    .push_bind(payer_id);
                push_scope(&mut qb, scope);
                qb.push(")");
                let (_turn, mut tx) = self.begin_write().await?;
                let changed = qb.build().execute(&mut *tx).await?.rows_affected() == 1;
                tx.commit().await?;
                Ok(changed)
            }

            async fn annotate_wallet_entry(
                &self,
                payer_id: uuid::Uuid,
                receipt_id: uuid::Uuid,
                scope: Option<&[uuid::Uuid]>,
                annotation: $crate::wallet::WalletAnnotation,
            ) -> $crate::Result<bool> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE wallet_entries SET payer_id = payer_id");
                if let Some(tags) = annotation.tags {
                    qb.push(", tags = ").push_bind(sqlx::types::Json(tags));
                }
                if let Some(note) = annotation.note_sealed {
                    qb.push(", note_sealed = ").push_bind(note);
                }
                qb.push(" WHERE payer_id = ")
                    .push_bind(payer_id)
                    .push(" AND receipt_id = ")
                    .push_bind(receipt_id)
                    .push(" AND removed_at IS NULL AND receipt_id IN (SELECT w.receipt_id FROM wallet_entries w WHERE w.payer_id = ")
                    .push_bind(payer_id);
                push_scope(&mut qb, scope);
                qb.push(")");
                let (_turn, mut tx) = self.begin_write().await?;
                let changed = qb.build().execute(&mut *tx).await?.rows_affected() == 1;
                tx.commit().await?;
                Ok(changed)
            }

            async fn platform_channels(&self) -> $crate::Result<Vec<$crate::Channel>> {
                let rows: Vec<$crate::shared::ChannelRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::shared::channel_columns!(),
                    " FROM channels WHERE agency_id IS NULL ORDER BY kind"
                ))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }
        }
    };
}
pub(crate) use wallet_store;

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("50%_Ab"), "%50\\%\\_ab%");
        assert_eq!(like_pattern("血常规"), "%血常规%");
    }
}
