//! The Prometheus alert rules (deploy/prometheus/alerts.yml) name only metrics
//! piaojia exports: a renamed or dropped metric would leave an alert that can
//! never fire. The test drives the traffic behind every metric (a receipt
//! delivered through the sandbox WeChat, an outage that opens the breaker and
//! leaves a backlog, a reimbursement lock that expires), scrapes /metrics, and
//! looks for each `piaojia_*` name the rules file mentions. `promtool test rules`
//! (scripts/promtool.sh) checks what the rules do with them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestApp, TestConfig, eventually_named};
use piaojia_tests::samples::{self, BATCH};
use serde_json::{Value, json};

const OA: &str = "wx0a1b2c3d4e5f6a7b";

/// Metrics the test cannot make appear cheaply; for these the test only checks
/// that the Rust sources still record them under that name.
const NOT_TRIGGERED: &[&str] = &[
    // A message-server event that fails for good: every retry of its handler
    // fails (inbox_retry_schedule, minutes long), e.g. a database failing for
    // that long. gateway/src/inbox.rs.
    "piaojia_wechat_events_failed_total",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `piaojia_*` metric name in `text`, histogram suffixes stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("piaojia_") {
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| word(c) || c.is_ascii_uppercase())
        {
            continue;
        }
        let end = text[at..].find(|c: char| !word(c)).map_or(text.len(), |n| at + n);
        let name = &text[at..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
    }
    names
}

/// The metric families in a Prometheus text scrape (TYPE lines and samples).
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            names.extend(metric_names(name));
            names.insert(name.to_owned());
        }
    }
    names
}

/// The Rust sources of the workspace's crates (not the tests).
fn rust_sources(dir: &Path, out: &mut String) {
    let entries = std::fs::read_dir(dir).expect("a readable source directory");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).expect("a readable source file"));
        }
    }
}

async fn alert_raised(app: &TestApp, rule: &'static str) {
    eventually_named(20, rule, || async move {
        let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.ok()?;
        alerts.as_array()?.iter().any(|a| a["rule"] == rule).then_some(())
    })
    .await;
}

fn with_openid(n: u64) -> Value {
    let mut r = samples::outpatient(n);
    r["openID"] = piaojia_wechat_sim::new_openid().into();
    r
}

#[test]
fn the_rules_file_names_metrics() {
    let rules = std::fs::read_to_string(workspace().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let names = metric_names(&rules);
    for expected in [
        "piaojia_delivery_attempts_total",
        "piaojia_delivery_end_to_end_seconds",
        "piaojia_external_requests_total",
        "piaojia_breaker_open",
        "piaojia_breaker_opened_total",
    ] {
        assert!(names.contains(expected), "{expected} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.ends_with("_bucket")), "{names:?}");
    assert_eq!(
        metric_names("x{le=\"1\"} piaojia_a_bucket{} rate(piaojia_b_count[5m]) xpiaojia_c"),
        BTreeSet::from(["piaojia_a".to_owned(), "piaojia_b".to_owned()])
    );
}

both_modes!(alert_rules_name_exported_metrics, |mode: Mode| async move {
    let rules = std::fs::read_to_string(workspace().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let referenced = metric_names(&rules);

    let mut sources = String::new();
    for krate in ["core", "store", "gateway", "notifier", "wechat", "miniprogram-api"] {
        rust_sources(&workspace().join(krate).join("src"), &mut sources);
    }
    for name in NOT_TRIGGERED {
        assert!(
            referenced.contains(*name),
            "{name} is allow-listed but no alert uses it"
        );
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "alerts.yml uses {name}, which no Rust source records"
        );
    }

    let mut config = TestConfig::new(mode).await;
    config
        // Failed sends wait long enough to be counted in the backlog gauges
        // (set every 5 s), and the breaker opens after three of them.
        .set("PIAOJIA_NOTIFIER__RETRY_SCHEDULE", "10s,10s")
        .set("PIAOJIA_NOTIFIER__BREAKER_FAILURES", "3")
        .set("PIAOJIA_REIMBURSEMENT__LOCK_TTL_SECS", "1")
        .set("PIAOJIA_REIMBURSEMENT__EXPIRY_CHECK_SECS", "1");
    let app = config.spawn().await;
    let sim = app.sim.clone().expect("sandbox simulator");
    let issuer = app.issuer().await;
    app.wechat_channel(&issuer.agency_code, "wechat_template", OA, "TMPL-1")
        .await;

    // A receipt reaches its payer: attempts, durations, WeChat requests.
    assert_eq!(app.push(&issuer, &with_openid(1)).await.status().as_u16(), 201);
    eventually_named(15, "the template message", || {
        let sim = sim.clone();
        async move { (!sim.sent_template_messages().is_empty()).then_some(()) }
    })
    .await;

    // A reimburser locks it and never closes: the lock expires.
    let insurer = app.create_reimburser("insurer-a", &[issuer.agency_code.as_str()]).await;
    let random = samples::outpatient(1)["random"].as_str().expect("random").to_owned();
    let lock = app
        .signed(
            &insurer,
            "POST",
            "/v1/reimburser/receipts/lock",
            Some(&json!({"billBatchCode": BATCH, "billNo": "0000000001", "random": random, "requestId": "1"})),
        )
        .await;
    assert_eq!(lock.status().as_u16(), 200);

    // WeChat is down: failed sends queue up and the breaker opens.
    sim.set_faults(
        piaojia_wechat_sim::FaultScope::All,
        piaojia_wechat_sim::Faults {
            outage: true,
            ..Default::default()
        },
    );
    for n in 2..=6 {
        assert_eq!(app.push(&issuer, &with_openid(n)).await.status().as_u16(), 201);
    }
    alert_raised(&app, "breaker_open").await;
    alert_raised(&app, "reimbursement_lock_expired").await;

    // The gauges follow within a housekeeping round (5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (missing, metrics) = loop {
        let metrics = app.metrics().await;
        let have = exported(&metrics);
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|n| !have.contains(*n) && !NOT_TRIGGERED.contains(&n.as_str()))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, metrics);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "alerts.yml names metrics /metrics does not export: {missing:?}\n{metrics}"
    );
    // PiaojiaDeliveryEndToEndSlow reads the 10 s bucket by its le label.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("piaojia_delivery_end_to_end_seconds_bucket{")
                && (l.contains("le=\"10\"") || l.contains("le=\"10.0\""))),
        "{metrics}"
    );
    // The breaker gauge says which interface is out.
    let open = format!("piaojia_breaker_open{{interface=\"wechat:{OA}:template_send\"}} ");
    let value = metrics
        .lines()
        .find_map(|l| l.strip_prefix(open.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(value, Some(1.0), "{metrics}");

    // WeChat is back: everything is delivered, and the gauges drop to zero
    // rather than keep the outage's figures (an alert would fire forever).
    sim.clear_faults();
    eventually_named(30, "the queued template messages", || {
        let sim = sim.clone();
        async move { (sim.sent_template_messages().len() == 6).then_some(()) }
    })
    .await;
    let gauge = |metrics: &str, prefix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let backlog =
        format!("piaojia_delivery_backlog{{channel=\"wechat_template\",interface=\"wechat:{OA}:template_send\"}} ");
    let oldest = format!(
        "piaojia_delivery_oldest_pending_seconds{{channel=\"wechat_template\",interface=\"wechat:{OA}:template_send\"}} "
    );
    let app = &app;
    eventually_named(15, "the gauges back at zero", || {
        let (backlog, oldest, open) = (backlog.clone(), oldest.clone(), open.clone());
        async move {
            let metrics = app.metrics().await;
            [&backlog, &oldest, &open]
                .iter()
                .all(|p| gauge(&metrics, p) == Some(0.0))
                .then_some(())
        }
    })
    .await;
});
