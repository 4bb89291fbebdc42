//! Issuer intake benchmark: starts a release `piaojia serve` on a fresh store,
//! provisions an issuer through the CLI, then pushes signed receipts from many
//! concurrent clients for a fixed time and prints pushes/s and latency percentiles.
//!
//!   cargo build --release -p piaojia-gateway -p piaojia-tests
//!   target/release/piaojia-bench --store sqlite --seconds 30 --clients 64
//!   target/release/piaojia-bench --store postgres --seconds 30 --clients 64
//!
//! `scripts/bench.sh` runs both.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use piaojia_tests::bench::{self, StoreArg};
use piaojia_tests::samples;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = tempfile::tempdir()?;
    let env = bench::store_env(args.store, data_dir.path(), args.port).await;
    let secret = bench::provision_issuer(&args.bin, &env, "bench-his")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let server = bench::Server::start(&args.bin, &env, &client).await?;
    let base = server.base.clone();

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
                let push = bench::signed_push(
                    &client,
                    &base,
                    "bench-his",
                    &secret,
                    &samples::outpatient_of_own_payer(n),
                );
                let t = Instant::now();
                let resp = push.send().await;
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
    let pct = |p: f64| bench::percentile(&all, p) as f64 / 1000.0;
    println!(
        "store={} clients={} seconds={} pushes={} errors={} pushes_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.store.label(),
        args.clients,
        args.seconds,
        all.len(),
        errors.load(Ordering::Relaxed),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    drop(server);
    Ok(())
}
