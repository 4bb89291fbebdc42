//! Layered, validated settings: documented defaults (`defaults.toml`), an optional
//! TOML file, then `PIAOJIA_<SECTION>__<KEY>` variables and `DATABASE_URL` /
//! `REDIS_URL`. Validated once at start; secrets are [`SecretString`]s so a `Debug`
//! print shows nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::pii::{self, KeyError, Keyring};

/// The defaults, documented; also shown by `piaojia config defaults`.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub files: FileSettings,
    pub security: SecuritySettings,
    pub log: LogSettings,
    pub notifier: NotifierSettings,
    pub alerts: AlertSettings,
    pub ops: OpsSettings,
    pub wechat: WechatSettings,
    pub miniprogram: MiniProgramSettings,
    pub reimbursement: ReimbursementSettings,
    pub reminders: ReminderSettings,
    pub pages: PagesSettings,
    #[serde(default)]
    pub agencies: Vec<AgencyProvision>,
    #[serde(default)]
    pub reimbursers: Vec<ReimburserProvision>,
    /// Which store `database.url` names, decided once at load.
    #[serde(skip)]
    store: StoreKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    #[serde(rename = "shutdown_timeout_secs", deserialize_with = "secs")]
    pub shutdown_timeout: Duration,
    /// Largest body of an issuer push or reversal (the only large bodies).
    pub body_limit_bytes: usize,
    /// Largest body of every other request (mini-program, operator, reimburser JSON).
    pub json_body_limit_bytes: usize,
    pub public_url: String,
    /// Where `/metrics` is served (`host:port`); empty: not served at all.
    pub metrics_address: String,
    /// The proxies in front of us whose `X-Forwarded-For` is believed (written as
    /// comma-separated addresses or CIDR ranges; a bare address is a /32 or /128).
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ServerSettings {
    /// True when `host` only accepts connections from this machine.
    pub fn host_is_loopback(&self) -> bool {
        let host = self.host.trim().trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The limit of every body but issuer pushes: never above theirs.
    pub fn json_body_limit(&self) -> usize {
        self.json_body_limit_bytes.min(self.body_limit_bytes)
    }

    /// The metrics listener, when one is configured (validated at load).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address.trim().parse().ok()
    }

    /// Whether the externally visible URL is https (HSTS is then sent).
    pub fn public_url_is_https(&self) -> bool {
        url::Url::parse(&self.public_url).is_ok_and(|u| u.scheme() == "https")
    }
}

/// `10.0.0.0/8, 192.168.1.7` → networks; a bare address is a /32 (or /128).
fn parse_networks(list: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR range"))
        })
        .collect()
}

/// A number of seconds, as the settings write durations.
fn secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

fn mins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(|m| Duration::from_secs(m * 60))
}

fn days<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(|n| Duration::from_secs(n * 86_400))
}

/// `15s,3m,6h`: a list of durations.
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    String::deserialize(d)?
        .split(',')
        .map(|s| parse_duration(s.trim()))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// Comma-separated addresses or CIDR ranges.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    parse_networks(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password: secret.
    pub url: SecretString,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    #[serde(rename = "acquire_timeout_secs", deserialize_with = "secs")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretString,
    pub key_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStoreKind {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub max_bytes: u64,
    #[serde(rename = "fetch_timeout_secs", deserialize_with = "secs")]
    pub fetch_timeout: Duration,
    pub allow_private_networks: bool,
    pub allow_http: bool,
    pub store: FileStoreKind,
    pub local_dir: String,
    pub s3_bucket: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub master_keys: SecretString,
    pub active_key_id: String,
    pub blind_index_key: SecretString,
    #[serde(rename = "clock_skew_secs", deserialize_with = "secs")]
    pub clock_skew: Duration,
    #[serde(rename = "nonce_ttl_secs", deserialize_with = "secs")]
    pub nonce_ttl: Duration,
    #[serde(rename = "app_cache_secs", deserialize_with = "secs")]
    pub app_cache: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierSettings {
    pub enabled: bool,
    /// Pushes' deliveries go straight to this process's free workers, leased in
    /// the intake's transaction, instead of waiting for a claim.
    pub handoff: bool,
    pub concurrency: usize,
    pub batch_size: i64,
    #[serde(rename = "poll_interval_ms", deserialize_with = "millis")]
    pub poll_interval: Duration,
    #[serde(rename = "lease_secs", deserialize_with = "secs")]
    pub lease: Duration,
    #[serde(rename = "request_timeout_secs", deserialize_with = "secs")]
    pub request_timeout: Duration,
    /// The waits before each retry, then parked (written `15s,15s,30s,3m,…`).
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    pub jitter_percent: u32,
    pub breaker_failures: u32,
    pub breaker_failure_rate: f64,
    #[serde(rename = "breaker_window_secs", deserialize_with = "secs")]
    pub breaker_window: Duration,
    #[serde(rename = "breaker_open_secs", deserialize_with = "secs")]
    pub breaker_open: Duration,
    #[serde(rename = "breaker_max_open_secs", deserialize_with = "secs")]
    pub breaker_max_open: Duration,
    #[serde(rename = "release_spacing_ms", deserialize_with = "millis")]
    pub release_spacing: Duration,
    pub wechat_rate_per_sec: u32,
}

/// `250ms`, `15s`, `3m`, `6h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 15s, 3m or 6h"))?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} is not a duration like 15s, 3m or 6h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    pub webhook_url: String,
    #[serde(rename = "evaluate_every_secs", deserialize_with = "secs")]
    pub evaluate_every: Duration,
    #[serde(rename = "renotify_every_secs", deserialize_with = "secs")]
    pub renotify_every: Duration,
    pub success_rate_below: f64,
    #[serde(rename = "window_mins", deserialize_with = "mins")]
    pub window: Duration,
    pub min_attempts: i64,
    #[serde(rename = "p95_above_ms", deserialize_with = "millis")]
    pub p95_above: Duration,
    #[serde(rename = "backlog_older_than_secs", deserialize_with = "secs")]
    pub backlog_older_than: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReimbursementSettings {
    /// A lock held this long without closing is released and reported.
    #[serde(rename = "lock_ttl_secs", deserialize_with = "secs")]
    pub lock_ttl: Duration,
    /// How often expired locks are looked for.
    #[serde(rename = "expiry_check_secs", deserialize_with = "secs")]
    pub expiry_check_every: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReminderSettings {
    /// Whether this gateway scans for due reminders.
    pub enabled: bool,
    /// A receipt still unreimbursed this many days after its issue is due.
    pub after_days: u32,
    /// Agencies (by code) with their own number of days.
    #[serde(default)]
    pub agency_after_days: std::collections::BTreeMap<String, u32>,
    /// A receipt this many days from a reimburser's deadline (`claim_within_days`)
    /// reminds its payers once more; 0: no such reminder.
    pub deadline_before_days: u32,
    /// How often each gateway scans.
    #[serde(rename = "check_secs", deserialize_with = "secs")]
    pub check_every: Duration,
    /// Reminders per scan, at most.
    pub batch: u32,
    /// No reminder from this hour (Beijing time, 0-23) ...
    pub quiet_from_hour: u32,
    /// ... until this one; equal hours mean no quiet time.
    pub quiet_until_hour: u32,
}

impl ReminderSettings {
    /// Whether `at` falls in the quiet hours, read in Beijing time.
    pub fn is_quiet(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        use chrono::Timelike;
        let hour = (at.hour() + 8) % 24;
        let (from, until) = (self.quiet_from_hour % 24, self.quiet_until_hour % 24);
        match from.cmp(&until) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => (from..until).contains(&hour),
            // Across midnight, e.g. 21 to 8.
            std::cmp::Ordering::Greater => hour >= from || hour < until,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSettings {
    pub token: SecretString,
    pub token_failures_per_ip_per_min: u32,
}

/// The shortest operator token accepted: it guards re-drives and every channel's figures.
pub const OPS_TOKEN_MIN_CHARS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WechatMode {
    Sandbox,
    Live,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSettings {
    pub mode: WechatMode,
    pub api_base_url: String,
    pub sandbox_allow_public: bool,
    /// How long the signed "收入微信卡包" link of a template message stays valid.
    #[serde(rename = "card_link_secs", deserialize_with = "secs")]
    pub card_link_ttl: Duration,
    /// The `key` of the official-account menu's "我的票据" click button.
    pub menu_receipts_key: String,
    /// Run the message server's inbox worker in this gateway.
    pub inbox_worker: bool,
    /// How often an idle inbox worker looks for due events (a local push wakes it at once).
    #[serde(rename = "inbox_poll_interval_ms", deserialize_with = "millis")]
    pub inbox_poll_interval: Duration,
    /// How long handling one event may take.
    #[serde(rename = "inbox_handle_timeout_secs", deserialize_with = "secs")]
    pub inbox_handle_timeout: Duration,
    /// A claimed event is leased this long; past it another worker takes it again.
    #[serde(rename = "inbox_lease_secs", deserialize_with = "secs")]
    pub inbox_lease: Duration,
    /// The waits before each retry of an event whose handling failed; then it fails for good.
    #[serde(deserialize_with = "durations")]
    pub inbox_retry_schedule: Vec<Duration>,
    /// Handled events are kept this long (WeChat's retries of them stay de-duplicated).
    #[serde(rename = "inbox_retention_secs", deserialize_with = "secs")]
    pub inbox_retention: Duration,
}

/// The receipt-wallet mini-program API (payers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiniProgramSettings {
    #[serde(rename = "access_token_secs", deserialize_with = "secs")]
    pub access_token_ttl: Duration,
    #[serde(rename = "refresh_token_days", deserialize_with = "days")]
    pub refresh_token_ttl: Duration,
    pub privacy_notice_version: String,
    #[serde(rename = "download_link_secs", deserialize_with = "secs")]
    pub download_link_ttl: Duration,
    pub possession_per_payer_per_min: u32,
    pub possession_per_ip_per_min: u32,
    pub session_per_ip_per_min: u32,
    pub session_per_app_per_min: u32,
    pub page_size_max: u32,
}

/// The official account's pages inside WeChat (H5) and WeChat's own channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesSettings {
    /// Lifetime of a page session (the cookie after web OAuth).
    #[serde(rename = "session_secs", deserialize_with = "secs")]
    pub session_ttl: Duration,
    /// Lifetime of a temporary parametric QR code for one receipt (WeChat allows
    /// up to 30 days).
    #[serde(rename = "qr_secs", deserialize_with = "secs")]
    pub qr_ttl: Duration,
    /// Lifetime of an OAuth `state` (sign-in started, not yet come back).
    #[serde(rename = "oauth_state_secs", deserialize_with = "secs")]
    pub oauth_state_ttl: Duration,
    /// Paper-QR views (check code checks) per minute per client address.
    pub paper_qr_per_ip_per_min: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyProvision {
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub file_hosts: Vec<String>,
    #[serde(default)]
    pub issuer_apps: Vec<AppProvision>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppProvision {
    pub app_id: String,
    #[serde(default)]
    pub name: String,
    pub secret: SecretString,
    #[serde(default)]
    pub previous_secret: Option<SecretString>,
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

/// A reimburser declared in the settings (`[[reimbursers]]`): the organisation,
/// its signed app (secrets as for issuer apps) and its profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReimburserProvision {
    pub app_id: String,
    /// `medical_insurance`, `commercial_insurer` or `employer`.
    pub kind: String,
    pub name: String,
    /// The organisation's code (统一社会信用代码), [0-9A-Z].
    pub org_code: String,
    pub secret: SecretString,
    #[serde(default)]
    pub previous_secret: Option<SecretString>,
    /// Where its Standard Webhooks go.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Codes of the agencies whose receipts it accepts.
    #[serde(default)]
    pub accepted_agencies: Vec<String>,
    /// Personal fields payers may share with it (`name`, `id_card_no`, `phone`, `email`, `medical_card_no`).
    #[serde(default)]
    pub personal_fields: Vec<String>,
    /// It reimburses a receipt only this many days after its issue (none: no limit).
    #[serde(default)]
    pub claim_within_days: Option<u32>,
    /// The claim's own fields it asks payers for: `[{name, label, required}]`.
    #[serde(default)]
    pub claim_fields: Vec<crate::parties::ClaimField>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

impl DatabaseSettings {
    /// No URL configured: the embedded SQLite file.
    pub fn url_is_embedded(&self) -> bool {
        self.url.expose_secret().is_empty()
    }
}

fn enabled_default() -> bool {
    true
}

/// A settings problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("setting `{key}` {problem}")]
    Invalid { key: String, problem: String },
    #[error("setting `{key}`: {source}")]
    Keys { key: &'static str, source: KeyError },
    #[error("key file {path}: {problem}")]
    KeyFile { path: PathBuf, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Which store the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    Postgres,
    /// The embedded default.
    #[default]
    Sqlite,
}

impl Settings {
    /// Reads the layers from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// Reads the layers from an explicit environment (tests pass their own map).
    pub fn load_from(file: Option<&Path>, env: HashMap<String, String>) -> Result<Self, SettingsError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("PIAOJIA_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        // Settings are `PIAOJIA_<SECTION>__<KEY>` and `PIAOJIA_DATA_DIR`; other
        // PIAOJIA_ variables (PIAOJIA_CONFIG, the CLI's PIAOJIA_APP_SECRET, test
        // harness URLs) are not settings and must not be refused as unknown keys.
        let piaojia_env: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix("PIAOJIA_")
                    .is_some_and(|rest| rest.contains("__") || rest == "DATA_DIR")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("PIAOJIA")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(piaojia_env)),
        );
        // The conventional variables count when the PIAOJIA_ form is absent.
        if !env.contains_key("PIAOJIA_DATABASE__URL")
            && let Some(url) = env.get("DATABASE_URL")
        {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        if !env.contains_key("PIAOJIA_REDIS__URL")
            && let Some(url) = env.get("REDIS_URL")
        {
            builder = builder.set_override("redis.url", url.as_str())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.store = settings
            .store_kind_of(settings.database.url.expose_secret())
            .unwrap_or_default();
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the types cannot; every error names its key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.server.host.trim().is_empty() {
            return Err(invalid("server.host", "must not be empty"));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(invalid("server.body_limit_bytes", "must be at least 1024"));
        }
        if self.server.json_body_limit_bytes < 1024 {
            return Err(invalid("server.json_body_limit_bytes", "must be at least 1024"));
        }
        let metrics = self.server.metrics_address.trim();
        if !metrics.is_empty() && metrics.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.metrics_address",
                "must be an address like 127.0.0.1:9464 (or empty: no metrics listener)",
            ));
        }
        let qr = self.pages.qr_ttl.as_secs();
        if !(60..=2_592_000).contains(&qr) {
            return Err(invalid(
                "pages.qr_secs",
                "must be between 60 and 2592000 (WeChat's limit)",
            ));
        }
        if self.pages.session_ttl.as_secs() < 60 {
            return Err(invalid("pages.session_secs", "must be at least 60"));
        }
        if self.pages.oauth_state_ttl.as_secs() < 30 {
            return Err(invalid("pages.oauth_state_secs", "must be at least 30"));
        }
        if self.pages.paper_qr_per_ip_per_min == 0 {
            return Err(invalid("pages.paper_qr_per_ip_per_min", "must be at least 1"));
        }
        let ops_token = self.ops.token.expose_secret();
        if !ops_token.is_empty() && ops_token.chars().count() < OPS_TOKEN_MIN_CHARS {
            return Err(invalid(
                "ops.token",
                format!(
                    "must be at least {OPS_TOKEN_MIN_CHARS} characters (generate one with `piaojia keygen`), or empty to turn the operator API off"
                ),
            ));
        }
        if self.ops.token_failures_per_ip_per_min == 0 {
            return Err(invalid("ops.token_failures_per_ip_per_min", "must be at least 1"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if !(1..=300).contains(&self.database.acquire_timeout.as_secs()) {
            return Err(invalid("database.acquire_timeout_secs", "must be between 1 and 300"));
        }
        let db = self.database.url.expose_secret();
        if !db.is_empty() && self.store_kind_of(db).is_none() {
            return Err(invalid(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        let redis = self.redis.url.expose_secret();
        if !redis.is_empty() && !redis.starts_with("redis://") && !redis.starts_with("rediss://") {
            return Err(invalid("redis.url", "must start with redis:// or rediss://"));
        }
        if self.files.max_bytes == 0 {
            return Err(invalid("files.max_bytes", "must be at least 1"));
        }
        if self.files.store == FileStoreKind::S3 && self.files.s3_bucket.is_empty() {
            return Err(invalid("files.s3_bucket", "is required when files.store = \"s3\""));
        }
        if !(30..=3600).contains(&self.security.clock_skew.as_secs()) {
            return Err(invalid("security.clock_skew_secs", "must be between 30 and 3600"));
        }
        if self.security.nonce_ttl < 2 * self.security.clock_skew {
            // A nonce must be remembered for the whole window a timestamp is accepted in.
            return Err(invalid(
                "security.nonce_ttl_secs",
                "must be at least twice security.clock_skew_secs",
            ));
        }
        if !self.server.public_url.is_empty() && url::Url::parse(&self.server.public_url).is_err() {
            return Err(invalid("server.public_url", "is not a URL"));
        }
        let n = &self.notifier;
        if n.retry_schedule.is_empty() {
            return Err(invalid(
                "notifier.retry_schedule",
                "must be a comma-separated list of durations like 15s,3m,6h",
            ));
        }
        if n.concurrency == 0 || n.batch_size < 1 {
            return Err(invalid(
                "notifier.concurrency",
                "and notifier.batch_size must be at least 1",
            ));
        }
        if n.lease <= n.request_timeout {
            // A lease shorter than a call would let a second worker send while the first still waits.
            return Err(invalid(
                "notifier.lease_secs",
                "must exceed notifier.request_timeout_secs",
            ));
        }
        if !(0.0..=1.0).contains(&n.breaker_failure_rate) || !(0.0..=1.0).contains(&self.alerts.success_rate_below) {
            return Err(invalid(
                "notifier.breaker_failure_rate",
                "and alerts.success_rate_below must be between 0 and 1",
            ));
        }
        if !self.alerts.webhook_url.is_empty() && url::Url::parse(&self.alerts.webhook_url).is_err() {
            return Err(invalid("alerts.webhook_url", "is not a URL"));
        }
        if self.wechat.mode == WechatMode::Sandbox
            && !self.wechat.sandbox_allow_public
            && !self.server.host_is_loopback()
        {
            // The simulator hands out WeChat logins for any openid: never where real payers are.
            return Err(invalid(
                "wechat.sandbox_allow_public",
                format!(
                    "is false, so wechat.mode = \"sandbox\" serves on a loopback server.host only (not {:?}); \
                     set wechat.mode = \"live\" for real payers",
                    self.server.host
                ),
            ));
        }
        let w = &self.wechat;
        if w.inbox_lease <= w.inbox_handle_timeout {
            // A lease shorter than the handling would let a second worker take an event still in hand.
            return Err(invalid(
                "wechat.inbox_lease_secs",
                "must exceed wechat.inbox_handle_timeout_secs",
            ));
        }
        if w.inbox_handle_timeout.is_zero() || w.inbox_poll_interval.is_zero() {
            return Err(invalid(
                "wechat.inbox_handle_timeout_secs",
                "and wechat.inbox_poll_interval_ms must be at least 1",
            ));
        }
        if w.inbox_retry_schedule.is_empty() {
            return Err(invalid(
                "wechat.inbox_retry_schedule",
                "must be a comma-separated list of durations like 5s,1m,10m",
            ));
        }
        if w.inbox_retention.as_secs() < 60 {
            // WeChat retries within about 15 s: a handled event must outlive them.
            return Err(invalid("wechat.inbox_retention_secs", "must be at least 60"));
        }
        if url::Url::parse(&self.wechat.api_base_url).is_err() {
            return Err(invalid("wechat.api_base_url", "is not a URL"));
        }
        let mp = &self.miniprogram;
        if !(60..=3600).contains(&mp.access_token_ttl.as_secs()) {
            // Payer tokens are meant to be short-lived: refresh tokens carry the session.
            return Err(invalid("miniprogram.access_token_secs", "must be between 60 and 3600"));
        }
        if !(1..=365).contains(&(mp.refresh_token_ttl.as_secs() / 86_400)) {
            return Err(invalid("miniprogram.refresh_token_days", "must be between 1 and 365"));
        }
        if !(60..=30 * 86_400).contains(&self.wechat.card_link_ttl.as_secs()) {
            return Err(invalid("wechat.card_link_secs", "must be between 60 and 2592000"));
        }
        if self.wechat.menu_receipts_key.is_empty() || self.wechat.menu_receipts_key.len() > 128 {
            return Err(invalid("wechat.menu_receipts_key", "must be 1 to 128 bytes"));
        }
        if !(10..=900).contains(&mp.download_link_ttl.as_secs()) {
            return Err(invalid("miniprogram.download_link_secs", "must be between 10 and 900"));
        }
        if mp.privacy_notice_version.trim().is_empty() {
            return Err(invalid("miniprogram.privacy_notice_version", "must not be empty"));
        }
        if mp.possession_per_payer_per_min == 0 || mp.possession_per_ip_per_min == 0 {
            return Err(invalid(
                "miniprogram.possession_per_payer_per_min",
                "and miniprogram.possession_per_ip_per_min must be at least 1",
            ));
        }
        if mp.session_per_ip_per_min == 0 || mp.session_per_app_per_min == 0 {
            return Err(invalid(
                "miniprogram.session_per_ip_per_min",
                "and miniprogram.session_per_app_per_min must be at least 1",
            ));
        }
        if !(1..=100).contains(&mp.page_size_max) {
            return Err(invalid("miniprogram.page_size_max", "must be between 1 and 100"));
        }
        if self.store_kind() == StoreKind::Postgres && self.security.master_keys.expose_secret().is_empty() {
            return Err(invalid(
                "security.master_keys",
                "is required with PostgreSQL: every process must share it (generate one with `piaojia keygen`)",
            ));
        }
        for (i, agency) in self.agencies.iter().enumerate() {
            if agency.code.trim().is_empty() || agency.name.trim().is_empty() {
                return Err(invalid(format!("agencies[{i}]"), "needs a code and a name"));
            }
            for (j, app) in agency.issuer_apps.iter().enumerate() {
                if app.secret.expose_secret().len() < 32 {
                    return Err(invalid(
                        format!("agencies[{i}].issuer_apps[{j}].secret"),
                        "must be at least 32 characters",
                    ));
                }
            }
        }
        for (i, r) in self.reimbursers.iter().enumerate() {
            if r.secret.expose_secret().len() < 32 {
                return Err(invalid(
                    format!("reimbursers[{i}].secret"),
                    "must be at least 32 characters",
                ));
            }
        }
        Ok(())
    }

    fn store_kind_of(&self, url: &str) -> Option<StoreKind> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(StoreKind::Postgres)
        } else if url.is_empty() || url.starts_with("sqlite:") {
            Some(StoreKind::Sqlite)
        } else {
            None
        }
    }

    pub fn store_kind(&self) -> StoreKind {
        self.store
    }

    /// The database URL to connect to: the configured one, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        let url = self.database.url.expose_secret();
        if url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("piaojia.db").display())
        } else {
            url.to_owned()
        }
    }

    pub fn redis_url(&self) -> Option<&str> {
        Some(self.redis.url.expose_secret()).filter(|u| !u.is_empty())
    }

    pub fn files_dir(&self) -> PathBuf {
        if self.files.local_dir.is_empty() {
            self.data_dir.join("files")
        } else {
            PathBuf::from(&self.files.local_dir)
        }
    }

    /// The keyring: from settings, or in embedded mode from `<data_dir>/keys.toml`,
    /// generated on first use with owner-only permissions.
    pub fn keyring(&self) -> Result<Keyring, SettingsError> {
        let configured = self.security.master_keys.expose_secret();
        let active = Some(self.security.active_key_id.as_str()).filter(|s| !s.is_empty());
        if !configured.is_empty() {
            let blind = self.security.blind_index_key.expose_secret();
            if blind.is_empty() {
                return Err(invalid(
                    "security.blind_index_key",
                    "is required when security.master_keys is set",
                ));
            }
            return Keyring::from_config(configured, active, blind).map_err(|source| SettingsError::Keys {
                key: "security.master_keys",
                source,
            });
        }
        let path = self.data_dir.join("keys.toml");
        let file = EmbeddedKeys::load_or_create(&path)?;
        Keyring::from_config(&file.master_keys, active, &file.blind_index_key).map_err(|e| SettingsError::KeyFile {
            path,
            problem: e.to_string(),
        })
    }
}

#[derive(Deserialize, serde::Serialize)]
struct EmbeddedKeys {
    master_keys: String,
    blind_index_key: String,
}

impl EmbeddedKeys {
    fn load_or_create(path: &Path) -> Result<Self, SettingsError> {
        let err = |problem: String| SettingsError::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return toml_from_str(&text).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let keys = EmbeddedKeys {
            master_keys: format!("k1:{}", pii::generate_key()),
            blind_index_key: pii::generate_key(),
        };
        let text = format!(
            "# Generated by piaojia for the embedded mode. Keep it secret and back it up:\n\
             # without it the personal data in the database cannot be read.\n\
             master_keys = \"{}\"\nblind_index_key = \"{}\"\n",
            keys.master_keys, keys.blind_index_key
        );
        write_private(path, text.as_bytes()).map_err(|e| err(e.to_string()))?;
        Ok(keys)
    }
}

fn toml_from_str(text: &str) -> Result<EmbeddedKeys, String> {
    Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|e| e.to_string())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // create_new: two processes starting at once must not overwrite each other's keys.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminder_quiet_hours_are_beijing_time() {
        let mut r = Settings::load_from(None, HashMap::new()).expect("defaults").reminders;
        let at = |h: u32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 12, 3)
                .and_then(|d| d.and_hms_opt(h, m, 0))
                .expect("a time")
                .and_utc()
        };
        // 21:00 to 08:00 Beijing is 13:00 to 00:00 UTC.
        assert!(!r.is_quiet(at(12, 59)), "20:59 Beijing");
        assert!(r.is_quiet(at(13, 0)), "21:00 Beijing");
        assert!(r.is_quiet(at(23, 59)), "07:59 Beijing");
        assert!(!r.is_quiet(at(0, 0)), "08:00 Beijing");
        (r.quiet_from_hour, r.quiet_until_hour) = (12, 14);
        assert!(
            r.is_quiet(at(4, 30)) && !r.is_quiet(at(6, 0)),
            "a window within one day"
        );
        (r.quiet_from_hour, r.quiet_until_hour) = (5, 5);
        assert!((0..24).all(|h| !r.is_quiet(at(h, 0))), "equal hours: never quiet");
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let s = Settings::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(s.store_kind(), StoreKind::Sqlite);
        assert_eq!(s.server.port, 8080);
        assert!(s.redis_url().is_none());
        assert!(s.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn env_layers_and_conventional_urls() {
        let s = Settings::load_from(
            None,
            env(&[
                ("PIAOJIA_SERVER__PORT", "9001"),
                ("DATABASE_URL", "postgres://u:pw@db/piaojia"),
                ("REDIS_URL", "redis://cache:6379"),
                (
                    "PIAOJIA_SECURITY__MASTER_KEYS",
                    "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                ),
            ]),
        )
        .expect("loads");
        assert_eq!(s.server.port, 9001);
        let s2 = Settings::load_from(
            None,
            env(&[
                ("PIAOJIA_APP_SECRET", "x"),
                ("PIAOJIA_TEST_DATABASE_URL", "postgres://x"),
            ]),
        )
        .expect("non-setting PIAOJIA_ variables are not settings");
        assert_eq!(s2.server.port, 8080);
        assert_eq!(s.store_kind(), StoreKind::Postgres);
        assert_eq!(s.redis_url(), Some("redis://cache:6379"));
        // Secrets never show in Debug output.
        assert!(!format!("{s:?}").contains("pw@db"));
    }

    #[test]
    fn file_layer_and_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[server]\nport = 7000\n").expect("write");
        let s = Settings::load_from(Some(&path), env(&[])).expect("loads");
        assert_eq!(s.server.port, 7000);

        let err = Settings::load_from(None, env(&[("PIAOJIA_SERVER__PORT", "notanumber")])).expect_err("bad port");
        assert!(err.to_string().contains("port"), "{err}");
        let err = Settings::load_from(None, env(&[("DATABASE_URL", "mysql://x")])).expect_err("bad scheme");
        assert!(err.to_string().contains("database.url"), "{err}");
        let err = Settings::load_from(None, env(&[("DATABASE_URL", "postgres://x/y")])).expect_err("no keys");
        assert!(err.to_string().contains("security.master_keys"), "{err}");
        let err = Settings::load_from(None, env(&[("PIAOJIA_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, lb")]))
            .expect_err("bad proxy");
        assert!(err.to_string().contains("server.trusted_proxies"), "{err}");
        let s = Settings::load_from(
            None,
            env(&[("PIAOJIA_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1")]),
        )
        .expect("proxies load");
        let proxies = &s.server.trusted_proxies;
        assert_eq!(proxies.len(), 3);
        assert!(proxies[1].contains(&"192.168.1.7".parse::<std::net::IpAddr>().expect("ip")));
        assert!(!proxies[1].contains(&"192.168.1.8".parse::<std::net::IpAddr>().expect("ip")));
        std::fs::write(&path, "[server]\nprot = 7000\n").expect("write");
        let err = Settings::load_from(Some(&path), env(&[])).expect_err("typo");
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn the_sandbox_serves_on_loopback_only_unless_allowed() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            assert!(
                Settings::load_from(None, env(&[("PIAOJIA_SERVER__HOST", host)])).is_ok(),
                "{host}"
            );
        }
        for host in ["0.0.0.0", "::", "10.1.2.3", "piaojia.example"] {
            let err = Settings::load_from(None, env(&[("PIAOJIA_SERVER__HOST", host)])).expect_err("public sandbox");
            assert!(err.to_string().contains("wechat.sandbox_allow_public"), "{err}");
        }
        let allowed = env(&[
            ("PIAOJIA_SERVER__HOST", "0.0.0.0"),
            ("PIAOJIA_WECHAT__SANDBOX_ALLOW_PUBLIC", "true"),
        ]);
        assert!(Settings::load_from(None, allowed).is_ok());
        let live = env(&[("PIAOJIA_SERVER__HOST", "0.0.0.0"), ("PIAOJIA_WECHAT__MODE", "live")]);
        assert!(Settings::load_from(None, live).is_ok());
    }

    #[test]
    fn operator_token_and_listeners_are_checked_at_start() {
        let err = Settings::load_from(None, env(&[("PIAOJIA_OPS__TOKEN", "short-token")])).expect_err("short token");
        assert!(err.to_string().contains("ops.token"), "{err}");
        assert!(err.to_string().contains("32 characters"), "{err}");
        assert!(
            !err.to_string().contains("short-token"),
            "the token is never printed: {err}"
        );
        let s = Settings::load_from(None, env(&[("PIAOJIA_OPS__TOKEN", &"t".repeat(32))])).expect("32 characters");
        assert_eq!(s.ops.token.expose_secret().len(), 32);
        // Off unless set: an empty token turns the operator API off.
        assert!(Settings::load_from(None, env(&[("PIAOJIA_OPS__TOKEN", "")])).is_ok());

        let s = Settings::load_from(None, env(&[])).expect("defaults");
        assert_eq!(
            s.server.metrics_address(),
            Some("127.0.0.1:9464".parse().expect("addr")),
            "metrics on loopback by default"
        );
        let s = Settings::load_from(None, env(&[("PIAOJIA_SERVER__METRICS_ADDRESS", "")])).expect("off");
        assert_eq!(s.server.metrics_address(), None);
        let err = Settings::load_from(None, env(&[("PIAOJIA_SERVER__METRICS_ADDRESS", "metrics:9464")]))
            .expect_err("not an address");
        assert!(err.to_string().contains("server.metrics_address"), "{err}");
        let err =
            Settings::load_from(None, env(&[("PIAOJIA_SERVER__JSON_BODY_LIMIT_BYTES", "100")])).expect_err("too small");
        assert!(err.to_string().contains("server.json_body_limit_bytes"), "{err}");
        let s = Settings::load_from(None, env(&[("PIAOJIA_SERVER__BODY_LIMIT_BYTES", "4096")])).expect("loads");
        assert_eq!(s.server.json_body_limit(), 4096, "never above the issuers' limit");
    }

    #[test]
    fn embedded_keys_are_generated_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_str().expect("utf-8 path");
        let s = Settings::load_from(None, env(&[("PIAOJIA_DATA_DIR", data)])).expect("loads");
        let a = s.keyring().expect("generated");
        let sealed = a.seal(b"x", "t");
        let b = s.keyring().expect("reloaded");
        assert_eq!(b.open(&sealed, "t").expect("same key"), b"x");
    }
}
