//! Building the application from settings: a testable library with a thin `main`.
//! `Application::build` binds the listener and reports the real port, so tests
//! start the app on port 0.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use piaojia_core::settings::Settings;
use piaojia_store::{ConnectOptions, Store};
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::Sandbox;
use crate::error::handlers;
use crate::files::FileStore;
use crate::nonces::NonceRegistry;
use crate::state::{AppDirectory, AppState};
use crate::{issuer, message_server, operator, pages, provisioning, service, telemetry};

/// The store named by the settings, migrated when `database.migrate_on_start`.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if settings.database.url_is_embedded() {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data_dir {}", settings.data_dir.display()))?;
    }
    let mut options = ConnectOptions::new(settings.database_url(), settings.database.max_connections);
    options.acquire_timeout = settings.database.acquire_timeout;
    let store = piaojia_store::connect(&options)
        .await
        .context("connecting to the database")?;
    if settings.database.migrate_on_start {
        store.migrate().await.context("applying migrations")?;
    }
    Ok(store)
}

pub async fn open_redis(settings: &Settings) -> anyhow::Result<Option<redis::aio::ConnectionManager>> {
    let Some(url) = settings.redis_url() else {
        return Ok(None);
    };
    let client = redis::Client::open(url).context("parsing redis.url")?;
    let conn = client.get_connection_manager().await.context("connecting to Redis")?;
    Ok(Some(conn))
}

/// The WeChat client: WeChat's servers in live mode; in sandbox mode the built-in
/// simulator served by this same process at `/sandbox/wechat`.
fn wechat_client(
    settings: &Settings,
    redis: Option<&redis::aio::ConnectionManager>,
    own_port: u16,
) -> anyhow::Result<(Arc<piaojia_wechat::client::WechatClient>, Option<Sandbox>)> {
    use piaojia_core::settings::WechatMode;
    use piaojia_wechat::client::{TokenCache, WechatClient};
    let (base, sandbox) = match settings.wechat.mode {
        WechatMode::Live => (settings.wechat.api_base_url.clone(), None),
        #[cfg(feature = "sandbox")]
        WechatMode::Sandbox => {
            let (sim, base) = crate::sandbox::start(own_port);
            (base, Some(sim))
        }
        #[cfg(not(feature = "sandbox"))]
        WechatMode::Sandbox => {
            let _ = own_port;
            anyhow::bail!(
                "wechat.mode = \"sandbox\", but this build has no WeChat simulator (built without the \
                 `sandbox` feature): set wechat.mode = \"live\""
            );
        }
    };
    let cache = match redis {
        Some(conn) => TokenCache::Redis {
            conn: conn.clone(),
            prefix: settings.redis.key_prefix.clone(),
        },
        None => TokenCache::Memory,
    };
    let mut client = WechatClient::new(&base, cache)?.with_timeout(settings.notifier.request_timeout);
    if let Some(rate) = std::num::NonZeroU32::new(settings.notifier.wechat_rate_per_sec) {
        client = client.with_rate_limit(rate);
    }
    Ok((Arc::new(client), sandbox))
}

/// Everything the request handlers share, connected and ready.
pub async fn build_state(settings: Settings, own_port: u16) -> anyhow::Result<AppState> {
    // reqwest is built without a default TLS provider (no aws-lc): ring it is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keyring = Arc::new(settings.keyring()?);
    let store = open_store(&settings).await?;
    provisioning::apply_declared(store.as_ref(), &keyring, &settings.agencies)
        .await
        .context("applying [[agencies]] from the settings")?;
    provisioning::apply_declared_reimbursers(store.as_ref(), &keyring, &settings.reimbursers)
        .await
        .context("applying [[reimbursers]] from the settings")?;
    let redis = open_redis(&settings).await?;
    let nonce_ttl = settings.security.nonce_ttl;
    let nonces = match &redis {
        Some(conn) => NonceRegistry::redis(conn.clone(), &settings.redis.key_prefix, nonce_ttl),
        None => NonceRegistry::in_memory(nonce_ttl),
    };
    let files = FileStore::from_settings(&settings)?;
    let apps = Arc::new(AppDirectory::new(
        store.clone(),
        keyring.clone(),
        settings.security.app_cache,
    ));
    let wake = match (&redis, settings.redis_url()) {
        (Some(conn), Some(url)) => {
            piaojia_notifier::Wake::redis(conn.clone(), redis::Client::open(url)?, &settings.redis.key_prefix)
        }
        _ => piaojia_notifier::Wake::local(),
    };
    let (wechat, sandbox) = wechat_client(&settings, redis.as_ref(), own_port)?;
    #[cfg(feature = "sandbox")]
    if let Some(sim) = &sandbox {
        crate::sandbox::spawn_sync(sim.clone(), store.clone(), keyring.clone(), own_port);
    }
    let ops_limits = piaojia_web::rate_limit::RateLimits::with_redis(
        &[(crate::auth::TOKEN_FAILURES, settings.ops.token_failures_per_ip_per_min)],
        redis.as_ref(),
        format!("{}ops_token:", settings.redis.key_prefix),
    );
    let pages = crate::state::PagesState {
        paper_limits: piaojia_web::rate_limit::RateLimits::with_redis(
            &[(
                crate::pages::routes::PAPER_LIMIT,
                settings.pages.paper_qr_per_ip_per_min,
            )],
            redis.as_ref(),
            format!("{}pages:", settings.redis.key_prefix),
        ),
    };
    let base_url = crate::state::base_url(&settings, own_port);
    let settings = Arc::new(settings);
    let mut wallet = piaojia_miniprogram_api::WalletState::new(
        piaojia_miniprogram_api::WalletConfig {
            miniprogram: settings.miniprogram.clone(),
            public_url: settings.server.public_url.clone(),
            trusted_proxies: settings.server.trusted_proxies.clone(),
            redis_key_prefix: settings.redis.key_prefix.clone(),
            app_cache: settings.security.app_cache,
        },
        store.clone(),
        keyring.clone(),
        wechat.clone(),
        files.object_store(),
        redis.as_ref(),
    );
    let claim_wake = wake.clone();
    wallet.wake = Some(Arc::new(move || {
        let wake = claim_wake.clone();
        Box::pin(async move { wake.notify().await })
    }));
    let wallet = Arc::new(wallet);
    let card_links = Arc::new(crate::card_package::CardLinks::new(
        &keyring,
        &base_url,
        settings.wechat.card_link_ttl,
    ));
    let card_support: Arc<dyn piaojia_notifier::channels::card::CardSupport> =
        Arc::new(crate::card_package::GatewayCardSupport {
            store: store.clone(),
            files: files.clone(),
            links: card_links.clone(),
        });
    let alerter = Arc::new(piaojia_notifier::alerts::Alerter::new(
        store.clone(),
        settings.alerts.clone(),
    ));
    let intake = crate::issuer::intake::Intake::new(
        store.clone(),
        keyring.clone(),
        files,
        apps.clone(),
        wake.clone(),
        alerter.clone(),
    );
    Ok(AppState {
        settings,
        store,
        keyring,
        nonces,
        apps,
        intake,
        redis,
        metrics: telemetry::metrics_handle(),
        alerter,
        wake,
        tracker: piaojia_notifier::tracker::Tracker::new(format!("gw-{}", uuid::Uuid::now_v7().simple())),
        wechat,
        sandbox,
        wallet,
        ops_limits,
        base_url,
        pages,
        card_links,
        card_support,
        inbox: crate::inbox::Inbox::default(),
    })
}

/// Which roles a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API, with the notifier in-process when `notifier.enabled`.
    Gateway,
    /// Only the delivery workers, with health and metrics endpoints.
    Notifier,
}

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on `server.metrics_address`, apart from the public port.
    metrics: Option<(u16, Server)>,
    notifier: Option<(piaojia_notifier::Notifier, CancellationToken)>,
    /// Stops the message server's inbox worker with the server; its task ends
    /// once the events it holds are settled.
    inbox: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    inbox_handle_timeout: std::time::Duration,
    sandbox: Option<Sandbox>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_role(settings, Role::Gateway).await
    }

    pub async fn build_role(settings: Settings, role: Role) -> anyhow::Result<Self> {
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        let metrics_listener = match settings.server.metrics_address() {
            Some(addr) => Some(TcpListener::bind(addr).with_context(|| {
                format!("binding server.metrics_address {addr} (set another address, or \"\" to serve no metrics)")
            })?),
            None => None,
        };
        let state = build_state(settings, port).await?;
        let run_notifier = role == Role::Notifier || state.settings.notifier.enabled;
        let notifier = if run_notifier {
            let notifier = piaojia_notifier::Notifier::new(piaojia_notifier::NotifierDeps {
                config: piaojia_notifier::NotifierConfig {
                    notifier: state.settings.notifier.clone(),
                    alerts: state.settings.alerts.clone(),
                    app_cache: state.settings.security.app_cache,
                    pages_base_url: state.base_url.clone(),
                },
                store: state.store.clone(),
                keyring: state.keyring.clone(),
                wechat: state.wechat.clone(),
                wake: state.wake.clone(),
                tracker: state.tracker.clone(),
                card_support: Some(state.card_support.clone()),
                alerter: Some(state.alerter.clone()),
            })?;
            let token = CancellationToken::new();
            tokio::spawn({
                let (n, t) = (notifier.clone(), token.clone());
                async move { n.run(t).await }
            });
            Some((notifier, token))
        } else {
            None
        };
        if role == Role::Gateway {
            let r = &state.settings.reimbursement;
            crate::reimburser::expiry::spawn(
                state.store.clone(),
                state.wake.clone(),
                r.lock_ttl,
                r.expiry_check_every,
            );
            if state.settings.reminders.enabled {
                crate::reminders::spawn(
                    state.store.clone(),
                    state.wake.clone(),
                    state.settings.reminders.clone(),
                );
            }
        }
        let sandbox = state.sandbox.clone();
        let metrics = match metrics_listener {
            Some(l) => Some((l.local_addr()?.port(), serve_metrics(l, &state)?)),
            None => None,
        };
        let inbox_handle_timeout = state.settings.wechat.inbox_handle_timeout;
        let state = web::Data::new(state);
        let inbox = (role == Role::Gateway && state.settings.wechat.inbox_worker).then(|| {
            let token = CancellationToken::new();
            let task = crate::inbox::spawn(state.clone().into_inner(), token.clone());
            (token, task)
        });
        let server = serve(listener, state, role)?;
        Ok(Self {
            port,
            server,
            metrics,
            notifier,
            inbox,
            inbox_handle_timeout,
            sandbox,
        })
    }

    /// The port `/metrics` is served on (`server.metrics_address`), if any.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// The built-in WeChat simulator (sandbox mode).
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The in-process notifier, when this process runs one.
    pub fn notifier(&self) -> Option<&piaojia_notifier::Notifier> {
        self.notifier.as_ref().map(|(n, _)| n)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (tests, signal handlers).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Runs until SIGTERM/SIGINT; in-flight requests get `server.shutdown_timeout_secs`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics.map(|(_, server)| {
            let handle = server.handle();
            (handle, tokio::spawn(server))
        });
        let result = self.server.await;
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            let _ = task.await;
        }
        if let Some((_, token)) = &self.notifier {
            token.cancel();
        }
        if let Some((token, task)) = self.inbox {
            // Claim nothing more, and wait for the events in hand to be settled
            // (each handling is bounded by the handle timeout), so none stays
            // leased until its lease runs out. A margin for settling them.
            token.cancel();
            let bound = self.inbox_handle_timeout + std::time::Duration::from_secs(5);
            if tokio::time::timeout(bound, task).await.is_err() {
                tracing::warn!("the inbox worker did not settle its events in time; their leases will run out");
            }
        }
        result
    }
}

/// Security headers for every response; the docs page's Swagger UI needs inline styles.
fn security_headers(settings: &Settings) -> piaojia_web::security_headers::SecurityHeaders {
    piaojia_web::security_headers::SecurityHeaders::new(settings.server.public_url_is_https())
        .page_policy("/docs/", service::docs::CSP)
}

/// The metrics listener: `/metrics` only, for Prometheus on a private address.
fn serve_metrics(listener: TcpListener, state: &AppState) -> anyhow::Result<Server> {
    let handle = state.metrics.clone();
    let settings = state.settings.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(handle.clone()))
            .wrap(security_headers(&settings))
            .configure(service::health::configure_metrics)
            .default_service(web::to(handlers::not_found))
    })
    .workers(1)
    .listen(listener)?
    .shutdown_timeout(1)
    .disable_signals()
    .run();
    Ok(server)
}

fn serve(listener: TcpListener, data: web::Data<AppState>, role: Role) -> anyhow::Result<Server> {
    let state = &data;
    let settings = state.settings.clone();
    let body_limit = settings.server.body_limit_bytes;
    let body_limits = piaojia_web::body_limit::BodyLimits {
        issuer_push: body_limit,
        wechat_events: piaojia_wechat::event::MAX_EVENT_BYTES,
        sandbox: body_limit,
        default: settings.server.json_body_limit(),
    };
    let headers_settings = settings.clone();
    #[cfg(feature = "sandbox")]
    let sandbox = state.sandbox.clone();
    let wallet = web::Data::from(state.wallet.clone());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(wallet.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .error_handler(handlers::json),
            )
            .app_data(web::PathConfig::default().error_handler(handlers::path))
            .app_data(web::QueryConfig::default().error_handler(handlers::query))
            .app_data(web::PayloadConfig::default().limit(body_limit))
            // Innermost: bodies bounded before any handler reads them (and counted
            // by `observe` when refused); outermost: headers on every response.
            .wrap(body_limits)
            .wrap(from_fn(telemetry::observe))
            .wrap(TracingLogger::<piaojia_web::logging::RouteSpan>::new())
            .wrap(security_headers(&headers_settings))
            .configure(service::health::configure)
            .configure(|cfg| {
                if role == Role::Gateway {
                    issuer::configure(cfg);
                    crate::reimburser::configure(cfg);
                    piaojia_miniprogram_api::configure(cfg);
                    operator::configure(cfg);
                    message_server::configure(cfg);
                    pages::configure(cfg);
                    crate::card_package::configure(cfg);
                    service::docs::configure(cfg);
                }
                #[cfg(feature = "sandbox")]
                if let Some(sim) = &sandbox {
                    crate::sandbox::mount(cfg, sim);
                }
            })
            .default_service(web::to(pages::not_found))
    })
    .listen(listener)?
    .shutdown_timeout(settings.server.shutdown_timeout.as_secs());
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server.run())
}
