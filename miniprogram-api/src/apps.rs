//! The mini-programs payers sign in through: the platform's shared wallet (a
//! `wallet_subscribe` channel of no agency: every agency's receipts) or an agency's
//! own mini-program (its `wechat_subscribe` channel: that agency's receipts only;
//! several agencies may share one app).

use std::sync::Arc;
use std::time::Duration;

use piaojia_core::pii::Keyring;
use piaojia_store::{Channel, Store, StoreError};
use piaojia_wechat::AppCredentials;
use uuid::Uuid;

/// One mini-program as payers meet it.
#[derive(Debug, Clone)]
pub struct MiniProgram {
    pub app_id: String,
    /// The agencies whose receipts it shows; `None` for the platform wallet (all).
    pub scope: Option<Vec<Uuid>>,
    /// Its subscribe templates (template id, long-term) that payers consent to.
    pub templates: Vec<(String, bool)>,
    secret_sealed: String,
}

impl MiniProgram {
    fn from_channels(app_id: &str, channels: &[Channel]) -> Option<Self> {
        let mine: Vec<&Channel> = channels.iter().filter(|c| c.enabled && c.kind.is_subscribe()).collect();
        let first = mine.first()?;
        let scope = if mine.iter().any(|c| c.kind.is_platform()) {
            None
        } else {
            let mut agencies: Vec<Uuid> = mine.iter().filter_map(|c| c.agency_id).collect();
            agencies.sort_unstable();
            agencies.dedup();
            Some(agencies)
        };
        let mut templates: Vec<(String, bool)> = mine.iter().map(|c| (c.template_id.clone(), c.long_term)).collect();
        templates.sort();
        templates.dedup();
        Some(Self {
            app_id: app_id.to_owned(),
            scope,
            templates,
            secret_sealed: first.secret_sealed.clone(),
        })
    }

    /// May this mini-program show a receipt of `agency_id`?
    pub fn covers(&self, agency_id: Uuid) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(&agency_id))
    }

    pub fn scope(&self) -> Option<&[Uuid]> {
        self.scope.as_deref()
    }

    pub fn credentials(&self, keyring: &Keyring) -> Result<AppCredentials, StoreError> {
        let secret = keyring
            .open(
                &self.secret_sealed,
                &piaojia_core::pii::purpose::wechat_app(&self.app_id),
            )
            .map_err(|e| StoreError::Corrupt(format!("secret of mini-program {}: {e}", self.app_id)))?;
        let secret =
            String::from_utf8(secret).map_err(|_| StoreError::Corrupt("mini-program secret is not UTF-8".into()))?;
        Ok(AppCredentials::new(self.app_id.clone(), secret))
    }
}

/// Looks mini-programs up by appid, caching each for `security.app_cache_secs`
/// (disabling a channel takes effect within it).
pub struct MiniPrograms {
    store: Arc<dyn Store>,
    cache: Option<moka::future::Cache<String, Option<Arc<MiniProgram>>>>,
}

impl MiniPrograms {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(ttl)
                .build()
        });
        Self { store, cache }
    }

    pub async fn get(&self, app_id: &str) -> Result<Option<Arc<MiniProgram>>, StoreError> {
        let load = async {
            let channels = self.store.channel_by_wechat_app(app_id).await?;
            Ok(MiniProgram::from_channels(app_id, &channels).map(Arc::new))
        };
        match &self.cache {
            None => load.await,
            Some(cache) => cache
                .try_get_with_by_ref(app_id, load)
                .await
                .map_err(|e: Arc<StoreError>| StoreError::Corrupt(e.to_string())),
        }
    }
}
