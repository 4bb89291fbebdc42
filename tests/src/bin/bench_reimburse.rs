//! Reimbursement benchmark: lock-then-close operations per second, through the
//! signed reimburser API of an in-process gateway, on the embedded SQLite store
//! and on PostgreSQL (+ Redis). Receipts are pushed first (not timed); then
//! `--clients` reimbursers each lock and close their share of them.
//!
//!   PIAOJIA_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   PIAOJIA_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo run --release -p piaojia-tests --bin piaojia-bench-reimburse -- --receipts 2000 --clients 8

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use piaojia_tests::harness::{Mode, TestApp, TestConfig};
use piaojia_tests::samples;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Receipts locked and closed per store.
    #[arg(long, default_value_t = 2000)]
    receipts: u64,
    /// Concurrent reimbursers.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Only this store: `sqlite` or `postgres`.
    #[arg(long)]
    only: Option<String>,
}

async fn run(mode: Mode, args: &Args) -> anyhow::Result<f64> {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_DATABASE__MAX_CONNECTIONS", "32");
    let app: Arc<TestApp> = Arc::new(config.spawn().await);
    let issuer = app.issuer().await;
    for n in 1..=args.receipts {
        let resp = app.push(&issuer, &samples::outpatient(n)).await;
        anyhow::ensure!(resp.status().as_u16() == 201, "push {n}: {}", resp.status());
    }
    let mut reimbursers = Vec::new();
    for i in 0..args.clients {
        reimbursers.push(
            app.create_reimburser(&format!("bench-{i}"), &["12110000400000001A"])
                .await,
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, who) in reimbursers.into_iter().enumerate() {
        let app = app.clone();
        let clients = args.clients as u64;
        let total = args.receipts;
        tasks.push(tokio::spawn(async move {
            let mut n = i as u64 + 1;
            while n <= total {
                let r = samples::outpatient(n);
                let base = json!({"billBatchCode": r["billBatchCode"], "billNo": r["billNo"], "random": r["random"]});
                for (action, extra) in [("lock", json!({})), ("close", json!({"paidAmt": "100.00"}))] {
                    let mut body = base.clone();
                    body["requestId"] = json!(format!("{action}-{n}"));
                    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                        b.extend(e.clone());
                    }
                    let resp = app
                        .signed(&who, "POST", &format!("/v1/reimburser/receipts/{action}"), Some(&body))
                        .await;
                    anyhow::ensure!(resp.status().as_u16() == 200, "{action} {n}: {}", resp.status());
                }
                n += clients;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    app.stop().await;
    Ok(args.receipts as f64 / secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (name, mode) in [("sqlite", Mode::Embedded), ("postgres", Mode::ScaleOut)] {
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let rate = run(mode, &args).await?;
        println!(
            "{name}: {rate:.0} lock-then-close operations/s ({} receipts, {} reimbursers)",
            args.receipts, args.clients
        );
    }
    Ok(())
}
