//! Outbound WeChat API client (DOMAIN.md §4).
//!
//! Access tokens come only from `POST /cgi-bin/stable_token` in normal mode, so a refresh
//! never invalidates a token another process still uses. They are cached per appid
//! (in process or in Redis for scale-out) and refreshed by one caller at a time.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::errcode::{ErrorClass, WechatError};

pub const PRODUCTION_BASE_URL: &str = "https://api.weixin.qq.com";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

pub const PATH_STABLE_TOKEN: &str = "/cgi-bin/stable_token";
pub const PATH_SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
pub const PATH_TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
pub const PATH_JSCODE2SESSION: &str = "/sns/jscode2session";
pub const PATH_OAUTH2_ACCESS_TOKEN: &str = "/sns/oauth2/access_token";
pub const PATH_QRCODE_CREATE: &str = "/cgi-bin/qrcode/create";
pub const PATH_GET_PHONE_NUMBER: &str = "/wxa/business/getuserphonenumber";
pub const PATH_GET_TICKET: &str = "/cgi-bin/ticket/getticket";
pub const PATH_CHECK_REAL_NAME: &str = "/intp/realname/checkrealnameinfo";
pub const PATH_MENU_CREATE: &str = "/cgi-bin/menu/create";
pub const PATH_INVOICE_SET_URL: &str = "/card/invoice/seturl";
pub const PATH_CREATE_BILL_CARD: &str = "/nontax/createbillcard";
pub const PATH_GET_BILL_AUTH_URL: &str = "/nontax/getbillauthurl";
pub const PATH_GET_AUTH_DATA: &str = "/card/invoice/getauthdata";
pub const PATH_SET_PDF: &str = "/card/invoice/platform/setpdf";
pub const PATH_INSERT_BILL: &str = "/nontax/insertbill";
pub const PATH_REJECT_INSERT: &str = "/card/invoice/rejectinsert";
pub const PATH_PLATFORM_UPDATE_STATUS: &str = "/card/invoice/platform/updatestatus";
pub const PATH_REIMBURSE_GET_INFO: &str = "/card/invoice/reimburse/getinvoiceinfo";
pub const PATH_REIMBURSE_GET_BATCH: &str = "/card/invoice/reimburse/getinvoicebatch";
pub const PATH_REIMBURSE_UPDATE_STATUS: &str = "/card/invoice/reimburse/updateinvoicestatus";
pub const PATH_REIMBURSE_UPDATE_BATCH: &str = "/card/invoice/reimburse/updatestatusbatch";

/// Cached tokens expire this long before WeChat's expiry, so callers refresh early.
const EXPIRY_MARGIN_SECS: i64 = 300;
/// Redis refresh lock lifetime: bounds how long a crashed refresher blocks others.
const LOCK_TTL_MS: u64 = 10_000;
const LOCK_POLL: Duration = Duration::from_millis(50);
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Deletes KEYS[1] only if it still holds ARGV[1]: lock release and token invalidation.
const COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// One WeChat account (official account or mini-program).
#[derive(Clone)]
pub struct AppCredentials {
    pub appid: String,
    pub secret: SecretString,
}

impl AppCredentials {
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            appid: appid.into(),
            secret: SecretString::from(secret.into()),
        }
    }
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// WeChat answered with a non-zero errcode.
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error("request timed out")]
    Timeout,
    /// Non-2xx HTTP status (WeChat itself answers errors with 200 + errcode).
    #[error("http status {0}")]
    Http(u16),
    /// Connection, TLS or body-read failure (never carries the URL: it holds secrets).
    #[error("transport: {0}")]
    Transport(String),
    /// 2xx with a body that is not the expected JSON.
    #[error("decode: {0}")]
    Decode(String),
    /// The shared token cache (Redis) failed.
    #[error("token cache: {0}")]
    Cache(String),
    /// Rejected locally before calling WeChat.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl CallError {
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Self::Wechat(e) => Some(e.class()),
            _ => None,
        }
    }

    /// Whether the same request may succeed later. 45011 is retryable (with backoff),
    /// 45009 is not (quota is gone for the day): both should alert.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Wechat(e) => e.class().is_retryable(),
            Self::Timeout | Self::Transport(_) | Self::Cache(_) => true,
            Self::Http(status) => *status >= 500 || *status == 429 || *status == 408,
            Self::Decode(_) | Self::Invalid(_) => false,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::Wechat(_) => "wechat_error",
            Self::Timeout => "timeout",
            Self::Http(_) => "http_error",
            Self::Transport(_) | Self::Cache(_) | Self::Invalid(_) => "transport_error",
            Self::Decode(_) => "decode_error",
        }
    }
}

impl From<reqwest::Error> for CallError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if let Some(status) = e.status() {
            Self::Http(status.as_u16())
        } else {
            // The URL carries access_token or secret in its query.
            Self::Transport(e.without_url().to_string())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("base URL: {0}")]
    BaseUrl(String),
    #[error("http client: {0}")]
    Http(String),
}

/// Where access tokens are cached.
#[derive(Clone)]
pub enum TokenCache {
    /// In this process only; one refresher per appid via a tokio mutex.
    Memory,
    /// Shared by every process using the same Redis and prefix.
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
}

#[derive(Clone)]
struct MemoryToken {
    token: String,
    refresh_at: Instant,
}

type MemorySlot = Arc<Mutex<Option<MemoryToken>>>;

#[derive(Clone)]
enum TokenStore {
    Memory(Arc<Mutex<HashMap<String, MemorySlot>>>),
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
}

#[derive(Deserialize)]
struct StableToken {
    access_token: String,
    expires_in: i64,
}

/// What the shared cache holds per app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    AccessToken,
    /// The card-package `api_ticket` (`getticket?type=wx_card`).
    CardTicket,
}

impl Credential {
    fn memory_key(self, appid: &str) -> String {
        match self {
            Self::AccessToken => appid.to_owned(),
            Self::CardTicket => format!("ticket:wx_card:{appid}"),
        }
    }

    fn redis_key(self, prefix: &str, appid: &str) -> String {
        match self {
            Self::AccessToken => token_key(prefix, appid),
            Self::CardTicket => format!("{prefix}wechat:ticket:wx_card:{appid}"),
        }
    }

    fn lock_key(self, prefix: &str, appid: &str) -> String {
        match self {
            Self::AccessToken => format!("{prefix}wechat:token-lock:{appid}"),
            Self::CardTicket => format!("{prefix}wechat:ticket-lock:wx_card:{appid}"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::CardTicket => "wx_card_ticket",
        }
    }
}

/// A freshly fetched token or ticket.
struct Fresh {
    value: String,
    expires_in: i64,
}

/// A request body.
pub(crate) enum Payload<'a> {
    Empty,
    Json(&'a Value),
    /// `multipart/form-data` already encoded with `boundary`.
    Multipart {
        boundary: String,
        bytes: Vec<u8>,
    },
}

fn pairs(q: &[(String, String)]) -> Vec<(&str, &str)> {
    q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Thin client over reqwest; cheap to clone (shares HTTP pool, cache and limiter).
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    tokens: TokenStore,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = match self.tokens {
            TokenStore::Memory(_) => "memory",
            TokenStore::Redis { .. } => "redis",
        };
        f.debug_struct("WechatClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("cache", &cache)
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

/// Mini-program subscribe message. `data` maps keyword (e.g. `thing1`) to its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeMessage {
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    pub data: BTreeMap<String, String>,
    /// `developer` | `trial` | `formal`
    pub miniprogram_state: Option<String>,
    /// `zh_CN` | `en_US` | `zh_HK` | `zh_TW`
    pub lang: Option<String>,
}

impl SubscribeMessage {
    /// The wire body: `data` becomes `{key: {value}}`.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "touser": self.touser,
            "template_id": self.template_id,
            "data": data_json(&self.data),
        });
        insert_opt(&mut body, "page", &self.page);
        insert_opt(&mut body, "miniprogram_state", &self.miniprogram_state);
        insert_opt(&mut body, "lang", &self.lang);
        body
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiniProgramLink {
    pub appid: String,
    pub pagepath: String,
}

/// Official-account template message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateMessage {
    pub touser: String,
    pub template_id: String,
    pub url: Option<String>,
    pub miniprogram: Option<MiniProgramLink>,
    /// WeChat de-duplicates sends with the same id (idempotency on our retries).
    pub client_msg_id: Option<String>,
    pub data: BTreeMap<String, String>,
}

impl TemplateMessage {
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "touser": self.touser,
            "template_id": self.template_id,
            "data": data_json(&self.data),
        });
        insert_opt(&mut body, "url", &self.url);
        insert_opt(&mut body, "client_msg_id", &self.client_msg_id);
        if let (Some(mp), Value::Object(map)) = (&self.miniprogram, &mut body) {
            map.insert(
                "miniprogram".into(),
                json!({"appid": mp.appid, "pagepath": mp.pagepath}),
            );
        }
        body
    }
}

fn data_json(data: &BTreeMap<String, String>) -> Value {
    Value::Object(data.iter().map(|(k, v)| (k.clone(), json!({ "value": v }))).collect())
}

fn insert_opt(body: &mut Value, key: &str, v: &Option<String>) {
    if let (Some(v), Value::Object(map)) = (v, body) {
        map.insert(key.to_owned(), Value::String(v.clone()));
    }
}

/// Result of `jscode2session`. `session_key` must never leave the server.
#[derive(Clone, Deserialize)]
pub struct Session {
    pub openid: String,
    pub session_key: SecretString,
    #[serde(default)]
    pub unionid: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("openid", &mask(&self.openid))
            .field("unionid", &self.unionid.as_deref().map(mask))
            .finish_non_exhaustive()
    }
}

/// Who a web OAuth code stands for (`sns/oauth2/access_token`; its access token
/// is not kept: snsapi_base needs nothing more).
#[derive(Clone, Deserialize)]
pub struct WebIdentity {
    pub openid: String,
    #[serde(default)]
    pub unionid: Option<String>,
}

impl std::fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebIdentity")
            .field("openid", &mask(&self.openid))
            .field("unionid", &self.unionid.as_deref().map(mask))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QrCode {
    pub ticket: String,
    pub url: String,
    /// Absent for permanent (QR_LIMIT_STR_SCENE) codes.
    #[serde(default)]
    pub expire_seconds: Option<u32>,
}

/// `phone_info` of getuserphonenumber. Personal data: `Debug` masks it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct PhoneInfo {
    /// With country code for non-mainland numbers.
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    #[serde(rename = "purePhoneNumber", default)]
    pub pure_phone_number: String,
    #[serde(rename = "countryCode", default)]
    pub country_code: String,
}

impl std::fmt::Debug for PhoneInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneInfo")
            .field("phone_number", &mask(&self.phone_number))
            .field("country_code", &self.country_code)
            .finish_non_exhaustive()
    }
}

/// Keeps the first 4 characters: enough to correlate logs, not to identify a person.
pub fn mask(s: &str) -> String {
    let head: String = s.chars().take(4).collect();
    format!("{head}***")
}

/// Metric label for a path: the well-known ones get short names.
fn interface_name(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        PATH_STABLE_TOKEN => "stable_token".into(),
        PATH_SUBSCRIBE_SEND => "subscribe_send".into(),
        PATH_TEMPLATE_SEND => "template_send".into(),
        PATH_JSCODE2SESSION => "jscode2session".into(),
        PATH_OAUTH2_ACCESS_TOKEN => "oauth2_access_token".into(),
        PATH_QRCODE_CREATE => "qrcode_create".into(),
        PATH_GET_PHONE_NUMBER => "get_phone_number".into(),
        other => other
            .trim_start_matches("/cgi-bin/")
            .trim_start_matches('/')
            .replace('/', "_"),
    }
}

fn cache_err(e: redis::RedisError) -> CallError {
    CallError::Cache(e.to_string())
}

/// Cache lifetime: expires_in minus the margin, but never zero or negative for short tokens.
fn cache_ttl_secs(expires_in: i64) -> u64 {
    let ttl = (expires_in - EXPIRY_MARGIN_SECS).max(expires_in / 2).max(1);
    u64::try_from(ttl).unwrap_or(1)
}

impl WechatClient {
    /// `base_url` is `https://api.weixin.qq.com` in production, the simulator in tests.
    pub fn new(base_url: &str, cache: TokenCache) -> Result<Self, ClientConfigError> {
        let parsed = url::Url::parse(base_url).map_err(|e| ClientConfigError::BaseUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
            return Err(ClientConfigError::BaseUrl(
                "must be an http(s) URL without query".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientConfigError::Http(e.to_string()))?;
        let tokens = match cache {
            TokenCache::Memory => TokenStore::Memory(Arc::default()),
            TokenCache::Redis { conn, prefix } => TokenStore::Redis { conn, prefix },
        };
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            timeout: DEFAULT_TIMEOUT,
            tokens,
            limiter: None,
        })
    }

    /// Per-request timeout (whole request, excluding rate-limit waits).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Paces outbound API calls; callers wait for a slot rather than fail.
    pub fn with_rate_limit(mut self, per_second: NonZeroU32) -> Self {
        self.limiter = Some(Arc::new(RateLimiter::direct(Quota::per_second(per_second))));
        self
    }

    /// Use a shared reqwest client (connection pool, proxy settings).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    // ---- access token and card ticket -------------------------------------------------

    /// A valid access token for `app`, from the cache or a single refresher.
    pub async fn access_token(&self, app: &AppCredentials) -> Result<String, CallError> {
        self.cached(app, Credential::AccessToken, &|| self.fetch_stable_token(app))
            .await
    }

    /// Drops the cached token only if it is still `failed`: another caller may already
    /// have replaced it, and that newer token must survive.
    pub async fn invalidate_token(&self, app: &AppCredentials, failed: &str) -> Result<(), CallError> {
        self.invalidate_cached(app, Credential::AccessToken, failed).await
    }

    /// The card-package `api_ticket` (`getticket?type=wx_card`) for `app`, cached and
    /// refreshed like the access token (it also lives 7200 s and its calls are limited).
    pub async fn card_ticket(&self, app: &AppCredentials) -> Result<String, CallError> {
        self.cached(app, Credential::CardTicket, &|| self.fetch_card_ticket(app))
            .await
    }

    /// Drops the cached card ticket if it is still `failed`.
    pub async fn invalidate_card_ticket(&self, app: &AppCredentials, failed: &str) -> Result<(), CallError> {
        self.invalidate_cached(app, Credential::CardTicket, failed).await
    }

    /// The cached `cred`, or `fetch`ed by a single refresher. Generic over the fetch so the
    /// ticket's fetch (which needs a token from this same cache) is not async recursion.
    async fn cached<F, Fut>(&self, app: &AppCredentials, cred: Credential, fetch: &F) -> Result<String, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Fresh, CallError>>,
    {
        match &self.tokens {
            TokenStore::Memory(slots) => {
                let slot = slots
                    .lock()
                    .await
                    .entry(cred.memory_key(&app.appid))
                    .or_default()
                    .clone();
                // Holding the slot lock across the fetch makes concurrent callers wait for it.
                let mut cached = slot.lock().await;
                if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                    return Ok(t.token.clone());
                }
                let fresh = fetch().await?;
                let refresh_at = Instant::now() + Duration::from_secs(cache_ttl_secs(fresh.expires_in));
                *cached = Some(MemoryToken {
                    token: fresh.value.clone(),
                    refresh_at,
                });
                Ok(fresh.value)
            }
            TokenStore::Redis { conn, prefix } => self.redis_cached(conn.clone(), prefix, app, cred, fetch).await,
        }
    }

    async fn invalidate_cached(&self, app: &AppCredentials, cred: Credential, failed: &str) -> Result<(), CallError> {
        match &self.tokens {
            TokenStore::Memory(slots) => {
                let slot = slots.lock().await.get(&cred.memory_key(&app.appid)).cloned();
                if let Some(slot) = slot {
                    let mut cached = slot.lock().await;
                    if cached.as_ref().is_some_and(|t| t.token == failed) {
                        *cached = None;
                    }
                }
                Ok(())
            }
            TokenStore::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let _: i64 = redis::Script::new(COMPARE_AND_DELETE)
                    .key(cred.redis_key(prefix, &app.appid))
                    .arg(failed)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(cache_err)?;
                Ok(())
            }
        }
    }

    async fn redis_cached<F, Fut>(
        &self,
        mut conn: redis::aio::ConnectionManager,
        prefix: &str,
        app: &AppCredentials,
        cred: Credential,
        fetch: &F,
    ) -> Result<String, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Fresh, CallError>>,
    {
        let key = cred.redis_key(prefix, &app.appid);
        let lock_key = cred.lock_key(prefix, &app.appid);
        if let Some(t) = redis_get(&mut conn, &key).await? {
            return Ok(t);
        }
        let owner = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let acquired: Option<String> = redis::cmd("SET")
                .arg(&lock_key)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL_MS)
                .query_async(&mut conn)
                .await
                .map_err(cache_err)?;
            if acquired.is_some() {
                let result = refresh_into_redis(&mut conn, &key, fetch).await;
                let released: Result<i64, _> = redis::Script::new(COMPARE_AND_DELETE)
                    .key(&lock_key)
                    .arg(&owner)
                    .invoke_async(&mut conn)
                    .await;
                if let Err(e) = released {
                    // The lock expires by itself; only log.
                    tracing::warn!(appid = %app.appid, cache = cred.label(), error = %e, "releasing wechat cache lock failed");
                }
                return result;
            }
            if Instant::now() >= deadline {
                // The holder is stuck; normal-mode stable_token (and getticket, which hands
                // out the current ticket) are safe to call concurrently.
                tracing::warn!(appid = %app.appid, cache = cred.label(), "wechat cache lock wait timed out; fetching without lock");
                let fresh = fetch().await?;
                return Ok(fresh.value);
            }
            tokio::time::sleep(LOCK_POLL).await;
            if let Some(t) = redis_get(&mut conn, &key).await? {
                return Ok(t);
            }
        }
    }

    async fn fetch_stable_token(&self, app: &AppCredentials) -> Result<Fresh, CallError> {
        let body = json!({
            "grant_type": "client_credential",
            "appid": app.appid,
            "secret": app.secret.expose_secret(),
            // Never force: it invalidates the token other processes use and is limited to 20/day.
            "force_refresh": false,
        });
        tracing::debug!(appid = %app.appid, "fetching wechat stable_token");
        // Not rate-limited: a refresher holding the Redis lock must not queue behind sends.
        let t: StableToken = self
            .request(app, Method::POST, PATH_STABLE_TOKEN, &[], &Payload::Json(&body), false)
            .await?;
        Ok(Fresh {
            value: t.access_token,
            expires_in: t.expires_in,
        })
    }

    async fn fetch_card_ticket(&self, app: &AppCredentials) -> Result<Fresh, CallError> {
        #[derive(Deserialize)]
        struct Ticket {
            ticket: String,
            expires_in: i64,
        }
        tracing::debug!(appid = %app.appid, "fetching wechat wx_card ticket");
        let t: Ticket = self
            .call(
                app,
                Method::GET,
                PATH_GET_TICKET,
                &[("type", "wx_card")],
                &Payload::Empty,
            )
            .await?;
        Ok(Fresh {
            value: t.ticket,
            expires_in: t.expires_in,
        })
    }

    // ---- generic call -------------------------------------------------------------

    /// Calls `path` with `?access_token=`, retrying once with a fresh token if WeChat
    /// rejects the token (40001/40014/42001). `body` is sent as JSON unless it is null.
    pub async fn call_json<T: DeserializeOwned>(
        &self,
        app: &AppCredentials,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, CallError> {
        let payload = if body.is_null() {
            Payload::Empty
        } else {
            Payload::Json(body)
        };
        self.call(app, method, path, &[], &payload).await
    }

    /// [`call_json`](Self::call_json) with extra query parameters and any payload.
    async fn call<T: DeserializeOwned>(
        &self,
        app: &AppCredentials,
        method: Method,
        path: &str,
        extra_query: &[(&str, &str)],
        payload: &Payload<'_>,
    ) -> Result<T, CallError> {
        let token = self.access_token(app).await?;
        let query = |token: &str| {
            let mut q = vec![("access_token".to_owned(), token.to_owned())];
            q.extend(extra_query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            q
        };
        let first = self
            .request(app, method.clone(), path, &pairs(&query(&token)), payload, true)
            .await;
        match first {
            Err(CallError::Wechat(e)) if e.class() == ErrorClass::TokenInvalid => {
                tracing::info!(appid = %app.appid, errcode = e.errcode, "wechat rejected access token; refreshing once");
                self.invalidate_token(app, &token).await?;
                let token = self.access_token(app).await?;
                self.request(app, method, path, &pairs(&query(&token)), payload, true)
                    .await
            }
            other => other,
        }
    }

    /// One HTTP exchange: pacing, timeout, errcode parsing and metrics.
    async fn request<T: DeserializeOwned>(
        &self,
        app: &AppCredentials,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        payload: &Payload<'_>,
        paced: bool,
    ) -> Result<T, CallError> {
        if paced && let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let interface = format!("wechat:{}:{}", app.appid, interface_name(path));
        let started = Instant::now();
        let result = self.exchange(method, path, query, payload).await;
        metrics::histogram!("piaojia_external_request_duration_seconds", "interface" => interface.clone())
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.outcome(),
        };
        metrics::counter!("piaojia_external_requests_total", "interface" => interface, "outcome" => outcome)
            .increment(1);
        if let Err(e) = &result {
            tracing::debug!(appid = %app.appid, path, error = %e, "wechat call failed");
        }
        result
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        payload: &Payload<'_>,
    ) -> Result<T, CallError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(self.timeout);
        if !query.is_empty() {
            req = req.query(query);
        }
        match payload {
            Payload::Empty => {}
            Payload::Json(body) => req = req.json(body),
            Payload::Multipart { boundary, bytes } => {
                req = req
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(bytes.clone());
            }
        }
        let resp = req.send().await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CallError::Http(status.as_u16()));
        }
        let bytes = resp.bytes().await?;
        parse_response(&bytes)
    }

    // ---- typed helpers --------------------------------------------------------------

    /// Mini-program subscribe message. 43101 (no consent left) is a business outcome.
    pub async fn send_subscribe_message(&self, app: &AppCredentials, msg: &SubscribeMessage) -> Result<(), CallError> {
        let _: Value = self
            .call_json(app, Method::POST, PATH_SUBSCRIBE_SEND, &msg.to_json())
            .await?;
        Ok(())
    }

    /// Official-account template message; returns WeChat's `msgid`, which the later
    /// TEMPLATESENDJOBFINISH event carries as `MsgID`.
    pub async fn send_template_message(&self, app: &AppCredentials, msg: &TemplateMessage) -> Result<i64, CallError> {
        #[derive(Deserialize)]
        struct Sent {
            msgid: i64,
        }
        let sent: Sent = self
            .call_json(app, Method::POST, PATH_TEMPLATE_SEND, &msg.to_json())
            .await?;
        Ok(sent.msgid)
    }

    /// Mini-program login. Codes are single-use: never retry a 40029/40163.
    pub async fn jscode2session(&self, app: &AppCredentials, code: &str) -> Result<Session, CallError> {
        let query = [
            ("appid", app.appid.as_str()),
            ("secret", app.secret.expose_secret()),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ];
        self.request(app, Method::GET, PATH_JSCODE2SESSION, &query, &Payload::Empty, true)
            .await
    }

    /// Official-account web OAuth (snsapi_base): the code's openid, and the
    /// unionid when the account is bound to an open-platform account.
    pub async fn oauth2_access_token(&self, app: &AppCredentials, code: &str) -> Result<WebIdentity, CallError> {
        let query = [
            ("appid", app.appid.as_str()),
            ("secret", app.secret.expose_secret()),
            ("code", code),
            ("grant_type", "authorization_code"),
        ];
        self.request(
            app,
            Method::GET,
            PATH_OAUTH2_ACCESS_TOKEN,
            &query,
            &Payload::Empty,
            true,
        )
        .await
    }

    /// Parametric QR code: temporary (`QR_STR_SCENE`) with `expire_seconds`, else permanent
    /// (`QR_LIMIT_STR_SCENE`). `scene_str` is 1-64 characters.
    pub async fn create_qrcode(
        &self,
        app: &AppCredentials,
        scene_str: &str,
        expire_seconds: Option<u32>,
    ) -> Result<QrCode, CallError> {
        let n = scene_str.chars().count();
        if !(1..=64).contains(&n) {
            return Err(CallError::Invalid("scene_str must be 1-64 characters".into()));
        }
        let scene = json!({ "scene": { "scene_str": scene_str } });
        let body = match expire_seconds {
            Some(secs) => json!({ "expire_seconds": secs, "action_name": "QR_STR_SCENE", "action_info": scene }),
            None => json!({ "action_name": "QR_LIMIT_STR_SCENE", "action_info": scene }),
        };
        self.call_json(app, Method::POST, PATH_QRCODE_CREATE, &body).await
    }

    /// Mini-program phone number from a `getPhoneNumber` button code.
    pub async fn get_phone_number(&self, app: &AppCredentials, code: &str) -> Result<PhoneInfo, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            phone_info: PhoneInfo,
        }
        let r: Resp = self
            .call_json(app, Method::POST, PATH_GET_PHONE_NUMBER, &json!({ "code": code }))
            .await?;
        Ok(r.phone_info)
    }
}

fn token_key(prefix: &str, appid: &str) -> String {
    format!("{prefix}wechat:token:{appid}")
}

/// Stores a fresh value under `key`, unless another process did so first.
async fn refresh_into_redis<F, Fut>(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    fetch: &F,
) -> Result<String, CallError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Fresh, CallError>>,
{
    // Another process may have refreshed between our miss and taking the lock.
    if let Some(t) = redis_get(conn, key).await? {
        return Ok(t);
    }
    let fresh = fetch().await?;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(&fresh.value)
        .arg("EX")
        .arg(cache_ttl_secs(fresh.expires_in))
        .query_async(conn)
        .await
        .map_err(cache_err)?;
    Ok(fresh.value)
}

async fn redis_get(conn: &mut redis::aio::ConnectionManager, key: &str) -> Result<Option<String>, CallError> {
    redis::cmd("GET").arg(key).query_async(conn).await.map_err(cache_err)
}

/// WeChat answers 200 with `{errcode, errmsg}` on failure; errcode 0 or absent is success.
fn parse_response<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    let value: Value = serde_json::from_slice(bytes).map_err(decode_err)?;
    if let Some(code) = value.get("errcode").and_then(Value::as_i64)
        && code != 0
    {
        let errmsg = value
            .get("errmsg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Err(CallError::Wechat(WechatError { errcode: code, errmsg }));
    }
    serde_json::from_value(value).map_err(decode_err)
}

/// serde_json quotes offending values ("invalid type: string \"o6_b…\""), which may be an
/// openid or session_key: keep only the part before the value.
fn decode_err(e: serde_json::Error) -> CallError {
    let msg = e.to_string();
    CallError::Decode(msg.split(':').next().unwrap_or("invalid response").trim().to_owned())
}

mod card;
mod menu;
mod realname;

pub use card::{
    AuthData, AuthSource, BillAuthRequest, BillAuthUrl, BillCardTemplate, InsertBill, InsertedBill, InvoiceAuthStatus,
    InvoiceInfo, InvoiceRef, InvoiceUserInfo, ReimburseStatus,
};
pub use menu::{ButtonAction, Menu, MenuButton, SubButton};
pub use realname::{OpenidVerification, RealNameCheck, RealNameResult, RealNameVerification};

#[cfg(test)]
mod tests;
