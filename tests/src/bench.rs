//! What the benchmarks share: a release `piaojia` as a child process on a fresh
//! store, provisioned through its own CLI, and latency percentiles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use piaojia_core::{pii, signing};

use crate::harness::{fresh_postgres_database, test_redis_url};

/// A receipt push signed as issuer `app_id`, built but not sent (callers time the send).
pub fn signed_push(
    client: &reqwest::Client,
    base: &str,
    app_id: &str,
    secret: &str,
    receipt: &serde_json::Value,
) -> reqwest::RequestBuilder {
    let body = serde_json::to_vec(receipt).expect("a JSON value serialises");
    let auth = signing::authorization(
        app_id,
        secret,
        "POST",
        "/v1/receipts",
        chrono::Utc::now().timestamp(),
        &pii::random_alnum(24),
        &body,
    );
    client
        .post(format!("{base}/v1/receipts"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StoreArg {
    Sqlite,
    Postgres,
}

impl StoreArg {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres+redis",
        }
    }
}

/// The environment of every `piaojia` the benchmark runs: a fresh SQLite file in
/// `data_dir`, or a fresh PostgreSQL database with Redis under a prefix of its own.
pub async fn store_env(store: StoreArg, data_dir: &Path, port: u16) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::from([
        ("PIAOJIA_DATA_DIR".into(), data_dir.display().to_string()),
        ("PIAOJIA_SERVER__PORT".into(), port.to_string()),
        ("PIAOJIA_LOG__FILTER".into(), "warn".into()),
        ("PIAOJIA_SERVER__METRICS_ADDRESS".into(), String::new()),
    ]);
    if store == StoreArg::Postgres {
        env.insert("DATABASE_URL".into(), fresh_postgres_database().await);
        env.insert("REDIS_URL".into(), test_redis_url());
        env.insert(
            "PIAOJIA_REDIS__KEY_PREFIX".into(),
            format!("bench:{}:", uuid::Uuid::new_v4().simple()),
        );
        env.insert(
            "PIAOJIA_SECURITY__MASTER_KEYS".into(),
            format!("k1:{}", pii::generate_key()),
        );
        env.insert("PIAOJIA_SECURITY__BLIND_INDEX_KEY".into(), pii::generate_key());
        env.insert("PIAOJIA_DATABASE__MAX_CONNECTIONS".into(), "32".into());
    }
    env
}

/// Runs a `piaojia` command to completion and parses its JSON output.
pub fn cli(bin: &Path, env: &HashMap<String, String>, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    cli_with(bin, env, args, &[])
}

pub fn cli_with(
    bin: &Path,
    env: &HashMap<String, String>,
    args: &[&str],
    extra: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(args)
        .envs(env)
        .envs(extra.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("piaojia {args:?} failed");
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Migrates, then provisions an agency and an issuer app; returns the app's secret.
pub fn provision_issuer(bin: &Path, env: &HashMap<String, String>, app_id: &str) -> anyhow::Result<String> {
    cli(bin, env, &["migrate"])?;
    cli(
        bin,
        env,
        &[
            "agency",
            "create",
            "--code",
            "12110000400000001A",
            "--name",
            "基准测试医院",
        ],
    )?;
    let app = cli(
        bin,
        env,
        &["app", "create", "--agency", "12110000400000001A", "--app-id", app_id],
    )?;
    Ok(app["secret"].as_str().context("secret")?.to_owned())
}

/// `piaojia serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    pub async fn start(bin: &PathBuf, env: &HashMap<String, String>, client: &reqwest::Client) -> anyhow::Result<Self> {
        let port = env.get("PIAOJIA_SERVER__PORT").context("port")?;
        // Another server on the port would answer for this one.
        std::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .with_context(|| format!("port {port} is taken (another benchmark still running?)"))?;
        let mut server = Self {
            child: Command::new(bin).arg("serve").envs(env).stdout(Stdio::null()).spawn()?,
            base: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("piaojia serve exited: {status}");
            }
            let ready = client.get(format!("{}/readyz", server.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the server did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds used so far per command name (`postgres`, `redis-server`, …),
/// summed over the processes alive now.
pub fn cpu_by_command() -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(secs) = cpu_seconds(pid) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or("?", |(name, _)| name);
        *out.entry(name.to_owned()).or_insert(0.0) += secs;
    }
    out
}

/// CPU seconds used so far by the PostgreSQL backends serving `database` (their
/// command line names it), so other clients of the same server do not count.
pub fn postgres_cpu_of(database: &str) -> f64 {
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    let needle = format!(" {database} ");
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("postgres: ") && cmdline.contains(&needle) {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    total
}

/// The database name of a `postgres://…/name?…` URL.
pub fn database_of(url: &str) -> Option<&str> {
    let path = url.split('?').next()?;
    path.rsplit_once('/').map(|(_, name)| name)
}

/// Idle CPU seconds of the whole machine so far (idle + iowait, all cores).
pub fn machine_idle_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    let ticks: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    Some((ticks.get(3)? + ticks.get(4)?) / 100.0)
}

/// Busy CPU seconds of the whole machine so far (all cores), from /proc/stat.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    let ticks: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …: busy is all but idle and iowait.
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle) / 100.0)
}

/// The `p`-quantile (0..=1) of sorted values, or 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}
