use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TcpRelay, TestConfig, problem, spawn_app};
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
    let metrics = app.get("/metrics").await.text().await.expect("text");
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
