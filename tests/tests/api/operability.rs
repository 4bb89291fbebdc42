use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, OPS_TOKEN, TcpRelay, TestApp, TestConfig, problem, spawn_app};
use piaojia_tests::samples;
use serde_json::Value;

both_modes!(health_readiness_and_metrics, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let resp = app.get("/healthz").await;
    assert_eq!(resp.status().as_u16(), 200);
    let ready: Value = app.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        ready["database"],
        if mode == Mode::Embedded { "sqlite" } else { "postgres" }
    );
    assert_eq!(ready["redis"], mode == Mode::ScaleOut);

    let issuer = app.issuer().await;
    assert_eq!(app.push(&issuer, &samples::outpatient(1)).await.status().as_u16(), 201);
    // Not on the public port: app ids, WeChat appids and traffic are for operators.
    assert_eq!(problem(app.get("/metrics").await, 404).await["code"], "route_not_found");
    // On the metrics listener (server.metrics_address) only.
    assert_ne!(app.metrics_address.as_deref(), Some(app.address.as_str()));
    let metrics = app.metrics().await;
    assert!(metrics.contains("http_requests_total{"), "{metrics}");
    assert!(
        metrics.contains("route=\"/v1/receipts\""),
        "route templates, not raw paths"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket{"), "histograms");
    assert!(
        metrics.contains("piaojia_issuer_requests_total{app_id=\"hosp01-his\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("piaojia_issuer_request_duration_seconds_bucket{app_id=\"hosp01-his\""),
        "{metrics}"
    );
});

both_modes!(api_docs_are_served, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let spec: Value = app.get("/openapi.json").await.json().await.expect("json");
    assert!(spec["paths"]["/v1/receipts"]["post"].is_object());
    let resp = app.get("/docs/").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.text().await.expect("html").contains("swagger"),
        "an offline docs page"
    );
});

/// The committed spec must equal what the code generates: run `piaojia openapi` after API changes.
#[test]
fn committed_openapi_spec_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).expect("openapi/openapi.json is committed");
    assert!(
        committed == piaojia_gateway::openapi::spec_json(),
        "openapi/openapi.json drifted: run `cargo run -p piaojia-gateway -- openapi`"
    );
}

/// A database outage during a request answers `503 database_unavailable` with
/// Retry-After (problem+json), never a 500, on every kind of request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503() {
    let mut config = TestConfig::new(Mode::ScaleOut).await;
    let database = url::Url::parse(&config.env["DATABASE_URL"]).expect("url");
    let target = format!(
        "{}:{}",
        database.host_str().expect("host"),
        database.port().unwrap_or(5432)
    );
    let relay = TcpRelay::start(target.parse().expect("socket address")).await;
    let mut relayed = database.clone();
    relayed.set_port(Some(relay.port)).expect("port");
    config.set("DATABASE_URL", relayed.to_string());
    config.set("PIAOJIA_DATABASE__ACQUIRE_TIMEOUT_SECS", "1");
    let app = config.spawn().await;
    let issuer = app.issuer().await;
    assert_eq!(app.push(&issuer, &samples::outpatient(1)).await.status().as_u16(), 201);

    relay.cut();
    let push = app.push(&issuer, &samples::outpatient(2)).await;
    assert_eq!(push.status().as_u16(), 503);
    assert!(push.headers().get("retry-after").is_some());
    let body = problem(push, 503).await;
    assert_eq!(body["code"], "database_unavailable", "{body}");
    let read = app
        .signed(
            &issuer,
            "GET",
            &format!("/v1/receipts/{}/0000000001", samples::BATCH),
            None,
        )
        .await;
    assert_eq!(problem(read, 503).await["code"], "database_unavailable");
    let ops = app.ops("GET", "/v1/ops/deliveries", None).await;
    assert_eq!(problem(ops, 503).await["code"], "database_unavailable");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);
}

both_modes!(metrics_can_be_turned_off, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_SERVER__METRICS_ADDRESS", "");
    let app = config.spawn().await;
    assert!(app.metrics_address.is_none());
    assert_eq!(app.get("/metrics").await.status().as_u16(), 404);
});

/// An operator call with `token` from `client` (behind the trusted proxy).
async fn ops_as(app: &TestApp, token: &str, client: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/v1/ops/alerts", app.address))
        .bearer_auth(token)
        .header("x-forwarded-for", client)
        .send()
        .await
        .expect("sent")
}

both_modes!(
    wrong_operator_tokens_are_limited_per_client_address,
    |mode: Mode| async move {
        let mut config = TestConfig::new(mode).await;
        config
            .set("PIAOJIA_SERVER__TRUSTED_PROXIES", "127.0.0.1")
            .set("PIAOJIA_OPS__TOKEN_FAILURES_PER_IP_PER_MIN", "3");
        let app = config.spawn().await;
        let wrong = "x".repeat(OPS_TOKEN.len());
        for _ in 0..3 {
            assert_eq!(
                problem(ops_as(&app, &wrong, "203.0.113.7").await, 401).await["code"],
                "auth_bad_token"
            );
        }
        let resp = ops_as(&app, &wrong, "203.0.113.7").await;
        let retry_after: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=21).contains(&retry_after), "{retry_after}");
        assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
        // Guessing stops paying: the right token from that address waits too.
        assert_eq!(
            problem(ops_as(&app, OPS_TOKEN, "203.0.113.7").await, 429).await["code"],
            "too_many_attempts"
        );
        // Other addresses are not held back.
        assert_eq!(ops_as(&app, OPS_TOKEN, "203.0.113.8").await.status().as_u16(), 200);
        // An IPv6 client counts by its /64: a new address in it is the same client.
        for i in 1..=3 {
            assert_eq!(
                ops_as(&app, &wrong, &format!("2001:db8:7:7::{i}"))
                    .await
                    .status()
                    .as_u16(),
                401
            );
        }
        assert_eq!(
            ops_as(&app, &wrong, "2001:db8:7:7:ffff::1").await.status().as_u16(),
            429
        );
        assert_eq!(ops_as(&app, OPS_TOKEN, "2001:db8:7:8::1").await.status().as_u16(), 200);
    }
);

/// In scale-out the failures of one address are counted across gateway processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_operator_tokens_are_counted_across_gateways() {
    let mut config = TestConfig::new(Mode::ScaleOut).await;
    config
        .set("PIAOJIA_SERVER__TRUSTED_PROXIES", "127.0.0.1")
        .set("PIAOJIA_OPS__TOKEN_FAILURES_PER_IP_PER_MIN", "2");
    let first = config.spawn().await;
    let second = config.spawn().await;
    let wrong = "y".repeat(40);
    assert_eq!(ops_as(&first, &wrong, "198.51.100.4").await.status().as_u16(), 401);
    assert_eq!(ops_as(&second, &wrong, "198.51.100.4").await.status().as_u16(), 401);
    assert_eq!(ops_as(&first, OPS_TOKEN, "198.51.100.4").await.status().as_u16(), 200);
    assert_eq!(ops_as(&second, &wrong, "198.51.100.4").await.status().as_u16(), 429);
    assert_eq!(ops_as(&first, OPS_TOKEN, "198.51.100.4").await.status().as_u16(), 429);
}

// The sandbox's admin API mints logins for any payer: only operators reach it.
both_modes!(the_sandbox_admin_needs_the_operator_token, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let body = serde_json::json!({"appid": "wx1111aaaa2222bbbb"});
    let anonymous = app
        .client
        .post(format!("{}/sandbox/wechat/sim/codes/login", app.address))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(anonymous, 401).await["code"], "auth_missing");
    let wrong = app
        .client
        .get(format!("{}/sandbox/wechat/sim/messages/template", app.address))
        .bearer_auth("not-the-operator-token-not-the-operator-token")
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(wrong, 401).await["code"], "auth_bad_token");
    let operator = app
        .client
        .get(format!("{}/sandbox/wechat/sim/messages/template", app.address))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(operator.status().as_u16(), 200);
    // WeChat's own API paths of the simulator stay as WeChat serves them.
    let token = app
        .client
        .post(format!("{}/sandbox/wechat/cgi-bin/stable_token", app.address))
        .json(&serde_json::json!({"grant_type": "client_credential", "appid": "wx-unknown", "secret": "x"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        token.status().as_u16(),
        200,
        "answered with a WeChat errcode, not refused"
    );
});

/// Whether anything was written since `mark` ([`write_mark`]): SQLite's
/// `data_version` moves when another connection commits a change; on PostgreSQL a
/// row inserted or updated since carries a newer `xmin` than the mark's xid.
enum WriteMark {
    Sqlite(sqlx::SqliteConnection, i64),
    Postgres(sqlx::PgConnection, i64),
}

async fn write_mark(url: &str) -> WriteMark {
    use sqlx::Connection as _;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        let v: i64 = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut conn)
            .await
            .expect("data_version");
        WriteMark::Sqlite(conn, v)
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
        let xid: i64 = sqlx::query_scalar("SELECT (txid_current() % 4294967296)::int8")
            .fetch_one(&mut conn)
            .await
            .expect("xid");
        WriteMark::Postgres(conn, xid)
    }
}

/// The tables written since the mark (SQLite: `["?"]` when anything was).
async fn written_since(mark: &mut WriteMark) -> Vec<String> {
    match mark {
        WriteMark::Sqlite(conn, v) => {
            let now: i64 = sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&mut *conn)
                .await
                .expect("data_version");
            if now == *v { Vec::new() } else { vec!["?".to_owned()] }
        }
        WriteMark::Postgres(conn, xid) => {
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()")
                    .fetch_all(&mut *conn)
                    .await
                    .expect("tables");
            let mut written = Vec::new();
            for t in tables {
                // The names come from pg_tables, not from outside.
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM \"{t}\" WHERE xmin::text::int8 >= $1"
                )))
                .bind(*xid)
                .fetch_one(&mut *conn)
                .await
                .expect("count");
                if n > 0 {
                    written.push(t);
                }
            }
            written
        }
    }
}

both_modes!(an_idle_gateway_writes_nothing, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    // Every periodic job at least once in the window: the alerts' evaluation, the
    // notifier's polls, the inbox's, reminders' and lock expiry's scans, the figures' flush.
    config.set("PIAOJIA_ALERTS__EVALUATE_EVERY_SECS", "1");
    config.set("PIAOJIA_REMINDERS__CHECK_SECS", "1");
    config.set("PIAOJIA_REIMBURSEMENT__EXPIRY_CHECK_SECS", "1");
    let app = config.spawn().await;
    let issuer = app.issuer().await;
    assert_eq!(app.push(&issuer, &samples::outpatient(1)).await.status().as_u16(), 201);
    // What the push set going (its deliveries, their figures) settles first.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let mut mark = write_mark(&app.config.settings().database_url()).await;
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert_eq!(
        written_since(&mut mark).await,
        Vec::<String>::new(),
        "an idle gateway wrote"
    );
    // The check sees a write when there is one.
    assert_eq!(app.push(&issuer, &samples::outpatient(2)).await.status().as_u16(), 201);
    let written = written_since(&mut mark).await;
    assert!(!written.is_empty());
    if mode == Mode::ScaleOut {
        assert!(written.iter().any(|t| t == "receipts"), "{written:?}");
    }
});
