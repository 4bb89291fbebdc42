//! Issuer intake benchmark: starts a release `piaojia serve` on a fresh store,
//! provisions an issuer through the CLI, then pushes signed receipts from many
//! concurrent clients for a fixed time and prints pushes/s and latency percentiles.
//!
//!   cargo build --release -p piaojia-gateway -p piaojia-tests
//!   target/release/piaojia-bench --store sqlite --seconds 30 --clients 64
//!   target/release/piaojia-bench --store postgres --seconds 30 --clients 64
//!
//! `scripts/bench.sh` runs both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use piaojia_core::{pii, signing};
use piaojia_tests::harness::{fresh_postgres_database, test_redis_url};
use piaojia_tests::samples;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum StoreArg {
    Sqlite,
    Postgres,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    store: StoreArg,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The piaojia binary to benchmark.
    #[arg(long, default_value = "target/release/piaojia")]
    bin: PathBuf,
    #[arg(long, default_value_t = 18089)]
    port: u16,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn piaojia(bin: &PathBuf, env: &HashMap<String, String>, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(args)
        .envs(env)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("piaojia {args:?} failed");
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = tempfile::tempdir()?;
    let mut env: HashMap<String, String> = HashMap::from([
        ("PIAOJIA_DATA_DIR".into(), data_dir.path().display().to_string()),
        ("PIAOJIA_SERVER__PORT".into(), args.port.to_string()),
        ("PIAOJIA_LOG__FILTER".into(), "warn".into()),
    ]);
    if args.store == StoreArg::Postgres {
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
    piaojia(&args.bin, &env, &["migrate"])?;
    piaojia(
        &args.bin,
        &env,
        &[
            "agency",
            "create",
            "--code",
            "12110000400000001A",
            "--name",
            "基准测试医院",
        ],
    )?;
    let app = piaojia(
        &args.bin,
        &env,
        &[
            "app",
            "create",
            "--agency",
            "12110000400000001A",
            "--app-id",
            "bench-his",
        ],
    )?;
    let secret = app["secret"].as_str().context("secret")?.to_owned();

    let _server = Server(
        Command::new(&args.bin)
            .arg("serve")
            .envs(&env)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{}", args.port);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let started = Instant::now();
    loop {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let counter = Arc::new(AtomicU64::new(1));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, base, secret, counter, errors) = (
            client.clone(),
            base.clone(),
            secret.clone(),
            counter.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::to_vec(&samples::outpatient(n)).expect("json");
                let auth = signing::authorization(
                    "bench-his",
                    &secret,
                    "POST",
                    "/v1/receipts",
                    chrono::Utc::now().timestamp(),
                    &pii::random_alnum(24),
                    &body,
                );
                let t = Instant::now();
                let resp = client
                    .post(format!("{base}/v1/receipts"))
                    .header("authorization", auth)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let elapsed = t.elapsed();
                match resp {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        latencies.push(elapsed.as_micros() as u64);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = args.seconds as f64;
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "store={} clients={} seconds={} pushes={} errors={} pushes_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        if args.store == StoreArg::Sqlite {
            "sqlite"
        } else {
            "postgres+redis"
        },
        args.clients,
        args.seconds,
        all.len(),
        errors.load(Ordering::Relaxed),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    Ok(())
}
