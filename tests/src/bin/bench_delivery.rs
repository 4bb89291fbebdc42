//! End-to-end delivery benchmark: from an issuer's push leaving the client to the
//! WeChat simulator receiving the template message for that receipt.
//!
//! The benchmark hosts the WeChat simulator itself (each template send takes
//! `--wechat-latency-ms`, 50 ms by default), so acceptance and arrival are timed on
//! one clock. It starts a release `piaojia serve` (notifier in-process) with
//! `wechat.mode = live` pointed at the simulator, provisions an agency, an issuer
//! and an official-account channel through the CLI, pushes signed receipts carrying
//! the payer's `openID` at a fixed rate, waits until every accepted receipt has
//! reached the simulator, and prints receipts/s and latency percentiles. Latency
//! is measured from the push's request being sent to the moment the simulator has
//! processed the send, so it includes the push's own latency and the simulated
//! WeChat latency. `accepted_per_sec` counts the 201s that arrived
//! within the window; `scheduled_*` adds how late each push left against its
//! schedule, so a server that falls behind the offered rate
//! shows there.
//!
//!   cargo build --release -p piaojia-gateway -p piaojia-tests
//!   target/release/piaojia-bench-delivery --store postgres --rate 1000 --seconds 60
//!   target/release/piaojia-bench-delivery --store sqlite --rate 1000 --seconds 60
//!
//! `--set KEY=VALUE` passes a setting to the server, e.g.
//! `--set PIAOJIA_NOTIFIER__CONCURRENCY=256`. `scripts/bench-delivery.sh` runs both stores.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use piaojia_tests::bench::{self, StoreArg};
use piaojia_tests::samples;
use piaojia_wechat_sim::{FaultScope, Faults, SimApp, SimConfig, Simulator, paths};

const OA: &str = "wx0a1b2c3d4e5f6a7b";
const OA_SECRET: &str = "bench-official-account-secret";

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    store: StoreArg,
    /// Length of the measured window.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Pushes before the window, at the same rate, not counted.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Receipts offered per second (0: as fast as the clients go).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Pushes in flight at most.
    #[arg(long, default_value_t = 128)]
    clients: usize,
    #[arg(long, default_value_t = 50)]
    wechat_latency_ms: u64,
    /// How long to wait after the last push for the last arrival.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    /// `sslmode` of the server's PostgreSQL connections (`prefer`: TLS when the
    /// server offers it, as a plain URL does; `disable`: plain TCP).
    #[arg(long, default_value = "prefer")]
    pg_sslmode: String,
    /// A server setting, `PIAOJIA_<SECTION>__<KEY>=value` (repeatable).
    #[arg(long = "set")]
    settings: Vec<String>,
    /// The piaojia binary to benchmark.
    #[arg(long, default_value = "target/release/piaojia")]
    bin: PathBuf,
    #[arg(long, default_value_t = 18090)]
    port: u16,
}

/// One accepted push.
struct Accepted {
    openid: String,
    at: DateTime<Utc>,
    measured: bool,
    push_us: u64,
    /// How late the push left against its schedule: the client waits for a free
    /// connection when the server falls behind, so this is how the backlog shows.
    late_us: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut sim_config = SimConfig::default().with_app(SimApp::official_account(OA, OA_SECRET));
    // Keep every record of the run, and no daily quota gets in the way.
    sim_config.record_limit = 10_000_000;
    sim_config
        .daily_quotas
        .insert(paths::TEMPLATE_SEND.to_owned(), u64::MAX);
    let sim = Simulator::new(sim_config);
    sim.set_faults(
        FaultScope::Path(paths::TEMPLATE_SEND.into()),
        Faults::latency(args.wechat_latency_ms, 0),
    );
    let (sim_addr, sim_server) = sim.start().await?;

    let data_dir = tempfile::tempdir()?;
    let mut env = bench::store_env(args.store, data_dir.path(), args.port).await;
    if let Some(url) = env.get_mut("DATABASE_URL") {
        url.push_str(&format!("?sslmode={}", args.pg_sslmode));
    }
    env.insert("PIAOJIA_WECHAT__MODE".into(), "live".into());
    env.insert("PIAOJIA_WECHAT__API_BASE_URL".into(), format!("http://{sim_addr}"));
    for s in &args.settings {
        let (k, v) = s.split_once('=').context("--set takes KEY=VALUE")?;
        env.insert(k.to_owned(), v.to_owned());
    }
    let secret = bench::provision_issuer(&args.bin, &env, "bench-his")?;
    bench::cli_with(
        &args.bin,
        &env,
        &[
            "channel",
            "set",
            "--agency",
            "12110000400000001A",
            "--kind",
            "wechat_template",
            "--wechat-app-id",
            OA,
            "--template-id",
            "TMPL-RECEIPT-ISSUED",
        ],
        &[("PIAOJIA_WECHAT_SECRET", OA_SECRET)],
    )?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let server = bench::Server::start(&args.bin, &env, &client).await?;

    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + Duration::from_secs(args.warmup);
    let end = window_start + Duration::from_secs(args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, base, secret, counter, errors) = (
            client.clone(),
            server.base.clone(),
            secret.clone(),
            counter.clone(),
            errors.clone(),
        );
        let rate = args.rate;
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let due = if rate > 0 {
                    start + Duration::from_secs_f64(i as f64 / rate as f64)
                } else {
                    Instant::now().max(start)
                };
                if due >= end {
                    return accepted;
                }
                tokio::time::sleep_until(due.into()).await;
                let openid = piaojia_wechat_sim::new_openid();
                let mut receipt = samples::outpatient_of_own_payer(i + 1);
                receipt["openID"] = openid.clone().into();
                let push = bench::signed_push(&client, &base, "bench-his", &secret, &receipt);
                let sent = Instant::now();
                let resp = push.send().await;
                match resp {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let at = Utc::now();
                        let push_us = sent.elapsed().as_micros() as u64;
                        let _ = r.bytes().await;
                        accepted.push(Accepted {
                            openid,
                            at,
                            measured: due >= window_start,
                            push_us,
                            late_us: sent.saturating_duration_since(due).as_micros() as u64,
                        });
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // CPU used during the window by the server and by this process (client and simulator).
    tokio::time::sleep_until(window_start.into()).await;
    let window_start_wall = Utc::now();
    let database = env
        .get("DATABASE_URL")
        .and_then(|u| bench::database_of(u))
        .map(str::to_owned);
    let db_cpu = || database.as_deref().map_or(0.0, bench::postgres_cpu_of);
    let cpu_before = (bench::cpu_seconds(server.pid()), bench::cpu_seconds(std::process::id()));
    let (machine_before, commands_before) = (bench::machine_busy_seconds(), bench::cpu_by_command());
    let (db_before, idle_before) = (db_cpu(), bench::machine_idle_seconds());
    tokio::time::sleep_until(end.into()).await;
    let window_end_wall = Utc::now();
    let cpu_after = (bench::cpu_seconds(server.pid()), bench::cpu_seconds(std::process::id()));
    let (machine_after, commands_after) = (bench::machine_busy_seconds(), bench::cpu_by_command());
    let (db_after, idle_after) = (db_cpu(), bench::machine_idle_seconds());

    let mut accepted = Vec::new();
    for t in tasks {
        accepted.extend(t.await?);
    }
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while sim.sent_template_count() < accepted.len() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut arrivals: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut duplicates = 0u64;
    let mut delivered_in_window = 0u64;
    for m in sim.sent_template_messages() {
        if (window_start_wall..window_end_wall).contains(&m.at) {
            delivered_in_window += 1;
        }
        if arrivals.insert(m.touser, m.at).is_some() {
            duplicates += 1;
        }
    }
    let failed_sends = sim
        .calls_to(paths::TEMPLATE_SEND)
        .iter()
        .filter(|c| c.response_errcode != 0)
        .count();
    let mut latencies = Vec::new();
    let mut scheduled_latencies = Vec::new();
    let mut push_latencies = Vec::new();
    let accepted_in_window = accepted
        .iter()
        .filter(|a| (window_start_wall..window_end_wall).contains(&a.at))
        .count();
    let mut undelivered = 0u64;
    let mut last_arrival = window_end_wall;
    for a in accepted.iter().filter(|a| a.measured) {
        push_latencies.push(a.push_us);
        match arrivals.get(&a.openid) {
            Some(at) => {
                // From the push's request leaving the client: its deliveries may go
                // out before the 201 is back (workers start at the commit).
                let e2e = (*at - a.at)
                    .num_microseconds()
                    .unwrap_or(i64::MAX)
                    .saturating_add(a.push_us as i64)
                    .max(0) as u64;
                latencies.push(e2e);
                scheduled_latencies.push(e2e + a.late_us);
                last_arrival = last_arrival.max(*at);
            }
            None => undelivered += 1,
        }
    }
    let measured = push_latencies.len();
    latencies.sort_unstable();
    scheduled_latencies.sort_unstable();
    push_latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let secs = args.seconds as f64;
    let cpu = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) / secs),
        _ => "?".to_owned(),
    };
    println!(
        "store={}{} rate={} seconds={} wechat_latency_ms={} accepted={} push_errors={} undelivered={} \
         duplicates={} failed_sends={} accepted_per_sec={:.0} delivered_per_sec={:.0} \
         p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} push_p50_ms={:.1} push_p99_ms={:.1} \
         scheduled_p50_ms={:.1} scheduled_p99_ms={:.1} drain_after_window_ms={} serve_cores={} bench_cores={}",
        args.store.label(),
        if args.store == StoreArg::Postgres {
            format!(" sslmode={}", args.pg_sslmode)
        } else {
            String::new()
        },
        args.rate,
        args.seconds,
        args.wechat_latency_ms,
        measured,
        errors.load(Ordering::Relaxed),
        undelivered,
        duplicates,
        failed_sends,
        accepted_in_window as f64 / secs,
        delivered_in_window as f64 / secs,
        ms(bench::percentile(&latencies, 0.50)),
        ms(bench::percentile(&latencies, 0.90)),
        ms(bench::percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or(0)),
        ms(bench::percentile(&push_latencies, 0.50)),
        ms(bench::percentile(&push_latencies, 0.99)),
        ms(bench::percentile(&scheduled_latencies, 0.50)),
        ms(bench::percentile(&scheduled_latencies, 0.99)),
        (last_arrival - window_end_wall).num_milliseconds(),
        cpu(cpu_before.0, cpu_after.0),
        cpu(cpu_before.1, cpu_after.1),
    );
    // Where the machine's CPU went during the window, in cores.
    let mut used: Vec<(String, f64)> = commands_after
        .iter()
        .map(|(name, after)| (name.clone(), (after - commands_before.get(name).unwrap_or(&0.0)) / secs))
        .filter(|(_, cores)| *cores >= 0.02)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "cpu (cores of {}): machine={} {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu(machine_before, machine_after),
        used.iter()
            .map(|(name, cores)| format!("{name}={cores:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Server CPU per delivered receipt: piaojia, its PostgreSQL backends and Redis
    // (Redis is shared with whatever else runs here, so it is an upper bound).
    let per_receipt = |cpu_secs: f64| cpu_secs * 1000.0 / (delivered_in_window.max(1) as f64);
    let piaojia_cpu = match (cpu_before.0, cpu_after.0) {
        (Some(b), Some(a)) => a - b,
        _ => 0.0,
    };
    let redis_cpu = commands_after.get("redis-server").copied().unwrap_or(0.0)
        - commands_before.get("redis-server").copied().unwrap_or(0.0);
    let redis_cpu = if args.store == StoreArg::Postgres {
        redis_cpu
    } else {
        0.0
    };
    let db_cpu_used = db_after - db_before;
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let idle_pct = match (idle_before, idle_after) {
        (Some(b), Some(a)) => 100.0 * (a - b) / (secs * cores),
        _ => f64::NAN,
    };
    println!(
        "summary delivered_per_sec={:.0} cpu_ms_per_receipt={:.3} piaojia_ms={:.3} postgres_ms={:.3} redis_ms={:.3} idle_pct={:.0} p50_ms={:.1} p99_ms={:.1} push_p99_ms={:.1}",
        delivered_in_window as f64 / secs,
        per_receipt(piaojia_cpu + db_cpu_used + redis_cpu),
        per_receipt(piaojia_cpu),
        per_receipt(db_cpu_used),
        per_receipt(redis_cpu),
        idle_pct,
        ms(bench::percentile(&latencies, 0.50)),
        ms(bench::percentile(&latencies, 0.99)),
        ms(bench::percentile(&push_latencies, 0.99)),
    );
    if !args.settings.is_empty() {
        println!("settings: {}", args.settings.join(" "));
    }
    drop(server);
    sim_server.stop(false).await;
    if undelivered > 0 || duplicates > 0 {
        bail!("{undelivered} receipts not delivered, {duplicates} delivered twice");
    }
    Ok(())
}
