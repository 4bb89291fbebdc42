//! The receipt-wallet mini-program API (财政电子票夹): what payers do from the
//! platform's shared wallet or an agency's own mini-program.
//!
//! - `session`: `wx.login` code → our short-lived access JWT and a rotating refresh token
//! - `profile`: registration (name, ID, phone, privacy consent), masked view, reminders, account deletion
//! - `subscriptions`: the payer's subscribe-message choices (credits the notifier spends)
//! - `receipts`: the wallet: filtered, paginated list, detail, add by possession, remove, tags and notes
//! - `files`: short-lived signed download links, streamed with Range support
//! - `claims`: claims to reimbursers (报销申请): reimbursers of a receipt, submit, status, withdraw
//!
//! Every route is under `/v1/mp`; a payer is an extractor ([`Payer`]), so a handler's
//! signature says it serves payers, and the mini-program's scope (the platform: all
//! agencies; an agency's own: that agency) bounds everything a payer can reach.

pub mod apps;
pub mod claiming;
pub mod limits;
pub mod payer;
pub mod possession;
pub mod routes;
pub mod tokens;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use piaojia_core::pii::Keyring;
use piaojia_core::settings::MiniProgramSettings;
use piaojia_store::Store;
use piaojia_wechat::WechatClient;

pub use payer::Payer;
pub use routes::ApiDoc;

/// The settings the mini-program API reads: its own section and the few of the
/// server's and Redis's it needs.
#[derive(Debug, Clone)]
pub struct WalletConfig {
    pub miniprogram: MiniProgramSettings,
    /// Externally visible base URL (download links).
    pub public_url: String,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub redis_key_prefix: String,
    /// How long a mini-program's channels may be cached.
    pub app_cache: Duration,
}

/// Tells the notifier that deliveries wait (the gateway's `Wake`), so a claim's
/// webhook leaves at once rather than at the next poll.
pub type WakeFn = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// What the mini-program routes share. The gateway builds it next to its own state.
pub struct WalletState {
    pub settings: WalletConfig,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub wechat: Arc<WechatClient>,
    /// Receipt files (PDF/OFD), as the intake stored them.
    pub files: Arc<dyn object_store::ObjectStore>,
    pub tokens: tokens::TokenKeys,
    pub apps: apps::MiniPrograms,
    pub limits: limits::PossessionLimits,
    /// Sign-ins per client address and per mini-program.
    pub session_limits: limits::SessionLimits,
    pub wake: Option<WakeFn>,
}

impl WalletState {
    pub fn new(
        settings: WalletConfig,
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        wechat: Arc<WechatClient>,
        files: Arc<dyn object_store::ObjectStore>,
        redis: Option<&redis::aio::ConnectionManager>,
    ) -> Self {
        let mp = &settings.miniprogram;
        let (per_payer, per_ip) = (mp.possession_per_payer_per_min, mp.possession_per_ip_per_min);
        Self {
            tokens: tokens::TokenKeys::new(&keyring),
            apps: apps::MiniPrograms::new(store.clone(), settings.app_cache),
            limits: match redis {
                Some(conn) => {
                    limits::PossessionLimits::shared(per_payer, per_ip, conn.clone(), &settings.redis_key_prefix)
                }
                None => limits::PossessionLimits::new(per_payer, per_ip),
            },
            session_limits: limits::SessionLimits::new(
                mp.session_per_ip_per_min,
                mp.session_per_app_per_min,
                redis,
                &settings.redis_key_prefix,
            ),
            settings,
            store,
            keyring,
            wechat,
            files,
            wake: None,
        }
    }
}

/// Mounts the mini-program routes (the caller registers `web::Data<WalletState>`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::configure(cfg);
}
