//! Tenants and credentials: agencies and their apps, created from the command line
//! (`piaojia agency …`, `piaojia app …`) or declared in the settings file.
//! Secrets are generated with a CSPRNG, shown once, and stored sealed.

use piaojia_core::parties::ClaimField;
use piaojia_core::pii::purpose;
use piaojia_core::pii::{self, Keyring};
use piaojia_core::settings::{AgencyProvision, ReimburserProvision};
use piaojia_store::ChannelKind;
use piaojia_store::{
    Agency, App, AppKind, NewAgency, NewApp, NewAppSecret, NewReimburser, ReimburserKind, Store, StoreError,
};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    Exists(&'static str),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict("agency_code") => ProvisionError::Exists("agency"),
            StoreError::Conflict(_) => ProvisionError::Exists("app"),
            StoreError::NotFound(_) => ProvisionError::NotFound("app"),
            other => ProvisionError::Store(other),
        }
    }
}

type Result<T> = std::result::Result<T, ProvisionError>;

/// What the command line prints about an app; never a stored secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppView {
    pub app_id: String,
    pub agency_code: String,
    pub kind: AppKind,
    pub name: String,
    pub enabled: bool,
    pub callback_url: Option<String>,
    pub active_secret_ids: Vec<Uuid>,
    /// Present only right after a secret was generated: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The webhook signing secret for Standard Webhooks libraries
    /// (`whsec_<base64>`), shown once with `secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

fn view(app: App, agency_code: &str, secret: Option<String>) -> AppView {
    AppView {
        app_id: app.app_id,
        agency_code: agency_code.to_owned(),
        kind: app.kind,
        name: app.name,
        enabled: app.enabled,
        callback_url: app.callback_url,
        active_secret_ids: app.secrets.iter().map(|s| s.id).collect(),
        webhook_secret: secret.as_deref().map(piaojia_core::signing::standard_webhook_secret),
        secret,
    }
}

fn check_agency(code: &str, name: &str, hosts: &[String]) -> Result<()> {
    if code.is_empty() || code.len() > 32 || !code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        return Err(ProvisionError::Invalid(
            "agency code must be 1-32 characters [0-9A-Z]".into(),
        ));
    }
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(ProvisionError::Invalid("agency name must be 1-100 characters".into()));
    }
    for host in hosts {
        if url::Host::parse(host).is_err() || host.contains('/') || host.contains(':') && !host.starts_with('[') {
            return Err(ProvisionError::Invalid(format!(
                "file host {host:?} is not a host name"
            )));
        }
    }
    Ok(())
}

fn check_app(app_id: &str, callback_url: Option<&str>) -> Result<()> {
    if app_id.is_empty()
        || app_id.len() > 64
        || !app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ProvisionError::Invalid(
            "appId must be 1-64 characters [A-Za-z0-9_-]".into(),
        ));
    }
    if let Some(url) = callback_url {
        let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
        if !ok {
            return Err(ProvisionError::Invalid("callback URL must be an http(s) URL".into()));
        }
    }
    Ok(())
}

pub async fn create_agency(store: &dyn Store, code: &str, name: &str, file_hosts: Vec<String>) -> Result<Agency> {
    check_agency(code, name, &file_hosts)?;
    let hosts = file_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    Ok(store
        .create_agency(NewAgency {
            code: code.to_owned(),
            name: name.trim().to_owned(),
            file_hosts: hosts,
        })
        .await?)
}

async fn agency_by_code(store: &dyn Store, code: &str) -> Result<Agency> {
    store
        .agency_by_code(code)
        .await?
        .ok_or(ProvisionError::NotFound("agency"))
}

fn sealed_secret(keyring: &Keyring, app_id: &str, secret: &str) -> NewAppSecret {
    NewAppSecret {
        id: Uuid::now_v7(),
        sealed: keyring.seal(secret.as_bytes(), &purpose::app_secret(app_id)),
    }
}

/// Creates an issuer app and returns it with its first secret (shown once).
pub async fn create_app(
    store: &dyn Store,
    keyring: &Keyring,
    agency_code: &str,
    kind: AppKind,
    app_id: &str,
    name: &str,
    callback_url: Option<String>,
) -> Result<AppView> {
    check_app(app_id, callback_url.as_deref())?;
    let agency = agency_by_code(store, agency_code).await?;
    let secret = pii::generate_secret();
    let app = store
        .create_app(NewApp {
            app_id: app_id.to_owned(),
            agency_id: agency.id,
            kind,
            name: if name.is_empty() {
                app_id.to_owned()
            } else {
                name.to_owned()
            },
            callback_url,
            secret: sealed_secret(keyring, app_id, &secret),
        })
        .await?;
    Ok(view(app, &agency.code, Some(secret)))
}

async fn agency_code_of(store: &dyn Store, app: &App) -> Result<String> {
    Ok(store.agency(app.agency_id).await?.map(|a| a.code).unwrap_or_default())
}

/// Generates a new secret. With `keep_previous` the current one stays valid until
/// [`retire_old_secrets`] (zero-downtime rotation).
pub async fn rotate_secret(store: &dyn Store, keyring: &Keyring, app_id: &str, keep_previous: bool) -> Result<AppView> {
    let secret = pii::generate_secret();
    let app = store
        .add_app_secret(app_id, sealed_secret(keyring, app_id, &secret), keep_previous)
        .await?;
    let code = agency_code_of(store, &app).await?;
    Ok(view(app, &code, Some(secret)))
}

pub async fn retire_old_secrets(store: &dyn Store, app_id: &str) -> Result<AppView> {
    let app = store.retire_old_app_secrets(app_id).await?;
    let code = agency_code_of(store, &app).await?;
    Ok(view(app, &code, None))
}

pub async fn set_enabled(store: &dyn Store, app_id: &str, enabled: bool) -> Result<AppView> {
    let app = store.set_app_enabled(app_id, enabled).await?;
    let code = agency_code_of(store, &app).await?;
    Ok(view(app, &code, None))
}

pub async fn set_callback(store: &dyn Store, app_id: &str, callback_url: Option<String>) -> Result<AppView> {
    check_app(app_id, callback_url.as_deref())?;
    let app = store.set_app_callback(app_id, callback_url).await?;
    let code = agency_code_of(store, &app).await?;
    Ok(view(app, &code, None))
}

pub async fn list_apps(store: &dyn Store, agency_code: Option<&str>) -> Result<Vec<AppView>> {
    let agencies = store.list_agencies().await?;
    let filter = match agency_code {
        Some(code) => Some(
            agencies
                .iter()
                .find(|a| a.code == code)
                .ok_or(ProvisionError::NotFound("agency"))?
                .id,
        ),
        None => None,
    };
    let apps = store.list_apps(filter).await?;
    Ok(apps
        .into_iter()
        .map(|app| {
            let code = agencies
                .iter()
                .find(|a| a.id == app.agency_id)
                .map(|a| a.code.clone())
                .unwrap_or_default();
            view(app, &code, None)
        })
        .collect())
}

/// Applies `[[agencies]]` from the settings: idempotent, so it runs at every start.
pub async fn apply_declared(store: &dyn Store, keyring: &Keyring, declared: &[AgencyProvision]) -> Result<()> {
    for decl in declared {
        check_agency(&decl.code, &decl.name, &decl.file_hosts)?;
        let agency = store
            .upsert_agency(NewAgency {
                code: decl.code.clone(),
                name: decl.name.clone(),
                file_hosts: decl.file_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            })
            .await?;
        for app_decl in &decl.issuer_apps {
            sync_declared_app(
                store,
                keyring,
                &agency,
                AppKind::Issuer,
                DeclaredApp {
                    app_id: &app_decl.app_id,
                    name: &app_decl.name,
                    secret: app_decl.secret.expose_secret(),
                    previous_secret: app_decl.previous_secret.as_ref().map(|s| s.expose_secret()),
                    callback_url: app_decl.callback_url.clone(),
                    enabled: app_decl.enabled,
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// An app as the settings declare it.
struct DeclaredApp<'a> {
    app_id: &'a str,
    name: &'a str,
    secret: &'a str,
    previous_secret: Option<&'a str>,
    callback_url: Option<String>,
    enabled: bool,
}

/// Creates a declared app or brings it to what is declared (secrets, state, callback).
async fn sync_declared_app(
    store: &dyn Store,
    keyring: &Keyring,
    agency: &Agency,
    kind: AppKind,
    decl: DeclaredApp<'_>,
) -> Result<App> {
    check_app(decl.app_id, decl.callback_url.as_deref())?;
    let wanted: Vec<&str> = std::iter::once(decl.secret).chain(decl.previous_secret).collect();
    let app_id = decl.app_id;
    let app = match store.app(app_id).await? {
        None => {
            let first = wanted.last().copied().unwrap_or_default();
            store
                .create_app(NewApp {
                    app_id: app_id.to_owned(),
                    agency_id: agency.id,
                    kind,
                    name: if decl.name.is_empty() {
                        app_id.to_owned()
                    } else {
                        decl.name.to_owned()
                    },
                    callback_url: decl.callback_url.clone(),
                    secret: sealed_secret(keyring, app_id, first),
                })
                .await?
        }
        Some(app) if app.agency_id != agency.id => {
            return Err(ProvisionError::Invalid(format!(
                "app {app_id} belongs to another agency"
            )));
        }
        Some(app) if app.kind != kind => {
            return Err(ProvisionError::Invalid(format!("app {app_id} is of another kind")));
        }
        Some(app) => app,
    };
    let purpose = purpose::app_secret(app_id);
    let current: Vec<String> = app
        .secrets
        .iter()
        .filter_map(|s| keyring.open(&s.sealed, &purpose).ok())
        .filter_map(|b| String::from_utf8(b).ok())
        .collect();
    // Newest first, as stored: replace the set only when it differs.
    if current.iter().map(String::as_str).ne(wanted.iter().copied()) {
        let mut ordered = wanted.clone();
        ordered.reverse();
        for (i, secret) in ordered.iter().enumerate() {
            store
                .add_app_secret(app_id, sealed_secret(keyring, app_id, secret), i > 0)
                .await?;
        }
    }
    store.set_app_enabled(app_id, decl.enabled).await?;
    Ok(store.set_app_callback(app_id, decl.callback_url.clone()).await?)
}

/// What the command line prints about a reimburser; never a stored secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReimburserView {
    #[serde(flatten)]
    pub app: AppView,
    pub reimburser_kind: ReimburserKind,
    pub accepted_agencies: Vec<String>,
    pub personal_fields: Vec<String>,
    pub claim_within_days: Option<u32>,
    pub claim_fields: Vec<ClaimField>,
}

/// Personal fields a reimburser may be allowed to receive.
pub const PERSONAL_FIELDS: &[&str] = &["name", "id_card_no", "phone", "email", "medical_card_no"];

/// What registers a reimburser.
#[derive(Debug, Clone)]
pub struct ReimburserSpec {
    pub app_id: String,
    pub kind: String,
    pub name: String,
    /// The organisation's code: it is kept as an agency record of its own, which
    /// owns the reimburser's app (it issues nothing).
    pub org_code: String,
    pub webhook_url: Option<String>,
    pub accepted_agencies: Vec<String>,
    pub personal_fields: Vec<String>,
    /// It reimburses a receipt only this many days after its issue (None: no limit).
    pub claim_within_days: Option<u32>,
    /// The claim's own fields it asks payers for (empty: it names none).
    pub claim_fields: Vec<ClaimField>,
}

fn check_reimburser(spec: &ReimburserSpec) -> Result<ReimburserKind> {
    let kind = ReimburserKind::parse(&spec.kind).ok_or_else(|| {
        ProvisionError::Invalid("reimburser kind must be medical_insurance, commercial_insurer or employer".into())
    })?;
    check_agency(&spec.org_code, &spec.name, &[])?;
    check_app(&spec.app_id, spec.webhook_url.as_deref())?;
    if let Some(f) = spec
        .personal_fields
        .iter()
        .find(|f| !PERSONAL_FIELDS.contains(&f.as_str()))
    {
        return Err(ProvisionError::Invalid(format!(
            "personal field {f:?} is not one of {}",
            PERSONAL_FIELDS.join(", ")
        )));
    }
    if spec.claim_within_days == Some(0) {
        return Err(ProvisionError::Invalid(
            "claim_within_days must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    ClaimField::check_all(&spec.claim_fields).map_err(ProvisionError::Invalid)?;
    Ok(kind)
}

async fn save_profile(
    store: &dyn Store,
    spec: &ReimburserSpec,
    kind: ReimburserKind,
) -> Result<piaojia_store::Reimburser> {
    for code in &spec.accepted_agencies {
        agency_by_code(store, code).await?;
    }
    Ok(store
        .upsert_reimburser(NewReimburser {
            app_id: spec.app_id.clone(),
            kind,
            name: spec.name.trim().to_owned(),
            accepted_agencies: spec.accepted_agencies.clone(),
            personal_fields: spec.personal_fields.clone(),
            claim_within_days: spec.claim_within_days,
            claim_fields: spec.claim_fields.clone(),
        })
        .await?)
}

fn reimburser_view(app: AppView, profile: piaojia_store::Reimburser) -> ReimburserView {
    ReimburserView {
        app,
        reimburser_kind: profile.kind,
        accepted_agencies: profile.accepted_agencies,
        personal_fields: profile.personal_fields,
        claim_within_days: profile.claim_within_days,
        claim_fields: profile.claim_fields,
    }
}

/// Registers a reimburser: its organisation, its signed app (first secret shown
/// once) and its profile. Rotation and enabling work as for any app.
pub async fn create_reimburser(store: &dyn Store, keyring: &Keyring, spec: ReimburserSpec) -> Result<ReimburserView> {
    let kind = check_reimburser(&spec)?;
    if store.app(&spec.app_id).await?.is_some() {
        return Err(ProvisionError::Exists("app"));
    }
    for code in &spec.accepted_agencies {
        agency_by_code(store, code).await?;
    }
    let org = match store.agency_by_code(&spec.org_code).await? {
        Some(a) => a,
        None => create_agency(store, &spec.org_code, &spec.name, Vec::new()).await?,
    };
    let app = create_app(
        store,
        keyring,
        &org.code,
        AppKind::Reimburser,
        &spec.app_id,
        &spec.name,
        spec.webhook_url.clone(),
    )
    .await?;
    let profile = save_profile(store, &spec, kind).await?;
    Ok(reimburser_view(app, profile))
}

/// Changes a reimburser's profile (kind, name, accepted agencies, personal fields, webhook).
pub async fn update_reimburser(store: &dyn Store, spec: ReimburserSpec) -> Result<ReimburserView> {
    let kind = check_reimburser(&spec)?;
    let app = store.app(&spec.app_id).await?.ok_or(ProvisionError::NotFound("app"))?;
    if app.kind != AppKind::Reimburser {
        return Err(ProvisionError::Invalid(format!(
            "app {} is not a reimburser",
            spec.app_id
        )));
    }
    let app = store.set_app_callback(&spec.app_id, spec.webhook_url.clone()).await?;
    let code = agency_code_of(store, &app).await?;
    let profile = save_profile(store, &spec, kind).await?;
    Ok(reimburser_view(view(app, &code, None), profile))
}

pub async fn list_reimbursers(store: &dyn Store) -> Result<Vec<ReimburserView>> {
    let mut out = Vec::new();
    for profile in store.list_reimbursers().await? {
        let Some(app) = store.app(&profile.app_id).await? else {
            continue;
        };
        let code = agency_code_of(store, &app).await?;
        out.push(reimburser_view(view(app, &code, None), profile));
    }
    Ok(out)
}

/// Applies `[[reimbursers]]` from the settings: idempotent, so it runs at every start.
/// Accepted agencies must be known by then (declare them in `[[agencies]]`).
pub async fn apply_declared_reimbursers(
    store: &dyn Store,
    keyring: &Keyring,
    declared: &[ReimburserProvision],
) -> Result<()> {
    for decl in declared {
        let spec = ReimburserSpec {
            app_id: decl.app_id.clone(),
            kind: decl.kind.clone(),
            name: decl.name.clone(),
            org_code: decl.org_code.clone(),
            webhook_url: decl.webhook_url.clone(),
            accepted_agencies: decl.accepted_agencies.clone(),
            personal_fields: decl.personal_fields.clone(),
            claim_within_days: decl.claim_within_days,
            claim_fields: decl.claim_fields.clone(),
        };
        let kind = check_reimburser(&spec)?;
        let org = match store.agency_by_code(&spec.org_code).await? {
            Some(a) => a,
            None => create_agency(store, &spec.org_code, &spec.name, Vec::new()).await?,
        };
        sync_declared_app(
            store,
            keyring,
            &org,
            AppKind::Reimburser,
            DeclaredApp {
                app_id: &decl.app_id,
                name: &decl.name,
                secret: decl.secret.expose_secret(),
                previous_secret: decl.previous_secret.as_ref().map(|s| s.expose_secret()),
                callback_url: decl.webhook_url.clone(),
                enabled: decl.enabled,
            },
        )
        .await?;
        save_profile(store, &spec, kind).await?;
    }
    Ok(())
}

/// What the command line prints about a WeChat channel; never its secrets.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    pub id: Uuid,
    /// `None`: the platform's channel.
    pub agency_code: Option<String>,
    pub kind: String,
    pub wechat_app_id: String,
    pub template_id: String,
    pub fields: serde_json::Value,
    pub page: Option<String>,
    pub message_server: bool,
    pub enabled: bool,
    pub long_term: bool,
}

/// A WeChat channel of an agency (or of the platform) as configured.
pub struct ChannelSpec {
    /// `None` for the platform's shared wallet mini-program (`wallet_subscribe`).
    pub agency_code: Option<String>,
    /// `wechat_template`, `wechat_subscribe` or, without an agency, `wallet_subscribe`.
    pub kind: String,
    pub wechat_app_id: String,
    pub secret: String,
    pub template_id: String,
    /// Keyword → value template with `{agencyName}`, `{amount}`, `{billNo}`,
    /// `{billBatchCode}`, `{issuedAt}`, `{busType}`, `{status}`. Empty: a default.
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub page: Option<String>,
    pub message_token: Option<String>,
    pub encoding_aes_key: Option<String>,
    pub enabled: bool,
    /// A long-term subscribe template (medical accounts): one consent covers all messages.
    pub long_term: bool,
}

/// Creates or replaces the agency's (or the platform's) channel of that kind.
pub async fn set_channel(store: &dyn Store, keyring: &Keyring, spec: ChannelSpec) -> Result<ChannelView> {
    let kind = match (spec.agency_code.is_some(), ChannelKind::parse(&spec.kind)) {
        (true, Some(k @ (ChannelKind::WechatTemplate | ChannelKind::WechatSubscribe)))
        | (false, Some(k @ ChannelKind::WalletSubscribe)) => k,
        (true, _) => {
            return Err(ProvisionError::Invalid(
                "an agency's channel is wechat_template or wechat_subscribe".into(),
            ));
        }
        (false, _) => {
            return Err(ProvisionError::Invalid(
                "the platform's channel (no --agency) is wallet_subscribe".into(),
            ));
        }
    };
    if spec.long_term && kind == ChannelKind::WechatTemplate {
        return Err(ProvisionError::Invalid(
            "only subscribe templates can be long-term".into(),
        ));
    }
    let appid_ok = spec.wechat_app_id.len() <= 32
        && spec.wechat_app_id.starts_with("wx")
        && spec.wechat_app_id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !appid_ok {
        return Err(ProvisionError::Invalid(
            "the WeChat appid looks like wx followed by letters and digits".into(),
        ));
    }
    if spec.secret.is_empty() || spec.template_id.is_empty() || spec.template_id.len() > 128 {
        return Err(ProvisionError::Invalid(
            "a secret and a template id (at most 128 characters) are required".into(),
        ));
    }
    if spec.encoding_aes_key.as_ref().is_some_and(|k| k.len() != 43) {
        return Err(ProvisionError::Invalid("the EncodingAESKey has 43 characters".into()));
    }
    for (key, value) in &spec.fields {
        if !value.is_string() || key.is_empty() {
            return Err(ProvisionError::Invalid(format!(
                "field {key:?} must map to a text template"
            )));
        }
    }
    let agency = match &spec.agency_code {
        Some(code) => Some(agency_by_code(store, code).await?),
        None => None,
    };
    let purpose = purpose::wechat_app(&spec.wechat_app_id);
    let channel = store
        .upsert_channel(piaojia_store::NewChannel {
            agency_id: agency.as_ref().map(|a| a.id),
            kind,
            wechat_app_id: spec.wechat_app_id.clone(),
            secret_sealed: keyring.seal(spec.secret.as_bytes(), &purpose),
            template_id: spec.template_id,
            fields: serde_json::Value::Object(spec.fields),
            page: spec.page,
            message_token_sealed: spec.message_token.map(|t| keyring.seal(t.as_bytes(), &purpose)),
            encoding_aes_key_sealed: spec.encoding_aes_key.map(|k| keyring.seal(k.as_bytes(), &purpose)),
            enabled: spec.enabled,
            long_term: spec.long_term,
        })
        .await?;
    Ok(channel_view(channel, agency.as_ref().map(|a| a.code.as_str())))
}

fn channel_view(c: piaojia_store::Channel, agency_code: Option<&str>) -> ChannelView {
    ChannelView {
        id: c.id,
        agency_code: agency_code.map(str::to_owned),
        kind: c.kind.to_string(),
        wechat_app_id: c.wechat_app_id,
        template_id: c.template_id,
        fields: c.fields,
        page: c.page,
        message_server: c.message_token_sealed.is_some(),
        enabled: c.enabled,
        long_term: c.long_term,
    }
}

/// The agency's channels, or the platform's without an agency.
pub async fn list_channels(store: &dyn Store, agency_code: Option<&str>) -> Result<Vec<ChannelView>> {
    let Some(code) = agency_code else {
        return Ok(store
            .platform_channels()
            .await?
            .into_iter()
            .map(|c| channel_view(c, None))
            .collect());
    };
    let agency = agency_by_code(store, code).await?;
    Ok(store
        .channels_for_agency(agency.id)
        .await?
        .into_iter()
        .map(|c| channel_view(c, Some(&agency.code)))
        .collect())
}
