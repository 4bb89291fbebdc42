//! Tenants and their apps: agencies (开票单位), the signed apps of issuers and
//! reimbursers with their secrets, and the WeChat channels agencies (or the
//! platform) deliver through.

use async_trait::async_trait;
use const_format::concatcp;
use piaojia_core::delivery::ChannelKind;
use piaojia_core::parties::AppKind;
use serde::Serialize;
use uuid::Uuid;

use crate::sql::{Conn, Dialect, Json, Sql, Tx, write_error, written};
use crate::{Db, Entity, Result, StoreError, Timestamp};

#[derive(Debug, Clone)]
pub struct NewAgency {
    /// The agency's own code (统一社会信用代码 or the finance bureau's unit code).
    pub code: String,
    pub name: String,
    /// Hosts from which receipt files may be fetched by URL (exact host names).
    pub file_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agency {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub file_hosts: Vec<String>,
    pub created_at: Timestamp,
}

/// A secret as stored: sealed under the master key (`piaojia_core::pii::Keyring`).
#[derive(Debug, Clone)]
pub struct NewAppSecret {
    pub id: Uuid,
    pub sealed: String,
}

#[derive(Debug, Clone)]
pub struct NewApp {
    pub app_id: String,
    pub agency_id: Uuid,
    pub kind: AppKind,
    pub name: String,
    pub callback_url: Option<String>,
    pub secret: NewAppSecret,
}

#[derive(Debug, Clone)]
pub struct AppSecret {
    pub id: Uuid,
    pub sealed: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct App {
    pub app_id: String,
    pub agency_id: Uuid,
    pub kind: AppKind,
    pub name: String,
    pub enabled: bool,
    pub callback_url: Option<String>,
    /// Active secrets, newest first (one, or two during a rotation).
    pub secrets: Vec<AppSecret>,
    pub created_at: Timestamp,
}

/// A WeChat channel of an agency: which app, template and field mapping to use.
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// `None`: the platform's own channel (the shared wallet mini-program).
    pub agency_id: Option<Uuid>,
    pub kind: ChannelKind,
    pub wechat_app_id: String,
    /// The app's secret, sealed.
    pub secret_sealed: String,
    pub template_id: String,
    /// Template keyword → value template, e.g. `{"thing1": "{agencyName}", "amount2": "{amount}元"}`.
    pub fields: serde_json::Value,
    /// Mini-program page or web page opened from the message.
    pub page: Option<String>,
    /// Message-server token and EncodingAESKey (sealed), for this app's events.
    pub message_token_sealed: Option<String>,
    pub encoding_aes_key_sealed: Option<String>,
    pub enabled: bool,
    /// A long-term subscribe template: no consent is used up per message.
    pub long_term: bool,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: Uuid,
    pub agency_id: Option<Uuid>,
    pub kind: ChannelKind,
    pub wechat_app_id: String,
    pub secret_sealed: String,
    pub template_id: String,
    pub fields: serde_json::Value,
    pub page: Option<String>,
    pub message_token_sealed: Option<String>,
    pub encoding_aes_key_sealed: Option<String>,
    pub enabled: bool,
    pub long_term: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Agencies, apps and channels.
#[async_trait]
pub trait Tenants: Send + Sync {
    /// Creates an agency; `Conflict("agency_code")` when the code exists.
    async fn create_agency(&self, agency: NewAgency) -> Result<Agency>;
    /// Creates or updates (name, file hosts) by code: declarative provisioning.
    async fn upsert_agency(&self, agency: NewAgency) -> Result<Agency>;
    async fn agency(&self, id: Uuid) -> Result<Option<Agency>>;
    /// The agencies with these ids, in one query (missing ones left out).
    async fn agencies(&self, ids: &[Uuid]) -> Result<Vec<Agency>>;
    async fn agency_by_code(&self, code: &str) -> Result<Option<Agency>>;
    async fn list_agencies(&self) -> Result<Vec<Agency>>;

    /// Creates an app with its first secret; `Conflict("app_id")` when it exists.
    async fn create_app(&self, app: NewApp) -> Result<App>;
    /// Fetches an app with its active secrets, newest first.
    async fn app(&self, app_id: &str) -> Result<Option<App>>;
    async fn list_apps(&self, agency_id: Option<Uuid>) -> Result<Vec<App>>;
    /// Adds `secret` as the newest. With `keep_previous`, the newest existing secret
    /// stays active beside it (rotation); older ones are retired, so at most two are
    /// active. Without it, every existing secret is retired.
    async fn add_app_secret(&self, app_id: &str, secret: NewAppSecret, keep_previous: bool) -> Result<App>;
    /// Retires every secret but the newest (end of a rotation).
    async fn retire_old_app_secrets(&self, app_id: &str) -> Result<App>;
    async fn set_app_enabled(&self, app_id: &str, enabled: bool) -> Result<App>;
    async fn set_app_callback(&self, app_id: &str, callback_url: Option<String>) -> Result<App>;

    /// Creates or replaces the channel of that kind for the agency (or, with no
    /// agency, the platform's).
    async fn upsert_channel(&self, channel: NewChannel) -> Result<Channel>;
    async fn channels_for_agency(&self, agency_id: Uuid) -> Result<Vec<Channel>>;
    /// Channels of no agency: the platform's wallet mini-program.
    async fn platform_channels(&self) -> Result<Vec<Channel>>;
    async fn channel_by_wechat_app(&self, wechat_app_id: &str) -> Result<Vec<Channel>>;
}

const AGENCY_COLUMNS: &str = "id, code, name, file_hosts, created_at";

#[derive(sqlx::FromRow)]
struct AgencyRow {
    id: Uuid,
    code: String,
    name: String,
    file_hosts: sqlx::types::Json<Vec<String>>,
    created_at: Timestamp,
}

impl From<AgencyRow> for Agency {
    fn from(row: AgencyRow) -> Self {
        Agency {
            id: row.id,
            code: row.code,
            name: row.name,
            file_hosts: row.file_hosts.0,
            created_at: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AppRow {
    app_id: String,
    agency_id: Uuid,
    kind: String,
    name: String,
    enabled: bool,
    callback_url: Option<String>,
    created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct SecretRow {
    id: Uuid,
    app_id: String,
    sealed: String,
    created_at: Timestamp,
}

impl AppRow {
    fn into_app(self, secrets: Vec<SecretRow>) -> Result<App> {
        let kind = AppKind::parse(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("app {}: kind {:?}", self.app_id, self.kind)))?;
        Ok(App {
            secrets: secrets
                .into_iter()
                .map(|s| AppSecret {
                    id: s.id,
                    sealed: s.sealed,
                    created_at: s.created_at,
                })
                .collect(),
            app_id: self.app_id,
            agency_id: self.agency_id,
            kind,
            name: self.name,
            enabled: self.enabled,
            callback_url: self.callback_url,
            created_at: self.created_at,
        })
    }
}

const CHANNEL_COLUMNS: &str = "id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, page, \
     message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at, long_term";

#[derive(sqlx::FromRow)]
pub(crate) struct ChannelRow {
    id: Uuid,
    agency_id: Option<Uuid>,
    kind: String,
    wechat_app_id: String,
    secret_sealed: String,
    template_id: String,
    fields: sqlx::types::Json<serde_json::Value>,
    page: Option<String>,
    message_token_sealed: Option<String>,
    encoding_aes_key_sealed: Option<String>,
    enabled: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
    long_term: bool,
}

impl TryFrom<ChannelRow> for Channel {
    type Error = StoreError;

    fn try_from(row: ChannelRow) -> Result<Self> {
        Ok(Channel {
            kind: ChannelKind::parse(&row.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("channel {}: kind {:?}", row.id, row.kind)))?,
            id: row.id,
            agency_id: row.agency_id,
            wechat_app_id: row.wechat_app_id,
            secret_sealed: row.secret_sealed,
            template_id: row.template_id,
            fields: row.fields.0,
            page: row.page,
            message_token_sealed: row.message_token_sealed,
            encoding_aes_key_sealed: row.encoding_aes_key_sealed,
            enabled: row.enabled,
            long_term: row.long_term,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn channels(rows: Vec<ChannelRow>) -> Result<Vec<Channel>> {
    rows.into_iter().map(Channel::try_from).collect()
}

/// Creates or replaces an agency's channel of a kind.
const UPSERT_AGENCY_CHANNEL: &str = "INSERT INTO channels (id, agency_id, kind, wechat_app_id, secret_sealed, \
     template_id, fields, page, message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at, \
     long_term) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13) \
     ON CONFLICT (agency_id, kind) DO UPDATE SET wechat_app_id = excluded.wechat_app_id, \
     secret_sealed = excluded.secret_sealed, template_id = excluded.template_id, fields = excluded.fields, \
     page = excluded.page, message_token_sealed = excluded.message_token_sealed, \
     encoding_aes_key_sealed = excluded.encoding_aes_key_sealed, enabled = excluded.enabled, \
     long_term = excluded.long_term, updated_at = excluded.updated_at \
     RETURNING id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, page, \
     message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at, long_term";

/// The same for the platform's channels (no agency: the partial unique index).
const UPSERT_PLATFORM_CHANNEL: &str = "INSERT INTO channels (id, agency_id, kind, wechat_app_id, secret_sealed, \
     template_id, fields, page, message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at, \
     long_term) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13) \
     ON CONFLICT (kind) WHERE agency_id IS NULL DO UPDATE SET wechat_app_id = excluded.wechat_app_id, \
     secret_sealed = excluded.secret_sealed, template_id = excluded.template_id, fields = excluded.fields, \
     page = excluded.page, message_token_sealed = excluded.message_token_sealed, \
     encoding_aes_key_sealed = excluded.encoding_aes_key_sealed, enabled = excluded.enabled, \
     long_term = excluded.long_term, updated_at = excluded.updated_at \
     RETURNING id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, page, \
     message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at, long_term";

async fn load_app<C: Conn + ?Sized>(conn: &mut C, app_id: &str) -> Result<Option<App>> {
    let row: Option<AppRow> =
        Sql::new("SELECT app_id, agency_id, kind, name, enabled, callback_url, created_at FROM apps WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(conn)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let secrets: Vec<SecretRow> = Sql::new(
        "SELECT id, app_id, sealed, created_at FROM app_secrets WHERE app_id = $1 AND retired_at IS NULL \
         ORDER BY created_at DESC, id DESC",
    )
    .bind(app_id)
    .fetch_all(conn)
    .await?;
    row.into_app(secrets).map(Some)
}

/// Locks the app row so concurrent rotations of one app serialise.
async fn lock_app<D: Dialect>(conn: &mut D::Conn, app_id: &str) -> Result<()> {
    const FIND: &str = "SELECT app_id FROM apps WHERE app_id = $1";
    let sql = Sql::new(D::row_lock(FIND, concatcp!(FIND, " FOR UPDATE")));
    let found: Option<(String,)> = sql.bind(app_id).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or(StoreError::NotFound(Entity::App))
}

/// Retires the app's active secrets, sparing the newest one when `keep_newest`.
async fn retire_secrets<C: Conn + ?Sized>(conn: &mut C, app_id: &str, keep_newest: bool, now: Timestamp) -> Result<()> {
    let sql = if keep_newest {
        Sql::new(
            "UPDATE app_secrets SET retired_at = $2 WHERE app_id = $1 AND retired_at IS NULL AND id <> \
             (SELECT id FROM app_secrets WHERE app_id = $1 AND retired_at IS NULL \
              ORDER BY created_at DESC, id DESC LIMIT 1)",
        )
    } else {
        Sql::new("UPDATE app_secrets SET retired_at = $2 WHERE app_id = $1 AND retired_at IS NULL")
    };
    sql.bind(app_id).bind(now).execute(conn).await?;
    Ok(())
}

async fn insert_secret<C: Conn + ?Sized>(
    conn: &mut C,
    app_id: &str,
    secret: &NewAppSecret,
    now: Timestamp,
) -> Result<()> {
    // The new secret must sort first even if the clock stepped back or an older
    // secret carries the same microsecond.
    let newest: Option<(Timestamp,)> =
        Sql::new("SELECT created_at FROM app_secrets WHERE app_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(app_id)
            .fetch_optional(conn)
            .await?;
    let created_at = match newest {
        Some((newest,)) if newest >= now => newest + chrono::TimeDelta::microseconds(1),
        _ => now,
    };
    Sql::new("INSERT INTO app_secrets (id, app_id, sealed, created_at) VALUES ($1, $2, $3, $4)")
        .bind(secret.id)
        .bind(app_id)
        .bind(&secret.sealed)
        .bind(created_at)
        .execute(conn)
        .await
        .map_err(|e| write_error(e, "app_secret_id"))?;
    Ok(())
}

impl<D: Dialect> Db<D> {
    /// Changes one app in a write transaction and returns it as it now is.
    async fn change_app(&self, app_id: &str, change: Sql<'_>) -> Result<App> {
        let mut tx = self.d.write().await?;
        if change.execute(tx.conn()).await? == 0 {
            return Err(StoreError::NotFound(Entity::App));
        }
        let app = written(load_app(tx.conn(), app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }
}

#[async_trait]
impl<D: Dialect> Tenants for Db<D> {
    async fn create_agency(&self, agency: NewAgency) -> Result<Agency> {
        let row: AgencyRow = Sql::new(concatcp!(
            "INSERT INTO agencies (id, code, name, file_hosts, created_at, updated_at) ",
            "VALUES ($1, $2, $3, $4, $5, $5) RETURNING ",
            AGENCY_COLUMNS
        ))
        .bind(Uuid::now_v7())
        .bind(&agency.code)
        .bind(&agency.name)
        .bind(Json(&agency.file_hosts))
        .bind(Timestamp::now())
        .fetch_one(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "agency_code"))?;
        Ok(row.into())
    }

    async fn upsert_agency(&self, agency: NewAgency) -> Result<Agency> {
        let row: AgencyRow = Sql::new(concatcp!(
            "INSERT INTO agencies (id, code, name, file_hosts, created_at, updated_at) ",
            "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (code) DO UPDATE SET name = excluded.name, ",
            "file_hosts = excluded.file_hosts, updated_at = excluded.updated_at RETURNING ",
            AGENCY_COLUMNS
        ))
        .bind(Uuid::now_v7())
        .bind(&agency.code)
        .bind(&agency.name)
        .bind(Json(&agency.file_hosts))
        .bind(Timestamp::now())
        .fetch_one(&mut *self.d.writer().await?)
        .await
        .map_err(|e| write_error(e, "agency_code"))?;
        Ok(row.into())
    }

    async fn agency(&self, id: Uuid) -> Result<Option<Agency>> {
        let row: Option<AgencyRow> = Sql::new(concatcp!("SELECT ", AGENCY_COLUMNS, " FROM agencies WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *self.d.read().await?)
            .await?;
        Ok(row.map(Agency::from))
    }

    async fn agencies(&self, ids: &[Uuid]) -> Result<Vec<Agency>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(concatcp!("SELECT ", AGENCY_COLUMNS, " FROM agencies WHERE id IN "));
        sql.push_list(ids.iter().copied());
        let rows: Vec<AgencyRow> = sql.fetch_all(&mut *self.d.read().await?).await?;
        Ok(rows.into_iter().map(Agency::from).collect())
    }

    async fn agency_by_code(&self, code: &str) -> Result<Option<Agency>> {
        let row: Option<AgencyRow> = Sql::new(concatcp!("SELECT ", AGENCY_COLUMNS, " FROM agencies WHERE code = $1"))
            .bind(code)
            .fetch_optional(&mut *self.d.read().await?)
            .await?;
        Ok(row.map(Agency::from))
    }

    async fn list_agencies(&self) -> Result<Vec<Agency>> {
        let rows: Vec<AgencyRow> = Sql::new(concatcp!("SELECT ", AGENCY_COLUMNS, " FROM agencies ORDER BY code"))
            .fetch_all(&mut *self.d.read().await?)
            .await?;
        Ok(rows.into_iter().map(Agency::from).collect())
    }

    async fn create_app(&self, app: NewApp) -> Result<App> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        Sql::new(
            "INSERT INTO apps (app_id, agency_id, kind, name, enabled, callback_url, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&app.app_id)
        .bind(app.agency_id)
        .bind(app.kind.as_str())
        .bind(&app.name)
        .bind(true)
        .bind(&app.callback_url)
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| write_error(e, "app_id"))?;
        insert_secret(tx.conn(), &app.app_id, &app.secret, now).await?;
        let created = written(load_app(tx.conn(), &app.app_id).await?, "app")?;
        tx.commit().await?;
        Ok(created)
    }

    async fn app(&self, app_id: &str) -> Result<Option<App>> {
        load_app(&mut *self.d.read().await?, app_id).await
    }

    async fn list_apps(&self, agency_id: Option<Uuid>) -> Result<Vec<App>> {
        // One snapshot for both queries so apps and secrets agree.
        let mut tx = self.d.snapshot().await?;
        let apps: Vec<AppRow> = Sql::new(
            "SELECT app_id, agency_id, kind, name, enabled, callback_url, created_at FROM apps \
             WHERE ($1 IS NULL OR agency_id = $1) ORDER BY created_at, app_id",
        )
        .bind(agency_id)
        .fetch_all(tx.conn())
        .await?;
        let mut secrets: Vec<SecretRow> = Sql::new(
            "SELECT id, app_id, sealed, created_at FROM app_secrets WHERE retired_at IS NULL AND app_id IN \
             (SELECT app_id FROM apps WHERE $1 IS NULL OR agency_id = $1) ORDER BY app_id, created_at DESC, id DESC",
        )
        .bind(agency_id)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        apps.into_iter()
            .map(|app| {
                let (mine, rest) = std::mem::take(&mut secrets)
                    .into_iter()
                    .partition(|s| s.app_id == app.app_id);
                secrets = rest;
                app.into_app(mine)
            })
            .collect()
    }

    async fn add_app_secret(&self, app_id: &str, secret: NewAppSecret, keep_previous: bool) -> Result<App> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        lock_app::<D>(tx.conn(), app_id).await?;
        retire_secrets(tx.conn(), app_id, keep_previous, now).await?;
        insert_secret(tx.conn(), app_id, &secret, now).await?;
        let app = written(load_app(tx.conn(), app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn retire_old_app_secrets(&self, app_id: &str) -> Result<App> {
        let now = Timestamp::now();
        let mut tx = self.d.write().await?;
        lock_app::<D>(tx.conn(), app_id).await?;
        retire_secrets(tx.conn(), app_id, true, now).await?;
        let app = written(load_app(tx.conn(), app_id).await?, "app")?;
        tx.commit().await?;
        Ok(app)
    }

    async fn set_app_enabled(&self, app_id: &str, enabled: bool) -> Result<App> {
        let change = Sql::new("UPDATE apps SET enabled = $2, updated_at = $3 WHERE app_id = $1")
            .bind(app_id)
            .bind(enabled)
            .bind(Timestamp::now());
        self.change_app(app_id, change).await
    }

    async fn set_app_callback(&self, app_id: &str, callback_url: Option<String>) -> Result<App> {
        let change = Sql::new("UPDATE apps SET callback_url = $2, updated_at = $3 WHERE app_id = $1")
            .bind(app_id)
            .bind(callback_url)
            .bind(Timestamp::now());
        self.change_app(app_id, change).await
    }

    async fn upsert_channel(&self, channel: NewChannel) -> Result<Channel> {
        let sql = if channel.agency_id.is_some() {
            UPSERT_AGENCY_CHANNEL
        } else {
            UPSERT_PLATFORM_CHANNEL
        };
        let row: ChannelRow = Sql::new(sql)
            .bind(Uuid::now_v7())
            .bind(channel.agency_id)
            .bind(channel.kind.as_str())
            .bind(&channel.wechat_app_id)
            .bind(&channel.secret_sealed)
            .bind(&channel.template_id)
            .bind(Json(&channel.fields))
            .bind(&channel.page)
            .bind(&channel.message_token_sealed)
            .bind(&channel.encoding_aes_key_sealed)
            .bind(channel.enabled)
            .bind(Timestamp::now())
            .bind(channel.long_term)
            .fetch_one(&mut *self.d.writer().await?)
            .await
            .map_err(|e| write_error(e, "channel_id"))?;
        row.try_into()
    }

    async fn channels_for_agency(&self, agency_id: Uuid) -> Result<Vec<Channel>> {
        let sql = Sql::new(concatcp!(
            "SELECT ",
            CHANNEL_COLUMNS,
            " FROM channels WHERE agency_id = $1 ORDER BY kind"
        ));
        channels(sql.bind(agency_id).fetch_all(&mut *self.d.read().await?).await?)
    }

    async fn platform_channels(&self) -> Result<Vec<Channel>> {
        let sql = Sql::new(concatcp!(
            "SELECT ",
            CHANNEL_COLUMNS,
            " FROM channels WHERE agency_id IS NULL ORDER BY kind"
        ));
        channels(sql.fetch_all(&mut *self.d.read().await?).await?)
    }

    async fn channel_by_wechat_app(&self, wechat_app_id: &str) -> Result<Vec<Channel>> {
        let sql = Sql::new(concatcp!(
            "SELECT ",
            CHANNEL_COLUMNS,
            " FROM channels WHERE wechat_app_id = $1 ORDER BY created_at, id"
        ));
        channels(sql.bind(wechat_app_id).fetch_all(&mut *self.d.read().await?).await?)
    }
}
