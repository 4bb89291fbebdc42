//! The official account's pages (H5) and WeChat's own channel: sessions of payers
//! signed in through web OAuth, the wallet kept under an openid before the payer
//! registers, and the scenes of temporary parametric QR codes that hand one
//! receipt to whoever scans them first.
//!
//! A payer first known by an openid (a receipt pushed with it, a QR scanned, a
//! page opened) is a payer without a profile whose identity is (WeChat appid,
//! openid) in `payer_identities`: the same record a mini-program sign-in makes.
//! Registration later adds the verified identity to that same payer, so nothing
//! collected under the openid is lost.

use async_trait::async_trait;
use uuid::Uuid;

use crate::queue::{self, NewDelivery};
use crate::sql::{Conn, Dialect, Sql, Tx, write_error};
use crate::wallets::WalletAdd;
use crate::{Db, Result, Timestamp};

/// A new web session: the keyed hash of the cookie's token and whose it is.
#[derive(Debug, Clone)]
pub struct NewWebSession {
    pub token_hash: String,
    pub payer_id: Uuid,
    pub wechat_app_id: String,
    pub openid: String,
    pub expires_at: Timestamp,
}

/// A live web session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    pub payer_id: Uuid,
    pub wechat_app_id: String,
    pub openid: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A temporary QR code's scene, stored by its keyed hash.
#[derive(Debug, Clone)]
pub struct NewScene {
    pub scene_hash: String,
    pub receipt_id: Uuid,
    pub agency_id: Uuid,
    pub wechat_app_id: String,
    pub expires_at: Timestamp,
}

/// A scan of a receipt's QR code, and the announcement it is owed.
#[derive(Debug, Clone)]
pub struct Scan {
    pub scene_hash: String,
    pub wechat_app_id: String,
    pub openid: String,
    pub now: Timestamp,
    /// The template message telling the payer (inserted with the first scan only).
    pub announce: Option<NewDelivery>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// The receipt is in the scanner's wallet now (`first`: this scan took it).
    Delivered {
        receipt_id: Uuid,
        payer_id: Uuid,
        first: bool,
    },
    /// No such scene for this app (forged, or another account's).
    Unknown,
    Expired,
    /// Someone else scanned it first.
    Taken,
}

#[async_trait]
pub trait PayerPages: Send + Sync {
    async fn create_web_session(&self, session: NewWebSession) -> Result<()>;
    /// The session whose token hashes to `token_hash`, unless it expired.
    async fn web_session(&self, token_hash: &str, now: Timestamp) -> Result<Option<WebSession>>;
    async fn delete_web_session(&self, token_hash: &str) -> Result<bool>;
    /// The payer known in `wechat_app_id` by `openid` (created without a profile
    /// if new), and `receipt_id` collected into their wallet.
    async fn collect_for_openid(
        &self,
        wechat_app_id: &str,
        openid: &str,
        receipt_id: Uuid,
    ) -> Result<(Uuid, WalletAdd)>;
    async fn insert_scene(&self, scene: NewScene) -> Result<()>;
    /// A scan: the first openid takes the receipt (collected into their wallet,
    /// the announcement queued); the same openid again is delivered again without
    /// a second announcement; anyone else, or after expiry, is refused.
    async fn scan_scene(&self, scan: Scan) -> Result<ScanOutcome>;
}

/// The payer behind (appid, openid), created without a profile when new, one
/// statement at a time: [`collect_under_openid`]'s way out of a concurrent first
/// sight of the same openid on PostgreSQL.
pub(crate) async fn payer_for_openid<C: Conn + ?Sized>(
    conn: &mut C,
    wechat_app_id: &str,
    openid: &str,
    now: Timestamp,
) -> Result<Uuid> {
    const FIND: &str = "SELECT payer_id FROM payer_identities WHERE app_id = $1 AND openid = $2";
    let found: Option<(Uuid,)> = Sql::new(FIND)
        .bind(wechat_app_id)
        .bind(openid)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some((id,)) = found {
        return Ok(id);
    }
    let id = Uuid::now_v7();
    Sql::new("INSERT INTO payers (id, created_at, updated_at) VALUES ($1, $2, $2)")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    // A concurrent first sight waits here for the other transaction and then
    // inserts nothing: the winner's payer is read back and ours goes.
    Sql::new(
        "INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (app_id, openid) DO NOTHING",
    )
    .bind(wechat_app_id)
    .bind(openid)
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let (winner,): (Uuid,) = Sql::new(FIND)
        .bind(wechat_app_id)
        .bind(openid)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(crate::StoreError::Corrupt("payer identity vanished".into()))?;
    if winner != id {
        Sql::new("DELETE FROM payers WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(winner)
}

/// A receipt collected into the wallet of the payer known in `wechat_app_id` by
/// `openid` (created without a profile when new): the payer, and whether the
/// receipt is new in that wallet. Every push carrying an openid runs this inside
/// its transaction, so it is one statement on PostgreSQL (find or create the
/// payer, then collect) and three on SQLite (no writes in `WITH` there); scans and
/// pages share it.
pub(crate) async fn collect_under_openid<D: Dialect>(
    conn: &mut D::Conn,
    wechat_app_id: &str,
    openid: &str,
    receipt_id: Uuid,
    now: Timestamp,
) -> Result<(Uuid, WalletAdd)> {
    let fresh = Uuid::now_v7();
    let added = |n: i64| {
        if n > 0 {
            WalletAdd::Added
        } else {
            WalletAdd::AlreadyThere
        }
    };
    if D::BACKEND == crate::Backend::Postgres {
        // `payer_id` is NULL only when a concurrent first sight of the same openid
        // won the identity's insert (ON CONFLICT waited for its commit): our
        // snapshot cannot see that payer, so the statement-by-statement path
        // below, whose later statements do, takes over.
        let (payer, n): (Option<Uuid>, i64) = Sql::new(
            "WITH found AS (SELECT payer_id FROM payer_identities WHERE app_id = $1 AND openid = $2), \
             fresh AS (INSERT INTO payers (id, created_at, updated_at) SELECT $3, $4, $4 \
                       WHERE NOT EXISTS (SELECT 1 FROM found) RETURNING id), \
             identity AS (INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
                          SELECT $1, $2, id, $4, $4 FROM fresh ON CONFLICT (app_id, openid) DO NOTHING \
                          RETURNING payer_id), \
             payer AS (SELECT payer_id FROM found UNION ALL SELECT payer_id FROM identity), \
             entry AS (INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
                       SELECT p.payer_id, r.id, r.agency_id, r.issued_at, 'collected', '[]', $4 \
                       FROM payer p JOIN receipts r ON r.id = $5 \
                       ON CONFLICT (payer_id, receipt_id) DO NOTHING RETURNING payer_id) \
             SELECT (SELECT payer_id FROM payer) AS payer_id, (SELECT count(*) FROM entry) AS added",
        )
        .bind(wechat_app_id)
        .bind(openid)
        .bind(fresh)
        .bind(now)
        .bind(receipt_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| write_error(e, "wallet_entry"))?;
        if let Some(payer) = payer {
            return Ok((payer, added(n)));
        }
        Sql::new("DELETE FROM payers WHERE id = $1")
            .bind(fresh)
            .execute(&mut *conn)
            .await?;
        let payer = payer_for_openid(&mut *conn, wechat_app_id, openid, now).await?;
        return Ok((payer, collect_into(&mut *conn, payer, receipt_id, now).await?));
    }
    // SQLite: this transaction is the only writer, so nothing comes between the
    // statements.
    let created = Sql::new(
        "INSERT INTO payers (id, created_at, updated_at) SELECT $1, $2, $2 \
         WHERE NOT EXISTS (SELECT 1 FROM payer_identities WHERE app_id = $3 AND openid = $4)",
    )
    .bind(fresh)
    .bind(now)
    .bind(wechat_app_id)
    .bind(openid)
    .execute(&mut *conn)
    .await?;
    let payer = if created == 1 {
        Sql::new(
            "INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(wechat_app_id)
        .bind(openid)
        .bind(fresh)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| write_error(e, "payer_identity"))?;
        fresh
    } else {
        let (payer,): (Uuid,) = Sql::new("SELECT payer_id FROM payer_identities WHERE app_id = $1 AND openid = $2")
            .bind(wechat_app_id)
            .bind(openid)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(crate::StoreError::Corrupt("payer identity vanished".into()))?;
        payer
    };
    Ok((payer, collect_into(&mut *conn, payer, receipt_id, now).await?))
}

/// PostgreSQL's [`collect_all_under_openid`] in one statement. LATERAL … OFFSET 0:
/// one primary-key lookup per openid, which the generic plan of a plain join does
/// not promise (it hash-joined a scan of every identity, 4 ms a batch at 25,000).
/// The receipts' agency and time come along, so no receipt is read back.
pub(crate) const OPENID_WALLETS_PG: &str = "WITH u AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], \
                $6::timestamptz[]) AS u (app_id, openid, receipt_id, fresh, agency_id, issued_at)), \
     found AS (SELECT u.receipt_id, i.payer_id FROM u CROSS JOIN LATERAL \
               (SELECT payer_id FROM payer_identities i WHERE i.app_id = u.app_id AND i.openid = u.openid \
                OFFSET 0) AS i), \
     fresh AS (INSERT INTO payers (id, created_at, updated_at) SELECT u.fresh, $7, $7 FROM u \
               WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.receipt_id = u.receipt_id) RETURNING id), \
     identity AS (INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
                  SELECT u.app_id, u.openid, u.fresh, $7, $7 FROM u JOIN fresh ON fresh.id = u.fresh \
                  ON CONFLICT (app_id, openid) DO NOTHING RETURNING payer_id), \
     payer AS (SELECT receipt_id, payer_id FROM found \
               UNION ALL SELECT u.receipt_id, i.payer_id FROM identity i JOIN u ON u.fresh = i.payer_id), \
     entry AS (INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
               SELECT p.payer_id, u.receipt_id, u.agency_id, u.issued_at, 'collected', '[]', $7 \
               FROM payer p JOIN u ON u.receipt_id = p.receipt_id \
               ON CONFLICT (payer_id, receipt_id) DO NOTHING) \
     SELECT u.receipt_id, u.fresh, p.payer_id FROM u LEFT JOIN payer p ON p.receipt_id = u.receipt_id";

/// A push's (appid, openid, receipt, its agency, its issue time) for
/// [`collect_all_under_openid`].
pub(crate) type OpenidPush<'a> = (&'a str, &'a str, Uuid, Uuid, Timestamp);

/// [`collect_under_openid`] for a batch of pushes, in one statement on
/// PostgreSQL and three on SQLite whatever their number: each receipt collected
/// into the wallet of the payer its (appid, openid) names, created when new.
/// An (appid, openid) that comes twice is collected the second time on its own,
/// once the first has made its payer.
pub(crate) async fn collect_all_under_openid<'a, D: Dialect>(
    conn: &mut D::Conn,
    pushes: &[OpenidPush<'a>],
    now: Timestamp,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let (first, again): (Vec<OpenidPush<'a>>, Vec<OpenidPush<'a>>) = pushes
        .iter()
        .copied()
        .partition(|&(app, openid, ..)| seen.insert((app, openid)));
    // Each with the id its payer gets if the openid is new.
    let first: Vec<(OpenidPush<'a>, Uuid)> = first.into_iter().map(|push| (push, Uuid::now_v7())).collect();
    match (first.len(), D::BACKEND) {
        (0, _) => {}
        (1, _) => {
            let ((app, openid, receipt, ..), _) = first[0];
            collect_under_openid::<D>(&mut *conn, app, openid, receipt, now).await?;
        }
        (_, crate::Backend::Postgres) => {
            // As in `collect_under_openid`, a NULL payer is an openid whose first
            // sight a concurrent transaction won: that one goes statement by statement.
            let rows: Vec<(Uuid, Uuid, Option<Uuid>)> = Sql::new(OPENID_WALLETS_PG)
                .bind(
                    first
                        .iter()
                        .map(|((app, ..), _)| Some((*app).to_owned()))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    first
                        .iter()
                        .map(|((_, openid, ..), _)| Some((*openid).to_owned()))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    first
                        .iter()
                        .map(|((_, _, receipt, ..), _)| *receipt)
                        .collect::<Vec<_>>(),
                )
                .bind(first.iter().map(|(_, fresh)| *fresh).collect::<Vec<_>>())
                .bind(first.iter().map(|((.., agency, _), _)| *agency).collect::<Vec<_>>())
                .bind(
                    first
                        .iter()
                        .map(|((.., issued_at), _)| Some(*issued_at))
                        .collect::<Vec<_>>(),
                )
                .bind(now)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| write_error(e, "wallet_entry"))?;
            for (receipt, fresh, payer) in rows {
                if payer.is_some() {
                    continue;
                }
                let Some(((app, openid, ..), _)) = first.iter().find(|((_, _, r, ..), _)| *r == receipt) else {
                    continue;
                };
                Sql::new("DELETE FROM payers WHERE id = $1")
                    .bind(fresh)
                    .execute(&mut *conn)
                    .await?;
                let payer = payer_for_openid(&mut *conn, app, openid, now).await?;
                collect_into(&mut *conn, payer, receipt, now).await?;
            }
        }
        (_, crate::Backend::Sqlite) => {
            // This transaction is the only writer: nothing comes between the statements.
            let list = |sql: &mut Sql<'a>| {
                sql.push("WITH u (app_id, openid, receipt_id, fresh) AS (VALUES ");
                for (i, &((app, openid, receipt, ..), fresh)) in first.iter().enumerate() {
                    sql.push(if i == 0 { "(" } else { ", (" });
                    sql.push_bind(app).push(", ").push_bind(openid).push(", ");
                    sql.push_bind(receipt).push(", ").push_bind(fresh).push(")");
                }
                sql.push(") ").prepared();
            };
            let mut payers = Sql::new("");
            list(&mut payers);
            payers
                .push("INSERT INTO payers (id, created_at, updated_at) SELECT u.fresh, ")
                .push_bind(now)
                .push(", ")
                .push_bind(now)
                .push(
                    " FROM u WHERE NOT EXISTS (SELECT 1 FROM payer_identities i \
                     WHERE i.app_id = u.app_id AND i.openid = u.openid)",
                );
            payers.execute(&mut *conn).await?;
            let mut identities = Sql::new("");
            list(&mut identities);
            identities
                .push(
                    "INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
                     SELECT u.app_id, u.openid, u.fresh, ",
                )
                .push_bind(now)
                .push(", ")
                .push_bind(now)
                .push(" FROM u WHERE EXISTS (SELECT 1 FROM payers p WHERE p.id = u.fresh)");
            identities
                .execute(&mut *conn)
                .await
                .map_err(|e| write_error(e, "payer_identity"))?;
            let mut entries = Sql::new("");
            list(&mut entries);
            entries
                .push(
                    "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
                     SELECT i.payer_id, r.id, r.agency_id, r.issued_at, 'collected', '[]', ",
                )
                .push_bind(now)
                .push(
                    " FROM u JOIN payer_identities i ON i.app_id = u.app_id AND i.openid = u.openid \
                     JOIN receipts r ON r.id = u.receipt_id WHERE true ON CONFLICT (payer_id, receipt_id) DO NOTHING",
                );
            entries
                .execute(&mut *conn)
                .await
                .map_err(|e| write_error(e, "wallet_entry"))?;
        }
    }
    for (app, openid, receipt, ..) in again {
        collect_under_openid::<D>(&mut *conn, app, openid, receipt, now).await?;
    }
    Ok(())
}

/// Collects a receipt into a payer's wallet (restoring nothing the payer removed).
pub(crate) async fn collect_into<C: Conn + ?Sized>(
    conn: &mut C,
    payer_id: Uuid,
    receipt_id: Uuid,
    now: Timestamp,
) -> Result<WalletAdd> {
    let inserted = Sql::new(
        "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at) \
         SELECT $1, r.id, r.agency_id, r.issued_at, 'collected', '[]', $3 FROM receipts r \
         WHERE r.id = $2 ON CONFLICT (payer_id, receipt_id) DO NOTHING",
    )
    .bind(payer_id)
    .bind(receipt_id)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(|e| write_error(e, "wallet_entry"))?;
    Ok(if inserted == 1 {
        WalletAdd::Added
    } else {
        WalletAdd::AlreadyThere
    })
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    payer_id: Uuid,
    wechat_app_id: String,
    openid: String,
    created_at: Timestamp,
    expires_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct SceneRow {
    receipt_id: Uuid,
    agency_id: Uuid,
    expires_at: Timestamp,
    scanned_by: Option<String>,
}

#[async_trait]
impl<D: Dialect> PayerPages for Db<D> {
    async fn create_web_session(&self, s: NewWebSession) -> Result<()> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        // Expired sessions go as new ones come: the table holds live ones only.
        Sql::new("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(tx.conn())
            .await?;
        Sql::new(
            "INSERT INTO web_sessions (token_hash, payer_id, wechat_app_id, openid, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.token_hash)
        .bind(s.payer_id)
        .bind(&s.wechat_app_id)
        .bind(&s.openid)
        .bind(now)
        .bind(s.expires_at)
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "web_session"))?;
        tx.commit().await
    }

    async fn web_session(&self, token_hash: &str, now: Timestamp) -> Result<Option<WebSession>> {
        let row: Option<SessionRow> = Sql::new(
            "SELECT payer_id, wechat_app_id, openid, created_at, expires_at FROM web_sessions \
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&mut *self.d.read().await?)
        .await?;
        Ok(row.map(|r| WebSession {
            payer_id: r.payer_id,
            wechat_app_id: r.wechat_app_id,
            openid: r.openid,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }))
    }

    async fn delete_web_session(&self, token_hash: &str) -> Result<bool> {
        let n = Sql::new("DELETE FROM web_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *self.d.writer().await?)
            .await?;
        Ok(n > 0)
    }

    async fn collect_for_openid(
        &self,
        wechat_app_id: &str,
        openid: &str,
        receipt_id: Uuid,
    ) -> Result<(Uuid, WalletAdd)> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        let (payer, added) = collect_under_openid::<D>(tx.conn(), wechat_app_id, openid, receipt_id, now).await?;
        tx.commit().await?;
        Ok((payer, added))
    }

    async fn insert_scene(&self, s: NewScene) -> Result<()> {
        Sql::new(
            "INSERT INTO receipt_scenes (scene_hash, receipt_id, agency_id, wechat_app_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.scene_hash)
        .bind(s.receipt_id)
        .bind(s.agency_id)
        .bind(&s.wechat_app_id)
        .bind(Timestamp::now())
        .bind(s.expires_at)
        .execute(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "receipt_scene"))?;
        Ok(())
    }

    async fn scan_scene(&self, scan: Scan) -> Result<ScanOutcome> {
        const FIND: &str = "SELECT receipt_id, agency_id, expires_at, scanned_by FROM receipt_scenes \
             WHERE scene_hash = $1 AND wechat_app_id = $2";
        let mut tx = self.d.write().await?;
        let row: Option<SceneRow> = Sql::new(D::row_lock(FIND, const_format::concatcp!(FIND, " FOR UPDATE")))
            .bind(&scan.scene_hash)
            .bind(&scan.wechat_app_id)
            .fetch_optional(tx.conn())
            .await?;
        let Some(row) = row else {
            return Ok(ScanOutcome::Unknown);
        };
        let first = match row.scanned_by.as_deref() {
            Some(by) if by == scan.openid => false,
            Some(_) => return Ok(ScanOutcome::Taken),
            None if row.expires_at <= scan.now => return Ok(ScanOutcome::Expired),
            None => true,
        };
        let (payer_id, _) =
            collect_under_openid::<D>(tx.conn(), &scan.wechat_app_id, &scan.openid, row.receipt_id, scan.now).await?;
        if first {
            Sql::new("UPDATE receipt_scenes SET scanned_by = $2, scanned_at = $3 WHERE scene_hash = $1")
                .bind(&scan.scene_hash)
                .bind(&scan.openid)
                .bind(scan.now)
                .execute(tx.conn())
                .await?;
            if let Some(announce) = scan.announce {
                queue::insert_deliveries::<D>(tx.conn(), row.receipt_id, row.agency_id, &[announce], scan.now).await?;
            }
        }
        tx.commit().await?;
        Ok(ScanOutcome::Delivered {
            receipt_id: row.receipt_id,
            payer_id,
            first,
        })
    }
}
