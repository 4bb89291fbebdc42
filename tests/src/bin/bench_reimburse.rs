//! Reimbursement benchmark: lock-then-close operations per second through the
//! signed reimburser API of a release `piaojia serve` (a child process, so its CPU
//! is its own), on the embedded SQLite store or on PostgreSQL + Redis, against the
//! ceiling measured in the same run (pgbench on `scripts/bench/reference.sql`,
//! through `scripts/bench-reference.sh`). Receipts are pushed first (not timed);
//! then `--clients` reimbursers each lock and close their share of them, one
//! request in flight each. Prints ops/s, its ratio to the reference tps, and the
//! server CPU-ms per operation (piaojia + its PostgreSQL backends + Redis, from
//! /proc) with its ratio to the reference's CPU-ms per transaction.
//!
//!   cargo build --release -p piaojia-gateway -p piaojia-tests --bin piaojia --bin piaojia-bench-reimburse
//!   target/release/piaojia-bench-reimburse --store postgres --receipts 2000 --clients 8
//!   target/release/piaojia-bench-reimburse --store sqlite --receipts 2000 --clients 8

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use piaojia_core::{pii, signing};
use piaojia_tests::bench::{self, StoreArg};
use piaojia_tests::samples;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    store: StoreArg,
    /// Receipts locked and closed.
    #[arg(long, default_value_t = 2000)]
    receipts: u64,
    /// Concurrent reimbursers (one request in flight each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of the pgbench reference run (0: skip it, no ratios).
    #[arg(long, default_value_t = 10)]
    reference_seconds: u64,
    /// The piaojia binary to benchmark.
    #[arg(long, default_value = "target/release/piaojia")]
    bin: PathBuf,
    #[arg(long, default_value_t = 18091)]
    port: u16,
}

/// `reference tps=… cpu_ms_per_tx=… idle=…%` from scripts/bench-reference.sh.
struct Reference {
    line: String,
    tps: f64,
    cpu_ms: f64,
}

fn reference(seconds: u64) -> anyhow::Result<Reference> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/bench-reference.sh"))
        .args([seconds.to_string(), "16".into()])
        .arg(format!(
            "{}?sslmode=disable",
            piaojia_store::testing::test_database_url()
        ))
        .output()
        .context("running scripts/bench-reference.sh")?;
    ensure!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout)?.trim().to_owned();
    let field = |name: &str| -> anyhow::Result<f64> {
        let v = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .with_context(|| format!("{name} in {line:?}"))?;
        Ok(v.trim_end_matches('%').parse()?)
    };
    Ok(Reference {
        tps: field("tps")?,
        cpu_ms: field("cpu_ms_per_tx")?,
        line,
    })
}

struct Caller {
    client: reqwest::Client,
    base: String,
    app_id: String,
    secret: String,
}

impl Caller {
    async fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<reqwest::Response> {
        let bytes = serde_json::to_vec(body)?;
        let auth = signing::authorization(
            &self.app_id,
            &self.secret,
            "POST",
            path,
            chrono::Utc::now().timestamp(),
            &pii::random_alnum(24),
            &bytes,
        );
        Ok(self
            .client
            .post(format!("{}{path}", self.base))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The ceiling first, while nothing else of the bench runs.
    let reference = match args.reference_seconds {
        0 => None,
        s => Some(reference(s)?),
    };
    if let Some(r) = &reference {
        println!("{}", r.line);
    }

    let data_dir = tempfile::tempdir()?;
    let env = bench::store_env(args.store, data_dir.path(), args.port).await;
    let issuer_secret = bench::provision_issuer(&args.bin, &env, "bench-his")?;
    let mut reimbursers = Vec::new();
    for i in 0..args.clients {
        let app_id = format!("bench-{i}");
        let created = bench::cli(
            &args.bin,
            &env,
            &[
                "reimburser",
                "create",
                "--app-id",
                &app_id,
                "--kind",
                "commercial_insurer",
                "--name",
                &format!("基准保险{i}"),
                "--org-code",
                &format!("9111000010000{i:04}X"),
                "--accept",
                "12110000400000001A",
                "--field",
                "name",
            ],
        )?;
        reimbursers.push((app_id, created["secret"].as_str().context("secret")?.to_owned()));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.clients.max(16))
        .build()?;
    let server = bench::Server::start(&args.bin, &env, &client).await?;

    // Receipts to reimburse, 16 pushes in flight (not timed).
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut pushers = Vec::new();
    for _ in 0..16 {
        let (client, base, secret, next, total) = (
            client.clone(),
            server.base.clone(),
            issuer_secret.clone(),
            next.clone(),
            args.receipts,
        );
        pushers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n > total {
                    return Ok::<_, anyhow::Error>(());
                }
                let resp = bench::signed_push(&client, &base, "bench-his", &secret, &samples::outpatient(n))
                    .send()
                    .await?;
                ensure!(resp.status().as_u16() == 201, "push {n}: {}", resp.status());
            }
        }));
    }
    for p in pushers {
        p.await??;
    }

    let database = env
        .get("DATABASE_URL")
        .and_then(|u| bench::database_of(u))
        .map(str::to_owned);
    let db_cpu = || database.as_deref().map_or(0.0, bench::postgres_cpu_of);
    let redis_cpu = || bench::cpu_by_command().get("redis-server").copied().unwrap_or(0.0);
    let (server_before, db_before, redis_before, idle_before) = (
        bench::cpu_seconds(server.pid()),
        db_cpu(),
        redis_cpu(),
        bench::machine_idle_seconds(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (app_id, secret)) in reimbursers.into_iter().enumerate() {
        let caller = Caller {
            client: client.clone(),
            base: server.base.clone(),
            app_id,
            secret,
        };
        let clients = args.clients as u64;
        let total = args.receipts;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = i as u64 + 1;
            while n <= total {
                let r = samples::outpatient(n);
                let key = json!({"billBatchCode": r["billBatchCode"], "billNo": r["billNo"], "random": r["random"]});
                let op = Instant::now();
                for (action, paid) in [("lock", None), ("close", Some("100.00"))] {
                    let mut body = key.clone();
                    body["requestId"] = json!(format!("{action}-{n}"));
                    if let Some(paid) = paid {
                        body["paidAmt"] = json!(paid);
                    }
                    let resp = caller.post(&format!("/v1/reimburser/receipts/{action}"), &body).await?;
                    if resp.status().as_u16() != 200 {
                        bail!(
                            "{action} {n}: {} {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default()
                        );
                    }
                }
                latencies.push(op.elapsed().as_micros() as u64);
                n += clients;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let (server_after, db_after, redis_after, idle_after) = (
        bench::cpu_seconds(server.pid()),
        db_cpu(),
        redis_cpu(),
        bench::machine_idle_seconds(),
    );
    drop(server);
    latencies.sort_unstable();

    let ops = latencies.len() as f64;
    let per_op = |cpu_secs: f64| cpu_secs * 1000.0 / ops.max(1.0);
    let piaojia = match (server_before, server_after) {
        (Some(b), Some(a)) => a - b,
        _ => f64::NAN,
    };
    let postgres = db_after - db_before;
    // Redis is shared with whatever else runs here: an upper bound.
    let redis = if args.store == StoreArg::Postgres {
        redis_after - redis_before
    } else {
        0.0
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let idle_pct = match (idle_before, idle_after) {
        (Some(b), Some(a)) => 100.0 * (a - b) / (secs * cores),
        _ => f64::NAN,
    };
    let rate = ops / secs;
    let cpu_ms = per_op(piaojia + postgres + redis);
    let ms = |us: u64| us as f64 / 1000.0;
    let (x_tps, x_cpu) = reference
        .as_ref()
        .map_or((f64::NAN, f64::NAN), |r| (rate / r.tps, cpu_ms / r.cpu_ms));
    println!(
        "summary store={} receipts={} clients={} ops_per_sec={rate:.0} x_ref_tps={x_tps:.2} \
         cpu_ms_per_op={cpu_ms:.3} piaojia_ms={:.3} postgres_ms={:.3} redis_ms={:.3} x_ref_cpu={x_cpu:.1} \
         idle_pct={idle_pct:.0} p50_ms={:.1} p99_ms={:.1}",
        args.store.label(),
        args.receipts,
        args.clients,
        per_op(piaojia),
        per_op(postgres),
        per_op(redis),
        ms(bench::percentile(&latencies, 0.50)),
        ms(bench::percentile(&latencies, 0.99)),
    );
    Ok(())
}
