//! What the simulated WeChat knows: apps, token lifetimes and quotas.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    MiniProgram,
    OfficialAccount,
}

/// The app's message-server ("server URL") settings, where events are pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageServer {
    pub url: String,
    pub token: String,
    /// Set for secure mode (43 characters); `None` pushes plain XML.
    #[serde(default)]
    pub encoding_aes_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimApp {
    pub appid: String,
    pub secret: String,
    pub kind: AppKind,
    /// The account's `gh_` id, used as `ToUserName` in pushed events.
    pub original_id: String,
    #[serde(default)]
    pub message_server: Option<MessageServer>,
    /// Web authorisation (网页授权) domains: `redirect_uri` of `/connect/oauth2/authorize` must
    /// be on one of them (`host` or `host:port`). Empty accepts any, as a convenience.
    #[serde(default)]
    pub oauth_domains: Vec<String>,
    /// Display name on the simulated pages (default: the `gh_` id).
    #[serde(default)]
    pub name: Option<String>,
}

impl SimApp {
    pub fn new(appid: &str, secret: &str, kind: AppKind) -> Self {
        let digest = crate::secure::sha1_sorted(&[appid]);
        Self {
            appid: appid.to_owned(),
            secret: secret.to_owned(),
            kind,
            original_id: format!("gh_{}", &digest[..12]),
            message_server: None,
            oauth_domains: Vec::new(),
            name: None,
        }
    }

    pub fn mini_program(appid: &str, secret: &str) -> Self {
        Self::new(appid, secret, AppKind::MiniProgram)
    }

    pub fn official_account(appid: &str, secret: &str) -> Self {
        Self::new(appid, secret, AppKind::OfficialAccount)
    }

    pub fn with_message_server(mut self, server: MessageServer) -> Self {
        self.message_server = Some(server);
        self
    }

    pub fn with_original_id(mut self, gh_id: &str) -> Self {
        self.original_id = gh_id.to_owned();
        self
    }

    /// Adds a web authorisation domain (`example.com` or `example.com:8443`).
    pub fn with_oauth_domain(mut self, domain: &str) -> Self {
        self.oauth_domains.push(domain.to_owned());
        self
    }

    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// What the simulated pages call the account.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.original_id)
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub apps: Vec<SimApp>,
    /// access_token lifetime (WeChat: 7200 s).
    pub token_lifetime: Duration,
    /// stable_token normal mode hands out a new token when the current one has less than this left
    /// (WeChat: 5 minutes); the old one stays valid until it expires.
    pub stable_refresh_window: Duration,
    /// How long a classic `/cgi-bin/token` token survives its successor (WeChat: 5 minutes).
    pub classic_grace: Duration,
    /// Lifetime of wx.login, OAuth and phone codes (WeChat: 5 minutes).
    pub code_lifetime: Duration,
    pub force_refresh_per_day: u64,
    pub classic_token_per_day: u64,
    /// jscode2session calls per user per minute before 45011.
    pub login_per_user_per_minute: u64,
    /// Calls per app per day, by API path, before 45009.
    pub daily_quotas: BTreeMap<String, u64>,
    /// Delay before TEMPLATESENDJOBFINISH is pushed.
    pub template_event_delay: Duration,
    /// How long a push waits for the message server before trying again (WeChat: 5 s).
    pub push_timeout: Duration,
    /// Delivery attempts per event (WeChat: 3).
    pub push_attempts: u32,
    /// Seed of the PRNG behind error and timeout rates and jitter.
    pub seed: u64,
    /// Recorded calls, messages and pushes kept (oldest dropped first).
    pub record_limit: usize,
    /// Base URL of the simulator as browsers reach it (for `auth_url` and `pdf_url`);
    /// `None`: taken from each request's host and mount point.
    pub public_base_url: Option<String>,
    /// Lifetime of `getticket` tickets (WeChat: 7200 s).
    pub ticket_lifetime: Duration,
    /// Lifetime of a card-package `auth_url` (WeChat: 7200 s).
    pub invoice_auth_lifetime: Duration,
    /// How long an uploaded receipt PDF (`s_media_id`) stays usable (WeChat: 3 days).
    pub invoice_media_lifetime: Duration,
    /// Largest PDF `setpdf` takes before 72043.
    pub max_pdf_bytes: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        let daily_quotas = [
            (crate::paths::TEMPLATE_SEND, 100_000),
            (crate::paths::QRCODE_CREATE, 100_000),
            (crate::paths::STABLE_TOKEN, 500_000),
            (crate::paths::GET_TICKET, 100_000),
        ]
        .into_iter()
        .map(|(p, n)| (p.to_owned(), n))
        .collect();
        Self {
            apps: Vec::new(),
            token_lifetime: Duration::from_secs(7200),
            stable_refresh_window: Duration::from_secs(300),
            classic_grace: Duration::from_secs(300),
            code_lifetime: Duration::from_secs(300),
            force_refresh_per_day: 20,
            classic_token_per_day: 2000,
            login_per_user_per_minute: 100,
            daily_quotas,
            template_event_delay: Duration::from_millis(200),
            push_timeout: Duration::from_secs(5),
            push_attempts: 3,
            seed: 0x5EED,
            record_limit: 10_000,
            public_base_url: None,
            ticket_lifetime: Duration::from_secs(7200),
            invoice_auth_lifetime: Duration::from_secs(7200),
            invoice_media_lifetime: Duration::from_secs(3 * 86_400),
            max_pdf_bytes: 2 * 1024 * 1024,
        }
    }
}

impl SimConfig {
    pub fn with_app(mut self, app: SimApp) -> Self {
        self.apps.push(app);
        self
    }
}
