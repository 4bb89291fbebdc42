//! `spawn_app`: piaojia on a port of its own with a store of its own.
//!
//! - [`Mode::Embedded`]: a fresh SQLite file and in-process caches (the default mode).
//! - [`Mode::ScaleOut`]: a fresh PostgreSQL database and a Redis key prefix of its own
//!   (`PIAOJIA_TEST_DATABASE_URL`, `PIAOJIA_TEST_REDIS_URL`).
//!
//! Logs are quiet unless `TEST_LOG` is set.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use piaojia_core::pii::{self, Keyring};
use piaojia_core::settings::Settings;
use piaojia_core::signing;
use piaojia_gateway::provisioning;
use piaojia_gateway::startup::Application;
use piaojia_store::{AppKind, Store};
use serde_json::Value;
use tempfile::TempDir;

/// At least 32 characters, as `ops.token` must be.
pub const OPS_TOKEN: &str = "test-operator-token-0123456789abcdef";

/// Polls `check` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_named(secs, "condition", check).await
}

/// [`eventually`], saying `what` was awaited when it times out.
pub async fn eventually_named<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    ScaleOut,
}

pub use piaojia_store::testing::test_database_url;

pub fn test_redis_url() -> String {
    std::env::var("PIAOJIA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Creates an empty PostgreSQL database for one test and returns its URL (the
/// store's one fresh-database fixture; `scripts/services.sh` sweeps them).
pub async fn fresh_postgres_database() -> String {
    piaojia_store::testing::FreshDatabase::new(piaojia_store::Backend::Postgres)
        .await
        .expect("PostgreSQL is reachable (scripts/services.sh starts it)")
        .url
}

/// The environment a test app is configured through (the same layers as production).
#[derive(Clone)]
pub struct TestConfig {
    pub mode: Mode,
    pub env: HashMap<String, String>,
    /// Keeps the data directory alive for restarts.
    pub data_dir: Arc<TempDir>,
}

impl TestConfig {
    pub async fn new(mode: Mode) -> Self {
        let data_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut env: HashMap<String, String> = [
            ("PIAOJIA_SERVER__PORT", "0".to_owned()),
            ("PIAOJIA_SERVER__WORKERS", "2".to_owned()),
            ("PIAOJIA_SERVER__SHUTDOWN_TIMEOUT_SECS", "1".to_owned()),
            ("PIAOJIA_DATA_DIR", data_dir.path().display().to_string()),
            ("PIAOJIA_LOG__FORMAT", "pretty".to_owned()),
            (
                "PIAOJIA_LOG__FILTER",
                if std::env::var_os("TEST_LOG").is_some() {
                    "info"
                } else {
                    "off"
                }
                .to_owned(),
            ),
            // Tests change apps and expect the change at once.
            ("PIAOJIA_SECURITY__APP_CACHE_SECS", "0".to_owned()),
            ("PIAOJIA_DATABASE__MAX_CONNECTIONS", "5".to_owned()),
            // Fast delivery schedules so outcomes show within a test.
            ("PIAOJIA_NOTIFIER__POLL_INTERVAL_MS", "50".to_owned()),
            ("PIAOJIA_NOTIFIER__RETRY_SCHEDULE", "200ms,200ms".to_owned()),
            ("PIAOJIA_NOTIFIER__REQUEST_TIMEOUT_SECS", "2".to_owned()),
            ("PIAOJIA_NOTIFIER__LEASE_SECS", "4".to_owned()),
            ("PIAOJIA_NOTIFIER__BREAKER_OPEN_SECS", "1".to_owned()),
            ("PIAOJIA_NOTIFIER__BREAKER_WINDOW_SECS", "10".to_owned()),
            ("PIAOJIA_ALERTS__EVALUATE_EVERY_SECS", "3600".to_owned()),
            ("PIAOJIA_OPS__TOKEN", OPS_TOKEN.to_owned()),
            // Metrics on a loopback port of the app's own (TestApp::metrics_address).
            ("PIAOJIA_SERVER__METRICS_ADDRESS", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if mode == Mode::ScaleOut {
            env.insert("DATABASE_URL".into(), fresh_postgres_database().await);
            env.insert("REDIS_URL".into(), test_redis_url());
            env.insert(
                "PIAOJIA_REDIS__KEY_PREFIX".into(),
                format!("test:{}:", uuid::Uuid::new_v4().simple()),
            );
            env.insert(
                "PIAOJIA_SECURITY__MASTER_KEYS".into(),
                format!("k1:{}", pii::generate_key()),
            );
            env.insert("PIAOJIA_SECURITY__BLIND_INDEX_KEY".into(), pii::generate_key());
        }
        Self { mode, env, data_dir }
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    pub fn settings(&self) -> Settings {
        Settings::load_from(None, self.env.clone()).expect("test settings are valid")
    }

    pub async fn spawn(&self) -> TestApp {
        let settings = self.settings();
        piaojia_gateway::telemetry::init_tracing(&settings.log);
        let keyring = Arc::new(settings.keyring().expect("keyring"));
        let store = piaojia_gateway::startup::open_store(&settings)
            .await
            .expect("store opens");
        let app = Application::build(settings.clone()).await.expect("application builds");
        let port = app.port();
        let metrics_address = app.metrics_port().map(|p| format!("http://127.0.0.1:{p}"));
        let handle = app.handle();
        let sim = app.sandbox().cloned();
        let notifier = app.notifier().cloned();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            config: self.clone(),
            address: format!("http://127.0.0.1:{port}"),
            metrics_address,
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            store,
            keyring,
            handle,
            sim,
            notifier,
        }
    }
}

pub async fn spawn_app(mode: Mode) -> TestApp {
    TestConfig::new(mode).await.spawn().await
}

pub struct TestApp {
    pub config: TestConfig,
    pub address: String,
    /// Where `/metrics` is served (`server.metrics_address`), when it is.
    pub metrics_address: Option<String>,
    pub client: reqwest::Client,
    /// The app's own store, for set-up that has no public API yet and for
    /// reading what was persisted.
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub handle: ServerHandle,
    /// The app's built-in WeChat simulator (sandbox mode, the default).
    pub sim: Option<piaojia_wechat_sim::Simulator>,
    pub notifier: Option<piaojia_notifier::Notifier>,
}

/// An issuer's credentials as provisioning hands them out.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub agency_code: String,
    pub app_id: String,
    pub secret: String,
}

impl TestApp {
    /// Stops the server gracefully (as SIGTERM does).
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }

    pub async fn create_agency(&self, code: &str, file_hosts: &[&str]) {
        provisioning::create_agency(
            self.store.as_ref(),
            code,
            "示例市第一人民医院",
            file_hosts.iter().map(|h| (*h).to_owned()).collect(),
        )
        .await
        .expect("agency created");
    }

    pub async fn create_issuer(&self, agency_code: &str, app_id: &str, callback_url: Option<&str>) -> Issuer {
        let view = provisioning::create_app(
            self.store.as_ref(),
            &self.keyring,
            agency_code,
            AppKind::Issuer,
            app_id,
            "HIS",
            callback_url.map(str::to_owned),
        )
        .await
        .expect("app created");
        Issuer {
            agency_code: agency_code.to_owned(),
            app_id: view.app_id,
            secret: view.secret.expect("a new app has a secret"),
        }
    }

    /// A registered reimburser accepting these agencies' receipts; its credentials
    /// sign like an issuer's.
    pub async fn create_reimburser(&self, app_id: &str, accepted: &[&str]) -> Issuer {
        self.create_reimburser_with(app_id, accepted, None, &["name"]).await
    }

    /// A registered reimburser with a webhook endpoint and the personal fields it receives.
    pub async fn create_reimburser_with(
        &self,
        app_id: &str,
        accepted: &[&str],
        webhook_url: Option<&str>,
        personal_fields: &[&str],
    ) -> Issuer {
        self.create_reimburser_until(app_id, accepted, webhook_url, personal_fields, None)
            .await
    }

    /// A reimburser that pays receipts only `claim_within_days` after their issue.
    pub async fn create_reimburser_until(
        &self,
        app_id: &str,
        accepted: &[&str],
        webhook_url: Option<&str>,
        personal_fields: &[&str],
        claim_within_days: Option<u32>,
    ) -> Issuer {
        let mut spec = Self::reimburser_spec(app_id, accepted, webhook_url, personal_fields);
        spec.claim_within_days = claim_within_days;
        self.create_reimburser_from(spec).await
    }

    /// What registers a commercial insurer of these agencies, to adjust before
    /// [`Self::create_reimburser_from`].
    pub fn reimburser_spec(
        app_id: &str,
        accepted: &[&str],
        webhook_url: Option<&str>,
        personal_fields: &[&str],
    ) -> provisioning::ReimburserSpec {
        let org: String = app_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .take(29)
            .collect();
        provisioning::ReimburserSpec {
            app_id: app_id.to_owned(),
            kind: "commercial_insurer".to_owned(),
            name: format!("{app_id} 保险"),
            org_code: format!("ORG{org}"),
            webhook_url: webhook_url.map(str::to_owned),
            accepted_agencies: accepted.iter().map(|a| (*a).to_owned()).collect(),
            personal_fields: personal_fields.iter().map(|f| (*f).to_owned()).collect(),
            claim_within_days: None,
            claim_fields: Vec::new(),
        }
    }

    pub async fn create_reimburser_from(&self, spec: provisioning::ReimburserSpec) -> Issuer {
        let agency_code = spec.org_code.clone();
        let view = provisioning::create_reimburser(self.store.as_ref(), &self.keyring, spec)
            .await
            .expect("reimburser created");
        Issuer {
            agency_code,
            app_id: view.app.app_id,
            secret: view.app.secret.expect("a new app has a secret"),
        }
    }

    /// An agency with one issuer app.
    pub async fn issuer(&self) -> Issuer {
        self.create_agency("12110000400000001A", &[]).await;
        self.create_issuer("12110000400000001A", "hosp01-his", None).await
    }

    /// Sends a request signed now with a fresh nonce.
    pub async fn signed(&self, issuer: &Issuer, method: &str, path: &str, body: Option<&Value>) -> reqwest::Response {
        let body = body.map(|b| serde_json::to_vec(b).expect("json")).unwrap_or_default();
        self.signed_raw(
            issuer,
            method,
            path,
            body,
            chrono::Utc::now().timestamp(),
            &pii::random_alnum(24),
        )
        .await
    }

    /// Sends exactly these bytes with this timestamp and nonce.
    pub async fn signed_raw(
        &self,
        issuer: &Issuer,
        method: &str,
        path: &str,
        body: Vec<u8>,
        timestamp: i64,
        nonce: &str,
    ) -> reqwest::Response {
        let auth = signing::authorization(&issuer.app_id, &issuer.secret, method, path, timestamp, nonce, &body);
        let mut req = self
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{path}", self.address),
            )
            .header("authorization", auth);
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        req.send().await.expect("request sent")
    }

    pub async fn push(&self, issuer: &Issuer, receipt: &Value) -> reqwest::Response {
        self.signed(issuer, "POST", "/v1/receipts", Some(receipt)).await
    }

    /// An operator call.
    pub async fn ops(&self, method: &str, path: &str, body: Option<&Value>) -> reqwest::Response {
        let mut req = self
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{path}", self.address),
            )
            .bearer_auth(OPS_TOKEN);
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.expect("request sent")
    }

    /// Configures a WeChat channel for the agency and registers its app in the simulator.
    pub async fn wechat_channel(&self, agency_code: &str, kind: &str, appid: &str, template_id: &str) {
        let secret = format!("secret-of-{appid}");
        provisioning::set_channel(
            self.store.as_ref(),
            &self.keyring,
            provisioning::ChannelSpec {
                agency_code: Some(agency_code.to_owned()),
                kind: kind.to_owned(),
                wechat_app_id: appid.to_owned(),
                secret: secret.clone(),
                template_id: template_id.to_owned(),
                fields: serde_json::Map::new(),
                page: Some("pages/receipt/detail".to_owned()),
                message_token: None,
                encoding_aes_key: None,
                enabled: true,
                long_term: false,
            },
        )
        .await
        .expect("channel set");
        if let Some(sim) = &self.sim {
            let app_kind = if kind == "wechat_template" {
                piaojia_wechat_sim::AppKind::OfficialAccount
            } else {
                piaojia_wechat_sim::AppKind::MiniProgram
            };
            sim.add_app(piaojia_wechat_sim::SimApp::new(appid, &secret, app_kind));
        }
    }

    /// Configures the platform's shared wallet mini-program and registers it in the simulator.
    pub async fn platform_wallet(&self, appid: &str, template_id: &str, long_term: bool) {
        let secret = format!("secret-of-{appid}");
        provisioning::set_channel(
            self.store.as_ref(),
            &self.keyring,
            provisioning::ChannelSpec {
                agency_code: None,
                kind: "wallet_subscribe".to_owned(),
                wechat_app_id: appid.to_owned(),
                secret: secret.clone(),
                template_id: template_id.to_owned(),
                fields: serde_json::Map::new(),
                page: Some("pages/wallet/detail".to_owned()),
                message_token: None,
                encoding_aes_key: None,
                enabled: true,
                long_term,
            },
        )
        .await
        .expect("platform wallet set");
        if let Some(sim) = &self.sim {
            sim.add_app(piaojia_wechat_sim::SimApp::new(
                appid,
                &secret,
                piaojia_wechat_sim::AppKind::MiniProgram,
            ));
            if long_term {
                sim.grant_long_term(appid, template_id);
            }
        }
    }

    /// Signs a WeChat user in to a mini-program (wx.login through the simulator).
    pub async fn mp_login(&self, appid: &str, openid: &str, unionid: Option<&str>) -> Value {
        let sim = self.sim.as_ref().expect("sandbox simulator");
        let code = sim.issue_login_code(appid, openid, unionid);
        let resp = self
            .client
            .post(format!("{}/v1/mp/session", self.address))
            .json(&serde_json::json!({ "appId": appid, "code": code }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status().as_u16(), 200, "login");
        resp.json().await.expect("session JSON")
    }

    /// A mini-program call with a payer's access token.
    pub async fn mp(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> reqwest::Response {
        let mut req = self
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{path}", self.address),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// The Prometheus text of the app's metrics listener (`server.metrics_address`).
    pub async fn metrics(&self) -> String {
        let base = self.metrics_address.clone().expect("a metrics listener");
        let resp = self
            .client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics scraped");
        assert_eq!(resp.status().as_u16(), 200);
        resp.text().await.expect("metrics text")
    }
}

/// Reads a problem+json answer, checking its media type and status.
/// A problem's `errors` as (pointer, code) pairs, in its order.
pub fn field_codes(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap_or_default().to_owned(),
                e["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

pub async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json", "errors are problem+json");
    let body: Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"].as_u64(), Some(u64::from(status)));
    assert!(
        body["code"].is_string() && body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    body
}

/// Runs an async test body once per mode: `both_modes!(name, |mode| async move { … })`.
#[macro_export]
macro_rules! both_modes {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_sqlite() {
                ($body)($crate::harness::Mode::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn scaleout_postgres_redis() {
                ($body)($crate::harness::Mode::ScaleOut).await
            }
        }
    };
}

/// A TCP relay in front of a service (PostgreSQL, Redis) that a test can cut, as
/// an outage would: every open connection is dropped and new ones are refused.
pub struct TcpRelay {
    pub port: u16,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TcpRelay {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accepted = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().expect("relay lock").push(conn.abort_handle());
            }
        });
        tasks.lock().expect("relay lock").push(accept.abort_handle());
        Self { port, tasks }
    }

    /// The outage: the listener closes and every relayed connection is reset.
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("relay lock").drain(..) {
            task.abort();
        }
    }
}

/// What a [`receiver`] got: each request's headers and body.
pub type Captured = Arc<std::sync::Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// An outside receiver (issuer callback, operator robot) that records what it gets.
pub fn receiver() -> (String, Captured, actix_web::dev::ServerHandle) {
    let captured: Captured = Arc::default();
    let c = captured.clone();
    let server = actix_web::HttpServer::new(move || {
        let c = c.clone();
        actix_web::App::new().default_service(actix_web::web::to(
            move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                let c = c.clone();
                async move {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                        .collect();
                    c.lock().expect("lock").push((headers, body.to_vec()));
                    actix_web::HttpResponse::Ok().finish()
                }
            },
        ))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let url = format!("http://127.0.0.1:{}/hook", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, captured, handle)
}
