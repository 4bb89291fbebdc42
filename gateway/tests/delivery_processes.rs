//! Delivery across real processes. The test serves a WeChat simulator itself and
//! runs `piaojia serve` and `piaojia notifier` as child processes pointed at it
//! (`wechat.mode = live`), provisioned through the CLI as an operator would:
//!
//! - `kill -9` of the process that is sending, then a restart: the receipt is
//!   delivered and the payer gets it once (the re-send carries the same
//!   `client_msg_id`, which WeChat answers with the first `msgid` without sending
//!   again);
//! - Redis killed, restarted empty and flushed while receipts flow: every
//!   accepted receipt is delivered, each once;
//! - WeChat slower than the request timeout: the send is retried, and no two sends
//!   of one delivery ever overlap although two notifier processes compete for it;
//! - `kill -9` of a gateway handling a message-server event: another gateway on
//!   the same PostgreSQL takes it after the lease and handles it once.
//!
//! PostgreSQL comes from `PIAOJIA_TEST_DATABASE_URL` and Redis from
//! `PIAOJIA_TEST_REDIS_URL`, as for the API suite; each test has a database, a
//! Redis key prefix (or a Redis server) and a data directory of its own, and its
//! children are killed when it ends, panics included.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use piaojia_core::{pii, signing};
use piaojia_tests::harness::{eventually_named, fresh_postgres_database, test_redis_url};
use piaojia_wechat_sim::{FaultScope, Faults, RecordedCall, SimApp, SimConfig, Simulator, paths};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_piaojia");
const AGENCY: &str = "12110000400000001A";
const ISSUER: &str = "hosp01-his";
const OA: &str = "wx0a1b2c3d4e5f6a7b";
const OA_SECRET: &str = "oa-secret-of-the-process-tests";
const TEMPLATE: &str = "TMPL-RECEIPT-ISSUED";
const BATCH: &str = "11060124";
const RECEIPT: &str = include_str!("../../openapi/examples/receipt.json");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process, SIGKILLed and reaped when dropped; its log is printed when
/// the test is failing.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Fails the test at once if the process has already exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // `Child::kill` is SIGKILL: no shutdown handler runs, as with `kill -9`.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (last lines of {}) ----", self.name, self.log.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A Redis server of the test's own, so it can be killed, restarted and flushed
/// without disturbing the tests that share the machine's Redis.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    starts: usize,
    server: Option<Proc>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            starts: 0,
            server: None,
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port, empty: nothing is persisted.
    async fn restart(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .current_dir(self.dir.path());
        self.server = Some(Proc::spawn(
            &format!("redis-{}", self.starts),
            &mut cmd,
            self.dir.path(),
        ));
        let url = self.url();
        eventually_named(20, "private Redis answers", || {
            let url = url.clone();
            async move {
                let mut conn = redis::Client::open(url)
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
    }

    fn kill(&mut self) {
        self.server = None;
    }

    async fn flush(&self) {
        let mut conn = redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("private Redis is up");
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Postgres,
    Sqlite,
}

/// An issuer's view of the gateway: signed pushes and reads.
#[derive(Clone)]
struct Issuer {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl Issuer {
    async fn send(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> reqwest::Result<reqwest::Response> {
        let auth = signing::authorization(
            ISSUER,
            &self.secret,
            method.as_str(),
            path,
            Utc::now().timestamp(),
            &pii::random_alnum(24),
            &body,
        );
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", auth);
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        req.send().await
    }

    /// Pushes receipt `n` for the payer `openid`; the HTTP status, 0 when the
    /// gateway could not be reached.
    async fn push(&self, n: u64, openid: &str) -> u16 {
        let mut receipt: Value = serde_json::from_str(RECEIPT).expect("example receipt");
        receipt["billNo"] = format!("{n:010}").into();
        receipt["busNo"] = format!("MZ{n:014}").into();
        receipt["openID"] = openid.into();
        let body = serde_json::to_vec(&receipt).expect("json");
        match self.send(reqwest::Method::POST, "/v1/receipts", body).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// The first delivery of receipt `n` (its only one here: no callback URL).
    async fn delivery(&self, n: u64) -> Option<Value> {
        let path = format!("/v1/receipts/{BATCH}/{n:010}");
        let resp = self.send(reqwest::Method::GET, &path, Vec::new()).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let receipt: Value = resp.json().await.ok()?;
        Some(receipt["deliveries"][0].clone())
    }

    async fn wait_delivered(&self, n: u64) -> Value {
        eventually_named(60, &format!("receipt {n} delivered"), || async move {
            self.delivery(n).await.filter(|d| d["status"] == "delivered")
        })
        .await
    }
}

/// piaojia processes around one store, talking to the test's WeChat simulator.
struct Fleet {
    sim: Simulator,
    sim_server: actix_web::dev::ServerHandle,
    settings: BTreeMap<String, String>,
    issuer: Issuer,
    gateway: Option<Proc>,
    notifiers: Vec<Proc>,
    spawned: usize,
    // Last: the children's logs must outlive them.
    dir: tempfile::TempDir,
}

impl Fleet {
    /// Provisions an agency, its issuer and its official-account channel through
    /// the CLI. `redis`: scale-out with that Redis (PostgreSQL only).
    async fn new(store: Store, redis: Option<String>, overrides: &[(&str, &str)]) -> Self {
        let sim = Simulator::new(SimConfig::default().with_app(SimApp::official_account(OA, OA_SECRET)));
        let (addr, sim_server) = sim.start().await.expect("simulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings: BTreeMap<String, String> = [
            ("PIAOJIA_DATA_DIR", dir.path().display().to_string()),
            ("PIAOJIA_LOG__FORMAT", "pretty".to_owned()),
            ("PIAOJIA_LOG__FILTER", "info".to_owned()),
            ("PIAOJIA_SERVER__WORKERS", "1".to_owned()),
            ("PIAOJIA_SERVER__SHUTDOWN_TIMEOUT_SECS", "1".to_owned()),
            // Several processes on one host: no metrics listener to collide on.
            ("PIAOJIA_SERVER__METRICS_ADDRESS", String::new()),
            ("PIAOJIA_DATABASE__MAX_CONNECTIONS", "4".to_owned()),
            ("PIAOJIA_DATABASE__MIGRATE_ON_START", "false".to_owned()),
            ("PIAOJIA_WECHAT__MODE", "live".to_owned()),
            ("PIAOJIA_WECHAT__API_BASE_URL", format!("http://{addr}")),
            ("PIAOJIA_NOTIFIER__POLL_INTERVAL_MS", "100".to_owned()),
            ("PIAOJIA_NOTIFIER__JITTER_PERCENT", "0".to_owned()),
            ("PIAOJIA_ALERTS__EVALUATE_EVERY_SECS", "3600".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if store == Store::Postgres {
            settings.insert("DATABASE_URL".into(), fresh_postgres_database().await);
            settings.insert(
                "PIAOJIA_SECURITY__MASTER_KEYS".into(),
                format!("k1:{}", pii::generate_key()),
            );
            settings.insert("PIAOJIA_SECURITY__BLIND_INDEX_KEY".into(), pii::generate_key());
        }
        if let Some(url) = redis {
            settings.insert("REDIS_URL".into(), url);
            settings.insert(
                "PIAOJIA_REDIS__KEY_PREFIX".into(),
                format!("proc:{}:", uuid::Uuid::new_v4().simple()),
            );
        }
        for (k, v) in overrides {
            settings.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut fleet = Self {
            sim,
            sim_server,
            settings,
            issuer: Issuer {
                http: reqwest::Client::builder().no_proxy().build().expect("client"),
                base: String::new(),
                secret: String::new(),
            },
            gateway: None,
            notifiers: Vec::new(),
            spawned: 0,
            dir,
        };
        fleet.cli(&["migrate"]);
        fleet.cli(&["agency", "create", "--code", AGENCY, "--name", "示例市第一人民医院"]);
        let app = fleet.cli(&["app", "create", "--agency", AGENCY, "--app-id", ISSUER]);
        fleet.issuer.secret = app["secret"].as_str().expect("the new app's secret").to_owned();
        let mut set = fleet.command(&[
            "channel",
            "set",
            "--agency",
            AGENCY,
            "--kind",
            "wechat_template",
            "--wechat-app-id",
            OA,
            "--template-id",
            TEMPLATE,
            "--field",
            "character_string3={billNo}",
        ]);
        let out = set
            .env("PIAOJIA_WECHAT_SECRET", OA_SECRET)
            .output()
            .expect("piaojia runs");
        assert!(
            out.status.success(),
            "channel set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fleet
    }

    /// `piaojia <args>` with this fleet's settings and nothing inherited that
    /// could change them.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.contains("__") && k.starts_with("PIAOJIA_")
                || [
                    "DATABASE_URL",
                    "REDIS_URL",
                    "PIAOJIA_CONFIG",
                    "PIAOJIA_DATA_DIR",
                    "RUST_LOG",
                ]
                .contains(&&*k)
            {
                cmd.env_remove(&*k);
            }
        }
        cmd.envs(&self.settings);
        cmd
    }

    fn cli(&self, args: &[&str]) -> Value {
        let out = self.command(args).output().expect("piaojia runs");
        assert!(
            out.status.success(),
            "piaojia {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    async fn spawn_role(&mut self, role: &str, extra: &[(&str, &str)]) -> (Proc, String) {
        self.spawned += 1;
        let port = free_port();
        let mut cmd = self.command(&[role]);
        cmd.env("PIAOJIA_SERVER__PORT", port.to_string())
            .envs(extra.iter().copied());
        let mut proc = Proc::spawn(&format!("{}-{role}", self.spawned), &mut cmd, self.dir.path());
        let base = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        loop {
            proc.assert_running();
            let ready = self.issuer.http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{role} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (proc, base)
    }

    /// (Re)starts the gateway, with the notifier in-process or not.
    async fn start_gateway(&mut self, with_notifier: bool) {
        self.gateway = None;
        let enabled = with_notifier.to_string();
        let (proc, base) = self
            .spawn_role("serve", &[("PIAOJIA_NOTIFIER__ENABLED", &enabled)])
            .await;
        self.gateway = Some(proc);
        self.issuer.base = base;
    }

    async fn start_notifier(&mut self) {
        let (proc, _) = self.spawn_role("notifier", &[]).await;
        self.notifiers.push(proc);
    }

    fn kill_gateway(&mut self) {
        self.gateway = None;
    }

    fn kill_notifiers(&mut self) {
        self.notifiers.clear();
    }

    fn sent_to(&self, openid: &str) -> Vec<piaojia_wechat_sim::SentTemplateMessage> {
        self.sim
            .sent_template_messages()
            .into_iter()
            .filter(|m| m.touser == openid)
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        drop(self.sim_server.stop(false));
    }
}

fn client_msg_id(call: &RecordedCall) -> Option<&str> {
    call.body.get("client_msg_id").and_then(Value::as_str)
}

/// When the simulator started serving a call (it records calls when they end).
fn started(call: &RecordedCall) -> DateTime<Utc> {
    call.at - TimeDelta::milliseconds(call.latency_ms as i64)
}

// ---- kill -9 mid-send ------------------------------------------------------------

/// PostgreSQL: the gateway runs alone and a `piaojia notifier` is killed.
/// SQLite: one `piaojia serve` with its in-process notifier is killed whole.
async fn killed_mid_send_then_restarted(store: Store) {
    let redis = (store == Store::Postgres).then(test_redis_url);
    let mut fleet = Fleet::new(
        store,
        redis,
        &[
            ("PIAOJIA_NOTIFIER__REQUEST_TIMEOUT_SECS", "5"),
            ("PIAOJIA_NOTIFIER__LEASE_SECS", "6"),
            ("PIAOJIA_NOTIFIER__RETRY_SCHEDULE", "1s,1s,1s"),
        ],
    )
    .await;
    let embedded = store == Store::Sqlite;
    fleet.start_gateway(embedded).await;
    if !embedded {
        fleet.start_notifier().await;
    }
    // WeChat takes the message at once but answers only a minute later, so the
    // sender is caught between WeChat sending and its own bookkeeping.
    fleet.sim.set_faults(
        FaultScope::Path(paths::TEMPLATE_SEND.into()),
        Faults::timeouts(1.0, 60_000),
    );
    let openid = piaojia_wechat_sim::new_openid();
    assert_eq!(fleet.issuer.push(1, &openid).await, 201);
    let first = eventually_named(30, "WeChat has the message", || {
        let sent = fleet.sent_to(&openid);
        async move { sent.into_iter().next() }
    })
    .await;
    let delivery_id = first.client_msg_id.clone().expect("template sends carry client_msg_id");

    let killed_at = Utc::now();
    if embedded {
        fleet.kill_gateway();
    } else {
        fleet.kill_notifiers();
    }
    fleet.sim.clear_faults();
    if embedded {
        fleet.start_gateway(true).await;
    } else {
        fleet.start_notifier().await;
    }

    // Once the dead sender's lease runs out, the restarted one sends again.
    let delivery = fleet.issuer.wait_delivered(1).await;
    assert_eq!(
        delivery["id"].as_str().map(|id| id.replace('-', "")),
        Some(delivery_id.clone())
    );
    assert_eq!(
        delivery["attempts"], 1,
        "the killed attempt left no record: the kill came mid-send ({delivery})"
    );
    let resent: Vec<RecordedCall> = fleet
        .sim
        .calls_to(paths::TEMPLATE_SEND)
        .into_iter()
        .filter(|c| client_msg_id(c) == Some(&delivery_id) && started(c) > killed_at)
        .collect();
    assert!(
        resent.iter().any(|c| c.response_errcode == 0),
        "the restarted process sent again, with the same client_msg_id: {resent:?}"
    );
    // WeChat answered the repeat with the first msgid and sent nothing new.
    assert_eq!(fleet.sent_to(&openid).len(), 1, "the payer received the receipt once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_killed_mid_send_postgres_redis() {
    killed_mid_send_then_restarted(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_gateway_killed_mid_send_sqlite() {
    killed_mid_send_then_restarted(Store::Sqlite).await;
}

// ---- Redis lost mid-run ------------------------------------------------------------

/// Pushes receipts one after another until stopped, each for a payer of its own.
/// While Redis is away the gateway holds a push until its connection is back, or
/// refuses it (503); a refused push is pushed again, as an issuer would.
struct Pusher {
    accepted: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
    refused: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Pusher {
    fn start(issuer: Issuer) -> Self {
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (accepted, refused, slowest_ms, stop) =
                (accepted.clone(), refused.clone(), slowest_ms.clone(), stop.clone());
            async move {
                let mut n = 1;
                let mut openid = piaojia_wechat_sim::new_openid();
                while !stop.load(Ordering::Relaxed) {
                    let clock = std::time::Instant::now();
                    let status = issuer.push(n, &openid).await;
                    slowest_ms.fetch_max(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
                    if matches!(status, 200 | 201) {
                        accepted.lock().expect("lock").push((n, openid));
                        n += 1;
                        openid = piaojia_wechat_sim::new_openid();
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Self {
            accepted,
            refused,
            slowest_ms,
            stop,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }

    async fn accepted_more(&self, more: usize) {
        let target = self.accepted() + more;
        eventually_named(60, "pushes accepted", || async move {
            (self.accepted() >= target).then_some(())
        })
        .await;
    }

    async fn finish(self) -> Vec<(u64, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("pusher");
        let accepted = self.accepted.lock().expect("lock").clone();
        eprintln!(
            "pushed: {} accepted, {} refused and pushed again, slowest push {} ms",
            accepted.len(),
            self.refused.load(Ordering::Relaxed),
            self.slowest_ms.load(Ordering::Relaxed)
        );
        accepted
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_restarted_and_flushed_mid_run_loses_nothing() {
    let mut redis = PrivateRedis::start().await;
    let mut fleet = Fleet::new(
        Store::Postgres,
        Some(redis.url()),
        &[
            ("PIAOJIA_NOTIFIER__REQUEST_TIMEOUT_SECS", "2"),
            ("PIAOJIA_NOTIFIER__LEASE_SECS", "3"),
            ("PIAOJIA_NOTIFIER__RETRY_SCHEDULE", "500ms,1s,1s,1s,2s,2s,2s,3s,3s,3s"),
            ("PIAOJIA_NOTIFIER__BREAKER_OPEN_SECS", "1"),
            ("PIAOJIA_NOTIFIER__BREAKER_WINDOW_SECS", "5"),
            // Few workers, so a backlog builds up and is waiting when Redis goes.
            ("PIAOJIA_NOTIFIER__CONCURRENCY", "2"),
            // Wake-ups travel through Redis only: the gateway runs no workers.
            ("PIAOJIA_NOTIFIER__POLL_INTERVAL_MS", "500"),
        ],
    )
    .await;
    fleet.start_gateway(false).await;
    fleet.start_notifier().await;
    fleet.start_notifier().await;
    // Sends take a while, so some are in flight whenever Redis goes.
    fleet
        .sim
        .set_faults(FaultScope::Path(paths::TEMPLATE_SEND.into()), Faults::latency(100, 100));

    let pusher = Pusher::start(fleet.issuer.clone());
    eventually_named(60, "a backlog of deliveries", || {
        let backlog = pusher.accepted().saturating_sub(fleet.sim.sent_template_count());
        let sent = fleet.sim.sent_template_count();
        async move { (sent >= 5 && backlog >= 15).then_some(()) }
    })
    .await;

    // Killed: every connection drops, and what comes back is empty.
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().await;
    pusher.accepted_more(20).await;
    // Flushed: nonces, cached tokens and locks are gone, connections stay.
    redis.flush().await;
    pusher.accepted_more(20).await;
    let accepted = pusher.finish().await;

    let expected: HashSet<&str> = accepted.iter().map(|(_, o)| o.as_str()).collect();
    eventually_named(90, "every accepted receipt reached WeChat", || {
        let sent: HashSet<String> = fleet
            .sim
            .sent_template_messages()
            .into_iter()
            .map(|m| m.touser)
            .collect();
        let missing = expected.iter().filter(|o| !sent.contains(**o)).count();
        async move { (missing == 0).then_some(()) }
    })
    .await;
    for (n, _) in &accepted {
        fleet.issuer.wait_delivered(*n).await;
    }
    let mut per_payer: HashMap<String, usize> = HashMap::new();
    for m in fleet.sim.sent_template_messages() {
        *per_payer.entry(m.touser).or_default() += 1;
    }
    assert_eq!(
        per_payer.len(),
        accepted.len(),
        "messages went only to accepted receipts' payers"
    );
    assert!(
        per_payer.values().all(|&n| n == 1),
        "every payer received one message: {per_payer:?}"
    );
}

// ---- WeChat slower than the request timeout ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_slower_than_the_timeout_is_retried_without_overlapping_sends() {
    let mut fleet = Fleet::new(
        Store::Postgres,
        Some(test_redis_url()),
        &[
            ("PIAOJIA_NOTIFIER__REQUEST_TIMEOUT_SECS", "1"),
            ("PIAOJIA_NOTIFIER__LEASE_SECS", "2"),
            // WeChat goes on with a call after we gave up on it (1.2 s here, 1 s
            // timeout): waiting 1 s before the retry keeps even WeChat's side of two
            // attempts apart, so any overlap below is two senders at once.
            ("PIAOJIA_NOTIFIER__RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s"),
            // Keep every attempt going to WeChat rather than waiting behind the breaker.
            ("PIAOJIA_NOTIFIER__BREAKER_FAILURES", "1000"),
            ("PIAOJIA_NOTIFIER__POLL_INTERVAL_MS", "50"),
        ],
    )
    .await;
    fleet.start_gateway(false).await;
    // Two processes compete for every due delivery.
    fleet.start_notifier().await;
    fleet.start_notifier().await;
    fleet
        .sim
        .set_faults(FaultScope::Path(paths::TEMPLATE_SEND.into()), Faults::latency(1200, 0));
    const N: u64 = 4;
    let mut payers = Vec::new();
    for n in 1..=N {
        let openid = piaojia_wechat_sim::new_openid();
        assert_eq!(fleet.issuer.push(n, &openid).await, 201);
        payers.push(openid);
    }
    let by_delivery = |calls: Vec<RecordedCall>| {
        let mut map: HashMap<String, Vec<RecordedCall>> = HashMap::new();
        for c in calls {
            if let Some(id) = client_msg_id(&c) {
                map.entry(id.to_owned()).or_default().push(c);
            }
        }
        map
    };
    eventually_named(90, "every delivery tried three times", || {
        let calls = by_delivery(fleet.sim.calls_to(paths::TEMPLATE_SEND));
        async move { (calls.len() == N as usize && calls.values().all(|c| c.len() >= 3)).then_some(()) }
    })
    .await;
    fleet.sim.clear_faults();
    let mut deliveries = Vec::new();
    for n in 1..=N {
        deliveries.push(fleet.issuer.wait_delivered(n).await);
    }
    // Let calls WeChat is still finishing come in before judging overlaps.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let calls = by_delivery(fleet.sim.calls_to(paths::TEMPLATE_SEND));
    assert_eq!(calls.len(), N as usize);
    for (id, mut sends) in calls {
        assert!(sends.len() >= 4, "delivery {id} was retried: {} sends", sends.len());
        sends.sort_by_key(started);
        for pair in sends.windows(2) {
            assert!(
                pair[0].at <= started(&pair[1]),
                "two sends of delivery {id} overlapped: one ran {} → {}, the next began {}",
                started(&pair[0]),
                pair[0].at,
                started(&pair[1])
            );
        }
    }
    for delivery in &deliveries {
        assert!(
            delivery["attempts"].as_i64() >= Some(4),
            "each timed-out send was recorded as an attempt by its lease holder: {delivery}"
        );
    }
    for openid in &payers {
        assert_eq!(fleet.sent_to(openid).len(), 1, "the payer received the receipt once");
    }
}

// ---- kill -9 mid-handling of a WeChat event ------------------------------------

const MESSAGE_TOKEN: &str = "message-token-of-the-process-tests";
const OPS_TOKEN: &str = "ops-token-of-the-process-tests-0123456789";
const PDF: &[u8] = b"%PDF-1.7\n% piaojia process test\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n";

/// The message server's inbox as the operator sees it, on the gateway at `base`.
async fn inbox_rows(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let Ok(r) = http
        .get(format!("{base}/v1/ops/wechat-inbox"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
    else {
        return Vec::new();
    };
    r.json::<Vec<Value>>().await.unwrap_or_default()
}

/// A fleet whose gateway is handling a `user_authorize_invoice` event while WeChat's
/// getauthdata takes `authdata_ms`: returns once the gateway holds the event's
/// lease, with the payer and the event's id.
async fn handling_an_event(authdata_ms: u64) -> (Fleet, String, Value) {
    let mut fleet = Fleet::new(
        Store::Postgres,
        None,
        &[
            ("PIAOJIA_OPS__TOKEN", OPS_TOKEN),
            ("PIAOJIA_WECHAT__INBOX_HANDLE_TIMEOUT_SECS", "5"),
            ("PIAOJIA_WECHAT__INBOX_LEASE_SECS", "8"),
            ("PIAOJIA_WECHAT__INBOX_POLL_INTERVAL_MS", "200"),
        ],
    )
    .await;
    // The channel's message server, and a template message that links the card.
    let out = fleet
        .command(&[
            "channel",
            "set",
            "--agency",
            AGENCY,
            "--kind",
            "wechat_template",
            "--wechat-app-id",
            OA,
            "--template-id",
            TEMPLATE,
            "--field",
            "character_string3={billNo}",
            "--page",
            "{cardUrl}",
            "--message-token",
            MESSAGE_TOKEN,
        ])
        .env("PIAOJIA_WECHAT_SECRET", OA_SECRET)
        .output()
        .expect("piaojia runs");
    assert!(
        out.status.success(),
        "channel set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.cli(&[
        "card",
        "enable",
        "--agency",
        AGENCY,
        "--app",
        OA,
        "--payee",
        "示例市第一人民医院",
        "--logo-url",
        "https://mmbiz.qpic.cn/logo.png",
    ]);
    fleet.start_gateway(true).await;
    let base = fleet.issuer.base.clone();
    fleet
        .sim
        .set_message_server(
            OA,
            Some(piaojia_wechat_sim::MessageServer {
                url: format!("{base}/v1/wechat/{OA}/events"),
                token: MESSAGE_TOKEN.to_owned(),
                encoding_aes_key: None,
            }),
        )
        .expect("message server set");

    // A receipt with its PDF for the payer: the template message links the card.
    let payer = piaojia_wechat_sim::new_openid();
    let mut receipt: Value = serde_json::from_str(RECEIPT).expect("example receipt");
    receipt["billNo"] = "0000000001".into();
    receipt["busNo"] = "MZ00000000000001".into();
    receipt["openID"] = payer.as_str().into();
    receipt["file"] = serde_json::json!({
        "format": "pdf",
        "base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PDF),
    });
    let body = serde_json::to_vec(&receipt).expect("json");
    let pushed = fleet
        .issuer
        .send(reqwest::Method::POST, "/v1/receipts", body)
        .await
        .expect("pushed");
    assert_eq!(pushed.status().as_u16(), 201);
    let link = eventually_named(30, "the template message", || {
        let sent = fleet.sent_to(&payer);
        async move { sent.into_iter().find_map(|m| m.url) }
    })
    .await;
    let path = link
        .split_once("/h5/")
        .map(|(_, p)| format!("/h5/{p}"))
        .expect("a card link");
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let auth_url = no_redirects
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("card link")
        .headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();

    // getauthdata made slow: the handling is caught in the middle.
    fleet.sim.set_faults(
        FaultScope::Path(paths::GET_AUTH_DATA.into()),
        Faults::latency(authdata_ms, 0),
    );
    let pushes = fleet.sim.authorize_invoice(&auth_url, &payer).await.expect("agreed");
    assert!(pushes.iter().all(|p| p.acknowledged), "{pushes:?}");
    let http = fleet.issuer.http.clone();
    let held = eventually_named(30, "the event claimed by the gateway", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            inbox_rows(&http, &base).await.into_iter().find(|e| {
                e["event"] == "user_authorize_invoice" && e["status"] == "pending" && e["leaseUntil"].is_string()
            })
        }
    })
    .await;
    assert_eq!(held["attempts"], 1);
    (fleet, payer, held["id"].clone())
}

/// The inbox event `id` once `done`, seen through the gateway now running.
async fn event_done(fleet: &Fleet, id: &Value) -> Value {
    let (http, base) = (fleet.issuer.http.clone(), fleet.issuer.base.clone());
    eventually_named(30, "the event done", || {
        let (http, base, id) = (http.clone(), base.clone(), id.clone());
        async move {
            inbox_rows(&http, &base)
                .await
                .into_iter()
                .find(|e| e["id"] == id && e["status"] == "done")
        }
    })
    .await
}

/// One card in the payer's package, inserted by one successful call.
async fn one_card(fleet: &Fleet, payer: &str) {
    let card = eventually_named(60, "the card in the payer's package", || {
        let cards = fleet.sim.card_package(OA, payer);
        async move { cards.into_iter().next() }
    })
    .await;
    assert_eq!(card.billing_code, "0000000001");
    assert_eq!(fleet.sim.card_package(OA, payer).len(), 1, "one card");
    let inserted: Vec<RecordedCall> = fleet
        .sim
        .calls_to(paths::INSERT_BILL)
        .into_iter()
        .filter(|c| c.response_errcode == 0)
        .collect();
    assert_eq!(inserted.len(), 1, "inserted once: {inserted:?}");
}

/// A gateway is SIGKILLed while it handles a `user_authorize_invoice` event: the
/// event stays leased, and a second gateway on the same PostgreSQL takes it once
/// the lease runs out and handles it, once: one card in the payer's package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_event_another_handles_it_once_postgres() {
    let (mut fleet, payer, event_id) = handling_an_event(60_000).await;
    let killed_at = Utc::now();
    fleet.kill_gateway();
    fleet.sim.clear_faults();
    fleet.start_gateway(true).await;

    // After the lease the second gateway takes it, and the card is inserted once.
    one_card(&fleet, &payer).await;
    let done = event_done(&fleet, &event_id).await;
    assert_eq!(done["attempts"], 2, "the killed claim, then one: {done}");
    let authdata_after = fleet
        .sim
        .calls_to(paths::GET_AUTH_DATA)
        .into_iter()
        .filter(|c| started(c) > killed_at)
        .count();
    assert_eq!(authdata_after, 1, "the second gateway asked WeChat once");
}

/// A gateway told to stop (SIGTERM) while it handles an event finishes and settles
/// it before it exits: the event is done by that gateway, not left leased for the
/// next to wait out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stopped_mid_event_settles_it_before_exiting_postgres() {
    let (mut fleet, payer, event_id) = handling_an_event(2_000).await;
    let mut gateway = fleet.gateway.take().expect("the gateway runs");
    let term = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = eventually_named(30, "the gateway exits", || {
        let exited = gateway.child.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert!(status.success(), "a graceful exit: {status}");
    fleet.start_gateway(true).await;
    // Settled by the stopped gateway, at once (its lease would run 8 s more).
    let rows = inbox_rows(&fleet.issuer.http, &fleet.issuer.base).await;
    let row = rows.iter().find(|e| e["id"] == event_id).expect("the event");
    assert_eq!(row["status"], "done", "settled before the exit: {row}");
    assert_eq!(row["attempts"], 1, "handled once, by the stopped gateway");
    assert!(row["leaseUntil"].is_null());
    one_card(&fleet, &payer).await;
}
