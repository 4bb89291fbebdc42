//! What every request handler shares.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use piaojia_core::pii::Keyring;
use piaojia_core::settings::Settings;
use piaojia_store::{Agency, AppKind, Store, StoreError};
use redis::aio::ConnectionManager;
use secrecy::SecretString;

use crate::nonces::NonceRegistry;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub nonces: NonceRegistry,
    pub apps: Arc<AppDirectory>,
    /// What issuers push and reverse.
    pub intake: crate::issuer::intake::Intake,
    pub redis: Option<ConnectionManager>,
    pub metrics: PrometheusHandle,
    /// Tells the notifier (here or in other processes) that work is due.
    pub wake: piaojia_notifier::Wake,
    pub tracker: Arc<piaojia_notifier::tracker::Tracker>,
    /// Raises and resolves operators' alerts (the intake, the card package, the notifier).
    pub alerter: Arc<piaojia_notifier::alerts::Alerter>,
    pub wechat: Arc<piaojia_wechat::client::WechatClient>,
    /// The built-in WeChat simulator (sandbox mode only).
    pub sandbox: Option<crate::Sandbox>,
    /// What the mini-program routes share.
    pub wallet: Arc<piaojia_miniprogram_api::WalletState>,
    /// Wrong operator tokens per client address.
    pub ops_limits: piaojia_web::rate_limit::RateLimits,
    /// Signs and checks the "收入微信卡包" links.
    pub card_links: Arc<crate::card_package::CardLinks>,
    /// Receipt files and links for the notifier's card channel.
    pub card_support: Arc<dyn piaojia_notifier::channels::card::CardSupport>,
    /// Where payers' browsers and WeChat reach us: `server.public_url`, else this
    /// process's own address (the embedded default).
    pub base_url: String,
    /// What the official account's pages share.
    pub pages: PagesState,
    /// The message server's inbox: this process's claimer and wake-up.
    pub inbox: crate::inbox::Inbox,
}

/// The official account's pages: limits of paper-QR checks per client address.
pub struct PagesState {
    pub paper_limits: piaojia_web::rate_limit::RateLimits,
}

/// `server.public_url` without a trailing slash, else `http://{host}:{port}`
/// (a wildcard host as loopback).
pub fn base_url(settings: &Settings, port: u16) -> String {
    let public = settings.server.public_url.trim().trim_end_matches('/');
    if !public.is_empty() {
        return public.to_owned();
    }
    let host = settings.server.host.trim();
    let host = match host {
        "0.0.0.0" | "::" | "[::]" | "" => "127.0.0.1",
        h => h,
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// An app as authentication needs it: secrets opened, agency joined.
#[derive(Clone)]
pub struct AuthApp {
    pub app_id: String,
    pub kind: AppKind,
    pub enabled: bool,
    pub agency: Agency,
    pub callback_url: Option<String>,
    pub secrets: Vec<SecretString>,
}

/// Looks apps up for authentication, caching each for `security.app_cache_secs`
/// so a busy issuer costs no database round trip per request.
pub struct AppDirectory {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    cache: Option<moka::future::Cache<String, Option<Arc<AuthApp>>>>,
    /// Per agency; `Uuid::nil()` holds the platform's channels.
    channels: Option<moka::future::Cache<uuid::Uuid, Arc<Vec<piaojia_store::Channel>>>>,
    /// Reimbursers' profiles with their accepted agencies' ids, by app id.
    reimbursers: Option<moka::future::Cache<String, Option<Arc<ReimburserProfile>>>>,
}

/// A reimburser as its requests need it: the profile and the ids of the
/// agencies whose receipts it accepts (codes not known yet are left out).
#[derive(Debug, Clone)]
pub struct ReimburserProfile {
    pub profile: piaojia_store::Reimburser,
    pub accepted_agency_ids: Vec<uuid::Uuid>,
}

impl AppDirectory {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build()
        });
        let channels = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build()
        });
        let reimbursers = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build()
        });
        Self {
            store,
            keyring,
            cache,
            channels,
            reimbursers,
        }
    }

    /// A reimburser's profile (cached like apps: a change applies within
    /// `security.app_cache_secs`).
    pub async fn reimburser(&self, app_id: &str) -> Result<Option<Arc<ReimburserProfile>>, StoreError> {
        let store = self.store.clone();
        let id = app_id.to_owned();
        let load = async move {
            let Some(profile) = store.reimburser(&id).await? else {
                return Ok(None);
            };
            let mut accepted_agency_ids = Vec::with_capacity(profile.accepted_agencies.len());
            for code in &profile.accepted_agencies {
                if let Some(agency) = store.agency_by_code(code).await? {
                    accepted_agency_ids.push(agency.id);
                }
            }
            Ok(Some(Arc::new(ReimburserProfile {
                profile,
                accepted_agency_ids,
            })))
        };
        match &self.reimbursers {
            None => load.await,
            Some(cache) => cache
                .try_get_with_by_ref(app_id, load)
                .await
                .map_err(|e: Arc<StoreError>| StoreError::Corrupt(e.to_string())),
        }
    }

    /// The agency's WeChat channels (cached like apps).
    pub async fn channels(&self, agency_id: uuid::Uuid) -> Result<Arc<Vec<piaojia_store::Channel>>, StoreError> {
        self.cached_channels(agency_id).await
    }

    /// The platform's channels: the shared wallet mini-program (cached like apps).
    pub async fn platform_channels(&self) -> Result<Arc<Vec<piaojia_store::Channel>>, StoreError> {
        self.cached_channels(uuid::Uuid::nil()).await
    }

    async fn cached_channels(&self, key: uuid::Uuid) -> Result<Arc<Vec<piaojia_store::Channel>>, StoreError> {
        let load = |store: Arc<dyn Store>| async move {
            if key.is_nil() {
                store.platform_channels().await.map(Arc::new)
            } else {
                store.channels_for_agency(key).await.map(Arc::new)
            }
        };
        match &self.channels {
            None => load(self.store.clone()).await,
            Some(cache) => cache
                .try_get_with(key, load(self.store.clone()))
                .await
                .map_err(|e: Arc<StoreError>| StoreError::Corrupt(e.to_string())),
        }
    }

    pub async fn get(&self, app_id: &str) -> Result<Option<Arc<AuthApp>>, StoreError> {
        match &self.cache {
            None => self.load(app_id).await,
            Some(cache) => cache
                .try_get_with_by_ref(app_id, self.load(app_id))
                .await
                .map_err(|e: Arc<StoreError>| StoreError::Corrupt(e.to_string())),
        }
    }

    async fn load(&self, app_id: &str) -> Result<Option<Arc<AuthApp>>, StoreError> {
        let Some(app) = self.store.app(app_id).await? else {
            return Ok(None);
        };
        let agency = self
            .store
            .agency(app.agency_id)
            .await?
            .ok_or(StoreError::NotFound(piaojia_store::Entity::Agency))?;
        let purpose = piaojia_core::pii::purpose::app_secret(&app.app_id);
        let secrets = app
            .secrets
            .iter()
            .map(|s| {
                self.keyring
                    .open(&s.sealed, &purpose)
                    .map_err(|e| StoreError::Corrupt(format!("secret of app {}: {e}", app.app_id)))
                    .and_then(|b| String::from_utf8(b).map_err(|_| StoreError::Corrupt("secret is not UTF-8".into())))
                    .map(SecretString::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Arc::new(AuthApp {
            app_id: app.app_id,
            kind: app.kind,
            enabled: app.enabled,
            agency,
            callback_url: app.callback_url,
            secrets,
        })))
    }
}
