//! Building the application from settings: a testable library with a thin `main`.
//! `Application::build` binds the listener and reports the real port, so tests
//! start the app on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use piaojia_core::settings::Settings;
use piaojia_store::{ConnectOptions, Store};
use tracing_actix_web::TracingLogger;

use crate::error::handlers;
use crate::files::FileStore;
use crate::nonces::NonceRegistry;
use crate::state::{AppDirectory, AppState};
use crate::{provisioning, routes, telemetry};

/// The store named by the settings, migrated when `database.migrate_on_start`.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if settings.database.url_is_embedded() {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data_dir {}", settings.data_dir.display()))?;
    }
    let store = piaojia_store::connect(&ConnectOptions {
        url: settings.database_url(),
        max_connections: settings.database.max_connections,
    })
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

/// Everything the request handlers share, connected and ready.
pub async fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    // reqwest is built without a default TLS provider (no aws-lc): ring it is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keyring = Arc::new(settings.keyring()?);
    let store = open_store(&settings).await?;
    provisioning::apply_declared(store.as_ref(), &keyring, &settings.agencies)
        .await
        .context("applying [[agencies]] from the settings")?;
    let redis = open_redis(&settings).await?;
    let nonce_ttl = Duration::from_secs(settings.security.nonce_ttl_secs);
    let nonces = match &redis {
        Some(conn) => NonceRegistry::redis(conn.clone(), &settings.redis.key_prefix, nonce_ttl),
        None => NonceRegistry::in_memory(nonce_ttl),
    };
    let files = FileStore::from_settings(&settings)?;
    let apps = AppDirectory::new(
        store.clone(),
        keyring.clone(),
        Duration::from_secs(settings.security.app_cache_secs),
    );
    Ok(AppState {
        settings: Arc::new(settings),
        store,
        keyring,
        nonces,
        files,
        apps,
        redis,
        metrics: telemetry::metrics_handle(),
    })
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        let state = build_state(settings).await?;
        let server = serve(listener, state)?;
        Ok(Self { port, server })
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
        self.server.await
    }
}

fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<Server> {
    let settings = state.settings.clone();
    let body_limit = settings.server.body_limit_bytes;
    let data = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .error_handler(handlers::json),
            )
            .app_data(web::PathConfig::default().error_handler(handlers::path))
            .app_data(web::QueryConfig::default().error_handler(handlers::query))
            .app_data(web::PayloadConfig::default().limit(body_limit))
            .wrap(from_fn(telemetry::observe))
            .wrap(TracingLogger::default())
            .configure(routes::health::configure)
            .configure(routes::issuer::configure)
            .configure(routes::docs::configure)
            .default_service(web::to(handlers::not_found))
    })
    .listen(listener)?
    .shutdown_timeout(settings.server.shutdown_timeout_secs);
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server.run())
}
